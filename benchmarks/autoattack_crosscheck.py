"""AutoAttack: robustjax vs the reference implementation (pyautoattack 0.2.0, Croce & Hein's
packaged fra31/auto-attack) and torchattacks 3.5.1's port, on the same weights.

Models (``--model``): the embedded default CNN (MNIST, ``robustjax.models.embedded_default``;
its PyTorch twin from ``benchmarks/attacks_pgd_speed.torch_twin``), ``resnet18``: the CIFAR
ResNet-18 (``resnet18_cifar``, random weights from ``PRNGKey(0)``, the same twin function) on
32x32 crops of the natural photos labelled with its own predictions, ``lite0``: the ImageNet
EfficientNet-Lite0 (real weights) with a 10-class head (its logits of ``LITE0_CLASSES``) on the
six natural photos (their ImageNet labels; PyTorch side: PyPI efficientnet-lite-pytorch, on
``--effnet-path`` or installed), and, for the test
fixtures, a tiny MLP on the 8x8 digits. Both libraries see the same N test images (for the CNN
a class-mixed subset of mnist5k's test split) and the same eps; each reports its per-attack
robust-accuracy sequence (the reference's ``robust accuracy after ...`` log lines, captured
from its logger), the final robust accuracy and time per stage (robustjax: also the seconds
JAX spent compiling, from its jax.monitoring events). The per-example robust flags are
compared too.

    PYTHONPATH=. python benchmarks/autoattack_crosscheck.py --runs linf-standard --n 500
    PYTHONPATH=. python benchmarks/autoattack_crosscheck.py --model resnet18 --eps 0.0313725 --n 100
    PYTHONPATH=. python benchmarks/autoattack_crosscheck.py --fixture   # tests/fixtures npz
    PYTHONPATH=. python benchmarks/autoattack_crosscheck.py --square-fixture  # L1 Square npz

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
    # the standard version's first two stages (APGD-CE 1 run, APGD-T 9 targets) as "custom"
    "linf-apgd": ("linf", 0.1, "custom"),
}
CUSTOM = ("apgd-ce", "apgd-t")
REF_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}


COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class _CompileClock:
    """Seconds JAX has spent tracing, lowering and compiling (its jax.monitoring events)."""

    def __init__(self):
        self.total = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._on)

    def _on(self, event, secs, **kwargs):
        del kwargs
        if event in COMPILE_EVENTS:
            self.total += secs


CLOCK = _CompileClock()


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
    aa = AutoAttack(net, norm=REF_NORM[norm], eps=eps, version=version, device="cpu", seed=seed,
                    attacks=list(CUSTOM) if version == "custom" else None)
    if version == "custom":  # as the standard version sets them
        aa.apgd.n_restarts, aa.apgd_targeted.n_target_classes = 1, 9
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


def natural_crops(n, seed=0):
    """CIFAR-sized images: random 64x64 crops of the six natural photos (224 px), 2x2-averaged
    to 32x32, float32 in [0, 1]."""
    x, _ = data.load("natural", "test")
    rng = np.random.default_rng(seed)
    which, corner = rng.integers(0, len(x), n), rng.integers(0, 224 - 64, (n, 2))
    crops = np.stack([x[k, a:a + 64, b:b + 64] for k, (a, b) in zip(which, corner)])
    return crops.reshape(n, 32, 2, 32, 2, 3).mean((2, 4)).astype(np.float32)


# the six photos' ImageNet labels, tiger cat (EfficientNet-Lite0's answer for chelsea) and three
# neighbours: Egyptian cat, cup, projectile
LITE0_CLASSES = (281, 967, 657, 665, 698, 985, 282, 285, 968, 744)


def lite0_pair(effnet_path=None):
    """(robustjax Model, apply_fn of the 10-class head, PyTorch twin of the head)."""
    import torch

    if effnet_path:
        sys.path.insert(0, effnet_path)
    from efficientnet_lite_pytorch import EfficientNet

    from robustjax.models import efficientnet, load

    model = load("efficientnet_lite0", efficientnet.pretrained_path())
    cls = np.array(LITE0_CLASSES)

    def apply10(p, x):
        return model.apply_fn(p, x)[:, cls]

    full = EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=str(efficientnet.pretrained_path())).eval()

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.full = full

        def forward(self, x):  # x NCHW in [0, 1]; the weights expect mean = std = 0.5
            return self.full((x - 0.5) / 0.5)[:, torch.tensor(cls)]

    return model, apply10, Head().eval()


def compare(name, apply_fn, params, net, x, y, norm, eps, version, bs, with_ta, seed=0):
    extra = dict(attacks=CUSTOM, apgd_restarts=1, apgd_targets=9) if version == "custom" else {}
    cfg = AutoAttackConfig(eps=eps, norm=norm, version=version, batch_size=bs, **extra)
    compile_at, c0 = {}, CLOCK.total

    def log(line):
        print("  [robustjax]", line, flush=True)
        m = re.match(r"robust accuracy after (\S+):", line)
        if m:  # compile seconds up to the end of this stage
            compile_at[m.group(1).lower()] = CLOCK.total - c0

    t = time.perf_counter()
    res = autoattack(apply_fn, params, x, y, jax.random.key(seed), cfg, log=log)
    t_rj = time.perf_counter() - t
    prev, rj_compile = 0.0, {}
    for k, v in compile_at.items():
        rj_compile[k], prev = v - prev, v
    r_ref, acc_ref, t_ref, _ = reference_autoattack(net, x, y, norm, eps, version, bs, seed)
    print("  [reference]", acc_ref, f"{t_ref:.1f} s", flush=True)
    row = dict(name=name, n=len(y), norm=norm, eps=eps, version=version,
               rj=res.accuracy_after, rj_s=res.seconds, rj_total=t_rj, ref=acc_ref,
               rj_compile=rj_compile, rj_compile_total=CLOCK.total - c0,
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
            comp = r.get("rj_compile", {}).get(k)
            comp = "" if comp is None else f", compile {comp:.1f}"
            out.append(f"| {r['name']} | {r['n']} | {k} | {100 * v:.1f}% "
                       f"({r['rj_s'].get(k, 0):.1f}{comp}) | "
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


def make_square_fixture(path, eps=2.0, n_queries=1000, seeds=5):
    """The reference's L1 Square: its bump ``eta(s)`` for a few sides and its robust count
    over ``seeds`` seeds on the tiny MLP and digits of ``autoattack_reference.npz``."""
    import torch
    from pyautoattack.square import SquareAttack

    torch.set_num_threads(2)
    f = np.load(ROOT / "tests" / "fixtures" / "autoattack_reference.npz")
    p = {k: f[k] for k in ("w1", "b1", "w2", "b2")}
    x, y = f["x"], f["y"]
    net = torch_mlp(p)
    xt, yt = torch.tensor(x).permute(0, 3, 1, 2).contiguous(), torch.tensor(y).long()
    out = dict(p, x=x, y=y, eps=np.float32(eps), n_queries=np.int32(n_queries))
    sizes = [1, 2, 3, 4, 5, 7, 9, 16, 29]
    sa = SquareAttack(net, norm="L1", eps=eps, n_queries=n_queries, p_init=0.8,
                      resc_schedule=False, device="cpu")
    sa.init_hyperparam(xt)
    for s in sizes:
        torch.manual_seed(s)
        transposed = bool(torch.rand([1]) > 0.5)  # the draw eta makes last
        torch.manual_seed(s)
        out[f"eta_{s}"] = sa.eta(s).numpy()
        out[f"eta_{s}_transposed"] = np.bool_(transposed)
    out["eta_sizes"] = np.array(sizes)
    counts = []
    for seed in range(seeds):
        sa.seed = seed
        t = time.perf_counter()
        with torch.no_grad():
            counts.append(int((net(sa.perturb(xt, yt)).argmax(1).numpy() == y).sum()))
        print(f"reference L1 Square seed {seed}: {counts[-1]} robust of {len(y)} "
              f"({time.perf_counter() - t:.1f} s)", flush=True)
    out["ref_robust_counts"] = np.array(counts)
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
    ap.add_argument("--model", default="cnn", choices=("cnn", "resnet18", "lite0"))
    ap.add_argument("--effnet-path", default=None,
                    help="folder holding efficientnet_lite_pytorch (pip install --target)")
    ap.add_argument("--eps", type=float, default=None, help="overrides the run's eps")
    ap.add_argument("--seed", type=int, default=0, help="robustjax key and reference seed")
    ap.add_argument("--bs", type=int, default=250)
    ap.add_argument("--torchattacks", action="store_true")
    ap.add_argument("--fixture", action="store_true")
    ap.add_argument("--square-fixture", action="store_true",
                    help="tests/fixtures/square_l1_reference.npz (the reference's L1 Square)")
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
    if args.square_fixture:
        make_square_fixture(ROOT / "tests" / "fixtures" / "square_l1_reference.npz")
        return
    import torch

    from attacks_pgd_speed import torch_twin
    from robustjax.models import embedded_default

    torch.set_num_threads(2)
    apply_fn = None
    if args.model == "cnn":
        m = embedded_default()
        net = torch_twin("cnn", m.params, m.spec)
    elif args.model == "lite0":
        m, apply_fn, net = lite0_pair(args.effnet_path)
    else:
        from robustjax.models import create

        m = create("resnet18_cifar", input_shape=(32, 32, 3), key=jax.random.PRNGKey(0))
        net = torch_twin("resnet18_cifar", m.params, m.spec)
    rows = []
    for name in args.runs.split(","):
        norm, eps, version = RUNS[name]
        eps = eps if args.eps is None else args.eps
        n = args.n if version != "rand" else min(args.n, 100)
        if args.model == "cnn":
            x, y = test_subset(n)
        elif args.model == "lite0":
            x, labels = data.load("natural", "test")
            y = np.array([LITE0_CLASSES.index(int(k)) for k in labels], np.int32)
        else:  # random weights: label each crop with the network's own prediction
            x = natural_crops(n)
            y = np.asarray(jnp.argmax(m.apply_fn(m.params, x), -1)).astype(np.int32)
        name = f"{args.model} {name} eps {eps:g}"
        fn = apply_fn or m.apply_fn
        with torch.no_grad():
            err = np.abs(net(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
                         - np.asarray(fn(m.params, x))).max()
        print(f"{name}: max |logit difference| {err:.2e}", flush=True)
        rows.append(compare(name, fn, m.params, net, x, y, norm, eps, version,
                            args.bs, args.torchattacks and version == "standard", args.seed))
        print(table(rows), flush=True)


if __name__ == "__main__":
    main()
