"""Certified training losses: schedules, the eps = 0 identity, use inside train_step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robustjax.certify import training
from robustjax.models.registry import create
from robustjax.train import cross_entropy_loss, init_state, train_step


def test_schedules():
    cfg = training.CertifiedTrainingConfig(eps=0.2, warmup_steps=10, ramp_steps=20,
                                           kappa_end=0.5)
    s = [training.schedules(cfg, t) for t in (0, 10, 20, 30, 100)]
    np.testing.assert_allclose([v["eps"] for v in s], [0, 0, 0.1, 0.2, 0.2], atol=1e-7)
    np.testing.assert_allclose([v["kappa"] for v in s], [1, 1, 0.75, 0.5, 0.5], atol=1e-7)
    np.testing.assert_allclose([v["beta"] for v in s], [1, 1, 0.5, 0, 0], atol=1e-7)


def test_loss_at_eps_zero_is_cross_entropy_and_grows_with_eps():
    model = create("mlp", num_classes=4, hidden=(16,), input_shape=(6, 6, 1))
    x = jax.random.uniform(jax.random.PRNGKey(0), (8, 6, 6, 1))
    y = jnp.arange(8, dtype=jnp.int32) % 4
    ce = cross_entropy_loss(model.apply_fn, model.params, x, y, None, 0)
    losses = {}
    for method in ("ibp", "crown_ibp"):
        for eps in (0.0, 0.05):
            cfg = training.CertifiedTrainingConfig(eps=eps, method=method, ramp_steps=1,
                                                   kappa_end=0.0)
            loss = training.certified_loss(cfg)(model.apply_fn, model.params, x, y, None, 5)
            losses[method, eps] = float(loss)
        # CE(-lower margins) = CE(logits) at eps = 0 (softmax is shift invariant)
        np.testing.assert_allclose(losses[method, 0.0], ce, rtol=1e-5)
        assert losses[method, 0.05] > losses[method, 0.0]
    # usable as the loss of robustjax.train.train_step (CROWN-IBP: the cond on beta)
    opt = optax.adam(1e-3)
    loss_fn = training.certified_loss(training.CertifiedTrainingConfig(
        eps=0.05, method="crown_ibp", ramp_steps=4))
    step = jax.jit(functools.partial(train_step, apply_fn=model.apply_fn, optimizer=opt,
                                     loss_fn=loss_fn))
    state = init_state(model.params, opt)
    values = []
    for i in range(6):  # beta > 0 for the first steps, then the cond skips CROWN
        state, loss = step(state, x, y, jax.random.PRNGKey(i))
        values.append(float(loss))
    assert np.all(np.isfinite(values)) and int(state.step) == 6
