"""How much the 8-bit convention moves corruption error rates: the same model, images and keys
evaluated with ``corrupt(..., quantize=True)`` (ImageNet-C's stored uint8 images) and with the
unrounded floats.

    PYTHONPATH=. python benchmarks/corruptions_8bit.py [--examples 1000]

The model is the embedded default (the MNIST CNN the report uses), on the first ``--examples``
mnist5k test digits, all 19 corruptions x 5 severities at the report's settings
(``scale_pixels``: 28-px digits). Writes benchmarks/results/corruptions_8bit.md with the error
per corruption and severity both ways and the largest shifts, in points (percent).
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np

from robustjax import data
from robustjax.corruptions import BENCHMARK_CORRUPTIONS, CORRUPTIONS
from robustjax.models.default import embedded_default
from robustjax.report.corruptions import corruption_errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=1000)
    args = ap.parse_args()
    model = embedded_default()
    x, y = data.load("mnist5k", "test")
    x, y = np.asarray(x[:args.examples]), np.asarray(y[:args.examples])
    key = jax.random.PRNGKey(0)
    both = {q: corruption_errors(model, x, y, key, scale_pixels=True, quantize=q)
            for q in (True, False)}
    rows, shifts = [], []
    for name in CORRUPTIONS:
        q, f = np.array(both[True][name]), np.array(both[False][name])
        d = 100 * (q - f)
        shifts.append((np.abs(d).max(), name, int(np.abs(d).argmax()) + 1, d))
        rows.append(f"| {name} | " + " | ".join(f"{100 * a:.1f} / {100 * b:.1f}"
                                               for a, b in zip(q, f))
                    + f" | {d.mean():+.2f} |")
    bench = list(BENCHMARK_CORRUPTIONS)
    mean_q = 100 * np.mean([both[True][n] for n in bench])
    mean_f = 100 * np.mean([both[False][n] for n in bench])
    top = sorted(shifts, reverse=True)[:5]
    lines = [
        "# The 8-bit convention: quantized vs unrounded corruptions",
        "",
        f"Command: `PYTHONPATH=. python benchmarks/corruptions_8bit.py --examples {len(y)}`. "
        f"Embedded default CNN, first {len(y)} mnist5k test digits, key 0, `scale_pixels=True` "
        "(as the report).",
        "",
        f"Mean error over the 15 benchmark corruptions x 5 severities: **{mean_q:.2f}% "
        f"quantized, {mean_f:.2f}% unrounded** (shift {mean_q - mean_f:+.2f} points).",
        "",
        "Largest shifts (points, quantized - unrounded): " + "; ".join(
            f"{n} s{s} {d[s - 1]:+.1f}" for _, n, s, d in top) + ".",
        "",
        "| corruption | s1 | s2 | s3 | s4 | s5 | mean shift |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Cells: top-1 error % quantized / unrounded.",
    ]
    out = pathlib.Path(__file__).parent / "results" / "corruptions_8bit.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
