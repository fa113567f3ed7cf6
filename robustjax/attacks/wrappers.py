"""Wrappers that make attacks work against randomised or non-differentiable defences.

* ``eot`` (Athalye et al. 2018, "Synthesizing robust adversarial examples"): the model seen
  by the attack is the expectation over a random transform ``t``: its log-probabilities are
  ``log E_t[softmax(f(t(x)))]`` estimated with ``num_samples`` draws, so every gradient the
  attack takes averages over transforms.
* ``bpda`` (Athalye et al. 2018, "Obfuscated gradients give a false sense of security"): run a
  non-differentiable layer ``g`` forward, but differentiate a smooth approximation ``h`` (the
  identity by default) in the backward pass, via ``jax.custom_vjp``.

Both return an ordinary ``apply_fn(params, x) -> logits``, so every attack uses them unchanged::

    defended = bpda_model(model.apply_fn, lambda x: jnp.round(x * 7) / 7)   # quantised input
    pgd(defended, model.params, x, y, key, PGDConfig())
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class EOTParams(NamedTuple):
    """Parameters of an EOT model: the model's own and the key its transforms are drawn from."""

    params: object
    key: jax.Array


def _input_seed(x):
    """A fresh, deterministic seed per input batch (the attack's iterate changes every step)."""
    bits = jax.lax.bitcast_convert_type(jnp.sum(jax.lax.stop_gradient(x)), jnp.int32)
    return bits


def eot(apply_fn, transform: Callable, num_samples: int = 8):
    """Expectation-over-transformation model.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      transform: ``transform(key, x) -> x'``, a random, differentiable (or BPDA-wrapped)
        transform of an NHWC batch in [0, 1] (e.g. random noise, a random crop/shift).
      num_samples: draws per forward pass (static).

    Returns:
      ``eot_apply(EOTParams(params, key), x) -> [b, k]`` log-probabilities of the transform-
      averaged classifier. The draws depend on ``key`` and on the input (folded in), so each
      attack step sees new transforms while the function stays pure.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")

    def eot_apply(eot_params: EOTParams, x):
        key = jax.random.fold_in(eot_params.key, _input_seed(x))
        keys = jax.random.split(key, num_samples)

        def one(k):
            return jax.nn.log_softmax(apply_fn(eot_params.params, transform(k, x)), axis=-1)

        logp = jax.lax.map(one, keys) if num_samples > 1 else one(keys[0])[None]
        return jax.nn.logsumexp(logp, axis=0) - jnp.log(float(num_samples))

    return eot_apply


def bpda(forward: Callable, backward: Callable = lambda x: x) -> Callable:
    """``g(x) = forward(x)`` whose vector-Jacobian product is that of ``backward`` at ``x``."""

    @jax.custom_vjp
    def g(x):
        return forward(x)

    def fwd(x):
        return forward(x), x

    def bwd(x, cot):
        _, vjp = jax.vjp(backward, x)
        return vjp(cot)

    g.defvjp(fwd, bwd)
    return g


def bpda_model(apply_fn, preprocess: Callable, backward: Callable = lambda x: x):
    """``apply_fn(params, preprocess(x))`` with ``preprocess`` differentiated as ``backward``."""
    layer = bpda(preprocess, backward)

    def defended(params, x):
        return apply_fn(params, layer(x))

    return defended
