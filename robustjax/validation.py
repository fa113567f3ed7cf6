"""The checks every public entry point runs on what it is given, once per call.

Concrete inputs get value checks (NaN, range, labels against the model's classes); under a
caller's ``jit`` only shapes and dtypes are checked, so validation costs nothing in a compiled
program. The model is probed once per function and input signature with ``jax.make_jaxpr``
(no computation): it tells the number of classes, which convolutions the model runs (for the
loop structure, ``robustjax.entry``), and turns a model that cannot take the batch (NCHW
instead of NHWC, wrong channels or size) into an error that says so.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np



class InputError(ValueError):
    """An entry point was given inputs it cannot use; the message says what to do."""


class ModelProbe(NamedTuple):
    """What tracing ``apply_fn(params, x)`` showed (no computation ran)."""

    logits_shape: tuple
    logits_dtype: Any
    xla_convolutions: int
    onednn_convolutions: int

    @property
    def num_classes(self) -> int:
        return int(self.logits_shape[-1])


def _spec(a):
    return jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))


def _looks_nchw(shape) -> bool:
    return len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3)


def _model_error(x_shape, x_dtype, err: Exception) -> InputError:
    if _looks_nchw(x_shape):
        n, c, h, w = x_shape
        return InputError(
            f"x has shape {tuple(x_shape)}, which looks like NCHW (channels first), and the "
            f"model could not take it. robustjax takes NHWC images [batch, height, width, "
            f"channels]: pass x.transpose(0, 2, 3, 1) (shape ({n}, {h}, {w}, {c})). "
            f"The model said: {type(err).__name__}: {err}")
    return InputError(
        f"the model could not be applied to x of shape {tuple(x_shape)} ({x_dtype}): "
        f"{type(err).__name__}: {err}. robustjax takes NHWC float images in [0, 1]; check that "
        f"the image size and number of channels are the ones the model was built for (resize "
        f"or convert the images first).")


@functools.lru_cache(maxsize=512)
def _probe_cached(apply_fn, params_tree, params_specs, x_spec) -> ModelProbe:
    return _probe(apply_fn, jax.tree.unflatten(params_tree, params_specs), x_spec)


def _probe(apply_fn, params_spec, x_spec) -> ModelProbe:
    from robustjax.kernels import count_convolutions

    try:
        closed, out = jax.make_jaxpr(apply_fn, return_shape=True)(params_spec, x_spec)
    except InputError:
        raise
    except Exception as err:  # any framework's shape error: say what robustjax expects
        raise _model_error(x_spec.shape, x_spec.dtype, err) from err
    if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != x_spec.shape[0]:
        got = getattr(out, "shape", type(out).__name__)
        raise InputError(
            f"the model must return logits [batch, classes] = [{x_spec.shape[0]}, k] for x of "
            f"shape {tuple(x_spec.shape)}, got {got}. Wrap it so that apply_fn(params, x) "
            f"returns one row of class scores per image.")
    counts = count_convolutions(closed)
    return ModelProbe(tuple(out.shape), out.dtype, counts["xla"], counts["onednn"])


def probe_model(apply_fn: Callable, params, x) -> ModelProbe:
    """Trace ``apply_fn(params, x)`` abstractly (cached per function and signature)."""
    leaves, tree = jax.tree.flatten(params)
    specs = tuple(_spec(a) for a in leaves)
    x_spec = _spec(x)
    try:
        return _probe_cached(apply_fn, tree, specs, x_spec)
    except TypeError as err:
        if "unhashable" not in str(err):
            raise
        return _probe(apply_fn, jax.tree.unflatten(tree, specs), x_spec)


def check_eps(eps, batch: int) -> None:
    """A concrete eps is finite, >= 0, and a scalar or one value per example."""
    if eps is None or isinstance(eps, jax.core.Tracer):
        return
    e = np.asarray(eps)
    if e.ndim > 1 or (e.ndim == 1 and e.shape[0] != batch):
        raise InputError(f"eps must be a scalar or one value per example [{batch}], got shape "
                         f"{e.shape}")
    if not np.all(np.isfinite(e)) or np.any(e < 0):
        raise InputError(f"eps must be finite and >= 0, got {e}")


def batch_stats(x, y=None):
    """``(min(x), max(x), min(y), max(y))``: what the value checks read (NaN propagates through
    the min and max, so one fused pass over the pixels finds NaN, inf and range errors)."""
    return _batch_stats(x, y)


@jax.jit
def _batch_stats(x, y):
    y_lo = jnp.min(y) if y is not None else jnp.int32(0)
    y_hi = jnp.max(y) if y is not None else jnp.int32(0)
    return jnp.min(x), jnp.max(x), y_lo, y_hi


@jax.jit
def _non_finite_images(x):
    return ~jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))


def check_shapes(x, y=None, name: str = "x") -> None:
    """NHWC float images, a non-empty batch, and int labels [b] (shapes and dtypes only)."""
    shape = tuple(np.shape(x))
    dtype = np.dtype(jnp.result_type(x))
    if len(shape) != 4:
        raise InputError(f"{name} must be a batch of images with shape [batch, height, width, "
                         f"channels] (NHWC), got shape {shape}. For one image use x[None].")
    if shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {shape}); pass at least one image.")
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"{name} must be floating point in [0, 1], got dtype {dtype}. Integer "
                        f"images in 0..255 should be converted with x.astype(np.float32) / 255.")
    if y is not None:
        y_shape, y_dtype = tuple(np.shape(y)), np.dtype(jnp.result_type(y))
        if len(y_shape) != 1:
            raise InputError(f"y must be a vector of integer labels [batch], got shape "
                             f"{y_shape}.")
        if not np.issubdtype(y_dtype, np.integer):
            raise TypeError(f"y must be integer class indices, got dtype {y_dtype}.")
        if y_shape[0] != shape[0]:
            raise InputError(f"y has {y_shape[0]} labels but there are {shape[0]} images in "
                             f"{name}: pass one label per image.")


def check_batch_of_arrays(x, name: str = "x") -> None:
    """Any array with a non-empty leading batch axis (inputs that need not be images)."""
    shape = tuple(np.shape(x))
    if len(shape) < 1 or shape[0] == 0:
        raise InputError(f"{name} must be a non-empty batch [batch, ...], got shape {shape}.")
    if not np.issubdtype(np.dtype(jnp.result_type(x)), np.floating):
        raise TypeError(f"{name} must be floating point, got dtype {jnp.result_type(x)}.")


def start_value_checks(x, y=None, num_classes=None, name: str = "x", *,
                       pixel_range: bool = True) -> Callable[[], None]:
    """Dispatch the value checks of a concrete batch (finite pixels in [0, 1], labels in
    ``[0, num_classes)``) as one compiled reduction and return the function that reads its
    result and raises. Entry points call that after dispatching their own computation, so the
    checks overlap with it instead of adding a round trip before it."""
    concrete_y = y is not None and not isinstance(y, jax.core.Tracer)
    if isinstance(x, jax.core.Tracer):
        return _nothing
    stats = _batch_stats(x, y if concrete_y else None)
    return value_checks_from(stats, x, num_classes if concrete_y else None, name,
                             pixel_range=pixel_range)


def value_checks_from(stats, x, num_classes=None, name: str = "x", *,
                      pixel_range: bool = True) -> Callable[[], None]:
    """``start_value_checks``'s second half, on the output of ``batch_stats`` (which an entry
    point may compute inside its own compiled program, so the checks cost no extra pass)."""
    concrete_y = num_classes is not None
    if any(isinstance(v, jax.core.Tracer) for v in stats):
        return _nothing  # concrete x inside someone's trace (a loop body): shapes were checked

    def finish() -> None:
        lo, hi, y_lo, y_hi = jax.device_get(stats)
        if not (np.isfinite(lo) and np.isfinite(hi)):  # only now look for the images
            bad = np.flatnonzero(np.asarray(_non_finite_images(x)))
            shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
            raise InputError(f"{name} holds NaN or inf values in {bad.size} image(s), at "
                             f"indices [{shown}]; attacks and metrics need finite pixels in "
                             f"[0, 1].")
        if pixel_range and (lo < 0.0 or hi > 1.0):
            raise InputError(
                f"{name} must be in the pixel range [0, 1], got values in [{lo:.4g}, "
                f"{hi:.4g}]. robustjax models normalise internally: pass raw pixels scaled to "
                f"[0, 1].")
        if concrete_y and num_classes is not None and (y_lo < 0 or y_hi >= num_classes):
            raise InputError(
                f"labels must be class indices in [0, {num_classes}) (the model's logits have "
                f"{num_classes} classes), got labels in [{y_lo}, {y_hi}].")

    return finish


def _nothing() -> None:
    return None


def check_attack_call(apply_fn, fn, params, x, y, config, *, gradient: bool):
    """Everything an attack call needs checked. Returns the probe of the model as it runs and
    the function that completes the value checks (``start_value_checks``)."""
    from robustjax.attacks._core import warn_if_not_differentiable

    if gradient:
        warn_if_not_differentiable(apply_fn)
    check_shapes(x, y)  # first: the model probe needs a valid batch
    probe = probe_model(fn, params, x)
    check_eps(getattr(config, "eps", None), np.shape(x)[0])
    return probe, start_value_checks(x, y, probe.num_classes)
