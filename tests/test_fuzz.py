"""Property-based fuzzing (hypothesis) of the public entry points: random shapes, dtypes, value
ranges and configs. Every input either gives a valid result (finite, in [0, 1], inside the
threat model) or raises a robustjax error with a message: never a raw flax/XLA traceback,
never NaN output. Example counts are small (the suite's time budget); CI runs them on a fixed
sequence (HYPOTHESIS_PROFILE=ci)."""

import os
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import robustjax
from robustjax import attacks, certify, corruptions, metrics, validation

ROBUSTJAX_DIR = os.path.dirname(robustjax.__file__)
FUZZ = settings(max_examples=6, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def pooled_apply(params, x):
    """Takes any image size (global average pool, then a dense layer over 3 channels); a
    batch with another channel count fails inside the model, as a user's model would."""
    w, b = params
    feats = jnp.concatenate([jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))], axis=-1)
    return jnp.tanh(feats @ w + b) * 3.0


PARAMS = (jax.random.normal(jax.random.key(0), (6, 5)), jnp.zeros(5))


def assert_robustjax_error(err: BaseException) -> None:
    """An InputError, or a ValueError/TypeError/KeyError raised by robustjax's own code (a
    config check) with a message; anything raised inside jax or flax is a failure."""
    assert str(err), f"{type(err).__name__} without a message"
    event(f"error: {type(err).__name__}")
    if isinstance(err, validation.InputError):
        return
    frames = traceback.extract_tb(err.__traceback__)
    last = frames[-1].filename if frames else ""
    assert isinstance(err, (ValueError, TypeError, KeyError)) and last.startswith(
        ROBUSTJAX_DIR), f"raw error from {last}: {type(err).__name__}: {err}"


FAULTS = [None, None, None, None, "nchw", "one image", "uint8", "range", "nan", "empty",
          "channels", "labels", "length", "float labels"]


def images(draw, fault, sizes=(4,)):
    """A batch with at most one fault; benign variations (batch, size, float dtype, values)
    always (few sizes: each new shape compiles the entry point again)."""
    b = 0 if fault == "empty" else draw(st.sampled_from([1, 2, 3]))
    h = draw(st.sampled_from(sizes))
    c = 2 if fault == "channels" else 3
    dtype = "uint8" if fault == "uint8" else draw(st.sampled_from(["float32", "float16",
                                                                   "float64"]))
    lo, hi = (-0.5, 255.0) if fault == "range" else (0.0, 1.0)
    x = np.random.default_rng(draw(st.integers(0, 2 ** 16))).uniform(lo, hi, (b, h, h, c))
    if fault == "nan":
        x[draw(st.integers(0, b - 1)), 0, 0, 0] = draw(st.sampled_from([np.nan, np.inf]))
    if fault == "nchw":
        x = x.transpose(0, 3, 1, 2)
    elif fault == "one image":
        x = x[0]
    return x.astype(dtype)


def labels(draw, b, fault, classes=5):
    n = b - 1 if fault == "length" else b
    hi = 12 if fault == "labels" else classes
    y = np.random.default_rng(draw(st.integers(0, 99))).integers(0, hi, max(n, 0))
    if fault == "labels":
        y[0] = 11
    return y.astype("float32" if fault == "float labels" else draw(st.sampled_from(
        ["int32", "int64"])))


@st.composite
def attack_inputs(draw):
    fault = draw(st.sampled_from(FAULTS + ["eps"]))
    x = images(draw, fault)
    y = labels(draw, int(np.shape(x)[0]), fault)
    name = draw(st.sampled_from(["fgsm", "pgd", "square"]))
    eps = draw(st.sampled_from([-0.1, float("nan")] if fault == "eps" else [0.0, 0.03, 0.3]))
    return name, x, y, eps


def _valid_attack_result(name, x, res, eps):
    x = np.asarray(x, np.float32)
    x_adv = np.asarray(res.x_adv, np.float32)
    assert x_adv.shape == x.shape
    for field in res._fields:
        value = np.asarray(getattr(res, field), np.float32)
        assert np.all(np.isfinite(value)), f"{name}: non-finite {field}"
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, f"{name}: x_adv outside [0, 1]"
    # inside the Linf ball (float16 inputs: their rounding)
    assert np.max(np.abs(x_adv - x)) <= eps + 1e-3, f"{name}: outside the Linf ball"


@FUZZ
@given(attack_inputs())
def test_attacks_give_valid_results_or_robustjax_errors(case):
    name, x, y, eps = case
    attack, config_class = attacks.ATTACKS[name]
    fields = {"steps": 2, "n_queries": 4, "eps": eps}
    known = set(config_class.__dataclass_fields__)
    try:
        cfg = config_class(**{k: v for k, v in fields.items() if k in known})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = attack(pooled_apply, PARAMS, x, y, jax.random.key(1), cfg)
            jax.block_until_ready(res)
    except Exception as err:  # noqa: BLE001 - what we test is which errors come out
        assert_robustjax_error(err)
        return
    event("valid result")
    _valid_attack_result(name, x, res, eps)


@st.composite
def corruption_inputs(draw):
    x = images(draw, draw(st.sampled_from([f for f in FAULTS if f not in (
        "labels", "length", "float labels", "channels")])), sizes=(4, 6, 9))
    name = draw(st.sampled_from(["gaussian_noise", "brightness", "contrast", "pixelate",
                                 "jpeg_compression", "no_such_corruption"]))
    severity = draw(st.sampled_from([1, 3, 5, 0, 6]))
    return x, name, severity


@FUZZ
@given(corruption_inputs())
def test_corruptions_give_valid_images_or_robustjax_errors(case):
    x, name, severity = case
    try:
        out = np.asarray(corruptions.corrupt(x, name, severity, jax.random.key(0)), np.float32)
    except Exception as err:  # noqa: BLE001
        assert_robustjax_error(err)
        return
    event("valid result")
    assert out.shape == np.shape(x)
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0


@st.composite
def bound_inputs(draw):
    x = images(draw, draw(st.sampled_from([None, None, "nchw", "nan", "empty", "channels",
                                           "range"])))
    eps = draw(st.sampled_from([0.0, 0.01, 0.1, -0.01, float("inf")]))
    method = draw(st.sampled_from(["ibp", "crown", "ibp"]))
    return x, eps, method


@FUZZ
@given(bound_inputs())
def test_bounds_are_ordered_and_finite_or_robustjax_errors(case):
    x, eps, method = case
    try:
        lo, hi = certify.bounds(pooled_apply, PARAMS, x, eps, method=method)
        lo, hi = np.asarray(lo), np.asarray(hi)
    except Exception as err:  # noqa: BLE001
        assert_robustjax_error(err)
        return
    event("valid result")
    assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)), method
    assert np.all(lo <= hi + 1e-5), method
    logits = np.asarray(pooled_apply(PARAMS, jnp.asarray(x, jnp.float32)))
    assert np.all(lo <= logits + 1e-4) and np.all(logits <= hi + 1e-4), method


@st.composite
def metric_inputs(draw):
    fault = draw(st.sampled_from([None, None, None, "empty", "rank", "nan", "int logits",
                                  "labels", "length", "float labels"]))
    b = 0 if fault == "empty" else draw(st.sampled_from([1, 3]))
    k = draw(st.sampled_from([1, 5]))
    shape = {"rank": (b, 1, k)}.get(fault, (b, k))
    scale = draw(st.sampled_from([1.0, 1e4, 1e30]))  # 1e30: inf in float16, an error then
    logits = np.random.default_rng(draw(st.integers(0, 99))).normal(size=shape) * scale
    if fault == "nan":
        logits.reshape(b, -1)[b - 1, 0] = np.nan
    floats = ["float32", "float16"] if scale < 1e5 else ["float32"]  # huge but finite
    logits = logits.astype("int32" if fault == "int logits" else draw(st.sampled_from(floats)))
    y = labels(draw, b, fault, classes=k)
    family = draw(st.sampled_from(["top5", "adversarial", "defense", "fooling", "retention"]))
    return family, logits, y


@FUZZ
@given(metric_inputs())
def test_metrics_give_rates_or_robustjax_errors(case):
    family, logits, y = case
    fns = {
        "top5": lambda lg, y: {"top5": metrics.accuracy(lg, y, 5)},
        "adversarial": lambda lg, y: metrics.adversarial_metrics(lg, y),
        "defense": lambda lg, y: metrics.defense_metrics(lg, lg * 0.5, y),
        "fooling": lambda lg, y: {"fr": metrics.fooling_rate(lg, lg * 0.5, y)},
        "retention": lambda lg, y: {"rr": metrics.retention_rate(lg, lg * 0.5, y)},
    }
    try:
        out = {k: float(v) for k, v in fns[family](logits, y).items()}
    except Exception as err:  # noqa: BLE001
        assert_robustjax_error(err)
        return
    event("valid result")
    for key, value in out.items():
        if family == "adversarial" and key in ("acac", "actc", "nte", "success_rate"):
            continue  # averages over successful (attacked) examples: NaN when there are none
        if family == "retention":
            continue  # 0/0 when no clean example is correct: NaN by definition
        assert np.isfinite(value), f"{family}: {key} = {value}"
        assert (-1.0 if key == "cav" else 0.0) <= value <= 1.0, f"{family}: {key} = {value}"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_lp_distortions_and_ssim_on_random_pairs(dtype):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 12, 12, 3)).astype(dtype)
    x_adv = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(dtype)
    d = metrics.lp_distortions(x, x_adv)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in d.values())
    s = np.asarray(metrics.ssim(x, x_adv))
    assert np.all((s > 0) & (s <= 1.0))
