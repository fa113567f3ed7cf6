import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robustjax import checkpoint
from robustjax.models import create
from robustjax.models import default as default_model_module
from robustjax.train import accuracy, cross_entropy_loss, fit, init_state, train_step


def _toy():
    model = create("cnn", num_classes=3, input_shape=(8, 8, 1), channels=(4, 8), hidden=16)
    x = jax.random.uniform(jax.random.PRNGKey(0), (48, 8, 8, 1))
    y = (jnp.arange(48) % 3).astype(jnp.int32)
    # Make the classes separable: brighten one quadrant per class.
    x = x * 0.3 + 0.7 * (jnp.arange(8)[None, :, None, None] // 3 == y[:, None, None, None])
    return model, np.asarray(x), np.asarray(y)


def test_train_step_lowers_the_loss_with_any_optax_optimizer():
    model, x, y = _toy()
    for opt in (optax.sgd(0.5), optax.adam(1e-2), optax.adamw(1e-2, weight_decay=1e-4)):
        step = jax.jit(functools.partial(train_step, apply_fn=model.apply_fn, optimizer=opt))
        state = init_state(model.params, opt)
        losses = []
        for i in range(15):
            state, loss = step(state, x, y, jax.random.PRNGKey(i))
            losses.append(float(loss))
        assert losses[-1] < 0.7 * losses[0], (opt, losses)
        assert int(state.step) == 15


def test_train_step_leaves_batch_stats_alone():
    model = create("resnet18_cifar", widths=(4, 4, 4, 4), blocks=(1, 1, 1, 1))
    x = jnp.full((2, 32, 32, 3), 0.5)
    y = jnp.array([0, 1], jnp.int32)
    opt = optax.sgd(0.1)
    state, _ = train_step(init_state(model.params, opt), x, y, jax.random.PRNGKey(0),
                          apply_fn=model.apply_fn, optimizer=opt)
    chex_equal = jax.tree_util.tree_map(np.array_equal, state.params["batch_stats"],
                                        model.params["batch_stats"])
    assert all(jax.tree_util.tree_leaves(chex_equal))
    assert not np.array_equal(state.params["params"]["head"]["kernel"],
                              model.params["params"]["head"]["kernel"])


def test_fit_is_deterministic_and_learns():
    model, x, y = _toy()
    kw = dict(epochs=3, batch_size=16, key=jax.random.PRNGKey(3), eval_data=(x, y))
    p1, h1 = fit(model.apply_fn, model.params, optax.adam(1e-2), x, y, **kw)
    p2, h2 = fit(model.apply_fn, model.params, optax.adam(1e-2), x, y, **kw)
    assert h1["loss"] == h2["loss"]
    assert h1["loss"][-1] < h1["loss"][0]
    assert accuracy(model.apply_fn, p1, x, y) > 0.9
    with pytest.raises(ValueError, match="batch_size 100 is larger"):
        fit(model.apply_fn, model.params, optax.sgd(0.1), x, y, epochs=1, batch_size=100,
            key=jax.random.PRNGKey(0))


def test_cross_entropy_matches_closed_form():
    apply_fn = lambda p, x: p * jnp.ones((1, 2))
    loss = cross_entropy_loss(apply_fn, 1.0, None, jnp.array([0]), None, 0)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = create("resnet18_cifar", widths=(4, 4, 4, 4), blocks=(1, 1, 1, 1))
    path = checkpoint.save(tmp_path / "ck", model.params, model.spec, {"note": "hi"})
    assert path.suffix == ".npz"
    params, spec, meta = checkpoint.load(path)
    assert spec == model.spec and meta["note"] == "hi"
    same = jax.tree_util.tree_map(lambda a, b: a.dtype == b.dtype and np.array_equal(a, b),
                                  jax.device_get(model.params), params)
    assert all(jax.tree_util.tree_leaves(same))
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        jax.device_get(model.params))


def test_checkpoint_never_overwrites_and_reports_bad_files(tmp_path):
    model = create("mlp", hidden=(4,))
    path = checkpoint.save(tmp_path / "a.npz", model.params)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        checkpoint.save(path, {"params": {"w": np.zeros(2)}})
    assert path.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="no parameter file"):
        checkpoint.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "plain.npz", w=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError, match="not a robustjax parameter file"):
        checkpoint.load(tmp_path / "plain.npz")


def test_default_model_accuracy_and_cache(default_model, mnist_test):
    x, y = mnist_test
    acc = accuracy(default_model.apply_fn, default_model.params, x, y)
    assert acc >= 0.97, acc
    info = default_model_module.cached_info()
    assert info is not None and info["test_accuracy"] == pytest.approx(acc, abs=1e-6)
    # A second call reuses the cache: same weights, no training.
    again = default_model_module.embedded_default()
    leaves = zip(jax.tree_util.tree_leaves(again.params),
                 jax.tree_util.tree_leaves(default_model.params))
    assert all(np.array_equal(a, b) for a, b in leaves)


def test_corrupt_cache_is_reported_not_trained_over(tmp_cache):
    tmp_cache.mkdir(parents=True)
    path = default_model_module.cache_path()
    path.write_bytes(b"garbage")
    with pytest.raises(default_model_module.CacheError, match="unreadable"):
        default_model_module.embedded_default()
    assert path.read_bytes() == b"garbage"


def test_shift_augment():
    x = np.zeros((1, 5, 5, 1), np.float32)
    x[0, 2, 2, 0] = 1.0
    xa, ya = default_model_module.shift_augment(x, np.array([3], np.int32), shift=1)
    assert xa.shape == (5, 5, 5, 1) and ya.tolist() == [3] * 5
    peaks = sorted(tuple(np.argwhere(im[..., 0])[0]) for im in xa)
    assert peaks == [(1, 2), (2, 1), (2, 2), (2, 3), (3, 2)]
    json.dumps(default_model_module.DEFAULT_OVERRIDES)
