"""robustjax.attacks._core: losses, projections, directions, steps (closed forms, optax refs)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustjax.attacks import _core

SHAPE = (3, 4, 4, 2)


def _arrays(seed, scale):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, SHAPE).astype(np.float32)
    d = (rng.normal(size=SHAPE) * scale).astype(np.float32)
    return x, d


# jitted once per module: hypothesis examples reuse the compiled functions
_proj = jax.jit(_core.project, static_argnums=3)
_l1 = jax.jit(_core.project_l1)
_norm = jax.jit(_core.lp_norm, static_argnums=1)
_optax_l1 = jax.jit(jax.vmap(optax.projections.projection_l1_ball, (0, None)))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 3.0), eps=st.floats(0.01, 4.0))
def test_l1_projection_matches_optax_and_is_optimal(seed, scale, eps):
    _, d = _arrays(seed, scale)
    p = np.asarray(_l1(d, eps))
    ref = np.asarray(_optax_l1(jnp.asarray(d), eps))
    np.testing.assert_allclose(p, ref, atol=2e-5)
    assert np.all(np.abs(p).reshape(3, -1).sum(1) <= eps * (1 + 1e-4))  # float32 sums
    # optimality against random feasible points
    rng = np.random.default_rng(seed + 1)
    for _ in range(5):
        z = rng.normal(size=d.shape)
        z = z * (eps / np.abs(z).reshape(3, -1).sum(1))[:, None, None, None] * rng.uniform()
        assert np.all(((p - d) ** 2).reshape(3, -1).sum(1)
                      <= ((z - d) ** 2).reshape(3, -1).sum(1) + 1e-5)


def _l1_box_reference(v, x, eps):
    """float64 projection onto {||d||_1 <= eps, 0 <= x + d <= 1} via sorted breakpoints."""
    v, x = v.astype(np.float64).ravel(), x.astype(np.float64).ravel()
    room = np.where(v > 0, 1 - x, x)
    a = np.abs(v)

    def total(t):
        return np.clip(a - t, 0, room).sum()

    if total(0.0) <= eps:
        return np.sign(v) * np.minimum(a, room)
    pts = np.unique(np.concatenate([[0.0], a, a - room]))
    pts = pts[pts >= 0]
    vals = np.array([total(t) for t in pts])  # non-increasing in t
    j = np.nonzero(vals <= eps)[0][0]
    t0, t1, f0, f1 = pts[j - 1], pts[j], vals[j - 1], vals[j]
    t = t0 + (f0 - eps) * (t1 - t0) / (f0 - f1)  # linear between breakpoints
    return np.sign(v) * np.clip(a - t, 0, room)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 2.0), eps=st.floats(0.01, 5.0))
def test_projections_feasible_and_exact(seed, scale, eps):
    x, d = _arrays(seed, scale)
    for norm in _core.NORMS:
        p = np.asarray(_proj(jnp.asarray(x + d), jnp.asarray(x), eps, norm))
        assert p.min() >= 0.0 and p.max() <= 1.0
        assert np.all(np.asarray(_norm(jnp.asarray(p - x), norm)) <= eps * (1 + 1e-5) + 1e-7)
    # Linf: exact = clip into the cube intersected with the box
    p = np.asarray(_proj(jnp.asarray(x + d), jnp.asarray(x), eps, "linf"))
    np.testing.assert_allclose(p, np.clip(np.clip(x + d, x - eps, x + eps), 0, 1), atol=1e-6)
    # L1 with the box: exact against the float64 breakpoint reference
    p = np.asarray(_proj(jnp.asarray(x + d), jnp.asarray(x), eps, "l1")) - x
    ref = np.stack([_l1_box_reference(d[i], x[i], eps).reshape(SHAPE[1:]) for i in range(3)])
    np.testing.assert_allclose(p, ref, atol=3e-5)


def test_l2_and_linf_projection_match_optax():
    _, d = _arrays(0, 1.0)
    for proj, ref, eps in [(_core.project_l2, optax.projections.projection_l2_ball, 0.7),
                           (_core.project_linf, optax.projections.projection_linf_ball, 0.2)]:
        p = proj(jnp.asarray(d), eps)
        r = jnp.stack([ref(jnp.asarray(v), eps) for v in d])
        np.testing.assert_allclose(p, r, atol=1e-6)
    # per-example eps
    eps = jnp.array([0.1, 1.0, 100.0])
    np.testing.assert_allclose(_core.lp_norm(_core.project_l2(jnp.asarray(d), eps), "l2")[:2],
                               eps[:2], rtol=1e-5)


def test_losses_against_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 7)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 6], np.int32)
    z64 = z.astype(np.float64)
    lse = np.log(np.exp(z64).sum(1))
    ce = lse - z64[np.arange(6), y]
    np.testing.assert_allclose(_core.cross_entropy(z, y), ce, rtol=1e-5)
    np.testing.assert_allclose(_core.cross_entropy(z, y, targeted=True), -ce, rtol=1e-5)
    other = np.array([np.max(np.delete(z64[i], y[i])) for i in range(6)])
    np.testing.assert_allclose(_core.margin(z, y), other - z64[np.arange(6), y], rtol=1e-5)
    np.testing.assert_allclose(_core.margin(z, y, kappa=0.1),
                               np.minimum(other - z64[np.arange(6), y], 0.1), rtol=1e-5)
    np.testing.assert_allclose(_core.margin(z, y, targeted=True),
                               z64[np.arange(6), y] - other, rtol=1e-5)
    s = np.sort(z64, 1)
    dlr = -(z64[np.arange(6), y] - other) / (s[:, -1] - s[:, -3] + 1e-12)
    np.testing.assert_allclose(_core.dlr(z, y), dlr, rtol=1e-5)
    t = (y + 1) % 7
    dlr_t = -(z64[np.arange(6), y] - z64[np.arange(6), t]) / (
        s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + 1e-12)
    np.testing.assert_allclose(_core.dlr_targeted(z, y, t), dlr_t, rtol=1e-5)
    dlr_t = (z64[np.arange(6), y] - other) / (s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + 1e-12)
    np.testing.assert_allclose(_core.dlr(z, y, targeted=True), dlr_t, rtol=1e-5)
    # DLR is invariant to shifts and positive rescaling of the logits (the paper's point)
    np.testing.assert_allclose(_core.dlr(3.0 * z + 5.0, y), dlr, rtol=1e-4)
    np.testing.assert_array_equal(_core.success_mask(z, y), np.argmax(z, 1) != y)
    np.testing.assert_array_equal(_core.success_mask(z, y, True), np.argmax(z, 1) == y)
    with pytest.raises(ValueError, match="valid losses: ce, margin, dlr"):
        _core.get_loss("hinge")


def test_steepest_directions_maximise_linear_functional():
    rng = np.random.default_rng(1)
    g = jnp.asarray(rng.normal(size=SHAPE).astype(np.float32))
    flat = np.asarray(g).reshape(3, -1)
    dual = {"linf": np.abs(flat).sum(1), "l2": np.sqrt((flat ** 2).sum(1)),
            "l1": np.abs(flat).max(1)}
    for norm in _core.NORMS:
        d = _core.steepest_direction(g, norm, l1_sparsity=1.0)
        np.testing.assert_allclose(_core.lp_norm(d, norm), 1.0, rtol=1e-5)
        np.testing.assert_allclose(jnp.sum(d * g, axis=(1, 2, 3)), dual[norm], rtol=1e-5)
    # sparse L1: top 25% of 32 coordinates = 8 non-zeros of magnitude 1/8
    d = np.asarray(_core.steepest_direction(g, "l1", l1_sparsity=0.75)).reshape(3, -1)
    assert np.all((d != 0).sum(1) == 8) and np.allclose(np.abs(d[d != 0]), 1 / 8)
    top = np.argsort(-np.abs(flat), 1)[:, :8]
    assert np.all(np.take_along_axis(d, top, 1) != 0)
    # coordinates stuck at the box edge and pushed outwards are skipped
    x_adv = jnp.where(g > 0, 1.0, 0.0)
    d = _core.steepest_direction(g, "l1", l1_sparsity=0.75, x_adv=x_adv)
    assert float(jnp.abs(d).sum()) == 0.0
    with pytest.raises(ValueError, match="valid norms: linf, l2, l1"):
        _core.steepest_direction(g, "l0")


def test_optax_step_is_projected_steepest_ascent():
    x, d = _arrays(3, 1.0)
    x, g = jnp.asarray(x), jnp.asarray(d)

    @jax.jit
    def check(x, g):
        out = []
        for norm, eps, alpha in [("linf", 0.1, 0.03), ("l2", 0.5, 0.2), ("l1", 2.0, 0.5)]:
            out.append(one(x, g, norm, eps, alpha))
        return out

    def one(x, g, norm, eps, alpha):
        step = optax.chain(_core.steepest_ascent(alpha, norm, 0.9),
                           _core.project_onto_threat(x, eps, norm))
        x_adv = _core.random_start(jax.random.PRNGKey(0), x, eps, norm)
        upd, _ = step.update(g, step.init(x_adv), x_adv)
        manual = _core.project(
            x_adv + alpha * _core.steepest_direction(g, norm, l1_sparsity=0.9, x_adv=x_adv),
            x, eps, norm)
        return eps, _core.lp_norm(x_adv - x, norm), optax.apply_updates(x_adv, upd), manual

    for eps, start_norm, stepped, manual in check(x, g):
        assert float(jnp.max(start_norm)) <= eps * (1 + 1e-5)
        np.testing.assert_allclose(stepped, manual, atol=1e-6)


def test_loop_structures_agree():
    def body(i, c):
        return c * 1.5 + i

    for loop in ("unroll", "fori", "auto"):
        assert float(_core.loop_steps(body, jnp.float32(1.0), 5, loop)) == pytest.approx(
            sum(1.5 ** (4 - i) * i for i in range(5)) + 1.5 ** 5)
    with pytest.raises(ValueError, match="valid: auto, unroll, fori, python"):
        _core.loop_steps(body, 0.0, 2, "scan")


def test_input_checks_say_what_is_wrong():
    # the attacks' checks live in robustjax.validation (one layer for every entry point)
    from robustjax import validation

    x = np.zeros((2, 4, 4, 1), np.float32)
    with pytest.raises(validation.InputError, match="NHWC"):
        validation.check_shapes(x[0], np.zeros(2, np.int32))
    with pytest.raises(validation.InputError, match=r"\[0, 1\]"):
        validation.start_value_checks(x + 2, np.zeros(2, np.int32), 10)()
    with pytest.raises(validation.InputError, match="eps must be"):
        validation.check_eps(-1.0, 2)
    with pytest.raises(validation.InputError, match="2 images"):
        validation.check_shapes(x, np.zeros(3, np.int32))
