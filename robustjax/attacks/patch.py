"""Adversarial patches (Brown et al. 2017) with random placement, scale and rotation.

"Adversarial Patch", arXiv:1712.09665, Sec. 2: a patch ``p`` is trained to maximise
``E_{x ~ X, t ~ T} log Pr(y_hat | A(p, x, t))`` (targeted) where ``A`` pastes the patch,
transformed by ``t`` (a random location, scale and rotation), onto the image ``x``:
expectation over transformation (EOT, Athalye et al. 2018), estimated on a minibatch of
images, each with its own random ``t``, per step. Untargeted (``target=None``) maximises the
cross-entropy of the true label instead.

``A`` is a pure-JAX differentiable affine warp (``robustjax.corruptions.spatial.warp_batch``)
of the patch and of its mask, composited with premultiplied alpha:
``x_adv = x * (1 - m) + warp(p * 1)``, so ``x_adv`` is in [0, 1] and the pasted area is
``sum(m)``, about ``scale^2 * ph * pw`` pixels. Placement: the scaled (unrotated) patch stays
inside the image; rotation is about the patch centre. Optimised with optax Adam, the patch
clipped to [0, 1] after each step (as ART's implementations do).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from robustjax import validation
from robustjax.attacks._core import cross_entropy
from robustjax.corruptions.spatial import warp_batch

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """Adversarial-patch settings (Brown et al. 2017; defaults as ART's AdversarialPatch).

    Attributes:
      patch_shape: ``(ph, pw)`` pixels of the patch (its channels are the images').
      target: the class the patch pushes to; None for untargeted (away from ``y``).
      scale_min, scale_max: range of the patch's scale factor (0.1, 1.0).
      rotation_max: rotations drawn from ``[-rotation_max, rotation_max]`` degrees (22.5).
      steps: optimisation steps (500).
      batch_size: images (each with its own transformation) per step (16).
      learning_rate: Adam's step in pixel units (5/255, ART's 5.0 on a 0-255 scale).
      init: the patch's start: ``"uniform"`` random pixels (Brown et al.) or ``"gray"``, 0.5
        everywhere (ART's).
      interpolation: how the scaled, rotated patch is resampled onto the image:
        ``"bilinear"`` (every patch pixel gets a gradient) or ``"nearest"`` (ART's
        ``AdversarialPatchPyTorch``, torchvision's nearest-pixel affine).
    """

    patch_shape: tuple = (8, 8)
    target: Optional[int] = None
    scale_min: float = 0.1
    scale_max: float = 1.0
    rotation_max: float = 22.5
    steps: int = 500
    batch_size: int = 16
    learning_rate: float = 5 / 255
    init: str = "uniform"
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.init not in ("uniform", "gray"):
            raise ValueError(f"init must be 'uniform' or 'gray', got {self.init!r}")
        if self.interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got "
                             f"{self.interpolation!r}")
        if len(self.patch_shape) != 2 or min(self.patch_shape) < 1:
            raise ValueError(f"patch_shape must be (height, width) >= 1, got "
                             f"{self.patch_shape!r}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, "
                             f"{self.scale_max}")
        if self.rotation_max < 0 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("need rotation_max >= 0, steps >= 1, batch_size >= 1; got "
                             f"{self.rotation_max}, {self.steps}, {self.batch_size}")


class PatchResult(NamedTuple):
    """A trained patch.

    Attributes:
      patch: float32 [ph, pw, C] in [0, 1].
      success_rate: float32 [] on the training images under fresh random transformations:
        predicted == target (targeted) or != label (untargeted).
      loss: float32 [steps] the EOT objective (maximised) per step.
    """

    patch: Array
    success_rate: Array
    loss: Array


def _check_shapes(x, patch):
    if patch.ndim != 3 or patch.shape[-1] != x.shape[-1]:
        raise ValueError(f"patch must be [ph, pw, {x.shape[-1]}], got {tuple(patch.shape)}")
    if patch.shape[0] > x.shape[1] or patch.shape[1] > x.shape[2]:
        raise ValueError(f"patch {tuple(patch.shape[:2])} is larger than the images "
                         f"{tuple(x.shape[1:3])}")


def place_patch(x: Array, patch: Array, scale, angle, dx, dy, interpolation: str = "bilinear"):
    """Paste ``patch`` [ph, pw, C] onto every image of ``x`` [b, H, W, C].

    The patch is scaled by ``scale``, rotated by ``angle`` degrees (counter-clockwise on
    screen) about its centre and centred ``(dx, dy)`` pixels right/down of the image centre
    (each a scalar or [b]), resampled with ``interpolation`` (``"bilinear"`` or
    ``"nearest"``). Returns ``(x_adv [b, H, W, C], mask [b, H, W])``, ``mask`` in [0, 1] the
    patch's coverage of each pixel.
    """
    _check_shapes(x, patch)
    b, h, w, c = x.shape
    ph, pw = patch.shape[:2]
    top, left = (h - ph) // 2, (w - pw) // 2
    canvas = jnp.zeros((h, w, c + 1), x.dtype)
    canvas = canvas.at[top:top + ph, left:left + pw].set(
        jnp.concatenate([patch, jnp.ones((ph, pw, 1), x.dtype)], -1))
    cy, cx = top + (ph - 1) / 2, left + (pw - 1) / 2      # the patch's centre on the canvas
    scale, angle, dx, dy = (jnp.broadcast_to(jnp.asarray(v, jnp.float32), (b,))
                            for v in (scale, angle, dx, dy))

    def matrix(s, a, tx, ty):
        r = jnp.deg2rad(a)
        co, si = jnp.cos(r) * s, jnp.sin(r) * s
        # p -> R S (p - c) + image centre + (dx, dy), in pixel coordinates (x right, y down)
        ox, oy = (w - 1) / 2 + tx, (h - 1) / 2 + ty
        return jnp.array([[co, si, ox - co * cx - si * cy],
                          [-si, co, oy + si * cx - co * cy],
                          [0.0, 0.0, 1.0]])

    mats = jax.vmap(matrix)(scale, angle, dx, dy)
    warped = warp_batch(jnp.broadcast_to(canvas, (b, h, w, c + 1)), mats, 0.0,
                        nearest=interpolation == "nearest")
    mask = warped[..., -1]
    return x * (1.0 - mask[..., None]) + warped[..., :-1], mask


def random_placement(key: Array, b: int, image_hw, config: PatchConfig):
    """Random ``(scale, angle, dx, dy)``, each float32 [b]: uniform scale and angle, then a
    centre that keeps the scaled patch inside the image."""
    ks, ka, kx, ky = jax.random.split(key, 4)
    h, w = image_hw
    ph, pw = config.patch_shape
    s = jax.random.uniform(ks, (b,), jnp.float32, config.scale_min, config.scale_max)
    a = jax.random.uniform(ka, (b,), jnp.float32, -config.rotation_max, config.rotation_max)
    room_x = jnp.maximum(w - s * pw, 0.0) / 2
    room_y = jnp.maximum(h - s * ph, 0.0) / 2
    dx = jax.random.uniform(kx, (b,), jnp.float32, -1.0, 1.0) * room_x
    dy = jax.random.uniform(ky, (b,), jnp.float32, -1.0, 1.0) * room_y
    return s, a, dx, dy


def apply_patch(x: Array, patch: Array, key: Array, config: PatchConfig = PatchConfig()):
    """``place_patch`` at a random placement per image -> ``(x_adv, mask)``."""
    _check_shapes(x, patch)
    return place_patch(x, patch, *random_placement(key, x.shape[0], x.shape[1:3], config),
                       interpolation=config.interpolation)


def _objective(apply_fn, params, x, y, patch, key, cfg):
    """Per-example EOT objective [b] (maximised) at one random placement each."""
    logits = apply_fn(params, apply_patch(x, patch, key, cfg)[0])
    if cfg.target is None:
        return cross_entropy(logits, y), logits
    t = jnp.full((x.shape[0],), cfg.target, jnp.int32)
    return cross_entropy(logits, t, targeted=True), logits


def adversarial_patch(apply_fn, params, x_train: Array, y_train: Array, key: Array,
                      config: PatchConfig = PatchConfig()) -> PatchResult:
    """Train a patch on ``x_train`` [n, H, W, C] (labels ``y_train`` int [n]).

    Each step draws ``batch_size`` training images and one random placement per image and
    takes an Adam step up the mean objective. Jittable with ``apply_fn`` and ``config`` static.

    Example::

        res = adversarial_patch(m.apply_fn, m.params, x, y, key, PatchConfig(target=3))
        x_adv, mask = apply_patch(x_test, res.patch, key2, PatchConfig(target=3))
    """
    cfg = config
    validation.check_model_inputs(apply_fn, params, x_train, y_train, "x_train")
    if cfg.patch_shape[0] > x_train.shape[1] or cfg.patch_shape[1] > x_train.shape[2]:
        raise ValueError(f"patch_shape {cfg.patch_shape} is larger than the images "
                         f"{tuple(x_train.shape[1:3])}")
    n, c = x_train.shape[0], x_train.shape[-1]
    k_init, k_steps, k_eval = jax.random.split(key, 3)
    shape = tuple(cfg.patch_shape) + (c,)
    patch0 = (jax.random.uniform(k_init, shape, jnp.float32) if cfg.init == "uniform"
              else jnp.full(shape, 0.5, jnp.float32))
    opt = optax.adam(cfg.learning_rate)

    def mean_objective(p, xb, yb, k):
        value, _ = _objective(apply_fn, params, xb, yb, p, k, cfg)
        return jnp.mean(value)

    def step(carry, i):
        p, state = carry
        k_batch, k_place = jax.random.split(jax.random.fold_in(k_steps, i))
        idx = jax.random.randint(k_batch, (cfg.batch_size,), 0, n)
        value, g = jax.value_and_grad(mean_objective)(p, x_train[idx], y_train[idx], k_place)
        updates, state = opt.update(-g, state, p)       # ascent: optax minimises
        p = jnp.clip(optax.apply_updates(p, updates), 0.0, 1.0)
        return (p, state), value

    (patch, _), losses = jax.lax.scan(step, (patch0, opt.init(patch0)), jnp.arange(cfg.steps))
    _, logits = _objective(apply_fn, params, x_train, y_train, patch, k_eval, cfg)
    pred = jnp.argmax(logits, -1)
    ok = pred != y_train if cfg.target is None else pred == cfg.target
    return PatchResult(patch, jnp.mean(ok).astype(jnp.float32), losses.astype(jnp.float32))
