"""The mutation report as a rich table with its scores (``python -m audit mutate``):
draws what :class:`~audit.report.mutations.MutationReport` holds, computes nothing."""

from __future__ import annotations

import math
from typing import Any

from audit.report.mutations import MutationReport


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
