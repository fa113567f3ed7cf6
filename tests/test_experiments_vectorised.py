"""Vectorised training equals the sequential runs (robustjax.train.fit), run by run."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import data, models
from robustjax.experiments import Recipe, group_runs, train_group, train_reference

CNN = dict(channels=(4, 8), hidden=16, kernel=3, stride=1)
MLP = dict(hidden=(32,))


@pytest.fixture(scope="module")
def digits():
    x, y = data.load("digits", "train")
    return x[:100], y[:100]


def _init(x, seed, arch):
    kw = CNN if arch == "cnn" else MLP
    return models.create(arch, 10, key=jax.random.PRNGKey(seed), input_shape=x.shape[1:], **kw)


def _check_group(x, y, recipes, seeds, base_loss, arch):
    groups = group_runs(recipes, base_loss, merge_standard=True)
    assert len(groups) == 1, groups
    static, idx = groups[0]
    assert idx == list(range(len(recipes)))
    assert static.mixed == any(r.loss == "standard" for r in recipes)
    model = _init(x, 0, arch)
    inits = [_init(x, s, arch).params for s in seeds]
    trained, hist = train_group(model.apply_fn, inits, recipes, seeds, x, y, static)
    predict = jax.jit(lambda p, xb: jnp.argmax(model.apply_fn(p, xb), -1))
    for i, (recipe, seed) in enumerate(zip(recipes, seeds)):
        ref, ref_hist = train_reference(model.apply_fn, inits[i], recipe, x, y, seed)
        chex.assert_trees_all_close(trained[i], ref, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(hist["loss"][i], ref_hist["loss"], rtol=1e-5)
        np.testing.assert_array_equal(predict(trained[i], x), predict(ref, x))
        # the run really trained: its parameters moved away from the initialisation
        moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
            jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(inits[i])))
        assert moved > 1e-3


def test_vmapped_pgd_at_cnn_group_equals_sequential_runs(digits):
    """A CNN (oneDNN convolutions under vmap), two seeds (per-run batches): the full recipe
    with every flag on and a run with adversarial training and every flag off."""
    x, y = digits
    base = Recipe(loss="pgd_at", epochs=1, batch_size=25, eps=0.2, step_size=0.05,
                  attack_steps=1, weight_decay=1e-2, crop=1, flip=True, ema=True,
                  eps_ramp=True, ramp_epochs=0.5, ema_decay=0.9, lr=3e-3)
    off = dataclasses.replace(base, loss="standard", weight_decay=0.0, crop=0, flip=False,
                              ema=False, eps_ramp=False, lr=1e-3)
    _check_group(x, y, [base, off], [0, 1], "pgd_at", "cnn")


def test_vmapped_trades_group_shares_batches(digits):
    """One seed: the batch is shared across runs (in_axes None); beta, eps, the EMA, the
    ramp, weight decay and the augmentation differ per run; no standard run, so the group's
    loss has no clean term."""
    x, y = digits
    base = Recipe(loss="trades", optimizer="sgd", lr=0.05, lr_schedule="constant",
                  epochs=1, batch_size=25, eps=0.2, step_size=0.05, attack_steps=1, beta=1.0,
                  ema=True, ema_decay=0.5, ramp_epochs=0.5)
    recipes = [base,
               dataclasses.replace(base, beta=6.0, eps=0.1, eps_ramp=True,
                                   weight_decay=1e-2, ema=False),
               dataclasses.replace(base, crop=2, flip=True, lr=0.02)]
    _check_group(x, y, recipes, [3, 3, 3], "trades", "mlp")


def test_grouping_by_static_settings():
    base = Recipe(loss="pgd_at")
    recipes = [base, dataclasses.replace(base, loss="standard"),
               dataclasses.replace(base, loss="trades"), dataclasses.replace(base, epochs=3),
               dataclasses.replace(base, epochs=3, loss="standard"),
               dataclasses.replace(base, weight_decay=1e-3, crop=2, ema=True)]
    groups = {(s.loss, s.epochs): idx
              for s, idx in group_runs(recipes, "pgd_at", merge_standard=True)}
    assert groups == {("pgd_at", 2): [0, 1, 5], ("trades", 2): [2], ("pgd_at", 3): [3, 4]}
    # not merged (the CPU default): standard runs skip the attack in their own groups
    groups = [(s.loss, s.epochs, idx)
              for s, idx in group_runs(recipes, "pgd_at", merge_standard=False)]
    assert groups == [("pgd_at", 2, [0, 5]), ("trades", 2, [2]), (None, 2, [1]),
                      ("pgd_at", 3, [3]), (None, 3, [4])]
    only_standard = group_runs([dataclasses.replace(base, loss="standard")] * 2, "pgd_at")
    assert [(s.loss, idx) for s, idx in only_standard] == [(None, [0, 1])]
