"""``python -m experiments.find_errors`` in a checkout: ``robust-losses find-errors``."""

import sys

from robust_losses_jax.commands.find_errors import main

if __name__ == "__main__":
    sys.exit(main())
