"""Trajectories: the law at successive checkpoints of one training run.

``python -m audit trajectory SPEC RUN_DIR`` audits every ``checkpoint-N``
subfolder of RUN_DIR (the layout transformers' ``Trainer`` and
:func:`audit.synthetic.training.train_tiny` write) with the spec's probe and
thresholds, in step order, and writes ``reports/<name>.trajectory.json``
(:mod:`audit.report.trajectory`).  :class:`audit.integrations.monitor.EquilawCallback` appends
to the same file from inside a training process.  Every step must be measured on
the same token windows (the same tokenizer and probe): a step whose windows differ
is refused, naming the checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path

from audit.errors import ReportError, SpecError
from audit.outputs import report_file
from audit.report.data import Report
from audit.report.trajectory import Trajectory, TrajectoryStep
from audit.report.trajectory_json import read_trajectory, write_trajectory
from audit.spec import Spec

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def trajectory_path(spec: Spec, reports_dir: str | os.PathLike = "reports") -> Path:
    """``REPORTS/<name>.trajectory.json``."""
    return report_file(reports_dir, spec.name, "trajectory")


def find_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-N`` subfolder, by step."""
    run = Path(run_dir)
    if not run.is_dir():
        raise SpecError("the training run folder does not exist or is not a folder",
                        file=os.fspath(run_dir))
    found = sorted((int(m.group(1)), entry) for entry in run.iterdir()
                   if entry.is_dir() and (m := CHECKPOINT.match(entry.name)))
    if not found:
        listed = ", ".join(sorted(p.name for p in run.iterdir())[:8]) or "nothing"
        raise SpecError(f"no checkpoint-N subfolders (as transformers' Trainer writes them); "
                        f"it holds: {listed}", file=os.fspath(run_dir))
    return found


def step_of(report: Report, step: int) -> TrajectoryStep:
    return TrajectoryStep(step=step, pearson_r=report.law.pearson_r, rho=report.law.rho,
                          loss=report.loss.mean if report.loss else float("nan"),
                          pr=tuple(row.pr for row in report.layers), verdict=report.verdict)


def add_step(trajectory: Trajectory | None, spec: Spec, report: Report, step: int,
             run_dir: str | None = None, where: str = "") -> Trajectory:
    """``trajectory`` (None: a new one) with this step's report added; a report
    measured on other windows than the trajectory's is refused."""
    windows = report.probe.get("windows_sha256", "")
    if trajectory is None:
        trajectory = Trajectory(name=spec.name, spec=spec.source, run_dir=run_dir,
                                windows_sha256=windows, steps=())
    elif trajectory.windows_sha256 != windows:
        raise ReportError(f"step {step}{where} was measured on other token windows than the "
                          f"trajectory's earlier steps (another tokenizer or probe): a "
                          f"trajectory compares steps on the same windows only")
    return trajectory.with_step(step_of(report, step))


def audit_run(spec: Spec, run_dir: str | os.PathLike,
              log: Callable[[str], None] | None = None) -> Trajectory:
    """Audit every checkpoint of ``run_dir`` with ``spec`` (its ``model.path`` replaced
    by each checkpoint's folder); the tokenizer is each checkpoint's own unless the
    spec names one with ``model.tokenizer``."""
    from audit.pipeline import run

    trajectory = None
    for step, folder in find_checkpoints(run_dir):
        one = dataclasses.replace(spec, model=dataclasses.replace(spec.model, path=str(folder)))
        report = run(one)
        trajectory = add_step(trajectory, spec, report, step, os.fspath(run_dir),
                              f" ({folder})")
        if log is not None:
            log(f"step {step:>7}: Pearson r {report.law.pearson_r:+.4f}, ρ "
                f"{report.law.rho:.5f}, {report.verdict}")
    assert trajectory is not None
    return trajectory


def append(path: str | os.PathLike, spec: Spec, report: Report, step: int,
           run_dir: str | None = None) -> Trajectory:
    """Add one step to the trajectory file at ``path`` (created when missing),
    atomically; returns the trajectory written."""
    existing = read_trajectory(path) if Path(path).is_file() else None
    if existing is not None and existing.name != spec.name:
        raise ReportError(f"{os.fspath(path)} is the trajectory of {existing.name!r}, not of "
                          f"{spec.name!r}")
    trajectory = add_step(existing, spec, report, step, run_dir)
    write_trajectory(trajectory, path)
    return trajectory

