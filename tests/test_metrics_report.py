"""The metrics report section in quick mode on a tiny random CNN."""

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.models import MODELS, wrap
from robustjax.models.small import CNN
from robustjax.report.base import ReportContext
from robustjax.report.metrics import section


def _available(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_metrics_section_quick(tmp_path):
    module = CNN(channels=(4, 8), hidden=16)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    model = wrap(module, variables, MODELS["cnn"].spec)  # one compilation instead of eager init
    r = np.random.default_rng(0)
    x = (r.uniform(size=(24, 28, 28, 1)) * np.linspace(0.05, 1, 24)[:, None, None, None])
    x = x.astype(np.float32)
    y = np.asarray(jnp.argmax(model.apply_fn(model.params, x), -1)).astype(np.int32)
    y[:3] = (y[:3] + 1) % 10  # a few clean mistakes

    def invert(apply_fn, params, xx, yy, key):  # a deterministic stand-in "attack"
        return 1.0 - xx

    ctx = ReportContext(model, x, y, jax.random.PRNGKey(0), tmp_path, quick=True,
                        extras={"metrics_attacks": {"invert": ("black-box", invert)},
                                "flax_module": module, "train_x": x[16:]})
    sec = section(ctx)
    d = sec.data
    json.dumps(d)  # the data is JSON-serialisable
    assert sec.key == "metrics" and d["n"] == 16
    assert d["clean"]["top1"] == 13 / 16
    row = d["threats"][0]
    assert row["name"] == "invert" and row["kind"] == "black-box"
    # the same numbers computed independently
    xe, ye = x[:16], y[:16]
    pc = np.argmax(model.apply_fn(model.params, xe), -1)
    pa = np.argmax(model.apply_fn(model.params, 1 - xe), -1)
    success = (pc == ye) & (pa != ye)
    assert success.sum() > 0, "the stand-in attack must flip some predictions"
    assert row["accuracy"] == pytest.approx(np.mean(pa == ye))
    assert row["success_rate"] == pytest.approx(success.sum() / 13)
    assert row["fooling_rate"] == pytest.approx(success.sum() / 13)
    linf = np.abs(1 - 2 * xe).reshape(16, -1).max(1)
    assert row["linf_abs"] == pytest.approx(linf[success].mean(), rel=1e-5)
    assert "| invert | black-box |" in sec.markdown
    assert set(d["neurons"]["layers"]) == {"conv0", "conv1", "dense0"}
    assert 0.0 <= d["neurons"]["kmnc"] <= 1.0
    assert 0.0 <= d["boundary"]["ebd1"]["distance"] <= 15 / 15 * (126 / 255) + 1e-6
    if _available("robustjax.corruptions"):
        assert any(r["kind"] == "corruption" for r in d["threats"])
    else:
        assert "robustjax.corruptions not available" in sec.markdown
    if _available("robustjax.attacks"):
        curve = np.array(d["curve"]["share_broken"])
        assert np.all(np.diff(curve) >= 0) and (tmp_path / sec.figures[0]).exists()
    else:
        assert "robustness curve not computed" in sec.markdown and "curve" not in d


def test_flax_module_found_from_registry_only_when_it_reproduces_the_logits(tmp_path):
    from robustjax.report.metrics import _flax_module

    x = np.random.default_rng(1).uniform(size=(2, 28, 28, 1)).astype(np.float32)
    for module, expect in ((CNN(), True), (CNN(channels=(4, 8), hidden=16), False)):
        variables = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
        model = wrap(module, variables, MODELS["cnn"].spec)
        ctx = ReportContext(model, x, np.zeros(2, np.int32), jax.random.PRNGKey(0), tmp_path)
        found, reason = _flax_module(ctx)
        assert (found is not None) == expect
        assert expect or "flax_module" in reason
