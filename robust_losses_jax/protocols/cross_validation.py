"""``cl``: K-fold out-of-sample probabilities, then Confident Learning.

Each fold's rows are predicted by a fresh model trained on the other folds (no fold leaks into
its own model); the out-of-sample probabilities, in canonical order, go to
:func:`detection.confident_learning`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax import detection, metrics
from robust_losses_jax.noisy_data import NoisyData
from robust_losses_jax.protocols.base import (
    OUT_OF_SAMPLE,
    Detector,
    Log,
    Protocol,
    Trained,
    by_stack,
    loss_hparams,
    predictions,
    run_keys,
    run_protocol,
)
from robust_losses_jax.records import atomic_write, barrier
from robust_losses_jax.split import Split
from robust_losses_jax.training.loop import Fitted, Stack
from robust_losses_jax.training.stacking import Member


def fold_assignment(key: jax.Array, num_examples: int, folds: int) -> np.ndarray:
    """``[N]`` int: the fold (0..folds-1) of each example, near-equal sizes, from ``key`` only."""
    order = np.asarray(jax.random.permutation(key, num_examples))
    fold_of = np.empty(num_examples, np.int32)
    fold_of[order] = np.arange(num_examples) % folds
    return fold_of


def cross_validation_folds(base_key: jax.Array, num_examples: int, folds: int) -> np.ndarray:
    """``[N]``: the fold of each example in the K-fold protocol of a run whose key is ``base_key``
    (``jax.random.key(seed)``); what :func:`cross_validated` uses, for references to reuse."""
    return fold_assignment(jax.random.fold_in(base_key, 4), num_examples, folds)


def cross_validated_protocol(
    cfg: config_lib.Config, data: NoisyData, base_key: jax.Array, workdir: Path, log: Log
) -> Protocol:
    """K-fold out-of-sample outputs: each fold's rows from a fresh model trained on the others.

    Each fold's outputs are saved to ``fold{k}.npz``, so a resumed run does not train a finished
    fold again. Each fold's model evaluates only its fold's rows; when the K models are one stack
    of their own, together, the outputs put in canonical order on the devices.
    """
    fold_of = cross_validation_folds(base_key, len(data), cfg.folds)
    paths = [workdir / f"fold{k}.npz" for k in range(cfg.folds)]
    missing = [k for k, path in enumerate(paths) if not path.exists()]
    for k in sorted(set(range(cfg.folds)) - set(missing)):
        log(f"fold {k}: outputs found in {paths[k]}, not re-trained")
    members = [
        Member(
            labels=data.given_label,
            rows=np.flatnonzero(fold_of != k),
            keys=run_keys(base_key, k),
            hparams=loss_hparams(cfg),
            tag=f"fold{k}",
        )
        for k in missing
    ]

    def finish(trained: Trained) -> tuple[dict, dict]:
        for fitted, member_position in by_stack(trained):
            position = {missing[j]: i for j, i in member_position.items()}  # By fold.
            write_fold_outputs(fitted, position, fold_of, data, paths)
        barrier("folds written")
        return confident_learning_on_folds(cfg, data, fold_of, paths)

    return Protocol(Stack(members, data.num_classes, tag="folds"), finish)


def fold_outputs(
    fitted: Fitted, position: dict[int, int], fold_of: np.ndarray, data: NoisyData
) -> dict[int, dict[str, np.ndarray]]:
    """``{fold: outputs on its rows}`` of one run's fold models in one stack (``position``:
    fold -> the member's position in the stack)."""
    given, num_train = data.given_label, len(data)
    if len(position) == 1 and len(fitted.test_accuracy) == 1:  # A lone model: its fold.
        ((k, _),) = position.items()
        held_out = fold_of == k
        out = fitted.outputs(data.images[held_out], given[None, held_out])
        return {k: {name: v[0] for name, v in out.items()}}
    if len(position) == len(fitted.test_accuracy):  # The stack is this run's folds.
        member_of_row = np.full(num_train, -1, np.int32)  # Finished folds: no member.
        for k, i in position.items():
            member_of_row[fold_of == k] = i
        labels = np.broadcast_to(given, (len(position), num_train))
        out = fitted.outputs(data.images, labels, member_of_row)
        return {k: {n: v[fold_of == k] for n, v in out.items()} for k in position}
    # Other runs' models in the stack too (a sweep): every member of the stack on its own
    # held-out rows, in one evaluation shared by the runs.
    held_out = fitted.held_out_outputs()
    return {k: held_out[i] for k, i in position.items()}


def write_fold_outputs(
    fitted: Fitted, position: dict[int, int], fold_of: np.ndarray, data: NoisyData,
    paths: list[Path],
) -> None:  # fmt: skip
    """Save each trained fold's out-of-sample outputs and test accuracy to its ``paths[k]``."""
    for k, out in fold_outputs(fitted, position, fold_of, data).items():
        out = {n: out[n] for n in OUT_OF_SAMPLE}
        out["test_accuracy"] = np.float64(fitted.test_accuracy[position[k]])
        atomic_write(paths[k], lambda f, o=out: np.savez(f, **o), mode="wb")


def confident_learning_on_folds(
    cfg: config_lib.Config, data: NoisyData, fold_of: np.ndarray, paths: list[Path]
) -> tuple[dict, dict]:
    """The saved folds' outputs back in canonical order, and Confident Learning on their
    probabilities: ``(predictions, extra)``."""
    parts: dict[str, np.ndarray] = {}
    test_accuracies = []
    for k, path in enumerate(paths):
        held_out = fold_of == k
        with np.load(path) as saved:
            test_accuracies.append(float(saved["test_accuracy"]))
            for name in OUT_OF_SAMPLE:
                if name not in parts:
                    parts[name] = np.zeros((len(data), *saved[name].shape[1:]), saved[name].dtype)
                parts[name][held_out] = saved[name]  # Back in canonical order.
    out = predictions(parts, data)
    out["fold"] = fold_of
    is_flagged, score = detection.confident_learning(
        data.given_label, parts["probs"], filter_by=cfg.cl_filter_by
    )
    out["is_flagged_cl"] = is_flagged
    out["cl_score"] = score  # Self-confidence: 1 - out-of-sample p_t.
    extra = {
        "confident_learning": {
            **metrics.detection_metrics(data.is_corrupted, is_flagged),
            "filter_by": cfg.cl_filter_by,
        },
        "test_accuracy_per_fold": test_accuracies,
        "test_accuracy": float(np.mean(test_accuracies)),
    }
    return out, extra


def cross_validated(
    cfg: config_lib.Config, data: NoisyData, fit_run: Callable[[Stack], Fitted], workdir: Path,
    base_key: jax.Array, log: Log,
) -> tuple[dict, dict]:  # fmt: skip
    """:func:`cross_validated_protocol`, trained: the K models in one stack unless
    ``cfg.sequential``. Returns ``(predictions, extra)``."""
    protocol = cross_validated_protocol(cfg, data, base_key, workdir, log)
    return run_protocol(cfg, fit_run, protocol, log)


def examples_per_model(cfg: config_lib.Config, split: Split, num_test: int) -> int:
    """Each fold's model trains without its fold; ``ValueError`` for a class with fewer
    examples than folds (a fold without it would not learn it)."""
    counts = np.bincount(split.labels, minlength=split.num_classes)
    small = [k for k in range(split.num_classes) if 0 < counts[k] < cfg.folds]
    if small:
        k = small[0]
        raise ValueError(
            f"class {split.class_names[k]!r} has {counts[k]} example(s), fewer than the "
            f"{cfg.folds} folds (--folds); use fewer folds or drop the class."
        )
    num_examples = len(split.labels)
    return num_examples - -(-num_examples // cfg.folds)


# Registered by the package (protocols/__init__.py).
DETECTOR = Detector(
    name="cl",
    description="K-fold out-of-sample probabilities + Confident Learning",
    protocol=cross_validated_protocol,
    flags=lambda predictions: predictions["is_flagged_cl"],
    num_models=lambda cfg: cfg.folds,
    out_of_sample=True,
    settings=("folds", "cl_filter_by"),
    check_data=examples_per_model,
    scores=("confident_learning", "CL"),
)
