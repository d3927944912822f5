"""experiments.sweep and experiments.report end to end on a tiny real grid (sklearn digits)."""

import csv
import json

import pytest

from experiments import report, sweep

RUN_FLAGS = ["--dataset=sklearn_digits", "--model=mlp", "--batch-size=64", "--eval-batch-size=256",
             "--train-size=0", "--epochs=2"]  # fmt: skip
GRID = ["--losses=ce;power:gamma=0.5;power:gamma=2;cutoff:tau=0.1", "--delays=1",
        "--noise=symmetric:0.2", "--detectors=pt", "--seeds=0", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    assert sweep.main([*GRID, f"--workdir={workdir}", "--", *RUN_FLAGS]) == 0
    return workdir


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


def test_report_on_a_folder_without_runs_exits_2(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "holds no finished run" in capsys.readouterr().err
