"""Writing a run's per-example training record: one file per epoch against the whole history.

A run records, per epoch and training example, the AUM margin sum (float32) and count (uint8)
and ``p_t`` (float16). Rewriting the whole record (``[E, N]`` per field) after every epoch
costs O(E^2) bytes over a run; ``records.write_epoch`` writes each epoch to a file of its own
and ``records.write_history`` gathers them once at the end. This times both
on the same data, in one run, in a temporary directory on the disk of ``--dir``.

    python -m benchmarks.bench_records            # 50,000 examples (CIFAR-10), 200 epochs
    python -m benchmarks.bench_records --quick    # 50,000 examples, 40 epochs

Ends with ``ratio epoch files vs whole rewrite: <x.xx>`` (> 1: epoch files faster).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from robust_losses_jax import records


def _epochs(num_rows: int, num_epochs: int):
    rng = np.random.default_rng(0)
    for _ in range(num_epochs):
        yield {
            "margin_sum": rng.normal(size=num_rows).astype(np.float32),
            "margin_count": np.ones(num_rows, np.uint8),
            "p_t": rng.random(num_rows).astype(np.float16),
        }


def whole_rewrite(path: Path, num_rows: int, num_epochs: int) -> int:
    """The old way: after each epoch, the whole history to ``path``. Returns bytes written."""
    history = {name: [] for name in records.HISTORY_FIELDS}
    written = 0
    for rows in _epochs(num_rows, num_epochs):
        for name, value in rows.items():
            history[name].append(value)
        saved = {f"{k}_history": np.stack(v) for k, v in history.items()}
        records.atomic_write(path, lambda f, saved=saved: np.savez(f, **saved), mode="wb")
        written += path.stat().st_size
    return written


def epoch_files(path: Path, num_rows: int, num_epochs: int) -> int:
    """Today's way: one file per epoch, gathered at the end. Returns bytes written."""
    history = {name: [] for name in records.HISTORY_FIELDS}
    written = 0
    for epoch, rows in enumerate(_epochs(num_rows, num_epochs)):
        for name, value in rows.items():
            history[name].append(value)
        records.write_epoch(path, epoch, rows)
        written += records.epoch_path(path, epoch).stat().st_size
    records.write_history(path, history, num_rows)
    return written + path.stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=None, help="default 200 (--quick: 40)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: the temp dir)")
    args = parser.parse_args(argv)
    num_epochs = args.epochs or (40 if args.quick else 200)
    times: dict[str, list[float]] = {"whole rewrite": [], "epoch files": []}
    written: dict[str, int] = {}
    for _ in range(args.repeats):  # Interleaved rounds: the disk's state drifts.
        for name, fn in (("whole rewrite", whole_rewrite), ("epoch files", epoch_files)):
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                started = time.perf_counter()
                written[name] = fn(Path(tmp) / "train_record.npz", args.rows, num_epochs)
                times[name].append(time.perf_counter() - started)
    print(f"training record of {args.rows} examples x {num_epochs} epochs "
          f"(margin sum f32, count u8, p_t f16); median of {args.repeats}")  # fmt: skip
    print(f"{'writer':16s} {'seconds':>9s} {'MB written':>11s}")
    for name, values in times.items():
        print(f"{name:16s} {np.median(values):9.2f} {written[name] / 1e6:11.1f}")
    ratio = np.median(times["whole rewrite"]) / np.median(times["epoch files"])
    print(f"ratio epoch files vs whole rewrite: {ratio:.2f}")


if __name__ == "__main__":
    main()
