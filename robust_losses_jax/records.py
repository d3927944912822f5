"""What a run writes: atomic files, and per-example training records that grow by one epoch.

Every file is written to a temporary name in its directory and renamed into place, so a killed
run leaves no truncated file. Only process 0 writes (every process computes the same values in
a multi-host run).

A training record is one ``.npz`` (``train_record.npz``) holding ``<field>_history`` arrays,
``[E, N]``: one row per epoch and training example. While a run trains, each epoch goes to a
file of its own beside it (``train_record.epochs/000007.npz``), so an epoch costs its own size
to write, not the whole history's (a 50,000-example, 200-epoch run rewrote 7 GB when the record
was written whole every epoch); :func:`write_history` gathers them into the record once
training ends. :func:`read_history` reads both, for a resumed run (an epoch's own file first).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

# The fields of a training record: per epoch and example, the sum and count of the training
# margins (AUM) and, when the run tracks it, p_t after the epoch.
HISTORY_FIELDS = ("margin_sum", "margin_count", "p_t")


def is_writer() -> bool:
    """Only process 0 writes outputs (every process computes them, in a multi-host run)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait for every process (multi-host) before reading what process 0 wrote."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write ``path`` through a temporary file in the same directory, then rename it into place.

    On processes other than 0 (multi-host) it writes nothing.
    """
    if not is_writer():
        return
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.chmod(tmp, _new_file_mode())  # mkstemp's 0600 would hide the file from other users.
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (NumPy scalars too) as ``None``, for strict JSON.

    A value that is undefined (the F1 of a detector with nothing to find, the test accuracy of
    a dataset without a test split) is ``null`` in the project's JSON files, never ``NaN``.
    """
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (:func:`strict_json`; ``allow_nan=False`` checks it)."""
    return json.dumps(strict_json(obj), allow_nan=False, sort_keys=True, **kwargs)


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_json(path: Path, obj: Any) -> None:
    text = dumps(obj, indent=2)
    atomic_write(path, lambda f: f.write(text))


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one line, rewriting the file atomically (it is one line per epoch: small)."""
    old = Path(path).read_text() if Path(path).exists() else ""
    line = dumps(obj)
    atomic_write(path, lambda f: f.write(old + line + "\n"))


def epochs_dir(path: Path) -> Path:
    """Where the epochs of the record ``path`` wait while it trains: ``<stem>.epochs/``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.epochs")


def epoch_path(path: Path, epoch: int) -> Path:
    """The file of epoch ``epoch`` (0-based) of the record ``path``, while it trains."""
    return epochs_dir(path) / f"{epoch:06d}.npz"


def write_epoch(path: Path, epoch: int, arrays: Mapping[str, np.ndarray]) -> None:
    """Epoch ``epoch`` (0-based) of the record ``path``: ``arrays`` (field -> ``[N]``), alone.

    Fields may be missing (``p_t`` when the run does not track it). A file already there for
    this epoch (a resumed run trains it again) is replaced.
    """
    unknown = sorted(set(arrays) - set(HISTORY_FIELDS))
    if unknown:
        raise ValueError(f"unknown record fields {unknown}; allowed: {list(HISTORY_FIELDS)}.")
    if epoch < 0:
        raise ValueError(f"epoch {epoch} must be at least 0.")
    if is_writer():
        epochs_dir(path).mkdir(exist_ok=True)
    atomic_write(epoch_path(path, epoch), lambda f: np.savez(f, **arrays), mode="wb")


def read_history(path: Path, epochs: int) -> dict[str, list[np.ndarray]]:
    """The first ``epochs`` epochs of each field of the record ``path`` (fewer if it has fewer).

    Each epoch comes from its own file (:func:`write_epoch`) where there is one, else from
    ``path``: epoch files are newer than the gathered record, which removes them (a run resumed
    from an earlier checkpoint trains some of its epochs again). A missing epoch ends the
    history there. Returns field -> list of ``[N]`` arrays (empty for a field the run did not
    record).
    """
    path = Path(path)
    gathered: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as saved:
            gathered = {name: saved[f"{name}_history"] for name in HISTORY_FIELDS
                        if f"{name}_history" in saved.files}  # fmt: skip
    num_gathered = len(gathered.get("margin_sum", ()))
    history: dict[str, list[np.ndarray]] = {name: [] for name in HISTORY_FIELDS}
    for epoch in range(epochs):
        epoch_file = epoch_path(path, epoch)
        if epoch_file.exists():
            with np.load(epoch_file) as saved:
                rows = {name: saved[name] for name in HISTORY_FIELDS if name in saved.files}
        elif epoch < num_gathered:
            rows = {name: v[epoch] for name, v in gathered.items() if epoch < len(v)}
        else:
            break
        for name, value in rows.items():
            history[name].append(value)
    return history


def write_history(path: Path, history: Mapping[str, Sequence[np.ndarray]], num_rows: int) -> None:
    """The whole record ``path`` (``<field>_history`` ``[E, num_rows]``), then its epoch files go.

    A field with no epochs is saved as ``[0, num_rows]`` float32.
    """
    empty = np.zeros((0, num_rows), np.float32)
    saved = {
        f"{name}_history": np.stack(history[name]) if len(history.get(name, ())) else empty
        for name in HISTORY_FIELDS
    }
    atomic_write(path, lambda f: np.savez(f, **saved), mode="wb")
    if is_writer():
        shutil.rmtree(epochs_dir(path), ignore_errors=True)


__all__ = [
    "HISTORY_FIELDS",
    "append_jsonl",
    "atomic_write",
    "epoch_path",
    "epochs_dir",
    "is_writer",
    "read_history",
    "write_epoch",
    "write_history",
    "write_json",
]
