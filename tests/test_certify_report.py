"""The certify report section in quick mode on a tiny random CNN."""

import jax
import numpy as np

from robustjax import data
from robustjax.models.registry import create
from robustjax.report import certify as certify_section
from robustjax.report.base import ReportContext


def test_section_quick(tmp_path):
    x, y = data.load("mnist5k", "test")
    model = create("cnn", channels=(4, 8), hidden=16)
    ctx = ReportContext(model=model, x=x[:16], y=y[:16], key=jax.random.PRNGKey(0),
                        out_dir=tmp_path, quick=True)
    sec = certify_section.section(ctx)
    assert sec.key == "certify"
    curves = sec.data["verified_accuracy"]
    # {model under test, IBP-trained} x IBP, and CROWN for the model under test (quick mode)
    assert len(curves) == 3
    for name, acc in curves.items():
        assert len(acc) == len(sec.data["eps"])
        acc = [a for a in acc if a is not None]  # CROWN runs on a subset of the eps values
        assert all(0.0 <= a <= 1.0 for a in acc)
        assert all(b <= a + 1e-9 for a, b in zip(acc, acc[1:])), name  # decreasing in eps
    # At eps = 0 verification reduces to clean accuracy on the first n examples.
    idx = np.linspace(0, 15, 8).astype(int)
    pred = np.argmax(np.asarray(model.apply_fn(model.params, x[idx])), -1)
    assert abs(curves["model under test, IBP (n=8)"][0] - np.mean(pred == y[idx])) < 1e-9
    sm = sec.data["smoothing"]["certified_accuracy"]
    assert all(b <= a for a, b in zip(sm, sm[1:]))
    assert all(np.isfinite(r["score"]) and r["score"] >= 0 for r in sec.data["clever"]["scores"])
    for f in sec.figures:
        assert (tmp_path / f).stat().st_size > 0
    assert "Verified accuracy" in sec.markdown and "| model | method |" in sec.markdown
