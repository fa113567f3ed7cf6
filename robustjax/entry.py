"""One mechanism behind every public entry point that takes a model: check, accelerate, compile.

``@attack_entry`` turns an attack body ``body(apply_fn, params, x, y, key, config)``, which
holds only the algorithm, into the public attack. A call

1. checks the inputs once, on concrete values (``robustjax.validation``: NHWC float images in
   [0, 1] without NaN, a non-empty batch, integer labels inside the number of classes the
   model's logits show, a model that takes this image shape). Under a caller's ``jit`` only
   shapes and dtypes are checked, which costs nothing at run time;
2. runs the model's eligible ``lax`` convolutions on robustjax's oneDNN kernels
   (``robustjax.kernels.accelerate``; switch off with ``auto_accelerate(False)`` or
   ``ROBUSTJAX_AUTO_ACCELERATE=0``);
3. chooses the loop structure from the convolutions the (accelerated) model actually runs
   (``loop_hint``; ``attacks._core.loop_steps``'s ``"auto"`` reads it);
4. called eagerly, runs the whole attack as one compiled program, cached by ``jax.jit`` on the
   body, the model function, the config's static fields and the shapes and dtypes. New data of
   the same shape reuses it, so an eager call costs what the jitted call costs. The value
   checks of step 1 are computed by that same program (``validation.packed_checks``: one
   small array read back after it), not by a second one. Inside a caller's
   ``jit``/``vmap``/``grad`` the body is traced inline.

``model_entry`` does the same for entry points that are not attacks (certifiers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import threading
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np

from robustjax import parallel, validation

_state = threading.local()


def _auto_accelerate_default() -> bool:
    return os.environ.get("ROBUSTJAX_AUTO_ACCELERATE", "1").strip().lower() not in (
        "0", "false", "no", "off")


def auto_accelerate_enabled() -> bool:
    """Whether entry points run a model's ``lax`` convolutions on robustjax's kernels now."""
    value = getattr(_state, "accelerate", None)
    return _auto_accelerate_default() if value is None else value


@contextlib.contextmanager
def auto_accelerate(enabled: bool):
    """Within the block, entry points accelerate models (True, the default) or run them as
    given (False): ``with auto_accelerate(False): attacks.pgd(...)`` keeps XLA's convolutions.
    """
    previous = getattr(_state, "accelerate", None)
    _state.accelerate = bool(enabled)
    try:
        yield
    finally:
        _state.accelerate = previous


def is_traced(*trees) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(trees))


@functools.lru_cache(maxsize=256)
def _accelerated_cached(apply_fn):
    from robustjax.kernels import accelerate

    return accelerate(apply_fn)


def model_function(apply_fn: Callable) -> Callable:
    """``apply_fn`` as the entry points run it: accelerated unless switched off.

    The accelerated function is cached per ``apply_fn`` so that ``jit``'s cache, keyed on it,
    is hit by every later call with the same model.
    """
    if not auto_accelerate_enabled() or getattr(apply_fn, "_robustjax_accelerated", False):
        return apply_fn
    try:
        return _accelerated_cached(apply_fn)
    except TypeError:  # unhashable callable: accelerate without caching
        from robustjax.kernels import accelerate

        return accelerate(apply_fn)


# ---------------------------------------------------------------------------- loop hint


class LoopHint(NamedTuple):
    """What the traced model runs, for choosing loop structures (``attacks._core``)."""

    xla_convolutions: int
    onednn_convolutions: int

    @property
    def unroll_is_faster(self) -> bool:
        """XLA:CPU's own convolutions lose their fast layout inside a while loop (PGD-10 3-6x
        slower in ``fori`` than unrolled); robustjax's kernels keep their speed in loops."""
        return jax.default_backend() == "cpu" and self.xla_convolutions > 0


def current_loop_hint() -> Optional[LoopHint]:
    """The hint of the entry point being run or traced now (None outside one)."""
    return getattr(_state, "hint", None)


@contextlib.contextmanager
def _hinting(hint: Optional[LoopHint]):
    previous = getattr(_state, "hint", None)
    _state.hint = hint
    try:
        yield
    finally:
        _state.hint = previous


def loop_hint(apply_fn: Callable, params, x) -> LoopHint:
    """The convolutions ``apply_fn(params, x)`` runs (traced once per function and shapes)."""
    probe = validation.probe_model(apply_fn, params, x)
    return LoopHint(probe.xla_convolutions, probe.onednn_convolutions)


# ------------------------------------------------------------------------------- meshes


def _on_mesh(mesh_axis, run, fn, params, per_example, replicated, *, wrap_model: bool):
    """``run(fn, params, per_example, replicated)`` data-parallel over ``mesh_axis`` (see
    ``robustjax.parallel``): the per-example arrays padded to a multiple of the shards and
    split over the batch axis, params and keys on every device, the model run per shard
    (``wrap_model``; not for bodies that interpret the model's jaxpr), the padding cut off."""
    mesh, axis = mesh_axis
    per_example, (params, replicated), n, padded = parallel.place(
        per_example, (params, replicated), mesh, axis)
    if wrap_model:
        try:
            fn = parallel.sharded_model(fn, mesh, axis)
        except TypeError:  # unhashable model function: not cached
            fn = parallel.sharded_model.__wrapped__(fn, mesh, axis)
    return parallel.unplace(run(fn, params, per_example, replicated), n, padded)


def data_parallel(run: Callable, apply_fn: Callable, params, per_example, replicated=None, *,
                  wrap_model: bool = True):
    """``run(apply_fn, params, per_example, replicated)`` on the current mesh
    (``robustjax.parallel.active_mesh()``) when there is one, else exactly as called: for host
    loops that call their own jitted steps (AutoAttack's cascade). ``per_example``: a pytree
    of arrays with the batch as leading dimension; the result's leaves of the padded batch
    size are cut back to the batch."""
    mesh = parallel.active_mesh()
    if mesh is None:
        return run(apply_fn, params, per_example, replicated)
    return _on_mesh(mesh, run, apply_fn, params, per_example, replicated, wrap_model=wrap_model)


# ------------------------------------------------------------------------------ attacks


@contextlib.contextmanager
def _checked(finish_checks):
    """Run the block (which dispatches the computation), then complete the input checks: the
    checks' round trip overlaps with the computation, and a bad input is reported in place of
    whatever the block raised or returned."""
    try:
        yield
    except Exception:
        finish_checks()
        raise
    finish_checks()


def _config_traced(config) -> bool:
    """A static (non-pytree) config that cannot key a compiled program: fields holding
    tracers (eps under vmap) or arrays (unhashable). Such calls run the body as it is."""
    if not _static_config(config):
        return False
    try:
        hash(config)
    except TypeError:
        return True
    if not dataclasses.is_dataclass(config):
        return False
    return is_traced([getattr(config, f.name) for f in dataclasses.fields(config)])


def _static_config(config) -> bool:
    # a frozen dataclass that is not a pytree node is one leaf: pass it to jit as static
    leaves = jax.tree_util.tree_leaves(config)
    return len(leaves) == 1 and leaves[0] is config


@functools.lru_cache(maxsize=None)
def _jitted(body, static_config: bool):
    return jax.jit(body, static_argnums=(0, 5) if static_config else (0,))


def _result_arrays(result) -> tuple:
    """The per-example arrays of an attack's result whose values are checked (NaN or inf)."""
    return tuple(a for a in (getattr(result, "x_adv", None), getattr(result, "loss", None))
                 if a is not None and getattr(a, "ndim", 0) > 0)


def _run_checked(call, x, y, num_classes, outputs_of, *, pixel_range: bool = True):
    """``call()`` (a program returning ``(result, validation.packed_checks(...))``), then its
    value checks (``validation.read_packed``; ``outputs_of(result)``: the arrays checked
    finite). Where ``call`` raises, the inputs are checked on their own first, so a bad input
    is reported in place of what the body raised."""
    try:
        result, packed = call()
    except Exception:
        validation.start_value_checks(x, y, num_classes, pixel_range=pixel_range)()
        raise
    validation.read_packed(packed, x, y, num_classes, outputs_of(result),
                           pixel_range=pixel_range)
    return result


@functools.lru_cache(maxsize=None)
def _jitted_checked(body, static_config: bool):
    """``_jitted(body)`` that also returns ``validation.packed_checks`` of its inputs and
    result: an eager call dispatches one program and reads one small array back."""
    def run(apply_fn, params, x, y, key, config, **extras):
        result = body(apply_fn, params, x, y, key, config, **extras)
        return result, validation.packed_checks(x, y, _result_arrays(result))

    # the program keeps the attack's name (jit_fgsm, ...) in logs, profiles and the cache
    run.__name__, run.__qualname__ = body.__name__, body.__qualname__
    return jax.jit(run, static_argnums=(0, 5) if static_config else (0,))


def attack_entry(body: Optional[Callable] = None, *, gradient: bool = True,
                 eager_loop: Optional[Callable[[Any, LoopHint], bool]] = None):
    """Decorator: the public attack ``attack(apply_fn, params, x, y, key, config)`` from its
    body (see the module docstring).

    ``gradient``: the attack differentiates the model (warns on a non-differentiable one).
    ``eager_loop(config, hint)``: True when an eager call should run the body as Python (its
    own loop of compiled steps, fastest for XLA:CPU's convolutions) instead of compiling it
    whole.
    """
    if body is None:
        return functools.partial(attack_entry, gradient=gradient, eager_loop=eager_loop)
    signature = inspect.signature(body)
    names = list(signature.parameters)

    @functools.wraps(body)
    def attack(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        apply_fn, params, x, y, key, config = (arguments[n] for n in names[:6])
        extras = {n: arguments[n] for n in names[6:]}  # e.g. starting points (arrays or None)
        traced = is_traced(params, x, y, key, config, extras) or _config_traced(config)
        fn = model_function(apply_fn)
        probe = validation.check_attack_call(apply_fn, fn, params, x, y, config,
                                             gradient=gradient)
        hint = LoopHint(probe.xla_convolutions, probe.onednn_convolutions)
        with _hinting(hint):
            mesh = None if traced else parallel.active_mesh()
            python_loop = traced or (eager_loop is not None and eager_loop(config, hint))
            if mesh is None and not python_loop:
                # the common eager call: the value checks inside the attack's own program
                return _run_checked(
                    lambda: _jitted_checked(body, _static_config(config))(
                        fn, params, x, y, key, config, **extras),
                    x, y, probe.num_classes, _result_arrays)
            finish_checks = validation.start_value_checks(x, y, probe.num_classes)
            try:
                run = body if python_loop else _jitted(body, _static_config(config))
                if mesh is None:
                    result = run(fn, params, x, y, key, config, **extras)
                else:
                    result = _on_mesh(mesh, lambda f, p, b, k: run(f, p, b[0], b[1], k, config,
                                                                   **b[2]),
                                      fn, params, (x, y, extras), key, wrap_model=True)
            except Exception:
                finish_checks()  # a bad input is reported in place of what the body raised
                raise
        # one transfer: the input checks and whether the result is finite (a model that returns
        # NaN for some inputs is reported with their indices; a loss may be +inf, see
        # validation._bad_values)
        finish_checks(_result_arrays(result) or None)
        return result

    attack.body = body
    return attack


# ------------------------------------------------------------------ other model entry points


def _per_example(value, b: int) -> bool:
    return (isinstance(value, (jax.Array, np.ndarray)) and value.ndim > 0
            and value.shape[0] == b)


def _key_batch(value) -> bool:
    """Whether a ``key`` argument is one key per example: only a typed key array with a batch
    axis. A raw ``uint32[2]`` key (``jax.random.PRNGKey``) is one key, even for a batch of 2."""
    return (isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype,
                                                                   jax.dtypes.prng_key)
            and value.ndim > 0)


@functools.lru_cache(maxsize=64)
def _per_shard(body, fn, static_items: tuple, mesh, axis: str, names: tuple, others: tuple):
    """``body`` run by every device on its own rows (``jax.shard_map``), compiled once per
    model, static arguments, mesh and argument names: for per-example deterministic bodies
    (bound propagation), whose partitioned program would otherwise round differently."""
    P = jax.sharding.PartitionSpec

    def local(params, batched, rest):
        return body(apply_fn=fn, params=params, **dict(static_items),
                    **dict(zip(names, batched)), **dict(zip(others, rest)))

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P()),
                                 out_specs=P(axis), check_vma=False))


@functools.lru_cache(maxsize=None)
def _jitted_named(body, static: tuple):
    return jax.jit(body, static_argnames=static)


@functools.lru_cache(maxsize=None)
def _jitted_named_checked(body, static: tuple, labels: Optional[str]):
    """``_jitted_named(body)`` that also returns ``validation.packed_checks`` of ``x`` and the
    labels: one program, one small transfer per eager call."""
    @functools.wraps(body)  # jit reads the argument names from body's signature
    def run(**arguments):
        y = arguments.get(labels) if labels else None
        return body(**arguments), validation.packed_checks(arguments["x"], y)

    return jax.jit(run, static_argnames=static)


def model_entry(body: Optional[Callable] = None, *, static: tuple = (), labels: Optional[str] = None,
                accelerate: bool = True, compile: bool = True, images: bool = True,
                per_shard: bool = False):
    """Decorator for an entry point ``body(apply_fn, params, x, ...)`` that is not an attack
    (certifiers, metrics): the same checks, acceleration and compile-once caching.

    ``static``: the names of the arguments that change the program (method names, loop
    counts, configs that are not pytrees). ``labels``: the name of the labels argument, checked
    against the model's classes. ``accelerate=False`` keeps the model's ``lax`` convolutions
    (bound propagation interprets them). ``compile=False`` for bodies with host-side steps (they
    still get the checks and the accelerated model; their own jitted pieces are cached).
    ``images=False`` for entry points that take any batch of arrays (randomized smoothing):
    a non-empty batch of finite floats, not necessarily NHWC pixels.

    On a mesh (``robustjax.parallel.current_mesh()``, default all local devices when there are
    several) an eager call pads and shards its per-example arguments (those with the batch as
    leading dimension) over the batch axis and replicates the parameters; ``per_shard=True``
    runs the whole body on each device's rows (``jax.shard_map``), for bodies whose outputs are
    all per-example and deterministic (certifiers): the same program as on one device.
    """
    if body is None:
        return functools.partial(model_entry, static=static, labels=labels,
                                 accelerate=accelerate, compile=compile, images=images,
                                 per_shard=per_shard)
    signature = inspect.signature(body)
    static = tuple(static)

    @functools.wraps(body)
    def call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        apply_fn, params, x = arguments["apply_fn"], arguments["params"], arguments["x"]
        y = arguments.get(labels) if labels else None
        fn = model_function(apply_fn) if accelerate else apply_fn
        if images:
            validation.check_shapes(x, y)
        else:
            validation.check_batch_of_arrays(x)
        probe = validation.probe_model(fn, params, x)
        if "eps" in arguments:
            validation.check_eps(arguments["eps"], x.shape[0])
        arguments["apply_fn"] = fn
        dynamic = [v for k, v in arguments.items() if k not in static and k != "apply_fn"]
        traced = is_traced(dynamic)
        mesh = None if traced else parallel.active_mesh()
        hint = LoopHint(probe.xla_convolutions, probe.onednn_convolutions)
        if compile and not traced and mesh is None:
            # the common eager call: the value checks inside the body's own program
            with _hinting(hint):
                return _run_checked(
                    lambda: _jitted_named_checked(body, ("apply_fn",) + static, labels)(
                        **arguments),
                    x, y, probe.num_classes, lambda out: (), pixel_range=images)
        finish_checks = validation.start_value_checks(x, y, probe.num_classes,
                                                      pixel_range=images)
        with _checked(finish_checks), _hinting(hint):
            run = body if not compile or traced else _jitted_named(body, ("apply_fn",) + static)
            if mesh is None:
                return run(**arguments)
            b = x.shape[0]
            batched = {k: v for k, v in arguments.items() if k not in static and k not in
                       ("apply_fn", "params") and _per_example(v, b)
                       and (k != "key" or _key_batch(v))}

            if per_shard and compile:
                names = tuple(batched)
                others = tuple(k for k in arguments if k not in static and k not in names
                               and k not in ("apply_fn", "params"))
                local = _per_shard(body, fn, tuple((k, arguments[k]) for k in static),
                                   mesh[0], mesh[1], names, others)

                def on_mesh(f, p, per_example, _):
                    return local(p, tuple(per_example[k] for k in names),
                                 tuple(arguments[k] for k in others))
            else:
                def on_mesh(f, p, per_example, _):
                    return run(**{**arguments, "apply_fn": f, "params": p, **per_example})

            return _on_mesh(mesh, on_mesh, fn, params, batched, None,
                            wrap_model=accelerate and not per_shard)

    call.body = body
    return call
