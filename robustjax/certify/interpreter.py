"""Bound propagation as an interpreter over the jaxpr of any JAX function.

``flatten(fn, *args)`` traces ``fn`` with ``jax.make_jaxpr`` and inlines every sub-jaxpr of a
call primitive (``jit``/``pjit``, ``custom_jvp_call`` such as ``jax.nn.relu``,
``custom_vjp_call``, ``closed_call``, ``checkpoint``) into one flat list of equations whose
variables are renamed to integers. ``interpret(graph, rules, args)`` walks that list: an
equation whose inputs are all ordinary arrays is evaluated with the primitive itself (this is
how weights, BatchNorm statistics and normalisation constants are folded), one that has a
bound among its inputs is handed to ``rules[primitive_name]``. A primitive without a rule is a
loud ``UnsupportedPrimitiveError`` that names it.

The design follows jax_verify (an interpreter plus one dict from primitive to rule) without
its dependence on removed JAX internals; only the public ``jax.extend.core`` names are used.

Example::

    graph = flatten(apply_fn, params, x[:1])
    env = interpret(graph, ibp.IBP_RULES, [*jax.tree.leaves(params), Interval(lo, hi)])
    logits_interval = env[graph.outputs[0]]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
from jax.extend import core as jcore

from robustjax.kernels import LAX_EQUIVALENTS

# Call primitives whose body is inlined, and the parameter that holds the body.
CALL_PARAMS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "checkpoint": "jaxpr",
    "remat": "jaxpr",
}


class UnsupportedPrimitiveError(NotImplementedError):
    """A primitive reached a bound but the rule table has no entry for it."""


@dataclasses.dataclass(frozen=True)
class Lit:
    """A constant that appears inline in the graph (a jaxpr literal or a sub-jaxpr const)."""

    value: Any


@dataclasses.dataclass(frozen=True)
class Eqn:
    """One flat equation: ``outputs = prim.bind(*inputs, **params)``; atoms are ids or Lit."""

    prim: Any
    inputs: tuple
    outputs: tuple[int, ...]
    params: dict
    shapes: tuple[tuple[int, ...], ...]  # output shapes

    @property
    def name(self) -> str:
        return self.prim.name


@dataclasses.dataclass(frozen=True)
class Graph:
    """A flattened jaxpr. ``inputs`` follow ``jax.tree.leaves(args)`` of the traced call."""

    inputs: tuple[int, ...]
    consts: dict  # id -> value (the closed jaxpr's consts)
    eqns: tuple[Eqn, ...]
    outputs: tuple
    shapes: dict  # id -> shape
    producer: dict  # id -> index of the equation that defines it


def _sub_jaxpr(eqn) -> Optional[Any]:
    key = CALL_PARAMS.get(eqn.primitive.name)
    if key is None or key not in eqn.params:
        return None
    return eqn.params[key]


def flatten(fn: Callable, *args) -> Graph:
    """Trace ``fn(*args)`` (arrays or ``jax.ShapeDtypeStruct``) and inline all call bodies."""
    closed = jax.make_jaxpr(fn)(*args)
    counter = iter(range(1 << 62))
    eqns: list[Eqn] = []
    shapes: dict = {}
    consts: dict = {}

    def new_id(var) -> int:
        i = next(counter)
        shapes[i] = tuple(var.aval.shape)
        return i

    def inline(jaxpr, in_atoms: Sequence, const_atoms: Sequence) -> list:
        env: dict = {}
        for v, a in zip(jaxpr.constvars, const_atoms):
            env[v] = a
        for v, a in zip(jaxpr.invars, in_atoms):
            env[v] = a

        def read(atom):
            if isinstance(atom, jcore.Literal):
                return Lit(atom.val)
            return env[atom]

        for eqn in jaxpr.eqns:
            ins = [read(a) for a in eqn.invars]
            sub = _sub_jaxpr(eqn)
            if sub is not None:
                if isinstance(sub, jcore.ClosedJaxpr):
                    body, body_consts = sub.jaxpr, [Lit(c) for c in sub.consts]
                else:
                    body, body_consts = sub, []
                outs = inline(body, ins, body_consts)
                for v, a in zip(eqn.outvars, outs):
                    env[v] = a
                continue
            outs = tuple(new_id(v) for v in eqn.outvars)
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
            # robustjax's oneDNN convolution is lax's convolution to a bound rule
            prim = LAX_EQUIVALENTS.get(eqn.primitive, eqn.primitive)
            eqns.append(Eqn(prim, tuple(ins), outs, dict(eqn.params),
                            tuple(tuple(v.aval.shape) for v in eqn.outvars)))
        return [read(v) for v in jaxpr.outvars]

    const_ids = []
    for v, c in zip(closed.jaxpr.constvars, closed.consts):
        i = new_id(v)
        consts[i] = c
        const_ids.append(i)
    input_ids = tuple(new_id(v) for v in closed.jaxpr.invars)
    outputs = inline(closed.jaxpr, input_ids, const_ids)
    producer = {o: k for k, e in enumerate(eqns) for o in e.outputs}
    return Graph(input_ids, consts, tuple(eqns), tuple(outputs), shapes, producer)


def read(env: Mapping, atom):
    """The value of an atom: a literal's value or the environment's entry."""
    return atom.value if isinstance(atom, Lit) else env[atom]


def evaluate(eqn: Eqn, values: Sequence):
    """Apply the equation's primitive to concrete (or traced) arrays; returns a list."""
    out = eqn.prim.bind(*values, **eqn.prim.get_bind_params(eqn.params))
    return list(out) if eqn.prim.multiple_results else [out]


def interpret(graph: Graph, rules: Mapping[str, Callable], args: Sequence,
              is_bound: Callable[[Any], bool], hook: Optional[Callable] = None) -> dict:
    """Run ``graph`` on ``args`` (one per graph input); returns the environment id -> value.

    ``rules[name](prim, *values, **params)`` gets the equation's inputs (bounds or arrays) and
    returns a bound (or a list of them for multiple-result primitives). ``hook(index, eqn,
    values, env)``, if given, may return replaced input values before the rule runs (CROWN uses
    it to tighten the bounds that enter a ReLU).
    """
    if len(args) != len(graph.inputs):
        raise ValueError(f"the graph has {len(graph.inputs)} inputs, got {len(args)} values")
    env = dict(graph.consts)
    env.update(zip(graph.inputs, args))
    for k, eqn in enumerate(graph.eqns):
        values = [read(env, a) for a in eqn.inputs]
        if not any(is_bound(v) for v in values):
            outs = evaluate(eqn, values)
        else:
            rule = rules.get(eqn.name)
            if rule is None:
                raise UnsupportedPrimitiveError(
                    f"no bound rule for primitive {eqn.name!r}; supported primitives: "
                    f"{', '.join(sorted(rules))}")
            if hook is not None:
                values = hook(k, eqn, values, env)
            out = rule(eqn.prim, *values, **eqn.params)
            outs = list(out) if eqn.prim.multiple_results else [out]
        env.update(zip(eqn.outputs, outs))
    return env
