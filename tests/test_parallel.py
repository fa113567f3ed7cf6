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


def _job(processes, state, out, eps="0.01", entry_out="", **env):
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, str(WORKER), "autoattack", str(p), str(processes), str(port),
         str(state), str(out), eps if isinstance(eps, str) else eps[p], str(entry_out)],
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
    # ... and rerun: each resumes its own share; process 0 writes the merged entry (and then
    # the same job runs the entry points on a mesh over both processes, compared below)
    resumed = _job(2, state, tmp_path / "two.json", entry_out=tmp_path / "entry_two.npz")
    for p, (rc, err) in enumerate(resumed):
        assert rc == 0, err[-3000:]
        assert f"resuming from {tmp_path / f'aa.state.process{p}-of-2.npz'}" in err
    two = json.loads((tmp_path / "two.json").read_text())
    assert two.pop("processes") == 2 and one.pop("processes") == 1
    assert two == one  # every number: accuracies, per-attack counts

    # entry points on a mesh over both processes: every process passes the same host batch,
    # computes its devices' rows and gets the whole result back as numpy (a batch of 5,
    # padded to 6); bit for bit the one-process results
    parallel_worker.entry_points(str(tmp_path / "entry_one.npz"))
    a, b = np.load(tmp_path / "entry_one.npz"), np.load(tmp_path / "entry_two.npz")
    assert sorted(a.files) == sorted(b.files) and len(a.files) == 10
    for k in a.files:
        assert a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_processes_with_different_configs_fail_at_start(tmp_path):
    results = _job(2, "", tmp_path / "x.json", eps=("0.01", "0.02"))
    for rc, err in results:
        assert rc != 0
        assert "started with different configurations" in err
        assert "apgd-ce - 1/" not in err  # refused before any attack ran


# ---------------------------------------------------------------- multi-host ablation

from test_experiments_ablate import TOML as ABLATION  # noqa: E402  (the tiny experiment)


def _ablate_job(processes, experiments, out, **env):
    """``robustjax ablate --distributed`` in ``processes`` processes on 127.0.0.1 (the command
    a user types on each host); ``experiments[p]`` is process p's experiment file."""
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "robustjax", "ablate", str(experiments[p]), "--out", str(out),
         "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes",
         str(processes), "--process-id", str(p)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(ROBUSTJAX_COMPILATION_CACHE="0", **env)) for p in range(processes)]
    return [(p.wait(timeout=900),) + p.communicate() for p in procs]


def test_two_process_ablation_equals_one_process_and_resumes_per_host(tmp_path):
    from robustjax import cli

    toml = tmp_path / "tiny.toml"
    toml.write_text(ABLATION)
    assert cli.main(["ablate", str(toml), "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "ablation.json").read_text())

    # both processes killed right after their third write (the marker, then the first run's
    # parameters and record): process 0 owns the PGD-AT group (4 runs), process 1 the
    # standard-training group (2 runs), so each leaves one finished run behind ...
    two = tmp_path / "two"
    killed = _ablate_job(2, [toml, toml], two, ROBUSTJAX_FAULT_KILL_AT_WRITE="3")
    assert all(rc != 0 for rc, _, _ in killed), [err[-2000:] for _, _, err in killed]
    assert not (two / "ablation.json").exists()
    finished = sorted(f.stem for f in (two / "runs").glob("*.json"))
    assert len(finished) == 2, finished
    # ... and the same command again: each process resumes its own share, process 0 writes
    resumed = _ablate_job(2, [toml, toml], two)
    for p, (rc, out, err) in enumerate(resumed):
        assert rc == 0, err[-3000:]
        assert f"process {p} of 2: {4 if p == 0 else 2} of 6 run(s)" in err
        assert "1 finished, 0 to re-evaluate" in err and "resuming" in err
        # (gloo prints its own line on stdout)
        assert (str(two / "ablation.md") in out.splitlines()) == (p == 0), out
    got = json.loads((two / "ablation.json").read_text())
    assert got["processes"] == 2
    assert [r["id"] for r in got["runs"]] == [r["id"] for r in one["runs"]]
    for a, b in zip(one["runs"], got["runs"]):
        assert a["metrics"] == b["metrics"], (a["id"], a["metrics"], b["metrics"])
    assert got["summary"] == one["summary"]


def test_groups_of_runs_are_dealt_to_the_least_loaded_process(tmp_path):
    from robustjax import experiments as E
    from robustjax.experiments import runner

    toml = tmp_path / "tiny.toml"
    toml.write_text(ABLATION.replace("[components.weight_decay]", "[components.epochs]\n"
                                     "off = { epochs = 3 }\n[components.weight_decay]"))
    exp = E.load(toml)
    runs = E.expand(exp)
    configs = list(dict.fromkeys(r.variant.model_options for r in runs))
    groups = runner._groups(runs, configs, True, exp.recipe.loss)
    assert len(groups) >= 2
    for count in (1, 2, 3, 8):
        owner = runner.assign_groups(groups, count)
        assert sorted(owner) == sorted(r.id for r in runs)  # every run exactly once
        for g, _ in groups:  # a group stays together
            assert len({owner[r.id] for r in g}) == 1
        if count == 1:
            assert set(owner.values()) == {0}
        load = [sum(r.variant.recipe.epochs for r in runs if owner[r.id] == p)
                for p in range(count)]
        # greedy: no process could take over another's last group and be less loaded
        biggest = max(sum(r.variant.recipe.epochs for r in g) for g, _ in groups)
        assert max(load) - min(load) <= biggest
        assert owner == runner.assign_groups(groups, count)  # deterministic


# ------------------------------------------------------------------ multi-host report

from test_report_resume import USER_MODULE as USER_MODEL  # noqa: E402  (a plain flax model)
REPORT = ["report", "--model", "mh_models:build", "--dataset", "digits", "--quick",
          "--sections", "clean,attacks,certify"]


def _report_job(processes, out, seeds, path, **env):
    """``robustjax report --distributed`` in ``processes`` processes on 127.0.0.1."""
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "robustjax", *REPORT, "--seed", str(seeds[p]), "--out", str(out),
         "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes",
         str(processes), "--process-id", str(p)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(ROBUSTJAX_COMPILATION_CACHE="0",
                 PYTHONPATH=f"{path}{os.pathsep}{ROOT}", **env)) for p in range(processes)]
    return [(p.wait(timeout=900),) + p.communicate() for p in procs]


def _numbers(report):
    """Every section's data without its timings."""
    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k != "seconds"}
        return [strip(v) for v in d] if isinstance(d, list) else d
    return strip(report["sections"])


def test_two_process_report_equals_one_process_and_resumes_per_host(tmp_path, monkeypatch):
    from robustjax import cli
    from robustjax.report.run import process_folder

    (tmp_path / "mh_models.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main([*REPORT, "--seed", "3", "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "report.json").read_text())

    # both processes killed right after their fourth write: the clean section is stored
    # (its logits, then its record), the attacks section not yet
    two = tmp_path / "two"
    killed = _report_job(2, two, [3, 3], tmp_path, ROBUSTJAX_FAULT_KILL_AT_WRITE="4")
    assert all(rc != 0 for rc, _, _ in killed), [err[-2000:] for _, _, err in killed]
    assert not (two / "report.md").exists()
    shadow = process_folder(two, 1, 2)
    assert shadow == tmp_path / ".two.process1-of-2" and (shadow / "store").is_dir()
    # ... the same command again: each process resumes from its own store
    resumed = _report_job(2, two, [3, 3], tmp_path)
    for p, (rc, _, err) in enumerate(resumed):
        assert rc == 0, err[-3000:]
        assert "[clean] loaded" in err and "[attacks] running" in err, err[-2000:]
    assert "process 1 of 2: done" in resumed[1][2]
    got = json.loads((two / "report.json").read_text())
    assert got["status"] == "complete" and got["runtime"]["processes"] == 2
    assert got["runtime"]["devices"] == 2
    assert not (shadow / "report.md").exists()  # process 0 alone writes the report
    assert _numbers(got) == _numbers(one)  # every number, bounds and smoothing included
    assert got["sections"]["certify"]["smoothing"]["certified_accuracy"]
    assert "in 2 processes" in (two / "report.md").read_text()


def test_report_and_ablation_compare_the_processes_settings_before_any_work(tmp_path,
                                                                            monkeypatch):
    # (processes started with different settings really fail: the two-process AutoAttack job
    # above; here, that the report and the ablation ask before any section or training)
    from robustjax.experiments import runner
    from robustjax.report.run import run_report

    class Refused(Exception):
        pass

    seen = []

    def refuse(description):
        seen.append(description)
        raise Refused

    monkeypatch.setattr(parallel, "check_same_run", refuse)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    (tmp_path / "mh_models.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    logs = []
    with pytest.raises(Refused):
        run_report(tmp_path / "r", model="mh_models:build", dataset="digits", quick=True,
                   seed=5, sections=["clean"], log=logs.append)
    assert seen[-1]["report"]["seed"] == 5 and seen[-1]["sections"] == ["clean"]
    from robustjax import data
    from robustjax.report.store import params_hash

    x, y = data.load("digits", "test")
    assert seen[-1]["processes"] == 2
    assert seen[-1]["data"] == params_hash((x[:64], y[:64]))  # the images and labels hashed
    assert not any("running" in m for m in logs)
    toml = tmp_path / "tiny.toml"
    toml.write_text(ABLATION)
    logs = []
    with pytest.raises(Refused):
        runner.ablate(toml, out=tmp_path / "a", log=logs.append)
    assert seen[-1]["experiment"]["experiment"]["name"] == "tiny"
    assert not any(m.startswith("training") for m in logs)
    assert not (tmp_path / "a" / "runs").exists()
