"""Sparse / L0 attacks: one-pixel (DE), Sparse-RS (L0 pixels, patches), JSMA.

Invariants (exact L0 budget, box, exact query counts, truthful success masks), brute-force
oracles for the vectorised pieces (DE index draws, candidate painting, the pair saliency map,
the reference schedules), and JSMA against torchattacks on the same weights (committed
fixture, ``scripts/make_sparse_fixture.py``).
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import attacks_b_models

from robustjax.attacks.jsma import JSMAConfig, jsma, pair_saliency
from robustjax.attacks.l0 import l0_features, l0_pixels
from robustjax.attacks.one_pixel import OnePixelConfig, _distinct_others, one_pixel, perturb
from robustjax.attacks.sparse_rs import SparseRSConfig, alpha_schedule, sparse_rs

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "sparse_reference.npz"
predict = attacks_b_models.predict
no_grad = attacks_b_models.no_grad


@pytest.fixture(scope="module")
def digits_mlp():
    return attacks_b_models.digits_mlp()


def changed_pixels(xa, x):
    return np.any(np.asarray(xa) != np.asarray(x), axis=-1)      # [b, H, W]


def check_common(res, apply_fn, params, x, y, targeted=False):
    xa = np.asarray(res.x_adv)
    assert xa.dtype == np.float32 and xa.min() >= 0.0 and xa.max() <= 1.0
    np.testing.assert_array_equal(np.asarray(res.norm), changed_pixels(xa, x).sum((1, 2)))
    pred = predict(apply_fn, params, res.x_adv)
    want = pred == np.asarray(y) if targeted else pred != np.asarray(y)
    np.testing.assert_array_equal(np.asarray(res.success), want)      # truthful flags


# ------------------------------------------------------------------------------ one-pixel


@pytest.mark.parametrize("p", [4, 9])
def test_de_draws_three_distinct_others(p):
    keys = jax.random.split(jax.random.key(0), 200)
    r = np.asarray(jax.vmap(lambda k: _distinct_others(k, 3, p))(keys))   # [200, 3, 3, P]
    i = np.arange(p)
    assert r.min() >= 0 and r.max() < p
    assert np.all((r[:, 0] != i) & (r[:, 1] != i) & (r[:, 2] != i))
    assert np.all((r[:, 0] != r[:, 1]) & (r[:, 0] != r[:, 2]) & (r[:, 1] != r[:, 2]))
    # every other index is drawn, about equally often
    counts = np.bincount(((r[:, 0] - i) % p).ravel(), minlength=p)
    assert counts[0] == 0 and counts[1:].min() > 0.7 * counts[1:].mean()


def test_perturb_matches_a_loop():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 5, 4, 3)).astype(np.float32)
    cand = np.concatenate([rng.uniform(0, [5, 4], size=(2, 3, 2, 2)),
                           rng.uniform(-0.2, 1.2, size=(2, 3, 2, 3))], -1).astype(np.float32)
    out = np.asarray(perturb(jnp.asarray(x), jnp.asarray(cand)))
    for i in range(2):
        for j in range(3):
            ref = x[i].copy()
            for r, c, *v in cand[i, j]:
                ref[int(r), int(c)] = np.clip(v, 0, 1)
            np.testing.assert_array_equal(out[i, j], ref)


def test_one_pixel_invariants_and_exact_queries(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    cfg = OnePixelConfig(pixels=3, popsize=16, max_iter=12)
    res = jax.jit(functools.partial(one_pixel, no_grad(apply_fn), config=cfg))(
        params, x, y, jax.random.key(0))
    check_common(res, apply_fn, params, x, y)
    q, succ = np.asarray(res.queries), np.asarray(res.success)
    assert np.all(np.asarray(res.norm) <= cfg.pixels)                    # the L0 budget
    assert np.all(q % cfg.popsize == 0) and np.all(q <= cfg.popsize * (1 + cfg.max_iter))
    assert np.all(q[~succ] == cfg.popsize * (1 + cfg.max_iter))    # failures spend it all
    clean = predict(apply_fn, params, x) == np.asarray(y)
    assert succ.mean() > 1 - clean.mean() + 0.3, succ.mean()       # DE actually searches
    # the reported loss is the true-class probability of x_adv
    prob = np.asarray(jax.nn.softmax(apply_fn(params, res.x_adv)))[np.arange(len(y)), y]
    np.testing.assert_allclose(np.asarray(res.loss), prob, rtol=1e-5, atol=1e-6)


def test_one_pixel_targeted_best1(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    t = (y + 1) % 10
    cfg = OnePixelConfig(pixels=5, popsize=8, max_iter=6, targeted=True, strategy="best1")
    res = one_pixel(apply_fn, params, x, t, jax.random.key(1), cfg)
    check_common(res, apply_fn, params, x, t, targeted=True)
    assert np.asarray(res.success).any()


# ------------------------------------------------------------------------------ Sparse-RS


def reference_alpha(alpha_init, it, n_queries, norm):
    """The piecewise schedule of the authors' rs_attacks.py, written out as there."""
    it = int(it / n_queries * 10000)
    if norm == "l0":
        table = [(0, 1), (50, 2), (200, 4), (500, 5), (1000, 6), (2000, 8), (4000, 10),
                 (6000, 12), (8000, 15)]
        last = 20
    else:
        table = [(10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 32),
                 (6000, 64), (8000, 64)]
        last = 128
    for bound, div in table:
        if it <= bound:
            return alpha_init / div
    return alpha_init / last


@pytest.mark.parametrize("norm", ["l0", "patches"])
def test_alpha_schedule_is_the_reference(norm):
    its = np.arange(0, 3000)
    got = np.asarray(jax.vmap(lambda i: alpha_schedule(0.3, i, 3000, norm))(its))
    want = np.array([reference_alpha(0.3, i, 3000, norm) for i in its])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sparse_rs_l0_exact_budget_and_queries(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    k = 3
    cfg = SparseRSConfig(k=k, n_queries=60)
    res = jax.jit(functools.partial(sparse_rs, no_grad(apply_fn), config=cfg))(
        params, x, y, jax.random.key(0))
    check_common(res, apply_fn, params, x, y)
    q, succ = np.asarray(res.queries), np.asarray(res.success)
    assert np.all(np.asarray(res.norm) <= k)
    assert np.all((q >= 1) & (q <= cfg.n_queries)) and np.all(q[~succ] == cfg.n_queries)
    assert (q[succ] < cfg.n_queries).any()                 # successes stop early
    # changed pixels are corners of the colour cube
    xa, x0 = np.asarray(res.x_adv), np.asarray(x)
    ch = changed_pixels(xa, x0)
    assert set(np.unique(xa[ch])) <= {0.0, 1.0}
    clean = predict(apply_fn, params, x) == np.asarray(y)
    assert succ.mean() > 1 - clean.mean() + 0.3, succ.mean()


def test_sparse_rs_l0_keeps_exactly_k_pixels(digits_mlp):
    """On a grey image every corner differs from the clean pixel, so L0 is exactly k at every
    accepted step; a failing attack (huge margin) returns its last accepted candidate."""
    apply_fn, params, _, _ = digits_mlp
    x = jnp.full((6, 8, 8, 1), 0.5, jnp.float32)
    y = jnp.asarray(predict(apply_fn, params, x))
    for k in (1, 40):
        res = sparse_rs(apply_fn, params, x, y, jax.random.key(k),
                        SparseRSConfig(k=k, n_queries=30))
        np.testing.assert_array_equal(np.asarray(res.norm), k)


def test_sparse_rs_patches_stay_in_one_square(digits_mlp):
    apply_fn, params, x, y = digits_mlp
    cfg = SparseRSConfig(k=8, norm="patches", n_queries=80)     # s = ceil(sqrt(8)) = 3
    res = sparse_rs(no_grad(apply_fn), params, x, y, jax.random.key(2), cfg)
    check_common(res, apply_fn, params, x, y)
    ch = changed_pixels(res.x_adv, x)
    for m in ch:
        r, c = np.nonzero(m)
        if len(r):
            assert r.max() - r.min() < 3 and c.max() - c.min() < 3
    q = np.asarray(res.queries)
    assert np.all(q[~np.asarray(res.success)] == cfg.n_queries) and q.max() <= cfg.n_queries


def test_sparse_rs_bad_budgets_say_what_fits():
    x = jnp.zeros((1, 8, 8, 1))
    y = jnp.zeros((1,), jnp.int32)
    f = lambda p, xb: jnp.zeros((xb.shape[0], 3))  # noqa: E731
    with pytest.raises(ValueError, match="k < H"):
        sparse_rs(f, None, x, y, jax.random.key(0), SparseRSConfig(k=64))
    with pytest.raises(ValueError, match="does not fit"):
        sparse_rs(f, None, x, y, jax.random.key(0), SparseRSConfig(k=64, norm="patches"))
    with pytest.raises(ValueError, match="'l0' or 'patches'"):
        SparseRSConfig(norm="l2")


# ----------------------------------------------------------------------------------- JSMA


_saliency = jax.jit(pair_saliency, static_argnums=3)


@settings(max_examples=40, deadline=None)
@given(st.booleans(), st.integers(0, 2 ** 31 - 1))
def test_pair_saliency_is_the_brute_force_argmax(increasing, seed):
    rng = np.random.default_rng(seed)
    n = 6                                  # one shape: one compilation per direction
    a, o = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    dom = rng.uniform(size=n) < 0.8
    best, arg = -1.0, None
    for p in range(n):
        for q in range(n):
            if p == q or not (dom[p] and dom[q]):
                continue
            al, be = a[p] + a[q], o[p] + o[q]
            if (al > 0 and be < 0) if increasing else (al < 0 and be > 0):
                if abs(al) * abs(be) > best:
                    best, arg = abs(al) * abs(be), {p, q}
    p, q, found = _saliency(jnp.asarray(a), jnp.asarray(o), jnp.asarray(dom), increasing)
    assert bool(found) == (arg is not None)
    if arg is not None:
        assert {int(p), int(q)} == arg


@pytest.mark.parametrize("targeted", [False, True])
def test_jsma_budget_box_and_direction(digits_mlp, targeted):
    apply_fn, params, x, y = digits_mlp
    lab = (y + 3) % 10 if targeted else y
    cfg = JSMAConfig(gamma=0.2, targeted=targeted)
    res = jax.jit(functools.partial(jsma, apply_fn, config=cfg))(
        params, x, lab, jax.random.key(0))
    check_common(res, apply_fn, params, x, lab, targeted)
    max_iters = int(np.ceil(64 * cfg.gamma / 2))
    d = np.asarray(res.x_adv - x)
    assert np.all(d >= 0)                                              # theta = +1 raises
    assert np.all(np.asarray(l0_features(res.x_adv - x)) <= 2 * max_iters)
    q = np.asarray(res.queries)
    assert np.all(q <= max_iters) and np.asarray(res.success).mean() > 0.4


def test_jsma_matches_torchattacks_on_the_same_weights():
    """torchattacks.JSMA (targeted, theta=1, gamma=0.1) on the digits MLP, saved by
    scripts/make_sparse_fixture.py. Where a pair qualifies at every step (torchattacks then
    falls back to feature 0), both follow the same saliency path."""
    ref = np.load(FIXTURE)
    params = {"w": [jnp.asarray(ref["w0"]), jnp.asarray(ref["w1"])],
              "b": [jnp.asarray(ref["b0"]), jnp.asarray(ref["b1"])]}
    x, t = jnp.asarray(ref["x"]), jnp.asarray(ref["target"])
    res = jsma(attacks_b_models.mlp_apply, params, x, t, jax.random.key(0),
               JSMAConfig(theta=1.0, gamma=0.1, targeted=True))
    same = np.all(np.abs(np.asarray(res.x_adv) - ref["x_adv_jsma"]) < 1e-6, axis=(1, 2, 3))
    assert same.mean() >= 0.9, same.mean()
    np.testing.assert_array_equal(np.asarray(res.success)[same], ref["success_jsma"][same])


def test_l0_helpers():
    d = np.zeros((2, 3, 3, 2), np.float32)
    d[0, 0, 0, 1] = 0.1
    d[0, 2, 1] = -0.3
    np.testing.assert_array_equal(np.asarray(l0_pixels(jnp.asarray(d))), [2, 0])
    np.testing.assert_array_equal(np.asarray(l0_features(jnp.asarray(d))), [3, 0])
