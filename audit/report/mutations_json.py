"""A mutation report as ``reports/<name>.mutations.json``: written atomically, read back."""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from audit.errors import ReportError
from audit.internal.files import write_text_atomic
from audit.report.mutations import MutantRow, MutationReport


def mutations_path(directory: str | os.PathLike, name: str) -> Path:
    """Where the mutation report of the spec ``name`` goes in ``directory``
    (:func:`audit.outputs.report_file`, which the one-owner check uses too)."""
    from audit.outputs import report_file

    return report_file(directory, name, "mutations")


def write_mutations(report: MutationReport, directory: str | os.PathLike) -> Path:
    """Write ``report`` as ``DIRECTORY/<name>.mutations.json``; a reader never sees
    a partial file.  Raises :class:`~audit.errors.ReportError`."""
    out = mutations_path(directory, report.name)
    text = json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
    try:
        return write_text_atomic(out, text)
    except OSError as exc:
        raise ReportError(f"cannot write {out}: {exc}") from exc


_MUTANT_FLOATS = ("loss", "pearson_r", "rho", "kld_mean", "same_top")
_OPTIONAL = ("failures", "kld_mean", "same_top")
"""Fields a row may lack (older files): they take their defaults."""


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
            if f.name in _OPTIONAL and isinstance(row, dict) and f.name not in row:
                continue  # optional: defaulted
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
