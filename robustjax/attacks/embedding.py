"""Attacks on encoders: move an image's embedding away from, or toward, a reference embedding.

The survey's section 5.1 (Fig. 9): a foundation model used as a frozen encoder feeds a
downstream classifier (an SVM) the attacker does not see; perturbing the image so that its
embedding moves far from the clean one breaks the downstream task. Here an encoder is
``embed_fn(params, x) -> [b, d]`` (``Model.embed_fn``: the penultimate features of every
robustjax classifier), ``x`` float32 NHWC in [0, 1].

``embedding_pgd`` is PGD (Madry et al. 2018) on an embedding distance ``D`` instead of a
classification loss, under Linf or L2 budgets:

* away (``targeted=False``): ``max_{||d|| <= eps} D(e(x + d), z)`` with ``z = e(x)`` the clean
  embedding (the untargeted feature-space attack of e.g. Zhou et al. 2023, AdvCLIP; Inkawhich et
  al. 2019 for feature distortion);
* toward (``targeted=True``): ``min_{||d|| <= eps} D(e(x + d), z_target)`` (feature
  adversaries, Sabour et al. 2016).

``D`` is the cosine distance ``1 - cos(a, b)`` or the Euclidean distance. The black-box case is
transfer: run ``embedding_pgd`` on a surrogate encoder and measure ``embedding_shift`` on the
victim encoder.

Example::

    z = model.embed_fn(model.params, x)
    cfg = EmbeddingPGDConfig(eps=4 / 255, step_size=1 / 255, steps=10)
    res = jax.jit(functools.partial(embedding_pgd, model.embed_fn, config=cfg))(
        model.params, x, z, key)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from robustjax.attacks import _core
from robustjax.attacks.gradient import config_class

Array = jax.Array
DISTANCES = ("cosine", "l2")


@config_class("eps", "step_size")
class EmbeddingPGDConfig:
    """PGD on an embedding distance (Madry et al. 2018's PGD with ``D`` as the loss).

    Defaults: Linf eps 8/255, step 2/255, 10 steps, random start (needed to move away: the
    gradient of either distance vanishes at ``e(x) = z``), cosine distance, push away.
    The survey's Fig. 9 runs Linf eps 0.1.
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    norm: str = "linf"
    distance: str = "cosine"
    targeted: bool = False
    random_start: bool = True
    loop: str = "auto"

    def __post_init__(self):
        _core.check_norm(self.norm, ("linf", "l2"))
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; valid: "
                             f"{', '.join(DISTANCES)}")
        if self.loop not in _core.LOOPS:
            raise ValueError(f"unknown loop {self.loop!r}; valid: {', '.join(_core.LOOPS)}")
        for name in ("eps", "step_size"):
            v = getattr(self, name)
            if _core.static_float(v) and v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")


class EmbeddingAttackResult(NamedTuple):
    """What ``embedding_pgd`` returns, per example.

    Attributes:
      x_adv: [b, H, W, C] float32 in [0, 1].
      distance: [b] float32 ``D(e(x_adv), z)`` on the attacked encoder.
      norm: [b] float32 norm of ``x_adv - x`` in the attack's norm.
      queries: [b] int32 gradient evaluations.
    """

    x_adv: Array
    distance: Array
    norm: Array
    queries: Array


def embedding_distance(a: Array, b: Array, distance: str = "cosine") -> Array:
    """``D(a, b)`` per row of ``a``, ``b`` [n, d]: ``1 - cos`` or ``||a - b||_2``; [n] float32.

    Both are written to have finite gradients at ``a = b`` (zero for cosine, zero for L2 via a
    tiny offset under the square root).
    """
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if a.shape != b.shape:
        raise ValueError(f"embeddings must have the same shape, got {a.shape} and {b.shape}")
    if distance == "cosine":
        na = jnp.sqrt(jnp.sum(a * a, -1) + 1e-12)
        nb = jnp.sqrt(jnp.sum(b * b, -1) + 1e-12)
        return 1.0 - jnp.sum(a * b, -1) / (na * nb)
    if distance == "l2":
        return jnp.sqrt(jnp.sum((a - b) ** 2, -1) + 1e-12)
    raise ValueError(f"unknown distance {distance!r}; valid: {', '.join(DISTANCES)}")


def _check_reference(x, z) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must be [batch, H, W, C] (NHWC), got shape {x.shape}")
    if z.ndim != 2 or z.shape[0] != x.shape[0]:
        raise ValueError(f"z must be reference embeddings [{x.shape[0]}, d] (e.g. "
                         f"embed_fn(params, x)), got shape {z.shape}")


def embedding_pgd(embed_fn, params, x, z, key,
                  config: EmbeddingPGDConfig = EmbeddingPGDConfig()) -> EmbeddingAttackResult:
    """PGD on ``D(embed_fn(params, x_adv), z)``: away from ``z`` or (targeted) toward it.

    ``x`` float32 [b, H, W, C] in [0, 1]; ``z`` float32 [b, d] the reference embeddings (the
    clean ``embed_fn(params, x)`` to push away from, target embeddings to pull toward).
    """
    _check_reference(x, z)
    c = config
    sign = -1.0 if c.targeted else 1.0
    z = jax.lax.stop_gradient(jnp.asarray(z, jnp.float32))

    def objective(x_adv):
        return sign * jnp.sum(embedding_distance(embed_fn(params, x_adv), z, c.distance))

    step = optax.chain(_core.steepest_ascent(c.step_size, c.norm),
                       _core.project_onto_threat(x, c.eps, c.norm))
    x0 = _core.random_start(key, x, c.eps, c.norm) if c.random_start else x

    def body(i, carry):
        x_adv, state = carry
        updates, state = step.update(jax.grad(objective)(x_adv), state, x_adv)
        return optax.apply_updates(x_adv, updates), state

    x_adv, _ = _core.loop_steps(body, (x0, step.init(x0)), c.steps, c.loop)
    return EmbeddingAttackResult(
        x_adv=x_adv,
        distance=embedding_distance(embed_fn(params, x_adv), z, c.distance).astype(jnp.float32),
        norm=_core.lp_norm(x_adv - x, c.norm).astype(jnp.float32),
        queries=jnp.full((x.shape[0],), c.steps, jnp.int32))


def embedding_shift(embed_fn, params, x, x_adv, distance: str = "cosine") -> Array:
    """``D(e(x), e(x_adv))`` [b] on an encoder (the victim's, for a transferred attack)."""
    return embedding_distance(embed_fn(params, x), embed_fn(params, x_adv), distance)
