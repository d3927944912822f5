"""Train on noisy labels and score label-error detection.

    robust-losses run --loss=power --gamma=2
    robust-losses run --loss=ce --epochs=6 --train-size=0 --workdir=workdir/ce

Each field of ``robust_losses_jax.config.Config`` is a flag with the field's default
(``commands.cli`` builds them; ``--help`` lists them by group with defaults and allowed values);
``--preset=paper`` sets the paper's protocol under the flags typed. Outputs go to ``--workdir``
(see ``robust_losses_jax.experiment``). Bad flags: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from robust_losses_jax import xla_setup
from robust_losses_jax.commands import cli

if TYPE_CHECKING:
    from robust_losses_jax.config import Config


def build_parser() -> cli.ConfigParser:
    """The runner's flags: one per ``Config`` field (``commands.cli``) and the run's own.

    ``commands.sweep`` reuses them after ``--``; ``commands.find_errors`` with its own
    defaults.
    """
    p = cli.ConfigParser(prog="robust-losses run", description=__doc__.splitlines()[0])
    add = cli.add_flag
    add(
        p,
        "--version",
        action="version",
        version=cli.version_text(),
        help="print the package's version and exit",
    )
    add(
        p.groups["data"],
        "--data-dir",
        default=None,
        help="tfds data directory",
        none="$TFDS_DATA_DIR or ~/tensorflow_datasets",
    )
    add(
        p.groups["training"],
        "--compilation-cache",
        default=xla_setup.default_compilation_cache(),
        help="JAX's persistent compilation cache directory ('' to turn it off)",
    )
    output = p.groups["output"]
    add(output, "--workdir", default="workdir/run", help="where the run's files go")
    add(output, "--resume", action="store_true", help="continue from the latest checkpoint")
    add(output, "--overwrite", action="store_true", help="replace a run already in --workdir")
    add(
        output,
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the training progress bar",
    )
    add(
        output,
        "--verbose",
        action="store_true",
        help="TensorFlow's, absl's and XLA's start-up logs and tfds's progress bars (off: quiet)",
    )
    multi = p.add_argument_group("multi-host")
    add(
        multi,
        "--coordinator-address",
        default=None,
        help="host:port of process 0 (jax.distributed.initialize)",
        none="one process",
    )
    add(multi, "--num-processes", type=int, default=None, help="number of processes")
    add(multi, "--process-id", type=int, default=None, help="this process's index")
    add(
        multi,
        "--distributed",
        action="store_true",
        help="settings from the environment (TPU pod slices, SLURM)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The runner's flags parsed, a ``--preset``'s values under the flags typed."""
    return build_parser().parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    """The run's ``Config`` from :func:`parse_args`'s namespace."""
    return cli.config_from_args(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cli.prepare_process(argv)
    try:
        args = parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a bad flag (its one line is printed).
        return stop.code if isinstance(stop.code, int) else 0
    import jax

    xla_setup.enable_compilation_cache(args.compilation_cache)
    if args.distributed or args.coordinator_address or (args.num_processes or 1) > 1:
        try:
            xla_setup.initialize_distributed(
                args.coordinator_address, args.num_processes, args.process_id
            )
        except (ValueError, RuntimeError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    from robust_losses_jax import experiment, input_pipeline, noisy_data, protocols, records
    from robust_losses_jax.training import checkpoints, loop

    try:
        cfg = build_config(args)
        protocols.validate(cfg, num_devices=jax.device_count())
        input_pipeline.check_dataset(cfg.dataset, args.data_dir)
        noisy_data.check_noise(cfg)
        experiment.check_workdir(cfg, args.workdir, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, OSError, input_pipeline.DatasetUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summary = experiment.train_and_evaluate(
            cfg, args.workdir, data_dir=args.data_dir, resume=args.resume,
            overwrite=args.overwrite, progress=args.progress,
        )  # fmt: skip
    except (loop.NonFiniteError, checkpoints.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)  # One line; no summary was written.
        return 1
    except input_pipeline.DatasetUnavailableError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if records.is_writer():
        print(experiment.one_line_summary(cfg, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
