"""``python -m robust_losses_jax SUBCOMMAND ...``: the ``robust-losses`` command."""

import sys

from robust_losses_jax.commands.main import main

sys.exit(main())
