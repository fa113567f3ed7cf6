"""The notebooks run top to bottom (their code cells, in one namespace), in their small setting.

``ROBUSTJAX_NOTEBOOK_SMALL=1`` shrinks the survey notebooks (fewer images, steps and eps); their
committed outputs are the full setting, written by ``python scripts/run_notebooks.py``.
"""

import json
import pathlib
import resource

import numpy as np
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def _quickstart(ns, out):
    assert "robust accuracy" in out and "verified accuracy" in out


def _fgsm_vs_pgd(ns, out):
    acc = ns["acc"]
    assert "FGSM robust accuracy at eps 0.1" in out and "PGD-10 robust accuracy at eps 0.1" in out
    assert acc["clean"] > 0.9
    # PGD is the stronger attack (survey Fig. 8); both stay inside the eps ball
    assert acc["PGD-10"] < acc["FGSM"] < acc["clean"]
    for res in (ns["fgsm"], ns["pgd"]):
        assert float(np.abs(np.asarray(res.x_adv) - np.asarray(ns["x"])).max()) <= 0.1 + 1e-6
    curve = ns["curve"]
    assert curve["FGSM"][0] > curve["FGSM"][-1] and curve["PGD-10"][0] > curve["PGD-10"][-1]


def _prediction_panels(ns, out):
    probs, y = ns["probs"], np.asarray(ns["y"])
    assert list(probs)[0] == "clean" and len(probs) == 5 and "PGD-3 L∞ 2/255" in out
    assert probs["clean"].shape == (2, 1000)
    p_label = {c: p[np.arange(len(y)), y].mean() for c, p in probs.items()}
    # real weights: the espresso is recognised; PGD at 2/255 removes the label's mass
    assert probs["clean"][1].argmax() == 967
    assert p_label["PGD-3 L∞ 2/255"] < 0.1 * p_label["clean"]
    assert len(ns["panel"](ns["columns"], probs, ns["y"]).axes) == 2 * 5


def _bring_your_own_model(ns, out):
    assert ns["clean"] > 0.8
    assert "ibp verified accuracy" in out and "crown verified accuracy" in out
    page = ns["page"]
    assert page.name == "report.html" and page.stat().st_size > 1000
    assert ns["report"]["sections"]["clean"]["model"] == "my_cnn"


CHECKS = {
    "quickstart.ipynb": _quickstart,
    "survey_fgsm_vs_pgd.ipynb": _fgsm_vs_pgd,
    "survey_prediction_panels.ipynb": _prediction_panels,
    "bring_your_own_model.ipynb": _bring_your_own_model,
}
# notebooks whose committed outputs a reader sees on GitHub (scripts/run_notebooks.py)
WITH_OUTPUTS = ("survey_fgsm_vs_pgd.ipynb", "survey_prediction_panels.ipynb",
                "bring_your_own_model.ipynb")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, default_model, capsys, monkeypatch, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("ROBUSTJAX_NOTEBOOK_SMALL", "1")
    monkeypatch.chdir(tmp_path)
    cells = json.loads(path.read_text())["cells"]
    code = [("".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code"
    namespace = {"__name__": "__notebook__"}
    start = _cpu_seconds()
    try:
        for i, src in enumerate(code):
            exec(compile(src, f"{path.name}[cell {i}]", "exec"), namespace)  # noqa: S102
    finally:
        plt.close("all")
    out = capsys.readouterr().out
    CHECKS[path.name](namespace, out)
    with capsys.disabled():
        print(f"\n{path.name}: {_cpu_seconds() - start:.1f} s CPU (small setting)")


def test_every_notebook_is_checked():
    assert NOTEBOOKS
    assert sorted(p.name for p in NOTEBOOKS) == sorted(CHECKS), "add a check to CHECKS"


@pytest.mark.parametrize("name", WITH_OUTPUTS)
def test_outputs_are_committed(name):
    """Every code cell ran (in order, full setting) and the figures are embedded."""
    nb = json.loads((pathlib.Path(__file__).parents[1] / "notebooks" / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
    outputs = [o for c in code for o in c["outputs"]]
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "Traceback" not in text and "Error" not in text
    assert any({"image/png", "image/jpeg"} & set(o.get("data", {})) for o in outputs)
    full = {"survey_fgsm_vs_pgd.ipynb": "on 1000 test digits",
            "survey_prediction_panels.ipynb": "6 photos",
            "bring_your_own_model.ipynb": "600 steps"}[name]
    assert full in text, f"{name}: committed outputs are not the full setting"
