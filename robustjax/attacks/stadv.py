"""stAdv: spatially transformed adversarial examples (Xiao et al. 2018), a flow-field attack.

"Spatially Transformed Adversarial Examples", ICLR 2018, Sec. 3. Every output pixel ``p``
reads the input at ``p + f(p)`` for a per-pixel flow ``f`` [b, H, W, 2] (``f[..., 0]`` the
shift right, ``f[..., 1]`` the shift down, in pixels), by bilinear interpolation (eq. 1);
sampling positions are clamped to the image, so ``x_adv`` is a convex combination of input
pixels and stays in [0, 1]. The flow minimises

    L(f) = L_adv(x, f) + tau * L_flow(f)                                         (eq. 2)

with the C&W-style ``L_adv = max(z_y - max_{i != y} z_i, -kappa)`` (untargeted; targeted:
``max(max_{i != t} z_i - z_t, -kappa)``) and the smoothness loss (eq. 4)

    L_flow(f) = sum_p sum_{q in N(p)} sqrt(||du_p - du_q||^2 + ||dv_p - dv_q||^2 + eps)

over the 4-neighbourhood ``N(p)`` inside the image (every adjacent pair counted from both
sides, as the sum is written), ``tau = 0.05`` as in the paper. The paper optimises with
L-BFGS; ``optimizer="lbfgs"`` runs optax's L-BFGS (zoom line search) per example (vmapped,
so examples do not share a line search). The default is optax Adam (200 steps, 0.01 px):
on the embedded MNIST CNN it reached a higher success rate with smoother flows than 50
L-BFGS iterations at ~1% of the time (benchmarks/results/universal_spatial_crosscheck.md).
The returned flow is the successful iterate of smallest ``L_flow`` (the last iterate when
none succeeded).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from robustjax import validation
from robustjax.attacks._core import AttackResult, margin, success_mask
from robustjax.entry import attack_entry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class StAdvConfig:
    """stAdv settings (Xiao et al. 2018).

    Attributes:
      tau: weight of the flow smoothness loss (0.05, the paper's).
      kappa: confidence of the adversarial loss (0).
      steps: optimiser iterations (200).
      optimizer: ``"adam"`` or ``"lbfgs"`` (the paper's; slow when vmapped on a CPU).
      learning_rate: Adam's step size in pixels (0.01; unused by L-BFGS).
      targeted: if True ``y`` holds target classes.
      flow_eps: the ``eps`` inside L_flow's square root (1e-8, keeps it differentiable at 0).
    """

    tau: float = 0.05
    kappa: float = 0.0
    steps: int = 200
    optimizer: str = "adam"
    learning_rate: float = 0.01
    targeted: bool = False
    flow_eps: float = 1e-8

    def __post_init__(self):
        if self.optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {self.optimizer!r}")
        if self.steps < 1 or self.tau < 0 or self.kappa < 0 or self.learning_rate <= 0:
            raise ValueError("need steps >= 1, tau >= 0, kappa >= 0, learning_rate > 0; got "
                             f"{self.steps}, {self.tau}, {self.kappa}, {self.learning_rate}")


def flow_warp(x: Array, flow: Array) -> Array:
    """Bilinear sampling of ``x`` [b, H, W, C] at ``p + flow(p)`` (``flow`` [b, H, W, 2]:
    right, down; positions clamped to the image). A zero flow returns ``x`` exactly."""
    b, h, w, c = x.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=x.dtype), jnp.arange(w, dtype=x.dtype),
                              indexing="ij")
    sx = jnp.clip(cols[None] + flow[..., 0], 0.0, w - 1.0)
    sy = jnp.clip(rows[None] + flow[..., 1], 0.0, h - 1.0)
    x0, y0 = jnp.floor(sx), jnp.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    x0i, y0i = x0.astype(jnp.int32), y0.astype(jnp.int32)
    x1i, y1i = jnp.minimum(x0i + 1, w - 1), jnp.minimum(y0i + 1, h - 1)
    flat = x.reshape(b, h * w, c)

    def tap(yy, xx):
        idx = (yy * w + xx).reshape(b, -1, 1)
        return jnp.take_along_axis(flat, idx, axis=1).reshape(b, h, w, c)

    top = tap(y0i, x0i) * (1 - fx) + tap(y0i, x1i) * fx
    bottom = tap(y1i, x0i) * (1 - fx) + tap(y1i, x1i) * fx
    return top * (1 - fy) + bottom * fy


def flow_loss(flow: Array, eps: float = 1e-8) -> Array:
    """Eq. 4, L_flow [b] of ``flow`` [b, H, W, 2] (4-neighbourhood, pairs counted twice)."""
    dh = flow[:, :, 1:] - flow[:, :, :-1]   # horizontal neighbours
    dv = flow[:, 1:] - flow[:, :-1]         # vertical neighbours
    sh = jnp.sqrt(jnp.sum(dh ** 2, -1) + eps)
    sv = jnp.sqrt(jnp.sum(dv ** 2, -1) + eps)
    return 2.0 * (jnp.sum(sh, (1, 2)) + jnp.sum(sv, (1, 2)))


def _adv_loss(logits, y, cfg):
    """L_adv [b] (minimised): ``max(-margin, -kappa)`` with the C&W margin of _core."""
    return -margin(logits, y, cfg.targeted, kappa=cfg.kappa)


@attack_entry
def stadv(apply_fn, params, x: Array, y: Array, key: Array,
          config: StAdvConfig = StAdvConfig()) -> AttackResult:
    """stAdv flow-field attack: x [b, H, W, C] in [0, 1], y int [b] -> AttackResult.

    ``key`` is unused (the flow starts at zero). ``loss`` is L_adv + tau * L_flow of the
    returned flow, ``norm`` its L_flow (the paper's size of a flow; 0 for the identity up to
    the ``flow_eps`` constant), ``queries`` the optimiser iterations (gradient evaluations;
    L-BFGS line searches add forward passes not counted here). Use :func:`stadv_flow` for the
    flow itself.

    Example::

        res = stadv(model.apply_fn, model.params, x, y, key, StAdvConfig(optimizer="adam"))
    """
    return stadv_flow(apply_fn, params, x, y, key, config)[0]


def stadv_flow(apply_fn, params, x: Array, y: Array, key: Array,
               config: StAdvConfig = StAdvConfig()):
    """The stAdv attack with its flow: ``(AttackResult, flow [b, H, W, 2])``."""
    del key
    validation.check_model_inputs(apply_fn, params, x, y, gradient=True)
    cfg = config

    def objective(f, xi, yi):  # one example: f [H, W, 2], xi [H, W, C], yi []
        logits = apply_fn(params, flow_warp(xi[None], f[None]))
        return (_adv_loss(logits, yi[None], cfg)[0]
                + cfg.tau * flow_loss(f[None], cfg.flow_eps)[0])

    opt = optax.lbfgs() if cfg.optimizer == "lbfgs" else optax.adam(cfg.learning_rate)

    def run_one(xi, yi):
        fn = lambda f: objective(f, xi, yi)  # noqa: E731
        value_and_grad = (optax.value_and_grad_from_state(fn) if cfg.optimizer == "lbfgs"
                          else jax.value_and_grad(fn))
        f0 = jnp.zeros(xi.shape[:2] + (2,), xi.dtype)

        def step(carry, _):
            f, state, best, best_flow = carry
            if cfg.optimizer == "lbfgs":
                value, grad = value_and_grad(f, state=state)
                updates, state = opt.update(grad, state, f, value=value, grad=grad,
                                            value_fn=fn)
            else:
                value, grad = value_and_grad(f)
                updates, state = opt.update(grad, state, f)
            f = optax.apply_updates(f, updates)
            logits = apply_fn(params, flow_warp(xi[None], f[None]))
            ok = success_mask(logits, yi[None], cfg.targeted)[0]
            fl = flow_loss(f[None], cfg.flow_eps)[0]
            better = ok & (fl < best_flow)
            best = jnp.where(better, f, best)
            return (f, state, best, jnp.where(better, fl, best_flow)), None

        ok0 = success_mask(apply_fn(params, xi[None]), yi[None], cfg.targeted)[0]
        flow0 = jnp.where(ok0, flow_loss(f0[None], cfg.flow_eps)[0], jnp.inf)
        init = (f0, opt.init(f0), f0, flow0.astype(xi.dtype))
        (f, _, best, best_flow), _ = jax.lax.scan(step, init, None, length=cfg.steps)
        return jnp.where(jnp.isfinite(best_flow), best, f)

    flow = jax.vmap(run_one)(x, y)
    x_adv = flow_warp(x, flow)
    logits = apply_fn(params, x_adv)
    fl = flow_loss(flow, cfg.flow_eps)
    result = AttackResult(
        x_adv=x_adv,
        success=success_mask(logits, y, cfg.targeted),
        loss=(_adv_loss(logits, y, cfg) + cfg.tau * fl).astype(jnp.float32),
        norm=fl.astype(jnp.float32),
        queries=jnp.full((x.shape[0],), cfg.steps, jnp.int32))
    return result, flow
