"""A stack's orbax checkpoints: when to save, and restoring the latest one whole.

Saves are asynchronous: orbax writes them in a background thread while the next epochs train (a
save waits for the one before it; the arrays are immutable, so nothing changes under it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from robust_losses_jax.training import parallel

CHECKPOINTS_TO_KEEP = 3


class CheckpointError(RuntimeError):
    """A checkpoint that exists cannot be read back."""


def restore_latest(manager: ocp.CheckpointManager, state: Any) -> Any:
    """The latest finalised checkpoint restored into ``state``'s structure and shardings.

    Orbax writes a checkpoint to a temporary folder and renames it when complete, and
    ``latest_step`` only sees finalised ones, so a checkpoint half-written by a killed run is
    never loaded. A finalised one that cannot be read (a truncated or altered file) raises
    :class:`CheckpointError` naming it and the earlier checkpoints to fall back to.
    """
    step = manager.latest_step()
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(state))
    except Exception as error:  # Orbax/tensorstore raise many types for a damaged file.
        path = Path(manager.directory) / str(step)
        earlier = [s for s in manager.all_steps() if s != step]
        fallback = (
            f"delete {path} to resume from step {max(earlier)} (checkpoints kept: "
            f"{', '.join(map(str, sorted(earlier)))})"
            if earlier
            else "no earlier checkpoint is kept; pass --overwrite to start again"
        )
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be restored ({type(error).__name__}: {reason}); {fallback}."
        ) from error


class Checkpointer:
    """Checkpoints of one stack in ``directory``: every ``every`` epochs, at most once per
    ``min_interval`` seconds, and after the last epoch; the last :data:`CHECKPOINTS_TO_KEEP`
    kept."""

    def __init__(self, directory: Path, *, every: int, min_interval: float):
        self.directory = Path(directory)
        self.manager = ocp.CheckpointManager(
            self.directory.absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=CHECKPOINTS_TO_KEEP, enable_async_checkpointing=True, create=True
            ),
        )
        self.every = every
        # The clock may only skip checkpoints in one process: in several, each process must make
        # the same decision (a save is collective), and their clocks differ.
        self.min_interval = min_interval if jax.process_count() == 1 else 0.0
        self.last_save = time.monotonic()

    def latest_step(self) -> int | None:
        """The latest finalised checkpoint's step, None when there is none."""
        return self.manager.latest_step()

    def restore(self, states: Any) -> Any:
        """:func:`restore_latest` into ``states``' structure."""
        return restore_latest(self.manager, states)

    def start_clock(self) -> None:
        """Count ``min_interval`` from now (the first epoch)."""
        self.last_save = time.monotonic()

    def save_if_due(self, epoch: int, step: int, states: Any, *, last: bool) -> bool:
        """Save after 0-based ``epoch`` (at train step ``step``) when due; True if it saved."""
        due = (epoch + 1) % self.every == 0
        if last or (due and time.monotonic() - self.last_save >= self.min_interval):
            self.manager.save(step, args=ocp.args.StandardSave(parallel.to_global(states)))
            self.last_save = time.monotonic()
            return True
        return False

    def wait(self) -> None:
        """Until every save has been written."""
        self.manager.wait_until_finished()

    def last_good(self) -> str:
        """A sentence saying where the last good checkpoint is (after :meth:`wait`)."""
        if self.latest_step() is not None:
            return f"The last good checkpoint is kept in {self.directory}"
        return "No checkpoint was saved before it"
