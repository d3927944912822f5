"""Compiled programs of a stack: whole epochs on the devices, and its evaluations.

For datasets that fit in accelerator memory (MNIST, Fashion-MNIST, CIFAR), the training images are
put on every device once, and an epoch is one compiled program: the epoch's order is drawn on the
device, ``lax.scan`` runs the train step over the batches, and nothing returns to the host until
the epoch ends. The program trains a *stack* of ``M`` models at once (:mod:`stacking`): the train
step (:func:`step.train_step`) is ``jax.vmap``-ed over their train states, loss hyperparameters and
PRNG keys, inside the data-parallel (pmap or shard_map) program.

On CPU a vmapped convolution becomes a grouped one, which XLA:CPU runs slowly, so there the
members run one after another (:func:`default_vectorize`): an epoch is one call per member of a
program compiled for one model, the member a traced index into the stack
(:func:`train_member_steps`); evaluation is a ``lax.map`` over the stack. Convolutions inside
loops are fast on CPU only with the models' loop-safe gradients
(:func:`robust_losses_jax.models.layers.conv_general_dilated`): XLA's own gradients of a
convolution hit slow generic paths inside a ``while`` loop (15-40x).

Same batches as the streaming path (:mod:`input_pipeline`): member ``m`` trains in epoch ``e`` on
its rows in the order ``jax.random.permutation(fold_in(order_key_m, e), n_m)`` (what
:func:`input_pipeline.epoch_permutation` computes on the host), cut into global batches of which
device ``d`` takes rows ``[d * b, (d + 1) * b)``; the ``index`` each step sees is the position in
the member's own rows, as the streaming path sees it in its compacted arrays. So a stack of one
trains like the streaming loop, and a stack of M like M runs one after another, up to float
rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from robust_losses_jax import detection
from robust_losses_jax.training import parallel
from robust_losses_jax.training.stacking import StackData, stack, unstack

Array = jax.Array

# Per-step metrics of the train step that are summed over an epoch.
SUMMED = ("loss_sum", "correct", "low_weight", "count")


def default_vectorize() -> bool:
    """vmap the members on accelerators; one after another on CPU.

    vmapping a convolution over its kernel gives a grouped convolution, which XLA:CPU runs far
    slower than M ordinary ones; GPUs and TPUs run it well.
    """
    return jax.default_backend() != "cpu"


def for_each_member(fn: Callable, vectorize: bool, states: Any, *args: Any) -> Any:
    """``fn(state, *args)`` for every member of the stack (leading axis of every argument).

    ``vectorize``: ``jax.vmap`` (one batched program); else ``lax.map``, a loop over the members
    inside the program (no host round trip; compiled once, whatever the stack's size). A stack
    of one is neither.
    """
    num_members = jax.tree.leaves(states)[0].shape[0]
    if num_members == 1:
        return stack([fn(*(unstack(x, 0) for x in (states, *args)))])
    if vectorize:
        return jax.vmap(fn)(states, *args)
    return jax.lax.map(lambda member: fn(*member), (states, *args))


def epoch_order(order_key: Array, epoch: Array, num_rows: int, steps: int, batch: int) -> Array:
    """``[steps, batch]`` positions ``< num_rows``: the epoch's batches (the rest dropped).

    Equal to ``input_pipeline.epoch_permutation(order_key, epoch, num_rows)``, cut into batches.
    """
    order = jax.random.permutation(jax.random.fold_in(order_key, epoch), num_rows)
    return order[: steps * batch].reshape(steps, batch).astype(jnp.int32)


def epoch_orders(
    order_keys: Array, epoch: Array, *, sizes: tuple[int, ...], steps: int, batch: int
) -> Array:
    """``[M, steps, batch]``: each member's batches this epoch, by position in its rows."""
    return jnp.stack([
        epoch_order(order_keys[m], epoch, n, steps, batch) for m, n in enumerate(sizes)
    ])  # fmt: skip


def train_steps(
    states: Any,
    data: StackData,
    hparams: Mapping[str, Array],
    step_keys: Array,
    positions: Array,
    *,
    step_fn: Callable,
    num_devices: int,
    axis_name: str = parallel.AXIS,
) -> tuple[Any, dict[str, Array]]:
    """Steps of every member of the stack (vmapped), on one device's share of each batch.

    On CPU :func:`train_epoch_program` calls it for one member at a time
    (:func:`train_member_steps`).

    Args:
      states: the stacked train states (leading axis ``M``), replicated.
      data: :class:`StackData`, replicated.
      hparams: ``{name: [M]}``; step_keys: ``[M]`` keys.
      positions: ``[M, S, B]``, the global batches of these ``S`` steps (from
        :func:`epoch_orders`); device ``d`` takes rows ``[d * B / D, (d + 1) * B / D)``.
      step_fn: ``(state, batch, hparams, key) -> (state, metrics)``, :func:`step.train_step`
        with its settings bound.

    Returns:
      The new states and, per member: the :data:`SUMMED` metrics ``[M]``, ``finite`` ``[M, S]``
      (0 where a step was non-finite and skipped), ``margin_sum`` / ``margin_count``
      ``[M, n_max]`` (each example's training margins in these steps, by position in its rows).
    """
    per_device = positions.shape[2] // num_devices
    device = jax.lax.axis_index(axis_name)
    local = jax.lax.dynamic_slice_in_dim(positions, device * per_device, per_device, axis=2)

    def member_steps(state, rows, labels, member_hparams, key, member_positions):
        """One member's ``S`` steps; ``member_positions`` ``[S, b]``, this device's rows."""

        def step(state, batch_positions):
            batch_rows = rows[batch_positions]
            batch = {
                "image": data.images[batch_rows],
                "label": labels[batch_rows],
                "index": batch_positions,
            }
            return step_fn(state, batch, member_hparams, key)

        return jax.lax.scan(step, state, member_positions)

    # Members outside the loop over steps: vmapped, the same program as a vmapped step in a
    # scan (a stack of one is a lone model's program).
    states, metrics = for_each_member(
        member_steps, True, states, data.rows, data.labels, hparams, step_keys, local
    )
    n_max = data.rows.shape[1]

    def margins_seen(index, margin):  # [S, B] each: the whole global batch (all-gathered).
        zeros = detection.init_aum(n_max)
        return detection.update_aum(*zeros, index.reshape(-1), margin.reshape(-1))

    out = {k: jnp.sum(metrics[k], axis=1) for k in SUMMED}
    out["finite"] = metrics["finite"]
    out["margin_sum"], out["margin_count"] = jax.vmap(margins_seen)(
        metrics["index"], metrics["margin"]
    )
    return states, out


def train_member_steps(
    states: Any,
    data: StackData,
    hparams: Mapping[str, Array],
    step_keys: Array,
    positions: Array,
    member: Array,
    **kwargs: Any,
) -> tuple[Any, dict[str, Array]]:
    """:func:`train_steps` of member ``member`` (an int32 scalar) of the stack alone.

    Returns the stack with that member's state replaced, and its metrics (leading axis 1).
    ``kwargs``: :func:`train_steps`'.
    """

    def take(x):
        return jax.lax.dynamic_slice_in_dim(x, member, 1, axis=0)

    state, labels, rows, member_hparams, keys, member_positions = jax.tree.map(
        take, (states, data.labels, data.rows, hparams, step_keys, positions)
    )
    state, metrics = train_steps(
        state, StackData(data.images, labels, rows), member_hparams, keys, member_positions,
        **kwargs,
    )  # fmt: skip
    states = jax.tree.map(
        lambda stack_leaf, leaf: jax.lax.dynamic_update_slice_in_dim(stack_leaf, leaf, member, 0),
        states, state,
    )  # fmt: skip
    return states, metrics


def evaluate(
    states: Any,
    images: Array,
    labels: Array,
    hparams: Mapping[str, Array],
    rows: Array | None = None,
    *,
    eval_fn: Callable,
    batch_size: int,
    num_devices: int,
    vectorize: bool = True,
    axis_name: str = parallel.AXIS,
) -> dict[str, Array]:
    """Every member's outputs on its rows of ``images``, gathered in order on the devices.

    Args:
      images: uint8 ``[N, H, W, C]``, replicated; labels: int ``[M, N]`` (to score ``p_t``).
      rows: None (every member on every row), or int32 ``[M, R]``: member ``m`` evaluates only
        ``images[rows[m]]`` (K-fold's held-out rows); padding past ``N`` evaluates the last
        row, and :func:`evaluate_held_out` drops it.
      eval_fn: ``(state, batch, hparams) -> outputs``, :func:`step.eval_step` bound.
      batch_size: global eval batch; the last batch is padded (with position 0) and the padding
        cut.

    Returns (replicated): ``logits [M, R, C]``, ``probs`` (softmax), ``p_t``, ``margin``,
    ``pred``, ``weight``, ``loss`` ``[M, R]`` (``R = N`` without ``rows``), position ``j`` of
    member ``m`` being row ``rows[m, j]`` (``j``).
    """
    num_positions = images.shape[0] if rows is None else rows.shape[1]
    per_device = batch_size // num_devices
    num_batches = -(-num_positions // batch_size)
    device = jax.lax.axis_index(axis_name)

    def member_eval(state, image, member_labels, member_hparams):
        return eval_fn(state, {"image": image, "label": member_labels}, member_hparams)

    def one_batch(_, i):
        positions = i * batch_size + device * per_device + jnp.arange(per_device)
        positions = jnp.where(positions < num_positions, positions, 0)
        if rows is None:  # One image batch shared by the members (closed over: not vmapped).
            image = images[positions]
            return None, for_each_member(
                lambda state, labels_, hparams_: member_eval(state, image, labels_, hparams_),
                vectorize, states, labels[:, positions], hparams,
            )  # fmt: skip
        member_rows = jnp.minimum(rows[:, positions], images.shape[0] - 1)  # [M, b]
        member_labels = jnp.take_along_axis(labels, member_rows, axis=1)
        return None, for_each_member(
            member_eval, vectorize, states, images[member_rows], member_labels, hparams
        )

    _, outs = jax.lax.scan(one_batch, None, jnp.arange(num_batches))
    # [nb, M, b, ...] -> [nb, M, B, ...]
    outs = jax.lax.all_gather(outs, axis_name, axis=2, tiled=True)

    def in_order(x):
        x = jnp.swapaxes(x, 0, 1)
        return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :num_positions]

    outs = {k: in_order(v) for k, v in outs.items()}
    outs["probs"] = jax.nn.softmax(outs["logits"], axis=-1)
    return outs


def evaluate_held_out(
    states: Any,
    images: Array,
    labels: Array,
    hparams: Mapping[str, Array],
    rows: Array,
    **kwargs: Any,
) -> dict[str, Array]:
    """K-fold's out-of-sample outputs ``[N, ...]`` in canonical order, assembled on the devices.

    ``rows`` ``[M, R]``: member ``m``'s held-out rows, padded with ``N``
    (:func:`stacking.held_out_rows`); each row of ``images`` comes from the member whose rows
    hold it (rows no member holds come out zero). ``kwargs``: :func:`evaluate`'s.
    """
    outs = evaluate(states, images, labels, hparams, rows, **kwargs)
    flat_rows = rows.reshape(-1)

    def scatter(x):  # Padding (row N) is out of range: dropped, so each row is written once.
        x = x.reshape(-1, *x.shape[2:])
        zeros = jnp.zeros((images.shape[0], *x.shape[1:]), x.dtype)
        return zeros.at[flat_rows].set(x, mode="drop")

    return {k: scatter(v) for k, v in outs.items()}


def train_epoch_program(
    step_fn: Callable,
    mesh: Mesh,
    mode: str,
    *,
    sizes: tuple[int, ...],
    batch_size: int,
    steps_per_epoch: int,
    vectorize: bool | None = None,
) -> Callable:
    """``(states, data, hparams, step_keys, order_keys, epoch) -> (states, host metrics)``.

    One epoch of the stack: the order is drawn on the devices, then one compiled program runs
    every step; nothing returns to the host until the epoch ends. Metrics as
    :func:`train_steps`, for the whole epoch, as host arrays.

    ``vectorize`` (None: :func:`default_vectorize`): the members in one ``jax.vmap``ped
    program; else (CPU) each member's epoch in turn by one program compiled for a stack of one
    (the members' arrays have equal shapes): a loop over the members inside the program ran no
    faster on XLA:CPU, whose convolutions already use every core, and compiled more slowly.
    """
    orders = jax.jit(
        functools.partial(epoch_orders, sizes=sizes, steps=steps_per_epoch, batch=batch_size)
    )
    kwargs = {"step_fn": step_fn, "num_devices": mesh.devices.size}
    one_at_a_time = not (default_vectorize() if vectorize is None else vectorize)
    num_members = len(sizes)
    if one_at_a_time and num_members > 1:
        steps = replicated(functools.partial(train_member_steps, **kwargs), mesh, mode, num_args=6)
    else:
        steps = replicated(functools.partial(train_steps, **kwargs), mesh, mode, num_args=5)

    def run(states, data, hparams, step_keys, order_keys, epoch):
        positions = parallel.replicate(orders(order_keys, epoch), mesh)
        if not one_at_a_time or num_members == 1:
            states, metrics = steps(states, data, hparams, step_keys, positions)
            return states, jax.device_get(metrics)
        per_member = []
        for m in range(num_members):  # One compiled program, the member a traced index.
            states, metrics = steps(states, data, hparams, step_keys, positions, np.int32(m))
            per_member.append(metrics)
        metrics = jax.tree.map(lambda *xs: np.concatenate(xs), *jax.device_get(per_member))
        return states, metrics

    return run


# What an evaluation program evaluates (:func:`evaluate_program`'s ``rows``).
EVALUATIONS = ("all", "per_member", "held_out")


def evaluate_program(
    eval_fn: Callable,
    mesh: Mesh,
    mode: str,
    *,
    batch_size: int,
    vectorize: bool | None = None,
    rows: str = "all",
) -> Callable:
    """An evaluation of the stack over ``mesh``, by what ``rows`` names:

    - ``'all'``: ``(states, images, labels, hparams) -> outputs [M, N, ...]``, every member on
      every row (:func:`evaluate`);
    - ``'per_member'``: ``(states, images, labels, hparams, rows) -> outputs [M, R, ...]``, each
      member on its own rows ``rows[m]`` (:func:`evaluate` with ``rows``);
    - ``'held_out'``: the same, each row's outputs put in canonical order,
      ``outputs [N, ...]`` (:func:`evaluate_held_out`).
    """
    if rows not in EVALUATIONS:
        raise ValueError(f"Unknown evaluation {rows!r}; choose from {', '.join(EVALUATIONS)}.")
    fn = functools.partial(
        evaluate_held_out if rows == "held_out" else evaluate, eval_fn=eval_fn,
        batch_size=batch_size, num_devices=mesh.devices.size,
        vectorize=default_vectorize() if vectorize is None else vectorize,
    )  # fmt: skip
    return replicated(fn, mesh, mode, num_args=4 if rows == "all" else 5)


def replicated(fn: Callable, mesh: Mesh, mode: str, *, num_args: int) -> Callable:
    """A program whose arguments and results are all replicated (:func:`parallel.parallelize`);
    ``fn`` splits the work itself with ``axis_index``."""
    return parallel.parallelize(fn, mesh, mode, sharded=(False,) * num_args)
