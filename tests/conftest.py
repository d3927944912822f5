"""Test set-up: 8 simulated CPU devices (for the data-parallel tests), set before JAX starts."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hypothesis
import pytest

from robust_losses_jax import xla_setup

# Property tests draw the same examples on every run, so CI cannot go red on a new draw;
# HYPOTHESIS_PROFILE=explore draws fresh ones (a failure prints its falsifying example).
hypothesis.settings.register_profile("repeatable", derandomize=True)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

xla_setup.configure_cpu(num_devices=8)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The runner's persistent compilation cache: one per test worker (and its subprocesses), under
# the system temp dir, so parallel workers never share cache files and tests leave ~ alone.
os.environ["XDG_CACHE_HOME"] = os.path.join(
    tempfile.gettempdir(),
    f"robust_losses_jax_test_cache_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}",
)


@pytest.fixture
def sigkill_after_lines():
    """``kill(module, flags, workdir, lines)``: run ``python -m module *flags --workdir=workdir``
    in a subprocess and SIGKILL it once its ``metrics.jsonl`` has ``lines`` lines (a moment
    later, into the next epoch); fails if it finished before the kill."""

    def kill(module: str, flags: list[str], workdir, lines: int) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *flags, f"--workdir={workdir}"],
            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        metrics = workdir / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= lines:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # Into the next epoch.
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL, f"{module} finished before the kill"

    return kill


@pytest.fixture
def checkout_copy(tmp_path):
    """A copy of the checkout's files that git tracks or would track (uncommitted changes
    included; no venvs, no build outputs), in ``tmp_path / 'source'``: what a user's
    ``pip install`` of the repository sees."""
    root = Path(__file__).resolve().parent.parent
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    destination = tmp_path / "source"
    for name in filter(None, listed):
        if (root / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, destination / name)
    return destination
