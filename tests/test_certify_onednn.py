"""The bound passes' convolutions on robustjax's oneDNN kernels (``kernels.bind``): a model
written with plain ``flax.linen.Conv`` gets oneDNN convolutions in IBP and in CROWN's
transposed convolutions, with the bounds of XLA's convolutions to float rounding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import kernels
from robustjax.certify import api


class PlainCNN(nn.Module):
    """A user's model: flax's own layers, nothing from robustjax."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2))(x))
        x = nn.relu(nn.Conv(6, (3, 3), strides=(2, 2))(x))
        return nn.Dense(5)(x.reshape((x.shape[0], -1)))


@pytest.mark.skipif(not kernels.onednn_active(), reason="oneDNN kernels need an x86-64 CPU")
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_plain_flax_bounds_run_on_onednn_and_equal_xla(method):
    module = PlainCNN()
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 12, 12, 1))
    params = module.init(jax.random.PRNGKey(0), x)
    bounds = lambda p, a: api.bounds(module.apply, p, a, 0.02, method)  # noqa: E731
    counts = {}
    results = {}
    for on in (True, False):
        with kernels.use_onednn(on):
            counts[on] = kernels.count_convolutions(jax.make_jaxpr(bounds)(params, x))
            results[on] = jax.jit(bounds)(params, x)
    # every convolution of the passes is oneDNN's (the forward's and CROWN's transposes)
    assert counts[True]["xla"] == 0 and counts[True]["onednn"] >= 4, counts[True]
    assert counts[False]["onednn"] == 0 and counts[False]["xla"] >= 4, counts[False]
    for got, ref in zip(results[True], results[False]):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    lo, hi = results[True]
    xs = jnp.clip(x + jax.random.uniform(jax.random.PRNGKey(2), (64, *x.shape), minval=-0.02,
                                         maxval=0.02), 0, 1)
    out = jax.vmap(lambda a: module.apply(params, a))(xs)
    assert jnp.all(out >= lo - 1e-5) and jnp.all(out <= hi + 1e-5)  # sound either way
