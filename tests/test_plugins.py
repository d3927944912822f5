"""--plugin: docs/extending.md's worked examples (a loss and a detector), saved as one module
outside the package, are a working plugin for run, sweep, find-errors and the Python API."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def plugin_dir(tmp_path):
    """docs/extending.md's python code blocks, together, as ``my_losses.py`` in ``tmp_path``."""
    text = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/extending.md has no python block"
    (tmp_path / "my_losses.py").write_text("\n".join(blocks))
    return tmp_path


def command(plugin_dir, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(plugin_dir)}
    return subprocess.run([sys.executable, "-m", "robust_losses_jax", *args], cwd=plugin_dir,
                          env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_the_plugin_loss_is_a_choice_and_its_bad_values_are_refused(plugin_dir):
    helped = command(plugin_dir, "run", "--plugin=my_losses", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "tempered" in helped.stdout
    assert "twins (two in-sample models" in " ".join(helped.stdout.split())  # --detector's.
    without = command(plugin_dir, "run", "--help")
    assert "tempered" not in without.stdout and "twins" not in without.stdout  # A plugin's.
    unknown = command(plugin_dir, "run", "--plugin=my_losses", "--detector=triplets",
                      f"--workdir={plugin_dir / 'bad'}")  # fmt: skip
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        "error: Unknown detector 'triplets'; choose from pt, cl, aum, twins."
    )
    bad = command(plugin_dir, "run", "--plugin=my_losses", "--loss=tempered", "--gamma=-1",
                  f"--workdir={plugin_dir / 'bad'}")  # fmt: skip
    err = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(err) == 1, bad.stderr
    assert "tempered: gamma=-1.0 is outside its domain; allowed: gamma >= 0" in err[0]
    assert not (plugin_dir / "bad").exists()
    missing = command(plugin_dir, "run", "--plugin=no_such_module", "--help")
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: --plugin=no_such_module: cannot import it")


@pytest.mark.slow
def test_the_plugin_loss_trains_under_the_sweep_with_a_delay_and_a_ramp(plugin_dir):
    workdir = plugin_dir / "sweep"
    done = command(
        plugin_dir, "sweep", "--plugin=my_losses", "--losses=tempered:gamma=0.5",
        "--delays=1", "--noise=symmetric:0.2", "--detectors=pt", "--seeds=0", "--no-progress",
        f"--workdir={workdir}", "--", "--dataset=sklearn_digits", "--model=mlp", "--epochs=3",
        "--ramp=1", "--train-size=500", "--batch-size=64",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (config_path,) = workdir.glob("*/config.json")
    config = json.loads(config_path.read_text())
    assert (
        config["loss"],
        config["loss_hparams"],
        config["delay_epochs"],
        config["ramp_epochs"],
    ) == ("tempered", {"gamma": 0.5}, 1, 1)
    lines = [json.loads(x) for x in (config_path.parent / "metrics.jsonl").read_text().splitlines()]
    assert [x["robust_loss_on"] for x in lines if "robust_loss_on" in x] == [False, True, True]


DIGITS = ["--dataset=sklearn_digits", "--model=mlp", "--epochs=2", "--batch-size=64",
          "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_the_plugin_detector_runs_audits_and_sweeps(plugin_dir):
    """A run scores it (summary and last line), find-errors flags exactly what its flags say,
    and the sweep trains it next to a built-in detector."""
    import numpy as np

    run = command(plugin_dir, "run", "--plugin=my_losses", "--detector=twins", *DIGITS,
                  f"--workdir={plugin_dir / 'run'}")  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads((plugin_dir / "run" / "summary.json").read_text())
    assert summary["detector"] == "twins" and 0.3 < summary["detection"]["twins"]["f1"] <= 1
    assert f"twins F1 {summary['detection']['twins']['f1']:.3f}" in run.stdout
    with np.load(plugin_dir / "run" / "predictions.npz") as pred:
        both = pred["is_flagged_twins"]
        assert summary["detection"]["twins"]["num_flagged"] == int(both.sum())
    assert {p.name for p in (plugin_dir / "run").glob("train_record_*.npz")} == {
        "train_record_twin0.npz", "train_record_twin1.npz"
    }  # fmt: skip

    audit = command(plugin_dir, "find-errors", "--plugin=my_losses", "--detector=twins",
                    *DIGITS, f"--workdir={plugin_dir / 'audit'}")  # fmt: skip
    assert audit.returncode == 0, audit.stderr
    audited = json.loads((plugin_dir / "audit" / "summary.json").read_text())
    with np.load(plugin_dir / "audit" / "predictions.npz") as pred:
        assert audited["num_label_issues"] == int(pred["is_flagged_twins"].sum()) > 0

    sweep = command(
        plugin_dir, "sweep", "--plugin=my_losses", "--losses=ce", "--delays=default",
        "--noise=symmetric:0.2", "--detectors=pt,twins", "--seeds=0", "--no-progress",
        f"--workdir={plugin_dir / 'sweep'}", "--", *DIGITS[:-1], "--train-size=500",
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    with open(plugin_dir / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    ran = {(row["protocol"], row["detector"]) for row in rows}
    assert {("twins", "twins"), ("pt", "argmax_neq_given")} <= ran


@pytest.mark.slow
def test_the_plugin_detector_from_python(plugin_dir):
    """The notebook API: import the module, then audit.find_label_issues takes the detector."""
    script = """
import numpy as np
import my_losses  # noqa: F401 (registers tempered and twins)
from sklearn.datasets import load_digits
from robust_losses_jax import audit
digits = load_digits()
images = (digits.images * 16).clip(0, 255).astype(np.uint8)[:600]
labels = digits.target[:600].copy()
labels[:30] = (labels[:30] + 1) % 10
cfg = audit.audit_config(dataset="arrays", detector="twins", model="mlp", epochs=3,
                         batch_size=64)
issues = audit.find_label_issues(images, labels, config=cfg)
print(issues.num_label_issues, int(issues.is_label_issue[:30].sum()))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=plugin_dir, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(plugin_dir)}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    flagged, planted_found = map(int, done.stdout.split())
    assert 0 < flagged < 300 and planted_found > 10
