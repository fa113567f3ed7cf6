"""The fast paths of the corruptions: the Philox-2x32 generator against Random123's known-answer
vectors, the wave schedule of glass blur against the reference's sequential moves (brute force),
the unrolled Poisson sampler against the exact pmf, and the merged-axis 1-D filter against SciPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from scipy import stats

from robustjax.corruptions import _ops, _philox, blur, noise


@pytest.mark.parametrize("counter,key,expected", [
    ((0, 0), 0, (0xFF1DAE59, 0x6CD10DF2)),
    ((0xFFFFFFFF, 0xFFFFFFFF), 0xFFFFFFFF, (0x2C3F628B, 0xAB4FD7AD)),
    ((0x243F6A88, 0x85A308D3), 0x13198A2E, (0xDD7CE038, 0xF62A4C12)),
])
def test_philox_known_answers(counter, key, expected):
    # Random123's kat_vectors for philox2x32_10
    out = _philox.philox2x32(tuple(jnp.uint32(c) for c in counter), jnp.uint32(key))
    assert tuple(int(o) for o in out) == expected


def test_philox_bits_are_the_blocks_of_their_flat_index():
    key = jax.random.key(3)
    k, s = (int(w) for w in jax.random.bits(key, (2,), jnp.uint32))
    got = np.asarray(_philox.bits(key, (5, 7)))
    for i in (0, 1, 17, 34):
        assert got.ravel()[i] == int(_philox.philox2x32((jnp.uint32(i), jnp.uint32(s)), jnp.uint32(k))[0])
    # the same values whatever the shape they are drawn in
    np.testing.assert_array_equal(np.asarray(_philox.bits(key, (35,))), got.ravel())


def test_philox_streams_are_uniform_normal_and_key_dependent():
    key = jax.random.key(7)
    u = np.asarray(_philox.uniform(key, (300, 301)))
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    z = np.asarray(_philox.normal(key, (90_000,)))
    assert np.isfinite(z).all() and abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert stats.kstest(z, "norm").pvalue > 1e-3
    again = np.asarray(_philox.uniform(key, (300, 301)))
    other = np.asarray(_philox.uniform(jax.random.key(8), (300, 301)))
    np.testing.assert_array_equal(u, again)
    assert abs(np.corrcoef(u.ravel(), other.ravel())[0, 1]) < 0.01
    # neighbouring counters (within a row, across rows) give uncorrelated values
    flat = u.ravel()
    for lag in (1, 301, 4096):
        assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 0.01


def _sequential_moves(img, its, rows, cols, dx, dy, delta, iterations):
    """The reference's loop, move by move, reading each move's offsets from the schedule."""
    h, w = img.shape[1:3]
    slot = {(i, a, b): (t, s) for (t, s), i, a, b in
            zip(np.ndindex(*rows.shape), its.ravel(), rows.ravel(), cols.ravel()) if a >= 0}
    assert len(slot) == iterations * (h - 2 * delta) * (w - 2 * delta)
    out = img.copy()
    for n in range(img.shape[0]):
        for i in range(iterations):
            for hh in range(h - delta, delta, -1):
                for ww in range(w - delta, delta, -1):
                    t, s = slot[(i, h - delta - hh, w - delta - ww)]
                    out[n, hh, ww] = out[n, hh + dy[n, t, s], ww + dx[n, t, s]]
    return out


@pytest.mark.parametrize("h,w,delta,iterations", [
    (12, 9, 1, 2), (15, 13, 2, 3), (20, 17, 3, 2), (22, 22, 4, 2), (9, 30, 2, 1), (14, 14, 1, 3)])
def test_glass_wave_schedule_equals_sequential_moves(h, w, delta, iterations):
    rng = np.random.default_rng(h * w + delta)
    its, rows, cols = blur.glass_schedule(h, w, delta, iterations)
    img = rng.integers(0, 256, (2, h, w, 3)).astype(np.uint8)
    dx, dy = (rng.integers(-delta, delta, (2,) + rows.shape).astype(np.int32) for _ in range(2))
    codes = ((dy + delta) * 2 * delta + dx + delta).transpose(1, 2, 0)  # [T, S, B]
    ours = blur._glass_moves(jnp.asarray(img), jnp.asarray(codes), delta, iterations)
    ref = _sequential_moves(img, its, rows, cols, dx, dy, delta, iterations)
    np.testing.assert_array_equal(np.asarray(ours), ref)


def test_glass_moves_cover_the_offset_range_uniformly():
    codes = np.asarray(blur.glass_moves(jax.random.key(0), (4, 40, 40, 3), 3, 2)).astype(int)
    assert codes.shape == blur.glass_schedule(40, 40, 3, 2)[1].shape + (4,)
    dx, dy = codes % 6 - 3, codes // 6 - 3
    for d in (np.asarray(dx).ravel(), np.asarray(dy).ravel()):
        counts = np.bincount(d + 3, minlength=6)
        assert d.min() == -3 and d.max() == 2
        assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("lam_max", [3.0, 12.0, 60.0])
def test_poisson_sampler_matches_the_pmf(lam_max):
    lam = jnp.full((200_000,), lam_max, jnp.float32)
    k = np.asarray(noise.poisson(jax.random.key(1), lam, lam_max)).astype(int)
    assert abs(k.mean() - lam_max) < 0.02 * lam_max and abs(k.var() - lam_max) < 0.03 * lam_max
    edges = np.arange(int(lam_max + 6 * np.sqrt(lam_max)) + 2)
    observed = np.bincount(np.minimum(k, edges[-1]), minlength=len(edges))[: len(edges)]
    expected = stats.poisson.pmf(edges, lam_max) * k.size
    expected[-1] = stats.poisson.sf(edges[-2], lam_max) * k.size
    keep = expected > 5
    assert stats.chisquare(observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum()).pvalue > 1e-3


def test_poisson_support_bounds_the_tail():
    for lam in (3.0, 12.0, 60.0):
        k = noise.poisson_support(lam)
        assert stats.poisson.sf(k, lam) < 1e-10 <= stats.poisson.sf(k - 1, lam)
    lam = jnp.full((50_000,), 3.0, jnp.float32)
    assert float(noise.poisson(jax.random.key(2), lam, 3.0).max()) <= noise.poisson_support(3.0)


@pytest.mark.parametrize("mode", ["nearest", "reflect", "mirror"])
@pytest.mark.parametrize("axis", [1, 2])
def test_filter_axis_matches_scipy(mode, axis):
    x = np.random.default_rng(0).random((2, 11, 13, 3)).astype(np.float32)
    kernel = _ops.gaussian_kernel1d(1.5)
    ours = np.asarray(_ops.filter_axis(jnp.asarray(x), kernel, mode, axis))
    ref = scipy.ndimage.correlate1d(x, kernel, axis=axis, mode=mode)
    np.testing.assert_allclose(ours, ref, atol=1e-6)



def test_materialize_is_an_identity_for_values_vmap_and_grad():
    from robustjax.corruptions import _fusion

    x = jnp.asarray([[0.0, -1.5, np.nan], [np.inf, 2.0, 3.0]], jnp.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(_fusion.materialize)(x)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(jax.vmap(_fusion.materialize)(x)), np.asarray(x))
    flags = jnp.asarray([True, False, False])
    np.testing.assert_array_equal(np.asarray(jax.jit(_fusion.materialize)(flags)), [True, False, False])
    y = jnp.arange(6.0).reshape(2, 3)
    grad = jax.grad(lambda v: (_fusion.materialize(v) ** 2).sum())
    np.testing.assert_allclose(np.asarray(grad(y)), 2 * np.asarray(y))
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(grad))(y)), 2 * np.asarray(y))
    # the conditional survives XLA's simplification (it is what keeps the buffer)
    hlo = jax.jit(lambda v: _fusion.materialize(v * 2.0) + 1.0).lower(y).compile().as_text()
    assert "conditional" in hlo


def test_map_images_equals_vmap():
    from robustjax.corruptions import _fusion

    x = jnp.arange(24.0).reshape(4, 6)
    s = jnp.arange(4)
    f = lambda row, k: jnp.roll(row, k) * 2.0  # noqa: E731
    np.testing.assert_array_equal(np.asarray(_fusion.map_images(f, x, s)), np.asarray(jax.vmap(f)(x, s)))


@pytest.mark.parametrize("batch,chunk", [(6, 2), (7, 3), (5, 1), (4, 8)])
def test_map_batch_equals_the_whole_batch(batch, chunk):
    from robustjax.corruptions import _fusion

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((batch, 5, 4, 3)), jnp.float32)
    s = jnp.asarray(rng.random((batch,)), jnp.float32)

    def f(im, scale):  # per-image reductions and a pytree output
        m = jnp.max(im, axis=(1, 2, 3))
        return im * scale[:, None, None, None] / m[:, None, None, None], m

    want = f(x, s)
    got = _fusion.map_batch(f, x, s, chunk=chunk)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    # differentiable and vmappable like the function itself
    loss = lambda v: _fusion.map_batch(f, v, s, chunk=chunk)[0].sum()  # noqa: E731
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(x)),
                               np.asarray(jax.grad(lambda v: f(v, s)[0].sum())(x)), rtol=1e-5)
    twice = jax.vmap(lambda v: _fusion.map_batch(f, v, s, chunk=chunk)[1])(jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(np.asarray(twice), np.asarray([want[1], 2 * want[1]]), rtol=1e-6)


def test_batch_chunk_prefers_divisors_within_a_factor_two():
    from robustjax.corruptions._fusion import batch_chunk

    assert batch_chunk(64, 100, chunk_bytes=400) == 4
    assert batch_chunk(63, 100, chunk_bytes=400) == 3  # 3 divides 63
    assert batch_chunk(61, 100, chunk_bytes=400) == 4  # prime batch: a remainder chunk
    assert batch_chunk(2, 100, chunk_bytes=400) == 2
    assert batch_chunk(64, 10**9, chunk_bytes=400) == 1
    assert batch_chunk(5, 100, chunk_bytes=200) == 2  # odd batch: a remainder, not chunks of 1


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_defocus_blur_equals_scipy_correlation_with_the_disk(severity):
    radius, alias = blur.DEFOCUS_BLUR[severity - 1]
    kernel = blur.disk_kernel(radius, alias)
    # the factored path (boxes) exists exactly where the smoothed disk stays inside its grid
    assert (blur.disk_factors(radius, alias) is not None) == (severity <= 3)
    x = np.random.default_rng(severity).random((3, 40, 33, 3)).astype(np.float32)
    ref = scipy.ndimage.correlate(x, kernel[None, :, :, None].astype(np.float64), mode="mirror")
    got = np.asarray(blur.defocus_blur(jnp.asarray(x), severity))
    np.testing.assert_allclose(got, np.clip(ref, 0, 1), atol=2e-6)


def test_smooth_fft_sizes():
    for n in range(1, 300):
        m = _ops._smooth_size(n)
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        assert k == 1 and m >= n
        assert all(_ops._smooth_size(j) != j for j in range(n, m))  # the smallest such size


def _chamfer_dijkstra(edges, limit):
    """Multi-source Dijkstra over the 16 moves of OpenCV's 5 x 5 chamfer mask (float64), inside
    the image: the shortest-path definition the line propagation must reproduce."""
    import heapq

    h, w = edges.shape
    moves = [((dy, dx), c) for (ay, ax), c in (((0, 1), 1.0), ((1, 1), 1.4), ((1, 2), 2.1969))
             for dy, dx in {(ay, ax), (ax, ay), (-ay, ax), (ay, -ax), (-ax, ay), (ax, -ay),
                            (-ay, -ax), (-ax, -ay)}]
    dist = np.full((h, w), np.inf)
    heap = [(0.0, y, x) for y, x in zip(*np.nonzero(edges))]
    for _, y, x in heap:
        dist[y, x] = 0.0
    heapq.heapify(heap)
    while heap:
        d, y, x = heapq.heappop(heap)
        if d > dist[y, x]:
            continue
        for (dy, dx), c in moves:
            v, u = y + dy, x + dx
            if 0 <= v < h and 0 <= u < w and d + c < dist[v, u]:
                dist[v, u] = d + c
                heapq.heappush(heap, (d + c, v, u))
    return np.minimum(dist, limit)


@pytest.mark.parametrize("density", [0.0, 0.003, 0.03])
def test_truncated_distance_equals_shortest_chamfer_paths(density):
    from robustjax.corruptions import _spatter_mask

    edges = np.random.default_rng(7).random((2, 45, 52)) < density
    edges[1, 0, 51] = True  # a lone corner source: paths along the border
    got = np.asarray(_spatter_mask.truncated_distance(jnp.asarray(edges)))
    for e, g in zip(edges, got):
        # OpenCV's fixed-point costs: at most 2^-16 off per move
        np.testing.assert_allclose(g, _chamfer_dijkstra(e, 20.0), atol=2e-4)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_brightness_and_saturate_equal_skimage_hsv_round_trips(severity):
    import skimage.color

    from robustjax.corruptions import digital

    x = np.random.default_rng(severity).random((3, 20, 24, 3))
    x[0, :6] = x[0, :6, :, :1]  # grey pixels (hue 0 in skimage)
    x[1, :4] = 0.0  # black
    x[2] = np.round(x[2] * 4) / 4  # ties between channels
    x = x.astype(np.float32)
    c = digital.BRIGHTNESS[severity - 1]
    a, b = digital.SATURATE[severity - 1]
    hsv = skimage.color.rgb2hsv(x.astype(np.float64))
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    want_b = np.clip(skimage.color.hsv2rgb(hsv), 0, 1)
    hsv = skimage.color.rgb2hsv(x.astype(np.float64))
    hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0, 1)
    want_s = np.clip(skimage.color.hsv2rgb(hsv), 0, 1)
    np.testing.assert_allclose(np.asarray(digital.brightness(jnp.asarray(x), severity)), want_b, atol=1e-6)
    np.testing.assert_allclose(np.asarray(digital.saturate(jnp.asarray(x), severity)), want_s, atol=1e-6)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_snow_reads_only_the_central_crop_of_its_field(severity):
    from robustjax.corruptions import weather

    rng = np.random.default_rng(severity)
    x = jnp.asarray(rng.random((2, 64, 48, 3)), jnp.float32)
    field = jnp.asarray(rng.normal(0.5, 0.3, (2, 64, 48)), jnp.float32)
    angle = jnp.asarray([-100.0, -60.0])
    zoom = weather.SNOW[severity - 1][2]
    (th, ch), (tw, cw) = _ops.clipped_zoom_crop(64, zoom), _ops.clipped_zoom_crop(48, zoom)
    full = weather.snow_from_field(x, severity, field, angle, scale_pixels=True)
    crop = weather.snow_from_field(x, severity, field[:, th:th + ch, tw:tw + cw], angle,
                                   scale_pixels=True)
    np.testing.assert_array_equal(np.asarray(crop), np.asarray(full))
    # the values outside the crop do not matter
    outside = field.at[:, :th].set(9.0).at[:, th + ch:].set(-9.0)
    np.testing.assert_array_equal(
        np.asarray(weather.snow_from_field(x, severity, outside, angle, scale_pixels=True)),
        np.asarray(full))
    with pytest.raises(ValueError, match="snow field"):
        weather.snow_from_field(x, severity, field[:, :10], angle)


def test_computed_equals_the_function_under_jit_vmap_and_grad():
    from robustjax.corruptions import _fusion

    key = jax.random.key(3)
    draw = lambda k: _philox.uniform(k, (4, 5))  # noqa: E731
    np.testing.assert_array_equal(np.asarray(jax.jit(_fusion.computed, static_argnums=0)(draw, key)),
                                  np.asarray(draw(key)))
    keys = jax.random.split(key, 3)
    np.testing.assert_array_equal(np.asarray(jax.vmap(lambda k: _fusion.computed(draw, k))(keys)),
                                  np.asarray(jax.vmap(draw)(keys)))
    y = jnp.arange(1.0, 7.0).reshape(2, 3)
    f = lambda v, s: jnp.sin(v) * s  # noqa: E731
    grad = jax.grad(lambda v: _fusion.computed(f, v, 2.0).sum())(y)
    np.testing.assert_allclose(np.asarray(grad), 2 * np.cos(np.asarray(y)), rtol=1e-6)
    # the function runs inside the kept conditional (no copy of a producer into it)
    hlo = jax.jit(lambda k: _fusion.computed(draw, k)).lower(key).compile().as_text()
    assert "conditional" in hlo
    with pytest.raises(ValueError, match="non-empty array"):
        _fusion.computed(lambda: jnp.zeros(3))


def test_brightness_sequence_frames_equal_skimage_round_trips():
    import skimage.color

    from robustjax.corruptions import sequences

    x = np.random.default_rng(4).random((2, 9, 11, 3)).astype(np.float32)
    x[0, :3] = x[0, :3, :, :1]  # grey
    frames = np.asarray(sequences.brightness_sequence(jnp.asarray(x)))
    assert frames.shape == (2, 31, 9, 11, 3)
    for i in (0, 7, 15, 30):
        hsv = skimage.color.rgb2hsv(x.astype(np.float64))
        hsv[..., 2] = np.clip(hsv[..., 2] + 0.02 * (i - 15), 0, 1)
        np.testing.assert_allclose(frames[:, i], np.clip(skimage.color.hsv2rgb(hsv), 0, 1), atol=1e-6)
