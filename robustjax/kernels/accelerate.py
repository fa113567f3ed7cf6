"""Run any JAX function's convolutions on robustjax's oneDNN kernels, by rewriting its jaxpr.

A model written with plain ``flax.linen.Conv`` (or haiku, equinox, raw ``lax``) calls
``lax.conv_general_dilated``, which XLA:CPU runs on its own, slower kernels. ``accelerate(fn)``
traces ``fn`` to a jaxpr and evaluates it again with every eligible ``conv_general_dilated``
(float32, NHWC/HWIO/NHWC, no input dilation: what ``kernels.conv_general_dilated`` takes)
bound as ``kernels.conv_p``; every other equation, other convolutions included, is bound
unchanged. Equations that hold jaxprs (``jit``, ``scan``, ``while``, ``cond``, ``remat``,
``custom_jvp``/``custom_vjp`` calls) get their inner jaxprs rewritten the same way, so the
convolutions inside a flax ``nn.scan`` or a ``jax.checkpoint`` are found too. The result is the
same function to float32 rounding, with the same gradients (the kernels' primitives are
bilinear with oneDNN input- and weight-gradient kernels); a custom JVP/VJP rule keeps its own
(XLA) convolutions.

    >>> fast_apply = accelerate(model.apply_fn)      # a Model's apply_fn(params, x)
    >>> logits = fast_apply(params, x)

Off the CPU, or with the kernels unavailable or switched off (``use_onednn(False)``,
``ROBUSTJAX_ONEDNN=0``), ``accelerate`` returns calls of ``fn`` itself.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

from robustjax.kernels import conv as _conv

_CONV = lax.conv_general_dilated_p


def _eligible(eqn) -> bool:
    if eqn.primitive is not _CONV:
        return False
    lhs, rhs = (v.aval for v in eqn.invars)
    return _conv.eligible(lhs, rhs, eqn.params)


def _sub_jaxprs(value):
    """The jaxprs held by one equation parameter (a jaxpr, a closed jaxpr or a tuple of them)."""
    if isinstance(value, jcore.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jcore.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def count_convolutions(jaxpr) -> dict:
    """``{"xla": n, "onednn": m}``: the float convolutions a (closed) jaxpr runs, nested ones too.

    ``xla`` counts ``lax.conv_general_dilated`` equations, ``onednn`` robustjax's kernels. The
    attacks' ``loop="auto"`` reads this to choose between unrolled and ``fori`` loops.
    """
    counts = {"xla": 0, "onednn": 0}
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if eqn.primitive is _CONV:
            counts["xla"] += 1
        elif eqn.primitive in (_conv.conv_p, _conv.conv_backward_data_p,
                               _conv.conv_backward_weights_p):
            counts["onednn"] += 1
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                inner = count_convolutions(sub)
                counts["xla"] += inner["xla"]
                counts["onednn"] += inner["onednn"]
    return counts


def _has_eligible(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if _eligible(eqn):
            return True
        if any(_has_eligible(sub) for v in eqn.params.values() for sub in _sub_jaxprs(v)):
            return True
    return False


def _spec(var):
    aval = var.aval
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)


def _rewrite_closed(closed: jcore.ClosedJaxpr) -> jcore.ClosedJaxpr:
    if not _has_eligible(closed.jaxpr):
        return closed
    return jax.make_jaxpr(lambda *a: _eval(closed.jaxpr, closed.consts, a))(
        *[_spec(v) for v in closed.jaxpr.invars])


def _rewrite_param(value):
    if isinstance(value, jcore.ClosedJaxpr):
        return _rewrite_closed(value)
    if isinstance(value, jcore.Jaxpr):
        if not _has_eligible(value):
            return value
        new = _rewrite_closed(jcore.ClosedJaxpr(value, ()))
        # an open jaxpr cannot take constants: keep the original where tracing made some
        return new.jaxpr if not new.consts else value
    if isinstance(value, tuple) and any(isinstance(v, (jcore.ClosedJaxpr, jcore.Jaxpr))
                                        for v in value):
        return tuple(_rewrite_param(v) for v in value)
    return value


def _eval(jaxpr, consts, args):
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts):
        env[var] = val
    for var, val in zip(jaxpr.invars, args):
        env[var] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if _eligible(eqn):
            out = _conv.conv_p.bind(*invals, **eqn.params)
        else:
            params = {k: _rewrite_param(v) for k, v in eqn.params.items()}
            with eqn.ctx.manager:
                out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
        if eqn.primitive.multiple_results:
            for var, val in zip(eqn.outvars, out):
                env[var] = val
        else:
            env[eqn.outvars[0]] = out
    return [read(v) for v in jaxpr.outvars]


def accelerate(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its eligible convolutions on the oneDNN kernels (see the module docstring).

    ``fn``'s arguments are pytrees of arrays (a ``Model``'s ``apply_fn(params, x)``). Where
    ``fn`` has nothing to rewrite (no eligible ``lax`` convolution: a model written with
    ``robustjax.models.layers.Conv``, an MLP) the accelerated function traces to ``fn``'s own
    jaxpr; the check runs once per input signature. Accelerating an accelerated function
    returns it unchanged. It is not jitted: jit it (attacks and training do), as you would
    ``fn``; Python side effects of ``fn`` (flax interceptors, prints) run once per trace, plus
    once more the first time a signature is seen.
    """
    if getattr(fn, "_robustjax_accelerated", False):
        return fn
    plain: set = set()  # input signatures for which fn has no eligible convolution

    @functools.wraps(fn)
    def accelerated(*args):
        if not _conv.onednn_active():
            return fn(*args)
        leaves, tree = jax.tree.flatten(args)
        try:
            signature = (tree, tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves))
            hash(signature)
        except TypeError:  # not arrays: nothing to trace
            return fn(*args)
        if signature in plain:
            return fn(*args)
        closed, out_shape = jax.make_jaxpr(
            lambda *flat: fn(*jax.tree.unflatten(tree, flat)), return_shape=True)(*leaves)
        if not _has_eligible(closed.jaxpr):
            plain.add(signature)
            return fn(*args)
        out = _eval(closed.jaxpr, closed.consts, leaves)
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    accelerated._robustjax_accelerated = True
    return accelerated


def needs_acceleration(fn: Callable[..., Any], *args) -> bool:
    """True if ``fn(*args)`` traces to at least one eligible ``lax`` convolution."""
    return _has_eligible(jax.make_jaxpr(fn)(*args).jaxpr)
