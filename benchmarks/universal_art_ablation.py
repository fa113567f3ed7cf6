"""Why robustjax's DeepFool-UAP fools more digits than ART 1.20's: an ablation of the update.

``universal_spatial_crosscheck.py`` found robustjax's universal perturbation (Moosavi-Dezfooli et
al. 2017, Alg. 1) fooling 0.59 of the held-out digits where ART's ``UniversalPerturbation``
fooled 0.31, same weights and settings (Linf xi 0.3, delta 0.2, <= 3 epochs, DeepFool overshoot
0.02, 10 steps, 10 classes). The candidate cause is the update of ``v`` after a DeepFool call:

* the paper (Alg. 1) and the authors' code: ``v <- P(v + dv_i)``; the accumulated ``v`` keeps
  the components that point out of the box for the image just visited (other images use them);
* ART 1.20: ``noise = adv_xi - x_i`` with ``adv_xi`` DeepFool's output, which ART clips to the
  estimator's ``clip_values``; so ``v <- P(clip(x_i + v + dv_i) - x_i)``, and after every
  update ``v`` lies in ``[-x_i, 1 - x_i]`` of the last image visited. On MNIST (most pixels
  exactly 0 or 1) that erases most of ``v`` at every update.

Both libraries are run both ways: robustjax as released and with ART's clipped update
(``art_update`` below: the same loop with ``v <- P(clip(x_i + v + dv_i) - x_i)``); ART as
released (``clip_values=(0, 1)``) and with ``clip_values=None`` (its DeepFool then does not
clip, so its update is the paper's; its stopping rate is then measured on the unclipped
``x + v``). Held-out fooling rates are measured the same way for all (``clip(x + v)``, vs the
clean prediction). Same data, twin and seeds convention as ``universal_spatial_crosscheck.py``:

    PYTHONPATH=benchmarks:. .venv/bin/python benchmarks/universal_art_ablation.py jax
    /tmp/venv-fb/bin/python benchmarks/universal_art_ablation.py ref   # torch + ART
    .venv/bin/python benchmarks/universal_art_ablation.py report

Writes ``benchmarks/results/universal_art_ablation.md``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent


def art_update(apply_fn, params, x_train, key, cfg):
    """robustjax's Alg. 1 loop with ART 1.20's update ``v <- P(clip(x_i + v + dv_i) - x_i)``."""
    from robustjax.attacks.universal import _algorithm1

    return _algorithm1(apply_fn, params, x_train, key, cfg,
                       lambda v, x_i, x_v, x_df: x_df - x_i)


def stage_jax(a):
    import functools

    import jax
    import torch

    from attacks_pgd_speed import torch_twin
    from robustjax import data
    from robustjax.attacks.universal import (UAPConfig, apply_universal, fooling_rate,
                                             universal_perturbation)
    from robustjax.models import embedded_default

    out = pathlib.Path(a.dir)
    out.mkdir(parents=True, exist_ok=True)
    m = embedded_default()
    x, _ = data.load("mnist5k", "test")
    x = x[:a.n]
    xf, _ = data.load("mnist5k", "train")
    xf = xf[:a.fit]
    net = torch_twin("cnn", m.params, m.spec)
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        diff = float(np.abs(net(xt).numpy() - np.asarray(m.apply_fn(m.params, x))).max())
        torch.jit.trace(net, xt[:2]).save(str(out / "cnn.pt"))
    np.savez(out / "data.npz", x=x, xf=xf)
    print(f"twin max |logit diff| {diff:.2e}", flush=True)
    cfg = UAPConfig(xi=a.xi, norm="linf", delta=0.2, max_epochs=a.uap_epochs)
    res = {"logit_diff": diff, "n": a.n, "fit": a.fit, "xi": a.xi, "epochs": a.uap_epochs}
    for name, fn in (("released", universal_perturbation), ("art_update", art_update)):
        run = jax.jit(functools.partial(fn, m.apply_fn, cfg=cfg) if fn is art_update
                      else functools.partial(fn, m.apply_fn, config=cfg))
        rows = []
        for s in range(a.seeds):
            t = time.perf_counter()
            u = jax.block_until_ready(run(m.params, xf, None, jax.random.key(s))
                                      if fn is universal_perturbation
                                      else run(m.params, xf, jax.random.key(s)))
            fr = float(fooling_rate(m.apply_fn, m.params, x, apply_universal(x, u.perturbation)))
            rows.append({"fooling_rate": fr, "epochs": int(u.epochs),
                         "train_rate": float(u.fooling_rate),
                         "mean_abs_v": float(np.abs(np.asarray(u.perturbation)).mean()),
                         "seconds": time.perf_counter() - t})
            print("robustjax", name, s, rows[-1], flush=True)
        res[name] = rows
    (out / "jax.json").write_text(json.dumps(res, indent=1))


def stage_ref(a):
    import random

    import torch
    from art.estimators.classification import PyTorchClassifier
    from universal_spatial_crosscheck import art_uap  # the same ART setting

    torch.set_num_threads(1)
    out = pathlib.Path(a.dir)
    d = np.load(out / "data.npz")
    net = torch.jit.load(str(out / "cnn.pt")).eval()
    xtn = np.ascontiguousarray(np.transpose(d["x"], (0, 3, 1, 2)))
    xft = np.ascontiguousarray(np.transpose(d["xf"], (0, 3, 1, 2)))

    def predict(v):
        with torch.no_grad():
            return net(torch.as_tensor(v)).argmax(1).numpy()

    clean = predict(xtn)
    path = out / "ref.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    for name in a.variants:
        clip = (0.0, 1.0) if name == "released" else None
        clf = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                                nb_classes=10, clip_values=clip)
        rows = []
        for s in range(a.seeds):
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)
            uap = art_uap(clf, a)
            t = time.perf_counter()
            uap.generate(xft)
            xa = np.clip(xtn + uap.noise, 0, 1).astype(np.float32)
            rows.append({"fooling_rate": float(np.mean(predict(xa) != clean)),
                         "train_rate": float(uap.fooling_rate),
                         "mean_abs_v": float(np.abs(uap.noise).mean()),
                         "seconds": time.perf_counter() - t})
            print("ART", name, s, rows[-1], flush=True)
            res[name] = rows
            path.write_text(json.dumps(res, indent=1))


def _ms(rows, key="fooling_rate"):
    v = [r[key] for r in rows]
    return (f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1
            else f"{v[0]:.3f}") + f" ({', '.join(f'{u:.3f}' for u in v)})"


def stage_report(a):
    out = pathlib.Path(a.dir)
    j = json.loads((out / "jax.json").read_text())
    r = json.loads((out / "ref.json").read_text())
    lines = [
        "# DeepFool-UAP: robustjax vs ART 1.20, the update of v (ablation)",
        "",
        f"Embedded default CNN (mnist5k) and its PyTorch twin (max |logit diff| "
        f"{j['logit_diff']:.1e}); UAP fitted on the first {j['fit']} training digits, fooling "
        f"rate (vs the clean prediction, on clip(x + v)) on the first {j['n']} test digits; Linf "
        f"xi {j['xi']}, delta 0.2, <= {j['epochs']} epochs, DeepFool 10 steps, overshoot 0.02, "
        f"10 classes; {platform.machine()}, shared 2-core CPU. Script: "
        "`benchmarks/universal_art_ablation.py`. Mean ± std over seeds (per seed).",
        "",
        "| library | update of v | held-out fooling rate | training fooling rate | "
        "mean abs(v) |",
        "|---|---|---|---|---|",
    ]
    rows = [("robustjax", "released", "paper: P(v + dv)", j),
            ("robustjax", "art_update", "ART's: P(clip(x_i + v + dv) - x_i)", j),
            ("ART 1.20", "released", "ART's (clip_values=(0, 1), as released)", r),
            ("ART 1.20", "paper", "paper (clip_values=None: DeepFool does not clip)", r)]
    for lib, key, what, src in rows:
        if key in src:
            lines.append(f"| {lib} | {what} | {_ms(src[key])} | {_ms(src[key], 'train_rate')} "
                         f"| {_ms(src[key], 'mean_abs_v')} |")
    lines += [
        "",
        "Reading (the rows above are this run's; the interpretation was written from them):",
        "",
        "- ART's seed spread is large: one seed (0.305 in `universal_spatial_crosscheck.md`) "
        "was not enough. Over 3 seeds the gap to robustjax is about 1.3 ART seed stds, no "
        "longer a factor of 2; 3 seeds do not resolve it.",
        "- The update rule moves the result a lot on MNIST (pixels mostly exactly 0 or 1): "
        "robustjax's loop with ART's clipped update `v <- P(clip(x_i + v + dv) - x_i)` fools "
        "far fewer digits than with the paper's `v <- P(v + dv)`; ART as released lies between "
        "(its DeepFool also differs: it starts from the unclipped `x_i + v`, clips every step "
        "and applies the overshoot to the unclipped start).",
        "- ART with `clip_values=None` is not the paper's algorithm either: its DeepFool then "
        "leaves the box and its stopping rate is measured on the unclipped `x + v` (training "
        "rate ~0.99 after one epoch), so the clipped held-out rate is low.",
        "- robustjax follows Alg. 1 and the authors' code (`v = v + dr`, projected) and is "
        "stronger than ART's variant, not weaker. The direction of the gap in "
        "`universal_spatial_crosscheck.md` fits ART's clipped update, but the ablation does "
        "not reproduce ART's number (robustjax with ART's update lands below ART: their "
        "DeepFools differ too), so the gap is attributed, not closed.",
    ]
    text = "\n".join(lines) + "\n"
    (ROOT / "results" / "universal_art_ablation.md").write_text(text)
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=("jax", "ref", "report"))
    p.add_argument("--dir", default="/tmp/universal_art_ablation")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--fit", type=int, default=200)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--xi", type=float, default=0.3)
    p.add_argument("--uap-epochs", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["released", "paper"])
    a = p.parse_args(argv)
    {"jax": stage_jax, "ref": stage_ref, "report": stage_report}[a.stage](a)


if __name__ == "__main__":
    sys.exit(main())
