"""Plots of a run, a comparison or a sweep: ``robust-losses report WORKDIR``.

WORKDIR is one run's workdir (it holds ``summary.json``) or a folder of runs (``compare``,
``sweep``). Writes PNGs to ``WORKDIR/plots/``:

- ``<run>_pt_histograms.png``: histograms of ``p_t`` for clean and corrupted training examples at
  several epochs (the paper's figure), from the run's ``train_record.npz``;
- ``<run>_suspected_errors.png``: the top-ranked suspected label errors (by the run's detection
  score) with their given and predicted class names, marked where the label really was corrupted;
- ``detection_per_epoch.png``: per-epoch detection F1, AUROC, memorised fraction and test accuracy
  of every run with per-epoch records (cross-entropy's memorisation shows here);
- ``f1_vs_gamma.png`` and ``f1_vs_tau.png`` from a sweep's ``results.csv``: detection F1 (mean ±
  std over seeds) of ``power`` against ``gamma`` and ``cutoff`` against ``tau``, with
  cross-entropy as a dashed reference, one panel per noise setting.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from robust_losses_jax import records
from robust_losses_jax.commands import cli


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    records.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    _pyplot().close(fig)
    return path


def run_dirs(workdir: Path) -> list[Path]:
    """``workdir`` itself if it is a finished run, else its finished runs one level down."""
    if (workdir / "summary.json").exists():
        return [workdir]
    return sorted(p.parent for p in workdir.glob("*/summary.json"))


def pt_histograms(run: Path, out: Path, max_panels: int = 6) -> Path | None:
    record = run / "train_record.npz"
    if not record.exists():
        return None
    history = np.load(record)["p_t_history"].astype(np.float64)
    tracked = np.flatnonzero(~np.isnan(history).all(axis=1))  # --eval-every skips some epochs.
    if not len(tracked):
        return None
    is_corrupted = np.load(run / "predictions.npz")["is_corrupted"]
    panels = np.linspace(0, len(tracked) - 1, min(max_panels, len(tracked))).astype(int)
    epochs = tracked[np.unique(panels)]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(epochs), figsize=(3.2 * len(epochs), 3), squeeze=False)
    bins = np.linspace(0, 1, 41)
    for ax, epoch in zip(axes[0], epochs, strict=True):
        ax.hist(history[epoch][~is_corrupted], bins, density=True, alpha=0.6, label="clean")
        ax.hist(history[epoch][is_corrupted], bins, density=True, alpha=0.6, label="corrupted")
        ax.set_title(f"epoch {epoch + 1}")
        ax.set_xlabel("p_t (given label)")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend()
    fig.suptitle(f"{run.name}: p_t of clean vs corrupted training examples")
    fig.tight_layout()
    return _save(fig, out / f"{run.name}_pt_histograms.png")


def suspected_errors(run: Path, out: Path, data_dir: str | None, top: int = 24) -> Path | None:
    from robust_losses_jax import input_pipeline

    config = json.loads((run / "config.json").read_text())
    pred = np.load(run / "predictions.npz")
    if "cl_score" in pred.files:
        score = pred["cl_score"]
    elif "aum_score" in pred.files:
        score = pred["aum_score"]
    else:
        score = 1.0 - pred["p_t"]
    score = np.where(np.isnan(score), -np.inf, score)
    order = np.argsort(-score, kind="stable")[:top]
    split = input_pipeline.load_split(
        config["dataset"], "train", data_dir, config["train_size"],
        image_size=config.get("image_size"),
    )  # fmt: skip
    names = split.class_names
    plt = _pyplot()
    cols = 8
    rows = int(np.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order, strict=False):
        image = split.images[i]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        corrupted = bool(pred["is_corrupted"][i])
        ax.set_title(
            f"#{i} given {names[pred['given_label'][i]]}\npred {names[pred['pred'][i]]}",
            fontsize=7,
            color="tab:red" if corrupted else "black",
        )
    hits = int(pred["is_corrupted"][order].sum())
    fig.suptitle(
        f"{run.name}: top {len(order)} suspected label errors ({hits} really corrupted, in red)"
    )
    fig.tight_layout()
    return _save(fig, out / f"{run.name}_suspected_errors.png")


def label_issues_grid(
    images: np.ndarray, issues: Any, path: Path, top: int = 48, title: str = ""
) -> Path:
    """The ``top`` most suspect examples of an audit (``audit.LabelIssues``) as an image grid,
    each titled with its index, given and predicted class (red: flagged)."""
    order = issues.top(min(top, len(issues.ranking)))
    names = issues.class_names
    plt = _pyplot()
    cols = 8
    rows = max(1, int(np.ceil(len(order) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order, strict=False):
        image = images[i]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        ax.set_title(
            f"#{i} q={issues.label_score[i]:.2g}\ngiven {names[issues.given_label[i]]}\n"
            f"predicted {names[issues.predicted_label[i]]}",
            fontsize=7,
            color="tab:red" if issues.is_label_issue[i] else "black",
        )
    fig.suptitle(title or f"top {len(order)} suspected label errors (red: flagged)")
    fig.tight_layout()
    return _save(fig, path)


def noise_matrix_heatmap(issues: Any, path: Path, title: str = "") -> Path:
    """An audit's noise matrix (``audit.LabelIssues.noise_matrix``) as an annotated heatmap:
    rows the given label, columns the true one, each column summing to 1."""
    matrix, names = issues.noise_matrix(), issues.class_names
    size = len(names)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * size, 0.8 + 0.6 * size))
    ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(size), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(size), names, fontsize=8)
    ax.set_xlabel("true label (estimated)")
    ax.set_ylabel("given label")
    if size <= 20:  # Beyond that the numbers would not be legible.
        for i in range(size):
            for j in range(size):
                value = matrix[i, j]
                color = "white" if value > 0.5 else "black"
                text = f"{value:.2f}" if value >= 0.005 else ""
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title or "P(given label | true label)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def detection_per_epoch(runs: list[Path], out: Path) -> Path | None:
    curves = {}
    for run in runs:
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        lines = [x for x in lines if "f1_argmax_neq_given" in x and "run" not in x]
        if lines:
            curves[run.name] = lines
    if not curves:
        return None
    plt = _pyplot()
    keys = [("f1_argmax_neq_given", "detection F1 (argmax ≠ given)"),
            ("auroc_1_minus_pt", "AUROC of 1 - p_t"),
            ("memorised_fraction", "corrupted predicted as noisy label"),
            ("test_accuracy", "clean test accuracy")]  # fmt: skip
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    for ax, (key, title) in zip(axes, keys, strict=True):
        for name, lines in curves.items():
            points = [(x["epoch"], x[key]) for x in lines if key in x]  # --eval-every skips some.
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / "detection_per_epoch.png")


def f1_against(results: Path, out: Path, loss: str, hparam: str) -> Path | None:
    """F1 (mean ± std over seeds) of ``loss`` against ``hparam``, per noise, protocol, detector."""
    rows = list(csv.DictReader(results.open()))
    series: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    reference: dict[tuple, list[float]] = defaultdict(list)
    chosen: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        noise = f"{row['noise_kind']} {float(row['noise_rate']):g}"
        label = f"{row['protocol']}/{row['detector']} delay {row['delay']}"
        hparams = json.loads(row["hparams"])
        if row["loss"] == loss and hparams.get(hparam) == "auto":  # Chosen by the run: a line.
            chosen[(noise, label)].append(float(row["f1"]))
        elif row["loss"] == loss and hparam in hparams:
            series[(noise, label)][hparams[hparam]].append(float(row["f1"]))
        elif row["loss"] in ("ce", "cross_entropy"):
            reference[(noise, f"{row['protocol']}/{row['detector']}")].append(float(row["f1"]))
    if not series:
        return None
    noises = sorted({noise for noise, _ in series})
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(noises), figsize=(5 * len(noises), 3.6), squeeze=False)
    for ax, noise in zip(axes[0], noises, strict=True):
        for (n, label), by_value in sorted(series.items()):
            if n != noise:
                continue
            xs = sorted(by_value)
            means = [np.mean(by_value[x]) for x in xs]
            stds = [np.std(by_value[x]) for x in xs]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
        for (n, label), values in sorted(chosen.items()):
            if n == noise:
                ax.axhspan(np.mean(values) - np.std(values), np.mean(values) + np.std(values),
                           color="tab:red", alpha=0.15)  # fmt: skip
                ax.axhline(np.mean(values), ls=":", color="tab:red",
                           label=f"{hparam}=auto {label}")  # fmt: skip
        for (n, label), values in sorted(reference.items()):
            if n == noise:
                ax.axhline(np.mean(values), ls="--", lw=1, color="gray")
                ax.annotate(f"ce {label}", (0.01, np.mean(values)), xycoords=("axes fraction",
                            "data"), fontsize=6, color="gray")  # fmt: skip
        ax.set_title(f"{loss}: noise {noise}")
        ax.set_xlabel(hparam)
        ax.set_ylabel("detection F1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, out / f"f1_vs_{hparam}.png")


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(prog="robust-losses report", description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--data-dir", default=None, help="tfds data directory")
    parser.add_argument("--top", type=int, default=24, help="suspected errors to show per run")
    parser.add_argument("--no-images", action="store_true", help="skip the suspected-errors grid")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    runs = run_dirs(workdir)
    if not runs and not (workdir / "results.csv").exists():
        print(
            f"error: {workdir} holds no finished run (summary.json) or results.csv", file=sys.stderr
        )
        return 2
    out = workdir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        written.append(pt_histograms(run, out))
        if not args.no_images:
            written.append(suspected_errors(run, out, args.data_dir, args.top))
    written.append(detection_per_epoch(runs, out))
    if (workdir / "results.csv").exists():
        written.append(f1_against(workdir / "results.csv", out, "power", "gamma"))
        written.append(f1_against(workdir / "results.csv", out, "cutoff", "tau"))
    for path in filter(None, written):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
