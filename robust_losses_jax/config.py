"""The configuration of one run: a frozen dataclass, validated before any work starts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from robust_losses_jax import corruption, detection, input_pipeline, losses, models, user_data

# Epochs of cross-entropy before a loss registered as ``delayed`` (power, cutoff: they de-weight
# or drop examples from the start, and so collapse from random weights without them).
DEFAULT_DELAY_EPOCHS = 2
NOISE_KINDS = corruption.KINDS
# What the training engine offers; it takes these lists from here (config imports no engine).
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step")
PARALLEL_MODES = ("pmap", "shard_map")
DTYPES = ("float32", "bfloat16")
DATA_PLACEMENTS = ("auto", "device", "stream")
# AUM's decision rules (detection.aum_detect).
AUM_RULES = detection.AUM_RULES


# Groups of the command line's flags, in --help's order: commands/cli.py gives every field
# declared with flag() a flag in its group.
FLAG_GROUPS = ("data", "model", "loss", "training", "detection", "output")
# Named settings (field -> value) that --preset=NAME applies; flags typed override them.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's protocol: Adam at 1e-4, batch 64, 10 epochs on the whole training split (all
    # 60,000 examples), label errors found by 5-fold Confident Learning, filter_by="both".
    "paper": {
        "optimizer": "adam", "lr": 1e-4, "batch_size": 64, "epochs": 10, "train_size": None,
        "detector": "cl", "folds": 5, "cl_filter_by": "both",
    },
}  # fmt: skip


def preset_values(name: str | None) -> dict[str, Any]:
    """The settings of preset ``name`` (none for None); ``ValueError`` naming the known ones."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (--preset); choose from {', '.join(PRESETS)}.")
    return dict(PRESETS[name])


def flag(default: Any, group: str | None, help: str | Callable[[], str], **more: Any) -> Any:
    """A field with a command-line flag: ``dataclasses.field`` with the metadata that the entry
    points' parser is built from (``commands.cli``).

    Args:
      default: the field's default, and so the flag's.
      group: the flag's group in ``--help``, one of :data:`FLAG_GROUPS` (None: general options).
      help: what the field decides.
      **more: ``flag``: the flag's name where it is not the field's (``delay`` for
        ``delay_epochs``); ``choices``: the allowed values, listed by ``--help`` (:func:`validate`
        checks them; ``what`` names the field in its error, default its name in words);
        ``parse``: reads a typed value where the field's type cannot (``str -> value``;
        ``ValueError`` or ``OSError`` for a bad one); ``none``: what a default of None
        means; ``registry``: the choices are what a registry above config holds (``detectors``:
        ``protocols.registered_detectors``), listed by the parser and checked where it is looked
        up. ``help`` and ``choices`` may be functions of no arguments, called when the parser
        is built.
    """
    return dataclasses.field(default=default, metadata={"group": group, "help": help, **more})


def resolved_delay(loss: str, delay_epochs: int | None) -> int:
    """Epochs of cross-entropy before ``loss``: ``delay_epochs``, or when None the default
    (:data:`DEFAULT_DELAY_EPOCHS` for a loss registered as ``delayed``, else 0)."""
    if delay_epochs is not None:
        return delay_epochs
    return DEFAULT_DELAY_EPOCHS if losses.loss_spec(loss).delayed else 0


def _dataset_help() -> str:
    return (
        f"a tfds image-classification dataset (here: {', '.join(input_pipeline.KNOWN_DATASETS)}, "
        "...); npz:PATH (train_images uint8 [N, H, W(, C)], train_labels; optional num_classes or "
        "class_names, test_images, test_labels); or folder:PATH (one sub-folder per class of "
        f"PNG/JPEG files: {user_data.FOLDER_RULE})"
    )


def _preset_help() -> str:
    described = (
        f"{name} ({', '.join(f'{k}={v}' for k, v in values.items())})"
        for name, values in PRESETS.items()
    )
    return "named settings; flags typed override them: " + "; ".join(described)


def _size_or_none(text: str) -> int | None:
    """``--train-size``/``--test-size``: the first N examples; 0 for the whole split (None)."""
    try:
        return int(text) or None
    except ValueError:
        raise ValueError(f"invalid int value: {text!r}") from None


def _fraction_or_auto(text: str) -> float | None:
    """``--holdout``: a fraction, or ``auto`` (None)."""
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"invalid value: {text!r} (a fraction such as 0.1, or auto)") from None


def _matrix_file(path: str) -> tuple[tuple[float, ...], ...]:
    """``--transition``: a JSON file holding a [C, C] matrix (:func:`validate` checks its rows)."""
    text = Path(path).read_text()  # OSError names the file.
    try:
        return tuple(map(tuple, json.loads(text)))
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{path}: not a JSON [C, C] matrix ({error}).") from None


def _image_size_text(text: str) -> str:
    height, width = user_data.parse_image_size(text)
    return f"{height}x{width}"


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that decides a run's result, and how often it tests and checkpoints (so it is
    written to ``config.json``). Each field declared with :func:`flag` is a command-line flag."""

    dataset: str = flag("fashion_mnist", "data", _dataset_help)
    model: str = flag("small_cnn", "model", "the network", choices=models.available_models)
    loss: str = flag(
        "cross_entropy",
        "loss",
        "the training loss (its hyperparameters: the flags below)",
        choices=losses.available_losses,
    )
    # Hyperparameters of the loss (defaults of losses.get_loss where absent).
    loss_hparams: dict[str, float] = dataclasses.field(default_factory=dict)
    detach: bool = flag(True, "loss", "power: stop the gradient through the weight p_t**gamma")
    # Epochs of cross-entropy before the robust loss; None: 2 for power/cutoff, else 0.
    delay_epochs: int | None = flag(
        None,
        "loss",
        "epochs of cross-entropy before the robust loss",
        flag="delay",
        none="2 for power/cutoff, else 0",
    )
    ramp_epochs: int = flag(
        0,
        "loss",
        "epochs to ramp the loss's rampable hyperparameters (power's gamma, cutoff's tau, ...) up "
        "from 0 after the delay",
        flag="ramp",
    )
    image_size: str | None = flag(
        None,
        "data",
        "folder:PATH datasets: every image resized to H or HxW while it is read",
        parse=_image_size_text,
        none="the most common size, scaled down to at most 64 a side",
    )
    noise_rate: float = flag(0.2, "data", "fraction of the training labels corrupted")
    noise_kind: str = flag("symmetric", "data", "how labels are corrupted", choices=NOISE_KINDS)
    transition: tuple[tuple[float, ...], ...] | None = flag(
        None,
        "data",
        "JSON file with a row-stochastic [C, C] matrix (--noise-kind=transition)",
        parse=_matrix_file,
    )
    epochs: int = flag(20, "training", "training epochs")
    batch_size: int = flag(128, "training", "training batch (a multiple of the device count)")
    eval_batch_size: int = flag(1000, "training", "test batch (a multiple of the device count)")
    optimizer: str = flag("adam", "training", "the optimizer", choices=OPTIMIZERS)
    lr: float = flag(1e-3, "training", "learning rate")
    lr_schedule: str = flag(
        "constant",
        "training",
        "learning-rate schedule",
        choices=LR_SCHEDULES,
    )
    warmup_epochs: int = flag(0, "training", "epochs of linear learning-rate warm-up from 0")
    momentum: float = flag(0.9, "training", "sgd's momentum")
    nesterov: bool = flag(False, "training", "sgd: Nesterov momentum")
    weight_decay: float = flag(
        0.0, "training", "decoupled for adamw; an L2 term in the gradient for sgd and adam"
    )
    l1_weight: float = flag(0.0, "training", "L1 penalty on the weights (ANL)", flag="l1")
    seed: int = flag(0, "training", "seed of the corruption, the initialisation and the batches")
    # First N examples of the split in canonical order (corruption is decided on the whole split).
    train_size: int | None = flag(
        10_000,
        "data",
        "first N training examples in canonical order; 0 = the whole split",
        parse=_size_or_none,
        none="0, the whole split",
    )
    test_size: int | None = flag(
        None, "data", "first N test examples; 0 = all", parse=_size_or_none, none="0, all"
    )
    augment: bool | None = flag(  # None: on for CIFAR.
        None, "data", "CIFAR augmentation (random crop and flip)", none="on for CIFAR"
    )
    dtype: str = flag("float32", "model", "compute dtype", choices=DTYPES)
    parallel: str = flag(
        "pmap", "training", "data parallelism", choices=PARALLEL_MODES, what="parallel mode"
    )
    pt_threshold: float = flag(0.5, "detection", "pt: flag an example when p_t is below this")
    # How label errors are found: a detector registered with protocols.register_detector (its
    # choices and their help come from there; config imports no protocol).
    detector: str = flag("pt", "detection", "how label errors are found", registry="detectors")
    folds: int = flag(5, "detection", "cl: folds (fresh models, each without its fold)")
    # pt: a random slice of the given labels kept out of training and predicted out-of-sample,
    # so that how well the model generalises is known without a clean test split.
    holdout: float | None = flag(
        0.0,
        "detection",
        "pt: fraction of the given labels held out of training (still audited, out-of-sample); "
        "their accuracy tells underfitting and memorising apart",
        parse=_fraction_or_auto,
        none="auto: 0.1 when the dataset has no test split, else 0",
    )
    cl_filter_by: str = flag(
        "prune_by_noise_rate",
        "detection",
        "cl: Confident Learning's filter_by",
        choices=detection.FILTER_BY,
        what="cl filter_by",
    )
    aum_percentile: float = flag(
        99.0, "detection", "aum: flag below this percentile of the threshold examples' AUM"
    )
    aum_rule: str = flag(
        "reference",
        "detection",
        "aum: flagged when every run that judges an example flags it "
        "(reference, first epoch's margins left out) or when the mean over runs does (mean)",
        choices=AUM_RULES,
    )
    # cutoff: tau chosen after the delay from the noise rate estimated without clean labels
    # (Confident Learning's confident joint on the model's own probabilities): the p_t
    # quantile at that rate. The fixed loss_hparams["tau"] is then unused.
    auto_tau: bool = False
    # Where the training split lives: "device" (each epoch one compiled program; several models
    # vmapped together), "stream" (host batches, a step at a time), "auto" (device on one process).
    data_placement: str = flag(
        "auto",
        "training",
        "where the training split lives: device (epochs compiled whole, "
        "models vmapped), stream (host batches), auto (device on one process)",
        choices=DATA_PLACEMENTS,
    )
    # Train the models of a protocol (CL folds, AUM runs) one after another instead of vmapped.
    sequential: bool = flag(
        False, "training", "train the CL folds / AUM runs one after another, not vmapped together"
    )
    # Test accuracy (and, for --detector=pt, the training rows' p_t and detection scores)
    # every N epochs, and checkpoints every N epochs (both after the last epoch too). Neither
    # changes what is trained; fewer of them cut per-epoch costs that a stack of models pays
    # once but sequential runs pay per model. A run resumes from its last checkpoint.
    eval_every: int = flag(
        1,
        "output",
        "test accuracy, and the training rows' p_t (detection per epoch), every N "
        "epochs (and after the last)",
    )
    checkpoint_every: int = flag(
        1,
        "output",
        "checkpoint every N epochs (and after the last); --resume restarts from the last",
    )
    # ...but an epoch's checkpoint is skipped when the last one (or the start of training) is
    # less than this many seconds old: at most one save a minute, however short the epochs (on
    # a GPU a save took longer than a small model's epoch). 0: every checkpoint_every epochs.
    checkpoint_min_interval: float = flag(
        60.0,
        "output",
        "seconds: skip an epoch's checkpoint while the last is younger (0: never skip)",
    )
    # The preset the run started from (its settings are in the fields above), for config.json.
    preset: str | None = flag(None, None, _preset_help, choices=tuple(PRESETS), none="none")

    @property
    def resolved_delay_epochs(self) -> int:
        return resolved_delay(self.loss, self.delay_epochs)

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
    if jax.process_count() > 1:
        raise ValueError(f"{setting} runs on one process, not {jax.process_count()}; {instead}.")


def validate(config: Config, *, num_devices: int) -> None:
    """Raise ValueError (one clear line) for any setting outside what is allowed.

    The detector (a registry above config) is checked where it is looked up:
    ``protocols.validate`` runs this, then its checks.
    """
    losses.get_loss(config.loss, **config.loss_hparams)  # Unknown loss / bad hyperparameters.
    _check_choices(config)
    _check_ranges(config)
    _check_auto_tau(config)
    if config.parallel == "shard_map":
        _one_process_only("--parallel=shard_map", "use pmap")
    if config.data_placement == "device":
        _one_process_only(
            "--data-placement=device", "use stream (each process feeds its own devices)"
        )
    if config.transition is not None:
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


def _check_choices(config: Config) -> None:
    """Every field with ``choices`` (its flag's metadata) holds one of them (or None)."""
    for field in dataclasses.fields(Config):
        if "choices" not in field.metadata:
            continue
        choices = field.metadata["choices"]
        allowed = choices() if callable(choices) else choices
        value = getattr(config, field.name)
        if value is not None and value not in allowed:
            what = field.metadata.get("what", field.name.replace("_", " "))
            raise ValueError(f"Unknown {what} {value!r}; choose from {', '.join(allowed)}.")


def _check_auto_tau(config: Config) -> None:
    if config.auto_tau and losses.canonical_name(config.loss) != "cutoff":
        raise ValueError(f"tau=auto is for the cutoff loss, not {config.loss!r}.")
    if config.auto_tau and not 1 <= config.resolved_delay_epochs < config.epochs:
        raise ValueError(
            f"tau=auto chooses tau after the delay: delay {config.resolved_delay_epochs} must be "
            f"in [1, epochs={config.epochs})."
        )


def _check_ranges(config: Config) -> None:
    """Numbers inside their ranges, and the settings that need another one given."""
    checks = [
        (0.0 <= config.noise_rate < 1.0, f"noise rate {config.noise_rate} must be in [0, 1)"),
        (config.epochs >= 1, f"epochs {config.epochs} must be >= 1"),
        (config.eval_every >= 1, f"eval every {config.eval_every} epochs: must be >= 1"),
        (config.checkpoint_every >= 1,
         f"checkpoint every {config.checkpoint_every} epochs: must be >= 1"),
        (config.checkpoint_min_interval >= 0,
         f"checkpoint min interval {config.checkpoint_min_interval} s: must be >= 0"),
        (config.folds >= 2, f"folds {config.folds} must be >= 2"),
        (config.holdout is None or 0.0 <= config.holdout <= 0.5,
         f"holdout {config.holdout} must be in [0, 0.5] or auto"),
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
