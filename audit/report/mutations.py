"""The result of mutation testing a spec (``python -m audit mutate``): one row per
mutant and the two scores, as data (:mod:`audit.mutate` computes them; the file is
written by :mod:`audit.report.mutations_json`, the table drawn by
:mod:`audit.report.mutations_terminal`, from these fields only).

``to_dict()`` is the JSON form (``reports/<name>.mutations.json``): ``name``, ``spec``, ``model``,
``unmutated`` (r, ρ, probe loss of the checkpoint as it is), ``mutation_score``,
``localisation_score``, ``control_flagged``, ``seconds`` and ``mutants``, a list of
objects with ``operator``, ``block``, ``caught``, ``checks``, ``first_moved_layer``,
``expected_layer``, ``loss`` and also ``label``, ``params``, ``control``,
``localised``, ``pearson_r``, ``rho``, ``failures`` (the first failed checks'
messages), ``kld_mean`` and ``same_top`` (against the unmutated model).  NaN is
written as null (as in every report).
"""

from __future__ import annotations

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
    kld_mean: float = math.nan
    """Mean KL(unmutated ‖ mutant) over the probe's scored tokens, nats (NaN without a
    head)."""
    same_top: float = math.nan
    """The fraction of scored tokens whose top token agrees with the unmutated model's."""


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
