"""Run several losses with the same settings and tabulate every detector, whatever it shows.

    python -m experiments.compare                          # the README table: defaults, seed 0
    python -m experiments.compare --workdir=workdir/compare --seed=1
    python -m experiments.compare --losses=ce,power:gamma=0.5 -- --epochs=5 --train-size=2000

Each loss is ``name`` or ``name:key=value,key=value`` (separated by ``;`` when several take
hyperparameters, e.g. ``ce;power:gamma=0.5,tau=0.1``). Flags after ``--`` go to every run
(``python -m experiments.run --help``). A run whose ``summary.json`` exists is not re-run, so an
interrupted comparison picks up where it stopped. Writes ``<workdir>/<loss>/`` per run and
``<workdir>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from robust_losses_jax import xla_setup

xla_setup.configure_cpu()  # Before JAX starts its backends.

DEFAULT_LOSSES = "ce;focal:gamma=2;power:gamma=2;cutoff:tau=0.1"


def parse_losses(text: str) -> list[tuple[str, dict[str, float]]]:
    """``"ce;power:gamma=2,tau=0.1"`` -> ``[("ce", {}), ("power", {"gamma": 2.0, "tau": 0.1})]``."""
    out = []
    for item in filter(None, (part.strip() for part in text.replace(";", "\n").splitlines())):
        name, _, params = item.partition(":")
        hparams = {}
        for pair in filter(None, params.split(",")):
            key, eq, value = pair.partition("=")
            if not eq:
                raise ValueError(f"loss hyperparameter {pair!r} in {item!r} must be key=value.")
            try:
                hparams[key.strip()] = float(value)
            except ValueError:
                raise ValueError(
                    f"loss hyperparameter {pair!r} in {item!r} is not a number."
                ) from None
        out.append((name.strip(), hparams))
    return out


def run_name(name: str, hparams: dict[str, float]) -> str:
    return "_".join([name, *(f"{k}{v:g}" for k, v in sorted(hparams.items()))])


def table(rows: list[tuple[str, dict]]) -> str:
    """A markdown table: test accuracy, F1/precision/recall of each detector, AUROC, P@k."""
    header = (
        "| loss | test acc | memorised | F1 argmax≠given | P / R | F1 p_t<0.5 | P / R "
        "| AUROC 1-p_t | AP | P@k |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, summary in rows:
        det = summary["detection"]
        argmax, low_pt = det["argmax_neq_given"], det["pt_below_0.5"]
        ranking = det["ranking_1_minus_pt"]
        lines.append(
            f"| {name} | {summary['test_accuracy']:.3f} | {summary['memorised_fraction']:.3f} "
            f"| {argmax['f1']:.3f} | {argmax['precision']:.3f} / {argmax['recall']:.3f} "
            f"| {low_pt['f1']:.3f} | {low_pt['precision']:.3f} / {low_pt['recall']:.3f} "
            f"| {ranking['auroc']:.3f} | {ranking['average_precision']:.3f} "
            f"| {ranking['precision_at_k']:.3f} |"
        )
    return header + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_flags: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, run_flags = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", default=DEFAULT_LOSSES)
    parser.add_argument("--workdir", default="workdir/compare")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from experiments import run
    from robust_losses_jax import experiment

    try:
        losses = parse_losses(args.losses)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    workdir = Path(args.workdir)
    rows = []
    for name, hparams in losses:
        out = workdir / run_name(name, hparams)
        flags = [f"--loss={name}", *(f"--{k.replace('_', '-')}={v}" for k, v in hparams.items())]
        flags += [f"--seed={args.seed}", f"--workdir={out}", *run_flags]
        if not (out / "summary.json").exists():
            code = run.main(flags)
            if code:
                return code
        rows.append((run_name(name, hparams), json.loads((out / "summary.json").read_text())))
    config = json.loads((workdir / run_name(*losses[0]) / "config.json").read_text())
    keys = ("dataset", "model", "noise_kind", "noise_rate", "epochs", "train_size", "batch_size",
            "optimizer", "lr", "seed")  # fmt: skip
    settings = {k: config[k] for k in keys}
    text = f"Settings: {json.dumps(settings)}\n\n" + table(rows)
    experiment.atomic_write(workdir / "table.md", lambda f: f.write(text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
