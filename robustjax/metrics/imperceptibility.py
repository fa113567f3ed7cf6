"""Imperceptibility of perturbations (survey Table 3, "Data imperceptibility"): average Lp
distortion (ALDp), average SSIM (ASS) and perturbation sensitivity distance (PSD).

All take clean images ``x`` and perturbed images ``x_adv``, float32 NHWC in [0, 1], and an
optional bool mask ``[b]`` of the examples to average over (DEEPSEC and AISafety average over
successful adversarial examples only: pass ``mask=success``).

**ALDp** (DEEPSEC). With ``delta = x_adv - x`` flattened over H, W, C:

* ``l{p}_abs`` = ``||delta||_p`` (what DEEPSEC's and AISafety's code report for L2 and Linf);
* ``l{p}_rel`` = ``||delta||_p / ||x||_p`` (what the DEEPSEC paper defines);
* ``l0_abs`` = number of elements (pixel x channel) with ``|delta| > l0_tol``, ``l0_rel`` that
  count over ``||x||_0`` (non-zero elements of ``x``), and ``l0_fraction`` that count over
  H*W*C (what DEEPSEC's code reports after rounding both images to 8 bits). The default
  ``l0_tol`` = 1/512 (half an 8-bit grey level) ignores float round-off.

**SSIM** (Wang et al. 2004, IEEE TIP 13:600): local statistics under an 11x11 Gaussian window
(sigma 1.5, normalised), K1 = 0.01, K2 = 0.03, data range L = 1, population (co)variances;
mean of the SSIM map over the positions where the window lies inside the image, then mean over
channels. This equals scikit-image's ``structural_similarity(a, b, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)`` (tested to 1e-4):
scikit-image filters with reflect padding but then crops the 5-pixel border, so only "valid"
windows count. Images must be at least 11x11.

**PSD** (Luo et al., AAAI 2018, "Towards imperceptible and robust adversarial example attacks
against neural networks"; used by DEEPSEC): per image
``sum_{j} |delta_j| * Sen(R(x_j))`` over all elements j, where ``R(x_j)`` is the 3x3
neighbourhood of element j in its channel (reflect padding at the border, as DEEPSEC) and
``sd`` its population standard deviation. Sources disagree on the sensitivity weight ``Sen``:

* ``"inverse_std"`` (default, the paper's): ``1 / max(sd, std_floor)``. A change in a smooth
  region is the most visible; the floor (default 1/255, one 8-bit grey level) keeps it finite
  where the paper's definition divides by zero (flat regions, e.g. MNIST background).
* ``"one_minus_std"``: ``1 - sd`` (DEEPSEC's code).
* ``"std"``: ``sd`` (AISafety's code; it weights textured regions more, the opposite intent).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from robustjax import validation
from robustjax.metrics.accumulators import Average

Array = jax.Array

PSD_WEIGHTS = ("inverse_std", "one_minus_std", "std")


def _check_pair(x, x_adv):
    validation.check_image_pair(x, x_adv)


def _pair_checks(x, x_adv):
    """Shapes now; the returned function completes the value checks (finite, in [0, 1])."""
    validation.check_image_pair(x, x_adv)
    return validation.start_checks(images=(("x", x), ("x_adv", x_adv)))


def lp_distortions(x: Array, x_adv: Array, l0_tol: float = 1.0 / 512) -> dict[str, Array]:
    """Per-example distortions, each float32 ``[b]``: keys ``l0_abs, l0_rel, l0_fraction,
    l2_abs, l2_rel, linf_abs, linf_rel`` (see the module docstring)."""
    with validation.completing(_pair_checks(x, x_adv)):
        return _lp_distortions(x, x_adv, l0_tol=l0_tol)


@functools.partial(jax.jit, static_argnames="l0_tol")
def _lp_distortions(x: Array, x_adv: Array, l0_tol: float = 1.0 / 512) -> dict[str, Array]:
    x, x_adv = jnp.asarray(x, jnp.float32), jnp.asarray(x_adv, jnp.float32)
    _check_pair(x, x_adv)
    b = x.shape[0]
    d, xf = (x_adv - x).reshape(b, -1), x.reshape(b, -1)
    tiny = jnp.finfo(jnp.float32).tiny
    l0 = jnp.sum(jnp.abs(d) > l0_tol, axis=1).astype(jnp.float32)
    l2 = jnp.sqrt(jnp.sum(d * d, axis=1))
    linf = jnp.max(jnp.abs(d), axis=1)
    return {
        "l0_abs": l0,
        "l0_rel": l0 / jnp.maximum(jnp.sum(xf != 0, axis=1), 1).astype(jnp.float32),
        "l0_fraction": l0 / d.shape[1],
        "l2_abs": l2,
        "l2_rel": l2 / jnp.maximum(jnp.sqrt(jnp.sum(xf * xf, axis=1)), tiny),
        "linf_abs": linf,
        "linf_rel": linf / jnp.maximum(jnp.max(jnp.abs(xf), axis=1), tiny),
    }


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    r = (size - 1) // 2
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _valid_filter(img: Array, w: np.ndarray) -> Array:
    """Separable 'valid' filtering over axes 1 and 2 (H, W) of ``img`` with the 1-D window
    ``w``, written as a sum of shifted slices (XLA fuses it; depthwise convolutions are much
    slower on XLA:CPU)."""
    k = len(w)
    h, wd = img.shape[1] - k + 1, img.shape[2] - k + 1
    out = sum(float(w[i]) * img[:, i:i + h] for i in range(k))
    return sum(float(w[i]) * out[:, :, i:i + wd] for i in range(k))


def ssim(x: Array, x_adv: Array, *, data_range: float = 1.0, win_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Array:
    """Mean SSIM per example, float32 ``[b]`` (Wang et al. 2004; see the module docstring).

    ``x``, ``x_adv``: float NHWC with ``H, W >= win_size``; 1.0 means identical images.
    Example: ``ssim(x, jnp.clip(x + 0.05 * noise, 0, 1)).mean()``.
    """
    finish = _pair_checks(x, x_adv)
    if min(np.shape(x)[1:3]) < win_size:
        raise validation.InputError(f"SSIM needs images of at least {win_size}x{win_size}, got "
                                    f"shape {tuple(np.shape(x))}; pass larger images or a "
                                    f"smaller win_size")
    with validation.completing(finish):
        return _ssim(x, x_adv, data_range=data_range, win_size=win_size, sigma=sigma, k1=k1,
                     k2=k2)


@functools.partial(jax.jit, static_argnames=("data_range", "win_size", "sigma", "k1", "k2"))
def _ssim(x, x_adv, *, data_range=1.0, win_size=11, sigma=1.5, k1=0.01, k2=0.03):
    x, x_adv = jnp.asarray(x, jnp.float32), jnp.asarray(x_adv, jnp.float32)
    w = _gaussian_window(win_size, sigma)
    # the five local statistics in one filtering pass over a [5b, H, W, C] stack (measured
    # fastest on XLA:CPU among stacking on a trailing axis, 5 passes, and banded matmuls)
    b = x.shape[0]
    stats = _valid_filter(jnp.concatenate([x, x_adv, x * x, x_adv * x_adv, x * x_adv], 0), w)
    mx, my, exx, eyy, exy = (stats[i * b:(i + 1) * b] for i in range(5))
    vx, vy, cxy = exx - mx * mx, eyy - my * my, exy - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(1, 2, 3))  # mean over positions then channels (equal counts)


def _local_std(x: Array) -> Array:
    """Population std of each element's 3x3 neighbourhood within its channel (reflect pad)."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    h, w = x.shape[1:3]
    patches = jnp.stack([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], 0)
    mean = jnp.mean(patches, axis=0, keepdims=True)
    return jnp.sqrt(jnp.mean((patches - mean) ** 2, axis=0))


def psd(x: Array, x_adv: Array, *, weight: str = "inverse_std",
        std_floor: float = 1.0 / 255) -> Array:
    """Perturbation sensitivity distance per example, float32 ``[b]`` (module docstring).

    ``weight``: one of ``PSD_WEIGHTS``; ``std_floor`` only applies to ``"inverse_std"``.
    """
    if weight not in PSD_WEIGHTS:
        raise validation.InputError(f"unknown PSD weight {weight!r}; valid: "
                                    f"{', '.join(PSD_WEIGHTS)}")
    with validation.completing(_pair_checks(x, x_adv)):
        return _psd(x, x_adv, weight=weight, std_floor=std_floor)


@functools.partial(jax.jit, static_argnames=("weight", "std_floor"))
def _psd(x, x_adv, *, weight="inverse_std", std_floor=1.0 / 255):
    x, x_adv = jnp.asarray(x, jnp.float32), jnp.asarray(x_adv, jnp.float32)
    _check_pair(x, x_adv)
    sd = _local_std(x)
    if weight == "inverse_std":
        sen = 1.0 / jnp.maximum(sd, std_floor)
    elif weight == "one_minus_std":
        sen = 1.0 - sd
    elif weight == "std":
        sen = sd
    else:
        raise ValueError(f"unknown PSD weight {weight!r}; valid: {', '.join(PSD_WEIGHTS)}")
    return jnp.sum(jnp.abs(x_adv - x) * sen, axis=(1, 2, 3))


_FIELDS = ("l0_abs", "l0_rel", "l0_fraction", "l2_abs", "l2_rel", "linf_abs", "linf_rel",
           "ssim", "psd")


@struct.dataclass
class ImperceptibilityStats:
    """Accumulator of the averages of ALDp (7 variants), SSIM and PSD over masked examples.

    ``stats`` maps each name in ``_FIELDS`` to an ``Average``; SSIM is skipped (NaN) for
    images smaller than 11x11.
    """

    stats: dict

    @classmethod
    def empty(cls) -> "ImperceptibilityStats":
        return cls({f: Average.empty() for f in _FIELDS})

    @classmethod
    def from_batch(cls, x: Array, x_adv: Array, mask: Optional[Array] = None, *,
                   psd_weight: str = "inverse_std",
                   l0_tol: float = 1.0 / 512) -> "ImperceptibilityStats":
        """``x``, ``x_adv`` float NHWC in [0, 1]; ``mask`` bool ``[b]`` (e.g. attack success)."""
        if psd_weight not in PSD_WEIGHTS:
            raise validation.InputError(f"unknown PSD weight {psd_weight!r}; valid: "
                                        f"{', '.join(PSD_WEIGHTS)}")
        if mask is not None and tuple(np.shape(mask)) != tuple(np.shape(x)[:1]):
            raise validation.InputError(f"mask must be one bool per example [{np.shape(x)[0]}],"
                                        f" got shape {tuple(np.shape(mask))}")
        with validation.completing(_pair_checks(x, x_adv)):
            return _imperceptibility_batch(x, x_adv, mask, psd_weight, l0_tol)

    def merge(self, other: "ImperceptibilityStats") -> "ImperceptibilityStats":
        return type(self)({f: self.stats[f].merge(other.stats[f]) for f in _FIELDS})

    def compute(self) -> dict[str, Array]:
        return {f: self.stats[f].compute() for f in _FIELDS}


@functools.partial(jax.jit, static_argnums=(3, 4))
def _imperceptibility_batch(x, x_adv, mask, psd_weight, l0_tol) -> ImperceptibilityStats:
    values = _lp_distortions(x, x_adv, l0_tol)
    if min(np.shape(x)[1:3]) >= 11:
        values["ssim"] = _ssim(x, x_adv)
    values["psd"] = _psd(x, x_adv, weight=psd_weight)
    return ImperceptibilityStats({f: (Average.from_values(values[f], mask) if f in values
                                      else Average.empty()) for f in _FIELDS})
