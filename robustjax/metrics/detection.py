"""Detection performance: AUROC, TPR at a fixed FPR and the threshold that achieves it.

A detector gives every example a score, higher meaning "more likely adversarial"; it flags an
example when ``score > threshold``. Clean examples are the negatives, adversarial ones the
positives.

* ``threshold_at_fpr(clean, fpr)``: the smallest threshold ``t`` (one of the clean scores, or
  ``-inf``) with ``mean(clean > t) <= fpr``; flagging ``score > t`` then has a false-positive
  rate of at most ``fpr`` on those clean scores and the largest true-positive rate any
  threshold with that guarantee can have.
* ``tpr_at_fpr(clean, adv, fpr) = mean(adv > threshold_at_fpr(clean, fpr))``. This equals the
  highest TPR of ``sklearn.metrics.roc_curve`` over its points with FPR ``<= fpr`` (no
  interpolation between points; tested).
* ``auroc(clean, adv)``: the area under the ROC curve, i.e. the Mann-Whitney statistic
  ``P(adv > clean) + 0.5 P(adv == clean)``: ties count one half, as in
  ``sklearn.metrics.roc_auc_score`` (tested against it). Computed from average ranks in
  float64, exact up to float64 rounding.

``DetectionStats`` is the streaming form: it keeps the scores themselves (AUROC and a quantile
threshold have no fixed-size sufficient statistic), ``merge`` concatenates. These are
end-of-evaluation metrics on concrete arrays (numpy), not for use inside ``jit``.

Example::

    t = threshold_at_fpr(clean_scores, fpr=0.05)
    tpr = tpr_at_fpr(clean_scores, adv_scores, fpr=0.05)   # == mean(adv_scores > t)
    area = auroc(clean_scores, adv_scores)
"""

from __future__ import annotations

import numpy as np
from flax import struct

from robustjax import validation


def _scores(s, name: str) -> np.ndarray:
    # concrete float vector without NaN (robustjax.validation); emptiness is checked per use
    return validation.check_scores(s, name, allow_empty=True)


def _check_fpr(fpr) -> float:
    fpr = float(fpr)
    if not 0.0 <= fpr <= 1.0:
        raise validation.InputError(f"fpr must be a false-positive rate in [0, 1], got {fpr}")
    return fpr


def _allowed_false_positives(n: int, fpr: float) -> int:
    """The largest ``k`` in 0..n with ``k / n <= fpr`` in float arithmetic (as sklearn's
    ``fps / fps[-1]``), so thresholds agree with ``roc_curve`` at exact rates like 0.29."""
    k = min(int(np.floor(fpr * n)), n)
    while k < n and (k + 1) / n <= fpr:
        k += 1
    while k > 0 and k / n > fpr:
        k -= 1
    return k


def threshold_at_fpr(clean_scores, fpr: float = 0.05) -> float:
    """Threshold ``t`` with ``mean(clean_scores > t) <= fpr``, as small as possible.

    Args:
      clean_scores: float ``[n]`` detector scores of clean (negative) examples, ``n >= 1``.
      fpr: the allowed false-positive rate in [0, 1].
    Returns:
      a Python float: the ``(k + 1)``-th largest clean score with ``k = floor(fpr * n)``
      (ties at ``t`` are not flagged), or ``-inf`` when ``k = n`` (everything may be flagged).
    """
    s = _scores(clean_scores, "clean_scores")
    fpr = _check_fpr(fpr)
    if s.size == 0:
        raise validation.InputError("clean_scores is empty; a threshold needs at least one "
                                    "clean score")
    k = _allowed_false_positives(s.size, fpr)
    if k == s.size:
        return float("-inf")
    return float(np.sort(s)[::-1][k])


def tpr_at_fpr(clean_scores, adv_scores, fpr: float = 0.05) -> float:
    """Share of ``adv_scores`` above ``threshold_at_fpr(clean_scores, fpr)`` (float in [0, 1]).

    ``clean_scores`` float ``[n]``, ``adv_scores`` float ``[m]``, ``m >= 1``.
    """
    a = _scores(adv_scores, "adv_scores")
    if a.size == 0:
        raise validation.InputError("adv_scores is empty; a true-positive rate needs "
                                    "adversarial scores")
    return float(np.mean(a > threshold_at_fpr(clean_scores, fpr)))


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (``scipy.stats.rankdata``)."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]  # exclusive
    avg = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(s.size, np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(clean_scores, adv_scores) -> float:
    """Area under the ROC curve of clean (negative) vs adversarial (positive) scores.

    ``P(adv > clean) + 0.5 P(adv == clean)`` over all (clean, adv) pairs: 1 for perfect
    separation, 0.5 for chance (or all scores tied), 0 when clean always scores higher.
    ``clean_scores`` float ``[n]``, ``adv_scores`` float ``[m]``, both non-empty.
    """
    c = _scores(clean_scores, "clean_scores")
    a = _scores(adv_scores, "adv_scores")
    if c.size == 0 or a.size == 0:
        raise validation.InputError(f"AUROC needs clean and adversarial scores, got {c.size} "
                                    f"clean and {a.size} adversarial")
    ranks = _average_ranks(np.concatenate([c, a]))
    u = np.sum(ranks[c.size:]) - a.size * (a.size + 1) / 2.0
    return float(u / (a.size * c.size))


@struct.dataclass
class DetectionStats:
    """Streaming AUROC / TPR@FPR: the clean and adversarial scores seen so far.

    ``clean``: float32 ``[n]``; ``adv``: float32 ``[m]``. ``merge`` concatenates (the set of
    scores is the sufficient statistic); ``compute(fpr)`` gives ``auroc``, ``tpr`` (at
    ``fpr``), ``threshold`` and the counts.
    """

    clean: np.ndarray
    adv: np.ndarray

    @classmethod
    def empty(cls) -> "DetectionStats":
        return cls(np.zeros((0,), np.float32), np.zeros((0,), np.float32))

    @classmethod
    def from_scores(cls, clean_scores=None, adv_scores=None) -> "DetectionStats":
        """Scores of one batch; either side may be None (a batch of only clean images)."""
        empty = np.zeros((0,), np.float32)
        c = empty if clean_scores is None else _scores(clean_scores, "clean_scores")
        a = empty if adv_scores is None else _scores(adv_scores, "adv_scores")
        return cls(c.astype(np.float32), a.astype(np.float32))

    def merge(self, other: "DetectionStats") -> "DetectionStats":
        return type(self)(np.concatenate([np.asarray(self.clean), np.asarray(other.clean)]),
                          np.concatenate([np.asarray(self.adv), np.asarray(other.adv)]))

    def compute(self, fpr: float = 0.05) -> dict[str, float]:
        t = threshold_at_fpr(self.clean, fpr)
        return {"auroc": auroc(self.clean, self.adv),
                "tpr": tpr_at_fpr(self.clean, self.adv, fpr),
                "fpr": float(np.mean(np.asarray(self.clean) > t)),
                "threshold": t,
                "num_clean": int(np.size(self.clean)), "num_adv": int(np.size(self.adv))}
