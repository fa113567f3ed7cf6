"""Linear relaxations of the nonlinearities other than ReLU, for the backward (CROWN) pass.

Each relaxation bounds a nonlinear node by linear functions of its inputs over their
intervals (the intermediate bounds), so the backward pass can continue through it instead
of stopping at its IBP interval. They follow auto_LiRPA (Xu et al. 2020, "Automatic
Perturbation Analysis for Scalable Certified Robustness and Beyond"; Shi et al. 2020,
"Robustness Verification for Transformers"):

* ``exp`` (convex): upper chord, lower tangent at ``m = min((l + u) / 2, l + 0.99)``;
  ``log``, ``sqrt`` (concave): lower chord, upper tangent at the midpoint; ``1/x``, ``rsqrt``
  (convex for x > 0): upper chord, lower tangent at the midpoint (mirrored for x < 0);
  ``x**2`` (``square``, ``integer_pow 2``, ``mul(x, x)``): upper chord, lower tangent at the
  midpoint.
* products of two bounded tensors (``mul``, ``dot_general``: attention's ``Q K^T`` and
  ``P V``), term by term (Shi et al. 2020, Theorem 1 / auto_LiRPA's ``BoundMul``):
  ``l_y x + l_x y - l_x l_y <= x y <= u_y x + l_x y - l_x u_y``. A ``div`` by a bounded
  denominator is ``x * (1/y)``: the product, then the reciprocal.
* ``reduce_max`` and ``reduce_window_max`` (max pooling): lower bound the entry with the
  largest lower bound (any entry is below the max), upper bound the constant ``max u``.
* any other smooth elementwise function ``g`` of one node ``x`` on ``[l, u]`` (``tanh``,
  ``logistic``, ``erf``, and whole elementwise subgraphs such as GELU ``x * Phi(x)``, its
  tanh form, SiLU, which ``elementwise_regions`` finds in the graph): the envelope of
  ``envelope``: candidate slopes (chord, tangents at five points), offsets from ``g`` on a
  grid of ``POINTS`` points corrected by the IBP bound of ``g''`` on each cell (between two
  grid points ``|g(t) - a t - max_grid| <= max(0, -g'') h^2 / 8``), so the lines are sound;
  the slope with the least area under / over ``g`` is kept.

Softmax (``jax.nn.softmax``: ``exp(x - stop_gradient(max x)) / sum``) is invariant to the
shift, so ``softmax_shift`` lets the forward pass replace the shift by a constant (the upper
bound of ``max x``): the output is unchanged for every input, and the shift no longer needs a
relaxation.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from robustjax.certify.ibp import Interval, is_interval, propagate
from robustjax.certify.interpreter import Graph, Lit, evaluate, read

POINTS = 33  # grid of the envelope: 32 cells


class Lines(NamedTuple):
    """``a_lo x + b_lo <= f(x) <= a_up x + b_up`` for x in the input's interval."""

    a_lo: jax.Array
    b_lo: jax.Array
    a_up: jax.Array
    b_up: jax.Array


def _chord(f, lo, hi):
    w = hi - lo
    close = w < 1e-12
    k = jnp.where(close, 0.0, (f(hi) - f(lo)) / jnp.where(close, 1.0, w))
    return k, f(lo) - k * lo


def _tangent(f, df, m):
    k = df(m)
    return k, f(m) - k * m


def exp_lines(lo, hi) -> Lines:
    m = jnp.minimum((lo + hi) / 2, lo + 0.99)
    a_lo, b_lo = _tangent(jnp.exp, jnp.exp, m)
    a_up, b_up = _chord(jnp.exp, lo, hi)
    return Lines(a_lo, b_lo, a_up, b_up)


def log_lines(lo, hi) -> Lines:
    safe = jnp.where(lo > 0, lo, 1.0)
    a_lo, b_lo = _chord(jnp.log, safe, jnp.maximum(hi, safe))
    a_up, b_up = _tangent(jnp.log, lambda t: 1 / t, (safe + jnp.maximum(hi, safe)) / 2)
    return _invalid_where(lo <= 0, Lines(a_lo, b_lo, a_up, b_up))


def sqrt_lines(lo, hi) -> Lines:
    lo0 = jnp.maximum(lo, 0.0)
    hi0 = jnp.maximum(hi, lo0)
    a_lo, b_lo = _chord(jnp.sqrt, lo0, hi0)
    m = jnp.maximum((lo0 + hi0) / 2, 1e-12)
    a_up, b_up = _tangent(jnp.sqrt, lambda t: 0.5 / jnp.sqrt(t), m)
    # At a zero-width interval at 0 the tangent is vertical: use the constant sqrt(hi).
    flat = hi0 <= 1e-12
    a_up, b_up = jnp.where(flat, 0.0, a_up), jnp.where(flat, jnp.sqrt(hi0), b_up)
    return _invalid_where(hi < 0, Lines(a_lo, b_lo, a_up, b_up))


def _convex_pos(f, df, lo, hi, straddle) -> Lines:
    """A function convex and decreasing for x > 0, odd-mirrored for x < 0 (1/x)."""
    sign = jnp.where(hi < 0, -1.0, 1.0)
    l, u = jnp.where(hi < 0, -hi, lo), jnp.where(hi < 0, -lo, hi)
    l = jnp.where(straddle, 1.0, l)
    u = jnp.maximum(u, l)
    a_t, b_t = _tangent(f, df, (l + u) / 2)
    a_c, b_c = _chord(f, l, u)
    # for x < 0: g(x) = -f(-x); lower of g = -(upper of f)(-x), so slopes stay, offsets flip
    lines = jnp.where(sign > 0, a_t, a_c), jnp.where(sign > 0, b_t, -b_c), \
        jnp.where(sign > 0, a_c, a_t), jnp.where(sign > 0, b_c, -b_t)
    return _invalid_where(straddle, Lines(*lines))


def reciprocal_lines(lo, hi) -> Lines:
    return _convex_pos(lambda t: 1 / t, lambda t: -1 / (t * t), lo, hi, (lo <= 0) & (hi >= 0))


def rsqrt_lines(lo, hi) -> Lines:
    lines = _convex_pos(jax.lax.rsqrt, lambda t: -0.5 * t ** -1.5, jnp.where(lo > 0, lo, 1.0),
                        jnp.maximum(hi, jnp.where(lo > 0, lo, 1.0)), lo <= 0)
    return lines


def square_lines(lo, hi) -> Lines:
    a_up, b_up = lo + hi, -lo * hi
    m = (lo + hi) / 2
    return Lines(2 * m, -m * m, a_up, b_up)


def _invalid_where(bad, lines: Lines) -> Lines:
    """Where the relaxation does not apply, give lines with infinite offsets (concretised
    as the trivial bound; callers replace them by the IBP interval)."""
    inf = jnp.inf
    return Lines(jnp.where(bad, 0.0, lines.a_lo), jnp.where(bad, -inf, lines.b_lo),
                 jnp.where(bad, 0.0, lines.a_up), jnp.where(bad, inf, lines.b_up))


def envelope(g, lo, hi, points: int = POINTS) -> Lines:
    """Sound linear lines below and above a smooth elementwise ``g`` on ``[lo, hi]``.

    ``g`` maps an array of ``lo``'s shape to one of the same shape, entry by entry. Slopes:
    the chord and the tangents at ``l, l + w/4, m, u - w/4, u``; for each, the offsets are the
    extremes of ``g(t) - a t`` on ``points`` grid points widened by ``M h^2 / 8`` with ``M``
    the IBP bound of ``g''`` over the cells (a maximum between grid points sits where the
    derivative vanishes, within ``h / 2`` of a grid point). The slope whose line is lowest
    (upper) / highest (lower) at the midpoint (the least area) is chosen.
    """
    w = hi - lo
    grid = jnp.linspace(0.0, 1.0, points).reshape((points,) + (1,) * lo.ndim)
    t = lo + w * grid
    gt = jax.vmap(g)(t)
    d1 = lambda x: jax.jvp(g, (x,), (jnp.ones_like(x),))[1]
    d2 = lambda x: jax.jvp(d1, (x,), (jnp.ones_like(x),))[1]
    cells = propagate(jax.vmap(d2), Interval(t[:-1], t[1:]))
    if not is_interval(cells):  # g'' does not depend on x (a quadratic)
        cells = Interval(cells, cells)
    h2 = (w / (points - 1)) ** 2 / 8
    curv_up = jnp.max(jnp.nan_to_num(cells.upper, nan=jnp.inf), axis=0)
    curv_lo = jnp.min(jnp.nan_to_num(cells.lower, nan=-jnp.inf), axis=0)
    margin_max = jnp.maximum(0.0, -curv_lo) * h2  # max of g - a t between grid points
    margin_min = jnp.maximum(0.0, curv_up) * h2
    close = w < 1e-12
    chord = jnp.where(close, 0.0, (gt[-1] - gt[0]) / jnp.where(close, 1.0, w))
    slopes = jnp.stack([chord] + [d1(lo + f * w) for f in (0.0, 0.25, 0.5, 0.75, 1.0)])
    slopes = jnp.where(close, d1(lo), slopes)
    phi = gt[None] - slopes[:, None] * t[None]  # [slopes, points, ...]
    # float32 slack: the grid values are rounded
    slack = 1e-6 * (1.0 + jnp.max(jnp.abs(gt), axis=0) + jnp.abs(slopes) *
                    jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
    b_up = jnp.max(phi, axis=1) + margin_max + slack
    b_lo = jnp.min(phi, axis=1) - margin_min - slack
    mid = (lo + hi) / 2
    i_up = jnp.argmin(slopes * mid + b_up, axis=0)
    i_lo = jnp.argmax(slopes * mid + b_lo, axis=0)
    pick = lambda a, i: jnp.take_along_axis(a, i[None], axis=0)[0]
    lines = Lines(pick(slopes, i_lo), pick(b_lo, i_lo), pick(slopes, i_up), pick(b_up, i_up))
    bad = ~(jnp.isfinite(lines.b_lo) & jnp.isfinite(lines.b_up) & jnp.isfinite(lines.a_lo)
            & jnp.isfinite(lines.a_up))
    return _invalid_where(bad, lines)


# Unary primitives with closed-form lines; the others in ``SMOOTH`` use the envelope.
UNARY = {"exp": exp_lines, "log": log_lines, "sqrt": sqrt_lines, "rsqrt": rsqrt_lines,
         "square": square_lines}
SMOOTH = frozenset({"tanh", "logistic", "erf", "erfc", "exp2", "log1p", "expm1", "sinh",
                    "asinh", "atan", "integer_pow", "cbrt"})
# Elementwise primitives a fused region may contain (one output, inputs of the same shape).
# Smooth ones only: the envelope's error term needs g'' (no ReLU kinks, no abs).
ELEMENTWISE = frozenset({"add", "add_any", "sub", "neg", "mul", "div", "convert_element_type",
                         "copy", "copy_p", "square", "exp", "log", "sqrt", "rsqrt"} | SMOOTH)
_AFFINE = frozenset({"add", "add_any", "sub", "neg", "convert_element_type", "copy", "copy_p"})


def unary_lines(eqn, x: Interval) -> Optional[Lines]:
    """Lines for a unary elementwise primitive on ``x`` (None if it has none)."""
    lo, hi = x.lower, x.upper
    if eqn.name in UNARY:
        return UNARY[eqn.name](lo, hi)
    if eqn.name == "integer_pow" and eqn.params["y"] == 2:
        return square_lines(lo, hi)
    if eqn.name == "integer_pow" and eqn.params["y"] == -1:
        return reciprocal_lines(lo, hi)
    if eqn.name in SMOOTH:
        return envelope(lambda t: evaluate(eqn, [t])[0], lo, hi)
    return None


def apply_lines(A, s: int, lines: Lines, sum_rest):
    """Coefficients ``A [2s, ...]`` on ``f(x)`` -> coefficients on ``x`` and the bias ``[2s,
    ...]``: the first ``s`` rows (lower bounds) take the lower line where positive, the upper
    line where negative; the last ``s`` rows the reverse."""
    pos, neg = jnp.maximum(A, 0), jnp.minimum(A, 0)
    new = jnp.concatenate([pos[:s] * lines.a_lo + neg[:s] * lines.a_up,
                           pos[s:] * lines.a_up + neg[s:] * lines.a_lo])
    bias = jnp.concatenate([sum_rest(_times(pos[:s], lines.b_lo) + _times(neg[:s], lines.b_up)),
                            sum_rest(_times(pos[s:], lines.b_up) + _times(neg[s:], lines.b_lo))])
    return new, bias


def _times(a, b):
    """``a * b`` with 0 where ``a`` is 0 (an infinite offset that is not used adds nothing)."""
    return jnp.where(a == 0, 0.0, a * b)


def bilinear(f, A, s: int, x: Interval, y: Interval, sum_rest):
    """Coefficients on ``x`` and ``y`` and the bias for ``A [2s, ...]`` on ``f(x, y)``, with
    ``f`` bilinear (an elementwise or matrix product), term by term:
    ``l_y x + l_x y - l_x l_y <= x y <= u_y x + l_x y - l_x u_y`` (auto_LiRPA's BoundMul).
    """
    pos, neg = jnp.maximum(A, 0), jnp.minimum(A, 0)
    lo_rows = (pos[:s], neg[:s])  # lower bound: pos takes the lower plane, neg the upper
    up_rows = (neg[s:], pos[s:])  # upper bound: neg takes the lower plane, pos the upper

    def vjp_x(y0, ct):
        return jax.vmap(jax.vjp(lambda t: f(t, y0), jnp.zeros_like(x.lower))[1])(ct)[0]

    def vjp_y(x0, ct):
        return jax.vmap(jax.vjp(lambda t: f(x0, t), jnp.zeros_like(y.lower))[1])(ct)[0]

    A_x = jnp.concatenate([vjp_x(y.lower, lo_rows[0]) + vjp_x(y.upper, lo_rows[1]),
                           vjp_x(y.lower, up_rows[0]) + vjp_x(y.upper, up_rows[1])])
    A_y = vjp_y(x.lower, A)
    f_ll, f_lu = f(x.lower, y.lower), f(x.lower, y.upper)
    bias = jnp.concatenate([-sum_rest(lo_rows[0] * f_ll + lo_rows[1] * f_lu),
                            -sum_rest(up_rows[0] * f_ll + up_rows[1] * f_lu)])
    return A_x, A_y, bias


def reciprocal_interval(y: Interval) -> Interval:
    straddle = (y.lower <= 0) & (y.upper >= 0)
    return Interval(jnp.where(straddle, -jnp.inf, 1 / y.upper),
                    jnp.where(straddle, jnp.inf, 1 / y.lower))


def max_lines(eqn, x: Interval, A, s: int, sum_rest):
    """Coefficients on ``x`` and the bias for ``A`` on ``reduce_max``/``reduce_window_max``:
    below, the entry with the largest lower bound (the max's gradient at ``l``); above, the
    constant ``max u``."""
    f = lambda t: evaluate(eqn, [t])[0]
    _, select = jax.vjp(f, x.lower)
    top = f(x.upper)
    pos, neg = jnp.maximum(A, 0), jnp.minimum(A, 0)
    lower_part = jnp.concatenate([pos[:s], neg[s:]])
    new = jax.vmap(select)(lower_part)[0]
    bias = jnp.concatenate([sum_rest(_times(neg[:s], top)), sum_rest(_times(pos[s:], top))])
    return new, bias


class Regions(NamedTuple):
    """Static structure of a graph for the relaxations: ``fused`` maps the output id of a
    maximal elementwise region to ``(root id, equation indices in order)``; ``inside`` holds
    the indices of equations within a region (their own inputs need no bounds); ``shift``
    the ids of softmax shifts (``stop_gradient`` outputs) that may be replaced by constants.
    """

    fused: dict
    inside: frozenset
    shift: frozenset


def _member(atom, ids) -> bool:
    return not isinstance(atom, Lit) and atom in ids


def _consumers(graph: Graph) -> dict:
    out: dict = {}
    for k, eqn in enumerate(graph.eqns):
        for a in eqn.inputs:
            if not isinstance(a, Lit):
                out.setdefault(a, []).append(k)
    return out


def elementwise_regions(graph: Graph, bounded: set) -> Regions:
    """Find the maximal elementwise subgraphs that are a function of a single bounded node.

    ``bounded``: ids whose values carry a bound. A region ending at node ``v`` walks back
    through elementwise equations (``ELEMENTWISE``, same shapes or scalar constants) until
    the bounded leaves; it is fused when there is one leaf ``x`` (so ``v = g(x)`` entrywise)
    and it holds a product of two bounded values or at least two nonlinear equations, one of
    them not a ReLU (``max`` with a constant): GELU, SiLU, ... ReLU-only regions keep the
    ReLU relaxation.
    """
    consumers = _consumers(graph)

    def walk(v):
        leaves, eqns, stack, seen = set(), [], [v], set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            k = graph.producer.get(node)
            eqn = graph.eqns[k] if k is not None else None
            shape = graph.shapes[node]
            ok = (eqn is not None and eqn.name in ELEMENTWISE and len(eqn.outputs) == 1
                  and all(isinstance(a, Lit) or a not in bounded or graph.shapes[a] == shape
                          for a in eqn.inputs)
                  and all(isinstance(a, Lit) or a in bounded or graph.shapes[a] in (shape, ())
                          for a in eqn.inputs))
            if not ok:
                leaves.add(node)
                continue
            eqns.append(k)
            stack.extend(a for a in eqn.inputs if not isinstance(a, Lit) and a in bounded)
        return leaves, sorted(eqns)

    candidates = {}
    for k, eqn in enumerate(graph.eqns):
        v = eqn.outputs[0]
        if v not in bounded or eqn.name not in ELEMENTWISE or len(eqn.outputs) != 1:
            continue
        leaves, eqns = walk(v)
        if len(leaves) != 1:
            continue
        nonlinear, products = 0, 0
        for j in eqns:
            e = graph.eqns[j]
            nb = sum(1 for a in e.inputs if not isinstance(a, Lit) and a in bounded)
            if e.name in ("mul", "div") and nb == 2:
                products += 1
            elif e.name == "div" and nb == 1 and _member(e.inputs[1], bounded):
                nonlinear += 1
            elif e.name not in _AFFINE and e.name not in ("mul", "div"):
                nonlinear += 1
        if products or nonlinear >= 2:
            candidates[v] = (next(iter(leaves)), eqns)
    fused, inside = {}, set()
    for v, (root, eqns) in candidates.items():
        users = consumers.get(v, [])
        inner = users and all(graph.eqns[u].outputs[0] in candidates
                              and candidates[graph.eqns[u].outputs[0]][0] == root
                              for u in users)
        if not inner or v in graph.outputs:
            fused[v] = (root, eqns)
            inside.update(eqns[:-1])
    return Regions(fused, frozenset(inside - {graph.producer[v] for v in fused}),
                   _softmax_shifts(graph, consumers))


def _softmax_shifts(graph: Graph, consumers: dict) -> frozenset:
    """``e = stop_gradient(.)`` in ``g = exp(x - e); g / broadcast(reduce_sum(g))`` with
    nothing else using ``x - e`` or ``g``: the result does not depend on ``e``."""
    out = set()
    name = lambda k: graph.eqns[k].name
    for k, eqn in enumerate(graph.eqns):
        if eqn.name != "stop_gradient":
            continue
        e = eqn.outputs[0]
        users = consumers.get(e, [])
        if len(users) != 1 or name(users[0]) != "sub" or graph.eqns[users[0]].inputs[1] != e:
            continue
        f = graph.eqns[users[0]].outputs[0]
        fu = consumers.get(f, [])
        if len(fu) != 1 or name(fu[0]) != "exp":
            continue
        g = graph.eqns[fu[0]].outputs[0]
        gu = sorted(consumers.get(g, []))
        if len(gu) != 2 or {name(j) for j in gu} != {"reduce_sum", "div"}:
            continue
        red = next(j for j in gu if name(j) == "reduce_sum")
        div = next(j for j in gu if name(j) == "div")
        if graph.eqns[div].inputs[0] != g:
            continue
        node, chain = graph.eqns[red].outputs[0], consumers.get(graph.eqns[red].outputs[0], [])
        while len(chain) == 1 and name(chain[0]) in ("broadcast_in_dim", "reshape"):
            node = graph.eqns[chain[0]].outputs[0]
            chain = consumers.get(node, [])
        if chain == [div] and graph.eqns[div].inputs[1] == node:
            out.add(e)
    return frozenset(out)


def region_fn(graph: Graph, env: dict, root: int, eqns: list, out: int):
    """The fused region as a function of its root's value (constants read from ``env``)."""

    def g(t):
        local = {root: t}
        for k in eqns:
            eqn = graph.eqns[k]
            vals = [local[a] if (not isinstance(a, Lit) and a in local) else read(env, a)
                    for a in eqn.inputs]
            local.update(zip(eqn.outputs, evaluate(eqn, vals)))
        return local[out]

    return g
