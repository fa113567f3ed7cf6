"""Run by tests/test_parallel.py in a subprocess with N host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``): every entry point computed with no
mesh (one device), on 2 devices and on all N, compared here; one JSON line on stdout.

Not a test module itself (pytest collects only ``test_*.py``)."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import attacks, certify, corruptions, parallel
from robustjax.attacks import AutoAttackConfig, autoattack
from robustjax.metrics.adversarial import AdversarialStats
from robustjax.models import create


def leaves(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def compare(ref, got):
    ref, got = leaves(ref), leaves(got)
    same_shape = len(ref) == len(got) and all(a.shape == b.shape for a, b in zip(ref, got))
    exact = same_shape and all(np.array_equal(a, b) for a, b in zip(ref, got))
    diff = max((float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                for a, b in zip(ref, got) if a.size and a.dtype != bool), default=0.0) \
        if same_shape else float("inf")
    return {"exact": exact, "max_abs_diff": diff, "same_shape": same_shape}


def main():
    n_dev = jax.device_count()
    model = create("cnn", input_shape=(12, 12, 3), channels=(4, 8), hidden=16)
    f, params = model.apply_fn, model.params
    b = 6  # divides 2 devices, padded to 8 on 4
    x = jax.random.uniform(jax.random.key(0), (b, 12, 12, 3))
    y = jnp.argmax(f(params, x), -1).astype(jnp.int32)  # all clean-correct: attacks have work
    key = jax.random.key(1)
    meshes = {1: None, 2: parallel.data_mesh(jax.devices()[:2]), n_dev: parallel.data_mesh()}

    aa_cfg = AutoAttackConfig(eps=0.01, version="custom", attacks=("apgd-ce", "square"),
                              steps=5, n_queries=20, batch_size=4)
    calls = {  # name -> (call, meshes compared with one device)
        "pgd": (lambda: attacks.pgd(f, params, x, y, key,
                                    attacks.PGDConfig(eps=0.05, steps=3, random_start=True)),
                (2, n_dev)),
        "square": (lambda: attacks.square(f, params, x, y, key,
                                          attacks.SquareConfig(eps=0.05, n_queries=20)),
                   (n_dev,)),
        # APGD-CE, then Square on the examples APGD left robust
        "autoattack": (lambda: autoattack(f, params, x, y, key, aa_cfg)[:3], (n_dev,)),
        "ibp": (lambda: certify.bounds(f, params, x, 0.01, "ibp"), (n_dev,)),
        "fog": (lambda: corruptions.corrupt(x, "fog", 3, key), (n_dev,)),
        "gaussian_noise": (lambda: corruptions.corrupt(x, "gaussian_noise", 3, key), (n_dev,)),
        "crown": (lambda: certify.bounds(f, params, x, 0.01, "crown"), (n_dev,)),
        "certify_crown_ibp": (lambda: certify.certify(f, params, x, y, 0.005, "crown_ibp"),
                              (n_dev,)),
    }
    out = {"devices": n_dev}
    results = {}
    for name, (call, counts) in calls.items():
        results[name] = {}
        for nd in (1,) + counts:
            with parallel.use_mesh(meshes[nd]):
                results[name][nd] = jax.tree_util.tree_map(np.asarray, call())
        out[name] = {str(nd): compare(results[name][1], results[name][nd]) for nd in counts}
    out["autoattack_broken_by"] = results["autoattack"][1][2].tolist()

    # metrics: per-device accumulators merged == one accumulator over the batch
    logits_clean = f(params, x)
    logits_adv = f(params, results["pgd"][1].x_adv)
    whole = AdversarialStats.from_batch(logits_adv, y, logits_clean=logits_clean)
    merged = AdversarialStats.empty()
    for s in np.array_split(np.arange(b), n_dev):
        merged = merged.merge(AdversarialStats.from_batch(logits_adv[s], y[s],
                                                          logits_clean=logits_clean[s]))
    out["metrics_merge"] = compare(whole.compute(), merged.compute())
    # and the same statistics computed in one jitted program over sharded logits
    mesh = parallel.data_mesh()
    (la, yy, lc), _ = parallel.shard_batch((logits_adv[:4], y[:4], logits_clean[:4]), mesh)
    sharded = jax.jit(lambda a, t, c: AdversarialStats.from_batch(a, t, logits_clean=c))(la, yy, lc)
    out["metrics_sharded"] = compare(
        AdversarialStats.from_batch(logits_adv[:4], y[:4], logits_clean=logits_clean[:4]).compute(),
        sharded.compute())

    # the work really is split: the attack's output lives on every device, and the sharded
    # model runs its convolutions on each device's rows (no all-gather of the batch)
    x8 = jax.random.uniform(jax.random.key(2), (8, 12, 12, 3))
    with parallel.use_mesh(mesh):
        res = attacks.pgd(f, params, x8, jnp.zeros(8, jnp.int32), key,
                          attacks.PGDConfig(eps=0.05, steps=2))
    out["pgd_output_devices"] = len(res.x_adv.sharding.device_set)
    from robustjax import entry

    g = parallel.sharded_model(entry.model_function(f), mesh)
    xs, _ = parallel.shard_batch(x8, mesh)
    hlo = jax.jit(g).lower(parallel.replicate(params, mesh), xs).compile().as_text()
    out["model_all_gathers"] = hlo.count("all-gather(")
    out["model_custom_calls"] = hlo.count("custom_call_target=\"robustjax_conv")
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__" and len(sys.argv) == 1:
    main()


def autoattack_share(process_id: int, processes: int, port: int, state: str, out: str,
                     eps: float = 0.01, entry_out: str = ""):
    """One process of a ``jax.distributed`` AutoAttack job (or the one-process reference);
    then, with ``entry_out``, the entry points on a mesh over every process's devices
    (``entry_points``; process 0 saves them there)."""
    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes,
                                   process_id=process_id)
    from robustjax.report.autoattack import run_autoattack_sharded, write_entry

    model = create("cnn", input_shape=(12, 12, 3), channels=(4, 8), hidden=16)
    x = np.asarray(jax.random.uniform(jax.random.key(0), (10, 12, 12, 3)))
    y = np.asarray(jnp.argmax(model.apply_fn(model.params, x), -1)).astype(np.int32)
    y[0] = (y[0] + 1) % 10  # one example wrong when clean
    cfg = AutoAttackConfig(eps=eps,
                           version="custom", attacks=("apgd-ce", "square"), steps=5,
                           n_queries=20, batch_size=2, schedule="mask")
    entry = run_autoattack_sharded(model, x, y, cfg, key=jax.random.key(3),
                                   state_path=state or None, name="tiny",
                                   log=lambda line: print(line, file=sys.stderr))
    if parallel.is_coordinator():
        entry.pop("seconds")
        write_entry(out, entry)
    if entry_out:
        entry_points(entry_out)



def entry_points(out: str):
    """The entry points on a mesh over every process's devices (host inputs: the same global
    batch in each process); process 0 saves the results (``out``, .npz). In one process:
    the one-device reference."""
    processes = jax.process_count()
    model = create("cnn", input_shape=(12, 12, 3), channels=(4, 8), hidden=16)
    f, params = model.apply_fn, model.params
    x = np.asarray(jax.random.uniform(jax.random.key(0), (5, 12, 12, 3)))  # padded to 6 on 2
    y = np.asarray(jnp.argmax(f(params, x), -1)).astype(np.int32)
    key = jax.random.key(1)
    mesh = parallel.data_mesh() if processes > 1 else None
    with parallel.use_mesh(mesh):
        got = {
            "pgd": attacks.pgd(f, params, x, y, key,
                               attacks.PGDConfig(eps=0.05, steps=3, random_start=True)),
            "ibp": certify.bounds(f, params, x, 0.01, "ibp"),
            "fog": corruptions.corrupt(x, "fog", 3, key),
            "gaussian_noise": corruptions.corrupt(x, "gaussian_noise", 3, key),
            "certify_crown_ibp": certify.certify(f, params, x, y, 0.005, "crown_ibp"),
        }
    flat = {}
    for name, value in got.items():
        for i, leaf in enumerate(jax.tree_util.tree_leaves(value)):
            assert not isinstance(leaf, jax.Array) or leaf.is_fully_addressable, name
            flat[f"{name}/{i}"] = np.asarray(leaf)
    if parallel.is_coordinator():
        np.savez(out, **flat)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "autoattack":
    autoattack_share(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
                     sys.argv[6], float(sys.argv[7]), sys.argv[8] if len(sys.argv) > 8 else "")
