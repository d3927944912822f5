"""``python -m experiments.run`` in a checkout: the installed ``robust-losses run``."""

import sys

from robust_losses_jax.commands.run import main

if __name__ == "__main__":
    sys.exit(main())
