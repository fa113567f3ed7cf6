"""PGD-AT and TRADES in robustjax vs the same recipe hand-written in PyTorch, on mnist5k.

Issue 14, "Correctness against independent references": the same model (robustjax's ``cnn``,
channels (32, 64), dense 128), the same initial weights (the robustjax initialisation copied
into torch), the same batch order (``data.batches(..., shuffle_seed=shuffle + epoch)``, what
``train.fit`` uses), the same optimiser (Adam, cosine-decayed lr from 1e-3, batch 50) and the
same schedule (eps 0 for one epoch, then linear to 0.3 over 6 epochs; 10 sign steps of 0.05).
Only the random numbers of the attacks' starts differ (different RNGs), so several seeds are
run. Both final models are evaluated by one evaluator: the torch weights are converted back
into the JAX model and attacked with ``robustjax.attacks.pgd`` (PGD-40, step 0.01, eps 0.3,
random start, one fixed key) on the 1,000 mnist5k test digits.

The PyTorch side is written from the papers' public code, not from robustjax:

* PGD-AT (Madry et al. 2018): ``x + U(-eps, eps)`` clipped to [0, 1], then ``x_adv + a *
  sign(grad CE)`` clipped to the eps-ball and [0, 1]; the update minimises CE at ``x_adv``.
* TRADES (Zhang et al. 2019, ``trades.py``'s ``trades_loss``): ``model.eval()``, ``x + 0.001
  randn``, sign steps on ``KLDivLoss(sum)(log_softmax(f(x_adv)), softmax(f(x)))``, clipped to
  the ball and [0, 1]; ``model.train()``; ``CE(f(x), y) + beta * KLDivLoss(sum) / batch``.

The robustjax side is ``train.train_step`` jitted exactly as ``train.fit`` builds it (same
step keys ``fold_in(key, step)``, same batches); the loop is written out here only so that the
two frameworks' epochs can be interleaved for the wall-time comparison (one robustjax epoch,
then one torch epoch, ...). The first robustjax epoch includes compilation and is reported
separately; the per-epoch time is the median of the others (and of all torch epochs).

Run: ``PYTHONPATH=. python benchmarks/train_pytorch_parity.py [--seeds 0 1 2] [--epochs 20]
[--recipes pgd_at trades] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from robustjax import attacks, data, models, train
from robustjax.train import schedules

EPS, STEP, STEPS, BATCH, LR, BETA = 0.3, 0.05, 10, 50, 1e-3, 1.0


# ------------------------------------------------------------------------- the torch model


class TorchCNN(torch.nn.Module):
    """robustjax's ``cnn(channels=(32, 64), hidden=128)`` in torch, on NCHW input.

    The flatten is taken in NHWC order (``permute(0, 2, 3, 1)``), the order the JAX model
    flattens in, so the first dense kernel is copied unchanged.
    """

    def __init__(self, channels=(32, 64), hidden=128, num_classes=10, in_channels=1,
                 spatial=7):
        super().__init__()
        self.conv0 = torch.nn.Conv2d(in_channels, channels[0], 4, 2, 1)
        self.conv1 = torch.nn.Conv2d(channels[0], channels[1], 4, 2, 1)
        self.dense0 = torch.nn.Linear(spatial * spatial * channels[1], hidden)
        self.head = torch.nn.Linear(hidden, num_classes)

    def forward(self, x):
        h = F.relu(self.conv0(x))
        h = F.relu(self.conv1(h))
        h = h.permute(0, 2, 3, 1).flatten(1)
        return self.head(F.relu(self.dense0(h)))


def jax_to_torch(params, model: TorchCNN) -> None:
    p = params["params"]
    with torch.no_grad():
        for name in ("conv0", "conv1"):
            getattr(model, name).weight.copy_(
                torch.from_numpy(np.asarray(p[name]["kernel"]).transpose(3, 2, 0, 1).copy()))
            getattr(model, name).bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))
        for name in ("dense0", "head"):
            getattr(model, name).weight.copy_(
                torch.from_numpy(np.asarray(p[name]["kernel"]).T.copy()))
            getattr(model, name).bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))


def torch_to_jax(model: TorchCNN) -> dict:
    out = {}
    for name in ("conv0", "conv1"):
        m = getattr(model, name)
        out[name] = {"kernel": jnp.asarray(m.weight.detach().numpy().transpose(2, 3, 1, 0)),
                     "bias": jnp.asarray(m.bias.detach().numpy())}
    for name in ("dense0", "head"):
        m = getattr(model, name)
        out[name] = {"kernel": jnp.asarray(m.weight.detach().numpy().T),
                     "bias": jnp.asarray(m.bias.detach().numpy())}
    return {"params": out}


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# ------------------------------------------------------------------- the torch recipes


def eps_at(step: int, spe: int) -> float:
    """0 for ``spe`` steps, then linear to EPS over ``6 spe`` steps (``schedules.eps_ramp``)."""
    return EPS * min(max(step - spe, 0) / (6 * spe), 1.0)


def lr_at(step: int, total: int) -> float:
    """``optax.cosine_decay_schedule(LR, total)`` at ``step``."""
    return LR * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def torch_pgd(model, x, y, eps):
    """Madry et al.'s PGD: uniform start, sign steps, clip to the eps-ball and [0, 1]."""
    x_adv = torch.clamp(x + torch.empty_like(x).uniform_(-eps, eps), 0.0, 1.0)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        grad, = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + STEP * torch.sign(grad)
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


def torch_pgd_at_loss(model, x, y, eps):
    model.eval()
    x_adv = torch_pgd(model, x, y, eps)
    model.train()
    return F.cross_entropy(model(x_adv), y)


def torch_trades_loss(model, x, y, eps, beta=BETA):
    """Zhang et al.'s ``trades_loss`` (their trades.py), distance 'l_inf'."""
    criterion_kl = torch.nn.KLDivLoss(reduction="sum")
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                   F.softmax(model(x), dim=1))
        grad, = torch.autograd.grad(loss_kl, [x_adv])
        x_adv = x_adv.detach() + STEP * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / len(x)) * criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                                F.softmax(model(x), dim=1))
    return loss_natural + beta * loss_robust


TORCH_LOSSES = {"pgd_at": torch_pgd_at_loss, "trades": torch_trades_loss}


def robustjax_loss(recipe: str, spe: int):
    ramp = schedules.eps_ramp(EPS, 6 * spe, spe)
    if recipe == "pgd_at":
        return train.pgd_at_loss(train.PGDATConfig(eps=ramp, step_size=STEP, steps=STEPS))
    return train.trades_loss(train.TRADESConfig(eps=ramp, step_size=STEP, steps=STEPS,
                                                beta=BETA))


# ---------------------------------------------------------------------------- one run


def evaluate(apply_fn, params, xt, yt, key):
    """Clean and PGD-40 (step 0.01, eps 0.3) robust accuracy with robustjax's evaluator."""
    clean = float(jnp.mean(jnp.argmax(apply_fn(params, xt), -1) == yt))
    res = attacks.pgd(apply_fn, params, xt, yt, key,
                      attacks.PGDConfig(eps=EPS, step_size=0.01, steps=40))
    return clean, 1.0 - float(jnp.mean(res.success))


def run_one(recipe: str, seed: int, epochs: int, log=print) -> dict:
    x, y = data.load("mnist5k", "train")
    xt, yt = data.load("mnist5k", "test")
    xt, yt = jnp.asarray(xt), jnp.asarray(yt)
    spe = len(x) // BATCH
    total = epochs * spe
    shuffle = 100 * seed
    model = models.create("cnn", num_classes=10, channels=(32, 64), hidden=128,
                          key=jax.random.PRNGKey(seed))

    # robustjax: train_step jitted as fit builds it
    opt = optax.adam(optax.cosine_decay_schedule(LR, total))
    step_fn = jax.jit(functools.partial(train.train_step, apply_fn=model.apply_fn,
                                        optimizer=opt, loss_fn=robustjax_loss(recipe, spe)))
    state = train.init_state(model.params, opt)
    key = jax.random.PRNGKey(seed + 1)

    # torch: the same initial weights, forward checked against the JAX model first
    torch.manual_seed(seed)
    tmodel = TorchCNN()
    jax_to_torch(model.params, tmodel)
    probe = x[:200]
    with torch.no_grad():
        t_logits = tmodel(nchw(probe)).numpy()
    forward_diff = float(np.max(np.abs(t_logits - np.asarray(model.apply_fn(model.params,
                                                                           probe)))))
    if forward_diff > 1e-4:
        raise AssertionError(f"torch and JAX forward passes differ by {forward_diff}")
    topt = torch.optim.Adam(tmodel.parameters(), lr=LR)
    tloss_fn = TORCH_LOSSES[recipe]
    tstep = 0

    jax_seconds, torch_seconds, jax_losses, torch_losses = [], [], [], []
    for epoch in range(epochs):
        order = list(data.batches(x, y, BATCH, shuffle_seed=shuffle + epoch,
                                  drop_remainder=True))
        start = time.perf_counter()
        losses = []
        for xb, yb in order:
            state, loss = step_fn(state, xb, yb, jax.random.fold_in(key, int(state.step)))
            losses.append(loss)
        jax_losses.append(float(np.mean(jax.device_get(losses))))
        jax_seconds.append(time.perf_counter() - start)

        start = time.perf_counter()
        losses = []
        for xb, yb in order:
            for group in topt.param_groups:
                group["lr"] = lr_at(tstep, total)
            loss = tloss_fn(tmodel, nchw(xb), torch.from_numpy(yb).long(), eps_at(tstep, spe))
            topt.zero_grad()
            loss.backward()
            topt.step()
            tstep += 1
            losses.append(loss.item())
        torch_losses.append(float(np.mean(losses)))
        torch_seconds.append(time.perf_counter() - start)
        log(f"  {recipe} seed {seed} epoch {epoch + 1}/{epochs}: loss robustjax "
            f"{jax_losses[-1]:.4f} torch {torch_losses[-1]:.4f} "
            f"({jax_seconds[-1]:.1f} s / {torch_seconds[-1]:.1f} s)")

    eval_key = jax.random.PRNGKey(1234)
    rj = evaluate(model.apply_fn, state.params, xt, yt, eval_key)
    tt = evaluate(model.apply_fn, torch_to_jax(tmodel), xt, yt, eval_key)
    return {"recipe": recipe, "seed": seed, "epochs": epochs, "forward_max_abs_diff": forward_diff,
            "robustjax": {"clean": rj[0], "pgd40": rj[1], "loss": jax_losses,
                          "epoch_seconds": jax_seconds},
            "torch": {"clean": tt[0], "pgd40": tt[1], "loss": torch_losses,
                      "epoch_seconds": torch_seconds}}


def summary(rows) -> str:
    lines = ["| recipe | seed | robustjax clean | robustjax PGD-40 | torch clean | torch PGD-40 "
             "| s/epoch robustjax (first) | s/epoch torch |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["robustjax"], r["torch"]
        lines.append(f"| {r['recipe']} | {r['seed']} | {100 * a['clean']:.1f} | "
                     f"{100 * a['pgd40']:.1f} | {100 * b['clean']:.1f} | {100 * b['pgd40']:.1f} "
                     f"| {np.median(a['epoch_seconds'][1:] or a['epoch_seconds']):.1f} "
                     f"({a['epoch_seconds'][0]:.1f}) | {np.median(b['epoch_seconds']):.1f} |")
    for recipe in sorted({r["recipe"] for r in rows}):
        rs = [r for r in rows if r["recipe"] == recipe]
        cell = []
        for fw in ("robustjax", "torch"):
            for metric in ("clean", "pgd40"):
                v = 100 * np.array([r[fw][metric] for r in rs])
                cell.append(f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f}")
        gap = np.mean([r["robustjax"]["pgd40"] - r["torch"]["pgd40"] for r in rs]) * 100
        lines.append(f"| {recipe} | mean ± std ({len(rs)}) | {cell[0]} | {cell[1]} | {cell[2]} "
                     f"| {cell[3]} | robust gap {gap:+.1f} | |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--recipes", nargs="+", default=["pgd_at", "trades"],
                    choices=sorted(TORCH_LOSSES))
    ap.add_argument("--json", default=None, help="write every number to this file")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = {"machine": f"{platform.processor() or platform.machine()}, "
                      f"{jax.device_count()} {jax.default_backend()} device(s), "
                      f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
                      f"jax {jax.__version__}", "rows": []}
    for seed in args.seeds:
        for recipe in args.recipes:
            out["rows"].append(run_one(recipe, seed, args.epochs))
            print(summary(out["rows"][-1:]).splitlines()[2], flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(out, f, indent=1)
    print()
    print(summary(out["rows"]))


if __name__ == "__main__":
    main()
