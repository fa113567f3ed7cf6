"""Adversarial training losses: PGD-AT, TRADES, MART and fast (FGSM) AT.

Each ``<method>_loss(config)`` returns a ``loss_fn(apply_fn, params, x, y, key, step) ->
scalar`` for ``robustjax.train.fit`` / ``train_step``; the attack is a pure function inside
the loss and its result takes no gradient (``stop_gradient``), as in every reference code.
Every config field that can change over training (eps, step size, beta, the attack's step
count) is a number or an optax schedule of the optimiser step (``robustjax.train.schedules``).

The adversarial example is crafted with the model in **eval mode** by default
(``attack_mode="eval"``), as TRADES' and MART's public PyTorch code does (``model.eval()``
around the attack); ``attack_mode="train"`` normalises with batch statistics during the attack
without updating the running averages, as Madry et al.'s TF code does. The training forward
passes run in train mode (``robustjax.train.modes``).

* PGD-AT (Madry et al. 2018): ``min_theta E max_{||d|| <= eps} CE(f(x + d), y)``, the inner
  max by PGD with a uniform random start. Madry's settings: MNIST eps 0.3, step 0.01, 40
  steps; CIFAR-10 eps 8/255, step 2/255, 7 (train) / 10 steps. ``clean_weight`` mixes in the
  clean loss (0 in Madry et al.; Goodfellow et al. 2015 use 0.5).
* TRADES (Zhang et al. 2019, eq. 5): ``CE(f(x), y) + beta / b * sum KL(p(x) || p(x'))`` with
  ``x'`` maximising the KL from ``x + 0.001 N(0, 1)``. Paper/code: CIFAR-10 eps 0.031, step
  0.007, 10 steps, beta 6; MNIST eps 0.3, step 0.01, 40 steps, beta 1.
* MART (Wang et al. 2020, eq. 9): ``BCE(p(x'), y) + beta / b * sum KL(p(x) || p(x'))
  (1 - p_y(x))`` with the boosted CE ``BCE = CE(p(x'), y) - log(1 - max_{k != y} p_k(x'))``;
  ``x'`` from PGD on CE starting at ``x + 0.001 N(0, 1)``. Code: eps 0.031, step 0.007, 10
  steps, beta 6.
* Fast AT (Wong et al. 2020, "Fast is better than free"): one FGSM step of size ``alpha =
  1.25 eps`` from a uniform random start in the eps-ball, then CE at the result. CIFAR-10
  eps 8/255, alpha 10/255; MNIST eps 0.3, alpha 0.375.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from robustjax.attacks import _core
from robustjax.train import modes
from robustjax.train.schedules import Schedule, check_schedule, value_at


def maximize(objective, x, x0, eps, step_size, steps, norm: str = "linf") -> jax.Array:
    """Projected steepest ascent of ``sum(objective(x_adv))`` from ``x0`` -> ``x_adv``.

    ``objective(x_adv) -> [b]`` per-example losses; the same step as ``attacks.pgd`` (an optax
    chain of ``steepest_ascent`` and ``project_onto_threat``: the eps-ball around ``x`` and
    [0, 1]). ``steps`` is a static int or a traced integer (a scheduled step count). Returns
    the final iterate with its gradient stopped.
    """
    step = optax.chain(_core.steepest_ascent(step_size, norm),
                       _core.project_onto_threat(x, eps, norm))

    def body(i, carry):
        x_adv, state = carry
        g = jax.grad(lambda z: jnp.sum(objective(z)))(x_adv)
        updates, state = step.update(g, state, x_adv)
        return optax.apply_updates(x_adv, updates), state

    init = (x0, step.init(x0))
    if isinstance(steps, int):
        x_adv = _core.loop_steps(body, init, steps, "auto")[0]
    else:
        x_adv = jax.lax.fori_loop(0, jnp.asarray(steps, jnp.int32), body, init)[0]
    return jax.lax.stop_gradient(x_adv)


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _kl(p_logits, q_logits):
    """``KL(p || q)`` per example, p and q given as logits (TRADES' ``KLDivLoss(sum)``)."""
    logp = jax.nn.log_softmax(p_logits, -1)
    logq = jax.nn.log_softmax(q_logits, -1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), -1)


def _check_common(cfg, integer_steps=True):
    for name in ("eps", "step_size"):
        if getattr(cfg, name, None) is not None:
            check_schedule(getattr(cfg, name), f"{type(cfg).__name__}.{name}")
    if hasattr(cfg, "steps"):
        check_schedule(cfg.steps, f"{type(cfg).__name__}.steps", integer=integer_steps,
                       minimum=0)
    if hasattr(cfg, "beta"):
        check_schedule(cfg.beta, f"{type(cfg).__name__}.beta")
    _core.check_norm(cfg.norm)
    modes.attack_apply(lambda p, x: x, cfg.attack_mode)  # validates the mode name


def _steps(cfg, step):
    s = cfg.steps
    return int(s) if not callable(s) else value_at(s, step, jnp.int32)


@dataclasses.dataclass(frozen=True)
class PGDATConfig:
    """PGD adversarial training (Madry et al. 2018); defaults: their CIFAR-10 setting."""

    eps: Schedule = 8 / 255
    step_size: Schedule = 2 / 255
    steps: Schedule = 10
    norm: str = "linf"
    random_start: bool = True
    clean_weight: Schedule = 0.0
    attack_mode: str = "eval"

    def __post_init__(self):
        _check_common(self)
        check_schedule(self.clean_weight, "PGDATConfig.clean_weight")


@dataclasses.dataclass(frozen=True)
class TRADESConfig:
    """TRADES (Zhang et al. 2019); defaults: their CIFAR-10 code (eps 0.031, beta 6)."""

    eps: Schedule = 0.031
    step_size: Schedule = 0.007
    steps: Schedule = 10
    beta: Schedule = 6.0
    norm: str = "linf"
    start_std: float = 0.001
    attack_mode: str = "eval"

    def __post_init__(self):
        _check_common(self)


@dataclasses.dataclass(frozen=True)
class MARTConfig:
    """MART (Wang et al. 2020); defaults: their CIFAR-10 code (eps 0.031, beta 6)."""

    eps: Schedule = 0.031
    step_size: Schedule = 0.007
    steps: Schedule = 10
    beta: Schedule = 6.0
    norm: str = "linf"
    start_std: float = 0.001
    attack_mode: str = "eval"

    def __post_init__(self):
        _check_common(self)


@dataclasses.dataclass(frozen=True)
class FastATConfig:
    """Fast AT, FGSM with a random start (Wong et al. 2020); ``step_size=None``: 1.25 eps."""

    eps: Schedule = 8 / 255
    step_size: Optional[Schedule] = None
    norm: str = "linf"
    attack_mode: str = "eval"

    def __post_init__(self):
        _check_common(self)


def pgd_perturb(apply_fn, params, x, y, key, config: PGDATConfig, step) -> jax.Array:
    """PGD-AT's inner maximisation (same iterates as ``attacks.pgd`` with the same key)."""
    eps = value_at(config.eps, step, x.dtype)
    alpha = value_at(config.step_size, step, x.dtype)
    f = modes.attack_apply(apply_fn, config.attack_mode)
    x0 = _core.random_start(key, x, eps, config.norm) if config.random_start else x
    return maximize(lambda z: _ce(f(params, z), y), x, x0, eps, alpha, _steps(config, step),
                    config.norm)


def pgd_at_loss(config: PGDATConfig = PGDATConfig()):
    """Madry et al.'s PGD-AT loss (``clean_weight`` mixes in the clean CE)."""

    def loss_fn(apply_fn, params, x, y, key, step):
        x_adv = pgd_perturb(apply_fn, params, x, y, key, config, step)
        robust = _ce(apply_fn(params, x_adv), y).mean()
        if not callable(config.clean_weight) and config.clean_weight == 0:
            return robust
        w = value_at(config.clean_weight, step)
        return (1.0 - w) * robust + w * _ce(apply_fn(params, x), y).mean()

    return loss_fn


def trades_perturb(apply_fn, params, x, key, config, step) -> jax.Array:
    """TRADES' inner maximisation of ``KL(p(x) || p(x'))`` from ``x + start_std N(0, 1)``."""
    eps = value_at(config.eps, step, x.dtype)
    alpha = value_at(config.step_size, step, x.dtype)
    f = modes.attack_apply(apply_fn, config.attack_mode)
    clean_logits = jax.lax.stop_gradient(f(params, x))
    x0 = x + config.start_std * jax.random.normal(key, x.shape, x.dtype)
    return maximize(lambda z: _kl(clean_logits, f(params, z)), x, x0, eps, alpha,
                    _steps(config, step), config.norm)


def trades_loss(config: TRADESConfig = TRADESConfig()):
    """TRADES: ``CE(f(x), y) + beta * mean KL(p(x) || p(x'))`` (gradient through both)."""

    def loss_fn(apply_fn, params, x, y, key, step):
        x_adv = trades_perturb(apply_fn, params, x, key, config, step)
        logits = apply_fn(params, x)
        logits_adv = apply_fn(params, x_adv)
        beta = value_at(config.beta, step)
        return _ce(logits, y).mean() + beta * _kl(logits, logits_adv).mean()

    return loss_fn


def mart_perturb(apply_fn, params, x, y, key, config, step) -> jax.Array:
    """MART's inner maximisation: PGD on CE from ``x + start_std N(0, 1)``."""
    eps = value_at(config.eps, step, x.dtype)
    alpha = value_at(config.step_size, step, x.dtype)
    f = modes.attack_apply(apply_fn, config.attack_mode)
    x0 = x + config.start_std * jax.random.normal(key, x.shape, x.dtype)
    return maximize(lambda z: _ce(f(params, z), y), x, x0, eps, alpha, _steps(config, step),
                    config.norm)


def mart_objective(logits, logits_adv, y, beta) -> jax.Array:
    """MART's loss (Wang et al. 2020, eq. 9, with the constants of their public code)."""
    adv_probs = jax.nn.softmax(logits_adv, -1)
    k = logits.shape[-1]
    # The most likely wrong class under x' (MART: argsort's top two, skipping the label).
    wrong = jnp.where(jax.nn.one_hot(y, k, dtype=bool), -jnp.inf, adv_probs)
    other = jnp.argmax(wrong, -1)
    p_other = jnp.take_along_axis(adv_probs, other[:, None], -1)[:, 0]
    bce = _ce(logits_adv, y) - jnp.log(1.0001 - p_other + 1e-12)
    nat_probs = jax.nn.softmax(logits, -1)
    true_probs = jnp.take_along_axis(nat_probs, y[:, None], -1)[:, 0]
    kl = jnp.sum(nat_probs * (jnp.log(nat_probs + 1e-30) - jnp.log(adv_probs + 1e-12)), -1)
    return bce.mean() + beta * jnp.mean(kl * (1.0000001 - true_probs))


def mart_loss(config: MARTConfig = MARTConfig()):
    """MART: boosted CE on ``x'`` plus the misclassification-weighted KL."""

    def loss_fn(apply_fn, params, x, y, key, step):
        x_adv = mart_perturb(apply_fn, params, x, y, key, config, step)
        return mart_objective(apply_fn(params, x), apply_fn(params, x_adv), y,
                              value_at(config.beta, step))

    return loss_fn


def fast_perturb(apply_fn, params, x, y, key, config: FastATConfig, step) -> jax.Array:
    """Fast AT's FGSM step of size ``alpha`` from a uniform random start."""
    eps = value_at(config.eps, step, x.dtype)
    alpha = 1.25 * eps if config.step_size is None else value_at(config.step_size, step,
                                                                   x.dtype)
    f = modes.attack_apply(apply_fn, config.attack_mode)
    x0 = _core.random_start(key, x, eps, config.norm)
    return maximize(lambda z: _ce(f(params, z), y), x, x0, eps, alpha, 1, config.norm)


def fast_at_loss(config: FastATConfig = FastATConfig()):
    """Fast AT (Wong et al. 2020): CE at one random-start FGSM step."""

    def loss_fn(apply_fn, params, x, y, key, step):
        x_adv = fast_perturb(apply_fn, params, x, y, key, config, step)
        return _ce(apply_fn(params, x_adv), y).mean()

    return loss_fn
