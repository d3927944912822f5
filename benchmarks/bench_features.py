"""A features audit against what a cleanlab user runs on the same features, side by side.

scikit-learn's digits (1,797 examples, 64 pixel columns as float features) with a fraction of
the labels moved to another class at random (``--noise-rate``, default 10%), per seed:

- ``probe (gce)``: ``robust_losses_jax.audit.find_feature_issues`` at its defaults (an MLP
  probe, gce, in-sample flags; a tenth held out, as there is no test split), compilation
  included;
- ``KNN + cleanlab``: 5-fold out-of-sample probabilities from ``KNeighborsClassifier`` (what
  ``Datalab`` builds from features), then ``cleanlab.filter.find_label_issues``;
- ``LR + cleanlab``: the same with ``LogisticRegression``.

Both sides see the same standardised features. Prints F1 on the planted errors and seconds
per row and seed, then mean ± std over the seeds and the F1 gap of the probe to each.

    python -m benchmarks.bench_features                # seeds 0,1,2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from cleanlab.filter import find_label_issues
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from robust_losses_jax import audit, metrics


def planted(labels: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """``labels`` with ``rate`` of them moved to another class, uniformly (from ``seed``)."""
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(labels), round(rate * len(labels)), replace=False)
    given = labels.copy()
    given[flip] = (given[flip] + rng.integers(1, labels.max() + 1, len(flip))) % (labels.max() + 1)
    return given


def cleanlab_flags(model, features: np.ndarray, given: np.ndarray) -> np.ndarray:
    probs = cross_val_predict(model, features, given, cv=5, method="predict_proba")
    return find_label_issues(given, probs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--noise-rate", type=float, default=0.1)
    args = parser.parse_args(argv)
    features, labels = load_digits(return_X_y=True)
    features = ((features - features.mean(0)) / np.maximum(features.std(0), 1e-6)).astype(
        np.float32
    )
    names = tuple(str(k) for k in range(10))
    rows = {
        "probe (gce)": lambda g: (
            audit.find_feature_issues(features, g, class_names=names).issues.is_label_issue
        ),
        "KNN + cleanlab": lambda g: cleanlab_flags(KNeighborsClassifier(), features, g),
        "LR + cleanlab": lambda g: cleanlab_flags(LogisticRegression(max_iter=1000), features, g),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    print(f"digits, {args.noise_rate:.0%} of {len(labels)} labels planted wrong")
    print(f"{'row':<16} {'seed':>4} {'F1':>6} {'seconds':>8}")
    for seed in (int(s) for s in args.seeds.split(",")):
        given = planted(labels, args.noise_rate, seed)
        for name, flag in rows.items():
            start = time.perf_counter()
            flags = np.asarray(flag(given), bool)
            seconds = time.perf_counter() - start
            f1 = metrics.detection_metrics(given != labels, flags)["f1"]
            results[name].append((f1, seconds))
            print(f"{name:<16} {seed:>4} {f1:6.3f} {seconds:8.2f}")
    print("mean ± std over the seeds (population std):")
    for name, values in results.items():
        f1, seconds = np.array(values).T
        print(f"{name:<16} F1 {f1.mean():.3f} ± {f1.std():.3f}   {np.median(seconds):.2f} s median")
    probe = np.array([f1 for f1, _ in results["probe (gce)"]])
    for name in list(rows)[1:]:
        other = np.array([f1 for f1, _ in results[name]])
        print(f"F1 gap probe (gce) - {name}: {np.mean(probe - other):+.3f}")


if __name__ == "__main__":
    main()
