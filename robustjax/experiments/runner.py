"""``ablate(experiment, out=...)``: expand, train side by side, evaluate, resume, tabulate.

Output folder (``out``)::

    robustjax-ablation.json     marker: format and experiment name (guards the folder)
    runs/<run id>.json          one finished run: recipe, hashes, metrics, training losses
    runs/<run id>.npz           its evaluated parameters (robustjax.checkpoint format)
    ablation.json               every run and the summary (mean, std, delta per metric)
    ablation.md                 the table: every run x metric, mean ± std (Δ vs full)
    ablation.png                each variant's difference from the full recipe per metric

Resuming: a run whose ``runs/<id>.json`` holds the same training hash (model, data, recipe,
seed) and evaluation hash is skipped; same training hash but a changed profile re-evaluates
the saved parameters; a changed recipe retrains that run (and says so). Every file is written
to a temporary name and renamed into place, so an interrupted ablation leaves only finished
runs behind; the runs a group trains are saved together when the group ends, each run's
parameters before its record (a run counts as finished only with both). An output folder
that holds other files, or another experiment's results, is refused unless ``force=True``.

Multi-host (``jax.distributed``): every process expands the same experiment and forms the same
groups of runs; the groups are dealt out to the processes (each to the one with the least work
so far), so process ``p`` trains only its groups, on its own devices, and keeps their files in
its own ``out`` (a shared or a per-host folder both work: the file names are per run). The
finished records are exchanged (``parallel.allgather_json``) and process 0 writes the table.
A group trains the same program with the same inputs as in a one-process run, so every number
equals the one-process ablation's. Processes started with different experiments fail before
any training (``parallel.check_same_run``); an interrupted job resumes per host.

Faults: before the data is loaded the folder is checked for writability, and before training
for room for every run's parameters (``estimate_bytes``), so a read-only folder or a full disk
fails at once (``robustjax.runfiles.OutputError``); a kill at any point, even mid-write, leaves
only whole files, and the rerun resumes with the finished runs (and says so).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import platform
import time
from typing import Callable, Optional, Union

import jax
import numpy as np

from robustjax import checkpoint, data, models, parallel, runfiles
from robustjax.experiments import evaluate as evaluation
from robustjax.experiments import tabulate
from robustjax.experiments.expand import eval_hash, expand, train_hash, variants
from robustjax.experiments.parse import load, to_dict
from robustjax.experiments.spec import Experiment
from robustjax.experiments.vectorised import group_runs, train_group, train_reference

MARKER = "robustjax-ablation.json"
FORMAT = "robustjax-ablation-v1"


def write_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``robustjax.runfiles.atomic_write_text``)."""
    runfiles.atomic_write_text(path, text, "the ablation")


def estimate_bytes(runs: int, params_bytes: int, epochs: int) -> int:
    """An upper estimate of what an ablation writes: per run its parameters (``.npz``, plus a
    temporary copy while it is replaced) and its record (metrics, per-epoch losses), plus the
    table, its JSON and its plot."""
    return runs * (2 * params_bytes + 64 * 1024 + 64 * epochs) + 4 * runfiles.MiB


def _check_out(out: pathlib.Path, name: str, force: bool) -> None:
    """Refuse a folder that holds other files or another experiment (unless ``force``)."""
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            if not force:
                raise FileExistsError(
                    f"{out} is not empty and is not a robustjax ablation folder; choose another "
                    f"--out or pass --force (force=True) to write into it")
        else:
            previous = json.loads(marker.read_text()).get("experiment")
            if previous != name and not force:
                raise FileExistsError(
                    f"{out} holds the results of experiment {previous!r}, not {name!r}; "
                    f"choose another --out or pass --force (force=True) to mix them")


def _prepare_out(out: pathlib.Path, name: str) -> None:
    # the marker first: a folder an interrupted run left behind is always recognised as ours
    write_atomic(out / MARKER, json.dumps({"format": FORMAT, "experiment": name}))
    (out / "runs").mkdir(parents=True, exist_ok=True)


def _num_classes(dataset, y):
    names = data.class_names(dataset)
    return len(names) if names else int(np.max(y)) + 1


def _load_data(exp: Experiment):
    x, y = data.load(exp.data.dataset, "train")
    xt, yt = data.load(exp.data.dataset, "test")
    if exp.data.train_examples:
        x, y = x[:exp.data.train_examples], y[:exp.data.train_examples]
    if exp.data.test_examples:
        xt, yt = xt[:exp.data.test_examples], yt[:exp.data.test_examples]
    return x, y, xt, yt


def _init(exp: Experiment, options: tuple, x, y, seed):
    options = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in options)
    try:
        return _create(exp.model.name, options, _num_classes(exp.data.dataset, y),
                       tuple(x.shape[1:]), seed)
    except TypeError as e:
        raise ValueError(f"[model] {e} (options {dict(options)})") from None


@functools.lru_cache(maxsize=32)
def _create(name, options, num_classes, input_shape, seed):
    # Cached: the same apply_fn for the same model, so compiled programs are reused when an
    # ablation is resumed or rerun in one process.
    return models.create(name, num_classes, key=jax.random.PRNGKey(seed),
                         input_shape=input_shape, **dict(options))


def _read(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ablate(experiment: Union[Experiment, str, os.PathLike], out="robustjax-ablation", *,
           force: bool = False, vectorise: bool = True, progress: Optional[Callable] = None,
           log: Optional[Callable[[str], None]] = None, mesh=None) -> dict:
    """Run (or resume) an ablation study and write its results into ``out``.

    Args:
      experiment: an ``Experiment`` or the path of its TOML file.
      out: output folder (see the module docstring for its files).
      force: write into a folder that holds other files or another experiment's results.
      vectorise: train each group of compatible runs in one vmapped program (default); False
        trains every run alone with ``robustjax.train.fit`` (the sequential baseline).
      progress: ``progress(iterable, desc=..., total=...)``, e.g. ``tqdm.tqdm``: one bar over
        the groups of runs, one over each group's epochs.
      log: receives one line per event (``print`` for a console).
      mesh: train data parallel over this ``jax.sharding.Mesh`` (``parallel.data_mesh()``;
        ``robustjax.train.sharding``); None trains on one device. Results are the same.

    Returns the content of ``ablation.json``: ``runs`` (one record per run), ``columns`` and
    ``summary`` (``{variant: {column: {mean, std, n, delta}}}``).
    """
    exp = experiment if isinstance(experiment, Experiment) else load(experiment)
    if jax.process_count() > 1 and mesh is not None and any(
            d.process_index != jax.process_index() for d in mesh.devices.flat):
        raise ValueError("a multi-host ablation trains each process's runs on that process's "
                         "own devices: pass a mesh of local devices "
                         "(parallel.data_mesh(jax.local_devices())) or none")
    log = log or (lambda msg: None)
    wrap = progress or (lambda it, **kw: it)
    out = pathlib.Path(out)
    runfiles.remove_stale_temporaries(out)  # a run killed while writing its marker left one
    _check_out(out, exp.name, force)
    runs = expand(exp)
    runfiles.preflight(out, 0, f"the ablation {exp.name!r}")  # before any data or compute
    names = [v.name for v in variants(exp)]
    x, y, xt, yt = _load_data(exp)
    for v in variants(exp):
        if v.recipe.batch_size > len(x):
            raise ValueError(f"run {v.name!r}: batch_size {v.recipe.batch_size} is larger than "
                             f"the {len(x)} training examples")
    # One model per (model options, seed); every run of one architecture compiles against
    # the apply_fn of its first seed's model.
    configs = list(dict.fromkeys(v.model_options for v in variants(exp)))
    inits = {(o, s): _init(exp, o, x, y, s) for o in configs for s in exp.seeds}
    models_of = {o: inits[o, exp.seeds[0]] for o in configs}
    for o in configs:
        m = models_of[o]
        evaluation.check_applicable(m.apply_fn, m.params, xt, yt, exp.profile)
    params_bytes = max(sum(np.asarray(a).nbytes for a in jax.tree_util.tree_leaves(m.params))
                       for m in models_of.values())
    epochs = max(v.recipe.epochs for v in variants(exp))
    runfiles.preflight(out, estimate_bytes(len(runs), params_bytes, epochs),
                       f"the ablation {exp.name!r} ({len(runs)} runs)")
    runfiles.remove_stale_temporaries(out / "runs")  # left by a process killed mid-write
    # multi-host: the same experiment everywhere (also the barrier that keeps every process's
    # clean-up of stale temporaries before any process writes)
    parallel.check_same_run({"experiment": to_dict(exp), "vectorise": vectorise,
                             "train": [len(x)] + list(np.shape(x)[1:]), "test": len(xt),
                             "processes": jax.process_count()})
    _prepare_out(out, exp.name)
    owner = assign_groups(_groups(runs, configs, vectorise, exp.recipe.loss),
                          jax.process_count())
    here = jax.process_index()
    share = sum(owner[r.id] == here for r in runs)
    if jax.process_count() > 1:
        log(f"process {here} of {jax.process_count()}: {share} of {len(runs)} run(s) are "
            f"this process's share")

    ehash = eval_hash(exp)
    records, todo, reeval = {}, [], []
    for run in (r for r in runs if owner[r.id] == here):
        path = out / "runs" / f"{run.id}.json"
        rec, thash = _read(path), train_hash(exp, run)
        if rec and rec.get("train_hash") == thash and (out / "runs" / f"{run.id}.npz").exists():
            if rec.get("eval_hash") == ehash:
                records[run.id] = rec
            else:
                reeval.append(run)
            continue
        if rec:
            log(f"{run.id}: the recipe changed since it was saved; training it again")
        todo.append(run)
    log(f"{exp.name}: {share} runs, {len(records)} finished, {len(reeval)} to re-evaluate, "
        f"{len(todo)} to train")
    if records or reeval:
        log(f"resuming {out}: {len(records) + len(reeval)} of {share} run(s) already "
            f"trained there are kept")
    evaluators = {}

    def finish(run, params, history, seconds, group_size):
        o = run.variant.model_options
        if o not in evaluators:
            evaluators[o] = evaluation.make_evaluator(models_of[o].apply_fn, xt, yt,
                                                      exp.profile)
        ckpt = out / "runs" / f"{run.id}.npz"
        checkpoint.save(ckpt, params, models_of[o].spec, {"run": run.id}, overwrite=True)
        metrics = evaluators[o](params, jax.random.fold_in(jax.random.PRNGKey(run.seed), 2))
        rec = {"id": run.id, "variant": run.variant.name, "seed": run.seed,
               "choices": dict(run.variant.choices),
               "recipe": dataclasses.asdict(run.variant.recipe),
               "train_hash": train_hash(exp, run), "eval_hash": ehash, "metrics": metrics,
               "loss": history, "train_seconds": seconds, "group_size": group_size}
        write_atomic(out / "runs" / f"{run.id}.json", json.dumps(rec, indent=1))
        records[run.id] = rec

    for run in reeval:
        params, _, _ = checkpoint.load(out / "runs" / f"{run.id}.npz")
        old = _read(out / "runs" / f"{run.id}.json")
        log(f"{run.id}: evaluation profile changed; re-evaluating the saved parameters")
        finish(run, jax.tree_util.tree_map(np.asarray, params), old["loss"],
               old["train_seconds"], old["group_size"])

    grouped = _groups(todo, configs, vectorise, exp.recipe.loss)
    groups, statics = [g for g, _ in grouped], [st for _, st in grouped]
    # One bar over the runs (a group's runs finish together; the bar's rate gives the time
    # left) and one over each group's epochs.
    for group, static in _per_run(wrap, groups, statics):
        start = time.perf_counter()
        ids = ", ".join(r.id for r in group)
        log(f"training {len(group)} run(s) together: {ids}")
        o = group[0].variant.model_options
        apply_fn = models_of[o].apply_fn
        if static is None:
            run = group[0]
            params, hist = train_reference(apply_fn, inits[o, run.seed].params,
                                           run.variant.recipe, x, y, run.seed,
                                           progress=progress, mesh=mesh)
            trained, losses = [params], [hist["loss"]]
        else:
            trained, hist = train_group(apply_fn, [inits[o, r.seed].params for r in group],
                                        [r.variant.recipe for r in group],
                                        [r.seed for r in group], x, y, static,
                                        progress=progress, mesh=mesh)
            losses = hist["loss"]
        seconds = time.perf_counter() - start
        for run, params, loss in zip(group, trained, losses):
            finish(run, jax.device_get(params), loss, seconds / len(group), len(group))
        log(f"saved {ids} ({seconds:.1f} s)")

    if jax.process_count() > 1:  # every process's finished records, to every process
        for share in parallel.allgather_json(records):
            records.update(share)
    ordered = [records[r.id] for r in runs]
    columns = evaluation.columns(exp.profile)
    summary = tabulate.summarize(ordered, names, columns)
    result = {"format": FORMAT, "experiment": to_dict(exp), "columns": list(columns),
              "runs": ordered, "summary": summary,
              "machine": f"{platform.machine()}, {jax.device_count()} "
                         f"{jax.default_backend()} device(s)"}
    notes = [f"Model `{exp.model.name}` {dict(exp.model.options) or ''}, dataset "
             f"`{exp.data.dataset}` ({len(x)} train / {len(xt)} test), base recipe: "
             f"{_describe(exp)}; seeds {list(exp.seeds)}; evaluation eps "
             f"{exp.profile.eps} (PGD-{exp.profile.pgd_steps})."]
    if jax.process_count() > 1:
        result["processes"] = jax.process_count()
        notes.append(f"Trained by {jax.process_count()} processes (jax.distributed).")
    if not parallel.is_coordinator():
        log(f"process {here}: its runs are saved in {out / 'runs'}; process 0 writes the table")
        return result
    write_atomic(out / "ablation.json", json.dumps(result, indent=1))
    write_atomic(out / "ablation.md", tabulate.markdown(exp.name, summary, columns, notes))
    tabulate.plot(out / "ablation.png", exp.name, summary, columns)  # atomic (runfiles)
    log(f"wrote {out / 'ablation.md'}, {out / 'ablation.json'}, {out / 'ablation.png'}")
    return result


def _groups(runs, configs, vectorise: bool, base_loss: str) -> list:
    """``[(runs, static)]``: the groups of ``runs`` trained together (one vmapped program per
    ``static``; ``static`` None: a run trained alone), architecture after architecture."""
    out = []
    for o in configs:  # architectures one after another; runs of one architecture vmapped
        mine = [r for r in runs if r.variant.model_options == o]
        if not vectorise:
            out += [([r], None) for r in mine]
            continue
        for static, idx in group_runs([r.variant.recipe for r in mine], base_loss):
            out.append(([mine[i] for i in idx], static))
    return out


def assign_groups(groups, processes: int) -> dict:
    """``{run id: process}``: each group of runs (in order) goes to the process with the
    least work so far (epochs, summed over its runs; ties: the lowest process index).
    Deterministic, so every process of a job computes the same assignment; one process owns
    everything."""
    load = [0.0] * max(1, int(processes))
    owner = {}
    for group, _ in groups:
        p = min(range(len(load)), key=lambda i: (load[i], i))
        for r in group:
            owner[r.id] = p
            load[p] += r.variant.recipe.epochs
    return owner


def _per_run(wrap, groups, statics):
    """Yield each (group, static) once while the progress bar advances by runs."""
    flat = [(i, j) for i, g in enumerate(groups) for j in range(len(g))]
    for i, j in wrap(flat, desc="runs", total=len(flat)):
        if j == 0:
            yield groups[i], statics[i]


def _describe(exp: Experiment) -> str:
    r = exp.recipe
    parts = [f"{r.loss} (eps {r.eps}, {r.attack_steps} steps of {r.step_size})"
             if r.loss != "standard" else "standard training",
             f"{r.optimizer} lr {r.lr} ({r.lr_schedule})", f"{r.epochs} epochs, batch "
             f"{r.batch_size}"]
    if r.weight_decay:
        parts.append(f"weight decay {r.weight_decay}")
    if r.crop:
        parts.append(f"random crop (pad {r.crop})")
    if r.flip:
        parts.append("flips")
    if r.eps_ramp:
        parts.append(f"eps ramp over {r.ramp_epochs} epochs after {r.ramp_warmup_epochs}")
    if r.ema:
        parts.append(f"EMA {r.ema_decay}")
    return ", ".join(parts)
