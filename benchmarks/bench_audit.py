"""Wall time of a whole label audit: this project's against the workflow cleanlab users run today.

The audit: Fashion-MNIST whose labels hold planted errors (``--noise-kind``: by default
``asymmetric``, between confusable classes: T-shirt <-> Shirt, Pullover <-> Coat, Sandal ->
Sneaker -> Ankle boot), the flags, the ranked table. Rows, each with the F1 of its flags against
the planted errors, seconds and examples audited per second:

- ``jax audit``: ``robust_losses_jax.audit.find_label_issues`` at its defaults (one model with
  the gce loss, in-sample; compilation included, cold) and ``audit.issues_csv``;
- ``jax 5-fold cl``: the same with ``--detector=cl`` (5 folds trained together as one stack,
  power gamma=0.5, Confident Learning);
- ``torch + cleanlab``: ``benchmarks/torch_reference.py`` trains the 5 folds one after another
  (PyTorch eager, cross-entropy), then ``cleanlab.filter.find_label_issues`` and
  ``cleanlab.rank.get_label_quality_scores``, and the CSV is written (needs torch:
  ``requirements-bench.txt``).

The first row also reports its peak host memory (``ru_maxrss`` after it, before the others run).

    python -m benchmarks.bench_audit --quick                 # 2,000 examples, 1 epoch
    .venv-bench/bin/python -m benchmarks.bench_audit --train-size=6000 --epochs=8
    python -m benchmarks.bench_audit --train-size=0 --no-kfold --no-torch  # all 60,000, default
    python -m benchmarks.bench_audit --npz=.bench_data/fmnist60k.npz --train-size=0 --no-torch

``--epochs`` (default: the audit's own; 1 with ``--quick``) applies to every row. Ends with a
``ratio <row> vs jax audit: <x.xx>`` line per other row (greater than 1: the default is faster).
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import numpy as np

from robust_losses_jax import audit, corruption, input_pipeline, metrics, xla_setup
from robust_losses_jax.protocols import cross_validation


def planted(
    num_train: int, noise_rate: float, seed: int, npz: str | None = None, kind: str = "asymmetric"
):
    """``(images, given labels, is_corrupted, test images, test labels)`` of Fashion-MNIST
    (``npz``: ``npz:PATH`` with train and test arrays, for machines without tfds)."""
    name = f"npz:{npz}" if npz else "fashion_mnist"
    train = input_pipeline.load_split(name, "train", num_examples=num_train or None)
    test = input_pipeline.load_split(name, "test", num_examples=1000)
    given, is_corrupted = corruption.corrupt_labels(
        jax.random.fold_in(jax.random.key(seed), 0), train.labels, 10, noise_rate, kind,
        asymmetric_map=corruption.asymmetric_map_for("fashion_mnist") if kind == "asymmetric"
        else None,
    )  # fmt: skip
    return train.images, np.asarray(given), np.asarray(is_corrupted), test.images, test.labels


def jax_audit(cfg, images, labels, test_images, test_labels) -> tuple[float, np.ndarray, str]:
    start = time.perf_counter()
    issues = audit.find_label_issues(images, labels, config=cfg, test_images=test_images,
                                     test_labels=test_labels)  # fmt: skip
    table = audit.issues_csv(issues)
    return time.perf_counter() - start, issues.is_label_issue, table


def torch_audit(cfg, images, labels) -> tuple[float, np.ndarray, str] | None:
    try:
        from benchmarks import torch_reference
    except ImportError:
        return None
    import csv
    import io

    import torch
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    start = time.perf_counter()
    fold_of = cross_validation.cross_validation_folds(
        jax.random.key(cfg.seed), len(labels), cfg.folds
    )
    probs = torch_reference.kfold_protocol(
        images, labels, folds=cfg.folds, fold_of=fold_of, epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, num_classes=10,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )  # fmt: skip
    flags = find_label_issues(labels, probs)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    out = io.StringIO()
    writer = csv.writer(out)
    for i in np.argsort(quality, kind="stable"):
        writer.writerow([i, labels[i], probs[i].argmax(), quality[i], int(flags[i])])
    return time.perf_counter() - start, flags, out.getvalue()


def main(argv: list[str] | None = None) -> None:
    xla_setup.configure_cpu()  # Before JAX starts its backends.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--train-size", type=int, default=None, help="0: all 60,000")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--noise-rate", type=float, default=0.2)
    parser.add_argument("--noise-kind", choices=("asymmetric", "symmetric"), default="asymmetric")
    parser.add_argument("--no-kfold", action="store_true", help="skip the jax 5-fold cl row")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch + cleanlab row")
    parser.add_argument(
        "--npz", default=None, help="train_/test_ images and labels instead of tfds"
    )
    args = parser.parse_args(argv)
    num_train = (2000 if args.quick else 10_000) if args.train_size is None else args.train_size
    epochs = args.epochs or (1 if args.quick else audit.AUDIT_DEFAULTS["epochs"])
    images, labels, is_corrupted, test_images, test_labels = planted(
        num_train, args.noise_rate, 0, args.npz, args.noise_kind
    )
    cfg = audit.audit_config(dataset="fashion_mnist", epochs=epochs, eval_every=epochs)
    kfold = audit.audit_config(
        dataset="fashion_mnist", epochs=epochs, eval_every=epochs, detector="cl", loss="power",
        loss_hparams={"gamma": 0.5},
    )  # fmt: skip
    print(
        f"audit of {len(labels)} Fashion-MNIST examples ({int(is_corrupted.sum())} planted "
        f"{args.noise_kind} errors), {epochs} epoch(s), small CNN, batch {cfg.batch_size}; "
        f"default: --detector={cfg.detector} --loss={cfg.loss}; backend {jax.default_backend()} "
        f"({jax.devices()[0].device_kind})"
    )
    print(f"{'row':<18} {'seconds':>9} {'examples/s':>11} {'F1':>7}")
    rows = (
        ("jax audit", lambda: jax_audit(cfg, images, labels, test_images, test_labels)),
        ("jax 5-fold cl", None if args.no_kfold
         else lambda: jax_audit(kfold, images, labels, test_images, test_labels)),
        ("torch + cleanlab", None if args.no_torch else lambda: torch_audit(kfold, images, labels)),
    )  # fmt: skip
    seconds = {}
    for name, run in rows:
        result = run() if run else None
        if result is None:
            continue
        seconds[name], flags, _ = result
        f1 = metrics.detection_metrics(is_corrupted, flags)["f1"]
        rate = len(labels) / seconds[name]
        print(f"{name:<18} {seconds[name]:>9.1f} {rate:>11.0f} {f1:>7.3f}", flush=True)
        if name == "jax audit":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(f"peak host memory after the jax audit: {peak:.2f} GB")
    for name in seconds:
        if name != "jax audit" and "jax audit" in seconds:
            print(f"ratio {name} vs jax audit: {seconds[name] / seconds['jax audit']:.2f}")


if __name__ == "__main__":
    main()
