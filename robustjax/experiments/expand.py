"""Expanding an experiment into runs: the full recipe, leave-one-out, the optional grid, x seeds.

Variant names: ``full`` (every component on); ``-<component>`` (that component off);
``<component>=<alternative>`` (swapped); grid variants join their non-default settings with
``,`` (``-weight_decay,adversarial_training=trades``). A run is one variant at one seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any, Mapping

from robustjax.experiments.spec import Experiment, Recipe


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named recipe: the base recipe with some components off or swapped.

    ``choices``: ``((component, "on" | "off" | alternative), ...)`` for every component;
    ``model_options``: the model overrides of this variant (sorted ``(key, value)`` pairs).
    """

    name: str
    recipe: Recipe
    choices: tuple[tuple[str, str], ...]
    model_options: tuple = ()


@dataclasses.dataclass(frozen=True)
class Run:
    """One variant trained from one seed (init key, data order and attack keys)."""

    variant: Variant
    seed: int

    @property
    def id(self) -> str:
        """A file-name-safe identifier, unique within an experiment."""
        parts = [f"no_{p[1:]}" if p.startswith("-") else p.replace("=", "~")
                 for p in self.variant.name.split(",")]
        return f"{'+'.join(parts)}__seed{self.seed}"


def _apply(exp: Experiment, choice: Mapping[str, str]) -> tuple[Recipe, tuple]:
    overrides: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for c in exp.components:
        setting = choice.get(c.name, "on")
        if setting == "on":
            continue
        settings = dict(c.variants()[setting])
        model = settings.pop("model", {})
        settings.update({f"model.{k}": v for k, v in model.items()})
        for field, value in settings.items():
            if field in overrides and overrides[field] != value:
                raise ValueError(f"components {owner[field]!r} and {c.name!r} both set recipe."
                                 f"{field} (to {overrides[field]!r} and {value!r}) in one "
                                 f"grid run; give them separate fields or drop grid = true")
            overrides[field], owner[field] = value, c.name
    model = dict(exp.model.options)
    model.update({k[6:]: v for k, v in overrides.items() if k.startswith("model.")})
    recipe = dataclasses.replace(exp.recipe, **{k: v for k, v in overrides.items()
                                                if not k.startswith("model.")})
    return recipe, tuple(sorted(model.items()))


def _name(choice: Mapping[str, str]) -> str:
    parts = [f"-{c}" if s == "off" else f"{c}={s}" for c, s in choice.items() if s != "on"]
    return ",".join(parts) if parts else "full"


def variants(exp: Experiment) -> list[Variant]:
    """The full recipe, then leave-one-out / swap variants, then (``grid``) the rest."""
    names = [c.name for c in exp.components]
    choices = [{n: "on" for n in names}]
    for c in exp.components:
        for setting in c.variants():
            choices.append({**choices[0], c.name: setting})
    if exp.grid:
        options = [["on", *c.variants()] for c in exp.components]
        for combo in itertools.product(*options):
            choice = dict(zip(names, combo))
            if choice not in choices:
                choices.append(choice)
    out = [Variant(_name(ch), *_apply(exp, ch)[:1], tuple(ch.items()), _apply(exp, ch)[1])
           for ch in choices]
    seen: dict[str, str] = {}
    for v in out:
        if v.name in seen:
            raise ValueError(f"duplicate run name {v.name!r}; rename a component or an "
                             f"alternative")
        seen[v.name] = v.name
    return out


def expand(exp: Experiment) -> list[Run]:
    """Every variant at every seed, variant-major (``full`` seeds first)."""
    return [Run(v, s) for v in variants(exp) for s in exp.seeds]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_hash(exp: Experiment, run: Run) -> str:
    """Hash of everything that decides a run's trained parameters."""
    return _digest({"model": [exp.model.name, dict(run.variant.model_options)],
                    "data": dataclasses.asdict(exp.data),
                    "recipe": dataclasses.asdict(run.variant.recipe), "seed": run.seed})


def eval_hash(exp: Experiment) -> str:
    """Hash of the evaluation profile (a changed profile re-evaluates the saved params)."""
    return _digest(dataclasses.asdict(exp.profile))
