"""Every accumulator: merging per-chunk statistics equals one-shot statistics (hypothesis)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from robustjax import metrics as M

N = 12
CHUNK = 4  # one chunk shape (and the full batch): two compilations per family


def _data(seed):
    r = np.random.default_rng(seed)
    x = r.uniform(size=(N, 12, 12, 1)).astype(np.float32)
    return {
        "x": x,
        "x_adv": np.clip(x + r.uniform(-0.1, 0.1, x.shape), 0, 1).astype(np.float32),
        "lc": r.normal(size=(N, 5)).astype(np.float32) * 2,
        "la": r.normal(size=(N, 5)).astype(np.float32) * 2,
        "y": r.integers(0, 5, N).astype(np.int32),
        "mask": r.uniform(size=N) < 0.6,
        "vec": r.normal(size=(N, 3)).astype(np.float32),
        "min_eps": np.where(r.uniform(size=N) < 0.2, np.inf, r.uniform(0, 0.3, N)),
        "acts": {"c": r.normal(size=(N, 2, 2, 3)).astype(np.float32),
                 "d": r.normal(size=(N, 4)).astype(np.float32)},
        "acts2": {"c": r.normal(size=(N, 2, 2, 3)).astype(np.float32),
                  "d": r.normal(size=(N, 4)).astype(np.float32)},
    }


RANGES = M.NeuronRanges({"c": M.MinMax(jnp.full(3, -0.5), jnp.full(3, 0.5)),
                         "d": M.MinMax(jnp.full(4, -1.0), jnp.full(4, 1.0))})
EPS = np.linspace(0, 0.3, 7)

FAMILIES = {
    "average": lambda d: M.Average.from_values(d["vec"], d["mask"]),
    "ratio": lambda d: M.Ratio.from_values(d["mask"], np.ones(len(d["y"]))),
    "minmax": lambda d: M.MinMax.from_values(d["vec"]),
    "anyseen": lambda d: M.AnySeen.from_values(d["vec"] > 1.0),
    "task": lambda d: M.TaskStats.from_batch(d["lc"], d["y"]),
    "adversarial": lambda d: M.AdversarialStats.from_batch(d["la"], d["y"], logits_clean=d["lc"]),
    "defense": lambda d: M.DefenseStats.from_batch(d["lc"], d["la"], d["y"]),
    "imperceptibility": lambda d: M.ImperceptibilityStats.from_batch(d["x"], d["x_adv"],
                                                                     d["mask"]),
    "curve": lambda d: M.RobustnessCurve.from_min_eps(d["min_eps"], EPS),
    "fooling": lambda d: M.fooling_rate_stats(d["lc"], d["la"], d["y"]),
    "retention": lambda d: M.retention_rate_stats(d["lc"], d["la"], d["y"]),
    "eni": lambda d: M.eni_stats(d["lc"], d["la"], d["y"], d["x"], d["x_adv"]),
    "coverage": lambda d: M.CoverageStats.from_batch(d["acts"], RANGES, k=4),
    "sensitivity": lambda d: M.neuron_sensitivity(d["acts"], d["acts2"]),
    "ranges": lambda d: M.NeuronRanges.from_batch(d["acts"]),
    "boundary": lambda d: M.BoundaryStats.from_result(M.BoundaryResult(
        jnp.asarray(np.minimum(d["min_eps"], 0.5), jnp.float32), jnp.isfinite(d["min_eps"]),
        jnp.zeros(len(d["y"]), jnp.int32))),
}


def _chunks(d, order):
    """Disjoint chunks of CHUNK examples, taken in the given order of example indices."""
    order = np.asarray(order)
    return [jax.tree_util.tree_map(lambda a, idx=order[i:i + CHUNK]: a[idx], d)
            for i in range(0, N, CHUNK)]


def _assert_same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64),
                                   rtol=2e-5, atol=1e-6, equal_nan=True)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), order=st.permutations(range(N)))
def test_merge_equals_one_shot(seed, order):
    d = _data(seed)
    parts = _chunks(d, order)  # any split into disjoint subsets, merged in any order
    for name, make in FAMILIES.items():
        one = make(d)
        merged = M.merge_all([make(p) for p in parts])
        _assert_same(one.compute(), merged.compute())
        empty = type(one).empty(EPS) if name == "curve" else type(one).empty()
        _assert_same(empty.merge(merged).compute(), one.compute())  # empty is the identity


def test_reduce_stacked_over_a_leading_axis():
    d = _data(7)
    parts = _chunks(d, range(N))
    for name in ("adversarial", "defense", "coverage", "curve"):
        stats = [FAMILIES[name](p) for p in parts]
        stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *stats)
        _assert_same(M.reduce_stacked(stacked).compute(), FAMILIES[name](d).compute())
    with np.testing.assert_raises(ValueError):
        M.merge_all([])


def test_compute_under_jit_equals_eager():
    d = _data(3)
    for name in ("average", "ratio", "anyseen", "adversarial", "curve"):
        acc = FAMILIES[name](d)
        _assert_same(jax.jit(lambda a: a.compute())(acc), acc.compute())
