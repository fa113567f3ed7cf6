"""Shared pieces of every attack: the result type, steepest-ascent steps, random starts, norm
checks and loop structure. The losses (``losses.py``) and norms and projections
(``projections.py``) have their own modules and are re-exported here.

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
import warnings
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax import entry, kernels

# losses and projections live in their own modules; re-exported here for the attacks
from robustjax.attacks.losses import (  # noqa: F401
    LOSSES,
    cross_entropy,
    dlr,
    dlr_targeted,
    get_loss,
    margin,
    success_mask,
)
from robustjax.attacks.projections import (  # noqa: F401
    NORMS,
    _per_example,
    clip_to_box,
    lp_norm,
    project,
    project_l1,
    project_l1_box,
    project_l2,
    project_linf,
)

Array = jax.Array


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


def redraw(params, j):
    """``params`` for the ``j``-th random draw of a randomized model (EOT).

    A randomized model in robustjax carries its key in its params (``DefendedParams(params,
    key)`` of ``robustjax.defenses.transforms``, ``wrappers.EOTParams``): the ``j``-th draw
    folds ``j`` into that key. A model whose params carry no key is deterministic and is
    returned unchanged.
    """
    key = getattr(params, "key", None)
    if key is None or not hasattr(params, "_replace"):
        return params
    return params._replace(key=jax.random.fold_in(key, j))


# ------------------------------------------------------------------------------ validation


def check_norm(norm: str, allowed=NORMS) -> None:
    if norm not in allowed:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(allowed)}")


class GradientMaskingWarning(UserWarning):
    """A gradient-based attack was run on a model whose gradients are not meaningful."""


def warn_if_not_differentiable(apply_fn) -> None:
    """Warn when ``apply_fn`` says its gradients are meaningless (``differentiable = False``,
    as a non-differentiable defense from ``robustjax.defenses.transforms`` does): a gradient
    attack on it is not an adaptive evaluation (Athalye et al. 2018)."""
    if getattr(apply_fn, "differentiable", True) is False:
        warnings.warn(
            f"the model {apply_fn!r} is not differentiable (its gradient is zero or undefined), "
            "so this gradient-based attack is not an adaptive evaluation and its robust "
            "accuracy is an overestimate. Attack robustjax.defenses.transforms.bpda(defended) "
            "(and eot(defended) for a randomized defense) instead.",
            GradientMaskingWarning, stacklevel=3)


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

    ``"unroll"`` writes every step into the program (XLA:CPU's own convolutions inside a while
    loop lose their fast layout, see benchmarks/results/attacks_speed.md); ``"fori"`` uses
    ``lax.fori_loop`` (small programs, fast compiles; best on accelerators, and on CPU with
    robustjax's oneDNN convolutions, which keep their speed inside loops). ``"auto"`` unrolls
    up to ``AUTO_UNROLL_MAX`` steps where :func:`unroll_is_faster` and uses ``fori`` otherwise;
    ``"python"`` (a jitted step called from Python, only possible outside ``jit``: see
    ``gradient._iterate``) unrolls when traced.
    """
    if loop not in LOOPS:
        raise ValueError(f"unknown loop {loop!r}; valid: {', '.join(LOOPS)}")
    if loop == "python":  # under a trace a Python loop is an unrolled loop
        loop = "unroll"
    if loop == "auto":
        loop = "unroll" if (unroll_is_faster() and steps <= AUTO_UNROLL_MAX) else "fori"
    if loop == "unroll":
        for i in range(steps):
            carry = body(jnp.int32(i), carry)
        return carry
    return jax.lax.fori_loop(0, steps, body, carry)


AUTO_UNROLL_MAX = 20


def unroll_is_faster() -> bool:
    """True on XLA:CPU with its own convolutions, where a loop's steps are best unrolled.

    PGD-10 measured 3-6x slower in ``lax.fori_loop`` than unrolled with XLA's convolutions, and
    as fast (CNN, ResNet-18, batch 16 and 128) with the oneDNN kernels, which compile faster.
    Inside an entry point (``robustjax.entry``) the answer comes from the convolutions the
    traced model actually runs; elsewhere from whether the kernels are switched on.
    """
    hint = entry.current_loop_hint()
    if hint is not None:
        return hint.unroll_is_faster
    return jax.default_backend() == "cpu" and not kernels.onednn_active()


def static_float(v) -> bool:
    """True when ``v`` is a concrete Python/numpy number (not a tracer), for config checks."""
    return isinstance(v, (int, float, np.floating, np.integer))
