"""Composite adversarial attacks: a searched sequence of budgeted attack primitives.

After Mao et al., "Composite Adversarial Attacks", AAAI 2021 (CAA): an attack is a sequence
of primitive attacks, each starting from the previous one's output, and the sequence is
searched. The primitives here are the semantic and Lp perturbations of Hsiung et al.,
"Towards Compositional Adversarial Robustness", CVPR 2023 (the composite attack with hue,
saturation, brightness, contrast, rotation and Linf), with their budgets:

==========  =====================================  =====================  ==================
primitive   x -> x'                                parameter              budget (default)
==========  =====================================  =====================  ==================
hue         rotate the (I, Q) chroma plane of YIQ  angle h, radians       |h| <= pi
saturation  gray + s (x - gray) (Rec. 601 luma)    factor s               0.7 <= s <= 1.3
brightness  x + b                                  offset b               |b| <= 0.2
contrast    mean + c (x - mean) (per image)        factor c               0.7 <= c <= 1.3
rotation    rotation about the centre, bilinear    angle a, degrees       |a| <= 10
linf        x + delta                              delta [H, W, C]        ||delta||_inf <= 8/255
l2          x + delta                              delta [H, W, C]        ||delta||_2 <= 0.5
==========  =====================================  =====================  ==================

Every output is clipped to [0, 1]; hue and saturation leave single-channel images unchanged.
Each primitive is a differentiable map of its parameter and one budgeted step is
``steps`` iterations of projected sign-gradient ascent on the loss over that parameter
(normalised gradient for L2), from a uniform random start inside the budget, step size
``2.5 * radius / steps`` (Madry et al.'s rule).

The search (a documented simplification of CAA's NSGA-II policy search and of Hsiung et al.'s
scheduling search): **exhaustive** over every ordered sequence of distinct primitives of length
1..``max_length`` whose cost (gradient evaluations, ``steps`` per primitive) fits
``max_cost``; each example keeps its strongest sequence (a misclassifying one beats any other,
then the highest loss). All sequences are static, so the whole search is one jittable program,
vectorised over examples; ``queries`` counts the gradient evaluations of the whole search.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Optional

import jax
import jax.numpy as jnp

from robustjax import validation
from robustjax.attacks._core import (
    AttackResult,
    get_loss,
    lp_norm,
    project_l2,
    success_mask,
)
from robustjax.attacks.spatial import transform
from robustjax.entry import attack_entry

Array = jax.Array
SEMANTIC = ("hue", "saturation", "brightness", "contrast", "rotation")
PRIMITIVES = SEMANTIC + ("linf", "l2")
_LUMA = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class CompositeConfig:
    """Composite attack settings; budgets from Hsiung et al. 2023.

    Attributes:
      primitives: the primitives the search may use (names of ``PRIMITIVES``).
      max_length: longest sequence searched (2).
      max_cost: gradient evaluations a sequence may spend (None: no limit beyond max_length).
      steps: ascent iterations per primitive (10).
      hue, brightness, rotation: symmetric budgets (pi radians, 0.2, 10 degrees).
      saturation, contrast: ``(low, high)`` factor ranges ((0.7, 1.3) each).
      linf_eps, l2_eps: Lp budgets in pixel units (8/255, 0.5).
      loss: ``"ce"`` or ``"margin"`` (maximised; untargeted, ``y`` the true labels).
    """

    primitives: tuple = ("hue", "saturation", "brightness", "contrast", "rotation", "linf")
    max_length: int = 2
    max_cost: Optional[int] = None
    steps: int = 10
    hue: float = math.pi
    saturation: tuple = (0.7, 1.3)
    brightness: float = 0.2
    contrast: tuple = (0.7, 1.3)
    rotation: float = 10.0
    linf_eps: float = 8 / 255
    l2_eps: float = 0.5
    loss: str = "ce"

    def __post_init__(self):
        bad = [p for p in self.primitives if p not in PRIMITIVES]
        if bad or not self.primitives or len(set(self.primitives)) != len(self.primitives):
            raise ValueError(f"primitives must be distinct names from {PRIMITIVES}, got "
                             f"{self.primitives!r}")
        if self.max_length < 1 or self.steps < 1:
            raise ValueError(f"need max_length >= 1 and steps >= 1, got {self.max_length}, "
                             f"{self.steps}")
        if self.max_cost is not None and self.max_cost < self.steps:
            raise ValueError(f"max_cost {self.max_cost} allows no primitive ({self.steps} "
                             "gradient evaluations each)")
        for name in ("saturation", "contrast"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= 1 <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= 1 <= high, "
                                 f"got {(lo, hi)}")
        if self.loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {self.loss!r}")


# ------------------------------------------------------------------------------ primitives


def _bcast(v, x):
    return jnp.reshape(v, (-1,) + (1,) * (x.ndim - 1))


def adjust_hue(x: Array, h) -> Array:
    """Rotate the chroma (I, Q of YIQ) of RGB ``x`` [b, H, W, 3] by ``h`` radians ([b])."""
    if x.shape[-1] != 3:
        return x
    m = jnp.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = x @ m.T
    c, s = _bcast(jnp.cos(h), x)[..., 0], _bcast(jnp.sin(h), x)[..., 0]
    i = yiq[..., 1] * c - yiq[..., 2] * s
    q = yiq[..., 1] * s + yiq[..., 2] * c
    return jnp.clip(jnp.stack([yiq[..., 0], i, q], -1) @ jnp.linalg.inv(m).T, 0.0, 1.0)


def adjust_saturation(x: Array, s) -> Array:
    """``gray + s (x - gray)`` with Rec. 601 luma (RGB only; [b] factors)."""
    if x.shape[-1] != 3:
        return x
    gray = jnp.sum(x * jnp.array(_LUMA), -1, keepdims=True)
    return jnp.clip(gray + _bcast(s, x) * (x - gray), 0.0, 1.0)


def adjust_brightness(x: Array, b) -> Array:
    return jnp.clip(x + _bcast(b, x), 0.0, 1.0)


def adjust_contrast(x: Array, c) -> Array:
    """``mean + c (x - mean)``, the mean over each image's pixels and channels."""
    mean = jnp.mean(x, axis=tuple(range(1, x.ndim)), keepdims=True)
    return jnp.clip(mean + _bcast(c, x) * (x - mean), 0.0, 1.0)


def rotate(x: Array, a) -> Array:
    return transform(x, a, 0.0, 0.0)


def add_delta(x: Array, delta) -> Array:
    return jnp.clip(x + delta, 0.0, 1.0)


def _ranges(cfg: CompositeConfig):
    """name -> (low, high) of a scalar primitive's parameter."""
    return {"hue": (-cfg.hue, cfg.hue), "saturation": cfg.saturation,
            "brightness": (-cfg.brightness, cfg.brightness), "contrast": cfg.contrast,
            "rotation": (-cfg.rotation, cfg.rotation)}


APPLY = {"hue": adjust_hue, "saturation": adjust_saturation, "brightness": adjust_brightness,
         "contrast": adjust_contrast, "rotation": rotate, "linf": add_delta, "l2": add_delta}


def _init(name, key, x, cfg):
    b = x.shape[0]
    if name in SEMANTIC:
        lo, hi = _ranges(cfg)[name]
        return jax.random.uniform(key, (b,), jnp.float32, lo, hi)
    if name == "linf":
        return jax.random.uniform(key, x.shape, jnp.float32, -cfg.linf_eps, cfg.linf_eps)
    d = jax.random.normal(key, x.shape, jnp.float32)
    r = cfg.l2_eps * jax.random.uniform(jax.random.fold_in(key, 1), (b,))
    return d * _bcast(r / jnp.maximum(lp_norm(d, "l2"), 1e-12), x)


def _ascend(name, theta, g, cfg):
    """One projected ascent step on a primitive's parameter."""
    if name in SEMANTIC:
        lo, hi = _ranges(cfg)[name]
        return jnp.clip(theta + 2.5 * (hi - lo) / 2 / cfg.steps * jnp.sign(g), lo, hi)
    if name == "linf":
        step = 2.5 * cfg.linf_eps / cfg.steps
        return jnp.clip(theta + step * jnp.sign(g), -cfg.linf_eps, cfg.linf_eps)
    gn = g / _bcast(jnp.maximum(lp_norm(g, "l2"), 1e-12), g)
    return project_l2(theta + 2.5 * cfg.l2_eps / cfg.steps * gn, cfg.l2_eps)


def attack_primitive(apply_fn, params, x: Array, y: Array, key: Array, name: str,
                     config: CompositeConfig = CompositeConfig()):
    """One budgeted primitive attack on ``x`` -> ``(x', theta)``, theta [b] or [b, H, W, C]."""
    loss_fn = get_loss(config.loss)

    def objective(theta):
        return jnp.sum(loss_fn(apply_fn(params, APPLY[name](x, theta)), y))

    def step(theta, _):
        return _ascend(name, theta, jax.grad(objective)(theta), config), None

    theta, _ = jax.lax.scan(step, _init(name, key, x, config), None, length=config.steps)
    return APPLY[name](x, theta), theta


def run_sequence(apply_fn, params, x: Array, y: Array, key: Array, sequence,
                 config: CompositeConfig = CompositeConfig()):
    """The primitives of ``sequence`` (names) one after the other -> ``(x_adv, thetas)``."""
    thetas = []
    for i, name in enumerate(sequence):
        x, theta = attack_primitive(apply_fn, params, x, y, jax.random.fold_in(key, i), name,
                                    config)
        thetas.append(theta)
    return x, tuple(thetas)


def sequences(config: CompositeConfig = CompositeConfig()) -> tuple:
    """Every sequence the search evaluates: ordered, distinct primitives, within the cost."""
    out = []
    for n in range(1, config.max_length + 1):
        if config.max_cost is not None and n * config.steps > config.max_cost:
            break
        out.extend(itertools.permutations(config.primitives, n))
    return tuple(out)


def composite_search(apply_fn, params, x: Array, y: Array, key: Array,
                     config: CompositeConfig = CompositeConfig()):
    """The search with its choice: ``(AttackResult, best [b] int32)``, ``best[i]`` the index
    into :func:`sequences` of example ``i``'s strongest sequence."""
    validation.check_model_inputs(apply_fn, params, x, y, gradient=True)
    loss_fn = get_loss(config.loss)
    seqs = sequences(config)
    advs, losses, oks = [], [], []
    for j, seq in enumerate(seqs):
        xa, _ = run_sequence(apply_fn, params, x, y, jax.random.fold_in(key, j), seq, config)
        logits = apply_fn(params, xa)
        advs.append(xa)
        losses.append(loss_fn(logits, y))
        oks.append(success_mask(logits, y))
    loss, ok = jnp.stack(losses), jnp.stack(oks)                       # [S, b]
    best = jnp.argmax(jnp.where(ok == jnp.any(ok, 0), loss, -jnp.inf), axis=0)
    x_adv = jnp.take_along_axis(jnp.stack(advs), best.reshape((1, -1) + (1,) * (x.ndim - 1)),
                                axis=0)[0]
    cost = sum(len(s) for s in seqs) * config.steps
    result = AttackResult(
        x_adv=x_adv,
        success=jnp.take_along_axis(ok, best[None], 0)[0],
        loss=jnp.take_along_axis(loss, best[None], 0)[0].astype(jnp.float32),
        norm=lp_norm(x_adv - x, "linf").astype(jnp.float32),
        queries=jnp.full((x.shape[0],), cost, jnp.int32))
    return result, best.astype(jnp.int32)


@attack_entry
def composite(apply_fn, params, x: Array, y: Array, key: Array,
              config: CompositeConfig = CompositeConfig()) -> AttackResult:
    """Composite attack: x [b, H, W, C] in [0, 1], y int [b] -> AttackResult.

    ``success`` whether the example's strongest sequence misclassifies it, ``loss`` that
    sequence's loss, ``norm`` the Linf pixel change (for information: the threat model bounds
    each primitive's parameter, not the pixels), ``queries`` the search's gradient
    evaluations per example.

    Example::

        res = composite(m.apply_fn, m.params, x, y, key, CompositeConfig(max_length=2))
    """
    return composite_search(apply_fn, params, x, y, key, config)[0]
