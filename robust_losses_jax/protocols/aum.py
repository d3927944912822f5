"""``aum``: Area Under the Margin (Pleiss et al. 2020), as asappresearch/aum does it.

Two runs, each with its own ``N / (C + 1)`` threshold examples moved to a fake class ``C``; the
margins come from every train step (:func:`detection.aum_detect` turns them into flags).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from robust_losses_jax import config as config_lib
from robust_losses_jax import detection, metrics
from robust_losses_jax.noisy_data import NoisyData
from robust_losses_jax.protocols.base import (
    Detector,
    Log,
    Protocol,
    loss_hparams,
    predictions,
    run_keys,
    training_outputs,
)
from robust_losses_jax.training.loop import Stack
from robust_losses_jax.training.stacking import Member


def area_under_margin_protocol(
    cfg: config_lib.Config, data: NoisyData, base_key: jax.Array, workdir: Path, log: Log
) -> Protocol:
    """AUM: two runs, each with its own N/(C+1) threshold examples moved to a fake class C.

    ``cfg.aum_rule``: ``"reference"`` (asappresearch/aum) flags an example when both runs that
    judge it flag it and leaves the first epoch's margins out; ``"mean"`` averages the runs'
    ``threshold - AUM`` and counts every epoch (:func:`detection.aum_detect`).
    """
    num_classes = data.num_classes
    num_train = len(data)
    runs = detection.assign_threshold_examples(
        jax.random.fold_in(base_key, 5), data.given_label, num_classes, num_runs=2
    )
    members = [
        Member(
            labels=np.asarray(threshold_labels),
            rows=np.arange(num_train),
            keys=run_keys(base_key, 100 + run),
            hparams=loss_hparams(cfg),
            tag=f"aum{run}",
        )
        for run, (_, threshold_labels) in enumerate(runs)
    ]

    def finish(trained):
        aums = [
            np.asarray(detection.aum_scores(fitted.aum_sum[i], fitted.aum_count[i]))
            for fitted, i in trained
        ]
        thresholds = [np.asarray(is_threshold) for is_threshold, _ in runs]
        test_accuracies = [fitted.test_accuracy[i] for fitted, i in trained]
        # Per-example outputs over the real classes only, for the given labels.
        outs = [training_outputs(fitted, i) for fitted, i in trained]
        is_flagged, score = detection.aum_detect(
            aums, thresholds, percentile=cfg.aum_percentile, rule=cfg.aum_rule
        )
        # The outputs of the run in which each example was not a threshold example (run 0 if
        # neither).
        thr0 = thresholds[0]
        logits = np.where(thr0[:, None], outs[1]["logits"], outs[0]["logits"])[:, :num_classes]
        probs = np.asarray(jax.nn.softmax(logits, axis=-1))
        labels = data.given_label
        p_t = probs[np.arange(len(labels)), labels]
        margin = np.asarray(detection.margins(logits, labels))
        weight = np.where(thr0, outs[1]["weight"], outs[0]["weight"])
        out = {"probs": probs, "p_t": p_t, "margin": margin, "pred": logits.argmax(-1),
               "weight": weight}  # fmt: skip
        predicted = predictions(out, data)
        predicted.update(aum=np.where(thr0, aums[1], aums[0]), aum_score=score,
                         is_flagged_aum=is_flagged, is_threshold_run0=thr0,
                         is_threshold_run1=thresholds[1])  # fmt: skip
        finite = np.isfinite(score)
        extra = {
            "aum": {
                **metrics.detection_metrics(data.is_corrupted, is_flagged),
                **metrics.ranking_metrics(data.is_corrupted[finite], score[finite]),
                "percentile": cfg.aum_percentile,
                "rule": cfg.aum_rule,
            },
            "test_accuracy_per_run": test_accuracies,
            "test_accuracy": float(np.mean(test_accuracies)),
        }
        return predicted, extra

    # The reference leaves the first epoch's margins out (they mostly reflect initialisation).
    stack = Stack(members, num_classes + 1, tag="aum",
                  aum_from_epoch=int(cfg.aum_rule == "reference"))  # fmt: skip
    return Protocol(stack, finish)


# Registered by the package (protocols/__init__.py).
DETECTOR = Detector(
    name="aum",
    description="area under the margin, two runs with threshold examples",
    protocol=area_under_margin_protocol,
    flags=lambda predictions: predictions["is_flagged_aum"],
    num_models=lambda cfg: 2,
    settings=("aum_percentile", "aum_rule"),
    scores=("aum", "AUM"),
)
