"""Every accumulator: merging per-chunk statistics equals one-shot statistics (hypothesis)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from robustjax import metrics as M

N = 12
SPLITS = [(12,), (4, 8), (8, 4), (4, 4, 4)]  # few chunk shapes: few compilations


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
}


def _chunks(d, sizes):
    out, start = [], 0
    for s in sizes:
        out.append(jax.tree_util.tree_map(lambda a, s=s, start=start: a[start:start + s], d))
        start += s
    return out


def _assert_same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64),
                                   rtol=2e-5, atol=1e-6, equal_nan=True)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), sizes=st.sampled_from(SPLITS), reverse=st.booleans())
def test_merge_equals_one_shot(seed, sizes, reverse):
    d = _data(seed)
    parts = _chunks(d, sizes)
    if reverse:
        parts = parts[::-1]  # merge order does not matter (examples are exchangeable)
    for name, make in FAMILIES.items():
        one = make(d)
        merged = M.merge_all([make(p) for p in parts])
        _assert_same(one.compute(), merged.compute())
        empty = type(one).empty(EPS) if name == "curve" else type(one).empty()
        _assert_same(empty.merge(merged).compute(), one.compute())  # empty is the identity


def test_reduce_stacked_over_a_leading_axis():
    d = _data(7)
    parts = _chunks(d, (4, 4, 4))
    for name in ("adversarial", "defense", "coverage", "curve"):
        stats = [FAMILIES[name](p) for p in parts]
        stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *stats)
        _assert_same(M.reduce_stacked(stacked).compute(), FAMILIES[name](d).compute())
    with np.testing.assert_raises(ValueError):
        M.merge_all([])
