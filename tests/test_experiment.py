"""experiment.fit beyond what the runner's end-to-end tests see: its per-phase wall times."""

import functools
import time

import jax
import pytest

from robust_losses_jax import config as config_lib
from robust_losses_jax import experiment

PHASES = {"setup", "train", "test", "records", "checkpoint"}


@pytest.mark.parametrize(
    ("detector", "sequential", "phases"),
    [
        ("pt", False, PHASES | {"track"}),  # p_t of the training set after every epoch.
        ("cl", True, PHASES),  # Two folds one after another: their times add up.
    ],
)
def test_fit_adds_wall_seconds_by_phase(tmp_path, detector, sequential, phases):
    cfg = config_lib.Config(
        dataset="sklearn_digits", model="mlp", batch_size=64, eval_batch_size=256,
        train_size=600, epochs=2, detector=detector, folds=2, sequential=sequential,
    )  # fmt: skip
    data = experiment.noisy_training_data(cfg, None)
    fit_run = experiment._fit_run(
        cfg, data, tmp_path, resume=False, progress=False, devices=jax.local_devices(),
        log=lambda _: None,
    )  # fmt: skip
    protocol = experiment.protocol_for(cfg, data, tmp_path, jax.random.key(0), lambda _: None)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    experiment.run_protocol(
        cfg, data, functools.partial(fit_run, timings=timings), protocol, lambda _: None
    )
    wall = time.perf_counter() - start
    assert set(timings) == phases
    assert all(seconds >= 0 for seconds in timings.values()), timings
    assert timings["train"] > 0 and timings["setup"] > 0
    assert sum(timings.values()) <= wall  # Laps of the run, never counted twice.
