"""ablate(): outputs, resume after a hard kill, skipping finished runs, changed configs."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from robustjax import checkpoint, cli
from robustjax import experiments as E

TOML = """
[experiment]
name = "tiny"
seeds = [0, 1]
[model]
name = "mlp"
hidden = [16]
[data]
dataset = "digits"
train_examples = 100
test_examples = 50
[recipe]
loss = "pgd_at"
eps = 0.2
step_size = 0.1
attack_steps = 1
weight_decay = 1e-3
lr = 3e-3
epochs = 1
batch_size = 25
[components.adversarial_training]
off = { loss = "standard" }
[components.weight_decay]
off = { weight_decay = 0.0 }
[evaluation]
metrics = ["clean", "pgd"]
eps = 0.2
pgd_steps = 2
"""

# Kills the process (no clean-up, like a SIGKILL) right after the first group is saved.
KILLER = textwrap.dedent("""
    import os, sys
    from robustjax import experiments
    def log(msg):
        if msg.startswith("saved "):
            os._exit(17)
    experiments.ablate(sys.argv[1], out=sys.argv[2], log=log)
""")


def _files(out):
    return sorted(os.listdir(out / "runs"))


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TOML)
    # uninterrupted
    logs = []
    full = E.ablate(path, out=tmp_path / "a", log=logs.append)
    assert any("6 to train" in m for m in logs)
    assert [r["variant"] for r in full["runs"]] == [
        "full", "full", "-adversarial_training", "-adversarial_training", "-weight_decay",
        "-weight_decay"]
    assert set(full["summary"]) == {"full", "-adversarial_training", "-weight_decay"}
    s = full["summary"]["-weight_decay"]["clean"]
    vals = [r["metrics"]["clean"] for r in full["runs"] if r["variant"] == "-weight_decay"]
    assert s["mean"] == pytest.approx(np.mean(vals))
    assert s["std"] == pytest.approx(np.std(vals, ddof=1))
    assert s["delta"] == pytest.approx(s["mean"] - full["summary"]["full"]["clean"]["mean"])
    for name in ("ablation.json", "ablation.md", "ablation.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    md = (tmp_path / "a" / "ablation.md").read_text()
    assert "| -weight_decay |" in md and "± " in md

    # interrupted after the first group, in a subprocess, then resumed here
    b = tmp_path / "b"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, "-c", KILLER, str(path), str(b)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-2000:]
    saved = [f for f in _files(b) if f.endswith(".json")]
    assert len(saved) == 4 and not (b / "ablation.md").exists()  # the PGD-AT group
    assert not [f for f in _files(b) if "tmp" in f]  # no half-written files
    logs = []
    resumed = E.ablate(path, out=b, log=logs.append)
    assert any("4 finished, 0 to re-evaluate, 2 to train" in m for m in logs)
    assert [m for m in logs if m.startswith("training")] == [
        "training 2 run(s) together: no_adversarial_training__seed0, "
        "no_adversarial_training__seed1"]
    assert resumed["summary"] == full["summary"]
    assert (b / "ablation.md").read_text() == md
    for f in _files(b):
        if f.endswith(".npz"):
            pa, _, _ = checkpoint.load(tmp_path / "a" / "runs" / f)
            pb, _, _ = checkpoint.load(b / "runs" / f)
            for k in checkpoint.flatten(pa):
                np.testing.assert_allclose(checkpoint.flatten(pa)[k], checkpoint.flatten(pb)[k],
                                           atol=1e-6)

    # a rerun trains nothing and writes the same table
    logs = []
    again = E.ablate(path, out=b, log=logs.append)
    assert any("6 finished, 0 to re-evaluate, 0 to train" in m for m in logs)
    assert again["summary"] == full["summary"]

    # a changed component retrains only its runs; a changed profile only re-evaluates
    path.write_text(TOML.replace("weight_decay = 0.0", "weight_decay = 1e-4").replace(
        "pgd_steps = 2", "pgd_steps = 3"))
    logs = []
    changed = E.ablate(path, out=b, log=logs.append)
    assert any("0 finished, 4 to re-evaluate, 2 to train" in m for m in logs)
    assert sum("recipe changed" in m for m in logs) == 2
    assert [m for m in logs if m.startswith("training")] == [
        "training 2 run(s) together: no_weight_decay__seed0, no_weight_decay__seed1"]
    assert changed["summary"]["full"]["clean"] == full["summary"]["full"]["clean"]
    rec = json.loads((b / "runs" / "no_weight_decay__seed0.json").read_text())
    assert rec["recipe"]["weight_decay"] == 1e-4


def test_output_folder_is_never_overwritten_silently(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TOML)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a robustjax ablation folder"):
        E.ablate(path, out=foreign)
    other = tmp_path / "other"
    other.mkdir()
    (other / E.runner.MARKER).write_text(json.dumps({"experiment": "another"}))
    with pytest.raises(FileExistsError, match="holds the results of experiment 'another'"):
        E.ablate(path, out=other)
    assert os.listdir(foreign) == ["notes.txt"]


def test_cli_errors_before_training(tmp_path, capsys):
    assert cli.main(["ablate", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(TOML.replace('metrics = ["clean", "pgd"]', 'metrics = ["clean", "pgdd"]'))
    assert cli.main(["ablate", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown metric 'pgdd'; valid: clean, pgd, apgd" in err
    assert not (tmp_path / "o").exists()


def test_runs_that_differ_in_shape_train_one_after_another(tmp_path):
    exp = E.Experiment(
        "widths", model=E.ModelConfig("mlp", {"hidden": (16,)}),
        data=E.DataConfig("digits", train_examples=50, test_examples=20),
        recipe=E.Recipe(loss="standard", epochs=1, batch_size=25),
        components=(E.Component("width", alternatives={"narrow": {"model": {"hidden": (4,)}}}),
                    E.Component("ema", alternatives={"ema": {"ema": True}})),
        profile=E.Profile(metrics=("clean",)))
    assert [v.model_options for v in E.variants(exp)] == [
        (("hidden", (16,)),), (("hidden", (4,)),), (("hidden", (16,)),)]
    logs = []
    result = E.ablate(exp, out=tmp_path / "w", log=logs.append)
    assert [m for m in logs if m.startswith("training")] == [
        "training 2 run(s) together: full__seed0, ema~ema__seed0",
        "training 1 run(s) together: width~narrow__seed0"]
    narrow, _, _ = checkpoint.load(tmp_path / "w" / "runs" / "width~narrow__seed0.npz")
    assert narrow["params"]["dense0"]["kernel"].shape == (64, 4)
    assert set(result["summary"]) == {"full", "width=narrow", "ema=ema"}
    with pytest.raises(ValueError, match="does not exist in the base recipe"):
        E.Experiment("x", model=E.ModelConfig("mlp", {"hidden": (16,)}), components=(
            E.Component("width", off={"model": {"hidden": (16,)}}),))


def test_certified_metric_on_unsupported_model_fails_before_training(tmp_path, monkeypatch):
    from robustjax import certify

    def unsupported(*args, **kwargs):
        raise certify.UnsupportedPrimitiveError("no IBP rule for primitive 'cumsum'")

    monkeypatch.setattr(certify, "certify", unsupported)
    path = tmp_path / "tiny.toml"
    path.write_text(TOML.replace('metrics = ["clean", "pgd"]', 'metrics = ["clean", "ibp"]'))
    with pytest.raises(ValueError, match="metric 'ibp' cannot run on this model: no IBP rule"):
        E.ablate(path, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_autoattack_metric_is_a_column_and_no_higher_than_clean(tmp_path):
    exp = E.Experiment(
        "aa", model=E.ModelConfig("mlp", {"hidden": (16,)}),
        data=E.DataConfig("digits", train_examples=100, test_examples=30),
        recipe=E.Recipe(loss="standard", epochs=10, batch_size=25, lr=1e-2),
        profile=E.Profile(metrics=("clean", "autoattack"), eps=0.3, batch_size=30))
    result = E.ablate(exp, out=tmp_path / "aa", log=lambda m: None)
    row = result["summary"]["full"]
    assert 0.0 <= row["autoattack"]["mean"] <= row["clean"]["mean"]
    assert row["clean"]["mean"] > 0.3  # a model that learned something was attacked
    assert "AutoAttack acc" in (tmp_path / "aa" / "ablation.md").read_text()
    with pytest.raises(ValueError, match="autoattack_version"):
        E.Profile(metrics=("autoattack",), autoattack_version="fast")
