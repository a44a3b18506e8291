"""The software versions behind a measurement: what a report records (and a
baseline compares) and what the statistics cache keys on."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from audit import __version__


def software_versions(backend: Any) -> dict[str, str]:
    """Python's, numpy's and equilaw's versions, then the backend's libraries
    (``backend.versions()``: name -> version), in that order."""
    return {"python": platform.python_version(), "numpy": np.__version__,
            "equilaw": __version__, **backend.versions()}
