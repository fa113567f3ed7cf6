"""``robustjax report --quick`` in a first and a second process: JAX's persistent compilation
cache under ``$ROBUSTJAX_CACHE`` (``robustjax.compilation_cache``; issue 21, item 6).

Everything runs in a temporary folder (nothing of the user's is read or written beyond copying
the trained models out of the user's robustjax cache, when there): a temporary
``ROBUSTJAX_CACHE`` and one fresh ``--out`` folder per run, so no run loads another's stored
report sections. First a warm-up run with the compilation cache off (it trains and caches the
models the report needs, if they are not there yet), then, in this order:

* ``off``: ``ROBUSTJAX_COMPILATION_CACHE=0`` (every process compiles everything);
* ``first``: the cache on and empty (compiles, and writes every program);
* ``second``: the cache on and filled by ``first`` (loads the programs).

Each run is ``robustjax.cli.main(["report", "--quick", ...])`` (what the ``robustjax`` command
runs) in a new process, with a JAX monitoring listener that counts compilations and cache
hits. The report.json of every run is compared with the others' (times left out).

    PYTHONPATH=. python benchmarks/compile_cache.py [--rounds 1] [--sections a,b] [--keep]

Results: benchmarks/results/compile_cache.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "compile_cache.md"

# run in each measured process: the CLI's report, with compile statistics written at the end
CHILD = r"""
import json, sys, time
import jax
stats = {"compiles": 0, "compile_s": 0.0, "hits": 0, "writes": 0, "saved_s": 0.0,
         "retrieval_s": 0.0, "by_time": [0, 0, 0, 0]}
def on_duration(name, secs, **kw):
    if name == "/jax/core/compile/backend_compile_duration":
        stats["compiles"] += 1
        stats["compile_s"] += secs
        stats["by_time"][sum(secs >= t for t in (0.05, 0.5, 2.0))] += 1
    elif name == "/jax/compilation_cache/compile_time_saved_sec":
        stats["saved_s"] += secs
    elif name == "/jax/compilation_cache/cache_retrieval_time_sec":
        stats["retrieval_s"] += secs
def on_event(name, **kw):
    if name == "/jax/compilation_cache/cache_hits":
        stats["hits"] += 1
    elif name == "/jax/compilation_cache/cache_misses":
        stats["writes"] += 1
jax.monitoring.register_event_duration_secs_listener(on_duration)
jax.monitoring.register_event_listener(on_event)
from robustjax.cli import main
try:
    code = main(sys.argv[2:])
finally:
    from robustjax import compilation_cache
    stats["cache"] = compilation_cache.status().reason
    pathlib = __import__("pathlib")
    pathlib.Path(sys.argv[1]).write_text(json.dumps(stats))
sys.exit(code)
"""


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average %.2f, %.2f, %.2f" % os.getloadavg()


def _dir_size(path: pathlib.Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*-cache") if p.is_file()] if path.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


def _without_times(obj):
    """``obj`` without its ``seconds`` entries (section times, the surrogate's training time)."""
    if isinstance(obj, dict):
        return {k: _without_times(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


def _numbers(report: dict) -> str:
    """report.json without what differs between runs by design (times), canonical."""
    out = {k: v for k, v in report.items() if k not in ("created", "resumed_sections")}
    return json.dumps(_without_times(out), sort_keys=True)


def run(name, tmp, cache, args, compilation_cache: bool, min_compile_time=None):
    out = tmp / f"report-{name}"
    stats_file = tmp / f"stats-{name}.json"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(ROBUSTJAX_CACHE=str(cache),
               ROBUSTJAX_COMPILATION_CACHE="1" if compilation_cache else "0",
               PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
    if min_compile_time is not None:
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(min_compile_time)
    load_before = os.getloadavg()[0]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(stats_file), "report", "--quick",
                           "--out", str(out), *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{name}: report failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    (tmp / f"log-{name}.txt").write_text(proc.stderr)
    report = json.loads((out / "report.json").read_text())
    entries, size = _dir_size(cache / "jax-compilation-cache")
    res = {"name": name, "wall_s": wall,
           "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
           "load_before": load_before, "load_after": os.getloadavg()[0],
           "sections": {k: v["seconds"] for k, v in report["sections"].items()},
           "numbers": _numbers(report), "entries": entries, "entries_bytes": size,
           "warnings": proc.stderr.count("persistent compilation cache"),
           **json.loads(stats_file.read_text())}
    print(f"{name}: {wall:.1f} s wall, {res['cpu_s']:.1f} s CPU, {res['compiles']} compilations "
          f"({res['compile_s']:.1f} s), {res['hits']} cache hits, {res['writes']} written; "
          f"cache {entries} entries, {size / 2**20:.1f} MiB; load {load_before:.2f} -> "
          f"{res['load_after']:.2f}", flush=True)
    return res


def seed_cache(cache: pathlib.Path, source=None) -> list[str]:
    """Copy the trained models and compiled kernels out of the user's robustjax cache (or
    ``source``), never its compilation cache, so the warm-up run need not train them again."""
    from robustjax.cache import cache_dir

    cache.mkdir(parents=True)
    user = pathlib.Path(source) if source else cache_dir()
    copied = []
    if user.is_dir():
        for p in user.iterdir():
            if p.name == "jax-compilation-cache":
                continue
            if p.is_file():
                shutil.copy2(p, cache / p.name)
            elif p.is_dir():
                shutil.copytree(p, cache / p.name)
            copied.append(p.name)
    return copied


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat off/first/second (the compilation cache emptied each round)")
    ap.add_argument("--sections", default=None, help="report sections (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--no-write", action="store_true", help=f"do not write {RESULT.name}")
    ap.add_argument("--min-compile-time", type=float, default=None,
                    help="JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS for the cached runs "
                    "(default: robustjax's)")
    ap.add_argument("--seed-from", default=None,
                    help="copy trained models from this robustjax cache folder instead of the "
                    "user's")
    a = ap.parse_args()
    # this process only copies files and writes the table: no compilation cache of its own
    os.environ["ROBUSTJAX_COMPILATION_CACHE"] = "0"
    args = ["--sections", a.sections] if a.sections else []

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="robustjax-compile-cache-bench-"))
    cache = tmp / "cache"
    started = datetime.datetime.now(datetime.timezone.utc)
    up_start = _uptime()
    copied = seed_cache(cache, a.seed_from)
    print(f"temporary folder {tmp}; copied from the user's cache: {copied or 'nothing'}")
    try:
        warm = run("warm-up", tmp, cache, args, compilation_cache=False)
        rounds = []
        for i in range(a.rounds):
            shutil.rmtree(cache / "jax-compilation-cache", ignore_errors=True)
            rounds.append([run(f"off-{i}", tmp, cache, args, False),
                           run(f"first-{i}", tmp, cache, args, True, a.min_compile_time),
                           run(f"second-{i}", tmp, cache, args, True, a.min_compile_time)])
        up_end = _uptime()
        runs = [warm] + [r for rnd in rounds for r in rnd]
        same = all(r["numbers"] == warm["numbers"] for r in runs)
        print(f"report.json numbers identical across all runs: {same}")
        if not a.no_write:
            write_md(started, up_start, up_end, a, rounds, warm, same, copied)
            print(f"wrote {RESULT}")
    finally:
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def write_md(started, up_start, up_end, a, rounds, warm, same, copied) -> None:
    import jax

    from robustjax import compilation_cache

    cmd = "PYTHONPATH=. python benchmarks/compile_cache.py" + (
        f" --rounds {a.rounds}" if a.rounds != 1 else "") + (
        f" --sections {a.sections}" if a.sections else "") + (
        f" --min-compile-time {a.min_compile_time}" if a.min_compile_time is not None else "")
    threshold = (a.min_compile_time if a.min_compile_time is not None
                 else compilation_cache.MIN_COMPILE_TIME_SECS)
    lines = [
        "# `robustjax report --quick`: first vs second process (persistent compilation cache)",
        "",
        f"Command: `{cmd}` (issue 21, item 6). Date: {started:%Y-%m-%d %H:%M} UTC.",
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__} on {jax.default_backend()}. Compilation cache: "
        f"`$ROBUSTJAX_CACHE/{compilation_cache.SUBDIR}/<cpu>/`, programs compiled in >= "
        f"{threshold} s written.",
        "",
        f"`uptime` at the start: `{up_start}`",
        "",
        f"`uptime` at the end: `{up_end}`",
        "",
        "Each run is a new process running `robustjax report --quick` "
        "(`robustjax.cli.main`) into its own fresh `--out` folder, all with one temporary "
        "`ROBUSTJAX_CACHE` (trained models "
        + ("copied from the user's cache, " if copied else "")
        + f"trained, if missing, by a warm-up run with the cache off: {warm['wall_s']:.1f} s). "
        "`off`: `ROBUSTJAX_COMPILATION_CACHE=0`; `first`: the compilation cache on and empty; "
        "`second`: the cache `first` filled. Compilations: JAX's backend-compile events (a "
        "cache hit is one too, its time is the loading); load: the 1-minute load average "
        "before / after the run.",
        "",
        "| run | wall (s) | CPU user+sys (s) | compilations | their time (s) | cache hits | "
        "entries written | cache after (entries, MiB) | load before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rnd in rounds:
        for r in rnd:
            lines.append(
                f"| {r['name']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['compiles']} | "
                f"{r['compile_s']:.1f} | {r['hits']} | {r['writes']} | {r['entries']}, "
                f"{r['entries_bytes'] / 2**20:.1f} | {r['load_before']:.2f} / "
                f"{r['load_after']:.2f} |")
    lines += ["", "Per section (s):", ""]
    names = list(rounds[0][0]["sections"])
    lines += ["| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for rnd in rounds:
        for r in rnd:
            lines.append(f"| {r['name']} | " + " | ".join(
                f"{r['sections'][n]:.1f}" for n in names) + " |")
    first = rounds[0][1]
    lines += ["", "Compile times in `first` (programs): < 0.05 s: {}, 0.05-0.5 s: {}, "
              "0.5-2 s: {}, >= 2 s: {}.".format(*first["by_time"])]
    lines += ["", "report.json numbers (everything but `created` and the `seconds` entries) "
              f"identical across all runs, the warm-up included: **{'yes' if same else 'NO'}**."]
    for rnd in rounds:
        off, fst, snd = rnd
        lines += ["", f"Round {off['name'][-1]}: second / first wall time "
                  f"{snd['wall_s'] / fst['wall_s']:.2f} ({fst['wall_s']:.1f} -> "
                  f"{snd['wall_s']:.1f} s, {fst['wall_s'] - snd['wall_s']:.1f} s saved); "
                  f"first / off {fst['wall_s'] / off['wall_s']:.2f} (the cost of writing "
                  f"{fst['writes']} entries)."]
    RESULT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
