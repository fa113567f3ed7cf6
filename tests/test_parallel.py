"""Data-parallel and multi-host evaluation (robustjax.parallel, issue 19).

The device checks run ``tests/parallel_worker.py`` in subprocesses: one with 4 host CPU
devices (XLA's ``--xla_force_host_platform_device_count``) comparing every entry point with
no mesh, 2 and 4 devices; and ``jax.distributed`` jobs of 2 processes on 127.0.0.1 compared
with a one-process run (interrupted and resumed per host; mixed configurations refused)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import parallel

WORKER = pathlib.Path(__file__).with_name("parallel_worker.py")
ROOT = WORKER.parent.parent


# ------------------------------------------------------------------- in-process pieces


def test_pad_batch_repeats_the_last_row_and_unpad_cuts_it():
    x = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    y = np.arange(5, dtype=np.int32)
    (xp, yp), n = parallel.pad_batch((x, y), 4)
    assert n == 5 and xp.shape == (8, 2) and yp.shape == (8,)
    np.testing.assert_array_equal(xp[:5], x)
    np.testing.assert_array_equal(xp[5:], np.repeat(x[4:], 3, axis=0))
    np.testing.assert_array_equal(yp[5:], [4, 4, 4])
    cut = parallel.unplace({"a": xp, "b": yp, "scalar": np.float32(3), "other": np.zeros(3)},
                           5, 8)
    assert cut["a"].shape == (5, 2) and cut["b"].shape == (5,) and cut["other"].shape == (3,)
    same, n = parallel.pad_batch(x, 5)
    assert same is x and n == 5
    with pytest.raises(ValueError, match="leading .batch. dimension 5"):
        parallel.pad_batch((x, np.zeros(4)), 2)


def test_process_slices_partition_the_dataset_in_order():
    for n in (0, 1, 7, 10, 64):
        for count in (1, 2, 3, 5):
            parts = [parallel.process_slice(n, process_index=p, process_count=count)
                     for p in range(count)]
            rows = np.concatenate([np.arange(n)[s] for s in parts])
            np.testing.assert_array_equal(rows, np.arange(n))  # disjoint, ordered, complete
            sizes = [s.stop - s.start for s in parts]
            assert max(sizes) - min(sizes) <= 1
    x = np.arange(10)
    np.testing.assert_array_equal(parallel.process_rows(x, process_index=1, process_count=3),
                                  [4, 5, 6])
    with pytest.raises(ValueError, match="process_index < process_count"):
        parallel.process_slice(4, process_index=2, process_count=2)


def test_bad_mesh_and_axis_names_are_clear_errors():
    mesh = parallel.data_mesh()
    with pytest.raises(ValueError, match="mesh axis 'data' does not exist.*'batch'"):
        parallel.batch_sharding(mesh, "data")
    with pytest.raises(ValueError, match="mesh axis 'model' does not exist"), \
            parallel.use_mesh(mesh, axis="model"):
        pass
    with pytest.raises(TypeError, match="expected a jax.sharding.Mesh"), \
            parallel.use_mesh(jax.devices()):
        pass
    with pytest.raises(ValueError, match="empty list"):
        parallel.data_mesh([])


def test_one_device_is_the_plain_path():
    # one device: no mesh is active, so entry points run exactly as before (no extra dispatch)
    assert jax.device_count() == 1
    assert parallel.active_mesh() is None
    with parallel.use_mesh(parallel.data_mesh()):
        assert parallel.active_mesh() is None  # a mesh of one device is the same as none
    (xs,), n = parallel.shard_batch((jnp.ones((3, 2)),), parallel.data_mesh())
    assert n == 3 and xs.shape == (3, 2)


def test_multi_host_autoattack_needs_the_mask_schedule():
    from robustjax.attacks import AutoAttackConfig
    from robustjax.models import create
    from robustjax.report.autoattack import process_state_path, run_autoattack_sharded

    model = create("mlp", input_shape=(4, 4, 1), hidden=(8,))
    x, y = np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="schedule='mask'.*received schedule='compact'"):
        run_autoattack_sharded(model, x, y, AutoAttackConfig(eps=0.1))
    assert process_state_path("out/aa.state.npz", 1, 2) == \
        pathlib.Path("out/aa.state.process1-of-2.npz")


# ----------------------------------------------------------------- subprocess checks


def _env(**extra):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_sharded_entry_points_equal_one_device_on_2_and_4_devices():
    proc = subprocess.run(
        [sys.executable, str(WORKER)], check=False, capture_output=True, text=True, timeout=1500,
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    # bit for bit; a batch of 6: split 3+3 over 2 devices, padded to 8 over 4
    # (2 devices, no padding, for PGD; the other entry points share its placement code)
    assert out["pgd"]["2"]["exact"], out["pgd"]["2"]
    for name in ("pgd", "square", "autoattack", "ibp", "fog", "gaussian_noise",
                 "certify_crown_ibp"):
        assert out[name]["4"]["exact"], (name, out[name]["4"])
    # the cascade did run both attacks: APGD broke some examples, Square had some left
    broken_by = out["autoattack_broken_by"]
    assert 1 in broken_by and (-1 in broken_by or 2 in broken_by), broken_by
    # CROWN's bounds of a sub-batch differ from the whole batch's in the last bits even on
    # one device (its backward passes round with the batch size); the bounds stay in 1e-6
    assert out["crown"]["4"]["same_shape"] and out["crown"]["4"]["max_abs_diff"] < 1e-6
    assert out["metrics_merge"]["exact"] and out["metrics_sharded"]["exact"]
    # the work is split, not replicated: outputs on all 4 devices, and the model's oneDNN
    # convolutions run on each device's rows (no all-gather of the batch before them)
    assert out["pgd_output_devices"] == 4
    assert out["model_custom_calls"] == 2 and out["model_all_gathers"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(processes, state, out, eps="0.01", **env):
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, str(WORKER), "autoattack", str(p), str(processes), str(port),
         str(state), str(out), eps if isinstance(eps, str) else eps[p]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env))
        for p in range(processes)]
    return [(p.wait(timeout=900), p.communicate()[1]) for p in procs]


def test_two_process_autoattack_equals_one_process_and_resumes_per_host(tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    try:
        import parallel_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    # the one-process run, here (one device): the same function, process_count() == 1
    parallel_worker.autoattack_share(0, 1, 0, "", str(tmp_path / "one.json"), eps=0.01)
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["processes"] == 1 and 0 < float(one["autoattack_acc"]) < float(one["clean_acc"])

    # both processes killed right after their second state write (first APGD batch) ...
    # (without the persistent compilation cache: only process 0 writes entries, and a process's
    # own programs are keyed on its devices, so process 0 would load its programs from the
    # reference run above while process 1 compiles, and process 0's kill would end the job
    # before process 1 wrote its state)
    state = tmp_path / "aa.state.npz"
    killed = _job(2, state, tmp_path / "two.json", ROBUSTJAX_FAULT_KILL_AT_WRITE="2",
                  ROBUSTJAX_COMPILATION_CACHE="0")
    assert all(rc != 0 for rc, _ in killed)
    assert not (tmp_path / "two.json").exists()
    for p in range(2):
        assert (tmp_path / f"aa.state.process{p}-of-2.npz").is_file()
    # ... and rerun: each resumes its own share; process 0 writes the merged entry
    resumed = _job(2, state, tmp_path / "two.json")
    for p, (rc, err) in enumerate(resumed):
        assert rc == 0, err[-3000:]
        assert f"resuming from {tmp_path / f'aa.state.process{p}-of-2.npz'}" in err
    two = json.loads((tmp_path / "two.json").read_text())
    assert two.pop("processes") == 2 and one.pop("processes") == 1
    assert two == one  # every number: accuracies, per-attack counts


def test_processes_with_different_configs_fail_at_start(tmp_path):
    results = _job(2, "", tmp_path / "x.json", eps=("0.01", "0.02"))
    for rc, err in results:
        assert rc != 0
        assert "started with different configurations" in err
        assert "apgd-ce - 1/" not in err  # refused before any attack ran
