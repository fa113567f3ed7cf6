"""Train and eval mode for models with batch statistics (BatchNorm).

A robustjax model is ``apply_fn(params, x) -> logits`` in *eval* mode: BatchNorm normalises with
its running averages. A model that has batch statistics also gives
``train_apply_fn(variables, x) -> (logits, mutated)``: BatchNorm normalises with the batch's
own statistics and returns the updated running averages in ``mutated`` (a dict of collections,
``{"batch_stats": ...}``, what ``flax.linen.Module.apply(..., mutable=["batch_stats"])``
returns).

While a model with batch statistics is trained, ``train_step`` hands the loss a
:class:`TrainModeApply` in place of ``apply_fn``. It is called like ``apply_fn``:

* ``apply_fn(params, x)``: train mode; the running averages are updated, and successive calls
  in one loss chain their updates, as consecutive forward passes in PyTorch's ``model.train()``
  do (the running statistics never change a train-mode output, only what is carried on);
* ``apply_fn.eval(params, x)``: eval mode (running averages, nothing updated): where robust
  losses craft their adversarial examples by default, as TRADES' and MART's public code does
  (``model.eval()`` around the attack);
* ``apply_fn.batch_stats_mode(params, x)``: train-mode normalisation without updating the
  running averages, the attack mode of Madry et al.'s TF code (the attack runs on the training
  graph, whose BatchNorm update ops only run with the optimiser step).

Updates are recorded while the loss is traced, so the train-mode call must not sit inside a
``jax.lax`` loop or ``vmap`` of the loss (attacks use ``eval`` or ``batch_stats_mode``).
Losses call :func:`eval_apply` / :func:`attack_apply` so they work on models with and without
batch statistics alike.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax

ATTACK_MODES = ("eval", "train")


class TrainModeApply:
    """The ``apply_fn`` a loss sees while a model with batch statistics trains (see module)."""

    def __init__(self, apply_fn: Callable, train_apply_fn: Callable):
        self.eval = apply_fn
        self._train_apply_fn = train_apply_fn
        self._mutated: Optional[dict] = None
        self.calls = 0

    def __call__(self, params, x):
        if self._mutated is not None and isinstance(params, dict):
            params = {**params, **self._mutated}
        logits, mutated = self._train_apply_fn(params, x)
        # Running averages are carried, not trained: they take no gradient.
        self._mutated = jax.lax.stop_gradient(dict(mutated))
        self.calls += 1
        return logits

    def batch_stats_mode(self, params, x):
        return self._train_apply_fn(params, x)[0]

    def updated(self, rest: Optional[dict]) -> Optional[dict]:
        """``rest`` (the non-trained collections) with the recorded updates applied."""
        if self._mutated is None or rest is None:
            return rest
        return {**rest, **self._mutated}


def eval_apply(apply_fn: Callable) -> Callable:
    """The eval-mode function behind ``apply_fn`` (``apply_fn`` itself for plain models)."""
    return getattr(apply_fn, "eval", apply_fn)


def attack_apply(apply_fn: Callable, mode: str) -> Callable:
    """The function an attack inside a loss should differentiate: ``"eval"`` or ``"train"``.

    ``"train"`` normalises with the batch's statistics without updating the running averages
    (see the module docstring); for a model without batch statistics both are ``apply_fn``.
    """
    if mode not in ATTACK_MODES:
        raise ValueError(f"attack mode must be one of {ATTACK_MODES}, got {mode!r}")
    if mode == "eval":
        return eval_apply(apply_fn)
    return getattr(apply_fn, "batch_stats_mode", apply_fn)


def has_batch_stats(variables: Any) -> bool:
    """True when ``variables`` is a flax variables dict with collections besides ``params``."""
    return isinstance(variables, dict) and "params" in variables and len(variables) > 1


def flax_train_apply(module, mean, std, collections=("batch_stats",)) -> Callable:
    """``train_apply_fn`` of a flax module whose ``__call__`` takes ``train=True``.

    The input is normalised as in ``robustjax.models.wrap``.
    """
    from robustjax.types import normalize

    def train_apply_fn(variables, x):
        return module.apply(variables, normalize(x, mean, std), train=True,
                            mutable=list(collections))

    return train_apply_fn
