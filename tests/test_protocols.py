"""The detector registry, and every registered detector held to what its record says."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from robust_losses_jax import audit, experiment, protocols
from robust_losses_jax import config as config_lib
from robust_losses_jax.protocols import base
from robust_losses_jax.split import Split

DIGITS = {"dataset": "sklearn_digits", "model": "mlp", "batch_size": 64, "eval_batch_size": 256,
          "train_size": 400, "epochs": 1, "folds": 2}  # fmt: skip


def test_the_built_in_detectors_are_registered_in_order():
    assert [d.name for d in protocols.registered_detectors()] == ["pt", "cl", "aum"]
    assert protocols.detector("cl").num_models(config_lib.Config(folds=7)) == 7
    with pytest.raises(ValueError, match=r"^Unknown detector 'knn'; choose from pt, cl, aum\.$"):
        protocols.detector("knn")


def test_register_detector_refuses_a_taken_name_and_unknown_settings(monkeypatch):
    monkeypatch.setattr(base, "_DETECTORS", dict(base._DETECTORS))
    pt = protocols.detector("pt")
    with pytest.raises(ValueError, match=r"a detector named 'pt' is already registered"):
        protocols.register_detector(pt)
    with pytest.raises(ValueError, match=r"settings neighbours are not Config fields"):
        protocols.register_detector(dataclasses.replace(pt, name="knn", settings=("neighbours",)))
    knn = protocols.register_detector(dataclasses.replace(pt, name="knn", settings=()))
    assert protocols.detector("knn") is knn
    protocols.validate(config_lib.Config(detector="knn"), num_devices=1)


def test_validate_refuses_a_holdout_to_a_detector_without_one():
    protocols.validate(config_lib.Config(detector="pt", holdout=0.1), num_devices=1)
    protocols.validate(config_lib.Config(detector="cl", holdout=None), num_devices=1)  # Auto.
    with pytest.raises(ValueError, match=r"^holdout 0.1 is for --detector=pt \(cl holds out"):
        protocols.validate(config_lib.Config(detector="cl", holdout=0.1), num_devices=1)


def test_check_data_counts_each_models_examples_and_refuses_small_classes():
    labels = np.repeat(np.arange(3), [10, 10, 1]).astype(np.int32)
    split = Split(np.zeros((21, 4, 4, 1), np.uint8), labels, 3, ("a", "b", "c"))
    cfg = config_lib.Config(folds=2, holdout=0.2)
    assert protocols.detector("pt").check_data(cfg, split, 0) == 21 - 4
    with pytest.raises(ValueError, match=r"class 'c' has 1 example\(s\), fewer than the 2 folds"):
        protocols.detector("cl").check_data(cfg, split, 0)
    assert protocols.detector("aum").check_data is None  # Every example, in both runs.


@pytest.mark.slow
@pytest.mark.parametrize("name", [d.name for d in protocols.registered_detectors()])
def test_every_detector_trains_what_its_record_says(tmp_path, name):
    """A run of each registered detector: it trains ``num_models`` models, writes predictions
    its ``flags`` read (bool [N]), its own scores under ``scores``' key, and an audit of the
    run takes those flags as its ``is_label_issue``."""
    spec = protocols.detector(name)
    cfg = config_lib.Config(**DIGITS, detector=name)
    summary = experiment.train_and_evaluate(cfg, tmp_path, progress=False, log=lambda _: None)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len({line.get("run", "") for line in lines}) == spec.num_models(cfg)
    with np.load(tmp_path / "predictions.npz") as pred:
        flags = spec.flags(pred)
        assert flags.dtype == bool and flags.shape == (DIGITS["train_size"],)
        issues = audit.issues_from_run(tmp_path, cfg, [str(k) for k in range(10)])
        np.testing.assert_array_equal(issues.is_label_issue, flags)
    if spec.scores:
        key, label = spec.scores
        assert summary["detection"][key]["num_flagged"] == int(flags.sum())
        assert f"; {label} F1 " in experiment.one_line_summary(cfg, summary)
    assert summary["detector"] == name and jax.numpy.isfinite(summary["test_accuracy"])
