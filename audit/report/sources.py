"""The report files a page is rendered from, read back: an audit report
(``<name>.json``, :class:`~audit.report.data.Report`), a mutation report
(``<name>.mutations.json``) or a trajectory (``<name>.trajectory.json``), told
apart by their contents, not their names."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from audit.errors import ReportError
from audit.internal import safe_read
from audit.report.data import Report
from audit.report.mutations import MutationReport
from audit.report.mutations_json import mutation_report_from_dict
from audit.report.trajectory import SCHEMA as TRAJECTORY_SCHEMA
from audit.report.trajectory import Trajectory


@dataclass(frozen=True)
class PageInputs:
    """What one page shows, in the order given."""

    reports: tuple[Report, ...] = ()
    mutations: tuple[MutationReport, ...] = ()
    trajectories: tuple[Trajectory, ...] = ()


def read_report_file(path: str | os.PathLike) -> Report | MutationReport | Trajectory:
    """One report file of any of the three kinds."""
    shown = os.fspath(path)
    def error(_field: str | None, _line: int | None, message: str) -> ReportError:
        return ReportError(f"cannot read report {shown}: {message}")

    # untrusted: a regular file, nesting bounded (audit.internal.safe_read)
    data = safe_read.read_json(path, "report", error)
    if isinstance(data, dict) and data.get("schema") == TRAJECTORY_SCHEMA:
        return Trajectory.from_dict(data, shown)
    if isinstance(data, dict) and "mutants" in data:
        try:
            return mutation_report_from_dict(data, shown)
        except (TypeError, ValueError) as exc:
            raise ReportError(f"malformed mutation report {shown}: {exc}") from None
    return Report.from_dict(data, source=shown)


def read_report_files(paths: Iterable[str | os.PathLike]) -> PageInputs:
    """Every file read and sorted by kind, each kind in the order given."""
    reports, mutations, trajectories = [], [], []
    for path in paths:
        item = read_report_file(path)
        if isinstance(item, Trajectory):
            trajectories.append(item)
        elif isinstance(item, MutationReport):
            mutations.append(item)
        else:
            reports.append(item)
    return PageInputs(tuple(reports), tuple(mutations), tuple(trajectories))
