"""Input-transformation defenses: the Model -> Model wrapper, each transform against an
independent implementation (Pillow, numpy, scipy, skimage), the adaptive versions and the
attacks' warning on non-differentiable models."""

import io
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from attacks_b_models import digits_mlp
from PIL import Image

from robustjax.attacks import PGDConfig, fgsm, pgd
from robustjax.attacks._core import GradientMaskingWarning
from robustjax.defenses import transforms as T
from robustjax.types import Model, ModelSpec

RNG = np.random.default_rng(0)
RGB = RNG.uniform(size=(2, 16, 16, 3)).astype(np.float32)
GREY = RNG.uniform(size=(2, 12, 10, 1)).astype(np.float32)
KEY = jax.random.key(0)


def _photo(size=48):
    """A textured RGB crop (skimage's astronaut), uint8 [1, size, size, 3]."""
    from skimage import data

    return data.astronaut()[100:100 + size, 180:180 + size][None]


@pytest.fixture(scope="module")
def model():
    """The digits MLP as a Model, with an embed_fn (its hidden layer)."""
    apply, params, x, y = digits_mlp(16)

    def embed(p, xb):
        return jax.nn.relu(xb.reshape(xb.shape[0], -1) @ p["w"][0] + p["b"][0])

    spec = ModelSpec("mlp", (8, 8, 1), 10, source="trained on digits")
    return Model(apply, params, spec, embed), x, y


# ----------------------------------------------------------------------------- the wrapper


@pytest.mark.parametrize("name", list(T.TRANSFORMS))
def test_defend_keeps_model_conventions(model, name):
    m, x, _ = model
    t = T.get(name)
    d = T.defend(m, t, key=KEY)
    logits = d.apply_fn(d.params, x)
    assert logits.shape == (x.shape[0], 10) and logits.dtype == jnp.float32
    assert d.embed_fn(d.params, x).shape == (x.shape[0], 32)
    assert dataclasses_equal_but_source(d.spec, m.spec)
    assert t.name in d.spec.source and m.spec.source in d.spec.source
    assert isinstance(d.params, T.DefendedParams) and d.params.params is m.params
    assert d.apply_fn.differentiable is t.differentiable
    # hashable by value: equal transformations give equal (one compiled attack) apply_fns
    assert hash(d.apply_fn) == hash(T.defend(m, T.get(name), key=KEY).apply_fn)
    assert d.apply_fn == T.defend(m, T.get(name), key=KEY).apply_fn
    # the defended logits are the model's logits on the transformed input
    if not t.randomized:
        np.testing.assert_allclose(logits, m.apply_fn(m.params, t(x)), atol=1e-5)


def dataclasses_equal_but_source(a, b):
    import dataclasses

    return dataclasses.replace(a, source=b.source) == b


@pytest.mark.parametrize("name", list(T.TRANSFORMS))
@pytest.mark.parametrize("x", [RGB, GREY], ids=["rgb", "grey"])
def test_transform_output_in_range_same_shape(name, x):
    out = T.get(name)(jnp.asarray(x), KEY)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert float(jnp.min(out)) >= 0.0 and float(jnp.max(out)) <= 1.0
    assert not np.allclose(out, x, atol=1e-4)  # it does transform


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="jpeg_exact.*resize_pad"):
        T.get("jpg")


@pytest.mark.parametrize("name, kwargs, match", [
    ("jpeg", {"quality": 0}, "quality must be an integer in 1..100"),
    ("jpeg_exact", {"quality": 101}, "quality must be an integer in 1..100"),
    ("jpeg", {"rounding": "floor"}, "rounding must be one of"),
    ("bit_depth", {"bits": 0}, "bits must be an integer in 1..16"),
    ("bit_depth", {"bits": 17}, "bits must be an integer in 1..16"),
    ("median", {"size": 0}, "size must be an integer >= 1"),
    ("gaussian", {"sigma": -1.0}, "sigma must be a positive number"),
    ("tv", {"steps": 0}, "steps must be an integer >= 1"),
    ("resize_pad", {"ratio": 0.9}, "ratio .* must be > 1"),
])
def test_bad_parameters_say_what_is_wrong(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        T.get(name, **kwargs)


def test_bad_inputs_say_what_is_wrong(model):
    t = T.get("median")
    with pytest.raises(ValueError, match="NHWC"):
        t(jnp.asarray(RGB[0]))
    with pytest.raises(TypeError, match="floating point"):
        t(jnp.asarray((RGB * 255).astype(np.uint8)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        t(jnp.asarray(RGB * 2))
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\) channels"):
        T.get("jpeg")(jnp.zeros((1, 8, 8, 2)))
    with pytest.raises(ValueError, match="randomized: pass a PRNG key"):
        T.defend(model[0], T.get("resize_pad"))
    with pytest.raises(TypeError, match="get\\('jpeg'"):
        T.defend(model[0], "jpeg")
    with pytest.raises(TypeError, match="DefendedParams"):
        T.defend(model[0], T.get("jpeg")).apply_fn(model[0].params, model[1])


# ------------------------------------------------------------------------------------ JPEG


def _pillow_roundtrip(u8, quality):
    out = []
    for im in u8:
        buf = io.BytesIO()
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(buf, "JPEG",
                                                                      quality=quality)
        out.append(np.asarray(Image.open(buf)).reshape(im.shape))
    return np.stack(out)


@pytest.mark.parametrize("quality", [10, 75])
def test_exact_jpeg_equals_pillow(quality):
    rgb = _photo()
    grey = rgb.mean(-1, keepdims=True).round().astype(np.uint8)
    for u8 in (rgb, grey):
        out = jax.jit(T.get("jpeg_exact", quality=quality).transform)(
            jnp.asarray(u8 / np.float32(255)), None)
        ref = _pillow_roundtrip(u8, quality)
        np.testing.assert_array_equal(np.round(np.asarray(out) * 255), ref)
        np.testing.assert_allclose(np.asarray(out) * 255, ref, atol=1e-4)  # k / 255 in float32


@pytest.mark.parametrize("rounding, tol", [("ste", 1.0), ("cubic", 1.5)])
@pytest.mark.parametrize("quality", [10, 50, 90])
def test_differentiable_jpeg_close_to_exact_codec(rounding, tol, quality):
    """Mean |difference| to Pillow under ``tol``/255 and under 1/3 of the codec's own change
    (float vs libjpeg's integer DCT flips a few coefficients by one quantisation step)."""
    rgb = _photo()
    grey = rgb.mean(-1, keepdims=True).round().astype(np.uint8)
    for u8 in (rgb, grey):
        x = jnp.asarray(u8 / np.float32(255))
        exact = np.asarray(T.jpeg_exact(x, quality=quality)) * 255
        approx = np.asarray(T.jpeg_differentiable(x, quality=quality, rounding=rounding)) * 255
        err = np.abs(approx - exact).mean()
        assert err < tol, err
        assert err < np.abs(exact - u8).mean() / 3


def test_jpeg_gradients():
    x = jnp.asarray(_photo(16) / np.float32(255))
    for rounding in ("ste", "cubic"):
        def energy(z, rounding=rounding):
            return jnp.sum(T.jpeg_differentiable(z, quality=50, rounding=rounding) ** 2)

        g = jax.grad(energy)(x)
        assert np.all(np.isfinite(g)) and np.mean(np.abs(g) > 0) > 0.5


def test_quantisation_table_matches_libjpeg_scaling():
    from robustjax.defenses.transforms.jpeg import LUMINANCE_TABLE, quantisation_table

    np.testing.assert_array_equal(quantisation_table(LUMINANCE_TABLE, 50), LUMINANCE_TABLE)
    assert np.all(quantisation_table(LUMINANCE_TABLE, 100) == 1)
    assert quantisation_table(LUMINANCE_TABLE, 1).max() == 255  # baseline clipping
    # Pillow stores the same tables it was asked for
    buf = io.BytesIO()
    Image.fromarray(_photo()[0]).save(buf, "JPEG", quality=30)
    stored = np.asarray(Image.open(buf).quantization[0], np.float32)
    zigzag = _zigzag()
    np.testing.assert_array_equal(
        np.sort(stored), np.sort(quantisation_table(LUMINANCE_TABLE, 30).reshape(-1)[zigzag]))


def _zigzag():
    idx = sorted(((i, j) for i in range(8) for j in range(8)),
                 key=lambda p: (p[0] + p[1], p[0] if (p[0] + p[1]) % 2 else p[1]))
    return np.array([i * 8 + j for i, j in idx])


# ------------------------------------------------------------------- squeezing and smoothing


def test_bit_depth_and_median_match_numpy_scipy():
    x = jnp.asarray(RGB)
    for bits in (1, 3, 8):
        ref = np.round(RGB * (2**bits - 1)) / (2**bits - 1)
        np.testing.assert_allclose(T.get("bit_depth", bits=bits)(x), ref, atol=1e-6)
    for size in (2, 3):
        ref = ndi.median_filter(RGB, size=(1, size, size, 1), mode="reflect")
        np.testing.assert_allclose(T.get("median", size=size)(x), ref, atol=1e-6)


def test_gaussian_and_mean_match_scipy():
    x = jnp.asarray(RGB)
    for sigma in (0.5, 1.5):
        ref = ndi.gaussian_filter(RGB, sigma=(0, sigma, sigma, 0), mode="reflect")
        np.testing.assert_allclose(T.get("gaussian", sigma=sigma)(x), ref, atol=1e-6)
    for size in (2, 3):
        ref = ndi.uniform_filter(RGB, size=(1, size, size, 1), mode="reflect")
        np.testing.assert_allclose(T.get("mean", size=size)(x), ref, atol=1e-6)


def test_tv_matches_skimage_and_reduces_tv():
    from skimage.restoration import denoise_tv_chambolle

    x = jnp.asarray(RGB)
    for weight, steps in ((0.05, 1), (0.1, 20), (0.3, 60)):
        out = T.get("tv", weight=weight, steps=steps)(x)
        ref = np.stack([denoise_tv_chambolle(im, weight=weight, eps=0, max_num_iter=steps,
                                             channel_axis=-1) for im in RGB])
        np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=2e-6)
        if steps > 1:
            assert np.all(T.total_variation(out) < 0.8 * T.total_variation(x))
    # invariants of the ROF solution: a constant image is a fixed point; the mean is kept
    const = jnp.full((1, 6, 6, 3), 0.4)
    np.testing.assert_allclose(T.tv_minimisation(const, weight=0.3, steps=30), const, atol=1e-7)
    mid = jnp.asarray(0.3 + 0.4 * RGB)  # in [0.3, 0.7]: the final clip is inactive
    out = T.tv_minimisation(mid, weight=0.05, steps=30)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), mid.mean(axis=(1, 2)), atol=1e-6)


def test_resize_pad_randomness_depends_on_key(model):
    x = jnp.asarray(RGB)
    t = T.get("resize_pad")
    a, b = t(x, jax.random.key(1)), t(x, jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, t(x, jax.random.key(1)))
    # a zero border appears: the image is shrunk into a larger zero canvas and resized back
    ones = t(jnp.ones((4, 32, 32, 1)), jax.random.key(3))
    assert float(ones.min()) < 0.5 and np.all(np.asarray(ones).max(axis=(1, 2)) > 0.99)
    # the defended model is pure in (params, x) and redraws when x or the key changes
    m, xd, _ = model
    d = T.defend(m, t, key=jax.random.key(4))
    z = d.apply_fn(d.params, xd)
    np.testing.assert_array_equal(z, d.apply_fn(d.params, xd))
    assert not np.allclose(z, d.apply_fn(d.params._replace(key=jax.random.key(5)), xd))


# ------------------------------------------------------------- adaptive versions, warnings


def _input_grad(m, x, y):
    return jax.grad(lambda z: jnp.sum(jax.nn.log_softmax(m.apply_fn(m.params, z))[
        jnp.arange(y.shape[0]), y]))(x)


def test_bpda_keeps_forward_and_gives_gradients(model):
    m, x, y = model
    for name in ("bit_depth", "jpeg_exact"):
        d = T.defend(m, T.get(name))
        b = T.bpda(d)
        np.testing.assert_array_equal(b.apply_fn(b.params, x), d.apply_fn(d.params, x))
        assert np.all(_input_grad(d, x, y) == 0)  # what a naive attacker sees
        assert np.mean(np.abs(_input_grad(b, x, y)) > 0) > 0.5
        assert b.apply_fn.differentiable and "BPDA" in b.spec.source
    # bit depth's BPDA backward is the identity: the gradient is the model's at t(x)
    d = T.defend(m, T.get("bit_depth", bits=2))
    np.testing.assert_allclose(_input_grad(T.bpda(d), x, y),
                               _input_grad(m, T.bit_depth_reduction(x, 2), y), atol=1e-6)


def test_eot_averages_draws(model):
    m, x, _ = model
    d = T.defend(m, T.get("resize_pad"), key=KEY)
    e = T.eot(d, 4)
    logp = e.apply_fn(e.params, x)
    np.testing.assert_allclose(jax.nn.logsumexp(logp, axis=-1), 0.0, atol=1e-5)
    assert e.apply_fn.differentiable and "EOT-4" in e.spec.source
    assert T.adaptive(d, 4).apply_fn == e.apply_fn
    assert T.adaptive(T.defend(m, T.get("median"))).apply_fn.gradient == "bpda"
    with pytest.raises(ValueError, match="num_samples"):
        T.eot(d, 0)


def test_gradient_attack_on_non_differentiable_defense_warns(model):
    m, x, y = model
    cfg = PGDConfig(eps=0.1, step_size=0.05, steps=2)
    d = T.defend(m, T.get("bit_depth", bits=1))
    with pytest.warns(GradientMaskingWarning, match="not an adaptive evaluation.*bpda"):
        pgd(d.apply_fn, d.params, x, y, KEY, cfg)
    with pytest.warns(GradientMaskingWarning):
        fgsm(d.apply_fn, d.params, x, y, KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientMaskingWarning)
        b = T.bpda(d)
        pgd(b.apply_fn, b.params, x, y, KEY, cfg)
        j = T.defend(m, T.get("jpeg", quality=50))
        pgd(j.apply_fn, j.params, x, y, KEY, cfg)
