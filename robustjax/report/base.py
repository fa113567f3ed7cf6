"""What a report section receives and returns.

A section is a function ``section(ctx: ReportContext) -> Section``. The report runner calls the
sections listed in ``robustjax.report.run.SECTIONS`` in order, writes every ``Section.data``
into ``report.json`` under ``Section.key`` and concatenates ``Section.markdown`` into
``report.md``. Figures are written by the section into ``ctx.out_dir`` and listed (relative
paths) in ``Section.figures``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Iterable, Optional

import jax
import numpy as np

from robustjax.types import Model


@dataclasses.dataclass(frozen=True)
class ReportContext:
    """Inputs shared by all sections.

    Attributes:
      model: the model under test (the embedded default unless the user chose another).
      x, y: evaluation images (float32 NHWC in [0, 1]) and int32 labels, as numpy arrays.
      key: a PRNG key; each section folds in its own constant, never reuses it raw.
      out_dir: the report folder; sections write figures here.
      quick: True for a tiny smoke setting (tests, ``--quick``): few examples, few steps.
      progress: ``progress(iterable, desc=..., total=...)`` wraps long loops with a bar.
      extras: free-form objects sections may share (e.g. a certified-trained model).
    """

    model: Model
    x: np.ndarray
    y: np.ndarray
    key: jax.Array
    out_dir: pathlib.Path
    quick: bool = False
    progress: Callable[..., Iterable] = lambda it, **kw: it
    extras: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Section:
    key: str
    title: str
    data: dict[str, Any]
    markdown: str
    figures: tuple[str, ...] = ()


def markdown_table(header: list[str], rows: list[list[Any]], floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured markdown table."""

    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return format(float(v), floatfmt)
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def section_key(ctx: ReportContext, name: str, salt: Optional[int] = None) -> jax.Array:
    """A key for one section, derived from the report key and the section name."""
    value = sum(ord(c) * (i + 1) for i, c in enumerate(name)) if salt is None else salt
    return jax.random.fold_in(ctx.key, value)
