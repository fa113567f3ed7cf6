import json
import subprocess
import sys

import pytest

from robustjax.cli import build_parser, main
from robustjax.report.run import SECTIONS


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"report", "datasets", "models"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: robustjax " + name in capsys.readouterr().out


def test_report_end_to_end_quick(tmp_path, default_model, capsys):
    out = tmp_path / "rep"
    assert main(["report", "--out", str(out), "--quick", "--sections", "clean"]) == 0
    report = json.loads((out / "report.json").read_text())
    clean = report["sections"]["clean"]
    assert report["examples"] == 64 and 0.9 <= clean["clean_accuracy"] <= 1.0
    md = (out / "report.md").read_text()
    assert "Clean accuracy" in md
    # Rerunning replaces our own report; a folder with the user's files is refused.
    assert main(["report", "--out", str(out), "--quick", "--sections", "clean"]) == 0
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    assert main(["report", "--out", str(user), "--quick", "--sections", "clean"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (user / "notes.txt").read_text() == "keep me" and not (user / "report.json").exists()


def test_report_rejects_unknown_section_and_dataset(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path / "a"), "--sections", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown report section" in err and "clean" in err
    assert main(["report", "--out", str(tmp_path / "b"), "--dataset", "mnist"]) == 2
    assert "valid names" in capsys.readouterr().err


def test_python_dash_m_and_listing():
    out = subprocess.run([sys.executable, "-m", "robustjax", "models"], capture_output=True,
                         text=True, check=True).stdout
    assert "cnn" in out and "resnet18_cifar" in out
    out = subprocess.run([sys.executable, "-m", "robustjax", "datasets"], capture_output=True,
                         text=True, check=True).stdout
    assert "mnist5k" in out and "imagenet2012" in out


def test_sections_registry_modules_import():
    import importlib

    for name, mod in SECTIONS.items():
        assert callable(importlib.import_module(mod).section), name
