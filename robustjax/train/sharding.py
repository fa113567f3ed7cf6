"""Sharded training: data parallel over a mesh, parameters optionally sharded FSDP-style.

``train.fit(..., mesh=mesh)`` (and ``fit_model``) runs every step as one SPMD program over
``mesh`` (``robustjax.parallel.data_mesh()``: one axis ``"batch"``) with ``jax.jit``'s
``in_shardings``/``out_shardings`` (Xu et al. 2021, "GSPMD"):

* images and labels: ``NamedSharding(mesh, P("batch"))``, each device holds
  ``batch_size / devices`` rows; the loss is the mean over the *global* batch and train-mode
  BatchNorm normalises with the global batch's statistics (XLA inserts the all-reduces), so a
  step computes what one device computes, to float32 rounding of the reductions;
* parameters and optimiser state: replicated (``P()``, data parallel) or, with ``fsdp=True``,
  every leaf of at least ``min_fsdp_size`` elements split along its largest dimension that
  divides the device count (ZeRO-3 / FSDP: Rajbhandari et al. 2020; Zhao et al. 2023). XLA
  all-gathers a layer's weights where it is used and reduce-scatters its gradient, so each
  device stores ``1 / devices`` of the weights, gradients and Adam moments. Optimiser-state
  leaves shaped like a parameter get that parameter's sharding (the rule depends on the shape).

Keys are replicated: with JAX's partitionable threefry a ``[b, ...]`` draw (PGD's random
start, TRADES' noise) has the same values however the batch is sharded.

On the CPU, robustjax's oneDNN convolutions are XLA custom calls that the SPMD partitioner
cannot split: it would gather the global batch onto every device. Sharded steps are therefore
traced with the kernels off (``kernels.use_onednn(False)``): XLA's own convolutions, which it
partitions. A batch size that does not divide the devices is an error that names the sizes
(training never pads: padded rows would enter the mean loss and the batch statistics).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from robustjax import parallel

MIN_FSDP_SIZE = 2**14  # smaller leaves (biases, norms) are replicated: gathering costs more


def leaf_spec(shape, shards: int, axis: str, *, fsdp: bool,
              min_size: int = MIN_FSDP_SIZE) -> PartitionSpec:
    """``P()`` or, under FSDP, ``axis`` on the largest dimension of ``shape`` that ``shards``
    divides (the first such among equals) for leaves of at least ``min_size`` elements."""
    shape = tuple(shape)
    if not fsdp or shards == 1 or not shape or int(np.prod(shape)) < min_size:
        return PartitionSpec()
    candidates = [d for d in range(len(shape)) if shape[d] % shards == 0]
    if not candidates:
        return PartitionSpec()
    d = max(candidates, key=lambda i: (shape[i], -i))
    return PartitionSpec(*([None] * d + [axis]))


def tree_shardings(tree, mesh: Mesh, axis: str = parallel.BATCH, *, fsdp: bool = False,
                   min_size: int = MIN_FSDP_SIZE):
    """A ``NamedSharding`` per array leaf of ``tree`` (parameters, optimiser state)."""
    shards = parallel.batch_size(mesh, axis)
    return jax.tree_util.tree_map(
        lambda a: NamedSharding(mesh, leaf_spec(np.shape(a), shards, axis, fsdp=fsdp,
                                                min_size=min_size)), tree)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a training run's arrays live on ``mesh`` (see the module docstring)."""

    mesh: Mesh
    axis: str = parallel.BATCH
    fsdp: bool = False
    min_size: int = MIN_FSDP_SIZE

    def __post_init__(self):
        parallel.batch_size(self.mesh, self.axis)  # a clear error for an unknown axis name

    @property
    def devices(self) -> int:
        return parallel.batch_size(self.mesh, self.axis)

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.devices:
            raise ValueError(
                f"sharded training: batch_size {batch_size} does not divide over the "
                f"{self.devices} devices of mesh axis {self.axis!r}; expected a multiple of "
                f"{self.devices} (e.g. {parallel.padded_size(batch_size, self.devices)}). "
                f"Training does not pad: padded rows would enter the loss and batch statistics")

    def state_shardings(self, state):
        return tree_shardings(state, self.mesh, self.axis, fsdp=self.fsdp,
                              min_size=self.min_size)

    def put_state(self, state):
        return jax.device_put(state, self.state_shardings(state))

    def put_batch(self, x, y):
        """The global batch ``(x, y)`` on the batch sharding. Under ``jax.distributed`` every
        process passes the same global batch (``fit``'s order is deterministic) and
        contributes its ``parallel.process_rows`` of it."""
        if jax.process_count() > 1:
            return parallel.global_batch(parallel.process_rows((x, y)), self.mesh, self.axis)
        return jax.device_put((x, y), parallel.batch_sharding(self.mesh, self.axis))

    def jit_step(self, step: Callable, state) -> Callable:
        """``step(state, x, y, key) -> (state, loss)`` compiled as one SPMD program."""
        state_sh = self.state_shardings(state)
        batch = parallel.batch_sharding(self.mesh, self.axis)
        replicated = parallel.replicated_sharding(self.mesh)
        jitted = jax.jit(step, in_shardings=(state_sh, batch, batch, replicated),
                         out_shardings=(state_sh, replicated))

        @functools.wraps(step)
        def run(state, x, y, key):
            from robustjax.kernels import use_onednn

            with use_onednn(False):  # custom calls cannot be partitioned (module docstring)
                return jitted(state, x, y, key)

        return run


def placement(mesh: Optional[Mesh], *, axis: str = parallel.BATCH, fsdp: bool = False,
              min_size: int = MIN_FSDP_SIZE) -> Optional[Placement]:
    """The ``Placement`` for ``fit(mesh=..., fsdp=...)``; None for no mesh (one device).

    A one-device mesh still gets a placement (the same program, placed on that device)."""
    if mesh is None:
        if fsdp:
            raise ValueError("fsdp=True shards parameters over a mesh: pass mesh= as well "
                             "(robustjax.parallel.data_mesh())")
        return None
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (robustjax.parallel.data_mesh()), "
                        f"got {type(mesh).__name__}")
    return Placement(mesh, axis, fsdp, min_size)


def bytes_per_device(tree) -> dict[str, int]:
    """``{device: bytes}`` of ``tree``'s arrays held by each device (FSDP's saving, measured)."""
    out: dict[str, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard in getattr(leaf, "addressable_shards", []):
            key = str(shard.device)
            out[key] = out.get(key, 0) + int(shard.data.nbytes)
    return out


__all__ = ["MIN_FSDP_SIZE", "Placement", "bytes_per_device", "leaf_spec", "placement",
           "tree_shardings"]
