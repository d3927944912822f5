"""Training a stack of models for a run: epochs, evaluation, checkpoints, training records.

:func:`fit` trains one or more freshly initialised models (:class:`device_loop.Member`) for a
run's epochs and returns a :class:`Fitted`: the final states, their test accuracies, and
evaluations of them on the training rows. With the split on the devices, each epoch of the
whole stack is one compiled program (:mod:`device_loop`); otherwise one model is trained on
batches streamed from the host. Along the way it tests every ``eval_every`` epochs; checkpoints
with orbax every ``checkpoint_every`` epochs, at most once per ``checkpoint_min_interval``
seconds, and after the last (asynchronously; ``resume`` continues from the latest); appends each
member's epoch to its ``metrics.jsonl`` and training record (:mod:`records`); and stops with
:class:`NonFiniteError` on a non-finite loss or gradient.

Models, optimisers and compiled programs are memoised on their settings, so fits with equal
settings in one process (sequential folds, sweep cells) trace and compile once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from robust_losses_jax import config as config_lib
from robust_losses_jax import (
    detection,
    device_loop,
    input_pipeline,
    metrics,
    models,
    records,
    train,
)
from robust_losses_jax.records import append_jsonl, atomic_write

CHECKPOINTS_TO_KEEP = 3


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


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


def _tqdm(iterable: Iterable, enabled: bool, **kwargs) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


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


def uses_device_data(cfg: config_lib.Config) -> bool:
    """Whether the training split is held on the devices (else streamed from the host).

    ``auto``: on the devices in a single-process run (device memory holds these datasets:
    Fashion-MNIST is 47 MB, CIFAR 150 MB); streamed across processes, where each process feeds
    only its own devices.
    """
    if cfg.data_placement == "auto":
        return jax.process_count() == 1
    return cfg.data_placement == "device"


def fit(
    cfg: config_lib.Config,
    images: np.ndarray,
    members: list[device_loop.Member],
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
) -> Fitted:
    """Train a stack of freshly initialised models (one or more :class:`device_loop.Member`).

    With the data on the devices (:func:`uses_device_data`) every epoch is one compiled program
    that trains all members together (vmapped); streamed from the host, one member only, a
    step at a time. Both train on the same batches.

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

    Per-example training records, one row per epoch (``margin_sum_history``,
    ``margin_count_history`` for AUM, by position in the member's rows; ``p_t_history``): each
    epoch's rows are written (``records.write_epoch``) before its checkpoint, so a resumed run
    keeps them, and gathered into the record when training ends.
    """
    lap = _Laps(timings)
    on_device = uses_device_data(cfg)
    if not on_device and len(members) > 1:
        raise ValueError("streamed data trains one model at a time; pass one member.")
    sizes = tuple(len(m.rows) for m in members)
    if min(sizes) < cfg.batch_size:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {min(sizes)} training examples.")
    steps = member_steps_per_epoch(members, cfg.batch_size)
    if len(steps) > 1:
        raise ValueError(
            f"stack members have different steps per epoch ({sorted(steps)}); train them "
            "one after another (--sequential)."
        )
    steps_per_epoch = steps.pop()
    total_steps = steps_per_epoch * cfg.epochs
    augment = (
        cfg.dataset in input_pipeline.AUGMENTED_BY_DEFAULT if cfg.augment is None else cfg.augment
    )
    # The same model and optimiser objects for equal settings: the train state's structure (its
    # apply_fn and tx) is then equal too, and programs compiled for an earlier fit are reused.
    model = _model(cfg.model, num_classes, cfg.dtype)
    tx = _optimizer(
        cfg.optimizer, cfg.lr, total_steps=total_steps, schedule=cfg.lr_schedule,
        warmup_steps=cfg.warmup_epochs * steps_per_epoch, momentum=cfg.momentum,
        nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
    )  # fmt: skip
    # Each member initialised on its own, exactly as a lone run would be, then stacked (on the
    # host: an eager jnp.stack compiles a program per leaf shape and stack size).
    states = jax.tree.map(
        lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]),
        *[train.create_train_state(m.keys[0], model, images.shape[1:], tx) for m in members],
    )
    step_config = train.StepConfig(
        loss_name=cfg.loss,
        delay_steps=cfg.resolved_delay_epochs * steps_per_epoch,
        ramp_steps=cfg.ramp_epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        augment=augment,
        l1_weight=cfg.l1_weight,
        detach=cfg.detach,
    )
    hparams = device_loop.stacked_hparams(members)
    mesh = train.data_mesh(devices)
    states = train.replicate(states, mesh)
    real_classes = real_classes or num_classes
    num_members = len(members)
    if on_device:
        programs = _device_programs(
            step_config, _floats(mean), _floats(std), mesh, cfg.parallel, sizes=sizes,
            batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
        )  # fmt: skip
        run_epoch, outputs = _device_engine(images, members, mesh, programs)
    else:
        run_epoch, outputs = _streaming_engine(
            cfg, images, members[0], mesh, step_config, mean, std, steps_per_epoch, progress,
        )  # fmt: skip

    member_labels = np.stack([m.labels for m in members])

    def test_accuracy(states) -> np.ndarray:
        if not len(test_labels):  # A dataset without a test split: undefined (null in JSON).
            return np.full(num_members, np.nan)
        labels = np.broadcast_to(test_labels, (num_members, len(test_labels)))
        logits = outputs(states, hparams, test_images, labels)["logits"][..., :real_classes]
        return np.mean(logits.argmax(-1) == test_labels[None], axis=1)

    suffix = f"_{tag}" if tag else ""
    manager = ocp.CheckpointManager(
        (workdir / f"checkpoints{suffix}").absolute(),
        options=ocp.CheckpointManagerOptions(
            # Saves are written in a background thread while the next epochs train (a save
            # waits for the one before it; the arrays are immutable, so nothing changes under it).
            max_to_keep=CHECKPOINTS_TO_KEEP,
            enable_async_checkpointing=True,
            create=True,
        ),
    )
    record_dirs = record_dirs or [workdir] * len(members)
    if len(record_dirs) != len(members):
        raise ValueError(f"{len(record_dirs)} record_dirs for {len(members)} members.")
    if len({(d, m.tag) for d, m in zip(record_dirs, members, strict=True)}) != len(members):
        raise ValueError("members that share a record dir need distinct tags.")
    record_paths = [
        d / f"train_record{'_' + m.tag if m.tag else ''}.npz"
        for d, m in zip(record_dirs, members, strict=True)
    ]
    # Per member and epoch: margin sums and counts of each example (AUM), and p_t when tracked.
    # Each epoch's are written (to a file of their own) before its checkpoint, so a run killed
    # in between finds every epoch it resumes from (and ignores the ones after).
    history: list[dict[str, list[np.ndarray]]] = [
        {k: [] for k in records.HISTORY_FIELDS} for _ in members
    ]
    start_epoch = 0
    if resume and manager.latest_step() is None:
        # Killed before its first checkpoint (with --checkpoint-every > 1, after logging some
        # epochs): it starts again, without the epochs it logged.
        for member, record_dir in zip(members, record_dirs, strict=True):
            _drop_epochs_after(record_dir / "metrics.jsonl", member.tag, 0)
    elif resume:
        states = restore_latest(manager, states)
        start_epoch = int(np.ravel(states.step)[0]) // steps_per_epoch
        for m, path in enumerate(record_paths):
            try:
                history[m] = records.read_history(path, start_epoch)
            except (OSError, ValueError, zipfile.BadZipFile) as error:  # A damaged file.
                raise CheckpointError(
                    f"the training record {path} (or a file of {records.epochs_dir(path)}) "
                    f"cannot be read ({type(error).__name__}: {error}); pass --overwrite to "
                    "start again."
                ) from error
            if len(history[m]["margin_sum"]) != start_epoch:
                raise CheckpointError(
                    f"{path} holds {len(history[m]['margin_sum'])} epochs of training "
                    f"records, fewer than the checkpoint's {start_epoch}; pass --overwrite to "
                    "start again."
                )
        for member, record_dir in zip(members, record_dirs, strict=True):
            _drop_epochs_after(record_dir / "metrics.jsonl", member.tag, start_epoch)
        step = start_epoch * steps_per_epoch
        log(f"resumed {tag or 'run'} from epoch {start_epoch} (step {step})")

    # --tau=auto: each member's threshold, chosen after the delay (a resumed run reads it back).
    auto_tau_paths = [
        d / f"auto_tau{'_' + m.tag if m.tag else ''}.json"
        for d, m in zip(record_dirs, members, strict=True)
    ]
    if cfg.auto_tau and start_epoch >= cfg.resolved_delay_epochs:
        taus = [json.loads(path.read_text())["tau"] for path in auto_tau_paths]
        hparams = {**hparams, "tau": jnp.asarray(taus, jnp.float32)}
    lap("setup")
    # The clock may only skip checkpoints in one process: in several, each process must make
    # the same decision (a save is collective), and their clocks differ.
    min_interval = cfg.checkpoint_min_interval if jax.process_count() == 1 else 0.0
    last_save = time.monotonic()
    epochs = range(start_epoch, cfg.epochs)
    desc = f"{tag or 'training'} ({num_members} model{'s' if num_members > 1 else ''})"
    accuracies, tracked = None, None  # The last epoch's, for the final model.
    for epoch in _tqdm(epochs, progress and on_device, desc=desc, leave=False):
        started = time.perf_counter()
        states, epoch_metrics = run_epoch(states, hparams, epoch)
        for m, member in enumerate(members):
            bad = np.flatnonzero(np.asarray(epoch_metrics["finite"][m]) == 0)
            if len(bad):
                manager.wait_until_finished()  # The last good checkpoint, whole.
                saved = (
                    f"The last good checkpoint is kept in {workdir / f'checkpoints{suffix}'}"
                    if manager.latest_step() is not None
                    else "No checkpoint was saved before it"
                )
                raise NonFiniteError(
                    f"non-finite loss or gradient in {member.tag + ', ' if member.tag else ''}"
                    f"epoch {epoch + 1}, step {bad[0] + 1} of {steps_per_epoch} (global step "
                    f"{epoch * steps_per_epoch + bad[0] + 1}); likely cause: learning rate "
                    f"{cfg.lr:g} too high for {cfg.optimizer}. {saved}; no summary was written."
                )
        lap("train")
        chosen = None
        if cfg.auto_tau and epoch + 1 == cfg.resolved_delay_epochs:
            tracked_delay = outputs(states, hparams, images, member_labels)
            chosen = [
                detection.auto_threshold(member.labels[member.rows], probs[member.rows])
                for member, probs in zip(members, tracked_delay["probs"], strict=True)
            ]
            hparams = {**hparams, "tau": jnp.asarray([t for t, _ in chosen], jnp.float32)}
            for path, (tau, rate) in zip(auto_tau_paths, chosen, strict=True):
                records.write_json(path, {"tau": tau, "estimated_noise_rate": rate})
        last = epoch + 1 == cfg.epochs
        evaluated = last or (epoch + 1) % cfg.eval_every == 0
        if evaluated:
            accuracies = test_accuracy(states)
            lap("test")
        # Tracking evaluates every training row: it follows --eval-every like the test set.
        tracked_now = is_corrupted is not None and evaluated
        if tracked_now:
            tracked = outputs(states, hparams, images, member_labels)
            lap("track")
        step_now = (epoch + 1) * steps_per_epoch
        epoch_records = []  # Logged once the checkpoint is saved.
        seconds = (time.perf_counter() - started) / num_members
        for m, member in enumerate(members):
            n = sizes[m]
            rows = {
                "margin_sum": np.asarray(epoch_metrics["margin_sum"][m][:n]),
                "margin_count": np.asarray(epoch_metrics["margin_count"][m][:n]).astype(np.uint8),
            }
            count = float(epoch_metrics["count"][m])
            record = {
                **({"run": member.tag} if member.tag else {}),
                "epoch": epoch + 1,
                "step": step_now,
                "robust_loss_on": bool(step_now > step_config.delay_steps),
                "train_loss": float(epoch_metrics["loss_sum"][m]) / count,
                "train_accuracy_noisy": float(epoch_metrics["correct"][m]) / count,
                "frac_low_weight": float(epoch_metrics["low_weight"][m]) / count,
            }
            if chosen is not None:
                record["auto_tau"], record["estimated_noise_rate"] = chosen[m]
            if evaluated:
                record["test_accuracy"] = float(accuracies[m])
            if tracked_now:
                out = {k: v[m] for k, v in tracked.items()}
                rows["p_t"] = out["p_t"].astype(np.float16)
                record.update(_epoch_detection(out, member.labels, is_corrupted[m]))
            elif is_corrupted is not None:  # Keeps p_t_history [E, N]: an untracked epoch.
                rows["p_t"] = np.full(len(images), np.nan, np.float16)  # Every row, as tracked.
            record["seconds"] = seconds
            for name, value in rows.items():
                history[m][name].append(value)
            records.write_epoch(record_paths[m], epoch, rows)
            epoch_records.append(record)
        lap("records")
        due = (epoch + 1) % cfg.checkpoint_every == 0
        if last or (due and time.monotonic() - last_save >= min_interval):
            manager.save(step_now, args=ocp.args.StandardSave(train.to_global(states)))
            last_save = time.monotonic()
            lap("checkpoint")
        for member, record, record_dir in zip(members, epoch_records, record_dirs, strict=True):
            append_jsonl(record_dir / "metrics.jsonl", record)
            test = f", test acc {record['test_accuracy']:.4f}" if evaluated else ""
            log(
                f"{member.tag + ' ' if member.tag else ''}epoch {epoch + 1}/{cfg.epochs}: loss "
                f"{record['train_loss']:.4f}, noisy-label acc "
                f"{record['train_accuracy_noisy']:.4f}, low-weight "
                f"{record['frac_low_weight']:.3f}{test} ({record['seconds']:.1f}s)"
            )
        lap("records")
    manager.wait_until_finished()
    lap("checkpoint")
    for path, member_history, n in zip(record_paths, history, sizes, strict=True):
        records.write_history(path, member_history, n)  # Gathers the epoch files.
    lap("records")
    aum = [
        detection.aum_sums_from_epoch(
            np.reshape(h["margin_sum"], (-1, n)), np.reshape(h["margin_count"], (-1, n)),
            aum_from_epoch,
        )
        for h, n in zip(history, sizes, strict=True)
    ]  # fmt: skip
    aum_sum, aum_count = [a for a, _ in aum], [c for _, c in aum]
    if accuracies is None:  # Resumed with every epoch done.
        accuracies = test_accuracy(states)
    return Fitted(
        states=states,
        outputs=functools.partial(outputs, states, hparams),
        aum_sum=aum_sum,
        aum_count=aum_count,
        test_accuracy=[float(a) for a in accuracies],
        # The last epoch's tracked outputs are the final model's.
        training_outputs=functools.cache(
            lambda: (
                tracked if tracked is not None else outputs(states, hparams, images, member_labels)
            )
        ),
        held_out_outputs=functools.cache(
            lambda: _held_out_outputs(
                functools.partial(outputs, states, hparams), images, member_labels, members
            )
        ),
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
    out = outputs(images, labels, rows=device_loop.padded_rows(held_out, num_rows))
    return [{k: v[m, : len(r)] for k, v in out.items()} for m, r in enumerate(held_out)]


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


# Models, optimisers and compiled programs are memoised on their (hashable) settings, so fits
# with equal settings in one process (sequential folds, sweep cells) share them instead of
# tracing, lowering and compiling them again. All are immutable; the caches only save work.
@functools.lru_cache(maxsize=16)
def _model(name: str, num_classes: int, dtype: str) -> Any:
    return models.get_model(name, num_classes, dtype=jnp.dtype(dtype), bn_axis_name=train.AXIS)


_optimizer = functools.lru_cache(maxsize=16)(train.make_optimizer)


def _floats(x: Any) -> tuple[float, ...]:
    """A per-channel vector as a hashable tuple (float32 values round-trip exactly)."""
    return tuple(float(v) for v in np.asarray(x, np.float32).ravel())


@functools.lru_cache(maxsize=8)
def _device_programs(
    step_config: train.StepConfig, mean: tuple[float, ...], std: tuple[float, ...], mesh: Any,
    parallel: str, *, sizes: tuple[int, ...], batch_size: int, eval_batch_size: int,
) -> tuple[Callable, ...]:  # fmt: skip
    """``(epoch_fn, eval_fn, per_member_fn, held_out_fn)`` of a stack (:mod:`device_loop`'s
    programs; each compiles on its first call)."""
    mean_array, std_array = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    def step_fn(state, batch, member_hparams, key):
        return train.train_step(
            state, batch, member_hparams, config=step_config, key=key, mean=mean_array,
            std=std_array,
        )  # fmt: skip

    eval_step = functools.partial(
        train.eval_step, config=step_config, mean=mean_array, std=std_array
    )
    epoch_fn = device_loop.train_epoch_program(
        step_fn, mesh, parallel, sizes=sizes, batch_size=batch_size,
        steps_per_epoch=step_config.steps_per_epoch,
    )  # fmt: skip
    eval_fns = tuple(
        device_loop.evaluate_program(
            eval_step, mesh, parallel, batch_size=eval_batch_size, rows=rows
        )
        for rows in device_loop.EVALUATIONS
    )
    return (epoch_fn, *eval_fns)


def _device_engine(images, members, mesh, programs):
    """``(run_epoch, outputs)`` with the split on the devices, all members in one stack."""
    epoch_fn, eval_fn, per_member_fn, held_out_fn = programs
    data = train.replicate(device_loop.stack_data(images, members), mesh)
    step_keys = jnp.stack([m.keys[1] for m in members])
    order_keys = jnp.stack([m.keys[2] for m in members])
    placed: dict[int, Any] = {}  # Image arrays already on the devices, by identity.

    def run_epoch(states, hparams, epoch):  # The epoch program returns host metrics.
        return epoch_fn(states, data, hparams, step_keys, order_keys, jnp.int32(epoch))

    def outputs(states, hparams, eval_images, labels, member_of_row=None, rows=None):
        if eval_images is images:
            on_devices = data.images
        else:
            if id(eval_images) not in placed:
                placed[id(eval_images)] = (
                    eval_images,
                    train.replicate(np.asarray(eval_images), mesh),
                )
            on_devices = placed[id(eval_images)][1]
        labels = jnp.asarray(labels, jnp.int32)
        if rows is not None:  # Each member on its own rows, [M, R] (padded with N).
            rows = train.replicate(np.asarray(rows, np.int32), mesh)
            return jax.device_get(per_member_fn(states, on_devices, labels, hparams, rows))
        if member_of_row is None:
            return jax.device_get(eval_fn(states, on_devices, labels, hparams))
        # Each member evaluates only its own rows (K-fold: its held-out fold), not all of them.
        rows = device_loop.held_out_rows(member_of_row, len(members))
        return jax.device_get(
            held_out_fn(states, on_devices, labels, hparams, train.replicate(rows, mesh))
        )

    return run_epoch, outputs


def _streaming_engine(cfg, images, member, mesh, step_config, mean, std, steps_per_epoch,
                      progress):  # fmt: skip
    """``(run_epoch, outputs)`` for one member, batches streamed from the host a step at a time.

    The state keeps the stack's leading axis (of size 1) on the devices: the step and the
    evaluation drop and restore it inside the parallel program, so the state never comes back
    through the host (with several processes it cannot be re-placed from one).
    """
    mean, std = jnp.asarray(mean), jnp.asarray(std)
    eval_step = functools.partial(train.eval_step, config=step_config, mean=mean, std=std)

    def lone_step(states, batch, hparams):
        state, metrics = train.train_step(
            device_loop.unstack(states, 0), batch, device_loop.unstack(hparams, 0),
            config=step_config, key=member.keys[1], mean=mean, std=std,
        )  # fmt: skip
        return device_loop.stack([state]), metrics

    def lone_eval(states, batch, hparams):
        return eval_step(device_loop.unstack(states, 0), batch, device_loop.unstack(hparams, 0))

    train_fn = train.parallelize(lone_step, mesh, cfg.parallel)
    eval_fn = train.parallelize(lone_eval, mesh, cfg.parallel, collective=False)
    sharding = train.batch_sharding(mesh)
    member_images = images[member.rows]
    member_labels = np.asarray(member.labels)[member.rows]
    num_rows = len(member.rows)

    def run_epoch(states, hparams, epoch):
        order = input_pipeline.epoch_permutation(member.keys[2], epoch, num_rows)
        batches = (
            input_pipeline.process_slice(batch, jax.process_index(), jax.process_count())
            for batch in input_pipeline.train_batches(
                member_images, member_labels, order, cfg.batch_size, mesh.devices.size
            )
        )
        step_metrics = []
        desc = f"{member.tag + ' ' if member.tag else ''}epoch {epoch + 1}/{cfg.epochs}"
        for batch in _tqdm(
            input_pipeline.prefetch_to_devices(batches, sharding),
            progress, total=steps_per_epoch, desc=desc, leave=False,
        ):  # fmt: skip
            states, step_out = train_fn(states, batch, hparams)
            step_metrics.append(step_out)
        step_metrics = jax.device_get(step_metrics)
        margin_sum, margin_count = detection.update_aum(
            *detection.init_aum(num_rows),
            np.concatenate([m["index"] for m in step_metrics]),
            np.concatenate([m["margin"] for m in step_metrics]),
        )
        metrics = {
            k: np.asarray([sum(np.float64(m[k]) for m in step_metrics)]) for k in device_loop.SUMMED
        }
        metrics["finite"] = np.asarray([[int(m["finite"]) for m in step_metrics]])
        metrics["margin_sum"] = np.asarray(margin_sum)[None]
        metrics["margin_count"] = np.asarray(margin_count)[None]
        return states, metrics

    def outputs(states, hparams, eval_images, labels, member_of_row=None):
        out = train.evaluate(
            eval_fn, states, eval_images, np.asarray(labels)[0], hparams, mesh=mesh,
            batch_size=cfg.eval_batch_size,
        )  # fmt: skip
        if member_of_row is not None:
            return out  # One member: every row is its.
        return {k: v[None] for k, v in out.items()}

    return run_epoch, outputs


def _epoch_detection(
    out: dict[str, np.ndarray], labels: np.ndarray, is_corrupted: np.ndarray
) -> dict[str, float]:
    """This epoch's in-sample detection scores (to watch memorisation set in)."""
    flagged, score = detection.predicted_neq_given(out["probs"], labels)
    return {
        "f1_argmax_neq_given": metrics.detection_metrics(is_corrupted, flagged)["f1"],
        "auroc_1_minus_pt": metrics.ranking_metrics(is_corrupted, score)["auroc"],
        "memorised_fraction": memorised_fraction(out["pred"], labels, is_corrupted),
    }


def memorised_fraction(pred: np.ndarray, given: np.ndarray, is_corrupted: np.ndarray) -> float:
    """The fraction of corrupted examples predicted as their (wrong) given label; 0 if none."""
    if not is_corrupted.any():
        return 0.0
    return float(np.mean(pred[is_corrupted] == given[is_corrupted]))


def member_steps_per_epoch(members: list[device_loop.Member], batch_size: int) -> set[int]:
    """The members' steps per epoch (a stack needs one value)."""
    return {len(m.rows) // batch_size for m in members}
