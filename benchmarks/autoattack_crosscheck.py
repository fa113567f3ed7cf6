"""AutoAttack: robustjax vs the reference implementation (pyautoattack 0.2.0, Croce & Hein's
packaged fra31/auto-attack) and torchattacks 3.5.1's port, on the same weights.

Models: the embedded default CNN (MNIST, ``robustjax.models.embedded_default``; its PyTorch twin
from ``benchmarks/attacks_pgd_speed.torch_twin``) and, for the test fixture, a tiny MLP on the
8x8 digits. Both libraries see the same N test images (a class-mixed subset of mnist5k's test
split) and the same eps; each reports its per-attack robust-accuracy sequence (the reference's
``robust accuracy after ...`` log lines, captured from its logger), the final robust accuracy
and time per stage. The per-example robust flags are compared too.

    PYTHONPATH=. python benchmarks/autoattack_crosscheck.py --runs linf-standard --n 500
    PYTHONPATH=. python benchmarks/autoattack_crosscheck.py --fixture   # tests/fixtures npz

Results: benchmarks/results/autoattack.md (the table is printed; paste it there).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from robustjax import data  # noqa: E402
from robustjax.attacks.autoattack import AutoAttackConfig, autoattack  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNS = {  # name: (norm, eps, version)
    "linf-standard": ("linf", 0.1, "standard"),
    "l2-standard": ("l2", 1.5, "standard"),
    "l1-standard": ("l1", 8.0, "standard"),
    "linf-plus": ("linf", 0.1, "plus"),
    "linf-rand": ("linf", 0.1, "rand"),
}
REF_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def reference_autoattack(net, x, y, norm, eps, version, bs, seed=0):
    """pyautoattack's AutoAttack; returns (robust flags, accuracy-after dict, seconds, log)."""
    import torch
    from pyautoattack import AutoAttack

    cap = _Capture()
    logger = logging.getLogger("auto-attack")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(cap)
    aa = AutoAttack(net, norm=REF_NORM[norm], eps=eps, version=version, device="cpu", seed=seed)
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous()
    yt = torch.tensor(y).long()
    t = time.perf_counter()
    _, y_adv = aa.run_standard_evaluation(xt, yt, batch_size=bs)
    seconds = time.perf_counter() - t
    logger.removeHandler(cap)
    acc = {}
    for line in cap.lines:
        m = re.match(r"initial accuracy: ([\d.]+)%", line)
        if m:
            acc["clean"] = float(m.group(1)) / 100
        m = re.match(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)", line)
        if m:
            acc[m.group(1).lower()] = float(m.group(2)) / 100
            acc[m.group(1).lower() + "_time"] = float(m.group(3))
    return (y_adv.numpy() == y), acc, seconds, cap.lines


def torchattacks_autoattack(net, x, y, norm, eps, version, seed=0):
    import torch
    import torchattacks

    atk = torchattacks.AutoAttack(net, norm=REF_NORM[norm], eps=eps, version=version,
                                  n_classes=10, seed=seed)
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous()
    yt = torch.tensor(y).long()
    t = time.perf_counter()
    adv = atk(xt, yt)
    seconds = time.perf_counter() - t
    with torch.no_grad():
        return net(adv).argmax(1).numpy() == y, seconds


def test_subset(n, seed=0):
    x, y = data.load("mnist5k", "test")
    pick = np.random.default_rng(seed).permutation(len(y))[:n]
    return x[pick].astype(np.float32), y[pick].astype(np.int32)


def compare(name, apply_fn, params, net, x, y, norm, eps, version, bs, with_ta):
    cfg = AutoAttackConfig(eps=eps, norm=norm, version=version, batch_size=bs)
    t = time.perf_counter()
    res = autoattack(apply_fn, params, x, y, jax.random.key(0), cfg,
                     log=lambda m: print("  [robustjax]", m, flush=True))
    t_rj = time.perf_counter() - t
    r_ref, acc_ref, t_ref, _ = reference_autoattack(net, x, y, norm, eps, version, bs)
    print("  [reference]", acc_ref, f"{t_ref:.1f} s", flush=True)
    row = dict(name=name, n=len(y), norm=norm, eps=eps, version=version,
               rj=res.accuracy_after, rj_s=res.seconds, rj_total=t_rj, ref=acc_ref,
               ref_total=t_ref, disagree=int(np.sum(res.robust != r_ref)),
               rj_robust=int(res.robust.sum()), ref_robust=int(r_ref.sum()))
    if with_ta:
        r_ta, t_ta = torchattacks_autoattack(net, x, y, norm, eps, version)
        row.update(ta=float(r_ta.mean()), ta_total=t_ta, ta_robust=int(r_ta.sum()))
    print(row, flush=True)
    return row


def table(rows):
    out = ["| run | n | attack | robustjax acc (s) | reference acc (cum. s) |",
           "|---|---|---|---|---|"]
    for r in rows:
        for k, v in r["rj"].items():
            ref = r["ref"].get(k)
            ref_t = r["ref"].get(k + "_time", "")
            out.append(f"| {r['name']} | {r['n']} | {k} | {100 * v:.1f}% "
                       f"({r['rj_s'].get(k, 0):.1f}) | "
                       f"{'' if ref is None else f'{100 * ref:.1f}%'} ({ref_t}) |")
        ta = f", torchattacks {r['ta_robust']} ({r['ta_total']:.0f} s)" if "ta" in r else ""
        out.append(f"| {r['name']} | | **robust examples** | **{r['rj_robust']}** "
                   f"({r['rj_total']:.0f} s total) | **{r['ref_robust']}** "
                   f"({r['ref_total']:.0f} s){ta}; per-example disagreements "
                   f"{r['disagree']} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------ fixture


def tiny_mlp_apply(p, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


def train_tiny_mlp(seed=0):
    import optax

    x, y = data.load("digits", "train")
    rng = np.random.default_rng(seed)
    p = {"w1": rng.normal(size=(64, 32)) / 8, "b1": np.zeros(32), "w2": rng.normal(size=(32, 10))
         / 6, "b2": np.zeros(10)}
    p = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
    opt = optax.adam(3e-3)
    st = opt.init(p)

    @jax.jit
    def step(p, st, xb, yb):
        g = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
            tiny_mlp_apply(q, xb), yb).mean())(p)
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st

    for _ in range(30):
        for i in range(0, len(y) - 63, 64):
            p, st = step(p, st, x[i:i + 64], y[i:i + 64])
    return p


def torch_mlp(p):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = {k: torch.tensor(np.asarray(v)) for k, v in p.items()}

        def forward(self, x):  # NCHW, one channel: flatten in HWC order = CHW for C = 1
            h = torch.relu(x.reshape(x.shape[0], -1) @ self.w["w1"] + self.w["b1"])
            return h @ self.w["w2"] + self.w["b2"]

    return Net().eval()


def make_fixture(path, n=100):
    """Tiny-MLP weights, n digits test images and the reference's results for each run."""
    import torch

    torch.set_num_threads(2)
    p = train_tiny_mlp()
    x, y = data.load("digits", "test")
    x, y = x[:n].astype(np.float32), y[:n].astype(np.int32)
    net = torch_mlp(p)
    out = {k: np.asarray(v) for k, v in p.items()}
    out.update(x=x, y=y)
    for run, (norm, eps, version) in {"linf": ("linf", 0.05, "standard"),
                                      "l2": ("l2", 0.5, "standard"),
                                      "l1": ("l1", 2.0, "standard")}.items():
        robust, acc, secs, _ = reference_autoattack(net, x, y, norm, eps, version, bs=n)
        print(run, acc, secs, flush=True)
        out[f"{run}_eps"] = np.float32(eps)
        out[f"{run}_robust"] = robust
        out[f"{run}_names"] = np.array([k for k in acc if not k.endswith("_time")])
        out[f"{run}_acc"] = np.array([acc[k] for k in acc if not k.endswith("_time")])
    np.savez_compressed(path, **out)
    print("wrote", path)


def seed_spread(n, seeds, eps=0.1):
    """How much APGD-CE (1 run, random start) moves with the seed, in each library."""
    import warnings

    import torch
    from pyautoattack.autopgd_base import APGDAttack

    from attacks_pgd_speed import torch_twin
    from robustjax.models import embedded_default

    torch.set_num_threads(2)
    m = embedded_default()
    net = torch_twin("cnn", m.params, m.spec)
    x, y = test_subset(n)
    xt, yt = torch.tensor(x).permute(0, 3, 1, 2).contiguous(), torch.tensor(y).long()
    cfg = AutoAttackConfig(eps=eps, version="custom", attacks=("apgd-ce",), apgd_restarts=1,
                           batch_size=250)
    rj, rf = [], []
    for s in range(seeds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rj.append(int(autoattack(m.apply_fn, m.params, x, y, jax.random.key(s),
                                     cfg).robust.sum()))
        atk = APGDAttack(net, n_restarts=1, n_iter=100, eps=eps, norm="Linf", seed=s,
                         device="cpu", loss="ce")
        with torch.no_grad():
            rf.append(int(sum((net(atk.perturb(xt[i:i + 250], yt[i:i + 250])).argmax(1)
                               == yt[i:i + 250]).sum() for i in range(0, n, 250))))
        print(f"seed {s}: robust after APGD-CE robustjax {rj[-1]}, reference {rf[-1]}",
              flush=True)
    print(f"robustjax {min(rj)}-{max(rj)} (mean {np.mean(rj):.1f}), reference "
          f"{min(rf)}-{max(rf)} (mean {np.mean(rf):.1f}) of {n}", flush=True)


def time_schedules(n, eps=0.1):
    """Compacting the still-robust examples into full batches vs masking fixed slices."""
    from robustjax.models import embedded_default

    m = embedded_default()
    x, y = test_subset(n)
    for bs in (250,):
        for schedule in ("compact", "mask", "compact", "mask"):  # second round: compiled
            cfg = AutoAttackConfig(eps=eps, version="custom", attacks=("apgd-ce", "apgd-t"),
                                   batch_size=bs, schedule=schedule)
            t = time.perf_counter()
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = autoattack(m.apply_fn, m.params, x, y, jax.random.key(0), cfg)
            print(f"batch {bs} {schedule}: {time.perf_counter() - t:.1f} s, per attack "
                  f"{ {k: round(v, 1) for k, v in r.seconds.items()} }, robust "
                  f"{r.robust_accuracy:.3f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="linf-standard", help=f"comma list of {', '.join(RUNS)}")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--bs", type=int, default=250)
    ap.add_argument("--torchattacks", action="store_true")
    ap.add_argument("--fixture", action="store_true")
    ap.add_argument("--schedules", action="store_true",
                    help="time compact vs mask on APGD-CE + APGD-T (robustjax only)")
    ap.add_argument("--seeds", type=int, default=0,
                    help="APGD-CE robust counts over this many seeds in both libraries")
    args = ap.parse_args()
    if args.seeds:
        seed_spread(args.n, args.seeds)
        return
    if args.schedules:
        time_schedules(args.n)
        return
    if args.fixture:
        make_fixture(ROOT / "tests" / "fixtures" / "autoattack_reference.npz")
        return
    import torch

    from attacks_pgd_speed import torch_twin
    from robustjax.models import embedded_default

    torch.set_num_threads(2)
    m = embedded_default()
    net = torch_twin("cnn", m.params, m.spec)
    rows = []
    for name in args.runs.split(","):
        norm, eps, version = RUNS[name]
        n = args.n if version != "rand" else min(args.n, 100)
        x, y = test_subset(n)
        with torch.no_grad():
            err = np.abs(net(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
                         - np.asarray(m.apply_fn(m.params, x))).max()
        print(f"{name}: max |logit difference| {err:.2e}", flush=True)
        rows.append(compare(name, m.apply_fn, m.params, net, x, y, norm, eps, version,
                            args.bs, args.torchattacks and version == "standard"))
        print(table(rows), flush=True)


if __name__ == "__main__":
    main()
