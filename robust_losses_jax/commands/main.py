"""``robust-losses``: one installed command, a subcommand per entry point.

    robust-losses run --loss=power --gamma=2
    robust-losses find-errors --dataset=npz:my_data.npz --workdir=workdir/audit
    robust-losses sweep --dry-run
    robust-losses SUBCOMMAND --help

``python -m robust_losses_jax ...`` is the same command.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from robust_losses_jax.commands import cli

# Subcommand -> (module, what it does). A subcommand's module is imported only when it runs: each
# sets XLA's flags and quiets TensorFlow's logs in its main(), before JAX starts.
SUBCOMMANDS = {
    "run": ("robust_losses_jax.commands.run", "train on noisy labels, score the detectors"),
    "find-errors": (
        "robust_losses_jax.commands.find_errors",
        "find the label errors in your own dataset",
    ),
    "sweep": ("robust_losses_jax.commands.sweep", "a resumable grid of runs into one table"),
    "report": ("robust_losses_jax.commands.report", "plots of a run, a comparison or a sweep"),
    "evidence": ("robust_losses_jax.commands.evidence", "a sweep's verdict table and plots"),
}


def usage() -> str:
    """What ``robust-losses --help`` prints."""
    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: robust-losses SUBCOMMAND [flags]   (robust-losses SUBCOMMAND --help: its flags)",
        "",
        "Losses robust to label errors, and tools to find those errors.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()),
        "",
        "  --version  print the package's version and exit",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the subcommand ``argv[0]`` with the rest of ``argv``; its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(cli.version_text())
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(
            f"error: unknown subcommand {argv[0]!r}; one of: {', '.join(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    try:
        return module.main(argv[1:])
    except SystemExit as stop:  # --help, or argparse's one-line error.
        return stop.code if isinstance(stop.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
