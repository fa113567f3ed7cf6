"""Certified training losses: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020).

Both minimise ``kappa * CE(f(x), y) + (1 - kappa) * CE(-m(x), y)`` where ``m_j`` is a lower
bound of the margin ``f_y - f_j`` over the Linf ball of radius ``eps_t`` (``m_y = 0``), i.e.
the worst-case logits ``z_j = -m_j`` of Gowal et al. 2018, eq. (4)–(5). CROWN-IBP uses the
bound ``beta * m_CROWN-IBP + (1 - beta) * m_IBP`` (Zhang et al. 2020, eq. (8)).

Schedules (by optimiser step): ``eps_t`` ramps linearly from 0 to ``eps`` over ``ramp_steps``
after ``warmup_steps`` of clean training; ``kappa`` ramps from ``kappa_start`` to ``kappa_end``
and ``beta`` from ``beta_start`` to ``beta_end`` over the same window.

The loss has the signature of ``robustjax.train``: ``loss_fn(apply_fn, params, x, y, key,
step) -> scalar``; build it with ``certified_loss(config)``::

    loss_fn = certified_loss(CertifiedTrainingConfig(eps=0.1, method="ibp", ramp_steps=2000))
    params, history = fit(apply_fn, params, optax.adam(1e-3), x, y, loss_fn=loss_fn, ...)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax



@dataclasses.dataclass(frozen=True)
class CertifiedTrainingConfig:
    """Certified training (Gowal et al. 2018 IBP; Zhang et al. 2020 CROWN-IBP).

    Attributes:
      eps: final training radius (Linf, pixel units).
      method: ``"ibp"`` or ``"crown_ibp"``.
      warmup_steps: clean steps (eps 0, kappa_start) before the ramp.
      ramp_steps: steps over which eps, kappa and beta move linearly to their final values.
      kappa_start, kappa_end: weight of the clean loss (Gowal: 1 -> 0.5; CROWN-IBP: 1 -> 0).
      beta_start, beta_end: weight of the CROWN-IBP bound against the IBP bound.
    """

    eps: float = 0.1
    method: str = "ibp"
    warmup_steps: int = 0
    ramp_steps: int = 2000
    kappa_start: float = 1.0
    kappa_end: float = 0.5
    beta_start: float = 1.0
    beta_end: float = 0.0

    def __post_init__(self):
        if self.method not in ("ibp", "crown_ibp"):
            raise ValueError(f"method must be 'ibp' or 'crown_ibp', got {self.method!r}")


def linear_ramp(step, start: int, length: int, v0: float, v1: float) -> jax.Array:
    """``v0`` before ``start``, ``v1`` after ``start + length``, linear in between."""
    t = jnp.clip((jnp.asarray(step, jnp.float32) - start) / max(length, 1), 0.0, 1.0)
    return v0 + t * (v1 - v0)


def schedules(config: CertifiedTrainingConfig, step) -> dict:
    """The eps, kappa and beta values at ``step``."""
    args = (step, config.warmup_steps, config.ramp_steps)
    return {"eps": linear_ramp(*args, 0.0, config.eps),
            "kappa": linear_ramp(*args, config.kappa_start, config.kappa_end),
            "beta": linear_ramp(*args, config.beta_start, config.beta_end)}


def worst_case_logits(margin_lower: jax.Array) -> jax.Array:
    """``z_j = -lower(f_y - f_j)`` ``[b, k]`` (0 at ``j = y``): CE of z bounds the robust CE."""
    return -margin_lower


def certified_loss(config: CertifiedTrainingConfig):
    """A ``loss_fn(apply_fn, params, x, y, key, step)`` for ``robustjax.train.fit``."""
    from robustjax.certify import api  # certify imports this module back (old name)

    def loss_fn(apply_fn, params, x, y, key, step):
        del key
        s = schedules(config, step)
        logits = apply_fn(params, x)
        k = logits.shape[-1]
        spec = api.margin_spec(y, k)
        chunk = x.shape[0]
        lower = api.bounds(apply_fn, params, x, s["eps"], "ibp", spec=spec, chunk_size=chunk,
                            upper=False)[0]
        if config.method == "crown_ibp":
            def mix(ibp_lower):
                crown = api.bounds(apply_fn, params, x, s["eps"], "crown_ibp", spec=spec,
                                   chunk_size=chunk, upper=False)[0]
                return s["beta"] * crown + (1.0 - s["beta"]) * ibp_lower

            # Once beta reaches 0 the CROWN pass is skipped (it is the expensive part).
            lower = jax.lax.cond(s["beta"] > 0, mix, lambda lo: lo, lower)
        clean = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        robust = optax.softmax_cross_entropy_with_integer_labels(
            worst_case_logits(lower), y).mean()
        return s["kappa"] * clean + (1.0 - s["kappa"]) * robust

    return loss_fn


def train_certified(x, y, key, *, method: str = "ibp", eps: float = 0.15, epochs: int = 8,
                    batch_size: int = 50, lr: float = 1e-3, warmup_epochs: int = 1,
                    ramp_epochs: int = 4, kappa_end: float = 0.5, model_overrides=None,
                    progress=None):
    """Train the small CNN (IBP-small of Gowal et al. 2018) with a certified loss.

    ``x`` float32 NHWC in [0, 1], ``y`` int32. ``method``: ``"ibp"``, ``"crown_ibp"`` or
    ``"normal"`` (cross-entropy, for comparison). Adam with cosine decay from ``lr``; eps
    ramps from 0 to ``eps`` over ``ramp_epochs`` after ``warmup_epochs`` clean epochs.
    Returns ``(Model, history)``.
    """
    from robustjax import validation
    from robustjax.models.registry import create
    from robustjax.train.loop import fit

    validation.check_images(x)  # the model is built from x's shape: NHWC, before anything
    validation.check_labels(y, batch=jnp.shape(x)[0])
    init_key, train_key = jax.random.split(key)
    model = create("cnn", num_classes=int(max(y)) + 1, key=init_key,
                   input_shape=tuple(x.shape[1:]), **(model_overrides or {}))
    steps = len(x) // batch_size
    kwargs = {}
    if method != "normal":
        kwargs["loss_fn"] = certified_loss(CertifiedTrainingConfig(
            eps=eps, method=method, warmup_steps=warmup_epochs * steps,
            ramp_steps=ramp_epochs * steps, kappa_end=kappa_end))
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, max(epochs * steps, 1)))
    params, history = fit(model.apply_fn, model.params, optimizer, x, y, epochs=epochs,
                          batch_size=batch_size, key=train_key, progress=progress, **kwargs)
    return dataclasses.replace(model, params=params), history
