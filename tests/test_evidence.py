"""experiments.evidence: the verdict table from a small fake sweep with known answers."""

import csv
import json
from pathlib import Path

import pytest

from robust_losses_jax.commands import evidence

FIELDS = ("loss", "hparams", "delay", "noise_kind", "noise_rate", "protocol", "detector", "seed",
          "f1")  # fmt: skip


def rows_of(loss, hparams, f1s, protocol="pt", detector="argmax_neq_given", noise=0.2):
    return [
        {"loss": loss, "hparams": json.dumps(hparams), "delay": "0", "noise_kind": "symmetric",
         "noise_rate": str(noise), "protocol": protocol, "detector": detector, "seed": str(s),
         "f1": str(f1)}
        for s, f1 in enumerate(f1s)
    ]  # fmt: skip


ROWS = [
    *rows_of("cross_entropy", {}, [0.60, 0.62, 0.61]),
    *rows_of("power", {"gamma": 0.5, "tau": 0.0}, [0.80, 0.81, 0.79]),  # Beats CE final only.
    *rows_of("cutoff", {"tau": 0.1}, [0.61, 0.60, 0.63]),  # Within the spread: neither.
    *rows_of("gce", {"q": 0.7}, [0.40, 0.41, 0.39]),  # Loses.
    *rows_of("sce", {"alpha": 0.1, "beta": 1.0, "label_clamp": 1e-4}, [0.95] * 3),  # Beats best.
    *rows_of("mae", {}, [0.99]),  # One seed: no verdict.
    *rows_of("cross_entropy", {}, [0.80, 0.81], protocol="cl", detector="confident_learning"),
    *rows_of("power", {"gamma": 0.5, "tau": 0.0}, [0.70, 0.71], protocol="cl",
             detector="confident_learning"),
]  # fmt: skip
CE_BEST = {"symmetric 0.2": [0.85, 0.86, 0.84]}
CE_BEST_STATS = evidence.best_epoch_stats(CE_BEST)
ROOT = Path(__file__).resolve().parent.parent


def test_verdict_known_answers():
    entries = {(e["protocol"], e["loss"]): e for e in evidence.verdict(ROWS, CE_BEST_STATS)}
    power = entries[("pt", "power gamma=0.5")]
    assert power["beats_final"] and not power["beats_best"] and not power["loses"]
    assert power["f1"] == pytest.approx(0.80) and power["ce_f1"] == pytest.approx(0.61)
    cutoff = entries[("pt", "cutoff tau=0.1")]
    assert (cutoff["beats_final"], cutoff["beats_best"], cutoff["loses"]) == (False,) * 3
    assert entries[("pt", "gce q=0.7")]["loses"]
    sce = entries[("pt", evidence.SCE.loss)]
    assert sce["beats_final"] and sce["beats_best"]
    mae = entries[("pt", "mae")]
    assert (mae["beats_final"], mae["beats_best"], mae["loses"]) == (None,) * 3
    cl = entries[("cl", "power gamma=0.5")]
    assert cl["loses"] and cl["beats_best"] is None and cl["ce_best"] is None


def test_verdict_markdown_names_winners_losers_and_none():
    text = evidence.verdict_markdown(evidence.verdict(ROWS, CE_BEST_STATS))
    pt_line = next(x for x in text.splitlines() if "pt / argmax_neq_given" in x)
    cells = [c.strip() for c in pt_line.split("|")[1:-1]]
    assert cells[2] == "0.610 ± 0.008" and cells[3] == "0.850 ± 0.008"
    assert cells[4].startswith("power gamma=0.5 (0.800") and "sce" in cells[4]
    assert cells[5].startswith("sce") and "power" not in cells[5]
    assert cells[6].startswith("gce q=0.7")
    cl_line = next(x for x in text.splitlines() if "cl / confident_learning" in x)
    cl_cells = [c.strip() for c in cl_line.split("|")[1:-1]]
    assert cl_cells[3] == "n/a" and cl_cells[4] == "none" and cl_cells[5] == "n/a"


def test_compare_by_twice_the_larger_spread():
    assert evidence.compare((0.80, 0.01, 3), (0.70, 0.02, 3)) == "beats"  # Gap .10 > .04.
    assert evidence.compare((0.70, 0.02, 3), (0.80, 0.01, 3)) == "loses"
    assert evidence.compare((0.80, 0.05, 3), (0.75, 0.01, 3)) == "level"  # Gap .05 < .10.
    assert evidence.compare((0.99, 0.0, 1), (0.10, 0.0, 3)) == "n/a"  # One seed.
    assert evidence.compare(None, (0.10, 0.0, 3)) == "n/a"


def test_comparisons_cross_protocols_and_pick_cl_best_loss():
    entries = evidence.comparisons(ROWS, CE_BEST_STATS)
    by = {(e["left"], e["right"], e["metric"]): e for e in entries}
    gce_cl = by[(evidence.GCE.name, evidence.CL_BEST.name, "f1")]
    assert gce_cl["right_loss"] == "ce"  # CL's best here: .805 against power's .705.
    assert gce_cl["verdict"] == "loses" and gce_cl["right_stats"][0] == pytest.approx(0.805)
    sce_cl = by[(evidence.SCE.name, evidence.CL_BEST.name, "f1")]
    assert sce_cl["verdict"] == "beats"
    power_oracle = by[(evidence.POWER.name, evidence.ORACLE.name, "f1")]
    assert power_oracle["verdict"] == "loses"
    cutoff_gce = by[(evidence.CUTOFF.name, evidence.GCE.name, "f1")]
    assert cutoff_gce["verdict"] == "beats"
    assert by[(evidence.GCE.name, evidence.CL_BEST.name, "precision_at_k")]["verdict"] == "n/a"
    text = evidence.comparisons_markdown(entries)
    line = next(x for x in text.splitlines() if x.startswith("| in-sample sce vs 5-fold CL"))
    assert line.split("|")[2].strip() == "beats: .950 ± .000 against .805 ± .005 (ce)"
    assert "| not run |" in text  # AUM was not run here.


def test_the_results_page_quotes_the_comparisons_the_tool_computes():
    seeds = ROOT / "docs" / "results" / "seeds"
    rows = evidence.read_rows(seeds / "results.csv")
    want = evidence.comparisons_markdown(
        evidence.comparisons(rows, evidence.read_best_epoch_stats(seeds))
    )
    page = (ROOT / "docs" / "results" / "README.md").read_text()
    quoted = page.split("<!-- COMPARISONS:")[1].split("-->", 1)[1].split("<!-- /COMPARISONS")[0]
    assert quoted.strip() == want.strip()
    assert want in (seeds / "verdict.md").read_text()


def test_main_reads_a_sweep_workdir(tmp_path, capsys):
    with open(tmp_path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(ROWS)
    for seed, best in enumerate(CE_BEST["symmetric 0.2"]):  # Cross-entropy's per-epoch F1.
        run = tmp_path / f"ce_s{seed}"
        run.mkdir()
        config = {"loss": "cross_entropy", "loss_hparams": {}, "detector": "pt",
                  "noise_kind": "symmetric", "noise_rate": 0.2}  # fmt: skip
        (run / "config.json").write_text(json.dumps(config))
        (run / "summary.json").write_text("{}")
        epochs = [best - 0.2, best, 0.61]
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"epoch": i + 1, "f1_argmax_neq_given": v}) + "\n"
                    for i, v in enumerate(epochs))
        )  # fmt: skip
    assert evidence.ce_best_epoch(tmp_path) == {"symmetric 0.2": CE_BEST["symmetric 0.2"]}
    assert evidence.main([str(tmp_path)]) == 0
    assert "sce" in (tmp_path / "verdict.md").read_text()
    saved = json.loads((tmp_path / "ce_best_epoch.json").read_text())
    assert saved["symmetric 0.2"]["mean"] == pytest.approx(0.85)
    assert (tmp_path / "comparisons.json").exists()
    assert (tmp_path / "plots" / "f1_per_epoch_seed_bands.png").exists()
    assert (tmp_path / "plots" / "f1_heatmap_pt_argmax_neq_given.png").exists()
    assert evidence.main([str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_the_grid_script_runs_end_to_end_on_a_tiny_grid(tmp_path):
    """experiments/evidence_grid.sh, as a lent GPU runs it, on a tiny grid on the CPU: sweeps,
    then the tables and verdict of whatever finished, in $OUT."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "GRID": "tiny", "BUDGET": "400", "PYTHON": sys.executable}  # fmt: skip
    done = subprocess.run(["bash", "experiments/evidence_grid.sh"], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "skipped" not in done.stdout, done.stdout
    out = tmp_path / "out"
    rows = evidence.read_rows(out / "regime1_results.csv")
    assert {(r["protocol"], r["seed"]) for r in rows} == {(p, s) for p in ("pt", "cl")
                                                          for s in ("0", "1")}  # fmt: skip
    table = (out / "regime1_results.md").read_text()
    assert "cutoff tau=0.1" in table and "confident_learning" in table
    assert "| symmetric 0.2 | pt / argmax_neq_given |" in (out / "regime1_verdict.md").read_text()
