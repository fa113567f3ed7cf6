"""Cross-check DI-FGSM / TI-FGSM (``robustjax.attacks.transfer``) with torchattacks 3.5.1.

Crafting model: the embedded default MNIST CNN in JAX and its PyTorch twin
(``attacks_pgd_speed.torch_twin``, same weights). torchattacks' TIFGSM convolves the gradient
with a kernel stacked for 3 channels, so both libraries attack a 3-channel version: the digit
repeated on 3 channels, and the model sees the channel mean (the same function in both). The
adversarial images of both libraries are then evaluated in JAX on the model itself (white-box
success) and on the report's transfer surrogate, a second CNN (``report.blackbox``), as the
victim (transfer rate = fooling rate over the victim's clean-correct examples). Several seeds
per library give the seed noise; the gap must lie within it.

Run: ``PYTHONPATH=. python benchmarks/transfer_crosscheck.py [--n 500] [--seeds 5]``.
Writes ``benchmarks/results/transfer_crosscheck.md``.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import data
from robustjax.attacks import transfer as T
from robustjax.metrics.equations import fooling_rate
from robustjax.models import embedded_default
from robustjax.report import base, blackbox

ROOT = pathlib.Path(__file__).resolve().parent


def three_channels(apply_fn):
    return lambda p, x: apply_fn(p, jnp.mean(x, axis=-1, keepdims=True))


def torch_model3(model):
    import torch

    from benchmarks.attacks_pgd_speed import torch_twin

    net = torch_twin("cnn", model.params, model.spec)

    class Mean3(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x.mean(1, keepdim=True))

    return Mean3().eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.15, 0.3])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--kernel", type=int, default=5)
    args = ap.parse_args()

    import torch
    import torchattacks

    torch.set_num_threads(2)
    model = embedded_default()
    ctx = base.ReportContext(model=model, x=None, y=None, key=jax.random.PRNGKey(0),
                             out_dir=ROOT, quick=False)
    victim, _, how = blackbox.surrogate_model(ctx)
    x1, y = data.load("mnist5k", "test")
    x1, y = x1[:args.n], y[:args.n]
    x3 = np.repeat(x1, 3, axis=-1)
    f3 = three_channels(model.apply_fn)
    tnet = torch_model3(model)
    with torch.no_grad():
        t_logits = tnet(torch.tensor(x3).permute(0, 3, 1, 2)).numpy()
    gap = float(np.abs(t_logits - np.asarray(f3(model.params, jnp.asarray(x3)))).max())

    def evaluate(x_adv3):
        xa = jnp.mean(jnp.asarray(x_adv3), -1, keepdims=True)
        white = float(jnp.mean(jnp.argmax(model.apply_fn(model.params, xa), -1) != y))
        tr = float(fooling_rate(victim.apply_fn(victim.params, jnp.asarray(x1)),
                                victim.apply_fn(victim.params, xa), jnp.asarray(y)))
        linf = float(jnp.max(jnp.abs(jnp.asarray(x_adv3) - x3)))
        return white, tr, linf

    rows, seconds = [], {"robustjax": 0.0, "torchattacks": 0.0}
    for attack in ("DIFGSM", "TIFGSM"):
        for eps in args.eps:
            alpha = eps / args.steps
            common = dict(eps=eps, steps=args.steps, decay=1.0, resize_rate=0.9,
                          diversity_prob=0.5)
            if attack == "DIFGSM":
                cfg = T.DIFGSMConfig(step_size=alpha, **common)
                jfn = T.difgsm
                tat = torchattacks.DIFGSM(tnet, alpha=alpha, **common)
            else:
                cfg = T.TIFGSMConfig(step_size=alpha, kernel_size=args.kernel, **common)
                jfn = T.tifgsm
                tat = torchattacks.TIFGSM(tnet, alpha=alpha, len_kernel=args.kernel, nsig=3,
                                          **common)
            run = jax.jit(functools.partial(jfn, f3, config=cfg))
            res = {"robustjax": [], "torchattacks": []}
            for s in range(args.seeds):
                t0 = time.perf_counter()
                xa = np.asarray(run(model.params, jnp.asarray(x3), jnp.asarray(y),
                                    jax.random.PRNGKey(s)).x_adv)
                seconds["robustjax"] += time.perf_counter() - t0
                res["robustjax"].append(evaluate(xa))
                torch.manual_seed(s)
                t0 = time.perf_counter()
                xt = tat(torch.tensor(x3).permute(0, 3, 1, 2), torch.tensor(y).long())
                seconds["torchattacks"] += time.perf_counter() - t0
                res["torchattacks"].append(evaluate(xt.permute(0, 2, 3, 1).numpy()))
            for lib, vals in res.items():
                v = np.asarray(vals)
                rows.append((attack, eps, lib, v[:, 0].mean(), v[:, 0].std(ddof=1),
                             v[:, 0].min(), v[:, 0].max(), v[:, 1].mean(), v[:, 1].std(ddof=1),
                             v[:, 1].min(), v[:, 1].max(), v[:, 2].max()))
            print(rows[-2], rows[-1], flush=True)

    lines = [
        "# Transfer attacks: robustjax DI/TI-FGSM vs torchattacks 3.5.1", "",
        f"`PYTHONPATH=. python benchmarks/transfer_crosscheck.py --n {args.n} --seeds "
        f"{args.seeds}` on {platform.machine()} CPU, JAX {jax.__version__}, torch "
        f"{torch.__version__}.", "",
        f"Crafting model: the embedded default MNIST CNN on 3 repeated channels (the model sees "
        f"their mean; needed because torchattacks' TIFGSM stacks its kernel for 3 channels), "
        f"JAX and its PyTorch twin (max logit difference {gap:.1e}). {args.n} mnist5k test "
        f"digits; {args.steps} steps, step eps/{args.steps}, momentum 1.0, DI resize 0.9 with "
        f"p = 0.5, TI Gaussian kernel {args.kernel}x{args.kernel} (nsig 3). Every adversarial "
        f"batch is scored in JAX: white-box = error rate of the crafting model; transfer = "
        f"fooling rate of the victim (the report's second CNN, {blackbox.SURROGATE_OVERRIDES},"
        f" {how}) over its clean-correct digits. {args.seeds} seeds per library "
        f"(JAX keys 0..{args.seeds - 1}, torch.manual_seed 0..{args.seeds - 1}): mean, sample "
        f"std and [min, max].", "",
        "| attack | eps | library | white-box success | transfer rate | max Linf |",
        "|---|---|---|---|---|---|"]
    for a, e, lib, wm, ws, wlo, whi, tm, ts, tlo, thi, li in rows:
        lines.append(f"| {a} | {e:g} | {lib} | {wm:.4f} ± {ws:.4f} [{wlo:.3f}, {whi:.3f}] | "
                     f"{tm:.4f} ± {ts:.4f} [{tlo:.3f}, {thi:.3f}] | {li:.4f} |")
    lines += ["", "Gap (robustjax - torchattacks) against the seed noise (the larger of the two "
              "sample stds; 'within' means |gap| <= 2 x noise):", "",
              "| attack | eps | white-box gap | transfer gap | within |", "|---|---|---|---|---|"]
    for i in range(0, len(rows), 2):
        a, b = rows[i], rows[i + 1]
        gw, gt = a[3] - b[3], a[7] - b[7]
        nw, nt = max(a[4], b[4]), max(a[8], b[8])
        ok = abs(gw) <= 2 * nw + 1e-12 and abs(gt) <= 2 * nt + 1e-12
        lines.append(f"| {a[0]} | {a[1]:g} | {gw:+.4f} (noise {nw:.4f}) | {gt:+.4f} "
                     f"(noise {nt:.4f}) | {'yes' if ok else 'no'} |")
    lines += ["", f"Time for all attack calls (compile included for robustjax, shared 2-core "
              f"CPU under load, not a benchmark): robustjax {seconds['robustjax']:.1f} s, "
              f"torchattacks {seconds['torchattacks']:.1f} s."]
    out = ROOT / "results" / "transfer_crosscheck.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
