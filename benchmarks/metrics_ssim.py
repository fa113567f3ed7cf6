"""Average SSIM of a batch: robustjax's jitted JAX SSIM vs scikit-image's per-image loop.

Both compute the same quantity (Wang et al. 2004 settings; tests/test_metrics_imperceptibility
checks agreement to 1e-4). Runs are interleaved (JAX, skimage, JAX, ...) so machine load hits
both alike; the ratio of medians is reported. Writes benchmarks/results/metrics.md.

    python benchmarks/metrics_ssim.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import statistics
import sys
import time

import jax
import numpy as np
from skimage.metrics import structural_similarity

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from robustjax.metrics import ssim  # noqa: E402

CASES = {"MNIST 256x28x28x1": (256, 28, 28, 1), "CIFAR 256x32x32x3": (256, 32, 32, 3),
         "ImageNet 16x224x224x3": (16, 224, 224, 3)}


def skimage_mean(x, xa):
    return float(np.mean([structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False, data_range=1,
                                                channel_axis=-1) for a, b in zip(x, xa)]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lines = ["| case | robustjax (jit, s) | scikit-image loop (s) | speed-up | max abs diff |",
             "|---|---|---|---|---|"]
    for name, shape in CASES.items():
        x = rng.uniform(size=shape).astype(np.float32)
        xa = np.clip(x + 0.05 * rng.standard_normal(shape), 0, 1).astype(np.float32)
        f = jax.jit(ssim)
        f(x, xa).block_until_ready()  # compile outside the timing
        tj, ts = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            got = float(f(x, xa).block_until_ready().mean())
            tj.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = skimage_mean(x, xa)
            ts.append(time.perf_counter() - t)
        mj, ms = statistics.median(tj), statistics.median(ts)
        lines.append(f"| {name} | {mj:.4f} | {ms:.4f} | {ms / mj:.1f}x | {abs(got - ref):.1e} |")
        print(lines[-1], flush=True)
    text = "\n".join([
        "# metrics: SSIM benchmark",
        "",
        f"Command: `python benchmarks/metrics_ssim.py --repeats {args.repeats}`; machine: "
        f"{platform.processor() or platform.machine()}, {jax.device_count()} JAX "
        f"{jax.default_backend()} device(s), jax {jax.__version__}. Median of interleaved runs; "
        "the JAX time excludes the one-off compilation. The development machine was shared by "
        "several processes (load ~10 on 2 cores), so absolute times are noisy; the ratio is "
        "the result. A speed-up below 1 means scikit-image (C filters on one image at a time) "
        "is faster: on XLA:CPU that is the case for large (224x224) images.",
        "",
        *lines, ""])
    out = pathlib.Path(__file__).resolve().parent / "results" / "metrics.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
