"""The gradient-masking check: naive PGD vs BPDA/EOT PGD vs Square on a defended model."""

import jax
import pytest
from attacks_b_models import digits_mlp

from robustjax.defenses import transforms as T
from robustjax.defenses.evaluation import AdaptiveEvaluationConfig, adaptive_evaluation
from robustjax.types import Model, ModelSpec

CFG = AdaptiveEvaluationConfig(eps=0.2, steps=10, eot_samples=2, square_queries=200)


@pytest.fixture(scope="module")
def digits():
    apply, params, x, y = digits_mlp(32)
    return Model(apply, params, ModelSpec("mlp", (8, 8, 1), 10)), x, y


def _check_invariants(ev):
    for robust in (ev.naive_pgd, ev.adaptive_pgd, ev.square):
        assert 0.0 <= robust <= ev.clean_accuracy


def test_flags_masking_of_bit_depth_reduction(digits):
    """1-bit quantisation has zero gradient a.e.: naive PGD barely moves, BPDA breaks it."""
    m, x, y = digits
    d = T.defend(m, T.get("bit_depth", bits=1))
    ev = adaptive_evaluation(d, x, y, jax.random.key(0), CFG)
    _check_invariants(ev)
    assert ev.adaptive_attack == "BPDA"
    assert ev.clean_accuracy > 0.7
    assert ev.naive_pgd > 0.6 and ev.adaptive_pgd < 0.4
    assert ev.gradient_masking_suspected and "masked" in ev.reason


def test_does_not_flag_undefended_model(digits):
    m, x, y = digits
    ev = adaptive_evaluation(m, x, y, jax.random.key(0), CFG)
    _check_invariants(ev)
    assert ev.adaptive_attack == "none" and ev.adaptive_pgd == ev.naive_pgd
    assert ev.naive_pgd < 0.1
    assert not ev.gradient_masking_suspected and "within" in ev.reason


def test_randomized_defense_is_attacked_with_eot(digits):
    m, x, y = digits
    d = T.defend(m, T.get("resize_pad"), key=jax.random.key(1))
    cfg = AdaptiveEvaluationConfig(eps=0.2, steps=5, eot_samples=2, square_queries=50)
    ev = adaptive_evaluation(d, x[:16], y[:16], jax.random.key(0), cfg)
    _check_invariants(ev)
    assert ev.adaptive_attack == "EOT-2"
    assert ev.adaptive_pgd < 0.2


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "l1"}, "norm must be 'linf' or 'l2'"),
    ({"eps": 0.0}, "eps must be > 0"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"margin": 1.5}, "margin must be"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveEvaluationConfig(**kwargs)


def test_input_errors(digits):
    m, x, y = digits
    with pytest.raises(ValueError, match="model expects"):
        adaptive_evaluation(m, x[:, :4], y, jax.random.key(0), CFG)
