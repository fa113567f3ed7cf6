"""Carlini & Wagner attacks: C&W L2 (minimum norm) and C&W Linf (PGD on the C&W margin).

C&W L2 (Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P
2017, Sec. V.A): minimise ``||x' - x||_2^2 + c * f(x')`` over ``x' = (tanh(w) + 1) / 2`` (the
change of variables keeps ``x'`` in [0, 1]), with ``f = max(z_y - max_{j != y} z_j, -kappa)``
(eq. f6; targeted: ``max(max_{j != t} z_j - z_t, -kappa)``), Adam, and a per-example binary
search over ``c``: start at ``initial_const``, multiply by 10 while no adversarial example is
found, bisect once one is. Returned: the smallest-L2 adversarial example over all ``c``.
Follows the authors' ``l2_attack.py``, except that early abort (every ``max_iterations // 10``
iterations, stop when the loss did not fall by 0.01%) is decided per example instead of on the
batch sum, so an example's result does not depend on the rest of its batch.

C&W Linf here is the variant used in Madry et al. 2018 and later robustness evaluations, not
the paper's iterative-tau Linf algorithm: projected sign-gradient ascent with a random start on
the C&W margin capped at ``kappa`` (Madry et al.'s ``-relu(z_y - max_other + 50)``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from robustjax.attacks import _core
from robustjax.attacks._core import AttackResult, margin
from robustjax.entry import attack_entry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CWL2Config:
    """C&W L2; defaults from Carlini & Wagner 2017 and their ``l2_attack.py``.

    Attributes:
      confidence: kappa of eq. f6; a larger kappa asks for a margin of at least kappa.
      learning_rate: Adam step on ``w`` (1e-2).
      binary_search_steps: rounds of the search over c (9). With >= 10 the last round uses
        the upper bound (the paper's "repeat" rule).
      max_iterations: Adam steps per round (10,000; use a few hundred for quick runs).
      abort_early: stop a round when the loss stalls (checked every ``max_iterations // 10``).
      initial_const: first c (1e-3).
      targeted: if True ``y`` holds target classes.
      adam: ``"tf"`` (the reference code's TensorFlow Adam) or ``"kingma"`` (the textbook
        form used by foolbox and torch); see ``adam_update``.
    """

    confidence: float = 0.0
    learning_rate: float = 1e-2
    binary_search_steps: int = 9
    max_iterations: int = 10000
    abort_early: bool = True
    initial_const: float = 1e-3
    targeted: bool = False
    adam: str = "tf"

    def __post_init__(self):
        if self.adam not in ADAM_FORMS:
            raise ValueError(f"adam must be one of {ADAM_FORMS}, got {self.adam!r}")
        if self.binary_search_steps < 1 or self.max_iterations < 1:
            raise ValueError("binary_search_steps and max_iterations must be >= 1, got "
                             f"{self.binary_search_steps}, {self.max_iterations}")
        if self.confidence < 0 or self.initial_const <= 0:
            raise ValueError(f"need confidence >= 0 and initial_const > 0, got "
                             f"{self.confidence}, {self.initial_const}")


ADAM_FORMS = ("tf", "kingma")


def adam_update(g, m, v, t, lr, form="tf", b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step with a per-example step count ``t`` [b].

    ``form="tf"``: TensorFlow 1's ``AdamOptimizer`` (the C&W reference code),
    ``-lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``. ``form="kingma"``: Kingma & Ba's
    Algorithm 1 (torch.optim.Adam, optax, foolbox), ``-lr m_hat / (sqrt(v_hat) + eps)``. They
    differ only in where eps enters, which matters for the tiny gradients of saturated pixels
    (x at 0 or 1, where tanh' is ~1e-6): the "tf" form damps their steps, "kingma" does not.
    """
    t = t + 1
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    tb = t.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1))
    if form == "tf":
        lr_t = lr * jnp.sqrt(1 - b2 ** tb) / (1 - b1 ** tb)
        return -lr_t * m / (jnp.sqrt(v) + eps), m, v, t
    m_hat, v_hat = m / (1 - b1 ** tb), v / (1 - b2 ** tb)
    return -lr * m_hat / (jnp.sqrt(v_hat) + eps), m, v, t


def kappa_success(logits: Array, y: Array, targeted: bool, kappa) -> Array:
    """The reference ``compare``: argmax after moving ``z_y`` by kappa against the attacker."""
    onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    shifted = logits - kappa * onehot if targeted else logits + kappa * onehot
    pred = jnp.argmax(shifted, axis=-1)
    return pred == y if targeted else pred != y


def update_const(found, const, lower, upper):
    """The reference binary-search rule for c, per example (``found``: adversarial this round)."""
    upper = jnp.where(found, jnp.minimum(upper, const), upper)
    lower = jnp.where(found, lower, jnp.maximum(lower, const))
    bisect = (lower + upper) / 2
    const = jnp.where(upper < 1e9, bisect, jnp.where(found, const, const * 10))
    return const, lower, upper


def track_step(check, loss, prev, active, success, dist, best, found, o_dist, o_x, x_new):
    """One iteration's bookkeeping of the reference C&W loop (shared with EAD), per example:
    abort when the loss stopped falling by 0.01% since the last ``check``; among successful
    iterates keep the smallest distance of this round (``best``, ``found``) and overall
    (``o_dist``, ``o_x``). Returns ``prev, active, best, found, o_dist, o_x``."""
    stalled = check & (loss > prev * 0.9999)
    prev = jnp.where(check, loss, prev)
    active = active & ~stalled
    ok = active & success
    better = ok & (dist < best)
    best = jnp.where(better, dist, best)
    found = found | better
    o_better = ok & (dist < o_dist)
    o_dist = jnp.where(o_better, dist, o_dist)
    o_x = jnp.where(o_better.reshape((-1,) + (1,) * (x_new.ndim - 1)), x_new, o_x)
    return prev, active, best, found, o_dist, o_x


def binary_search(one_round, apply_fn, params, x, y, cfg, norm: str) -> AttackResult:
    """The reference's outer loop over c: ``cfg.binary_search_steps`` rounds of
    ``one_round(r, (const, lower, upper, o_dist, o_x, queries))``, starting from
    ``cfg.initial_const``, then the result for the best example found (or ``x``)."""
    b = x.shape[0]
    outer = (jnp.full((b,), cfg.initial_const, x.dtype), jnp.zeros((b,), x.dtype),
             jnp.full((b,), 1e10, x.dtype), jnp.full((b,), 1e10, x.dtype), x,
             jnp.zeros((b,), jnp.int32))
    *_, x_adv, queries = jax.lax.fori_loop(0, cfg.binary_search_steps, one_round, outer)
    return _core.finish(apply_fn, params, x, x_adv, y,
                        lambda logits: margin(logits, y, cfg.targeted), norm, queries,
                        cfg.targeted)


@attack_entry
def cw_l2(apply_fn, params, x: Array, y: Array, key: Array,
          config: CWL2Config = CWL2Config()) -> AttackResult:
    """C&W L2: x [b, H, W, C] in [0, 1], y int [b] -> AttackResult (``key`` unused).

    ``x_adv`` is the smallest-L2 adversarial example found (``x`` itself where none was);
    ``loss`` is the margin ``max_{j != y} z_j - z_y`` at ``x_adv``; ``norm`` its L2 distance;
    ``queries`` the gradient evaluations spent per example.

    Example::

        res = jax.jit(functools.partial(cw_l2, model.apply_fn,
                                        config=CWL2Config(max_iterations=200)))(
            model.params, x, y, jax.random.key(0))
    """
    del key  # deterministic: the modifier starts at 0 in every round
    cfg = config
    b = x.shape[0]
    kappa = cfg.confidence
    w0 = jnp.arctanh((x - 0.5) / 0.5 * 0.999999)
    bshape = (b,) + (1,) * (x.ndim - 1)
    check_every = max(cfg.max_iterations // 10, 1)

    def objective(mod, const):
        x_new = jnp.tanh(w0 + mod) * 0.5 + 0.5
        logits = apply_fn(params, x_new)
        l2 = jnp.sum(((x_new - x) ** 2).reshape(b, -1), axis=-1)
        f = jnp.maximum(-margin(logits, y, cfg.targeted), -kappa)  # eq. f6
        per_ex = l2 + const * f
        return jnp.sum(per_ex), (per_ex, l2, logits, x_new)

    grad_fn = jax.grad(objective, has_aux=True)

    def one_round(r, outer):
        const, lower, upper, o_l2, o_x, queries = outer
        if cfg.binary_search_steps >= 10:  # "repeat": the last round uses the upper bound
            const = jnp.where((r == cfg.binary_search_steps - 1) & (upper < 1e9), upper, const)

        def cond(st):
            it, active = st[0], st[1]
            return (it < cfg.max_iterations) & jnp.any(active)

        def body(st):
            it, active, mod, m, v, t, prev, best_l2, found, o_l2, o_x, queries = st
            g, (loss, l2, logits, x_new) = grad_fn(mod, const)
            prev, active, best_l2, found, o_l2, o_x = track_step(
                cfg.abort_early & (it % check_every == 0), loss, prev, active,
                kappa_success(logits, y, cfg.targeted, kappa), l2, best_l2, found, o_l2, o_x,
                x_new)
            upd, m2, v2, t2 = adam_update(g, m, v, t, cfg.learning_rate, cfg.adam)
            a = active.reshape(bshape)
            mod = jnp.where(a, mod + upd, mod)
            m, v = jnp.where(a, m2, m), jnp.where(a, v2, v)
            t = jnp.where(active, t2, t)
            queries = queries + active.astype(jnp.int32)
            return it + 1, active, mod, m, v, t, prev, best_l2, found, o_l2, o_x, queries

        zeros = jnp.zeros_like(x)
        st = (jnp.int32(0), jnp.ones((b,), bool), zeros, zeros, zeros, jnp.zeros((b,), jnp.int32),
              jnp.full((b,), 1e6, x.dtype), jnp.full((b,), 1e10, x.dtype), jnp.zeros((b,), bool),
              o_l2, o_x, queries)
        st = jax.lax.while_loop(cond, body, st)
        found, o_l2, o_x, queries = st[8], st[9], st[10], st[11]
        const, lower, upper = update_const(found, const, lower, upper)
        return const, lower, upper, o_l2, o_x, queries

    return binary_search(one_round, apply_fn, params, x, y, cfg, "l2")


@dataclasses.dataclass(frozen=True)
class CWLinfConfig:
    """C&W Linf as PGD on the C&W margin (Madry et al. 2018's evaluation; kappa = 50).

    Defaults: Madry et al.'s CIFAR-10 threat model (eps 8/255, step 2/255) with 20 steps and a
    uniform random start; ``kappa`` caps the margin so that the loss stops rewarding examples
    that are already far across the boundary.
    """

    eps: float = 8.0 / 255.0
    step_size: float = 2.0 / 255.0
    steps: int = 20
    kappa: float = 50.0
    random_start: bool = True
    targeted: bool = False

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


@attack_entry
def cw_linf(apply_fn, params, x: Array, y: Array, key: Array,
            config: CWLinfConfig = CWLinfConfig()) -> AttackResult:
    """C&W Linf (PGD on the capped margin): x [b, H, W, C] in [0, 1] -> AttackResult.

    ``x_adv`` (the last iterate) lies within eps (Linf) of ``x`` and in [0, 1]; ``loss`` is the
    capped margin at ``x_adv`` (positive = adversarial).
    """
    cfg = config

    def obj(xa):
        return jnp.sum(margin(apply_fn(params, xa), y, cfg.targeted, cfg.kappa))

    x_adv = _core.random_start(key, x, cfg.eps, "linf") if cfg.random_start else x

    def body(_, xa):
        g = jax.grad(obj)(xa)
        return _core.project(xa + cfg.step_size * jnp.sign(g), x, cfg.eps, "linf")

    x_adv = jax.lax.fori_loop(0, cfg.steps, body, x_adv)
    return _core.finish(apply_fn, params, x, x_adv, y,
                        lambda logits: margin(logits, y, cfg.targeted, cfg.kappa), "linf",
                        cfg.steps, cfg.targeted)
