"""Training recipes: a robust loss plus an ordinary optax chain, run by ``fit``.

* ``loop``: ``train_step``, ``fit``, ``fit_model`` (BatchNorm in train mode, early stopping);
* ``modes``: train / eval mode for models with batch statistics;
* ``adversarial``: PGD-AT, TRADES, MART, fast AT; ``advbn``: adversarial feature statistics;
* ``distillation``: defensive distillation, ARD, RSLAD; ``certified``: IBP, CROWN-IBP;
* ``averaging``: parameter EMA and SWA as chain members; ``schedules``: optax schedules and
  their checks; ``early_stopping``: held-out robust accuracy for ``fit(eval_fn=...)``.

Losses have one signature, ``loss_fn(apply_fn, params, x, y, key, step) -> scalar``.
"""

from robustjax.train import averaging, modes, schedules  # noqa: F401
from robustjax.train.loop import (  # noqa: F401
    LossFn, TrainState, accuracy, cross_entropy_loss, evaluated_params, fit, fit_model,
    init_state, train_step)
from robustjax.train.adversarial import (  # noqa: F401
    FastATConfig, MARTConfig, PGDATConfig, TRADESConfig, fast_at_loss, mart_loss, pgd_at_loss,
    trades_loss)
from robustjax.train.advbn import AdvBNConfig, advbn_loss  # noqa: F401
from robustjax.train.distillation import (  # noqa: F401
    ARDConfig, RSLADConfig, ard_loss, defensive_distillation_loss, rslad_loss,
    temperature_loss)
from robustjax.train.certified import CertifiedTrainingConfig, certified_loss  # noqa: F401,E501
from robustjax.train.averaging import averaged_params, parameter_ema, swa  # noqa: F401
from robustjax.train.early_stopping import robust_accuracy_fn  # noqa: F401

# name -> (loss constructor, ConfigClass) for the recipes that need no teacher
RECIPES = {
    "standard": (lambda config=None: cross_entropy_loss, None),
    "pgd_at": (pgd_at_loss, PGDATConfig),
    "trades": (trades_loss, TRADESConfig),
    "mart": (mart_loss, MARTConfig),
    "fast_at": (fast_at_loss, FastATConfig),
}


def recipe(name: str, **config):
    """The loss of a named recipe with its config (``recipe("trades", beta=1.0)``)."""
    if name not in RECIPES:
        raise KeyError(f"unknown training recipe {name!r}; valid: {', '.join(RECIPES)}")
    make, cls = RECIPES[name]
    if cls is None:
        if config:
            raise TypeError(f"recipe {name!r} takes no config, got {sorted(config)}")
        return make()
    return make(cls(**config))
