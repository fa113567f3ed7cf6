"""The gradient-masking check of Athalye, Carlini & Wagner 2018 ("Obfuscated gradients give a
false sense of security", Sec. 3.1 and 5): attack a defended model three ways and compare.

1. naive PGD: gradients of the defended model as it is (zero through a non-differentiable
   transform, one random draw of a randomized one);
2. adaptive PGD: the same PGD through ``transforms.adaptive(defended)``: BPDA for a
   deterministic transformation, EOT (with BPDA inside when needed) for a randomized one;
3. Square (Andriushchenko et al. 2020): score-based, gradient-free, on the defended model.

Every adversarial example is judged by the *defended* model's real forward pass (for a
randomized defense: one draw, keyed by ``defended.params.key`` and the input); an example
counts as robust when both ``x`` and its ``x_adv`` are classified correctly, so every robust
accuracy is at most the clean one.

The flag (Athalye et al.'s "black-box/adaptive attacks beat white-box ones" symptom)::

    gradient_masking_suspected = naive - min(adaptive, square) > config.margin

with accuracies in [0, 1]: naive PGD leaves clearly more examples robust than an attack that
does not rely on the defense's own gradients.

Example::

    d = transforms.defend(model, transforms.get("bit_depth", bits=1))
    ev = adaptive_evaluation(d, x, y, jax.random.key(0), AdaptiveEvaluationConfig(eps=0.3))
    ev.naive_pgd, ev.adaptive_pgd, ev.square, ev.gradient_masking_suspected, ev.reason
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import validation
from robustjax.attacks import _core
from robustjax.attacks.gradient import PGDConfig, pgd
from robustjax.attacks.square import SquareConfig, square
from robustjax.defenses.transforms.base import DefendedApply, adaptive
from robustjax.types import Model


@dataclasses.dataclass(frozen=True)
class AdaptiveEvaluationConfig:
    """Settings of the three attacks and of the flag.

    Attributes:
      eps: radius in pixel units (Linf default 8/255; MNIST: 0.3).
      norm: ``"linf"`` or ``"l2"`` (Square supports both).
      steps: PGD steps (naive and adaptive alike).
      step_size: PGD step; ``None`` is ``2.5 * eps / steps`` (Madry et al. 2018).
      eot_samples: draws per EOT gradient for a randomized defense.
      square_queries: Square's query budget per example.
      square_p_init: Square's initial fraction of changed pixels (AutoAttack's 0.8).
      margin: how far (accuracy in [0, 1]) naive PGD must stay above the best other attack
        for ``gradient_masking_suspected``.
    """

    eps: float = 8 / 255
    norm: str = "linf"
    steps: int = 20
    step_size: Optional[float] = None
    eot_samples: int = 8
    square_queries: int = 1000
    square_p_init: float = 0.8
    margin: float = 0.1

    def __post_init__(self):
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2' (Square's norms), got {self.norm!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        for name in ("steps", "eot_samples", "square_queries"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin must be an accuracy difference in [0, 1), got "
                             f"{self.margin!r}")


@dataclasses.dataclass(frozen=True)
class AdaptiveEvaluation:
    """Robust accuracies (fractions of the batch in [0, 1]) side by side, and the verdict.

    ``adaptive_attack`` names the model the adaptive PGD differentiated (``"BPDA"``,
    ``"EOT-8"``, ``"EOT-8+BPDA"``, or ``"none"`` for an undefended model, where it is the
    naive attack again).
    """

    clean_accuracy: float
    naive_pgd: float
    adaptive_pgd: float
    square: float
    adaptive_attack: str
    gradient_masking_suspected: bool
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _correct(model: Model, x, y) -> np.ndarray:
    return np.asarray(jnp.argmax(model.apply_fn(model.params, x), -1) == y)


def adaptive_evaluation(defended: Model, x, y, key: jax.Array,
                        config: AdaptiveEvaluationConfig = AdaptiveEvaluationConfig()
                        ) -> AdaptiveEvaluation:
    """Naive PGD, adaptive PGD (BPDA / EOT) and Square on ``defended``; see the module doc.

    Args:
      defended: a ``Model`` from ``transforms.defend`` (an undefended model works too: its
        adaptive attack is the naive one).
      x: float32 [b, H, W, C] in [0, 1]; y: int32 [b] true labels.
      key: PRNG key for the attacks' random starts and Square's search.
      config: ``AdaptiveEvaluationConfig``.
    """
    # NHWC, the model's size and channels, finite pixels, labels inside its classes
    validation.check_model_inputs(defended.apply_fn, defended.params, x, y,
                                  expected_shape=defended.spec.input_shape)
    cfg = config
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    pgd_cfg = PGDConfig(eps=cfg.eps, norm=cfg.norm, steps=cfg.steps,
                        step_size=cfg.step_size if cfg.step_size is not None
                        else 2.5 * cfg.eps / cfg.steps)
    k_naive, k_adaptive, k_square = jax.random.split(key, 3)
    clean = _correct(defended, x, y)

    def robust(x_adv) -> float:
        return float(np.mean(clean & _correct(defended, x_adv, y)))

    with warnings.catch_warnings():  # the naive attack is meant to be naive here
        warnings.simplefilter("ignore", _core.GradientMaskingWarning)
        naive = robust(pgd(defended.apply_fn, defended.params, x, y, k_naive, pgd_cfg).x_adv)
    if isinstance(defended.apply_fn, DefendedApply):
        attacked = adaptive(defended, cfg.eot_samples)
        name = attacked.spec.source.rsplit("[", 1)[-1].rstrip("]")
        adapt = robust(pgd(attacked.apply_fn, attacked.params, x, y, k_adaptive, pgd_cfg).x_adv)
    else:
        name, adapt = "none", naive
    sq_cfg = SquareConfig(eps=cfg.eps, norm=cfg.norm, n_queries=cfg.square_queries,
                          p_init=cfg.square_p_init)
    sq = robust(square(defended.apply_fn, defended.params, x, y, k_square, sq_cfg).x_adv)

    best_name, best = min((("adaptive PGD", adapt), ("Square", sq)), key=lambda t: t[1])
    gap = naive - best
    suspected = gap > cfg.margin
    if suspected:
        reason = (f"naive PGD leaves {naive:.1%} robust but {best_name} only {best:.1%} "
                  f"(gap {gap:.1%} > margin {cfg.margin:.1%}): the defense's own gradients "
                  f"are masked; report the {best_name} number")
    else:
        reason = (f"naive PGD ({naive:.1%}) is within {cfg.margin:.1%} of the best other "
                  f"attack ({best_name}, {best:.1%})")
    return AdaptiveEvaluation(float(np.mean(clean)), naive, adapt, sq, name, suspected, reason)


__all__ = ["AdaptiveEvaluation", "AdaptiveEvaluationConfig", "adaptive_evaluation"]
