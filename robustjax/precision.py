"""Mixed precision as a policy on a ``Model``: bfloat16 compute, float32 params and logits.

A :class:`Policy` names three dtypes, as DeepMind's ``jmp`` does (Micikevicius et al. 2018,
"Mixed Precision Training"; Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning
Training"), plus the accumulation dtype of products:

* ``param_dtype``: how parameters are stored and trained (float32: the master weights the
  optimiser updates; bf16's 8 exponent bits need no loss scaling);
* ``compute_dtype``: what the model computes in: parameters and images are cast to it at the
  start of every call, so every layer's activations are ``compute_dtype``;
* ``output_dtype``: the dtype of the logits handed to losses, attacks and metrics (float32:
  softmax, cross-entropy, margins and argmax ties are computed as before);
* ``accumulation_dtype``: every ``dot_general`` and ``conv_general_dilated`` of the model with
  ``compute_dtype`` operands accumulates in this dtype (``preferred_element_type``) and rounds
  its result to ``compute_dtype`` once (Kalamkar et al. 2019, section 3: FMA in bf16, sums in
  fp32). The backward pass runs the transposed products on ``compute_dtype`` cotangents
  (accumulating as the backend does: float32 on XLA:CPU, cuBLAS and TPUs), so it is as fast
  as the forward pass. ``None`` leaves all accumulation to the backend.

:func:`with_policy` returns the same ``Model`` with ``apply_fn``, ``embed_fn`` and
``train_apply_fn`` wrapped; nothing else in robustjax changes. Attacks, corruptions and
metrics keep their float32 images in [0, 1] (the eps ball and the [0, 1] box are enforced on
float32 iterates); only the model sees them rounded to ``compute_dtype``, and the gradient
flows back through the cast (its derivative is the identity) as float32. Training keeps
float32 parameters and gets float32 gradients. Batch statistics are cast to ``compute_dtype``
for the call (flax's BatchNorm computes its mean and variance in float32 regardless) and
the updated running averages come back in ``param_dtype``.

    >>> fast = precision.with_policy(model, precision.BF16)
    >>> fast.apply_fn(fast.params, x).dtype          # float32 logits, bf16 inside
    dtype('float32')

On CPUs without native bf16 arithmetic (AVX-512 BF16 / AMX) XLA converts bf16 dots and
convolutions to float32 and back: the policy is then correct but not faster (see
``benchmarks/results/bf16_speed.md``). robustjax's oneDNN kernels take float32 only, so a bf16
model's convolutions run on XLA's.

What it changes (measured, ``benchmarks/results/bf16_speed.md``): gradient attacks (FGSM, PGD,
APGD-CE) on the embedded default give the float32 robust accuracy to within 2 of 256 images;
score-based search (Square) stalls on the quantised margins (+8.2 points at eps 0.1). Run
query-based and decision-based attacks, and certified bounds (bound propagation interprets
the float32 graph), on ``with_policy(model, FP32)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.extend import core as jcore

_PRODUCTS = (lax.dot_general_p, lax.conv_general_dilated_p)


def _dtype(value, field: str):
    try:
        dtype = jnp.dtype(value)
    except TypeError as e:
        raise TypeError(f"Policy.{field} must be a floating dtype (jnp.float32, jnp.bfloat16, "
                        f"jnp.float16), got {value!r}") from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"Policy.{field} must be a floating dtype (jnp.float32, jnp.bfloat16, "
                        f"jnp.float16), got {dtype}")
    return dtype


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which dtypes a model stores, computes, returns and accumulates in (see the module).

    Attributes:
      param_dtype: dtype of stored/trained parameters (float32).
      compute_dtype: dtype of activations and of the parameters inside a call.
      output_dtype: dtype of the logits (and features) the model returns (float32).
      accumulation_dtype: dtype products (dot, conv) accumulate in, or None (the backend's).
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32
    accumulation_dtype: Optional[Any] = jnp.float32

    def __post_init__(self):
        for field in ("param_dtype", "compute_dtype", "output_dtype"):
            object.__setattr__(self, field, _dtype(getattr(self, field), field))
        if self.accumulation_dtype is not None:
            object.__setattr__(self, "accumulation_dtype",
                               _dtype(self.accumulation_dtype, "accumulation_dtype"))

    def cast_to_compute(self, tree):
        return cast_floating(tree, self.compute_dtype)

    def cast_to_param(self, tree):
        return cast_floating(tree, self.param_dtype)

    def cast_to_output(self, tree):
        return cast_floating(tree, self.output_dtype)

    def __repr__(self) -> str:
        acc = None if self.accumulation_dtype is None else self.accumulation_dtype.name
        return (f"Policy(param={self.param_dtype.name}, compute={self.compute_dtype.name}, "
                f"output={self.output_dtype.name}, accumulation={acc})")


FP32 = Policy()
BF16 = Policy(compute_dtype=jnp.bfloat16)
POLICIES = {"float32": FP32, "bfloat16": BF16}


def get_policy(policy) -> Policy:
    """A ``Policy`` from a Policy or a name in ``POLICIES`` ("float32", "bfloat16")."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str) and policy in POLICIES:
        return POLICIES[policy]
    raise ValueError(f"unknown precision policy {policy!r}: expected a robustjax.precision."
                     f"Policy or one of {sorted(POLICIES)}")


def cast_floating(tree, dtype):
    """Every floating-point array leaf of ``tree`` as ``dtype``; integers, keys, None as is."""
    dtype = jnp.dtype(dtype)

    def cast(a):
        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != dtype:
            return jnp.asarray(a).astype(dtype)
        return a

    return jax.tree_util.tree_map(cast, tree)


# --------------------------------------------------------------- float32 accumulation


def _needs_rewrite(eqn, compute) -> bool:
    # jnp.einsum / jnp.matmul pass the result dtype as preferred_element_type explicitly
    if eqn.primitive not in _PRODUCTS or eqn.params.get("preferred_element_type") not in (
            None, compute):
        return False
    return all(v.aval.dtype == compute for v in eqn.invars)


def _sub_jaxprs(value):
    if isinstance(value, jcore.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jcore.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _has_products(jaxpr, compute) -> bool:
    return any(_needs_rewrite(e, compute)
               or any(_has_products(s, compute) for v in e.params.values()
                      for s in _sub_jaxprs(v)) for e in jaxpr.eqns)


def _spec(var):
    return jax.ShapeDtypeStruct(var.aval.shape, var.aval.dtype, weak_type=var.aval.weak_type)


def _rewrite_param(value, compute, acc):
    if isinstance(value, jcore.ClosedJaxpr):
        if not _has_products(value.jaxpr, compute):
            return value
        return jax.make_jaxpr(lambda *a: _eval(value.jaxpr, value.consts, a, compute, acc))(
            *[_spec(v) for v in value.jaxpr.invars])
    if isinstance(value, jcore.Jaxpr):
        if not _has_products(value, compute):
            return value
        new = _rewrite_param(jcore.ClosedJaxpr(value, ()), compute, acc)
        return new.jaxpr if not new.consts else value  # an open jaxpr takes no constants
    if isinstance(value, tuple) and any(isinstance(v, (jcore.ClosedJaxpr, jcore.Jaxpr))
                                        for v in value):
        return tuple(_rewrite_param(v, compute, acc) for v in value)
    return value


def _accumulating(prim, params, compute, acc):
    """``prim`` (a bilinear product) accumulating in ``acc``, rounded to ``compute`` once.

    A ``custom_jvp`` whose tangent is the plain ``compute``-dtype product: its transposes (the
    backward pass) then take ``compute``-dtype cotangents and run as ``compute``-dtype
    products, as fast as the forward ones; they accumulate as the backend does (float32 for
    bf16 on XLA's CPU, on GPUs through cuBLAS' float32 compute type, on TPU's MXU). A
    float32 accumulation written into the tangent would hand the transposes float32
    cotangents, i.e. float32 matmuls in the backward pass.
    """
    plain = functools.partial(prim.bind, **params)

    @jax.custom_jvp
    def product(a, b):
        return prim.bind(a, b, **dict(params, preferred_element_type=acc)).astype(compute)

    def jvp(primals, tangents):
        (a, b), (ta, tb) = primals, tangents
        out = product(a, b)
        terms = [plain(ta, b) if not isinstance(ta, SymbolicZero) else None,
                 plain(a, tb) if not isinstance(tb, SymbolicZero) else None]
        terms = [t for t in terms if t is not None]
        tangent = terms[0] if len(terms) == 1 else terms[0] + terms[1] if terms else (
            jnp.zeros_like(out))
        return out, tangent

    product.defjvp(jvp, symbolic_zeros=True)
    return product


def _eval(jaxpr, consts, args, compute, acc):
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts):
        env[var] = val
    for var, val in zip(jaxpr.invars, args):
        env[var] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if _needs_rewrite(eqn, compute):
            with eqn.ctx.manager:
                out = _accumulating(eqn.primitive, eqn.params, compute, acc)(*invals)
        else:
            params = {k: _rewrite_param(v, compute, acc) for k, v in eqn.params.items()}
            with eqn.ctx.manager:
                out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
        if eqn.primitive.multiple_results:
            for var, val in zip(eqn.outvars, out):
                env[var] = val
        else:
            env[eqn.outvars[0]] = out
    return [read(v) for v in jaxpr.outvars]


def accumulate_in(fn: Callable, compute_dtype, accumulation_dtype) -> Callable:
    """``fn`` with every ``compute_dtype`` dot/convolution accumulating in
    ``accumulation_dtype`` (``preferred_element_type``) and rounded back to ``compute_dtype``.

    ``fn(*args)`` takes pytrees of arrays; it is traced to a jaxpr on each call (inside the
    caller's ``jit`` that is once per trace) and re-evaluated with the products rewritten,
    nested ``jit``/``scan``/``remat``/``custom_jvp`` bodies included.
    """
    compute, acc = jnp.dtype(compute_dtype), jnp.dtype(accumulation_dtype)

    @functools.wraps(fn)
    def wrapped(*args):
        leaves, tree = jax.tree.flatten(args)
        closed, out_shape = jax.make_jaxpr(
            lambda *flat: fn(*jax.tree.unflatten(tree, flat)), return_shape=True)(*leaves)
        if not _has_products(closed.jaxpr, compute):
            return fn(*args)
        out = _eval(closed.jaxpr, closed.consts, leaves, compute, acc)
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped


# -------------------------------------------------------------------- model wrapping


def _inner(fn: Callable, policy: Policy) -> Callable:
    if policy.accumulation_dtype is None or policy.accumulation_dtype == policy.compute_dtype:
        return fn
    return accumulate_in(fn, policy.compute_dtype, policy.accumulation_dtype)


@functools.lru_cache(maxsize=256)
def policy_apply(apply_fn: Callable, policy: Policy) -> Callable:
    """``apply_fn(params, x)`` under ``policy``: params and ``x`` cast to ``compute_dtype``,
    the result (logits ``[b, k]`` or features) cast to ``output_dtype``.

    Cached per ``(apply_fn, policy)``, so the entry points' ``jit`` cache (keyed on the model
    function) is hit by every later call. The function's ``policy`` attribute is the policy.
    """
    policy = get_policy(policy)
    inner = _inner(apply_fn, policy)

    def apply(params, x):
        return policy.cast_to_output(inner(policy.cast_to_compute(params),
                                           policy.cast_to_compute(x)))

    apply.policy = policy
    apply.__wrapped__ = apply_fn
    apply.__name__ = f"{getattr(apply_fn, '__name__', 'apply_fn')}_{policy.compute_dtype.name}"
    return apply


@functools.lru_cache(maxsize=256)
def policy_train_apply(train_apply_fn: Callable, policy: Policy) -> Callable:
    """``train_apply_fn(variables, x) -> (logits, mutated)`` under ``policy``: logits in
    ``output_dtype``, the updated collections (running averages) in ``param_dtype``."""
    policy = get_policy(policy)
    inner = _inner(train_apply_fn, policy)

    def train_apply(variables, x):
        logits, mutated = inner(policy.cast_to_compute(variables), policy.cast_to_compute(x))
        return policy.cast_to_output(logits), policy.cast_to_param(mutated)

    train_apply.policy = policy
    train_apply.__wrapped__ = train_apply_fn
    return train_apply


def policy_of(apply_fn: Callable) -> Policy:
    """The policy an ``apply_fn`` runs under (``FP32`` for a function not made here)."""
    return getattr(apply_fn, "policy", FP32)


def with_policy(model, policy) -> Any:
    """The ``Model`` computing under ``policy`` (a ``Policy`` or "bfloat16"/"float32").

    Parameters are cast to ``policy.param_dtype`` once (a no-op for float32 models); the model
    functions cast them to ``compute_dtype`` inside each call. Applying a policy to a model that
    already has one replaces it (the original functions are kept, not wrapped twice).
    """
    from robustjax.types import Model

    if not isinstance(model, Model):
        raise TypeError(f"with_policy expects a robustjax Model, got {type(model).__name__}")
    policy = get_policy(policy)

    def base(fn):
        return getattr(fn, "__wrapped__", fn) if hasattr(fn, "policy") else fn

    apply_fn, embed_fn, train_fn = base(model.apply_fn), model.embed_fn, model.train_apply_fn
    embed_fn = None if embed_fn is None else base(embed_fn)
    train_fn = None if train_fn is None else base(train_fn)
    if policy == FP32:
        wrapped = (apply_fn, embed_fn, train_fn)
    else:
        wrapped = (policy_apply(apply_fn, policy),
                   None if embed_fn is None else policy_apply(embed_fn, policy),
                   None if train_fn is None else policy_train_apply(train_fn, policy))
    return dataclasses.replace(model, apply_fn=wrapped[0], params=policy.cast_to_param(
        model.params), embed_fn=wrapped[1], train_apply_fn=wrapped[2])


def dtypes_of_products(fn: Callable, *args) -> list[tuple[str, str, str]]:
    """``[(primitive, operand dtype, result dtype), ...]`` of every dot/convolution that
    ``fn(*args)`` runs, nested ones included: how to check what a policy computes in."""
    out = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive in _PRODUCTS:
                out.append((eqn.primitive.name, str(eqn.invars[0].aval.dtype),
                            str(eqn.outvars[0].aval.dtype)))
            for v in eqn.params.values():
                for sub in _sub_jaxprs(v):
                    walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return out


__all__ = ["BF16", "FP32", "POLICIES", "Policy", "accumulate_in", "cast_floating",
           "dtypes_of_products", "get_policy", "policy_apply", "policy_of",
           "policy_train_apply", "with_policy"]
