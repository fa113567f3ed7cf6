"""First-order white-box attacks: FGSM/FGM, BIM, PGD (Linf, L2, sparse L1) and MI-FGSM.

Every attack is ``attack(apply_fn, params, x, y, key, config) -> AttackResult``. Configs are
pytrees whose ``eps`` and step size are array leaves (so one compiled attack serves every eps
and ``jax.vmap`` over eps works) while everything that changes the program (norm, loss, steps,
flags) is static metadata. For a targeted attack ``y`` holds the *target* labels.

Example::

    cfg = PGDConfig(eps=8 / 255, step_size=2 / 255, steps=10)
    attack = jax.jit(pgd, static_argnums=0)
    result = attack(model.apply_fn, model.params, x, y, key, cfg)
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from robustjax.attacks import _core
from robustjax.attacks._core import AttackResult
from robustjax.entry import attack_entry, is_traced


def _check(cfg, allowed_norms=_core.NORMS):
    _core.check_norm(cfg.norm, allowed_norms)
    _core.get_loss(cfg.loss)
    for name in ("eps", "step_size"):
        v = getattr(cfg, name, None)
        if _core.static_float(v) and v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")


def config_class(*data):
    """Make a frozen dataclass a pytree: the ``data`` fields are leaves, all others static."""

    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        meta = [f.name for f in dataclasses.fields(cls) if f.name not in data]
        return jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=meta)

    return wrap


@config_class("eps")
class FGSMConfig:
    """FGSM (Goodfellow et al. 2015) and its L2/L1 variants FGM (Miyato et al. 2016).

    One step ``x + eps * d`` with ``d`` the unit steepest-ascent direction of the norm (sign for
    Linf, ``g / ||g||_2`` for L2, the largest-|g| coordinate for L1 with ``l1_sparsity=1``),
    then clipped to [0, 1].
    """

    eps: float = 8 / 255
    norm: str = "linf"
    loss: str = "ce"
    targeted: bool = False
    l1_sparsity: float = 1.0

    def __post_init__(self):
        _check(self)


@config_class("eps", "step_size")
class PGDConfig:
    """PGD (Madry et al. 2018): random start, ``steps`` projected steepest-ascent steps.

    Defaults are Madry et al.'s CIFAR-10 Linf setting (eps 8/255, step 2/255) with 10 steps
    (the issue's PGD-10); the final iterate is returned, as in Madry et al. and torchattacks.
    L1 uses sparse L1 descent (Tramer & Boneh 2019): each step moves the top
    ``1 - l1_sparsity`` fraction of coordinates. ``early_stop`` freezes an example once it is
    adversarial (off in Madry et al.). ``loop`` picks the loop structure
    (``_core.loop_steps``): a backend choice with no effect on the result.
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    norm: str = "linf"
    loss: str = "ce"
    targeted: bool = False
    random_start: bool = True
    l1_sparsity: float = 0.99
    early_stop: bool = False
    loop: str = "auto"

    def __post_init__(self):
        _check(self)
        if self.loop not in _core.LOOPS:
            raise ValueError(f"unknown loop {self.loop!r}; valid: {', '.join(_core.LOOPS)}")


@config_class("eps", "step_size")
class BIMConfig:
    """BIM / I-FGSM (Kurakin et al. 2017): PGD from ``x`` without random start.

    Kurakin et al.: step 1 (of 255) and ``min(eps + 4, 1.25 eps)`` iterations (10 at eps 8).
    """

    eps: float = 8 / 255
    step_size: float = 1 / 255
    steps: int = 10
    norm: str = "linf"
    loss: str = "ce"
    targeted: bool = False
    loop: str = "auto"

    def __post_init__(self):
        _check(self)


@config_class("eps")
class MIFGSMConfig:
    """MI-FGSM (Dong et al. 2018): eps 16/255, T = 10, step eps / T, decay mu = 1.0.

    ``g_{t+1} = mu g_t + grad / ||grad||_1``; ``x_{t+1} = proj(x_t + (eps / T) d(g_{t+1}))`` with
    ``d`` the sign (Linf) or ``g / ||g||_2`` (L2).
    """

    eps: float = 16 / 255
    steps: int = 10
    decay: float = 1.0
    norm: str = "linf"
    loss: str = "ce"
    targeted: bool = False
    loop: str = "auto"

    def __post_init__(self):
        _check(self, ("linf", "l2"))


# ------------------------------------------------------------------------- building blocks


def objective(apply_fn, params, loss: str, targeted: bool):
    """``x_adv -> (sum of per-example losses, (loss [b], logits))``: differentiate the sum."""
    loss_fn = _core.get_loss(loss)

    def f(x_adv, y):
        logits = apply_fn(params, x_adv)
        value = loss_fn(logits, y, targeted=targeted)
        return jnp.sum(value), (value, logits)

    return f


def input_gradient(apply_fn, params, x, y, loss: str = "ce", targeted: bool = False):
    """``(grad [b, H, W, C], loss [b], logits [b, k])`` of the per-example loss w.r.t. ``x``."""
    (_, (value, logits)), g = jax.value_and_grad(
        objective(apply_fn, params, loss, targeted), has_aux=True)(x, y)
    return g, value, logits


def l1_normalised_momentum(decay: float) -> optax.GradientTransformation:
    """MI-FGSM's accumulator: ``m <- decay * m + g / ||g||_1`` (per example), returns ``m``."""

    def init_fn(params):
        return optax.TraceState(trace=jnp.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        n = _core.lp_norm(updates, "l1").reshape((-1,) + (1,) * (updates.ndim - 1))
        m = decay * state.trace + updates / jnp.maximum(n, 1e-12)
        return m, optax.TraceState(trace=m)

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------- attacks


def fgsm_from_gradient(x, grad, eps, norm: str, l1_sparsity: float = 1.0):
    """``clip(x + eps * d(grad))``: the eps-dependent half of FGSM/FGM (shared by eps sweeps)."""
    d = _core.steepest_direction(grad, norm, l1_sparsity=l1_sparsity, x_adv=x)
    return _core.project(x + _core._per_example(eps, x) * d, x, eps, norm)


@attack_entry
def fgsm(apply_fn, params, x, y, key, config: FGSMConfig = FGSMConfig()) -> AttackResult:
    """FGSM / FGM: one steepest-ascent step of size eps. ``key`` is unused (deterministic)."""
    del key
    grad, _, _ = input_gradient(apply_fn, params, x, y, config.loss, config.targeted)
    x_adv = fgsm_from_gradient(x, grad, config.eps, config.norm, config.l1_sparsity)
    loss_fn = _core.get_loss(config.loss)
    return _core.finish(apply_fn, params, x, x_adv, y,
                        lambda z: loss_fn(z, y, targeted=config.targeted), config.norm, 1,
                        config.targeted)


def _one_step(apply_fn, make_step, params, x, y, carry, cfg, early_stop):
    """One PGD-family iteration: gradient -> optax step (direction, projection)."""
    x_adv, state, done = carry
    grad_fn = jax.grad(objective(apply_fn, params, cfg.loss, cfg.targeted), has_aux=True)
    g, (_, logits) = grad_fn(x_adv, y)
    updates, state = make_step(x, cfg).update(g, state, x_adv)
    new = optax.apply_updates(x_adv, updates)
    if early_stop:
        done = done | _core.success_mask(logits, y, cfg.targeted)
        new = jnp.where(done.reshape((-1,) + (1,) * (x.ndim - 1)), x_adv, new)
    return new, state, done


def _final(apply_fn, params, x, x_adv, y, cfg, steps):
    loss_fn = _core.get_loss(cfg.loss)
    return _core.finish(apply_fn, params, x, x_adv, y,
                        lambda z: loss_fn(z, y, targeted=cfg.targeted), cfg.norm, steps,
                        cfg.targeted)


# Compiled pieces for the eager Python loop (cached by apply_fn, step maker and config).
_one_step_jit = jax.jit(_one_step, static_argnums=(0, 1, 7))
_final_jit = jax.jit(_final, static_argnums=(0, 6))
_random_start_jit = jax.jit(_core.random_start, static_argnums=3)


def _python_loop(cfg) -> bool:
    return cfg.loop == "python" or (cfg.loop == "auto" and _core.unroll_is_faster())


def _eager_loop(cfg, hint) -> bool:
    """An eager call loops in Python over compiled steps (``entry.attack_entry``'s
    ``eager_loop``): asked for, or ``"auto"`` on a model that runs XLA:CPU's convolutions."""
    return cfg.loop == "python" or (cfg.loop == "auto" and hint.unroll_is_faster)


def _iterate(apply_fn, params, x, y, x0, make_step, steps, cfg, early_stop=False):
    """Shared PGD/BIM/MI-FGSM loop: ``steps`` gradient steps through ``make_step(x, cfg)``.

    Loop structure (a backend choice, same result): under ``jit`` ``cfg.loop`` goes to
    ``_core.loop_steps``. Called eagerly with ``loop="python"`` (or ``"auto"`` where
    ``_core.unroll_is_faster()``: XLA:CPU's own convolutions) each step is one compiled call
    from a Python loop, the fastest structure measured there; otherwise the attacks compile
    themselves whole when called eagerly (``robustjax.entry.attack_entry``,
    benchmarks/results/attacks_speed.md).
    """
    init = (x0, make_step(x, cfg).init(x0), jnp.zeros((x.shape[0],), bool))
    if _python_loop(cfg) and not is_traced(params, x, y, x0, cfg):
        carry = init
        for _ in range(steps):
            carry = _one_step_jit(apply_fn, make_step, params, x, y, carry, cfg, early_stop)
        return _final_jit(apply_fn, params, x, carry[0], y, cfg, steps)

    def body(i, carry):
        return _one_step(apply_fn, make_step, params, x, y, carry, cfg, early_stop)

    x_adv, _, _ = _core.loop_steps(body, init, steps, cfg.loop)
    return _final(apply_fn, params, x, x_adv, y, cfg, steps)


def _pgd_step(x, c):
    return optax.chain(_core.steepest_ascent(c.step_size, c.norm, c.l1_sparsity),
                       _core.project_onto_threat(x, c.eps, c.norm))


def _bim_step(x, c):
    return optax.chain(_core.steepest_ascent(c.step_size, c.norm),
                       _core.project_onto_threat(x, c.eps, c.norm))


def _mi_step(x, c):
    return optax.chain(l1_normalised_momentum(c.decay),
                       _core.steepest_ascent(c.eps / c.steps, c.norm),
                       _core.project_onto_threat(x, c.eps, c.norm))


@attack_entry(eager_loop=_eager_loop)
def pgd(apply_fn, params, x, y, key, config: PGDConfig = PGDConfig()) -> AttackResult:
    """PGD (Madry et al. 2018) in Linf, L2 or L1 (sparse L1 descent) around ``x``.

    ``x`` float32 [b, H, W, C] in [0, 1]; ``y`` int32 [b] (targets if ``config.targeted``).
    """
    c = config
    if not c.random_start:
        x0 = x
    elif is_traced(x, key, c):
        x0 = _core.random_start(key, x, c.eps, c.norm)
    else:
        x0 = _random_start_jit(key, x, c.eps, c.norm)
    return _iterate(apply_fn, params, x, y, x0, _pgd_step, c.steps, c, c.early_stop)


@attack_entry(eager_loop=_eager_loop)
def bim(apply_fn, params, x, y, key, config: BIMConfig = BIMConfig()) -> AttackResult:
    """BIM / I-FGSM (Kurakin et al. 2017): PGD without random start."""
    del key
    return _iterate(apply_fn, params, x, y, x, _bim_step, config.steps, config)


@attack_entry(eager_loop=_eager_loop)
def mifgsm(apply_fn, params, x, y, key, config: MIFGSMConfig = MIFGSMConfig()) -> AttackResult:
    """MI-FGSM (Dong et al. 2018): momentum on L1-normalised gradients, step eps / steps."""
    del key
    return _iterate(apply_fn, params, x, y, x, _mi_step, config.steps, config)
