"""Execute notebooks top to bottom and store their outputs in place (no Jupyter needed).

Each code cell runs in one shared namespace, as a kernel would run it; what it prints becomes
a ``stream`` output and every matplotlib figure left open at the end of the cell becomes an
``image/png`` display output (``image/jpeg`` when the PNG would exceed 300 kB, i.e. photos),
then is closed, so the notebooks show their results on GitHub.
Cells run in a temporary working folder, so files a notebook writes do not land in the
checkout. The ``ROBUSTJAX_NOTEBOOK_SMALL`` setting is left as found: the committed outputs are
the full settings; CI (tests/test_notebooks.py) runs the small ones.

Usage::

    python scripts/run_notebooks.py notebooks/survey_fgsm_vs_pgd.ipynb [...]
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pathlib
import sys
import tempfile
import time

MAX_PNG_BYTES = 300_000

def _figures() -> list[dict]:
    import matplotlib.pyplot as plt

    out = []
    for num in plt.get_fignums():
        fig = plt.figure(num)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
        mime = "image/png"
        if buf.tell() > MAX_PNG_BYTES:  # photographs: JPEG keeps the notebook small
            from PIL import Image

            buf.seek(0)
            img, buf, mime = Image.open(buf).convert("RGB"), io.BytesIO(), "image/jpeg"
            img.save(buf, format="JPEG", quality=85)
        w, h = fig.get_size_inches()
        out.append({"output_type": "display_data", "metadata": {}, "data": {
            mime: base64.b64encode(buf.getvalue()).decode("ascii"),
            "text/plain": [f"<Figure size {w * fig.dpi:.0f}x{h * fig.dpi:.0f} with "
                           f"{len(fig.axes)} Axes>"]}})
        plt.close(fig)
    return out


def execute(path: pathlib.Path) -> float:
    """Run the notebook at ``path`` and rewrite it with its outputs; returns the seconds taken."""
    import matplotlib

    matplotlib.use("Agg")
    nb = json.loads(path.read_text())
    namespace = {"__name__": "__main__"}
    count, start, here = 0, time.perf_counter(), os.getcwd()
    with tempfile.TemporaryDirectory(prefix="robustjax-notebook-") as work:
        os.chdir(work)
        try:
            for i, cell in enumerate(nb["cells"]):
                cell.setdefault("id", f"cell-{i}")
                if cell["cell_type"] != "code":
                    continue
                count += 1
                text = io.StringIO()
                with contextlib.redirect_stdout(text):
                    exec(compile("".join(cell["source"]), f"{path.name}[cell {i}]", "exec"),
                         namespace)  # noqa: S102
                outputs = []
                if text.getvalue():
                    outputs.append({"output_type": "stream", "name": "stdout",
                                    "text": text.getvalue().splitlines(keepends=True)})
                cell["outputs"] = outputs + _figures()
                cell["execution_count"] = count
                print(f"{path.name} cell {i} done", file=sys.stderr)
        finally:
            os.chdir(here)
    nb.setdefault("metadata", {}).setdefault("language_info", {"name": "python"})
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return time.perf_counter() - start


def main(argv=None) -> int:
    paths = [pathlib.Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    for p in paths:
        if p.suffix != ".ipynb" or not p.is_file():
            raise SystemExit(f"{p} is not a notebook file (.ipynb)")
    for p in paths:
        print(f"{p}: {execute(p.resolve()):.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
