"""Report section: black-box threat models next to white-box PGD, and transfer attacks.

Part 1, query-based: robust accuracy of the model under test at the same Linf eps under
white-box PGD, the score-based Square attack (``robustjax.attacks.square``) and the
decision-based HopSkipJump (``robustjax.attacks.hopskipjump``, Linf, ``max_queries`` the
budget; skipped, and said so, when not installed). HopSkipJump minimises the norm, so one run
serves every eps: it succeeds at ``eps`` where its adversarial example is within ``eps``.

Part 2, transfer: a second small CNN (different width and seed, trained on the mnist5k train
split; cached like the default model) is the surrogate; FGSM, PGD, MI-FGSM, DI-MI-FGSM and
TI-DI-MI-FGSM (``robustjax.attacks.transfer``; quick: PGD, DI and TI only) are crafted on it
and evaluated on the model under test. The transfer rate is the fooling rate (survey eq. 3) on the model under test over
the examples it classifies correctly. Only for 28x28x1 models (the surrogate is an MNIST CNN).
"""

from __future__ import annotations

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import checkpoint, data
from robustjax.attacks import gradient as G
from robustjax.attacks import transfer as T
from robustjax.attacks.square import SquareConfig, square
from robustjax.cache import cache_dir
from robustjax.metrics.equations import fooling_rate
from robustjax.models.registry import MODELS, create, wrap
from robustjax.report.base import ReportContext, Section, markdown_table, section_key

FULL = dict(n=200, eps=(0.1, 0.2, 0.3), pgd_steps=20, square_queries=1000, hsj_queries=1000,
            transfer_steps=10)
QUICK = dict(n=16, eps=(0.3,), pgd_steps=5, square_queries=50, hsj_queries=50,
             transfer_steps=3)

SURROGATE_ARCH = "cnn"
SURROGATE_OVERRIDES = {"channels": (16, 32), "hidden": 64}
SURROGATE_EPOCHS, SURROGATE_BATCH, SURROGATE_LR = 3, 50, 2e-3
CACHE_NAME = "blackbox_surrogate_cnn16_mnist5k_v1.npz"
TI_KERNEL = 5  # Dong et al. use 15 on 299x299 ImageNet; 28x28 digits want a smaller kernel


def train_surrogate(key, epochs: int = SURROGATE_EPOCHS, progress=None):
    """The transfer surrogate: ``cnn`` with ``SURROGATE_OVERRIDES`` trained on mnist5k train."""
    from robustjax.train import accuracy, fit

    init_key, train_key = jax.random.split(key)
    model = create(SURROGATE_ARCH, key=init_key, **SURROGATE_OVERRIDES)
    x, y = data.load("mnist5k", "train")
    steps = max(epochs * (len(x) // SURROGATE_BATCH), 1)
    opt = optax.adam(optax.cosine_decay_schedule(SURROGATE_LR, steps))
    params, hist = fit(model.apply_fn, model.params, opt, x, y, epochs=epochs,
                       batch_size=SURROGATE_BATCH, key=train_key, progress=progress)
    x_test, y_test = data.load("mnist5k", "test")
    info = {"epochs": epochs, "test_accuracy": accuracy(model.apply_fn, params, x_test, y_test),
            "seconds": float(sum(hist["seconds"]))}
    spec = dataclasses.replace(model.spec, class_names=data.class_names("mnist5k"),
                               source="robustjax: transfer surrogate trained on mnist5k")
    return dataclasses.replace(model, params=params, spec=spec), info


def surrogate_model(ctx: ReportContext):
    """``(model, info, how)``: from ``ctx.extras["surrogate_model"]``, the cache, or trained
    now (quick: 1 epoch, not cached)."""
    if "surrogate_model" in ctx.extras:
        return ctx.extras["surrogate_model"], {}, "given"
    path = cache_dir() / CACHE_NAME
    if not ctx.quick and path.exists():
        variables, spec, info = checkpoint.load(path)
        module = MODELS[SURROGATE_ARCH].module(num_classes=spec.num_classes,
                                               **SURROGATE_OVERRIDES)
        return wrap(module, variables, spec), info, "cache"
    key = jax.random.PRNGKey(1)  # fixed: the cached surrogate does not depend on the report seed
    if ctx.quick:
        model, info = train_surrogate(key, epochs=1)
        return model, info, "trained now (quick: 1 epoch)"
    model, info = train_surrogate(key, progress=ctx.progress)
    checkpoint.save(path, model.params, model.spec, info, overwrite=True)
    return model, info, "trained now, cached"


def _hopskipjump():
    """``(attack, ConfigClass)`` of HopSkipJump if some module provides it, else None."""
    for name in ("robustjax.attacks.hopskipjump", "robustjax.attacks.decision"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        fn, cfg = getattr(mod, "hopskipjump", None), getattr(mod, "HopSkipJumpConfig", None)
        if fn is not None and cfg is not None:
            return fn, cfg
    return None


def _robust(clean_ok, success):
    return float(np.mean(clean_ok & ~np.asarray(success)))


def query_part(ctx, s, f, params, x, y, clean_ok, key):
    """Robust accuracy and median queries per attack and eps -> (rows, queries, notes)."""
    rows, queries, notes = {}, {}, []
    pgd = jax.jit(lambda p, x, y, k, c: G.pgd(f, p, x, y, k, c))
    name_pgd, name_sq = f"PGD-{s['pgd_steps']} (white-box)", f"Square ({s['square_queries']} q.)"
    for i, e in enumerate(s["eps"]):
        r = pgd(params, x, y, jax.random.fold_in(key, 100 + i),
                G.PGDConfig(eps=e, step_size=e / 4, steps=s["pgd_steps"]))
        rows.setdefault(name_pgd, []).append(_robust(clean_ok, r.success))
        queries.setdefault(name_pgd, []).append(s["pgd_steps"])
        cfg = SquareConfig(eps=float(e), n_queries=s["square_queries"])  # not a pytree
        sq = jax.jit(lambda p, x, y, k, cfg=cfg: square(f, p, x, y, k, cfg))
        r = sq(params, x, y, jax.random.fold_in(key, 200 + i))
        rows.setdefault(name_sq, []).append(_robust(clean_ok, r.success))
        queries.setdefault(name_sq, []).append(float(np.median(np.asarray(r.queries)[clean_ok]))
                                               if clean_ok.any() else 0.0)
    hsj = _hopskipjump()
    if hsj is None:
        notes.append("HopSkipJump: not available (no robustjax.attacks.hopskipjump or "
                     ".decision module providing it); Square and PGD only.")
        return rows, queries, notes
    fn, cfg_cls = hsj
    cfg = _hsj_config(cfg_cls, s["hsj_queries"])
    r = jax.jit(lambda p, x, y, k: fn(f, p, x, y, k, cfg))(params, x, y,
                                                           jax.random.fold_in(key, 300))
    norm = np.asarray(r.norm)
    found = np.asarray(getattr(r, "is_adv", r.success))  # adversarial at any distance
    name = f"HopSkipJump Linf ({s['hsj_queries']} q.)"
    for e in s["eps"]:
        within = found & (norm <= e + 1e-6)
        rows.setdefault(name, []).append(_robust(clean_ok, within))
        queries.setdefault(name, []).append(float(np.median(np.asarray(r.queries)[clean_ok]))
                                            if clean_ok.any() else 0.0)
    return rows, queries, notes


def _hsj_config(cfg_cls, budget):
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    kw = {}
    if "norm" in fields:
        kw["norm"] = "linf"
    for name in ("max_queries", "n_queries", "query_budget", "queries"):
        if name in fields:
            kw[name] = budget
            break
    return cfg_cls(**kw)


def transfer_part(ctx, s, f, params, x, y, key):
    """Transfer rate surrogate -> model under test per attack and eps -> (rows, white, info)."""
    surrogate, info, how = surrogate_model(ctx)
    g, q = surrogate.apply_fn, surrogate.params
    n_steps = s["transfer_steps"]
    attacks = {
        "FGSM": (G.fgsm, lambda e: G.FGSMConfig(eps=e)),
        f"PGD-{n_steps}": (G.pgd, lambda e: G.PGDConfig(eps=e, step_size=e / 4, steps=n_steps)),
        f"MI-FGSM-{n_steps}": (G.mifgsm, lambda e: G.MIFGSMConfig(eps=e, steps=n_steps)),
        f"DI-MI-FGSM-{n_steps}": (T.difgsm, lambda e: T.DIFGSMConfig(
            eps=e, step_size=e / n_steps, steps=n_steps, decay=1.0)),
        f"TI-DI-MI-FGSM-{n_steps}": (T.tifgsm, lambda e: T.TIFGSMConfig(
            eps=e, step_size=e / n_steps, steps=n_steps, decay=1.0, kernel_size=TI_KERNEL)),
    }
    if ctx.quick:  # smoke setting: one attack per family of booster
        attacks = {k: v for k, v in attacks.items() if k.startswith(("PGD", "DI", "TI"))}
    clean_logits = f(params, x)
    rows, white = {}, {}
    for j, (name, (attack, make)) in enumerate(attacks.items()):
        run = jax.jit(lambda p, x, y, k, c, attack=attack: attack(g, p, x, y, k, c))
        for i, e in enumerate(s["eps"]):
            r = run(q, x, y, jax.random.fold_in(key, 1000 * j + i), make(float(e)))
            rows.setdefault(name, []).append(
                float(fooling_rate(clean_logits, f(params, r.x_adv), y)))
            white.setdefault(name, []).append(float(np.mean(np.asarray(r.success))))
    info = {"how": how, "architecture": SURROGATE_ARCH, "overrides": SURROGATE_OVERRIDES,
            "clean_accuracy_eval": float(np.mean(np.asarray(jnp.argmax(g(q, x), -1) == y))),
            **{k: v for k, v in info.items() if k in ("epochs", "test_accuracy", "seconds")}}
    return rows, white, info


def section(ctx: ReportContext) -> Section:
    s = QUICK if ctx.quick else FULL
    n = min(s["n"], len(ctx.x))
    x, y = jnp.asarray(ctx.x[:n], jnp.float32), jnp.asarray(ctx.y[:n], jnp.int32)
    f, params = ctx.model.apply_fn, ctx.model.params
    key = section_key(ctx, "blackbox")
    clean_ok = np.asarray(jnp.argmax(f(params, x), -1) == y)
    clean = float(clean_ok.mean())
    eps_cols = [f"eps={e:g}" for e in s["eps"]]

    rows, queries, notes = query_part(ctx, s, f, params, x, y, clean_ok, key)
    md = [f"Robust accuracy (Linf, pixel units) of `{ctx.model.spec.name}` on {n} test images "
          f"under white-box PGD and query-based black-box attacks at the same eps (clean "
          f"accuracy {clean:.3f}); `queries` is the median number of model queries (PGD: "
          f"gradient steps) on the clean-correct examples, at the largest eps.",
          "", markdown_table(["attack"] + eps_cols + ["queries"],
                             [[k] + v + [queries[k][-1]] for k, v in rows.items()], ".3f")]
    data_out = {"n": n, "eps": [float(e) for e in s["eps"]], "clean": clean,
                "robust_accuracy": rows, "median_queries": queries,
                "settings": {k: v for k, v in s.items() if k != "eps"}}
    if tuple(ctx.model.spec.input_shape) == (28, 28, 1):
        t_rows, white, info = transfer_part(ctx, s, f, params, x, y, key)
        md += ["", f"Transfer from a second small model (`{SURROGATE_ARCH}` with "
               f"{SURROGATE_OVERRIDES}, {info['how']}; its clean accuracy here "
               f"{info['clean_accuracy_eval']:.3f}) to `{ctx.model.spec.name}`: the fooling "
               f"rate on the model under test over its clean-correct examples (higher = the "
               f"attack transfers better); in brackets the white-box success on the surrogate. "
               f"TI kernel {TI_KERNEL}x{TI_KERNEL}, DI resize 0.9 with p = 0.5, momentum 1.0.",
               "", markdown_table(["crafted on surrogate"] + eps_cols,
                                  [[k] + [f"{a:.3f} ({b:.2f})" for a, b in zip(v, white[k])]
                                   for k, v in t_rows.items()])]
        data_out["transfer"] = {"rate": t_rows, "surrogate_success": white, "surrogate": info}
    else:
        notes.append(f"Transfer: skipped (the surrogate is an MNIST CNN; the model under test "
                     f"takes {ctx.model.spec.input_shape}).")
    if notes:
        md += [""] + notes
    data_out["notes"] = notes
    return Section("blackbox", "Black-box and transfer attacks", data_out, "\n".join(md))

