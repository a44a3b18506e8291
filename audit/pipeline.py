"""Run one spec end to end, without pytest: spec → corpus → backend → statistics →
law fit → checks → :class:`~audit.report.data.Report`.

The pytest plugin, the renderers and later work (mutants, merge gates) all call
:func:`run`.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np

from audit import __version__
from audit.checks import evaluate
from audit.corpus import load_corpus, token_windows, tokenize_corpus
from audit.law import LawFit, fit_law
from audit.norms import NormInfo, apply_normalization
from audit.report.data import LawSummary, LayerRow, Report
from audit.spec import Spec
from audit.stats import LayerStats

# Where the target sits relative to the position whose features are used.
TARGET_OFFSETS = {"previous": -1, "current": 0, "next": 1, "next_next": 2}


class Progress(Protocol):
    """What :func:`run` tells about its progress (the plugin draws a bar from it)."""

    def start(self, name: str, total_tokens: int) -> None: ...

    def advance(self, tokens: int) -> None: ...

    def stop(self) -> None: ...


def example_positions(length: int, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions j whose features are used and positions j+offset of their targets,
    for windows of ``length`` tokens: every position whose target lies inside the
    window (for ``next``: every position but the last)."""
    offset = TARGET_OFFSETS[target]
    j = np.arange(max(0, -offset), length - max(0, offset))
    return j, j + offset


def run(spec: Spec, model: Any = None, progress: Progress | None = None,
        backend: Any = None) -> Report:
    """Audit ``spec`` and return its report.

    ``model`` may be an already loaded torch model (the tokenizer still comes from
    ``spec.model.path``); ``backend`` an already opened backend (it wins over
    ``model``).  Raises :class:`~audit.errors.EquilawError` subclasses on bad input.
    """
    if backend is None:
        from audit.backends import open_backend

        backend = open_backend(spec, model=model)
    info = backend.info()
    norm = _norm_info(spec, info)

    corpus = load_corpus(spec.probe.corpus)
    stream = tokenize_corpus(corpus, backend.encode)
    windows = token_windows(stream, spec.probe.length, spec.probe.sequences,
                            spec.probe.seed, bos_id=backend.bos_token_id)
    feature_pos, target_pos = example_positions(spec.probe.length, spec.target)
    # Both are contiguous ranges: slices take views where index arrays would copy.
    features_at = slice(int(feature_pos[0]), int(feature_pos[-1]) + 1)
    targets_at = slice(int(target_pos[0]), int(target_pos[-1]) + 1)

    stats = LayerStats(measures=(spec.measure,), shards=spec.probe.shards,
                       shuffle_seed=spec.probe.seed, method=spec.probe.statistics)
    t_load = time.perf_counter()
    backend.load()
    load_seconds = time.perf_counter() - t_load

    # Whole sequences per jackknife shard, in contiguous blocks of windows: a batch
    # then meets at most two shards (one large Gram update each, not one per
    # sequence), and neighbouring windows, which share text, share a shard.
    shard_of_sequence = np.arange(len(windows)) * spec.probe.shards // len(windows)
    forward_seconds = stats_seconds = 0.0
    if progress is not None:
        progress.start(spec.name, windows.size)
    try:
        for start in range(0, len(windows), spec.probe.batch_size):
            ids = windows[start:start + spec.probe.batch_size]           # [b, t]
            t0 = time.perf_counter()
            hidden = backend.hidden_states(ids)                            # [L+1, b, t, d]
            t1 = time.perf_counter()
            in_place = hidden if hidden.dtype in (np.float32, np.float64) else None
            hidden = apply_normalization(spec.normalization, hidden, norm, out=in_place)
            feats = hidden[:, :, features_at, :]                           # [L+1, b, m, d]
            targets = ids[:, targets_at]                                   # [b, m]
            shard_of = shard_of_sequence[start:start + len(ids)]
            for shard in np.unique(shard_of):
                rows = np.flatnonzero(shard_of == shard)                   # contiguous
                block = slice(int(rows[0]), int(rows[-1]) + 1)
                stats.update(feats[:, block], targets[block], shard=int(shard))
            stats_seconds += time.perf_counter() - t1
            forward_seconds += t1 - t0
            if progress is not None:
                progress.advance(ids.size)
    finally:
        if progress is not None:
            progress.stop()

    t_fit = time.perf_counter()
    pr = stats.residuals(spec.measure)
    loo = stats.leave_one_out(spec.measure) if spec.probe.shards > 1 else None
    fit = fit_law(pr, first_layer=1, leave_one_out=loo)
    ranks, conditions = stats.rank(), stats.condition()
    stats_seconds += time.perf_counter() - t_fit
    return build_report(
        spec, fit, ranks=ranks, conditions=conditions,
        model={"path": spec.model.path, "resolved_path": str(info.path),
               "sha256": backend.weights_sha256(), "architecture": info.architecture,
               "layers": info.num_layers, "width": info.width},
        corpus={"name": corpus.name, "sha256": corpus.sha256, "tokens": int(windows.size),
                "stream_tokens": int(stream.size), "examples": int(stats.count),
                "sequences": spec.probe.sequences, "length": spec.probe.length},
        versions={"python": platform.python_version(), "numpy": np.__version__,
                  "equilaw": __version__, **backend.versions()},
        timing={"load_seconds": load_seconds, "forward_seconds": forward_seconds,
                "stats_seconds": stats_seconds,
                "tokens_per_second": windows.size / forward_seconds if forward_seconds else float("nan")},
    )


# Relative precision of PR above which a layer's condition number earns a warning.
PRECISION_WARNING = 1e-8
# PR's relative precision is about κ^power × eps for each way of accumulating.
_PRECISION_POWER = {"gram": 2, "qr": 1}


def build_report(spec: Spec, fit: LawFit, *, ranks: np.ndarray, conditions: np.ndarray,
                 model: dict[str, Any], corpus: dict[str, Any], versions: dict[str, str],
                 timing: dict[str, float]) -> Report:
    """Judge ``fit`` against ``spec.law`` and assemble the report; ``ranks`` int [L+1]
    and ``conditions`` float [L+1] are the features' rank and condition number per
    layer, the dicts are stored as the report's fields of the same names.
    :func:`run` ends here; tests build reports from synthetic fits."""
    verdict = evaluate(fit, spec.law)
    return Report(
        name=spec.name,
        spec=_spec_dict(spec),
        model=model,
        corpus=corpus,
        measure=spec.measure,
        normalization=spec.normalization,
        target=spec.target,
        backend=spec.backend,
        seeds={"probe": spec.probe.seed, "shuffle": spec.probe.seed},
        versions=versions,
        law=_law_summary(fit),
        layers=_layer_rows(fit, ranks, conditions, verdict),
        checks=verdict.results,
        verdict="pass" if verdict.passed else "fail",
        timing=timing,
        shards=spec.probe.shards,
        statistics=spec.probe.statistics,
        warnings=_numeric_warnings(spec, ranks, conditions, model.get("width")),
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


def _norm_info(spec: Spec, info: Any) -> NormInfo:
    """The spec's ``model.norm`` override, else the backend's own description."""
    if spec.model.norm is not None:
        return NormInfo(kind=spec.model.norm.kind, eps=spec.model.norm.eps)
    return info.norm


def _law_summary(fit: LawFit) -> LawSummary:
    return LawSummary(
        slope=fit.slope, slope_se=fit.slope_se, intercept=fit.intercept,
        intercept_se=fit.intercept_se, pearson_r=fit.pearson_r, pearson_r_se=fit.pearson_r_se,
        r_squared=fit.r_squared, r_squared_se=fit.r_squared_se, rho=fit.rho, rho_se=fit.rho_se,
        mean_step=fit.mean_step, mean_step_se=fit.mean_step_se, first_layer=fit.first_layer,
        pr_first=float(fit.pr[fit.first_layer]), pr_last=float(fit.pr[-1]),
    )


def _layer_rows(fit: LawFit, ranks: np.ndarray, conditions: np.ndarray,
                verdict) -> tuple[LayerRow, ...]:
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
        ))
    return tuple(rows)


def _spec_dict(spec: Spec) -> dict[str, Any]:
    data = asdict(spec)
    if data["law"]["rho"] is not None:
        data["law"]["rho"] = list(data["law"]["rho"])
    data["law"]["expected_deviations"] = list(data["law"]["expected_deviations"])
    return data
