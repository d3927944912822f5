"""robust_losses_jax: training classifiers robust to label errors, and finding those errors."""

import importlib.metadata
import re
from pathlib import Path


def _version() -> str:
    """The installed distribution's version; in a source tree never installed, setup.py's."""
    try:
        return importlib.metadata.version("robust_losses_jax")
    except importlib.metadata.PackageNotFoundError:
        setup = Path(__file__).resolve().parent.parent / "setup.py"
        found = re.search(r'version="([^"]+)"', setup.read_text()) if setup.is_file() else None
        return found.group(1) if found else "unknown"


__version__ = _version()
