"""Rotation-and-translation attacks (Engstrom et al. 2019): grid search and worst-of-k.

"Exploring the Landscape of Spatial Robustness", ICML 2019, Sec. 3: the adversary picks a
rotation ``theta`` in ``[-max_rotation, max_rotation]`` degrees and a translation
``(dx, dy)`` in ``[-max_translation, max_translation]`` pixels (paper: +-30 degrees and +-3 px
on 32 x 32 CIFAR-10, i.e. ~10% of the side). ``x_adv = T_{theta, dx, dy}(x)`` rotates about
the image centre, then shifts; pixels that come from outside the image are ``fill`` (black,
as in the paper). Two adversaries of the paper:

* **grid search** (``worst_of_k=None``): every point of the grid of ``n_rotations`` angles times
  ``n_translations`` x ``n_translations`` shifts (paper: 31 x 5 x 5 = 775) is evaluated and the
  strongest is kept;
* **worst-of-k** (``worst_of_k=k``, paper: k = 10): ``k`` transformations drawn uniformly from
  the continuous ranges, independently per example, and the strongest is kept.

"Strongest" is lexicographic: a misclassifying point beats any other, ties are broken by the
attack loss. So the attack succeeds iff some evaluated point misclassifies, and its loss is at
least that of every evaluated point with the same success. The warp is
``robustjax.corruptions.spatial``'s bilinear homography warp. Vectorised: a chunk of
``chunk`` grid points is one batch of ``chunk x b`` warped images (``lax.map``), never a
Python loop over the grid.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from robustjax import validation
from robustjax.attacks._core import AttackResult, get_loss, lp_norm
from robustjax.corruptions import spatial as warps
from robustjax.entry import attack_entry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SpatialGridConfig:
    """Engstrom et al. 2019 spatial attack; defaults are the paper's CIFAR-10 grid.

    Attributes:
      max_rotation: largest rotation in degrees, either direction (30).
      max_translation: largest shift in pixels, each axis and direction (3, ~10% of 32 px).
      n_rotations: grid angles, evenly spaced including both ends (31).
      n_translations: grid shifts per axis, evenly spaced including both ends (5).
      worst_of_k: None for the full grid; ``k`` for the paper's random worst-of-k (k = 10).
      loss: ``"ce"`` or ``"margin"`` (the tie-break among points of equal success).
      fill: value of pixels warped in from outside the image (0, black).
      chunk: grid points per vectorised batch (memory ``chunk * b`` images); 0 means all.
    """

    max_rotation: float = 30.0
    max_translation: float = 3.0
    n_rotations: int = 31
    n_translations: int = 5
    worst_of_k: Optional[int] = None
    loss: str = "ce"
    fill: float = 0.0
    chunk: int = 0

    def __post_init__(self):
        if self.max_rotation < 0 or self.max_translation < 0:
            raise ValueError("max_rotation and max_translation must be >= 0, got "
                             f"{self.max_rotation} and {self.max_translation}")
        if self.n_rotations < 1 or self.n_translations < 1:
            raise ValueError("n_rotations and n_translations must be >= 1, got "
                             f"{self.n_rotations} and {self.n_translations}")
        if self.worst_of_k is not None and self.worst_of_k < 1:
            raise ValueError(f"worst_of_k must be None (full grid) or >= 1, got "
                             f"{self.worst_of_k}")
        if self.loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {self.loss!r}")
        if self.chunk < 0:
            raise ValueError(f"chunk must be >= 0 (0 = the whole grid at once), got {self.chunk}")

    @property
    def num_points(self) -> int:
        """Transformations evaluated per example."""
        if self.worst_of_k is not None:
            return self.worst_of_k
        return self.n_rotations * self.n_translations ** 2


def transform(x: Array, angle, dx, dy, fill: float = 0.0) -> Array:
    """Rotate every image of ``x`` [b, H, W, C] by ``angle`` degrees (counter-clockwise on
    screen) about its centre, then shift by ``dx`` px right and ``dy`` px down (each a scalar
    or [b]); bilinear, ``fill`` outside. ``transform(x, 0, 0, 0)`` is ``x`` exactly."""
    b, h, w = x.shape[0], x.shape[1], x.shape[2]
    angle, dx, dy = (jnp.broadcast_to(jnp.asarray(v, jnp.float32), (b,)) for v in (angle, dx, dy))

    def matrix(a, tx, ty):
        shift = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        shift = shift.at[0, 2].set(tx).at[1, 2].set(ty)
        return shift @ warps.rotation_matrix(a, h, w)

    return warps.warp_batch(x, jax.vmap(matrix)(angle, dx, dy), fill)


def grid_points(config: SpatialGridConfig) -> Array:
    """The full grid, float32 [n_rotations * n_translations^2, 3] of (angle, dx, dy)."""
    a = jnp.linspace(-config.max_rotation, config.max_rotation, config.n_rotations)
    t = jnp.linspace(-config.max_translation, config.max_translation, config.n_translations)
    aa, xx, yy = jnp.meshgrid(a, t, t, indexing="ij")
    return jnp.stack([aa.ravel(), xx.ravel(), yy.ravel()], -1).astype(jnp.float32)


def candidate_points(key: Array, b: int, config: SpatialGridConfig) -> Array:
    """The transformations evaluated, float32 [num_points, b, 3] of (angle, dx, dy)."""
    if config.worst_of_k is None:
        g = grid_points(config)
        return jnp.broadcast_to(g[:, None], (g.shape[0], b, 3))
    hi = jnp.array([config.max_rotation, config.max_translation, config.max_translation])
    u = jax.random.uniform(key, (config.worst_of_k, b, 3), jnp.float32, -1.0, 1.0)
    return u * hi


def evaluate_points(apply_fn, params, x: Array, y: Array, points: Array, loss: str = "ce",
                    fill: float = 0.0, chunk: int = 0):
    """Loss and success of every transformation: ``points`` [n, b, 3] -> (loss [n, b],
    success [n, b]), ``chunk`` points per vectorised batch."""
    loss_fn = get_loss(loss)

    def one(p):
        logits = apply_fn(params, transform(x, p[:, 0], p[:, 1], p[:, 2], fill))
        return loss_fn(logits, y), jnp.argmax(logits, -1) != y

    n = points.shape[0]
    return jax.lax.map(one, points, batch_size=n if chunk in (0, None) else min(chunk, n))


def grid_search(apply_fn, params, x: Array, y: Array, key: Array,
                config: SpatialGridConfig = SpatialGridConfig()):
    """The attack with its chosen transformation: ``(AttackResult, points [b, 3])``.

    ``points[i] = (angle, dx, dy)`` of example ``i``'s strongest transformation (degrees,
    pixels); see :func:`spatial_grid` for the result's fields.
    """
    validation.check_model_inputs(apply_fn, params, x, y)
    b = x.shape[0]
    pts = candidate_points(key, b, config)
    loss, success = evaluate_points(apply_fn, params, x, y, pts, config.loss, config.fill,
                                    config.chunk)
    # success first, then the loss: among the points whose success equals the best one's
    best = jnp.argmax(jnp.where(success == jnp.any(success, 0), loss, -jnp.inf), axis=0)
    chosen = jnp.take_along_axis(pts, best[None, :, None], axis=0)[0]      # [b, 3]
    x_adv = transform(x, chosen[:, 0], chosen[:, 1], chosen[:, 2], config.fill)
    result = AttackResult(
        x_adv=x_adv,
        success=jnp.take_along_axis(success, best[None], axis=0)[0],
        loss=jnp.take_along_axis(loss, best[None], axis=0)[0].astype(jnp.float32),
        norm=lp_norm(x_adv - x, "linf").astype(jnp.float32),
        queries=jnp.full((b,), pts.shape[0], jnp.int32))
    return result, chosen


@attack_entry(gradient=False)
def spatial_grid(apply_fn, params, x: Array, y: Array, key: Array,
                 config: SpatialGridConfig = SpatialGridConfig()) -> AttackResult:
    """Engstrom et al.'s grid (or worst-of-k) rotation + translation attack.

    ``x`` float32 [b, H, W, C] in [0, 1], ``y`` int32 [b] true labels (untargeted); ``key``
    draws the worst-of-k points (unused for the grid). Returns ``AttackResult``: ``x_adv`` the
    transformed images (in [0, 1]: bilinear weights are convex), ``success`` [b] whether some
    evaluated transformation misclassifies, ``loss`` its loss, ``norm`` the Linf pixel change
    (for information: the threat model bounds the transformation, not the pixels),
    ``queries`` the transformations evaluated (forward passes) per example.

    Example::

        res = spatial_grid(model.apply_fn, model.params, x, y, key, SpatialGridConfig())
    """
    return grid_search(apply_fn, params, x, y, key, config)[0]
