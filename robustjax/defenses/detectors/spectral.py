"""A model-agnostic high-frequency detector: Fourier-spectrum features + logistic regression.

What is implemented (``SpectralConfig``):

1. ``spectral_features(x)``: per image and channel the orthonormal 2-D DFT
   ``F = fft2(x) / sqrt(H W)``; keep the high-frequency band, the frequencies with normalised
   radius ``r = sqrt(fy^2 + fx^2) / 0.5 >= cutoff`` (``fy, fx`` in cycles per pixel, so
   ``r = 1`` is the Nyquist frequency of an axis and the corners reach ``sqrt(2)``);
   ``pooling="radial"``: split ``[cutoff, sqrt(2)]`` into ``num_bins`` rings and take
   ``log(mean |F|^2 + 1e-10)`` per ring and channel (``num_bins * C`` features, a radially
   averaged power spectrum); ``pooling="none"``: ``log(|F| + 1e-5)`` of every kept frequency
   and channel (the full high-pass magnitude spectrum).
2. ``fit_spectral(x_clean, x_adv)``: standardise the features (mean and std over both sets),
   fit an L2-regularised logistic regression ``P(adv | f) = sigmoid(w . f + b)`` minimising
   ``mean(log-loss) + l2 / 2 ||w||^2`` (intercept not penalised: the objective of
   ``sklearn.linear_model.LogisticRegression(C=1 / (l2 * n))``, tested) by damped Newton.
3. ``score_spectral(x, state) = w . f(x) + b`` (the logit; float32 ``[b]``, higher = more
   likely adversarial).

Relation to the papers. The closest is SpectralDefense (Harder et al., IJCNN 2021, "Spectral
Defense: Detecting Adversarial Attacks on CNNs in the Fourier Domain"): magnitude Fourier
spectrum of the input ("MFS") fed to a logistic regression trained on clean vs adversarial
examples. Departures: Harder et al. use the whole spectrum (no high-pass) and also
feature-map spectra and phase; here only the input's high-frequency band, by default radially
averaged (far fewer features, so a few hundred training pairs suffice) and log-scaled.
Li et al. 2024 ("Model-agnostic adversarial example detection via high-frequency
amplification") amplify the high-frequency component of the input and train a neural
detector on it; this module keeps their premise (the detector looks at high frequencies only
and never at the model) but replaces the learned CNN by a linear classifier on spectral
statistics. Like both, it must be fitted on adversarial examples of the attack it should
catch and may not transfer to other attacks; an adaptive attacker can keep its perturbation
out of the high band.

Example::

    state = fit_spectral(x_clean_train, x_adv_train, SpectralConfig())
    scores = score_spectral(x_test, state)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from robustjax.defenses.detectors import _common

Array = jax.Array

POOLINGS = ("radial", "none")


@dataclasses.dataclass(frozen=True)
class SpectralConfig:
    """High-frequency spectral detector (see the module docstring for the equations).

    Attributes:
      cutoff: normalised radius in [0, sqrt(2)) where the kept high-frequency band starts.
      num_bins: rings of the radial pooling.
      pooling: ``"radial"`` (ring means) or ``"none"`` (every kept frequency).
      l2: ridge strength of the logistic regression on standardised features.
      newton_steps: damped-Newton iterations (converged long before 50 in practice).
    """

    cutoff: float = 0.5
    num_bins: int = 8
    pooling: str = "radial"
    l2: float = 1e-3
    newton_steps: int = 50

    def __post_init__(self):
        if not 0.0 <= self.cutoff < np.sqrt(2.0):
            raise ValueError(f"cutoff must be in [0, sqrt(2)), got {self.cutoff}")
        if self.num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {self.num_bins}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; valid: {', '.join(POOLINGS)}")
        if self.l2 <= 0:
            raise ValueError(f"l2 must be positive (it keeps the fit finite on separable "
                             f"data), got {self.l2}")


def _radius(h: int, w: int) -> np.ndarray:
    fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    return np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / 0.5


def _rings(h: int, w: int, config: SpectralConfig) -> np.ndarray:
    """int ``[H, W]``: the ring of each frequency, -1 below the cutoff or in an empty ring."""
    r = _radius(h, w)
    edges = np.linspace(config.cutoff, np.sqrt(2.0) + 1e-9, config.num_bins + 1)
    ring = np.searchsorted(edges, r, side="right") - 1
    ring = np.where((r >= config.cutoff) & (ring < config.num_bins), ring, -1)
    return ring


def num_features(input_shape, config: SpectralConfig) -> int:
    h, w, c = input_shape
    if config.pooling == "radial":
        return config.num_bins * c
    return int(np.sum(_radius(h, w) >= config.cutoff)) * c


def spectral_features(x, config: SpectralConfig = SpectralConfig()) -> Array:
    """float32 ``[b, num_features]`` high-frequency spectral features of NHWC ``x`` in [0, 1].

    Radial pooling: ring ``k`` of channel ``c`` is feature ``c * num_bins + k``.
    """
    x = _common.check_x(x)
    _, h, w, c = x.shape
    spectrum = jnp.fft.fft2(jnp.moveaxis(x, -1, 1), norm="ortho")  # [b, C, H, W]
    power = jnp.abs(spectrum) ** 2
    if config.pooling == "none":
        keep = np.flatnonzero(_radius(h, w).reshape(-1) >= config.cutoff)
        if keep.size == 0:
            raise ValueError(f"no frequency of a {h}x{w} image is above cutoff "
                             f"{config.cutoff}; lower the cutoff")
        mag = jnp.sqrt(power.reshape(x.shape[0], c, h * w)[..., keep])
        return jnp.log(mag + 1e-5).reshape(x.shape[0], -1).astype(jnp.float32)
    ring = _rings(h, w, config).reshape(-1)
    counts = np.bincount(ring[ring >= 0], minlength=config.num_bins)
    if np.any(counts == 0):
        raise ValueError(f"{int(np.sum(counts == 0))} of the {config.num_bins} rings hold no "
                         f"frequency of a {h}x{w} image; use fewer bins or a lower cutoff")
    onehot = (ring[:, None] == np.arange(config.num_bins)[None, :]) / counts[None, :]
    means = power.reshape(x.shape[0], c, h * w) @ jnp.asarray(onehot, jnp.float32)
    return jnp.log(means + 1e-10).reshape(x.shape[0], -1).astype(jnp.float32)


def logistic_regression(features, labels, l2: float, steps: int = 50):
    """Fit ``sigmoid(f . w + b)`` to 0/1 ``labels`` [n] from ``features`` [n, d] by damped
    Newton on ``mean(log-loss) + l2 / 2 ||w||^2`` -> ``(w [d], b [])`` float32.

    The damped step ``delta / (1 + lambda)``, ``lambda = sqrt(g . H^-1 g)`` (the Newton
    decrement), cannot overshoot on (nearly) separable data; near the optimum it is Newton's
    step and converges quadratically.
    """
    f = jnp.asarray(features, jnp.float32)
    t = jnp.asarray(labels, jnp.float32)
    n, d = f.shape
    a = jnp.concatenate([f, jnp.ones((n, 1), jnp.float32)], axis=1)
    reg = jnp.diag(jnp.concatenate([jnp.full((d,), l2, jnp.float32), jnp.zeros((1,))]))

    def step(theta, _):
        z = a @ theta
        p = jax.nn.sigmoid(z)
        g = a.T @ (p - t) / n + reg @ theta
        hess = (a.T * (p * (1 - p))) @ a / n + reg + 1e-8 * jnp.eye(d + 1)
        delta = jnp.linalg.solve(hess, g)
        decrement = jnp.sqrt(jnp.maximum(g @ delta, 0.0))
        return theta - delta / (1.0 + decrement), None

    theta, _ = jax.lax.scan(step, jnp.zeros((d + 1,), jnp.float32), None, length=steps)
    return theta[:d], theta[d]


@struct.dataclass
class SpectralState:
    """A fitted spectral detector: feature standardisation and the logistic regression.

    ``mean``, ``scale``: float32 ``[d]``; ``weights``: float32 ``[d]``; ``bias``: float32
    scalar; ``config`` and ``input_shape`` (H, W, C) are static metadata.
    """

    mean: Array
    scale: Array
    weights: Array
    bias: Array
    config: SpectralConfig = struct.field(pytree_node=False)
    input_shape: tuple[int, int, int] = struct.field(pytree_node=False)


def fit_spectral(x_clean, x_adv, config: SpectralConfig = SpectralConfig()) -> SpectralState:
    """Fit on clean ``x_clean`` [n, H, W, C] (label 0) vs adversarial ``x_adv`` [m, H, W, C]
    (label 1), both float32 in [0, 1] of the same image shape."""
    if not isinstance(config, SpectralConfig):
        raise TypeError(f"config must be a SpectralConfig, got {type(config).__name__}")
    xc = _common.check_x(x_clean, "x_clean")
    xa = _common.check_x(x_adv, "x_adv")
    if xc.shape[1:] != xa.shape[1:]:
        raise ValueError(f"x_clean images {tuple(xc.shape[1:])} and x_adv images "
                         f"{tuple(xa.shape[1:])} differ in shape")
    if xc.shape[0] < 2 or xa.shape[0] < 2:
        raise ValueError(f"fit_spectral needs at least 2 clean and 2 adversarial examples, got "
                         f"{xc.shape[0]} and {xa.shape[0]}")
    f = jnp.concatenate([spectral_features(xc, config), spectral_features(xa, config)])
    labels = jnp.concatenate([jnp.zeros(xc.shape[0]), jnp.ones(xa.shape[0])])
    mean = jnp.mean(f, axis=0)
    scale = jnp.maximum(jnp.std(f, axis=0), 1e-6)
    w, b = _common.jitted(logistic_regression, (2, 3))((f - mean) / scale, labels,
                                                       config.l2, config.newton_steps)
    return SpectralState(mean, scale, w, b, config, tuple(xc.shape[1:]))


def score_spectral(x, state: SpectralState) -> Array:
    """float32 ``[b]``: the logistic-regression logit of "adversarial" for NHWC ``x``."""
    _common.check_state(state, SpectralState, "fit_spectral")
    x = _common.check_x(x)
    _common.check_image_shape(x, state.input_shape, "fit_spectral")
    f = spectral_features(x, state.config)
    return ((f - state.mean) / state.scale) @ state.weights + state.bias
