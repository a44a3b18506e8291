"""Read and write ``reports/<name>.trajectory.json`` (atomically)."""

from __future__ import annotations

import json
import os

from audit.errors import ReportError
from audit.internal import safe_read
from audit.internal.files import write_text_atomic
from audit.report.trajectory import Trajectory


def read_trajectory(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory file; :class:`~audit.errors.ReportError` names the file
    and the field."""
    def error(_field: str | None, _line: int | None, message: str) -> ReportError:
        return ReportError(f"cannot read trajectory {os.fspath(path)}: {message}")

    # untrusted: a regular file, nesting bounded (audit.internal.safe_read)
    data = safe_read.read_json(path, "trajectory", error)
    return Trajectory.from_dict(data, os.fspath(path))


def write_trajectory(trajectory: Trajectory, path: str | os.PathLike) -> None:
    """Write ``trajectory`` to ``path``; a reader never sees a partial file."""
    text = json.dumps(trajectory.to_dict(), indent=2, allow_nan=False) + "\n"
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise ReportError(f"cannot write trajectory {os.fspath(path)}: {exc}") from exc
