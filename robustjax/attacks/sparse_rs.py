"""Sparse-RS (Croce, Andriushchenko, Singh, Flammarion & Hein 2022): random search for sparse
black-box attacks, L0-bounded pixels and image- and location-specific patches.

"Sparse-RS: a versatile framework for query-efficient sparse black-box adversarial attacks",
AAAI 2022, Alg. 1 with the schedules of the authors' code (``rs_attacks.py``):

* ``norm="l0"`` (Sec. 3.1): ``k`` pixels are set to random corners of the colour cube
  ({0, 1} per channel). Each iteration swaps ``k_i = max(floor(alpha_i * k), 1)`` of the
  perturbed pixels back to their clean values for ``k_i`` new pixels with new random
  corners; ``alpha_i = alpha_init / {1, 2, 4, 5, 6, 8, 10, 12, 15, 20}``, the divisor
  stepping up after iterations 0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000
  (rescaled to ``n_queries``). Exactly ``k`` pixels are perturbed at every step.
* ``norm="patches"`` (Sec. 3.2): one ``s x s`` patch, ``s = ceil(sqrt(k))``, with vertical
  stripes of random corners to start and a random location. Each iteration either changes a
  random ``s_i x s_i`` square of the patch by a random sign per channel (``s_i =
  max(floor(sqrt(alpha_i) * s), 1)``, ``alpha_i = alpha_init / {1, 2, 4, 8, 16, 32, 32, 64, 64,
  128}`` after iterations 10, 50, 200, ..., 8000) or, every ``5 (1 + i // 1000)`` iterations,
  moves the patch by up to ``0.75 (1 - i / n_queries) * H`` pixels in each direction.

A candidate is kept when it lowers the loss (margin untargeted, cross-entropy targeted) or
when it is misclassified. ``queries`` counts forward passes per example exactly: 1 for the
starting point plus 1 per iteration while the example is not adversarial; never more than
``n_queries``. Differences from the reference: the swapped pixel slots and the patch update
position are drawn per example rather than once per batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp

from robustjax.attacks._core import (
    AttackResult,
    cross_entropy,
    margin,
    success_mask,
)
from robustjax.attacks.l0 import l0_pixels
from robustjax.entry import attack_entry

Array = jax.Array
# (iteration on the 10,000-query scale after which the next divisor applies, divisor)
_L0_STEPS = (0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_L0_DIVISORS = (1, 2, 4, 5, 6, 8, 10, 12, 15, 20)
_PATCH_STEPS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_PATCH_DIVISORS = (1, 2, 4, 8, 16, 32, 32, 64, 64, 128)
_DEFAULT_ALPHA = {"l0": 0.3, "patches": 0.4}


@dataclasses.dataclass(frozen=True)
class SparseRSConfig:
    """Sparse-RS settings; defaults from Croce et al. 2022 and the authors' README (ImageNet
    untargeted: L0 ``k=150``, ``alpha_init=0.3``; patches 20 x 20, ``alpha_init=0.4``;
    10,000 queries).

    Attributes:
      k: L0: the number of pixels changed; patches: the patch area (side ``ceil(sqrt(k))``).
      norm: ``"l0"`` or ``"patches"``.
      n_queries: query budget per example, the starting point included.
      alpha_init: the schedule's initial fraction; ``None`` takes 0.3 (L0) or 0.4 (patches).
      targeted: if True ``y`` holds target classes (the loss is then cross-entropy).
      rescale_schedule: rescale the schedule from 10,000 queries to ``n_queries``.
    """

    k: int = 150
    norm: str = "l0"
    n_queries: int = 10000
    alpha_init: Optional[float] = None
    targeted: bool = False
    rescale_schedule: bool = True

    def __post_init__(self):
        if self.norm not in _DEFAULT_ALPHA:
            raise ValueError(f"Sparse-RS supports norm 'l0' or 'patches', got {self.norm!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.n_queries < 1:
            raise ValueError(f"n_queries must be >= 1, got {self.n_queries}")
        if self.alpha_init is not None and not self.alpha_init > 0:
            raise ValueError(f"alpha_init must be > 0, got {self.alpha_init}")


def alpha_schedule(alpha_init: float, it, n_queries: int, norm: str,
                   rescale: bool = True) -> Array:
    """The piecewise-constant alpha_i of the reference code at iteration ``it``."""
    it = jnp.asarray(it, jnp.float32)
    if rescale:
        it = jnp.floor(it / n_queries * 10000)
    steps, divs = (_L0_STEPS, _L0_DIVISORS) if norm == "l0" else (_PATCH_STEPS, _PATCH_DIVISORS)
    level = sum((it > t).astype(jnp.int32) for t in steps)
    return alpha_init / jnp.asarray(divs, jnp.float32)[level]


def _objectives(logits, y, targeted):
    """(loss to minimise, margin; margin <= 0 means adversarial), as the reference."""
    marg = -margin(logits, y, targeted)
    loss = -cross_entropy(logits, y, targeted) if targeted else marg
    return loss, marg


def _corners(key, shape, dtype):
    return jax.random.bernoulli(key, 0.5, shape).astype(dtype)


@attack_entry(gradient=False)
def sparse_rs(apply_fn, params, x: Array, y: Array, key: Array,
              config: SparseRSConfig = SparseRSConfig()) -> AttackResult:
    """Sparse-RS: x [b, H, W, C] in [0, 1], y int [b] -> AttackResult.

    L0: ``x_adv`` differs from ``x`` in at most ``k`` pixels; patches: only inside one
    ``s x s`` square. ``norm`` is the L0 count in pixels; ``loss`` the final margin
    ``max_{j != y} z_j - z_y`` (positive = adversarial; targeted ``z_t - max_other``);
    ``queries`` the forward passes spent on each example.

    Example::

        res = jax.jit(functools.partial(sparse_rs, model.apply_fn,
                                        config=SparseRSConfig(k=10, n_queries=1000)))(
            model.params, x, y, jax.random.key(0))
    """
    cfg = config
    b = x.shape[0]
    alpha0 = cfg.alpha_init if cfg.alpha_init is not None else _DEFAULT_ALPHA[cfg.norm]
    alpha = lambda it: alpha_schedule(alpha0, it, cfg.n_queries, cfg.norm,  # noqa: E731
                                      cfg.rescale_schedule)

    def evaluate(x_eval):
        logits = apply_fn(params, x_eval)
        loss, marg = _objectives(logits, y, cfg.targeted)
        return loss, marg, success_mask(logits, y, cfg.targeted)

    if cfg.norm == "l0":
        init, propose = _l0_search(x, cfg.k, alpha)
    else:
        init, propose = _patch_search(x, cfg.k, alpha, cfg.n_queries)
    k_init, k_loop = jax.random.split(key)
    state, x_best = init(k_init)
    loss_min, margin_min, succ = evaluate(x_best)
    queries = jnp.ones((b,), jnp.int32)
    expand = lambda m, a: m.reshape(m.shape + (1,) * (a.ndim - 1))  # noqa: E731

    def cond(st):
        i, _, _, _, margin_min, _, _ = st
        return (i < cfg.n_queries) & jnp.any(margin_min > 0)

    def body(st):
        i, state, x_best, loss_min, margin_min, succ, queries = st
        active = margin_min > 0
        new_state, x_new = propose(jax.random.fold_in(k_loop, i), i, state, x_best)
        loss, marg, s_new = evaluate(x_new)
        improved = active & (loss < loss_min)
        take = improved | (active & (marg < -1e-6))
        state = jax.tree.map(lambda n, o: jnp.where(expand(take, n), n, o), new_state, state)
        return (i + 1, state, jnp.where(expand(take, x_new), x_new, x_best),
                jnp.where(improved, loss, loss_min), jnp.where(take, marg, margin_min),
                jnp.where(take, s_new, succ), queries + active.astype(jnp.int32))

    st = (jnp.int32(1), state, x_best, loss_min, margin_min, succ, queries)
    _, _, x_best, _, margin_min, succ, queries = jax.lax.while_loop(cond, body, st)
    return AttackResult(x_adv=x_best, success=succ, loss=-margin_min,
                        norm=l0_pixels(x_best - x), queries=queries)


def _l0_search(x, k, alpha):
    """(init, propose) for k-pixel perturbations; the state is the [b, H*W] perturbed mask."""
    b, h, w, c = x.shape
    n = h * w
    if not k < n:
        raise ValueError(f"Sparse-RS L0 needs k < H * W = {n} pixels, got k={k}")
    m = min(k, n - k)            # the most pixels one step can swap
    flat_x = x.reshape(b, n, c)

    def init(key):
        k_pix, k_col = jax.random.split(key)
        chosen = jax.lax.top_k(jax.random.uniform(k_pix, (b, n)), k)[1]      # k random pixels
        mask = jnp.zeros((b, n), bool).at[jnp.arange(b)[:, None], chosen].set(True)
        x0 = jnp.where(mask[..., None], _corners(k_col, (b, n, c), x.dtype), flat_x)
        return mask, x0.reshape(x.shape)

    def propose(key, it, mask, x_best):
        k_out, k_in, k_col = jax.random.split(key, 3)
        k_it = jnp.clip(jnp.floor(alpha(it) * k).astype(jnp.int32), 1, m)
        rand_out = jnp.where(mask, jax.random.uniform(k_out, (b, n)), -1.0)
        rand_in = jnp.where(mask, -1.0, jax.random.uniform(k_in, (b, n)))
        out = jax.lax.top_k(rand_out, m)[1]      # perturbed pixels, random order
        inn = jax.lax.top_k(rand_in, m)[1]       # clean pixels, random order
        use = jnp.arange(m)[None, :] < k_it     # the first k_i of each
        rows = jnp.arange(b)[:, None]
        fb = x_best.reshape(b, n, c)
        restored = jnp.where(use[..., None], flat_x[rows, out], fb[rows, out])
        painted = jnp.where(use[..., None], _corners(k_col, (b, m, c), x.dtype), fb[rows, inn])
        fb = fb.at[rows, out].set(restored).at[rows, inn].set(painted)
        mask = mask.at[rows, out].set(~use).at[rows, inn].set(use)
        return mask, fb.reshape(x.shape)

    return init, propose


def _patch_search(x, k, alpha, n_queries):
    """(init, propose) for one s x s patch; the state is (patch [b, s, s, C], location [b, 2])."""
    b, h, w, c = x.shape
    s = int(math.ceil(math.sqrt(k)))
    if not s < min(h, w):
        raise ValueError(f"a {s}x{s} patch (k={k}) does not fit images of {h}x{w}: "
                         f"use k < {min(h, w) ** 2}")
    hi = jnp.asarray([h - s, w - s], jnp.int32)

    def paste(patch, loc):
        return jax.vmap(lambda img, p, l: jax.lax.dynamic_update_slice(
            img, p, (l[0], l[1], 0)))(x, patch, loc)

    def init(key):
        k_col, k_loc = jax.random.split(key)
        patch = jnp.broadcast_to(_corners(k_col, (b, 1, s, c), x.dtype), (b, s, s, c))
        loc = jax.random.randint(k_loc, (b, 2), 0, hi)
        return (patch, loc), paste(patch, loc)

    def propose(key, it, state, x_best):
        del x_best
        patch, loc = state
        k_pos, k_sign, k_shift = jax.random.split(key, 3)
        s_it = jnp.clip(jnp.floor(jnp.sqrt(alpha(it)) * s).astype(jnp.int32), 1, s)
        top = jax.random.randint(k_pos, (b, 2), 0, s - s_it + 1)
        r = jnp.arange(s)
        inside = ((r[None, :, None] >= top[:, 0, None, None])
                  & (r[None, :, None] < (top[:, 0] + s_it)[:, None, None])
                  & (r[None, None, :] >= top[:, 1, None, None])
                  & (r[None, None, :] < (top[:, 1] + s_it)[:, None, None]))
        signs = jax.random.rademacher(k_sign, (b, 1, 1, c), x.dtype)
        new_patch = jnp.clip(patch + jnp.where(inside[..., None], signs, 0.0), 0.0, 1.0)
        shift = jnp.floor(jnp.maximum((n_queries - it) / n_queries, 0.0) * 0.75 * h)
        shift = shift.astype(jnp.int32)
        step = jax.random.randint(k_shift, (b, 2), -shift, shift + 1)
        new_loc = jnp.clip(loc + step, 0, hi)
        move = (it % (5 * (1 + it // 1000)) == 0) & (shift > 0)
        patch = jnp.where(move, patch, new_patch)
        loc = jnp.where(move, new_loc, loc)
        return (patch, loc), paste(patch, loc)

    return init, propose
