"""The divergence gate: a report's :class:`~audit.report.data.DivergenceRow` s judged
by the spec's ``divergence:`` tolerances, and the stored baseline's token record
written beside its JSON.

The session (:class:`audit.session.AuditSession`) runs the models
(:mod:`audit.compare.outputs`); this module turns the figures into the report's rows
and the ``divergence`` check (one per gated row, :data:`audit.checks.CHECKS`),
whose message is :func:`~audit.compare.divergence.judge_divergence`'s: the figure,
its SE and the tolerance; against the reference model, also where the model moved
(:func:`reference_drift`, the law's per-layer view beside the divergence).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from audit.checks import CheckResult
from audit.compare.baseline import baseline_of, write_baseline
from audit.compare.divergence import DivergenceThresholds, judge_divergence
from audit.compare.drift import Reference, curve, judge_layers, largest
from audit.compare.token_record import TokenRecord, token_record_bytes
from audit.errors import ReportError
from audit.internal.files import write_together
from audit.internal.plus_minus import plus_minus
from audit.report.data import Comparison, DivergenceRow, Report
from audit.report.json_report import report_text
from audit.spec import BaselineSpec, DivergenceSpec

SOURCES = ("reference_model", "baseline")
"""The gated sources, in the order their checks appear; a merge parent's row is
``parent:<label>``, reported and not gated."""


def thresholds(spec: DivergenceSpec) -> DivergenceThresholds:
    """The ``divergence:`` section as :func:`judge_divergence` takes it."""
    return DivergenceThresholds(max_kld_mean=spec.max_kld_mean, max_kld_p99=spec.max_kld_p99,
                                min_same_top=spec.min_same_top, max_rms_dp=spec.max_rms_dp,
                                max_sigma=spec.max_sigma)


def source_words(row: DivergenceRow) -> str:
    """``reference model PATH``, ``baseline token record FILE``, ``parent LABEL``,
    ``the adapter's base PATH``, ``the BACKEND backend PATH``."""
    if row.source.startswith("parent:"):
        return f"parent {row.source.partition(':')[2]}"
    if row.source == "base":
        return f"the adapter's base {row.reference}"
    if row.source.startswith("backend:"):
        return f"the {row.source.partition(':')[2]} backend {row.reference}"
    noun = "reference model" if row.source == "reference_model" else "baseline token record"
    return f"{noun} {row.reference}"


def divergence_check(row: DivergenceRow, spec: DivergenceSpec) -> CheckResult:
    """The ``divergence`` check of one gated row: failed when any figure is beyond
    its tolerance by more than ``max_sigma`` SEs; the message lists each such figure
    (or, passing, the mean KLD and same-top)."""
    r = row.result
    failures = judge_divergence(r, thresholds(spec))
    head = f"divergence from {source_words(row)}"
    if failures:
        message = "\n".join(f"{head}: {line}" for line in failures)
    else:
        bound = " (a lower bound)" if r.kld_is_bound else ""
        message = (f"{head}: KLD mean {r.kld_mean:.6g} ± {r.kld_mean_se:.2g} nats{bound}, "
                   f"same top {100 * r.same_top:.2f} % ± {100 * r.same_top_judged_se:.2g}: "
                   f"within the divergence tolerances")
    if row.drift is not None:
        message += "\n" + where_moved(row.drift)
    return CheckResult("divergence", None, r.kld_mean, r.kld_mean_se, spec.max_kld_mean,
                       math.nan, spec.max_sigma, not failures, False, message)


def where_moved(drift: Comparison) -> str:
    """One line: the first layer whose log10 PR moved from the reference's (beyond
    ``baseline.max_drift``) and the largest drift, with its paired SE."""
    first = drift.first_moved_layer
    moved = f"first moved layer {first}" if first is not None else "no layer moved"
    top = ""
    if drift.largest_drift_layer is not None and drift.largest_drift != 0:
        se = next(r.drift_se for r in drift.rows if r.layer == drift.largest_drift_layer)
        top = (f", largest drift {drift.largest_drift:+.4g}{plus_minus(se, '.2g')} at layer "
               f"{drift.largest_drift_layer}")
    return f"per-layer drift of log10 PR from the reference model (not gated): {moved}{top}"


def reference_drift(now: Report, reference: Report,
                    tolerances: BaselineSpec) -> Comparison | None:
    """The per-layer drift of ``now`` from the reference model's report on the same
    windows (:mod:`audit.compare.drift`, paired SEs as against a baseline), as a
    comparison of kind ``reference`` with no check: reported beside the divergence,
    not gated.  ``tolerances`` (the baseline's ``max_drift`` and ``max_drift_sigma``)
    give the σ column and the first moved layer; a layer beyond them is ``moved``,
    never a violation.  None without per-shard values (one
    shard) or when the depths differ."""
    if not reference.shard_ids or now.shard_ids != reference.shard_ids \
            or len(now.layers) != len(reference.layers):
        return None
    log10, loo = curve(reference)
    ref = Reference(low=log10, high=log10, low_loo=loo, high_loo=loo)
    _, rows, moved = judge_layers(now, ref, "drift", tolerances.max_drift,
                                  tolerances.max_drift_sigma)
    rows = tuple(dataclasses.replace(r, status="moved") if r.status == "violation" else r
                 for r in rows)
    top, top_layer = largest(rows)
    loss_then, loss_now = (r.loss.mean if r.loss is not None else math.nan
                           for r in (reference, now))
    return Comparison(
        kind="reference", reference=reference.model.get("path", reference.name),
        pearson_r_then=reference.law.pearson_r, pearson_r_now=now.law.pearson_r,
        rho_then=reference.law.rho, rho_now=now.law.rho, loss_then=loss_then,
        loss_now=loss_now, first_moved_layer=moved, largest_drift=top,
        largest_drift_layer=top_layer, rows=rows)


def attach_divergence(report: Report, rows: list[DivergenceRow], spec: DivergenceSpec) -> Report:
    """``report`` with its divergence rows, and one ``divergence`` check per gated
    row; the verdict fails when a check fails."""
    if not rows:
        return report
    checks = report.checks + tuple(divergence_check(row, spec) for row in rows if row.gated)
    verdict = "fail" if any(c.violation for c in checks) else "pass"
    return dataclasses.replace(report, checks=checks, verdict=verdict,
                               divergence=report.divergence + tuple(rows))


def token_record_path(baseline: str | os.PathLike) -> Path:
    """``<baseline stem>.tokens.npz`` beside the baseline JSON."""
    path = Path(baseline)
    return path.with_name(f"{path.stem}.tokens.npz")


def write_baseline_with_record(report: Report, path: str | os.PathLike,
                               record: TokenRecord | None) -> Path:
    """Write the baseline JSON and, when given, its token record beside it, together
    or not at all (:func:`audit.internal.files.write_together`: a failure puts back
    what was there).  Without a record, a record left by an earlier baseline is
    removed (it would describe another model)."""
    target = Path(path)
    beside = token_record_path(target)
    if record is None:
        written = write_baseline(report, target)
        if os.path.lexists(beside):
            os.unlink(beside)
        return written
    try:
        write_together({target: report_text(baseline_of(report)).encode("utf-8"),
                        beside: token_record_bytes(record)})
    except OSError as exc:
        raise ReportError(f"cannot write the baseline {target} and its token record "
                          f"{beside.name}: {exc}") from exc
    return target
