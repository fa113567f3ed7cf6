"""Defense performance (survey Table 3): CAV, CRR, CSR, CCV and COS.

Source: DEEPSEC (Ling et al., S&P 2019, Sec. III-D). They compare an original model ``F`` with
its defended version ``F^D`` on the same clean test set of N examples; ``P``/``P^D`` are their
softmax outputs.

* **CAV** (classification accuracy variance) = ``Acc(F^D) - Acc(F)`` (signed; negative means
  the defense costs clean accuracy).
* **CRR** (classification rectify ratio) = share of the N examples with ``F(x) != y`` and
  ``F^D(x) = y``.
* **CSR** (classification sacrifice ratio) = share with ``F(x) = y`` and ``F^D(x) != y``.
  Identity: ``CAV = CRR - CSR`` (tested).
* **CCV** (classification confidence variance) = mean of ``|P(x)_y - P^D(x)_y|`` over the
  examples both models classify correctly.
* **COS** (classification output stability) = mean of ``JSD(P(x) || P^D(x))`` over the examples
  both models classify correctly, with the Jensen-Shannon divergence in nats:
  ``JSD(p||q) = (KL(p||m) + KL(q||m)) / 2``, ``m = (p + q) / 2`` (``0 log 0 = 0``); it equals
  ``scipy.spatial.distance.jensenshannon(p, q) ** 2``.

The inputs are logits; the defense may be a different model or the same model behind an input
transformation (give ``F^D``'s logits on the same images).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from robustjax import validation
from robustjax.metrics.accumulators import Average
from robustjax.metrics.task import _check_logits_labels

Array = jax.Array


def js_divergence(p: Array, q: Array) -> Array:
    """Jensen-Shannon divergence (nats) between rows of probabilities ``[b, K]`` -> ``[b]``."""
    m = 0.5 * (p + q)

    def kl(a, b):
        return jnp.sum(jnp.where(a > 0, a * (jnp.log(jnp.where(a > 0, a, 1.0))
                                             - jnp.log(jnp.where(a > 0, b, 1.0))), 0.0), -1)

    return 0.5 * (kl(p, m) + kl(q, m))


_FIELDS = ("cav", "crr", "csr", "ccv", "cos")


@struct.dataclass
class DefenseStats:
    """Accumulator of CAV, CRR, CSR (over all examples) and CCV, COS (over both-correct)."""

    cav: Average
    crr: Average
    csr: Average
    ccv: Average
    cos: Average

    @classmethod
    def empty(cls) -> "DefenseStats":
        return cls(*(Average.empty() for _ in _FIELDS))

    @classmethod
    def from_batch(cls, logits_orig: Array, logits_def: Array, y: Array) -> "DefenseStats":
        """``logits_orig``/``logits_def`` float ``[b, K]`` of ``F`` and ``F^D`` on the same clean
        images; ``y`` int ``[b]``."""
        with validation.completing(validation.logits_checks(
                ("logits_orig", logits_orig), ("logits_def", logits_def), y=y)):
            return _defense_batch(logits_orig, logits_def, y)

    def merge(self, other: "DefenseStats") -> "DefenseStats":
        return type(self)(*(getattr(self, f).merge(getattr(other, f)) for f in _FIELDS))

    def compute(self) -> dict[str, Array]:
        return {f: getattr(self, f).compute() for f in _FIELDS}


@jax.jit
def _defense_batch(logits_orig, logits_def, y) -> DefenseStats:
    lo, ld, y = (jnp.asarray(logits_orig, jnp.float32), jnp.asarray(logits_def, jnp.float32),
                 jnp.asarray(y))
    _check_logits_labels(lo, y, "logits_orig")
    _check_logits_labels(ld, y, "logits_def")
    validation.check_same_shape(lo, ld, ("logits_orig", "logits_def"))
    ok_o = jnp.argmax(lo, -1) == y
    ok_d = jnp.argmax(ld, -1) == y
    both = ok_o & ok_d
    po, pd = jax.nn.softmax(lo, -1), jax.nn.softmax(ld, -1)
    py_o = jnp.take_along_axis(po, y[:, None], -1)[:, 0]
    py_d = jnp.take_along_axis(pd, y[:, None], -1)[:, 0]
    f32 = jnp.float32
    return DefenseStats(
        cav=Average.from_values(ok_d.astype(f32) - ok_o.astype(f32)),
        crr=Average.from_values(~ok_o & ok_d),
        csr=Average.from_values(ok_o & ~ok_d),
        ccv=Average.from_values(jnp.abs(py_o - py_d), both),
        cos=Average.from_values(js_divergence(po, pd), both),
    )


def defense_metrics(logits_orig: Array, logits_def: Array, y: Array) -> dict[str, Array]:
    """One-shot ``DefenseStats.from_batch(...).compute()``."""
    return DefenseStats.from_batch(logits_orig, logits_def, y).compute()
