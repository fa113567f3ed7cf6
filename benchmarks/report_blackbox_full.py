"""The report's black-box/transfer section (``robustjax.report.blackbox``) at its full settings.

Runs the section on the embedded default model and the first 200 mnist5k test digits, as
``robustjax report`` does, and writes its markdown to
``benchmarks/results/report_blackbox.md``.

Run: ``PYTHONPATH=. python benchmarks/report_blackbox_full.py``.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax

from robustjax import data
from robustjax.models import embedded_default
from robustjax.report import blackbox
from robustjax.report.base import ReportContext

t = time.perf_counter()
x, y = data.load("mnist5k", "test")
out = pathlib.Path(__file__).resolve().parent / "results"
ctx = ReportContext(model=embedded_default(), x=x, y=y, key=jax.random.PRNGKey(0),
                    out_dir=out, quick=False)
sec = blackbox.section(ctx)
seconds = time.perf_counter() - t
text = (f"# Report section `blackbox` at full settings\n\n`PYTHONPATH=. python "
        f"benchmarks/report_blackbox_full.py`: {seconds:.0f} s on the shared 2-core CPU (load "
        f"15-25), transfer surrogate from the cache.\n\n{sec.markdown}\n")
(out / "report_blackbox.md").write_text(text)
print(text)
print(json.dumps(sec.data, indent=1, default=str))
