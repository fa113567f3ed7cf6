"""Boundary-based robustness (survey Table 3): empirical boundary distance 1 and 2.

Both measure, per example, how far the input must move in [0, 1] pixel units before the
prediction differs from the label ``y``. An example misclassified already has distance 0.
Searches that never flip within their range return the range's end with ``found = False``
(a censored value, a lower bound of the true distance).

**EBD-1** (random directions; AISafety's ``BD``, after He, Li & Song, ICLR 2018, "Decision
boundary analysis of adversarial examples"). Draw ``m`` random orthonormal directions ``u_j``
(QR of a Gaussian matrix; the same directions for the whole batch, as AISafety) and scale
them by ``sqrt(D)`` (D = H*W*C) so one unit along a direction changes pixels by 1 in RMS. For
each direction, walk the grid ``t = 0, s, 2s, ..., max_distance`` (s = max_distance /
num_steps) on ``clip(x + t sqrt(D) u_j, 0, 1)`` and keep the first ``t`` whose prediction is
not ``y``. Choice: the distance of an example is the **minimum** over directions (the nearest
boundary found, a "boundary distance"); AISafety's code returns the maximum ("worst boundary
distance") — ``reduction="max"`` gives that. In L2 terms the distance is ``t * sqrt(D)``.
Defaults are AISafety's: 10 directions, steps of 2/255 up to 126/255.

**EBD-2** (gradient direction; AISafety). Run BIM (Kurakin et al. 2017) without a projection
ball: ``x <- clip(x + step_size * sign(grad_x CE(f(x), y)), 0, 1)``, and count the steps
until the prediction is not ``y``. The distance is ``steps * step_size``: an upper bound of
the L-infinity distance of the example found. The loop is part of the metric's definition,
so it lives here (not in ``robustjax.attacks``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from robustjax import validation
from robustjax.metrics.accumulators import Average

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EBD1Config:
    """Empirical boundary distance 1 (AISafety ``BD`` defaults: 10 directions, 2/255 steps).

    ``reduction``: ``"min"`` over directions (default) or ``"max"`` (AISafety's code).
    """

    num_directions: int = 10
    num_steps: int = 63
    max_distance: float = 126.0 / 255.0
    reduction: str = "min"


@dataclasses.dataclass(frozen=True)
class EBD2Config:
    """Empirical boundary distance 2: BIM steps of ``step_size`` until the prediction flips."""

    step_size: float = 1.0 / 255.0
    max_steps: int = 100


class BoundaryResult(NamedTuple):
    """``distance``: float32 ``[b]`` in pixel units; ``found``: bool ``[b]`` (False = censored);
    ``steps``: int32 ``[b]`` grid index (EBD-1) or BIM steps (EBD-2)."""

    distance: Array
    found: Array
    steps: Array


def orthogonal_directions(key: Array, shape: tuple[int, ...], num: int) -> Array:
    """``num`` orthonormal directions of per-image ``shape``, scaled by ``sqrt(D)``.

    Returns float32 ``[num, *shape]``; each direction has RMS 1 per element.
    """
    d = int(np.prod(shape))
    if num > d:
        raise ValueError(f"cannot draw {num} orthogonal directions in dimension {d}")
    q, _ = jnp.linalg.qr(jax.random.normal(key, (d, num), jnp.float32))
    return (q.T * jnp.sqrt(jnp.float32(d))).reshape((num,) + tuple(shape))


def ebd1(apply_fn, params, x: Array, y: Array, key: Array,
         config: EBD1Config = EBD1Config()) -> BoundaryResult:
    """Empirical boundary distance 1 per example (see the module docstring).

    ``x`` float32 NHWC in [0, 1], ``y`` int32 ``[b]``. Costs ``num_directions * (num_steps +
    1)`` forward passes of the batch. Jit with ``config`` static.
    """
    if config.reduction not in ("min", "max"):
        raise validation.InputError(f"reduction must be 'min' or 'max', got "
                                    f"{config.reduction!r}")
    if config.num_directions < 1 or config.num_steps < 1 or not config.max_distance > 0:
        raise validation.InputError(f"EBD1Config needs num_directions >= 1, num_steps >= 1 and "
                                    f"max_distance > 0, got {config}")
    _, finish = validation.check_model_call(apply_fn, params, x, y)
    finish()
    # a NaN logit would read as a flipped (or never flipped) prediction: name those inputs
    with validation.completing(validation.model_output_checks(apply_fn, params, x)):
        return _ebd1(apply_fn, params, x, y, key, config)


def _ebd1(apply_fn, params, x, y, key, config) -> BoundaryResult:
    dirs = orthogonal_directions(key, x.shape[1:], config.num_directions)
    ts = jnp.arange(config.num_steps + 1, dtype=jnp.float32) * (
        config.max_distance / config.num_steps)

    def one_direction(d):
        def flipped_at(t):
            logits = apply_fn(params, jnp.clip(x + t * d[None], 0.0, 1.0))
            return jnp.argmax(logits, -1) != y

        flips = jax.lax.map(flipped_at, ts)  # [T, b]
        found = jnp.any(flips, axis=0)
        idx = jnp.where(found, jnp.argmax(flips, axis=0), config.num_steps)
        return idx.astype(jnp.int32), found

    idx, found = jax.lax.map(one_direction, dirs)  # [m, b]
    if config.reduction == "min":
        steps, found = jnp.min(idx, axis=0), jnp.any(found, axis=0)
    else:
        steps, found = jnp.max(idx, axis=0), jnp.all(found, axis=0)
    return BoundaryResult(ts[steps], found, steps)


def ebd2(apply_fn, params, x: Array, y: Array, key: Array = None,
         config: EBD2Config = EBD2Config()) -> BoundaryResult:
    """Empirical boundary distance 2 per example (see the module docstring).

    ``key`` is unused (BIM is deterministic); it is accepted to keep the attack signature.
    The loop stops as soon as every example has flipped or ``max_steps`` steps were taken.
    """
    del key
    if config.max_steps < 0 or not config.step_size > 0:
        raise validation.InputError(f"EBD2Config needs max_steps >= 0 and step_size > 0, got "
                                    f"{config}")
    _, finish = validation.check_model_call(apply_fn, params, x, y)
    finish()
    with validation.completing(validation.model_output_checks(apply_fn, params, x)):
        return _ebd2(apply_fn, params, x, y, config)


def _ebd2(apply_fn, params, x, y, config) -> BoundaryResult:
    def loss_fn(xc):
        logits = apply_fn(params, xc)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y)), logits

    grad_fn = jax.grad(loss_fn, has_aux=True)
    b = x.shape[0]

    def cond(state):
        i, _, _, done = state
        return (i <= config.max_steps) & ~jnp.all(done)

    def body(state):
        i, xc, steps, done = state
        g, logits = grad_fn(xc)
        newly = ~done & (jnp.argmax(logits, -1) != y)
        steps = jnp.where(newly, i, steps)
        done = done | newly
        x_next = jnp.clip(xc + config.step_size * jnp.sign(g), 0.0, 1.0)
        return i + 1, jnp.where(done[:, None, None, None], xc, x_next), steps, done

    init = (jnp.int32(0), x, jnp.full((b,), config.max_steps, jnp.int32), jnp.zeros(b, bool))
    _, _, steps, done = jax.lax.while_loop(cond, body, init)
    return BoundaryResult(steps.astype(jnp.float32) * config.step_size, done, steps)


@struct.dataclass
class BoundaryStats:
    """Accumulator: mean distance over all examples and the share found (not censored)."""

    distance: Average
    found: Average

    @classmethod
    def empty(cls) -> "BoundaryStats":
        return cls(Average.empty(), Average.empty())

    @classmethod
    def from_result(cls, result: BoundaryResult) -> "BoundaryStats":
        return _boundary_stats(result.distance, result.found)

    def merge(self, other: "BoundaryStats") -> "BoundaryStats":
        return type(self)(self.distance.merge(other.distance), self.found.merge(other.found))

    def compute(self) -> dict[str, Array]:
        return {"distance": self.distance.compute(), "found": self.found.compute()}


@jax.jit
def _boundary_stats(distance, found) -> BoundaryStats:
    return BoundaryStats(Average.from_values(distance), Average.from_values(found))
