"""Building a :class:`~audit.report.data.Report` from a law fit and the record of
a measurement: the checks' verdict, the per-layer rows, the summaries and the
numeric warnings.  :func:`audit.pipeline.judge` ends here; tests build reports
from synthetic fits."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from audit.checks import evaluate
from audit.law import LawFit
from audit.report.data import LawSummary, LayerRow, LossSummary, Report
from audit.spec import Spec
from audit.stats.measures import log10_or_nan

# Relative precision of PR above which a layer's condition number earns a warning.
PRECISION_WARNING = 1e-8
# PR's relative precision is about κ^power × eps for each way of accumulating.
_PRECISION_POWER = {"gram": 2, "qr": 1}


def build_report(spec: Spec, fit: LawFit, *, ranks: np.ndarray, conditions: np.ndarray,
                 model: dict[str, Any], corpus: dict[str, Any], versions: dict[str, str],
                 timing: dict[str, float], probe: dict[str, Any] | None = None,
                 loss: LossSummary | None = None, loss_note: str | None = None,
                 shard_ids: tuple[int, ...] = (),
                 leave_one_out: np.ndarray | None = None, backend: str | None = None) -> Report:
    """Judge ``fit`` against ``spec.law`` and assemble the report; ``ranks`` int [L+1]
    and ``conditions`` float [L+1] are the features' rank and condition number per
    layer, ``leave_one_out`` [g, L+1] the PR curves with each of ``shard_ids`` left
    out; the dicts are stored as the report's fields of the same names."""
    verdict = evaluate(fit, spec.law)
    loo_log10 = (np.full((0, len(fit.pr)), np.nan) if leave_one_out is None
                 else log10_or_nan(leave_one_out))
    return Report(
        name=spec.name,
        spec=_spec_dict(spec),
        model=model,
        corpus=corpus,
        measure=spec.measure,
        normalization=spec.normalization,
        target=spec.target,
        backend=backend or spec.backend,
        seeds={"probe": spec.probe.seed, "shuffle": spec.probe.seed},
        versions=versions,
        law=_law_summary(fit),
        layers=_layer_rows(fit, ranks, conditions, verdict, loo_log10),
        checks=verdict.results,
        verdict="pass" if verdict.passed else "fail",
        timing=timing,
        shards=spec.probe.shards,
        statistics=spec.probe.statistics,
        warnings=_numeric_warnings(spec, ranks, conditions, model.get("width")),
        probe=dict(probe or {}),
        loss=loss,
        loss_note=loss_note,
        shard_ids=tuple(int(i) for i in shard_ids),
    )



def _numeric_warnings(spec: Spec, ranks: np.ndarray, conditions: np.ndarray,
                      width: int | None) -> tuple[str, ...]:
    """Layers whose condition number limits PR's precision beyond
    :data:`PRECISION_WARNING`, and layers whose features lost rank."""
    method = spec.probe.statistics
    eps = float(np.finfo(np.float64).eps)
    out = []
    for layer, (rank, kappa) in enumerate(zip(ranks, conditions)):
        precision = float(kappa) ** _PRECISION_POWER[method] * eps
        if np.isfinite(kappa) and precision > PRECISION_WARNING:
            hint = "; probe.statistics: qr would give about {:.0e}".format(float(kappa) * eps) \
                if method == "gram" else ""
            exact = (f"PR is exact only to about {precision:.0e} relative" if precision < 0.1
                     else "PR may carry no correct digit")
            out.append(f"layer {layer}: condition number {kappa:.1e} of the centred, "
                       f"column-scaled features: {exact} with statistics: {method}{hint}")
        if width is not None and rank < width:
            out.append(f"layer {layer}: features have rank {rank} < width {width} (constant "
                       f"or dependent dimensions): PR is the minimum-norm least-squares value")
    return tuple(out)


def _law_summary(fit: LawFit) -> LawSummary:
    return LawSummary(
        slope=fit.slope, slope_se=fit.slope_se, intercept=fit.intercept,
        intercept_se=fit.intercept_se, pearson_r=fit.pearson_r, pearson_r_se=fit.pearson_r_se,
        r_squared=fit.r_squared, r_squared_se=fit.r_squared_se, rho=fit.rho, rho_se=fit.rho_se,
        mean_step=fit.mean_step, mean_step_se=fit.mean_step_se, first_layer=fit.first_layer,
        pr_first=float(fit.pr[fit.first_layer]), pr_last=float(fit.pr[-1]),
    )


def _layer_rows(fit: LawFit, ranks: np.ndarray, conditions: np.ndarray,
                verdict, loo_log10: np.ndarray) -> tuple[LayerRow, ...]:
    rows = []
    for layer in range(len(fit.pr)):
        status = "unjudged" if layer < fit.first_layer else verdict.layer_status(layer)
        rows.append(LayerRow(
            index=layer, pr=float(fit.pr[layer]), pr_se=float(fit.pr_se[layer]),
            log10_pr=float(fit.log10_pr[layer]), log10_pr_se=float(fit.log10_pr_se[layer]),
            fitted=float(fit.fitted[layer]), fitted_se=float(fit.fitted_se[layer]),
            deviation=float(fit.deviation[layer]), deviation_se=float(fit.deviation_se[layer]),
            step=float(fit.step[layer]), step_se=float(fit.step_se[layer]),
            rank=int(ranks[layer]), condition=float(conditions[layer]), status=status,
            log10_pr_loo=tuple(float(v) for v in loo_log10[:, layer]),
        ))
    return tuple(rows)


def _spec_dict(spec: Spec) -> dict[str, Any]:
    data = asdict(spec)
    data.pop("lines", None)
    if data.get("merge") is not None:
        merge = data["merge"]
        merge["parents"] = {label: path for label, path in merge["parents"]}
        if merge["layer_map"] is not None:
            merge["layer_map"] = list(merge["layer_map"])
    if data["law"]["rho"] is not None:
        data["law"]["rho"] = list(data["law"]["rho"])
    data["law"]["expected_deviations"] = list(data["law"]["expected_deviations"])
    return data
