"""Write and read ``reports/<name>.json`` atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from audit.errors import ReportError
from audit.report.data import Report


def report_path(directory: str | os.PathLike, report: Report) -> Path:
    return Path(directory) / f"{report.name}.json"


def write_json(report: Report, directory: str | os.PathLike) -> Path:
    """Write the report as ``DIRECTORY/<name>.json``; a reader never sees a partial
    file (temporary file in the same folder, then an atomic rename)."""
    return write_json_file(report, report_path(directory, report))


def write_json_file(report: Report, target: str | os.PathLike) -> Path:
    """Write the report to the file ``target`` atomically (see :func:`write_json`)."""
    target = Path(target)
    text = json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            # mkstemp creates the file private (0600); a report is an ordinary file.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise ReportError(f"cannot write report {target}: {exc}") from exc
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: str | os.PathLike) -> Report:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read report {path}: {exc}") from exc
    return Report.from_dict(data, source=str(path))
