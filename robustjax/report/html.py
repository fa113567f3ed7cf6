"""The report as one self-contained HTML page: ``report.html`` next to report.md / report.json.

``write_html(report, out_dir)`` renders the dict that ``robustjax.report.run.run_report`` dumps
to ``report.json``: a header with the run's settings, a table of contents, then one part per
section with its figures embedded as base64 ``data:`` URIs and its data as tables. Nothing is
fetched from elsewhere (no external CSS, JS or fonts), so the file can be mailed or archived on
its own. Every table sorts by a click on a column header (a few lines of inline JS; numbers sort
as numbers).

The section data is rendered by shape, so a new section needs no code here:

* scalars (and short lists of scalars) -> one "field | value" table per section;
* a dict of scalars -> a "key | value" table;
* a list of records (dicts) -> a table with one row per record;
* a dict of records -> a table with one row per key;
* a dict of equal-length lists -> a table with one row per key and one column per position,
  headed by a sibling list of the same length when there is one (``severities``, ``eps``);
* any other dict -> a sub-heading (listed in the table of contents) and the same rules inside.

Render an existing report folder with ``python -m robustjax.report.html REPORT_DIR``.
"""

from __future__ import annotations

import argparse
import base64
import html as _html
import json
import math
import pathlib
import re
import sys
from typing import Any, Mapping, Optional

from robustjax.runfiles import atomic_write_text

FIGURE_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg",
                ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp"}
# section fields the runner adds around a section's own data
_SECTION_META = ("title", "seconds", "figures")
# top-level fields shown in the header, in this order
_HEADER_FIELDS = ("created", "dataset", "examples", "quick", "seed", "format")
_SHORT_LIST = 12  # a list of at most this many scalars is shown inline as one value

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;
background:#fff}
main{max-width:1100px;margin:0 auto;padding:1.2em 1.5em 4em}
h1{font-size:1.7em;margin:.4em 0}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em;
margin-top:2em}h3{margin-top:1.4em}h4{margin-top:1.1em}
nav.toc{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.6em 1.2em}
nav.toc ol{margin:.2em 0;padding-left:1.4em}nav.toc a{text-decoration:none;color:#0969da}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
thead th{background:#f6f8fa;cursor:pointer;user-select:none;white-space:nowrap}
thead th::after{content:" \\2195";color:#8c959f}
thead th[aria-sort=ascending]::after{content:" \\2191";color:#1b1f24}
thead th[aria-sort=descending]::after{content:" \\2193";color:#1b1f24}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9em}.meta{color:#57606a}.missing{color:#cf222e}
div.wide{overflow-x:auto}code{background:#f6f8fa;padding:0 .25em;border-radius:3px}
"""

# Click a header to sort its table by that column; a second click reverses. Cells sort by their
# data-sort attribute when present (raw numbers), numerically when both keys parse as numbers.
_JS = """
(function(){
  function key(td){var k=td.getAttribute('data-sort');return k===null?td.textContent.trim():k;}
  function cmp(a,b){var x=parseFloat(a),y=parseFloat(b);
    if(a!==''&&b!==''&&!isNaN(x)&&!isNaN(y)&&isFinite(a)&&isFinite(b))return x-y;
    return a.localeCompare(b);}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('thead th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var asc=th.getAttribute('aria-sort')!=='ascending';
        table.querySelectorAll('thead th').forEach(function(o){o.removeAttribute('aria-sort');});
        th.setAttribute('aria-sort',asc?'ascending':'descending');
        var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
        rows.sort(function(r,s){var c=cmp(key(r.cells[col]),key(s.cells[col]));
          return asc?c:-c;});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
})();
"""


def _esc(value: Any) -> str:
    return _html.escape(str(value), quote=True)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _is_scalar_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_scalar(e) for e in v)


def _fmt(v: Any) -> str:
    """A scalar as text: floats with 4 significant digits, None/NaN as a dash."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "\u2014"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)


def _compact(v: Any, depth: int = 0) -> str:
    """Any JSON value as one short line of text (for a table cell)."""
    if _is_scalar(v):
        return _fmt(v)
    if isinstance(v, list):  # outer items by commas, inner ones (e.g. [class, prob]) by spaces
        return (", " if depth == 0 else " ").join(_compact(e, depth + 1) for e in v)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_compact(e, depth + 1)}" for k, e in v.items())
    return str(v)


def _cell(v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        sort = "" if isinstance(v, float) and math.isnan(v) else repr(v)
        return f'<td class="num" data-sort="{_esc(sort)}">{_esc(_fmt(v))}</td>'
    return f"<td>{_esc(_compact(v))}</td>"


def _table(header: list, rows: list[list]) -> str:
    head = "".join(f'<th scope="col">{_esc(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return (f'<div class="wide"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _union_keys(records) -> list:
    keys: list = []
    for r in records:
        keys += [k for k in r if k not in keys]
    return keys


def _axis(n: int, siblings: Mapping[str, Any]) -> list:
    """Column labels for lists of length ``n``: a sibling list of scalars of that length."""
    for name, v in siblings.items():
        if _is_scalar_list(v) and len(v) == n and len(set(map(str, v))) == n:
            prefix = "s" if "severit" in name else ""
            return [f"{prefix}{_fmt(e)}" for e in v]
    return [str(i + 1) for i in range(n)]


def _as_table(name: str, v: Any, siblings: Mapping[str, Any]) -> Optional[str]:
    """``v`` as one table when its shape is one of the tabular ones, else None."""
    if isinstance(v, list) and v and all(isinstance(e, dict) for e in v):
        keys = _union_keys(v)
        return _table(keys, [[r.get(k) for k in keys] for r in v])
    if not isinstance(v, dict) or not v:
        return None
    vals = list(v.values())
    if all(_is_scalar(e) for e in vals):
        return _table([name, "value"], [[k, e] for k, e in v.items()])
    if all(isinstance(e, dict) and all(not isinstance(x, dict) for x in e.values())
           for e in vals) and any(vals):
        keys = _union_keys(vals)
        return _table([name] + keys, [[k] + [e.get(c) for c in keys] for k, e in v.items()])
    if all(isinstance(e, list) for e in vals) and len({len(e) for e in vals}) == 1 and vals[0]:
        cols = _axis(len(vals[0]), siblings)
        return _table([name] + cols, [[k] + list(e) for k, e in v.items()])
    return None


class _Ids:
    """Unique, readable element ids."""

    def __init__(self):
        self.seen: set[str] = set()

    def __call__(self, *parts: str) -> str:
        base = "-".join(re.sub(r"[^a-z0-9]+", "-", str(p).lower()).strip("-") for p in parts)
        base = base or "part"
        out, i = base, 2
        while out in self.seen:
            out, i = f"{base}-{i}", i + 1
        self.seen.add(out)
        return out


def _render_fields(data: Mapping[str, Any], path: tuple, level: int, ids: _Ids,
                   toc: list) -> str:
    """The fields of one dict: a summary table of its scalars, then one part per other field."""
    scalars = [(k, v) for k, v in data.items()
               if _is_scalar(v) or (_is_scalar_list(v) and len(v) <= _SHORT_LIST)]
    out, done = [], {k for k, _ in scalars}
    if scalars:
        out.append(_table(["field", "value"], [[k, v if _is_scalar(v) else _compact(v)]
                                               for k, v in scalars]))
    for k, v in data.items():
        if k in done:
            continue
        hid = ids(*path, k)
        if level <= 4:
            toc.append((level, hid, str(k)))
        tag = f"h{min(level, 6)}"
        out.append(f'<{tag} id="{hid}">{_esc(k)}</{tag}>')
        table = _as_table(str(k), v, data)
        if table is not None:
            out.append(table)
        elif isinstance(v, dict):
            out.append(_render_fields(v, path + (k,), level + 1, ids, toc))
        elif isinstance(v, list):
            out.append(f"<p><code>{_esc(_compact(v))}</code></p>")
        else:  # pragma: no cover - scalars went into the summary table
            out.append(f"<p>{_esc(_fmt(v))}</p>")
    return "\n".join(out)


def _figure(name: str, title: str, out_dir: pathlib.Path) -> str:
    path = out_dir / name
    mime = FIGURE_TYPES.get(path.suffix.lower())
    if mime is None:
        return f'<p class="missing">figure {_esc(name)}: unknown image type {_esc(path.suffix)}</p>'
    if not path.is_file():
        return f'<p class="missing">figure {_esc(name)} is missing from {_esc(out_dir)}</p>'
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:{mime};base64,{b64}" alt="{_esc(title)}: {_esc(name)}">'
            f"<figcaption>{_esc(name)}</figcaption></figure>")


def render_html(report: Mapping[str, Any], out_dir: pathlib.Path) -> str:
    """The page as a string; figures are read from ``out_dir`` (see ``write_html``)."""
    if not isinstance(report, Mapping) or not isinstance(report.get("sections"), Mapping):
        raise ValueError("expected the report dict that run_report writes to report.json (a dict "
                         f"with a 'sections' dict), got {type(report).__name__} with keys "
                         f"{sorted(report) if isinstance(report, Mapping) else '-'}")
    out_dir = pathlib.Path(out_dir)
    ids, toc, parts = _Ids(), [], []
    for key, sec in report["sections"].items():
        if not isinstance(sec, Mapping):
            raise ValueError(f"report section {key!r} should be a dict, got {type(sec).__name__}")
        title = str(sec.get("title", key))
        sid = ids("sec", key)
        toc.append((2, sid, title))
        body = [f'<section id="{sid}"><h2>{_esc(title)}</h2>']
        if "seconds" in sec:
            body.append(f'<p class="meta">section <code>{_esc(key)}</code>, computed in '
                        f"{_esc(_fmt(sec['seconds']))} s</p>")
        body += [_figure(str(f), title, out_dir) for f in sec.get("figures", ())]
        data = {k: v for k, v in sec.items() if k not in _SECTION_META}
        body.append(_render_fields(data, (key,), 3, ids, toc))
        body.append("</section>")
        parts.append("\n".join(body))
    header = [[k, report[k]] for k in _HEADER_FIELDS if k in report]
    header += [[f"runtime {k}", v] for k, v in (report.get("runtime") or {}).items()]
    header += [[k, _compact(v)] for k, v in report.items()
               if k not in _HEADER_FIELDS + ("runtime", "sections")]
    items, depth = [], 2
    for level, hid, text in toc:
        while depth < level:
            items.append("<ol>")
            depth += 1
        while depth > level:
            items.append("</ol>")
            depth -= 1
        items.append(f'<li><a href="#{hid}">{_esc(text)}</a></li>')
    items += ["</ol>"] * (depth - 2)
    title = f"robustjax robustness report: {report.get('dataset', '')}".rstrip(": ")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(title)}</h1>",
        _table(["setting", "value"], header),
        '<nav class="toc" id="contents"><strong>Contents</strong><ol>', *items, "</ol></nav>",
        *parts,
        f"<script>{_JS}</script>", "</main></body></html>", ""])


def write_html(report: Mapping[str, Any], out_dir: pathlib.Path) -> pathlib.Path:
    """Write ``out_dir/report.html`` for ``report`` (the dict dumped to report.json).

    Figures listed in each section's ``figures`` are read from ``out_dir`` and embedded; a
    missing one is named in the page instead. Returns the path written.

    Example::

        report = run_report("out", quick=True)
        write_html(report, pathlib.Path("out"))   # -> out/report.html
    """
    out_dir = pathlib.Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"report folder {out_dir} does not exist; write the report first")
    path = out_dir / "report.html"
    atomic_write_text(path, render_html(report, out_dir), "report.html")
    return path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m robustjax.report.html",
        description="Render REPORT_DIR/report.json (with its figures) into REPORT_DIR/report.html.")
    parser.add_argument("report_dir", type=pathlib.Path,
                        help="a folder written by robustjax report")
    args = parser.parse_args(argv)
    src = args.report_dir / "report.json"
    if not src.is_file():
        parser.error(f"{src} not found: REPORT_DIR must be a folder written by robustjax report")
    try:
        report = json.loads(src.read_text())
    except ValueError as e:
        parser.error(f"{src} is not valid JSON ({e})")
    print(write_html(report, args.report_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
