"""Declarative ablation studies: expand the runs, train them side by side, resume, tabulate.

* ``spec``: ``Experiment``, ``Recipe``, ``Component``, ``ModelConfig``, ``DataConfig``,
  ``Profile`` (frozen dataclasses, validated); ``parse``: the TOML form (``load``);
* ``expand``: full recipe, leave-one-out, optional grid, x seeds -> ``Run``s;
* ``augment``: a pure jittable random crop / flip;
* ``vectorised``: runs that share shapes trained in one vmapped program; ``train_reference``
  is the same run through ``robustjax.train.fit``;
* ``evaluate``: clean, PGD/APGD, corruption, spatial and certified accuracy of one run;
* ``tabulate``: mean +- std over seeds, the difference from the full recipe, markdown, plot;
* ``runner``: ``ablate(experiment, out=...)``, resumable.
"""

from robustjax.experiments.spec import (  # noqa: F401
    LOSSES, METRICS, RECIPE_FIELDS, Component, DataConfig, Experiment, ModelConfig, Profile,
    Recipe)
from robustjax.experiments.parse import from_dict, load, to_dict  # noqa: F401
from robustjax.experiments.expand import Run, Variant, expand, variants  # noqa: F401
from robustjax.experiments.augment import random_crop_flip  # noqa: F401
from robustjax.experiments.vectorised import (  # noqa: F401
    group_runs, train_group, train_reference)
from robustjax.experiments.runner import ablate  # noqa: F401,E402
from robustjax.experiments.examples import EXAMPLES, example_path  # noqa: F401,E402
