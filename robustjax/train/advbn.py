"""AdvBN: adversarial feature statistics (Shu et al. 2021, NeurIPS, "Encoding robustness to
image style via adversarial feature perturbations"; the survey's [25]).

At one layer of the network the feature map ``h`` ``[b, H, W, C]`` is re-normalised with
adversarial statistics. With ``mu`` the per-image, per-channel spatial mean of ``h``, the
perturbed feature is

    h' = (h - mu) * s + mu * m,      m, s in [1 - tau, 1 + tau]^C (one factor per channel),

i.e. the channel means are scaled by ``m`` and the deviations (hence the standard deviations)
by ``s``. ``m`` and ``s`` start at 1 and take ``steps`` signed-gradient ascent steps of size
``step_size`` on the CE loss, each followed by clipping to the box; for a layer whose output
passed a ReLU the perturbed feature is clamped at 0 again. The loss is ``CE(f(x), y) +
CE(f_{m,s}(x), y)``. Defaults (the authors' ResNet-50 ImageNet config): ``tau`` 1.1, step 0.2,
6 steps, after the first stage.

Differences from the authors' code, by design: the perturbation sits inside the whole network
(the layer is named by its flax module path, e.g. ``"layer1_1"``), so gradients reach the
layers below it too; the authors fine-tune only the layers above it (freeze the rest with
``optax.multi_transform`` for the same effect), and give the head a second, auxiliary
BatchNorm for perturbed features, which is not reproduced. Works with any flax linen model:
the feature map is rewritten by ``flax.linen.intercept_methods``, so ``apply_fn`` is used as is.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from robustjax.train import modes
from robustjax.train.adversarial import _ce
from robustjax.train.schedules import Schedule, check_schedule, value_at


@dataclasses.dataclass(frozen=True)
class AdvBNConfig:
    """AdvBN (Shu et al. 2021). ``layer``: flax module path of the perturbed feature map,
    ``"/"``-separated (``"layer1_1"`` = the last block of stage 1 of the CIFAR ResNet-18)."""

    layer: str
    tau: Schedule = 1.1
    step_size: Schedule = 0.2
    steps: int = 6
    relu: bool = True
    attack_mode: str = "eval"

    def __post_init__(self):
        if not self.layer:
            raise ValueError("AdvBNConfig.layer must name a module (e.g. 'layer1_1')")
        check_schedule(self.tau, "AdvBNConfig.tau")
        check_schedule(self.step_size, "AdvBNConfig.step_size")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"AdvBNConfig.steps must be an int >= 0, got {self.steps!r}")
        modes.attack_apply(lambda p, x: x, self.attack_mode)


def perturb_statistics(h: jax.Array, m: jax.Array, s: jax.Array, relu: bool) -> jax.Array:
    """``(h - mu) * s + mu * m`` with ``mu`` the spatial mean per image and channel."""
    mu = jnp.mean(h, axis=tuple(range(1, h.ndim - 1)), keepdims=True)
    out = (h - mu) * s + mu * m
    return jnp.maximum(out, 0.0) if relu else out


def _path(layer: str) -> tuple:
    return tuple(p for p in layer.split("/") if p)


def with_feature_perturbation(apply_fn, layer: str, relu: bool = True):
    """``apply(params, x, m, s)``: ``apply_fn`` with the output of ``layer`` re-normalised.

    Raises a ValueError (at trace time) if no module with that path ran.
    """
    path = _path(layer)

    def apply(params, x, m, s):
        hits = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and tuple(context.module.path) == path:
                hits.append(True)
                return perturb_statistics(out, m, s, relu)
            return out

        with nn.intercept_methods(interceptor):
            logits = apply_fn(params, x)
        if not hits:
            raise ValueError(f"AdvBN layer {layer!r} was not found in the model: give the flax "
                             f"module path of a feature map, '/'-separated (for example "
                             f"'layer1_1')")
        return logits

    return apply


def advbn_loss(config: AdvBNConfig):
    """``CE(f(x), y) + CE(f_{m*, s*}(x), y)`` with the adversarial statistics ``m*, s*``."""

    def loss_fn(apply_fn, params, x, y, key, step):
        del key
        tau = value_at(config.tau, step)
        alpha = value_at(config.step_size, step)
        attack = with_feature_perturbation(modes.attack_apply(apply_fn, config.attack_mode),
                                           config.layer, config.relu)
        # Channel count: from a probe of the feature map's shape (abstract, no compute).
        path, probe = _path(config.layer), []

        def shape_probe(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and tuple(context.module.path) == path:
                probe.append(out.shape[-1])
            return out

        def run_probe(p, xb):
            with nn.intercept_methods(shape_probe):
                return modes.eval_apply(apply_fn)(p, xb)

        jax.eval_shape(run_probe, params, x)
        if not probe:
            raise ValueError(f"AdvBN layer {config.layer!r} was not found in the model")
        c = probe[0]

        def body(_, ms):
            m, s = ms
            gm, gs = jax.grad(lambda m_, s_: _ce(attack(params, x, m_, s_), y).sum(),
                              argnums=(0, 1))(m, s)
            m = jnp.clip(m + alpha * jnp.sign(gm), 1.0 - tau, 1.0 + tau)
            s = jnp.clip(s + alpha * jnp.sign(gs), 1.0 - tau, 1.0 + tau)
            return m, s

        ones = jnp.ones((c,), x.dtype)
        m, s = jax.lax.fori_loop(0, config.steps, body, (ones, ones))
        m, s = jax.lax.stop_gradient(m), jax.lax.stop_gradient(s)
        clean = _ce(apply_fn(params, x), y).mean()
        perturbed = with_feature_perturbation(apply_fn, config.layer, config.relu)
        return clean + _ce(perturbed(params, x, m, s), y).mean()

    return loss_fn
