"""What a sweep says: the verdict table and the evidence plots, from a sweep's workdir.

    robust-losses evidence workdir/sweep          # writes verdict.md and plots/

For each noise setting, protocol and detector, the verdict compares every loss's final
detection F1 (mean over seeds) with cross-entropy's:

- *beats CE final*: its mean exceeds cross-entropy's final mean by more than twice the seed
  spread (the larger of the two standard deviations over seeds, as ``results.md`` shows them);
- *beats CE best epoch*: the same against cross-entropy's best epoch (the highest in-sample
  ``argmax != given`` F1 over its epochs, per seed: picking that epoch needs clean labels, so
  it is a bound no user can reach). Only for the in-sample protocol, whose epochs are tracked;
- *loses*: below cross-entropy's final mean by more than twice the spread.

Then, across protocols, every comparison the README states (:data:`COMPARISONS`: in-sample
losses against 5-fold Confident Learning, against each other, against the oracle best epoch;
AUM; tau=auto) by the same rule: *beats*, *loses* or *level*. docs/results/README.md quotes
that table, and a test keeps the two equal. ``robust-losses evidence docs/results/seeds
--no-plots`` rewrites the committed verdict from ``results.csv`` and ``ce_best_epoch.json``
(cross-entropy's best epoch, saved because the runs themselves are not committed).

A cell needs at least two seeds on each side for a verdict. Plots: detection F1 per epoch with
seed bands (min-max over seeds around the mean), a heatmap of F1 (loss x noise) per detector,
and F1 against gamma and tau (``report.f1_against``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from robust_losses_jax import records
from robust_losses_jax.commands import cli, report

CE = ("ce", "cross_entropy")
MIN_SEEDS = 2
CE_BEST_FILE = "ce_best_epoch.json"


def loss_label(loss: str, hparams: str | dict) -> str:
    """``power gamma=0.5``: the loss and the hyperparameters that set it apart."""
    values = json.loads(hparams) if isinstance(hparams, str) else hparams
    shown = {k: v for k, v in values.items() if not (loss == "power" and k == "tau" and v == 0)}
    text = ",".join(f"{k}={v if isinstance(v, str) else format(v, 'g')}" for k, v in shown.items())
    return f"{loss} {text}".strip()


def noise_label(row: dict) -> str:
    return f"{row['noise_kind']} {float(row['noise_rate']):g}"


def read_rows(results: Path) -> list[dict]:
    with open(results) as f:
        return list(csv.DictReader(f))


def ce_best_epoch(workdir: Path) -> dict[str, list[float]]:
    """``{noise: [best in-sample F1 over the epochs, per seed]}`` of the cross-entropy pt runs."""
    best: dict[str, list[float]] = defaultdict(list)
    for summary in sorted(Path(workdir).glob("*/summary.json")):
        run = summary.parent
        config = json.loads((run / "config.json").read_text())
        if config["loss"] not in CE or config.get("detector", "pt") != "pt":
            continue
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        f1 = [x["f1_argmax_neq_given"] for x in lines if x.get("f1_argmax_neq_given") is not None]
        if f1:
            best[noise_label(config)].append(max(f1))
    return dict(best)


Stats = tuple[float, float, int]  # Mean, population std (ddof 0), number of seeds.


def _stats(values: list[float]) -> Stats:
    return float(np.mean(values)), float(np.std(values)), len(values)


def best_epoch_stats(ce_best: dict[str, list[float]]) -> dict[str, Stats]:
    """``{noise: (mean, std, seeds)}`` of :func:`ce_best_epoch`'s per-seed values."""
    return {noise: _stats(values) for noise, values in ce_best.items()}


def read_best_epoch_stats(workdir: Path) -> dict[str, Stats]:
    """Cross-entropy's best epoch per noise: from the runs in ``workdir`` where they are, else
    from its ``ce_best_epoch.json`` (what :func:`main` wrote; ``{}`` without either)."""
    stats = best_epoch_stats(ce_best_epoch(workdir))
    saved = Path(workdir) / CE_BEST_FILE
    if stats or not saved.exists():
        return stats
    return {k: (v["mean"], v["std"], v["seeds"]) for k, v in json.loads(saved.read_text()).items()}


def verdict(rows: list[dict], ce_best: dict[str, Stats]) -> list[dict[str, Any]]:
    """One entry per (noise, protocol, detector, loss other than CE) with the comparison.

    ``rows``: ``results.csv`` rows (one per run and detector); ``ce_best``: cross-entropy's best
    epoch per noise (:func:`best_epoch_stats`). Each entry: ``noise``, ``protocol``,
    ``detector``, ``loss``, ``f1``/``std``/``seeds``, cross-entropy's final (``ce_f1``,
    ``ce_std``) and best epoch (``ce_best``, ``ce_best_std``; None outside pt), and
    ``beats_final``, ``beats_best``, ``loses``: True/False, or None without enough seeds.
    """
    out = []
    for (noise, protocol, detector, metric), by_loss in sorted(grouped(rows).items()):
        if metric != "f1" or "ce" not in by_loss:
            continue
        ce = _stats(by_loss["ce"])
        best = ce_best.get(noise) if protocol == "pt" else None
        best_f1, best_std, _ = best if best else (None, None, 0)
        for loss, values in sorted(by_loss.items()):
            if loss == "ce":
                continue
            stats = _stats(values)
            against_final, against_best = compare(stats, ce), compare(stats, best)
            entry = {
                "noise": noise, "protocol": protocol, "detector": detector, "loss": loss,
                "f1": stats[0], "std": stats[1], "seeds": stats[2], "ce_f1": ce[0],
                "ce_std": ce[1], "ce_best": best_f1, "ce_best_std": best_std,
                "beats_final": None if against_final == "n/a" else against_final == "beats",
                "loses": None if against_final == "n/a" else against_final == "loses",
                "beats_best": None if against_best == "n/a" else against_best == "beats",
            }  # fmt: skip
            out.append(entry)
    return out


def grouped(rows: list[dict]) -> dict[tuple, dict[str, list[float]]]:
    """``{(noise, protocol, detector, metric): {loss label ("ce" for cross-entropy): the seeds'
    values}}`` of ``results.csv`` rows, for F1 and precision at k where recorded."""
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        name = "ce" if row["loss"] in CE else loss_label(row["loss"], row["hparams"])
        for metric in ("f1", "precision_at_k"):
            if row.get(metric) not in ("", None):
                key = (noise_label(row), row["protocol"], row["detector"], metric)
                groups[key][name].append(float(row[metric]))
    return groups


VERDICT_NOTE = (
    "F1: mean ± population standard deviation (ddof 0) over the seeds. A loss beats (loses to) "
    "a reference when its mean is above (below) the reference's by more than twice the larger "
    "of the two deviations. *CE best epoch* is cross-entropy's highest in-sample F1 over its "
    "epochs, per seed, picked with the clean labels: an oracle no user has, shown as a bound."
)


def verdict_markdown(entries: list[dict[str, Any]]) -> str:
    """The short table: per noise, protocol and detector, who beats cross-entropy, who loses."""
    lines = [
        VERDICT_NOTE,
        "",
        "| noise | protocol / detector | CE final F1 | CE best epoch F1 | beat CE final | "
        "beat CE best epoch | lose to CE final |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for e in entries:
        groups[(e["noise"], e["protocol"], e["detector"])].append(e)
    for (noise, protocol, detector), group in sorted(groups.items()):
        first = group[0]

        def names(flag: str, group=group) -> str:
            if all(e[flag] is None for e in group):
                return "n/a"
            hits = [f"{e['loss']} ({e['f1']:.3f} ± {e['std']:.3f})" for e in group if e[flag]]
            return "; ".join(hits) if hits else "none"

        best = (
            "n/a"
            if first["ce_best"] is None
            else f"{first['ce_best']:.3f} ± {first['ce_best_std']:.3f}"
        )
        lines.append(
            f"| {noise} | {protocol} / {detector} | {first['ce_f1']:.3f} ± {first['ce_std']:.3f} "
            f"| {best} | {names('beats_final')} | {names('beats_best')} | {names('loses')} |"
        )
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Arm:
    """One side of a comparison: what ran (``protocol``, ``detector``) with which loss.

    ``loss``: a :func:`loss_label` (``"gce q=0.7"``), ``"ce"``, :data:`BEST_LOSS` (the highest
    mean over the losses run there, named in the cell) or :data:`CE_BEST_EPOCH` (the oracle).
    """

    name: str
    protocol: str
    detector: str
    loss: str


COMPARISONS_HEADING = (
    "Across protocols, each comparison the README states, by the same rule (mean ± population "
    "std over the seeds; *its best loss*: the highest mean among the losses run there):"
)
BEST_LOSS = "best loss"
CE_BEST_EPOCH = "ce best epoch"
IN_SAMPLE = ("pt", "argmax_neq_given")
K_FOLD_CL = ("cl", "confident_learning")
GCE = Arm("in-sample gce", *IN_SAMPLE, "gce q=0.7")
SCE = Arm("in-sample sce", *IN_SAMPLE, "sce alpha=0.1,beta=1,label_clamp=0.0001")
CUTOFF = Arm("in-sample cutoff τ=0.1", *IN_SAMPLE, "cutoff tau=0.1")
POWER = Arm("in-sample power γ=0.5", *IN_SAMPLE, "power gamma=0.5")
CL_BEST = Arm("5-fold CL (its best loss)", *K_FOLD_CL, BEST_LOSS)
ORACLE = Arm("CE best epoch (oracle: clean labels)", *IN_SAMPLE, CE_BEST_EPOCH)

# Every comparison the README states: (left, right, metric).
COMPARISONS: tuple[tuple[Arm, Arm, str], ...] = (
    (GCE, CL_BEST, "f1"),
    (SCE, CL_BEST, "f1"),
    (CUTOFF, CL_BEST, "f1"),
    (POWER, CL_BEST, "f1"),
    (GCE, CL_BEST, "precision_at_k"),
    (CUTOFF, GCE, "f1"),
    (CUTOFF, SCE, "f1"),
    (GCE, ORACLE, "f1"),
    (CUTOFF, ORACLE, "f1"),
    (POWER, ORACLE, "f1"),
    (Arm("AUM cutoff τ=0.1", "aum", "aum", "cutoff tau=0.1"),
     Arm("in-sample cutoff τ=0.05", *IN_SAMPLE, "cutoff tau=0.05"), "f1"),
    *((Arm("in-sample cutoff τ=auto", *IN_SAMPLE, "cutoff tau=auto"),
       Arm(f"in-sample cutoff τ={tau}", *IN_SAMPLE, f"cutoff tau={tau}"), "f1")
      for tau in ("0.05", "0.1", "0.2")),
    *((Arm("5-fold CL, power γ=0.5", *K_FOLD_CL, "power gamma=0.5"),
       Arm("5-fold CL, cross-entropy", *K_FOLD_CL, "ce"), metric)
      for metric in ("f1", "precision_at_k")),
    (Arm("in-sample focal γ=2", *IN_SAMPLE, "focal gamma=2"),
     Arm("in-sample cross-entropy, final", *IN_SAMPLE, "ce"), "f1"),
)  # fmt: skip


def compare(left: Stats | None, right: Stats | None) -> str:
    """``beats`` / ``loses`` (mean gap over twice the larger std), ``level``, or ``n/a``."""
    if left is None or right is None or min(left[2], right[2]) < MIN_SEEDS:
        return "n/a"
    gap, margin = left[0] - right[0], 2 * max(left[1], right[1])
    return "beats" if gap > margin else "loses" if -gap > margin else "level"


def _arm_stats(
    arm: Arm, noise: str, metric: str, groups: dict, ce_best: dict[str, Stats]
) -> tuple[Stats | None, str]:
    """The arm's stats at ``noise`` and the loss they are of."""
    if arm.loss == CE_BEST_EPOCH:
        return (ce_best.get(noise) if metric == "f1" else None), CE_BEST_EPOCH
    by_loss = groups.get((noise, arm.protocol, arm.detector, metric), {})
    if arm.loss == BEST_LOSS:
        if not by_loss:
            return None, BEST_LOSS
        loss = max(by_loss, key=lambda k: np.mean(by_loss[k]))
        return _stats(by_loss[loss]), loss
    return (_stats(by_loss[arm.loss]) if arm.loss in by_loss else None), arm.loss


def comparisons(rows: list[dict], ce_best: dict[str, Stats]) -> list[dict[str, Any]]:
    """Each of :data:`COMPARISONS` at each noise setting: the two arms' mean/std/seeds, the
    loss each stands for, and ``verdict`` (:func:`compare`)."""
    groups = grouped(rows)
    noises = sorted({noise_label(row) for row in rows}, key=_noise_order)
    out = []
    for left, right, metric in COMPARISONS:
        for noise in noises:
            (a, a_loss), (b, b_loss) = (_arm_stats(arm, noise, metric, groups, ce_best)
                                        for arm in (left, right))  # fmt: skip
            out.append({
                "left": left.name, "right": right.name, "metric": metric, "noise": noise,
                "left_loss": a_loss, "right_loss": b_loss, "left_stats": a, "right_stats": b,
                "right_picked": right.loss == BEST_LOSS, "verdict": compare(a, b),
            })  # fmt: skip
    return out


def _noise_order(noise: str) -> tuple[bool, float]:
    kind, rate = noise.split()
    return kind != "symmetric", float(rate)


def _f(x: float) -> str:
    return f"{x:.3f}".removeprefix("0")


def _cell(entry: dict[str, Any]) -> str:
    a, b = entry["left_stats"], entry["right_stats"]
    if a is None or b is None:
        return "not run"
    text = f"{entry['verdict']}: {_f(a[0])} ± {_f(a[1])} against {_f(b[0])} ± {_f(b[1])}"
    return text + (f" ({entry['right_loss']})" if entry["right_picked"] else "")


def comparisons_markdown(entries: list[dict[str, Any]]) -> str:
    """One row per comparison, one column per noise setting; each cell the verdict and both
    means ± std, or ``not run``."""
    noises = sorted({e["noise"] for e in entries}, key=_noise_order)
    lines = ["| comparison (F1 unless named) | " + " | ".join(noises) + " |",
             "|---|" + "---|" * len(noises)]  # fmt: skip
    rows: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for e in entries:
        rows[(e["left"], e["right"], e["metric"])][e["noise"]] = e
    for (left, right, metric), by_noise in rows.items():
        name = f"{left} vs {right}" + ("" if metric == "f1" else f", {metric.replace('_', ' ')}")
        lines.append(f"| {name} | " + " | ".join(_cell(by_noise[n]) for n in noises) + " |")
    return "\n".join(lines) + "\n"


def f1_per_epoch_bands(workdir: Path, out: Path) -> Path | None:
    """In-sample detection F1 per epoch: mean over seeds, min-max band; a panel per noise."""
    curves: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for summary in sorted(Path(workdir).glob("*/summary.json")):
        run = summary.parent
        config = json.loads((run / "config.json").read_text())
        if config.get("detector", "pt") != "pt":
            continue
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        f1 = [x.get("f1_argmax_neq_given") for x in lines if "run" not in x]
        if f1 and all(v is not None for v in f1):
            name = "ce" if config["loss"] in CE else loss_label(config["loss"],
                                                                config["loss_hparams"])  # fmt: skip
            if config.get("auto_tau"):
                name = "cutoff tau=auto"
            curves[noise_label(config)][name].append(f1)
    if not curves:
        return None
    plt = report._pyplot()
    noises = sorted(curves)
    fig, axes = plt.subplots(1, len(noises), figsize=(5.2 * len(noises), 3.8), squeeze=False)
    for ax, noise in zip(axes[0], noises, strict=True):
        for name, runs in sorted(curves[noise].items()):
            length = min(len(r) for r in runs)
            values = np.array([r[:length] for r in runs])
            epochs = np.arange(1, length + 1)
            (line,) = ax.plot(epochs, values.mean(axis=0), label=f"{name} ({len(runs)} seeds)",
                              ls="--" if name == "ce" else "-")  # fmt: skip
            ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), alpha=0.2,
                            color=line.get_color())  # fmt: skip
        ax.set_title(f"in-sample detection F1, {noise}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("F1 (argmax ≠ given)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return report._save(fig, out / "f1_per_epoch_seed_bands.png")


def f1_heatmaps(rows: list[dict], out: Path) -> list[Path]:
    """One heatmap of mean F1 (loss x noise) per protocol and detector."""
    cells: dict[tuple, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["f1"] in ("", None):
            continue
        name = "ce" if row["loss"] in CE else loss_label(row["loss"], row["hparams"])
        cells[(row["protocol"], row["detector"])][(name, noise_label(row))].append(float(row["f1"]))
    plt = report._pyplot()
    written = []
    for (protocol, detector), values in sorted(cells.items()):
        losses = sorted({k[0] for k in values}, key=lambda n: (n != "ce", n))
        noises = sorted({k[1] for k in values})
        grid = np.full((len(losses), len(noises)), np.nan)
        for (name, noise), f1 in values.items():
            grid[losses.index(name), noises.index(noise)] = np.mean(f1)
        fig, ax = plt.subplots(figsize=(1.6 * len(noises) + 2.5, 0.45 * len(losses) + 1.5))
        image = ax.imshow(grid, cmap="viridis", vmin=np.nanmin(grid), vmax=np.nanmax(grid),
                          aspect="auto")  # fmt: skip
        ax.set_xticks(range(len(noises)), noises, fontsize=7)
        ax.set_yticks(range(len(losses)), losses, fontsize=7)
        for i in range(len(losses)):
            for j in range(len(noises)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7,
                            color="white")  # fmt: skip
        ax.set_title(f"detection F1 (mean over seeds): {protocol} / {detector}", fontsize=8)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        written.append(report._save(fig, out / f"f1_heatmap_{protocol}_{detector}.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(prog="robust-losses evidence", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="a sweep's workdir (holds results.csv)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    results = workdir / "results.csv"
    if not results.exists():
        print(f"error: {workdir} holds no results.csv (run robust-losses sweep)", file=sys.stderr)
        return 2
    rows = read_rows(results)
    ce_best = read_best_epoch_stats(workdir)
    entries, compared = verdict(rows, ce_best), comparisons(rows, ce_best)
    text = f"{verdict_markdown(entries)}\n{COMPARISONS_HEADING}\n\n{comparisons_markdown(compared)}"
    records.atomic_write(workdir / "verdict.md", lambda f: f.write(text))
    records.write_json(workdir / "verdict.json", entries)
    records.write_json(workdir / "comparisons.json", compared)
    best = {k: {"mean": v[0], "std": v[1], "seeds": v[2]} for k, v in ce_best.items()}
    records.write_json(workdir / CE_BEST_FILE, best)
    if args.no_plots:
        print(workdir / "verdict.md")
        return 0
    out = workdir / "plots"
    out.mkdir(exist_ok=True)
    written = [f1_per_epoch_bands(workdir, out), *f1_heatmaps(rows, out)]
    written += [report.f1_against(results, out, "power", "gamma"),
                report.f1_against(results, out, "cutoff", "tau")]  # fmt: skip
    print(f"{workdir / 'verdict.md'}; {sum(p is not None for p in written)} plots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
