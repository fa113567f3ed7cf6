"""The corruptions report section in quick mode on a tiny random CNN, and the prediction panel."""

import jax
import jax.numpy as jnp
import numpy as np

from robustjax.models import registry
from robustjax.report import corruptions as report
from robustjax.report.base import ReportContext


def test_section_quick_on_tiny_cnn(tmp_path):
    model = registry.create("cnn", num_classes=10, input_shape=(28, 28, 1))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(20, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 20).astype(np.int32)
    ctx = ReportContext(model=model, x=x, y=y, key=jax.random.key(0), out_dir=tmp_path, quick=True)
    sec = report.section(ctx)
    d = sec.data
    assert sec.key == "corruptions" and d["examples"] == 16
    assert set(d["corruption_errors"]) == set(report.QUICK_CORRUPTIONS)
    errs = np.array(list(d["corruption_errors"].values()))
    assert errs.shape == (5, 3) and (0 <= errs).all() and (errs <= 1).all()
    assert np.isclose(d["mean_corruption_error"], errs.mean())
    assert "mCE" not in d and "no AlexNet normalisers" in sec.markdown
    assert set(d["spatial_errors"]) == {"rotate", "translate", "scale", "shear", "tilt"}
    assert (tmp_path / "corruptions_heatmap.png").stat().st_size > 1000


def test_prediction_panel_any_model(tmp_path):
    model = registry.create("cnn", num_classes=10, input_shape=(32, 32, 3))
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 32, 32, 3)), jnp.float32)
    names = [f"class{i}" for i in range(10)]
    table = report.prediction_panel(model, x, names, jax.random.key(0), tmp_path / "p.png",
                                    corruption=("contrast", 3), extra_columns={"inverted": 1 - x},
                                    scale_pixels=True)
    assert list(table) == ["clean", "contrast s3", "rotate s3", "inverted"]
    probs = [p for _, p in table["clean"][0]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert (tmp_path / "p.png").exists()


def _grid_detector():
    """A 'model' that says class 0 when every pixel is a multiple of 1/255 (an 8-bit image)."""
    from robustjax.types import Model, ModelSpec

    def apply_fn(params, x):
        levels = x * 255.0
        off_grid = jnp.mean(jnp.abs(levels - jnp.round(levels)) > 1e-3, axis=(1, 2, 3))
        return jnp.stack([0.5 - off_grid, off_grid - 0.5], -1)

    return Model(apply_fn, {}, ModelSpec("grid", (16, 16, 3), 2))


def test_section_rounds_corrupted_images_to_8bit_unless_told_not_to(tmp_path):
    model = _grid_detector()
    x = (np.random.default_rng(1).integers(0, 256, (16, 16, 16, 3)) / 255.0).astype(np.float32)
    y = np.zeros(16, np.int32)
    for quantize in (True, False):
        ctx = ReportContext(model=model, x=x, y=y, key=jax.random.key(0), out_dir=tmp_path,
                            quick=True, quantize_corruptions=quantize)
        d = report.section(ctx).data
        assert d["quantize_8bit"] is quantize
        errors = np.array(list(d["corruption_errors"].values()))
        if quantize:  # every corrupted image on the 8-bit grid
            assert (errors == 0).all(), d["corruption_errors"]
        else:  # unrounded: off the grid (but defocus s1, whose 16-px kernel is the identity)
            assert errors.mean() > 0.9 and (errors[:, 1:] == 1).all(), d["corruption_errors"]
