"""ZOO (Chen, Zhang, Sharma, Yi & Hsieh 2017), a score-based black-box attack under L2.

"ZOO: Zeroth Order Optimization based Black-box Attacks to Deep Neural Networks without
Training Substitute Models", AISec 2017, Sec. 3: the C&W objective on log-probabilities
(eq. 5-6),

    minimise ||delta||_2^2 + c f(x + delta),
    f = max(log p_y - max_{j != y} log p_j, -kappa)   (targeted: max_{j != t} log p_j - log p_t),

by stochastic coordinate descent with symmetric finite differences (eq. 7,
``g_i = (L(x + h e_i) - L(x - h e_i)) / (2h)``) and ZOO-ADAM (Algorithm 2: per-coordinate
Adam moments and step counts, then the update is projected onto the [0, 1] box). Each step
takes ``coordinates_per_step`` coordinates at random per example (the paper's batch of 128),
scores them together with the current point in one batched call (``2B + 1`` images per
example), and keeps the closest adversarial point seen. A binary search over ``c``
(``binary_search_steps``, as in C&W) restarts from ``delta = 0`` each time.

Not implemented: the attack-space dimension reduction, hierarchical attack and importance
sampling of Sec. 3.4-3.5 (for ImageNet-sized inputs), and the released code's early abort.
Queries are exact and static: ``binary_search_steps * iterations * (2B + 1)`` per example,
``iterations`` capped so that ``max_queries`` is never passed. Scores only: the model is
used through forward passes.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.attacks._core import AttackResult, lp_norm
from robustjax.attacks.decision import bcast
from robustjax.attacks.gradient import config_class
from robustjax.entry import attack_entry

Array = jax.Array


@config_class()
class ZOOConfig:
    """ZOO-ADAM settings; defaults from Chen et al. 2017 (Sec. 4) and the released code.

    Attributes:
      learning_rate: ADAM step eta (0.01); beta1, beta2 its moments (0.9, 0.999).
      h: finite-difference step (1e-4).
      coordinates_per_step: B coordinates estimated per step (128).
      iterations: steps per binary-search step (capped by ``max_queries``).
      binary_search_steps: searches over c (the released code: 1; C&W: 9).
      initial_const: the first c.
      confidence: kappa (0).
      max_queries: optional per-example budget of forward passes; never exceeded.
      targeted: ``y`` holds target labels.
    """

    learning_rate: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    h: float = 1e-4
    coordinates_per_step: int = 128
    iterations: int = 1000
    binary_search_steps: int = 1
    initial_const: float = 1.0
    confidence: float = 0.0
    max_queries: Optional[int] = None
    targeted: bool = False

    @property
    def norm(self) -> str:
        return "l2"

    def __post_init__(self):
        for name in ("coordinates_per_step", "binary_search_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")
        if not (self.h > 0 and self.learning_rate > 0 and self.initial_const > 0):
            raise ValueError("need h, learning_rate and initial_const > 0, got "
                             f"{self.h}, {self.learning_rate}, {self.initial_const}")

    def queries_per_step(self, d: int) -> int:
        return 2 * min(self.coordinates_per_step, d) + 1

    def num_iterations(self, d: int) -> int:
        """Iterations per binary-search step actually run (capped by the budget)."""
        if self.max_queries is None:
            return self.iterations
        per = self.binary_search_steps * self.queries_per_step(d)
        return min(self.iterations, self.max_queries // per)


def fd_points(flat: Array, idx: Array, h: float) -> Array:
    """[b, d] points and coordinates [b, B] -> [b, 2B + 1, d]: the point, +h e_i, -h e_i."""
    e = jax.nn.one_hot(idx, flat.shape[1], dtype=flat.dtype) * h
    return jnp.concatenate([flat[:, None], flat[:, None] + e, flat[:, None] - e], axis=1)


def fd_gradient(f: Array, h: float) -> Array:
    """Losses [b, 2B + 1] at ``fd_points`` -> eq. 7's estimates [b, B]."""
    nb = (f.shape[1] - 1) // 2
    return (f[:, 1:nb + 1] - f[:, nb + 1:]) / (2.0 * h)


def zoo_gradient(loss_fn, x: Array, idx: Array, h: float) -> Array:
    """ZOO's estimate of ``d loss_fn / d x`` along coordinates ``idx`` [b, B] of ``x`` [b, ...].

    ``loss_fn`` maps [b * (2B + 1), ...] (example-major ``fd_points``) to losses. Returns
    [b, B]: ``(L(x + h e_i) - L(x - h e_i)) / (2h)``, as the attack computes it.
    """
    b, nb = idx.shape
    pts = fd_points(x.reshape(b, -1), idx, h)
    f = loss_fn(pts.reshape((b * (2 * nb + 1),) + x.shape[1:])).reshape(b, 2 * nb + 1)
    return fd_gradient(f, h)


def _cw_log_margin(logits, y, targeted):
    """log p_y - max_{j != y} log p_j (targeted: max_{j != t} log p_j - log p_t), [b]."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
    real = jnp.sum(jnp.where(onehot, logp, 0.0), axis=-1)
    other = jnp.max(jnp.where(onehot, -jnp.inf, logp), axis=-1)
    return other - real if targeted else real - other


@attack_entry(gradient=False)
def zoo(apply_fn, params, x: Array, y: Array, key: Array,
        config: ZOOConfig = ZOOConfig()) -> AttackResult:
    """ZOO-ADAM (L2): x [b, H, W, C] in [0, 1], y int [b] -> AttackResult (scores only).

    ``x_adv`` is the closest adversarial point found (else ``x``); ``loss`` is the
    C&W log-probability margin ``max_{j != y} log p_j - log p_y`` there (positive =
    adversarial); ``queries`` the forward passes per example.

    Example::

        res = jax.jit(functools.partial(zoo, model.apply_fn, config=ZOOConfig(iterations=100)))(
            model.params, x, y, jax.random.key(0))
    """
    cfg = config
    b = x.shape[0]
    d = int(np.prod(x.shape[1:]))
    nb = min(cfg.coordinates_per_step, d)
    iters = cfg.num_iterations(d)
    m = 2 * nb + 1  # images per example and step: the point and its 2B neighbours
    y_rep = jnp.repeat(y, m)
    xf = x.reshape(b, -1)

    def objective(pts, c):
        """pts [b, m, d] -> (total loss [b, m], margin [b, m]) from one batched call."""
        logits = apply_fn(params, pts.reshape((b * m,) + x.shape[1:]))
        marg = _cw_log_margin(logits, y_rep, cfg.targeted).reshape(b, m)
        l2 = jnp.sum((pts - xf[:, None]) ** 2, axis=-1)
        return l2 + c[:, None] * jnp.maximum(marg, -cfg.confidence), marg

    def step(i, st, c, k_bs):
        delta, mt, vt, epoch, hit, best_l2, best_x, best_m = st
        # B distinct coordinates per example, uniformly at random
        idx = jax.lax.top_k(jax.random.uniform(jax.random.fold_in(k_bs, i), (b, d)), nb)[1]
        cur = xf + delta
        loss, marg = objective(fd_points(cur, idx, cfg.h), c)
        # the current point (index 0): adversarial when the margin is below -kappa
        l2_0 = jnp.sum(delta * delta, axis=-1)
        adv = marg[:, 0] < -cfg.confidence
        hit = hit | adv
        better = adv & (l2_0 < best_l2)
        best_l2 = jnp.where(better, l2_0, best_l2)
        best_x = jnp.where(better[:, None], cur, best_x)
        best_m = jnp.where(better, -marg[:, 0], best_m)
        g = fd_gradient(loss, cfg.h)  # eq. 7
        take = lambda a: jnp.take_along_axis(a, idx, axis=1)  # noqa: E731
        put = lambda a, v: jax.vmap(lambda r, j, w: r.at[j].set(w))(a, idx, v)  # noqa: E731
        m_i = cfg.beta1 * take(mt) + (1 - cfg.beta1) * g
        v_i = cfg.beta2 * take(vt) + (1 - cfg.beta2) * g * g
        t_i = take(epoch)
        corr = jnp.sqrt(1 - cfg.beta2 ** t_i) / (1 - cfg.beta1 ** t_i)
        new = take(delta) - cfg.learning_rate * corr * m_i / (jnp.sqrt(v_i) + 1e-8)
        new = jnp.clip(new, -take(xf), 1.0 - take(xf))  # x + delta stays in [0, 1]
        return (put(delta, new), put(mt, m_i), put(vt, v_i), put(epoch, t_i + 1), hit,
                best_l2, best_x, best_m)

    def bs_step(j, carry):
        """One value of c: ``iters`` steps from delta = 0 with fresh ADAM state (as C&W)."""
        c, lo, hi, best_l2, best_x, best_m = carry
        z = jnp.zeros_like(xf)
        st = (z, z, z, jnp.ones_like(xf), jnp.zeros((b,), bool), best_l2, best_x, best_m)
        k_bs = jax.random.fold_in(key, j)
        st = jax.lax.fori_loop(0, iters, lambda i, s: step(i, s, c, k_bs), st)
        _, _, _, _, hit, best_l2, best_x, best_m = st
        # C&W's search: smaller c after a success, larger (x10 until bracketed) after a failure
        hi = jnp.where(hit, jnp.minimum(hi, c), hi)
        lo = jnp.where(hit, lo, jnp.maximum(lo, c))
        c = jnp.where(hi < 1e9, (lo + hi) / 2.0, c * 10.0)
        return c, lo, hi, best_l2, best_x, best_m

    c0 = jnp.full((b,), cfg.initial_const, jnp.float32)
    carry = (c0, jnp.zeros((b,)), jnp.full((b,), 1e10), jnp.full((b,), jnp.inf), xf,
             jnp.full((b,), -jnp.inf))
    carry = jax.lax.fori_loop(0, cfg.binary_search_steps, bs_step, carry)
    _, _, _, best_l2, best_x, best_m = carry
    found = jnp.isfinite(best_l2)
    x_adv = jnp.where(bcast(found, x), best_x.reshape(x.shape), x)
    queries = jnp.full((b,), cfg.binary_search_steps * iters * m, jnp.int32)
    return AttackResult(x_adv=x_adv, success=found, loss=best_m.astype(jnp.float32),
                        norm=lp_norm(x_adv - x, "l2").astype(jnp.float32), queries=queries)
