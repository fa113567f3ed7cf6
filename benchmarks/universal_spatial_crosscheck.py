"""Cross-check the spatial grid attack, universal perturbations and adversarial patches against
foolbox 3.3.4 (``SpatialAttack``) and ART 1.20 (``UniversalPerturbation``,
``AdversarialPatchPyTorch``) on the same weights; stAdv with L-BFGS vs Adam.

Same weights in both libraries: the embedded default CNN (``robustjax.models.embedded_default``,
mnist5k) and its PyTorch twin (``attacks_pgd_speed.torch_twin``, traced and saved). Three
stages (the reference libraries live in a separate venv, see benchmarks/README.md):

    PYTHONPATH=benchmarks:. .venv/bin/python benchmarks/universal_spatial_crosscheck.py jax
    /tmp/h7venv/bin/python benchmarks/universal_spatial_crosscheck.py ref   # torch, ART, foolbox
    .venv/bin/python benchmarks/universal_spatial_crosscheck.py report

What is compared (seeds: robustjax ``jax.random.key(s)``, references ``np.random.seed(s)``,
``random.seed(s)``, ``torch.manual_seed(s)``):

* spatial grid, +-30 degrees x +-3 px, 31 x 5 x 5 = 775 points (Engstrom et al.'s grid) on N
  test digits: success rate (deterministic, so the two should agree up to the warps'
  interpolation) and images per second; worst-of-10 random: success over the seeds.
* UAP (DeepFool, Linf xi, delta 0.2): fitted on the first ``--fit`` training digits, fooling
  rate (vs clean predictions) on the N held-out test digits, per seed.
* adversarial patch, targeted (class ``--target``), square patch 28 x 28 at scale 0.5 (a
  14 x 14 square), rotations +-22.5 degrees, Adam: target success on the held-out digits at
  random placements, per seed.
* stAdv (no peer in foolbox/ART 1.20): L-BFGS (the paper's) vs Adam, success and median L_flow.

Writes ``benchmarks/results/universal_spatial_crosscheck.md``.
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
GRID = dict(max_rotation=30.0, max_translation=3.0, n_rotations=31, n_translations=5)
CHUNK = 32  # grid points per vectorised batch (32 x 200 images): bounded memory


def stage_jax(a):
    import jax
    import torch

    from attacks_pgd_speed import torch_twin
    from robustjax import data
    from robustjax.models import embedded_default

    out = pathlib.Path(a.dir)
    out.mkdir(parents=True, exist_ok=True)
    m = embedded_default()
    x, y = data.load("mnist5k", "test")
    x, y = x[:a.n], y[:a.n].astype(np.int32)
    xf, yf = data.load("mnist5k", "train")
    xf, yf = xf[:a.fit], yf[:a.fit].astype(np.int32)
    net = torch_twin("cnn", m.params, m.spec)
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        diff = float(np.abs(net(xt).numpy() - np.asarray(m.apply_fn(m.params, x))).max())
        torch.jit.trace(net, xt[:2]).save(str(out / "cnn.pt"))
    np.savez(out / "data.npz", x=x, y=y, xf=xf, yf=yf)
    res = {"logit_diff": diff, "n": a.n, "fit": a.fit, "seeds": a.seeds}
    print(f"twin max |logit diff| {diff:.2e}", flush=True)

    def timed(fn, *args):
        jax.block_until_ready(fn(*args))          # compile + warm up
        t = time.perf_counter()
        r = jax.block_until_ready(fn(*args))
        return r, time.perf_counter() - t

    parts = set(a.only.split(","))
    if "spatial" in parts:
        _spatial_jax(a, res, m, x, y, timed)
    if "uap" in parts:
        _uap_jax(a, res, m, x, xf, yf)
    if "patch" in parts:
        _patch_jax(a, res, m, x, xf, yf)
    if "patch_ablation" in parts:  # ART's choices one at a time (patch_ablation.md)
        epoch = -(-a.fit // 16)  # ART's max_iter counts epochs of batches of 16
        for name, extra in (("patch_art_steps", {"steps": a.patch_steps * epoch}),
                            ("patch_gray_nearest", {"init": "gray",
                                                    "interpolation": "nearest"}),
                            ("patch_artlike", {"steps": a.patch_steps * epoch,
                                               "init": "gray",
                                               "interpolation": "nearest"})):
            _patch_jax(a, res, m, x, xf, yf, key=name, **extra)
    if "stadv" in parts:
        _stadv_jax(a, res, m, x, y, timed)
    _save(out / "jax.json", res)


def _save(path, res):
    """Write ``res`` into ``path``, keeping the parts an earlier ``--only`` run stored."""
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(res)
    path.write_text(json.dumps(old, indent=1))


def _spatial_jax(a, res, m, x, y, timed):
    import functools

    import jax

    from robustjax.attacks.spatial import SpatialGridConfig, spatial_grid

    grid = jax.jit(functools.partial(spatial_grid, m.apply_fn,
                                     config=SpatialGridConfig(**GRID, chunk=CHUNK)))
    r, t = timed(grid, m.params, x, y, jax.random.key(0))
    res["grid"] = {"success": float(np.mean(r.success)), "seconds": t}
    print("grid", res["grid"], flush=True)
    wok = jax.jit(functools.partial(spatial_grid, m.apply_fn, config=SpatialGridConfig(
        **GRID, worst_of_k=10, chunk=CHUNK)))
    res["worst10"] = [float(np.mean(wok(m.params, x, y, jax.random.key(s)).success))
                      for s in range(a.seeds)]
    print("worst-of-10", res["worst10"], flush=True)


def _uap_jax(a, res, m, x, xf, yf):
    import functools

    import jax

    from robustjax.attacks.universal import (
        SGDUAPConfig,
        UAPConfig,
        apply_universal,
        fooling_rate,
        sgd_universal_perturbation,
        universal_perturbation,
    )

    uap_cfg = UAPConfig(xi=a.xi, norm="linf", delta=0.2, max_epochs=a.uap_epochs)
    uap = jax.jit(functools.partial(universal_perturbation, m.apply_fn, config=uap_cfg))
    sgd_cfg = SGDUAPConfig(eps=a.xi, norm="linf", epochs=10, batch_size=32, step_size=a.xi / 10)
    sgd = jax.jit(functools.partial(sgd_universal_perturbation, m.apply_fn, config=sgd_cfg))
    res["uap"], res["sgd_uap"], res["uap_seconds"] = [], [], []
    for s in range(a.seeds):
        t = time.perf_counter()
        u = jax.block_until_ready(uap(m.params, xf, yf, jax.random.key(s)))
        res["uap_seconds"].append(time.perf_counter() - t)
        res["uap"].append(float(fooling_rate(m.apply_fn, m.params, x,
                                             apply_universal(x, u.perturbation))))
        g = sgd(m.params, xf, yf, jax.random.key(s))
        res["sgd_uap"].append(float(fooling_rate(m.apply_fn, m.params, x,
                                                 apply_universal(x, g.perturbation))))
        print("uap", s, res["uap"][-1], "epochs", int(u.epochs), "sgd", res["sgd_uap"][-1],
              flush=True)


def _patch_jax(a, res, m, x, xf, yf, key="patch", **extra):
    import functools

    import jax
    import jax.numpy as jnp

    from robustjax.attacks.patch import PatchConfig, adversarial_patch, apply_patch

    pcfg = PatchConfig(patch_shape=(28, 28), target=a.target, scale_min=0.5, scale_max=0.5,
                       rotation_max=22.5, batch_size=16, learning_rate=a.patch_lr,
                       **{"steps": a.patch_steps, **extra})
    train_patch = jax.jit(functools.partial(adversarial_patch, m.apply_fn, config=pcfg))
    res[key], res[f"{key}_seconds"] = [], []
    for s in range(a.seeds):
        t = time.perf_counter()
        p = jax.block_until_ready(train_patch(m.params, xf, yf, jax.random.key(s)))
        res[f"{key}_seconds"].append(time.perf_counter() - t)
        xa, _ = apply_patch(jnp.asarray(x), p.patch, jax.random.key(100 + s), pcfg)
        res[key].append(float(np.mean(np.asarray(m.apply_fn(m.params, xa).argmax(-1))
                                      == a.target)))
        np.save(pathlib.Path(a.dir) / f"{key}_{s}.npy", np.asarray(p.patch))  # [28, 28, 1]
        print(key, s, res[key][-1], flush=True)


def _stadv_jax(a, res, m, x, y, timed):
    import functools

    import jax

    from robustjax.attacks.stadv import StAdvConfig, stadv

    ns = min(a.n, a.stadv_n)
    for opt, cfg in (("lbfgs", StAdvConfig(optimizer="lbfgs", steps=a.stadv_steps)),
                     ("adam", StAdvConfig(optimizer="adam", steps=a.stadv_steps,
                                          learning_rate=0.01)),
                     ("adam_long", StAdvConfig(optimizer="adam", steps=4 * a.stadv_steps,
                                               learning_rate=0.01))):
        f = jax.jit(functools.partial(stadv, m.apply_fn, config=cfg))
        r, t = timed(f, m.params, x[:ns], y[:ns], jax.random.key(0))
        ok = np.asarray(r.success)
        res[f"stadv_{opt}"] = {"success": float(ok.mean()), "seconds": t, "steps": cfg.steps,
                               "median_flow": float(np.median(np.asarray(r.norm)[ok]))
                               if ok.any() else None}
        print("stadv", opt, res[f"stadv_{opt}"], flush=True)


def stage_ref(a):
    import random

    import torch
    from art.attacks.evasion import AdversarialPatchPyTorch
    from art.estimators.classification import PyTorchClassifier

    torch.set_num_threads(2)
    out = pathlib.Path(a.dir)
    d = np.load(out / "data.npz")
    net = torch.jit.load(str(out / "cnn.pt")).eval()
    x, y, xf = d["x"], d["y"], d["xf"]
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous()
    xft = np.ascontiguousarray(np.transpose(xf, (0, 3, 1, 2)))
    xtn = xt.numpy()
    res = {}

    def predict(v):
        with torch.no_grad():
            return net(torch.as_tensor(v)).argmax(1).numpy()

    parts = set(a.only.split(","))
    if "spatial" in parts:
        _spatial_ref(a, res, net, xt, y)
    clf = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0))
    clean = predict(xtn)
    if "uap" in parts:
        res["uap"], res["uap_seconds"] = [], []
    if "patch" in parts:
        res["patch"], res["patch_seconds"] = [], []
    for s in range(a.seeds):
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        if "uap" in parts:
            uap = art_uap(clf, a)
            t = time.perf_counter()
            uap.generate(xft)
            res["uap_seconds"].append(time.perf_counter() - t)
            xa = np.clip(xtn + uap.noise, 0, 1).astype(np.float32)
            res["uap"].append(float(np.mean(predict(xa) != clean)))
            print("uap", s, res["uap"][-1], flush=True)
        if "patch" not in parts:
            continue
        try:
            import torchvision  # noqa: F401  (ART's PyTorch patch needs it)
        except ImportError:  # torchvision from PyPI does not install beside torch 2.13
            print("patch: skipped, ART's AdversarialPatchPyTorch needs torchvision", flush=True)
            continue
        patch = AdversarialPatchPyTorch(clf, rotation_max=22.5, scale_min=0.5, scale_max=0.5,
                                        learning_rate=a.patch_lr, max_iter=a.patch_steps,
                                        batch_size=16, patch_shape=(1, 28, 28),
                                        patch_type="square", optimizer="Adam", targeted=True,
                                        verbose=False)
        target = np.eye(10, dtype=np.float32)[np.full(len(xft), a.target)]
        t = time.perf_counter()
        patch.generate(xft.astype(np.float32), y=target)
        res["patch_seconds"].append(time.perf_counter() - t)
        xa = patch.apply_patch(xtn.astype(np.float32), scale=0.5)
        res["patch"].append(float(np.mean(predict(xa.astype(np.float32)) == a.target)))
        print("patch", s, res["patch"][-1], flush=True)
        trained = np.asarray(patch._patch.detach().numpy(), np.float32)  # [1, 28, 28]
        np.save(out / f"art_patch_{s}.npy", trained)
        # the other library's patch placed by ART (same seeds of the placements)
        theirs = out / f"patch_{s}.npy"
        if theirs.exists():
            np.random.seed(1000 + s)
            rj = np.transpose(np.load(theirs), (2, 0, 1)).astype(np.float32)
            xa = patch.apply_patch(xtn.astype(np.float32), scale=0.5,
                                   patch_external=rj)
            res.setdefault("robustjax_patch_placed_by_art", []).append(
                float(np.mean(predict(xa.astype(np.float32)) == a.target)))
            print("robustjax's patch placed by ART", s,
                  res["robustjax_patch_placed_by_art"][-1], flush=True)
    _save(out / "ref.json", res)


def art_uap(clf, a):
    """ART's ``UniversalPerturbation`` with DeepFool in the setting both cross-checks compare
    (Linf ``a.xi``, delta 0.2, at most ``a.uap_epochs`` passes; DeepFool 10 iterations,
    overshoot 0.02, 10 candidate classes)."""
    from art.attacks.evasion import UniversalPerturbation

    return UniversalPerturbation(clf, attacker="deepfool",
                                 attacker_params={"max_iter": 10, "epsilon": 0.02,
                                                  "nb_grads": 10, "verbose": False},
                                 delta=0.2, max_iter=a.uap_epochs, eps=a.xi, norm=np.inf,
                                 verbose=False)


def _spatial_ref(a, res, net, xt, y):
    import foolbox as fb
    import torch

    fmodel = fb.PyTorchModel(net, bounds=(0, 1))
    crit = fb.criteria.Misclassification(torch.tensor(y).long())
    attack = fb.attacks.SpatialAttack(max_translation=3, max_rotation=30, num_translations=5,
                                      num_rotations=31, grid_search=True)
    attack(fmodel, xt[:8], fb.criteria.Misclassification(torch.tensor(y[:8]).long()))  # warm
    t = time.perf_counter()
    _, _, ok = attack(fmodel, xt, crit)
    res["grid"] = {"success": float(ok.float().mean()), "seconds": time.perf_counter() - t}
    print("grid", res["grid"], flush=True)
    res["worst10"] = []
    for s in range(a.seeds):
        np.random.seed(s)
        _, _, ok = fb.attacks.SpatialAttack(max_translation=3, max_rotation=30,
                                            grid_search=False, random_steps=10)(fmodel, xt, crit)
        res["worst10"].append(float(ok.float().mean()))
    print("worst-of-10", res["worst10"], flush=True)


def _ms(v):
    return (f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1
            else f"{v[0]:.3f}")


def stage_report(a):
    out = pathlib.Path(a.dir)
    j = json.loads((out / "jax.json").read_text())
    r = json.loads((out / "ref.json").read_text())
    n = j["n"]
    lines = [
        "# Spatial, universal and patch attacks vs foolbox / ART (same weights)",
        "",
        f"Embedded default CNN (mnist5k) and its PyTorch twin (max |logit diff| "
        f"{j['logit_diff']:.1e}); {n} test digits attacked / held out, UAP and patch fitted on "
        f"the first {j['fit']} training digits; {j['seeds']} seeds; "
        f"`{' '.join(sys.argv[1:]) or 'report'}`; {platform.machine()}, shared 2-core CPU "
        "(timings under load). Generated by `benchmarks/universal_spatial_crosscheck.py`.",
        "",
        "| attack | setting | robustjax | reference | peer | time robustjax / peer (s) |",
        "|---|---|---|---|---|---|",
        f"| spatial grid | ±30°, ±3 px, 31x5x5 = 775 points; success rate | "
        f"{j['grid']['success']:.3f} | {r['grid']['success']:.3f} | foolbox SpatialAttack | "
        f"{j['grid']['seconds']:.1f} / {r['grid']['seconds']:.1f} "
        f"({r['grid']['seconds'] / j['grid']['seconds']:.1f}x) |",
        f"| spatial worst-of-10 | random in the same ranges; success rate | "
        f"{_ms(j['worst10'])} | {_ms(r['worst10'])} | foolbox SpatialAttack(grid_search=False) "
        "| |",
        f"| UAP (DeepFool) | Linf xi={a.xi}, delta 0.2, <= {a.uap_epochs} epochs; held-out "
        f"fooling rate | {_ms(j['uap'])} | {_ms(r['uap'])} | ART UniversalPerturbation | "
        f"{statistics.mean(j['uap_seconds']):.1f} / {statistics.mean(r['uap_seconds']):.1f} |",
        f"| SGD UAP (Shafahi) | Linf eps={a.xi}, 10 epochs, batch 32; held-out fooling rate | "
        f"{_ms(j['sgd_uap'])} | | (no peer) | |",
        f"| adversarial patch | target {a.target}, 14x14 square (scale 0.5 of 28), ±22.5°, "
        f"{a.patch_steps} Adam steps lr {a.patch_lr}; held-out target success | "
        f"{_ms(j['patch'])} | {_ms(r['patch']) if r['patch'] else 'not run'} | "
        f"ART AdversarialPatchPyTorch | {statistics.mean(j['patch_seconds']):.1f} / "
        f"{statistics.mean(r['patch_seconds']) if r['patch'] else 0:.1f} |",
    ]
    for k in ("lbfgs", "adam", "adam_long"):
        s = j[f"stadv_{k}"]
        lines.append(f"| stAdv {k} | tau 0.05, {s['steps']} steps; success, median L_flow of "
                     f"successes | {s['success']:.3f}, {s['median_flow']:.2f} | | (no peer) "
                     f"| {s['seconds']:.1f} |")
    text = "\n".join(lines) + "\n"
    (ROOT / "results" / "universal_spatial_crosscheck.md").write_text(text)
    print(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=("jax", "ref", "report"))
    ap.add_argument("--dir", default="/tmp/universal_spatial_crosscheck")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--fit", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--xi", type=float, default=0.3)
    ap.add_argument("--uap-epochs", type=int, default=3)
    ap.add_argument("--target", type=int, default=3)
    ap.add_argument("--patch-steps", type=int, default=100)
    ap.add_argument("--patch-lr", type=float, default=0.05)
    ap.add_argument("--stadv-n", type=int, default=20)
    ap.add_argument("--stadv-steps", type=int, default=50)
    ap.add_argument("--only", default="spatial,uap,patch,stadv",
                    help="comma list of the parts to run (jax and ref stages; results are "
                    "merged into the stage's JSON)")
    a = ap.parse_args()
    {"jax": stage_jax, "ref": stage_ref, "report": stage_report}[a.stage](a)


if __name__ == "__main__":
    main()
