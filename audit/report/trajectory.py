"""A training trajectory: the law measured at successive steps of one run, on the
same windows (``reports/<name>.trajectory.json``), as data, JSON and a terminal
summary.  :mod:`audit.trajectory` measures it; the renderer draws what it holds.

JSON: ``schema`` (``equilaw-trajectory/1``), ``name``, ``spec``, ``run_dir``,
``windows_sha256`` (every step was measured on these token windows) and
``steps``, a list sorted by step of objects with ``step``, ``pearson_r``, ``rho``,
``loss`` (null without a head), ``pr`` (per hidden state 0..L) and ``verdict``.
NaN is written as null.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from typing import Any

from audit.errors import ReportError
from audit.internal import safe_read
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

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

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


def read_trajectory(path: str | os.PathLike) -> Trajectory:
    def error(_field: str | None, _line: int | None, message: str) -> ReportError:
        return ReportError(f"cannot read trajectory {os.fspath(path)}: {message}")

    data = safe_read.read_json(path, "trajectory", error)
    return Trajectory.from_dict(data, os.fspath(path))


def write_trajectory(trajectory: Trajectory, path: str | os.PathLike) -> None:
    from audit.internal.files import write_text_atomic

    try:
        write_text_atomic(path, trajectory.to_json())
    except OSError as exc:
        raise ReportError(f"cannot write trajectory {os.fspath(path)}: {exc}") from exc


BAR_WIDTH = 20


def render(trajectory: Trajectory, console: Any) -> None:
    """One row per step: r (with a bar: longer is closer to −1), ρ, loss, PR_1 → PR_L."""
    from rich.table import Table
    from rich.text import Text

    console.print(Text(f"{trajectory.name}: the law during training "
                       f"({len(trajectory.steps)} checkpoints)", "bold"))
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in ("step", "Pearson r", "", "ρ", "probe loss", "PR_1 → PR_L", "verdict"):
        table.add_column(column, justify="left" if column in ("", "verdict") else "right",
                         no_wrap=True)
    for s in trajectory.steps:
        r = s.pearson_r
        # the bar shows how far r is below 0, so the law emerging is a bar growing
        filled = 0 if not math.isfinite(r) else round(max(0.0, min(1.0, -r)) * BAR_WIDTH)
        bar = Text("█" * filled + "·" * (BAR_WIDTH - filled), "green" if r <= -0.9 else "yellow")
        pr = (f"{s.pr[1]:.4f} → {s.pr[-1]:.4f}" if len(s.pr) > 1 and all(map(math.isfinite, s.pr))
              else "n/a")
        table.add_row(str(s.step), f"{r:+.4f}" if math.isfinite(r) else "n/a", bar,
                      f"{s.rho:.5f}" if math.isfinite(s.rho) else "n/a",
                      f"{s.loss:.3f}" if math.isfinite(s.loss) else "n/a", pr,
                      Text(s.verdict, "green" if s.verdict == "pass" else "red"))
    console.print(table)
