"""Running a per-device function over the devices: the mesh, pmap or shard_map, replication.

Every program of the library is written as a pure per-device function that uses the ``'data'``
axis (:data:`AXIS`) for its collectives; :func:`parallelize` runs one over a 1-D mesh with
``jax.pmap`` (the default) or, unchanged, with ``jax.jit(jax.shard_map(...))``. Arguments are
replicated on every device or split along their leading axis, one slice per device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from robust_losses_jax import config as config_lib

AXIS = "data"
PARALLEL_MODES = config_lib.PARALLEL_MODES


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all devices, every process's)."""
    return Mesh(np.asarray(devices or jax.devices()), (AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place ``tree`` (e.g. the train state) on every device of the mesh, replicated.

    The parallel step returns its state replicated like this; placing the initial state the same
    way means the first step compiles the same program as every later one.
    """
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches ``[D, b, ...]`` split along their leading axis, one slice per device.

    Over this process's own devices of the mesh: with several processes each puts only its
    slice of the batch (:func:`input_pipeline.process_slice`) on its devices.
    """
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return NamedSharding(Mesh(np.asarray(local), (AXIS,)), PartitionSpec(AXIS))


def to_global(tree: Any) -> Any:
    """Replicated per-process arrays (what the pmap'd step returns) as global arrays.

    Orbax saves only global arrays when there are several processes; with one, a no-op.
    """
    if jax.process_count() == 1:
        return tree
    import orbax.checkpoint as ocp  # Multi-process runs only: orbax is heavy to import.

    return jax.tree.map(ocp.utils.fully_replicated_host_local_array_to_global_array, tree)


def gather_outputs(tree: Any) -> Any:
    """Per-device outputs ``[D_local, ...]`` of every process as host arrays ``[D, ...]``."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def parallelize(
    fn: Callable,
    mesh: Mesh,
    mode: str = "pmap",
    *,
    sharded: Sequence[bool] = (False, True, False),
    collective: bool = True,
) -> Callable:
    """Run a per-device ``fn`` over the mesh's devices.

    Args:
      fn: the per-device function; it may use :data:`AXIS` (``axis_index``, collectives).
      mesh: from :func:`data_mesh`.
      mode: ``pmap`` (the design's choice) or ``shard_map`` (jit + shard_map).
      sharded: per argument, True when it is split along its leading axis (``[D, ...]``, each
        device sees its slice without that axis), False when replicated. The default is the
        train step's ``(state, batch, hparams)``; all False: every argument replicated (the
        programs split the work with ``axis_index``).
      collective: True: the outputs are replicated (the train step, the programs); False:
        per-device outputs stacked as ``[D, ...]`` (the eval step).
    """
    if mode not in PARALLEL_MODES:
        raise ValueError(
            f"Unknown parallel mode {mode!r}; choose from {', '.join(PARALLEL_MODES)}."
        )
    sharded = tuple(sharded)
    devices = list(mesh.devices.flat)
    if mode == "pmap":
        out_axes = None if collective else 0
        if any(sharded):
            return jax.pmap(
                fn, axis_name=AXIS, in_axes=tuple(0 if s else None for s in sharded),
                out_axes=out_axes, devices=devices,
            )  # fmt: skip
        # Nothing split: a device-id argument carries pmap's mapped axis.
        mapped = jax.pmap(
            lambda _, *args: fn(*args), axis_name=AXIS, in_axes=(0,) + (None,) * len(sharded),
            out_axes=out_axes, devices=devices,
        )  # fmt: skip
        device_ids = np.arange(len(devices))
        return lambda *args: mapped(device_ids, *args)

    def per_shard(*args):
        # shard_map keeps the split axis (size 1 per device): drop it, as pmap does.
        args = [
            jax.tree.map(lambda x: x[0], a) if s else a for a, s in zip(args, sharded, strict=True)
        ]
        out = fn(*args)
        return out if collective else jax.tree.map(lambda x: x[None], out)

    replicated, split = PartitionSpec(), PartitionSpec(AXIS)
    in_specs = tuple(split if s else replicated for s in sharded)
    return jax.jit(
        jax.shard_map(
            per_shard, mesh=mesh, in_specs=in_specs,
            out_specs=replicated if collective else split, check_vma=False,
        )
    )  # fmt: skip
