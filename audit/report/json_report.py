"""Write and read ``reports/<name>.json`` atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from audit.errors import ReportError
from audit.internal import safe_read
from audit.internal.files import write_text_atomic
from audit.report.data import Report


def report_path(directory: str | os.PathLike, report: Report) -> Path:
    return Path(directory) / f"{report.name}.json"


def write_json(report: Report, directory: str | os.PathLike) -> Path:
    """Write the report as ``DIRECTORY/<name>.json``; a reader never sees a partial
    file (temporary file in the same folder, then an atomic rename)."""
    return write_json_file(report, report_path(directory, report))


def report_text(report: Report) -> str:
    """The report as its JSON file holds it."""
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"


def write_json_file(report: Report, target: str | os.PathLike) -> Path:
    """Write the report to the file ``target`` atomically (see :func:`write_json`)."""
    target = Path(target)
    text = report_text(report)
    try:
        return write_text_atomic(target, text)
    except OSError as exc:
        raise ReportError(f"cannot write report {target}: {exc}") from exc


def read_json(path: str | os.PathLike) -> Report:
    """Read a report (a baseline, a parent's report) written by :func:`write_json`.
    Refuses, with :class:`ReportError` naming the file: a missing or non-regular
    file (a FIFO would block), invalid JSON, nesting deeper than
    :data:`~audit.internal.safe_read.MAX_DEPTH`, fields of the wrong type."""
    def error(_field: str | None, _line: int | None, message: str) -> ReportError:
        return ReportError(f"cannot read report {path}: {message}")

    data = safe_read.read_json(path, "report", error)
    return Report.from_dict(data, source=str(path))
