"""How a stack's epochs run and how it is evaluated: on the devices, or streamed from the host.

An engine has two methods, the only ones :func:`training.loop.fit` calls:

- ``run_epoch(states, hparams, epoch) -> (states, metrics)``: one epoch of every member, with
  host metrics per member (:data:`programs.SUMMED` sums ``[M]``, ``finite`` ``[M, S]``,
  ``margin_sum`` / ``margin_count`` ``[M, n_max]``);
- ``outputs(states, hparams, images, labels, member_of_row=None, rows=None)``: per-example
  outputs of the members on ``images`` (see :class:`training.loop.Fitted`).

:class:`DeviceEngine` holds the split on the devices and runs each epoch of the whole stack as
one compiled program (:mod:`training.programs`); :class:`StreamingEngine` trains one model on
batches streamed from the host a step at a time. Both train on the same batches.

:class:`ProgramCache` keeps models, optimisers and compiled programs by their settings, so fits
handed the same cache (sequential folds, a sweep's cells) trace and compile once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from robust_losses_jax import config as config_lib
from robust_losses_jax import detection, input_pipeline, models
from robust_losses_jax.training import parallel, programs, step
from robust_losses_jax.training.stacking import Member, held_out_rows, stack, stack_data, unstack


def uses_device_data(cfg: config_lib.Config) -> bool:
    """Whether the training split is held on the devices (else streamed from the host).

    ``auto``: on the devices in a single-process run (device memory holds these datasets:
    Fashion-MNIST is 47 MB, CIFAR 150 MB); streamed across processes, where each process feeds
    only its own devices.
    """
    if cfg.data_placement == "auto":
        return jax.process_count() == 1
    return cfg.data_placement == "device"


class ProgramCache:
    """Models, optimisers and compiled programs, by their (hashable) settings.

    Equal settings give the same objects: the train state's structure (its ``apply_fn`` and
    ``tx``) is then equal too, and programs compiled for an earlier fit are reused instead of
    traced, lowered and compiled again. Everything held is immutable; the cache only saves work,
    and it lives as long as the caller keeps it.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, Any] = {}

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The entry for ``key``, built by ``build()`` the first time."""
        if key not in self._entries:
            self._entries[key] = build()
        return self._entries[key]

    def model(self, name: str, num_classes: int, dtype: str) -> Any:
        return self.get(
            ("model", name, num_classes, dtype),
            lambda: models.get_model(
                name, num_classes, dtype=jnp.dtype(dtype), bn_axis_name=parallel.AXIS
            ),
        )

    def optimizer(self, name: str, learning_rate: float, **settings: Any) -> Any:
        key = ("optimizer", name, learning_rate, *sorted(settings.items()))
        return self.get(key, lambda: step.make_optimizer(name, learning_rate, **settings))


def _floats(x: Any) -> tuple[float, ...]:
    """A per-channel vector as a hashable tuple (float32 values round-trip exactly)."""
    return tuple(float(v) for v in np.asarray(x, np.float32).ravel())


def device_programs(
    cache: ProgramCache, step_config: step.StepConfig, mean: np.ndarray, std: np.ndarray,
    mesh: Mesh, parallel_mode: str, *, sizes: tuple[int, ...], batch_size: int,
    eval_batch_size: int,
) -> tuple[Callable, ...]:  # fmt: skip
    """``(epoch_fn, eval_fn, per_member_fn, held_out_fn)`` of a stack (:mod:`programs`; each
    compiles on its first call), from ``cache`` when equal settings built them before."""
    mean, std = _floats(mean), _floats(std)
    key = ("device", step_config, mean, std, mesh, parallel_mode, sizes, batch_size,
           eval_batch_size)  # fmt: skip

    def build():
        mean_array, std_array = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

        def step_fn(state, batch, member_hparams, key):
            return step.train_step(
                state, batch, member_hparams, config=step_config, key=key, mean=mean_array,
                std=std_array,
            )  # fmt: skip

        eval_step = functools.partial(
            step.eval_step, config=step_config, mean=mean_array, std=std_array
        )
        epoch_fn = programs.train_epoch_program(
            step_fn, mesh, parallel_mode, sizes=sizes, batch_size=batch_size,
            steps_per_epoch=step_config.steps_per_epoch,
        )  # fmt: skip
        eval_fns = tuple(
            programs.evaluate_program(
                eval_step, mesh, parallel_mode, batch_size=eval_batch_size, rows=rows
            )
            for rows in programs.EVALUATIONS
        )
        return (epoch_fn, *eval_fns)

    return cache.get(key, build)


class DeviceEngine:
    """The split on the devices, every member in one stack, each epoch one compiled program.

    ``images`` (the training rows) and ``test_images`` are placed on the devices once; other
    images passed to :meth:`outputs` are placed for that call.
    """

    def __init__(
        self,
        images: np.ndarray,
        test_images: np.ndarray,
        members: list[Member],
        mesh: Mesh,
        device_fns: tuple[Callable, ...],
    ):
        self.images, self.test_images = images, test_images
        self.mesh = mesh
        self.num_members = len(members)
        self.epoch_fn, self.eval_fn, self.per_member_fn, self.held_out_fn = device_fns
        self.data = parallel.replicate(stack_data(images, members), mesh)
        self.test_on_devices = parallel.replicate(np.asarray(test_images), mesh)
        self.step_keys = jnp.stack([m.keys[1] for m in members])
        self.order_keys = jnp.stack([m.keys[2] for m in members])

    def run_epoch(self, states: Any, hparams: Mapping[str, jax.Array], epoch: int):
        return self.epoch_fn(
            states, self.data, hparams, self.step_keys, self.order_keys, jnp.int32(epoch)
        )

    def outputs(self, states, hparams, images, labels, member_of_row=None, rows=None):
        if images is self.images:
            on_devices = self.data.images
        elif images is self.test_images:
            on_devices = self.test_on_devices
        else:
            on_devices = parallel.replicate(np.asarray(images), self.mesh)
        labels = jnp.asarray(labels, jnp.int32)
        if rows is not None:  # Each member on its own rows, [M, R] (padded with N).
            rows = parallel.replicate(np.asarray(rows, np.int32), self.mesh)
            return jax.device_get(self.per_member_fn(states, on_devices, labels, hparams, rows))
        if member_of_row is None:
            return jax.device_get(self.eval_fn(states, on_devices, labels, hparams))
        # Each member evaluates only its own rows (K-fold: its held-out fold), not all of them.
        rows = parallel.replicate(held_out_rows(member_of_row, self.num_members), self.mesh)
        return jax.device_get(self.held_out_fn(states, on_devices, labels, hparams, rows))


def progress_bar(iterable: Iterable, enabled: bool, **kwargs) -> Iterable:
    """``iterable`` under a tqdm bar (``kwargs`` are tqdm's), or as it is when not ``enabled``."""
    if not enabled:
        return iterable
    return tqdm(iterable, **kwargs)


class StreamingEngine:
    """One member, batches streamed from the host a step at a time.

    The state keeps the stack's leading axis (of size 1) on the devices: the step and the
    evaluation drop and restore it inside the parallel program, so the state never comes back
    through the host (with several processes it cannot be re-placed from one).
    """

    def __init__(
        self,
        cfg: config_lib.Config,
        images: np.ndarray,
        member: Member,
        mesh: Mesh,
        step_config: step.StepConfig,
        mean: np.ndarray,
        std: np.ndarray,
        *,
        progress: bool,
    ):
        self.cfg, self.member, self.mesh, self.progress = cfg, member, mesh, progress
        self.steps_per_epoch = step_config.steps_per_epoch
        mean, std = jnp.asarray(mean), jnp.asarray(std)
        eval_step = functools.partial(step.eval_step, config=step_config, mean=mean, std=std)

        def lone_step(states, batch, hparams):
            state, metrics = step.train_step(
                unstack(states, 0), batch, unstack(hparams, 0), config=step_config,
                key=member.keys[1], mean=mean, std=std,
            )  # fmt: skip
            return stack([state]), metrics

        def lone_eval(states, batch, hparams):
            return eval_step(unstack(states, 0), batch, unstack(hparams, 0))

        self.train_fn = parallel.parallelize(lone_step, mesh, cfg.parallel)
        self.eval_fn = parallel.parallelize(lone_eval, mesh, cfg.parallel, collective=False)
        self.sharding = parallel.batch_sharding(mesh)
        self.images = images[member.rows]
        self.labels = np.asarray(member.labels)[member.rows]

    def run_epoch(self, states: Any, hparams: Mapping[str, jax.Array], epoch: int):
        member, cfg = self.member, self.cfg
        num_rows = len(member.rows)
        order = input_pipeline.epoch_permutation(member.keys[2], epoch, num_rows)
        batches = (
            input_pipeline.process_slice(batch, jax.process_index(), jax.process_count())
            for batch in input_pipeline.train_batches(
                self.images, self.labels, order, cfg.batch_size, self.mesh.devices.size
            )
        )
        step_metrics = []
        desc = f"{member.tag + ' ' if member.tag else ''}epoch {epoch + 1}/{cfg.epochs}"
        for batch in progress_bar(
            input_pipeline.prefetch_to_devices(batches, self.sharding),
            self.progress, total=self.steps_per_epoch, desc=desc, leave=False,
        ):  # fmt: skip
            states, step_out = self.train_fn(states, batch, hparams)
            step_metrics.append(step_out)
        step_metrics = jax.device_get(step_metrics)
        margin_sum, margin_count = detection.update_aum(
            *detection.init_aum(num_rows),
            np.concatenate([m["index"] for m in step_metrics]),
            np.concatenate([m["margin"] for m in step_metrics]),
        )
        metrics = {
            k: np.asarray([sum(np.float64(m[k]) for m in step_metrics)]) for k in programs.SUMMED
        }
        metrics["finite"] = np.asarray([[int(m["finite"]) for m in step_metrics]])
        metrics["margin_sum"] = np.asarray(margin_sum)[None]
        metrics["margin_count"] = np.asarray(margin_count)[None]
        return states, metrics

    def outputs(self, states, hparams, images, labels, member_of_row=None, rows=None):
        if rows is not None:
            raise ValueError("streamed data evaluates one member: pass no rows.")
        out = evaluate(
            self.eval_fn, states, images, np.asarray(labels)[0], hparams, mesh=self.mesh,
            batch_size=self.cfg.eval_batch_size,
        )  # fmt: skip
        if member_of_row is not None:
            return out  # One member: every row is its.
        return {k: v[None] for k, v in out.items()}


def evaluate(
    eval_fn: Callable,
    state: Any,
    images: np.ndarray,
    labels: np.ndarray,
    loss_hparams: Mapping[str, jax.Array],
    *,
    mesh: Mesh,
    batch_size: int,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> dict[str, np.ndarray]:
    """Per-example outputs for every example of a split, streamed from the host in canonical
    order (padding removed).

    Args:
      eval_fn: ``parallel.parallelize(eval_step_bound, mesh, mode, collective=False)``.
      images, labels: the split, ``[N, H, W, C]`` and ``[N]`` (the labels to score against).
      batch_size: global batch, a multiple of the device count.

    Returns:
      Host arrays with ``N`` rows: ``logits``, ``probs`` (softmax), ``p_t``, ``margin``, ``pred``,
      ``weight``, ``loss``.
    """
    num_devices = mesh.devices.size
    sharding = parallel.batch_sharding(mesh)
    outputs: dict[str, list[np.ndarray]] = {}
    batches = input_pipeline.eval_batches(images, labels, batch_size, num_devices)
    local = (
        input_pipeline.process_slice(batch, jax.process_index(), jax.process_count())
        for batch in batches
    )
    num_examples = len(labels)
    for i, batch in enumerate(progress(input_pipeline.prefetch_to_devices(local, sharding))):
        batch.pop("mask")
        # The global batch's padding mask (every process's rows), as eval_batches pads.
        mask = np.arange(i * batch_size, (i + 1) * batch_size) < num_examples
        out = parallel.gather_outputs(eval_fn(state, batch, loss_hparams))
        for name, value in out.items():
            flat = np.asarray(value).reshape(-1, *np.shape(value)[2:])
            outputs.setdefault(name, []).append(flat[mask])
    result = {name: np.concatenate(parts) for name, parts in outputs.items()}
    result["probs"] = np.asarray(jax.nn.softmax(result["logits"], axis=-1))
    return result
