"""Input-transformation defenses as ``Model -> Model`` wrappers, and their adaptive versions.

A ``Transformation`` is a pure function ``transform(x, key) -> x'`` of an NHWC float32 batch in
[0, 1] (same shape out, in [0, 1]) plus what an evaluator must know to attack it: whether its
gradient is usable (``differentiable``), whether it is random (``randomized``), and the
function whose gradient stands in for it under BPDA (``backward``, the identity by default;
Athalye et al. 2018, "Obfuscated gradients give a false sense of security", Sec. 4.1).

``defend(model, t, key)`` returns a ``Model`` that applies ``t`` before ``model``: same
``ModelSpec`` (input shape, classes, normalisation inside) except ``source``, which names the
defense; ``embed_fn`` is defended too. Its ``params`` are ``DefendedParams(params, key)``; a
randomized transform draws from ``fold_in(key, seed(x))`` (the input's bits, as
``attacks.wrappers.eot`` does), so the function stays pure and each attack step sees fresh
randomness. Its ``apply_fn`` is a frozen dataclass (hashable: attacks jit it as a static
argument) whose ``differentiable`` attribute tells attacks whether plain gradients mean
anything; the gradient of a non-differentiable transform is taken as zero (what a naive
attacker gets: ``attacks`` warn when they see one).

The adaptive versions attack the same forward computation:

* ``bpda(defended)``: the real transform forward, ``t.backward``'s gradient backward
  (``attacks.wrappers.bpda``);
* ``eot(defended, n)``: log of the softmax averaged over ``n`` draws of a randomized transform
  (``attacks.wrappers.eot``; Athalye et al. 2018, "Synthesizing robust adversarial examples"),
  BPDA inside when the transform is not differentiable.

Example::

    defended = defend(model, get("bit_depth", bits=1))
    pgd(defended.apply_fn, defended.params, x, y, key, cfg)   # warns: gradients are zero
    adaptive = bpda(defended)
    pgd(adaptive.apply_fn, adaptive.params, x, y, key, cfg)   # the adaptive evaluation
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax

from robustjax import validation
from robustjax.attacks import wrappers
from robustjax.types import Model


def identity(x, key=None):
    """The default BPDA backward approximation: ``x``."""
    del key
    return x


@dataclasses.dataclass(frozen=True)
class Bound:
    """``fn(x, key, **kwargs)`` with the keyword arguments fixed, compared and hashed by value
    (two equal transformations share one compiled attack)."""

    fn: Callable
    kwargs: tuple = ()

    def __call__(self, x, key=None):
        return self.fn(x, key, **dict(self.kwargs))


@dataclasses.dataclass(frozen=True)
class Transformation:
    """An input transformation ``x [b, H, W, C] in [0, 1] -> x' (same shape) in [0, 1]``.

    Attributes:
      name: what it is, with its parameters (``"jpeg(quality=75)"``); goes into spec.source.
      transform: ``transform(x, key) -> x'``; ``key`` is ignored unless ``randomized``.
      differentiable: whether ``jax.grad`` through ``transform`` gives a useful gradient
        (False for quantisation, whose gradient is zero almost everywhere, and host codecs).
      randomized: whether ``transform`` draws from ``key`` (then attack it with ``eot``).
      backward: BPDA's stand-in ``backward(x, key) -> x'`` whose gradient replaces the
        transform's; the identity by default.
    """

    name: str
    transform: Callable
    differentiable: bool
    randomized: bool = False
    backward: Callable = identity

    def __call__(self, x, key: Optional[jax.Array] = None):
        """``transform(x, key)`` after checking ``x`` (NHWC float in [0, 1])."""
        validation.check_images(x)
        if self.randomized and key is None:
            raise ValueError(f"{self.name} is randomized: pass a PRNG key, e.g. "
                             f"t(x, jax.random.key(0))")
        return self.transform(x, key)


class DefendedParams(NamedTuple):
    """Parameters of a defended model: the model's own and the key its transform draws from."""

    params: Any
    key: jax.Array


GRADIENTS = ("naive", "bpda")


@dataclasses.dataclass(frozen=True)
class DefendedApply:
    """``apply(DefendedParams(params, key), x) = apply_fn(params, t(x, fold_in(key, x)))``.

    ``gradient="naive"`` differentiates the transform as it is (a non-differentiable one as
    zero); ``"bpda"`` through ``t.backward``. ``eot_samples > 0`` returns EOT log-probabilities
    averaged over that many draws instead of the logits of one draw.
    """

    apply_fn: Callable
    transformation: Transformation
    gradient: str = "naive"
    eot_samples: int = 0

    def __post_init__(self):
        if self.gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {self.gradient!r}")

    def __repr__(self) -> str:  # short: it appears in the attacks' warnings
        eot = f", eot_samples={self.eot_samples}" if self.eot_samples else ""
        return (f"DefendedApply({self.transformation.name}, gradient={self.gradient!r}{eot}, "
                f"differentiable={self.differentiable})")

    @property
    def differentiable(self) -> bool:
        """Whether plain gradients of this function are meaningful (read by the attacks)."""
        return self.gradient == "bpda" or self.transformation.differentiable

    def layer(self, x, key):
        """The transform as this function differentiates it."""
        t = self.transformation
        if self.gradient == "bpda":
            return wrappers.bpda(lambda z: t.transform(z, key), lambda z: t.backward(z, key))(x)
        if not t.differentiable:  # what a naive attacker differentiates: nothing
            x = jax.lax.stop_gradient(x)
        return t.transform(x, key)

    def __call__(self, params: DefendedParams, x):
        if not isinstance(params, DefendedParams):
            raise TypeError(f"a defended model takes DefendedParams(params, key), got "
                            f"{type(params).__name__}; use defended.params")
        if self.eot_samples:
            averaged = wrappers.eot(self.apply_fn, lambda k, z: self.layer(z, k),
                                    self.eot_samples)
            return averaged(wrappers.EOTParams(params.params, params.key), x)
        key = params.key
        if self.transformation.randomized:
            key = jax.random.fold_in(key, wrappers._input_seed(x))
        return self.apply_fn(params.params, self.layer(x, key))


def defend(model: Model, transformation: Transformation,
           key: Optional[jax.Array] = None) -> Model:
    """``model`` behind ``transformation``: a ``Model`` with ``DefendedParams(params, key)``.

    ``key`` is required for a randomized transformation (and unused otherwise).
    """
    if not isinstance(transformation, Transformation):
        raise TypeError(f"transformation must be a Transformation (e.g. "
                        f"robustjax.defenses.transforms.get('jpeg', quality=75)), got "
                        f"{type(transformation).__name__}")
    if isinstance(model.apply_fn, DefendedApply):
        raise ValueError("model is already defended; compose transformations into one "
                         "Transformation instead of defending twice")
    if key is None:
        if transformation.randomized:
            raise ValueError(f"{transformation.name} is randomized: pass a PRNG key, e.g. "
                             f"defend(model, t, key=jax.random.key(0))")
        key = jax.random.key(0)  # never drawn from
    spec = dataclasses.replace(
        model.spec, source=f"{model.spec.source} + input transformation {transformation.name}")
    embed = None if model.embed_fn is None else DefendedApply(model.embed_fn, transformation)
    return Model(DefendedApply(model.apply_fn, transformation), DefendedParams(model.params, key),
                 spec, embed)


def _replace(defended: Model, what: str, **changes) -> Model:
    if not isinstance(defended.apply_fn, DefendedApply):
        raise TypeError(f"{what} takes a model returned by defend(model, transformation), got "
                        f"apply_fn {defended.apply_fn!r}")
    embed = defended.embed_fn
    if embed is not None:
        embed = dataclasses.replace(embed, gradient=changes.get("gradient", embed.gradient))
    spec = dataclasses.replace(defended.spec, source=f"{defended.spec.source} [{what}]")
    return Model(dataclasses.replace(defended.apply_fn, **changes), defended.params, spec, embed)


def bpda(defended: Model) -> Model:
    """The same defended model, differentiated through ``transformation.backward`` (BPDA)."""
    return _replace(defended, "BPDA", gradient="bpda")


def eot(defended: Model, num_samples: int = 8) -> Model:
    """EOT over ``num_samples`` draws (log-probabilities); BPDA inside if not differentiable.

    ``embed_fn`` stays one draw (averaged features mean nothing).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    apply = defended.apply_fn
    bpda_inside = isinstance(apply, DefendedApply) and (
        apply.gradient == "bpda" or not apply.transformation.differentiable)
    gradient = "bpda" if bpda_inside else "naive"
    return _replace(defended, f"EOT-{num_samples}" + ("+BPDA" if gradient == "bpda" else ""),
                    gradient=gradient, eot_samples=num_samples)


def adaptive(defended: Model, num_samples: int = 8) -> Model:
    """The adaptive attack's model (Athalye et al. 2018): ``eot(defended, num_samples)`` for a
    randomized transformation (BPDA inside when it is not differentiable), ``bpda(defended)``
    for a deterministic one."""
    if not isinstance(defended.apply_fn, DefendedApply):
        raise TypeError(f"adaptive takes a model returned by defend(model, transformation), "
                        f"got apply_fn {defended.apply_fn!r}")
    if defended.apply_fn.transformation.randomized:
        return eot(defended, num_samples)
    return bpda(defended)


__all__ = ["Bound", "DefendedApply", "DefendedParams", "Transformation", "adaptive", "bpda",
           "defend", "eot", "identity"]
