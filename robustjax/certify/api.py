"""Certification entry points: output bounds, verified flags and verified accuracy.

``bounds(apply_fn, params, x, eps, method)`` bounds ``C @ apply_fn(params, x')`` over every
``x'`` in the Linf or L2 ball of radius ``eps`` around ``x`` intersected with [0, 1]. The model
is traced on a chunk of ``chunk_size`` examples and every pass works on the whole chunk at
once: the backward passes carry coefficients ``[rows, chunk, *node]`` for every example and
specification row (``crown.backward``); chunks run one after another (``lax.map``) to bound
memory. A model that moves the batch axis (``crown.batch_major`` is False) is traced on one
example and vmapped instead. With the margin specification
``C[j] = e_y - e_j`` the lower bounds are bounds on ``f_y - f_j`` directly, which is tighter
than subtracting logit bounds. Called eagerly, CROWN / Fast-Lin / alpha-CROWN bound only the
ReLU neurons that IBP leaves unstable (sparse intermediate bounds; a compiled IBP pre-pass,
``_sparse_rows``, fixes their number per ReLU input); under a caller's ``jit`` every neuron.

Methods (``METHODS``): ``ibp`` (Gowal et al. 2018; last affine layers elided into C),
``crown`` (Zhang et al. 2018), ``fastlin`` (Weng et al. 2018), ``crown_ibp`` (Zhang et al. 2020:
IBP intermediate bounds, CROWN for the output) and ``alpha_crown`` (Xu et al. 2021).

Example::

    ok = certify(model.apply_fn, model.params, x, y, eps=0.1, method="crown")  # bool [b]
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import entry
from robustjax.certify import crown
from robustjax.certify.crown import AlphaCrownConfig, InputSet
from robustjax.certify.ibp import input_interval
from robustjax.certify.interpreter import flatten

# method -> (intermediate bounds, relaxation of the output pass)
METHODS = {
    "ibp": ("ibp", None),
    "crown_ibp": ("ibp", "crown"),
    "crown": ("crown", "crown"),
    "fastlin": ("fastlin", "fastlin"),
    "alpha_crown": ("crown", "alpha"),
}
NORMS = ("linf", "l2")
# examples bounded together when ``chunk_size`` is None: the backward passes of CROWN's
# intermediate bounds hold coefficients per neuron and example (GBs per chunk of 16 on the
# default MNIST CNN), IBP-style passes hold intervals only
DEFAULT_CHUNK = {"ibp": 256, "crown_ibp": 16, "crown": 4, "fastlin": 4, "alpha_crown": 4}


def margin_spec(y: jax.Array, num_classes: int) -> jax.Array:
    """``C [b, k, k]`` with ``C[i, j] = e_{y_i} - e_j``: rows bound the margins f_y - f_j.

    The row ``j = y`` is zero (its margin is 0 and is ignored by ``certify``).
    """
    eye = jnp.eye(num_classes, dtype=jnp.float32)
    return eye[y][:, None, :] - eye[None, :, :]


def _chunk(graph, params_leaves, x, spec, eps, method, norm, alpha_config, upper, batched,
           sparse):
    """Bounds ``[b, s]`` for the examples ``x [b, ...]`` (specs ``[b, s, k]``) of one graph;
    ``sparse``: ``((node, rows), ...)`` for ``crown.forward`` or None (dense)."""
    intermediate, final = METHODS[method]
    inputs = InputSet(x, eps, norm, batched)
    args = [*params_leaves, input_interval(x, eps, norm)]
    env = crown.forward(graph, args, inputs, intermediate,
                        sparse=None if sparse is None else dict(sparse))
    out = graph.outputs[0]
    spec = jnp.swapaxes(spec, 0, 1)  # rows first: [s, b, k]
    if final == "alpha":
        lower, up = crown.alpha_crown(graph, env, out, spec, inputs, alpha_config)
    else:
        lower, up = crown.backward(graph, env, out, spec, inputs, final, upper=upper)
        up = up if upper else jnp.full_like(lower, jnp.inf)
    return (lower.T, up.T) if batched else (lower[None], up[None])  # [b, s]


def _trace(apply_fn, params, x, batch: int):
    shape = jax.ShapeDtypeStruct((batch, *x.shape[1:]), jnp.float32)
    param_shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(jnp.shape(p), p.dtype), params)
    return flatten(apply_fn, param_shapes, shape)


def _graph(apply_fn, params, x, chunk: int):
    """The graph traced on a chunk and whether it is ``crown.batch_major`` (else it is
    traced on one example, to be vmapped)."""
    graph = _trace(apply_fn, params, x, chunk)
    batched = crown.batch_major(graph, _trace(apply_fn, params, x, chunk + 1), chunk)
    return (graph, True) if batched else (_trace(apply_fn, params, x, 1), False)


def _over_chunks(run, data: tuple, chunk: int, batched: bool):
    """``run(*arrays [chunk, ...])`` (pytree of ``[chunk, ...]``) over the examples of
    ``data`` ``[b, ...]``: one chunk after another (``lax.map``); vmapped over single examples
    when the graph is not batched. Returns the pytree of ``[b, ...]``."""
    b = data[0].shape[0]
    if not batched:  # one example at a time, vmapped within a chunk
        fn = lambda a: jax.tree.map(lambda t: t[0], run(*(d[None] for d in a)))  # noqa: E731
        if chunk >= b:
            return jax.vmap(fn)(data)
        return jax.lax.map(fn, data, batch_size=chunk)
    if chunk == b:
        return run(*data)
    pad = -b % chunk  # repeat the last example to fill the last chunk; dropped below
    split = lambda a: a.reshape((-1, chunk, *a.shape[1:]))  # noqa: E731
    data = tuple(split(jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])) for a in data)
    out = jax.lax.map(lambda a: run(*a), data)
    return jax.tree.map(lambda t: t.reshape((-1, *t.shape[2:]))[:b], out)


@entry.model_entry(static=("method", "norm", "chunk_size"), accelerate=False)
def _unstable_counts(apply_fn, params, x, eps, method: str, norm: str,
                     chunk_size: Optional[int]):
    """``{node: [b, 2]}``: per example, the unstable neurons of each ReLU input under plain
    IBP (``crown.unstable_counts``) and the neurons per example, for the sparse intermediate
    bounds. An entry point of its own, so that bad inputs fail its checks clearly."""
    chunk = max(1, min(chunk_size or DEFAULT_CHUNK[method], x.shape[0]))
    graph, batched = _graph(apply_fn, params, x, chunk)
    leaves, eps = jax.tree.leaves(params), jnp.asarray(eps, jnp.float32)

    def run(a):
        return crown.unstable_counts(graph, [*leaves, input_interval(a, eps, norm)],
                                     InputSet(a, eps, norm, batched))

    counts = _over_chunks(run, (x.astype(jnp.float32),), chunk, batched)
    sizes = {node: math.prod(graph.shapes[node][1:] if batched else graph.shapes[node])
             for node in counts}
    return {node: jnp.stack([c, jnp.full_like(c, sizes[node])], axis=1)
            for node, c in counts.items()}


def _sparse_rows(apply_fn, params, x, eps, method, norm, chunk_size, alpha_config):
    """Static rows ``((node, K), ...)`` of CROWN's sparse intermediate bounds for concrete
    inputs: per ReLU input, the most unstable neurons of an example rounded up by ``_bucket``
    (new data rarely changes the program), at most the node's size. None (dense, as
    under a caller's jit) where the inputs are traced or the method has no CROWN
    intermediate bounds, or alpha-CROWN optimises their slopes (one per dense row)."""
    if (entry.is_traced((params, x, eps)) or METHODS.get(method, ("ibp",))[0] == "ibp"
            or norm not in NORMS or (method == "alpha_crown" and alpha_config.intermediate)):
        return None
    counts = jax.device_get(_unstable_counts(apply_fn, params, x, eps, method, norm,
                                             chunk_size))
    return tuple(sorted((node, _bucket(int(c[:, 0].max()), int(c[0, 1])))
                        for node, c in counts.items()))


def _bucket(count: int, size: int) -> int:
    """``count`` rounded up to a power of two or 1.5 times one (1, 2, 3, 4, 6, 8, 12, ...; 0
    stays 0), at most ``size``: a handful of programs over all data, and at most 1.5x the rows
    needed (about half a layer's neurons are unstable, which a power of two alone rounds up to
    the whole layer: 1,503 of 3,136 -> 2,048 rows, now 1,536)."""
    if not count:
        return 0
    power = 1 << (count - 1).bit_length()
    return min(size, power * 3 // 4 if power >= 4 and count <= power * 3 // 4 else power)


def bounds(apply_fn, params, x: jax.Array, eps, method: str = "crown", norm: str = "linf",
           spec: Optional[jax.Array] = None, chunk_size: Optional[int] = None,
           alpha_config: AlphaCrownConfig = AlphaCrownConfig(), upper: bool = True,
           sparse: bool = True):
    """Lower and upper bounds ``[b, s]`` of ``spec @ logits`` over the perturbation set.

    Args:
      apply_fn, params: the model (``apply_fn(params, x) -> logits [b, k]``).
      x: float32 ``[b, H, W, C]`` in [0, 1], the centres.
      eps: radius (pixel units), a scalar.
      method: one of ``METHODS``.
      norm: ``"linf"`` or ``"l2"``.
      spec: ``[b, s, k]`` specification; default the identity (bounds of the logits).
      chunk_size: examples bounded together (memory of CROWN grows with the chunk and the
        layer sizes: its intermediate passes carry ``[neurons, chunk, *node]`` coefficients);
        None takes ``DEFAULT_CHUNK[method]``.
      upper: False skips the output pass's upper bound (returned as +inf): half the
        work when only margins' lower bounds are needed (certification, training).
      sparse: called eagerly, CROWN / Fast-Lin / alpha-CROWN bound only the ReLU neurons
        that IBP leaves unstable (sparse intermediate bounds, ``crown`` module docstring; a
        compiled IBP pre-pass sizes them); False, or under a caller's ``jit``, every neuron
        (dense). A stable neuron's relaxation is exact either way; it keeps its (sound)
        reference interval.
    """
    rows = (_sparse_rows(apply_fn, params, x, eps, method, norm, chunk_size, alpha_config)
            if sparse else None)
    return _bounds(apply_fn, params, x, eps, method, norm, spec, chunk_size, alpha_config,
                   upper, rows)


@entry.model_entry(static=("method", "norm", "chunk_size", "alpha_config", "upper", "rows"),
                   accelerate=False, per_shard=True)
def _bounds(apply_fn, params, x: jax.Array, eps, method: str = "crown", norm: str = "linf",
            spec: Optional[jax.Array] = None, chunk_size: Optional[int] = None,
            alpha_config: AlphaCrownConfig = AlphaCrownConfig(), upper: bool = True,
            rows: Optional[tuple] = None):
    """The compiled program of ``bounds``; ``rows``: ``_sparse_rows``' static rows of the
    sparse intermediate bounds, None for dense."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [batch, H, W, C], got shape {x.shape}")
    b = x.shape[0]
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK[method]
    chunk = max(1, min(chunk_size, b))
    graph, batched = _graph(apply_fn, params, x, chunk)
    if len(graph.outputs) != 1:
        raise ValueError(f"apply_fn must return one array of logits, got {len(graph.outputs)}")
    k = graph.shapes[graph.outputs[0]][-1] if isinstance(graph.outputs[0], int) else None
    if spec is None:
        spec = jnp.broadcast_to(jnp.eye(k, dtype=jnp.float32), (x.shape[0], k, k))
    if spec.ndim != 3 or spec.shape[0] != x.shape[0] or spec.shape[2] != k:
        raise ValueError(f"spec must have shape [batch={x.shape[0]}, s, classes={k}], got "
                         f"{spec.shape}")
    if not isinstance(eps, jax.core.Tracer) and float(np.min(np.asarray(eps))) < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    leaves = jax.tree.leaves(params)
    eps = jnp.asarray(eps, jnp.float32)
    run = functools.partial(_chunk, graph, leaves, eps=eps, method=method, norm=norm,
                            alpha_config=alpha_config, upper=upper, batched=batched,
                            sparse=rows)
    return _over_chunks(run, (x.astype(jnp.float32), spec.astype(jnp.float32)), chunk,
                        batched)

def robust_condition(lower: jax.Array, upper: jax.Array, y: jax.Array) -> jax.Array:
    """The survey's eq. (5): ``lower_y > upper_j`` for all ``j != y``; bool ``[b]``.

    ``lower, upper``: bounds ``[b, k]`` of the logits over the perturbation set; ``y``: int
    ``[b]``. (Gupta & Passerone, eq. 5, from Gowal et al. 2018.)
    """
    k = lower.shape[-1]
    low_y = jnp.take_along_axis(lower, y[:, None], axis=1)
    others = jnp.where(jax.nn.one_hot(y, k, dtype=bool), -jnp.inf, upper)
    return jnp.all(low_y > others, axis=-1)


def margin_condition(margin_lower: jax.Array, y: jax.Array) -> jax.Array:
    """Eq. (5) on margins: ``lower(f_y - f_j) > 0`` for all ``j != y``; bool ``[b]``."""
    k = margin_lower.shape[-1]
    masked = jnp.where(jax.nn.one_hot(y, k, dtype=bool), jnp.inf, margin_lower)
    return jnp.all(masked > 0, axis=-1)


def certify(apply_fn, params, x: jax.Array, y: jax.Array, eps, method: str = "crown",
            norm: str = "linf", chunk_size: Optional[int] = None,
            alpha_config: AlphaCrownConfig = AlphaCrownConfig(),
            sparse: bool = True) -> jax.Array:
    """Per-example verified flags, bool ``[b]``: every margin ``f_y - f_j`` is provably
    positive over the ball (implies the clean prediction is correct). Jittable with
    ``method``, ``norm`` and ``chunk_size`` static; ``sparse`` as for ``bounds``."""
    rows = (_sparse_rows(apply_fn, params, x, eps, method, norm, chunk_size, alpha_config)
            if sparse else None)
    return _certify(apply_fn, params, x, y, eps, method, norm, chunk_size, alpha_config, rows)


@entry.model_entry(static=("method", "norm", "chunk_size", "alpha_config", "rows"),
                   labels="y", accelerate=False, per_shard=True)
def _certify(apply_fn, params, x: jax.Array, y: jax.Array, eps, method: str = "crown",
             norm: str = "linf", chunk_size: Optional[int] = None,
             alpha_config: AlphaCrownConfig = AlphaCrownConfig(),
             rows: Optional[tuple] = None) -> jax.Array:
    k = jax.eval_shape(apply_fn, params, x[:1]).shape[-1]
    lower, _ = _bounds(apply_fn, params, x, eps, method, norm, margin_spec(y, k), chunk_size,
                       alpha_config, upper=False, rows=rows)
    return margin_condition(lower, y)


def verified_accuracy(apply_fn, params, x, y, eps, method: str = "crown",
                      norm: str = "linf", **kwargs) -> float:
    """Fraction of examples whose label is certified over the ball (higher is better)."""
    return float(jnp.mean(certify(apply_fn, params, x, y, eps, method, norm, **kwargs)))
