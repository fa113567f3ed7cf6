"""Counting XLA compilations in tests (a persistent-cache hit counts too: JAX reports it as a
backend compile whose time is the loading)."""

import contextlib

import jax


@contextlib.contextmanager
def count_compiles():
    """``with count_compiles() as events:`` -> one entry per backend compilation inside."""
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


# XLA:CPU options for one test program with thousands of operations (CROWN through relaxed
# layers): compiled without LLVM's expensive passes, ~10x faster to compile, the same function
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
