"""Spatial attacks: the rotation/translation grid (Engstrom et al. 2019) and stAdv (Xiao et al.
2018). Closed forms for the warps and the flow loss, brute force for the grid."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustjax.attacks.spatial import (
    SpatialGridConfig,
    candidate_points,
    evaluate_points,
    grid_points,
    grid_search,
    spatial_grid,
    transform,
)
from robustjax.attacks.stadv import StAdvConfig, flow_loss, flow_warp, stadv, stadv_flow
from tests.attacks_b_models import digits_mlp

jtransform = jax.jit(transform)
jflow_warp = jax.jit(flow_warp)
SMALL = SpatialGridConfig(max_rotation=20.0, max_translation=1.0, n_rotations=5,
                          n_translations=3)


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_zero_transform_and_zero_flow_are_the_identity(seed):
    x = jax.random.uniform(jax.random.key(seed), (2, 7, 9, 3))
    np.testing.assert_array_equal(jtransform(x, 0.0, 0.0, 0.0), x)
    np.testing.assert_array_equal(jflow_warp(x, jnp.zeros(x.shape[:3] + (2,))), x)


def test_transform_closed_forms():
    x = jax.random.uniform(jax.random.key(0), (2, 6, 6, 2))
    # an integer shift right/down is a roll with the fill shifted in
    out = np.asarray(transform(x, 0.0, 2.0, 1.0, fill=0.5))
    want = np.full(x.shape, 0.5, np.float32)
    want[:, 1:, 2:] = np.asarray(x)[:, :-1, :-2]
    np.testing.assert_allclose(out, want, atol=1e-6)
    # 90 degrees counter-clockwise on a square image is np.rot90
    np.testing.assert_allclose(transform(x, 90.0, 0.0, 0.0), np.rot90(x, 1, axes=(1, 2)),
                               atol=1e-5)


def test_flow_warp_constant_flow_is_a_clamped_shift():
    x = jax.random.uniform(jax.random.key(1), (1, 5, 6, 1))
    flow = jnp.zeros((1, 5, 6, 2)).at[..., 0].set(1.0)  # read one pixel to the right
    want = np.concatenate([np.asarray(x)[:, :, 1:], np.asarray(x)[:, :, -1:]], axis=2)
    np.testing.assert_allclose(flow_warp(x, flow), want, atol=1e-6)
    half = jnp.zeros((1, 5, 6, 2)).at[..., 1].set(0.5)   # halfway down: the mean of two rows
    want = 0.5 * (np.asarray(x) + np.concatenate([np.asarray(x)[:, 1:], np.asarray(x)[:, -1:]],
                                                 axis=1))
    np.testing.assert_allclose(flow_warp(x, half), want, atol=1e-6)


def test_flow_loss_closed_form():
    h, w, eps = 5, 6, 1e-8
    pairs = h * (w - 1) + (h - 1) * w
    base = 2 * pairs * np.sqrt(eps)
    np.testing.assert_allclose(flow_loss(jnp.zeros((1, h, w, 2)), eps), [base], rtol=1e-5)
    # a constant flow is perfectly smooth
    np.testing.assert_allclose(flow_loss(jnp.full((1, h, w, 2), 3.0), eps), [base], rtol=1e-5)
    # one interior pixel moved by (3, 4): its 4 pairs, each counted twice, cost 5 each
    f = jnp.zeros((1, h, w, 2)).at[0, 2, 3].set(jnp.array([3.0, 4.0]))
    want = 8 * np.sqrt(25 + eps) + 2 * (pairs - 4) * np.sqrt(eps)
    np.testing.assert_allclose(flow_loss(f, eps), [want], rtol=1e-5)


@pytest.fixture(scope="module")
def small_grid():
    """The SMALL grid on 24 digits, eager and unchunked: ``(model, (result, chosen))``."""
    apply_fn, params, x, y = digits_mlp(24)
    return (apply_fn, params, x, y), grid_search(apply_fn, params, x, y, jax.random.key(0),
                                                 SMALL)


def test_grid_matches_brute_force(small_grid):
    (apply_fn, params, x, y), (res, chosen) = small_grid
    angles = np.linspace(-20, 20, 5)
    shifts = np.linspace(-1, 1, 3)
    losses, succ = [], []
    for a, dx, dy in itertools.product(angles, shifts, shifts):
        logits = apply_fn(params, jtransform(x, a, dx, dy))
        logp = jax.nn.log_softmax(logits)
        losses.append(-np.asarray(logp)[np.arange(len(y)), np.asarray(y)])
        succ.append(np.asarray(jnp.argmax(logits, -1)) != np.asarray(y))
    losses, succ = np.stack(losses), np.stack(succ)
    np.testing.assert_array_equal(res.success, succ.any(0))
    best = np.where(succ == succ.any(0)[None], losses, -np.inf).max(0)
    np.testing.assert_allclose(res.loss, best, rtol=1e-5, atol=1e-6)
    # at least as strong as any single grid point, the identity included (odd grids hold 0)
    assert np.all(res.loss[~res.success] >= losses.max(0)[~res.success] - 1e-5)
    assert res.success.mean() >= (apply_fn(params, x).argmax(-1) != y).mean()
    assert res.success.mean() > 0.1  # +-20 degrees, +-1 px fools an 8x8 digits MLP often
    np.testing.assert_array_equal(res.queries, 45)
    # the chosen transformation is a grid point and reproduces x_adv
    assert np.all(np.abs(chosen[:, 0]) <= 20) and np.all(np.abs(chosen[:, 1:]) <= 1)
    np.testing.assert_allclose(transform(x, *chosen.T), res.x_adv, atol=1e-6)
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0


def test_grid_chunking_and_jit_agree(small_grid):
    """Jitted with 4 grid points per chunk == eager with the whole grid at once."""
    (apply_fn, params, x, y), (a, _) = small_grid
    cfg = SpatialGridConfig(max_rotation=20.0, max_translation=1.0, n_rotations=5,
                            n_translations=3, chunk=4)
    b = jax.jit(spatial_grid, static_argnums=(0, 5))(apply_fn, params, x, y, jax.random.key(0),
                                                     cfg)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)
    np.testing.assert_array_equal(a.success, b.success)


@pytest.mark.parametrize("k", [1, 10])
def test_worst_of_k_is_the_strongest_of_its_draws(k):
    apply_fn, params, x, y = digits_mlp(16)
    cfg = SpatialGridConfig(max_rotation=30.0, max_translation=1.5, worst_of_k=k)
    key = jax.random.key(3)
    res, chosen = grid_search(apply_fn, params, x, y, key, cfg)
    pts = candidate_points(key, x.shape[0], cfg)
    assert pts.shape == (k, 16, 3)
    assert np.all(np.abs(pts[..., 0]) <= 30) and np.all(np.abs(pts[..., 1:]) <= 1.5)
    loss, succ = evaluate_points(apply_fn, params, x, y, pts)
    np.testing.assert_array_equal(res.success, np.asarray(succ).any(0))
    same = np.asarray(succ) == np.asarray(res.success)[None]
    assert np.all(np.asarray(res.loss)[None] >= np.where(same, loss, -np.inf) - 1e-5)
    assert np.all(np.any(np.all(np.isclose(pts, chosen[None]), -1), 0))  # one of the draws


def test_grid_points_cover_the_paper_grid():
    g = grid_points(SpatialGridConfig())
    assert g.shape == (775, 3)  # 31 rotations x 5 x 5 translations
    np.testing.assert_allclose(g.min(0), [-30, -3, -3])
    np.testing.assert_allclose(g.max(0), [30, 3, 3])
    assert np.any(np.all(g == 0, -1))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="worst_of_k"):
        SpatialGridConfig(worst_of_k=0)
    with pytest.raises(ValueError, match="loss"):
        SpatialGridConfig(loss="dlr")
    with pytest.raises(ValueError, match="optimizer"):
        StAdvConfig(optimizer="sgd")


def test_stadv_invariants_and_success():
    apply_fn, params, x, y = digits_mlp(16)
    cfg = StAdvConfig(optimizer="adam", steps=60, learning_rate=0.05)
    res, flow = jax.jit(stadv_flow, static_argnums=(0, 5))(apply_fn, params, x, y,
                                                          jax.random.key(0), cfg)
    assert flow.shape == (16, 8, 8, 2)
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    np.testing.assert_allclose(res.x_adv, flow_warp(x, flow), atol=1e-6)
    np.testing.assert_allclose(res.norm, flow_loss(flow), rtol=1e-5)
    np.testing.assert_array_equal(res.success, apply_fn(params, res.x_adv).argmax(-1) != y)
    assert res.success.mean() >= 0.75
    clean_ok = np.asarray(apply_fn(params, x).argmax(-1) == y)
    # a smoothness weight makes smoother flows: tau = 0.5 gives a smaller L_flow where both win
    smooth = stadv(apply_fn, params, x, y, jax.random.key(0),
                   StAdvConfig(optimizer="adam", steps=60, learning_rate=0.05, tau=0.5))
    both = np.asarray(res.success & smooth.success) & clean_ok
    assert both.sum() >= 4
    assert np.median(np.asarray(smooth.norm)[both]) < np.median(np.asarray(res.norm)[both])


def test_stadv_lbfgs_runs_and_succeeds():
    apply_fn, params, x, y = digits_mlp(8)
    x, y = x[:4], y[:4]
    res = stadv(apply_fn, params, x, y, jax.random.key(0), StAdvConfig(optimizer="lbfgs", steps=10))
    assert res.success.mean() >= 0.75
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
