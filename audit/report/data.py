"""The report object: everything a renderer needs, computed once.

A :class:`Report` is plain data.  ``to_dict()`` is the JSON schema (see
docs/report-schema.md); ``Report.from_dict`` reads it back, so renderers work the
same on a fresh run and on a report file.  Renderers never compute: every number
they draw is a field here.  In the dict form NaN becomes ``null`` and ±infinity the
strings ``"inf"`` / ``"-inf"`` (JSON has neither).  Reports of every earlier
schema version are read and upgraded: a baseline stays readable after a bump.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from audit.checks import CheckResult
from audit.compare.divergence import DivergenceResult

SCHEMA_VERSION = 4
OLDEST_READABLE = 2

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
class LossSummary:
    """The model's own next-token cross-entropy on the probe's sequences, as
    measured and as reported."""

    mean: float
    """Mean nats per predicted token (every position but each sequence's last)."""
    stderr: float
    """Jackknife standard error over the shards (NaN with one shard)."""
    leave_one_out: tuple[float, ...]
    """The mean with each of the report's ``shard_ids`` left out."""
    tokens: int
    """Predicted tokens."""


@dataclass(frozen=True)
class DriftRow:
    """One layer of a comparison with a reference measured on the same windows."""

    layer: int
    now: float
    """log10 PR of this checkpoint."""
    then_low: float
    """The reference's log10 PR: the baseline's, or the lowest of the parent layers
    this layer came from."""
    then_high: float
    """Equal to ``then_low`` for a baseline; the highest parent layer for a merge."""
    drift: float
    """Baseline: now − then.  Merge: how far ``now`` lies outside [then_low,
    then_high] (signed, 0 inside)."""
    drift_se: float
    """Paired jackknife standard error of ``drift`` (from the per-shard differences)."""
    sigma: float
    """|drift| / drift_se (0 when drift is 0)."""
    status: str
    """``ok``; ``moved`` (|drift| beyond the effect tolerance, not significant);
    ``violation`` (beyond every tolerance that is set)."""
    sources: str
    """Merge: the parent layers it came from (``label:layer, …``); '' for a baseline."""


@dataclass(frozen=True)
class Comparison:
    """This checkpoint against a reference (a baseline, or a merge's parents)."""

    kind: str
    """``baseline``, ``merge``, ``parity`` (another backend on the same checkpoint),
    ``adapter`` (an adapter against its base), ``adapter-merged`` (against itself
    merged into the base) or ``reference`` (the reference model, inside its
    :class:`DivergenceRow`; reported, not gated)."""
    reference: str
    """The baseline file, the parents' labels, the reference backend's name, the
    base's report name, or the merged model's."""
    pearson_r_then: float
    """The reference's r (merge: the worst parent's, the highest)."""
    pearson_r_now: float
    rho_then: float
    """The reference's ρ (merge: the highest parent's; NaN when depth changed)."""
    rho_now: float
    loss_then: float
    """The reference's probe loss (merge: the loss judged against, the recipe's
    expected loss or the worst parent's); NaN when unknown."""
    loss_now: float
    first_moved_layer: int | None
    """The first layer (1..L) whose |drift| exceeds the effect tolerance alone,
    whichever the sign; None when none does (or no effect tolerance is set)."""
    largest_drift: float
    """The drift of largest magnitude (signed); NaN when there are no rows."""
    largest_drift_layer: int | None
    rows: tuple[DriftRow, ...]
    notes: tuple[str, ...] = ()
    """What the reader should know (for example, library versions that differ)."""
    loss_judge: str = ""
    """Merge: the rule that judged the loss, ``recipe`` (the expected loss from the
    config's weights) or ``worst`` (the worst parent); empty for other kinds."""
    expected_loss: float = math.nan
    """Merge judged by its recipe: the loss the recipe predicts; NaN otherwise."""

    @property
    def then_label(self) -> str:
        """What the renderers call the reference's column."""
        return {"baseline": "baseline", "merge": "parents", "adapter": "base",
                "adapter-merged": "merged", "reference": "reference"}.get(self.kind,
                                                                         self.reference)

    @property
    def title(self) -> str:
        """What was compared, in words (``against baseline FILE``, ``parity with torch``)."""
        if self.kind == "adapter":
            return f"against the base {self.reference}"
        if self.kind == "adapter-merged":
            return f"parity with the merge {self.reference}"
        return (f"parity with {self.reference}" if self.kind == "parity"
                else f"against {self.kind} {self.reference}")


@dataclass(frozen=True)
class DivergenceRow:
    """This checkpoint's next-token distribution against one reference's, token by
    token on the probe windows (llama.cpp's ``--kl-divergence`` figures)."""

    source: str
    """``reference_model``, ``baseline`` (its stored token record: the KLs are lower
    bounds), ``parent:<label>`` (a merge's parent), ``base`` (an adapter's base) or
    ``backend:<name>`` (the first backend, for parity)."""
    reference: str
    """The reference checkpoint's path, or the token record's file."""
    gated: bool
    """Judged by the ``divergence`` item (the reference model, the stored baseline);
    a merge's parents and an adapter's base are reported, not judged; the first
    backend's row is judged by the parity item."""
    result: DivergenceResult
    drift: Comparison | None = None
    """Against the reference model: the per-layer drift of log10 PR from the
    reference's own report on the same windows (kind ``reference``, paired
    standard errors, ``first_moved_layer``), where the model moved; reported, not
    gated (no check; a row beyond ``baseline.max_drift`` is ``moved``).  None for
    other sources."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: ``source``, ``reference``, ``gated``, then the result's
        fields (:meth:`DivergenceResult.to_dict`), then ``drift`` when there is one."""
        out = {"source": self.source, "reference": self.reference, "gated": self.gated,
               **self.result.to_dict()}
        if self.drift is not None:
            out["drift"] = _plain(self.drift)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> DivergenceRow:
        data = dict(data)
        head = {key: _required(data, key, where) for key in ("source", "reference", "gated")}
        for key in head:
            del data[key]
        drift = data.pop("drift", None)
        if drift is not None:
            head["drift"] = _comparison_from_dict(drift, f"{where}.drift")
        for key in ("kld_percentiles", "dp_percentiles"):
            data[key] = {k: math.nan if v is None else v
                         for k, v in _required(data, key, where).items()}
        plain = {f.name: (math.nan if data.get(f.name, 0) is None else data.get(f.name))
                 for f in fields(DivergenceResult) if f.name in data}
        missing = [f.name for f in fields(DivergenceResult)
                   if f.name not in data and f.default is dataclasses.MISSING]
        if missing:
            raise _MissingField(f"{where}.{missing[0]}")
        return cls(result=DivergenceResult.from_dict(plain), **head)


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
    log10_pr_loo: tuple[float, ...] = ()
    """log10 PR with each of the report's ``shard_ids`` left out: paired standard
    errors of the drift between two reports come from these."""


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
    probe: dict[str, Any] = field(default_factory=dict)
    """``mode``: ``windows`` or ``documents`` (``probe.mode``); ``windows_sha256``:
    sha256 of the model input (the token windows, or the documents with their
    lengths); ``tokenizer``: its source, class, vocabulary size and sha256, BOS id."""
    loss: LossSummary | None = None
    """The probe loss; None when switched off or the model has no head."""
    loss_note: str | None = None
    """Why there is no loss."""
    shard_ids: tuple[int, ...] = ()
    """The jackknife shards of every ``log10_pr_loo`` and ``loss.leave_one_out``."""
    comparisons: tuple[Comparison, ...] = ()
    """Against a baseline and/or a merge's parents; their checks are in ``checks``."""
    divergence: tuple[DivergenceRow, ...] = ()
    """The next-token distribution against each reference it was compared with (the
    reference model, the stored baseline's token record, each merge parent); the
    gated ones' checks (``divergence``) are in ``checks``.  Schema 4."""

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
            if f.name == "checks":
                value = [_check_to_dict(c) for c in value]
            elif f.name == "probe":
                value = dict(value)
            elif f.name == "divergence":
                value = [row.to_dict() for row in value]
            else:
                value = _plain(value)
            out[f.name] = value
        out["violations"] = [
            {"layer": c.layer, "check": c.check, "value": c.value, "stderr": c.stderr,
             "threshold": c.threshold, "message": c.message}
            for c in self.violations
        ]
        return json_floats(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Report:
        """Read a report dict of any schema version from ``OLDEST_READABLE`` on;
        a missing or malformed field is a :class:`ReportError` naming it (and
        ``source``, the file, when given)."""
        from audit.errors import ReportError

        where = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise ReportError(f"{where}a report is a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if not isinstance(version, int) or not OLDEST_READABLE <= version <= SCHEMA_VERSION:
            raise ReportError(f"{where}report schema_version {version!r} is not one this "
                              f"equilaw reads ({OLDEST_READABLE}..{SCHEMA_VERSION}): "
                              "re-run the audit to regenerate it")
        data = _from_json_floats(data)
        try:
            kwargs = {f.name: _required(data, f.name) for f in fields(cls)
                      if f.name in _SINCE_V2}
            kwargs["law"] = LawSummary(**_fields(LawSummary, data["law"], "law"))
            kwargs["layers"] = tuple(
                LayerRow(**_fields(LayerRow, row, f"layers[{i}]", list_fields=("log10_pr_loo",)))
                for i, row in enumerate(data["layers"]))
            kwargs["checks"] = tuple(_check_from_dict(_fields(CheckResult, c, f"checks[{i}]"))
                                     for i, c in enumerate(data["checks"]))
            kwargs["warnings"] = tuple(data["warnings"])
            if version >= 3:
                kwargs["probe"] = dict(_required(data, "probe"))
                loss = _required(data, "loss")
                kwargs["loss"] = None if loss is None else LossSummary(
                    **_fields(LossSummary, loss, "loss", list_fields=("leave_one_out",)))
                kwargs["loss_note"] = _required(data, "loss_note")
                kwargs["shard_ids"] = tuple(_required(data, "shard_ids"))
                kwargs["comparisons"] = tuple(
                    _comparison_from_dict(c, f"comparisons[{i}]")
                    for i, c in enumerate(_required(data, "comparisons")))
            if version >= 4:
                kwargs["divergence"] = tuple(
                    DivergenceRow.from_dict(row, f"divergence[{i}]")
                    for i, row in enumerate(_required(data, "divergence")))
        except _MissingField as exc:
            raise ReportError(f"{where}report field {exc.args[0]} is missing") from None
        except (TypeError, AttributeError, ValueError) as exc:
            raise ReportError(f"{where}malformed report: {exc}") from None
        return cls(**kwargs)


_SINCE_V2 = ("name", "spec", "model", "corpus", "measure", "normalization", "target", "backend",
             "seeds", "versions", "law", "layers", "checks", "verdict", "timing", "shards",
             "statistics", "warnings")
"""Report fields every readable schema has (the others came with schema 3)."""


class _MissingField(KeyError):
    pass


def _required(data: dict[str, Any], key: str, where: str = "") -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{where or 'report'} is not an object")
    if key not in data:
        raise _MissingField(f"{where}.{key}" if where else key)
    return data[key]


def _fields(cls: type, data: dict[str, Any], where: str,
            list_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dataclass ``cls``'s fields from ``data``; a field with a default may be
    absent (it came with a later schema); lists named in ``list_fields`` become tuples."""
    out = {}
    for f in fields(cls):
        if f.name in data:
            value = data[f.name]
            out[f.name] = tuple(value) if f.name in list_fields and value is not None else value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _MissingField(f"{where}.{f.name}")
    return out


def _comparison_from_dict(data: dict[str, Any], where: str) -> Comparison:
    kwargs = _fields(Comparison, data, where, list_fields=("notes",))
    kwargs["rows"] = tuple(DriftRow(**_fields(DriftRow, row, f"{where}.rows[{i}]"))
                           for i, row in enumerate(_required(data, "rows", where)))
    return Comparison(**kwargs)


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and lists as JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


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


def json_floats(value: Any) -> Any:
    """NaN -> None, ±inf -> "inf" / "-inf", recursively."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {k: json_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_floats(v) for v in value]
    return value


# Fields that hold floats: a null read back from JSON means NaN there.
_FLOAT_KEYS = {
    "slope", "slope_se", "intercept", "intercept_se", "pearson_r", "pearson_r_se",
    "r_squared", "r_squared_se", "rho", "rho_se", "mean_step", "mean_step_se",
    "pr_first", "pr_last", "pr", "pr_se", "log10_pr", "log10_pr_se", "fitted",
    "fitted_se", "deviation", "deviation_se", "step", "step_se", "value", "stderr",
    "sigma", "load_seconds", "forward_seconds", "stats_seconds", "tokens_per_second",
    "condition", "log10_pr_loo", "mean", "leave_one_out", "loss_seconds", "now", "then_low",
    "then_high", "drift", "drift_se", "pearson_r_then", "pearson_r_now", "rho_then", "rho_now",
    "loss_then", "loss_now", "largest_drift", "expected_loss",
}
_INFINITIES = {"inf": math.inf, "-inf": -math.inf}


def _from_json_floats(value: Any, key: str | None = None) -> Any:
    """The inverse of :func:`json_floats` in the fields that hold floats."""
    if key in _FLOAT_KEYS:
        if value is None:
            return math.nan
        if isinstance(value, str) and value in _INFINITIES:
            return _INFINITIES[value]
    if isinstance(value, dict):
        return {k: _from_json_floats(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json_floats(v, key) for v in value]
    return value
