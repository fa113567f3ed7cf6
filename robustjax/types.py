"""The one boundary object of robustjax: ``Model(apply_fn, params, spec)``.

Conventions every module relies on:

* images ``x``: float32, NHWC, pixel range [0, 1];
* labels ``y``: int32, shape ``[b]``, in ``[0, num_classes)``;
* logits: float32, shape ``[b, k]``; the number of classes comes from the logits.

Normalisation (mean/std) lives *inside* ``apply_fn``, so eps, step sizes and corruption
strengths are always in pixel units. Attacks, corruptions, certifiers and metrics only ever
receive ``apply_fn`` and ``params``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import validation

Array = jax.Array
Params = Any  # a pytree of arrays (flax variables: {"params": ..., "batch_stats": ...})
ApplyFn = Callable[[Params, Array], Array]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything about a model that is not its weights.

    Attributes:
      name: registry name of the architecture (e.g. ``"cnn"``, ``"convnext_tiny"``).
      input_shape: ``(H, W, C)`` the model expects.
      num_classes: number of logits.
      mean, std: per-channel normalisation applied inside ``apply_fn`` to [0, 1] pixels.
      class_names: optional names of the classes, ``len == num_classes``.
      source: where the weights came from (a path, "random init", "trained on mnist5k" ...).
      resize, crop_pct, interpolation: the checkpoint's eval preprocessing (timm convention:
        resize the short side to ``floor(size / crop_pct)``, then center-crop ``size``).
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    class_names: Optional[tuple[str, ...]] = None
    source: str = "random init"
    crop_pct: Optional[float] = None
    interpolation: str = "bilinear"

    def __post_init__(self):
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape must be (H, W, C), got {self.input_shape!r}")
        channels = self.input_shape[-1]
        for field in ("mean", "std"):
            value = getattr(self, field)
            if len(value) not in (1, channels):
                raise ValueError(
                    f"{field} must have 1 or {channels} entries (one per channel), got {value!r}"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std!r}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but num_classes is "
                f"{self.num_classes}"
            )

    def __repr__(self) -> str:
        """A constructor-like line with the class names summarised (not all 1,000 of them)."""
        parts = [f"name={self.name!r}", f"input_shape={tuple(self.input_shape)}",
                 f"num_classes={self.num_classes}"]
        if self.class_names is not None:
            parts.append(f"class_names={summarize_names(self.class_names)}")
        parts += [f"mean={tuple(self.mean)}", f"std={tuple(self.std)}",
                  f"source={self.source!r}"]
        if self.crop_pct is not None:
            parts.append(f"crop_pct={self.crop_pct}")
        if self.crop_pct is not None or self.interpolation != "bilinear":
            parts.append(f"interpolation={self.interpolation!r}")
        return f"ModelSpec({', '.join(parts)})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        for key in ("input_shape", "mean", "std"):
            d[key] = tuple(d[key])
        if d.get("class_names") is not None:
            d["class_names"] = tuple(d["class_names"])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class Model:
    """A classifier as pure functions plus its weights.

    ``apply_fn(params, x) -> logits`` with ``x`` float32 NHWC in [0, 1].
    ``embed_fn(params, x) -> features`` gives the penultimate features (may be ``None``).
    ``train_apply_fn(params, x) -> (logits, mutated)`` runs the model in train mode (BatchNorm
    on the batch's statistics) and returns the updated collections (``{"batch_stats": ...}``);
    ``None`` for a model without batch statistics (see ``robustjax.train.modes``).
    """

    apply_fn: ApplyFn
    params: Params
    spec: ModelSpec
    embed_fn: Optional[ApplyFn] = None
    train_apply_fn: Optional[Callable] = None

    def __call__(self, x: Array) -> Array:
        return self.apply_fn(self.params, x)

    def with_policy(self, policy) -> "Model":
        """This model under a precision policy (``robustjax.precision``):
        ``model.with_policy("bfloat16")`` computes in bf16 with fp32 params and logits."""
        from robustjax import precision

        return precision.with_policy(self, policy)

    @property
    def policy(self):
        """The precision policy ``apply_fn`` runs under (``precision.FP32`` by default)."""
        from robustjax import precision

        return precision.policy_of(self.apply_fn)

    def __repr__(self) -> str:
        """One line: name, input, classes (the first few names), normalisation, sizes."""
        s = self.spec
        classes = f"{s.num_classes} classes"
        if s.class_names is not None:
            classes += f" {summarize_names(s.class_names)}"
        parts = [f"{s.name!r}", "x {}x{}x{} in [0, 1] -> {}".format(*s.input_shape, classes),
                 f"mean={tuple(s.mean)}", f"std={tuple(s.std)}", count_parameters(self.params),
                 f"source={s.source!r}"]
        extra = [n for n in ("embed_fn", "train_apply_fn") if getattr(self, n) is not None]
        if extra:
            parts.append("with " + ", ".join(extra))
        return f"Model({', '.join(parts)})"


def summarize_names(names, first: int = 3) -> str:
    """``('tench', 'goldfish', 'great white shark', ... +997 more)``; short tuples in full.

    Of a long tuple, the first few names are shown up to their first comma (ImageNet's
    ``'tench, Tinca tinca'`` -> ``'tench'``).
    """
    names = tuple(names)
    if len(names) <= first + 2:
        return repr(names)
    shown = (str(n).split(",")[0] for n in names[:first])
    return "(" + ", ".join(map(repr, shown)) + f", ... +{len(names) - first} more)"


def _format_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def count_parameters(params: Params) -> str:
    """``"28,589,128 parameters (109.1 MiB float32) + 13,632 batch statistics"``."""
    def size(tree):
        leaves = jax.tree.leaves(tree)
        n = sum(int(np.prod(np.shape(x))) for x in leaves)
        nbytes = sum(int(np.prod(np.shape(x))) * np.dtype(getattr(x, "dtype", np.float32))
                     .itemsize for x in leaves)
        dtypes = sorted({str(np.dtype(getattr(x, "dtype", np.float32))) for x in leaves})
        return n, nbytes, dtypes

    if isinstance(params, dict) and "params" in params:
        trainable = params["params"]
        others = {k: v for k, v in params.items() if k != "params"}
    else:
        trainable, others = params, {}
    n, nbytes, dtypes = size(trainable)
    out = f"{n:,} parameters ({_format_bytes(nbytes)} {'/'.join(dtypes) or 'float32'})"
    for name, tree in others.items():
        k = size(tree)[0]
        if k:
            out += f" + {k:,} {name.replace('_', ' ').replace('stats', 'statistics')}"
    return out


def normalize(x: Array, mean, std) -> Array:
    """``(x - mean) / std`` per channel, broadcasting over NHWC."""
    # Explicit broadcast shape: no implicit rank promotion (strict-promotion users stay happy).
    shape = (1,) * (x.ndim - 1) + (-1,)
    mean = jnp.asarray(mean, dtype=x.dtype).reshape(shape)
    std = jnp.asarray(std, dtype=x.dtype).reshape(shape)
    return (x - mean) / std


def check_images(x, expected_shape: Optional[tuple[int, ...]] = None, name: str = "x") -> None:
    """Raise a ``robustjax.validation.InputError`` that says what is wrong with an image batch.

    Expects float NHWC in [0, 1], a non-empty batch. ``expected_shape`` is ``(H, W, C)`` if
    the model fixes it. Value checks are skipped under ``jit`` (tracers have no values). The
    checks live in ``robustjax.validation``, shared by every entry point.
    """
    validation.check_images(x, expected_shape, name)


def check_labels(y, num_classes: Optional[int] = None, batch: Optional[int] = None,
                 name: str = "y") -> None:
    """Raise if labels are not int [b] in ``[0, num_classes)`` (``robustjax.validation``)."""
    validation.check_labels(y, num_classes, batch, name)


def check_batch(x, y=None, num_classes: Optional[int] = None,
                expected_shape: Optional[tuple[int, ...]] = None) -> None:
    """Validate an image batch and (optionally) its labels together."""
    check_images(x, expected_shape)
    if y is not None:
        check_labels(y, num_classes, batch=np.shape(x)[0])
