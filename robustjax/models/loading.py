"""Load PyTorch-trained checkpoints into robustjax models: ``load(name, checkpoint) -> Model``.

The family-module contract (``robustjax.models.<family>``, one per architecture family)
---------------------------------------------------------------------------------------
A family module exposes

* ``ENTRIES: dict[str, Entry]`` -- registry name -> ``Entry(module_factory, default ModelSpec)``.
  The spec holds the checkpoint's eval preprocessing (mean/std, input size, crop_pct,
  interpolation) and, for ImageNet heads, the class names. ``module_factory(num_classes=...,
  **overrides)`` builds a flax module whose ``__call__(x, features=False)`` takes *normalised*
  NHWC input (``features=True`` returns the penultimate features).
* ``convert_state_dict(sd: Mapping[str, np.ndarray], module) -> variables``: PyTorch-layout
  arrays under the family's canonical (timm) key names -> a nested flax variables dict
  (``{"params": ..., "batch_stats": ...}``) of numpy arrays. Read every tensor with ``sd[key]``:
  ``sd`` is a :class:`TrackedStateDict` that records which keys were read (unread keys are
  reported as *unexpected*) and, for a key that is absent, records it as *missing* and returns a
  :data:`MISSING` placeholder that survives numpy operations, so one run of the converter finds
  every missing key. Do not branch on ``key in sd`` for required tensors, and take the
  architecture from the module's fields, not from tensor shapes. Use the helpers below
  (:func:`conv_kernel`, :func:`dense`, :func:`batch_norm`, :func:`layer_norm`) for layouts.
* optionally ``canonicalize_keys(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]``: rename
  other naming schemes (torchvision, facebookresearch ConvNeXt, ...) to the canonical ones.
  ``*.num_batches_tracked`` keys are dropped by the framework before conversion.
* optionally ``IGNORED_KEYS: tuple[str, ...]``: key prefixes that are known and intentionally not
  used (e.g. torchvision Inception-V3 ``AuxLogits.``).

``load`` then compares the converted variables with ``jax.eval_shape(module.init, ...)``: missing,
unexpected and wrongly shaped entries produce ONE :class:`StateDictMismatchError` listing all of
them; with ``strict=False`` they are reported by a warning instead and absent or mis-shaped
variables keep their initial values.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import warnings
from typing import Any, Iterator, Mapping, Optional, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np

from robustjax import checkpoint, weights
from robustjax.models import registry
from robustjax.types import Model, ModelSpec

FAMILIES = registry.ZOO_FAMILIES


class StateDictMismatchError(ValueError):
    """The checkpoint does not fit the architecture (lists every problem at once)."""


class _Missing:
    """Placeholder for an absent checkpoint key; every numpy operation returns it unchanged."""

    def __init__(self, key: str):
        self.key = key
        self.shape = None

    def __repr__(self):
        return f"<missing {self.key!r}>"

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: self

    def __array_function__(self, func, types, args, kwargs):
        return self

    def __array_ufunc__(self, ufunc, method, *args, **kwargs):
        return self

    def __getitem__(self, item):
        return self

    T = property(lambda self: self)
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __getitem__
    __neg__ = lambda self: self  # noqa: E731


MISSING = _Missing


class TrackedStateDict(Mapping):
    """A read-only state dict that records which keys were read and which were missing."""

    def __init__(self, sd: Mapping[str, np.ndarray]):
        self._sd = dict(sd)
        self.read: set[str] = set()
        self.missing: list[str] = []

    def __getitem__(self, key: str):
        if key in self._sd:
            self.read.add(key)
            return self._sd[key]
        if key not in self.missing:
            self.missing.append(key)
        return _Missing(key)

    def __contains__(self, key) -> bool:
        return key in self._sd

    def __iter__(self) -> Iterator[str]:
        return iter(self._sd)

    def __len__(self) -> int:
        return len(self._sd)

    def unread(self) -> list[str]:
        return [k for k in self._sd if k not in self.read]


# --- layout helpers shared by the family converters -------------------------------------------

def conv_kernel(w) -> np.ndarray:
    """PyTorch conv weight OIHW -> flax HWIO (depthwise (C,1,kh,kw) -> (kh,kw,1,C) too)."""
    return np.transpose(w, (2, 3, 1, 0))


def conv(sd, prefix: str, bias: bool = True) -> dict:
    """``{prefix}.weight`` (+ ``.bias``) of a ``nn.Conv2d`` -> flax ``nn.Conv`` params."""
    out = {"kernel": conv_kernel(sd[f"{prefix}.weight"])}
    if bias:
        out["bias"] = sd[f"{prefix}.bias"]
    return out


def dense(sd, prefix: str, bias: bool = True) -> dict:
    """``nn.Linear`` weight (out, in) -> flax ``nn.Dense`` kernel (in, out)."""
    out = {"kernel": np.transpose(sd[f"{prefix}.weight"])}
    if bias:
        out["bias"] = sd[f"{prefix}.bias"]
    return out


def batch_norm(sd, prefix: str) -> tuple[dict, dict]:
    """``nn.BatchNorm2d`` -> (params ``{scale, bias}``, batch_stats ``{mean, var}``)."""
    return ({"scale": sd[f"{prefix}.weight"], "bias": sd[f"{prefix}.bias"]},
            {"mean": sd[f"{prefix}.running_mean"], "var": sd[f"{prefix}.running_var"]})


def layer_norm(sd, prefix: str) -> dict:
    """``nn.LayerNorm`` -> flax ``nn.LayerNorm`` params ``{scale, bias}``."""
    return {"scale": sd[f"{prefix}.weight"], "bias": sd[f"{prefix}.bias"]}


TIMM_LN_EPS = 1e-6


def timm_layer_norm(name: str):
    """The flax LayerNorm that matches timm's (ConvNeXt, ViT): eps 1e-6, and
    ``use_fast_variance=False`` computes E[(x - mean)^2] like PyTorch, not E[x^2] - mean^2."""
    import flax.linen as nn

    return nn.LayerNorm(epsilon=TIMM_LN_EPS, use_fast_variance=False, name=name)


# --- the framework ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What did not fit. Names of variables are flax paths like ``params/stem/conv/kernel``."""

    missing: tuple[str, ...] = ()  # checkpoint keys the converter needed but did not find
    unexpected: tuple[str, ...] = ()  # checkpoint keys nobody read
    shape_mismatch: tuple[str, ...] = ()  # "path: checkpoint (a, b) vs model (c, d)"
    not_converted: tuple[str, ...] = ()  # model variables the converter did not produce
    extra_variables: tuple[str, ...] = ()  # converter outputs the model does not have

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch or
                    self.not_converted or self.extra_variables)

    def describe(self) -> str:
        parts = []
        for title, items in (("missing checkpoint keys", self.missing),
                             ("unexpected checkpoint keys", self.unexpected),
                             ("wrongly shaped", self.shape_mismatch),
                             ("model variables not converted", self.not_converted),
                             ("converted variables the model does not have",
                              self.extra_variables)):
            if items:
                parts.append(f"{len(items)} {title}:\n  " + "\n  ".join(items))
        return "\n".join(parts) if parts else "all keys matched"


def family_of(name: str):
    """The family module whose ``ENTRIES`` holds ``name``."""
    for fam in FAMILIES:
        try:
            mod = importlib.import_module(f"robustjax.models.{fam}")
        except ModuleNotFoundError as e:
            if e.name == f"robustjax.models.{fam}":
                continue  # family not written yet
            raise
        if name in mod.ENTRIES:
            return mod
    raise KeyError(f"no checkpoint converter for model {name!r}; loadable names: "
                   f"{', '.join(sorted(loadable_names()))}")


def loadable_names() -> list[str]:
    names = []
    for fam in FAMILIES:
        try:
            names += list(importlib.import_module(f"robustjax.models.{fam}").ENTRIES)
        except ModuleNotFoundError:
            pass
    return names


def _flatten(tree: Mapping) -> dict[str, Any]:
    return checkpoint.flatten(tree) if tree else {}


_unflatten = checkpoint.unflatten


def _build(name: str, num_classes: Optional[int], input_shape, overrides: dict):
    if name not in registry.MODELS:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(registry.MODELS))}")
    entry = registry.MODELS[name]
    spec = entry.spec
    changes = {}
    if num_classes is not None and num_classes != spec.num_classes:
        changes.update(num_classes=int(num_classes), class_names=None)
    if input_shape is not None:
        changes["input_shape"] = tuple(input_shape)
    spec = dataclasses.replace(spec, **changes) if changes else spec
    module = entry.module(num_classes=spec.num_classes, **overrides)
    return module, spec


def _read_robustjax_params(sd: Mapping[str, np.ndarray]):
    """If ``sd`` is a robustjax params file (``robustjax port``, ``checkpoint.save``):
    (flat variables, header with model name, spec and module overrides)."""
    if not checkpoint.is_robustjax_file(sd):
        return None
    variables, spec, meta = checkpoint.from_arrays(sd)
    if "model" not in meta or spec is None:
        raise weights.CheckpointError("this robustjax params file records no model name/spec; "
                                      "load it with robustjax.checkpoint.load")
    header = {"model": meta["model"], "spec": spec.to_dict(),
              "overrides": meta.get("overrides", {})}
    return _flatten(variables), header


def convert(name: str, state_dict: Mapping[str, np.ndarray], module, spec: ModelSpec,
            ) -> tuple[dict, LoadReport, dict]:
    """Convert a flat state dict for ``module``; returns (flat variables, report, init shapes)."""
    expected = _flatten(flax.core.unfreeze(jax.eval_shape(
        module.init, jax.random.PRNGKey(0), jnp.zeros((1,) + spec.input_shape, jnp.float32))))
    own = _read_robustjax_params(state_dict)
    if own is not None:
        produced, unread = dict(own[0]), []
        tracked = None
    else:
        fam = family_of(name)
        sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
        if hasattr(fam, "canonicalize_keys"):
            sd = fam.canonicalize_keys(sd)
        ignored = tuple(getattr(fam, "IGNORED_KEYS", ()))
        sd = {k: v for k, v in sd.items() if not (ignored and k.startswith(ignored))}
        tracked = TrackedStateDict(sd)
        produced = _flatten(fam.convert_state_dict(tracked, module))
        unread = tracked.unread()
    missing = list(tracked.missing) if tracked is not None else []
    shape_bad, not_converted, extra = [], [], []
    for path, want in expected.items():
        got = produced.get(path)
        if got is None:
            not_converted.append(path)
        elif isinstance(got, _Missing):
            if got.key not in missing:
                missing.append(got.key)
        elif tuple(np.shape(got)) != tuple(want.shape):
            shape_bad.append(f"{path}: checkpoint {tuple(np.shape(got))} vs model "
                             f"{tuple(want.shape)}")
    for path, got in produced.items():
        if path not in expected and not isinstance(got, _Missing):
            extra.append(path)
    report = LoadReport(tuple(missing), tuple(unread), tuple(shape_bad), tuple(not_converted),
                        tuple(extra))
    return produced, report, expected


def load_variables(name: str, checkpoint: Union[str, os.PathLike, Mapping[str, np.ndarray]],
                   strict: bool = True, *, num_classes: Optional[int] = None,
                   input_shape=None, **overrides):
    """Like :func:`load` but returns ``(module, variables, spec, report)``."""
    if isinstance(checkpoint, Mapping):
        sd, source = dict(checkpoint), "state dict"
        if any(isinstance(v, Mapping) for v in sd.values()):  # {"state_dict": {...}, ...}
            sd = weights.flatten_state_dict(sd, source)
    else:
        sd, source = weights.read_state_dict(checkpoint), os.fspath(checkpoint)
    own = _read_robustjax_params(sd)
    norm = None
    if own is None:  # RobustBench-style wrappers: module./model. prefixes, a Normalize layer
        sd, norm = weights.split_normalization(weights.strip_wrapper_prefixes(sd))
    if own is not None:  # a ported file remembers its architecture and spec
        header = own[1]
        if header["model"] != name:
            raise ValueError(f"{source} holds a ported {header['model']!r}, not {name!r}")
        stored = {k: tuple(v) if isinstance(v, list) else v  # JSON lists -> module tuples
                  for k, v in header.get("overrides", {}).items()}
        overrides = {**stored, **overrides}
        spec_file = ModelSpec.from_dict(header["spec"])
        num_classes = spec_file.num_classes if num_classes is None else num_classes
        input_shape = spec_file.input_shape if input_shape is None else input_shape
    module, spec = _build(name, num_classes, input_shape, overrides)
    if own is not None:
        spec = ModelSpec.from_dict(header["spec"])
    if norm is not None:  # the checkpoint's own normalisation replaces the entry's default
        spec = dataclasses.replace(spec, mean=norm[0], std=norm[1])
    produced, report, expected = convert(name, sd, module, spec)
    if not report.ok:
        msg = (f"checkpoint {source} does not fit model {name!r} "
               f"({spec.num_classes} classes):\n{report.describe()}")
        if strict:
            raise StateDictMismatchError(msg + "\n(use strict=False to load what fits)")
        warnings.warn(msg, stacklevel=3)
    flat = {}
    init = None
    for path, want in expected.items():
        got = produced.get(path)
        if got is None or isinstance(got, _Missing) or tuple(np.shape(got)) != want.shape:
            if init is None:  # fresh initial values for what did not fit (strict=False)
                # unsafe_rbg: compiles ~7x faster than threefry for a ResNet init; quality of
                # these placeholder values does not matter.
                init = _flatten(flax.core.unfreeze(jax.jit(module.init)(
                    jax.random.key(0, impl="unsafe_rbg"),
                    jnp.zeros((1,) + spec.input_shape, jnp.float32))))
            got = init[path]
        flat[path] = jnp.asarray(np.asarray(got, dtype=want.dtype))
    if own is None:
        spec = dataclasses.replace(spec, source=source)
    return module, _unflatten(flat), spec, report


def load(name: str, checkpoint: Union[str, os.PathLike, Mapping[str, np.ndarray]],
         strict: bool = True, *, num_classes: Optional[int] = None, input_shape=None,
         **overrides) -> Model:
    """Build model ``name`` with weights from a PyTorch or robustjax checkpoint.

    Args:
      name: a zoo name (``robustjax.models.loading.loadable_names()``), e.g. ``"resnet101"``.
      checkpoint: a ``.pth``/``.pt``/``.safetensors``/``.npz`` path (timm, torchvision,
        facebookresearch or RobustBench key names; a file from ``robustjax port``), or a state
        dict. Training-script wrappers are undone: a nested ``{"state_dict": ...}`` /
        ``{"model_state_dict": ...}`` dict, ``module.`` (``nn.DataParallel``) and ``model.``
        prefixes on every key, and normalisation buffers inside the model (RobustBench's
        ``normalize.mean``/``normalize.std``, ``mu``/``sigma``, ``mean``/``std``, an
        ``nn.Sequential(Normalize, net)``): these become the spec's ``mean``/``std``.
      strict: raise :class:`StateDictMismatchError` listing every missing, unexpected or
        wrongly shaped key; ``False`` warns and keeps initial values for what does not fit.
      num_classes, input_shape, **overrides: as in ``robustjax.models.create`` (e.g. reduced
        depths for tests, ``num_classes=21841`` for an ImageNet-22k head).

    Returns:
      A ``Model`` whose ``apply_fn`` takes [0, 1] pixels (NHWC float32) and applies the
      checkpoint's normalisation; ``spec`` holds its preprocessing and ``source`` the path.

    Example::

        model = load("efficientnet_lite0", efficientnet.pretrained_path())
        logits = model.apply_fn(model.params, x)  # x: [b, 224, 224, 3] in [0, 1]
    """
    module, variables, spec, _ = load_variables(name, checkpoint, strict, num_classes=num_classes,
                                                input_shape=input_shape, **overrides)
    return registry.wrap(module, variables, spec)


def save_params(path, name: str, variables, spec: ModelSpec, overrides: Optional[dict] = None,
                overwrite: bool = False) -> dict:
    """Write ``variables`` with ``robustjax.checkpoint.save``, recording model name and overrides.

    ``load(name, path)`` then rebuilds the same model exactly. Returns the header (model name,
    spec, module overrides) as a JSON-able dict.
    """
    header = {"model": name, "spec": spec.to_dict(), "overrides": dict(overrides or {})}
    checkpoint.save(path, flax.core.unfreeze(variables), spec,
                    {"model": name, "overrides": header["overrides"]}, overwrite=overwrite)
    return header
