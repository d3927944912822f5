"""A grid of runs: losses (with hyperparameters) x delays x noise x detectors x seeds.

    robust-losses sweep --workdir=workdir/sweep                 # the full default grid
    robust-losses sweep --losses="ce;power:gamma=0.5" --noise=symmetric:0.2 \\
        --detectors=pt --seeds=0,1,2 -- --epochs=20 --train-size=10000
    robust-losses sweep --dry-run                               # list the cells

Flags after ``--`` go to every run (``robust-losses run --help``; exact names, none that
the sweep sets per cell such as ``--seed``): each cell's config is theirs with the cell's loss,
hyperparameters, delay, noise, detector and seed. ``--preset=NAME`` (before or after ``--``) sets
the runs' settings under those flags, and the grid's axes where the preset has a value for them
and the axis is not typed (``--preset=paper``: ``--detectors=cl``).

Every cell is validated before any work starts: a bad input is one ``error:`` line on stderr,
exit code 2, nothing written. A cell whose ``summary.json`` exists is not re-run, so a killed
sweep resumes where it stopped. After each cell, ``results.csv`` (one row per run and detector)
and ``results.md`` (mean ± std over seeds) are rewritten atomically from every finished run in
the workdir (so several sweeps into one workdir add up; runs whose dataset, model, epochs or
train size differ are never averaged together).

Cells that differ only in seed, noise or loss hyperparameters (``gamma``, ``tau``, ...) train
their models together, as one stack in one compiled program (``--max-models`` per stack, 16 by
default; ``--no-stack`` runs one cell after another): a CL cell brings its K folds, an AUM cell
its two runs. Each cell's folder gets what a lone run writes, up to float rounding; the stack's
checkpoints go to ``stacks/<hash of its cells>/``, from which a killed sweep resumes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, NoReturn

from robust_losses_jax import xla_setup
from robust_losses_jax.commands import cli

DEFAULT_LOSSES = (
    "ce;focal:gamma=2;gce;sce;nce_rce;power:gamma=0.5;power:gamma=1;power:gamma=2;"
    "cutoff:tau=0.05;cutoff:tau=0.1;cutoff:tau=0.2"
)
DEFAULT_NOISE = "symmetric:0.1,symmetric:0.2,symmetric:0.4,asymmetric:0.2"
# Settings besides the grid's axes that make runs incomparable: grouped on, never averaged over.
SETTINGS = ("dataset", "model", "epochs", "train_size")
COLUMNS = (
    *SETTINGS, "loss", "hparams", "delay", "noise_kind", "noise_rate", "protocol", "seed",
    "detector",
    "f1", "precision", "recall", "balanced_accuracy", "num_flagged", "auroc",
    "average_precision", "precision_at_k", "test_accuracy", "memorised_fraction", "cell",
)  # fmt: skip
METRICS = (
    "f1",
    "balanced_accuracy",
    "precision",
    "recall",
    "auroc",
    "precision_at_k",
    "test_accuracy",
    "memorised_fraction",
)


def parse_losses(text: str) -> list[tuple[str, dict[str, float]]]:
    """``"ce;power:gamma=2,tau=0.1"`` -> ``[("ce", {}), ("power", {"gamma": 2.0, "tau": 0.1})]``.

    Hyperparameter names are the runner's loss flags (``commands.cli.loss_flags()``), exactly,
    each at most once per loss.
    """
    loss_flags = cli.loss_flags()
    out = []
    for item in filter(None, (part.strip() for part in text.replace(";", "\n").splitlines())):
        name, _, params = item.partition(":")
        hparams: dict[str, float] = {}
        for pair in filter(None, params.split(",")):
            key, eq, value = pair.partition("=")
            if not eq:
                raise ValueError(f"loss hyperparameter {pair!r} in {item!r} must be key=value.")
            key = key.strip()
            if key not in loss_flags:
                raise ValueError(
                    f"loss hyperparameter {key!r} in {item!r} is not one of "
                    f"{', '.join(loss_flags)} (exact names)."
                )
            if key in hparams:
                raise ValueError(f"loss hyperparameter {key!r} is repeated in {item!r}.")
            if key == "tau" and value.strip() == "auto":  # Chosen after the delay (auto_tau).
                hparams[key] = "auto"
                continue
            try:
                hparams[key] = float(value)
            except ValueError:
                raise ValueError(
                    f"loss hyperparameter {pair!r} in {item!r} is not a number."
                ) from None
        out.append((name.strip(), hparams))
    return out


def run_name(name: str, hparams: dict[str, float | str]) -> str:
    return "_".join([name, *(f"{k}{format_value(v)}" for k, v in sorted(hparams.items()))])


def format_value(value: float | str) -> str:
    """A hyperparameter as the tables show it: ``0.5``, ``2``, ``auto``."""
    return value if isinstance(value, str) else f"{value:g}"


@dataclasses.dataclass(frozen=True)
class Cell:
    loss: str
    hparams: tuple[tuple[str, float], ...]
    delay: str  # "default" or an int as text.
    noise_kind: str
    noise_rate: float
    protocol: str  # The runner's --detector: pt, cl, aum.
    seed: int

    @property
    def name(self) -> str:
        return (
            f"{run_name(self.loss, dict(self.hparams))}_d{self.delay}_"
            f"{self.noise_kind}{self.noise_rate:g}_{self.protocol}_s{self.seed}"
        )

    def config(self, base: Any) -> Any:
        """The cell's ``Config``: ``base`` (the flags after ``--``) with the cell's axes."""
        hparams = dict(self.hparams)
        auto_tau = hparams.get("tau") == "auto"
        if auto_tau:
            del hparams["tau"]
        return dataclasses.replace(
            base, loss=self.loss, loss_hparams=hparams, auto_tau=auto_tau,
            delay_epochs=None if self.delay == "default" else int(self.delay),
            noise_kind=self.noise_kind, noise_rate=self.noise_rate, detector=self.protocol,
            seed=self.seed,
        )  # fmt: skip

    def flags(self) -> list[str]:
        """The cell's axes as runner flags (to run one cell by hand with ``commands.run``)."""
        out = [f"--loss={self.loss}", f"--noise-kind={self.noise_kind}",
               f"--noise-rate={self.noise_rate}", f"--detector={self.protocol}",
               f"--seed={self.seed}", "--no-progress"]  # fmt: skip
        out += [f"--{k.replace('_', '-')}={v}" for k, v in self.hparams]
        if self.delay != "default":
            out.append(f"--delay={self.delay}")
        return out


def parse_noise(text: str) -> list[tuple[str, float]]:
    """``"symmetric:0.2,asymmetric:0.2"`` -> ``[("symmetric", 0.2), ("asymmetric", 0.2)]``."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        kind, sep, rate = item.partition(":")
        try:
            out.append((kind, float(rate)))
        except ValueError:
            raise ValueError(
                f"noise setting {item!r} must be kind:rate, e.g. symmetric:0.2"
            ) from None
        if not sep:
            raise ValueError(f"noise setting {item!r} must be kind:rate, e.g. symmetric:0.2")
    return out


def grid(args: argparse.Namespace) -> list[Cell]:
    """The cells, with ``delay`` values that resolve to the same delay for a loss merged."""
    from robust_losses_jax import config as config_lib

    cells, seen = [], set()
    for (loss, hparams), delay, (kind, rate), protocol, seed in itertools.product(
        parse_losses(args.losses),
        [d.strip() for d in args.delays.split(",") if d.strip()],
        parse_noise(args.noise),
        [d.strip() for d in args.detectors.split(",") if d.strip()],
        [int(s) for s in args.seeds.split(",") if s.strip()],
    ):
        if delay != "default":
            try:
                int(delay)
            except ValueError:
                raise ValueError(f"delay {delay!r} must be 'default' or an int") from None
        resolved = config_lib.resolved_delay(loss, None if delay == "default" else int(delay))
        key = (loss, tuple(sorted(hparams.items())), resolved, kind, rate, protocol, seed)
        if key in seen:
            continue
        seen.add(key)
        cells.append(Cell(loss, tuple(sorted(hparams.items())), str(resolved), kind, rate,
                          protocol, seed))  # fmt: skip
    return cells


# Runner flags that the sweep sets per cell or itself: refused after ``--``, naming its own flag.
SWEEP_SETS = {
    "--loss": "--losses", "--delay": "--delays", "--noise-rate": "--noise",
    "--noise-kind": "--noise", "--detector": "--detectors", "--seed": "--seeds",
    "--workdir": "--workdir", "--progress": "--progress", "--no-progress": "--no-progress",
}  # fmt: skip
# Runner flags a sweep has no use for, and why.
NOT_FOR_SWEEPS = {
    "--resume": "the sweep always resumes (finished cells are skipped, others continue from "
    "their checkpoints)",
    "--overwrite": "the sweep never replaces a run; move the cell's folder away or use another "
    "--workdir",
    **dict.fromkeys(
        ("--distributed", "--coordinator-address", "--num-processes", "--process-id"),
        "the sweep runs in one process; run robust-losses run per cell for multi-host",
    ),
}


def run_parser() -> argparse.ArgumentParser:
    """``commands.run``'s parser, strict: exact flag names only (no prefixes), and a bad flag
    raises ``ValueError`` (one line) instead of printing the runner's usage and exiting."""
    from robust_losses_jax.commands import run

    parser = run.build_parser()
    parser.allow_abbrev = False

    def error(message: str) -> NoReturn:
        raise ValueError(f"run flags: {message} (see robust-losses run --help)")

    parser.error = error  # type: ignore[method-assign]
    return parser


def parse_run_flags(flags: list[str]) -> argparse.Namespace:
    """The flags after ``--`` (the same for every cell): runner flags, none that the sweep sets."""
    args = run_parser().parse_args(flags)
    for flag in flags:
        name = flag.partition("=")[0]  # Parsed: an exact runner flag, or a value.
        if name in NOT_FOR_SWEEPS:
            raise ValueError(f"run flag {flag} after -- is not for sweeps: {NOT_FOR_SWEEPS[name]}.")
        hparam = name.removeprefix("--").replace("-", "_")
        if name in SWEEP_SETS or (name.startswith("--") and hparam in cli.loss_flags()):
            axis = SWEEP_SETS.get(name, f"--losses (per loss: --losses=LOSS:{hparam}=VALUE)")
            raise ValueError(
                f"run flag {flag} after -- overrides what the sweep sets per cell; use the "
                f"sweep's {axis} before -- instead."
            )
    return args


def preset_axes(values: dict[str, Any]) -> dict[str, str]:
    """The sweep's axis flags (dest -> text) that a preset's ``values`` set: its values for the
    fields the sweep sets per cell."""
    from robust_losses_jax import config as config_lib

    default = config_lib.Config()
    axes = {}
    if "detector" in values:
        axes["detectors"] = values["detector"]
    if "seed" in values:
        axes["seeds"] = str(values["seed"])
    if "delay_epochs" in values:
        delay = values["delay_epochs"]
        axes["delays"] = "default" if delay is None else str(delay)
    if {"noise_kind", "noise_rate"} & values.keys():
        kind = values.get("noise_kind", default.noise_kind)
        axes["noise"] = f"{kind}:{values.get('noise_rate', default.noise_rate)}"
    if {"loss", "loss_hparams"} & values.keys():
        hparams = ",".join(f"{k}={v}" for k, v in values.get("loss_hparams", {}).items())
        axes["losses"] = values.get("loss", default.loss) + (f":{hparams}" if hparams else "")
    return axes


def check_workdir(workdir: Path) -> None:
    """Refuse a ``--workdir`` that is (or lies inside) a file, before anything is written."""
    for path in (workdir, *workdir.parents):
        if path.exists():
            if not path.is_dir():
                inside = "" if path == workdir else f" inside the file {path}"
                raise ValueError(f"--workdir {workdir} is a file{inside}, not a folder.")
            return


def check_cell_folder(cfg: Any, workdir: Path, cell: Cell) -> None:
    """Refuse a cell's folder that holds a run with other settings (or is a file): not mixed in."""
    from robust_losses_jax import experiment

    folder = workdir / cell.name
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"--workdir {workdir} holds a file {folder.name} where cell {cell.name} goes; move it "
            "away or use another --workdir."
        )
    try:
        experiment.check_workdir(cfg, folder, resume=True, overwrite=False)
    except experiment.WorkdirError as error:  # Its advice is the runner's flags: not ours.
        raise ValueError(
            f"{error.reason}; the sweep continues a cell only with the same settings (epochs may "
            f"change): move {folder} away or use another --workdir."
        ) from None


def cell_configs(cells: list[Cell], run_flags: list[str], workdir: Path) -> dict[Cell, Any]:
    """Every cell's config, validated as the run would be (``ValueError`` for the first bad one)."""
    import jax

    from robust_losses_jax import input_pipeline, noisy_data, protocols
    from robust_losses_jax.commands import run

    args = run_parser().parse_args(run_flags)
    base = run.build_config(args)
    check_workdir(workdir)
    configs, datasets = {}, set()
    for cell in cells:
        cfg = cell.config(base)
        protocols.validate(cfg, num_devices=jax.device_count())
        if cfg.dataset not in datasets:
            input_pipeline.check_dataset(cfg.dataset, args.data_dir)
            datasets.add(cfg.dataset)
        noisy_data.check_noise(cfg)
        check_cell_folder(cfg, workdir, cell)
        configs[cell] = cfg
    return configs


def row_hparams(config: dict) -> dict[str, float | str]:
    """A run's loss hyperparameters as its rows name them (``tau: "auto"`` for ``auto_tau``)."""
    hparams = dict(config["loss_hparams"])
    if config.get("auto_tau"):
        hparams["tau"] = "auto"
    return hparams


def run_rows(config: dict, summary: dict, name: str) -> list[dict]:
    """One row per decision detector of a finished run (its ``config.json`` and summary)."""
    detection = summary["detection"]
    rows = []
    for detector, scores in detection.items():
        if detector.startswith("ranking") or "f1" not in scores:
            continue
        ranking = scores if "auroc" in scores else detection["ranking_1_minus_pt"]
        rows.append({
            **{k: config[k] for k in SETTINGS},
            "loss": config["loss"], "hparams": json.dumps(row_hparams(config), sort_keys=True),
            "delay": config["delay_epochs"], "noise_kind": config["noise_kind"],
            "noise_rate": config["noise_rate"], "protocol": config.get("detector", "pt"),
            "seed": config["seed"], "detector": detector,
            **{k: scores[k] for k in ("f1", "precision", "recall", "balanced_accuracy",
                                      "num_flagged")},
            **{k: ranking[k] for k in ("auroc", "average_precision", "precision_at_k")},
            "test_accuracy": summary["test_accuracy"],
            "memorised_fraction": summary["memorised_fraction"], "cell": name,
        })  # fmt: skip
    return rows


def results_markdown(rows: list[dict]) -> str:
    """Mean ± std over seeds per (loss, hparams, delay, noise, protocol, detector)."""
    import numpy as np

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        key = tuple(str(row[k]) for k in ("noise_kind", "noise_rate", "loss", "hparams", "delay",
                                          "protocol", "detector", *SETTINGS))  # fmt: skip
        groups[key].append(row)
    settings = sorted({tuple(str(r[k]) for k in SETTINGS) for r in rows})
    header = "; ".join(", ".join(f"{k}={v}" for k, v in zip(SETTINGS, x, strict=True))
                       for x in settings)  # fmt: skip
    lines = [f"Settings: {header}", "",
             "| noise | loss | delay | protocol | detector | seeds | "
             + " | ".join(METRICS) + " |",
             "|" + "---|" * (6 + len(METRICS))]  # fmt: skip
    for key in sorted(groups, key=lambda k: (k[0], k[1], -np.mean([r["f1"] for r in groups[k]]))):
        kind, rate, loss, hparams, delay, protocol, detector = key[:7]
        group = groups[key]
        cells = []
        for metric in METRICS:
            values = np.array([np.nan if r[metric] in (None, "") else float(r[metric])
                               for r in group])  # fmt: skip
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}")
        hp = ",".join(f"{k}={format_value(v)}" for k, v in json.loads(hparams).items())
        name = f"{loss} {hp}" if hp else loss
        lines.append(
            f"| {kind} {float(rate):g} | {name} | {delay} | {protocol} | {detector} | "
            f"{len(group)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def write_results(workdir: Path) -> list[dict]:
    """``results.csv`` and ``results.md`` from every finished run in ``workdir`` (any sweep)."""
    from robust_losses_jax import records

    rows = []
    for path in sorted(workdir.glob("*/summary.json")):
        config = json.loads((path.parent / "config.json").read_text())
        rows.extend(run_rows(config, json.loads(path.read_text()), path.parent.name))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    records.atomic_write(workdir / "results.csv", lambda f: f.write(buffer.getvalue()))
    text = "Mean ± std over seeds; one row per detector of each protocol.\n\n"
    table = text + results_markdown(rows)
    records.atomic_write(workdir / "results.md", lambda f: f.write(table))
    return rows


def build_parser() -> cli.Parser:
    """The sweep's own flags (the runs' flags come after ``--``)."""
    from robust_losses_jax import config as config_lib

    parser = cli.Parser(prog="robust-losses sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=cli.version_text())
    parser.add_argument("--workdir", default="workdir/sweep", help="where the cells' folders go")
    cli.add_flag(parser, "--plugin", default=None, metavar="MODULE", help=cli.PLUGIN_HELP)
    parser.add_argument(
        "--losses", default=DEFAULT_LOSSES,
        help="loss[:hparam=value,...];... (hyperparameters: the runner's loss flags)",
    )  # fmt: skip
    parser.add_argument("--delays", default="default,0", help="'default' and/or ints (epochs)")
    parser.add_argument("--noise", default=DEFAULT_NOISE, help="kind:rate,...")
    parser.add_argument("--detectors", default="pt,cl", help=detectors_help())
    parser.add_argument("--seeds", default="0,1,2", help="ints")
    cli.add_flag(
        parser, "--preset", default=None, allowed=config_lib.PRESETS,
        help="the runs' settings under the flags after -- (as the runner's --preset), and the "
        "axes it sets that are not typed here",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="list the cells and stop")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True,
        help="the sweep's progress bar",
    )  # fmt: skip
    parser.add_argument(
        "--verbose", action="store_true",
        help="TensorFlow's, absl's and XLA's start-up logs and tfds's progress bars",
    )  # fmt: skip
    parser.add_argument(
        "--stack", action=argparse.BooleanOptionalAction, default=True,
        help="train the models of cells that differ only in seed, noise or loss "
        "hyperparameters together, in one compiled program; --no-stack: one cell "
        "after another (each cell still stacks its own folds unless -- --sequential)",
    )  # fmt: skip
    parser.add_argument("--max-models", type=int, default=16, help="most models in one stack")
    return parser


def plan(
    args: argparse.Namespace, typed: frozenset[str], run_flags: list[str]
) -> tuple[list[Cell], dict[Cell, Any], argparse.Namespace]:
    """The grid's cells, each cell's validated config and the runs' parsed flags, before any
    work starts; ``ValueError`` (one line) for the first bad input. A ``--preset`` sets the axes
    not ``typed``."""
    from robust_losses_jax import config as config_lib

    if args.preset is not None:
        config_lib.preset_values(args.preset)  # An unknown name: the sweep's flag, named.
        if any(flag.partition("=")[0] == "--preset" for flag in run_flags):
            raise ValueError("--preset is given before -- and after it; give it once")
        run_flags = [f"--preset={args.preset}", *run_flags]
    run_args = parse_run_flags(run_flags)
    for axis, value in preset_axes(config_lib.preset_values(run_args.preset)).items():
        if axis not in typed:
            setattr(args, axis, value)
    cells = grid(args)
    if not cells:
        raise ValueError("the grid is empty")
    if args.max_models < 1:
        raise ValueError(f"--max-models must be at least 1, got {args.max_models}")
    return cells, cell_configs(cells, run_flags, Path(args.workdir)), run_args


def train_cells(
    groups: list[list[Cell]], configs: dict[Cell, Any], workdir: Path, data_dir: str | None,
    progress: bool,
) -> None:  # fmt: skip
    """Train each group of cells (one stack a group), rewriting the results table after each."""
    from tqdm.auto import tqdm

    from robust_losses_jax import experiment
    from robust_losses_jax.training.engines import ProgramCache

    bar = tqdm(total=sum(map(len, groups)), desc="sweep", unit="run", disable=not progress)
    cache = ProgramCache()  # Groups with equal settings compile once.
    for group in groups:
        if len(group) == 1:
            experiment.train_and_evaluate(
                configs[group[0]], workdir / group[0].name, data_dir=data_dir,
                progress=False, resume=True, log=lambda _: None, cache=cache,
            )  # fmt: skip
        else:
            experiment.train_and_evaluate_together(
                [configs[c] for c in group], [workdir / c.name for c in group],
                stack_dir(workdir, group), data_dir=data_dir, progress=False,
                log=lambda _: None, cache=cache,
            )  # fmt: skip
        write_results(workdir)
        bar.update(len(group))
    bar.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cli.prepare_process(argv)
    run_flags: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, run_flags = argv[:split], argv[split + 1 :]
    from robust_losses_jax import input_pipeline

    parser = build_parser()
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    try:
        cells, configs, run_args = plan(args, parser.typed, run_flags)
    except (ValueError, OSError, input_pipeline.DatasetUnavailableError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)  # One line.
        return 2
    except SystemExit as error:  # -- --help: the runner's flags.
        return int(error.code or 0)
    todo = [c for c in cells if not (workdir / c.name / "summary.json").exists()]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run")
    if args.dry_run:
        print("\n".join(c.name for c in todo))
        return 0
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"error: --workdir {workdir}: {error}", file=sys.stderr)
        return 2
    xla_setup.enable_compilation_cache(run_args.compilation_cache)  # Cells share programs.
    groups = training_groups(todo, configs, args.max_models if args.stack else 0)
    train_cells(groups, configs, workdir, run_args.data_dir, args.progress)
    rows = write_results(workdir)
    print(f"{len(rows)} rows in {workdir / 'results.csv'}; table in {workdir / 'results.md'}")
    return 0


def detectors_help() -> str:
    """``--detectors``' help: the registered detectors (a plugin's too)."""
    return "the runner's --detector values: " + ", ".join(
        name for name, _ in cli.registered_choices("detectors")
    )


def models_per_run(cfg: Any) -> int:
    """Models a run trains (its detector's ``num_models``: K folds for ``cl``, ...)."""
    from robust_losses_jax import protocols

    return protocols.detector(cfg.detector).num_models(cfg)


def training_groups(cells: list[Cell], configs: dict[Cell, Any], max_models: int) -> list:
    """The cells, in groups whose models train together (``experiment.stack_key``).

    A group holds cells of one stack key, in grid order, up to ``max_models`` models (a cell
    with more is a group of its own); ``max_models`` 0: every cell alone. Cells that cannot join
    a stack (``-- --sequential``, streamed data) are alone.
    """
    from robust_losses_jax import experiment

    if max_models == 0:
        return [[c] for c in cells]
    by_key: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        cfg = configs[cell]
        key = experiment.stack_key(cfg) if experiment.can_stack_runs(cfg) else cell.name
        by_key[key].append(cell)
    groups = []
    for members in by_key.values():
        group: list[Cell] = []
        for cell in members:
            size = sum(models_per_run(configs[c]) for c in group)
            if group and size + models_per_run(configs[cell]) > max_models:
                groups.append(group)
                group = []
            group.append(cell)
        groups.append(group)
    return groups


def stack_dir(workdir: Path, group: list[Cell]) -> Path:
    """Where a group's stack keeps its checkpoints: named by its cells, so a rerun of the same
    unfinished cells resumes it."""
    import hashlib

    digest = hashlib.sha256("\n".join(sorted(c.name for c in group)).encode()).hexdigest()
    return workdir / "stacks" / digest[:16]


if __name__ == "__main__":
    sys.exit(main())
