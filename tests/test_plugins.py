"""--plugin: docs/extending.md's worked example, saved as a module outside the package, is a
working plugin for run, sweep and find-errors."""

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
    without = command(plugin_dir, "run", "--help")
    assert "tempered" not in without.stdout  # Only a plugin brings it.
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
