"""Training a stack of models for a run's epochs: :func:`fit`.

:func:`fit` trains a :class:`Stack` (one or more freshly initialised models,
:class:`stacking.Member`) in a :class:`FitContext` (workdir, devices, resume, ...) and returns a
:class:`Fitted`: the final states, their test accuracies, and evaluations of them on the
training rows. It is a loop over epochs of an engine (:mod:`training.engines`: the whole stack
on the devices, or one model streamed from the host), with a :class:`checkpoints.Checkpointer`
(orbax; ``resume`` continues from the latest) and a :class:`recorder.Recorder` (``metrics.jsonl``,
training records), in named phases: :func:`_start`, :func:`_restore`, :func:`_train_epoch` (test
every ``eval_every`` epochs, ``--tau=auto``'s threshold after the delay, :class:`NonFiniteError`
on a non-finite loss or gradient) and :func:`_fitted`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax import input_pipeline
from robust_losses_jax.noisy_data import NoisyData
from robust_losses_jax.training import auto_tau, parallel, step
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


@dataclasses.dataclass(frozen=True)
class Stack:
    """The models one :func:`fit` trains together, and what it records of them.

    Attributes:
      members: the models; all must have the same number of steps per epoch.
      num_classes: outputs of the model (``C + 1`` with AUM's threshold class).
      tag: the stack's checkpoints go to ``checkpoints_<tag>`` (``checkpoints`` untagged).
      is_corrupted: ``[M, N]``, when given the members are evaluated on every row after the
        epochs that test (``cfg.eval_every``, and the last): ``p_t`` per epoch goes to the
        training record (``p_t_history`` ``[E, N]`` float16, NaN rows for the other epochs) and
        ``metrics.jsonl`` gets that epoch's detection F1 (argmax != given), AUROC of
        ``1 - p_t`` and memorised fraction.
      aum_from_epoch: the AUM sums (``Fitted.aum_sum``) leave out the epochs before this one
        (0-based), unless the run has no more epochs than that.
      record_dirs: per member, the folder of its ``metrics.jsonl`` lines (with ``"run":
        member.tag`` when tagged) and ``train_record[_<member.tag>].npz``; default: the
        workdir (a stack of several runs' models gives each run's).
    """

    members: list[Member]
    num_classes: int
    tag: str = ""
    is_corrupted: np.ndarray | None = None
    aum_from_epoch: int = 0
    record_dirs: list[Path] | None = None

    def alone(self, m: int) -> Stack:
        """Member ``m`` as a stack of its own (tagged with its tag)."""
        return dataclasses.replace(
            self, members=[self.members[m]], tag=self.members[m].tag,
            is_corrupted=None if self.is_corrupted is None else self.is_corrupted[m : m + 1],
            record_dirs=None if self.record_dirs is None else [self.record_dirs[m]],
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FitContext:
    """Where a run's fits write and how they run (the same for every stack of the run).

    Attributes:
      workdir: checkpoints, and the members' records unless :attr:`Stack.record_dirs`.
      devices: the devices to run on.
      resume: continue from the latest checkpoint of each stack.
      progress: show a progress bar.
      log: where one-line messages go.
      cache: models, optimisers and compiled programs shared between fits (sequential folds,
        sweep cells) so that equal settings compile once.
      timings: when given, wall seconds are added to it by phase: ``setup`` (initialisation,
        programs, data placement, restore), ``train`` (the epoch programs, compilation
        included), ``test``, ``track`` (the per-epoch outputs on the training rows), ``records``
        (training records and ``metrics.jsonl``) and ``checkpoint``.
    """

    workdir: Path
    devices: list
    resume: bool = False
    progress: bool = True
    log: Callable[[str], None] = print
    cache: ProgramCache = dataclasses.field(default_factory=ProgramCache)
    timings: dict[str, float] | None = None


@dataclasses.dataclass
class _Training:
    """A fit under way: what its phases share; ``states`` and ``hparams`` move on each epoch,
    ``accuracies`` and ``tracked`` are the last tested epoch's."""

    cfg: config_lib.Config
    data: NoisyData
    stack: Stack
    context: FitContext
    lap: _Laps
    engine: Any
    settings: step.StepConfig
    checkpointer: Checkpointer
    recorder: Recorder
    tau_files: list[Path]
    member_labels: np.ndarray
    states: Any
    hparams: dict[str, jax.Array]
    accuracies: np.ndarray | None = None
    tracked: dict[str, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.settings.steps_per_epoch


def fit(cfg: config_lib.Config, data: NoisyData, stack: Stack, context: FitContext) -> Fitted:
    """Train a stack of freshly initialised models (one or more :class:`stacking.Member`) on
    ``data.images`` (the rows the members' ``rows`` index), tested on ``data``'s test split.

    With the data on the devices (:func:`engines.uses_device_data`) every epoch is one compiled
    program that trains all members together; streamed from the host, one member only, a step
    at a time. Both train on the same batches. It tests every ``cfg.eval_every`` epochs,
    chooses ``--tau=auto``'s threshold after the delay (:mod:`auto_tau`), and stops with
    :class:`NonFiniteError` on a non-finite loss or gradient.
    """
    training = _start(cfg, data, stack, context)
    start_epoch = _restore(training)
    training.lap("setup")
    training.checkpointer.start_clock()
    members = stack.members
    desc = f"{stack.tag or 'training'} ({len(members)} model{'s' if len(members) > 1 else ''})"
    show = context.progress and uses_device_data(cfg)
    for epoch in progress_bar(range(start_epoch, cfg.epochs), show, desc=desc, leave=False):
        _train_epoch(training, epoch)
    training.checkpointer.wait()
    training.lap("checkpoint")
    return _fitted(training)


def _start(cfg: config_lib.Config, data: NoisyData, stack: Stack, context: FitContext) -> _Training:
    """Initial states on the devices, the engine, the checkpointer and the recorder."""
    lap = _Laps(context.timings)
    on_device = uses_device_data(cfg)
    members, images = stack.members, data.images
    steps_per_epoch = _steps_per_epoch(cfg, members, on_device)
    states = initial_states(
        cfg, members, images.shape[1:], num_classes=stack.num_classes,
        steps_per_epoch=steps_per_epoch, cache=context.cache,
    )  # fmt: skip
    settings = step_config(cfg, steps_per_epoch)
    mesh = parallel.data_mesh(context.devices)
    if on_device:
        device_fns = device_programs(
            context.cache, settings, data.mean, data.std, mesh, cfg.parallel,
            sizes=tuple(len(m.rows) for m in members), batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size,
        )  # fmt: skip
        engine = DeviceEngine(images, data.test_images, members, mesh, device_fns)
    else:
        engine = StreamingEngine(cfg, images, members[0], mesh, settings, data.mean, data.std,
                                 progress=context.progress)  # fmt: skip
    record_dirs = stack.record_dirs or [context.workdir] * len(members)
    return _Training(
        cfg=cfg, data=data, stack=stack, context=context, lap=lap, engine=engine,
        settings=settings,
        checkpointer=Checkpointer(
            context.workdir / f"checkpoints{'_' + stack.tag if stack.tag else ''}",
            every=cfg.checkpoint_every, min_interval=cfg.checkpoint_min_interval,
        ),
        recorder=Recorder(members, record_dirs, num_images=len(images),
                          is_corrupted=stack.is_corrupted, log=context.log),
        tau_files=auto_tau.paths(record_dirs, members),
        member_labels=np.stack([m.labels for m in members]),
        states=parallel.replicate(states, mesh),
        hparams=stacked_hparams(members),
    )  # fmt: skip


def _restore(training: _Training) -> int:
    """With ``resume``, the latest checkpoint's states and records; returns the first epoch
    to train."""
    if not training.context.resume:
        return 0
    checkpointer, recorder = training.checkpointer, training.recorder
    if checkpointer.latest_step() is None:
        # Killed before its first checkpoint (with --checkpoint-every > 1, after logging some
        # epochs): it starts again, without the epochs it logged.
        recorder.forget_logged()
        return 0
    training.states = checkpointer.restore(training.states)
    start_epoch = int(np.ravel(training.states.step)[0]) // training.steps_per_epoch
    recorder.resume(start_epoch)
    training.hparams = auto_tau.restored(  # Chosen before the resume.
        training.cfg, start_epoch, training.hparams, training.tau_files
    )
    step_now = start_epoch * training.steps_per_epoch
    training.context.log(f"resumed {training.stack.tag or 'run'} from epoch {start_epoch} "
                         f"(step {step_now})")  # fmt: skip
    return start_epoch


def _train_epoch(training: _Training, epoch: int) -> None:
    """One epoch: train, check, choose ``tau=auto`` at the delay's end, test and track when
    due, write the records, checkpoint, log."""
    cfg, t, lap = training.cfg, training, training.lap
    started = time.perf_counter()
    t.states, epoch_metrics = t.engine.run_epoch(t.states, t.hparams, epoch)
    _check_finite(epoch_metrics, t.stack.members, epoch, t.steps_per_epoch, cfg, t.checkpointer)
    lap("train")
    chosen = None
    if auto_tau.is_due(cfg, epoch):
        probs = t.engine.outputs(t.states, t.hparams, t.data.images, t.member_labels)["probs"]
        chosen = auto_tau.choose(probs, t.stack.members, t.tau_files)
        t.hparams = auto_tau.with_tau(t.hparams, [tau for tau, _ in chosen])
    last = epoch + 1 == cfg.epochs
    evaluated = last or (epoch + 1) % cfg.eval_every == 0
    if evaluated:
        t.accuracies = _test_accuracy(t.engine, t.states, t.hparams, data=t.data)
        lap("test")
    # Tracking evaluates every training row: it follows --eval-every like the test set.
    t.tracked = None
    if t.stack.is_corrupted is not None and evaluated:
        t.tracked = t.engine.outputs(t.states, t.hparams, t.data.images, t.member_labels)
        lap("track")
    step_now = (epoch + 1) * t.steps_per_epoch
    lines = t.recorder.epoch(
        epoch, epoch_metrics, step=step_now,
        robust_loss_on=bool(step_now > t.settings.delay_steps),
        seconds=(time.perf_counter() - started) / len(t.stack.members),
        test_accuracy=t.accuracies if evaluated else None, tracked=t.tracked, chosen=chosen,
    )  # fmt: skip
    lap("records")
    if t.checkpointer.save_if_due(epoch, step_now, t.states, last=last):
        lap("checkpoint")
    t.recorder.log_epoch(lines, cfg.epochs)  # Once the checkpoint is saved.
    lap("records")


def _fitted(training: _Training) -> Fitted:
    """The :class:`Fitted` of a finished fit (its training records gathered)."""
    t = training
    aum_sum, aum_count = t.recorder.finish(t.stack.aum_from_epoch)
    t.lap("records")
    if t.accuracies is None:  # Resumed with every epoch done.
        t.accuracies = _test_accuracy(t.engine, t.states, t.hparams, data=t.data)
    outputs = functools.partial(t.engine.outputs, t.states, t.hparams)
    images, labels, members, tracked = t.data.images, t.member_labels, t.stack.members, t.tracked
    return Fitted(
        states=t.states,
        outputs=outputs,
        aum_sum=aum_sum,
        aum_count=aum_count,
        test_accuracy=[float(a) for a in t.accuracies],
        # The last epoch's tracked outputs are the final model's.
        training_outputs=functools.cache(
            lambda: tracked if tracked is not None else outputs(images, labels)
        ),
        held_out_outputs=functools.cache(
            lambda: _held_out_outputs(outputs, images, labels, members)
        ),
    )


def _test_accuracy(
    engine: Any, states: Any, hparams: dict[str, jax.Array], *, data: NoisyData
) -> np.ndarray:
    """Each member's accuracy on the test split, ``[M]``: the argmax over the dataset's
    ``data.num_classes`` logits (AUM's threshold class left out); NaN without a test split
    (undefined: null in JSON)."""
    images, labels = data.test_images, data.test_labels
    num_members = jax.tree.leaves(states)[0].shape[0]
    if not len(labels):
        return np.full(num_members, np.nan)
    logits = engine.outputs(
        states, hparams, images, np.broadcast_to(labels, (num_members, len(labels)))
    )["logits"]
    return np.mean(logits[..., : data.num_classes].argmax(-1) == labels[None], axis=1)


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
