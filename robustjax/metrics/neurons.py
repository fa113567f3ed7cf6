"""Neuron-level metrics (survey Table 3): neuron coverage (KMNC, NBC, SNAC; DeepGauge) and
neuron sensitivity / uncertainty per layer.

**Capturing activations.** ``Model.apply_fn`` hides the flax module, so these metrics take an
``activations_fn(x) -> {layer_name: activation}`` built by :func:`activations_fn` from the
flax module and its variables with flax's ``capture_intermediates``: every submodule of the
given kinds (default ``nn.Conv`` and ``nn.Dense``) records its output; ``post`` (default ReLU)
is applied to it, because in ``robustjax.models.small.MLP``/``CNN`` every Conv/Dense except
the ``head`` is followed by a ReLU, and DeepGauge's neurons are post-activation outputs. For
other architectures choose ``kinds``/``post``/``exclude`` to match (e.g. ResNet convs are
followed by BatchNorm, so capture ``nn.BatchNorm`` outputs there). Layer names are the module
paths joined by ``/`` (``"conv0"``, ``"layer1_0/conv1"``).

**A neuron** of a dense layer is one unit; of a conv layer one channel (DeepGauge, Ma et al.
ASE 2018, and NOTES.md). For coverage a channel's value on an input is the spatial mean of its
feature map (as DeepGauge-style implementations do); sensitivity and uncertainty use the
whole map.

**KMNC / NBC / SNAC** (Ma et al. 2018, "DeepGauge", Sec. 3). Each neuron ``n`` has a range
``[low_n, high_n]`` = min and max of its value over the *training* data (:class:`NeuronRanges`).
On a test set T:
KMNC = sum_n #{sections of [low_n, high_n] split into k equal parts hit by some x in T} / (k N);
NBC = (#{n: some x has value > high_n} + #{n: some x has value < low_n}) / (2 N);
SNAC = #{n: some x has value > high_n} / N.
N counts the neurons of all captured layers (values are also given per layer). A value equal
to ``high_n`` falls into the last section; a neuron with ``low_n = high_n`` (e.g. a dead ReLU)
has a zero-width range: a value equal to it counts as its first section, its other k - 1
sections cannot be hit. AISafety's NBC undercounts (NOTES.md); robustjax follows the paper's
formula, checked against an independent numpy loop in the tests.

**Neuron sensitivity** (Zhang et al. 2021, "Interpreting and improving adversarial robustness
of deep neural networks with neuron sensitivity", IEEE TIP 30): for neuron ``n`` and pairs
``(x_i, x'_i)`` of clean and adversarial inputs,
``sigma_n = (1/N) sum_i (1/dim n) ||n(x_i) - n(x'_i)||_1`` (dim n = H*W for a channel);
a layer's value is the mean over its neurons.

**Neuron uncertainty.** The survey lists it without a formula and AISafety's implementation
returns a constant. robustjax's definition: the variance of a neuron's output under random
input noise, ``u_n = mean_i mean_pos Var_{e ~ N(0, noise_std^2)}[n(clip(x_i + e, 0, 1))]``,
estimated with ``num_samples`` draws (population variance); a layer's value is the mean over
its neurons. High uncertainty = neurons whose output noise easily moves.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from robustjax import validation
from robustjax.metrics.accumulators import AnySeen, Average, MinMax, merge_dicts
from robustjax.types import normalize

Array = jax.Array
ActivationsFn = Callable[[Array], dict]


def activations_fn(module: nn.Module, variables, *, mean: Sequence[float] = (0.0,),
                   std: Sequence[float] = (1.0,),
                   kinds: tuple[type, ...] = (nn.Conv, nn.Dense),
                   exclude: Sequence[str] = ("head",),
                   post: Optional[Callable[[Array], Array]] = jax.nn.relu) -> ActivationsFn:
    """Build ``f(x) -> {layer_name: activation}`` from a flax module and its variables.

    Args:
      module, variables: the flax module and its variables (as given to ``robustjax.models.wrap``).
      mean, std: the normalisation ``wrap`` applies (``model.spec.mean``, ``model.spec.std``),
        so ``f`` takes [0, 1] pixels like ``Model.apply_fn``.
      kinds: module classes whose ``__call__`` outputs are captured.
      exclude: layer names (full path or last component) to leave out; default the logits.
      post: applied to each captured output (default ReLU; ``None`` keeps raw outputs).

    Returns a function of ``x`` float32 NHWC ``[b, H, W, C]`` giving float32 arrays
    ``[b, h, w, c]`` (conv) or ``[b, units]`` (dense), in module order.

    Example::

        m = robustjax.models.small.CNN(); v = m.init(key, jnp.zeros((1, 28, 28, 1)))
        acts = activations_fn(m, v)(x)   # {"conv0": [b,14,14,16], "conv1": ..., "dense0": ...}
    """
    excluded = set(exclude)

    def capture(mdl, method_name):
        return method_name == "__call__" and isinstance(mdl, kinds)

    def f(x):
        validation.check_shapes(x)  # NHWC floats, a non-empty batch (values: the callers)
        _, state = module.apply(variables, normalize(x, mean, std),
                                capture_intermediates=capture, mutable=["intermediates"])
        out = {}

        def walk(tree, path):
            for k, v in tree.items():
                if k == "__call__":
                    name = "/".join(path)
                    if name not in excluded and path[-1] not in excluded:
                        out[name] = post(v[0]) if post is not None else v[0]
                elif isinstance(v, dict) or hasattr(v, "items"):
                    walk(v, path + (k,))

        walk(state.get("intermediates", {}), ())
        if not out:
            raise ValueError(f"no activations captured: no submodule of kinds {kinds} outside "
                             f"{sorted(excluded)} was called")
        return out

    return f


def neuron_values(act: Array) -> Array:
    """``[b, neurons]``: a dense layer's units, or a conv layer's channel spatial means."""
    return act if act.ndim == 2 else jnp.mean(act, axis=tuple(range(1, act.ndim - 1)))


@struct.dataclass
class NeuronRanges:
    """Per-layer ``MinMax`` of neuron values over training data (DeepGauge's [low, high])."""

    layers: dict

    @classmethod
    def empty(cls) -> "NeuronRanges":
        return cls({})

    @classmethod
    def from_batch(cls, acts: dict) -> "NeuronRanges":
        return _ranges_batch(acts)

    def merge(self, other: "NeuronRanges") -> "NeuronRanges":
        return type(self)(merge_dicts(self.layers, other.layers))

    def compute(self) -> dict:
        return {k: v.compute() for k, v in self.layers.items()}


@struct.dataclass
class CoverageStats:
    """KMNC / NBC / SNAC accumulator: per layer, which sections/corners were hit (``AnySeen``).

    ``compute()`` gives ``{"kmnc", "nbc", "snac"}`` over all neurons and ``"per_layer"``
    (python floats, computed with numpy: call it outside ``jit``).
    """

    sections: dict
    upper: dict
    lower: dict

    @classmethod
    def empty(cls) -> "CoverageStats":
        return cls({}, {}, {})

    @classmethod
    def from_batch(cls, acts: dict, ranges: NeuronRanges, k: int = 10) -> "CoverageStats":
        """``acts`` from an ``activations_fn`` on test inputs; ``ranges`` from training data."""
        missing = sorted(set(acts) - set(ranges.layers))
        if missing:
            raise KeyError(f"no range for layers {missing}; ranges have {sorted(ranges.layers)}")
        return _coverage_batch(acts, ranges, k)

    def merge(self, other: "CoverageStats") -> "CoverageStats":
        return type(self)(merge_dicts(self.sections, other.sections),
                          merge_dicts(self.upper, other.upper),
                          merge_dicts(self.lower, other.lower))

    def compute(self) -> dict:
        return _coverage_compute(self)


@jax.jit
def _ranges_batch(acts: dict) -> NeuronRanges:
    return NeuronRanges({k: MinMax.from_values(neuron_values(a)) for k, a in acts.items()})


@functools.partial(jax.jit, static_argnums=2)
def _coverage_batch(acts: dict, ranges: NeuronRanges, k: int) -> CoverageStats:
    sections, upper, lower = {}, {}, {}
    for name, a in acts.items():
        v = neuron_values(a)
        low, high = ranges.layers[name].low[None], ranges.layers[name].high[None]  # [1, N]
        width = jnp.where(high > low, high - low, 1.0)
        inside = (v >= low) & (v <= high)
        idx = jnp.clip(jnp.floor((v - low) / width * k).astype(jnp.int32), 0, k - 1)
        hits = (jax.nn.one_hot(idx, k, dtype=bool) & inside[..., None])  # [b, N, k]
        sections[name] = AnySeen.from_values(hits)
        upper[name] = AnySeen.from_values(v > high)
        lower[name] = AnySeen.from_values(v < low)
    return CoverageStats(sections, upper, lower)


def _coverage_compute(cov: CoverageStats) -> dict:
    # Plain numpy: a handful of integer counts, no need to compile anything.
    per_layer, tot = {}, np.zeros(4)
    for name in cov.sections:
        s, u, lo = (np.asarray(a) for a in (cov.sections[name].seen, cov.upper[name].seen,
                                           cov.lower[name].seen))
        n, k = s.shape
        counts = np.array([s.sum(), u.sum(), lo.sum(), n], np.float64)
        tot = tot + counts * [1.0 / k, 1.0, 1.0, 1.0]
        per_layer[name] = {"kmnc": counts[0] / (n * k), "nbc": (counts[1] + counts[2]) / (2 * n),
                           "snac": counts[1] / n}
    n = max(tot[3], 1.0)
    return {"kmnc": tot[0] / n, "nbc": (tot[1] + tot[2]) / (2 * n), "snac": tot[1] / n,
            "per_layer": per_layer}


def _per_neuron(a: Array) -> Array:
    """Mean over spatial positions of a ``[b, ..., C]`` map: ``[b, C]``."""
    return a if a.ndim == 2 else jnp.mean(a, axis=tuple(range(1, a.ndim - 1)))


@struct.dataclass
class LayerAverages:
    """Per-layer ``Average`` of per-neuron values; ``compute()`` -> {layer: mean over neurons},
    ``per_neuron()`` -> {layer: float32 [neurons]}."""

    layers: dict

    @classmethod
    def empty(cls) -> "LayerAverages":
        return cls({})

    def merge(self, other: "LayerAverages") -> "LayerAverages":
        return type(self)(merge_dicts(self.layers, other.layers))

    def per_neuron(self) -> dict:
        return {k: v.compute() for k, v in self.layers.items()}

    def compute(self) -> dict:
        return {k: v.mean() for k, v in self.per_neuron().items()}


def neuron_sensitivity(acts_clean: dict, acts_adv: dict) -> LayerAverages:
    """Neuron sensitivity statistics of one batch (Zhang et al. 2021; module docstring).

    ``acts_clean``/``acts_adv``: outputs of one ``activations_fn`` on ``x`` and on ``x_adv``.
    """
    if set(acts_clean) != set(acts_adv):
        raise validation.InputError(f"acts_clean and acts_adv must have the same layers, got "
                                    f"{sorted(acts_clean)} and {sorted(acts_adv)}")
    for k, a in acts_clean.items():
        validation.check_same_shape(a, acts_adv[k], (f"acts_clean[{k!r}]", f"acts_adv[{k!r}]"))
    return _neuron_sensitivity(acts_clean, acts_adv)


@jax.jit
def _neuron_sensitivity(acts_clean: dict, acts_adv: dict) -> LayerAverages:
    return LayerAverages({k: Average.from_values(_per_neuron(jnp.abs(acts_adv[k] - a)))
                          for k, a in acts_clean.items()})


@dataclasses.dataclass(frozen=True)
class NeuronUncertaintyConfig:
    """Gaussian input noise (pixel units) and number of draws for neuron uncertainty."""

    noise_std: float = 0.05
    num_samples: int = 16


def neuron_uncertainty(acts_fn: ActivationsFn, x: Array, key: Array,
                       config: NeuronUncertaintyConfig = NeuronUncertaintyConfig()
                       ) -> LayerAverages:
    """Neuron uncertainty statistics of one batch ``x`` (float32 NHWC in [0, 1]).

    Draws ``num_samples`` noisy copies (one key per draw, ``fold_in``), runs ``acts_fn`` on each
    and takes each activation's population variance over the draws.
    """
    validation.check_shapes(x)
    validation.check_applies(acts_fn, x)  # NCHW or the wrong channels: a clear error
    if config.num_samples < 1 or not config.noise_std >= 0:
        raise validation.InputError(f"NeuronUncertaintyConfig needs num_samples >= 1 and "
                                    f"noise_std >= 0, got {config}")
    with validation.completing(validation.start_checks(images=(("x", x),))):
        return _neuron_uncertainty(acts_fn, x, key, config)


@functools.partial(jax.jit, static_argnames=("acts_fn", "config"))
def _neuron_uncertainty(acts_fn, x, key, config) -> LayerAverages:
    def one(i):
        e = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        return acts_fn(jnp.clip(x + config.noise_std * e, 0.0, 1.0))

    acts = jax.lax.map(one, jnp.arange(config.num_samples))  # {name: [S, b, ...]}
    return LayerAverages({k: Average.from_values(_per_neuron(jnp.var(a, axis=0)))
                          for k, a in acts.items()})
