"""Interval bound propagation (IBP; Gowal et al. 2018, "On the Effectiveness of Interval Bound
Propagation for Training Verifiably Robust Models").

An ``Interval(lower, upper)`` encloses every value a tensor takes over the input set. Each rule
below maps the intervals (or plain arrays, for constants) of one primitive's inputs to an
interval of its output; ``IBP_RULES`` is the literal table the interpreter looks rules up in.

* affine ops with a constant weight use the centre/radius form: ``W c`` and ``|W| r``;
* ops that are non-decreasing in every argument (reshape, pooling, exp, tanh, ...) are applied
  to the lower and the upper ends; non-increasing ones (erfc, rsqrt) swap them;
* products of two bounded tensors (attention, GELU ``x * Phi(x)``, LayerNorm) use interval
  arithmetic: elementwise the min/max of the four end products, for ``dot_general`` the
  midpoint-radius product ``|xc| yr + xr |yc| + xr yr``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from robustjax import kernels


class Interval(NamedTuple):
    """Elementwise bounds ``lower <= value <= upper`` (same shape and dtype)."""

    lower: jax.Array
    upper: jax.Array


def is_interval(v) -> bool:
    return isinstance(v, Interval)


def _as_interval(v) -> Interval:
    return v if isinstance(v, Interval) else Interval(v, v)


def _bind(prim, *args, **params):
    return prim.bind(*args, **params)


def _monotone(prim, *args, **params):
    """Non-decreasing in every argument: apply to all lowers, then to all uppers."""
    lo = [a.lower if isinstance(a, Interval) else a for a in args]
    hi = [a.upper if isinstance(a, Interval) else a for a in args]
    return Interval(_bind(prim, *lo, **params), _bind(prim, *hi, **params))


def _antitone(prim, x, **params):
    """Non-increasing unary op: swap the ends."""
    return Interval(_bind(prim, x.upper, **params), _bind(prim, x.lower, **params))


def _sub(prim, a, b, **params):
    a, b = _as_interval(a), _as_interval(b)
    return Interval(a.lower - b.upper, a.upper - b.lower)


def _neg(prim, x, **params):
    return Interval(-x.upper, -x.lower)


def _times(u, v):
    """``u * v`` with ``0 * inf = 0``: for an exact constant factor 0 (a weight), whatever
    the other bound, the product is 0."""
    p = u * v
    return jnp.where((u == 0) | (v == 0), jnp.zeros_like(p), p)


def _mul_intervals(a: Interval, b: Interval) -> Interval:
    # Between two bounds, 0 * inf is undetermined: the 0 may be an underflowed positive
    # number (``exp`` of a very negative bound) and the inf an overflowed one (``1 /`` such a
    # sum in a saturating softmax), whose true product can be anything. It leaves that end
    # open (-inf / +inf) instead of NaN; two non-negative factors keep a lower bound of 0.
    p = jnp.stack(jnp.broadcast_arrays(a.lower * b.lower, a.lower * b.upper,
                                       a.upper * b.lower, a.upper * b.upper))
    undetermined = jnp.isnan(p)
    lo = jnp.min(jnp.where(undetermined, -jnp.inf, p), axis=0)
    hi = jnp.max(jnp.where(undetermined, jnp.inf, p), axis=0)
    nonnegative = (a.lower >= 0) & (b.lower >= 0)
    return Interval(jnp.where(nonnegative, jnp.maximum(lo, 0.0), lo), hi)


def _mul(prim, a, b, **params):
    if a is b and isinstance(a, Interval):  # x * x of one node (the interpreter reads it once)
        return _square(prim, a)
    if isinstance(a, Interval) and isinstance(b, Interval):
        return _mul_intervals(a, b)
    x, c = (a, b) if isinstance(a, Interval) else (b, a)
    # End points rather than centre/radius: exact, and [0, u] * c never dips below 0.
    lo, hi = _times(x.lower, c), _times(x.upper, c)
    return Interval(jnp.minimum(lo, hi), jnp.maximum(lo, hi))


def _reciprocal(x: Interval) -> Interval:
    """1/x; unbounded where the interval contains 0 inside it. An end point of 0 leaves the
    other side bounded: ``1/[0, u] = [1/u, inf]`` (a sum of ``exp`` that underflowed to 0 in
    a softmax's denominator), ``1/[l, 0] = [-inf, 1/l]``."""
    straddles = ((x.lower < 0) & (x.upper > 0)) | ((x.lower == 0) & (x.upper == 0))
    lo = jnp.where(straddles | (x.upper == 0), -jnp.inf, 1 / x.upper)
    hi = jnp.where(straddles | (x.lower == 0), jnp.inf, 1 / x.lower)
    return Interval(lo, hi)


def _div(prim, a, b, **params):
    if isinstance(b, Interval):
        return _mul(prim, a, _reciprocal(b))
    return _mul(prim, a, 1 / b)


def _affine(fn, x: Interval, w):
    """``fn(x, w)`` linear in x with constant w: centre/radius propagation."""
    centre, radius = (x.upper + x.lower) / 2, (x.upper - x.lower) / 2
    c, r = fn(centre, w), fn(radius, jnp.abs(w))
    return Interval(c - r, c + r)


def _dot_general(prim, a, b, **params):
    f = lambda u, v: _bind(prim, u, v, **params)
    if isinstance(a, Interval) and isinstance(b, Interval):
        ac, ar = (a.upper + a.lower) / 2, (a.upper - a.lower) / 2
        bc, br = (b.upper + b.lower) / 2, (b.upper - b.lower) / 2
        c = f(ac, bc)
        r = f(jnp.abs(ac), br) + f(ar, jnp.abs(bc)) + f(ar, br)
        return Interval(c - r, c + r)
    if isinstance(a, Interval):
        return _affine(f, a, b)
    return _affine(lambda u, w: f(w, u), b, a)


def _conv(prim, lhs, rhs, **params):
    if isinstance(rhs, Interval):
        raise NotImplementedError("conv_general_dilated with bounded weights is not supported; "
                                  "only the input (lhs) may carry a bound")
    # on the oneDNN kernels where they run (kernels.bind): as fast as an accelerated forward
    # pass, and so are the gradients of certified training
    return _affine(lambda u, w: kernels.bind(u, w, **params), lhs, rhs)


def _square(prim, x, **params):
    lo2, hi2 = x.lower ** 2, x.upper ** 2
    straddles = (x.lower <= 0) & (x.upper >= 0)
    return Interval(jnp.where(straddles, 0.0, jnp.minimum(lo2, hi2)).astype(lo2.dtype),
                    jnp.maximum(lo2, hi2))


def _integer_pow(prim, x, *, y):
    if y % 2 == 1 and y > 0:
        return Interval(x.lower ** y, x.upper ** y)
    if y == 2:
        return _square(prim, x)
    if y > 0:  # even power: |x|^y
        sq = _square(prim, x)
        return Interval(sq.lower ** (y // 2), sq.upper ** (y // 2))
    return _monotone_then_reciprocal(x, y)


def _monotone_then_reciprocal(x, y):
    pos = _integer_pow(None, x, y=-y)
    return _reciprocal(pos)


def _select_n(prim, which, *cases, **params):
    if isinstance(which, Interval):
        raise NotImplementedError("select_n with a bounded predicate is not supported")
    cases = [_as_interval(c) for c in cases]
    return Interval(_bind(prim, which, *[c.lower for c in cases], **params),
                    _bind(prim, which, *[c.upper for c in cases], **params))


def _mixed_monotone(prim, *args, **params):
    """Structural ops whose arguments may mix constants and intervals (concatenate, pad)."""
    args = [_as_interval(a) for a in args]
    return _monotone(prim, *args, **params)


def _gather_like(prim, operand, *indices, **params):
    if any(isinstance(i, Interval) for i in indices):
        raise NotImplementedError(f"{prim.name} with bounded indices is not supported")
    return _monotone(prim, operand, *indices, **params)


_MONOTONE = ["add", "add_any", "max", "min", "reshape", "transpose", "broadcast_in_dim",
             "squeeze", "expand_dims", "reduce_sum", "reduce_max", "reduce_min",
             "reduce_window_sum", "reduce_window_max", "reduce_window_min", "slice", "rev",
             "convert_element_type", "copy", "copy_p", "stop_gradient", "reduce_precision",
             "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "erf", "sqrt", "cbrt",
             "cumsum", "cummax", "cummin", "floor", "ceil", "round", "sinh", "asinh", "atan"]

IBP_RULES = {name: _monotone for name in _MONOTONE}
IBP_RULES.update({
    "sub": _sub,
    "neg": _neg,
    "mul": _mul,
    "div": _div,
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "erfc": _antitone,
    "rsqrt": _antitone,
    "square": _square,
    "integer_pow": _integer_pow,
    "select_n": _select_n,
    "concatenate": _mixed_monotone,
    "pad": _mixed_monotone,
    "dynamic_slice": _gather_like,
    "gather": _gather_like,
})


def input_interval(x: jax.Array, eps, norm: str = "linf") -> Interval:
    """The box enclosing the Linf or L2 ball of radius ``eps`` around ``x``, cut to [0, 1].

    For L2 the enclosing box is the same as for Linf (every coordinate moves at most eps).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return Interval(jnp.clip(x - eps, 0.0, 1.0), jnp.clip(x + eps, 0.0, 1.0))


def propagate(fn, *args):
    """IBP through any JAX function: ``args`` are arrays or ``Interval``s (pytrees allowed);
    returns the output pytree with an ``Interval`` wherever the output depends on a bound.

    Example: ``propagate(jax.nn.relu, Interval(jnp.array([-1.]), jnp.array([2.])))`` gives
    ``Interval([0.], [2.])``.
    """
    from robustjax.certify.interpreter import flatten, interpret, read

    leaves, tree = jax.tree.flatten(args, is_leaf=is_interval)
    centres = [(a.lower + a.upper) / 2 if is_interval(a) else a for a in leaves]
    shapes = [jax.ShapeDtypeStruct(jnp.shape(c), jnp.result_type(c)) for c in centres]
    out_tree = jax.tree.structure(jax.eval_shape(fn, *jax.tree.unflatten(tree, shapes)))
    graph = flatten(lambda *a: fn(*jax.tree.unflatten(tree, a)), *shapes)
    env = interpret(graph, IBP_RULES, leaves, is_interval)
    return jax.tree.unflatten(out_tree, [read(env, o) for o in graph.outputs])
