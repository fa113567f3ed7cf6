"""Sharded training (robustjax.train.sharding): 2 host devices train what 1 device trains.

The device count is fixed when JAX starts, so the check runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json
    import flax.linen as nn, jax, jax.numpy as jnp, numpy as np, optax
    from robustjax import models, parallel, train
    from robustjax.train import sharding
    from robustjax.types import ModelSpec

    assert jax.device_count() == 2, jax.devices()
    x = jax.random.uniform(jax.random.PRNGKey(0), (32, 8, 8, 1))
    y = (jnp.arange(32) % 4).astype(jnp.int32)
    mesh2 = parallel.data_mesh()
    out = {}

    def diff(a, b):
        return max(float(jnp.max(jnp.abs(jnp.asarray(u) - jnp.asarray(v))))
                   for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    # PGD-AT on the small CNN, Adam: no mesh vs 2 devices (data parallel) vs 2 devices FSDP
    cnn = models.create("cnn", num_classes=4, input_shape=(8, 8, 1), channels=(4, 8),
                        hidden=512)
    kw = dict(epochs=1, batch_size=8, key=jax.random.PRNGKey(1),
              loss_fn=train.pgd_at_loss(train.PGDATConfig(eps=0.1, step_size=0.05, steps=1)))
    ref, h_ref = train.fit(cnn.apply_fn, cnn.params, optax.adam(1e-2), x, y, **kw)
    fs, h_fs = train.fit(cnn.apply_fn, cnn.params, optax.adam(1e-2), x, y, mesh=mesh2,
                         fsdp=True, **kw)
    out["pgd_at"] = {"fsdp": diff(ref, fs), "moved": diff(ref, cnn.params),
                     "loss": [h_ref["loss"], h_fs["loss"]]}
    kernel = fs["params"]["dense0"]["kernel"]  # 32 x 512: split over the devices
    out["fsdp_spec"] = str(tuple(kernel.sharding.spec))
    out["fsdp_shard_shape"] = list(kernel.addressable_shards[0].data.shape)
    out["fsdp_bytes"] = sorted(sharding.bytes_per_device(fs).values())
    replicated = jax.device_put(fs, parallel.replicated_sharding(mesh2))
    out["dp_bytes"] = sorted(sharding.bytes_per_device(replicated).values())

    # BatchNorm in train mode: statistics of the global batch, not of each device's half
    class BN(nn.Module):
        @nn.compact
        def __call__(self, x, features=False, train=False):
            h = nn.Conv(4, (3, 3))(x)
            h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(h))
            return nn.Dense(4)(h.reshape((x.shape[0], -1)))

    bn = models.wrap(BN(), BN().init(jax.random.PRNGKey(2), x[:1]), ModelSpec("bn", (8, 8, 1), 4))
    kw = dict(epochs=1, batch_size=16, key=jax.random.PRNGKey(3))
    ref, _ = train.fit_model(bn, optax.sgd(0.1), x, y, **kw)
    dp, _ = train.fit_model(bn, optax.sgd(0.1), x, y, mesh=mesh2, **kw)
    out["dp_spec"] = str(tuple(dp.params["params"]["Dense_0"]["kernel"].sharding.spec))
    out["bn"] = {"dp": diff(ref.params, dp.params),
                 "moved": diff(ref.params["batch_stats"], bn.params["batch_stats"])}

    errors = []
    for bad in (dict(batch_size=7, mesh=mesh2), dict(batch_size=8, fsdp=True)):
        try:
            train.fit(cnn.apply_fn, cnn.params, optax.sgd(0.1), x, y, epochs=1,
                      key=jax.random.PRNGKey(0), **bad)
        except ValueError as e:
            errors.append(str(e))
    try:
        sharding.Placement(jax.sharding.Mesh(np.array(jax.devices()), ("data",)))
    except ValueError as e:
        errors.append(str(e))
    out["errors"] = errors
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def two_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_two_devices_train_what_one_device_trains(two_devices):
    pgd = two_devices["pgd_at"]
    assert pgd["moved"] > 1e-2  # training changed the parameters...
    assert pgd["fsdp"] < 1e-5  # ...identically on 1 and 2 devices (data parallel + FSDP)
    ref, fs = pgd["loss"]
    assert abs(ref[0] - fs[0]) < 1e-5
    bn = two_devices["bn"]
    assert bn["moved"] > 1e-3  # running statistics were updated (train mode)
    assert bn["dp"] < 1e-5  # from the global batch's statistics


def test_fsdp_shards_parameters_over_the_mesh(two_devices):
    assert two_devices["dp_spec"] == "()"  # data parallel: replicated parameters
    assert two_devices["fsdp_spec"] == "(None, 'batch')"
    assert two_devices["fsdp_shard_shape"] == [32, 256]  # half of the 32 x 512 kernel
    # replicated: both devices hold everything; FSDP: the large leaves split in two
    dp, fs = two_devices["dp_bytes"], two_devices["fsdp_bytes"]
    assert dp[0] == dp[1] and fs[0] == fs[1]
    assert fs[0] < 0.6 * dp[0]


def test_sharded_training_bad_input_errors(two_devices):
    batch, fsdp, axis = two_devices["errors"]
    assert "batch_size 7 does not divide over the 2 devices" in batch and "multiple of 2" in batch
    assert "fsdp=True" in fsdp and "mesh=" in fsdp
    assert "axis 'batch' does not exist" in axis and "('data',)" in axis
