"""JSMA, the Jacobian-based saliency map attack (Papernot et al. 2016), a white-box L0 attack.

"The limitations of deep learning in adversarial settings", EuroS&P 2016, Alg. 3 with the
pairwise saliency map of Eq. 10: for the target class ``t`` and logits ``Z`` (as in the
authors' later CleverHans code and torchattacks),

    alpha_pq = sum_{i in {p, q}} dZ_t / dx_i,   beta_pq = sum_{i in {p, q}} sum_{j != t} dZ_j / dx_i

and the pair ``(p, q)`` of distinct, still searchable features with ``alpha > 0`` and
``beta < 0`` (``theta > 0``; signs flipped for ``theta < 0``) that maximises
``alpha * |beta|`` is moved by ``theta`` (clipped to [0, 1]) and leaves the search domain.
The domain starts as the features below 0.99 (above 0.01 for ``theta < 0``). The loop stops
when the model predicts the target, when ``ceil(gamma * n / 2)`` pairs have been changed
(``n`` = H * W * C features, so at most a fraction ``gamma`` of them), or when no pair
qualifies.

JSMA is a targeted attack. Untargeted (``targeted=False``) it aims at ``(y + 1) mod K`` as
torchattacks does, and stops as soon as the prediction leaves ``y``. ``queries`` counts the
iterations per example: one forward pass and the two Jacobian rows it needs.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from robustjax.attacks._core import AttackResult, margin, success_mask
from robustjax.attacks.l0 import l0_pixels
from robustjax.entry import attack_entry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class JSMAConfig:
    """JSMA settings; defaults from Papernot et al. 2016 (Sec. IV-A: theta = +1,
    gamma = 14.5%).

    Attributes:
      theta: the change applied to each selected feature (pixel units; +1 sets it to 1).
      gamma: the largest fraction of features that may change.
      targeted: if True ``y`` holds target classes; else the target is ``(y + 1) mod K``.
    """

    theta: float = 1.0
    gamma: float = 0.145
    targeted: bool = False

    def __post_init__(self):
        if self.theta == 0:
            raise ValueError("theta must be non-zero (+1 raises features, -1 lowers them)")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")


def pair_saliency(d_target: Array, d_others: Array, domain: Array, increasing: bool):
    """The best pair of one example: d_target, d_others, domain [n] -> (p, q, found).

    ``d_target`` is dZ_t/dx, ``d_others`` sum_{j != t} dZ_j/dx; ``domain`` marks searchable
    features. Builds the n x n map of Eq. 10 (fused by XLA into the argmax).
    """
    n = d_target.shape[0]
    a = d_target[:, None] + d_target[None, :]
    o = d_others[:, None] + d_others[None, :]
    ok = domain[:, None] & domain[None, :] & ~jnp.eye(n, dtype=bool)
    ok = ok & ((a > 0) & (o < 0) if increasing else (a < 0) & (o > 0))
    sal = jnp.where(ok, jnp.abs(a) * jnp.abs(o), -1.0)
    best = jnp.argmax(sal.reshape(-1))
    return best // n, best % n, sal.reshape(-1)[best] >= 0


@attack_entry
def jsma(apply_fn, params, x: Array, y: Array, key: Array,
         config: JSMAConfig = JSMAConfig()) -> AttackResult:
    """JSMA: x [b, H, W, C] in [0, 1], y int [b] -> AttackResult.

    ``x_adv`` differs from ``x`` in at most ``2 * ceil(gamma * n / 2)`` features and lies in
    [0, 1]; ``norm`` is the L0 count in pixels; ``loss`` the final margin of the target
    (``z_t - max_{j != t} z_j``; untargeted ``max_{j != y} z_j - z_y``); ``queries`` the
    iterations spent on each example. The key is unused (JSMA is deterministic).

    Example::

        res = jax.jit(functools.partial(jsma, model.apply_fn, config=JSMAConfig()))(
            model.params, x, y, jax.random.key(0))
    """
    del key
    cfg = config
    b = x.shape[0]
    n = math.prod(x.shape[1:])
    max_iters = int(math.ceil(n * cfg.gamma / 2.0))
    increasing = cfg.theta > 0

    def forward(xf):
        return apply_fn(params, xf.reshape(x.shape))

    logits0 = forward(x.reshape(b, n))
    k = logits0.shape[-1]
    target = y if cfg.targeted else (y + 1) % k
    xf0 = x.reshape(b, n)
    domain0 = xf0 < 0.99 if increasing else xf0 > 0.01

    def jacobian_rows(xf):
        logits, vjp = jax.vjp(forward, xf)
        onehot = jax.nn.one_hot(target, k, dtype=logits.dtype)
        d_t = vjp(onehot)[0]
        d_all = vjp(jnp.ones_like(logits))[0]
        return logits, d_t, d_all - d_t

    def done(logits):
        return success_mask(logits, y, cfg.targeted)

    def cond(st):
        i, _, _, active, _ = st
        return (i < max_iters) & jnp.any(active)

    def body(st):
        i, xf, domain, active, queries = st
        _, d_t, d_o = jacobian_rows(xf)
        p, q, found = jax.lax.map(lambda a: pair_saliency(*a, increasing),
                                  (d_t, d_o, domain))
        move = active & found
        rows = jnp.arange(b)
        step = jnp.where(move, cfg.theta, 0.0).astype(xf.dtype)
        xf = xf.at[rows, p].add(step).at[rows, q].add(step)
        xf = jnp.clip(xf, 0.0, 1.0)
        domain = domain.at[rows, p].set(domain[rows, p] & ~move)
        domain = domain.at[rows, q].set(domain[rows, q] & ~move)
        queries = queries + active.astype(jnp.int32)
        active = move & ~done(forward(xf))
        return i + 1, xf, domain, active, queries

    active = ~done(logits0) & jnp.any(domain0, axis=1)
    st = (jnp.int32(0), xf0, domain0, active, jnp.zeros((b,), jnp.int32))
    _, xf, _, _, queries = jax.lax.while_loop(cond, body, st)
    x_adv = xf.reshape(x.shape)
    logits = forward(xf)
    loss = margin(logits, y, cfg.targeted)
    return AttackResult(x_adv=x_adv, success=done(logits), loss=loss.astype(jnp.float32),
                        norm=l0_pixels(x_adv - x), queries=queries)
