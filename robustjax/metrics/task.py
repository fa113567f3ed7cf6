"""Task performance: clean accuracy, top-1 and top-5 (survey Table 3, "Task Performance").

Definition (standard; Russakovsky et al. 2015 for top-k): an example is top-k correct when its
label is among the k largest logits. Ties are resolved like ``jax.lax.top_k`` (lower index
first), i.e. the label counts as top-k when fewer than k classes have a strictly larger logit
or it wins the tie by index. With fewer than k classes, top-k accuracy is 1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from robustjax import validation
from robustjax.metrics.accumulators import Average

Array = jax.Array


def _check_logits_labels(logits, y, name="logits"):
    """Shapes and dtypes (``robustjax.validation.check_logits``); inside jitted code."""
    validation.check_logits(logits, y, name)


def topk_correct(logits: Array, y: Array, k: int = 1) -> Array:
    """bool ``[b]``: label ``y`` (int ``[b]``) is among the top-``k`` of ``logits`` ``[b, K]``.

    Concrete inputs are checked (``robustjax.validation``): finite logits (a
    ``ModelOutputError`` names the rows that are not) and labels inside the classes.
    """
    logits, y = jnp.asarray(logits), jnp.asarray(y)
    if int(k) < 1:
        raise validation.InputError(f"k must be >= 1, got {k}")
    with validation.completing(validation.logits_checks(("logits", logits), y=y)):
        return _topk_correct(logits, y, k=k)


@functools.partial(jax.jit, static_argnames="k")
def _topk_correct(logits: Array, y: Array, k: int = 1) -> Array:
    _check_logits_labels(logits, y)
    k = min(int(k), logits.shape[-1])
    if k == 1:
        return jnp.argmax(logits, axis=-1) == y
    _, idx = jax.lax.top_k(logits, k)
    return jnp.any(idx == y[:, None], axis=-1)


@struct.dataclass
class TaskStats:
    """Accumulator of clean top-1 and top-5 accuracy (each an ``Average`` of 0/1 values)."""

    top1: Average
    top5: Average

    @classmethod
    def empty(cls) -> "TaskStats":
        return cls(Average.empty(), Average.empty())

    @classmethod
    def from_batch(cls, logits: Array, y: Array) -> "TaskStats":
        """``logits`` float ``[b, K]`` on clean images, ``y`` int ``[b]``."""
        with validation.completing(validation.logits_checks(("logits", logits), y=y)):
            return _task_batch(logits, y)

    def merge(self, other: "TaskStats") -> "TaskStats":
        return type(self)(self.top1.merge(other.top1), self.top5.merge(other.top5))

    def compute(self) -> dict[str, Array]:
        return {"top1": self.top1.compute(), "top5": self.top5.compute()}


@jax.jit
def _task_batch(logits, y) -> TaskStats:
    return TaskStats(Average.from_values(_topk_correct(logits, y, 1)),
                     Average.from_values(_topk_correct(logits, y, 5)))


def accuracy(logits: Array, y: Array, k: int = 1) -> Array:
    """Top-``k`` accuracy in [0, 1] of ``logits`` ``[b, K]`` against labels ``y`` ``[b]``."""
    return jnp.mean(topk_correct(logits, y, k).astype(jnp.float32))
