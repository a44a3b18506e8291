"""Baselines: one report per spec, kept beside the spec file, that later runs are
compared with.

State machine (``pytest audit/``): no baseline → the baseline items skip, naming
the command that writes one (under CI they fail, unless the spec sets
``baseline.required: false``); an unreadable baseline → they fail;
``--audit-update-baseline`` → the report is written
to ``baselines/<name>.json`` (atomically), whatever its verdict, and the items skip
saying so; a baseline → this run is compared with it.  A baseline records what it was measured on; comparing
across a different probe, measure, normalisation, target or token windows is
refused naming the fields that differ; different weights are what a release check
expects; different library versions are noted, not refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from audit.checks import comparison_kind
from audit.compare.drift import (
    Reference,
    attach,
    curve,
    increase_check,
    judge_layers,
    largest,
    loss_check,
    require_fits,
    require_paired,
)
from audit.errors import ComparisonError, ReportError
from audit.internal import safe_read
from audit.report.data import Comparison, Report
from audit.report.json_report import write_json_file
from audit.spec import BaselineSpec, Spec
from audit.stats.jackknife import jackknife_se

UPDATE_COMMAND = "pytest audit/ --audit-update-baseline -k {name}"
"""How a user writes a missing baseline (in skip messages and docs)."""


def baseline_path(spec: Spec, folder: str | os.PathLike | None = None) -> Path:
    """``FOLDER/<name>.json``; without a folder, ``baselines/`` beside the spec file."""
    if folder is None:
        if spec.source is None:
            raise ComparisonError(f"spec {spec.name!r} was built in code: name a baselines "
                                  "folder (--audit-baselines DIR)")
        folder = Path(spec.source).resolve().parent / "baselines"
    return Path(folder) / f"{spec.name}.json"


def missing_baseline_error(spec: Spec, path: Path) -> ComparisonError:
    """Under CI, the error of a missing baseline for a spec that requires one."""
    return ComparisonError(
        f"no baseline at {os.path.relpath(path)}: under CI (CI=true) a missing baseline fails, "
        f"so that the gate never passes without a comparison; write it with: "
        f"{UPDATE_COMMAND.format(name=spec.name)} and commit it, or set "
        f"`baseline: {{required: false}}` in {spec.source or 'the spec'} to compare only when "
        f"a baseline exists")


def baseline_of(report: Report) -> Report:
    """``report`` as a baseline holds it: without its own comparisons and
    divergences."""
    return dataclasses.replace(report, comparisons=(), divergence=(), checks=tuple(
        c for c in report.checks if comparison_kind(c.check) is None))


def write_baseline(report: Report, path: str | os.PathLike) -> Path:
    """Write ``report`` (without its own comparisons) as a baseline, atomically."""
    return write_json_file(baseline_of(report), path)


def read_baseline(path: str | os.PathLike, shown: str | None = None) -> Report:
    """The baseline at ``path`` (named ``shown`` in messages).  Anything there that
    is not a readable report (a folder, a dangling link, a FIFO or other special
    file, bytes that are not UTF-8 JSON, a report of another schema) is a
    :class:`ComparisonError`: an unreadable baseline fails, it never counts as
    missing."""
    path = Path(path)
    shown = shown or str(path)

    def unreadable(why: str) -> ComparisonError:
        return ComparisonError(f"the baseline {shown} is unreadable: {why}; an unreadable "
                               f"baseline fails the comparison: restore it, or delete it and "
                               f"write it again with: {UPDATE_COMMAND.format(name=path.stem)}")

    if path.is_symlink() and not path.exists():
        raise unreadable(f"it is a link to {os.readlink(path)}, which does not exist")
    if path.is_dir():
        raise unreadable("it is a folder")
    if path.exists() and not path.is_file():
        raise unreadable("it is not a regular file")
    def refused(_field: str | None, _line: int | None, message: str) -> ComparisonError:
        return unreadable(message)

    try:
        # opened without blocking and checked on its descriptor: a FIFO swapped in
        # after the checks above is refused too (audit.internal.safe_read)
        data = safe_read.read_bytes(path, "baseline", refused)
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise unreadable(f"byte {exc.start} is not UTF-8") from None
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError) as exc:   # JSONDecodeError is a ValueError
        raise unreadable(f"not JSON ({exc})") from None
    safe_read.check_depth(parsed, "it", refused)  # before Report.from_dict recurses
    try:
        return Report.from_dict(parsed, source=str(path))
    except (ReportError, RecursionError) as exc:
        raise unreadable(str(exc)) from None


def fingerprint(report: Report) -> dict[str, Any]:
    """What must be equal for two reports to be compared, by field name."""
    probe = report.spec.get("probe", {})
    return {
        "corpus": report.corpus.get("name"),
        "corpus sha256": report.corpus.get("sha256"),
        "probe.sequences": probe.get("sequences"),
        "probe.length": probe.get("length"),
        "probe.seed": probe.get("seed"),
        "probe.shards": probe.get("shards"),
        # Reports written before these keys existed measured windows, equilaw's way.
        "probe.mode": probe.get("mode", "windows"),
        "probe.permutation": probe.get("permutation", "equilaw"),
        "measure": report.measure,
        "normalization": report.normalization,
        "target": report.target,
        "windows sha256": report.probe.get("windows_sha256"),
    }


def check_comparable(now: Report, then: Report, what: str) -> None:
    """Raise :class:`ComparisonError` naming every fingerprint field that differs."""
    a, b = fingerprint(then), fingerprint(now)
    differ = [key for key in a if a[key] != b[key]]
    if not differ:
        return
    detail = "; ".join(f"{key}: {a[key]!r} there, {b[key]!r} here" for key in differ)
    message = f"{what} was measured on another setup ({detail})"
    if differ == ["windows sha256"]:
        tok_then = then.probe.get("tokenizer", {}).get("source")
        tok_now = now.probe.get("tokenizer", {}).get("source")
        message += (f": the same probe settings gave different token windows, so the "
                    f"tokenizers differ ({tok_then} there, {tok_now} here); point "
                    f"model.tokenizer of the spec at the tokenizer the other was measured with")
    else:
        message += ": measure both on the same probe, or regenerate the baseline"
    raise ComparisonError(message, fields=tuple(differ))


def version_notes(now: Report, then: Report) -> tuple[str, ...]:
    notes = []
    for name in sorted(set(now.versions) | set(then.versions)):
        if now.versions.get(name) != then.versions.get(name):
            notes.append(f"{name} {then.versions.get(name)} in the baseline, "
                         f"{now.versions.get(name)} now")
    return (f"library versions differ: {'; '.join(notes)}",) if notes else ()


PAIRED_CHECKS = {
    "baseline": ("baseline_pearson_r", "baseline_rho", "baseline_loss", "drift"),
    "adapter": ("adapter_pearson_r", "adapter_rho", "adapter_loss", "adapter_drift"),
}
"""The checks (r, ρ, loss, per-layer drift) of each comparison against one
reference measured on the same windows: a baseline file, or an adapter's base."""


def compare_to_baseline(now: Report, then: Report, tolerances: BaselineSpec,
                        reference: str) -> Report:
    """``now`` with its comparison against the baseline ``then`` attached."""
    # A baseline from before schema 3 lacks the window hash too: say what to do first.
    require_paired(now, then, f"the baseline {reference}")
    require_fits(now, then, f"the baseline {reference}")
    check_comparable(now, then, f"the baseline {reference}")
    return compare_paired(now, then, tolerances, reference, "baseline")


def compare_paired(now: Report, then: Report, tolerances: Any, reference: str,
                   kind: str) -> Report:
    """``now`` with a comparison of ``kind`` (a key of :data:`PAIRED_CHECKS`) against
    ``then``, one checkpoint's report on the same windows, attached: r, ρ and the
    probe loss may rise by at most the tolerances, and each layer's drift is judged
    with paired standard errors.  ``tolerances`` has :class:`BaselineSpec`'s five
    tolerance fields (a ``BaselineSpec`` or an ``AdapterSpec``); messages name them
    under ``kind``'s section unless it is the baseline's.  Library versions that
    differ are noted for a baseline only (an adapter's base is measured in the same
    run, without peft)."""
    names = PAIRED_CHECKS[kind]
    section = "" if kind == "baseline" else f"{kind}."
    log10, loo = curve(then)
    ref = Reference(low=log10, high=log10, low_loo=loo, high_loo=loo)
    layer_checks, rows, moved = judge_layers(now, ref, names[3], tolerances.max_drift,
                                             tolerances.max_drift_sigma,
                                             keys=(f"{section}max_drift",
                                                   f"{section}max_drift_sigma"))
    loss_now, loss_then, loss_se = _losses(now, then)
    law = [
        increase_check(names[0], now.law.pearson_r, then.law.pearson_r,
                       tolerances.max_pearson_r_increase, "pearson_r",
                       f"{section}max_pearson_r_increase"),
        increase_check(names[1], now.law.rho, then.law.rho, tolerances.max_rho_increase,
                       "rho", f"{section}max_rho_increase"),
        loss_check(names[2], now, loss_now, loss_then, loss_se,
                   tolerances.max_loss_increase, f"the {kind}" if not section else "the base",
                   section=kind),
    ]
    top, top_layer = largest(rows)
    comparison = Comparison(
        kind=kind, reference=reference,
        pearson_r_then=then.law.pearson_r, pearson_r_now=now.law.pearson_r,
        rho_then=then.law.rho, rho_now=now.law.rho, loss_then=loss_then, loss_now=loss_now,
        first_moved_layer=moved, largest_drift=top, largest_drift_layer=top_layer, rows=rows,
        notes=version_notes(now, then) if kind == "baseline" else ())
    # different library versions are allowed, and said where every reader looks
    warned = dataclasses.replace(now, warnings=now.warnings + comparison.notes)
    return attach(warned, comparison, tuple(c for c in law if c is not None) + layer_checks)


def _losses(now: Report, then: Report) -> tuple[float, float, float]:
    """Loss now, then, and the paired standard error of the increase (NaN unknown)."""
    nan = float("nan")
    a = now.loss.mean if now.loss else nan
    b = then.loss.mean if then.loss else nan
    se = nan
    if now.loss and then.loss and len(now.loss.leave_one_out) == len(then.loss.leave_one_out) >= 2:
        import numpy as np

        se = jackknife_se(np.subtract(now.loss.leave_one_out, then.loss.leave_one_out))
    return a, b, float(se)
