"""report.html: structure of the page (torch- and browser-free; the browser check is
tests/test_report_html_browser.py and benchmarks/report_html_browser_check.py)."""

import base64
import html.parser
import json
import pathlib
import struct

import pytest

from robustjax.report import html as rhtml

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "report_quick.json"


def tiny_png(width: int, height: int) -> bytes:
    """A valid gray PNG of the given size (no image library needed)."""
    import zlib

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + bytes([(x * 7 + y) % 256 for x in range(width)])
                   for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                              0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def quick_report(tmp_path) -> dict:
    """The committed ``robustjax report --quick`` report.json, its figures as small PNGs."""
    report = json.loads(FIXTURE.read_text())
    for sec in report["sections"].values():
        for i, f in enumerate(sec["figures"]):
            (tmp_path / f).write_bytes(tiny_png(40 + i, 30))
    return report


class Page(html.parser.HTMLParser):
    """Collects ids, links, images, scripts and table shapes."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images, self.external, self.tables = [], [], [], [], []
        self.scripts, self.in_toc, self.toc = 0, False, []
        self._row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "nav":
            self.in_toc = True
        if tag == "a" and self.in_toc:
            self.toc.append(a["href"])
        if tag == "img":
            self.images.append(a)
        for attr in ("src", "href"):
            if attr in a and a[attr].split(":")[0] in ("http", "https", "file", "ftp") \
                    or a.get(attr, "").startswith("//"):
                self.external.append(a[attr])
        if tag == "link":
            self.external.append(a.get("href"))
        if tag == "script":
            self.scripts += 1
            if "src" in a:
                self.external.append(a["src"])
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self._row = 0
        if tag in ("td", "th") and self._row is not None:
            self._row += 1

    def handle_endtag(self, tag):
        if tag == "nav":
            self.in_toc = False
        if tag == "tr":
            self.tables[-1].append(self._row)
            self._row = None


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def test_quick_report_renders_self_contained(tmp_path):
    report = quick_report(tmp_path)
    path = rhtml.write_html(report, tmp_path)
    assert path == tmp_path / "report.html"
    text = path.read_text()
    page = parse(text)
    n_figures = sum(len(s["figures"]) for s in report["sections"].values())
    assert n_figures >= 3
    # every figure embedded as the very bytes written, nothing fetched from elsewhere
    assert len(page.images) == n_figures
    sizes = set()
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        sizes.add(struct.unpack(">II", png[16:24]))
    assert len(sizes) > 1 or n_figures == 1
    assert page.external == []
    assert page.scripts == 1
    # ids unique, every contents link resolves, one entry per section
    assert len(page.ids) == len(set(page.ids))
    assert page.toc and all(h.startswith("#") and h[1:] in page.ids for h in page.toc)
    for key in report["sections"]:
        assert f"#sec-{key}" in page.toc
    # rectangular tables: every row has as many cells as the header
    assert len(page.tables) > 5
    for rows in page.tables:
        assert rows and len(set(rows)) == 1, rows
    # the numbers are the report's (formatted), e.g. the clean accuracy
    clean = report["sections"]["attacks"]["clean"]
    assert f'data-sort="{clean!r}"' in text


def test_shapes_become_tables(tmp_path):
    report = {"dataset": "d", "sections": {"s": {
        "title": "T", "figures": [], "severities": [1, 3, 5],
        "grid": {"fog": [0.1, 0.2, 0.3], "snow": [0.4, 0.5, 0.6]},
        "records": [{"attack": "pgd", "acc": 0.25}, {"attack": "fgsm", "acc": 0.5, "q": 3}],
        "by_name": {"a": {"x": 1, "y": 2.5}, "b": {"x": 3}},
        "nested": {"inner": {"v": 1}, "note": "x"}}}}
    text = rhtml.render_html(report, tmp_path)
    # a dict of equal-length lists is headed by the sibling list of that length
    assert "<th scope=\"col\">s1</th><th scope=\"col\">s3</th><th scope=\"col\">s5</th>" in text
    assert '<td>fog</td><td class="num" data-sort="0.1">0.1</td>' in text
    # records: union of keys, a missing value is a dash
    assert '<th scope="col">attack</th><th scope="col">acc</th><th scope="col">q</th>' in text
    assert '<td>pgd</td><td class="num" data-sort="0.25">0.25</td><td>\u2014</td>' in text
    assert '<th scope="col">by_name</th><th scope="col">x</th><th scope="col">y</th>' in text
    page = parse(text)
    assert {"#s-grid", "#s-records", "#s-by-name", "#s-nested", "#s-nested-inner"} <= set(
        page.toc)


def test_text_is_escaped(tmp_path):
    report = {"sections": {"x": {"title": "<script>alert(1)</script>", "figures": [],
                                 "note": "a < b & \"c\""}}}
    text = rhtml.render_html(report, tmp_path)
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "a &lt; b &amp; &quot;c&quot;" in text
    assert parse(text).scripts == 1


def test_missing_figure_is_named_not_broken(tmp_path):
    report = {"sections": {"x": {"title": "X", "figures": ["gone.png", "notes.txt"]}}}
    text = rhtml.render_html(report, tmp_path)
    assert "figure gone.png is missing" in text and "unknown image type .txt" in text
    assert parse(text).images == []


def test_svg_figure_is_embedded(tmp_path):
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="8"></svg>'
    (tmp_path / "f.svg").write_text(svg)
    text = rhtml.render_html({"sections": {"x": {"title": "X", "figures": ["f.svg"]}}}, tmp_path)
    src = parse(text).images[0]["src"]
    assert src.startswith("data:image/svg+xml;base64,")
    assert base64.b64decode(src.split(",", 1)[1]).decode() == svg


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="'sections' dict"):
        rhtml.render_html({"format": "x"}, tmp_path)
    with pytest.raises(ValueError, match="section 'a' should be a dict"):
        rhtml.render_html({"sections": {"a": [1]}}, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rhtml.write_html({"sections": {}}, tmp_path / "nowhere")


def test_command_line(tmp_path, capsys):
    report = quick_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert rhtml.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.html")
    assert (tmp_path / "report.html").read_text() == rhtml.render_html(report, tmp_path)
    with pytest.raises(SystemExit):
        rhtml.main([str(tmp_path / "empty")])
    assert "report.json not found" in capsys.readouterr().err
