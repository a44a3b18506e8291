"""The result of mutation testing a spec (``python -m audit mutate``): one row per
mutant and the two scores, as data, JSON and a rich table.  Renderers draw only
what the rows hold; :mod:`audit.mutate` computes them.

JSON (``reports/<name>.mutations.json``): ``name``, ``spec``, ``model``,
``unmutated`` (r, ρ, probe loss of the checkpoint as it is), ``mutation_score``,
``localisation_score``, ``control_flagged``, ``seconds`` and ``mutants``, a list of
objects with ``operator``, ``block``, ``caught``, ``checks``, ``first_moved_layer``,
``expected_layer``, ``loss`` and also ``label``, ``params``, ``control``,
``localised``, ``pearson_r``, ``rho``, ``failures`` (the first failed checks'
messages).  NaN is written as null (as in every report).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from audit.checks import EVIDENCE
from audit.report.data import json_floats

CHECK_KINDS = EVIDENCE
"""What can catch a mutant, in table order (``audit.checks.EVIDENCE``)."""


@dataclass(frozen=True)
class MutantRow:
    """One mutant and what the audit made of it."""

    operator: str
    """The damage operator (``audit.synthetic.damage.OPERATORS``)."""
    label: str
    block: int | None
    """The block damaged (the first repeated position for ``repeat``); None for the
    noise control."""
    params: dict[str, Any]
    control: bool
    """The healthy control (weight noise): it should not be flagged."""
    caught: bool
    """Some check failed that the unmutated checkpoint passes."""
    checks: tuple[str, ...]
    """The kinds that caught it, in :data:`CHECK_KINDS` order."""
    first_moved_layer: int | None
    expected_layer: int | None
    """The hidden state the damage first shows in (block k -> k + 1)."""
    localised: bool
    """``first_moved_layer == expected_layer``."""
    loss: float
    """The mutant's probe loss (NaN when the model has no head)."""
    pearson_r: float
    rho: float
    failures: tuple[str, ...] = ()
    """The first few failed checks' messages."""


@dataclass(frozen=True)
class MutationReport:
    name: str
    spec: str | None
    """The spec file."""
    model: str
    unmutated: dict[str, float]
    """``pearson_r``, ``rho``, ``loss`` of the checkpoint as it is."""
    mutants: tuple[MutantRow, ...]
    seconds: float

    @property
    def damaged(self) -> tuple[MutantRow, ...]:
        return tuple(row for row in self.mutants if not row.control)

    @property
    def mutation_score(self) -> float:
        """The share of damaged mutants caught (NaN without any)."""
        rows = self.damaged
        return sum(row.caught for row in rows) / len(rows) if rows else math.nan

    @property
    def localisation_score(self) -> float:
        """The share of damaged mutants whose first moved layer is exactly the
        damaged block's output (NaN without any)."""
        rows = [row for row in self.damaged if row.expected_layer is not None]
        return sum(row.localised for row in rows) / len(rows) if rows else math.nan

    @property
    def control_flagged(self) -> bool | None:
        """Whether a healthy control was flagged; None without one."""
        controls = [row for row in self.mutants if row.control]
        return any(row.caught for row in controls) if controls else None

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "spec": self.spec, "model": self.model,
               "unmutated": dict(self.unmutated), "mutation_score": self.mutation_score,
               "localisation_score": self.localisation_score,
               "control_flagged": self.control_flagged, "seconds": self.seconds,
               "mutants": [asdict(row) for row in self.mutants]}
        return json_floats(out)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def _num(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "n/a"


def render(report: MutationReport, console: Any) -> None:
    """The table and the scores on a rich console."""
    from rich.table import Table
    from rich.text import Text

    u = report.unmutated
    console.print(Text.assemble(
        (f"{report.name}: mutation testing of {report.model}", "bold"),
        f"\nunmutated: Pearson r {_num(u.get('pearson_r'), 4)}, ρ {_num(u.get('rho'), 5)}, "
        f"probe loss {_num(u.get('loss'))} nats"))
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in ("operator", "block", "damage", "verdict", "caught by", "first moved",
                   "expected", "r", "loss"):
        table.add_column(column, justify="left" if column in ("operator", "damage", "verdict",
                                                              "caught by") else "right",
                         no_wrap=column != "damage", overflow="fold")
    for row in report.mutants:
        if row.control:
            verdict = Text("flagged", "bold red") if row.caught else Text("not flagged", "green")
        else:
            verdict = Text("caught", "green") if row.caught else Text("MISSED", "bold red")
        moved = "-" if row.first_moved_layer is None else str(row.first_moved_layer)
        expected = "-" if row.expected_layer is None else str(row.expected_layer)
        if row.expected_layer is not None and row.first_moved_layer is not None:
            moved = Text(moved, "green" if row.localised else "yellow")
        table.add_row(row.operator, "-" if row.block is None else str(row.block), row.label,
                      verdict, ", ".join(row.checks) or "-", moved, expected,
                      _num(row.pearson_r, 3), _num(row.loss, 3))
    console.print(table)
    flagged = report.control_flagged
    console.print(Text.assemble(
        ("mutation score ", "bold"), f"{_num(report.mutation_score, 2)} "
        f"({sum(r.caught for r in report.damaged)} of {len(report.damaged)} damaged mutants "
        f"caught)   ", ("localisation score ", "bold"),
        f"{_num(report.localisation_score, 2)} (first moved layer = the damaged block's "
        f"output)   control: " + ("none" if flagged is None else
                                   "FLAGGED" if flagged else "not flagged"),
        f"   {report.seconds:.0f} s"))
