"""The entry points' command line, built from Config: every flag, the defaults, --help,
--version, presets (run, sweep, find_errors), --tau=auto, one-line errors, a quiet start-up."""

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import robust_losses_jax
from robust_losses_jax import config as config_lib
from robust_losses_jax.commands import cli, find_errors, main, run, sweep

FLAG_FIELDS = {field.name: field for field in cli.flag_fields()}
GROUPS = (*config_lib.FLAG_GROUPS, "multi-host")
# Start-up noise of TensorFlow, absl, XLA and tfds (preparing a dataset) that runs must not print.
NOISE = (
    "oneDNN custom operations",
    "absl::InitializeLog",
    "WARNING:absl",
    "dataset_info.json",
    "Generating splits",
    "Shuffling",
    "examples/s",
)
SWEEP_RUN_FLAGS = ["--dataset=sklearn_digits", "--model=mlp"]


def parse(flags, parser=None):
    """The Config of ``flags``, parsed by the runner's parser (or ``parser``)."""
    parser = parser or run.build_parser()
    return run.build_config(parser.parse_args(flags))


def one_error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def sample(name, folder):
    """A flag setting field ``name`` to a value other than its default, and that value."""
    field, action = FLAG_FIELDS[name], run.build_parser().flag(name)
    flag = cli.flag_name(field)
    if field.metadata.get("parse") is config_lib._matrix_file:
        path = folder / "transition.json"
        path.write_text(json.dumps([[0.75, 0.25], [0.5, 0.5]]))
        return f"{flag}={path}", ((0.75, 0.25), (0.5, 0.5))
    if field.metadata.get("parse") is config_lib._image_size_text:
        return f"{flag}=3", "3x3"
    if isinstance(action, argparse.BooleanOptionalAction):
        value = not field.default  # None (augment): on.
        return (flag if value else f"--no-{flag[2:]}"), value
    if action.allowed:
        value = next(v for v in action.allowed if v != field.default)
        return f"{flag}={value}", value
    if isinstance(field.default, str):
        return f"{flag}=mnist", "mnist"
    if isinstance(field.default, float):
        return f"{flag}={field.default + 0.25!r}", field.default + 0.25
    value = (field.default or 0) + 3
    return f"{flag}={value}", value


def expected_config(**fields):
    """A Config built directly: the named preset's settings (if any) under ``fields``."""
    return config_lib.Config(**{**config_lib.preset_values(fields.get("preset")), **fields})


@pytest.mark.parametrize("name", sorted(FLAG_FIELDS))
def test_each_flag_sets_its_field(name, tmp_path):
    flag, value = sample(name, tmp_path)
    assert parse([flag]) == expected_config(**{name: value}), flag


def test_every_flag_together_sets_every_field(tmp_path):
    flags, values = zip(*(sample(name, tmp_path) for name in FLAG_FIELDS), strict=True)
    want = expected_config(**dict(zip(FLAG_FIELDS, values, strict=True)))
    assert parse(list(flags)) == want
    assert parse(list(reversed(flags))) == want  # Typed flags beat the preset wherever they are.


def test_the_parser_defaults_are_the_config_defaults():
    parser = run.build_parser()
    assert parse([]) == config_lib.Config()
    for name, field in FLAG_FIELDS.items():
        assert parser.get_default(name) == field.default, name


@pytest.mark.parametrize(
    ("flags", "fields"),
    [
        (["--delay=3"], {"delay_epochs": 3}),
        (["--ramp=2"], {"ramp_epochs": 2}),
        (["--l1=0.01"], {"l1_weight": 0.01}),
        (["--train-size=0", "--test-size=0"], {"train_size": None, "test_size": None}),
        (["--train-size=50", "--test-size=20"], {"train_size": 50, "test_size": 20}),
        (
            ["--no-detach", "--augment", "--sequential"],
            {"detach": False, "augment": True, "sequential": True},
        ),
        (["--no-augment"], {"augment": False}),
        (["--aum-rule=mean"], {"aum_rule": "mean"}),
        (
            ["--loss=power", "--gamma=2", "--min-prob=0.1", "--label-clamp=0.2"],
            {"loss": "power", "loss_hparams": {"gamma": 2.0, "min_prob": 0.1, "label_clamp": 0.2}},
        ),
    ],
)
def test_flags_whose_names_or_values_differ_from_the_field(flags, fields):
    assert parse(flags) == config_lib.Config(**fields)


def test_loss_flags_fill_loss_hparams():
    for name in cli.loss_flags():
        flag = f"--{name.replace('_', '-')}=0.5"
        assert parse([flag]) == config_lib.Config(loss_hparams={name: 0.5}), flag


def test_tau_auto_sets_auto_tau_and_no_tau():
    cfg = parse(["--loss=cutoff", "--tau=auto", "--epochs=3"])
    assert cfg.auto_tau and "tau" not in cfg.loss_hparams and cfg.loss_hparams == {}
    config_lib.validate(cfg, num_devices=1)
    cfg = parse(["--loss=cutoff", "--tau=0.1"])
    assert not cfg.auto_tau and cfg.loss_hparams == {"tau": 0.1}


def test_a_bad_value_is_one_line_naming_it_and_exits_2(capsys):
    assert run.main(["--tau=often"]) == 2
    err = one_error_line(capsys)
    assert "--tau" in err and "'often'" in err and "'auto'" in err
    assert run.main(["--epochs=two"]) == 2
    assert "argument --epochs: invalid int value: 'two'" in one_error_line(capsys)
    assert run.main(["--train-size=all"]) == 2
    assert "argument --train-size: invalid int value: 'all'" in one_error_line(capsys)


def test_help_groups_the_flags_and_shows_defaults_and_allowed_values(capsys):
    assert run.main(["--help"]) == 0
    out = capsys.readouterr().out
    text = " ".join(out.split())
    for title in GROUPS:
        assert f"\n{title}:\n" in out, title
    for field in FLAG_FIELDS.values():
        assert cli.flag_name(field) in text, field.name
    assert "--epochs EPOCHS training epochs (default: 20)" in text
    assert "(one of: sgd, adam, adamw; default: adam)" in text
    assert "(one of: reference, mean; default: reference)" in text
    assert "--delay DELAY epochs of cross-entropy before the robust loss (default: 2 for" in text
    assert "--detach, --no-detach" in text and "(default: on)" in text
    assert "(default: 10000)" in text and "--preset PRESET" in text and "paper" in text
    assert "--workdir WORKDIR where the run's files go (default: workdir/run)" in text


def test_find_errors_help_shows_its_own_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        find_errors.build_parser().parse_args(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "whole split (default: 0, the whole split)" in text
    assert "sce; default: gce)" in text and "(one of: pt, cl, aum; default: pt)" in text
    assert "default: workdir/find_errors" in text


def test_version_prints_the_package_version(capsys):
    assert run.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"robust_losses_jax {robust_losses_jax.__version__}"
    assert robust_losses_jax.__version__ == importlib.metadata.version("robust_losses_jax")
    with pytest.raises(SystemExit):
        sweep.main(["--version"])
    assert capsys.readouterr().out.strip() == f"robust_losses_jax {robust_losses_jax.__version__}"


def test_version_without_installed_metadata_is_setup_py_s(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    setup = (Path(robust_losses_jax.__file__).parent.parent / "setup.py").read_text()
    assert robust_losses_jax._version() == re.search(r'version="([^"]+)"', setup).group(1)


# --------------------------------------------------------------------------------------------------
# Presets: Config defaults < an entry point's own defaults < the preset < the flags typed.
# --------------------------------------------------------------------------------------------------

PAPER = {
    "optimizer": "adam",
    "lr": 1e-4,
    "batch_size": 64,
    "epochs": 10,
    "train_size": None,
    "detector": "cl",
    "folds": 5,
    "cl_filter_by": "both",
}


def test_the_paper_preset_and_typed_flags_over_it():
    assert config_lib.PRESETS["paper"] == PAPER
    cfg = parse(["--preset=paper", "--epochs=3"])
    assert cfg == config_lib.Config(**{**PAPER, "epochs": 3}, preset="paper")
    assert parse(["--preset=paper", "--lr=1e-3"]).lr == 1e-3
    assert parse(["--lr=1e-3", "--preset=paper"]).lr == 1e-3  # Wherever the flag is.
    # A flag typed wins even where its value is the default.
    cfg = parse(["--preset=paper", "--batch-size=128", "--train-size=10000", "--detector=pt"])
    assert (cfg.batch_size, cfg.train_size, cfg.detector, cfg.lr) == (128, 10_000, "pt", 1e-4)


def test_config_json_records_the_preset():
    assert parse(["--preset=paper"]).to_json()["preset"] == "paper"
    assert parse([]).to_json()["preset"] is None


def test_an_unknown_preset_is_one_line_listing_the_presets(tmp_path, capsys):
    assert run.main(["--preset=fast", f"--workdir={tmp_path / 'w'}"]) == 2
    err = one_error_line(capsys)
    assert "'fast'" in err and "choose from paper" in err
    assert not (tmp_path / "w").exists()


def find_errors_config(flags):
    return find_errors.build_config(find_errors.build_parser().parse_args(flags))


def test_find_errors_layers_its_defaults_under_the_preset():
    audit = {
        "noise_rate": 0.0,
        "detector": "pt",
        "train_size": None,
        "loss": "gce",
        "epochs": 10,
        "holdout": None,
        "loss_hparams": {},
    }
    assert find_errors_config([]) == config_lib.Config(**audit)
    assert find_errors_config(["--preset=paper"]) == config_lib.Config(
        **{**audit, **PAPER}, preset="paper"
    )
    cfg = find_errors_config(
        ["--preset=paper", "--noise-rate=0.2", "--train-size=500", "--epochs=2", "--loss=ce"]
    )
    assert (cfg.noise_rate, cfg.train_size, cfg.epochs, cfg.loss) == (0.2, 500, 2, "ce")
    assert cfg.loss_hparams == {} and cfg.lr == 1e-4 and cfg.cl_filter_by == "both"


def sweep_cells(capsys, argv):
    """The cells ``sweep.main(argv)`` lists (a dry run)."""
    assert sweep.main(argv) == 0
    return capsys.readouterr().out.split("\n", 1)[1].split()


@pytest.mark.parametrize("where", ["before", "after"])
def test_sweep_preset_sets_the_runs_and_the_detectors_axis(tmp_path, capsys, where):
    preset = ["--preset=paper"]
    grid = [
        "--losses=ce",
        "--delays=0",
        "--noise=symmetric:0.2",
        "--seeds=0",
        "--dry-run",
        f"--workdir={tmp_path}",
    ]
    if where == "before":
        argv = [*preset, *grid, "--", *SWEEP_RUN_FLAGS]
    else:
        argv = [*grid, "--", *preset, *SWEEP_RUN_FLAGS]
    assert sweep_cells(capsys, argv) == ["ce_d0_symmetric0.2_cl_s0"]
    assert sweep_cells(capsys, ["--detectors=pt,cl", *argv]) == [
        "ce_d0_symmetric0.2_pt_s0",
        "ce_d0_symmetric0.2_cl_s0",
    ]
    cells = sweep.grid(
        argparse.Namespace(
            losses="ce", delays="0", noise="symmetric:0.2", detectors="cl", seeds="0"
        )
    )
    (cfg,) = sweep.cell_configs(cells, [*preset, *SWEEP_RUN_FLAGS], tmp_path).values()
    assert cfg == config_lib.Config(
        **PAPER,
        loss="ce",
        noise_rate=0.2,
        delay_epochs=0,
        dataset="sklearn_digits",
        model="mlp",
        preset="paper",
    )


def test_sweep_preset_given_twice_is_refused(tmp_path, capsys):
    argv = ["--preset=paper", "--dry-run", f"--workdir={tmp_path}", "--", "--preset=paper"]
    assert sweep.main(argv) == 2
    assert "--preset is given before -- and after it" in one_error_line(capsys)
    assert sweep.main(["--preset=fast", "--dry-run", f"--workdir={tmp_path}"]) == 2
    assert "unknown preset 'fast'" in one_error_line(capsys)


def test_sweep_cells_are_the_base_config_with_the_cells_axes(tmp_path):
    """Each cell's Config (the base with its axes replaced) is the one the runner builds from
    the cell's flags."""
    namespace = argparse.Namespace(
        losses="ce;power:gamma=0.5;cutoff:tau=0.1,beta=2",
        delays="default,1",
        noise="symmetric:0.3,asymmetric:0.1",
        detectors="pt,aum",
        seeds="0,5",
    )
    flags = [*SWEEP_RUN_FLAGS, "--epochs=3", "--lr=0.01", "--no-detach", "--preset=paper"]
    base = run.build_config(run.parse_args(flags))
    for cell in sweep.grid(namespace):
        assert cell.config(base) == run.build_config(run.parse_args([*cell.flags(), *flags]))


# --------------------------------------------------------------------------------------------------
# A quiet start-up.
# --------------------------------------------------------------------------------------------------


def test_verbose_is_found_as_argparse_finds_it():
    assert cli.wants_verbose(["--epochs=2", "--verbose"])
    assert cli.wants_verbose(["--", "--verb"])
    assert not cli.wants_verbose(["--ver", "--version", "--epochs=2"])


def test_after_import_calls_back_once_the_module_has_run(tmp_path, monkeypatch):
    (tmp_path / "cli_probe_module.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    cli.after_import("cli_probe_module", lambda module: seen.append(module.VALUE))
    assert seen == []
    import cli_probe_module  # noqa: F401

    assert seen == [42]
    assert not any(getattr(f, "name", None) == "cli_probe_module" for f in sys.meta_path)
    cli.after_import("json", lambda module: seen.append(module.__name__))  # Imported already.
    assert seen == [42, "json"]
    monkeypatch.delitem(sys.modules, "cli_probe_module")


def test_after_import_asked_twice_calls_back_once(tmp_path, monkeypatch):
    """Each entry point's start-up asks for the same callback; a second ask must not stack a
    second finder (nor a second call)."""
    (tmp_path / "cli_probe_twice.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def record(module):
        seen.append(module.VALUE)

    cli.after_import("cli_probe_twice", record)
    cli.after_import("cli_probe_twice", record)
    assert sum(getattr(f, "name", None) == "cli_probe_twice" for f in sys.meta_path) == 1
    import cli_probe_twice  # noqa: F401

    assert seen == [7]
    monkeypatch.delitem(sys.modules, "cli_probe_twice")


def run_subprocess(*args, timeout=300):
    """``python -m ...args`` with the environment the quiet start-up would set left out."""
    env = {k: v for k, v in os.environ.items() if k not in cli.QUIET_ENVIRONMENT}
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "command",
    [
        ["robust_losses_jax", "run"],
        ["robust_losses_jax", "sweep"],
        ["robust_losses_jax", "find-errors"],
        ["robust_losses_jax", "report"],
        ["robust_losses_jax", "evidence"],
        ["experiments.run"],  # The checkout's entry points.
        ["experiments.find_errors"],
    ],
)
@pytest.mark.slow
def test_help_is_quiet(command):
    done = run_subprocess(*command, "--help", timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout
    assert done.stderr == ""


def test_the_command_lists_its_subcommands_and_refuses_unknown_ones():
    done = run_subprocess("robust_losses_jax", "--help")
    assert done.returncode == 0
    for name in main.SUBCOMMANDS:
        assert f"  {name} " in done.stdout
    done = run_subprocess("robust_losses_jax", "train")
    assert done.returncode == 2
    assert (
        done.stderr
        == "error: unknown subcommand 'train'; one of: " + ", ".join(main.SUBCOMMANDS) + "\n"
    )
    assert run_subprocess("robust_losses_jax").returncode == 2  # No subcommand: usage, exit 2.
    done = run_subprocess("robust_losses_jax", "--version")
    assert done.returncode == 0 and done.stdout.startswith("robust_losses_jax ")


@pytest.mark.slow
def test_a_run_preparing_its_dataset_is_quiet_unless_verbose(tmp_path):
    """A tiny run in a fresh tfds data directory (so tfds prepares the dataset): stderr holds the
    training progress bar only; stdout ends with the summary. --verbose brings the noise back."""
    flags = [
        "robust_losses_jax",
        "run",
        "--dataset=sklearn_digits",
        "--model=mlp",
        "--epochs=1",
        "--train-size=0",
        "--batch-size=64",
        "--checkpoint-min-interval=0",
    ]
    done = run_subprocess(*flags, f"--data-dir={tmp_path / 'tfds'}", f"--workdir={tmp_path / 'q'}")
    assert done.returncode == 0, done.stderr
    assert "training (1 model)" in done.stderr  # The progress bar stays.
    assert "detection F1" in done.stdout.strip().splitlines()[-1]
    for noise in NOISE:
        assert noise not in done.stderr and noise not in done.stdout, noise
    done = run_subprocess(
        *flags,
        "--verbose",
        f"--data-dir={tmp_path / 'tfds_verbose'}",
        f"--workdir={tmp_path / 'v'}",
    )
    assert done.returncode == 0, done.stderr
    assert any(noise in done.stderr for noise in NOISE), done.stderr


def test_importing_the_entry_points_changes_nothing():
    """The command, run, sweep and find_errors set XLA's flags and quiet the logs in main(), not
    on import: importing them leaves the environment alone and starts neither JAX nor TensorFlow."""
    code = (
        "import os, sys; before = dict(os.environ)\n"
        "import robust_losses_jax.commands.main, robust_losses_jax.commands.run\n"
        "import robust_losses_jax.commands.sweep, robust_losses_jax.commands.find_errors\n"
        "import experiments.run, experiments.sweep, experiments.find_errors\n"
        "changed = sorted(k for k, v in os.environ.items() if before.get(k) != v)\n"
        "loaded = [m for m in ('jax', 'tensorflow', 'tensorflow_datasets') if m in sys.modules]\n"
        "print(changed, loaded)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert out.stdout.strip() == "[] []", out.stdout + out.stderr
