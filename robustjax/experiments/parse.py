"""The TOML form of an ``Experiment`` (read with the standard library's ``tomllib``).

Layout (every table but ``[experiment]`` is optional; a missing key takes the dataclass
default)::

    [experiment]
    name = "mnist5k_pgd_at"
    seeds = [0, 1]
    grid = false                  # true: also every combination of component settings

    [model]                       # robustjax.models.create(name, **other keys)
    name = "cnn"
    channels = [32, 64]

    [data]
    dataset = "mnist5k"
    train_examples = 4000         # optional first-N subsets
    test_examples = 1000

    [recipe]                      # robustjax.experiments.Recipe fields
    loss = "pgd_at"
    weight_decay = 5e-4
    crop = 2

    [components.weight_decay]     # a technique of the recipe and how to remove it
    off = { weight_decay = 0.0 }

    [components.adversarial_training]
    off = { loss = "standard" }
    alternatives = { trades = { loss = "trades", beta = 1.0 } }

    [evaluation]                  # robustjax.experiments.Profile fields
    metrics = ["clean", "pgd", "corruption", "spatial", "ibp"]
    eps = 0.3

Unknown tables, keys, models, datasets, metrics and recipe fields are errors that list the
valid names.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tomllib
from typing import Any, Mapping

from robustjax.experiments.spec import (Component, DataConfig, Experiment, ModelConfig,
                                        Profile, Recipe)

TABLES = ("experiment", "model", "data", "recipe", "components", "evaluation")


def _keys(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _check_keys(table: Mapping, valid, where: str):
    if not isinstance(table, Mapping):
        raise TypeError(f"[{where}] must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) in [{where}]: {', '.join(unknown)}; valid: "
                         f"{', '.join(valid)}")


def _tuples(d: Mapping) -> dict:
    """TOML arrays -> tuples (dataclass fields and model overrides are tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _variant(settings):
    """A component's settings with model-override arrays as tuples."""
    if isinstance(settings, Mapping) and isinstance(settings.get("model"), Mapping):
        return {**settings, "model": _tuples(settings["model"])}
    return settings


def from_dict(doc: Mapping[str, Any], source: str = "experiment") -> Experiment:
    """Build an ``Experiment`` from the parsed TOML document (a nested dict)."""
    _check_keys(doc, TABLES, f"top level of {source}")
    if "experiment" not in doc or "name" not in doc["experiment"]:
        raise ValueError(f"{source}: [experiment] needs a name (name = \"my_ablation\")")
    top = doc["experiment"]
    _check_keys(top, ("name", "seeds", "grid"), "experiment")
    model = dict(doc.get("model", {}))
    if not isinstance(model, dict):
        raise TypeError("[model] must be a table")
    model_cfg = ModelConfig(model.pop("name", "cnn"), _tuples(model))
    data = doc.get("data", {})
    _check_keys(data, _keys(DataConfig), "data")
    recipe = doc.get("recipe", {})
    _check_keys(recipe, _keys(Recipe), "recipe")
    evaluation = doc.get("evaluation", {})
    _check_keys(evaluation, _keys(Profile), "evaluation")
    components = []
    comps = doc.get("components", {})
    if not isinstance(comps, Mapping):
        raise TypeError("[components] must hold one table per component")
    for name, table in comps.items():
        _check_keys(table, ("off", "alternatives"), f"components.{name}")
        alternatives = table.get("alternatives", {})
        if not isinstance(alternatives, Mapping):
            raise TypeError(f"[components.{name}] alternatives must be a table of named "
                            f"settings, got {alternatives!r}")
        components.append(Component(name, _variant(table.get("off")),
                                    {k: _variant(v) for k, v in alternatives.items()}))
    return Experiment(name=top["name"], model=model_cfg, data=DataConfig(**data),
                      recipe=Recipe(**recipe), components=tuple(components),
                      profile=Profile(**_tuples(evaluation)),
                      seeds=tuple(top.get("seeds", (0,))), grid=bool(top.get("grid", False)))


def load(path) -> Experiment:
    """Read an experiment TOML file; errors name the file and what is wrong in it."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"experiment file {path} does not exist (shipped examples: "
                                f"robustjax.experiments.example_path('mnist5k_pgd_at'))")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None
    try:
        return from_dict(doc, str(path))
    except (TypeError, ValueError) as e:
        raise type(e)(f"{path}: {e}") from None


def to_dict(exp: Experiment) -> dict:
    """A JSON-ready dict of the experiment (the inverse of ``from_dict`` up to tuples)."""
    def plain(v):
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return {
        "experiment": {"name": exp.name, "seeds": list(exp.seeds), "grid": exp.grid},
        "model": {"name": exp.model.name, **plain(exp.model.options)},
        "data": plain(dataclasses.asdict(exp.data)),
        "recipe": plain(dataclasses.asdict(exp.recipe)),
        "components": {c.name: {**({"off": plain(c.off)} if c.off is not None else {}),
                                **({"alternatives": plain(c.alternatives)}
                                   if c.alternatives else {})}
                       for c in exp.components},
        "evaluation": plain(dataclasses.asdict(exp.profile)),
    }
