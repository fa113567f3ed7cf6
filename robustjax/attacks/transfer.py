"""Transfer attacks: craft on a surrogate, evaluate on a victim, with the transferability boosters.

The surrogate is the ``apply_fn`` of ``attack(apply_fn, params, x, y, key, config)``; the victim
only enters :func:`transfer_evaluation`. Boosters (all combine with momentum, MI-FGSM, Dong et
al. 2018, whose accumulator ``gradient.l1_normalised_momentum`` is reused here):

* input diversity, DI (Xie et al. 2019, "Improving transferability of adversarial examples with
  input diversity", CVPR): with probability ``diversity_prob`` the gradient is taken through a
  random resize to ``rnd x rnd`` and a random zero pad to a fixed canvas (:func:`input_diversity`).
* translation invariance, TI (Dong et al. 2019, "Evading defenses to transferable adversarial
  examples by translation-invariant attacks", CVPR, eq. 8): the gradient is convolved with a
  normalised Gaussian kernel ``W`` before the sign step (:func:`gaussian_kernel`).
* ensembles of surrogates (:func:`ensemble`): fused logits (Dong et al. 2018, eq. 6) or averaged
  probabilities (Liu et al. 2017, "Delving into transferable adversarial examples", ICLR).

Each iteration (``t = 0 .. steps - 1``)::

    g   = grad_x L(f(T(x_t)), y)              T = DI's transform with prob. p, else identity
    g   = W * g                               TI only
    m   = decay * m + g / ||g||_1             MI-FGSM's momentum (decay 0: plain I-FGSM)
    x_t = clip_[0,1](Proj_eps(x_t + step_size * sign(m)))      (L2: m / ||m||_2)

which is torchattacks' ``DIFGSM`` / ``TIFGSM`` (and the papers' M-DI2-FGSM / TI-DIM).

Example::

    cfg = DIFGSMConfig(eps=0.1, step_size=0.01, steps=10, decay=1.0)
    run = jax.jit(functools.partial(difgsm, surrogate.apply_fn, config=cfg))
    res = transfer_evaluation(run, victim.apply_fn, victim.params, surrogate.params, x, y, key)
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax.attacks import _core
from robustjax.attacks._core import AttackResult
from robustjax.attacks.gradient import _check, config_class, l1_normalised_momentum
from robustjax.entry import attack_entry
from robustjax.metrics.equations import fooling_rate

Array = jax.Array


@config_class("eps", "step_size")
class DIFGSMConfig:
    """DI-FGSM (Xie et al. 2019); with ``decay > 0`` M-DI2-FGSM.

    Defaults are torchattacks' ``DIFGSM`` (eps 8/255, step 2/255, 10 steps, decay 0,
    ``resize_rate`` 0.9, ``diversity_prob`` 0.5, no random start). ``resize_rate < 1`` shrinks
    the image to a random side in ``[int(rate * W), W)`` and pads it back to ``W`` (the image
    size is kept); ``resize_rate > 1`` is the paper's form (299 -> [299, 330), padded to 330):
    it enlarges to a side in ``[W, int(rate * W))`` padded to ``int(rate * W)``, for models that
    accept that size. ``p = diversity_prob`` is the paper's transformation probability (0.5).
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    decay: float = 0.0
    resize_rate: float = 0.9
    diversity_prob: float = 0.5
    random_start: bool = False
    norm: str = "linf"
    loss: str = "ce"
    targeted: bool = False
    loop: str = "auto"

    def __post_init__(self):
        _check_boosted(self)


@config_class("eps", "step_size")
class TIFGSMConfig(DIFGSMConfig):
    """TI-FGSM (Dong et al. 2019) with DI and momentum available (TI-DIM).

    Defaults are torchattacks' ``TIFGSM`` (eps 8/255, step 2/255, 10 steps, decay 0, Gaussian
    kernel of side ``kernel_size`` 15 spanning ``nsig`` 3 standard deviations, DI with
    ``resize_rate`` 0.9 and ``diversity_prob`` 0.5). Dong et al. use a 15x15 kernel for
    299x299 ImageNet images; small images want a smaller one (e.g. 5 for 28x28). Set
    ``diversity_prob=0`` for TI alone. The other fields are :class:`DIFGSMConfig`'s.
    """

    kernel_size: int = 15
    nsig: float = 3.0

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or \
                self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int (the kernel is centred), "
                             f"got {self.kernel_size!r}")
        if not self.nsig > 0:
            raise ValueError(f"nsig must be > 0, got {self.nsig!r}")


def _check_boosted(cfg) -> None:
    _check(cfg, ("linf", "l2"))
    if cfg.loop not in _core.LOOPS:
        raise ValueError(f"unknown loop {cfg.loop!r}; valid: {', '.join(_core.LOOPS)}")
    if not 0.0 <= cfg.diversity_prob <= 1.0:
        raise ValueError(f"diversity_prob must be in [0, 1], got {cfg.diversity_prob!r}")
    if not cfg.resize_rate > 0:
        raise ValueError(f"resize_rate must be > 0 (0.9 shrinks, 1.1 enlarges), got "
                         f"{cfg.resize_rate!r}")
    if cfg.decay < 0:
        raise ValueError(f"decay must be >= 0, got {cfg.decay!r}")


# ------------------------------------------------------------------------------ transforms


def diversity_range(size: int, resize_rate: float) -> tuple[int, int]:
    """``(low, canvas)``: DI draws a side in ``[low, canvas)`` and pads to ``canvas``."""
    lo, hi = sorted((int(size * resize_rate), size))
    if hi - lo < 1:
        raise ValueError(f"resize_rate {resize_rate} gives no size range for {size}-pixel "
                         f"images (int({size} * rate) == {size}); use e.g. 0.9")
    return lo, hi


def resize_and_pad(x: Array, side, top, left, canvas: int) -> Array:
    """Bilinear resize of ``x`` [b, W, W, c] to ``side x side`` placed at ``(top, left)`` on a
    zero ``canvas x canvas`` image. ``side``, ``top``, ``left`` may be traced ints.

    Equals PyTorch's ``F.pad(F.interpolate(x, side, mode="bilinear", align_corners=False),
    ...)`` (no antialiasing), which torchattacks' DI uses.
    """
    scale = jnp.asarray(side, jnp.float32) / x.shape[2]
    shift = jnp.stack([jnp.asarray(top, jnp.float32), jnp.asarray(left, jnp.float32)])
    out_shape = (x.shape[0], canvas, canvas, x.shape[3])
    return jax.image.scale_and_translate(x, out_shape, (1, 2), jnp.stack([scale, scale]), shift,
                                         method="linear", antialias=False)


def input_diversity(key: Array, x: Array, resize_rate: float = 0.9) -> Array:
    """DI's random transform T(x) (Xie et al. 2019): one random side and offset per batch.

    ``x`` float32 [b, W, W, c] -> [b, canvas, canvas, c] with ``(low, canvas) =
    diversity_range(W, resize_rate)``: resized to a side ``rnd`` uniform in ``[low, canvas)``,
    then placed at a top/left offset uniform in ``[0, canvas - rnd)`` (torchattacks' ranges).
    """
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"input diversity resizes square images; got H x W = "
                         f"{x.shape[1]} x {x.shape[2]}")
    lo, canvas = diversity_range(x.shape[2], resize_rate)
    k_side, k_top, k_left = jax.random.split(key, 3)
    side = jax.random.randint(k_side, (), lo, canvas)
    rem = canvas - side
    top = jax.random.randint(k_top, (), 0, rem)
    left = jax.random.randint(k_left, (), 0, rem)
    return resize_and_pad(x, side, top, left, canvas)


def gaussian_kernel(kernel_size: int = 15, nsig: float = 3.0) -> np.ndarray:
    """TI's kernel: ``outer(k, k) / sum`` with ``k = pdf(linspace(-nsig, nsig, kernel_size))``
    of the standard normal (Dong et al. 2019, Sec. 3.2). float32 [kernel_size, kernel_size]."""
    t = np.linspace(-nsig, nsig, kernel_size)
    k1 = np.exp(-0.5 * t ** 2)
    k2 = np.outer(k1, k1)
    return (k2 / k2.sum()).astype(np.float32)


def smooth_gradient(grad: Array, kernel) -> Array:
    """``W * grad``: each channel of ``grad`` [b, H, W, c] convolved with ``kernel`` [k, k]
    (zero padding, same size; the kernel is symmetric, so correlation = convolution)."""
    c = grad.shape[-1]
    k = jnp.asarray(kernel, grad.dtype)
    w = jnp.broadcast_to(k[:, :, None, None], k.shape + (1, c))
    p = k.shape[0] // 2
    return jax.lax.conv_general_dilated(grad, w, (1, 1), ((p, p), (p, p)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c)


def translation_invariance(kernel) -> optax.GradientTransformation:
    """Gradient -> ``W * gradient`` (TI) as an optax transformation."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return smooth_gradient(updates, kernel), state

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------- attacks


def diverse_gradient(apply_fn, params, x_adv, y, key, cfg) -> Array:
    """``grad_x L(f(T(x_adv)), y)`` with T = DI's transform with probability
    ``cfg.diversity_prob`` (one coin per batch, as the paper and torchattacks), else identity."""
    loss_fn = _core.get_loss(cfg.loss)
    k_coin, k_transform = jax.random.split(key)

    def total(z):
        return jnp.sum(loss_fn(apply_fn(params, z), y, targeted=cfg.targeted))

    def diverse(z):
        return total(input_diversity(k_transform, z, cfg.resize_rate))

    if cfg.diversity_prob == 0.0:
        return jax.grad(total)(x_adv)
    apply = jax.random.uniform(k_coin) < cfg.diversity_prob
    return jax.lax.cond(apply, jax.grad(diverse), jax.grad(total), x_adv)


def _boosted(apply_fn, params, x, y, key, cfg, kernel) -> AttackResult:
    k_start, k_loop = jax.random.split(key)
    x0 = _core.random_start(k_start, x, cfg.eps, cfg.norm) if cfg.random_start else x
    parts = [] if kernel is None else [translation_invariance(kernel)]
    step = optax.chain(*parts, l1_normalised_momentum(cfg.decay),
                       _core.steepest_ascent(cfg.step_size, cfg.norm),
                       _core.project_onto_threat(x, cfg.eps, cfg.norm))

    def body(i, carry):
        x_adv, state = carry
        g = diverse_gradient(apply_fn, params, x_adv, y, jax.random.fold_in(k_loop, i), cfg)
        updates, state = step.update(g, state, x_adv)
        return optax.apply_updates(x_adv, updates), state

    x_adv, _ = _core.loop_steps(body, (x0, step.init(x0)), cfg.steps, cfg.loop)
    loss_fn = _core.get_loss(cfg.loss)
    return _core.finish(apply_fn, params, x, x_adv, y,
                        lambda z: loss_fn(z, y, targeted=cfg.targeted), cfg.norm, cfg.steps,
                        cfg.targeted)


@attack_entry
def difgsm(apply_fn, params, x, y, key, config: DIFGSMConfig = DIFGSMConfig()) -> AttackResult:
    """DI-FGSM / M-DI2-FGSM (Xie et al. 2019) on the surrogate ``apply_fn``.

    ``x`` float32 [b, W, W, c] in [0, 1]; ``y`` int32 [b] (targets if ``config.targeted``).
    ``queries`` counts gradient evaluations (``steps``).
    """
    return _boosted(apply_fn, params, x, y, key, config, None)


@attack_entry
def tifgsm(apply_fn, params, x, y, key, config: TIFGSMConfig = TIFGSMConfig()) -> AttackResult:
    """TI-FGSM / TI-DIM (Dong et al. 2019) on the surrogate ``apply_fn``; see ``difgsm``."""
    if config.kernel_size > min(x.shape[1], x.shape[2]):
        raise ValueError(f"kernel_size {config.kernel_size} is larger than the "
                         f"{x.shape[1]}x{x.shape[2]} images; use a smaller odd kernel")
    return _boosted(apply_fn, params, x, y, key, config,
                    gaussian_kernel(config.kernel_size, config.nsig))


# -------------------------------------------------------------------------------- ensembles


FUSIONS = ("logits", "probabilities")


def ensemble(apply_fns: Sequence[Callable], weights: Optional[Sequence[float]] = None,
             fuse: str = "logits") -> Callable:
    """One surrogate from several: ``apply_fn(params_tuple, x) -> fused logits`` [b, k].

    ``fuse="logits"``: ``sum_k w_k z_k(x)`` (Dong et al. 2018, eq. 6). ``"probabilities"``:
    ``log sum_k w_k softmax(z_k(x))`` (Liu et al. 2017), so cross-entropy on it is Liu et al.'s
    ``-log(sum_k w_k p_k(y | x))``. ``weights`` default to ``1 / K`` and must sum to 1. The
    params of the ensemble are the tuple of the members' params, in order.
    """
    fns = tuple(apply_fns)
    if not fns:
        raise ValueError("ensemble needs at least one apply_fn")
    if fuse not in FUSIONS:
        raise ValueError(f"unknown fuse {fuse!r}; valid: {', '.join(FUSIONS)}")
    w = np.full(len(fns), 1.0 / len(fns)) if weights is None else np.asarray(weights, float)
    if w.shape != (len(fns),) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"weights must be {len(fns)} non-negative numbers summing to 1, got "
                         f"{weights!r}")
    w = tuple(float(v) for v in w)

    def apply_fn(params, x):
        if not isinstance(params, (tuple, list)) or len(params) != len(fns):
            raise TypeError(f"an ensemble of {len(fns)} models takes a tuple of {len(fns)} "
                            f"params, got {type(params).__name__}")
        logits = [f(p, x) for f, p in zip(fns, params)]
        if fuse == "logits":
            return sum(wk * z for wk, z in zip(w, logits))
        logp = jnp.stack([jax.nn.log_softmax(z, -1) + jnp.log(wk) for wk, z in zip(w, logits)
                          if wk > 0])
        return jax.nn.logsumexp(logp, axis=0)

    return apply_fn


# ------------------------------------------------------------------------------ evaluation


class TransferResult(NamedTuple):
    """Surrogate -> victim transfer of one batch.

    Attributes:
      attack: the surrogate attack's ``AttackResult`` (white-box success on the surrogate).
      victim_clean_correct: [b] bool, the victim classifies the clean image correctly.
      victim_success: [b] bool, the victim is fooled by ``x_adv`` (misclassifies it;
        targeted: predicts the target).
      transfer_rate: scalar; untargeted: fooling rate (survey eq. 3) of the victim over the
        examples it classifies correctly when clean; targeted: fraction predicted as target.
    """

    attack: AttackResult
    victim_clean_correct: Array
    victim_success: Array
    transfer_rate: Array


def transfer_evaluation(attack: Callable, victim_apply_fn, victim_params, surrogate_params,
                        x, y, key, *, y_true=None, targeted: bool = False) -> TransferResult:
    """Craft ``x_adv = attack(surrogate_params, x, y, key)`` and evaluate it on the victim.

    ``attack`` is an attack with its surrogate ``apply_fn`` and config bound, e.g.
    ``jax.jit(functools.partial(difgsm, surrogate.apply_fn, config=cfg))`` or
    ``partial(pgd, ensemble((f1, f2)), config=cfg)`` (params then a tuple). ``y`` int32 [b]
    holds the labels (targets when ``targeted``, with ``y_true`` the true labels for the
    victim's clean accuracy). The victim is used only for two forward passes.
    """
    res = attack(surrogate_params, x, y, key)
    labels = y if y_true is None else y_true
    clean_logits = victim_apply_fn(victim_params, x)
    adv_logits = victim_apply_fn(victim_params, res.x_adv)
    clean_ok = jnp.argmax(clean_logits, -1) == labels
    if targeted:
        fooled = jnp.argmax(adv_logits, -1) == y
        rate = jnp.mean(fooled.astype(jnp.float32))
    else:
        fooled = jnp.argmax(adv_logits, -1) != y
        rate = fooling_rate(clean_logits, adv_logits, y, reference="label")
    return TransferResult(res, clean_ok, fooled, rate)
