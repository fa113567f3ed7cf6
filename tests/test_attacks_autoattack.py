"""robustjax.attacks.autoattack: the versions as the reference defines them, the cascade,
resume, the reliability checks, and agreement with the reference implementation (a fixture
made by benchmarks/autoattack_crosscheck.py --fixture with pyautoattack; no PyTorch here)."""

import copy
import dataclasses
import importlib
import json
import pathlib
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import entry
from robustjax.attacks import _core
from robustjax.attacks import autoattack_checks as checks

# the package re-exports the function ``autoattack``, which shadows the module attribute
AA = importlib.import_module("robustjax.attacks.autoattack")

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "autoattack_reference.npz"


def mlp_apply(p, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


@pytest.fixture(scope="module")
def ref():
    f = np.load(FIXTURE)
    params = {k: jnp.asarray(f[k]) for k in ("w1", "b1", "w2", "b2")}
    return f, params


def _custom(eps=0.05, **kw):
    base = dict(eps=eps, version="custom", attacks=("apgd-ce", "fab-t", "square"), steps=10,
                apgd_restarts=1, fab_targets=2, n_queries=50, batch_size=8)
    base.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", checks.AutoAttackWarning)
        return AA.AutoAttackConfig(**base)


def _run(params, x, y, cfg, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", checks.AutoAttackWarning)
        return AA.autoattack(mlp_apply, params, x, y, jax.random.key(0), cfg, **kw)


# ------------------------------------------------------------------------------ config


def test_bad_input_lists_the_valid_choices():
    with pytest.raises(ValueError, match="standard, plus, rand, custom"):
        AA.AutoAttackConfig(version="fast")
    with pytest.raises(ValueError, match="linf, l2, l1"):
        AA.AutoAttackConfig(norm="l0")
    with pytest.raises(ValueError, match="only used with version='custom'"):
        AA.AutoAttackConfig(attacks=("apgd-ce",))
    with pytest.raises(ValueError, match="apgd-ce, apgd-dlr, fab, square, apgd-t, fab-t"):
        AA.AutoAttackConfig(version="custom", attacks=("pgd",))
    with pytest.raises(ValueError, match="eps"):
        AA.AutoAttackConfig(eps=-1.0)
    assert AA.AutoAttackConfig(norm="Linf").norm == "linf"  # the reference's spelling


def test_versions_are_the_references():
    def plan(**kw):
        return {n: c for n, _, c in AA.attack_plan(AA.AutoAttackConfig(**kw))}

    p = plan(version="standard")
    assert list(p) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (p["apgd-ce"].restarts, p["apgd-ce"].steps, p["apgd-ce"].loss) == (1, 100, "ce")
    assert (p["apgd-t"].num_targets, p["apgd-t"].restarts) == (9, 1)
    assert (p["fab-t"].targeted, p["fab-t"].num_targets, p["fab-t"].restarts) == (True, 9, 1)
    assert (p["square"].n_queries, p["square"].p_init, p["square"].rescale_schedule) == (
        5000, 0.8, False)
    p = plan(version="standard", norm="l1", eps=12.0)
    assert (p["apgd-ce"].restarts, p["apgd-ce"].use_largereps) == (5, True)
    assert (p["apgd-t"].num_targets, p["apgd-t"].use_largereps) == (5, True)
    assert list(p) == ["apgd-ce", "apgd-t", "fab-t", "square"]  # L1 Square too, as the reference
    assert (p["square"].norm, p["square"].n_queries, p["fab-t"].norm) == ("l1", 5000, "l1")
    p = plan(version="plus")
    assert list(p) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert p["apgd-ce"].restarts == p["apgd-dlr"].restarts == p["fab"].restarts == 5
    assert not p["fab"].targeted and p["fab-t"].restarts == 1  # the reference forces 1
    p = plan(version="rand")
    assert list(p) == ["apgd-ce", "apgd-dlr"]
    assert p["apgd-ce"].eot_iter == p["apgd-dlr"].eot_iter == 20
    assert p["apgd-ce"].restarts == 1


# ------------------------------------------------------------------------------ cascade


def test_cascade_is_monotone_and_broken_examples_are_adversarial(ref):
    f, params = ref
    x, y = jnp.asarray(f["x"][:40]), jnp.asarray(f["y"][:40])
    cfg = _custom(eps=0.08)
    r = _run(params, x, y, cfg)
    seq = list(r.accuracy_after.values())
    assert list(r.accuracy_after) == ["clean", "apgd-ce", "fab-t", "square"]
    assert all(a >= b for a, b in zip(seq, seq[1:])) and seq[0] > seq[-1]
    assert r.robust_accuracy == pytest.approx(r.robust.mean()) == seq[-1]
    pred = np.asarray(jnp.argmax(mlp_apply(params, jnp.asarray(r.x_adv)), -1))
    dist = np.abs(r.x_adv - np.asarray(x)).reshape(40, -1).max(-1)
    broken = r.broken_by > 0
    assert np.all(pred[broken] != np.asarray(y)[broken])          # genuinely misclassified
    assert np.all(dist[broken] <= 0.08 * (1 + 1e-5) + 1e-7)        # inside the eps ball
    assert np.all((r.x_adv >= 0) & (r.x_adv <= 1))
    np.testing.assert_array_equal(r.x_adv[~broken], np.asarray(x)[~broken])
    np.testing.assert_array_equal(r.robust, r.broken_by == -1)
    clean_wrong = np.asarray(jnp.argmax(mlp_apply(params, x), -1)) != np.asarray(y)
    np.testing.assert_array_equal(r.broken_by == 0, clean_wrong)
    # the accuracy after attack j counts exactly the examples not broken by attacks <= j
    for j, name in enumerate(r.attacks, start=1):
        assert r.accuracy_after[name] == pytest.approx(np.mean((r.broken_by == -1)
                                                               | (r.broken_by > j)))


def test_one_program_per_attack_and_both_schedules(ref):
    f, params = ref
    x, y = jnp.asarray(f["x"][:40]), jnp.asarray(f["y"][:40])
    for schedule in ("compact", "mask"):
        cfg = _custom(eps=0.08, attacks=("apgd-ce", "apgd-t"), schedule=schedule)
        lines, rounds = [], []

        def checkpoint(state):  # the examples each APGD-T target round starts from
            if state.current == 1 and state.batches_done == 0:
                rounds.append(int(state.robust.sum()))

        r = _run(params, x, y, cfg, log=lines.append, checkpoint=checkpoint)
        for name, fn, acfg in AA.attack_plan(cfg):
            # the runners are keyed on the model function as it runs (accelerated by entry)
            args = (entry.model_function(mlp_apply), fn, acfg, cfg.norm, float(cfg.eps))
            if name == "apgd-t" and schedule == "compact":
                # the targets one at a time on the examples still robust (as the reference):
                # one program per padded batch size the rounds needed
                assert AA._runner(*args)._cache_size() == 0
                assert any(line.startswith("apgd-t (target 2/") for line in lines)
                sizes = {AA.compact_batch(t, cfg.batch_size)[1] for t in rounds if t}
                assert AA._target_runner(*args)._cache_size() == len(sizes) >= 1, sizes
            else:
                assert AA._runner(*args)._cache_size() == 1, name  # several batches, one program
        assert lines[1] == f"initial accuracy: {r.clean_accuracy:.2%}"
        assert any(line.startswith("robust accuracy after APGD-CE: ") for line in lines)
        assert lines[-1] == f"robust accuracy: {r.robust_accuracy:.2%}"
        assert r.robust_accuracy < r.clean_accuracy


def test_resume_after_an_interrupt_equals_an_uninterrupted_run(ref):
    f, params = ref
    x, y = jnp.asarray(f["x"][:40]), jnp.asarray(f["y"][:40])
    cfg = _custom(eps=0.08, attacks=("apgd-ce", "fab-t"))
    full = _run(params, x, y, cfg)
    saved = []

    class Interrupt(Exception):
        pass

    def checkpoint(state):
        saved.append(copy.deepcopy(state))
        if state.current == 1 and state.batches_done == 2:  # inside the second attack
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(params, x, y, cfg, checkpoint=checkpoint)
    state = saved[-1]
    assert state.current == 1 and state.batches_done == 2
    again = _run(params, x, y, cfg, resume=state)
    np.testing.assert_array_equal(again.broken_by, full.broken_by)
    np.testing.assert_array_equal(again.x_adv, full.x_adv)
    assert again.accuracy_after == full.accuracy_after
    with pytest.raises(ValueError, match="state was created"):
        _run(params, x, y, dataclasses.replace(cfg, eps=0.1), resume=saved[-1])


def test_state_file_round_trip_and_robustbench_entry(ref, tmp_path):
    from types import SimpleNamespace

    from robustjax.cli import build_parser
    from robustjax.report import autoattack as R

    f, params = ref
    x, y = f["x"][:24], f["y"][:24]
    cfg = _custom(eps=0.08, attacks=("apgd-ce", "fab-t"))
    full = _run(params, x, y, cfg)
    saved = []

    def checkpoint(state):
        saved.append(copy.deepcopy(state))
        if state.current == 0 and state.batches_done == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C inside APGD-CE

    with pytest.raises(KeyboardInterrupt):
        _run(params, x, y, cfg, checkpoint=checkpoint)
    path = tmp_path / "aa.state.npz"
    R.save_state(path, saved[-1])
    assert [p.name for p in tmp_path.iterdir()] == ["aa.state.npz"]  # no temporary left over
    model = SimpleNamespace(apply_fn=mlp_apply, params=params)
    with pytest.warns(checks.AutoAttackWarning):
        entry = R.run_autoattack(model, x, y, cfg, state_path=path, name="tiny", dataset="digits")
    assert entry["autoattack_acc"] == f"{100 * full.robust_accuracy:.2f}"
    assert entry["clean_acc"] == f"{100 * full.clean_accuracy:.2f}"
    assert (entry["eps"], entry["norm"], entry["version"], entry["n_ex"]) == (
        "0.08", "linf", "custom", 24)
    np.testing.assert_array_equal(R.load_state(path).broken_by, full.broken_by)
    json.dumps(entry)
    args = build_parser().parse_args(["autoattack", "--eps", "0.1", "--norm", "l2"])
    assert args.func.__name__ == "_run_autoattack" and args.norm == "l2"


# ------------------------------------------------------------------------------ checks


class NoisyParams(NamedTuple):
    params: dict
    key: jax.Array


def test_checks_warn_and_say_what_to_do(ref):
    f, params = ref
    x, y = jnp.asarray(f["x"][:16]), jnp.asarray(f["y"][:16])
    with pytest.warns(checks.AutoAttackWarning, match="logits"):
        checks.check_range_output(lambda p, z: jax.nn.softmax(mlp_apply(p, z)), params, x)

    def noisy(p, z):  # a randomized defense: Gaussian noise drawn from the key in its params
        return mlp_apply(p.params, z + 0.3 * jax.random.normal(p.key, z.shape))

    with pytest.warns(checks.AutoAttackWarning, match="version='rand'"):
        assert checks.check_randomized(noisy, NoisyParams(params, jax.random.key(0)), x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not checks.check_randomized(mlp_apply, params, x, y)
        checks.check_dynamic(mlp_apply, params, x)

    def flat(p, z):  # masked gradient: a hard quantisation before the model
        return mlp_apply(p, jax.lax.stop_gradient(jnp.round(z)))

    flat.differentiable = False
    with pytest.warns(_core.GradientMaskingWarning, match="bpda"):
        checks.check_dynamic(flat, params, x)

    def looped(p, z):  # an input-dependent loop in the forward pass: a dynamic defense
        z = jax.lax.while_loop(lambda c: jnp.sum(c) > 1e9, lambda c: c * 0.5, z)
        return mlp_apply(p, z)

    with pytest.warns(checks.AutoAttackWarning, match="dynamic defense"):
        checks.check_dynamic(looped, params, x)
    with pytest.raises(ValueError, match="needs >= 3 classes"):
        checks.check_n_classes(2, ("apgd-dlr",), 9, 9)
    with pytest.raises(ValueError, match="needs >= 4 classes"):
        checks.check_n_classes(3, ("apgd-ce", "apgd-t"), 9, 9)
    with pytest.warns(checks.AutoAttackWarning, match="at most"):
        checks.check_n_classes(5, ("fab-t",), 9, 9)
    with pytest.warns(checks.AutoAttackWarning, match="steps=100"):
        checks.check_custom(AA.AutoAttackConfig(version="custom", attacks=("apgd-ce",),
                                                steps=10), False)
    with pytest.warns(checks.AutoAttackWarning, match="8/255"):
        checks.check_eps(0.9, "linf", 64)
    with pytest.warns(_core.GradientMaskingWarning, match="Square"):
        checks.check_square_sr({"clean": 1.0, "apgd-ce": 0.5, "square": 0.4})


def test_autoattack_runs_the_checks(ref):
    f, params = ref
    x, y = jnp.asarray(f["x"][:16]), jnp.asarray(f["y"][:16])
    cfg = _custom(eps=0.08, attacks=("apgd-ce",))
    with pytest.warns(checks.AutoAttackWarning, match="probabilities"):
        AA.autoattack(lambda p, z: jax.nn.softmax(mlp_apply(p, z)), params, x, y,
                      jax.random.key(0), cfg)


# ----------------------------------------------------------------- against the reference


@pytest.mark.parametrize("run", ["linf", "l2", "l1"])
def test_standard_matches_the_reference_implementation(ref, run):
    """The exact standard version on the fixture's 100 digits: the robust accuracy after every
    stage within 1 example of pyautoattack's (different random draws); L1 includes Square."""
    f, params = ref
    eps = float(f[f"{run}_eps"])
    r = AA.autoattack(mlp_apply, params, f["x"], f["y"], jax.random.key(0),
                      AA.AutoAttackConfig(eps=eps, norm=run, batch_size=100))
    names = [str(s) for s in f[f"{run}_names"]]
    assert list(r.accuracy_after) == names
    n = len(f["y"])
    for name, acc in zip(names, f[f"{run}_acc"]):
        assert abs(r.accuracy_after[name] - acc) * n <= 1 + 1e-6, (name, r.accuracy_after, acc)
    assert np.sum(r.robust != f[f"{run}_robust"]) <= 2
