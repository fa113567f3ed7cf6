"""Speed of IBP, CROWN-IBP and CROWN on a 28x28 CNN (two conv + two dense layers), jitted.

Run: ``PYTHONPATH=. python benchmarks/certify_speed.py``. Interleaves the methods with the
plain forward pass (the baseline) and reports the median of ``REPEATS[batch]`` timed calls
after compilation, for batch 2 and 128. Results: benchmarks/results/certify.md.
"""

from __future__ import annotations

import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.certify import api
from robustjax.models.registry import create

REPEATS = {2: 5, 128: 1}  # CROWN's intermediate bounds take minutes at batch 128 on 2 cores
EPS = 0.1


def main():
    model = create("cnn")  # conv 16 4x4/2, conv 32 4x4/2, dense 100, dense 10
    fns = {"forward": jax.jit(model.apply_fn)}
    for method, chunk in (("ibp", 128), ("crown_ibp", 128), ("crown", 8)):
        fns[method] = jax.jit(lambda p, x, y, m=method, c=chunk: api.certify(
            model.apply_fn, p, x, y, EPS, m, chunk_size=c))
    rows = []
    for batch in (2, 128):
        x = jax.random.uniform(jax.random.PRNGKey(0), (batch, 28, 28, 1))
        y = jnp.zeros((batch,), jnp.int32)
        args = {"forward": (model.params, x)}
        compile_s = {}
        for name, fn in fns.items():
            a = args.get(name, (model.params, x, y))
            t = time.perf_counter()
            jax.block_until_ready(fn(*a))
            compile_s[name] = time.perf_counter() - t
        times = {name: [] for name in fns}
        for _ in range(REPEATS[batch]):  # interleaved
            for name, fn in fns.items():
                a = args.get(name, (model.params, x, y))
                t = time.perf_counter()
                jax.block_until_ready(fn(*a))
                times[name].append(time.perf_counter() - t)
        base = np.median(times["forward"])
        for name in fns:
            med = float(np.median(times[name]))
            rows.append((batch, name, med * 1e3, med / base, compile_s[name]))
            print(rows[-1], flush=True)
    print(f"\nmachine: {platform.machine()}, {jax.devices()[0].platform}, jax {jax.__version__}")
    print("| batch | method | median ms | x forward | first call (compile) s |")
    print("|---|---|---|---|---|")
    for b, n, ms, ratio, comp in rows:
        print(f"| {b} | {n} | {ms:.2f} | {ratio:.1f} | {comp:.1f} |")


if __name__ == "__main__":
    main()
