"""Training a stack of models for a run's epochs: :func:`fit`.

:func:`fit` trains one or more freshly initialised models (:class:`stacking.Member`) and returns a
:class:`Fitted`: the final states, their test accuracies, and evaluations of them on the
training rows. It is a loop over epochs of an engine (:mod:`training.engines`: the whole stack
on the devices, or one model streamed from the host), with a :class:`checkpoints.Checkpointer`
(orbax; ``resume`` continues from the latest) and a :class:`recorder.Recorder` (``metrics.jsonl``,
training records); it tests every ``eval_every`` epochs, chooses ``--tau=auto``'s threshold after
the delay, and stops with :class:`NonFiniteError` on a non-finite loss or gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax import detection, input_pipeline
from robust_losses_jax.training import parallel, step
from robust_losses_jax.training.checkpoints import Checkpointer
from robust_losses_jax.training.engines import (
    DeviceEngine,
    ProgramCache,
    StreamingEngine,
    device_programs,
    progress_bar,
    uses_device_data,
)
from robust_losses_jax.training.recorder import Recorder
from robust_losses_jax.training.stacking import Member, padded_rows, stacked_hparams


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A trained stack of models and what their training recorded.

    Attributes:
      states: the final train states, stacked (leading axis: the members), on the devices.
      outputs: ``outputs(images, labels, member_of_row=None)`` -> host arrays ``[M, N, ...]``
        (every member on every row; ``labels`` ``[M, N]``), or ``[N, ...]`` with
        ``member_of_row`` ``[N]``: row ``i`` from member ``member_of_row[i]``, which alone
        evaluates it (assembled on the devices). Keys: ``logits``, ``probs``, ``p_t``,
        ``margin``, ``pred``, ``weight``, ``loss``. With the data on the devices it also takes
        ``rows=`` ``[M, R]`` (each member on its own rows, padded with ``N``: ``[M, R, ...]``).
      aum_sum, aum_count: per member, ``[n_m]`` sums and counts of the training margins of its
        rows (every step from ``aum_from_epoch`` on, from the train step's own logits), for AUM.
      test_accuracy: per member, the clean test accuracy of its final model.
      training_outputs: ``() ->`` host arrays ``[M, N, ...]``: every member on every row of the
        stack's images, scored against its own labels (computed once, on first call).
      held_out_outputs: ``() ->`` per member, host arrays ``[R_m, ...]``: its outputs on the
        rows of the stack's images it did not train on (K-fold: its fold), in ascending order,
        against its own labels; every member's in one evaluation (computed once).
    """

    states: Any
    outputs: Callable[..., dict[str, np.ndarray]]
    aum_sum: list[np.ndarray]
    aum_count: list[np.ndarray]
    test_accuracy: list[float]
    training_outputs: Callable[[], dict[str, np.ndarray]]
    held_out_outputs: Callable[[], list[dict[str, np.ndarray]]]


def member_steps_per_epoch(members: list[Member], batch_size: int) -> set[int]:
    """The members' steps per epoch (a stack needs one value)."""
    return {len(m.rows) // batch_size for m in members}


class _Laps:
    """``lap(name)`` adds the wall seconds since the previous lap to ``timings[name]``."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now


def _steps_per_epoch(cfg: config_lib.Config, members: list[Member], on_device: bool) -> int:
    """The stack's steps per epoch; ValueError for a stack that cannot train together."""
    if not on_device and len(members) > 1:
        raise ValueError("streamed data trains one model at a time; pass one member.")
    smallest = min(len(m.rows) for m in members)
    if smallest < cfg.batch_size:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {smallest} training examples.")
    steps = member_steps_per_epoch(members, cfg.batch_size)
    if len(steps) > 1:
        raise ValueError(
            f"stack members have different steps per epoch ({sorted(steps)}); train them "
            "one after another (--sequential)."
        )
    return steps.pop()


def initial_states(
    cfg: config_lib.Config, members: list[Member], image_shape: tuple[int, ...], *,
    num_classes: int, steps_per_epoch: int, cache: ProgramCache,
) -> Any:  # fmt: skip
    """The members' freshly initialised train states, stacked on the host.

    Each member is initialised on its own, exactly as a lone run would be, then stacked on the
    host (an eager ``jnp.stack`` compiles a program per leaf shape and stack size). The model
    and optimiser come from ``cache``, so equal settings give equal state structures.
    """
    model = cache.model(cfg.model, num_classes, cfg.dtype)
    tx = cache.optimizer(
        cfg.optimizer, cfg.lr, total_steps=steps_per_epoch * cfg.epochs, schedule=cfg.lr_schedule,
        warmup_steps=cfg.warmup_epochs * steps_per_epoch, momentum=cfg.momentum,
        nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
    )  # fmt: skip
    return jax.tree.map(
        lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]),
        *[step.create_train_state(m.keys[0], model, image_shape, tx) for m in members],
    )


def step_config(cfg: config_lib.Config, steps_per_epoch: int) -> step.StepConfig:
    """The train step's static settings for a run of ``cfg``."""
    augment = (
        cfg.dataset in input_pipeline.AUGMENTED_BY_DEFAULT if cfg.augment is None else cfg.augment
    )
    return step.StepConfig(
        loss_name=cfg.loss,
        delay_steps=cfg.resolved_delay_epochs * steps_per_epoch,
        ramp_steps=cfg.ramp_epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        augment=augment,
        l1_weight=cfg.l1_weight,
        detach=cfg.detach,
    )


def fit(
    cfg: config_lib.Config,
    images: np.ndarray,
    members: list[Member],
    *,
    num_classes: int,
    real_classes: int | None = None,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    workdir: Path,
    tag: str = "",
    is_corrupted: np.ndarray | None = None,
    resume: bool = False,
    progress: bool = True,
    devices: list,
    log: Callable[[str], None] = print,
    record_dirs: list[Path] | None = None,
    timings: dict[str, float] | None = None,
    aum_from_epoch: int = 0,
    cache: ProgramCache | None = None,
) -> Fitted:
    """Train a stack of freshly initialised models (one or more :class:`stacking.Member`).

    With the data on the devices (:func:`engines.uses_device_data`) every epoch is one compiled
    program that trains all members together; streamed from the host, one member only, a step
    at a time. Both train on the same batches.

    Args:
      images: uint8 ``[N, H, W, C]``, the rows the members' ``rows`` index.
      members: the models to train; all must have the same number of steps per epoch.
      num_classes: outputs of the model (``C + 1`` with AUM's threshold class).
      real_classes: ``C``, the dataset's classes (default ``num_classes``): test predictions are
        the argmax over the first ``C`` logits.
      workdir: the stack's checkpoints go to ``checkpoints`` (``checkpoints_<tag>``); each
        member's epochs are appended to ``metrics.jsonl`` (with ``"run": member.tag`` when
        tagged) and its per-example records go to ``train_record[_<member.tag>].npz``, in
        ``workdir`` or, per member, in ``record_dirs`` (a stack of several runs' models).
      is_corrupted: ``[M, N]``, when given the members are evaluated on every row after the
        epochs that test (``cfg.eval_every``, and the last): ``p_t`` per epoch goes to the
        training record (``p_t_history`` ``[E, N]`` float16, NaN rows for the other epochs) and
        ``metrics.jsonl`` gets that epoch's detection F1 (argmax != given), AUROC of
        ``1 - p_t`` and memorised fraction.
      resume: continue from the latest checkpoint of this stack.
      aum_from_epoch: the AUM sums (``Fitted.aum_sum``) leave out the epochs before this one
        (0-based), unless the run has no more epochs than that.
      timings: when given, wall seconds are added to it by phase: ``setup`` (initialisation,
        programs, data placement, restore), ``train`` (the epoch programs, compilation included),
        ``test``, ``track`` (the per-epoch outputs on the training rows), ``records`` (training
        records and ``metrics.jsonl``) and ``checkpoint``.
      cache: models, optimisers and compiled programs shared with other fits (sequential folds,
        sweep cells) so that equal settings compile once; default: this fit's own.
    """
    lap = _Laps(timings)
    cache = cache or ProgramCache()
    on_device = uses_device_data(cfg)
    steps_per_epoch = _steps_per_epoch(cfg, members, on_device)
    states = initial_states(
        cfg, members, images.shape[1:], num_classes=num_classes, steps_per_epoch=steps_per_epoch,
        cache=cache,
    )  # fmt: skip
    settings = step_config(cfg, steps_per_epoch)
    hparams = stacked_hparams(members)
    mesh = parallel.data_mesh(devices)
    states = parallel.replicate(states, mesh)
    real_classes = real_classes or num_classes
    if on_device:
        device_fns = device_programs(
            cache, settings, mean, std, mesh, cfg.parallel,
            sizes=tuple(len(m.rows) for m in members), batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size,
        )  # fmt: skip
        engine = DeviceEngine(images, test_images, members, mesh, device_fns)
    else:
        engine = StreamingEngine(
            cfg, images, members[0], mesh, settings, mean, std, progress=progress
        )
    member_labels = np.stack([m.labels for m in members])
    test_accuracy = functools.partial(
        _test_accuracy, engine, images=test_images, labels=test_labels, real_classes=real_classes
    )
    checkpointer = Checkpointer(
        workdir / f"checkpoints{'_' + tag if tag else ''}", every=cfg.checkpoint_every,
        min_interval=cfg.checkpoint_min_interval,
    )  # fmt: skip
    recorder = Recorder(
        members, record_dirs or [workdir] * len(members), num_images=len(images),
        is_corrupted=is_corrupted, log=log,
    )  # fmt: skip
    start_epoch = 0
    if resume and checkpointer.latest_step() is None:
        # Killed before its first checkpoint (with --checkpoint-every > 1, after logging some
        # epochs): it starts again, without the epochs it logged.
        recorder.forget_logged()
    elif resume:
        states = checkpointer.restore(states)
        start_epoch = int(np.ravel(states.step)[0]) // steps_per_epoch
        recorder.resume(start_epoch)
        step_now = start_epoch * steps_per_epoch
        log(f"resumed {tag or 'run'} from epoch {start_epoch} (step {step_now})")
    if cfg.auto_tau and start_epoch >= cfg.resolved_delay_epochs:  # Chosen before the resume.
        hparams = {**hparams, "tau": jnp.asarray(recorder.read_auto_tau(), jnp.float32)}
    lap("setup")
    checkpointer.start_clock()
    desc = f"{tag or 'training'} ({len(members)} model{'s' if len(members) > 1 else ''})"
    accuracies, tracked = None, None  # The last epoch's, for the final model.
    for epoch in progress_bar(range(start_epoch, cfg.epochs), progress and on_device, desc=desc,
                       leave=False):  # fmt: skip
        started = time.perf_counter()
        states, epoch_metrics = engine.run_epoch(states, hparams, epoch)
        _check_finite(epoch_metrics, members, epoch, steps_per_epoch, cfg, checkpointer)
        lap("train")
        chosen = None
        if cfg.auto_tau and epoch + 1 == cfg.resolved_delay_epochs:
            chosen = _choose_auto_tau(engine, states, hparams, images, member_labels, members)
            hparams = {**hparams, "tau": jnp.asarray([t for t, _ in chosen], jnp.float32)}
            recorder.write_auto_tau(chosen)
        last = epoch + 1 == cfg.epochs
        evaluated = last or (epoch + 1) % cfg.eval_every == 0
        if evaluated:
            accuracies = test_accuracy(states, hparams)
            lap("test")
        # Tracking evaluates every training row: it follows --eval-every like the test set.
        tracked = None
        if is_corrupted is not None and evaluated:
            tracked = engine.outputs(states, hparams, images, member_labels)
            lap("track")
        step_now = (epoch + 1) * steps_per_epoch
        lines = recorder.epoch(
            epoch, epoch_metrics, step=step_now,
            robust_loss_on=bool(step_now > settings.delay_steps),
            seconds=(time.perf_counter() - started) / len(members),
            test_accuracy=accuracies if evaluated else None, tracked=tracked, chosen=chosen,
        )  # fmt: skip
        lap("records")
        if checkpointer.save_if_due(epoch, step_now, states, last=last):
            lap("checkpoint")
        recorder.log_epoch(lines, cfg.epochs)  # Once the checkpoint is saved.
        lap("records")
    checkpointer.wait()
    lap("checkpoint")
    aum_sum, aum_count = recorder.finish(aum_from_epoch)
    lap("records")
    if accuracies is None:  # Resumed with every epoch done.
        accuracies = test_accuracy(states, hparams)
    outputs = functools.partial(engine.outputs, states, hparams)
    return Fitted(
        states=states,
        outputs=outputs,
        aum_sum=aum_sum,
        aum_count=aum_count,
        test_accuracy=[float(a) for a in accuracies],
        # The last epoch's tracked outputs are the final model's.
        training_outputs=functools.cache(
            lambda: tracked if tracked is not None else outputs(images, member_labels)
        ),
        held_out_outputs=functools.cache(
            lambda: _held_out_outputs(outputs, images, member_labels, members)
        ),
    )


def _test_accuracy(
    engine: Any, states: Any, hparams: dict[str, jax.Array], *, images: np.ndarray,
    labels: np.ndarray, real_classes: int,
) -> np.ndarray:  # fmt: skip
    """Each member's accuracy on the test split, ``[M]``: the argmax over the first
    ``real_classes`` logits; NaN without a test split (undefined: null in JSON)."""
    num_members = jax.tree.leaves(states)[0].shape[0]
    if not len(labels):
        return np.full(num_members, np.nan)
    logits = engine.outputs(
        states, hparams, images, np.broadcast_to(labels, (num_members, len(labels)))
    )["logits"]
    return np.mean(logits[..., :real_classes].argmax(-1) == labels[None], axis=1)


def _choose_auto_tau(
    engine: Any, states: Any, hparams: dict[str, jax.Array], images: np.ndarray,
    labels: np.ndarray, members: list[Member],
) -> list[tuple[float, float]]:  # fmt: skip
    """``--tau=auto``: each member's ``(tau, estimated noise rate)`` from its own in-sample
    probabilities on its training rows (:func:`detection.auto_threshold`); ``labels``: the
    members' labels, stacked ``[M, N]``."""
    probs = engine.outputs(states, hparams, images, labels)["probs"]
    return [
        detection.auto_threshold(member.labels[member.rows], member_probs[member.rows])
        for member, member_probs in zip(members, probs, strict=True)
    ]


def _check_finite(
    epoch_metrics: dict[str, Any], members: list[Member], epoch: int, steps_per_epoch: int,
    cfg: config_lib.Config, checkpointer: Checkpointer,
) -> None:  # fmt: skip
    """:class:`NonFiniteError` naming the first non-finite step of the first member with one."""
    for m, member in enumerate(members):
        bad = np.flatnonzero(np.asarray(epoch_metrics["finite"][m]) == 0)
        if len(bad):
            checkpointer.wait()  # The last good checkpoint, whole.
            raise NonFiniteError(
                f"non-finite loss or gradient in {member.tag + ', ' if member.tag else ''}"
                f"epoch {epoch + 1}, step {bad[0] + 1} of {steps_per_epoch} (global step "
                f"{epoch * steps_per_epoch + bad[0] + 1}); likely cause: learning rate "
                f"{cfg.lr:g} too high for {cfg.optimizer}. {checkpointer.last_good()}; no "
                "summary was written."
            )


def _held_out_outputs(outputs, images, labels, members) -> list[dict[str, np.ndarray]]:
    """Per member, its outputs on the rows of ``images`` outside its training rows (ascending),
    against its labels (``labels[m]``): one evaluation of the stack, each member on its own
    rows only."""
    num_rows = len(images)
    held_out = [np.setdiff1d(np.arange(num_rows), m.rows) for m in members]
    if max(len(r) for r in held_out) == 0:
        raise ValueError("every member trained on every row: none has held-out rows.")
    if len(members) == 1:  # Also the streaming engine's case: evaluate just those rows.
        out = outputs(images[held_out[0]], labels[:, held_out[0]])
        return [{k: v[0] for k, v in out.items()}]
    out = outputs(images, labels, rows=padded_rows(held_out, num_rows))
    return [{k: v[m, : len(r)] for k, v in out.items()} for m, r in enumerate(held_out)]
