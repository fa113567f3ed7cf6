"""``corrupt(..., quantize=True)``: the 8-bit convention of ImageNet-C (tests against the
reference's own outputs are in test_corruptions_reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robustjax.corruptions import CORRUPTIONS, corrupt
from robustjax.corruptions.registry import EIGHT_BIT, quantize_8bit


def _images(channels, size=32, n=2, seed=0):
    rng = np.random.default_rng(seed)
    # 8-bit source images, as ImageNet-C's are
    return jnp.asarray(rng.integers(0, 256, (n, size, size, channels)) / 255.0, jnp.float32)


# every corruption in RGB; the gray path (luma out) on a pixel-wise, a global, a
# host-free spatial and the rounded one
CASES = [(n, 3) for n in sorted(CORRUPTIONS)] + [
    (n, 1) for n in ("gaussian_noise", "contrast", "glass_blur", "pixelate")]


@pytest.mark.parametrize("name,channels", CASES)
def test_quantized_output_is_the_truncated_float_output(name, channels):
    x, key = _images(channels), jax.random.key(3)
    raw = np.asarray(corrupt(x, name, 3, key, scale_pixels=True))
    q = np.asarray(corrupt(x, name, 3, key, scale_pixels=True, quantize=True))
    assert q.shape == raw.shape and q.dtype == np.float32
    levels = q * 255.0
    np.testing.assert_allclose(levels, np.round(levels), atol=2e-4)  # multiples of 1/255
    assert q.min() >= 0.0 and q.max() <= 1.0
    if name in EIGHT_BIT:  # Pillow's rounded passes: within a level of the rounded floats
        assert np.abs(levels - np.round(raw * 255.0)).max() <= 1.0 + 1e-3
        return
    # the same image, truncated: never above the unrounded value (beyond the float guard) and
    # less than one level below it
    # (the two are separate XLA programs: a value within float round-off of a level may land
    # on either side)
    assert np.mean(np.round(levels) == np.floor(raw * 255.0 + 1e-4)) > 0.999
    assert np.all(q <= raw + 1e-4 / 255 + 1e-7)
    assert float(np.mean(raw - q)) * 255.0 < 1.0


def test_quantize_is_off_by_default_and_jits():
    x, key = _images(3), jax.random.key(0)
    raw = corrupt(x, "fog", 2, key)
    assert not np.allclose(np.asarray(raw) * 255, np.round(np.asarray(raw) * 255), atol=1e-3)
    # truncation of continuous values: half a level darker on average
    bias = float(np.mean(raw - corrupt(x, "fog", 2, key, quantize=True))) * 255.0
    assert 0.4 < bias < 0.6, bias
    f = jax.jit(lambda x, k: corrupt(x, "fog", 2, k, quantize=True))
    np.testing.assert_array_equal(np.asarray(f(x, key)),
                                  np.asarray(corrupt(x, "fog", 2, key, quantize=True)))
    np.testing.assert_array_equal(np.asarray(quantize_8bit(raw)),
                                  np.asarray(corrupt(x, "fog", 2, key, quantize=True)))


def test_quantize_keeps_8bit_grid_values():
    grid = jnp.arange(256, dtype=jnp.float32)[None, :, None, None] / 255.0
    np.testing.assert_array_equal(np.asarray(quantize_8bit(grid)), np.asarray(grid))
