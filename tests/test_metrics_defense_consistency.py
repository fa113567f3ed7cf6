"""Defense metrics (CAV, CRR, CSR, CCV, COS) and ENI against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from robustjax.metrics import DefenseStats, eni, eni_values, js_divergence


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_defense_hand_case():
    y = np.array([0, 1, 2, 0, 1], np.int32)
    orig = np.array([[3, 0, 0], [0, 2, 1], [1, 0, 0], [2, 1, 0], [0, 0, 1]], np.float32)
    # orig correct: 0, 1, 3 ; wrong: 2, 4
    dfn = np.array([[2, 1, 0], [1, 0, 0], [0, 0, 3], [1, 0, 0], [1, 0, 0]], np.float32)
    # def correct: 0, 2, 3 ; wrong: 1, 4
    out = {k: float(v) for k, v in DefenseStats.from_batch(orig, dfn, y).compute().items()}
    assert out["cav"] == pytest.approx(0.0)
    assert out["crr"] == pytest.approx(1 / 5)   # example 2 rectified
    assert out["csr"] == pytest.approx(1 / 5)   # example 1 sacrificed
    assert out["cav"] == pytest.approx(out["crr"] - out["csr"])
    both = [0, 3]
    po, pd = _softmax(orig.astype(np.float64)), _softmax(dfn.astype(np.float64))
    ccv = np.mean([abs(po[i, y[i]] - pd[i, y[i]]) for i in both])
    cos = np.mean([jensenshannon(po[i], pd[i]) ** 2 for i in both])
    assert out["ccv"] == pytest.approx(ccv, rel=1e-5)
    assert out["cos"] == pytest.approx(cos, rel=1e-4)


def test_js_divergence_properties():
    p = np.array([[1.0, 0.0], [0.3, 0.7]], np.float32)
    q = np.array([[0.0, 1.0], [0.3, 0.7]], np.float32)
    d = np.asarray(js_divergence(p, q))
    np.testing.assert_allclose(d, [np.log(2), 0.0], atol=1e-6)  # disjoint supports: ln 2


def test_eni_hand_case():
    x = np.full((2, 2, 2, 1), 0.5, np.float32)
    xp = x.copy()
    xp[0, 0, 0, 0] = 0.7          # Linf distance 0.2
    lc = np.array([[2.0, 0.0], [1.0, 1.0]], np.float32)
    lp = np.array([[0.0, 2.0], [1.0, 1.0]], np.float32)
    y = np.array([0, 1], np.int32)
    ce = lambda z, t: -np.log(_softmax(z.astype(np.float64))[t])
    v, ok = eni_values(lc, lp, y, x, xp)
    np.testing.assert_array_equal(ok, [True, False])  # second example unchanged: left out
    assert float(v[0]) == pytest.approx(abs(ce(lc[0], 0) - ce(lp[0], 0)) / 0.2, rel=1e-5)

    def apply_fn(params, xx):  # logits depend on the first pixel only
        s = xx[:, 0, 0, 0] * params
        return jnp.stack([-s, s], -1)

    r = float(eni(apply_fn, 10.0, x, y, xp))
    z0, z1 = np.array([-5.0, 5.0]), np.array([-7.0, 7.0])
    assert r == pytest.approx(abs(ce(z0, 0) - ce(z1, 0)) / 0.2, rel=1e-5)
