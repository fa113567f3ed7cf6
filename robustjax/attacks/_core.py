"""Shared pieces of every attack: the result type, losses, projections and steps.

Conventions (see ``robustjax.types``): images ``x`` float32 NHWC in [0, 1], labels int32 [b],
logits float32 [b, k]. Every function here is per example: norms, losses and eps are [b] (a
scalar eps broadcasts). Norms are named ``"linf"``, ``"l2"``, ``"l1"``.

Losses are written so that the attacker always *maximises* them: for an untargeted attack the
label is the true class and a larger value is more adversarial; with ``targeted=True`` the
label is the target class and the sign is flipped, so larger still means more adversarial.

An attack step is an ``optax.GradientTransformation`` (optax, Babuschkin et al. 2020):
``steepest_ascent`` maps a gradient to the step-size-scaled steepest-ascent direction of the
threat model's norm and ``project_onto_threat`` maps the update back into the eps ball and the
[0, 1] box, so PGD is ``optax.chain(steepest_ascent(...), project_onto_threat(...))``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax.types import check_batch

Array = jax.Array
NORMS = ("linf", "l2", "l1")


class AttackResult(NamedTuple):
    """What every attack returns, per example.

    Attributes:
      x_adv: [b, H, W, C] float32 adversarial images in [0, 1].
      success: [b] bool; misclassified (untargeted) or predicted == target (targeted).
      loss: [b] float32 final loss or margin of ``x_adv`` (the attack's own objective).
      norm: [b] float32 norm of ``x_adv - x`` in the attack's norm.
      queries: [b] int32 forward passes (score-based) or gradient evaluations (white-box).
    """

    x_adv: Array
    success: Array
    loss: Array
    norm: Array
    queries: Array


# ----------------------------------------------------------------------------------- losses


def _true_and_best_other(logits: Array, y: Array) -> tuple[Array, Array]:
    """``z_y`` and ``max_{j != y} z_j``, each [b]."""
    k = logits.shape[-1]
    onehot = jax.nn.one_hot(y, k, dtype=bool)
    z_y = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
    return z_y, other


def cross_entropy(logits: Array, y: Array, targeted: bool = False) -> Array:
    """Softmax cross-entropy [b]; negated when ``targeted`` (``y`` is then the target)."""
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), y[:, None], axis=-1)[:, 0]
    return -ce if targeted else ce


def margin(logits: Array, y: Array, targeted: bool = False, kappa: float = math.inf) -> Array:
    """C&W margin (Carlini & Wagner 2017, f6) [b], capped at ``kappa``.

    Untargeted: ``min(max_{j != y} z_j - z_y, kappa)``; targeted (``y`` = target):
    ``min(z_y - max_{j != y} z_j, kappa)``. Positive means the attack has succeeded.
    """
    z_y, other = _true_and_best_other(logits, y)
    value = z_y - other if targeted else other - z_y
    return jnp.minimum(value, kappa)


def dlr(logits: Array, y: Array, targeted: bool = False) -> Array:
    """Difference of logits ratio (Croce & Hein 2020, eq. 5) [b], shift and scale invariant.

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi`` sorted
    decreasingly (needs >= 3 classes). Targeted (``y`` = target ``t``):
    ``(z_t - max_{i != t} z_i) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``, the paper's targeted
    DLR (eq. 6) with the best other class in place of the unknown true label (>= 4 classes).
    Negating the untargeted form instead would be flat (ratio -1) whenever ``t`` is third.
    For APGD-T's version with the true label see ``dlr_targeted``.
    """
    need = 4 if targeted else 3
    if logits.shape[-1] < need:
        raise ValueError(f"{'targeted ' if targeted else ''}DLR needs at least {need} classes, "
                         f"got logits of shape {logits.shape}")
    z_sorted = jnp.sort(logits, axis=-1)
    z_y, other = _true_and_best_other(logits, y)
    if targeted:
        scale = z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12
        return (z_y - other) / scale
    return -(z_y - other) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_targeted(logits: Array, y: Array, target: Array) -> Array:
    """Targeted DLR of APGD-T (Croce & Hein 2020, eq. 6) [b]; ``y`` true, ``target`` wanted.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``; needs >= 4 classes.
    """
    if logits.shape[-1] < 4:
        raise ValueError(f"targeted DLR needs at least 4 classes, got {logits.shape}")
    z_sorted = jnp.sort(logits, axis=-1)
    z_y = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    z_t = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
    scale = z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12
    return -(z_y - z_t) / scale


LOSSES = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return LOSSES[name]


def success_mask(logits: Array, y: Array, targeted: bool = False) -> Array:
    """[b] bool: ``argmax != y`` (untargeted) or ``argmax == y`` (targeted, y = target)."""
    pred = jnp.argmax(logits, axis=-1)
    return pred == y if targeted else pred != y


# ------------------------------------------------------------------------- norms and boxes


def _per_example(v: Array, x: Array) -> Array:
    """Broadcast a scalar or [b] value against [b, ...] ``x``."""
    v = jnp.asarray(v, dtype=x.dtype)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def lp_norm(delta: Array, norm: str) -> Array:
    """Per-example norm [b] of ``delta`` [b, ...]."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return jnp.max(jnp.abs(flat), axis=-1)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(flat * flat, axis=-1))
    if norm == "l1":
        return jnp.sum(jnp.abs(flat), axis=-1)
    raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")


def clip_to_box(x: Array, lo: float = 0.0, hi: float = 1.0) -> Array:
    return jnp.clip(x, lo, hi)


def project_linf(delta: Array, eps) -> Array:
    """Euclidean projection of ``delta`` [b, ...] onto the Linf ball of radius eps (scalar/[b])."""
    eps = _per_example(eps, delta)
    return jnp.clip(delta, -eps, eps)


def project_l2(delta: Array, eps) -> Array:
    """Euclidean projection onto the L2 ball: ``delta * min(1, eps / ||delta||_2)``."""
    n = _per_example(lp_norm(delta, "l2"), delta)
    eps = _per_example(eps, delta)
    return delta * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12))


def project_l1(delta: Array, eps) -> Array:
    """Exact Euclidean projection onto the L1 ball (Duchi et al. 2008, sorting algorithm)."""
    b = delta.shape[0]
    v = delta.reshape(b, -1)
    eps = jnp.broadcast_to(jnp.asarray(eps, v.dtype), (b,))
    u = jnp.abs(v)
    mu = -jnp.sort(-u, axis=-1)  # decreasing
    css = jnp.cumsum(mu, axis=-1)
    j = jnp.arange(1, v.shape[1] + 1, dtype=v.dtype)
    cond = mu - (css - eps[:, None]) / j > 0
    rho = jnp.maximum(jnp.sum(cond, axis=-1), 1)  # number of kept coordinates
    theta = (jnp.take_along_axis(css, (rho - 1)[:, None], axis=-1)[:, 0] - eps) / rho
    w = jnp.sign(v) * jnp.maximum(u - theta[:, None], 0.0)
    inside = jnp.sum(u, axis=-1) <= eps
    return jnp.where(inside[:, None], v, w).reshape(delta.shape)


def project_l1_box(delta: Array, x: Array, eps, iters: int = 40) -> Array:
    """Projection onto ``{d : ||d||_1 <= eps, 0 <= x + d <= 1}`` (the set of APGD-L1).

    The solution is ``sign(v) * clip(|v| - theta, 0, u)`` with ``u`` the room left in the box in
    the direction of ``v`` and the smallest ``theta >= 0`` meeting the budget; ``theta`` is found
    by bisection (``iters`` halvings of [0, max|v|]; the feasible end is returned).
    """
    b = delta.shape[0]
    v = delta.reshape(b, -1)
    xf = x.reshape(b, -1)
    eps = jnp.broadcast_to(jnp.asarray(eps, v.dtype), (b,))
    room = jnp.where(v > 0, 1.0 - xf, xf)
    a = jnp.abs(v)

    def total(theta):
        return jnp.sum(jnp.clip(a - theta[:, None], 0.0, room), axis=-1)

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        ok = total(mid) <= eps
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    lo = jnp.zeros((b,), v.dtype)
    hi = jnp.max(a, axis=-1)
    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    theta = jnp.where(total(lo) <= eps, lo, hi)
    w = jnp.sign(v) * jnp.clip(a - theta[:, None], 0.0, room)
    # float32 rounding can leave the sum a few ulps above eps: shrink (stays in the box).
    n = jnp.sum(jnp.abs(w), axis=-1)
    w = w * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-30))[:, None]
    return w.reshape(delta.shape)


def project(x_adv: Array, x: Array, eps, norm: str) -> Array:
    """Map ``x_adv`` into ``{x + d : ||d|| <= eps} ∩ [0, 1]^n``, per example.

    Linf and L1 are exact Euclidean projections onto the intersection; L2 projects onto the ball
    then clips to the box (feasible, and what PGD-L2/APGD-L2 reference code does).
    """
    delta = x_adv - x
    if norm == "linf":
        delta = project_linf(delta, eps)
    elif norm == "l2":
        delta = project_l2(delta, eps)
    elif norm == "l1":
        return x + project_l1_box(delta, x, eps)
    else:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    return clip_to_box(x + delta)


# ------------------------------------------------------------------------------ directions


def l1_topk(num_features: int, sparsity: float) -> int:
    """How many coordinates a sparse L1 step moves: ``ceil((1 - sparsity) * n)``, at least 1."""
    return max(1, int(math.ceil((1.0 - sparsity) * num_features)))


def steepest_direction(grad: Array, norm: str, *, l1_sparsity: float = 0.99,
                       x_adv: Optional[Array] = None) -> Array:
    """Unit-norm steepest-ascent direction for ``grad`` [b, ...] under ``norm``.

    Linf: ``sign(g)``; L2: ``g / ||g||_2``; L1: sparse L1 descent (Tramer & Boneh 2019, SLIDE):
    ``sign(g)`` on the ``ceil((1 - l1_sparsity) n)`` largest ``|g_i|`` divided by their count
    (unit L1 norm). With ``x_adv`` given, L1 ignores coordinates already at the box edge that
    the gradient pushes outwards (as SLIDE and APGD-L1 do).
    """
    b = grad.shape[0]
    if norm == "linf":
        return jnp.sign(grad)
    if norm == "l2":
        n = _per_example(lp_norm(grad, "l2"), grad)
        return grad / jnp.maximum(n, 1e-12)
    if norm == "l1":
        g = grad.reshape(b, -1)
        mag = jnp.abs(g)
        if x_adv is not None:
            xf = x_adv.reshape(b, -1)
            stuck = ((xf <= 0.0) & (g < 0)) | ((xf >= 1.0) & (g > 0))
            mag = jnp.where(stuck, 0.0, mag)
        k = l1_topk(g.shape[1], l1_sparsity)
        kth = jax.lax.top_k(mag, k)[0][:, -1:]
        mask = (mag >= kth) & (mag > 0)
        count = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1)
        return (jnp.where(mask, jnp.sign(g), 0.0) / count).reshape(grad.shape)
    raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")


# ----------------------------------------------------------------------- optax-style steps


def steepest_ascent(step_size, norm: str, l1_sparsity: float = 0.99
                    ) -> optax.GradientTransformation:
    """Gradient -> ``step_size * steepest_direction(gradient)`` (an ascent update).

    ``step_size`` is a scalar or [b]. Unlike optax optimisers the update points *up* the loss:
    apply it with ``optax.apply_updates`` to maximise.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        d = steepest_direction(updates, norm, l1_sparsity=l1_sparsity, x_adv=params)
        return _per_example(step_size, d) * d, state

    return optax.GradientTransformation(init_fn, update_fn)


def project_onto_threat(x: Array, eps, norm: str) -> optax.GradientTransformation:
    """Update -> the update that lands ``params + update`` on ``project(., x, eps, norm)``."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("project_onto_threat needs params (the current x_adv)")
        return project(params + updates, x, eps, norm) - params, state

    return optax.GradientTransformation(init_fn, update_fn)


def random_start(key: Array, x: Array, eps, norm: str) -> Array:
    """A uniform-ish random point in the threat set around ``x`` (inside the box).

    Linf: uniform in the cube (Madry et al. 2018). L2: a Gaussian direction with radius
    ``eps * U^(1/n)`` (uniform in the ball). L1: a Laplace direction scaled to radius
    ``eps * U^(1/n)``. Then projected onto the box (and ball) as the attack's projection does.
    """
    b = x.shape[0]
    n = int(np.prod(x.shape[1:]))
    k_dir, k_rad = jax.random.split(key)
    if norm == "linf":
        delta = jax.random.uniform(k_dir, x.shape, x.dtype, -1.0, 1.0) * _per_example(eps, x)
    elif norm in ("l2", "l1"):
        sample = jax.random.normal if norm == "l2" else jax.random.laplace
        d = sample(k_dir, x.shape, x.dtype)
        d = d / _per_example(jnp.maximum(lp_norm(d, norm), 1e-12), x)
        r = jax.random.uniform(k_rad, (b,), x.dtype) ** (1.0 / n)
        delta = d * _per_example(r * jnp.broadcast_to(jnp.asarray(eps, x.dtype), (b,)), x)
    else:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    return project(x + delta, x, eps, norm)


# ------------------------------------------------------------------------------ validation


def check_norm(norm: str, allowed=NORMS) -> None:
    if norm not in allowed:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(allowed)}")


def check_attack_inputs(x, y, eps=None) -> None:
    """Validate ``x`` (NHWC in [0, 1]) and ``y`` (int [b]); value checks only when concrete.

    Concrete inputs go through ``robustjax.types.check_batch``; under ``jit`` only shapes and
    dtypes can be checked (``check_batch`` converts to numpy, which tracers refuse).
    """
    try:
        check_batch(x, y)
        return_shapes_only = False
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        # traced (jit, or a loop body where even constants become tracers)
        return_shapes_only = True
    if return_shapes_only:
        if x.ndim != 4:
            raise ValueError(f"x must be [batch, H, W, C] (NHWC), got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be floating point in [0, 1], got dtype {x.dtype}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must be int labels [{x.shape[0]}], got shape {y.shape}")
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise TypeError(f"y must be integer class indices, got dtype {y.dtype}")
    if eps is not None and not isinstance(eps, jax.core.Tracer):
        e = np.asarray(eps)  # a concrete eps (tracers were excluded above)
        if e.ndim > 1 or (e.ndim == 1 and e.shape[0] != np.shape(x)[0]):
            raise ValueError(f"eps must be a scalar or one value per example [{np.shape(x)[0]}],"
                             f" got shape {e.shape}")
        if np.any(e < 0) or not np.all(np.isfinite(e)):
            raise ValueError(f"eps must be finite and >= 0, got {e}")


def finish(apply_fn, params, x: Array, x_adv: Array, y: Array, loss_value, norm: str,
           queries, targeted: bool = False) -> AttackResult:
    """Build an ``AttackResult`` from a final ``x_adv`` (one extra forward pass for success).

    ``loss_value`` is a [b] array or a function ``logits -> [b]`` evaluated on ``x_adv``.
    """
    logits = apply_fn(params, x_adv)
    b = x.shape[0]
    if callable(loss_value):
        loss_value = loss_value(logits)
    return AttackResult(
        x_adv=x_adv,
        success=success_mask(logits, y, targeted),
        loss=jnp.asarray(loss_value, jnp.float32),
        norm=lp_norm(x_adv - x, norm).astype(jnp.float32),
        queries=jnp.broadcast_to(jnp.asarray(queries, jnp.int32), (b,)),
    )


# ------------------------------------------------------------------------------- loops

LOOPS = ("auto", "unroll", "fori", "python")


def loop_steps(body, carry, steps: int, loop: str = "auto"):
    """``for i in range(steps): carry = body(i, carry)`` with the loop structure a backend choice.

    ``"unroll"`` writes every step into the program (on XLA:CPU convolutions inside a while loop
    can lose their fast layout, see benchmarks/results/attacks_speed.md); ``"fori"`` uses
    ``lax.fori_loop`` (small programs, fast compiles; best on accelerators). ``"auto"`` unrolls
    on CPU up to ``AUTO_UNROLL_MAX`` steps and uses ``fori`` otherwise; ``"python"`` (a jitted
    step called from Python, only possible outside ``jit``: see ``gradient._iterate``) unrolls
    when traced.
    """
    if loop not in LOOPS:
        raise ValueError(f"unknown loop {loop!r}; valid: {', '.join(LOOPS)}")
    if loop == "python":  # under a trace a Python loop is an unrolled loop
        loop = "unroll"
    if loop == "auto":
        cpu = jax.default_backend() == "cpu"
        loop = "unroll" if (cpu and steps <= AUTO_UNROLL_MAX) else "fori"
    if loop == "unroll":
        for i in range(steps):
            carry = body(jnp.int32(i), carry)
        return carry
    return jax.lax.fori_loop(0, steps, body, carry)


AUTO_UNROLL_MAX = 20


def static_float(v) -> bool:
    """True when ``v`` is a concrete Python/numpy number (not a tracer), for config checks."""
    return isinstance(v, (int, float, np.floating, np.integer))
