"""robustjax CROWN / Fast-Lin / CROWN-IBP / IBP against auto_LiRPA on the same weights.

Run: ``PEER_PYTHON=/tmp/h9venv/bin/python PYTHONPATH=. python benchmarks/certify_lirpa.py``
(the peer venv: benchmarks/results/certify.md; arguments ``cnn:crown:32 ...`` run only those
configurations). For every network (``certify_nets``: the 28x28 CNN, CNN-7 on 32x32x3),
method and batch (32, 128) it starts one subprocess per library, so
each peak RSS (``ru_maxrss``) belongs to one configuration; both bound the margins
``f_y - f_j`` (lower bounds only, ``y`` the clean prediction) over the Linf ball cut to
[0, 1], report the median of ``REPEATS`` calls after the first (compiling / graph-building)
one, and the largest difference of their lower bounds (relative to the largest bound, at
least 1). robustjax's IBP subprocess also times
the jitted forward pass (the baseline of "IBP within 2x of a forward pass").

``--fixture`` writes tests/fixtures/certify_lirpa_reference.npz instead: auto_LiRPA's margin
lower bounds for the two tiny fixture nets, every method, so tests/test_certify_lirpa.py
checks robustjax against them without PyTorch.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import certify_nets  # noqa: E402

EPS = {"cnn": 0.01, "cnn7": 2 / 255, "tiny": 0.05, "tiny_bn": 0.05}
METHODS = ("ibp", "crown_ibp", "fastlin", "crown")
BATCHES = (32, 128)
REPEATS = 3  # 1 where the first call took over 20 s
CHUNK = {"cnn": 16, "cnn7": 2}  # examples per chunk in robustjax's CROWN / Fast-Lin
# CNN-7 CROWN / Fast-Lin on these random weights leave ~49,000 of the second ReLU's 65,536
# neurons and ~32,000 of each later one unstable per example: ~33 s of robustjax compute per
# example (patches, 4.4 GB at batch 2), and auto_LiRPA 0.3 needs 19.5 GB at batch 2 and runs
# out of this machine's 24 GB at batch 32. So they run at small batches only: pass e.g.
# ``cnn7:crown:2`` (batches above SKIP_ABOVE are skipped for these pairs).
SKIP = {("cnn7", "crown"), ("cnn7", "fastlin")}
SKIP_ABOVE = 8
PEER = os.path.join(os.path.dirname(__file__), "certify_lirpa_peer.py")


def make_nets(arch, path, n=128, seed=0):
    key1, key2 = jax.random.split(jax.random.PRNGKey(seed))
    params = certify_nets.init(arch, key1)
    shape = certify_nets.ARCHS[arch][0]
    x = jax.random.uniform(key2, (n, *shape))
    y = jnp.argmax(certify_nets.apply(arch)(params, x), -1).astype(jnp.int32)
    certify_nets.save(path, arch, params, x=x, y=y, eps=np.float32(EPS[arch]))


def measure(path, method, batch, repeats, out):
    """robustjax side, in its own process: prints one JSON line."""
    from robustjax.certify import api

    arch, params, data = certify_nets.load(path)
    apply_fn = certify_nets.apply(arch)
    x, y, eps = jnp.asarray(data["x"][:batch]), jnp.asarray(data["y"][:batch]), data["eps"]
    k = int(jax.eval_shape(apply_fn, params, x[:1]).shape[-1])
    chunk = batch if method in ("ibp", "crown_ibp") else min(batch, CHUNK.get(arch, batch))
    # eager: CROWN / Fast-Lin then bound only the neurons IBP leaves unstable (sparse
    # intermediate bounds, sized by a compiled IBP pre-pass that is part of every call);
    # DENSE=1 times them under jit (every neuron bounded)
    bounds = lambda p, a, b: api.bounds(apply_fn, p, a, float(eps), method,  # noqa: E731
                                        spec=api.margin_spec(b, k), chunk_size=chunk,
                                        upper=False)[0]
    fn = jax.jit(bounds) if os.environ.get("DENSE") == "1" else bounds
    result = {}
    t = time.perf_counter()
    lower = jax.block_until_ready(fn(params, x, y))
    result["first_s"] = time.perf_counter() - t
    fwd = jax.jit(apply_fn)
    jax.block_until_ready(fwd(params, x))
    times, ftimes = [], []
    # the forward pass interleaved with the bounds
    for _ in range(repeats if result["first_s"] < 20 else 1):
        t = time.perf_counter()
        jax.block_until_ready(fn(params, x, y))
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(fwd(params, x))
        ftimes.append(time.perf_counter() - t)
    np.savez(out, lower=np.asarray(lower))
    result.update(median_s=float(np.median(times)), forward_s=float(np.median(ftimes)),
                  maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result))


def _run(cmd, timeout=600):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def fixture(peer_python, out="tests/fixtures/certify_lirpa_reference.npz"):
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, arch in enumerate(("tiny", "tiny_bn")):
            path = os.path.join(tmp, f"{arch}.npz")
            make_nets(arch, path, n=4, seed=seed)
            data = np.load(path)
            for name in data.files:
                arrays[f"{arch}/{name}"] = data[name]
            for method in METHODS:
                res = os.path.join(tmp, "peer.npz")
                info = _run([peer_python, PEER, path, method, "4", "0", res])
                assert "error" not in info, info
                arrays[f"{arch}/lirpa_{method}"] = np.load(res)["lower"]
                arrays[f"{arch}/torch_logits"] = np.load(res)["logits"]
    np.savez_compressed(out, **arrays)
    print("wrote", out, sorted(arrays))


def main(peer_python, only=()):
    """``only``: ``"arch:method:batch"`` strings to run (default every configuration)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("cnn", "cnn7"):
            path = os.path.join(tmp, f"{arch}.npz")
            make_nets(arch, path)
            extra = {int(o.split(":")[2]) for o in only if o.startswith(f"{arch}:")}
            for batch in sorted(set(BATCHES) | extra):
                for method in METHODS:
                    if only and f"{arch}:{method}:{batch}" not in only:
                        continue
                    res_rj, res_peer = (os.path.join(tmp, f"{n}.npz") for n in ("rj", "peer"))
                    skip = (arch, method) in SKIP and batch > SKIP_ABOVE
                    rj = ({"error": "skipped: ~33 s per example (see SKIP)"} if skip else
                          _run([sys.executable, __file__, "--measure", path, method, str(batch),
                                str(REPEATS), res_rj]))
                    peer = (rj if skip else
                            _run([peer_python, PEER, path, method, str(batch), str(REPEATS),
                                  res_peer]))
                    diff = None
                    if "error" not in rj and "error" not in peer:
                        ref = np.load(res_peer)["lower"]
                        diff = float(np.max(np.abs(np.load(res_rj)["lower"] - ref))
                                     / max(1.0, np.max(np.abs(ref))))
                    rows.append((arch, batch, method, rj, peer, diff))
                    print(json.dumps(rows[-1]), flush=True)
    print("\n| net | batch | method | robustjax s | auto_LiRPA s | robustjax / auto_LiRPA | "
          "robustjax forward s | robustjax MB | auto_LiRPA MB | lower bounds: max diff / "
          "max(1, max |bound|) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arch, batch, method, rj, peer, diff in rows:
        f = lambda d, key, fmt: fmt.format(d[key]) if key in d else d.get("error", "-")
        ratio = (f"{rj['median_s'] / peer['median_s']:.2f}"
                 if "median_s" in rj and "median_s" in peer else "-")
        print(f"| {arch} | {batch} | {method} | {f(rj, 'median_s', '{:.3f}')} | "
              f"{f(peer, 'median_s', '{:.3f}')} | {ratio} | {f(rj, 'forward_s', '{:.4f}')} | "
              f"{f(rj, 'maxrss_mb', '{:.0f}')} | {f(peer, 'maxrss_mb', '{:.0f}')} | "
              f"{'-' if diff is None else f'{diff:.1e}'} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    elif sys.argv[1:2] == ["--fixture"]:
        fixture(os.environ.get("PEER_PYTHON", "python"))
    else:  # optional arguments: arch:method:batch configurations to run
        main(os.environ.get("PEER_PYTHON", "python"), sys.argv[1:])
