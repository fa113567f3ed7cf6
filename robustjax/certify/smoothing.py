"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via
Randomized Smoothing"): PREDICT and CERTIFY for the smoothed classifier
``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)``.

* ``CERTIFY``: guess the top class ``c_A`` from ``n0`` noisy samples, count ``c_A`` in ``n``
  fresh samples, take the one-sided Clopper-Pearson lower bound ``p_A`` at level ``1 - alpha``
  (``scipy.stats.beta.ppf(alpha, k, n - k + 1)``); abstain if ``p_A < 1/2``, else the L2 radius
  is ``sigma * Phi^-1(p_A)``.
* ``PREDICT``: the two top counts in ``n`` samples; return the top class if a two-sided binomial
  test of ``n_A`` against ``Bin(n_A + n_B, 1/2)`` has p-value <= alpha, else abstain.

Noise is drawn in batches of ``batch_size`` inside one jitted call (``lax.scan`` over the
batches); the statistical decisions run in NumPy/SciPy. Abstentions are ``-1``.

Example::

    pred, radius = certify(model.apply_fn, model.params, x, key, SmoothingConfig(sigma=0.25))
    certified_accuracy(pred, radius, y, radii=[0.0, 0.25, 0.5])
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from robustjax import entry

ABSTAIN = -1


@dataclasses.dataclass(frozen=True)
class SmoothingConfig:
    """Cohen et al. 2019 defaults: n0=100 selection samples, n=100,000 estimation samples,
    alpha=0.001; ``sigma`` is the noise level (pixel units); ``batch_size`` samples per step."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def sample_counts(apply_fn, params, x, key, num: int, batch_size: int, sigma) -> jax.Array:
    """Class counts ``[k]`` of ``argmax apply_fn(params, x + sigma * noise)`` over ``num``
    Gaussian samples around one image ``x`` ``[H, W, C]``, drawn ``batch_size`` at a time."""
    steps = -(-num // batch_size)
    k = jax.eval_shape(apply_fn, params, x[None]).shape[-1]

    def body(counts, i):
        noise = jax.random.normal(jax.random.fold_in(key, i), (batch_size, *x.shape))
        pred = jnp.argmax(apply_fn(params, x[None] + sigma * noise), axis=-1)
        valid = i * batch_size + jnp.arange(batch_size) < num  # the last batch may be partial
        return counts + jnp.zeros(k, jnp.int32).at[pred].add(valid.astype(jnp.int32)), None

    counts, _ = jax.lax.scan(body, jnp.zeros(k, jnp.int32), jnp.arange(steps))
    return counts


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) lower confidence bound on a binomial proportion from k of n."""
    return 0.0 if k == 0 else float(stats.beta.ppf(alpha, k, n - k + 1))


def _one_certify(apply_fn, params, x, key, config: SmoothingConfig):
    k0, k1 = jax.random.split(key)
    c_a = int(jnp.argmax(sample_counts(apply_fn, params, x, k0, config.n0, config.batch_size,
                                       config.sigma)))
    counts = np.asarray(sample_counts(apply_fn, params, x, k1, config.n, config.batch_size,
                                      config.sigma))
    p_a = clopper_pearson_lower(int(counts[c_a]), config.n, config.alpha)
    if p_a < 0.5:
        return ABSTAIN, 0.0
    return c_a, config.sigma * float(stats.norm.ppf(p_a))


@entry.model_entry(compile=False, images=False)  # host-side statistics; sample_counts jitted
def certify(apply_fn, params, x, key, config: SmoothingConfig = SmoothingConfig()):
    """CERTIFY for each image of ``x`` ``[b, H, W, C]``.

    Returns ``(prediction int [b], radius float [b])`` as NumPy arrays; prediction is -1
    (abstain) with radius 0 where ``p_A < 1/2``.
    """
    out = [_one_certify(apply_fn, params, x[i], jax.random.fold_in(key, i), config)
           for i in range(x.shape[0])]
    return (np.array([o[0] for o in out], np.int32), np.array([o[1] for o in out], np.float64))


@entry.model_entry(compile=False, images=False)
def predict(apply_fn, params, x, key, config: SmoothingConfig = SmoothingConfig()):
    """PREDICT for each image of ``x``: int ``[b]``, -1 where the test abstains."""
    preds = []
    for i in range(x.shape[0]):
        counts = np.asarray(sample_counts(apply_fn, params, x[i], jax.random.fold_in(key, i),
                                          config.n, config.batch_size, config.sigma))
        top2 = np.argsort(counts)[::-1][:2]
        n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
        p_value = stats.binomtest(n_a, n_a + n_b, 0.5).pvalue if n_a + n_b > 0 else 1.0
        preds.append(int(top2[0]) if p_value <= config.alpha else ABSTAIN)
    return np.array(preds, np.int32)


def certified_accuracy(prediction, radius, y, radii) -> np.ndarray:
    """Fraction of examples predicted correctly with certified L2 radius >= r, per r."""
    prediction, radius, y = np.asarray(prediction), np.asarray(radius), np.asarray(y)
    correct = prediction == y
    return np.array([np.mean(correct & (radius >= r)) for r in radii])
