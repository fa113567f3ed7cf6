"""Empirical boundary distances 1 and 2 on a linear two-class model (closed forms)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.metrics import BoundaryStats, EBD1Config, EBD2Config, ebd1, ebd2
from robustjax.metrics.boundary import orthogonal_directions

SHAPE = (4, 4, 1)
D = 16
RNG = np.random.default_rng(0)
W = RNG.normal(size=(D, 2)).astype(np.float32)
# bias puts the boundary through the grey image 0.5: margins near it are small
B = np.array([0.0, -0.5 * (W[:, 1] - W[:, 0]).sum()], np.float32)


def apply_fn(params, x):
    w, b = params
    return x.reshape(x.shape[0], -1) @ w + b[None]


def _batch():
    x = np.clip(0.5 + 0.02 * RNG.normal(size=(6,) + SHAPE), 0, 1).astype(np.float32)
    y = np.argmax(x.reshape(6, -1) @ W + B, -1).astype(np.int32)
    y[0] = 1 - y[0]  # one example misclassified already: distance 0
    return x, y


def test_orthogonal_directions_are_orthogonal_with_rms_one():
    d = np.asarray(orthogonal_directions(jax.random.PRNGKey(0), SHAPE, 5)).reshape(5, -1)
    np.testing.assert_allclose(d @ d.T / D, np.eye(5), atol=1e-5)


def test_ebd1_matches_closed_form_crossings():
    x, y = _batch()
    cfg = EBD1Config(num_directions=4, num_steps=200, max_distance=0.1)
    key = jax.random.PRNGKey(3)
    res = jax.jit(lambda x, y: ebd1(apply_fn, (W, B), x, y, key, cfg))(x, y)
    dirs = np.asarray(orthogonal_directions(key, SHAPE, 4), np.float64).reshape(4, -1)
    grid = np.arange(201) * (0.1 / 200)
    # no clipping happens along the searched segments, so the closed form applies
    assert x.max() + 0.1 * np.abs(dirs).max() < 1 and x.min() - 0.1 * np.abs(dirs).max() > 0
    dw = (W[:, 1] - W[:, 0]).astype(np.float64)
    found = 0
    for i in range(6):
        xi = x[i].reshape(-1).astype(np.float64)
        sign = 1.0 if y[i] == 0 else -1.0  # margin of the labelled class
        z = xi @ W.astype(np.float64) + B
        m0 = z[y[i]] - z[1 - y[i]]           # margin of the labelled class
        best = np.inf
        for d in dirs:
            slope = sign * -(d @ dw)         # change of the margin per unit t
            if m0 <= 0:
                t = 0.0
            elif slope < 0:
                t_star = m0 / -slope         # exact crossing; the grid rounds it up
                hits = grid[grid >= t_star - 1e-6]
                t = hits[0] if len(hits) else np.inf
            else:
                t = np.inf
            best = min(best, t)
        if np.isfinite(best):
            found += 1
            assert bool(res.found[i])
            assert float(res.distance[i]) == pytest.approx(best, abs=0.1 / 200 + 1e-6)
        else:
            assert not bool(res.found[i]) and float(res.distance[i]) == pytest.approx(0.1)
    assert float(res.distance[0]) == 0.0
    assert found >= 2  # the case exercises real crossings, not only censored searches
    stats = BoundaryStats.from_result(res).compute()
    assert float(stats["distance"]) == pytest.approx(float(jnp.mean(res.distance)))


def test_ebd1_max_reduction_is_at_least_min():
    x, y = _batch()
    key = jax.random.PRNGKey(1)
    def run(cfg):
        return jax.jit(lambda x, y: ebd1(apply_fn, (W, B), x, y, key, cfg))(x, y)

    lo = run(EBD1Config(num_directions=3, num_steps=20))
    hi = run(EBD1Config(num_directions=3, num_steps=20, reduction="max"))
    assert bool(jnp.all(hi.distance >= lo.distance))


def test_ebd2_steps_closed_form():
    x, y = _batch()
    alpha = 0.002
    res = jax.jit(lambda x, y: ebd2(apply_fn, (W, B), x, y, None,
                                    EBD2Config(step_size=alpha, max_steps=400)))(x, y)
    dw = (W[:, 1] - W[:, 0]).astype(np.float64)
    for i in range(6):
        xi = x[i].reshape(-1).astype(np.float64)
        z = xi @ W.astype(np.float64) + B
        m0 = z[y[i]] - z[1 - y[i]]
        # each sign-gradient step lowers the margin by alpha * ||w_y - w_other||_1
        expected = 0 if m0 < 0 else int(np.floor(m0 / (alpha * np.abs(dw).sum()))) + 1
        assert int(res.steps[i]) == expected
        assert float(res.distance[i]) == pytest.approx(expected * alpha, rel=1e-6)
    assert bool(jnp.all(res.found))
    capped = ebd2(apply_fn, (W, B), x, y, None, EBD2Config(step_size=1e-5, max_steps=3))
    assert not bool(jnp.all(capped.found))
    assert float(jnp.max(capped.distance)) == pytest.approx(3e-5)
