"""Linear coefficients on a convolution's receptive field ("patches"), for CROWN's passes.

A backward pass from one neuron of a convolutional layer carries coefficients that are zero
outside the neuron's receptive field: a ReLU neuron of the second 4x4/2 convolution of a
28x28 CNN reaches 4x4x16 = 256 of the 14x14x16 = 3,136 entries of the first layer's output.
Dense rows ``[rows, b, H, W, C]`` spend memory traffic and convolution work on the zeros;
``Patches`` keeps a row's window only: ``values [rows, b, ph, pw, C]`` whose corner sits at
``origin [rows, b, 2]`` (row, column of the node's spatial axes; it may lie outside the node,
entries outside are kept at zero). auto_LiRPA's patches mode (Xu et al. 2020, "Automatic
Perturbation Analysis for Scalable Certified Robustness and Beyond", Appendix: convolution
coefficients as patches) is the same idea.

The steps a patch survives (``crown.backward`` densifies it at any other primitive):

* a convolution (NHWC, no input dilation or batch groups, the kernel constant): the window
  grows to ``((ph - 1) * s + (k - 1) * d + 1)`` and its values are the transposed convolution
  of the patch (the VALID convolution's ``vjp``, on robustjax's oneDNN kernels where they run);
  ``origin' = origin * s - pad``;
* entrywise affine steps (``x + c``, ``x * c``, ``x / c``, ``-x``, a copy): the slope and the
  offset, gathered on the window;
* a ReLU's relaxation and the concretisation over the input box: the slopes, offsets and
  box, gathered on the window (zero outside the node).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from robustjax import kernels

_NHWC = (0, 3, 1, 2)
# Primitives that act entry by entry (output shape = bounded input's shape) and are affine in
# the bounded input: ``f(x) = slope * x + offset``, ``offset = f(0)``, the slope from a ``jvp``.
ENTRYWISE = frozenset({"add", "add_any", "sub", "neg", "mul", "div", "convert_element_type",
                       "copy", "copy_p", "stop_gradient"})


class Patches(NamedTuple):
    """Rows of coefficients that are zero outside a ``ph x pw`` window of a ``[b, H, W, C]``
    node: ``values [rows, b, ph, pw, C]`` with their corner at ``origin [rows, b, 2]``;
    ``node``: the node's shape ``(b, H, W, C)`` (static)."""

    values: jax.Array
    origin: jax.Array
    node: tuple

    @property
    def rows(self) -> int:
        return self.values.shape[0]

    def concatenate(self, other: "Patches") -> "Patches":
        return Patches(jnp.concatenate([self.values, other.values]),
                       jnp.concatenate([self.origin, other.origin]), self.node)

    def with_values(self, values) -> "Patches":
        return Patches(values, self.origin, self.node)


def one_hot(idx, shape) -> Patches:
    """The rows ``one_hot(idx)`` of a ``[b, H, W, C]`` node as 1x1 patches; ``idx [rows, b]``
    indexes one example's flattened entries; ``idx == H * W * C`` is a zero row."""
    _, h, w, c = shape
    n = h * w * c
    values = jax.nn.one_hot(idx % c, c, dtype=jnp.float32) * (idx < n)[..., None]
    origin = jnp.stack([idx // (w * c), (idx // c) % w], axis=-1).astype(jnp.int32)
    return Patches(values[:, :, None, None, :], jnp.minimum(origin, jnp.array([h - 1, w - 1])),
                   tuple(shape))


def _positions(p: Patches):
    """Row and column indices ``[rows, b, ph]``, ``[rows, b, pw]`` of every window; those
    outside the node are moved to ``H`` / ``W`` (JAX wraps negative indices, and ``fill`` /
    ``drop`` act on indices past the end only)."""
    _, h, w, _ = p.node
    ph, pw = p.values.shape[2:4]
    ys = p.origin[..., 0, None] + jnp.arange(ph)
    xs = p.origin[..., 1, None] + jnp.arange(pw)
    return jnp.where(ys < 0, h, ys), jnp.where(xs < 0, w, xs)


def valid(p: Patches):
    """``[rows, b, ph, pw, 1]``: 1 where the window lies inside the node, else 0."""
    _, h, w, _ = p.node
    ys, xs = _positions(p)
    vy, vx = (ys < h).astype(jnp.float32), (xs < w).astype(jnp.float32)
    return (vy[..., :, None] * vx[..., None, :])[..., None]


def window(p: Patches, full):
    """``full`` (broadcastable to the node's shape) on every row's window: ``[rows, b, ph,
    pw, C]``, zero outside the node."""
    full = jnp.broadcast_to(full, p.node)
    ys, xs = _positions(p)
    rows, b = p.origin.shape[:2]
    bi = jnp.arange(b)[None, :, None, None]
    return full.at[bi, ys[..., :, None], xs[..., None, :]].get(mode="fill", fill_value=0.0)


def dense(p: Patches):
    """The rows as dense coefficients ``[rows, b, H, W, C]``."""
    rows, b = p.origin.shape[:2]
    ys, xs = _positions(p)
    ri = jnp.arange(rows)[:, None, None, None]
    bi = jnp.arange(b)[None, :, None, None]
    out = jnp.zeros((rows, *p.node), p.values.dtype)
    return out.at[ri, bi, ys[..., :, None], xs[..., None, :]].add(p.values, mode="drop")


def grown_window(p: Patches, geometry) -> tuple[int, int]:
    """The window ``(ph', pw')`` of ``p`` carried back through a convolution of
    ``geometry`` (``conv_geometry``)."""
    strides, _, dilation, size = geometry
    return tuple((n - 1) * s + (k - 1) * d + 1
                 for n, s, k, d in zip(p.values.shape[2:4], strides, size, dilation))


def worth_it(win, node) -> bool:
    """Whether a window ``(ph, pw)`` is smaller than the node's spatial extent (else dense
    rows are cheaper)."""
    return win[0] * win[1] < node[1] * node[2]


def conv_geometry(eqn, lhs, rhs):
    """``(strides, padding, dilation, kernel spatial size)`` of a convolution whose patch can
    be transposed, or None."""
    p = eqn.params
    dn = p["dimension_numbers"]
    if (lhs.ndim != 4 or tuple(dn.lhs_spec) != _NHWC or tuple(dn.out_spec) != _NHWC
            or tuple(p["lhs_dilation"]) != (1, 1) or p["batch_group_count"] != 1):
        return None
    size = tuple(rhs.shape[i] for i in dn.rhs_spec[2:])
    return tuple(p["window_strides"]), tuple(tuple(q) for q in p["padding"]), \
        tuple(p["rhs_dilation"]), size


def conv_transpose(p: Patches, eqn, rhs, in_shape, geometry) -> Patches:
    """The patch carried back through ``lhs -> conv(lhs, rhs)`` (``in_shape``: lhs's shape)."""
    strides, padding = geometry[:2]
    rows, b = p.values.shape[:2]
    win = grown_window(p, geometry)
    params = dict(eqn.prim.get_bind_params(eqn.params))
    params["padding"] = ((0, 0), (0, 0))
    zeros = jnp.zeros((rows * b, *win, in_shape[3]), jnp.float32)
    _, vjp = jax.vjp(lambda z: kernels.bind(z, rhs, **params), zeros)
    (ct,) = vjp(p.values.reshape(rows * b, *p.values.shape[2:]))
    origin = p.origin * jnp.array(strides) - jnp.array([padding[0][0], padding[1][0]])
    out = Patches(ct.reshape(rows, b, *ct.shape[1:]), origin.astype(jnp.int32), tuple(in_shape))
    # entries on the padding belong to no neuron: zero them (the L2 ball reads |A|)
    return out.with_values(out.values * valid(out))


def entrywise_slope(f, zeros, i):
    """The slope of an entrywise affine ``f`` in its ``i``-th bounded input (a ``jvp``:
    exact, where ``f(1) - f(0)`` would round)."""
    tangents = [jnp.zeros_like(z) for z in zeros]
    tangents[i] = jnp.ones_like(zeros[i])
    return jax.jvp(f, zeros, tangents)[1]
