"""The resumable report: results stored by a hash of their config, atomic writes, ``--fresh``,
and a report killed midway (SIGKILL) that, rerun, equals an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from robustjax.report.store import (
    ResultStore,
    atomic_write_text,
    config_hash,
    params_hash,
)

USER_MODULE = textwrap.dedent('''
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from robustjax.models import wrap
    from robustjax.types import ModelSpec


    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, features=False):
            x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x))
            x = x.reshape((x.shape[0], -1))
            return x if features else nn.Dense(10)(x)


    def build():
        module = Net()
        variables = module.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 1)))
        return wrap(module, variables, ModelSpec("user_net", (8, 8, 1), 10))
''')


def test_config_hash_is_stable_and_sensitive():
    a = {"model": {"params": "ab12"}, "seed": 0, "eps": [0.1, 0.3]}
    assert config_hash(a) == config_hash({"eps": [0.1, 0.3], "seed": 0,
                                          "model": {"params": "ab12"}})
    assert config_hash(a) != config_hash({**a, "seed": 1})
    assert config_hash(a) != config_hash({**a, "eps": [0.1, 0.2]})
    p = {"w": np.ones((2, 3), np.float32)}
    assert params_hash(p) == params_hash({"w": np.ones((2, 3), np.float32)})
    assert params_hash(p) != params_hash({"w": np.ones((3, 2), np.float32)})
    q = {"w": np.ones((2, 3), np.float32)}
    q["w"][1, 2] = 1 + 1e-7
    assert params_hash(p) != params_hash(q)


def test_batches_resume_after_an_interruption_and_fresh_recomputes(tmp_path):
    calls = []

    def run(store, stop_after=None):
        out = []
        for i in range(4):
            if stop_after is not None and len(calls) == stop_after:
                raise KeyboardInterrupt  # the run dies here
            out.append(store.cached("batch", {"i": i, "seed": 0},
                                    lambda i=i: calls.append(i) or [i * 0.5, np.float32(i)]))
        return out

    with pytest.raises(KeyboardInterrupt):
        run(ResultStore(tmp_path), stop_after=2)
    assert calls == [0, 1]
    store = ResultStore(tmp_path)
    first = run(store)
    assert calls == [0, 1, 2, 3]  # batches 0 and 1 were read back, not recomputed
    assert store.loaded == ["batch", "batch"] and store.computed == ["batch", "batch"]
    assert first == [[i * 0.5, float(i)] for i in range(4)]
    assert run(ResultStore(tmp_path)) == first and calls == [0, 1, 2, 3]
    fresh = ResultStore(tmp_path, fresh=True)
    assert run(fresh) == first and calls == [0, 1, 2, 3] + [0, 1, 2, 3]
    # a corrupt (e.g. hand-truncated) file is recomputed, never trusted
    path = ResultStore(tmp_path).path("batch", {"i": 0, "seed": 0})
    path.write_text('{"kind": "batch", "conf')
    assert run(ResultStore(tmp_path)) == first and calls[-1] == 0
    # arrays go to .npy
    arr = ResultStore(tmp_path).cached_array("logits", {"b": 0}, lambda: np.eye(3))
    again = ResultStore(tmp_path).cached_array("logits", {"b": 0}, lambda: 1 / 0)
    np.testing.assert_array_equal(arr, again)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    atomic_write_text(path, "old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() makes it, not mkstemp's


def _numbers(report: dict) -> str:
    """report.json without what legitimately differs between runs (times, resume notes), as
    canonical JSON text (so NaN equals NaN)."""
    out = {k: v for k, v in report.items() if k not in ("created", "resumed_sections")}
    out["sections"] = {name: {k: v for k, v in sec.items() if k != "seconds"}
                       for name, sec in report["sections"].items()}
    return json.dumps(out, sort_keys=True)


def test_killed_report_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys):
    from robustjax.cli import main

    (tmp_path / "resume_models.py").write_text(USER_MODULE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # certify (quick) draws random noise and samples: the seed must reproduce it on resume
    args = ["report", "--model", "resume_models:build", "--dataset", "digits", "--quick",
            "--sections", "clean,certify", "--seed", "3"]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "robustjax", *args, "--out", str(killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not list((killed / "store").glob("section-clean-*.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the clean section never finished"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "report.md").exists()  # killed midway: the report was not finished
    partial = json.loads((killed / "report.json").read_text())
    # the kill may land before report.json lists the stored section: it holds at most that one
    assert partial["status"] == "running" and list(partial["sections"]) in ([], ["clean"])

    resumed = subprocess.run([sys.executable, "-m", "robustjax", *args, "--out", str(killed)],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "[clean] loaded" in resumed.stderr and "[certify] running" in resumed.stderr
    # the uninterrupted run, in this process
    monkeypatch.syspath_prepend(str(tmp_path))
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    assert "loaded" not in capsys.readouterr().err

    a = json.loads((killed / "report.json").read_text())
    b = json.loads((full / "report.json").read_text())
    assert a["status"] == b["status"] == "complete" and a["resumed_sections"] == ["clean"]
    assert _numbers(a) == _numbers(b)
    assert a["sections"]["certify"]["smoothing"]["certified_accuracy"]  # real numbers compared
    assert (killed / "report.md").read_text().split("\n", 3)[3] == \
        (full / "report.md").read_text().split("\n", 3)[3]  # same text after the date line
    # --fresh recomputes instead of loading, to the same numbers
    assert main([*args[:-4], "--sections", "clean", "--seed", "3", "--out", str(full),
                 "--fresh"]) == 0
    err = capsys.readouterr().err
    assert "[clean] running" in err and "loaded" not in err
    c = json.loads((full / "report.json").read_text())
    assert c["sections"]["clean"]["clean_accuracy"] == b["sections"]["clean"]["clean_accuracy"]
    assert json.loads(_numbers(c))["sections"]["clean"] == json.loads(_numbers(b))["sections"][
        "clean"]
