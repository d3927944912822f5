"""``python -m experiments.evidence`` in a checkout: the installed ``robust-losses evidence``."""

import sys

from robust_losses_jax.commands.evidence import main

if __name__ == "__main__":
    sys.exit(main())
