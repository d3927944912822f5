"""experiments.sweep and experiments.report end to end on a tiny real grid (sklearn digits)."""

import argparse
import csv
import json

import numpy as np
import pytest

from robust_losses_jax.commands import report, sweep

RUN_FLAGS = ["--dataset=sklearn_digits", "--model=mlp", "--batch-size=64", "--eval-batch-size=256",
             "--train-size=0", "--epochs=2"]  # fmt: skip
GRID = ["--losses=ce;power:gamma=0.5;power:gamma=2;cutoff:tau=0.1", "--delays=1",
        "--noise=symmetric:0.2", "--detectors=pt", "--seeds=0", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    assert sweep.main([*GRID, f"--workdir={workdir}", "--", *RUN_FLAGS]) == 0
    return workdir


@pytest.mark.slow
def test_sweep_writes_one_row_per_cell_and_detector(swept):
    rows = list(csv.DictReader((swept / "results.csv").open()))
    cells = {row["cell"] for row in rows}
    assert len(cells) == 4
    assert {row["detector"] for row in rows} == {"argmax_neq_given", "pt_below_0.5"}
    assert len(rows) == 8
    for row in rows:
        summary = json.loads((swept / row["cell"] / "summary.json").read_text())
        assert float(row["f1"]) == pytest.approx(summary["detection"][row["detector"]]["f1"])
        assert float(row["test_accuracy"]) == pytest.approx(summary["test_accuracy"])
    power = [r for r in rows if r["loss"] == "power"]
    assert {json.loads(r["hparams"])["gamma"] for r in power} == {0.5, 2.0}
    table = (swept / "results.md").read_text()
    assert "power gamma=0.5" in table and "± 0.000" in table  # One seed: std 0.


@pytest.mark.slow  # Its fixture trains a sweep.
def test_sweep_resumes_without_rerunning_finished_cells(swept, capsys):
    mtimes = {p: p.stat().st_mtime_ns for p in swept.glob("*/summary.json")}
    assert sweep.main([*GRID, f"--workdir={swept}", "--", *RUN_FLAGS]) == 0
    assert "4 cells, 4 finished, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in swept.glob("*/summary.json")} == mtimes


def test_sweep_checks_every_cell_before_any_work(tmp_path, capsys):
    workdir = tmp_path / "bad"
    grid = ["--losses=ce;power:gamma=-1", "--noise=symmetric:0.2", "--detectors=pt", "--seeds=0"]
    assert sweep.main([*grid, f"--workdir={workdir}", "--", *RUN_FLAGS]) == 2
    assert "gamma=-1.0 is outside its domain" in capsys.readouterr().err
    assert not workdir.exists()


@pytest.mark.slow
def test_report_writes_every_plot(swept):
    assert report.main([str(swept)]) == 0
    plots = swept / "plots"
    expected = {"detection_per_epoch.png", "f1_vs_gamma.png", "f1_vs_tau.png"}
    for cell in {p.parent.name for p in swept.glob("*/summary.json")}:
        expected |= {f"{cell}_pt_histograms.png", f"{cell}_suspected_errors.png"}
    written = {p.name for p in plots.glob("*.png")}
    assert written == expected
    for name in expected:
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_plots_runs_that_test_every_few_epochs(tmp_path):
    """With --eval-every some epochs have no test accuracy and no p_t: the curves and the
    histograms skip them."""
    grid = ["--losses=ce", "--delays=0", "--noise=symmetric:0.2", "--detectors=pt", "--seeds=0",
            "--no-progress"]  # fmt: skip
    flags = [*RUN_FLAGS[:-1], "--epochs=3", "--eval-every=2"]
    assert sweep.main([*grid, f"--workdir={tmp_path}", "--", *flags]) == 0
    (cell,) = [p.parent for p in tmp_path.glob("*/summary.json")]
    lines = [json.loads(x) for x in (cell / "metrics.jsonl").read_text().splitlines()]
    assert ["test_accuracy" in x for x in lines] == [False, True, True]
    assert ["auroc_1_minus_pt" in x for x in lines] == [False, True, True]
    history = np.load(cell / "train_record.npz")["p_t_history"]
    assert np.isnan(history).all(axis=1).tolist() == [True, False, False]
    assert report.main([str(tmp_path)]) == 0
    assert (tmp_path / "plots" / "detection_per_epoch.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "plots" / f"{cell.name}_pt_histograms.png").read_bytes()[:4] == b"\x89PNG"


def test_report_on_a_folder_without_runs_exits_2(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "holds no finished run" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Bad inputs: exit code 2, one line naming the bad value, nothing written.
# --------------------------------------------------------------------------------------------------

SMALL_GRID = {"--losses": "ce", "--delays": "0", "--noise": "symmetric:0.2", "--detectors": "pt",
              "--seeds": "0"}  # fmt: skip


def sweep_argv(workdir, flags=(), run_flags=()):
    """SMALL_GRID with ``flags`` (``--name=value`` replaces that axis; others are added)."""
    grid, extra = dict(SMALL_GRID), []
    for flag in flags:
        name, eq, value = flag.partition("=")
        if eq and name in grid:
            grid[name] = value
        else:
            extra.append(flag)
    return [*(f"{k}={v}" for k, v in grid.items()), *extra, "--no-progress",
            f"--workdir={workdir}", "--", *RUN_FLAGS, *run_flags]  # fmt: skip


def exit_code(argv):
    """``sweep.main``'s exit code (its own argparse exits, as under ``python -m``)."""
    try:
        return sweep.main(argv)
    except SystemExit as error:
        return error.code


# Cases with --dry-run show that the dry run checks every cell as the real one does (a case the
# sweep failed to refuse would stop there instead of training).
BAD_SWEEPS = [
    pytest.param(["--losses=ce;nope"], [], "Unknown loss 'nope'", id="unknown-loss"),
    pytest.param(["--losses=power:gamma=abc"], [],
                 "loss hyperparameter 'gamma=abc' in 'power:gamma=abc' is not a number",
                 id="loss-hparam-not-a-number"),
    pytest.param(["--losses=power:gamma"], [],
                 "loss hyperparameter 'gamma' in 'power:gamma' must be key=value",
                 id="loss-hparam-not-key-value"),
    pytest.param(["--losses=ce;power:gamma=-1"], [], "gamma=-1.0 is outside its domain",
                 id="gamma-negative"),
    pytest.param(["--losses=power:gamma=nan"], [], "gamma=nan is outside its domain",
                 id="gamma-nan"),
    pytest.param(["--losses=focal:gamma=-0.5"], [], "focal: gamma=-0.5 is outside its domain",
                 id="focal-gamma-negative"),
    pytest.param(["--losses=cutoff:tau=1"], [],
                 "tau=1.0 is outside its domain; allowed: 0 <= tau < 1", id="tau-one"),
    pytest.param(["--losses=cutoff:tau=-0.1"], [], "tau=-0.1 is outside its domain",
                 id="tau-negative"),
    pytest.param(["--losses=gce:gamma=2"], [], "does not take gamma", id="hparam-not-of-loss"),
    pytest.param(["--losses=;"], [], "the grid is empty", id="no-losses"),
    pytest.param(["--delays=default,soon"], [], "delay 'soon' must be 'default' or an int",
                 id="delay-not-int"),
    pytest.param(["--delays=-1"], [], "delay -1 must be >= 0", id="delay-negative"),
    pytest.param(["--noise=symmetric"], [], "noise setting 'symmetric' must be kind:rate",
                 id="noise-without-rate"),
    pytest.param(["--noise=symmetric:high"], [],
                 "noise setting 'symmetric:high' must be kind:rate", id="noise-rate-not-a-number"),
    pytest.param(["--noise=symmetric:0.2,symmetric:1"], [], "noise rate 1.0 must be in [0, 1)",
                 id="noise-rate-one"),
    pytest.param(["--noise=symmetric:-0.1"], [], "noise rate -0.1 must be in [0, 1)",
                 id="noise-rate-negative"),
    pytest.param(["--noise=symmetric:nan"], [], "noise rate nan must be in [0, 1)",
                 id="noise-rate-nan"),
    pytest.param(["--noise=pairflip:0.2"], [], "Unknown noise kind 'pairflip'",
                 id="unknown-noise-kind"),
    pytest.param(["--noise=transition:0"], [], "noise kind 'transition' needs a transition matrix",
                 id="transition-without-matrix"),
    pytest.param(["--noise=transition:0"], ["--transition={tmp}/t.json"],
                 "transition row 1 sums to 0.5", id="transition-not-stochastic"),
    pytest.param(["--detectors=pt,loss"], [], "Unknown detector 'loss'", id="unknown-detector"),
    pytest.param(["--detectors=cl"], ["--folds=1"], "folds 1 must be >= 2", id="folds-one"),
    pytest.param(["--detectors=aum"], ["--aum-percentile=0"],
                 "aum percentile 0.0 must be in (0, 100]", id="aum-percentile-zero"),
    pytest.param(["--seeds=0,1.5"], [], "'1.5'", id="seed-not-int"),
    pytest.param(["--seeds="], [], "the grid is empty", id="no-seeds"),
    pytest.param([], ["--model=vgg"], "Unknown model 'vgg'", id="unknown-model"),
    pytest.param([], ["--optimizer=rmsprop"], "Unknown optimizer 'rmsprop'",
                 id="unknown-optimizer"),
    pytest.param([], ["--epochs=0"], "epochs 0 must be >= 1", id="epochs-zero"),
    pytest.param([], ["--batch-size=60"],
                 "batch size 60 is not a positive multiple of the device count 8",
                 id="batch-size-not-divisible"),
    pytest.param([], ["--eval-batch-size=100"],
                 "eval batch size 100 is not a positive multiple of the device count 8",
                 id="eval-batch-size-not-divisible"),
    pytest.param([], ["--pt-threshold=1"], "p_t threshold 1.0 must be in (0, 1)",
                 id="pt-threshold-one"),
    pytest.param([], ["--lr=0"], "learning rate 0.0 must be > 0", id="lr-zero"),
    pytest.param(["--dry-run"], ["--dataset=nope"], "Unknown dataset 'nope'",
                 id="unknown-dataset"),
    pytest.param(["--noise=asymmetric:0.2", "--dry-run"], [],
                 "No asymmetric map for dataset 'sklearn_digits'; known: mnist",
                 id="asymmetric-without-map"),
    pytest.param(["--losses=ce:noise_rate=0.9", "--dry-run"], [],
                 "loss hyperparameter 'noise_rate' in 'ce:noise_rate=0.9' is not one of gamma, "
                 "tau", id="loss-hparam-is-a-run-flag"),
    pytest.param(["--losses=power:gam=2", "--dry-run"], [],
                 "loss hyperparameter 'gam' in 'power:gam=2' is not one of gamma",
                 id="loss-hparam-abbreviated"),
    pytest.param(["--losses=power:gamma=0.5,gamma=2", "--dry-run"], [],
                 "loss hyperparameter 'gamma' is repeated in 'power:gamma=0.5,gamma=2'",
                 id="loss-hparam-repeated"),
    pytest.param(["--losses=ce:foo=1"], [],
                 "loss hyperparameter 'foo' in 'ce:foo=1' is not one of", id="loss-hparam-unknown"),
    pytest.param(["--dry-run"], ["--seed=7"], "run flag --seed=7 after -- overrides what the "
                 "sweep sets per cell; use the sweep's --seeds", id="run-flag-overrides-seeds"),
    pytest.param(["--dry-run"], ["--loss=power"], "--loss=power after -- overrides what the sweep "
                 "sets per cell; use the sweep's --losses", id="run-flag-overrides-losses"),
    pytest.param(["--dry-run"], ["--gamma=2"], "--gamma=2 after -- overrides what the sweep sets "
                 "per cell; use the sweep's --losses (per loss: --losses=LOSS:gamma=VALUE)",
                 id="run-flag-overrides-loss-hparam"),
    pytest.param(["--dry-run"], ["--min-prob", "0.1"], "--min-prob after -- overrides what the "
                 "sweep sets per cell; use the sweep's --losses (per loss: "
                 "--losses=LOSS:min_prob=VALUE)", id="run-flag-overrides-min-prob"),
    pytest.param(["--dry-run"], ["--delay=3"], "use the sweep's --delays",
                 id="run-flag-overrides-delays"),
    pytest.param(["--dry-run"], ["--noise-rate=0.4"], "use the sweep's --noise",
                 id="run-flag-overrides-noise-rate"),
    pytest.param(["--dry-run"], ["--noise-kind", "asymmetric"], "use the sweep's --noise",
                 id="run-flag-overrides-noise-kind"),
    pytest.param(["--dry-run"], ["--detector=cl"], "use the sweep's --detectors",
                 id="run-flag-overrides-detectors"),
    pytest.param(["--dry-run"], ["--workdir=elsewhere"], "use the sweep's --workdir before --",
                 id="run-flag-overrides-workdir"),
    pytest.param(["--dry-run"], ["--see=7"], "unrecognized arguments: --see=7",
                 id="run-flag-abbreviated"),
    pytest.param(["--dry-run"], ["--overwrite"], "--overwrite after -- is not for sweeps",
                 id="run-flag-overwrite"),
    pytest.param(["--dry-run"], ["--num-processes=2"], "the sweep runs in one process",
                 id="run-flag-multi-host"),
    pytest.param([], ["--epochs=two"], "argument --epochs: invalid int value: 'two'",
                 id="run-flag-not-a-number"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "run_flags", "message"), BAD_SWEEPS)
def test_bad_sweep_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path, capsys, flags, run_flags, message
):
    (tmp_path / "t.json").write_text(json.dumps([[1.0, 0.0], [0.25, 0.25]]))
    run_flags = [f.format(tmp=tmp_path) for f in run_flags]
    workdir = tmp_path / "sweep"
    assert exit_code(sweep_argv(workdir, flags, run_flags)) == 2
    assert not workdir.exists()
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and "error: " in err, err


def a_cell(run_flags=()):
    """The single cell of SMALL_GRID and its config with ``run_flags`` added."""
    from robust_losses_jax.commands import run

    args = argparse.Namespace(**{k[2:]: v for k, v in SMALL_GRID.items()})
    (cell,) = sweep.grid(args)
    return cell, run.build_config(run.parse_args([*cell.flags(), *RUN_FLAGS, *run_flags]))


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        (lambda: json.dumps(a_cell(["--model=small_cnn"])[1].to_json()),
         "holds a run with a different config (model: 'small_cnn' -> 'mlp')"),
        (lambda: "{not json", "config.json is unreadable"),
    ],
    ids=["other-config", "unreadable-config"],
)  # fmt: skip
def test_a_cell_folder_holding_another_run_is_refused(tmp_path, capsys, config_text, message):
    workdir = tmp_path / "sweep"
    cell_dir = workdir / a_cell()[0].name
    cell_dir.mkdir(parents=True)
    (cell_dir / "config.json").write_text(config_text())
    before = snapshot(workdir)
    assert exit_code(sweep_argv(workdir)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert snapshot(workdir) == before  # Untouched.


def test_a_refusal_advises_only_flags_the_sweep_accepts(tmp_path, capsys):
    workdir = tmp_path / "sweep"
    cell_dir = workdir / a_cell()[0].name
    cell_dir.mkdir(parents=True)
    (cell_dir / "config.json").write_text(
        json.dumps(a_cell(["--epochs=3", "--lr=0.1"])[1].to_json())
    )
    assert exit_code(sweep_argv(workdir)) == 2
    err = capsys.readouterr().err
    assert f"move {cell_dir} away or use another --workdir" in err, err
    for flag in ("--overwrite", "--resume"):  # The runner's flags; the sweep has neither.
        if flag in err:
            assert exit_code(sweep_argv(workdir, [flag, "--dry-run"])) == 0


@pytest.mark.parametrize(
    ("file", "workdir", "message"),
    [
        ("sweep", "sweep", "is a file, not a folder"),
        ("sweep", "sweep/inner", "is a file inside the file"),
        ("sweep/CELL", "sweep", "holds a file CELL where cell CELL goes"),
    ],
    ids=["workdir", "inside-a-file", "cell-folder"],
)
def test_a_workdir_that_is_a_file_is_refused(tmp_path, capsys, file, workdir, message):
    cell = a_cell()[0].name
    file, workdir = (tmp_path / x.replace("CELL", cell) for x in (file, workdir))
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("not a folder")
    before = snapshot(tmp_path)
    assert exit_code(sweep_argv(workdir)) == 2
    err = capsys.readouterr().err.strip()
    assert str(workdir) in err and message.replace("CELL", cell) in err, err
    assert len(err.splitlines()) == 1, err
    assert snapshot(tmp_path) == before


def test_legitimate_run_flags_pass(tmp_path, capsys):
    workdir = tmp_path / "sweep"
    run_flags = ["--data-placement=stream", "--sequential", "--no-detach", "--ramp", "1",
                 "--cl-filter-by", "both"]  # fmt: skip
    assert exit_code(sweep_argv(workdir, ["--dry-run"], run_flags)) == 0
    assert "1 cells, 0 finished, 1 to run" in capsys.readouterr().out
    assert not workdir.exists()


STACK_GRID = ["--losses=ce;power:gamma=0.5;power:gamma=2", "--delays=1", "--noise=symmetric:0.3",
              "--detectors=pt,cl,aum", "--seeds=0,1", "--no-progress"]  # fmt: skip
STACK_RUN_FLAGS = [*RUN_FLAGS[:-1], "--epochs=2", "--folds=3"]


@pytest.fixture(scope="module")
def stacked_and_not(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacking")
    for name, flags in (("stacked", ["--max-models=9"]), ("alone", ["--no-stack"])):
        argv = [*STACK_GRID, *flags, f"--workdir={root / name}", "--", *STACK_RUN_FLAGS]
        assert sweep.main(argv) == 0
    return root / "stacked", root / "alone"


@pytest.mark.slow
def test_stacked_sweep_cells_equal_cells_trained_alone(stacked_and_not):
    """Seeds x gamma cells whose models trained in one stack (folds and AUM runs included)
    give what each cell trained alone gives, file by file."""
    stacked, alone = stacked_and_not
    rows = {(r["cell"], r["detector"]): r for r in csv.DictReader((stacked / "results.csv").open())}
    ref = {(r["cell"], r["detector"]): r for r in csv.DictReader((alone / "results.csv").open())}
    assert rows.keys() == ref.keys() and len({cell for cell, _ in rows}) == 18
    for key, row in rows.items():
        for column in ("f1", "precision", "recall", "auroc", "test_accuracy"):
            if row[column]:
                assert float(row[column]) == pytest.approx(float(ref[key][column]), abs=1e-6)
    for cell in {cell for cell, _ in rows}:
        got, want = (
            np.load(stacked / cell / "predictions.npz"),
            np.load(alone / cell / "predictions.npz"),
        )
        np.testing.assert_allclose(got["p_t"], want["p_t"], atol=2e-5)
        got_lines = (stacked / cell / "metrics.jsonl").read_text().splitlines()
        want_lines = (alone / cell / "metrics.jsonl").read_text().splitlines()
        assert len(got_lines) == len(want_lines) > 0
        for a, b in zip(got_lines, want_lines, strict=True):
            a, b = json.loads(a), json.loads(b)
            assert a.get("run") == b.get("run") and a["epoch"] == b["epoch"]
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        records = sorted(p.name for p in (stacked / cell).glob("train_record*.npz"))
        assert records == sorted(p.name for p in (alone / cell).glob("train_record*.npz"))


@pytest.mark.slow  # Its fixture trains a sweep.
def test_stacks_group_cells_by_loss_and_protocol_up_to_max_models(stacked_and_not):
    stacked, alone = stacked_and_not
    # ce: pt (2 cells), cl (2 x 3 folds), aum (2 x 2 runs); power (gamma 0.5, 2 x seeds 0, 1):
    # pt (4 cells), cl (3 cells = 9 folds at --max-models=9, then one cell alone), aum (8 runs):
    # 6 stacks.
    assert len(list((stacked / "stacks").iterdir())) == 6
    assert all(len(list(d.glob("checkpoints_stack"))) == 1 for d in (stacked / "stacks").iterdir())
    assert not (alone / "stacks").exists()


def test_training_groups_respect_max_models_and_sequential(tmp_path):
    namespace = argparse.Namespace(
        losses="power:gamma=1;power:gamma=2", delays="1", noise="symmetric:0.2",
        detectors="cl", seeds="0,1,2",
    )  # fmt: skip
    cells = sweep.grid(namespace)
    configs = sweep.cell_configs(cells, ["--folds=3", *RUN_FLAGS], tmp_path)
    sizes = [len(g) for g in sweep.training_groups(cells, configs, max_models=7)]
    assert sizes == [2, 2, 2]  # 3 folds a cell: two cells (6 models) per stack of at most 7.
    assert [len(g) for g in sweep.training_groups(cells, configs, max_models=2)] == [1] * 6
    assert [len(g) for g in sweep.training_groups(cells, configs, max_models=0)] == [1] * 6
    sequential = sweep.cell_configs(cells, ["--folds=3", "--sequential", *RUN_FLAGS], tmp_path)
    assert [len(g) for g in sweep.training_groups(cells, sequential, max_models=16)] == [1] * 6
    assert sweep.main([
        "--max-models=0", "--detectors=pt", "--seeds=0", f"--workdir={tmp_path / 'w'}",
    ]) == 2  # fmt: skip


def test_tau_auto_cells_choose_tau_and_their_rows_say_so():
    from robust_losses_jax.config import Config

    ((name, hparams),) = sweep.parse_losses("cutoff:tau=auto")
    assert (name, hparams) == ("cutoff", {"tau": "auto"})
    cell = sweep.Cell(name, tuple(hparams.items()), "default", "symmetric", 0.2, "pt", 0)
    cfg = cell.config(Config())
    assert cfg.auto_tau and "tau" not in cfg.loss_hparams
    assert cell.name == "cutoff_tauauto_ddefault_symmetric0.2_pt_s0"
    assert sweep.row_hparams(cfg.to_json())["tau"] == "auto"
    with pytest.raises(ValueError, match="is not a number"):
        sweep.parse_losses("cutoff:gamma=auto")
