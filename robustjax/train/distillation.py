"""Distillation losses: defensive distillation, ARD and RSLAD.

All are ``loss_fn(apply_fn, params, x, y, key, step)`` for ``robustjax.train.fit``; the
teacher is ``(teacher_apply_fn, teacher_params)``, fixed (no gradient), in eval mode.

* Defensive distillation (Papernot et al. 2016): train a teacher with the softmax at
  temperature ``T`` (``temperature_loss``), then a student of the same architecture on the
  teacher's soft labels at the same ``T`` (``defensive_distillation_loss``); at test time the
  student runs at ``T = 1`` (its plain logits). Papernot et al. use ``T = 100``. The defense
  is known to mask gradients (Carlini & Wagner 2016): evaluate it with C&W or the
  gradient-masking check in ``robustjax.defenses.evaluation``.
* ARD (Goldblum et al. 2020, "Adversarially robust distillation", eq. 3):
  ``alpha T^2 KL(t(x)/T || s(x')/T) + (1 - alpha) CE(s(x), y)`` with ``x'`` from PGD on the
  student's CE. Their CIFAR-10 code: ``T = 30``, ``alpha = 1``, eps 8/255, step 2/255, 10
  steps; KL averaged over the batch.
* RSLAD (Zhu et al. 2022, "Reliable adversarial distillation with unreliable teachers"):
  ``5/6 KL(t(x) || s(x')) + 1/6 KL(t(x) || s(x))`` (T = 1), ``x'`` maximising ``KL(t(x) ||
  s(x'))`` from ``x + 0.001 N(0, 1)``; eps 8/255, step 2/255, 10 steps.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from robustjax.attacks import _core
from robustjax.train import modes
from robustjax.train.adversarial import _ce, _check_common, _steps, maximize
from robustjax.train.schedules import Schedule, check_schedule, value_at


def _soft_ce(student_logits, teacher_logits, temperature):
    """``CE(softmax(t / T), softmax(s / T))`` per example."""
    target = jax.nn.softmax(teacher_logits / temperature, -1)
    return optax.softmax_cross_entropy(student_logits / temperature, target)


def _kl_from_logits(p_logits, q_logits, temperature=1.0):
    logp = jax.nn.log_softmax(p_logits / temperature, -1)
    logq = jax.nn.log_softmax(q_logits / temperature, -1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), -1)


def temperature_loss(temperature: Schedule = 100.0):
    """CE of ``softmax(logits / T)`` against hard labels: training the distillation teacher."""
    check_schedule(temperature, "temperature", minimum=1e-6)

    def loss_fn(apply_fn, params, x, y, key, step):
        del key
        t = value_at(temperature, step)
        return _ce(apply_fn(params, x) / t, y).mean()

    return loss_fn


def defensive_distillation_loss(teacher_apply_fn: Callable, teacher_params,
                                temperature: Schedule = 100.0):
    """Student CE against the teacher's soft labels, both at temperature ``T``."""
    check_schedule(temperature, "temperature", minimum=1e-6)
    teacher = modes.eval_apply(teacher_apply_fn)

    def loss_fn(apply_fn, params, x, y, key, step):
        del y, key
        t = value_at(temperature, step)
        teacher_logits = jax.lax.stop_gradient(teacher(teacher_params, x))
        return _soft_ce(apply_fn(params, x), teacher_logits, t).mean()

    return loss_fn


@dataclasses.dataclass(frozen=True)
class ARDConfig:
    """ARD (Goldblum et al. 2020); defaults: their CIFAR-10 code."""

    temperature: Schedule = 30.0
    alpha: Schedule = 1.0
    eps: Schedule = 8 / 255
    step_size: Schedule = 2 / 255
    steps: Schedule = 10
    norm: str = "linf"
    attack_mode: str = "eval"

    def __post_init__(self):
        _check_common(self)
        check_schedule(self.temperature, "ARDConfig.temperature", minimum=1e-6)
        check_schedule(self.alpha, "ARDConfig.alpha")


@dataclasses.dataclass(frozen=True)
class RSLADConfig:
    """RSLAD (Zhu et al. 2022); defaults: their CIFAR-10 code."""

    eps: Schedule = 8 / 255
    step_size: Schedule = 2 / 255
    steps: Schedule = 10
    adv_weight: float = 5 / 6
    start_std: float = 0.001
    norm: str = "linf"
    attack_mode: str = "eval"

    def __post_init__(self):
        _check_common(self)


def ard_loss(teacher_apply_fn: Callable, teacher_params, config: ARDConfig = ARDConfig()):
    """ARD: the student matches the teacher's clean soft labels on its own PGD examples."""
    teacher = modes.eval_apply(teacher_apply_fn)

    def loss_fn(apply_fn, params, x, y, key, step):
        eps = value_at(config.eps, step, x.dtype)
        alpha_step = value_at(config.step_size, step, x.dtype)
        f = modes.attack_apply(apply_fn, config.attack_mode)
        x0 = _core.random_start(key, x, eps, config.norm)
        x_adv = maximize(lambda z: _ce(f(params, z), y), x, x0, eps, alpha_step,
                         _steps(config, step), config.norm)
        t = value_at(config.temperature, step)
        a = value_at(config.alpha, step)
        teacher_logits = jax.lax.stop_gradient(teacher(teacher_params, x))
        kl = _kl_from_logits(teacher_logits, apply_fn(params, x_adv), t).mean()
        if not callable(config.alpha) and config.alpha == 1:
            return t * t * kl
        return a * t * t * kl + (1.0 - a) * _ce(apply_fn(params, x), y).mean()

    return loss_fn


def rslad_loss(teacher_apply_fn: Callable, teacher_params,
               config: RSLADConfig = RSLADConfig()):
    """RSLAD: the teacher's soft labels replace the hard labels in both terms and the attack."""
    teacher = modes.eval_apply(teacher_apply_fn)

    def loss_fn(apply_fn, params, x, y, key, step):
        del y
        eps = value_at(config.eps, step, x.dtype)
        alpha = value_at(config.step_size, step, x.dtype)
        f = modes.attack_apply(apply_fn, config.attack_mode)
        teacher_logits = jax.lax.stop_gradient(teacher(teacher_params, x))
        x0 = x + config.start_std * jax.random.normal(key, x.shape, x.dtype)
        x_adv = maximize(lambda z: _kl_from_logits(teacher_logits, f(params, z)), x, x0, eps,
                         alpha, _steps(config, step), config.norm)
        adv = _kl_from_logits(teacher_logits, apply_fn(params, x_adv)).mean()
        nat = _kl_from_logits(teacher_logits, apply_fn(params, x)).mean()
        return config.adv_weight * adv + (1.0 - config.adv_weight) * nat

    return loss_fn
