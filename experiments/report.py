"""``python -m experiments.report`` in a checkout: the installed ``robust-losses report``."""

import sys

from robust_losses_jax.commands.report import main

if __name__ == "__main__":
    sys.exit(main())
