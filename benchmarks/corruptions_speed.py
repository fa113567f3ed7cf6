"""Images per second of the 19 ImageNet-C corruptions at severity 3: robustjax vs
imagecorruptions-imaug (the reference, NumPy/SciPy/OpenCV/numba, one image at a time).

    PYTHONPATH=. python benchmarks/corruptions_speed.py [--batch 64] [--ref-images 8]

robustjax corrupts a batch of ``--batch`` 224 x 224 images in one jitted call (timed after a
warm-up call that compiles it; the compile time is reported separately). The reference runs
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
    ap.add_argument("--reps", type=int, default=3, help="timed robustjax calls (median)")
    ap.add_argument("--only", default="", help="comma-separated corruptions; no results file")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "corruptions.md"))
    args = ap.parse_args()

    import imagecorruptions

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
        f"--ref-images {args.ref_images} --severity {args.severity}`",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores (shared with other jobs; load average at the end: "
        f"{os.getloadavg()[0]:.1f}), jax {jax.__version__} on {jax.devices()[0].platform}.",
        "",
        f"Severity {args.severity}, 224 x 224 RGB images. robustjax: one jitted call on a batch of "
        f"{args.batch} (median of {args.reps} calls after a compiling first call); reference: "
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
        "What moved the numbers (2.7x -> 5.5x and 5.8x overall in two runs, same machine and command; per-corruption ratios quoted below are from the 5.5x run):",
        "",
        "* Random draws: `jax.random`'s threefry costs ~15 ns per value on XLA:CPU (2.2 ms per "
        "224 x 224 x 3 image, more than a whole reference noise corruption). Per-pixel draws now "
        "come from Philox-4x32-10 written as element-wise JAX ops keyed by the caller's key "
        "(`corruptions/_philox.py`, checked against Random123's known-answer vectors): ~0.8 ms "
        "per image for uniforms. Gaussian noise 0.8x -> 2.4x, impulse 0.4x -> 2.3x, speckle "
        "1.4x -> 2.4x. Laying the 4 Philox words out row by row matters: a flat concatenation "
        "or interleave cost 20-30x the generator.",
        "* Shot noise: the inverse-CDF Poisson search is unrolled to the support bound "
        "(tail < 1e-10) so it fuses into one kernel; a `while_loop` wrote its state every trip. "
        "1.2x -> 3.1x.",
        "* Glass blur: the reference's 145k sequential pixel moves (severity 3) run as 1,128 "
        "parallel waves of non-interfering moves (wave `4d^2 i + 2d a + b`), with exactly the "
        "sequential result (brute-force test), on one packed uint32 per pixel. 0.5x -> 3.4x.",
        "* Spatter: the water drops' Canny / distance transform / equalisation moved from a "
        "NumPy host callback to JAX, equal to OpenCV's pipeline to 1e-6. 0.7x -> 1.1x.",
        "* 1-D filters slice one contiguous run per tap (axis merged with the minor axes): XLA:CPU "
        "does not vectorise loops whose innermost axis is the 3 channels. Gaussian blur 1.7x -> "
        "2.7x.",
        "",
        "What still limits it (goal >= 10x overall, not met): JPEG (Pillow through "
        "`jax.pure_callback`, 0.3x), defocus blur (FFT convolution, 0.9x), pixelate (1.0x), "
        "spatter (1.1x: 20 rounds of chamfer relaxation), fog (1.7x); the 10x total would need "
        "every corruption at about 0.75 ms per image. XLA:CPU element-wise kernels run at ~6 GB/s "
        "on this 2-core VM. On an accelerator every corruption except JPEG runs on device.",
        "",
    ]
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"overall x{overall:.1f}; wrote {args.out}")


if __name__ == "__main__":
    main()
