"""``python -m experiments.sweep`` in a checkout: the installed ``robust-losses sweep``."""

import sys

from robust_losses_jax.commands.sweep import main

if __name__ == "__main__":
    sys.exit(main())
