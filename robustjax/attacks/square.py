"""Square attack (Andriushchenko et al. 2020), a score-based black-box attack, Linf, L2, L1.

"Square Attack: a query-efficient black-box adversarial attack via random search", ECCV 2020,
Algorithm 1 (Linf, Sec. 3.1) and Algorithm 3 (L2, Sec. 3.2), following the authors' reference
code (``square_attack_linf`` / ``square_attack_l2``): random search over square-shaped updates
of side ``s = round(sqrt(p * n / c))`` whose area fraction ``p`` halves on a fixed schedule;
vertical-stripe initialisation for Linf, a grid of "meta pseudo-Gaussian" bumps for L2; the
margin loss ``z_y - max_{j != y} z_j`` (targeted: cross-entropy to the target); an update is
kept only when it lowers the loss.

L1 has no section in the paper; it follows AutoAttack's ``square.py`` (``norm='L1'``, checked
against pyautoattack 0.2.0): the bumps weigh ring ``k`` by ``1 / (k + 1)^4`` and have unit L1
norm; the start is the grid of bumps (side ``h // 5``, random sign per channel, not rescaled)
projected onto the L1 ball of radius ``eps (1 - 1e-6)`` intersected with the [0, 1] box; each
proposal puts a new bump plus the old window's content (each normalised to unit L1 norm per
channel) into window 1, scaled per channel to L1 norm
``c * ((eps - ||delta||_1)^+ / c + ||delta over windows 1 and 2||_1)``, zeroes window 2, and
projects the result onto the same set (``projections.project_l1_box``). The side is odd,
``>= 3`` and at most ``min(H, W)``.

The model is used only through forward passes ``apply_fn(params, x)`` (scores, never
gradients). ``queries`` counts them per example exactly: 1 for the initial point plus 1 per
iteration while the example is not yet adversarial; an example stops as soon as it is, and no
example ever exceeds ``n_queries`` (the reference's loop runs ``n_queries`` iterations after
the initial query). Differences from the reference code: the square's position (L2 and L1 too)
and the bump's orientation are drawn per example rather than once per batch, and Linf's
"redraw until the window changes" loop is capped at 16 redraws.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks._core import (
    AttackResult,
    cross_entropy,
    lp_norm,
    margin,
    success_mask,
)
from robustjax.attacks.projections import project_l1_box
from robustjax.entry import attack_entry

Array = jax.Array
# Iterations (on the reference 10,000-query scale) after which p halves (p_selection).
P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclasses.dataclass(frozen=True)
class SquareConfig:
    """Square attack settings; defaults from Andriushchenko et al. 2020 (Sec. 4, App. A).

    Attributes:
      eps: radius of the threat model in pixel units (Linf default 8/255, as for CIFAR-10;
        AutoAttack's L1 evaluations use 12 on CIFAR-10).
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      n_queries: query budget per example, the initial query included (paper: 10,000;
        AutoAttack's standard version uses 5,000, the default here).
      p_init: initial fraction of pixels changed (paper: 0.05 Linf / 0.1 L2 for CIFAR/ImageNet
        untargeted; AutoAttack uses 0.8). Halved at iterations 10, 50, ..., 8000 of 10,000,
        rescaled to ``n_queries``.
      targeted: if True ``y`` holds target classes.
      rescale_schedule: rescale the halving iterations to ``n_queries`` (the paper's
        schedule is for 10,000 queries). AutoAttack runs Square with ``False``: with 5,000
        queries p then halves at iterations 10, 50, ..., 4000 and never reaches the last
        levels.
      loss: ``"margin"`` or ``"ce"``; ``None`` uses the paper's choice (margin untargeted,
        cross-entropy targeted). Success is always judged by the margin.
    """

    eps: float = 8.0 / 255.0
    norm: str = "linf"
    n_queries: int = 5000
    p_init: float = 0.8
    targeted: bool = False
    loss: Optional[str] = None
    rescale_schedule: bool = True

    def __post_init__(self):
        if self.norm not in ("linf", "l2", "l1"):
            raise ValueError(f"Square supports norm 'linf', 'l2' or 'l1', got {self.norm!r}")
        if self.n_queries < 1:
            raise ValueError(f"n_queries must be >= 1, got {self.n_queries}")
        if not 0.0 < self.p_init <= 1.0:
            raise ValueError(f"p_init must be in (0, 1], got {self.p_init}")
        if self.loss not in (None, "margin", "ce"):
            raise ValueError(f"loss must be None, 'margin' or 'ce', got {self.loss!r}")


def p_selection(p_init: float, it: Array, n_iters: int, rescale: bool = True) -> Array:
    """The paper's piecewise-constant schedule for p, rescaled from 10,000 to ``n_iters``
    (or not, ``rescale=False``)."""
    return p_init / (2.0 ** _level(it, n_iters, rescale).astype(jnp.float32))


def _level(it, n_iters: int, rescale: bool = True) -> Array:
    """How many times p has been halved at iteration ``it`` of ``n_iters``."""
    if rescale:
        it = jnp.floor(jnp.asarray(it, jnp.float32) / n_iters * 10000).astype(jnp.int32)
    it = jnp.asarray(it, jnp.int32)
    return sum((it > t).astype(jnp.int32) for t in P_SCHEDULE)


def _objectives(logits, y, targeted, loss_name):
    """(loss to minimise, margin to minimise; <= 0 means adversarial, as in the reference)."""
    marg = -margin(logits, y, targeted)
    # _core losses are maximised by the attacker; Square minimises, hence the minus signs.
    loss = -cross_entropy(logits, y, targeted) if loss_name == "ce" else marg
    return loss, marg


def _window_mask(key, b, h, w, s):
    """[b, h, w, 1] bool masks of one s x s square per example, s dynamic (<= min(h, w) - 1)."""
    k1, k2 = jax.random.split(key)
    top = jax.random.randint(k1, (b,), 0, h - s)
    left = jax.random.randint(k2, (b,), 0, w - s)
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    m = ((rows >= top[:, None, None]) & (rows < (top + s)[:, None, None])
         & (cols >= left[:, None, None]) & (cols < (left + s)[:, None, None]))
    return m[..., None], top, left


# ----------------------------------------------------------------------- L2 bump templates


def _pseudo_gaussian_rect(x: int, y: int) -> np.ndarray:
    delta = np.zeros([x, y])
    x_c, y_c = x // 2 + 1, y // 2 + 1
    c0, c1 = x_c - 1, y_c - 1
    for counter in range(max(x_c, y_c)):
        delta[max(c0, 0):min(c0 + 2 * counter + 1, x),
              max(0, c1):min(c1 + 2 * counter + 1, y)] += 1.0 / (counter + 1) ** 2
        c0 -= 1
        c1 -= 1
    n = np.sqrt(np.sum(delta ** 2))
    return delta / n if n > 0 else delta


def meta_pseudo_gaussian(s: int) -> np.ndarray:
    """The L2 update shape: two pseudo-Gaussian halves of opposite sign, unit L2 norm [s, s]."""
    delta = np.zeros([s, s])
    delta[: s // 2] = _pseudo_gaussian_rect(s // 2, s)
    delta[s // 2:] = -_pseudo_gaussian_rect(s - s // 2, s)
    return delta / np.sqrt(np.sum(delta ** 2))


def _bump_grid(key, x, bump):
    """The reference's start: a grid of ``bump`` [s, s] (s = h // 5) with a random sign per bump
    and channel and a random transpose per bump; returns their sum [b, h, w, c]."""
    b, h, w, c = x.shape
    s = bump.shape[0]
    start = (h - s * 5) // 2
    pats, pats_t = [], []
    for i in range(h // s):
        for j in range(w // s):
            top, left = start + i * s, start + j * s
            full, full_t = np.zeros((h + s, w + s)), np.zeros((h + s, w + s))
            full[top:top + s, left:left + s] = bump
            full_t[top:top + s, left:left + s] = bump.T
            pats.append(full[:h, :w])
            pats_t.append(full_t[:h, :w])
    pats, pats_t = jnp.asarray(np.stack(pats), x.dtype), jnp.asarray(np.stack(pats_t), x.dtype)
    k_sign, k_t = jax.random.split(key)
    sign = jax.random.choice(k_sign, jnp.array([-1.0, 1.0], x.dtype), (b, len(pats), 1, 1, c))
    transpose = jax.random.bernoulli(k_t, 0.5, (b, len(pats), 1, 1, 1))
    blocks = jnp.where(transpose, pats_t[None, ..., None], pats[None, ..., None])
    return jnp.sum(blocks * sign, axis=1)


def _bump_tables(h, w, c, p_init, dtype, bump_fn, max_side):
    """Per schedule level: the side s (odd, >= 3, <= ``max_side``) and the bump ``bump_fn(s)``
    at the top-left of an h x w plane (normal, transposed)."""
    n = h * w * c
    sides, tab, tab_t = [], [], []
    for k in range(len(P_SCHEDULE) + 1):
        s = max(int(round(math.sqrt(p_init / 2 ** k * n / c))), 3)
        s = s + 1 if s % 2 == 0 else s
        s = min(s, max_side)
        t, t_t = np.zeros((h, w)), np.zeros((h, w))
        t[:s, :s] = bump_fn(s)
        t_t[:s, :s] = bump_fn(s).T
        sides.append(s)
        tab.append(t)
        tab_t.append(t_t)
    return (jnp.asarray(sides, jnp.int32), jnp.asarray(np.stack(tab), dtype),
            jnp.asarray(np.stack(tab_t), dtype))


def _l2_init(key, x, eps):
    """Grid of s x s bumps (s = h // 5) with random signs per channel, scaled to norm eps."""
    delta = _bump_grid(key, x, meta_pseudo_gaussian(max(x.shape[1] // 5, 1)))
    n = lp_norm(delta, "l2").reshape(x.shape[0], 1, 1, 1)
    return jnp.clip(x + delta / jnp.maximum(n, 1e-12) * eps, 0.0, 1.0)


def _l2_tables(h, w, c, p_init, dtype):
    """Per schedule level: the side s and the bump template at the top-left (normal, transposed)."""
    return _bump_tables(h, w, c, p_init, dtype, meta_pseudo_gaussian, min(h, w) - 1)


# ----------------------------------------------------------------------- L1 bump templates


def _l1_rect(x: int, y: int) -> np.ndarray:
    """AutoAttack's L1 ``eta_rectangles``: nested rings weighted 1 / (ring + 1)^4, unit L1."""
    delta = np.zeros([x, y])
    c0, c1 = x // 2, y // 2
    for counter in range(max(x // 2 + 1, y // 2 + 1)):
        delta[max(c0, 0):min(c0 + 2 * counter + 1, x),
              max(0, c1):min(c1 + 2 * counter + 1, y)] += 1.0 / (counter + 1) ** 4
        c0 -= 1
        c1 -= 1
    n = np.sum(np.abs(delta))
    return delta / n if n > 0 else delta


def l1_bump(s: int) -> np.ndarray:
    """The L1 update shape [s, s]: two halves of opposite sign, unit L1 norm (AutoAttack)."""
    delta = np.zeros([s, s])
    delta[: s // 2] = _l1_rect(s // 2, s)
    delta[s // 2:] = -_l1_rect(s - s // 2, s)
    return delta / np.sum(np.abs(delta))


def _l1_init(key, x, eps):
    """Grid of unit-L1 bumps (side h // 5) with random signs per channel, projected onto
    ``{||d||_1 <= eps (1 - 1e-6)} ∩ box`` (the reference does not rescale before projecting)."""
    delta = _bump_grid(key, x, l1_bump(max(x.shape[1] // 5, 1)))
    return jnp.clip(x + project_l1_box(delta, x, eps * (1.0 - 1e-6)), 0.0, 1.0)


def _l1_tables(h, w, c, p_init, dtype):
    """Per schedule level: the side s (odd, >= 3, <= min(h, w)) and the L1 bump at the
    top-left (normal, transposed)."""
    return _bump_tables(h, w, c, p_init, dtype, l1_bump, min(h, w))


# -------------------------------------------------------------------------------- attack


@attack_entry(gradient=False)
def square(apply_fn, params, x: Array, y: Array, key: Array,
           config: SquareConfig = SquareConfig()) -> AttackResult:
    """Square attack: x [b, H, W, C] in [0, 1], y int [b] -> AttackResult.

    ``x_adv`` lies in the eps ball (``norm``) around ``x`` and in [0, 1]; ``loss`` is the final
    margin ``max_{j != y} z_j - z_y`` (positive = adversarial; targeted: ``z_t - max_other``);
    ``queries`` is the number of forward passes spent on each example.

    Example::

        res = jax.jit(functools.partial(square, model.apply_fn, config=SquareConfig(eps=0.3)))(
            model.params, x, y, jax.random.key(0))
    """
    if min(x.shape[1], x.shape[2]) < 2:
        raise ValueError(f"Square needs images of at least 2x2 pixels, got shape {x.shape}")
    cfg = config
    b, h, w, c = x.shape
    n_features = h * w * c
    n_iters = cfg.n_queries
    eps = jnp.asarray(cfg.eps, x.dtype)
    loss_name = cfg.loss or ("ce" if cfg.targeted else "margin")

    def evaluate(x_eval):
        logits = apply_fn(params, x_eval)
        loss, marg = _objectives(logits, y, cfg.targeted, loss_name)
        return loss, marg, success_mask(logits, y, cfg.targeted)

    k_init, k_loop = jax.random.split(key)
    if cfg.norm == "linf":
        stripes = jax.random.choice(k_init, jnp.array([-1.0, 1.0], x.dtype), (b, 1, w, c))
        x_best = jnp.clip(x + eps * stripes, 0.0, 1.0)
    elif cfg.norm == "l2":
        x_best = _l2_init(k_init, x, eps)
        sides, tab, tab_t = _l2_tables(h, w, c, cfg.p_init, x.dtype)
    else:
        x_best = _l1_init(k_init, x, eps)
        sides, tab, tab_t = _l1_tables(h, w, c, cfg.p_init, x.dtype)
    loss_min, margin_min, succ = evaluate(x_best)
    queries = jnp.ones((b,), jnp.int32)

    def linf_candidate(k, i, x_best):
        p = p_selection(cfg.p_init, i, n_iters, cfg.rescale_schedule)
        s = jnp.round(jnp.sqrt(p * n_features / c)).astype(jnp.int32)
        s = jnp.clip(s, 1, min(h, w) - 1)
        k_win, k_sign = jax.random.split(k)
        mask, _, _ = _window_mask(k_win, b, h, w, s)
        delta = x_best - x

        def propose(kk):
            signs = jax.random.choice(kk, jnp.array([-1.0, 1.0], x.dtype), (b, 1, 1, c))
            return jnp.where(mask, eps * signs, delta)

        def changed(d):  # the reference redraws until the square changes some pixel
            diff = jnp.abs(jnp.clip(x + d, 0.0, 1.0) - x_best) >= 1e-7
            return jnp.any(diff & mask, axis=(1, 2, 3))

        def cond(st):
            t, _, d = st
            return (t < 16) & ~jnp.all(changed(d))

        def body(st):
            t, kk, d = st
            kk, sub = jax.random.split(kk)
            return t + 1, kk, jnp.where(changed(d)[:, None, None, None], d, propose(sub))

        k0, k1 = jax.random.split(k_sign)
        _, _, d = jax.lax.while_loop(cond, body, (0, k1, propose(k0)))
        return jnp.clip(x + d, 0.0, 1.0)

    def windows(k, i, x_best, nrm):
        """The two windows of the L2/L1 proposal (AutoAttack's square.py): ``mask1`` gets a
        fresh signed bump, ``mask2`` is emptied; the norms ``nrm`` of the current
        perturbation in window 1, the image, and both windows."""
        lv = _level(i, n_iters, cfg.rescale_schedule)
        k_w1, k_w2, k_sign, k_t = jax.random.split(k, 4)
        mask1, top, left = _window_mask(k_w1, b, h, w, sides[lv])
        mask2, _, _ = _window_mask(k_w2, b, h, w, sides[lv])
        delta = x_best - x
        norms = (nrm(delta * mask1, (1, 2)),                   # [b, 1, 1, c]
                 nrm(delta, (1, 2, 3)),                        # [b, 1, 1, 1]
                 nrm(delta * (mask1 | mask2), (1, 2)))         # [b, 1, 1, c]
        transpose = jax.random.bernoulli(k_t, 0.5, (b,))
        pat = jnp.where(transpose[:, None, None], tab_t[lv][None], tab[lv][None])
        pat = jax.vmap(lambda p, t, l: jnp.roll(p, (t, l), axis=(0, 1)))(pat, top, left)
        signs = jax.random.choice(k_sign, jnp.array([-1.0, 1.0], x.dtype), (b, 1, 1, c))
        return mask1, mask2, delta, pat[..., None] * signs, norms

    def l2_candidate(k, i, x_best):
        sq = lambda v, axes: jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))
        mask1, mask2, delta, bump, (norm_win1, norm_img, norm_wins) = windows(k, i, x_best, sq)
        new = bump + delta * mask1 / (1e-10 + norm_win1)
        budget = jnp.sqrt(jnp.maximum(eps ** 2 - norm_img ** 2, 0.0) / c + norm_wins ** 2)
        new = new / jnp.maximum(sq(new, (1, 2)), 1e-12) * budget
        d = jnp.where(mask1, new, jnp.where(mask2, 0.0, delta))
        d = d / jnp.maximum(sq(d, (1, 2, 3)), 1e-12) * eps
        return jnp.clip(x + d, 0.0, 1.0)

    def l1_candidate(k, i, x_best):
        l1 = lambda v, axes: jnp.sum(jnp.abs(v), axis=axes, keepdims=True)
        mask1, mask2, delta, bump, (norm_win1, norm_img, norm_wins) = windows(k, i, x_best, l1)
        new = bump + delta * mask1 / (1e-12 + norm_win1)
        # the reference's budget: the room left in the ball, shared over the channels, plus
        # the mass of both windows, times c (the projection below restores the budget)
        budget = (jnp.maximum(eps - norm_img, 0.0) / c + norm_wins) * c
        new = new / (1e-12 + l1(new, (1, 2))) * budget
        d = jnp.where(mask1, new, jnp.where(mask2, 0.0, delta))
        return jnp.clip(x + project_l1_box(d, x, eps * (1.0 - 1e-6)), 0.0, 1.0)

    candidate = {"linf": linf_candidate, "l2": l2_candidate, "l1": l1_candidate}[cfg.norm]

    def cond(st):
        i, _, _, margin_min, _, _ = st
        return (i < n_iters - 1) & jnp.any(margin_min > 0)

    def body(st):
        i, x_best, loss_min, margin_min, succ, queries = st
        active = margin_min > 0
        x_new = candidate(jax.random.fold_in(k_loop, i), i, x_best)
        loss, marg, s_new = evaluate(x_new)
        better = active & (loss < loss_min)
        x_best = jnp.where(better[:, None, None, None], x_new, x_best)
        return (i + 1, x_best, jnp.where(better, loss, loss_min),
                jnp.where(better, marg, margin_min), jnp.where(better, s_new, succ),
                queries + active.astype(jnp.int32))

    st = (jnp.int32(0), x_best, loss_min, margin_min, succ, queries)
    _, x_best, _, margin_min, succ, queries = jax.lax.while_loop(cond, body, st)
    return AttackResult(x_adv=x_best, success=succ, loss=-margin_min,
                        norm=lp_norm(x_best - x, cfg.norm).astype(jnp.float32), queries=queries)
