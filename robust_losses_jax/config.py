"""The configuration of one run: a frozen dataclass, validated before any work starts."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from robust_losses_jax import losses

# Losses that de-weight or drop examples from the start, and so collapse from random weights
# without a few epochs of cross-entropy first (../shared/README.md, reference runs).
DELAYED_BY_DEFAULT = ("power", "cutoff")
DEFAULT_DELAY_EPOCHS = 2
NOISE_KINDS = ("symmetric", "asymmetric", "transition")
DTYPES = ("float32", "bfloat16")
DETECTORS = ("pt", "cl", "aum")
DATA_PLACEMENTS = ("auto", "device", "stream")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that decides a run's result, and how often it tests and checkpoints (so it is
    written to ``config.json``)."""

    dataset: str = "fashion_mnist"
    model: str = "small_cnn"
    loss: str = "cross_entropy"
    # Hyperparameters of the loss (defaults of losses.get_loss where absent).
    loss_hparams: dict[str, float] = dataclasses.field(default_factory=dict)
    detach: bool = True
    # Epochs of cross-entropy before the robust loss; None: 2 for power/cutoff, else 0.
    delay_epochs: int | None = None
    ramp_epochs: int = 0
    noise_rate: float = 0.2
    noise_kind: str = "symmetric"
    transition: tuple[tuple[float, ...], ...] | None = None
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 1000
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    l1_weight: float = 0.0
    seed: int = 0
    # First N examples of the split in canonical order (corruption is decided on the whole split).
    train_size: int | None = 10_000
    test_size: int | None = None
    augment: bool | None = None  # None: on for CIFAR.
    dtype: str = "float32"
    parallel: str = "pmap"
    pt_threshold: float = 0.5
    # How label errors are found: "pt" (in-sample p_t of one run), "cl" (K-fold out-of-sample
    # probabilities + Confident Learning), "aum" (area under the margin, two runs).
    detector: str = "pt"
    folds: int = 5
    cl_filter_by: str = "prune_by_noise_rate"
    aum_percentile: float = 99.0
    # Where the training split lives: "device" (each epoch one compiled program; several models
    # vmapped together), "stream" (host batches, a step at a time), "auto" (device on one process).
    data_placement: str = "auto"
    # Train the models of a protocol (CL folds, AUM runs) one after another instead of vmapped.
    sequential: bool = False
    # Test accuracy (and, for --detector=pt, the training rows' p_t and detection scores)
    # every N epochs, and checkpoints every N epochs (both after the last epoch too). Neither
    # changes what is trained; fewer of them cut per-epoch costs that a stack of models pays
    # once but sequential runs pay per model. A run resumes from its last checkpoint.
    eval_every: int = 1
    checkpoint_every: int = 1
    # ...but an epoch's checkpoint is skipped when the last one (or the start of training) is
    # less than this many seconds old: at most one save a minute, however short the epochs (on
    # a GPU a save took longer than a small model's epoch). 0: every checkpoint_every epochs.
    checkpoint_min_interval: float = 60.0

    @property
    def resolved_delay_epochs(self) -> int:
        if self.delay_epochs is not None:
            return self.delay_epochs
        robust = losses.canonical_name(self.loss) in DELAYED_BY_DEFAULT
        return DEFAULT_DELAY_EPOCHS if robust else 0

    def to_json(self) -> dict[str, Any]:
        """The config with defaults resolved, as written to ``config.json``."""
        out = dataclasses.asdict(self)
        out["delay_epochs"] = self.resolved_delay_epochs
        out["loss"] = losses.canonical_name(self.loss)
        out["loss_hparams"] = {**losses.loss_hparams(self.loss), **self.loss_hparams}
        out["loss_hparams"].pop("detach", None)
        return json.loads(json.dumps(out))


def _one_process_only(setting: str, instead: str) -> None:
    """Refuse ``setting`` in a multi-process run (one line naming what to use ``instead``)."""
    import jax

    if jax.process_count() > 1:
        raise ValueError(f"{setting} runs on one process, not {jax.process_count()}; {instead}.")


def validate(config: Config, *, num_devices: int) -> None:
    """Raise ValueError (one clear line) for any setting outside what is allowed."""
    from robust_losses_jax import models, train

    losses.get_loss(config.loss, **config.loss_hparams)  # Unknown loss / bad hyperparameters.
    if config.model not in models.available_models():
        raise ValueError(
            f"Unknown model {config.model!r}; choose from {', '.join(models.available_models())}."
        )
    if config.optimizer not in train.OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer {config.optimizer!r}; choose from {', '.join(train.OPTIMIZERS)}."
        )
    if config.lr_schedule not in train.LR_SCHEDULES:
        raise ValueError(
            f"Unknown lr schedule {config.lr_schedule!r}; "
            f"choose from {', '.join(train.LR_SCHEDULES)}."
        )
    if config.parallel not in train.PARALLEL_MODES:
        raise ValueError(
            f"Unknown parallel mode {config.parallel!r}; "
            f"choose from {', '.join(train.PARALLEL_MODES)}."
        )
    if config.parallel == "shard_map":
        _one_process_only("--parallel=shard_map", "use pmap")
    if config.noise_kind not in NOISE_KINDS:
        raise ValueError(
            f"Unknown noise kind {config.noise_kind!r}; choose from {', '.join(NOISE_KINDS)}."
        )
    if config.detector not in DETECTORS:
        raise ValueError(
            f"Unknown detector {config.detector!r}; choose from {', '.join(DETECTORS)}."
        )
    from robust_losses_jax import detection

    if config.cl_filter_by not in detection.FILTER_BY:
        raise ValueError(
            f"Unknown cl filter_by {config.cl_filter_by!r}; "
            f"choose from {', '.join(detection.FILTER_BY)}."
        )
    if config.data_placement not in DATA_PLACEMENTS:
        raise ValueError(
            f"Unknown data placement {config.data_placement!r}; "
            f"choose from {', '.join(DATA_PLACEMENTS)}."
        )
    if config.data_placement == "device":
        _one_process_only(
            "--data-placement=device", "use stream (each process feeds its own devices)"
        )
    if config.dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {config.dtype!r}; choose from {', '.join(DTYPES)}.")
    checks = [
        (0.0 <= config.noise_rate < 1.0, f"noise rate {config.noise_rate} must be in [0, 1)"),
        (config.epochs >= 1, f"epochs {config.epochs} must be >= 1"),
        (config.eval_every >= 1, f"eval every {config.eval_every} epochs: must be >= 1"),
        (config.checkpoint_every >= 1,
         f"checkpoint every {config.checkpoint_every} epochs: must be >= 1"),
        (config.checkpoint_min_interval >= 0,
         f"checkpoint min interval {config.checkpoint_min_interval} s: must be >= 0"),
        (config.folds >= 2, f"folds {config.folds} must be >= 2"),
        (0.0 < config.aum_percentile <= 100.0,
         f"aum percentile {config.aum_percentile} must be in (0, 100]"),
        (config.lr > 0, f"learning rate {config.lr} must be > 0"),
        (config.resolved_delay_epochs >= 0, f"delay {config.delay_epochs} must be >= 0"),
        (config.ramp_epochs >= 0, f"ramp {config.ramp_epochs} must be >= 0"),
        (config.weight_decay >= 0, f"weight decay {config.weight_decay} must be >= 0"),
        (config.l1_weight >= 0, f"l1 weight {config.l1_weight} must be >= 0"),
        (0.0 < config.pt_threshold < 1.0, f"p_t threshold {config.pt_threshold} must be in (0, 1)"),
        (config.train_size is None or config.train_size >= 1,
         f"train size {config.train_size} must be >= 1"),
        (config.test_size is None or config.test_size >= 1,
         f"test size {config.test_size} must be >= 1"),
        (config.noise_kind != "transition" or config.transition is not None,
         "noise kind 'transition' needs a transition matrix"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ValueError(message + ".")
    if config.transition is not None:
        from robust_losses_jax import corruption

        try:
            matrix = np.asarray(config.transition, np.float64)
        except ValueError:
            raise ValueError("transition must be a square [C, C] matrix of numbers.") from None
        if matrix.ndim != 2:
            raise ValueError(f"transition must be a [C, C] matrix, got shape {list(matrix.shape)}.")
        corruption.check_transition(matrix, matrix.shape[0])  # Square, rows >= 0, sum to 1.
    for name, size in (
        ("batch size", config.batch_size),
        ("eval batch size", config.eval_batch_size),
    ):
        if size < 1 or size % num_devices:
            raise ValueError(
                f"{name} {size} is not a positive multiple of the device count {num_devices}."
            )
