"""report.html in a real headless Chromium (DevTools protocol): no console errors, every figure
renders, contents links scroll, a header click sorts. Skipped only when no Chromium binary is
installed (``apt-get install chromium``); the same checks run on a fresh report with
``python benchmarks/report_html_browser_check.py``."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location(
    "report_html_browser_check", ROOT / "benchmarks" / "report_html_browser_check.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

pytestmark = pytest.mark.skipif(check.find_chromium() is None,
                                reason="no Chromium binary (apt-get install chromium)")


def _report_with_figures(tmp_path) -> dict:
    """The committed quick report.json with its figures drawn small by matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads((ROOT / "tests" / "fixtures" / "report_quick.json").read_text())
    for sec in report["sections"].values():
        for i, name in enumerate(sec["figures"]):
            fig, ax = plt.subplots(figsize=(2 + i, 1.5))
            ax.plot([0, 1, 2], [i, 1, 0])
            ax.set_title(name, fontsize=6)
            fig.savefig(tmp_path / name, dpi=60)
            plt.close(fig)
    # one figure as SVG, the other format matplotlib writes
    sec = report["sections"]["attacks"]
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.bar([0, 1], [1, 2])
    fig.savefig(tmp_path / "bars.svg")
    plt.close(fig)
    sec["figures"] = sec["figures"] + ["bars.svg"]
    return report


def test_page_in_headless_chromium(tmp_path):
    from robustjax.report.html import write_html

    report = _report_with_figures(tmp_path)
    page = write_html(report, tmp_path)
    n = check.expected_figures(report, tmp_path)
    assert n == 7
    found = check.check_page(page, n, tmp_path / "shot.png")
    assert found["failures"] == []
    assert found["console_errors"] == [] and found["external_requests"] == []
    assert len(found["images"]) == n and all(im["w"] > 0 for im in found["images"])
    assert {im["w"] for im in found["images"]} >= {120, 180}  # the sizes drawn, 2x / 3x 60 dpi
    assert found["toc_links"] > len(report["sections"])
    assert found["sort"]["ascending"] != found["sort"]["before"]
    assert found["sort"]["aria_sort"] == "descending"  # clicked twice
    shot = (tmp_path / "shot.png").read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 5000


def test_broken_page_is_caught(tmp_path):
    """The checks can fail: a script error, an undecodable image and a dangling link."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><body><nav class="toc"><a href="#nowhere">x</a></nav>'
        '<img alt="broken" src="data:image/png;base64,AAAA">'
        '<table class="sortable"><thead><tr><th>a</th></tr></thead><tbody>'
        '<tr><td data-sort="2">2</td></tr><tr><td data-sort="1">1</td></tr>'
        '<tr><td data-sort="3">3</td></tr></tbody></table>'
        "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    found = check.check_page(page, 2, None)
    text = "\n".join(found["failures"])
    assert "images that did not render: ['broken']" in text
    assert "1 <img> on the page, expected 2" in text
    assert "without a target: ['nowhere']" in text
    assert "did not change the row order" in text  # no sorting script on this page
    assert any("boom" in e for e in found["console_errors"])
    assert any("undefinedFunction" in e for e in found["console_errors"])
