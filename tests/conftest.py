"""Test set-up: 8 simulated CPU devices (for the data-parallel tests), set before JAX starts."""

import os

from robust_losses_jax import xla_setup

xla_setup.configure_cpu(num_devices=8)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
