"""The report object: everything a renderer needs, computed once.

A :class:`Report` is plain data.  ``to_dict()`` is the JSON schema (see
docs/report-schema.md); ``Report.from_dict`` reads it back, so renderers work the
same on a fresh run and on a report file.  Renderers never compute: every number
they draw is a field here.  Non-finite floats become ``null`` in the dict form.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from audit.checks import CheckResult

SCHEMA_VERSION = 2

LAYER_STATUSES = ("ok", "violation", "expected", "unjudged")


@dataclass(frozen=True)
class LawSummary:
    """The fit of log10 PR against the layer index, with jackknife standard errors
    (NaN when the probe had a single shard)."""

    slope: float
    slope_se: float
    intercept: float
    intercept_se: float
    pearson_r: float
    pearson_r_se: float
    r_squared: float
    r_squared_se: float
    rho: float
    rho_se: float
    mean_step: float
    mean_step_se: float
    first_layer: int
    """The first judged layer (1: layer 0, the embedding output, is never judged)."""
    pr_first: float
    """PR of the first judged layer."""
    pr_last: float
    """PR of the last layer, L."""


@dataclass(frozen=True)
class LayerRow:
    """One hidden state's numbers.  ``index`` 0 is the embedding output."""

    index: int
    pr: float
    pr_se: float
    log10_pr: float
    log10_pr_se: float
    fitted: float
    fitted_se: float
    deviation: float
    deviation_se: float
    step: float
    step_se: float
    rank: int
    """Rank of the centred feature scatter (< width means dead or dependent dimensions)."""
    condition: float
    """Condition number κ of the centred features, columns scaled to unit norm
    (``inf`` when rank < width).  PR's relative precision is about κ² × 1e-16
    with ``statistics: gram``, κ × 1e-16 with ``qr``."""
    status: str
    """``ok``, ``violation`` (a check failed), ``expected`` (a declared deviant layer
    that failed a check) or ``unjudged`` (layer 0)."""


@dataclass(frozen=True)
class Report:
    """The outcome of auditing one spec with one backend."""

    name: str
    spec: dict[str, Any]
    model: dict[str, Any]
    """``path`` (as written), ``resolved_path``, ``sha256`` of the weights,
    ``architecture``, ``layers`` (L), ``width``."""
    corpus: dict[str, Any]
    """``name``, ``sha256``, ``tokens`` (tokens fed to the model), ``stream_tokens``
    (the whole tokenized corpus), ``examples`` (feature/target pairs), ``sequences``,
    ``length``."""
    measure: str
    normalization: str
    target: str
    backend: str
    seeds: dict[str, int]
    versions: dict[str, str]
    law: LawSummary
    layers: tuple[LayerRow, ...]
    checks: tuple[CheckResult, ...]
    verdict: str
    """``pass`` when no check failed outside the declared deviant layers, else ``fail``."""
    timing: dict[str, float]
    """``load_seconds``, ``forward_seconds``, ``stats_seconds``, ``tokens_per_second``."""
    shards: int
    statistics: str
    """How the statistics were accumulated: ``gram`` or ``qr``."""
    warnings: tuple[str, ...] = ()
    """Things the reader should know that are not check failures (for example
    layers whose condition number limits PR's precision)."""

    @property
    def violations(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed and not c.expected)

    @property
    def expected_failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed and c.expected)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "law":
                value = asdict(value)
            elif f.name == "layers":
                value = [asdict(row) for row in value]
            elif f.name == "checks":
                value = [_check_to_dict(c) for c in value]
            elif f.name == "warnings":
                value = list(value)
            out[f.name] = value
        out["violations"] = [
            {"layer": c.layer, "check": c.check, "value": c.value, "stderr": c.stderr,
             "threshold": c.threshold, "message": c.message}
            for c in self.violations
        ]
        return _finite_or_none(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        from audit.errors import ReportError

        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ReportError(f"report schema_version {version!r} is not {SCHEMA_VERSION}: "
                              "re-run the audit to regenerate it")
        data = _none_to_nan(data)
        kwargs = {f.name: data[f.name] for f in fields(cls)}
        kwargs["law"] = LawSummary(**data["law"])
        kwargs["layers"] = tuple(LayerRow(**row) for row in data["layers"])
        kwargs["checks"] = tuple(_check_from_dict(c) for c in data["checks"])
        kwargs["warnings"] = tuple(data["warnings"])
        return cls(**kwargs)


def _check_to_dict(check: CheckResult) -> dict[str, Any]:
    d = asdict(check)
    if isinstance(d.get("threshold"), tuple):
        d["threshold"] = list(d["threshold"])
    return d


def _check_from_dict(d: dict[str, Any]) -> CheckResult:
    d = dict(d)
    if isinstance(d.get("threshold"), list):
        d["threshold"] = tuple(d["threshold"])
    return CheckResult(**d)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


# Fields that hold floats: a null read back from JSON means NaN there.
_FLOAT_KEYS = {
    "slope", "slope_se", "intercept", "intercept_se", "pearson_r", "pearson_r_se",
    "r_squared", "r_squared_se", "rho", "rho_se", "mean_step", "mean_step_se",
    "pr_first", "pr_last", "pr", "pr_se", "log10_pr", "log10_pr_se", "fitted",
    "fitted_se", "deviation", "deviation_se", "step", "step_se", "value", "stderr",
    "sigma", "load_seconds", "forward_seconds", "stats_seconds", "tokens_per_second",
}


def _none_to_nan(value: Any, key: str | None = None) -> Any:
    if value is None and key in _FLOAT_KEYS:
        return math.nan
    if isinstance(value, dict):
        return {k: _none_to_nan(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_none_to_nan(v, key) for v in value]
    return value
