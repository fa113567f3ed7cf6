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

    # PGD-AT on a conv + BatchNorm + MLP net, SGD with momentum (Adam's g / sqrt(v) would
    # amplify the float32 noise of near-zero gradient entries to lr-sized steps): no mesh (one device) vs a 2-device mesh
    # with FSDP (data parallel batch, parameters and momenta split over the devices).
    # BatchNorm runs in train mode: the statistics must be the global batch's.
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, features=False, train=False):
            h = nn.Conv(4, (3, 3))(x)
            h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(h))
            h = nn.relu(nn.Dense(64)(h.reshape((x.shape[0], -1))))  # kernel 256 x 64
            return nn.Dense(4)(h)

    net = models.wrap(Net(), Net().init(jax.random.PRNGKey(2), x[:1]),
                      ModelSpec("net", (8, 8, 1), 4))
    kw = dict(epochs=1, batch_size=16, key=jax.random.PRNGKey(1),
              loss_fn=train.pgd_at_loss(train.PGDATConfig(eps=0.1, step_size=0.05, steps=1)))
    ref, h_ref = train.fit_model(net, optax.sgd(0.1, momentum=0.9), x, y, **kw)
    fs, h_fs = train.fit_model(net, optax.sgd(0.1, momentum=0.9), x, y, mesh=mesh2,
                               fsdp=True, **kw)
    out["pgd_at"] = {"fsdp": diff(ref.params, fs.params), "moved": diff(ref.params, net.params),
                     "stats_moved": diff(ref.params["batch_stats"], net.params["batch_stats"]),
                     "loss": [h_ref["loss"], h_fs["loss"]]}
    kernel = fs.params["params"]["Dense_0"]["kernel"]
    out["fsdp_spec"] = str(tuple(kernel.sharding.spec))
    out["fsdp_shard_shape"] = list(kernel.addressable_shards[0].data.shape)
    out["small_spec"] = str(tuple(fs.params["params"]["Dense_1"]["kernel"].sharding.spec))
    out["fsdp_bytes"] = sorted(sharding.bytes_per_device(fs.params).values())
    replicated = jax.device_put(fs.params, parallel.replicated_sharding(mesh2))
    out["dp_bytes"] = sorted(sharding.bytes_per_device(replicated).values())
    dp_place = sharding.placement(mesh2)
    out["dp_spec"] = str(tuple(dp_place.state_shardings(kernel).spec))
    cnn = models.create("mlp", num_classes=4, input_shape=(8, 8, 1), hidden=(16,))

    # the ablation runner's vmapped groups: two runs (two seeds: per-run batches), PGD-AT, MLP
    from robustjax.experiments import Recipe, group_runs, train_group
    recipes = [Recipe(loss="pgd_at", epochs=1, batch_size=16, eps=0.1, step_size=0.05,
                      attack_steps=1, optimizer="sgd", lr=0.1)] * 2
    static = group_runs(recipes, "pgd_at")[0][0]
    inits = [cnn.params, jax.tree.map(lambda a: a * 0.5, cnn.params)]
    one, h_one = train_group(cnn.apply_fn, inits, recipes, [0, 1], x, y, static)
    two, h_two = train_group(cnn.apply_fn, inits, recipes, [0, 1], x, y, static, mesh=mesh2)
    out["group"] = {"diff": diff(one, two), "moved": diff(one, inits),
                    "loss": [h_one["loss"], h_two["loss"]]}

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
    assert pgd["stats_moved"] > 1e-3  # ...and the running statistics (train mode)...
    # ...identically on 1 and 2 devices (data parallel + FSDP, global-batch BatchNorm)
    assert pgd["fsdp"] < 1e-5
    ref, fs = pgd["loss"]
    assert abs(ref[0] - fs[0]) < 1e-5


def test_ablation_groups_train_the_same_on_two_devices(two_devices):
    group = two_devices["group"]
    assert group["moved"] > 1e-3 and group["diff"] < 1e-5
    one, two = group["loss"]
    assert max(abs(a - b) for r1, r2 in zip(one, two) for a, b in zip(r1, r2)) < 1e-5


def test_fsdp_shards_parameters_over_the_mesh(two_devices):
    assert two_devices["dp_spec"] == "()"  # data parallel: replicated parameters
    assert two_devices["fsdp_spec"] == "('batch',)"
    assert two_devices["fsdp_shard_shape"] == [128, 64]  # half of the 256 x 64 kernel
    assert two_devices["small_spec"] == "()"  # 64 x 4: below MIN_FSDP_SIZE, replicated
    # replicated: both devices hold everything; FSDP: the large leaves split in two
    dp, fs = two_devices["dp_bytes"], two_devices["fsdp_bytes"]
    assert dp[0] == dp[1] and fs[0] == fs[1]
    assert fs[0] < 0.6 * dp[0]


def test_sharded_training_bad_input_errors(two_devices):
    batch, fsdp, axis = two_devices["errors"]
    assert "batch_size 7 does not divide over the 2 devices" in batch and "multiple of 2" in batch
    assert "fsdp=True" in fsdp and "mesh=" in fsdp
    assert "axis 'batch' does not exist" in axis and "('data',)" in axis
