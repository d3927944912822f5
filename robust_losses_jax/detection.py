"""Label-error detectors: each takes per-example arrays and returns ``(is_flagged, score)``.

``is_flagged`` is bool ``[N]``; ``score`` is float ``[N]``, higher meaning more likely a label
error, for threshold-free scoring (AUROC, precision at k).
"""

from __future__ import annotations

import numpy as np


def pt_threshold(p_t: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Flag examples whose given-label probability is below ``threshold``; score ``1 - p_t``.

    Args:
      p_t: ``[N]`` probabilities of the given labels.
      threshold: in (0, 1).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1).")
    p_t = np.asarray(p_t, np.float64)
    return p_t < threshold, 1.0 - p_t


def predicted_neq_given(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flag examples whose argmax differs from the given label; score ``1 - p_t``.

    Args:
      probs: ``[N, C]`` predicted probabilities.
      labels: ``[N]`` given labels.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} must be [N, C] and [N].")
    p_t = probs[np.arange(len(labels)), labels]
    return probs.argmax(axis=1) != labels, 1.0 - p_t
