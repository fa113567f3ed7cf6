"""The defenses report section in quick mode on the embedded default model."""

import jax

from robustjax import data
from robustjax.report import defenses as defenses_section
from robustjax.report.base import ReportContext


def test_section_quick_flags_the_masking_defense(tmp_path, default_model):
    x, y = data.load("mnist5k", "test")
    ctx = ReportContext(model=default_model, x=x, y=y, key=jax.random.PRNGKey(0),
                        out_dir=tmp_path, quick=True)
    sec = defenses_section.section(ctx)
    assert sec.key == "defenses"
    res = sec.data["results"]
    assert list(res) == ["model under test", "PGD-AT CNN", "model under test + bit depth 4"]
    for r in res.values():
        for k in ("naive_pgd", "adaptive_pgd", "square"):
            assert 0.0 <= r[k] <= r["clean_accuracy"] + 1e-9
    under_test, squeezed = res["model under test"], res["model under test + bit depth 4"]
    # the undefended model: its adaptive attack is the naive one
    assert under_test["adaptive_pgd"] == under_test["naive_pgd"]
    assert under_test["naive_pgd"] < 0.5
    # 4-bit squeezing has zero gradients: naive PGD fails, BPDA does not -> flagged
    assert squeezed["naive_pgd"] > squeezed["adaptive_pgd"] + 0.3
    assert squeezed["gradient_masking_suspected"]
    assert "| model | clean | naive PGD |" in sec.markdown
