"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"): APGD-CE, APGD-DLR and APGD-T.

One run (Algorithm 1 of the paper, as in the authors' ``autopgd_base.py``):

* start ``x0 = clip(x + eps * t / ||t||)`` with ``t`` uniform in [-1, 1] (Linf) or Gaussian (L2);
  step size ``eta = 2 eps``;
* ``z = P(x_k + eta d(grad))``, ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with
  momentum ``a = 0.75`` (``a = 1`` at the first step), ``P`` the projection onto the threat set;
* checkpoints ``w_j = ceil(p_j N)``, ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; at a checkpoint the step size of an
  example halves (and it restarts from its best point) if the loss increased in at most
  ``rho = 0.75`` of the steps since the last checkpoint, or if the step was not halved at the
  last checkpoint and the best loss has not improved since.

The result holds, per example, the last misclassified point found (success) or else the point
of highest loss; ``loss`` is the best loss. Restarts re-run on every example and keep the
first success; ``lax.cond`` skips a restart or target once every example is broken.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from robustjax.attacks import _core
from robustjax.attacks._core import AttackResult
from robustjax.attacks.gradient import config_class
from robustjax.entry import attack_entry


@config_class("eps")
class APGDConfig:
    """APGD-CE (``loss="ce"``) / APGD-DLR (``loss="dlr"``), Croce & Hein 2020 defaults.

    ``steps`` = N = 100 iterations, ``restarts`` = 1, ``rho`` = 0.75, momentum ``alpha`` =
    0.75, initial step ``2 eps``. Norms: Linf, L2 (the paper's) and L1 (Croce & Hein 2021,
    ``apgd_l1.py``; ``use_largereps`` runs its 3 eps / 2 eps / eps schedule, as AutoAttack's
    standard L1 version does). ``eot_iter`` averages each gradient over that many draws of a
    randomized model (EOT; AutoAttack's ``rand`` version uses 20; draws come from
    ``_core.redraw``). ``loop`` is a backend choice (``_core.loop_steps``; ``"auto"`` picks
    ``fori`` for 100 steps).
    """

    eps: float = 8 / 255
    norm: str = "linf"
    loss: str = "ce"
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75
    alpha: float = 0.75
    loop: str = "auto"
    eot_iter: int = 1
    use_largereps: bool = False

    def __post_init__(self):
        _core.check_norm(self.norm, _core.NORMS)
        if self.loss not in ("ce", "dlr"):
            raise ValueError(f"APGD loss must be 'ce' or 'dlr', got {self.loss!r}")
        _check_common(self)


@config_class("eps")
class APGDTConfig:
    """APGD-T (Croce & Hein 2020): targeted DLR towards each of the ``num_targets`` classes
    with the highest clean logits after the top one (9 in AutoAttack, fewer when there are
    fewer classes), ``steps`` = 100 each, ``restarts`` = 1 per target. ``loss`` may also be
    ``"ce-targeted"``. Success means misclassification, as in AutoAttack.
    """

    eps: float = 8 / 255
    norm: str = "linf"
    loss: str = "dlr-targeted"
    steps: int = 100
    restarts: int = 1
    num_targets: int = 9
    rho: float = 0.75
    alpha: float = 0.75
    loop: str = "auto"
    eot_iter: int = 1
    use_largereps: bool = False

    def __post_init__(self):
        _core.check_norm(self.norm, _core.NORMS)
        _check_common(self)
        if self.loss not in ("dlr-targeted", "ce-targeted"):
            raise ValueError(f"APGD-T loss must be 'dlr-targeted' or 'ce-targeted', "
                             f"got {self.loss!r}")


def _check_common(cfg):
    for name in ("steps", "restarts", "eot_iter"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if cfg.use_largereps and cfg.norm != "l1":
        raise ValueError(f"use_largereps is the L1 schedule (norm='l1'), got norm {cfg.norm!r}")


def loss_and_grad(apply_fn, params, y, loss_fn, eot_iter: int = 1):
    """``x_adv -> (loss [b], gradient, fooled [b])`` with the gradient averaged over
    ``eot_iter`` draws (``_core.redraw(params, j)``); loss and ``fooled`` come from the last
    draw, as in the reference code's EOT loop."""

    def one(p, x_adv):
        def f(z):
            logits = apply_fn(p, z)
            v = loss_fn(logits)
            return jnp.sum(v), (v, logits)

        (_, (v, logits)), g = jax.value_and_grad(f, has_aux=True)(x_adv)
        return v, g, jnp.argmax(logits, -1) != y

    if eot_iter == 1:
        return lambda x_adv: one(params, x_adv)

    def averaged(x_adv):
        def body(j, c):
            v, g, fooled = one(_core.redraw(params, j), x_adv)
            return v, c[1] + g, fooled

        v0, g0, f0 = one(_core.redraw(params, 0), x_adv)
        v, g, fooled = jax.lax.fori_loop(1, eot_iter, body, (v0, g0, f0))
        return v, g / eot_iter, fooled

    return averaged


def checkpoints(steps: int) -> list[tuple[int, int]]:
    """The static checkpoint schedule: ``(iteration index, window length k)`` pairs.

    Discretised as in the reference code: ``k_1 = max(int(0.22 N), 1)``, then
    ``k <- max(k - max(int(0.03 N), 1), max(int(0.06 N), 1))``. For N = 100 the checkpoints
    fall after 22, 41, 57, 70, 80, 87, 93 and 99 iterations.
    """
    k = max(int(0.22 * steps), 1)
    decr, k_min = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, count = [], 0
    for i in range(steps):
        count += 1
        if count == k:
            out.append((i, k))
            k, count = max(k - decr, k_min), 0
    return out


def _bcast(v, x):
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def track_best(c, x, x_new, v, g, fooled_now):
    """APGD's bookkeeping after a step (L-inf/L2 and L1 alike).

    -> ``(x_best_adv, x_best, grad_best, loss_best)``: the latest misclassified point, and the
    highest-loss point with its gradient and loss.
    """
    x_best_adv = jnp.where(_bcast(fooled_now, x), x_new, c["x_best_adv"])
    better = v > c["loss_best"]
    x_best = jnp.where(_bcast(better, x), x_new, c["x_best"])
    grad_best = jnp.where(_bcast(better, x), g, c["grad_best"])
    loss_best = jnp.where(better, v, c["loss_best"])
    return x_best_adv, x_best, grad_best, loss_best


def _direction(g, norm):
    return _core.steepest_direction(g, norm)


def apgd_run(apply_fn, params, x, y, key, eps, norm, steps, rho, alpha, loss_fn, loop="auto",
             eot_iter=1):
    """One APGD run. ``loss_fn(logits) -> [b]`` (maximised); success = ``argmax != y``.

    Returns ``(x_out, success, loss_best)`` with ``x_out`` the last adversarial point found
    where successful and otherwise the highest-loss point. L1 runs ``apgd_l1.apgd_l1_run``.
    """
    if norm == "l1":
        from robustjax.attacks import apgd_l1

        return apgd_l1.apgd_l1_run(apply_fn, params, x, y, key, eps, steps, loss_fn, loop,
                                   eot_iter)
    b = x.shape[0]
    eps_b = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (b,))
    value_grad = loss_and_grad(apply_fn, params, y, loss_fn, eot_iter)

    if norm == "linf":
        t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    else:
        t = jax.random.normal(key, x.shape, x.dtype)
    t = t / _bcast(jnp.maximum(_core.lp_norm(t, norm), 1e-12), x)
    x_adv = _core.clip_to_box(x + _bcast(eps_b, x) * t)

    def proj(z):
        return _core.project(z, x, eps_b, norm)

    v, g, fooled = value_grad(x_adv)
    table = checkpoints(steps)
    is_check = jnp.zeros((steps,), bool).at[jnp.array([i for i, _ in table])].set(True)
    window = jnp.zeros((steps,), jnp.int32).at[jnp.array([i for i, _ in table])].set(
        jnp.array([k for _, k in table], jnp.int32))
    carry = dict(
        x_adv=x_adv, x_old=x_adv, grad=g, step=2.0 * eps_b, x_best=x_adv, grad_best=g,
        loss_best=v, x_best_adv=x_adv, fooled=fooled, loss_steps=jnp.zeros((steps, b), x.dtype),
        best_last_check=v, reduced_last_check=jnp.ones((b,), bool))

    def body(i, c):
        a = jnp.where(i > 0, alpha, 1.0).astype(x.dtype)
        x_cur = c["x_adv"]
        step = _bcast(c["step"], x)
        z = proj(x_cur + step * _direction(c["grad"], norm))
        x_new = proj(x_cur + (z - x_cur) * a + (x_cur - c["x_old"]) * (1.0 - a))
        v, g, fooled_now = value_grad(x_new)
        x_best_adv, x_best, grad_best, loss_best = track_best(c, x, x_new, v, g, fooled_now)
        loss_steps = c["loss_steps"].at[i].set(v)

        # Checkpoint: condition 1 (oscillation) over the last k steps, condition 2 (no halving
        # and no improvement since the last checkpoint). Indices wrap modulo N as in the
        # reference code (its first window compares against a zero entry).
        k = window[i]
        inc = loss_steps > jnp.roll(loss_steps, 1, axis=0)
        offs = jnp.mod(i - jnp.arange(steps), steps)
        in_window = jnp.zeros((steps,), bool).at[offs].set(jnp.arange(steps) < k)
        count = jnp.sum(inc & in_window[:, None], axis=0)
        osc = count <= k * rho
        no_impr = (~c["reduced_last_check"]) & (c["best_last_check"] >= loss_best)
        reduce = is_check[i] & (osc | no_impr)
        rb = _bcast(reduce, x)
        return dict(
            x_adv=jnp.where(rb, x_best, x_new), x_old=x_cur,
            grad=jnp.where(rb, grad_best, g),
            step=jnp.where(reduce, c["step"] / 2.0, c["step"]),
            x_best=x_best, grad_best=grad_best, loss_best=loss_best, x_best_adv=x_best_adv,
            fooled=c["fooled"] | fooled_now, loss_steps=loss_steps,
            best_last_check=jnp.where(is_check[i], loss_best, c["best_last_check"]),
            reduced_last_check=jnp.where(is_check[i], osc | no_impr, c["reduced_last_check"]))

    c = _core.loop_steps(body, carry, steps, loop)
    x_out = jnp.where(_bcast(c["fooled"], x), c["x_best_adv"], c["x_best"])
    return x_out, c["fooled"], c["loss_best"]


def _merge(prev, new):
    """Keep earlier successes; otherwise take the newer run's point and loss."""
    px, ps, pl = prev
    nx, ns, nl = new
    keep = ps
    return (jnp.where(_bcast(keep, px), px, nx), ps | ns, jnp.where(keep, pl, jnp.maximum(pl, nl)))


def _runs(apply_fn, params, x, y, key, cfg, loss_of, n_losses):
    """Run every (loss, restart) pair, skipping it when all examples are already broken.

    ``loss_of(j)`` gives the j-th loss function (``j`` traced); the pairs run in one
    ``lax.fori_loop`` so the APGD body is compiled once however many targets there are.
    """
    b = x.shape[0]
    state = (x, jnp.zeros((b,), bool), jnp.full((b,), -jnp.inf, x.dtype), jnp.int32(0))
    total = n_losses * cfg.restarts

    def key_of(j):
        return jax.random.fold_in(key, j)

    def single(j, loss_fn):
        if cfg.use_largereps:
            from robustjax.attacks import apgd_l1

            return apgd_l1.apgd_l1_largereps(apply_fn, params, x, y, key_of(j), cfg.eps,
                                             cfg.steps, loss_fn, cfg.loop, cfg.eot_iter)
        return apgd_run(apply_fn, params, x, y, key_of(j), cfg.eps, cfg.norm, cfg.steps,
                        cfg.rho, cfg.alpha, loss_fn, cfg.loop, cfg.eot_iter)

    def one(j, s):
        def run(s):
            new = single(j, loss_of(j // cfg.restarts))
            return _merge(s[:3], new) + (s[3] + 1,)

        return jax.lax.cond(jnp.all(s[1]), lambda s: s, run, s)

    if total == 1:  # nothing to skip: no cond (it would double the compiled program)
        new = single(0, loss_of(0))
        state = _merge(state[:3], new) + (jnp.int32(1),)
    else:
        state = jax.lax.fori_loop(0, total, one, state)
    # gradient evaluations of the runs actually performed (skipped runs cost nothing)
    return state[:3], state[3] * (cfg.steps + 1) * cfg.eot_iter


@attack_entry
def apgd(apply_fn, params, x, y, key, config: APGDConfig = APGDConfig()) -> AttackResult:
    """APGD-CE / APGD-DLR (untargeted). ``x`` [b, H, W, C] in [0, 1], ``y`` int32 true labels.

    Example: ``apgd(f, p, x, y, key, APGDConfig(eps=8 / 255, loss="dlr"))``.
    """
    loss = _core.get_loss(config.loss)
    (x_adv, _, best), queries = _runs(apply_fn, params, x, y, key, config,
                                      lambda j: (lambda z: loss(z, y)), 1)
    return _core.finish(apply_fn, params, x, x_adv, y, best, config.norm, queries)


@attack_entry
def apgd_t(apply_fn, params, x, y, key, config: APGDTConfig = APGDTConfig(),
           target_rank: Optional[jax.Array] = None) -> AttackResult:
    """APGD-T: targeted runs towards the 2nd ... (num_targets + 1)-th most likely clean class.

    The number of targets is ``min(num_targets, k - 1)`` for ``k`` classes; the targeted DLR
    loss needs ``k >= 4`` (use ``loss="ce-targeted"`` below that).

    ``target_rank``: int ``[b]``, optional: one target per example instead, the
    ``(target_rank + 2)``-th most likely clean class (0: the runner-up), ``config.restarts``
    runs towards it. AutoAttack's cascade uses it to run the targets one at a time on the
    examples still robust, as the reference does (``num_targets`` is then not used).
    """
    k = apply_fn(params, x[:1]).shape[-1]
    order = jnp.argsort(apply_fn(params, x), axis=-1)  # ascending; targets from the top
    n_t = min(config.num_targets, k - 1)
    if target_rank is not None:
        rank = jnp.asarray(target_rank, jnp.int32)
        if rank.shape != (x.shape[0],):
            raise ValueError(f"target_rank must be int [batch={x.shape[0]}], got shape "
                             f"{rank.shape}")
        fixed = jnp.take_along_axis(order, jnp.clip(k - 2 - rank, 0, k - 2)[:, None],
                                    axis=1)[:, 0]
        n_t = 1

    def loss_of(j):
        # the (j + 2)-th largest clean logit, or each example's own rank
        target = fixed if target_rank is not None else jnp.take(order, k - 2 - j, axis=1)
        if config.loss == "dlr-targeted":
            return lambda z: _core.dlr_targeted(z, y, target)
        return lambda z: _core.cross_entropy(z, target, targeted=True)

    (x_adv, _, best), queries = _runs(apply_fn, params, x, y, key, config, loss_of, n_t)
    return _core.finish(apply_fn, params, x, x_adv, y, best, config.norm, queries + 1)
