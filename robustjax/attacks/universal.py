"""Universal adversarial perturbations: one ``v`` [H, W, C] that fools a model on most images.

Two solvers, one result type (``UniversalResult``) and one evaluation:

* :func:`universal_perturbation` -- Moosavi-Dezfooli et al., "Universal adversarial
  perturbations", CVPR 2017, Algorithm 1: visit the training images in a random order; where
  ``k(x_i + v) = k(x_i)`` find the minimal extra perturbation with DeepFool
  (``robustjax.attacks.deepfool``) and project ``v + dv`` back onto the Lp ball of radius
  ``xi``; stop once the fooling rate on the training images reaches ``1 - delta`` (checked
  before each pass, as the authors' code does: ``delta = 1`` runs no pass) or after
  ``max_epochs`` passes. The visits are sequential by construction (each DeepFool starts
  from the current ``v``): a ``lax.scan`` over images inside a ``lax.while_loop`` over epochs.
* :func:`sgd_universal_perturbation` -- Shafahi et al., "Universal Adversarial Training",
  AAAI 2020, Sec. 3 (Alg. 1): minibatch gradient ascent on the clipped cross-entropy
  ``min(CE(x + v, y), beta)`` (the clip stops already-fooled images from dominating),
  ``v <- P(v + step_size * sign(mean gradient))`` (Linf; L2 uses the normalised gradient).

``k(.)`` is the model's prediction; the fooling rate (:func:`fooling_rate`, which is
``robustjax.metrics``' eq. 3 with ``reference="prediction"``) compares with the *clean
prediction*, as the paper does. Images are float32 NHWC in [0, 1]; ``x + v`` is clipped to
[0, 1] wherever it is evaluated (:func:`apply_universal`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from robustjax import validation
from robustjax.attacks._core import check_norm, cross_entropy, project
from robustjax.attacks.deepfool import DeepFoolConfig, deepfool
from robustjax.metrics.equations import fooling_rate_stats

Array = jax.Array


class UniversalResult(NamedTuple):
    """A universal perturbation and how well it did on the images it was fitted on.

    Attributes:
      perturbation: float32 [H, W, C], inside the config's Lp ball.
      fooling_rate: float32 [] on the training images (vs their clean predictions).
      epochs: int32 [] passes over the training images that were run.
    """

    perturbation: Array
    fooling_rate: Array
    epochs: Array


@dataclasses.dataclass(frozen=True)
class UAPConfig:
    """Moosavi-Dezfooli et al. 2017; defaults from the paper and its code.

    Attributes:
      xi: radius of the perturbation in pixel units (the paper's Linf xi = 10 of 255).
      norm: ``"linf"`` or ``"l2"`` (the paper's L2 xi is 2000 on 224 x 224 x 3 in [0, 255]).
      delta: stop once the training fooling rate is >= ``1 - delta`` (0.2).
      max_epochs: passes over the training images at most (10).
      overshoot, deepfool_steps, candidates: DeepFool's (0.02, 10 as in the authors' code,
        10 classes).
      deepfool_norm: the norm of the inner DeepFool: ``"l2"`` for either ``norm``, as in the
        authors' code and ART (``v + dv`` is then projected onto the ``norm`` ball), or
        ``"linf"``.
      eval_batch: images per forward pass when measuring the fooling rate (0 = all at once).
    """

    xi: float = 10 / 255
    norm: str = "linf"
    delta: float = 0.2
    max_epochs: int = 10
    overshoot: float = 0.02
    deepfool_steps: int = 10
    candidates: int = 10
    deepfool_norm: str = "l2"
    eval_batch: int = 0

    def __post_init__(self):
        check_norm(self.norm, ("linf", "l2"))
        check_norm(self.deepfool_norm, ("linf", "l2"))
        if self.xi < 0 or not 0 <= self.delta <= 1 or self.max_epochs < 1:
            raise ValueError("need xi >= 0, 0 <= delta <= 1, max_epochs >= 1; got "
                             f"{self.xi}, {self.delta}, {self.max_epochs}")


@dataclasses.dataclass(frozen=True)
class SGDUAPConfig:
    """Shafahi et al. 2020's stochastic-gradient universal perturbation.

    Attributes:
      eps: radius in pixel units (8/255, the paper's CIFAR-10 setting).
      norm: ``"linf"`` or ``"l2"``.
      beta: clip of the cross-entropy (9, the paper's).
      epochs: passes over the training images (10).
      batch_size: images per step (128; the last incomplete batch of an epoch is dropped).
      step_size: ascent step per minibatch in pixel units (1/255).
    """

    eps: float = 8 / 255
    norm: str = "linf"
    beta: float = 9.0
    epochs: int = 10
    batch_size: int = 128
    step_size: float = 1 / 255

    def __post_init__(self):
        check_norm(self.norm, ("linf", "l2"))
        if self.eps < 0 or self.beta <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("need eps >= 0, beta > 0, epochs >= 1, batch_size >= 1; got "
                             f"{self.eps}, {self.beta}, {self.epochs}, {self.batch_size}")


def apply_universal(x: Array, perturbation: Array) -> Array:
    """``clip(x + v, 0, 1)`` for ``x`` [b, H, W, C] and one ``v`` [H, W, C]."""
    if perturbation.shape != x.shape[1:]:
        raise ValueError(f"perturbation must be one image {tuple(x.shape[1:])}, got shape "
                         f"{tuple(perturbation.shape)}")
    return jnp.clip(x + perturbation[None], 0.0, 1.0)


def _predict(apply_fn, params, x, batch: int = 0):
    """Predicted classes [n] in batches of ``batch`` (0 = one pass)."""
    n = x.shape[0]
    if batch in (0, None) or batch >= n:
        return jnp.argmax(apply_fn(params, x), -1)
    return jax.lax.map(lambda xi: jnp.argmax(apply_fn(params, xi[None]), -1)[0], x,
                       batch_size=batch)


def fooling_rate(apply_fn, params, x: Array, x_perturbed: Array, y: Optional[Array] = None,
                 reference: str = "prediction") -> Array:
    """Eq. 3 of the survey (``robustjax.metrics.fooling_rate``) on ``x`` vs ``x_perturbed``.

    ``reference="prediction"`` (default, the universal-perturbation papers): share of images
    whose prediction changes; ``"label"`` (needs ``y``): share of the clean-correct images
    that become wrong. Returns float32 [] in [0, 1].
    """
    return fooling_rate_stats(apply_fn(params, x), apply_fn(params, x_perturbed), y,
                              reference=reference).compute()


def _fool_rate(apply_fn, params, x, v, pred_clean, batch):
    return jnp.mean(_predict(apply_fn, params, apply_universal(x, v), batch) != pred_clean)


def universal_perturbation(apply_fn, params, x_train: Array, y_train: Optional[Array], key,
                           config: UAPConfig = UAPConfig()) -> UniversalResult:
    """Moosavi-Dezfooli et al.'s universal perturbation fitted on ``x_train`` [n, H, W, C].

    ``y_train`` is unused (the paper fools the clean predictions; pass None or the labels);
    ``key`` shuffles each epoch's order. Jittable with ``apply_fn`` and ``config`` static.

    Example::

        res = universal_perturbation(m.apply_fn, m.params, x, None, key, UAPConfig(xi=0.2))
        fr = fooling_rate(m.apply_fn, m.params, x_test, apply_universal(x_test,
                          res.perturbation))
    """
    del y_train
    validation.check_model_inputs(apply_fn, params, x_train, None, "x_train", gradient=True)
    # Alg. 1: v <- P(v + dv_i), dv_i the DeepFool step from x_i + v (the authors' v = v + dr)
    return _algorithm1(apply_fn, params, x_train, key, config,
                       lambda v, x_i, x_v, x_df: v + x_df - x_v)


def _algorithm1(apply_fn, params, x_train, key, cfg: UAPConfig, update) -> UniversalResult:
    """Alg. 1's passes with the update ``update(v, x_i, x_i + v clipped, DeepFool's point)``
    of ``v`` before the projection (a seam for ``benchmarks/universal_art_ablation.py``)."""
    n = x_train.shape[0]
    pred_clean = _predict(apply_fn, params, x_train, cfg.eval_batch)
    df = DeepFoolConfig(norm=cfg.deepfool_norm, steps=cfg.deepfool_steps, overshoot=cfg.overshoot,
                        candidates=cfg.candidates)

    def visit(v, i):
        xv = apply_universal(x_train[i][None], v)
        # DeepFool leaves an image alone when k(x_i + v) != k(x_i) already
        res = deepfool(apply_fn, params, xv, pred_clean[i][None], key, df)
        # as the authors' code and ART: v moves only where DeepFool changed the label
        v_new = project(update(v, x_train[i], xv[0], res.x_adv[0])[None],
                        jnp.zeros_like(v)[None], cfg.xi, cfg.norm)[0]
        return jnp.where(res.success[0], v_new, v), None

    def epoch(state):
        v, e, _ = state
        order = jax.random.permutation(jax.random.fold_in(key, e), n)
        v, _ = jax.lax.scan(visit, v, order)
        return v, e + 1, _fool_rate(apply_fn, params, x_train, v, pred_clean, cfg.eval_batch)

    def keep_going(state):
        _, e, fr = state
        return (e < cfg.max_epochs) & (fr < 1.0 - cfg.delta)

    v0 = jnp.zeros(x_train.shape[1:], x_train.dtype)
    v, e, fr = jax.lax.while_loop(keep_going, epoch, (v0, jnp.int32(0), jnp.float32(0.0)))
    return UniversalResult(v, fr.astype(jnp.float32), e)


def sgd_universal_perturbation(apply_fn, params, x_train: Array, y_train: Array, key,
                               config: SGDUAPConfig = SGDUAPConfig()) -> UniversalResult:
    """Shafahi et al.'s SGD universal perturbation on ``x_train`` [n, H, W, C], ``y_train``
    int [n] (the true labels the clipped loss pushes away from). ``key`` shuffles batches.

    Example::

        res = sgd_universal_perturbation(m.apply_fn, m.params, x, y, key, SGDUAPConfig())
    """
    cfg = config
    validation.check_model_inputs(apply_fn, params, x_train, y_train, "x_train",
                                  gradient=True)
    n = x_train.shape[0]
    bs = min(cfg.batch_size, n)
    per_epoch = n // bs

    def loss(v, xb, yb):
        ce = cross_entropy(apply_fn(params, apply_universal(xb, v)), yb)
        return jnp.mean(jnp.minimum(ce, cfg.beta))

    def step(v, idx):
        g = jax.grad(loss)(v, x_train[idx], y_train[idx])
        if cfg.norm == "linf":
            d = jnp.sign(g)
        else:
            d = g / jnp.maximum(jnp.linalg.norm(g), 1e-12)
        v = project((v + cfg.step_size * d)[None], jnp.zeros_like(v)[None], cfg.eps,
                    cfg.norm)[0]
        return v, None

    def epoch(v, e):
        order = jax.random.permutation(jax.random.fold_in(key, e), n)[:per_epoch * bs]
        v, _ = jax.lax.scan(step, v, order.reshape(per_epoch, bs))
        return v, None

    v, _ = jax.lax.scan(epoch, jnp.zeros(x_train.shape[1:], x_train.dtype),
                        jnp.arange(cfg.epochs))
    pred_clean = _predict(apply_fn, params, x_train, bs)
    fr = _fool_rate(apply_fn, params, x_train, v, pred_clean, bs)
    return UniversalResult(v, fr.astype(jnp.float32), jnp.int32(cfg.epochs))
