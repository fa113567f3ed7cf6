"""The report on any model, checkpoint and dataset: ``--model module:function`` (a plain flax
model in a temporary module), ``--model NAME --checkpoint FILE``, non-default datasets,
``--resize``, sections that adapt, and the error cases."""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax import data
from robustjax.cli import main
from robustjax.models import create, loading
from robustjax.report import certify as certify_section
from robustjax.report import corruptions as corruptions_section
from robustjax.report import inputs
from robustjax.report.base import ReportContext
from robustjax.types import Model, ModelSpec

USER_MODULE = textwrap.dedent('''
    """A user's own model, written with plain flax (no robustjax layers)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from robustjax import checkpoint as ckpt
    from robustjax.models import wrap
    from robustjax.types import Model, ModelSpec


    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, features=False):
            x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x))
            x = x.reshape((x.shape[0], -1))
            return x if features else nn.Dense(10)(x)


    SPEC = ModelSpec("user_net", (8, 8, 1), 10, source="random init (seed 0)")


    def build(checkpoint=None):
        module = Net()
        variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
        if checkpoint is not None:
            variables, _, _ = ckpt.load(checkpoint)
        return wrap(module, variables, SPEC)


    def not_a_model():
        return {"apply_fn": None}


    NOT_CALLABLE = 3
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    path = tmp_path / "user_models.py"
    path.write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_user_factory_on_a_non_default_dataset(tmp_path, user_module):
    out = tmp_path / "rep"
    assert main(["report", "--model", "user_models:build", "--dataset", "digits", "--quick",
                 "--sections", "clean", "--out", str(out)]) == 0
    rep = _report(out)
    clean = rep["sections"]["clean"]
    assert rep["dataset"] == "digits" and rep["model"]["model"] == "user_models:build"
    assert clean["model"] == "user_net" and rep["status"] == "complete"
    # the report's number is the model's accuracy on those digits, computed here independently
    model = inputs.model_from_factory("user_models:build")
    x, y = data.load("digits", "test")
    pred = np.argmax(np.asarray(model.apply_fn(model.params, jnp.asarray(x[:64]))), -1)
    assert clean["clean_accuracy"] == pytest.approx(float(np.mean(pred == y[:64])))
    assert clean["examples"] == 64
    # the file form of the same factory gives the same model identity (same weights)
    _, ident, _ = inputs.resolve_model(f"{user_module}:build")
    assert ident["params"] == rep["model"]["params"]


def test_checkpoint_files_for_a_registry_model_and_a_factory(tmp_path, user_module):
    # a registry architecture with reduced widths on 8x8 digits, saved as a checkpoint
    model = create("cnn", input_shape=(8, 8, 1), channels=(4, 8), hidden=16,
                   key=jax.random.PRNGKey(3))
    ckpt = tmp_path / "cnn_digits.npz"
    loading.save_params(ckpt, "cnn", model.params, model.spec,
                        overrides={"channels": [4, 8], "hidden": 16})
    out = tmp_path / "rep"
    assert main(["report", "--model", "cnn", "--checkpoint", str(ckpt), "--dataset", "digits",
                 "--examples", "40", "--sections", "clean", "--out", str(out)]) == 0
    rep = _report(out)
    x, y = data.load("digits", "test")
    pred = np.argmax(np.asarray(model.apply_fn(model.params, jnp.asarray(x[:40]))), -1)
    assert rep["sections"]["clean"]["clean_accuracy"] == pytest.approx(np.mean(pred == y[:40]))
    assert rep["model"]["checkpoint"] is not None and rep["examples"] == 40
    # a factory receives the checkpoint path as its argument
    from robustjax import checkpoint

    factory_model = inputs.model_from_factory("user_models:build")
    other = jax.tree_util.tree_map(lambda a: a + 1.0, factory_model.params)
    path = checkpoint.save(tmp_path / "user.npz", other)
    loaded = inputs.model_from_factory("user_models:build", str(path))
    np.testing.assert_allclose(loaded.params["params"]["Dense_0"]["bias"],
                               factory_model.params["params"]["Dense_0"]["bias"] + 1.0)


def test_error_cases(tmp_path, user_module, capsys):
    def fails(args, *needles):
        assert main(["report", "--out", str(tmp_path / "e"), "--sections", "clean",
                     "--quick"] + args) == 2
        err = capsys.readouterr().err
        for n in needles:
            assert n in err, (n, err)
        assert not (tmp_path / "e" / "report.json").exists()

    fails(["--model", "no_such_module_xyz:build"], "cannot import module", "PYTHONPATH")
    fails(["--model", "user_models:nope"], "has no function 'nope'", "build")
    fails(["--model", "user_models:not_a_model"], "returned a dict", "robustjax Model")
    fails(["--model", "user_models:NOT_CALLABLE"], "not a function")
    fails(["--model", f"{tmp_path / 'missing.py'}:build"], "no file")
    fails(["--model", "user_models:"], "module:function")
    fails(["--model", "no_such_arch"], "unknown model", "module:function")
    fails(["--checkpoint", str(user_module)], "--checkpoint needs --model")
    fails(["--model", "cnn", "--checkpoint", str(tmp_path / "none.npz")], "no such file")
    # a dataset the model cannot take: wrong size and channels -> suggests --resize
    fails(["--model", "user_models:build", "--dataset", "mnist5k"], "(28, 28, 1)", "(8, 8, 1)",
          "--resize")
    fails(["--model", "user_models:build", "--dataset", "natural"], "(224, 224, 3)",
          "--resize", "convert the channels")
    # resized, natural photos have ImageNet labels the 10-class model does not have
    fails(["--model", "user_models:build", "--dataset", "natural", "--resize"],
          "labels in [281, 985]", "10 classes")
    with pytest.raises(SystemExit):
        main(["report", "--eps", "0.1,x"])
    assert "bad eps 'x'" in capsys.readouterr().err


def test_resize_fits_gray_data_to_the_model(tmp_path, user_module):
    out = tmp_path / "rep"
    assert main(["report", "--model", "user_models:build", "--dataset", "mnist5k", "--resize",
                 "--examples", "8", "--sections", "clean", "--out", str(out)]) == 0
    rep = _report(out)
    assert "28x28x1 to 8x8x1" in rep["data_note"] and rep["examples"] == 8
    spec = ModelSpec("rgb", (16, 16, 3), 10)
    x = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)
    y = np.zeros(3, np.int32)
    xr, _, note = inputs.fit_data(x, y, spec, resize=True)
    assert xr.shape == (3, 16, 16, 3) and "channels converted" in note
    assert 0.0 <= xr.min() and xr.max() <= 1.0
    # gray repeated to RGB, then resized: the channels are equal and the mean is kept
    np.testing.assert_allclose(xr[..., 0], xr[..., 2])
    np.testing.assert_allclose(xr.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)
    # RGB -> one channel is BT.601 luma
    rgb = np.random.default_rng(1).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    gray, _, _ = inputs.fit_data(rgb, np.zeros(2, np.int32), ModelSpec("g", (8, 8, 1), 10),
                                 resize=True)
    np.testing.assert_allclose(gray[..., 0], rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-6)


def test_sections_adapt_to_the_model():
    conv = corruptions_section.convention
    assert conv(ModelSpec("m", (224, 224, 3), 1000)) == "imagenet-c"
    assert conv(ModelSpec("m", (32, 32, 3), 10)) == "cifar10-c"
    assert conv(ModelSpec("m", (64, 64, 3), 10), "cifar10_corrupted") == "cifar10-c"
    assert conv(ModelSpec("m", (28, 28, 1), 10), "mnist5k") == "unnormalised"
    small = Model(lambda p, x: x, {"w": np.zeros((1000, 100), np.float32)},
                  ModelSpec("m", (32, 32, 3), 10))
    assert certify_section.small_model(small) == (True, "")
    big = Model(small.apply_fn, {"w": np.zeros((2001, 1000), np.float32)}, small.spec)
    assert not certify_section.small_model(big)[0]  # 2,001,000 parameters


def test_efficientnet_gets_no_bounds_and_says_why(tmp_path):
    from robustjax.report.zoo import ported_lite0

    model = ported_lite0()[0]
    x, y = data.load("natural")
    ctx = ReportContext(model=model, x=x[:2], y=y[:2], key=jax.random.key(0), out_dir=tmp_path)
    sec = certify_section.section(ctx)
    assert sec.data["skipped"] and "4,6" in sec.markdown and "224x224x3" in sec.markdown
    assert "small models" in sec.markdown


def test_cifar_convention_in_the_corruptions_section(tmp_path, monkeypatch):
    monkeypatch.setattr(corruptions_section, "QUICK_CORRUPTIONS", ("gaussian_noise", "contrast"))
    monkeypatch.setattr(corruptions_section, "QUICK_SEVERITIES", (2, 4))
    model = create("cnn", num_classes=10, input_shape=(32, 32, 3), channels=(4, 8), hidden=16)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 8).astype(np.int32)
    ctx = ReportContext(model=model, x=x, y=y, key=jax.random.key(0), out_dir=tmp_path,
                        quick=True, dataset="cifar10")
    d = corruptions_section.section(ctx)
    assert d.data["convention"] == "cifar10-c" and "mCE" not in d.data
    errs = np.array(list(d.data["corruption_errors"].values()))
    assert d.data["mean_corruption_accuracy"] == pytest.approx(1 - errs.mean())
    assert "CIFAR-10-C convention" in d.markdown
