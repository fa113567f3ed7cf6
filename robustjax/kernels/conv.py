"""``conv_general_dilated`` with oneDNN kernels on the CPU: a drop-in for ``lax``'s.

Two JAX primitives carry exactly the parameters of ``lax.conv_general_dilated_p``:

* ``conv_p(x, w)``: the convolution;
* ``conv_backward_data_p(dy, w)``: its transpose in ``x`` (the input gradient PGD needs);
* ``conv_backward_weights_p(x, dy)``: its transpose in ``w`` (the weight gradient training
  needs).

On the CPU they lower to the FFI handlers of ``onednn_conv.cc``; on any other platform, or when
the kernels are unavailable, to XLA's own convolution, so results never depend on where a
program runs beyond float32 rounding. Both are bilinear (``ad.defbilinear``), so ``grad``,
``jvp``, ``vjp``, ``linear_transpose`` and higher derivatives work. ``vmap`` over images folds
the mapped axis into the batch (one kernel call); ``vmap`` over weights (several models) runs
one call per model on the CPU and XLA's grouped convolution elsewhere; a weight gradient under
``vmap`` (per-model or per-example gradients) runs one kernel call per mapped element.

Only float32 NHWC/HWIO/NHWC convolutions without input dilation take the oneDNN path (what
every robustjax model uses); anything else goes to ``lax.conv_general_dilated`` unchanged.
``LAX_EQUIVALENTS`` maps the primitives to lax's, for code that reads jaxprs (the certified
bounds).

    >>> y = conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
    ...                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore
from jax.interpreters import ad, batching, mlir

from robustjax.kernels import build

conv_p = jcore.Primitive("robustjax_conv")
conv_backward_data_p = jcore.Primitive("robustjax_conv_backward_data")
conv_backward_weights_p = jcore.Primitive("robustjax_conv_backward_weights")
LAX_EQUIVALENTS = {conv_p: lax.conv_general_dilated_p}

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))
# Part of jit's cache key, so a function called inside and outside the block is traced (and
# compiled) once for each choice.
_enabled = jax.make_user_context(default_value=True)


def use_onednn(enabled: bool):
    """Context manager: within the block convolutions run on oneDNN (True) or XLA (False).

    ``with use_onednn(False): y = jax.jit(f)(x)`` runs ``f`` on XLA's kernels; jit caches the
    two choices separately.
    """
    return _enabled(bool(enabled))


def onednn_active() -> bool:
    """True when a convolution traced now would run on oneDNN (on a CPU)."""
    return bool(_enabled.value) and build.status().available


# ------------------------------------------------------------------------- geometry


def _geometry(lhs_shape, rhs_shape, window_strides, padding, rhs_dilation, **_):
    """The kernels' ``geo`` attribute and the NHWC output shape (see onednn_conv.cc)."""
    n, h, w, c = lhs_shape
    kh, kw, i, o = rhs_shape
    (pt, pb), (pl, pr) = padding
    (sh, sw), (dh, dw) = window_strides, rhs_dilation
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    geo = np.array([n, h, w, c, kh, kw, i, o, oh, ow, sh, sw, pt, pb, pl, pr, dh, dw], np.int64)
    return geo, (n, oh, ow, o)


def _lax_conv(x, w, **params):
    return lax.conv_general_dilated_p.bind(x, w, **params)


def _lax_backward_data(dy, w, *, lhs_shape, **params):
    x_aval = jax.ShapeDtypeStruct(lhs_shape, dy.dtype)
    return jax.linear_transpose(lambda x: _lax_conv(x, w, **params), x_aval)(dy)[0]


def _lax_weight_gradient(x, dy, w_aval, **params):
    """d<conv(x, w), dy>/dw: conv is linear in w, so this is its transpose at dy."""
    w_struct = jax.ShapeDtypeStruct(w_aval.shape, w_aval.dtype)
    return jax.linear_transpose(lambda w: _lax_conv(x, w, **params), w_struct)(dy)[0]


# ----------------------------------------------------------------- abstract eval, impl


def _lax_backward_weights(x, dy, *, rhs_shape, **params):
    return _lax_weight_gradient(x, dy, jax.core.ShapedArray(rhs_shape, x.dtype), **params)


def _conv_abstract(x, w, **params):
    return jax.core.ShapedArray(_geometry(x.shape, w.shape, **params)[1], x.dtype)


def _backward_data_abstract(dy, w, *, lhs_shape, **params):
    del w, params
    return jax.core.ShapedArray(lhs_shape, dy.dtype)


@functools.lru_cache(maxsize=256)
def _jitted_bind(prim, items):
    return jax.jit(functools.partial(prim.bind, **dict(items)))


def _impl(prim, *args, **params):
    # eager use: one compiled program per primitive and parameters
    return _jitted_bind(prim, tuple(sorted(params.items())))(*args)


def _backward_weights_abstract(x, dy, *, rhs_shape, **params):
    del dy, params
    return jax.core.ShapedArray(rhs_shape, x.dtype)


conv_p.def_abstract_eval(_conv_abstract)
conv_backward_weights_p.def_abstract_eval(_backward_weights_abstract)
conv_backward_weights_p.def_impl(functools.partial(_impl, conv_backward_weights_p))
conv_backward_data_p.def_abstract_eval(_backward_data_abstract)
conv_p.def_impl(functools.partial(_impl, conv_p))
conv_backward_data_p.def_impl(functools.partial(_impl, conv_backward_data_p))


# ------------------------------------------------------------------------ lowerings


def _cpu_lowering(target, ctx, a, w, *, lhs_shape=None, **params):
    x_shape = lhs_shape if lhs_shape is not None else ctx.avals_in[0].shape
    geo, _ = _geometry(x_shape, ctx.avals_in[1].shape, **params)
    return jax.ffi.ffi_lowering(target)(ctx, a, w, geo=geo)


mlir.register_lowering(conv_p, mlir.lower_fun(_lax_conv, multiple_results=False))
mlir.register_lowering(conv_backward_data_p,
                       mlir.lower_fun(_lax_backward_data, multiple_results=False))
mlir.register_lowering(conv_p, functools.partial(_cpu_lowering, "robustjax_conv_forward"),
                       platform="cpu")


def _cpu_weights_lowering(ctx, x, dy, *, rhs_shape, **params):
    geo, _ = _geometry(ctx.avals_in[0].shape, rhs_shape, **params)
    return jax.ffi.ffi_lowering("robustjax_conv_backward_weights")(ctx, x, dy, geo=geo)


mlir.register_lowering(conv_backward_weights_p,
                       mlir.lower_fun(_lax_backward_weights, multiple_results=False))
mlir.register_lowering(conv_backward_weights_p, _cpu_weights_lowering, platform="cpu")
mlir.register_lowering(conv_backward_data_p,
                       functools.partial(_cpu_lowering, "robustjax_conv_backward_data"),
                       platform="cpu")


# -------------------------------------------------------------------------------- AD


# oneDNN's strided backward-data kernel vectorises over input channels: with few of them (an
# RGB or grey first layer) it ran at 1/4-1/2 the speed of the sub-pixel form below (measured:
# 3 -> 16 channels 4x4/2 at batch 128, 1.9 -> 1.0 ms; 1 channel 3.1 -> 0.75 ms; 7x7/2 ImageNet
# stem 94 -> 59 ms), and faster with many (64 -> 128 channels 3x3/2: 39 vs 84 ms).
SUBPIXEL_MAX_CHANNELS = 64


def _use_subpixel(lhs_shape, params) -> bool:
    sh, sw = params["window_strides"]
    return (params["feature_group_count"] == 1 and params["rhs_dilation"] == (1, 1)
            and sh * sw > 1 and lhs_shape[3] * sh * sw <= SUBPIXEL_MAX_CHANNELS)


def _subpixel_input_gradient(dy, w, lhs_shape, window_strides, padding, **params):
    """The input gradient of a strided convolution as one stride-1 convolution + pixel shuffle.

    Input row ``r`` with ``r + pad = q * s + a`` receives ``sum_m dy[q - m] w[a + m s]``: for
    each phase ``a`` a stride-1 correlation of ``dy`` with every ``s``-th kernel tap (Shi et al.
    2016, "sub-pixel convolution"). All ``sh * sw`` phases are one convolution with
    ``sh * sw * C`` output channels, interleaved back into rows and columns.
    """
    del params
    n, h, w_, c = lhs_shape
    kh, kw, _, o = w.shape
    _, oh, ow, _ = dy.shape
    (pt, _), (pl, _) = padding
    sh, sw = window_strides
    mh, mw = -(-kh // sh), -(-kw // sw)  # taps per phase
    qh, qw = -(-(h + pt) // sh), -(-(w_ + pl) // sw)  # output rows/columns per phase
    # u[j, k, :, a, b, :] = w[a + (mh-1-j) sh, b + (mw-1-k) sw] (zero past the kernel)
    rows = np.arange(sh)[None, :] + (mh - 1 - np.arange(mh))[:, None] * sh
    cols = np.arange(sw)[None, :] + (mw - 1 - np.arange(mw))[:, None] * sw
    wp = jnp.pad(w, ((0, mh * sh - kh), (0, mw * sw - kw), (0, 0), (0, 0)))
    u = wp[rows[:, None, :, None], cols[None, :, None, :]]  # [mh, mw, sh, sw, C, O]
    u = jnp.transpose(u, (0, 1, 5, 2, 3, 4)).reshape(mh, mw, o, sh * sw * c)
    dyp = jnp.pad(dy, ((0, 0), (mh - 1, max(0, qh - oh)), (mw - 1, max(0, qw - ow)), (0, 0)))
    z = conv_p.bind(dyp, u, **_stride1_params(dyp.shape, u.shape))[:, :qh, :qw]
    z = z.reshape(n, qh, qw, sh, sw, c).transpose(0, 1, 3, 2, 4, 5)
    return z.reshape(n, qh * sh, qw * sw, c)[:, pt:pt + h, pl:pl + w_]


@functools.lru_cache(maxsize=64)
def _stride1_params(lhs_shape, rhs_shape):
    params = _onednn_params(jax.ShapeDtypeStruct(lhs_shape, jnp.float32),
                            jax.ShapeDtypeStruct(rhs_shape, jnp.float32),
                            window_strides=(1, 1), padding=((0, 0), (0, 0)),
                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert params is not None
    return params


def _conv_transpose_lhs(ct, x, w, **params):
    lhs_shape = tuple(x.aval.shape)
    if _use_subpixel(lhs_shape, params):
        return _subpixel_input_gradient(ct, w, lhs_shape, **params)
    return conv_backward_data_p.bind(ct, w, lhs_shape=lhs_shape, **params)


def _trim_unread(x, rhs_shape, params):
    """``x`` without the trailing rows/columns the convolution never reads, and its padding.

    oneDNN 3.x's strided 1x1 backward-weights kernel (the "reduce to unit stride" driver)
    writes past its buffers when the input has such rows (e.g. 1x1 stride 2 on an even size):
    a heap corruption or a hang in the next call. A geometry whose windows end exactly at the
    input's (padded) edge gives the same weight gradient and is the case oneDNN handles.
    """
    padding = list(params["padding"])
    _, *out_hw, _ = _geometry(x.shape, rhs_shape, **params)[1]
    cut = []
    for axis in (0, 1):
        size, k, out = x.shape[1 + axis], rhs_shape[axis], out_hw[axis]
        (lo, hi), s, d = padding[axis], params["window_strides"][axis], params["rhs_dilation"][axis]
        span = (k - 1) * d + 1
        excess = lo + size + hi - ((out - 1) * s + span)
        from_pad = min(max(hi, 0), excess)
        padding[axis] = (lo, hi - from_pad)
        cut.append(size - (excess - from_pad))
    if cut == [x.shape[1], x.shape[2]] and tuple(padding) == tuple(params["padding"]):
        return x, params
    return x[:, :cut[0], :cut[1], :], dict(params, padding=tuple(padding))


def _weight_gradient(x, dy, rhs_shape, **params):
    if build.status().available:
        x, params = _trim_unread(x, rhs_shape, params)
        return conv_backward_weights_p.bind(x, dy, rhs_shape=tuple(rhs_shape), **params)
    return _lax_backward_weights(x, dy, rhs_shape=tuple(rhs_shape), **params)


def _conv_transpose_rhs(ct, x, w, **params):
    return _weight_gradient(x, ct, w.aval.shape, **params)


def _backward_data_transpose_lhs(ct, dy, w, *, lhs_shape, **params):
    del dy, lhs_shape
    return conv_p.bind(ct, w, **params)


def _backward_data_transpose_rhs(ct, dy, w, *, lhs_shape, **params):
    # <ct, B(dy, w)> = <conv(ct, w), dy>, so the w-cotangent is conv's weight gradient at ct
    del lhs_shape
    return _weight_gradient(ct, dy, w.aval.shape, **params)


def _backward_weights_transpose_x(ct, x, dy, *, rhs_shape, **params):
    # <ct, Bw(x, dy)> = <conv(x, ct), dy>: the x-cotangent is conv's input gradient at dy
    del rhs_shape
    return _conv_transpose_lhs(dy, x, ct, **params)


def _backward_weights_transpose_dy(ct, x, dy, *, rhs_shape, **params):
    del dy, rhs_shape
    return conv_p.bind(x, ct, **params)


ad.defbilinear(conv_p, _conv_transpose_lhs, _conv_transpose_rhs)
ad.defbilinear(conv_backward_data_p, _backward_data_transpose_lhs, _backward_data_transpose_rhs)
ad.defbilinear(conv_backward_weights_p, _backward_weights_transpose_x,
               _backward_weights_transpose_dy)


# ---------------------------------------------------------------------------- vmap


def _fold_batch(prim, a, w, ba, **params):
    """Images mapped, weights shared: the mapped axis joins the batch axis (one call)."""
    a = jnp.moveaxis(a, ba, 0)
    b, n = a.shape[:2]
    if "lhs_shape" in params:
        params = dict(params, lhs_shape=(b * n,) + tuple(params["lhs_shape"][1:]))
    out = prim.bind(a.reshape((b * n,) + a.shape[2:]), w, **params)
    return out.reshape((b, n) + out.shape[1:])


def _per_model(prim, lax_fn, a, w, ba, bw, **params):
    """Weights mapped (several models): one kernel call per model on CPU, lax elsewhere."""
    w = jnp.moveaxis(w, bw, 0)
    a = a if ba is None else jnp.moveaxis(a, ba, 0)
    in_axes = (None if ba is None else 0, 0)

    def cpu(a, w):
        if in_axes[0] is None:  # one image batch, several models
            return lax.map(lambda wi: prim.bind(a, wi, **params), w)
        return lax.map(lambda aw: prim.bind(aw[0], aw[1], **params), (a, w))

    def other(a, w):
        return jax.vmap(functools.partial(lax_fn, **params), in_axes=in_axes)(a, w)

    return lax.platform_dependent(a, w, cpu=cpu, default=other)


def _batch_rule(prim, lax_fn, args, dims, **params):
    (a, w), (ba, bw) = args, dims
    if bw is None:
        return _fold_batch(prim, a, w, ba, **params), 0
    return _per_model(prim, lax_fn, a, w, ba, bw, **params), 0


batching.primitive_batchers[conv_p] = functools.partial(_batch_rule, conv_p, _lax_conv)
batching.primitive_batchers[conv_backward_data_p] = functools.partial(
    _batch_rule, conv_backward_data_p, _lax_backward_data)


def _backward_weights_batch_rule(args, dims, *, rhs_shape, **params):
    """Per-model or per-example weight gradients: one kernel call per mapped element on CPU."""
    (x, dy), (bx, bd) = args, dims
    size = x.shape[bx] if bx is not None else dy.shape[bd]
    x = jnp.broadcast_to(x, (size,) + x.shape) if bx is None else jnp.moveaxis(x, bx, 0)
    dy = jnp.broadcast_to(dy, (size,) + dy.shape) if bd is None else jnp.moveaxis(dy, bd, 0)

    def cpu(x, dy):
        return lax.map(lambda a: conv_backward_weights_p.bind(a[0], a[1], rhs_shape=rhs_shape,
                                                              **params), (x, dy))

    def other(x, dy):
        return jax.vmap(functools.partial(_lax_backward_weights, rhs_shape=rhs_shape,
                                          **params))(x, dy)

    return lax.platform_dependent(x, dy, cpu=cpu, default=other), 0


batching.primitive_batchers[conv_backward_weights_p] = _backward_weights_batch_rule


# ------------------------------------------------------------------------ public entry


@functools.lru_cache(maxsize=1024)
def _lax_params(lhs, rhs, kw_items):
    """lax's canonical parameters (padding strings resolved, dimension numbers parsed)."""
    jaxpr = jax.make_jaxpr(functools.partial(lax.conv_general_dilated, **dict(kw_items)))(
        lhs, rhs).jaxpr
    if len(jaxpr.eqns) != 1 or jaxpr.eqns[0].primitive is not lax.conv_general_dilated_p:
        return None
    return tuple(jaxpr.eqns[0].params.items())


def _onednn_params(lhs, rhs, **kw):
    """lax's parameters if this convolution can run on oneDNN, else None."""
    if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32 or lhs.ndim != 4 or rhs.ndim != 4:
        return None
    hashable = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}
    if isinstance(hashable["padding"], tuple):
        hashable["padding"] = tuple(tuple(p) for p in hashable["padding"])
    try:
        items = _lax_params(jax.ShapeDtypeStruct(lhs.shape, lhs.dtype),
                            jax.ShapeDtypeStruct(rhs.shape, rhs.dtype),
                            tuple(sorted(hashable.items())))
    except TypeError:  # unhashable or unusual arguments: leave it to lax
        return None
    if items is None:
        return None
    params = dict(items)
    return params if eligible(lhs, rhs, params) else None


def bind(lhs, rhs, **params):
    """``lax.conv_general_dilated_p.bind(lhs, rhs, **params)`` (canonical lax parameters, as
    in a jaxpr equation) on the oneDNN kernels where they run and take it (``eligible``), so
    its transposes and gradients are oneDNN's too; otherwise lax's own."""
    if onednn_active() and eligible(lhs, rhs, params):
        return conv_p.bind(lhs, rhs, **params)
    return lax.conv_general_dilated_p.bind(lhs, rhs, **params)


def eligible(lhs, rhs, params) -> bool:
    """Whether ``lax.conv_general_dilated_p`` with canonical ``params`` on ``lhs``, ``rhs``
    (arrays or avals) is a convolution the kernels take: float32, NHWC/HWIO/NHWC, no input
    dilation or batch groups, a float32 result (``conv_p.bind(lhs, rhs, **params)``)."""
    return (lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32 and lhs.ndim == 4
            and rhs.ndim == 4 and params["dimension_numbers"] == _NHWC
            and tuple(params["lhs_dilation"]) == (1, 1) and params["batch_group_count"] == 1
            and params.get("preferred_element_type") in (None, jnp.float32)
            and params.get("out_sharding") is None)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated`` (same signature and result) on oneDNN where it can.

    Pass it to flax: ``nn.Conv(..., conv_general_dilated=conv_general_dilated)``.
    """
    kw = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
              rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
              feature_group_count=feature_group_count, batch_group_count=batch_group_count,
              precision=precision, preferred_element_type=preferred_element_type)
    if onednn_active():
        params = _onednn_params(lhs, rhs, **kw)
        if params is not None:
            return conv_p.bind(lhs, rhs, **params)
    return lax.conv_general_dilated(lhs, rhs, **kw)
