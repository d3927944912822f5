"""What a stack's training records, per member and epoch: ``metrics.jsonl``, training records, log.

Each member's epoch is one ``metrics.jsonl`` line (``"run": tag`` when tagged) and one row of its
training record ``train_record[_<tag>].npz`` (:mod:`records`): margin sums and counts of each
example (AUM) and, when tracked, ``p_t``. Each epoch's rows are written to a file of their own
before the epoch's checkpoint, and its lines appended after it, so a run killed in between finds
every epoch it resumes from (and ignores the ones after).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robust_losses_jax import detection, metrics, records
from robust_losses_jax.records import append_jsonl, atomic_write
from robust_losses_jax.training.checkpoints import CheckpointError
from robust_losses_jax.training.stacking import Member


def _drop_epochs_after(path: Path, tag: str, epoch: int) -> None:
    """Forget this run's logged epochs after ``epoch`` (they are trained again on resume)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    logged = [json.loads(x) for x in lines]
    kept = [
        x
        for x, r in zip(lines, logged, strict=True)
        if r.get("run", "") != tag or r["epoch"] <= epoch
    ]
    if len(kept) != len(lines):
        atomic_write(path, lambda f: f.write("".join(x + "\n" for x in kept)))


def epoch_detection(
    out: Mapping[str, np.ndarray], labels: np.ndarray, is_corrupted: np.ndarray
) -> dict[str, float]:
    """An epoch's in-sample detection scores (to watch memorisation set in)."""
    flagged, score = detection.predicted_neq_given(out["probs"], labels)
    return {
        "f1_argmax_neq_given": metrics.detection_metrics(is_corrupted, flagged)["f1"],
        "auroc_1_minus_pt": metrics.ranking_metrics(is_corrupted, score)["auroc"],
        "memorised_fraction": metrics.memorised_fraction(out["pred"], labels, is_corrupted),
    }


def _tagged(name: str, tag: str, suffix: str) -> str:
    return f"{name}{'_' + tag if tag else ''}{suffix}"


class Recorder:
    """Per member of a stack: its ``metrics.jsonl`` lines and training record.

    Args:
      members: the stack.
      record_dirs: per member, the folder of its files (a stack of several runs' models).
      num_images: rows of the stack's images (an untracked epoch's ``p_t`` row has that many).
      is_corrupted: ``[M, N]`` when ``p_t`` is tracked (each member against its own run's
        corruption), else None.
      log: where one line per member and epoch goes.
    """

    def __init__(
        self,
        members: Sequence[Member],
        record_dirs: Sequence[Path],
        *,
        num_images: int,
        is_corrupted: np.ndarray | None,
        log: Callable[[str], None],
    ):
        if len(record_dirs) != len(members):
            raise ValueError(f"{len(record_dirs)} record_dirs for {len(members)} members.")
        if len({(d, m.tag) for d, m in zip(record_dirs, members, strict=True)}) != len(members):
            raise ValueError("members that share a record dir need distinct tags.")
        self.members, self.record_dirs = list(members), list(record_dirs)
        self.sizes = [len(m.rows) for m in members]
        self.num_images, self.is_corrupted, self.log = num_images, is_corrupted, log
        pairs = list(zip(record_dirs, members, strict=True))
        self.record_paths = [d / _tagged("train_record", m.tag, ".npz") for d, m in pairs]
        self.history: list[dict[str, list[np.ndarray]]] = [
            {k: [] for k in records.HISTORY_FIELDS} for _ in members
        ]

    def forget_logged(self, after_epoch: int = 0) -> None:
        """Drop the ``metrics.jsonl`` lines of epochs after ``after_epoch`` (trained again)."""
        for member, record_dir in zip(self.members, self.record_dirs, strict=True):
            _drop_epochs_after(record_dir / "metrics.jsonl", member.tag, after_epoch)

    def resume(self, start_epoch: int) -> None:
        """Read back the first ``start_epoch`` epochs' rows (a checkpoint's) and forget the
        lines logged after them. :class:`CheckpointError` when the files cannot give them."""
        for m, path in enumerate(self.record_paths):
            try:
                self.history[m] = records.read_history(path, start_epoch)
            except (OSError, ValueError, zipfile.BadZipFile) as error:  # A damaged file.
                raise CheckpointError(
                    f"the training record {path} (or a file of {records.epochs_dir(path)}) "
                    f"cannot be read ({type(error).__name__}: {error}); pass --overwrite to "
                    "start again."
                ) from error
            if len(self.history[m]["margin_sum"]) != start_epoch:
                raise CheckpointError(
                    f"{path} holds {len(self.history[m]['margin_sum'])} epochs of training "
                    f"records, fewer than the checkpoint's {start_epoch}; pass --overwrite to "
                    "start again."
                )
        self.forget_logged(start_epoch)

    def epoch(
        self,
        epoch: int,
        epoch_metrics: Mapping[str, Any],
        *,
        step: int,
        robust_loss_on: bool,
        seconds: float,
        test_accuracy: np.ndarray | None = None,
        tracked: Mapping[str, np.ndarray] | None = None,
        chosen: Sequence[tuple[float, float]] | None = None,
    ) -> list[dict[str, Any]]:
        """Write 0-based ``epoch``'s training-record rows; return its ``metrics.jsonl`` lines.

        ``epoch_metrics``: the engine's; ``test_accuracy`` ``[M]`` when tested; ``tracked``:
        outputs ``[M, N, ...]`` on every row when ``p_t`` was tracked; ``chosen``: ``--tau=auto``'s
        ``(tau, rate)`` per member, in the epoch that chose them.
        """
        lines = []
        for m, member in enumerate(self.members):
            n = self.sizes[m]
            rows = {
                "margin_sum": np.asarray(epoch_metrics["margin_sum"][m][:n]),
                "margin_count": np.asarray(epoch_metrics["margin_count"][m][:n]).astype(np.uint8),
            }
            count = float(epoch_metrics["count"][m])
            line = {
                **({"run": member.tag} if member.tag else {}),
                "epoch": epoch + 1,
                "step": step,
                "robust_loss_on": robust_loss_on,
                "train_loss": float(epoch_metrics["loss_sum"][m]) / count,
                "train_accuracy_noisy": float(epoch_metrics["correct"][m]) / count,
                "frac_low_weight": float(epoch_metrics["low_weight"][m]) / count,
            }
            if chosen is not None:
                line["auto_tau"], line["estimated_noise_rate"] = chosen[m]
            if test_accuracy is not None:
                line["test_accuracy"] = float(test_accuracy[m])
            if tracked is not None:
                out = {k: v[m] for k, v in tracked.items()}
                rows["p_t"] = out["p_t"].astype(np.float16)
                line.update(epoch_detection(out, member.labels, self.is_corrupted[m]))
            elif self.is_corrupted is not None:  # Keeps p_t_history [E, N]: an untracked epoch.
                rows["p_t"] = np.full(self.num_images, np.nan, np.float16)  # As tracked: all rows.
            line["seconds"] = seconds
            for name, value in rows.items():
                self.history[m][name].append(value)
            records.write_epoch(self.record_paths[m], epoch, rows)
            lines.append(line)
        return lines

    def log_epoch(self, lines: Sequence[dict[str, Any]], epochs: int) -> None:
        """Append an epoch's lines to each member's ``metrics.jsonl`` (after its checkpoint)
        and log them."""
        for member, line, record_dir in zip(self.members, lines, self.record_dirs, strict=True):
            append_jsonl(record_dir / "metrics.jsonl", line)
            test = f", test acc {line['test_accuracy']:.4f}" if "test_accuracy" in line else ""
            self.log(
                f"{member.tag + ' ' if member.tag else ''}epoch {line['epoch']}/{epochs}: loss "
                f"{line['train_loss']:.4f}, noisy-label acc "
                f"{line['train_accuracy_noisy']:.4f}, low-weight "
                f"{line['frac_low_weight']:.3f}{test} ({line['seconds']:.1f}s)"
            )

    def finish(self, aum_from_epoch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Gather each member's epoch files into its training record; return the AUM sums and
        counts per member (``[n_m]``), leaving out the epochs before ``aum_from_epoch``."""
        for path, member_history, n in zip(
            self.record_paths, self.history, self.sizes, strict=True
        ):
            records.write_history(path, member_history, n)
        aum = [
            detection.aum_sums_from_epoch(
                np.reshape(h["margin_sum"], (-1, n)), np.reshape(h["margin_count"], (-1, n)),
                aum_from_epoch,
            )
            for h, n in zip(self.history, self.sizes, strict=True)
        ]  # fmt: skip
        return [s for s, _ in aum], [c for _, c in aum]
