"""The input-transformation defenses by name: ``TRANSFORMS[name](**kwargs) -> Transformation``.

Defaults follow the papers: JPEG quality 75 (Guo et al. 2018; Pillow's default), 4 bits and a
2x2 median (Xu et al. 2018, "Feature Squeezing": 1 bit and 2x2 for MNIST, 5 bits and 2x2 for
CIFAR-10, 4 bits and 3x3 for ImageNet), TV weight 0.1 (skimage's default), Xie et al.'s
331/299 resize-pad ratio.

Example::

    t = get("jpeg_exact", quality=50)
    defended = defend(model, t)
"""

from __future__ import annotations

from typing import Optional

from robustjax.defenses.transforms import jpeg as _jpeg
from robustjax.defenses.transforms import ops, randomization, smoothing
from robustjax.defenses.transforms.base import Bound, Transformation


def _bits(x, key, *, bits):
    del key
    return ops.bit_depth_reduction(x, bits)


def _median(x, key, *, size):
    del key
    return ops.median_filter(x, size)


def _positive_int(name: str, value, lo: int = 1, hi: Optional[int] = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= lo
    if not ok or (hi is not None and value > hi):
        bound = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _kw(**kwargs) -> tuple:
    return tuple(sorted(kwargs.items()))


def _name(base: str, **kwargs) -> str:
    return f"{base}(" + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in kwargs.items()) + ")"


def jpeg(quality: int = 75, rounding: str = "ste") -> Transformation:
    """Differentiable JPEG (Shin & Song 2017); ``rounding`` ``"ste"`` or ``"cubic"``."""
    _jpeg.check_quality(quality)
    if rounding not in _jpeg.ROUNDINGS:
        raise ValueError(f"rounding must be one of {_jpeg.ROUNDINGS}, got {rounding!r}")
    kw = _kw(quality=quality, rounding=rounding)
    return Transformation(_name("jpeg", quality=quality, rounding=rounding),
                          Bound(_jpeg.jpeg_differentiable, kw), differentiable=True)


def jpeg_exact(quality: int = 75) -> Transformation:
    """Pillow's JPEG codec (Guo et al. 2018); BPDA differentiates the JAX version instead."""
    _jpeg.check_quality(quality)
    return Transformation(
        _name("jpeg_exact", quality=quality),
        Bound(_jpeg.jpeg_exact, _kw(quality=quality)), differentiable=False,
        backward=Bound(_jpeg.jpeg_differentiable, _kw(quality=quality, rounding="ste")))


def bit_depth(bits: int = 4) -> Transformation:
    """Bit-depth reduction to ``bits`` in 1..16 (Xu et al. 2018); zero gradient a.e."""
    _positive_int("bits", bits, 1, 16)
    return Transformation(_name("bit_depth", bits=bits), Bound(_bits, _kw(bits=bits)),
                          differentiable=False)


def median(size: int = 2) -> Transformation:
    """``size x size`` median smoothing (Xu et al. 2018); the gradient picks the median pixel."""
    _positive_int("size", size)
    return Transformation(_name("median", size=size), Bound(_median, _kw(size=size)),
                          differentiable=True)


def gaussian(sigma: float = 1.0, truncate: float = 4.0) -> Transformation:
    """Gaussian smoothing with ``sigma`` pixels (scipy.ndimage.gaussian_filter)."""
    _positive("sigma", sigma)
    _positive("truncate", truncate)
    return Transformation(_name("gaussian", sigma=float(sigma)),
                          Bound(smoothing.gaussian_filter,
                                _kw(sigma=float(sigma), truncate=float(truncate))),
                          differentiable=True)


def mean(size: int = 3) -> Transformation:
    """``size x size`` mean smoothing (scipy.ndimage.uniform_filter)."""
    _positive_int("size", size)
    return Transformation(_name("mean", size=size), Bound(smoothing.mean_filter, _kw(size=size)),
                          differentiable=True)


def tv(weight: float = 0.1, steps: int = 50) -> Transformation:
    """Total-variation minimisation (Guo et al. 2018), ``steps`` Chambolle iterations; the
    gradient flows through the unrolled iterations."""
    _positive("weight", weight)
    _positive_int("steps", steps)
    return Transformation(_name("tv", weight=float(weight), steps=steps),
                          Bound(smoothing.tv_minimisation, _kw(weight=float(weight), steps=steps)),
                          differentiable=True)


def resize_pad(ratio: float = 331 / 299, method: str = "bilinear") -> Transformation:
    """Xie et al. 2018's random resize and zero pad, resized back to the input size."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 1:
        raise ValueError(f"ratio (padded size / input size) must be > 1, got {ratio!r}")
    if method not in randomization.METHODS:
        raise ValueError(f"method must be one of {randomization.METHODS}, got {method!r}")
    return Transformation(_name("resize_pad", ratio=float(ratio), method=method),
                          Bound(randomization.random_resize_pad,
                                _kw(ratio=float(ratio), method=method)),
                          differentiable=True, randomized=True)


TRANSFORMS = {
    "jpeg": jpeg,
    "jpeg_exact": jpeg_exact,
    "bit_depth": bit_depth,
    "median": median,
    "gaussian": gaussian,
    "mean": mean,
    "tv": tv,
    "resize_pad": resize_pad,
}


def get(name: str, **kwargs) -> Transformation:
    """``TRANSFORMS[name](**kwargs)``; an unknown name raises a KeyError listing the valid ones."""
    if name not in TRANSFORMS:
        raise KeyError(f"unknown input transformation {name!r}; valid names: "
                       f"{', '.join(TRANSFORMS)}")
    return TRANSFORMS[name](**kwargs)


__all__ = ["TRANSFORMS", "get"] + list(TRANSFORMS)
