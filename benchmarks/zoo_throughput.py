"""Forward throughput (images/s) of zoo models on CPU at batch 8: robustjax (JAX) vs PyTorch.

For each model, timm builds the PyTorch model with random weights (``pretrained=False``, no
download); robustjax loads *the same weights* from the in-memory state dict
(``robustjax.models.load(name, state_dict)``), and the two outputs are compared (max |diff|) to
make sure the same network is timed. JAX runs ``jax.jit(apply_fn)``; PyTorch runs the eval model
under ``torch.inference_mode()`` with all CPU threads. Timing is interleaved (JAX, PyTorch,
JAX, ...) over ``--rounds`` rounds of ``--iters`` forwards each; the median per-batch time gives
images/s, and the ratio is JAX / PyTorch throughput (> 1: JAX faster).

Without torch + timm only the JAX side runs (random init via ``robustjax.models.create``).

timm needs a torch/torchvision pair that differs from robustjax's test environment, so the
usual command uses the timm venv's python and appends robustjax's JAX site-packages::

    PYTHONPATH=. /work/venv-timm/bin/python benchmarks/zoo_throughput.py \
        --extra-site /work/main/.venv/lib/python3.11/site-packages

Results: benchmarks/results/zoo.md (written by ``--write``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time

MODELS = ("convnext_tiny", "vit_base_patch32_224", "resnet101")  # same names in timm


def _time(fn, iters):
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench(name, batch, rounds, iters, torch_ok):
    import jax
    import numpy as np

    from robustjax.models import create, load

    rng = np.random.RandomState(0)
    if torch_ok:
        import timm
        import torch

        tmodel = timm.create_model(name, pretrained=False).eval()
        sd = {k: v.detach().cpu().numpy() for k, v in tmodel.state_dict().items()}
        model = load(name, sd)
    else:
        model = create(name)
    x = rng.rand(batch, *model.spec.input_shape).astype(np.float32)
    fwd = jax.jit(model.apply_fn)
    t0 = time.perf_counter()
    y_jax = np.asarray(fwd(model.params, x))
    compile_s = time.perf_counter() - t0
    run_jax = lambda: fwd(model.params, x).block_until_ready()  # noqa: E731
    row = {"model": name, "params_M": sum(np.size(v) for v in
                                          jax.tree.leaves(model.params["params"])) / 1e6,
           "jit_compile_s": compile_s}
    t_jax, t_torch = [], []
    if torch_ok:
        mean = torch.tensor(model.spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(model.spec.std).view(1, -1, 1, 1)
        xt = ((torch.from_numpy(x).permute(0, 3, 1, 2) - mean) / std).contiguous()

        def run_torch():
            with torch.inference_mode():
                return tmodel(xt)

        y_torch = run_torch().numpy()
        row["max_abs_diff"] = float(np.abs(y_jax - y_torch).max())
    for _ in range(rounds):
        t_jax += _time(run_jax, iters)
        if torch_ok:
            t_torch += _time(run_torch, iters)
    row["jax_img_s"] = batch / statistics.median(t_jax)
    if torch_ok:
        row["torch_img_s"] = batch / statistics.median(t_torch)
        row["ratio_jax_over_torch"] = row["jax_img_s"] / row["torch_img_s"]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--extra-site", default=None,
                   help="site-packages appended to sys.path (where jax/flax live)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--write", action="store_true", help="write benchmarks/results/zoo.md")
    args = p.parse_args(argv)
    if args.extra_site:
        sys.path.append(args.extra_site)
    torch_ok = False
    if not args.no_torch:
        try:
            import timm  # noqa: F401
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            torch_ok = True
        except ImportError as e:
            print(f"PyTorch side skipped: {e}")
    import jax

    rows = []
    for name in args.models:
        row = bench(name, args.batch, args.rounds, args.iters, torch_ok)
        print(row, flush=True)
        rows.append(row)
    lines = [
        "# Zoo forward throughput (CPU, batch %d)" % args.batch, "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores,"
        f" Python {platform.python_version()}, jax {jax.__version__}"
        + (f", torch {sys.modules['torch'].__version__}, timm {sys.modules['timm'].__version__}"
           if torch_ok else "")
        + "; load average at the end %.1f (other jobs share the cores: ratios from the"
        " interleaved run are more trustworthy than absolute images/s)" % os.getloadavg()[0], "",
        "Command: `PYTHONPATH=. " + " ".join([pathlib.Path(sys.executable).as_posix()]
                                             + sys.argv) + "`", "",
        "| model | params (M) | JAX img/s | PyTorch img/s | JAX / PyTorch | max abs diff "
        "logits | JAX compile (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params_M']:.1f} | {r['jax_img_s']:.2f} | "
                     f"{r.get('torch_img_s', float('nan')):.2f} | "
                     f"{r.get('ratio_jax_over_torch', float('nan')):.2f} | "
                     f"{r.get('max_abs_diff', float('nan')):.1e} | {r['jit_compile_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        out = pathlib.Path(__file__).parent / "results/zoo.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)
    return rows


if __name__ == "__main__":
    main()
