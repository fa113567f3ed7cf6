"""Experiment files, their errors, run expansion and the jittable augmentation."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import experiments as E
from robustjax.experiments.parse import from_dict

BASE = """
[experiment]
name = "t"
seeds = [0, 1]
[model]
name = "cnn"
channels = [4, 8]
[data]
dataset = "digits"
[recipe]
loss = "pgd_at"
weight_decay = 5e-4
crop = 2
ema = true
[components.adversarial_training]
off = { loss = "standard" }
alternatives = { trades = { loss = "trades", beta = 6.0 }, mart = { loss = "mart" } }
[components.weight_decay]
off = { weight_decay = 0.0 }
[components.random_crop]
off = { crop = 0 }
[components.ema]
off = { ema = false }
[evaluation]
metrics = ["clean", "pgd", "corruption"]
corruptions = ["gaussian_noise"]
severities = [1, 5]
"""


def _load(tmp_path, text=BASE, name="e.toml"):
    path = tmp_path / name
    path.write_text(text)
    return E.load(path)


def test_toml_gives_the_dataclass(tmp_path):
    exp = _load(tmp_path)
    assert exp.recipe == E.Recipe(loss="pgd_at", weight_decay=5e-4, crop=2, ema=True)
    assert exp.model == E.ModelConfig("cnn", {"channels": (4, 8)})
    assert exp.profile.metrics == ("clean", "pgd", "corruption")
    assert exp.profile.severities == (1, 5)
    assert [c.name for c in exp.components] == ["adversarial_training", "weight_decay",
                                                "random_crop", "ema"]
    assert exp.components[0].alternatives["trades"] == {"loss": "trades", "beta": 6.0}
    assert from_dict(E.to_dict(exp)) == exp  # the JSON form round-trips


def test_shipped_example_loads():
    exp = E.load(E.example_path("mnist5k_pgd_at"))
    assert exp.data.dataset == "mnist5k" and exp.recipe.loss == "pgd_at"
    assert {c.name for c in exp.components} == {"adversarial_training", "weight_decay",
                                                "random_crop"}
    assert [v.name for v in E.variants(exp)] == ["full", "-adversarial_training",
                                                 "-weight_decay", "-random_crop"]


@pytest.mark.parametrize("old, new, message", [
    ("[data]", "[datas]", "unknown key(s) in [top level"),
    ("crop = 2\n", "crop = 2\nlearning_rate = 1\n", "unknown key(s) in [recipe]: learning_rate"),
    ('"corruption"]', '"corruption", "autoatack"]', "unknown metric 'autoatack'; valid: clean"),
    ('name = "cnn"', 'name = "cnnn"', "unknown model 'cnnn'; valid:"),
    ('dataset = "digits"', 'dataset = "cifar11"', "unknown dataset 'cifar11'; valid"),
    ('{ crop = 0 }', '{ cropping = 0 }', "unknown recipe field(s) cropping; valid: loss"),
    ('off = { ema = false }', 'off = { ema = true }', "does not exist in the base recipe"),
    ('loss = "mart"', 'loss = "fgsm"', "unknown loss 'fgsm'; valid: standard, pgd_at"),
    ('"gaussian_noise"]', '"gaussian_noize"]', "unknown corruption 'gaussian_noize'"),
    ('seeds = [0, 1]', 'seeds = [0, 0]', "duplicate seeds"),
    ('off = { weight_decay = 0.0 }', 'offf = { weight_decay = 0.0 }',
     "unknown key(s) in [components.weight_decay]: offf"),
    ('crop = 2\n', 'crop = 2.5\n', "recipe.crop must be an int"),
    ('name = "t"', 'name = "t t"', "experiment.name must be"),
    ('[components.ema]\noff = { ema = false }', '[components.ema]', "neither 'off' nor"),
])
def test_file_errors_say_what_is_wrong(tmp_path, old, new, message):
    assert old in BASE
    with pytest.raises((ValueError, TypeError)) as err:
        _load(tmp_path, BASE.replace(old, new, 1))
    assert message in str(err.value)
    assert "e.toml" in str(err.value)  # the error names the file


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="is not valid TOML"):
        _load(tmp_path, "[experiment\nname=1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        E.load(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match=r"\[experiment\] needs a name"):
        _load(tmp_path, "[recipe]\nepochs = 1\n")


def test_python_form_errors():
    with pytest.raises(ValueError, match="duplicate component name"):
        E.Experiment("x", components=(E.Component("a", off={"crop": 1}),
                                      E.Component("a", off={"crop": 2})))
    with pytest.raises(ValueError, match="'off' is reserved"):
        E.Component("a", alternatives={"off": {"crop": 1}})


def test_leave_one_out_expansion(tmp_path):
    exp = _load(tmp_path)
    vs = E.variants(exp)
    assert [v.name for v in vs] == ["full", "-adversarial_training",
                                    "adversarial_training=trades", "adversarial_training=mart",
                                    "-weight_decay", "-random_crop", "-ema"]
    by = {v.name: v.recipe for v in vs}
    r = exp.recipe
    assert by["full"] == r
    assert by["-adversarial_training"] == dataclasses.replace(r, loss="standard")
    assert by["adversarial_training=trades"] == dataclasses.replace(r, loss="trades", beta=6.0)
    assert by["-weight_decay"] == dataclasses.replace(r, weight_decay=0.0)
    assert by["-random_crop"] == dataclasses.replace(r, crop=0)
    assert by["-ema"] == dataclasses.replace(r, ema=False)
    runs = E.expand(exp)
    assert len(runs) == len(vs) * 2 and len({run.id for run in runs}) == len(runs)
    assert [(run.variant.name, run.seed) for run in runs[:3]] == [
        ("full", 0), ("full", 1), ("-adversarial_training", 0)]


def test_grid_expansion(tmp_path):
    exp = _load(tmp_path, BASE.replace('seeds = [0, 1]', 'seeds = [0, 1]\ngrid = true'))
    vs = E.variants(exp)
    # (on, off, trades, mart) x (on, off)^3 combinations, each once
    assert len(vs) == 4 * 2 ** 3 and len({v.name for v in vs}) == len(vs)
    choices = {tuple(s for _, s in v.choices) for v in vs}
    assert choices == set(itertools.product(["on", "off", "trades", "mart"], *[["on", "off"]] * 3))
    v = next(v for v in vs if v.name == "adversarial_training=mart,-random_crop,-ema")
    assert v.recipe == dataclasses.replace(exp.recipe, loss="mart", crop=0, ema=False)
    clash = BASE.replace('seeds = [0, 1]', 'seeds = [0, 1]\ngrid = true').replace(
        '{ ema = false }', '{ ema = false, crop = 1 }')
    with pytest.raises(ValueError, match="both set recipe.crop"):
        E.variants(_load(tmp_path, clash))


def test_augmentation_is_a_zero_filled_shift_or_flip():
    x = jax.random.uniform(jax.random.PRNGKey(0), (16, 6, 5, 2))
    key = jax.random.PRNGKey(1)
    np.testing.assert_array_equal(E.random_crop_flip(key, x, 0, 0), x)
    pad = 2
    out = np.asarray(jax.jit(E.random_crop_flip)(key, x, jnp.float32(pad), jnp.float32(1)))
    padded = np.pad(np.asarray(x), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    flips = 0
    for i in range(len(x)):
        windows = [padded[i, pad + dy:pad + dy + 6, pad + dx:pad + dx + 5]
                   for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)]
        plain = any(np.array_equal(out[i], w) for w in windows)
        flipped = any(np.array_equal(out[i], w[:, ::-1]) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 0 < flips < len(x)
    # under vmap with per-run crop sizes, crop 0 is the identity
    runs = jax.vmap(E.random_crop_flip, in_axes=(None, None, 0, 0))(
        key, x, jnp.array([0.0, 2.0]), jnp.array([0.0, 0.0]))
    np.testing.assert_array_equal(runs[0], x)
    assert not np.array_equal(runs[1], x)


def test_model_components_in_toml(tmp_path):
    exp = _load(tmp_path, BASE + '[components.width]\n'
                'alternatives = { narrow = { model = { channels = [2, 4] } } }\n')
    v = next(v for v in E.variants(exp) if v.name == "width=narrow")
    assert v.model_options == (("channels", (2, 4)),) and v.recipe == exp.recipe
    assert E.variants(exp)[0].model_options == (("channels", (4, 8)),)
    with pytest.raises(TypeError, match="'model' must be a non-empty table"):
        _load(tmp_path, BASE + '[components.width]\noff = { model = 3 }\n')
