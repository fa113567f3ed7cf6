"""Adversarial performance (survey Table 3): adversarial accuracy, attack success rate, ACAC,
ACTC and NTE.

Sources: DEEPSEC (Ling et al., S&P 2019, Sec. III-B "utility" metrics) and AISafety (Beihang
DIG). Notation: ``P(x)`` = softmax of the logits, ``F(x) = argmax P(x)``, ``x_a`` the
adversarial example of ``x`` with label ``y`` (and target ``t`` for a targeted attack).

* **Adversarial accuracy** = share of *all* examples with ``F(x_a) = y``. The same function
  serves white-box and black-box attacks; only the attack that produced ``x_a`` differs (the
  report names it).
* **Success** of one example: untargeted ``F(x_a) != y``; targeted ``F(x_a) = t``.
* **Attack success rate** (DEEPSEC's "misclassification ratio", MR) = share of *attacked*
  examples whose attack succeeds. Choice: when clean logits are given, only examples the model
  classifies correctly on clean input are attacked (an example misclassified already is not an
  attack success; DEEPSEC gets the same effect by pre-selecting correctly classified test
  images); without clean logits every example counts.
* **ACAC** (average confidence of the adversarial class) = mean of ``max_j P(x_a)_j`` over the
  successful adversarial examples (DEEPSEC eq. and code).
* **ACTC** (average confidence of the true class) = mean of ``P(x_a)_y`` over successful
  examples. Choice: ``y`` is the *true* label also for targeted attacks (DEEPSEC's definition;
  AISafety's code uses the target label in targeted mode, which measures something else).
* **NTE** (noise tolerance estimation) = mean over successful examples of
  ``P(x_a)_{F(x_a)} - max_{j != F(x_a)} P(x_a)_j`` (top-1 minus top-2 probability).

ACAC, ACTC and NTE average over successful examples only (DEEPSEC and AISafety do the same);
with no successful example they are NaN.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from robustjax import validation
from robustjax.metrics.accumulators import Average
from robustjax.metrics.task import _check_logits_labels

Array = jax.Array


def attack_success(logits_adv: Array, y: Array, target: Optional[Array] = None) -> Array:
    """bool ``[b]``: untargeted ``argmax != y``; targeted (``target`` int ``[b]``) ``== target``."""
    logits_adv, y = jnp.asarray(logits_adv), jnp.asarray(y)
    with validation.completing(validation.logits_checks(("logits_adv", logits_adv), y=y,
                                                        targets=target)):
        pred = jnp.argmax(logits_adv, axis=-1)
        if target is None:
            return pred != y
        return pred == jnp.asarray(target)


@struct.dataclass
class AdversarialStats:
    """Accumulator of the adversarial metrics above (each field an ``Average``)."""

    adv_accuracy: Average
    success_rate: Average
    acac: Average
    actc: Average
    nte: Average

    @classmethod
    def empty(cls) -> "AdversarialStats":
        return cls(*(Average.empty() for _ in range(5)))

    @classmethod
    def from_batch(
        cls,
        logits_adv: Array,
        y: Array,
        *,
        logits_clean: Optional[Array] = None,
        target: Optional[Array] = None,
    ) -> "AdversarialStats":
        """Statistics of one batch.

        Args:
          logits_adv: float ``[b, K]``, the model's logits on the adversarial examples.
          y: int ``[b]`` true labels.
          logits_clean: optional float ``[b, K]`` logits on the clean examples; when given,
            success rate, ACAC, ACTC and NTE only count examples correct on clean input.
          target: optional int ``[b]`` target labels of a targeted attack.
        """
        named = (("logits_adv", logits_adv),) + (
            (("logits_clean", logits_clean),) if logits_clean is not None else ())
        with validation.completing(validation.logits_checks(*named, y=y, targets=target)):
            return _adversarial_batch(logits_adv, y, logits_clean, target)

    def merge(self, other: "AdversarialStats") -> "AdversarialStats":
        return type(self)(*(getattr(self, f).merge(getattr(other, f)) for f in _FIELDS))

    def compute(self) -> dict[str, Array]:
        return {f: getattr(self, f).compute() for f in _FIELDS}


_FIELDS = ("adv_accuracy", "success_rate", "acac", "actc", "nte")


@jax.jit
def _adversarial_batch(logits_adv, y, logits_clean, target) -> AdversarialStats:
    logits_adv, y = jnp.asarray(logits_adv, jnp.float32), jnp.asarray(y)
    _check_logits_labels(logits_adv, y, "logits_adv")
    attacked = jnp.ones(y.shape, bool)
    if logits_clean is not None:
        _check_logits_labels(jnp.asarray(logits_clean), y, "logits_clean")
        attacked = jnp.argmax(logits_clean, axis=-1) == y
    success = attack_success(logits_adv, y, target) & attacked
    p = jax.nn.softmax(logits_adv, axis=-1)
    top2 = jax.lax.top_k(p, min(2, p.shape[-1]))[0]
    second = top2[:, 1] if p.shape[-1] > 1 else jnp.zeros_like(top2[:, 0])
    p_true = jnp.take_along_axis(p, y[:, None], axis=-1)[:, 0]
    return AdversarialStats(
        adv_accuracy=Average.from_values(jnp.argmax(logits_adv, -1) == y),
        success_rate=Average.from_values(success, attacked),
        acac=Average.from_values(top2[:, 0], success),
        actc=Average.from_values(p_true, success),
        nte=Average.from_values(top2[:, 0] - second, success),
    )


def adversarial_metrics(logits_adv: Array, y: Array, *, logits_clean: Optional[Array] = None,
                        target: Optional[Array] = None) -> dict[str, Array]:
    """One-shot ``AdversarialStats.from_batch(...).compute()``: a dict of scalars."""
    return AdversarialStats.from_batch(
        logits_adv, y, logits_clean=logits_clean, target=target
    ).compute()
