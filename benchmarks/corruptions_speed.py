"""Images per second of the 19 ImageNet-C corruptions at severity 3: robustjax vs
imagecorruptions-imaug (the reference, NumPy/SciPy/OpenCV/numba, one image at a time).

    PYTHONPATH=. python benchmarks/corruptions_speed.py [--batch 64] [--ref-images 8]

robustjax corrupts a batch of ``--batch`` 224 x 224 images in one jitted call (timed after a
warm-up call that compiles it and one more untimed call; the compile time is reported
separately). The reference runs
image by image; to keep the run short it is timed on the first ``--ref-images`` images (its
cost is linear in the number of images) after one warm-up image (numba compiles glass blur).
Corruptions are interleaved: reference, then robustjax, per corruption. Writes
benchmarks/results/corruptions.md.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time

import jax
import numpy as np
import skimage.data


def images(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    photos = [skimage.data.chelsea(), skimage.data.astronaut(), skimage.data.coffee(),
              skimage.data.rocket()]
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        r = rng.integers(0, p.shape[0] - 224)
        c = rng.integers(0, p.shape[1] - 224)
        out.append(p[r:r + 224, c:c + 224, :3])
    return np.stack(out).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ref-images", type=int, default=8)
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5, help="timed robustjax calls (median)")
    ap.add_argument("--only", default="", help="comma-separated corruptions; no results file")
    ap.add_argument("--reuse-buffers", action="store_true",
                    help="robustjax.runtime.reuse_large_buffers() first (glibc malloc serves "
                    "large buffers from its heap; applies to both libraries in this process)")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "corruptions.md"))
    args = ap.parse_args()

    import imagecorruptions

    if args.reuse_buffers:
        from robustjax.runtime import reuse_large_buffers

        if not reuse_large_buffers():
            raise SystemExit("--reuse-buffers needs glibc")

    from robustjax.corruptions import CORRUPTIONS, corrupt

    x8 = images(args.batch)
    x = jax.numpy.asarray(x8 / 255.0, jax.numpy.float32)
    key = jax.random.key(0)
    rows = []
    tot_ref = tot_ours = 0.0
    names = [n for n in args.only.split(",") if n] or list(CORRUPTIONS)
    for name in names:
        imagecorruptions.corrupt(x8[0], args.severity, name)  # warm-up (numba, file reads)
        t = time.perf_counter()
        for im in x8[: args.ref_images]:
            imagecorruptions.corrupt(im, args.severity, name)
        ref_s = (time.perf_counter() - t) / args.ref_images  # seconds per image

        t = time.perf_counter()
        corrupt(x, name, args.severity, key).block_until_ready()
        compile_s = time.perf_counter() - t
        # one more untimed call: the first run after compiling is 2-3x slower (first touch of
        # the program's buffers); a sweep over a dataset sees the steady state
        corrupt(x, name, args.severity, jax.random.fold_in(key, 10_000)).block_until_ready()
        times = []
        for rep in range(args.reps):
            t = time.perf_counter()
            corrupt(x, name, args.severity, jax.random.fold_in(key, 1 + rep)).block_until_ready()
            times.append(time.perf_counter() - t)
        ours_s = float(np.median(times)) / args.batch
        tot_ref += ref_s
        tot_ours += ours_s
        rows.append((name, 1 / ref_s, 1 / ours_s, ref_s / ours_s, compile_s))
        print(f"{name:18s} ref {1 / ref_s:8.1f} img/s  robustjax {1 / ours_s:8.1f} img/s  "
              f"x{ref_s / ours_s:6.1f}  (first call {compile_s:.1f} s)", flush=True)

    if args.only:
        return
    lines = [
        "# Corruption speed: robustjax vs imagecorruptions-imaug",
        "",
        f"Command: `PYTHONPATH=. python benchmarks/corruptions_speed.py --batch {args.batch} "
        f"--ref-images {args.ref_images} --severity {args.severity}"
        f"{' --reuse-buffers' if args.reuse_buffers else ''}`",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores (shared with other jobs; load average at the end: "
        f"{os.getloadavg()[0]:.1f}), jax {jax.__version__} on {jax.devices()[0].platform}.",
        "",
        f"Severity {args.severity}, 224 x 224 RGB images. robustjax: one jitted call on a batch of "
        f"{args.batch} (median of {args.reps} calls after a compiling first call and one more "
        "untimed call); reference: "
        f"imagecorruptions-imaug image by image, timed on {args.ref_images} images "
        "(per-image cost, linear in the number of images). One run.",
        "",
        "| corruption | reference img/s | robustjax img/s | ratio | robustjax first call (s) |",
        "|---|---|---|---|---|",
    ]
    for name, r, o, ratio, c in rows:
        lines.append(f"| {name} | {r:.1f} | {o:.1f} | {ratio:.1f}x | {c:.1f} |")
    overall = tot_ref / tot_ours
    lines += [
        f"| **all 19 (time to apply each once)** | {1 / tot_ref:.2f} | {1 / tot_ours:.2f} | "
        f"**{overall:.1f}x** | |",
        "",
        "How robustjax gets there (history on this machine and command: 2.7x, then 5.5x and "
        "5.8x, then 7.9-8.4x, then 10x and more; see benchmarks/README.md):",
        "",
        "* Multi-pass corruptions (blurs, glass, spatter) run in chunks of 4 images with "
        "`lax.map` on CPU (`_fusion.map_batch`): their intermediates stay in cache, where a "
        "full-batch pass goes through memory (a plain copy of the batch costs 0.2 ms/image here).",
        "* Defocus blur (severities 1-3): the disk kernel factors exactly into a 3-tap Gaussian "
        "per axis and the disk's row boxes (~30 additions per value instead of 225 taps or FFTs).",
        "* Spatter's chamfer distance: propagation along the straight, then the knight move "
        "lines by doubling in OpenCV's fixed point (exact, 9 passes instead of 20 relaxations).",
        "* Brightness and saturate: the HSV round trip in closed form (`x v'/v`, "
        "`v - (v - x) s'/s`).",
        "* Random draws: per-pixel values come from Philox-2x32-10 written as element-wise JAX "
        "ops (`corruptions/_philox.py`, Random123's known-answer vectors), one block per value, "
        "instead of `jax.random`'s threefry (~15 ns per value on XLA:CPU).",
        "* Pixel-wise noises are compiled on the batch viewed as `[B, H*W*C]`: XLA:CPU vectorises "
        "a fused loop only along a long minor axis; colour maths works on channel planes for the "
        "same reason.",
        "* `_ops.materialize` (a kept conditional) stops XLA from recomputing an expensive "
        "producer (a random field, a plasma level) once per filter tap that reads it.",
        "* Shot noise: the inverse-CDF Poisson search is unrolled to a support bound (tail < 1e-10).",
        "* Glass blur: the reference's sequential pixel moves run as parallel waves of "
        "non-interfering moves with exactly the sequential result (brute-force test), in a "
        "batch-minor layout.",
        "* Motion blur: taps unrolled into one fused pass, images mapped with `lax.map` on CPU "
        "(per-image dynamic slices stay slices).",
        "* Spatter: Canny / chamfer distance / equalisation in JAX (equal to OpenCV's pipeline); "
        "the histogram is one scatter-add.",
        "* JPEG: Pillow on a thread pool (its codec releases the GIL) on uint8 data.",
        "",
        f"Goal >= 10x overall: {'met' if overall >= 10 else 'not met'} in this run "
        f"({overall:.1f}x). Slowest relative to the reference here: "
        + ", ".join(f"{n} {ratio:.1f}x" for n, _, _, ratio, _ in sorted(rows, key=lambda r: r[3])[:4])
        + ". The reference's own speed varies by 20-30% between runs on this shared VM.",
        "",
    ]
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"overall x{overall:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()
