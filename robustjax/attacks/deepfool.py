"""DeepFool (Moosavi-Dezfooli et al. 2016), L2 and Linf.

"DeepFool: a simple and accurate method to fool deep neural networks", CVPR 2016, Algorithm 2
(multi-class) with the Linf variant of Sec. 3.3. At each step the classifier is linearised
around the current point; for every candidate class k (the ``candidates`` classes with the
highest clean logits, the clean prediction ``k0`` first) with ``w_k = grad(z_k - z_k0)`` and
``f_k = z_k - z_k0``, the closest linearised boundary is ``l = argmin_k |f_k| / ||w_k||_q``
(``q`` the dual norm: 2 for L2, 1 for Linf) and the step is

    L2:   r = (|f_l| + 1e-4) / ||w_l||_2^2 * w_l
    Linf: r = (|f_l| + 1e-4) / ||w_l||_1 * sign(w_l)

The steps add up to ``r_tot`` and the point is ``x + (1 + overshoot) * r_tot``, clipped to
[0, 1], until the prediction changes or ``steps`` is reached (the authors' code; the 1e-4 is
theirs). On an affine classifier one step lands exactly at ``(1 + overshoot)`` times the
boundary distance ``|f| / ||w||_2`` (L2) or ``|f| / ||w||_1`` (Linf).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from robustjax.attacks import _core
from robustjax.attacks._core import AttackResult, check_norm
from robustjax.entry import attack_entry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DeepFoolConfig:
    """DeepFool; defaults from Moosavi-Dezfooli et al. 2016 and their code.

    Attributes:
      norm: ``"l2"`` or ``"linf"``.
      steps: maximum iterations (50).
      overshoot: the final perturbation is ``(1 + overshoot) * r_tot`` (0.02).
      candidates: how many top classes (the clean prediction included) are considered (10).
    """

    norm: str = "l2"
    steps: int = 50
    overshoot: float = 0.02
    candidates: int = 10

    def __post_init__(self):
        check_norm(self.norm, ("l2", "linf"))
        if self.steps < 1 or self.candidates < 2 or self.overshoot < 0:
            raise ValueError("need steps >= 1, candidates >= 2, overshoot >= 0; got "
                             f"{self.steps}, {self.candidates}, {self.overshoot}")


@attack_entry
def deepfool(apply_fn, params, x: Array, y: Array, key: Array,
             config: DeepFoolConfig = DeepFoolConfig()) -> AttackResult:
    """DeepFool: x [b, H, W, C] in [0, 1], y int [b] -> AttackResult (``key`` unused).

    ``success`` means ``argmax != y``; an example already misclassified is returned unchanged.
    ``loss`` is the margin ``max_{j != y} z_j - z_y`` at ``x_adv``; ``queries`` the number of
    linearisations (forward + ``candidates - 1`` backward passes) spent per example.

    Example::

        res = deepfool(model.apply_fn, model.params, x, y, key, DeepFoolConfig(norm="linf"))
    """
    del key
    cfg = config
    b = x.shape[0]
    logits0 = apply_fn(params, x)
    k = min(cfg.candidates, logits0.shape[-1])
    classes = jax.lax.top_k(logits0, k)[1]                      # [b, k], clean prediction first
    bshape = (b,) + (1,) * (x.ndim - 1)

    def candidate_logits(xa):
        return jnp.take_along_axis(apply_fn(params, xa), classes, axis=-1)  # [b, k]

    def linearise(xa):
        z, vjp = jax.vjp(candidate_logits, xa)
        # gradient of z_j - z_k0 for j = 1..k-1, one backward pass each (vmapped).
        cot = jax.nn.one_hot(jnp.arange(1, k), k, dtype=z.dtype)
        cot = cot - jax.nn.one_hot(jnp.zeros(k - 1, jnp.int32), k, dtype=z.dtype)
        w = jax.vmap(lambda c: vjp(jnp.broadcast_to(c, z.shape))[0])(cot)  # [k-1, b, ...]
        f = z[:, 1:] - z[:, :1]                                  # [b, k-1]
        return jnp.moveaxis(w, 0, 1), f

    def body(st):
        i, active, r_tot, x_adv, queries = st
        w, f = linearise(x_adv)
        wf = w.reshape(b, k - 1, -1)
        q = 2 if cfg.norm == "l2" else 1
        wn = jnp.linalg.norm(wf, ord=q, axis=-1) + 1e-12         # dual norm [b, k-1]
        dist = jnp.abs(f) / wn
        l = jnp.argmin(dist, axis=-1)
        w_l = jnp.take_along_axis(w, l.reshape((b, 1) + (1,) * (x.ndim - 1)), axis=1)[:, 0]
        f_l = jnp.take_along_axis(f, l[:, None], axis=-1)[:, 0]
        n_l = jnp.take_along_axis(wn, l[:, None], axis=-1)[:, 0]
        if cfg.norm == "l2":
            r = ((jnp.abs(f_l) + 1e-4) / n_l ** 2).reshape(bshape) * w_l
        else:
            r = ((jnp.abs(f_l) + 1e-4) / n_l).reshape(bshape) * jnp.sign(w_l)
        a = active.reshape(bshape)
        r_tot = jnp.where(a, r_tot + r, r_tot)
        x_new = jnp.clip(x + (1 + cfg.overshoot) * r_tot, 0.0, 1.0)
        x_adv = jnp.where(a, x_new, x_adv)
        queries = queries + active.astype(jnp.int32)
        fooled = jnp.argmax(apply_fn(params, x_adv), -1) != classes[:, 0]
        return i + 1, active & ~fooled, r_tot, x_adv, queries

    def cond(st):
        return (st[0] < cfg.steps) & jnp.any(st[1])

    active = classes[:, 0] == y  # already misclassified: nothing to do
    st = (jnp.int32(0), active, jnp.zeros_like(x), x, jnp.zeros((b,), jnp.int32))
    _, _, _, x_adv, queries = jax.lax.while_loop(cond, body, st)
    return _core.finish(apply_fn, params, x, x_adv, y, lambda z: _core.margin(z, y), cfg.norm,
                        queries)
