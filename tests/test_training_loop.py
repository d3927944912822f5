"""loop.fit beyond what the runner's end-to-end tests see: phase times, shared programs,
held-out outputs."""

import dataclasses
import time

import jax
import pytest

from robust_losses_jax import config as config_lib
from robust_losses_jax import experiment, noisy_data, protocols
from robust_losses_jax.protocols.base import loss_hparams, run_keys, run_protocol
from robust_losses_jax.training.engines import ProgramCache
from robust_losses_jax.training.loop import FitContext, Stack

PHASES = {"setup", "train", "test", "records", "checkpoint"}


def digits_fit_run(workdir, cache=None, timings=None, **overrides):
    """``(cfg, data, fit_run)`` for 600 digits (an MLP, 2 epochs unless ``overrides`` say);
    ``cache``: a :class:`ProgramCache` shared with other fits; ``timings``: the fits'."""
    cfg = config_lib.Config(
        **{"dataset": "sklearn_digits", "model": "mlp", "batch_size": 64,
           "eval_batch_size": 256, "train_size": 600, "epochs": 2, **overrides},
    )  # fmt: skip
    data = noisy_data.noisy_training_data(cfg, None)
    context = FitContext(workdir, jax.local_devices(), progress=False, log=lambda _: None,
                         cache=cache or ProgramCache(), timings=timings)  # fmt: skip
    return cfg, data, experiment._fit_run(cfg, data, context)


def run_on_digits(workdir, **overrides) -> None:
    """A run of the protocol ``overrides`` configure on 600 digits (an MLP, 2 epochs)."""
    cfg, data, fit_run = digits_fit_run(workdir, **overrides)
    protocol = protocols.protocol_for(cfg, data, workdir, jax.random.key(cfg.seed), lambda _: None)
    run_protocol(cfg, fit_run, protocol, lambda _: None)


@pytest.mark.parametrize(
    ("detector", "sequential", "phases"),
    [
        ("pt", False, PHASES | {"track"}),  # p_t of the training set after every epoch.
        ("cl", True, PHASES),  # Two folds one after another: their times add up.
    ],
)
@pytest.mark.slow
def test_fit_adds_wall_seconds_by_phase(tmp_path, detector, sequential, phases):
    timings: dict[str, float] = {}
    start = time.perf_counter()
    run_on_digits(
        tmp_path, detector=detector, folds=2, sequential=sequential, timings=timings,
    )  # fmt: skip
    wall = time.perf_counter() - start
    assert set(timings) == phases
    assert all(seconds >= 0 for seconds in timings.values()), timings
    assert timings["train"] > 0 and timings["setup"] > 0
    assert sum(timings.values()) <= wall  # Laps of the run, never counted twice.


def test_fits_with_equal_settings_share_their_compiled_programs(tmp_path):
    """A second run that differs only in its seed (other labels, keys and weights), given the
    first's ProgramCache, traces and compiles nothing: the model, optimiser and programs of the
    first are reused (sequential folds and sweep cells do the same)."""
    compiles = []

    def on_event(event: str, seconds: float, **_) -> None:
        if event.startswith("/jax/core/compile/"):  # Tracing, lowering, XLA compilation.
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        counts = []
        cache = ProgramCache()
        for seed in (0, 1):
            before = len(compiles)
            run_on_digits(tmp_path / str(seed), seed=seed, cache=cache)
            counts.append(len(compiles) - before)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert counts[1] == 0, counts


@pytest.mark.slow
def test_held_out_outputs_are_each_members_own_rows_from_one_evaluation(tmp_path):
    """A sweep's stack holds several runs' folds, whose held-out rows overlap: each member is
    evaluated on its own held-out rows only (not every member on every row), and
    gets what evaluating it on every row and keeping those rows gives."""
    import numpy as np

    from robust_losses_jax.training import stacking

    cfg, data, fit_run = digits_fit_run(tmp_path, epochs=1, detector="cl", folds=2)
    rng = np.random.default_rng(0)
    given = data.given_label
    members = [
        stacking.Member(
            labels=(given + shift) % 10,  # Each member scores p_t against its own labels.
            rows=np.sort(rng.choice(600, size=size, replace=False)),
            keys=run_keys(jax.random.key(0), m),
            hparams=loss_hparams(cfg),
            tag=f"m{m}",
        )
        for m, (shift, size) in enumerate([(0, 320), (1, 330), (0, 340)])
    ]
    fitted = fit_run(Stack(members, num_classes=10, tag="stack"))
    everywhere = fitted.training_outputs()
    held_out = fitted.held_out_outputs()
    for m, member in enumerate(members):
        rows = np.setdiff1d(np.arange(600), member.rows)
        assert held_out[m]["p_t"].shape == (600 - len(member.rows),)
        for name in ("logits", "p_t", "margin"):
            np.testing.assert_allclose(
                held_out[m][name], everywhere[name][m][rows], atol=1e-5, err_msg=name
            )
        np.testing.assert_array_equal(held_out[m]["pred"], everywhere["pred"][m][rows])


@pytest.mark.slow
def test_auto_tau_is_chosen_after_the_delay_recorded_and_traced(tmp_path):
    """--tau=auto: after the delay, tau is the p_t quantile at the noise rate estimated from the
    model's own probabilities; it is recorded, and it is a traced value: a run with a fixed tau
    compiled every program the auto run needs. A resumed run reads the chosen tau back."""
    import json

    import numpy as np

    compiles = []

    def on_event(event: str, seconds: float, **_) -> None:
        if event.startswith("/jax/core/compile/"):
            compiles.append(event)

    settings = {"loss": "cutoff", "delay_epochs": 1, "epochs": 3, "cache": ProgramCache()}
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        run_on_digits(tmp_path / "fixed", loss_hparams={"tau": 0.1}, **settings)
        before = len(compiles)
        run_on_digits(tmp_path / "auto", auto_tau=True, **settings)
        assert len(compiles) == before
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    chosen = json.loads((tmp_path / "auto" / "auto_tau.json").read_text())
    assert 0.0 < chosen["tau"] < 1.0 and 0.05 < chosen["estimated_noise_rate"] < 0.5, chosen
    lines = [json.loads(x) for x in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["auto_tau"] == chosen["tau"] and "auto_tau" not in lines[1]
    assert lines[0]["frac_low_weight"] == 0.0 < lines[1]["frac_low_weight"]  # Cutoff from epoch 2.

    cfg = config_lib.Config(
        dataset="sklearn_digits", model="mlp", batch_size=64, eval_batch_size=256,
        train_size=600, loss="cutoff", delay_epochs=1, auto_tau=True,
        checkpoint_min_interval=0,
    )  # fmt: skip
    quiet = {"progress": False, "log": lambda _: None}
    experiment.train_and_evaluate(dataclasses.replace(cfg, epochs=3), tmp_path / "whole", **quiet)
    experiment.train_and_evaluate(dataclasses.replace(cfg, epochs=2), tmp_path / "res", **quiet)
    experiment.train_and_evaluate(
        dataclasses.replace(cfg, epochs=3), tmp_path / "res", resume=True, **quiet
    )
    want, got = (np.load(tmp_path / d / "predictions.npz") for d in ("whole", "res"))
    for name in want.files:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
