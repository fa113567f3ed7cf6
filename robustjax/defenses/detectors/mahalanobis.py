"""Mahalanobis detector (Lee, Lee, Lee & Shin, NeurIPS 2018, "A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks").

On penultimate features ``f(x) = embed_fn(params, x)`` (float32 ``[b, d]``) of clean training
data with labels ``y`` fit class means and one shared ("tied") covariance (the paper's eq. 1):

    mu_c = mean of f(x_i) over y_i = c
    Sigma = 1/N sum_c sum_{y_i = c} (f(x_i) - mu_c)(f(x_i) - mu_c)^T      (precision = pinv)

The paper's confidence score is ``M(x) = max_c -(f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c)``
(eq. 2); the detection score here is its negative,

    score(x) = min_c (f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c)       (float32 [b], >= 0)

the squared Mahalanobis distance to the closest class mean. With a tied covariance this is,
up to the constant ``log det Sigma + d log 2 pi`` and a factor 2, minus the largest class-
conditional Gaussian log-density, so it ranks examples exactly like ``-max_c log N(f; mu_c,
Sigma)``. Higher = more likely adversarial.

Input pre-processing (the paper's eq. 4, ``MahalanobisConfig.epsilon > 0``): score
``x_hat = clip(x + epsilon * sign(grad_x M(x)), 0, 1)`` instead of ``x``, a small step that
increases the confidence score; clean inputs gain more than adversarial ones. ``epsilon`` is
in pixel units; the paper tunes it on validation data from {0, 0.0005, 0.001, 0.0014, 0.002,
0.005, 0.01} (in units of its normalised inputs), so the default is 0 (off).

Departures: the paper also combines the scores of several layers with a logistic regression
fitted on adversarial examples (its "feature ensemble"); this module scores one layer, the
penultimate features ``Model.embed_fn`` gives. The covariance is computed in float32 with
``jnp.linalg.pinv(hermitian=True)`` (the paper: sklearn ``EmpiricalCovariance``, ``pinvh``).

Example::

    state = fit_mahalanobis(model.embed_fn, model.params, x_train, y_train)
    scores = score_mahalanobis(model.embed_fn, model.params, x_test, state)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from robustjax import validation
from robustjax.defenses.detectors import _common

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MahalanobisConfig:
    """Attributes:
      epsilon: input pre-processing step (pixel units, >= 0; 0 = off; the paper's noise
        magnitude).
      batch_size: rows per forward pass when extracting training features in ``fit``.
    """

    epsilon: float = 0.0
    batch_size: int = 500

    def __post_init__(self):
        if not self.epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0 (pixel units), got {self.epsilon}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size}")


@struct.dataclass
class MahalanobisState:
    """Fitted class-conditional Gaussians with a tied covariance.

    ``means``: float32 ``[K, d]`` (a class absent from the training labels has NaN mean and is
    ignored by the score); ``precision``: float32 ``[d, d]``, the pseudo-inverse of the tied
    covariance; ``config`` static.
    """

    means: Array
    precision: Array
    config: MahalanobisConfig = struct.field(pytree_node=False)


def fit_mahalanobis_features(features, y, num_classes: int | None = None,
                             config: MahalanobisConfig = MahalanobisConfig()
                             ) -> MahalanobisState:
    """Fit from clean features ``[n, d]`` (float) and labels ``y`` int32 ``[n]``.

    ``num_classes`` defaults to ``max(y) + 1``; classes without examples get NaN means.
    """
    f = jnp.asarray(features, jnp.float32)
    if f.ndim != 2:
        raise ValueError(f"features must be [n, d] (one feature vector per example), got shape "
                         f"{f.shape}")
    validation.check_labels(y, batch=f.shape[0])
    y = np.asarray(y)
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    validation.check_labels(y, num_classes=k, batch=f.shape[0])
    if f.shape[0] < 2:
        raise ValueError(f"fitting a covariance needs at least 2 examples, got {f.shape[0]}")
    onehot = jax.nn.one_hot(jnp.asarray(y), k, dtype=jnp.float32)  # [n, K]
    counts = jnp.sum(onehot, axis=0)
    means = (onehot.T @ f) / jnp.maximum(counts, 1.0)[:, None]
    centered = f - means[jnp.asarray(y)]
    cov = centered.T @ centered / f.shape[0]
    precision = jnp.linalg.pinv(cov, hermitian=True)
    means = jnp.where((counts > 0)[:, None], means, jnp.nan)
    return MahalanobisState(means, precision, config)


def fit_mahalanobis(embed_fn, params, x_clean, y_clean,
                    config: MahalanobisConfig = MahalanobisConfig()) -> MahalanobisState:
    """Fit on clean training images ``x_clean`` float32 ``[n, H, W, C]`` in [0, 1] with labels
    ``y_clean`` int32 ``[n]``; features ``embed_fn(params, x)`` are extracted in batches of
    ``config.batch_size``. The number of classes is ``max(y_clean) + 1``."""
    if embed_fn is None:
        raise TypeError("embed_fn is None: the Mahalanobis detector needs the model's "
                        "penultimate features (Model.embed_fn); this model does not expose them")
    if not isinstance(config, MahalanobisConfig):
        raise TypeError(f"config must be a MahalanobisConfig, got {type(config).__name__}")
    x = _common.check_x(x_clean, "x_clean")
    validation.check_labels(y_clean, batch=x.shape[0], name="y_clean")
    embed = _common.jitted(embed_fn, ())
    feats = _common.map_batches(lambda xb: embed(params, xb), x, config.batch_size)
    return fit_mahalanobis_features(feats.reshape(feats.shape[0], -1), y_clean, config=config)


def min_distance(features, state: MahalanobisState) -> Array:
    """float32 ``[b]``: ``min_c (f - mu_c)^T P (f - mu_c)`` of features ``[b, d]``."""
    present = ~jnp.any(jnp.isnan(state.means), axis=-1)  # [K]
    # NaN means replaced before the arithmetic: a NaN branch of where() would poison gradients.
    means = jnp.where(present[:, None], state.means, 0.0)
    diff = features[:, None, :] - means[None, :, :]  # [b, K, d]
    d2 = jnp.einsum("bkd,de,bke->bk", diff, state.precision, diff)
    return jnp.min(jnp.where(present[None, :], d2, jnp.inf), axis=-1)


def _score(embed_fn, params, x, state):
    def feats(z):
        f = embed_fn(params, z)
        return f.reshape(f.shape[0], -1).astype(jnp.float32)

    if state.config.epsilon > 0:
        # x_hat = x + eps sign(grad M(x)), M = -min distance; per-example sums are separable.
        grad = jax.grad(lambda z: -jnp.sum(min_distance(feats(z), state)))(x)
        x = jnp.clip(x + state.config.epsilon * jnp.sign(grad), 0.0, 1.0)
    return min_distance(feats(x), state)


def score_mahalanobis(embed_fn, params, x, state: MahalanobisState) -> Array:
    """float32 ``[b]``: min squared Mahalanobis distance of ``embed_fn(params, x)`` to the
    class means (after the input pre-processing when ``epsilon > 0``). ``x`` float32
    ``[b, H, W, C]`` in [0, 1]."""
    _common.check_state(state, MahalanobisState, "fit_mahalanobis")
    if embed_fn is None:
        raise TypeError("embed_fn is None: pass the model's Model.embed_fn")
    x = _common.check_x(x)
    feat = jax.eval_shape(embed_fn, params, jax.ShapeDtypeStruct((1,) + x.shape[1:],
                                                                 jnp.float32))
    d = int(np.prod(feat.shape[1:]))
    if d != state.precision.shape[0]:
        raise ValueError(f"embed_fn gives {d} features per example but the state was fitted "
                         f"on {state.precision.shape[0]}; fit it with this model's embed_fn")
    if _common.is_traced(params, x, state):
        return _score(embed_fn, params, x, state)
    return _common.jitted(_score, (0,))(embed_fn, params, x, state)
