"""The batched bound passes: which graphs keep examples on axis 0, and the per-example
fallback for those that do not gives the same bounds as one example at a time."""

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.certify import api, crown

KEYS = jax.random.split(jax.random.PRNGKey(0), 3)
PARAMS = {"w1": jax.random.normal(KEYS[0], (3, 6)), "w2": jax.random.normal(KEYS[1], (24, 4))}


def _pixelwise(params, x):
    """Batch-major: a dense layer per pixel, then a head."""
    h = jax.nn.relu(x.reshape((x.shape[0], 4, 3)) @ params["w1"])
    return h.reshape((x.shape[0], -1)) @ params["w2"]


def _merged(params, x):
    """The same function, with batch and pixels merged into one axis for the first layer."""
    b = x.shape[0]
    h = jax.nn.relu(x.reshape((b * 4, 3)) @ params["w1"])
    return h.reshape((b, -1)) @ params["w2"]


def _mixing(params, x):
    """Mixes the examples (a batch mean): not batch-major."""
    return _pixelwise(params, x - x.mean(axis=0, keepdims=True))


def _graphs(fn, b):
    x = jnp.zeros((b, 2, 2, 3))
    return api._trace(fn, PARAMS, x, b), api._trace(fn, PARAMS, x, b + 1)


def test_batch_major_detection():
    assert crown.batch_major(*_graphs(_pixelwise, 3), 3)
    assert not crown.batch_major(*_graphs(_merged, 3), 3)
    assert not crown.batch_major(*_graphs(_mixing, 3), 3)


def test_fallback_and_chunks_agree_with_single_examples():
    x = jax.random.uniform(KEYS[2], (5, 2, 2, 3))
    single = np.concatenate([np.asarray(api.bounds(_pixelwise, PARAMS, x[i:i + 1], 0.05)[0])
                             for i in range(5)])
    for fn, chunk in ((_pixelwise, 5), (_pixelwise, 2), (_merged, 2), (_merged, 5)):
        lower, upper = api.bounds(fn, PARAMS, x, 0.05, "crown", chunk_size=chunk)
        np.testing.assert_allclose(lower, single, rtol=1e-5, atol=1e-5)
        assert np.all(np.asarray(upper) >= np.asarray(lower))
