"""Report section: defenses, each attacked naively and adaptively.

Three models on the report's test images, all through
``robustjax.defenses.evaluation.adaptive_evaluation`` (naive PGD, adaptive PGD through
BPDA/EOT, and the gradient-free Square attack; a gap between naive PGD and the others flags
gradient masking, Athalye et al. 2018):

* the model under test, undefended;
* an adversarially trained variant of the embedded default (PGD-AT, Madry et al. 2018, at the
  MNIST eps 0.3; trained once and cached like the default; only for 28x28x1 inputs);
* the model under test behind an input transformation: bit-depth reduction to 4 bits (Xu et
  al. 2018; Guo et al. 2018). It is not differentiable, so naive PGD sees zero gradients and
  BPDA is the adaptive attack. (Xu et al.'s 1-bit MNIST squeezer is left out: at eps 0.3 it
  is largely robust for real, `benchmarks/results/defenses_transforms.md`.)
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax

from robustjax import checkpoint, data
from robustjax.cache import cache_dir
from robustjax.defenses import transforms
from robustjax.defenses.evaluation import AdaptiveEvaluationConfig, adaptive_evaluation
from robustjax.models.default import DEFAULT_ARCH, DEFAULT_OVERRIDES
from robustjax.models.registry import MODELS, create, wrap
from robustjax.report.base import (
    ReportContext,
    Section,
    imagenet_scale,
    markdown_table,
    section_key,
)

CACHE_NAME = "adversarial_pgd_at_cnn_mnist5k_v1.npz"
TRAIN_EPS = 0.3
# PGD-AT recipe: Adam, cosine lr from 1e-3, batch 50; eps ramps 0 -> 0.3 over epochs 2-7
# (from scratch at eps 0.3 an MNIST CNN otherwise stalls at chance); 10 PGD steps of 0.05.
EPOCHS, BATCH, LR, STEPS, STEP_SIZE = 15, 50, 1e-3, 10, 0.05


def _settings(quick: bool, large: bool = False) -> dict:
    if quick:
        return {"n": 16, "pgd_steps": 5, "square_queries": 20}
    if large:  # ImageNet-scale inputs: a gradient costs ~100x the MNIST CNN's
        return {"n": 64, "pgd_steps": 10, "square_queries": 200}
    return {"n": 500, "pgd_steps": 40, "square_queries": 1000}


def train_adversarial(x, y, key, *, epochs=EPOCHS, steps=STEPS, overrides=None, progress=None):
    """PGD-AT of the default architecture on ``(x, y)`` -> ``(Model, history)``."""
    from robustjax.train import PGDATConfig, fit, pgd_at_loss, schedules

    init_key, train_key = jax.random.split(key)
    model = create(DEFAULT_ARCH, key=init_key, **(overrides or DEFAULT_OVERRIDES))
    spe = len(x) // BATCH
    ramp = schedules.eps_ramp(TRAIN_EPS, min(6, max(epochs - 1, 1)) * spe, spe)
    loss = pgd_at_loss(PGDATConfig(eps=ramp, step_size=STEP_SIZE, steps=steps))
    opt = optax.adam(optax.cosine_decay_schedule(LR, max(epochs * spe, 1)))
    params, hist = fit(model.apply_fn, model.params, opt, x, y, epochs=epochs,
                       batch_size=BATCH, key=train_key, loss_fn=loss, progress=progress)
    spec = dataclasses.replace(model.spec, class_names=data.class_names("mnist5k"),
                               source=f"robustjax: PGD-AT (eps {TRAIN_EPS}) on mnist5k")
    return dataclasses.replace(model, params=params, spec=spec), hist


def adversarial_model(ctx: ReportContext, key):
    """The PGD-AT CNN: from ``ctx.extras``, the cache, or trained now (quick: tiny)."""
    if "adversarial_model" in ctx.extras:
        return ctx.extras["adversarial_model"], "given"
    path = cache_dir() / CACHE_NAME
    if not ctx.quick and path.exists():
        variables, spec, _ = checkpoint.load(path)
        module = MODELS[DEFAULT_ARCH].module(num_classes=spec.num_classes, **DEFAULT_OVERRIDES)
        return wrap(module, variables, spec), "cache"
    x, y = data.load("mnist5k", "train")
    if ctx.quick:
        model, _ = train_adversarial(x[:200], y[:200], key, epochs=1, steps=2,
                                     overrides={"channels": (4, 8), "hidden": 16})
        return model, "trained (quick: tiny CNN, 1 epoch on 200 digits)"
    model, hist = train_adversarial(x, y, key, progress=ctx.progress)
    checkpoint.save(path, model.params, model.spec,
                    {"method": "pgd_at", "eps_train": TRAIN_EPS, "epochs": EPOCHS,
                     "seconds": hist["seconds"][-1]}, overwrite=True)
    return model, f"trained now ({hist['seconds'][-1]:.0f} s), cached"


def section(ctx: ReportContext) -> Section:
    s = _settings(ctx.quick, imagenet_scale(ctx.model.spec))
    key = section_key(ctx, "defenses")
    k_train, k_eval = jax.random.split(key)
    one_channel = ctx.model.spec.input_shape[-1] == 1
    eps = 0.3 if one_channel else 8 / 255
    bits = 4
    models = {"model under test": ctx.model}
    source = None
    if tuple(ctx.model.spec.input_shape) == (28, 28, 1):
        models["PGD-AT CNN"], source = adversarial_model(ctx, k_train)
    models[f"model under test + bit depth {bits}"] = transforms.defend(
        ctx.model, transforms.get("bit_depth", bits=bits))
    n = min(s["n"], len(ctx.x))
    idx = np.linspace(0, len(ctx.x) - 1, n).astype(int)  # spread over the class-sorted split
    x, y = ctx.x[idx], ctx.y[idx]
    cfg = AdaptiveEvaluationConfig(eps=eps, steps=s["pgd_steps"],
                                   square_queries=s["square_queries"])
    results, rows = {}, []
    stored = {"n": n, "eps": eps, "steps": cfg.steps, "square_queries": cfg.square_queries}
    for name, model in ctx.progress(list(models.items()), desc="defenses"):
        # one model at a time, stored as it finishes (a resumed report skips the done ones)
        ev = ctx.cached("defenses", name, stored,
                        lambda model=model: adaptive_evaluation(model, x, y, k_eval,
                                                                cfg).to_dict())
        results[name] = ev
        rows.append([name, ev["clean_accuracy"], ev["naive_pgd"], ev["adaptive_pgd"],
                     ev["adaptive_attack"], ev["square"],
                     "yes" if ev["gradient_masking_suspected"] else "no"])
    md = "\n".join([
        f"{n} test images, Linf eps {eps:g}: naive PGD-{cfg.steps}, adaptive PGD (BPDA / EOT "
        f"through the defense) and Square ({cfg.square_queries} queries). Robust accuracy "
        f"counts an example when its clean and adversarial versions are both correct.",
        "",
        markdown_table(["model", "clean", "naive PGD", "adaptive PGD", "adaptive attack",
                        "Square", "gradient masking?"], rows),
        "",
        f"PGD-AT CNN: {source}" if source else
        "(no adversarially trained variant: input is not 28x28x1)",
        "",
        "A defense that only looks robust under naive PGD (a large gap to the adaptive or the "
        "black-box attack) masks gradients; report its adaptive number.",
    ])
    data_out = {"eps": eps, "examples": n, "pgd_steps": cfg.steps,
                "square_queries": cfg.square_queries, "adversarial_model_source": source,
                "results": results}
    return Section("defenses", "Defenses: naive vs adaptive attacks", data_out, md)
