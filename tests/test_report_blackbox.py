"""The black-box / transfer report section in quick mode on the embedded default model."""

import jax
import numpy as np

from robustjax import data
from robustjax.report import blackbox
from robustjax.report.base import ReportContext


def test_section_quick(tmp_path, default_model):
    x, y = data.load("mnist5k", "test")
    ctx = ReportContext(model=default_model, x=x, y=y, key=jax.random.PRNGKey(0),
                        out_dir=tmp_path, quick=True)
    sec = blackbox.section(ctx)
    assert sec.key == "blackbox"
    d = sec.data
    rows = d["robust_accuracy"]
    pgd = next(k for k in rows if k.startswith("PGD"))
    sq = next(k for k in rows if k.startswith("Square"))
    for vals in rows.values():
        assert len(vals) == len(d["eps"]) and all(0.0 <= v <= d["clean"] + 1e-9 for v in vals)
    # white-box PGD is at least as strong as 50 queries of Square (one example of slack)
    assert rows[pgd][0] <= rows[sq][0] + 1 / d["n"]
    assert rows[pgd][0] < 0.5  # the default model is not robust at eps 0.3
    assert 1 <= d["median_queries"][sq][0] <= 50
    hsj = [k for k in rows if k.startswith("HopSkipJump")]
    if hsj:  # decision-based: no stronger than white-box PGD at the same eps, budget kept
        assert rows[pgd][0] <= rows[hsj[0]][0] + 1 / d["n"]
        assert d["median_queries"][hsj[0]][0] <= 50
    else:
        assert any("HopSkipJump: not available" in n for n in d["notes"])
    t = d["transfer"]
    assert list(t["rate"]) == ["PGD-3", "DI-MI-FGSM-3", "TI-DI-MI-FGSM-3"]
    for name, vals in t["rate"].items():
        assert all(0.0 <= v <= 1.0 for v in vals)
        assert all(0.0 <= v <= 1.0 for v in t["surrogate_success"][name])
    assert t["surrogate"]["clean_accuracy_eval"] > 0.8
    assert t["surrogate_success"]["PGD-3"][0] > 0.5
    # at eps 0.3 some of the surrogate's adversarial digits fool the model under test
    assert max(v[0] for v in t["rate"].values()) > 0.0
    assert np.isfinite(d["clean"]) and "| crafted on surrogate |" in sec.markdown
