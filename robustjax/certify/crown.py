"""Backward linear bound propagation: CROWN, Fast-Lin, CROWN-IBP and alpha-CROWN.

All work on the flat graph of ``robustjax.certify.interpreter``, traced on a whole batch:

* a forward pass computes an ``Interval`` for every bounded node with the IBP rules; before
  each ReLU (``max(x, c)`` with a constant ``c``) and each other relaxed nonlinearity
  (``needs_bounds``) the bounds of its inputs are tightened by a backward pass from that
  input (CROWN and Fast-Lin; intersected with IBP's except at ReLUs, as auto_LiRPA keeps
  them) or left at IBP (CROWN-IBP);
* ``backward`` carries linear coefficients ``A`` from a node to the input for every example
  and every specification row at once: ``A`` is ``[2s, b, *node_shape[1:]]`` (``s`` rows for
  the lower bound, ``s`` for the upper bound of ``C @ output``; row ``r`` of example ``i``
  sits at ``A[r, i]``). Affine primitives are transposed with ``jax.vjp`` of the batched
  primitive, vmapped over the rows (a convolution becomes its transposed convolution on a
  batch of ``2s * b`` cotangents, never a dense Jacobian; its offset is ``f(0)``); a ReLU is
  replaced by linear lower/upper bounds (Zhang et al. 2018, "Efficient Neural Network
  Robustness Certification with General Activation Functions", eqs. for the ReLU case);
  exp, log, sqrt, rsqrt, 1/x, x^2, products of two bounded tensors (attention), division,
  max / max pooling and smooth elementwise functions (GELU, SiLU, tanh, erf, found as fused
  regions) by the linear relaxations of ``relax`` (auto_LiRPA's; Shi et al. 2020, Xu et al.
  2020), their inputs' intervals tightened by their own backward passes like a ReLU's; any
  other nonlinearity is concretised with its IBP interval, so CROWN runs on every network
  IBP runs on. At the input the bound is concretised over the Linf or L2 ball intersected
  with the [0, 1] box.

Sparse intermediate bounds (auto_LiRPA's; Xu et al. 2020, "Automatic Perturbation Analysis
for Scalable Certified Robustness and Beyond"): a ReLU neuron that is stable under a sound
reference interval (``l >= c`` or ``u <= c``) has an exact relaxation whatever its precise
bounds, so a backward pass is only needed for the unstable ones. With ``forward(...,
sparse={node: K})`` the reference of a ReLU input is its IBP interval from the tightened
earlier layers, intersected with plain IBP's; per example the first ``K`` unstable neurons get
one-hot specification rows (cost ``K`` rows instead of the node's size) and their bounds are
scattered into the reference, which every other neuron keeps. ``K`` is static: ``api.bounds``
counts the unstable neurons under plain IBP in a pre-pass (``unstable_counts``, with a small
slack so that rounding cannot push the program's count above it) and rounds the count up to a
power of two or 1.5 times one. Only nodes whose intervals no other relaxation reads are sparsified
(``relu_only_inputs``): GELU, exp or products use their inputs' intervals even where a ReLU
would be stable.

Patches (auto_LiRPA's patches mode): the one-hot rows of an intermediate bound at an NHWC
node start as 1x1 windows of ``patches.Patches`` and stay windows on each row's receptive
field through convolutions, entrywise affine steps and ReLU relaxations; any other primitive
makes them dense (``use_patches(False)``: dense from the start, the same bounds). Rows are
bounded in blocks (``rows_bounds``) whose coefficients stay within ``ROW_BLOCK_BYTES``.

The batched layout needs a graph in which every bounded node keeps the examples on its
leading axis and no primitive mixes them (``batch_major``); ``api.bounds`` falls back to a
graph traced on one example, vmapped (``InputSet.batched=False``: ``A`` is then
``[2s, *node_shape]``) for models that reshape the batch axis away.

Slopes of an unstable ReLU (``l < c < u``): upper ``(u - c) / (u - l)``; lower ``1 if
u - c > c - l else 0`` (CROWN, as auto_LiRPA and jax_verify), the upper slope (Fast-Lin;
Weng et al. 2018) or an optimised ``alpha in [0, 1]`` (alpha-CROWN; Xu et al. 2021).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from robustjax import kernels
from robustjax.certify import patches, relax
from robustjax.certify.ibp import IBP_RULES, Interval, input_interval, is_interval
from robustjax.certify.interpreter import Graph, Lit, evaluate, interpret, read
from robustjax.certify.patches import Patches

REGIONS = "relax_regions"  # env key of the graph's ``relax.Regions`` (set by ``forward``)

# Primitives that are affine in their bounded inputs (given that the other inputs are
# constant); ``_linear_ok`` adds the conditions for the bilinear ones.
LINEAR = frozenset({
    "add", "add_any", "sub", "neg", "reshape", "transpose", "broadcast_in_dim", "squeeze",
    "expand_dims", "reduce_sum", "reduce_window_sum", "slice", "rev", "convert_element_type",
    "copy", "copy_p", "stop_gradient", "concatenate", "pad", "select_n", "dynamic_slice",
    "gather", "cumsum", "mul", "div", "dot_general", "conv_general_dilated",
})


class InputSet(NamedTuple):
    """The perturbation set: the ``norm`` ball of radius ``eps`` around ``x0``, cut to [0, 1].

    ``batched``: the coefficients carry the batch on axis 1 (``[rows, b, ...]``; the graph
    was traced on the whole batch ``x0``) rather than one example's ``[rows, ...]``.
    """

    x0: jax.Array
    eps: jax.Array
    norm: str
    batched: bool = True


@dataclasses.dataclass(frozen=True)
class AlphaCrownConfig:
    """alpha-CROWN (Xu et al. 2021, "Fast and Complete: Enabling Complete Neural Network
    Verification with Rapid and Massively Parallel Incomplete Verifiers"): lower ReLU slopes
    optimised with Adam (``lr``) for ``steps`` steps, projected to [0, 1]; the best bound seen
    is kept, so it is never looser than CROWN. One slope per neuron, shared by all specs."""

    steps: int = 20
    lr: float = 0.1
    # Also optimise the slopes of the intermediate bounds' backward passes (auto_LiRPA's
    # CROWN-Optimized): one slope per (bounded node, its bound's row, ReLU neuron), and per
    # specification row for the output; the gradient of the output bound flows through
    # every intermediate bound (each step costs a whole CROWN pass). The tightest
    # intermediate bounds of all iterations are kept and intersected with each new pass's.
    intermediate: bool = False


def _linear_ok(name: str, bound_pos: list[int]) -> bool:
    if name in ("mul", "dot_general"):
        return len(bound_pos) == 1
    if name in ("div", "conv_general_dilated", "dynamic_slice", "gather"):
        return bound_pos == [0]
    if name == "select_n":
        return 0 not in bound_pos
    return name in LINEAR


# Primitives whose parameter names axes; touching axis 0 of a bounded operand mixes examples.
_AXES = {"reduce_sum": "axes", "reduce_max": "axes", "reduce_min": "axes", "argmax": "axes",
         "argmin": "axes", "cumsum": "axis", "cummax": "axis", "cummin": "axis",
         "rev": "dimensions"}


def batch_major(graph: Graph, graph_plus_one: Graph, batch: int) -> bool:
    """Whether the last input's examples stay on axis 0 of every node that depends on it.

    ``graph`` and ``graph_plus_one`` are the same function traced on batches ``batch`` and
    ``batch + 1``; a dependent node must have shape ``[batch, *rest]`` in the first and
    ``[batch + 1, *rest]`` in the second, and no reduction, scan, reversal, transpose or
    contraction may act on axis 0 (the examples must not mix, as in any eval-mode model).
    """
    if len(graph.eqns) != len(graph_plus_one.eqns):
        return False
    dep = {graph.inputs[-1]}
    for eqn, other in zip(graph.eqns, graph_plus_one.eqns):
        pos = [i for i, a in enumerate(eqn.inputs) if not isinstance(a, Lit) and a in dep]
        if not pos:
            continue
        for shape, shape1 in zip(eqn.shapes, other.shapes):
            if not shape or shape[0] != batch or tuple(shape1) != (batch + 1, *shape[1:]):
                return False
        axes = eqn.params.get(_AXES.get(eqn.name, ""), ())
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        if 0 in axes or (eqn.name == "transpose" and eqn.params["permutation"][0] != 0):
            return False
        if eqn.name == "dot_general":
            (contract_a, contract_b), _ = eqn.params["dimension_numbers"]
            if (0 in pos and 0 in contract_a) or (1 in pos and 0 in contract_b):
                return False
        dep.update(eqn.outputs)
    return True


def relu_input(eqn, values) -> Optional[int]:
    """Position of the bounded input if ``eqn`` is ``max(x, c)`` with a constant ``c``."""
    if eqn.name != "max" or len(values) != 2:
        return None
    bound = [i for i, v in enumerate(values) if is_interval(v)]
    return bound[0] if len(bound) == 1 else None


def relu_relaxation(lo, hi, c, mode: str, alpha=None):
    """Linear bounds ``a_l x + b_l <= max(x, c) <= a_u x + b_u`` on ``[lo, hi]``.

    ``mode``: ``"crown"`` (lower slope 1 if hi - c > c - lo else 0), ``"fastlin"`` (lower
    slope = upper slope) or ``"alpha"`` (lower slope ``alpha``).
    """
    active, inactive = lo >= c, hi <= c
    unstable = ~(active | inactive)
    denom = jnp.where(unstable, hi - lo, 1.0)
    a_up = jnp.where(active, 1.0, jnp.where(inactive, 0.0, (hi - c) / denom))
    b_up = jnp.where(active, 0.0, jnp.where(inactive, c, c - a_up * lo))
    if mode == "crown":
        slope = (hi - c > c - lo).astype(lo.dtype)
    elif mode == "fastlin":
        slope = a_up
    elif mode == "alpha":
        slope = jnp.clip(alpha, 0.0, 1.0)
    else:
        raise ValueError(f"unknown relaxation mode {mode!r}; valid: crown, fastlin, alpha")
    a_lo = jnp.where(active, 1.0, jnp.where(inactive, 0.0, slope))
    b_lo = jnp.where(active, 0.0, jnp.where(inactive, c, (1.0 - a_lo) * c))
    return a_lo, b_lo * jnp.ones_like(lo), a_up, b_up * jnp.ones_like(lo)


def _sum_rest(a, batched: bool):
    """Sum over the node's axes: ``[rows, b, ...] -> [rows, b]`` (or ``[rows, ...] -> [rows]``)."""
    return jnp.sum(a, axis=tuple(range(2 if batched else 1, a.ndim)))


def _concretize_box(A, s, lo, hi, batched: bool, per_row: bool = False):
    """Lower bound of the first ``s`` rows and upper bound of the last ``s`` rows of A x
    (``per_row``: ``lo``, ``hi`` have A's rows, as a patch's windows)."""
    pos, neg = jnp.maximum(A, 0), jnp.minimum(A, 0)
    (lo1, lo2), (hi1, hi2) = ((lo[:s], lo[s:]), (hi[:s], hi[s:])) if per_row else ((lo, lo),
                                                                                   (hi, hi))
    return jnp.concatenate([_sum_rest(pos[:s] * lo1 + neg[:s] * hi1, batched),
                            _sum_rest(pos[s:] * hi2 + neg[s:] * lo2, batched)])


def _concretize_input(A, s, inputs: InputSet):
    box = input_interval(inputs.x0, inputs.eps, inputs.norm)
    lo, hi, x0 = box.lower, box.upper, inputs.x0
    per_row = isinstance(A, Patches)
    if per_row:
        lo, hi, x0 = (patches.window(A, v) for v in (lo, hi, x0))
        A = A.values
    out = _concretize_box(A, s, lo, hi, inputs.batched, per_row)
    if inputs.norm == "l2":
        # The intersection lies in both sets, so the tighter of the two bounds holds.
        centre = _sum_rest(A * x0, inputs.batched)
        norm = jnp.sqrt(_sum_rest(A * A, inputs.batched))
        ball = centre + inputs.eps * jnp.concatenate([-norm[:s], norm[s:]])
        out = jnp.concatenate([jnp.maximum(out[:s], ball[:s]), jnp.minimum(out[s:], ball[s:])])
    return out


def backward(graph: Graph, env: dict, start: int, spec, inputs: InputSet,
             mode: Optional[str], alphas: Optional[dict] = None, upper: bool = True,
             sizes: Optional[list] = None):
    """Bounds of ``spec @ node(start)`` over the input set; returns ``(lower, upper)``, each
    ``[s, b]`` (``[s]`` when ``inputs.batched`` is False).

    ``spec``: ``[s, *shape(start)]``: row ``r`` of example ``i`` is ``spec[r, i]`` (batched).
    ``mode``: the ReLU relaxation (``"crown"``, ``"fastlin"``, ``"alpha"``) or ``None`` to
    stop at the first nonlinearity and use its IBP interval (IBP with the last affine layers
    elided into the spec, Gowal et al. 2018).
    ``upper=False`` skips the upper bound (half the work; ``upper`` is then empty).
    ``sizes``, if a list, receives the element count of every coefficient array carried.
    """
    s, batched = (spec.rows if isinstance(spec, Patches) else spec.shape[0]), inputs.batched
    regions = env.get(REGIONS)
    if not isinstance(spec, Patches):
        spec = spec.astype(jnp.float32)
    # The lower and upper bounds' rows are the same until the first relaxation or box
    # (which treat them differently): until then carry ``s`` rows that stand for both halves
    # (``shared``), half the work of the affine layers next to the output, where the
    # intermediate bounds' one-hot rows meet their widest transposed convolution.
    shared = upper
    coeffs = {start: spec}
    lead = spec.values.shape[:2] if isinstance(spec, Patches) else spec.shape[:2]
    bias = jnp.zeros(lead if batched else lead[:1], jnp.float32)

    def split_halves():
        nonlocal shared, bias
        if shared:
            for key, A in coeffs.items():
                coeffs[key] = (A.concatenate(A) if isinstance(A, Patches)
                               else jnp.concatenate([A, A]))
            bias, shared = jnp.concatenate([bias, bias]), False

    def accumulate(key, ct):
        if key in coeffs:
            old = coeffs[key]
            if isinstance(old, Patches) or isinstance(ct, Patches):
                old, ct = _dense(old), _dense(ct)
            ct = old + ct
        coeffs[key] = ct

    end = graph.producer.get(start, -1) + 1
    for k in range(end - 1, -1, -1):
        eqn = graph.eqns[k]
        if eqn.outputs[0] not in coeffs:
            continue
        values = [read(env, a) for a in eqn.inputs]
        bound_pos = [i for i, v in enumerate(values) if is_interval(v)]
        relu_pos = relu_input(eqn, values)
        linear = _linear_ok(eqn.name, bound_pos)
        if not linear:
            split_halves()
        A = coeffs.pop(eqn.outputs[0])
        if sizes is not None:
            sizes.append(math.prod((A.values if isinstance(A, Patches) else A).shape)
                         * (2 if shared else 1))
        if isinstance(A, Patches):
            moved = _patch_step(eqn, values, bound_pos, relu_pos, A, s, mode, alphas, k)
            if moved is not None:
                targets, extra = moved
                bias = bias + extra
                for key, ct in targets:
                    accumulate(key, ct)
                continue
            A = patches.dense(A)
        if linear:
            f = _in_bounded(eqn, values, bound_pos, _evaluate_linear)
            zeros = [jnp.zeros_like(values[i].lower) for i in bound_pos]
            offset, vjp = jax.vjp(f, *zeros)
            bias = bias + _sum_rest(A * offset, batched)
            cts = jax.vmap(vjp)(A)
            for i, ct in zip(bound_pos, cts):
                accumulate(eqn.inputs[i], ct)
        elif mode is not None and regions is not None and (
                moved := _relax_step(graph, env, k, eqn, values, bound_pos, A, s, batched,
                                     regions)) is not None:
            targets, extra = moved
            bias = bias + extra
            for key, ct in targets:
                accumulate(key, ct)
        elif relu_pos is not None and mode is not None:
            x = values[relu_pos]
            c = values[1 - relu_pos]
            alpha = None if alphas is None else alphas.get(k)
            a_lo, b_lo, a_up, b_up = relu_relaxation(
                x.lower, x.upper, c, "alpha" if alpha is not None else mode, alpha)
            if a_lo.ndim == A.ndim:  # one slope per row (alpha-CROWN, intermediate=True)
                lower = (a_lo[:s], a_lo[s:]), (b_lo[:s], b_lo[s:])
            else:
                lower = (a_lo, a_lo), (b_lo, b_lo)
            new, extra = _relu_rows(A, s, lower, ((a_up, a_up), (b_up, b_up)), batched)
            bias = bias + extra
            accumulate(eqn.inputs[relu_pos], new)
        else:
            box = env[eqn.outputs[0]]
            bias = bias + _concretize_box(A, s, box.lower, box.upper, batched)
    split_halves()
    for key, A in coeffs.items():
        if key not in graph.inputs:
            raise RuntimeError(f"linear coefficients left at node {key}, which is no input")
        bias = bias + _concretize_input(A, s, inputs)
    box = env.get(start)
    if is_interval(box):
        # A relaxation or box that met an unbounded input (an overflowed exp: a saturating
        # softmax) gives NaN (0 * inf); the node's own interval under the exact spec is a
        # sound bound there (spec zeros are exact: 0 * inf = 0). Elsewhere nothing changes.
        exact = lambda a, b: jnp.where(a == 0, 0.0, a * b)  # noqa: E731
        lo, hi = box.lower, box.upper
        if isinstance(spec, Patches):
            spec, lo, hi = spec.values, patches.window(spec, lo), patches.window(spec, hi)
        pos, neg = jnp.maximum(spec, 0), jnp.minimum(spec, 0)
        rows = [exact(pos, lo) + exact(neg, hi)]
        if upper:
            rows.append(exact(pos, hi) + exact(neg, lo))
        fallback = jnp.concatenate([_sum_rest(r, batched) for r in rows])
        bias = jnp.where(jnp.isnan(bias), fallback, bias)
    return bias[:s], bias[s:]


def _in_bounded(eqn, values, bound_pos, run):
    """``eqn``'s output as a function of its bounded inputs, the others fixed at ``values``
    (``run(eqn, args)`` evaluates it)."""
    def f(*bounded):
        args = list(values)
        for i, b in zip(bound_pos, bounded):
            args[i] = b
        return run(eqn, args)
    return f


def _relu_rows(A, s, lower, upper, batched):
    """A ReLU's backward step on rows ``A`` (``[2s, ...]``): ``lower = ((a_1, a_2), (b_1,
    b_2))`` are the lower line's slopes and offsets as seen by the first ``s`` rows and the
    last ``s``, ``upper`` the upper line's; the lower bound's rows take the lower line where
    positive, the upper bound's rows the upper line. Returns ``(new rows, bias [2s, ...])``."""
    (al1, al2), (bl1, bl2) = lower
    (au1, au2), (bu1, bu2) = upper
    pos, neg = jnp.maximum(A, 0), jnp.minimum(A, 0)
    new = jnp.concatenate([pos[:s] * al1 + neg[:s] * au1, pos[s:] * au2 + neg[s:] * al2])
    bias = jnp.concatenate([_sum_rest(pos[:s] * bl1 + neg[:s] * bu1, batched),
                            _sum_rest(pos[s:] * bu2 + neg[s:] * bl2, batched)])
    return new, bias


def _dense(A):
    return patches.dense(A) if isinstance(A, Patches) else A


def _patch_step(eqn, values, bound_pos, relu_pos, A: Patches, s, mode, alphas, k):
    """The backward step of ``eqn`` on patches (``patches`` module), or None where the rows
    must be dense: ``([(input id, coefficients), ...], bias [2s, b] or 0)``."""
    if eqn.name == "conv_general_dilated" and bound_pos == [0]:
        lhs, rhs = values
        geometry = patches.conv_geometry(eqn, lhs.lower, rhs)
        if geometry is None or not patches.worth_it(patches.grown_window(A, geometry),
                                                    lhs.lower.shape):
            return None
        return [(eqn.inputs[0], patches.conv_transpose(A, eqn, rhs, lhs.lower.shape,
                                                       geometry))], 0.0
    if eqn.name in patches.ENTRYWISE and _linear_ok(eqn.name, bound_pos):
        if any(tuple(values[i].lower.shape) != A.node for i in bound_pos):
            return None  # the bounded input is broadcast: its rows are not entrywise
        f = _in_bounded(eqn, values, bound_pos, lambda e, args: evaluate(e, args)[0])
        zeros = [jnp.zeros(A.node, jnp.float32) for _ in bound_pos]
        extra = _sum_rest(A.values * patches.window(A, f(*zeros)), True)  # f(0): the offset
        targets = []
        for j, i in enumerate(bound_pos):
            if eqn.name in ("add", "add_any", "convert_element_type", "copy", "copy_p",
                            "stop_gradient") or (eqn.name == "sub" and i == 0):
                ct = A.values  # slope 1 (the window is zero off the node already)
            elif eqn.name == "neg" or eqn.name == "sub":
                ct = -A.values
            else:  # x * c, x / c: the slope from a jvp, on the window
                ct = A.values * patches.window(A, patches.entrywise_slope(f, zeros, j))
            targets.append((eqn.inputs[i], A.with_values(ct)))
        return targets, extra
    if relu_pos is not None and mode is not None:
        x, c = values[relu_pos], values[1 - relu_pos]
        alpha = None if alphas is None else alphas.get(k)
        a_lo, b_lo, a_up, b_up = relu_relaxation(
            x.lower, x.upper, c, "alpha" if alpha is not None else mode, alpha)
        if a_lo.ndim == A.values.ndim or tuple(x.lower.shape) != A.node:
            return None  # one slope per row (alpha-CROWN's intermediate slopes): dense
        # the lines on every row's window: each half of the rows reads its own rows
        halves = lambda v: (lambda w: (w[:s], w[s:]))(patches.window(A, v))  # noqa: E731
        new, extra = _relu_rows(A.values, s, (halves(a_lo), halves(b_lo)),
                                (halves(a_up), halves(b_up)), True)
        return [(eqn.inputs[relu_pos], A.with_values(new))], extra
    return None


def _evaluate_linear(eqn, args):
    """``evaluate(eqn, args)``'s output, with a convolution on robustjax's oneDNN kernels where
    they run (``kernels.bind``): its transpose, which carries every row's coefficients back
    through the layer and is most of a backward pass's cost, is then oneDNN's backward-data
    kernel instead of XLA:CPU's input-dilated convolution (CROWN on the benchmark CNN 3.7x
    faster, 6.53 -> 1.76 s, benchmarks/results/certify.md). The same function, to float
    rounding."""
    if eqn.name == "conv_general_dilated":
        return kernels.bind(*args, **eqn.prim.get_bind_params(eqn.params))
    return evaluate(eqn, args)[0]


def _relax_step(graph, env, k, eqn, values, bound_pos, A, s, batched, regions):
    """The backward step through a non-ReLU nonlinearity (``relax``); None if none applies.

    Returns ``([(input id, coefficients), ...], bias [2s, ...])``.
    """
    sum_rest = lambda a: _sum_rest(a, batched)
    out = eqn.outputs[0]
    cache = ("lines", k)  # the lines depend on the (final) input bounds only: once per node
    if out in regions.fused:
        root, eqns = regions.fused[out]
        if cache not in env:
            x = env[root]
            env[cache] = _or_interval(relax.envelope(
                relax.region_fn(graph, env, root, eqns, out), x.lower, x.upper), env[out])
        new, extra = relax.apply_lines(A, s, env[cache], sum_rest)
        return [(root, new)], extra
    if len(bound_pos) == 1 and len(values) == 1:
        if cache not in env:
            lines = relax.unary_lines(eqn, values[0])
            env[cache] = None if lines is None else _or_interval(lines, env[out])
        if env[cache] is None:
            return None
        new, extra = relax.apply_lines(A, s, env[cache], sum_rest)
        return [(eqn.inputs[0], new)], extra
    if eqn.name in ("reduce_max", "reduce_window_max") and bound_pos == [0]:
        new, extra = relax.max_lines(eqn, values[0], A, s, sum_rest)
        return [(eqn.inputs[0], new)], extra
    if eqn.name == "mul" and bound_pos == [0, 1] and eqn.inputs[0] == eqn.inputs[1]:
        x = values[0]
        new, extra = relax.apply_lines(A, s, relax.square_lines(x.lower, x.upper), sum_rest)
        return [(eqn.inputs[0], new)], extra
    if eqn.name in ("mul", "dot_general") and bound_pos == [0, 1]:
        f = lambda u, v: evaluate(eqn, [u, v])[0]
        A_x, A_y, extra = relax.bilinear(f, A, s, values[0], values[1], sum_rest)
        return [(eqn.inputs[0], A_x), (eqn.inputs[1], A_y)], extra
    if eqn.name == "div" and 1 in bound_pos:
        y = values[1]
        recip = relax.reciprocal_interval(y)
        if bound_pos == [0, 1]:
            A_x, A_r, extra = relax.bilinear(lambda u, v: u * v, A, s, values[0], recip,
                                             sum_rest)
            targets = [(eqn.inputs[0], A_x)]
        else:
            A_r, extra, targets = A * values[0], 0.0, []
        lines = _or_interval(relax.reciprocal_lines(y.lower, y.upper), recip)
        new, extra2 = relax.apply_lines(A_r, s, lines, sum_rest)
        return targets + [(eqn.inputs[1], new)], extra + extra2
    return None


def _or_interval(lines, box):
    """Where a relaxation has no finite lines, the constant lines of the IBP interval."""
    lo, hi = jnp.broadcast_to(box.lower, lines.a_lo.shape), jnp.broadcast_to(box.upper,
                                                                          lines.a_lo.shape)
    bad_lo, bad_up = ~jnp.isfinite(lines.b_lo), ~jnp.isfinite(lines.b_up)
    return relax.Lines(jnp.where(bad_lo, 0.0, lines.a_lo), jnp.where(bad_lo, lo, lines.b_lo),
                       jnp.where(bad_up, 0.0, lines.a_up), jnp.where(bad_up, hi, lines.b_up))


def needs_bounds(eqn, values, k, regions) -> list:
    """Positions (or, for a fused region, the root id as ``("root", id)``) of the bounded
    inputs whose intervals a relaxation of ``eqn`` uses."""
    bound = [i for i, v in enumerate(values) if is_interval(v)]
    if not bound or k in regions.inside:
        return []
    if eqn.outputs[0] in regions.fused:
        return [("root", regions.fused[eqn.outputs[0]][0])]
    if relu_input(eqn, values) is not None:
        return bound
    if len(values) == 1 and (eqn.name in relax.UNARY or eqn.name in relax.SMOOTH):
        return bound
    if eqn.name in ("reduce_max", "reduce_window_max"):
        return bound
    if eqn.name in ("mul", "dot_general") and len(bound) == 2:
        return bound
    if eqn.name == "div" and 1 in bound:
        return bound
    return []


# Affine in one bounded operand without summing over it (elementwise with constants, moving
# entries around); with a box input their IBP intervals are exact.
_ENTRYWISE = frozenset({
    "add", "add_any", "sub", "neg", "mul", "div", "reshape", "transpose", "broadcast_in_dim",
    "squeeze", "expand_dims", "slice", "rev", "pad", "convert_element_type", "copy", "copy_p",
    "stop_gradient"})


def ibp_is_exact(graph: Graph, env: dict, start: int) -> bool:
    """Whether the IBP interval of ``start`` is already its exact range over an input box.

    True when ``start`` depends on the input through entrywise affine primitives and at most
    one primitive that sums or repeats entries (a convolution, a matrix product, a broadcast),
    as for the first affine layer: IBP's centre/radius form ``W c +- |W| r`` is exact for one
    such layer, so a backward pass (with any relaxation) gives the same bounds (auto_LiRPA
    skips it too). Only for the Linf box, not the L2 ball.
    """
    mixing, stack, seen = 0, [start], set()
    while stack:
        node = stack.pop()
        if node in seen:
            return False  # reached twice: two paths meet, their sum is not entrywise
        seen.add(node)
        if node in graph.inputs:
            continue
        eqn = graph.eqns[graph.producer[node]]
        values = [read(env, a) for a in eqn.inputs]
        pos = [i for i, v in enumerate(values) if is_interval(v)]
        if len(pos) != 1 or not _linear_ok(eqn.name, pos):
            return False
        if eqn.name not in _ENTRYWISE or values[pos[0]].lower.size < math.prod(eqn.shapes[0]):
            mixing += 1
            if mixing > 1:
                return False
        stack.append(eqn.inputs[pos[0]])
    return True


# Relative slack of the pre-pass's stability test: a neuron this close to the kink counts as
# unstable, so the compiled program (which rounds differently) never finds more than counted.
_NEAR = 1e-4


def relu_only_inputs(graph: Graph, env: dict) -> dict:
    """``{node: c}``: the nodes whose intervals one ReLU ``max(x, c)`` reads and no other
    relaxation (the nodes ``forward`` may bound sparsely); ``env`` from ``forward``."""
    regions = env[REGIONS]
    relu, other = {}, set()
    for k, eqn in enumerate(graph.eqns):
        values = [read(env, a) for a in eqn.inputs]
        pos = relu_input(eqn, values)
        for p in needs_bounds(eqn, values, k, regions):
            node = p[1] if isinstance(p, tuple) else eqn.inputs[p]
            if pos is None or node in relu:
                other.add(node)
            else:
                relu[node] = values[1 - pos]
    return {node: c for node, c in relu.items() if node not in other}


# Part of jit's cache key (as ``kernels.use_onednn``): programs traced inside and outside
# ``use_patches(False)`` are compiled separately. ``ROBUSTJAX_PATCHES=0`` sets the default.
_patches_enabled = jax.make_user_context(
    default_value=os.environ.get("ROBUSTJAX_PATCHES", "1") != "0")


def use_patches(enabled: bool):
    """Context manager: within the block, CROWN's intermediate-bound rows at NHWC nodes are
    ``patches.Patches`` (True, the default) or dense (False: the same bounds to float
    rounding, more memory and time; for comparisons)."""
    return _patches_enabled(bool(enabled))


def _patches_apply(shape, batched: bool) -> bool:
    """Whether rows from a node of ``shape`` start as ``patches.Patches``: an NHWC node of a
    batched graph, inside ``use_patches(True)``."""
    return batched and len(shape) == 4 and bool(_patches_enabled.value)


def _unstable(box: Interval, c, slack: float = 0.0):
    return (box.lower < c + slack) & (box.upper > c - slack)


def unstable_counts(graph: Graph, args, inputs: InputSet) -> dict:
    """``{node: [b] int32}``: per example, the neurons of each ``relu_only_inputs`` node that
    are unstable (or within ``_NEAR`` of it) under plain IBP: the rows ``forward``'s sparse
    passes need (``[1]`` when ``inputs.batched`` is False)."""
    env = forward(graph, args, inputs, "ibp")
    counts = {}
    for node, c in relu_only_inputs(graph, env).items():
        box = env[node]
        slack = _NEAR * (jnp.abs(box.lower) + jnp.abs(box.upper))
        mask = jnp.broadcast_to(_unstable(box, c, slack), box.lower.shape)
        mask = mask.reshape((mask.shape[0], -1) if inputs.batched else (1, -1))
        counts[node] = jnp.sum(mask, axis=1, dtype=jnp.int32)
    return counts


def _sparse_bounds(graph: Graph, env: dict, key: int, reference: Interval, c, rows: int,
                   inputs: InputSet, mode: str) -> Interval:
    """The interval of ReLU input ``key``: backward bounds for (up to) ``rows`` unstable
    neurons per example, the reference interval for the others (their relaxation is exact).

    ``reference``: plain IBP's interval of ``key``, intersected with ``env[key]`` (both are
    sound) so that no more neurons are unstable than ``unstable_counts`` found.
    """
    box = env[key]
    ref = Interval(jnp.maximum(box.lower, reference.lower),
                   jnp.minimum(box.upper, reference.upper))
    if rows == 0:
        return ref
    shape, batched = ref.lower.shape, inputs.batched
    lead = shape[:1] if batched else ()
    n = math.prod(shape[1:] if batched else shape)
    flat = lambda a: a.reshape((*lead, n))  # noqa: E731
    mask = flat(jnp.broadcast_to(_unstable(ref, c), shape))
    # The first ``rows`` unstable neurons; padding index n gives a zero row, dropped below.
    pick = lambda m: jnp.nonzero(m, size=rows, fill_value=n)[0]  # noqa: E731
    idx = jax.vmap(pick)(mask) if batched else pick(mask)  # [b, rows] or [rows]
    lo, hi = rows_bounds(graph, env, key, idx.T if batched else idx, inputs, mode)
    if batched:
        at = (jnp.arange(shape[0])[:, None], idx)
        lo, hi = lo.T, hi.T
    else:
        at = idx
    scatter = lambda base, new: base.at[at].set(new, mode="drop").reshape(shape)  # noqa: E731
    return Interval(scatter(flat(ref.lower), lo), scatter(flat(ref.upper), hi))


# Memory of one block of rows in ``rows_bounds``: its largest coefficient array (bytes) times
# the few such arrays a backward step keeps alive (the rows, their positive and negative
# parts for both halves), at most ``ROW_BLOCK_BYTES``. CNN-7's third to fifth ReLU inputs
# have ~32,768 unstable neurons per example whose rows reach 13x13x64 windows: 45 GB at
# batch 32 in one block (auto_LiRPA 0.3 runs out of this machine's 24 GB there).
ROW_BLOCK_BYTES = 1 << 30
_LIVE_ARRAYS = 6


def _row_spec(idx, shape, batched: bool):
    """One-hot rows ``idx`` (``[rows, b]`` or ``[rows]``; ``n`` is a zero row) of a node of
    ``shape``: patches for NHWC nodes of a batched graph, else dense ``[rows, *shape]``."""
    if _patches_apply(shape, batched):
        return patches.one_hot(idx, shape)
    n = math.prod(shape[1:] if batched else shape)
    return jax.nn.one_hot(idx, n, dtype=jnp.float32).reshape((idx.shape[0], *shape))


def rows_bounds(graph: Graph, env: dict, key: int, idx, inputs: InputSet, mode: str):
    """Lower and upper bounds ``[rows, b]`` (``[rows]`` unbatched) of node ``key``'s entries
    ``idx`` (``[rows, b]``: per example the flat index of each row's entry; ``[rows]``
    unbatched; index ``n``, the node's size, is a padding row), by ``backward`` over blocks
    of rows that keep each block's coefficients within ``ROW_BLOCK_BYTES`` (``lax.map``: one
    program, blocks one after another)."""
    shape, batched = env[key].lower.shape, inputs.batched
    rows = idx.shape[0]
    per_row = _row_bytes(graph, env, key, shape, rows, inputs, mode)
    block = max(1, min(rows, ROW_BLOCK_BYTES // (_LIVE_ARRAYS * per_row)))
    if block >= rows:
        return backward(graph, env, key, _row_spec(idx, shape, batched), inputs, mode)
    blocks = -(-rows // block)
    n = math.prod(shape[1:] if batched else shape)
    padded = jnp.concatenate([idx, jnp.full((blocks * block - rows, *idx.shape[1:]), n,
                                            idx.dtype)])
    padded = padded.reshape((blocks, block, *idx.shape[1:]))
    lo, hi = jax.lax.map(
        lambda i: backward(graph, env, key, _row_spec(i, shape, batched), inputs, mode),
        padded)
    flat = lambda a: a.reshape((blocks * block, *a.shape[2:]))[:rows]  # noqa: E731
    return flat(lo), flat(hi)


def _row_bytes(graph, env, key, shape, rows, inputs, mode) -> int:
    """Bytes of one row's largest coefficient array in a backward pass from ``key`` (both
    halves, the whole batch): at most the dense size of the graph's largest node, which is
    the answer when ``rows`` such rows fit the budget anyway or the rows are dense; patches
    are measured on a one-row pass (``jax.eval_shape``: traced, not run)."""
    batch = shape[0] if inputs.batched else 1
    dense = 2 * 4 * batch * max(math.prod(v[1:] if inputs.batched else v)
                                for v in graph.shapes.values() if v)
    if (not _patches_apply(shape, inputs.batched)
            or rows * dense * _LIVE_ARRAYS <= ROW_BLOCK_BYTES):
        return dense
    sizes: list = []
    idx = jnp.zeros((1, *shape[:1]), jnp.int32)
    jax.eval_shape(lambda: backward(graph, env, key, _row_spec(idx, shape, True), inputs,
                                    mode, sizes=sizes))
    return 4 * max(sizes)


def forward(graph: Graph, args, inputs: InputSet, intermediate: str,
            alphas: Optional[dict] = None, record: Optional[dict] = None,
            sparse: Optional[dict] = None, known: Optional[dict] = None) -> dict:
    """IBP forward pass; ReLU inputs tightened by ``intermediate`` (``ibp``/``crown``/
    ``fastlin``) backward passes. Returns the environment (id -> Interval or array).

    ``alphas``: ``{(node, relu equation index): lower slopes}`` for the backward pass that
    bounds ``node`` (alpha-CROWN of intermediate bounds); ``record``, if a dict, receives
    CROWN's slopes under those keys (the starting point). ``sparse``: ``{node: rows}`` for
    ``relu_only_inputs`` nodes bounded sparsely (``_sparse_bounds``; not with ``alphas`` or
    ``record``, whose slopes are per dense row); other nodes get dense passes. ``known``:
    ``{node: Interval}`` bounds already proven for the same inputs (an earlier pass); the
    tightened bounds are intersected with them (alpha-CROWN keeps the tightest intermediate
    bounds of its iterations, as auto_LiRPA's ``CROWN-Optimized`` does).
    """
    if intermediate not in ("ibp", "crown", "fastlin"):
        raise ValueError(f"intermediate must be ibp, crown or fastlin, got {intermediate!r}")
    if sparse and (alphas is not None or record is not None):
        raise ValueError("sparse intermediate bounds have no per-row slopes (alphas, record)")
    reference = forward(graph, args, inputs, "ibp") if sparse and intermediate != "ibp" else {}

    bounded = {i for i, a in zip(graph.inputs, args) if is_interval(a)}
    for eqn in graph.eqns:
        if any(not isinstance(a, Lit) and a in bounded for a in eqn.inputs):
            bounded.update(eqn.outputs)
    regions = relax.elementwise_regions(graph, bounded)
    done = set()

    def tighten(key, env, c=None):
        # ``c``: the constant of the ReLU ``max(x, c)`` that reads ``key`` (None: another
        # relaxation reads it)
        relu = c is not None
        if key in done or (inputs.norm == "linf" and ibp_is_exact(graph, env, key)):
            return
        done.add(key)
        if relu and sparse and key in sparse:
            env[key] = _sparse_bounds(graph, env, key, reference[key], c, sparse[key], inputs,
                                      intermediate)
            return
        box = env[key]
        shape = box.lower.shape
        # One row per neuron of one example, the same rows for every example.
        per_example = shape[1:] if inputs.batched else shape
        n = math.prod(per_example)
        if record is not None:  # a slope per row (2n: lower and upper) as auto_LiRPA
            record.update({(key, j): jnp.broadcast_to(a, (2 * n, *a.shape))
                           for j, a in _crown_slopes(graph, env, key).items()})
        mine = None if alphas is None else {j: a for (node, j), a in alphas.items()
                                            if node == key}
        if record is None and not mine:
            idx = jnp.arange(n)
            idx = jnp.broadcast_to(idx[:, None], (n, shape[0])) if inputs.batched else idx
            lo, hi = rows_bounds(graph, env, key, idx, inputs, intermediate)
        else:  # a slope per dense row: one pass over every row
            eye = jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32).reshape(
                (n, *([1] if inputs.batched else []), *per_example)), (n, *shape))
            lo, hi = backward(graph, env, key, eye, inputs, intermediate, mine or None)
        if inputs.batched:  # [n, b] -> [b, n]
            lo, hi = lo.T, hi.T
        lo, hi = lo.reshape(shape), hi.reshape(shape)
        if not relu:  # ReLU inputs keep CROWN's bounds as auto_LiRPA does; others intersect
            lo, hi = jnp.maximum(lo, box.lower), jnp.minimum(hi, box.upper)
        if known and key in known:
            # the value intersected, the gradient of the pass itself (straight through): a
            # constant that wins the max would stop the slopes' gradient at this node
            lo = lo + jax.lax.stop_gradient(jnp.maximum(lo, known[key].lower) - lo)
            hi = hi + jax.lax.stop_gradient(jnp.minimum(hi, known[key].upper) - hi)
        env[key] = Interval(lo, hi)

    def hook(k, eqn, values, env):
        env.setdefault(REGIONS, regions)  # the backward passes below read it
        if (eqn.name == "sub" and relax._member(eqn.inputs[1], regions.shift)
                and is_interval(values[1])):
            # softmax's shift: any constant gives the same softmax (relax._softmax_shifts)
            env[eqn.inputs[1]] = values[1].upper
            values = [values[0], values[1].upper]
        if intermediate == "ibp":
            return values
        relu_pos = relu_input(eqn, values)
        c = None if relu_pos is None else values[1 - relu_pos]
        for pos in needs_bounds(eqn, values, k, regions):
            tighten(pos[1] if isinstance(pos, tuple) else eqn.inputs[pos], env, c)
        return [read(env, a) if is_interval(v) else v for a, v in zip(eqn.inputs, values)]

    env = interpret(graph, IBP_RULES, args, is_interval, hook)
    env[REGIONS] = regions
    return env


def _crown_slopes(graph: Graph, env: dict, start: int) -> dict:
    """CROWN's lower slopes ``{relu equation index: [b, ...]}`` of the ReLUs before
    ``start``."""
    alphas = {}
    for k, eqn in enumerate(graph.eqns):
        if k > graph.producer.get(start, -1):
            break
        values = [read(env, a) for a in eqn.inputs]
        pos = relu_input(eqn, values)
        if pos is not None:
            x, c = values[pos], values[1 - pos]
            alphas[k] = (x.upper - c > c - x.lower).astype(jnp.float32)
    return alphas


def alpha_crown(graph: Graph, env: dict, start: int, spec, inputs: InputSet,
                config: AlphaCrownConfig = AlphaCrownConfig()):
    """Lower bounds of ``spec @ node(start)`` with optimised ReLU lower slopes.

    Returns ``(lower, upper)`` (shapes as ``backward``'s): the best lower bound over the
    optimisation (starting from CROWN's slopes), the upper bound of CROWN.
    """
    alphas = _crown_slopes(graph, env, start)
    lower0, upper0 = backward(graph, env, start, spec, inputs, "crown")
    if not alphas:
        return lower0, upper0

    # ``loss(a, known) -> (-sum of lower bounds, (lower bounds, tightest intermediate bounds))``
    if config.intermediate:
        # Re-run the forward pass with optimised slopes everywhere; the interval input is
        # the last graph input's value in ``env``.
        args = [env[i] for i in graph.inputs]
        record: dict = {}
        forward(graph, args, inputs, "crown", record=record)
        alphas = {"out": {j: jnp.broadcast_to(a, (spec.shape[0], *a.shape))
                          for j, a in alphas.items()}, "mid": record}
        # the tightest intermediate bounds so far (CROWN's to start): every iteration's are
        # sound for the same inputs, so each new pass is intersected with them
        nodes = list(dict.fromkeys(node for node, _ in record))
        known0 = {k: env[k] for k in nodes}

        def loss(a, known):
            e = forward(graph, args, inputs, "crown", alphas=a["mid"], known=known)
            lo, _ = backward(graph, e, start, spec, inputs, "crown", a["out"], upper=False)
            return -jnp.sum(lo), (lo, {k: e[k] for k in nodes})
    else:  # output slopes only: the intermediate bounds stay CROWN's, nothing to keep
        known0 = {}

        def loss(a, known):
            lo, _ = backward(graph, env, start, spec, inputs, "crown", a, upper=False)
            return -jnp.sum(lo), (lo, known)

    opt = optax.adam(config.lr)

    def step(carry, _):
        a, state, best, known = carry
        (_, (lo, seen)), grads = jax.value_and_grad(loss, has_aux=True)(a, known)
        best = jnp.maximum(best, lo)
        known = jax.lax.stop_gradient(seen)  # already intersected with ``known``
        updates, state = opt.update(grads, state, a)
        a = jax.tree.map(lambda p, u: jnp.clip(p + u, 0.0, 1.0), a, updates)
        return (a, state, best, known), None

    (a, _, best, known), _ = jax.lax.scan(
        step, (alphas, opt.init(alphas), lower0, known0), None, length=config.steps)
    best = jnp.maximum(best, loss(a, known)[1][0])
    return best, upper0
