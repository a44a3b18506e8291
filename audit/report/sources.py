"""The report files a page is rendered from, read back: an audit report
(``<name>.json``, :class:`~audit.report.data.Report`), a mutation report
(``<name>.mutations.json``) or a trajectory (``<name>.trajectory.json``), told
apart by their contents, not their names."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from audit.errors import ReportError
from audit.report.data import Report
from audit.report.mutations import MutantRow, MutationReport
from audit.report.trajectory import SCHEMA as TRAJECTORY_SCHEMA
from audit.report.trajectory import Trajectory


@dataclass(frozen=True)
class PageInputs:
    """What one page shows, in the order given."""

    reports: tuple[Report, ...] = ()
    mutations: tuple[MutationReport, ...] = ()
    trajectories: tuple[Trajectory, ...] = ()


_MUTANT_FLOATS = ("loss", "pearson_r", "rho")


def mutation_report_from_dict(data: Any, source: str | None = None) -> MutationReport:
    """Read a mutation report (``MutationReport.to_dict()``); its scores are
    recomputed from the rows, so they cannot disagree with them.  A missing field
    is a :class:`ReportError` naming it and the file."""
    where = f" in {source}" if source else ""

    def need(obj: Any, key: str, path: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise ReportError(f"mutation report{where} lacks the field {path}")
        return obj[key]

    def number(value: Any) -> float:
        return math.nan if value is None else float(value)

    rows = []
    for i, row in enumerate(need(data, "mutants", "mutants")):
        kwargs = {}
        for f in fields(MutantRow):
            if f.name == "failures" and isinstance(row, dict) and f.name not in row:
                continue  # optional: written by every version, defaulted all the same
            value = need(row, f.name, f"mutants[{i}].{f.name}")
            if f.name in _MUTANT_FLOATS:
                value = number(value)
            elif f.name in ("checks", "failures"):
                value = tuple(value)
            elif f.name == "params":
                value = dict(value)
            kwargs[f.name] = value
        rows.append(MutantRow(**kwargs))
    unmutated = {key: number(value)
                 for key, value in dict(need(data, "unmutated", "unmutated")).items()}
    return MutationReport(name=str(need(data, "name", "name")), spec=data.get("spec"),
                          model=str(need(data, "model", "model")), unmutated=unmutated,
                          mutants=tuple(rows), seconds=float(need(data, "seconds", "seconds")))


def read_report_file(path: str | os.PathLike) -> Report | MutationReport | Trajectory:
    """One report file of any of the three kinds."""
    shown = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read report {shown}: {exc}") from None
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
