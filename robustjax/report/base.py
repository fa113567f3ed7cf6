"""What a report section receives and returns.

A section is a function ``section(ctx: ReportContext) -> Section``. The report runner calls the
sections listed in ``robustjax.report.run.SECTIONS`` in order, writes every ``Section.data``
into ``report.json`` under ``Section.key`` and concatenates ``Section.markdown`` into
``report.md``. Figures are written by the section into ``ctx.out_dir`` and listed (relative
paths) in ``Section.figures``.

Long sections store each batch of work with ``ctx.cached(name, settings, compute)``: the result
is kept under a hash of the report's identity (model, checkpoint, dataset, examples, seed,
quick), the section and ``settings``, so an interrupted report resumes where it stopped
(``robustjax.report.store``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Iterable, Optional

import jax
import numpy as np

from robustjax.report.store import ResultStore, to_jsonable
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
      dataset: name of the evaluation dataset (e.g. ``"cifar10"``; sections pick conventions).
      eps: Linf radii for the attacks section, pixel units (default: the section's own).
      identity: what the results depend on besides the section's settings (model and
        checkpoint hashes, dataset, split, examples, seed, quick); the key of stored results.
      store: where batches and sections are stored (``None``: nothing is stored).
      quantize_corruptions: corrupted images rounded to 8 bits as the stored ImageNet-C is
        (``corrupt(..., quantize=True)``); False keeps the unrounded floats.
    """

    model: Model
    x: np.ndarray
    y: np.ndarray
    key: jax.Array
    out_dir: pathlib.Path
    quick: bool = False
    progress: Callable[..., Iterable] = lambda it, **kw: it
    extras: dict = dataclasses.field(default_factory=dict)
    dataset: str = ""
    eps: Optional[tuple[float, ...]] = None
    identity: dict = dataclasses.field(default_factory=dict)
    store: Optional[ResultStore] = None
    quantize_corruptions: bool = True

    def batch_config(self, section: str, name: str, settings: Any) -> dict:
        return {"report": self.identity, "section": section, "batch": name,
                "settings": settings}

    def cached(self, section: str, name: str, settings: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` (JSON-able), stored under this report's identity, ``section``, ``name``
        and ``settings``; a rerun of an interrupted report reads it back instead."""
        if self.store is None:
            return json.loads(json.dumps(compute(), default=to_jsonable))
        return self.store.cached(f"{section}.{name}", self.batch_config(section, name, settings),
                                 compute)

    def cached_array(self, section: str, name: str, settings: Any,
                     compute: Callable[[], Any]) -> np.ndarray:
        """Like ``cached`` for one numpy array."""
        if self.store is None:
            return np.asarray(compute())
        return self.store.cached_array(f"{section}.{name}",
                                       self.batch_config(section, name, settings), compute)


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


IMAGENET_SCALE_PIXELS = 64 * 64


def imagenet_scale(spec) -> bool:
    """Whether a model's input is ImageNet-sized (more than 64 x 64 pixels): sections then use
    their lighter settings, and per-image costs such as bound propagation are out of reach."""
    h, w = spec.input_shape[:2]
    return h * w > IMAGENET_SCALE_PIXELS


def section_key(ctx: ReportContext, name: str, salt: Optional[int] = None) -> jax.Array:
    """A key for one section, derived from the report key and the section name."""
    value = sum(ord(c) * (i + 1) for i, c in enumerate(name)) if salt is None else salt
    return jax.random.fold_in(ctx.key, value)
