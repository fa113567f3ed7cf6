"""The checks every public entry point runs on what it is given, once per call.

Concrete inputs get value checks (NaN, range, labels against the model's classes); under a
caller's ``jit`` only shapes and dtypes are checked, so validation costs nothing in a compiled
program. The model is probed once per function and input signature with ``jax.make_jaxpr``
(no computation): it tells the number of classes, which convolutions the model runs (for the
loop structure, ``robustjax.entry``), and turns a model that cannot take the batch (NCHW
instead of NHWC, wrong channels or size) into an error that says so.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class InputError(ValueError):
    """An entry point was given inputs it cannot use; the message says what to do."""


class InputTypeError(InputError, TypeError):
    """An input has the wrong dtype (e.g. integer pixels): an ``InputError`` and a
    ``TypeError``, so ``except TypeError`` written for the old checks still catches it."""


class ModelOutputError(InputError):
    """The model returned NaN or inf logits for some inputs; the message names their indices."""


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


def _signature(a):
    # a cache key for one leaf: its shape and (canonical) dtype, without building a
    # ShapeDtypeStruct (an eager call keys the probe on every parameter leaf)
    if isinstance(a, jax.Array):
        return a.shape, a.dtype
    shape, dtype = _shape_dtype(a)
    return shape, jax.dtypes.canonicalize_dtype(dtype)


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


def _probe_signature(apply_fn, params_tree, params_signature, x_signature) -> ModelProbe:
    specs = [jax.ShapeDtypeStruct(*s) for s in params_signature]
    return _probe(apply_fn, jax.tree.unflatten(params_tree, specs),
                  jax.ShapeDtypeStruct(*x_signature))


_probe_cached = functools.lru_cache(maxsize=512)(_probe_signature)


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
    signature = tuple(_signature(a) for a in leaves)
    x_signature = _signature(x)
    try:
        return _probe_cached(apply_fn, tree, signature, x_signature)
    except TypeError as err:
        if "unhashable" not in str(err):
            raise
        return _probe_signature(apply_fn, tree, signature, x_signature)


def check_applies(fn: Callable, x) -> None:
    """``fn(x)`` (a model-like function of the batch alone, e.g. an ``activations_fn``) can be
    traced on ``x``'s shape and dtype; else the error says what robustjax expects (NHWC)."""
    x_spec = _spec(x)
    try:
        jax.eval_shape(fn, x_spec)
    except InputError:
        raise
    except Exception as err:  # any framework's shape error: say what robustjax expects
        raise _model_error(x_spec.shape, x_spec.dtype, err) from err


def check_eps(eps, batch: int) -> None:
    """A concrete eps is finite, >= 0, and a scalar or one value per example."""
    if eps is None or isinstance(eps, jax.core.Tracer):
        return
    if type(eps) in (float, int):  # the common case, without NumPy's dispatch
        if not (math.isfinite(eps) and eps >= 0):
            raise InputError(f"eps must be finite and >= 0, got {eps}")
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
    lo, hi = min_max(x)
    return lo, hi, y_lo, y_hi


def min_max(x):
    """``(min(x), max(x))`` in one pass over ``x`` (a variadic reduction: two separate ones
    read the batch twice, which an eager call pays on top of its computation)."""
    x = x.astype(jnp.float32) if x.dtype != jnp.float32 else x
    inf = jnp.float32(jnp.inf)
    return jax.lax.reduce((x, x), (inf, -inf),
                          lambda a, b: (jnp.minimum(a[0], b[0]), jnp.maximum(a[1], b[1])),
                          tuple(range(x.ndim)))


@jax.jit
def _non_finite_images(x):
    return ~jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))


def _bad_values(a):
    # images must be finite; a per-example value (a loss, a distance) only not NaN: +inf is
    # what a decision-based attack reports where it found no adversarial example
    return jnp.isnan(a) if a.ndim == 1 else ~jnp.isfinite(a)


@jax.jit
def _bad_rows(a):
    return jnp.any(_bad_values(a), axis=tuple(range(1, a.ndim)))


def _shape_dtype(a):
    # arrays answer from their attributes (jnp.result_type's dtype lattice costs ~20-80 us a
    # call, which an eager entry point pays on every call)
    if isinstance(a, (jax.Array, np.ndarray)):
        return a.shape, np.dtype(a.dtype)
    return tuple(np.shape(a)), np.dtype(jnp.result_type(a))


def check_shapes(x, y=None, name: str = "x") -> None:
    """NHWC float images, a non-empty batch, and int labels [b] (shapes and dtypes only)."""
    shape, dtype = _shape_dtype(x)
    if len(shape) != 4:
        raise InputError(f"{name} must be a batch of images with shape [batch, height, width, "
                         f"channels] (NHWC), got shape {shape}. For one image use x[None].")
    if shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {shape}); pass at least one image.")
    if not np.issubdtype(dtype, np.floating):
        raise InputTypeError(f"{name} must be floating point in [0, 1], got dtype {dtype}. "
                             f"Integer images in 0..255 should be converted with "
                             f"x.astype(np.float32) / 255.")
    if y is not None:
        y_shape, y_dtype = _shape_dtype(y)
        if len(y_shape) != 1:
            raise InputError(f"y must be a vector of integer labels [batch], got shape "
                             f"{y_shape}.")
        if not np.issubdtype(y_dtype, np.integer):
            raise InputTypeError(f"y must be integer class indices, got dtype {y_dtype}.")
        if y_shape[0] != shape[0]:
            raise InputError(f"y has {y_shape[0]} labels but there are {shape[0]} images in "
                             f"{name}: pass one label per image.")


def check_batch_of_arrays(x, name: str = "x") -> None:
    """Any array with a non-empty leading batch axis (inputs that need not be images)."""
    shape = tuple(np.shape(x))
    if len(shape) < 1 or shape[0] == 0:
        raise InputError(f"{name} must be a non-empty batch [batch, ...], got shape {shape}.")
    if not np.issubdtype(np.dtype(jnp.result_type(x)), np.floating):
        raise InputTypeError(f"{name} must be floating point, got dtype {jnp.result_type(x)}.")


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

    def finish(outputs=None) -> None:
        # ``outputs``: the entry point's per-example results (e.g. ``(x_adv, loss)``); their
        # finiteness is read in the same transfer as the input statistics (one round trip)
        flag = _outputs_flag(outputs)
        values = (*stats, flag)
        if any(isinstance(v, jax.Array) for v in values):  # one transfer for all of them
            values = jax.device_get(values)
        lo, hi, y_lo, y_hi, ok = values
        _raise_for_values(x, name, lo, hi, pixel_range, (y_lo, y_hi) if concrete_y else None,
                          num_classes, outputs if flag is not None else None, ok)

    return finish


def _pixel_range_error(name, lo, hi) -> InputError:
    return InputError(f"{name} must be in the pixel range [0, 1], got values in [{lo:.4g}, "
                      f"{hi:.4g}]. robustjax models normalise internally: pass raw pixels "
                      f"scaled to [0, 1].")


def _raise_for_values(x, name, lo, hi, pixel_range, label_range, num_classes, outputs, ok):
    if not (np.isfinite(lo) and np.isfinite(hi)):  # only now look for the images
        raise _non_finite_error(x, name)
    if pixel_range and (lo < 0.0 or hi > 1.0):
        raise _pixel_range_error(name, lo, hi)
    if label_range is not None and num_classes is not None:
        y_lo, y_hi = label_range
        if y_lo < 0 or y_hi >= num_classes:
            raise InputError(
                f"labels must be class indices in [0, {num_classes}) (the model's logits have "
                f"{num_classes} classes), got labels in [{y_lo}, {y_hi}].")
    if outputs is not None and not ok:
        _raise_non_finite_outputs(outputs, "the attack's result",
                                  "the model returned NaN or inf for those inputs (or "
                                  "for perturbed versions of them)")


def packed_checks(x, y=None, outputs=()):
    """The value checks of an eager call, computed inside the entry point's own compiled
    program (no second program to dispatch, one small transfer): float32 ``[5]`` =
    ``min(x), max(x)``, the int32 bits of ``min(y), max(y)`` (exact for any label), and 1.0
    where every array in ``outputs`` is free of bad values (``_bad_values``). Read it with
    ``read_packed``."""
    lo, hi = min_max(x)
    if y is None:
        y_range = jnp.zeros(2, jnp.int32)
    else:
        info, int32 = jnp.iinfo(y.dtype), np.iinfo(np.int32)
        if info.max > int32.max:  # saturate rather than wrap into the valid range
            y = jnp.minimum(y, jnp.asarray(int32.max, y.dtype))
        if info.min < int32.min:
            y = jnp.maximum(y, jnp.asarray(int32.min, y.dtype))
        y = y.astype(jnp.int32)
        y_range = jnp.stack([jnp.min(y), jnp.max(y)])
    ok = jnp.all(jnp.stack([~jnp.any(_bad_values(a)) for a in outputs])) if outputs else True
    return jnp.concatenate([jnp.stack([lo, hi]),
                            jax.lax.bitcast_convert_type(y_range, jnp.float32),
                            jnp.asarray(ok, jnp.float32)[None]])


def read_packed(packed, x, y=None, num_classes=None, outputs=(), name: str = "x", *,
                pixel_range: bool = True) -> None:
    """Raise what ``packed_checks``' result shows (the same errors as ``start_value_checks``)."""
    if isinstance(packed, jax.core.Tracer):
        return  # concrete inputs inside someone's trace (a loop body): shapes were checked
    values = np.asarray(packed)
    labels = values[2:4].view(np.int32) if y is not None else None
    _raise_for_values(x, name, float(values[0]), float(values[1]), pixel_range,
                      None if labels is None else (int(labels[0]), int(labels[1])),
                      num_classes, tuple(outputs) if outputs else None, values[4] > 0)


def _outputs_flag(outputs):
    if outputs is None:
        return None
    arrays = tuple(outputs)
    if not arrays or not all(_concrete(a) for a in arrays):
        return None
    return _all_finite(arrays)


def _raise_non_finite_outputs(arrays, name: str, what: str) -> None:
    rows = np.zeros(np.shape(arrays[0])[0], bool)
    for a in arrays:
        rows |= np.asarray(_bad_rows(a))
    # an array non-finite exactly in the flagged rows, for the shared message
    raise _non_finite_output_error(np.where(rows, np.nan, 0.0)[:, None], name, what)


def _nothing(outputs=None) -> None:
    del outputs  # values were not checked here (traced inputs): nothing to read
    return None


def _indices(bad: np.ndarray) -> str:
    return ", ".join(str(i) for i in bad[:10]) + (", ..." if bad.size > 10 else "")


def _non_finite_error(x, name: str) -> InputError:
    bad = np.flatnonzero(np.asarray(_non_finite_images(x)))
    return InputError(f"{name} holds NaN or inf values in {bad.size} image(s), at indices "
                      f"[{_indices(bad)}]; attacks and metrics need finite pixels in [0, 1]. "
                      f"Drop or repair those images first.")


def _non_finite_output_error(values, name: str, what: str) -> ModelOutputError:
    bad = np.flatnonzero(np.asarray(_non_finite_images(values)))
    return ModelOutputError(
        f"{name} holds NaN or inf for {bad.size} input(s), at indices [{_indices(bad)}]: "
        f"{what}. Look at those inputs and at the model's numerics (a log of 0, an "
        f"overflowing exp, a division by a norm that can be 0), or leave them out.")


def check_attack_call(apply_fn, fn, params, x, y, config, *, gradient: bool) -> ModelProbe:
    """Everything an attack call needs checked before it runs (shapes, dtypes, eps, the model
    on this batch). Returns the probe of the model as it runs; the value checks follow
    (``start_value_checks``, or ``packed_checks`` inside the attack's own program)."""
    from robustjax.attacks._core import warn_if_not_differentiable

    if gradient:
        warn_if_not_differentiable(apply_fn)
    check_shapes(x, y)  # first: the model probe needs a valid batch
    probe = probe_model(fn, params, x)
    check_eps(getattr(config, "eps", None), np.shape(x)[0])
    return probe


# ------------------------------------------------------------- the rest of the layer
#
# The checks below serve the entry points that are not attacks, corruptions or certifiers:
# metrics (logits, image pairs, scores), defenses, training and the report. They follow the
# same rule: shapes and dtypes always (they are static under jit), values only on concrete
# inputs, in one fused reduction whose result is read after the entry point dispatched its own
# computation (``completing``).


def check_images(x, expected_shape: Optional[tuple] = None, name: str = "x") -> None:
    """A batch of NHWC float images in [0, 1] (values checked when concrete, at once).

    ``expected_shape`` is the ``(H, W, C)`` the model was built for, if it fixes one.
    """
    check_shapes(x, name=name)
    _check_expected_shape(x, expected_shape, name)
    start_checks(images=((name, x),))()


def check_labels(y, num_classes: Optional[int] = None, batch: Optional[int] = None,
                 name: str = "y") -> None:
    """Integer labels ``[batch]``, in ``[0, num_classes)`` when that is given and ``y`` is
    concrete (checked at once)."""
    shape, dtype = tuple(np.shape(y)), np.dtype(jnp.result_type(y))
    if len(shape) != 1:
        raise InputError(f"{name} must be a vector of integer labels [batch], got shape "
                         f"{shape}.")
    if not np.issubdtype(dtype, np.integer):
        raise InputTypeError(f"{name} must be integer class indices, got dtype {dtype}. "
                             f"Convert with {name}.astype(np.int32).")
    if batch is not None and shape[0] != batch:
        raise InputError(f"{name} has {shape[0]} labels but there are {batch} images: pass "
                         f"one label per image.")
    if shape[0] == 0:
        raise InputError(f"{name} is empty (shape {shape}); pass at least one label.")
    if num_classes is not None:
        start_checks(labels=(name, y), num_classes=num_classes)()


def check_logits(logits, y=None, name: str = "logits", y_name: str = "y") -> None:
    """Logits ``[batch, classes]`` (float, a non-empty batch) and, if given, integer labels
    ``[batch]`` (shapes and dtypes only; ``start_checks`` reads the values)."""
    shape, dtype = tuple(np.shape(logits)), np.dtype(jnp.result_type(logits))
    if len(shape) != 2:
        raise InputError(f"{name} must be a model's logits [batch, classes], got shape {shape}. "
                         f"Pass apply_fn(params, x) (one row of class scores per image).")
    if shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {shape}); pass at least one row.")
    if shape[1] == 0:
        raise InputError(f"{name} has no classes (shape {shape}).")
    if not np.issubdtype(dtype, np.floating):
        raise InputTypeError(f"{name} must be floating point class scores, got dtype {dtype}.")
    if y is not None:
        y_shape, y_dtype = tuple(np.shape(y)), np.dtype(jnp.result_type(y))
        if len(y_shape) != 1:
            raise InputError(f"{y_name} must be a vector of integer labels [batch], got shape "
                             f"{y_shape}.")
        if not np.issubdtype(y_dtype, np.integer):
            raise InputTypeError(f"{y_name} must be integer class indices, got dtype "
                                 f"{y_dtype}. Convert with {y_name}.astype(np.int32).")
        if y_shape[0] != shape[0]:
            raise InputError(f"{y_name} has {y_shape[0]} labels but {name} has {shape[0]} rows "
                             f"(images): pass one label per image.")


def check_same_shape(a, b, names: tuple = ("logits_clean", "logits_pert")) -> None:
    """Two arrays that describe the same examples have the same shape."""
    if tuple(np.shape(a)) != tuple(np.shape(b)):
        raise InputError(f"{names[0]} has shape {tuple(np.shape(a))} but {names[1]} has shape "
                         f"{tuple(np.shape(b))}; they must describe the same examples (same "
                         f"batch, same image size or classes).")


def logits_checks(*named_logits, y=None, y_name: str = "y",
                  targets=None) -> Callable[[], None]:
    """The checks of a metric on logits: every ``(name, logits)`` pair is ``[batch, classes]``
    with the same shape, ``y`` (and ``targets``) one integer label per row; on concrete values
    the logits are finite (the rows named) and the labels inside the classes. Returns the
    function that completes the value checks (``completing``)."""
    for name, logits in named_logits:
        check_logits(logits, y, name, y_name)
    for (n0, a), (n1, b) in zip(named_logits, named_logits[1:]):
        check_same_shape(a, b, (n0, n1))
    finish = start_checks(logits=named_logits,
                          labels=(y_name, y) if y is not None else None)
    if targets is None:
        return finish
    check_logits(named_logits[0][1], targets, named_logits[0][0], "target")
    finish_targets = start_checks(labels=("target", targets),
                                  num_classes=int(np.shape(named_logits[0][1])[-1]))

    def both() -> None:
        finish()
        finish_targets()

    return both


def check_image_pair(x, x_adv, names: tuple = ("x", "x_adv")) -> None:
    """Clean and perturbed NHWC image batches of one shape (shapes and dtypes only)."""
    check_shapes(x, name=names[0])
    check_shapes(x_adv, name=names[1])
    check_same_shape(x, x_adv, names)


def _concrete(a) -> bool:
    return a is not None and not isinstance(a, jax.core.Tracer)


@jax.jit
def _fused_stats(images, logits, y):
    return (tuple((jnp.min(a), jnp.max(a)) for a in images),
            tuple(jnp.all(jnp.isfinite(a)) for a in logits),
            (jnp.min(y), jnp.max(y)) if y is not None else None)


def start_checks(*, images=(), logits=(), labels=None, num_classes: Optional[int] = None,
                 pixel_range: bool = True, what: str = "the model returned non-finite logits "
                 "for those inputs") -> Callable[[], None]:
    """Dispatch the value checks of every concrete array given, as one compiled reduction, and
    return the function that reads the result and raises (see ``start_value_checks``).

    ``images``: ``(name, x)`` pairs, checked finite (the indices of bad images named) and in
    [0, 1] (``pixel_range``). ``logits``: ``(name, array [b, ...])`` pairs, checked finite per
    row (a ``ModelOutputError`` naming the rows; ``what`` says where the values came from).
    ``labels``: ``(name, y)``, checked in ``[0, num_classes)``; ``num_classes`` defaults to the
    last axis of the first logits. Tracers are skipped: under jit this costs nothing.
    """
    images = tuple((n, a) for n, a in images if _concrete(a))
    logits_all = tuple(logits)
    logits = tuple((n, a) for n, a in logits_all if _concrete(a))
    if num_classes is None and logits_all:
        num_classes = int(np.shape(logits_all[0][1])[-1])
    if labels is not None and not _concrete(labels[1]):
        labels = None
    if labels is not None and num_classes is None:
        labels = None
    if not images and not logits and labels is None:
        return _nothing
    stats = _fused_stats(tuple(a for _, a in images), tuple(a for _, a in logits),
                         labels[1] if labels is not None else None)
    if any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(stats)):
        return _nothing  # concrete arrays inside someone's trace: shapes were checked

    def finish() -> None:
        image_stats, finite, label_range = jax.device_get(stats)
        for (name, x), (lo, hi) in zip(images, image_stats):
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise _non_finite_error(x, name)
            if pixel_range and (lo < 0.0 or hi > 1.0):
                raise _pixel_range_error(name, lo, hi)
        for (name, values), ok in zip(logits, finite):
            if not ok:
                raise _non_finite_output_error(values, name, what)
        if label_range is not None:
            y_lo, y_hi = label_range
            if y_lo < 0 or y_hi >= num_classes:
                raise InputError(
                    f"{labels[0]} must be class indices in [0, {num_classes}) (the logits "
                    f"have {num_classes} classes), got labels in [{y_lo}, {y_hi}].")

    return finish


@contextlib.contextmanager
def completing(finish_checks: Callable[[], None]):
    """Run the block (which dispatches the entry point's computation), then complete the
    input checks: their round trip overlaps with the computation, and a bad input is reported
    in place of whatever the block raised or returned."""
    try:
        yield
    except Exception:
        finish_checks()
        raise
    finish_checks()


def _check_expected_shape(x, expected_shape, name: str) -> None:
    if expected_shape is None or tuple(np.shape(x)[1:]) == tuple(expected_shape):
        return
    shape = tuple(np.shape(x))
    if _looks_nchw(shape) and (shape[2], shape[3], shape[1]) == tuple(expected_shape):
        n, c, h, w = shape
        raise InputError(f"{name} has shape {shape}, which looks like NCHW (channels first); "
                         f"the model expects NHWC images [batch, {h}, {w}, {c}]: pass "
                         f"{name}.transpose(0, 2, 3, 1).")
    raise InputError(f"{name} has per-image shape {shape[1:]} but the model expects "
                     f"{tuple(expected_shape)} (H, W, C). Resize or crop the images first "
                     f"(robustjax takes NHWC).")


def check_model_call(apply_fn: Callable, params, x, y=None, name: str = "x",
                     expected_shape: Optional[tuple] = None):
    """The checks of an entry point that runs a model on ``x`` but is not an attack entry
    (universal perturbations, metrics that query the model, training, defenses): NHWC float
    images, a model that takes them, finite pixels in [0, 1], labels inside the model's
    classes (and the ``(H, W, C)`` of the model's spec, ``expected_shape``, if it fixes one).
    Returns the probe and the function that completes the value checks.

    Inside an attack entry (``robustjax.entry``) the inputs were already checked on concrete
    values: only the shapes are checked again.
    """
    from robustjax import entry

    check_shapes(x, y, name=name)
    _check_expected_shape(x, expected_shape, name)
    probe = probe_model(apply_fn, params, x)
    if entry.current_loop_hint() is not None:
        return probe, _nothing
    return probe, start_value_checks(x, y, probe.num_classes, name)


def check_model_inputs(apply_fn: Callable, params, x, y=None, name: str = "x", *,
                       gradient: bool = False,
                       expected_shape: Optional[tuple] = None) -> ModelProbe:
    """``check_model_call`` with the value checks completed at once, for entry points that
    run their own host loop or are usually jitted by the caller (universal perturbations,
    patches, searches, training). ``gradient``: warn on a model that is not differentiable."""
    if gradient:
        from robustjax.attacks._core import warn_if_not_differentiable

        warn_if_not_differentiable(apply_fn)
    probe, finish = check_model_call(apply_fn, params, x, y, name, expected_shape)
    finish()
    return probe


def model_output_checks(apply_fn: Callable, params, x,
                        name: str = "the model's logits on x") -> Callable[[], None]:
    """Run the model once on a concrete ``x`` and dispatch the finiteness check of its logits
    (per example; a ``ModelOutputError`` names the inputs). For entry points whose own result
    would hide NaN logits (a search that compares predictions). Nothing under jit."""
    if isinstance(x, jax.core.Tracer) or any(
            isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(params)):
        return _nothing
    return start_checks(logits=((name, apply_fn(params, x)),))


def check_scores(s, name: str = "scores", allow_empty: bool = False) -> np.ndarray:
    """Detector scores: a concrete float vector ``[n]`` without NaN, as float64 numpy."""
    try:
        a = np.asarray(s, dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - e.g. a tracer: say what is expected
        raise InputTypeError(f"{name} must be a concrete array of scores [n] (not a value "
                             f"traced inside jit), got {type(s).__name__}: {e}") from None
    if a.ndim != 1:
        raise InputError(f"{name} must be a vector of per-example scores [n], got shape "
                         f"{a.shape}.")
    if a.size == 0 and not allow_empty:
        raise InputError(f"{name} is empty; pass at least one score.")
    bad = np.flatnonzero(np.isnan(a))
    if bad.size:
        raise InputError(f"{name} holds NaN scores at indices [{_indices(bad)}]; a detector "
                         f"score must be a number (check the detector on those inputs).")
    return a


def check_outputs(values, name: str = "the attack's loss",
                  what: str = "the model returned NaN or inf for those inputs (or for "
                  "perturbed versions of them)") -> Callable[[], None]:
    """Dispatch a finiteness check of per-example outputs (an array ``[b, ...]`` or a tuple of
    them, e.g. ``(result.x_adv, result.loss)``) and return the function that raises a
    ``ModelOutputError`` naming the examples. Costs one fused reduction; nothing under jit."""
    arrays = values if isinstance(values, (tuple, list)) else (values,)
    if not all(_concrete(a) for a in arrays):
        return _nothing
    flag = _all_finite(tuple(arrays))
    if isinstance(flag, jax.core.Tracer):
        return _nothing

    def finish() -> None:
        if not bool(jax.device_get(flag)):
            _raise_non_finite_outputs(arrays, name, what)

    return finish


@jax.jit
def _all_finite(arrays):
    return ~jnp.any(jnp.stack([jnp.any(_bad_values(a)) for a in arrays]))
