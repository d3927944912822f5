"""A stack of models trained together: its members and the data they read.

A stack member is one model with its own labels, training rows, PRNG keys and loss
hyperparameters: a fold of K-fold cross-validation (its own subset of the rows), a seed (its own
keys and labels), or a value of ``gamma``/``tau`` (traced, so one compilation). Every member
reads the same images. Pytree helpers stack and unstack their states along a leading axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Member:
    """One model of a stack, on the host.

    Attributes:
      labels: int ``[N]``: the labels this model trains on, for every row of the stack's images.
      rows: int ``[n]``, increasing: the rows of the images it trains on (``arange(N)``: all).
      keys: ``(init, step, order)`` PRNG keys: initial weights, augmentation/dropout, batch order.
      hparams: the loss's hyperparameters (``gamma``, ``tau``, ...), scalars.
      tag: its name in logs and file names (``fold0``, ...; ``""`` for a lone run).
    """

    labels: np.ndarray
    rows: np.ndarray
    keys: tuple[Array, Array, Array]
    hparams: Mapping[str, float]
    tag: str = ""


def stack(trees: Sequence[Any]) -> Any:
    """Pytrees with the same structure -> one pytree whose leaves have a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, i: int) -> Any:
    """Member ``i`` of a stacked pytree."""
    return jax.tree.map(lambda leaf: leaf[i], tree)


def stacked_hparams(members: Sequence[Member]) -> dict[str, Array]:
    """``{name: float32 [M]}``; every member must name the same hyperparameters."""
    names = set(members[0].hparams)
    for member in members:
        if set(member.hparams) != names:
            raise ValueError(
                f"stack members name different hyperparameters: {sorted(names)} and "
                f"{sorted(member.hparams)}."
            )
    return {k: jnp.asarray([m.hparams[k] for m in members], jnp.float32) for k in sorted(names)}


@dataclasses.dataclass(frozen=True)
class StackData:
    """What the epoch program reads, on the devices (replicated).

    Attributes:
      images: uint8 ``[N, H, W, C]``, shared by the members.
      labels: int32 ``[M, N]``: each member's labels.
      rows: int32 ``[M, n_max]``: each member's rows, padded with 0 past its ``n_m``.
    """

    images: Array
    labels: Array
    rows: Array


jax.tree_util.register_dataclass(
    StackData, data_fields=["images", "labels", "rows"], meta_fields=[]
)


def stack_data(images: np.ndarray, members: Sequence[Member]) -> StackData:
    """Host arrays of a stack (place them with :func:`training.parallel.replicate`)."""
    n_max = max(len(m.rows) for m in members)
    rows = np.zeros((len(members), n_max), np.int32)
    for i, member in enumerate(members):
        rows[i, : len(member.rows)] = member.rows
        if len(member.labels) != len(images):
            raise ValueError(
                f"member {member.tag or i} has {len(member.labels)} labels for "
                f"{len(images)} images."
            )
    labels = np.stack([np.asarray(m.labels, np.int32) for m in members])
    return StackData(images=np.asarray(images, np.uint8), labels=labels, rows=rows)


def padded_rows(per_member: Sequence[np.ndarray], num_rows: int) -> np.ndarray:
    """int32 ``[M, R]``: member ``m``'s rows ``per_member[m]``, padded with ``num_rows`` (out of
    range: :func:`evaluate` evaluates the last row there, :func:`evaluate_held_out` drops it)."""
    width = max(len(r) for r in per_member)
    return np.stack(
        [np.concatenate([r, np.full(width - len(r), num_rows)]) for r in per_member]
    ).astype(np.int32)


def held_out_rows(member_of_row: np.ndarray, num_members: int) -> np.ndarray:
    """int32 ``[M, R]``: each member's rows (``member_of_row == m``), padded with ``N``.

    ``member_of_row`` ``[N]``: a member index, or -1 for a row no member evaluates. Raises
    ValueError when a member holds no row.
    """
    member_of_row = np.asarray(member_of_row)
    num_rows = len(member_of_row)
    per_member = [np.flatnonzero(member_of_row == m) for m in range(num_members)]
    empty = [m for m, r in enumerate(per_member) if len(r) == 0]
    if empty:
        raise ValueError(f"members {empty} hold no rows to evaluate.")
    return padded_rows(per_member, num_rows)
