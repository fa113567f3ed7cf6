"""Around any attack: restarts, minimum-eps bisection and eps sweeps.

Every function takes an attack ``attack(apply_fn, params, x, y, key, config)`` whose config has
an ``eps`` leaf (and optionally ``step_size``, which is rescaled with eps so that the step
keeps its ratio to the radius, e.g. PGD's 2/255 at 8/255 becomes eps / 4). All of them are
jittable with ``attack`` and ``apply_fn`` static, e.g.::

    results = eps_sweep(pgd, f, params, x, y, key, PGDConfig(), jnp.array([1, 2, 4, 8]) / 255)

On CPU, call it eagerly: the fastest strategy there (``"loop"``) runs one compiled attack per
eps; under ``jit`` it falls back to unrolling.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import entry
from robustjax.attacks import _core, gradient
from robustjax.attacks._core import AttackResult

STRATEGIES = ("auto", "shared", "loop", "unroll", "map", "vmap")
_JITTED = {}  # attack -> jax.jit(attack, static_argnums=0), for the eager "loop" strategy


def with_eps(config, eps):
    """``config`` at radius ``eps`` (scalar or [b]); a ``step_size`` keeps its ratio to eps."""
    changes = {"eps": eps}
    if hasattr(config, "step_size"):
        changes["step_size"] = config.step_size * (eps / config.eps)
    return dataclasses.replace(config, **changes)


def _pick(better, new, old):
    """Per-example select between two AttackResults (``better`` [b] bool)."""
    def sel(a, b):
        return jnp.where(better.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(sel, new, old)


def restarts(attack, apply_fn, params, x, y, key, config, n: int) -> AttackResult:
    """Run ``attack`` ``n`` times with fresh keys; keep per example the first success, else the
    highest loss. A restart is skipped (``lax.cond``) once every example is broken: a per-example
    early stop at the granularity of whole runs. ``queries`` add up over the runs performed.
    """
    if n == 1:
        return attack(apply_fn, params, x, y, key, config)
    b = x.shape[0]
    none = AttackResult(x, jnp.zeros((b,), bool), jnp.full((b,), -jnp.inf, jnp.float32),
                        jnp.zeros((b,), jnp.float32), jnp.zeros((b,), jnp.int32))

    def body(i, best):
        def run(best):
            new = attack(apply_fn, params, x, y, jax.random.fold_in(key, i), config)
            better = (~best.success) & (new.success | (new.loss > best.loss))
            merged = _pick(better, new, best)
            return merged._replace(queries=best.queries + new.queries)

        return jax.lax.cond(jnp.all(best.success), lambda b: b, run, best)

    return jax.lax.fori_loop(0, n, body, none)


def early_stopped(attack, apply_fn, params, x, y, key, config) -> AttackResult:
    """``attack`` with per-example early stop where the attack supports it (PGD's flag)."""
    if hasattr(config, "early_stop"):
        config = dataclasses.replace(config, early_stop=True)
    return attack(apply_fn, params, x, y, key, config)


def min_eps(attack, apply_fn, params, x, y, key, config, eps_max, steps: int = 10):
    """Per-example smallest successful eps in ``[0, eps_max]`` by bisection (``steps`` halvings).

    Assumes success is monotone in eps (true in expectation for a fixed attack). Returns
    ``(eps_min [b], AttackResult at eps_min)``; ``eps_min = inf`` where the attack fails even
    at ``eps_max``; an example already misclassified gets 0 (checked with a clean forward pass).
    Each probe calls the attack with a per-example eps; the cost is ``steps + 1`` attack runs.
    """
    b = x.shape[0]
    hi = jnp.full((b,), eps_max, x.dtype)
    at_max = attack(apply_fn, params, x, y, key, with_eps(config, hi))
    clean_wrong = jnp.argmax(apply_fn(params, x), -1) != y
    lo = jnp.zeros((b,), x.dtype)

    def body(i, carry):
        lo, hi, best = carry
        mid = 0.5 * (lo + hi)
        r = attack(apply_fn, params, x, y, jax.random.fold_in(key, i + 1), with_eps(config, mid))
        best = _pick(r.success, r, best)
        return jnp.where(r.success, lo, mid), jnp.where(r.success, mid, hi), best

    lo, hi, best = jax.lax.fori_loop(0, steps, body, (lo, hi, at_max))
    eps_min = jnp.where(at_max.success, hi, jnp.inf)
    eps_min = jnp.where(clean_wrong, 0.0, eps_min)
    return eps_min, best


def _is_shareable_fgsm(attack) -> bool:
    return attack is gradient.fgsm


def fgsm_sweep(apply_fn, params, x, y, config, eps_values) -> AttackResult:
    """FGSM/FGM at every eps from ONE input gradient (the eps-independent work is shared)."""
    grad, _, _ = gradient.input_gradient(apply_fn, params, x, y, config.loss, config.targeted)
    loss_fn = _core.get_loss(config.loss)

    def at(eps):
        x_adv = gradient.fgsm_from_gradient(x, grad, eps, config.norm, config.l1_sparsity)
        return _core.finish(apply_fn, params, x, x_adv, y,
                            lambda z: loss_fn(z, y, targeted=config.targeted), config.norm, 1,
                            config.targeted)

    return jax.vmap(at)(eps_values)


def auto_strategy(attack, hint=None) -> str:
    """The measured-fastest way to sweep (benchmarks/results/attacks_speed.md).

    ``hint`` (``robustjax.entry.loop_hint``): the convolutions the model runs; without it, the
    kernels' global switch decides.
    """
    if _is_shareable_fgsm(attack):
        return "shared"
    # XLA:CPU's own convolutions (2 cores, CNN, PGD-10, 8 eps): one compiled attack called per
    # eps beat unrolling the eps loop in one program (0.4x), vmap (0.28x: 8x the memory) and
    # lax.map (0.1x: the attack inside a while loop loses the fast conv path). With the oneDNN
    # kernels vmap folds the eps axis into each convolution's batch and was fastest in three
    # runs (1.20-1.33x the separate calls; loop 0.91-1.05x). On accelerators vmap fills the
    # device.
    unroll = hint.unroll_is_faster if hint is not None else _core.unroll_is_faster()
    return "loop" if unroll else "vmap"


def eps_sweep(attack, apply_fn, params, x, y, key, config, eps_values,
              strategy: str = "auto") -> AttackResult:
    """``attack`` at every eps in ``eps_values`` [n]: an AttackResult with leading axis n.

    ``strategy``: ``"shared"`` (FGSM only: one gradient for all eps), ``"loop"`` (one compiled
    attack, eps as an argument, called once per eps; under ``jit`` this becomes ``"unroll"``),
    ``"unroll"`` (the eps loop written out in one program), ``"map"`` (``lax.map``), ``"vmap"``,
    or ``"auto"`` (``auto_strategy``). Every eps uses the same key, so results differ only
    through eps; all strategies give the same numbers.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if strategy == "auto":
        strategy = auto_strategy(attack, entry.loop_hint(entry.model_function(apply_fn),
                                                         params, x))
    eps_values = jnp.asarray(eps_values, jnp.float32)
    if strategy == "shared":
        if not _is_shareable_fgsm(attack):
            raise ValueError("strategy='shared' is only for gradient.fgsm (its gradient does not "
                             f"depend on eps); got {getattr(attack, '__name__', attack)!r}")
        return fgsm_sweep(apply_fn, params, x, y, config, eps_values)

    def at(eps, run=attack):
        return run(apply_fn, params, x, y, key, with_eps(config, eps))

    if strategy == "loop":
        if entry.is_traced(params, x, y, key, config, eps_values):
            strategy = "unroll"
        else:
            run = _JITTED.setdefault(attack, jax.jit(attack, static_argnums=0))
            # host floats: no eager device ops between the compiled calls
            results = [at(float(e), run) for e in np.asarray(eps_values)]
            return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *results)
    if strategy == "vmap":
        return jax.vmap(at)(eps_values)
    if strategy == "map":
        return jax.lax.map(at, eps_values)
    results = [at(eps_values[i]) for i in range(eps_values.shape[0])]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *results)
