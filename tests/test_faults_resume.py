"""Killed at many points, the report, AutoAttack and the ablation runner resume to the numbers of
an uninterrupted run, and no file in their output folders is ever half-written.

Kill points come from ``ROBUSTJAX_FAULT_KILL_AT_WRITE`` (``robustjax.runfiles``). In this
process the "kill" is an exception raised at the chosen write (cheap: the compiled programs are
reused, so every write of a run can be a kill point); the AutoAttack CLI is also killed for
real (SIGKILL, in the middle of a write) in a subprocess.
"""

import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import warnings
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import checkpoint, runfiles
from robustjax.attacks import autoattack_checks as checks

PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class Killed(BaseException):
    """Stands for the process dying at a write (BaseException: no ``except Exception`` in the
    code under test can swallow it)."""


@pytest.fixture
def kill_at(monkeypatch):
    """``kill_at(k)``: the k-th atomic write from now raises ``Killed`` (None: no fault)."""

    def die():
        raise Killed

    monkeypatch.setattr(runfiles, "_die", die)

    def arm(k, stage=""):
        if k is None:
            monkeypatch.delenv(runfiles.FAULT_ENV, raising=False)
        else:
            spec = f"{runfiles.writes_done() + k}{':' + stage if stage else ''}"
            monkeypatch.setenv(runfiles.FAULT_ENV, spec)

    yield arm


def assert_whole(folder, temporaries_allowed=False):
    """Every file below ``folder`` parses completely; returns how many were checked."""
    count = 0
    for path in sorted(pathlib.Path(folder).rglob("*")):
        if path.is_dir():
            continue
        if path.name.endswith(runfiles.TMP_SUFFIX):
            assert temporaries_allowed, f"stray temporary {path}"
            continue
        data = path.read_bytes()
        kind = path.suffix
        if kind == ".json":
            json.loads(data)
        elif kind in (".md", ".html"):
            text = data.decode("utf-8")
            assert kind == ".md" or text.rstrip().endswith("</html>"), path
        elif kind == ".npy":
            np.load(path, allow_pickle=False)
        elif kind == ".npz":
            with np.load(path, allow_pickle=False) as f:
                for k in f.files:
                    f[k]
        elif kind == ".png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(PNG_END), path
        else:
            raise AssertionError(f"unexpected file {path}")
        count += 1
    return count


# ------------------------------------------------------------------------------- report


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, features=False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=(4, 4), padding=((1, 1), (1, 1)))(x))
        x = x.reshape((x.shape[0], -1))
        return x if features else nn.Dense(10)(x)


def _report_numbers(out):
    report = json.loads((out / "report.json").read_text())
    keep = {k: v for k, v in report.items() if k not in ("created", "resumed_sections")}
    keep["sections"] = {n: {k: v for k, v in s.items() if k != "seconds"}
                        for n, s in report["sections"].items()}
    md = (out / "report.md").read_text().split("\n", 3)[3]  # after the date line
    return json.dumps(keep, sort_keys=True), md


def test_report_killed_at_every_write_resumes_to_the_same_report(tmp_path, kill_at,
                                                                monkeypatch):
    from robustjax import data as datasets
    from robustjax.models import wrap
    from robustjax.report.run import run_report
    from robustjax.types import ModelSpec

    module = _Net()
    model = wrap(module, module.init(jax.random.PRNGKey(1), jnp.zeros((1, 28, 28, 1))),
                 ModelSpec("fault_net", (28, 28, 1), 10))
    # 1,000 test digits: the clean section stores two batches of 500 logits. The digits are
    # parsed once (not in each of the 15 runs below).
    monkeypatch.setattr(datasets, "load", functools.lru_cache(datasets.load))
    args = dict(model=model, dataset="mnist5k", sections=["clean"], seed=2, log=lambda m: None)
    kill_at(None)
    before = runfiles.writes_done()
    run_report(tmp_path / "full", **args)
    writes = runfiles.writes_done() - before
    assert writes == 8  # report.json, 2 batches, the section, report.json, .md, .html, .json
    want = _report_numbers(tmp_path / "full")
    files = assert_whole(tmp_path / "full")
    for k in range(1, writes):
        out = tmp_path / f"killed{k}"
        kill_at(k)
        with pytest.raises(Killed):
            run_report(out, **args)
        assert_whole(out)
        assert json.loads((out / "report.json").read_text())["status"] == "running"
        kill_at(None)
        logs = []
        run_report(out, **{**args, "log": logs.append})
        assert _report_numbers(out) == want, k
        assert assert_whole(out) == files == 6  # 3 stored results, report.json, .md, .html
        if k >= 2:  # something was stored before the kill: the rerun says it resumed
            assert any(m.startswith("resuming the interrupted report") for m in logs), (k, logs)
            assert any(m.startswith("resumed: ") for m in logs), (k, logs)


# --------------------------------------------------------------------------- AutoAttack


def _mlp_apply(p, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


def _aa_setup():
    from robustjax.attacks.autoattack import AutoAttackConfig

    f = np.load(pathlib.Path(__file__).parent / "fixtures" / "autoattack_reference.npz")
    model = SimpleNamespace(apply_fn=_mlp_apply,
                            params={k: jnp.asarray(f[k]) for k in ("w1", "b1", "w2", "b2")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", checks.AutoAttackWarning)
        cfg = AutoAttackConfig(eps=0.08, version="custom", attacks=("apgd-ce", "fab-t"),
                               steps=10, apgd_restarts=1, fab_targets=2, batch_size=8)
    return model, f["x"][:24], f["y"][:24], cfg


def _entry_numbers(entry):
    return {k: v for k, v in entry.items() if k != "seconds"}


def test_autoattack_killed_at_every_batch_resumes_to_the_same_result(tmp_path, kill_at):
    from robustjax.report import autoattack as R

    model, x, y, cfg = _aa_setup()
    key = jax.random.key(5)

    def run(state, log=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", checks.AutoAttackWarning)
            return R.run_autoattack(model, x, y, cfg, key=key, state_path=state, log=log)

    kill_at(None)
    before = runfiles.writes_done()
    full = run(tmp_path / "full.npz")
    writes = runfiles.writes_done() - before
    want_state = R.load_state(tmp_path / "full.npz")
    assert writes >= 6 and 0 < float(full["autoattack_acc"]) < float(full["clean_acc"])
    assert sum(full["broken_by"].values()) > 0

    def check(state_path, k):
        entry = run(state_path, log=(logs := []).append)
        assert _entry_numbers(entry) == _entry_numbers(full), k
        got = R.load_state(state_path)
        np.testing.assert_array_equal(got.x_adv, want_state.x_adv)
        np.testing.assert_array_equal(got.broken_by, want_state.broken_by)
        return logs

    for k in range(1, writes):  # every state write (after the clean pass, each batch, attack)
        state = tmp_path / f"k{k}" / "aa.npz"
        kill_at(k)
        with pytest.raises(Killed):
            run(state)
        assert assert_whole(state.parent) == 1
        saved = R.load_state(state)
        kill_at(None)
        logs = check(state, k)
        assert any(m.startswith(f"resuming from {state}: ") for m in logs), logs
        assert saved.current < len(saved.attacks)
    # killed twice (in the second attack, then again while resuming), then finished
    state = tmp_path / "twice" / "aa.npz"
    kill_at(writes - 2)
    with pytest.raises(Killed):
        run(state)
    kill_at(1)
    with pytest.raises(Killed):
        run(state)
    kill_at(None)
    check(state, "twice")
    # a state of another evaluation (here another key) is refused, not mixed in
    with pytest.raises(ValueError, match="holds the state of another evaluation"):
        R.run_autoattack(model, x, y, cfg, key=jax.random.key(6), state_path=state)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="not a robustjax AutoAttack state file"):
        R.run_autoattack(model, x, y, cfg, key=key, state_path=tmp_path / "junk.npz")
    assert R.state_bytes(x) > 2 * x.nbytes


def test_autoattack_cli_sigkilled_mid_write_resumes(tmp_path, default_model, monkeypatch,
                                                    capsys):
    """A real SIGKILL in the middle of the third state write (after the second batch), on the
    embedded CNN; the rerun prints that it resumed, redoes only the second batch and ends where
    an uninterrupted run ends."""
    import robustjax.models
    from robustjax import cli

    args = ["autoattack", "--version", "custom", "--attacks", "apgd-ce", "--eps",
            "0.12", "--examples", "8", "--batch-size", "4", "--seed", "1"]
    state, out = tmp_path / "aa.state.npz", tmp_path / "aa.json"
    env = {**os.environ, runfiles.FAULT_ENV: "3:partial"}  # ROBUSTJAX_CACHE: the test cache
    proc = subprocess.run([sys.executable, "-m", "robustjax", *args, "--state", str(state),
                           "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "apgd-ce - 1/2" in proc.stderr and "apgd-ce - 2/2" in proc.stderr
    assert not out.exists()
    # the state holds the first batch; the second was being written when the process died
    assert assert_whole(tmp_path, temporaries_allowed=True) == 1
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 1

    monkeypatch.setattr(robustjax.models, "embedded_default", lambda: default_model)
    assert cli.main([*args, "--state", str(state), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"resuming from {state}: attack 1 of 1 (apgd-ce), 1 batch(es) of it done" in err
    assert "apgd-ce - 1/2" not in err  # batch 1 was not redone; batch 2 gave the same again
    second = [line for line in proc.stderr.splitlines() if line.startswith("apgd-ce - 2/2")]
    assert second and second[0] in err.splitlines()
    assert cli.main([*args, "--out", str(tmp_path / "full.json")]) == 0
    assert "resuming" not in capsys.readouterr().err
    resumed, full = (json.loads((tmp_path / n).read_text()) for n in ("aa.json", "full.json"))
    assert _entry_numbers(resumed) == _entry_numbers(full)
    assert float(full["clean_acc"]) > float(full["autoattack_acc"])
    assert assert_whole(tmp_path) == 3  # the stray temporary is gone


# ----------------------------------------------------------------------------- ablation

ABLATION = """
[experiment]
name = "faults"
seeds = [0, 1]
[model]
name = "mlp"
hidden = [8]
[data]
dataset = "digits"
train_examples = 64
test_examples = 32
[recipe]
loss = "standard"
weight_decay = 1e-3
lr = 3e-3
epochs = 2
batch_size = 16
[components.weight_decay]
off = { weight_decay = 0.0 }
[evaluation]
metrics = ["clean"]
"""


def _runs(result):
    # how long a run took and how many trained beside it depend on where the kill fell
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "group_size")}
            for r in result["runs"]]


def test_ablation_killed_mid_grid_resumes_per_run(tmp_path, kill_at):
    from robustjax import experiments as E

    path = tmp_path / "faults.toml"
    path.write_text(ABLATION)
    kill_at(None)
    before = runfiles.writes_done()
    full = E.ablate(path, out=tmp_path / "full")
    # marker, 4 runs x (parameters, record), ablation.json, .md, .png
    assert runfiles.writes_done() - before == 12
    md = (tmp_path / "full" / "ablation.md").read_text()
    # after the marker; inside the group (2 of its 4 runs saved: the other 2 train as a group
    # of 2); every run saved but no table; the table written but not its plot
    for k, finished in ((1, 0), (5, 2), (9, 4), (11, 4)):
        out = tmp_path / f"k{k}"
        kill_at(k)
        with pytest.raises(Killed):
            E.ablate(path, out=out)
        assert_whole(out)
        kill_at(None)
        logs = []
        resumed = E.ablate(path, out=out, log=logs.append)
        assert f"faults: 4 runs, {finished} finished, 0 to re-evaluate, {4 - finished} to " \
               f"train" in logs, (k, logs)
        assert any(m.startswith(f"resuming {out}: {finished} of 4") for m in logs) == (
            finished > 0)
        assert _runs(resumed) == _runs(full) and resumed["summary"] == full["summary"], k
        assert (out / "ablation.md").read_text() == md
        for run in full["runs"]:
            a, _, _ = checkpoint.load(tmp_path / "full" / "runs" / f"{run['id']}.npz")
            b, _, _ = checkpoint.load(out / "runs" / f"{run['id']}.npz")
            for name, value in checkpoint.flatten(a).items():
                np.testing.assert_array_equal(checkpoint.flatten(b)[name], value)
        assert assert_whole(out) == 12  # marker, 8 run files, 3 outputs
