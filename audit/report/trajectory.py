"""A training trajectory: the law measured at successive steps of one run, on the
same windows, as data (:mod:`audit.trajectory` measures it; the file is read and
written by :mod:`audit.report.trajectory_json`, the table drawn by
:mod:`audit.report.trajectory_terminal`, from these fields only).

``to_dict()`` / ``from_dict()`` are the JSON form
(``reports/<name>.trajectory.json``): ``schema`` (``equilaw-trajectory/1``),
``name``, ``spec``, ``run_dir``, ``windows_sha256`` (every step was measured on
these token windows) and ``steps``, a list sorted by step of objects with
``step``, ``pearson_r``, ``rho``,
``loss`` (null without a head), ``pr`` (per hidden state 0..L) and ``verdict``.
NaN is written as null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from audit.errors import ReportError
from audit.report.data import json_floats

SCHEMA = "equilaw-trajectory/1"


@dataclass(frozen=True)
class TrajectoryStep:
    step: int
    pearson_r: float
    rho: float
    loss: float
    """Probe loss in nats per token; NaN without a head."""
    pr: tuple[float, ...]
    """PR per hidden state 0..L."""
    verdict: str


@dataclass(frozen=True)
class Trajectory:
    name: str
    spec: str | None
    run_dir: str | None
    windows_sha256: str
    steps: tuple[TrajectoryStep, ...]

    def with_step(self, entry: TrajectoryStep) -> Trajectory:
        """This trajectory with ``entry`` added (replacing one of the same step)."""
        kept = [s for s in self.steps if s.step != entry.step]
        return replace(self, steps=tuple(sorted(kept + [entry], key=lambda s: s.step)))

    def to_dict(self) -> dict[str, Any]:
        return json_floats({
            "schema": SCHEMA, "name": self.name, "spec": self.spec, "run_dir": self.run_dir,
            "windows_sha256": self.windows_sha256,
            "steps": [{"step": s.step, "pearson_r": s.pearson_r, "rho": s.rho, "loss": s.loss,
                       "pr": list(s.pr), "verdict": s.verdict} for s in self.steps]})

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> Trajectory:
        """Read a trajectory; :class:`ReportError` names the file and the field."""
        where = f" in {source}" if source else ""

        def need(obj: Any, key: str, path: str) -> Any:
            if not isinstance(obj, dict) or key not in obj:
                raise ReportError(f"trajectory{where} lacks the field {path}")
            return obj[key]

        def num(x: Any, path: str) -> float:
            if x is None:
                return math.nan
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise ReportError(f"trajectory{where}: {path} must be a number or null, got "
                                  f"{x!r}")
            return float(x)

        if need(data, "schema", "schema") != SCHEMA:
            raise ReportError(f"trajectory{where}: schema {data['schema']!r} is not {SCHEMA!r}")
        steps = []
        for i, s in enumerate(need(data, "steps", "steps")):
            at = f"steps[{i}]"
            step = need(s, "step", f"{at}.step")
            if isinstance(step, bool) or not isinstance(step, int):
                raise ReportError(f"trajectory{where}: {at}.step must be an integer, got {step!r}")
            steps.append(TrajectoryStep(
                step=step, pearson_r=num(need(s, "pearson_r", f"{at}.pearson_r"), f"{at}.pearson_r"),
                rho=num(need(s, "rho", f"{at}.rho"), f"{at}.rho"),
                loss=num(need(s, "loss", f"{at}.loss"), f"{at}.loss"),
                pr=tuple(num(v, f"{at}.pr") for v in need(s, "pr", f"{at}.pr")),
                verdict=str(need(s, "verdict", f"{at}.verdict"))))
        return cls(name=str(need(data, "name", "name")), spec=data.get("spec"),
                   run_dir=data.get("run_dir"),
                   windows_sha256=str(need(data, "windows_sha256", "windows_sha256")),
                   steps=tuple(sorted(steps, key=lambda s: s.step)))
