"""The declarative experiment: a frozen dataclass for every part, validated on construction.

An ``Experiment`` names a model, a dataset, a base ``Recipe`` (the full training recipe with
every technique on), its ``Component``s (each one a technique that can be removed, ``off``, or
swapped for ``alternatives``), the evaluation ``Profile`` and the seeds. The survey's §5.2
ablation (Gupta & Passerone): train the full recipe, then remove each component in turn and
compare every variant on clean, corruption, transformation and adversarial accuracy::

    exp = Experiment(
        name="pgd_at_ablation",
        model=ModelConfig("cnn", {"channels": (32, 64), "hidden": 128}),
        data=DataConfig("mnist5k"),
        recipe=Recipe(loss="pgd_at", weight_decay=5e-4, crop=2, eps=0.3, epochs=5),
        components=(Component("adversarial_training", off={"loss": "standard"},
                              alternatives={"trades": {"loss": "trades", "beta": 1.0}}),
                    Component("weight_decay", off={"weight_decay": 0.0}),
                    Component("random_crop", off={"crop": 0})),
        profile=Profile(metrics=("clean", "pgd", "corruption")),
        seeds=(0, 1))

The same experiment as a TOML file is read by ``robustjax.experiments.parse.load``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional

LOSSES = ("standard", "pgd_at", "trades", "mart")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
METRICS = ("clean", "pgd", "apgd", "autoattack", "corruption", "spatial", "ibp", "crown")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _choice(value, valid, what):
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _check_name(name, what):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} must be a non-empty name of letters, digits, '_', '.', '-', "
                         f"got {name!r}")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One training recipe; every field can be changed by a component.

    Fields that become per-run arrays in vectorised training (``robustjax.experiments.
    vectorised``): ``lr``, ``weight_decay``, ``eps``, ``step_size``, ``beta``, ``eps_ramp``,
    ``crop``, ``flip``, ``ema`` and ``loss == "standard"`` (an adversarial-loss weight of 0).
    The others are static: runs that differ in them are trained one group after another.

    * ``loss``: ``standard`` (clean CE), ``pgd_at`` (Madry et al. 2018), ``trades`` (Zhang et
      al. 2019, ``beta``), ``mart`` (Wang et al. 2020, ``beta``); the attack inside the loss is
      ``attack_steps`` Linf PGD steps of ``step_size`` in an ``eps`` ball (pixel units).
    * ``eps_ramp``: eps is 0 for ``ramp_warmup_epochs``, then rises linearly over
      ``ramp_epochs`` (``robustjax.train.schedules.eps_ramp``).
    * ``optimizer``: ``adam`` or ``sgd`` (``momentum``); ``lr`` with a ``cosine`` decay over the
      whole run or ``constant``; ``weight_decay`` is L2 added to the gradient
      (``optax.add_decayed_weights`` before the optimiser).
    * ``crop``: random-crop padding in pixels (0 = off), ``flip``: random horizontal flips
      (``robustjax.experiments.augment``). ``ema``: evaluate an EMA of the weights
      (``ema_decay``, ``robustjax.train.averaging.parameter_ema``).
    """

    loss: str = "pgd_at"
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 2
    batch_size: int = 50
    eps: float = 0.3
    step_size: float = 0.05
    attack_steps: int = 10
    beta: float = 1.0
    eps_ramp: bool = False
    ramp_warmup_epochs: float = 0.0
    ramp_epochs: float = 1.0
    crop: int = 0
    flip: bool = False
    ema: bool = False
    ema_decay: float = 0.99

    def __post_init__(self):
        _choice(self.loss, LOSSES, "loss")
        _choice(self.optimizer, OPTIMIZERS, "optimizer")
        _choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        for name, field in _FIELDS.items():
            value = getattr(self, name)
            if field.type in ("int", int) and (isinstance(value, bool)
                                                or not isinstance(value, int)):
                raise TypeError(f"recipe.{name} must be an int, got {value!r}")
            if field.type in ("bool", bool) and not isinstance(value, bool):
                raise TypeError(f"recipe.{name} must be true or false, got {value!r}")
            if field.type in ("float", float) and (isinstance(value, bool) or
                                                    not isinstance(value, (int, float))):
                raise TypeError(f"recipe.{name} must be a number, got {value!r}")
        for name in ("lr", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"recipe.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "eps", "step_size", "attack_steps", "beta", "crop",
                     "ramp_warmup_epochs", "ramp_epochs", "momentum"):
            if getattr(self, name) < 0:
                raise ValueError(f"recipe.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"recipe.ema_decay must be in [0, 1), got {self.ema_decay!r}")


_FIELDS = {f.name: f for f in dataclasses.fields(Recipe)}
RECIPE_FIELDS = tuple(_FIELDS)


@dataclasses.dataclass(frozen=True)
class Component:
    """A named technique of the base recipe: ``off`` removes it, ``alternatives`` swap it.

    ``off`` and every alternative are mappings from recipe field to the value it takes in that
    variant (``{"weight_decay": 0.0}``); at least one of the two must be given. The key
    ``"model"`` holds model overrides merged into the experiment's ``ModelConfig.options``
    (``{"model": {"channels": (16, 32)}}``): runs whose parameter shapes differ are trained
    one group after another.
    """

    name: str
    off: Optional[Mapping[str, Any]] = None
    alternatives: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _check_name(self.name, "a component name")
        if self.off is None and not self.alternatives:
            raise ValueError(f"component {self.name!r} has neither 'off' nor 'alternatives': "
                             f"give the recipe settings that remove or replace it")
        variants = ({"off": self.off} if self.off is not None else {})
        for alt in self.alternatives:
            _check_name(alt, f"alternative of component {self.name!r}")
            if alt == "off":
                raise ValueError(f"component {self.name!r}: 'off' is reserved, rename the "
                                 f"alternative")
        variants.update(self.alternatives)
        for variant, overrides in variants.items():
            if not isinstance(overrides, Mapping) or not overrides:
                raise TypeError(f"component {self.name!r}, {variant!r}: expected a non-empty "
                                f"table of recipe settings, got {overrides!r}")
            unknown = sorted(set(overrides) - set(RECIPE_FIELDS) - {"model"})
            if unknown:
                raise ValueError(f"component {self.name!r}, {variant!r}: unknown recipe "
                                 f"field(s) {', '.join(unknown)}; valid: "
                                 f"{', '.join(RECIPE_FIELDS)}, or model (model overrides)")
            if "model" in overrides and (not isinstance(overrides["model"], Mapping)
                                         or not overrides["model"]):
                raise TypeError(f"component {self.name!r}, {variant!r}: 'model' must be a "
                                f"non-empty table of model overrides, got "
                                f"{overrides['model']!r}")

    def variants(self) -> dict[str, Mapping[str, Any]]:
        """``{"off": ..., alternative: ...}`` in declaration order."""
        out = {"off": self.off} if self.off is not None else {}
        out.update(self.alternatives)
        return out


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A ``robustjax.models.create`` name and its module overrides (``channels=(8, 16)``)."""

    name: str = "cnn"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        from robustjax.models import MODELS

        if self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}; valid: {', '.join(sorted(MODELS))}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """An embedded dataset (``robustjax.data.EMBEDDED``) and optional first-N subsets."""

    dataset: str = "mnist5k"
    train_examples: Optional[int] = None
    test_examples: Optional[int] = None

    def __post_init__(self):
        from robustjax.data import EMBEDDED

        if self.dataset not in EMBEDDED:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid (embedded): "
                             f"{', '.join(EMBEDDED)}")
        for name in ("train_examples", "test_examples"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"data.{name} must be a positive int, got {v!r}")


@dataclasses.dataclass(frozen=True)
class Profile:
    """The evaluation profile: which metrics, at which strengths.

    * ``clean``: accuracy; ``pgd``: accuracy under Linf PGD (``pgd_steps``, ``pgd_step_size``
      default ``2.5 eps / steps``, random start) at ``eps``; ``apgd``: under APGD-CE
      (``apgd_steps``) or the PGD attack, whichever succeeds (a per-example worst case);
    * ``autoattack``: robust accuracy under AutoAttack (Croce & Hein 2020;
      ``robustjax.attacks.autoattack``, Linf at ``eps``, ``autoattack_version`` "standard",
      "plus" or "rand", the reference's settings);
    * ``corruption``: mean corruption error over ``corruptions`` x ``severities``
      (``robustjax.corruptions``; unnormalised, there is no AlexNet baseline on MNIST) and the
      retention rate (survey eq. 4: corrupted accuracy / clean accuracy); the corrupted images
      are rounded to 8 bits as ImageNet-C stores them unless ``quantize_corruptions`` is false;
    * ``spatial``: mean accuracy over the ``spatial`` distortions x ``spatial_severities``
      (``robustjax.corruptions.distort``);
    * ``ibp`` / ``crown``: verified accuracy at ``certify_eps`` (``robustjax.certify``).
    """

    metrics: tuple[str, ...] = ("clean", "pgd")
    eps: float = 0.3
    pgd_steps: int = 40
    pgd_step_size: Optional[float] = None
    apgd_steps: int = 100
    autoattack_version: str = "standard"
    corruptions: tuple[str, ...] = ("gaussian_noise", "shot_noise", "impulse_noise",
                                    "defocus_blur", "brightness", "contrast")
    severities: tuple[int, ...] = (1, 3, 5)
    quantize_corruptions: bool = True
    spatial: tuple[str, ...] = ("rotate", "translate")
    spatial_severities: tuple[int, ...] = (1, 3, 5)
    certify_eps: float = 0.1
    batch_size: int = 500

    def __post_init__(self):
        from robustjax.corruptions import CORRUPTIONS, SPATIAL_SEVERITIES

        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not self.metrics:
            raise ValueError(f"evaluation.metrics is empty; choose from {', '.join(METRICS)}")
        for m in self.metrics:
            _choice(m, METRICS, "metric")
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"evaluation.metrics lists a metric twice: {self.metrics}")
        _choice(self.autoattack_version, ("standard", "plus", "rand"), "autoattack_version")
        for c in self.corruptions:
            _choice(c, tuple(CORRUPTIONS), "corruption")
        for s in self.spatial:
            _choice(s, tuple(SPATIAL_SEVERITIES), "spatial distortion")
        for name in ("severities", "spatial_severities"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            for s in getattr(self, name):
                if s not in (1, 2, 3, 4, 5):
                    raise ValueError(f"evaluation.{name} must be ints in 1..5, got {s!r}")
        object.__setattr__(self, "corruptions", tuple(self.corruptions))
        object.__setattr__(self, "spatial", tuple(self.spatial))
        if "corruption" in self.metrics and not (self.corruptions and self.severities):
            raise ValueError("metric 'corruption' needs evaluation.corruptions and severities")
        if "spatial" in self.metrics and not (self.spatial and self.spatial_severities):
            raise ValueError("metric 'spatial' needs evaluation.spatial and spatial_severities")
        if self.eps < 0 or self.certify_eps < 0:
            raise ValueError("evaluation.eps and certify_eps must be >= 0")
        if self.pgd_steps < 1 or self.apgd_steps < 1 or self.batch_size < 1:
            raise ValueError("evaluation.pgd_steps, apgd_steps and batch_size must be >= 1")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A whole ablation study (see the module docstring). ``grid=True`` adds every
    combination of component settings to the leave-one-out runs."""

    name: str
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    recipe: Recipe = Recipe()
    components: tuple[Component, ...] = ()
    profile: Profile = Profile()
    seeds: tuple[int, ...] = (0,)
    grid: bool = False

    def __post_init__(self):
        _check_name(self.name, "experiment.name")
        object.__setattr__(self, "components", tuple(self.components))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not self.seeds:
            raise ValueError("experiment.seeds is empty: give at least one seed")
        for s in self.seeds:
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                raise ValueError(f"seeds must be non-negative ints, got {s!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"duplicate seeds: {self.seeds}")
        names = [c.name for c in self.components]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate component name(s): {', '.join(dupes)}")
        base = dataclasses.asdict(self.recipe)
        base_model = dict(self.model.options)
        for c in self.components:
            for variant, overrides in c.variants().items():
                flat = {k: v for k, v in overrides.items() if k != "model"}
                model = dict(overrides.get("model", {}))
                if (all(base[k] == v for k, v in flat.items())
                        and all(k in base_model and base_model[k] == v
                                for k, v in model.items())):
                    raise ValueError(
                        f"component {c.name!r}, {variant!r}: every setting "
                        f"({', '.join(f'{k}={v!r}' for k, v in overrides.items())}) equals "
                        f"the base recipe, so the component does not exist in the base "
                        f"recipe; switch it on in [recipe] or fix the component")
                try:
                    dataclasses.replace(self.recipe, **flat)
                except (TypeError, ValueError) as e:
                    raise type(e)(f"component {c.name!r}, {variant!r}: {e}") from None
