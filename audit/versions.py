"""equilaw's version, and the software versions behind a measurement: what a
report records (and a baseline compares) and what the statistics cache keys on.
Imports nothing of equilaw, so that ``audit/__init__`` can take the version from
here."""

from __future__ import annotations

import platform
from typing import Any

__version__ = "0.1.0"
"""The one place the version is written (pyproject.toml and ``audit.__version__``
read it)."""


def software_versions(backend: Any) -> dict[str, str]:
    """Python's, numpy's and equilaw's versions, then the backend's libraries
    (``backend.versions()``: name -> version), in that order."""
    import numpy as np  # numpy's own version; ``import audit`` stays light

    return {"python": platform.python_version(), "numpy": np.__version__,
            "equilaw": __version__, **backend.versions()}
