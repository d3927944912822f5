"""Test set-up: 8 simulated CPU devices (for the data-parallel tests), set before JAX starts."""

import os
import tempfile

import hypothesis

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
