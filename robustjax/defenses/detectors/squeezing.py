"""Feature squeezing (Xu, Evans & Qi, NDSS 2018, "Feature Squeezing: Detecting Adversarial
Examples in Deep Neural Networks").

Squeezers map an image to a coarser one; a clean image's prediction barely moves, an
adversarial one's often does. With ``p(x) = softmax(apply_fn(params, x))`` the joint detection
score (the paper's Sec. 4, "joint detection") is

    score(x) = max over squeezers s of  || p(x) - p(s(x)) ||_1          (float32 [b], in [0, 2])

Squeezers (``FeatureSqueezingConfig``):

* bit-depth reduction to ``bit_depth`` bits (``transforms.ops.bit_depth_reduction``);
* median smoothing over a ``median_size x median_size`` window (``transforms.ops.median_filter``:
  scipy.ndimage conventions; an even window takes the upper median);
* non-local means ``nlm = (search_window, patch_size, strength)``, the paper's "13-3-2"
  notation, ``strength`` in 8-bit grey levels (0..255), see ``non_local_means``.

Paper settings (Xu et al. Table 5 / Sec. 5; ``FEATURE_SQUEEZING_PRESETS``):

=========  =========  ==========  =============
dataset    bit depth  median      non-local means
=========  =========  ==========  =============
MNIST      1-bit      2x2         --
CIFAR-10   5-bit      2x2         13-3-2
ImageNet   5-bit      2x2         11-3-4
=========  =========  ==========  =============

The threshold is chosen on clean data at a target false-positive rate (the paper uses 5% on
its training set): ``threshold_at_fpr(score_feature_squeezing(...), 0.05)``.

Departure: the paper's non-local means is OpenCV's ``fastNlMeansDenoising(Colored)``, which
works on uint8 images (colour in CIELAB) with integer lookup tables; ``non_local_means`` is the
textbook float version of the same filter (below), so scores with NLM are close to, not
bit-identical with, the paper's.

Example::

    cfg = FeatureSqueezingConfig.for_dataset("mnist")
    state = fit_feature_squeezing(model.apply_fn, model.params, x_train, cfg)
    scores = score_feature_squeezing(model.apply_fn, model.params, x_test, state)
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from robustjax.defenses.detectors import _common
from robustjax.defenses.transforms.ops import bit_depth_reduction, median_filter

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FeatureSqueezingConfig:
    """Squeezers of Xu et al. 2018; ``None`` switches one off. Defaults: the CIFAR-10 setting.

    Attributes:
      bit_depth: bits per channel after reduction (1..16) or None.
      median_size: side of the median window or None.
      nlm: ``(search_window, patch_size, strength)`` of non-local means (odd window sizes;
        strength in 0..255 grey levels), e.g. ``(13, 3, 2)``, or None.
    """

    bit_depth: Optional[int] = 5
    median_size: Optional[int] = 2
    nlm: Optional[tuple[int, int, float]] = (13, 3, 2)

    def __post_init__(self):
        if self.bit_depth is not None and (not isinstance(self.bit_depth, int)
                                           or not 1 <= self.bit_depth <= 16):
            raise ValueError(f"bit_depth must be an integer in [1, 16] or None, got "
                             f"{self.bit_depth!r}")
        if self.median_size is not None and (not isinstance(self.median_size, int)
                                             or self.median_size < 1):
            raise ValueError(f"median_size must be a positive integer or None, got "
                             f"{self.median_size!r}")
        if self.nlm is not None:
            if len(self.nlm) != 3:
                raise ValueError(f"nlm must be (search_window, patch_size, strength), got "
                                 f"{self.nlm!r}")
            search, patch, strength = self.nlm
            if search < 1 or patch < 1 or search % 2 == 0 or patch % 2 == 0:
                raise ValueError(f"nlm window sizes must be odd positive integers, got "
                                 f"search_window={search}, patch_size={patch}")
            if strength <= 0:
                raise ValueError(f"nlm strength must be positive, got {strength}")
            object.__setattr__(self, "nlm", (int(search), int(patch), float(strength)))
        if not self.squeezers:
            raise ValueError("FeatureSqueezingConfig needs at least one squeezer (bit_depth, "
                             "median_size or nlm)")

    @property
    def squeezers(self) -> tuple[str, ...]:
        """Names of the active squeezers, in the order of ``squeeze_distances``' columns."""
        names = (("bit_depth", self.bit_depth), ("median", self.median_size), ("nlm", self.nlm))
        return tuple(name for name, value in names if value is not None)

    @classmethod
    def for_dataset(cls, name: str) -> "FeatureSqueezingConfig":
        """The paper's setting for ``"mnist"``, ``"cifar10"`` or ``"imagenet"``."""
        if name not in FEATURE_SQUEEZING_PRESETS:
            raise KeyError(f"no feature-squeezing preset for {name!r}; valid: "
                           f"{', '.join(FEATURE_SQUEEZING_PRESETS)}")
        return FEATURE_SQUEEZING_PRESETS[name]


FEATURE_SQUEEZING_PRESETS = {
    "mnist": FeatureSqueezingConfig(bit_depth=1, median_size=2, nlm=None),
    "cifar10": FeatureSqueezingConfig(bit_depth=5, median_size=2, nlm=(13, 3, 2)),
    "imagenet": FeatureSqueezingConfig(bit_depth=5, median_size=2, nlm=(11, 3, 4)),
}


def non_local_means(x: Array, search_window: int = 13, patch_size: int = 3,
                    strength: float = 2 / 255) -> Array:
    """Non-local means (Buades et al. 2005) of an NHWC batch in [0, 1] -> same shape.

    ``out[p] = sum_q w(p, q) x[q] / sum_q w(p, q)`` over the ``search_window``-square around
    ``p``, with ``w(p, q) = exp(-d2(p, q) / strength**2)`` and ``d2`` the mean over the
    ``patch_size``-square patches and the channels of the squared differences of the patches
    around ``p`` and ``q``. Borders are reflected (``mode="reflect"``, OpenCV's
    BORDER_REFLECT_101). ``strength`` is in pixel units (the paper's "2" is ``2 / 255``).
    """
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [batch, H, W, C], got shape {x.shape}")
    if search_window % 2 == 0 or patch_size % 2 == 0:
        raise ValueError(f"search_window and patch_size must be odd, got {search_window}, "
                         f"{patch_size}")
    b, h, w, c = x.shape
    rs, rp = search_window // 2, patch_size // 2
    if rs + rp >= min(h, w):
        raise ValueError(f"images of {h}x{w} are too small for a {search_window}-pixel search "
                         f"window with {patch_size}-pixel patches")
    pad = rs + rp
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    size = (b, h + 2 * rp, w + 2 * rp, c)
    center = jax.lax.dynamic_slice(xp, (0, rs, rs, 0), size)
    offsets = jnp.array([(i, j) for i in range(search_window) for j in range(search_window)],
                        jnp.int32)
    inv_h2 = 1.0 / (float(strength) ** 2)
    area = float(patch_size * patch_size)

    def one_offset(carry, off):
        total, weights = carry
        other = jax.lax.dynamic_slice(xp, (0, off[0], off[1], 0), size)
        d2 = jnp.mean((center - other) ** 2, axis=-1)
        d2 = jax.lax.reduce_window(d2, 0.0, jax.lax.add, (1, patch_size, patch_size),
                                   (1, 1, 1), "VALID") / area
        wgt = jnp.exp(-d2 * inv_h2)[..., None]
        value = other[:, rp:rp + h, rp:rp + w, :]
        return (total + wgt * value, weights + wgt), None

    init = (jnp.zeros_like(x), jnp.zeros(x.shape[:3] + (1,), x.dtype))
    (total, weights), _ = jax.lax.scan(one_offset, init, offsets)
    return total / weights


def squeeze(x: Array, config: FeatureSqueezingConfig) -> tuple[Array, ...]:
    """The squeezed versions of ``x`` (one per ``config.squeezers`` entry, same shape)."""
    out = []
    if config.bit_depth is not None:
        out.append(bit_depth_reduction(x, config.bit_depth))
    if config.median_size is not None:
        out.append(median_filter(x, config.median_size))
    if config.nlm is not None:
        search, patch, strength = config.nlm
        out.append(non_local_means(x, search, patch, strength / 255.0))
    return tuple(out)


def _distances(apply_fn, params, x, config) -> Array:
    p = jax.nn.softmax(apply_fn(params, x).astype(jnp.float32), axis=-1)
    cols = [jnp.sum(jnp.abs(p - jax.nn.softmax(apply_fn(params, s).astype(jnp.float32), -1)),
                    axis=-1) for s in squeeze(x, config)]
    return jnp.stack(cols, axis=-1)


def squeeze_distances(apply_fn, params, x, config: FeatureSqueezingConfig) -> Array:
    """float32 ``[b, len(config.squeezers)]``: ``||p(x) - p(s(x))||_1`` for each squeezer."""
    x = _common.check_x(x)
    if _common.is_traced(params, x):
        return _distances(apply_fn, params, x, config)
    return _common.jitted(_distances, (0, 3))(apply_fn, params, x, config)


@struct.dataclass
class FeatureSqueezingState:
    """What ``fit_feature_squeezing`` records: the method learns no parameters; the state
    carries the squeezers (``config``) and the image shape it was set up for,
    so scoring cannot silently use other squeezers or other images."""

    config: FeatureSqueezingConfig = struct.field(pytree_node=False)
    input_shape: tuple[int, int, int] = struct.field(pytree_node=False)


def fit_feature_squeezing(apply_fn, params, x_clean,
                          config: FeatureSqueezingConfig = FeatureSqueezingConfig()
                          ) -> FeatureSqueezingState:
    """Set up feature squeezing for ``apply_fn`` on images like ``x_clean`` (float32
    ``[n, H, W, C]`` in [0, 1]); no data-dependent fitting beyond shapes (the threshold comes
    from ``threshold_at_fpr`` on clean scores)."""
    if not isinstance(config, FeatureSqueezingConfig):
        raise TypeError(f"config must be a FeatureSqueezingConfig, got {type(config).__name__}")
    x = _common.check_x(x_clean, "x_clean")
    probe = jax.ShapeDtypeStruct((1,) + x.shape[1:], jnp.float32)
    logits = jax.eval_shape(apply_fn, params, probe)  # fails now, not at scoring time
    if len(logits.shape) != 2:
        raise ValueError(f"apply_fn must return logits [batch, classes], got shape "
                         f"{logits.shape}")
    jax.eval_shape(lambda z: squeeze(z, config), probe)  # e.g. images too small for the NLM
    return FeatureSqueezingState(config, tuple(x.shape[1:]))


def score_feature_squeezing(apply_fn, params, x, state: FeatureSqueezingState) -> Array:
    """float32 ``[b]`` in [0, 2]: max over squeezers of ``||p(x) - p(s(x))||_1``; higher = more
    likely adversarial. ``x`` float32 ``[b, H, W, C]`` in [0, 1]."""
    _common.check_state(state, FeatureSqueezingState, "fit_feature_squeezing")
    x = _common.check_x(x)
    _common.check_image_shape(x, state.input_shape, "fit_feature_squeezing")
    return jnp.max(squeeze_distances(apply_fn, params, x, state.config), axis=-1)
