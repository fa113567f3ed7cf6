"""The report pipeline: load the model and data, run each section, write the report.

``run_report`` writes ``report.json`` (every section's data) and ``report.md`` (readable) into
``out_dir``. Sections are listed in ``SECTIONS``, in the order they appear in the report.
"""

from __future__ import annotations

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
from robustjax.report.base import ReportContext, Section

# name -> module holding ``section(ctx) -> Section``; literal, in report order.
SECTIONS = {
    "clean": "robustjax.report.clean",
    "zoo": "robustjax.report.zoo",
    "attacks": "robustjax.report.attacks",
    "corruptions": "robustjax.report.corruptions",
    "certify": "robustjax.report.certify",
    "defenses": "robustjax.report.defenses",
    "metrics": "robustjax.report.metrics",
}
REPORT_FORMAT = "robustjax-report-v1"


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


def run_report(out_dir="robustjax-report", *, model=None, dataset: str = "mnist5k",
               examples: Optional[int] = None, quick: bool = False, seed: int = 0,
               sections: Optional[Sequence[str]] = None, retrain: bool = False,
               force: bool = False, log=print) -> dict:
    """Run the report and write it. Returns the JSON-able report dict.

    Args:
      out_dir: output folder (created; an earlier robustjax report there is replaced).
      model: a ``Model``; default: the embedded default (trained and cached on first use).
      dataset: evaluation data (``robustjax.data.load(dataset, "test")``).
      examples: evaluate on the first N test examples (default: all; quick: 64).
      quick: tiny settings for smoke tests.
      sections: subset of ``SECTIONS`` names (default: all).
    """
    out_dir = pathlib.Path(out_dir)
    _check_out_dir(out_dir, force)
    names = list(SECTIONS) if sections is None else list(sections)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise KeyError(f"unknown report section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    extras = {}
    if model is None:
        from robustjax.models import default

        had_cache = default.cache_path().exists()
        if not had_cache or retrain:
            log(f"training the embedded default model (cached at {default.cache_path()}) ...")
        model = default.embedded_default(retrain=retrain, progress=progress_bar)
        extras["training_info"] = default.cached_info() or {}
    if "corruptions" in names and "imagenet_model" not in extras:
        # The prediction panels (survey figs. 3-6) need an ImageNet model on real photos.
        from robustjax.report.zoo import ported_lite0

        extras["imagenet_model"] = ported_lite0()[0]
    x, y = datasets.load(dataset, "test")
    n = examples if examples is not None else (64 if quick else len(x))
    x, y = x[:n], y[:n]
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = ReportContext(model=model, x=x, y=y, key=jax.random.PRNGKey(seed), out_dir=out_dir,
                        quick=quick, progress=progress_bar, extras=extras)
    report = {"format": REPORT_FORMAT, "created": datetime.datetime.now().isoformat(
        timespec="seconds"), "dataset": dataset, "examples": int(n), "quick": quick,
        "seed": seed, "runtime": runtime_info(), "sections": {}}
    done: list[Section] = []
    for name in names:
        start = time.perf_counter()
        log(f"[{name}] running ...")
        sec = importlib.import_module(SECTIONS[name]).section(ctx)
        seconds = time.perf_counter() - start
        report["sections"][sec.key] = {"title": sec.title, "seconds": round(seconds, 2),
                                       "figures": list(sec.figures), **sec.data}
        done.append(sec)
        log(f"[{name}] done in {seconds:.1f} s")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out_dir / "report.md").write_text(render_markdown(report, done))
    log(f"report written to {out_dir / 'report.md'} and {out_dir / 'report.json'}")
    return report


def runtime_info() -> dict:
    """What the numbers ran on: JAX, its backend and which convolution kernels."""
    from robustjax import kernels

    conv = kernels.status()
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": len(jax.devices()),
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
    rt = report.get("runtime")
    if rt:
        lines += [f"JAX {rt['jax']} on {rt['backend']} ({rt['devices']} device(s)); "
                  f"convolutions on {rt['convolutions']} kernels.", ""]
    for sec in sections:
        lines += [f"## {sec.title}", "", sec.markdown.strip(), ""]
        for fig in sec.figures:
            lines += [f"![{sec.title}]({fig})", ""]
    return "\n".join(lines)
