"""Square with the L1 threat model (AutoAttack's ``square.py``, norm 'L1'): the bump against the
reference's, the threat model and query budget (hypothesis), a closed-form certificate of a
linear model, and the robust count against the reference's seed range (fixture made by
benchmarks/autoattack_crosscheck.py --square-fixture with pyautoattack; no PyTorch here)."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustjax.attacks.square import SquareConfig, l1_bump, square

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "square_l1_reference.npz"
SHAPE = (6, 7, 7, 3)  # [b, H, W, C]: one compiled program per eps below


def linear_apply(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]


@functools.lru_cache(maxsize=None)
def _square_l1(eps, n_queries):
    cfg = SquareConfig(eps=eps, norm="l1", n_queries=n_queries, rescale_schedule=False)
    return jax.jit(functools.partial(square, linear_apply, config=cfg))


def test_l1_bump_is_the_references_eta():
    f = np.load(FIXTURE)
    for s in f["eta_sizes"]:
        ref, transposed = f[f"eta_{s}"], bool(f[f"eta_{s}_transposed"])
        got = l1_bump(int(s)).T if transposed else l1_bump(int(s))
        np.testing.assert_allclose(got, ref, atol=1e-7)
    # by hand for s = 3: rows [1, 17, 1] / 19 and -[[1, 1, 1], [1, 17, 1]] / 22, halved
    np.testing.assert_allclose(l1_bump(3), np.array([[1, 17, 1], [-1, -1, -1], [-1, -17, -1]])
                               * np.array([[1 / 38], [1 / 44], [1 / 44]]), atol=1e-12)
    assert np.abs(l1_bump(7)).sum() == pytest.approx(1.0)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), eps=st.sampled_from([0.3, 2.0, 8.0]))
def test_l1_square_stays_in_the_threat_model_and_the_budget(seed, eps):
    rng = np.random.default_rng(seed)
    b, h, w, c = SHAPE
    x = rng.uniform(0, 1, SHAPE).astype(np.float32)
    x[0] = np.round(x[0])  # an image on the box's corners: the projection must keep it inside
    p = {"w": jnp.asarray(rng.normal(0, 1, (h * w * c, 5)), jnp.float32),
         "b": jnp.zeros(5, jnp.float32)}
    y = np.asarray(jnp.argmax(linear_apply(p, jnp.asarray(x)), -1)).astype(np.int32)
    y[-1] = (y[-1] + 1) % 5  # misclassified from the start: broken by the initial point or not
    res = _square_l1(eps, 25)(p, x, y, jax.random.key(seed % 1000))
    x_adv, succ, q = np.asarray(res.x_adv), np.asarray(res.success), np.asarray(res.queries)
    l1 = np.abs(x_adv - x).reshape(b, -1).sum(-1)
    assert np.all(l1 <= eps * (1 + 1e-5) + 1e-6), l1
    np.testing.assert_allclose(np.asarray(res.norm), l1, rtol=1e-5, atol=1e-6)
    assert np.all((x_adv >= 0) & (x_adv <= 1))
    assert np.all((q >= 1) & (q <= 25))
    assert np.all(q[~succ] == 25)  # an example not broken spends the whole budget
    logits = np.asarray(linear_apply(p, jnp.asarray(x_adv)))
    np.testing.assert_array_equal(succ, logits.argmax(-1) != y)


def test_l1_square_respects_a_linear_models_certificate():
    """For z = W x + b, the margin z_y - z_j moves by at most eps * max_i |W_iy - W_ij| inside
    the L1 ball: below that radius no point can be adversarial, far above it most are."""
    rng = np.random.default_rng(0)
    b, h, w, c = SHAPE
    x = rng.uniform(0.2, 0.8, SHAPE).astype(np.float32)
    p = {"w": jnp.asarray(rng.normal(0, 1, (h * w * c, 5)), jnp.float32),
         "b": jnp.zeros(5, jnp.float32)}
    z = np.asarray(linear_apply(p, jnp.asarray(x)))
    y = z.argmax(-1).astype(np.int32)
    W = np.asarray(p["w"])
    radius = min(min((z[k, y[k]] - z[k, j]) / np.abs(W[:, y[k]] - W[:, j]).max()
                     for j in range(5) if j != y[k]) for k in range(b))
    safe = _square_l1(float(radius) * 0.99, 25)(p, x, y, jax.random.key(0))
    assert not np.any(np.asarray(safe.success))
    broken = _square_l1(8.0, 25)(p, x, y, jax.random.key(0))
    assert np.asarray(broken.success).sum() >= b - 1


def test_l1_square_is_within_the_references_seed_spread():
    """The digits MLP of the AutoAttack fixture, eps 2, 1,000 queries: robustjax's robust
    count (3 keys) against the reference's over 5 seeds (different random draws)."""
    f = np.load(FIXTURE)
    params = {k: jnp.asarray(f[k]) for k in ("w1", "b1", "w2", "b2")}

    def mlp(p, x):
        return jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    cfg = SquareConfig(eps=float(f["eps"]), norm="l1", n_queries=int(f["n_queries"]),
                       rescale_schedule=False)
    run = jax.jit(functools.partial(square, mlp, config=cfg))
    x, y = f["x"], f["y"]
    clean = np.asarray(jnp.argmax(mlp(params, x), -1)) == y
    counts = [int(np.sum(clean & ~np.asarray(run(params, x, y, jax.random.key(k)).success)))
              for k in range(3)]
    ref = f["ref_robust_counts"]
    assert ref.min() <= np.mean(counts) <= ref.max(), (counts, ref)
    assert all(ref.min() - 2 <= c <= ref.max() + 2 for c in counts), (counts, ref)
