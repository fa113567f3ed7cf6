"""``robustjax autoattack --help`` documents every choice, and the flags reach the config."""

import importlib

import pytest

from robustjax.cli import build_parser

AA = importlib.import_module("robustjax.attacks.autoattack")


def test_help_names_every_version_attack_norm_and_schedule(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["autoattack", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for word in AA.VERSIONS + AA.ATTACK_NAMES + AA.SCHEDULES + ("linf", "l2", "l1", "--state",
                                                                "RobustBench", "--seed"):
        assert word in text, word


def test_flags_reach_the_config(monkeypatch):
    import robustjax.models
    from robustjax.report import autoattack as R

    seen = {}

    def fake_run(model, x, y, config, **kw):
        seen.update(config=config, n=len(y), **kw)
        return {"clean_acc": "1", "autoattack_acc": "0", "eps": "1", "norm": "l1",
                "version": "custom", "n_ex": len(y)}

    monkeypatch.setattr(R, "run_autoattack", fake_run)
    monkeypatch.setattr(robustjax.models, "embedded_default", lambda: object())
    args = build_parser().parse_args(
        ["autoattack", "--eps", "12", "--norm", "L1", "--version", "custom", "--attacks",
         "apgd-ce,square", "--schedule", "mask", "--batch-size", "16", "--examples", "8",
         "--dataset", "digits", "--out", "/dev/null"])
    assert args.func(args) == 0
    c = seen["config"]
    assert (c.eps, c.norm, c.version, c.attacks, c.schedule, c.batch_size, seen["n"]) == (
        12.0, "l1", "custom", ("apgd-ce", "square"), "mask", 16, 8)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["autoattack", "--schedule", "sorted"])
