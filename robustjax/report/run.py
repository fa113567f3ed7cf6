"""The report pipeline: load the model and data, run each section, write the report.

``run_report`` writes ``report.json`` (every section's data) and ``report.md`` (readable) into
``out_dir``. Sections are listed in ``SECTIONS``, in the order they appear in the report. The
model is any ``Model`` (a registry name with a checkpoint, a user's ``module:function`` factory,
the embedded default), the data any ``robustjax.data`` dataset (resized on request). Results are
stored as they finish (``out_dir/store``), so an interrupted report resumes.

Multi-host (``jax.distributed``, ``robustjax report --distributed``): every process runs the same
report on the same data, with the entry points (attacks, corruptions, certify) sharded over a
mesh of every process's devices, so each process computes its rows of every batch and gets the
whole result back (``robustjax.parallel.place`` / ``unplace``). Process 0 writes the report into
``out_dir``; process ``p`` keeps its own store beside it (``process_folder``), so each host
resumes from its own files, and a stored result is used only where every process has it. The
numbers equal a one-process report's. Processes started with different settings fail before
any section runs.

Faults: every file is written atomically (``robustjax.runfiles``); before the model is loaded or
any section runs, the output folder is checked for writability and for room for the report's
estimated size (``estimate_bytes``), so a read-only folder or a full disk fails at once with a
clear ``OutputError``. A rerun after a kill (even mid-write) resumes and says what it reused.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import pathlib
import sys
import time
from typing import Optional, Sequence

import jax
import numpy as np

from robustjax import data as datasets
from robustjax import parallel, runfiles
from robustjax.report.base import ReportContext, Section
from robustjax.report.store import ResultStore, atomic_write_text, params_hash

# name -> module holding ``section(ctx) -> Section``; literal, in report order.
SECTIONS = {
    "clean": "robustjax.report.clean",
    "zoo": "robustjax.report.zoo",
    "attacks": "robustjax.report.attacks",
    "blackbox": "robustjax.report.blackbox",
    "corruptions": "robustjax.report.corruptions",
    "certify": "robustjax.report.certify",
    "defenses": "robustjax.report.defenses",
    "metrics": "robustjax.report.metrics",
}
REPORT_FORMAT = "robustjax-report-v1"
STORE_DIR = "store"  # stored sections and batches (resumable report)
# Room a section's files take at most (its figures, their base64 copy in report.html, its stored
# batches), and per example (per-example data in report.json and the store). Measured: a quick
# report's attacks section writes a 20 KiB figure and 3 KiB of stored results.
SECTION_BYTES = 2 * runfiles.MiB
EXAMPLE_BYTES = 1024


def estimate_bytes(sections: int, examples: int, num_classes: int = 1000) -> int:
    """An upper estimate of what a report writes: ``sections`` sections over ``examples``
    examples, with the clean section's stored float32 logits [examples, num_classes]."""
    return sections * SECTION_BYTES + examples * (EXAMPLE_BYTES + 4 * num_classes)


def progress_bar(iterable, desc: str = "", total: Optional[int] = None, **kwargs):
    """tqdm on stderr (silent when stderr is not a terminal and no tqdm is installed)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, **kwargs)


def _check_out_dir(out_dir: pathlib.Path, force: bool) -> None:
    """Refuse to write into a folder that holds files robustjax did not write."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another --out")
    marker = out_dir / "report.json"
    ours = False
    if marker.exists():
        try:
            ours = json.loads(marker.read_text()).get("format") == REPORT_FORMAT
        except (OSError, ValueError):
            ours = False
    if any(out_dir.iterdir()) and not ours and not force:
        raise FileExistsError(
            f"{out_dir} is not empty and holds no earlier robustjax report; refusing to write "
            f"into it. Choose another --out, or pass --force to write there anyway.")


def run_report(out_dir="robustjax-report", *, model=None, checkpoint=None,
               dataset: str = "mnist5k", split: str = "test", examples: Optional[int] = None,
               quick: bool = False, seed: int = 0, sections: Optional[Sequence[str]] = None,
               eps: Optional[Sequence[float]] = None, resize: bool = False,
               retrain: bool = False, fresh: bool = False, force: bool = False,
               quantize_corruptions: bool = True, log=print) -> dict:
    """Run the report and write it. Returns the JSON-able report dict.

    Every finished section, and every batch of work inside the long ones, is stored under
    ``out_dir/store`` by a hash of its config (model and checkpoint hashes, dataset, split,
    examples, seed, quick, eps, resize, section settings): rerunning an interrupted report loads
    what was finished and computes the rest; the result equals an uninterrupted run's.

    Args:
      out_dir: output folder (created; an earlier robustjax report there is resumed/replaced).
      model: a ``Model``; a registry name (``robustjax models``); ``"module:function"`` naming a
        factory that returns a ``Model``; default: the embedded default (trained and cached on
        first use).
      checkpoint: weights for ``model`` (a registry name: any format ``models.load`` reads; a
        factory: passed as its one argument).
      dataset, split: evaluation data (``robustjax.data.load(dataset, split)``).
      examples: evaluate on the first N examples (default: all; quick: 64).
      quick: tiny settings for smoke tests.
      sections: subset of ``SECTIONS`` names (default: all).
      eps: Linf radii (pixel units) of the attacks section's sweep (default: by image type).
      resize: resize images (and convert gray <-> RGB) to the model's input shape.
      fresh: recompute everything, ignoring stored results.
      force: write into ``out_dir`` even if it holds files robustjax did not write.
      quantize_corruptions: the corruptions section rounds corrupted images to 8 bits as the
        stored ImageNet-C does (default; its error rates then equal an evaluation on the stored
        files); False evaluates the unrounded floats (0.5/255 brighter on average).
    """
    from robustjax.report import inputs

    processes, here = jax.process_count(), jax.process_index()
    out_dir = pathlib.Path(out_dir)
    if here > 0:  # process 0 writes the report; the others keep their stores beside it
        out_dir = process_folder(out_dir, here, processes)
    runfiles.remove_stale_temporaries(out_dir)  # a run killed mid-write left one behind
    _check_out_dir(out_dir, force)
    names = list(SECTIONS) if sections is None else list(sections)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise KeyError(f"unknown report section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    if eps is not None:
        eps = tuple(float(e) for e in eps)
        if not eps or any(not 0 < e <= 1 for e in eps):
            raise ValueError(f"eps values must be in (0, 1] (pixel units), got {list(eps)}")
    # Before anything is loaded, trained or computed: can out_dir hold the report at all?
    runfiles.preflight(out_dir, estimate_bytes(len(names), 1), "the report")
    model, identity, extras = inputs.resolve_model(model, checkpoint, retrain=retrain,
                                                   progress=progress_bar, log=log)
    if "corruptions" in names and "imagenet_model" not in extras:
        # The prediction panels (survey figs. 3-6) need an ImageNet model on real photos.
        from robustjax.report.zoo import ported_lite0

        extras["imagenet_model"] = ported_lite0()[0]
    x, y = datasets.load(dataset, split)
    n = examples if examples is not None else (64 if quick else len(x))
    if n <= 0:
        raise ValueError(f"examples must be positive, got {n}")
    x, y = x[:n], y[:n]
    n = int(len(x))
    x, y, data_note = inputs.fit_data(x, y, model.spec, resize=resize,
                                      dataset=f"dataset {dataset!r} ({split})")
    if data_note:
        log(data_note)
    inputs.check_model(model, x, y)  # NCHW, wrong channels, labels beyond the classes: now
    runfiles.preflight(out_dir, estimate_bytes(len(names), n, int(model.spec.num_classes or 1000)),
                       f"the report ({len(names)} sections, {n} examples)")
    if processes > 1:  # before any section: every process runs the same report
        parallel.check_same_run({"report": identity_all_of(identity, dataset, split, n, quick,
                                                           seed, eps, resize),
                                 "sections": names, "fresh": fresh,
                                 "quantize_corruptions": quantize_corruptions,
                                 "data": params_hash((x, y)),
                                 "processes": processes})
    previous = _previous_status(out_dir)
    runfiles.remove_stale_temporaries(out_dir / STORE_DIR)  # left by a process killed mid-write
    out_dir.mkdir(parents=True, exist_ok=True)
    identity_all = identity_all_of(identity, dataset, split, n, quick, seed, eps, resize)
    store = ResultStore(out_dir / STORE_DIR, fresh=fresh,
                        agree=_every_process if processes > 1 else None)
    stored = len(list(store.root.glob("*.*"))) if store.root.is_dir() and not fresh else 0
    if stored:
        how = "the interrupted report" if previous == "running" else "the earlier report"
        log(f"resuming {how} in {out_dir}: {stored} stored result(s) found; those whose "
            f"config matches are reused (--fresh recomputes everything)")
    ctx = ReportContext(model=model, x=x, y=y, key=jax.random.PRNGKey(seed), out_dir=out_dir,
                        quick=quick, progress=progress_bar, extras=extras, dataset=dataset,
                        eps=eps, identity=identity_all, store=store,
                        quantize_corruptions=quantize_corruptions)
    report = {"format": REPORT_FORMAT, "status": "running", "created": datetime.datetime.now(
        ).isoformat(timespec="seconds"), "dataset": dataset, "split": split, "examples": n,
        "quick": quick, "seed": seed, "model": identity, "data_note": data_note,
        "runtime": runtime_info(), "sections": {}}
    _write_json(out_dir / "report.json", report)  # marks the folder as ours from the start
    done: list[Section] = []
    resumed = []
    for name in names:
        config = {"report": identity_all, "section": name}
        record = store.load(f"section-{name}", config)
        if store.found(record is not None
                       and all((out_dir / f).is_file() for f in record["figures"])):
            log(f"[{name}] loaded (stored {record['seconds']:.1f} s run)")
            resumed.append(name)
        else:
            start = time.perf_counter()
            log(f"[{name}] running ...")
            with _mesh(processes):
                sec = importlib.import_module(SECTIONS[name]).section(ctx)
            seconds = round(time.perf_counter() - start, 2)
            record = json.loads(json.dumps(
                {"key": sec.key, "title": sec.title, "seconds": seconds,
                 "figures": list(sec.figures), "markdown": sec.markdown, "data": sec.data},
                default=_json_default))
            store.save(f"section-{name}", config, record)
            log(f"[{name}] done in {seconds:.1f} s")
        report["sections"][record["key"]] = {"title": record["title"],
                                             "seconds": record["seconds"],
                                             "figures": record["figures"], **record["data"]}
        done.append(Section(record["key"], record["title"], record["data"], record["markdown"],
                            tuple(record["figures"])))
        _write_json(out_dir / "report.json", report)
    report["status"] = "complete"
    report["resumed_sections"] = resumed
    if resumed or store.loaded:
        log(f"resumed: {len(resumed)} section(s) loaded ({', '.join(resumed) or 'none'}), "
            f"{len(store.loaded)} stored batch result(s) reused, {len(store.computed)} computed")
    if here > 0:
        _write_json(out_dir / "report.json", report)
        log(f"process {here} of {processes}: done; its stored results are in {out_dir}, "
            f"process 0 writes the report")
        return report
    atomic_write_text(out_dir / "report.md", render_markdown(report, done))
    from robustjax.report.html import write_html

    write_html(report, out_dir)
    _write_json(out_dir / "report.json", report)  # last: "complete" on disk means every file is
    log(f"report written to {out_dir / 'report.md'}, {out_dir / 'report.html'} and "
        f"{out_dir / 'report.json'}")
    return report


def identity_all_of(identity, dataset, split, n, quick, seed, eps, resize) -> dict:
    """What every stored result of a report depends on (besides its section's settings)."""
    return {"format": REPORT_FORMAT, "robustjax": _version(), "model": identity,
            "dataset": dataset, "split": split, "examples": n, "quick": quick,
            "seed": seed, "eps": list(eps) if eps is not None else None, "resize": resize}


def process_folder(out_dir, process_index: int, process_count: int) -> pathlib.Path:
    """Where process ``process_index`` (> 0) of a multi-host report keeps its stored results:
    ``.<out>.process<p>-of-<P>`` beside ``out_dir`` (per host; distinct on a shared disk)."""
    out_dir = pathlib.Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.process{process_index}-of-{process_count}"


def _every_process(present: bool) -> bool:
    """True when every process of the job has the stored result (a collective)."""
    return bool(parallel.allgather_rows(np.array([present], np.int8), 1).min())


def _mesh(processes: int):
    """Multi-host: the entry points shard over every process's devices."""
    if processes == 1:
        return contextlib.nullcontext()
    return parallel.use_mesh(parallel.data_mesh())


def _previous_status(out_dir: pathlib.Path) -> Optional[str]:
    """``status`` of the report.json an earlier run left in ``out_dir`` (None if none)."""
    try:
        return json.loads((out_dir / "report.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _version() -> str:
    import robustjax

    return getattr(robustjax, "__version__", "unknown")


def _write_json(path: pathlib.Path, report: dict) -> None:
    atomic_write_text(path, json.dumps(report, indent=2, default=_json_default))


def runtime_info() -> dict:
    """What the numbers ran on: JAX, its backend and which convolution kernels."""
    from robustjax import kernels

    conv = kernels.status()
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": len(jax.devices()), "processes": jax.process_count(),
            "convolutions": "oneDNN" if conv.available else "XLA",
            "convolutions_note": conv.reason.splitlines()[0] if conv.reason else ""}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def render_markdown(report: dict, sections: Sequence[Section]) -> str:
    lines = ["# robustjax robustness report", "",
             f"Created {report['created']} on `{report['dataset']}` ({report['examples']} test "
             f"examples{', quick mode' if report['quick'] else ''}, seed {report['seed']}).", ""]
    if report.get("data_note"):
        lines += [f"Data: {report['data_note']}.", ""]
    rt = report.get("runtime")
    if rt:
        where = (f"{rt['devices']} device(s)" if rt.get("processes", 1) == 1 else
                 f"{rt['devices']} device(s) in {rt['processes']} processes")
        lines += [f"JAX {rt['jax']} on {rt['backend']} ({where}); "
                  f"convolutions on {rt['convolutions']} kernels.", ""]
    for sec in sections:
        lines += [f"## {sec.title}", "", sec.markdown.strip(), ""]
        for fig in sec.figures:
            lines += [f"![{sec.title}]({fig})", ""]
    return "\n".join(lines)
