"""Write a mutation report as ``reports/<name>.mutations.json``, atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from audit.errors import ReportError
from audit.internal.files import write_text_atomic
from audit.report.mutations import MutationReport


def mutations_path(directory: str | os.PathLike, name: str) -> Path:
    """Where the mutation report of the spec ``name`` goes in ``directory``."""
    return Path(directory) / f"{name}.mutations.json"


def write_mutations(report: MutationReport, directory: str | os.PathLike) -> Path:
    """Write ``report`` as ``DIRECTORY/<name>.mutations.json``; a reader never sees
    a partial file.  Raises :class:`~audit.errors.ReportError`."""
    out = mutations_path(directory, report.name)
    text = json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
    try:
        return write_text_atomic(out, text)
    except OSError as exc:
        raise ReportError(f"cannot write {out}: {exc}") from exc
