"""Task and adversarial metrics against hand-computed cases."""

import jax
import numpy as np
import pytest

from robustjax.metrics import AdversarialStats, TaskStats, accuracy, topk_correct

LOGITS = np.array([[3.0, 1.0, 2.0, 0.0, -1.0, -2.0],   # pred 0, y=0: top1 yes
                   [0.0, 5.0, 4.0, 3.0, 2.0, 1.0],      # y=0 is last: not top5
                   [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],      # y=1: rank 5 -> top5 yes
                   [0.0, 0.0, 9.0, 0.0, 0.0, 0.0]], np.float32)
Y = np.array([0, 0, 1, 2], np.int32)


def test_topk_hand_case():
    np.testing.assert_array_equal(topk_correct(LOGITS, Y, 1), [True, False, False, True])
    np.testing.assert_array_equal(topk_correct(LOGITS, Y, 5), [True, False, True, True])
    assert float(accuracy(LOGITS, Y)) == 0.5
    out = TaskStats.from_batch(LOGITS, Y).compute()
    assert float(out["top1"]) == 0.5 and float(out["top5"]) == 0.75
    # fewer classes than k: every example is top-k correct
    assert bool(np.all(topk_correct(LOGITS[:, :3], np.array([0, 1, 2, 0]), 5)))


def test_topk_rejects_bad_shapes():
    with pytest.raises(ValueError, match="2 labels but logits has 4 rows"):
        topk_correct(LOGITS, Y[:2], 1)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_adversarial_untargeted_hand_case():
    adv = np.array([[0.0, 2.0, 1.0],    # y=0 -> pred 1: success
                    [0.0, 0.0, 3.0],    # y=2 correct: failure
                    [1.0, 0.5, 0.0],    # y=1 -> pred 0: success, but clean was wrong
                    [2.0, 2.5, 0.0]], np.float32)  # y=0 -> pred 1: success
    clean = np.array([[5, 0, 0], [0, 0, 5], [5, 0, 0], [5, 0, 0]], np.float32)
    y = np.array([0, 2, 1, 0], np.int32)
    p = _softmax(adv.astype(np.float64))
    out = AdversarialStats.from_batch(adv, y, logits_clean=clean).compute()
    succ = [0, 3]  # successful among clean-correct (example 2 was misclassified already)
    assert float(out["adv_accuracy"]) == pytest.approx(1 / 4)
    assert float(out["success_rate"]) == pytest.approx(2 / 3)
    assert float(out["acac"]) == pytest.approx(np.mean(p[succ].max(1)), rel=1e-6)
    assert float(out["actc"]) == pytest.approx(np.mean(p[succ, y[succ]]), rel=1e-6)
    top2 = np.sort(p[succ], 1)[:, -2:]
    assert float(out["nte"]) == pytest.approx(np.mean(top2[:, 1] - top2[:, 0]), rel=1e-5)
    # without clean logits every example is attacked
    out2 = AdversarialStats.from_batch(adv, y).compute()
    assert float(out2["success_rate"]) == pytest.approx(3 / 4)


def test_targeted_actc_uses_true_label():
    adv = np.array([[0.0, 1.0, 3.0], [0.0, 3.0, 1.0]], np.float32)
    y = np.array([0, 0], np.int32)
    t = np.array([2, 2], np.int32)
    out = AdversarialStats.from_batch(adv, y, target=t).compute()
    p = _softmax(adv[:1].astype(np.float64))
    assert float(out["success_rate"]) == 0.5  # second example predicts 1, not the target
    assert float(out["actc"]) == pytest.approx(p[0, 0], rel=1e-6)   # true label, not target
    assert float(out["acac"]) == pytest.approx(p[0, 2], rel=1e-6)


def test_no_success_gives_nan_and_jit_works():
    logits = np.eye(3, dtype=np.float32) * 4
    y = np.arange(3, dtype=np.int32)
    out = jax.jit(lambda a, b: AdversarialStats.from_batch(a, b).compute())(logits, y)
    assert float(out["success_rate"]) == 0.0
    assert np.isnan(float(out["acac"])) and np.isnan(float(out["nte"]))
