"""Every file a run writes, and its one owner.

Two outputs of one run that land on the same path would silently overwrite each
other: a spec named ``m.parent-a`` and the parent ``a`` of a merge spec ``m`` both
wrote ``reports/m.parent-a.json``.  :func:`spec_outputs` lists what a spec writes;
:func:`check_one_owner` refuses, before anything is measured, a path claimed twice.

A spec ``NAME`` owns, in the reports folder:

- ``NAME.json``, its report (pytest run, ``python -m audit report``);
- ``NAME.parent-LABEL.json``, the report of each merge parent (:func:`parent_spec_name`);
- ``NAME.reference.json``, the report of its reference model;
- ``NAME.base.json`` and ``NAME.merged.json``, the reports of a PEFT adapter's base
  and of the adapter merged into it (``model.adapter``);
- ``NAME.mutations.json`` (``python -m audit mutate``) and ``NAME.trajectory.json``
  (``python -m audit trajectory``);

and ``BASELINES/NAME.json``, its baseline (``--audit-update-baseline``, ``calibrate``),
with ``BASELINES/NAME.tokens.npz``, its token record (``--audit-update-baseline``).
The files of the other verbs are claimed in every run because runs share the
reports folder: a spec named ``m.mutations`` would overwrite the mutation report of
``m``.  A new kind of file (a token record beside the baseline, an HTML page) is
added here, or passed to :func:`check_one_owner` as an extra :class:`Output`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from audit.errors import EquilawError, SpecError
from audit.spec import Spec

REPORT_SUFFIXES = {"reference": "report of the reference model",
                   "base": "report of the adapter's base", "merged": "report of the merged adapter",
                   "mutations": "mutation report", "trajectory": "trajectory"}
"""``NAME.<suffix>.json`` files a spec owns besides its report, and what they hold."""


def report_file(reports_dir: str | os.PathLike, name: str, kind: str | None = None) -> Path:
    """``REPORTS/<name>.json``, or ``REPORTS/<name>.<kind>.json`` for a kind of
    :data:`REPORT_SUFFIXES`: the one definition of these names, used by their
    writers and by :func:`spec_outputs`."""
    if kind is not None and kind not in REPORT_SUFFIXES:
        raise ValueError(f"unknown report kind {kind!r}")
    return Path(reports_dir) / (f"{name}.json" if kind is None else f"{name}.{kind}.json")


def parent_spec_name(spec: Spec, label: str) -> str:
    """The report name of a merge parent: ``<spec>.parent-<label as a file name>``
    (lowercase, every run of other characters one '-'), so its report stays in the
    reports folder whatever the label holds."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", label.lower()).strip("-.") or "parent"
    return f"{spec.name}.parent-{slug}"


@dataclass(frozen=True)
class Output:
    """One file a run writes: where, what it is (for messages), and the spec and
    field that make it (for the error's location; None for a file of the run)."""

    path: Path
    what: str
    spec: Spec | None = None
    field: str | None = None


def spec_outputs(spec: Spec, reports_dir: str | os.PathLike | None,
                 baselines_dir: str | os.PathLike | None = None) -> list[Output]:
    """The files ``spec`` owns (see the module docstring); none in the reports
    folder when there is none, no baseline for a spec built in code without a
    baselines folder."""
    from audit.compare.baseline import baseline_path

    out: list[Output] = []
    if reports_dir is not None:
        out.append(Output(report_file(reports_dir, spec.name),
                          f"the report of spec {spec.name!r}", spec, "name"))
        for kind, what in REPORT_SUFFIXES.items():
            out.append(Output(report_file(reports_dir, spec.name, kind),
                              f"the {what} of spec {spec.name!r}", spec, "name"))
        for label, _path in spec.merge.parents if spec.merge is not None else ():
            out.append(Output(report_file(reports_dir, parent_spec_name(spec, label)),
                              f"the report of parent {label!r} of spec {spec.name!r}",
                              spec, f"merge.parents.{label}"))
    try:
        baseline = baseline_path(spec, baselines_dir)
        out.append(Output(baseline, f"the baseline of spec {spec.name!r}", spec, "name"))
        from audit.compare.output_gate import token_record_path

        out.append(Output(token_record_path(baseline),
                          f"the baseline token record of spec {spec.name!r}", spec, "name"))
    except EquilawError:  # built in code, no baselines folder: it has no baseline
        pass
    return out


def _key(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path))


def check_one_owner(outputs: Iterable[Output]) -> None:
    """Raise :class:`SpecError` at the second claim of a path, naming both owners;
    paths are compared absolute (``a/../b`` and ``b`` are one file)."""
    first: dict[str, Output] = {}
    for output in outputs:
        key = _key(output.path)
        if key not in first:
            first[key] = output
            continue
        earlier = first[key]
        message = (f"{os.path.relpath(output.path)} would be written as {output.what} and as "
                   f"{earlier.what}: every file a run writes has one owner; rename one of "
                   "them")
        if output.spec is not None:
            raise output.spec.error(output.field, message)
        raise SpecError(message)


def check_specs(specs: Iterable[Spec], reports_dir: str | os.PathLike | None,
                baselines_dir: str | os.PathLike | None = None,
                extra: Iterable[Output] = ()) -> None:
    """:func:`check_one_owner` over every spec's outputs and the run's ``extra``
    files (an HTML page of the whole run...)."""
    check_one_owner([*extra, *(output for spec in specs
                               for output in spec_outputs(spec, reports_dir, baselines_dir))])
