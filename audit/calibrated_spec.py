"""A calibrated spec as commented YAML text: the thresholds of a
:class:`~audit.thresholds.Calibration`, the measurement they came from and the
rules that chose them, in a file :func:`audit.spec.load_spec` reads and that the
same checkpoint, on the same probe, passes.  Reads and writes nothing on disk."""

from __future__ import annotations

import dataclasses
import math
import os
from datetime import date, datetime, timezone
from decimal import Decimal

import yaml

from audit.backends.locate import split_scheme
from audit.internal.plus_minus import plus_minus
from audit.report.data import Report
from audit.spec import BUILTIN_CORPORA, MODEL_SCHEMES, BaselineSpec, DivergenceSpec, ProbeSpec
from audit.thresholds import (
    CEILING_STEP_FRACTION,
    DECLARE_MEDIAN_FACTOR,
    DECLARE_STEP_FACTOR,
    DECLARE_STEP_SIGMA,
    DEVIATION_SIGMA,
    FLOOR_DEVIATION,
    Calibration,
)


def relative_path(path: str, spec_file: str | os.PathLike) -> str:
    """``model.path`` as a spec at ``spec_file`` should spell it: a filesystem path
    relative to the spec's folder; ``pkg://`` and ``assemble://`` paths as given.
    Reads nothing on disk."""
    scheme = split_scheme(path)
    if scheme and scheme[0] in MODEL_SCHEMES:
        return path
    folder = os.path.dirname(os.path.abspath(os.fspath(spec_file)))
    return os.path.relpath(os.path.abspath(os.path.expanduser(path)), folder)


def relative_corpus(corpus: str, spec_file: str | os.PathLike) -> str:
    """``probe.corpus`` as a spec at ``spec_file`` should spell it: a built-in name
    as given, a path relative to the spec's folder."""
    return corpus if corpus in BUILTIN_CORPORA else relative_path(corpus, spec_file)


def spec_text(name: str, model_path: str, calibration: Calibration, report: Report,
              probe: ProbeSpec, *, corpus: str | None = None, baseline: str | None = None,
              today: date | None = None) -> str:
    """A commented YAML spec auditing ``model_path`` with ``calibration``'s thresholds.

    ``report`` is the measurement the thresholds came from (for the header and
    ``measure``, ``normalization``, ``target``, the model's device and dtype);
    ``probe`` the probe it was measured on, with ``corpus`` the text to write for
    ``probe.corpus`` (default ``probe.corpus``: pass it relative to the spec's
    folder, as ``model_path``); ``baseline`` where its baseline is, for the header;
    ``today`` the date stated (default: today, UTC).
    """
    law = report.law
    when = (today or datetime.now(timezone.utc).date()).isoformat()
    model = report.model
    shape = ", ".join(str(part) for part in (
        model.get("architecture"), model.get("layers") and f"{model['layers']} layers",
        model.get("width") and f"width {model['width']}") if part)
    k, a = f"{calibration.margin_sigma:g}", calibration.absolute
    declared = [f"  layer {layer}: {why}" for layer, why in calibration.reasons.items()]
    header = [
        f"{name}: calibrated by `equilaw calibrate` on {when} (UTC).",
        f"Checkpoint: {model_path}",
        f"  ({shape}; weights sha256 {model.get('sha256')})",
        f"Measured: Pearson r {law.pearson_r:.4f}{plus_minus(law.pearson_r_se, '.4f')}, "
        f"rho {law.rho:.5f}{plus_minus(law.rho_se, '.5f')},",
        f"  mean step {law.mean_step:.5f}{plus_minus(law.mean_step_se, '.5f')} decades per layer, "
        f"PR {law.pr_first:.4f} -> {law.pr_last:.4f} (layers {law.first_layer} -> "
        f"{len(report.layers) - 1}).",
        f"Probe: {report.corpus.get('name')} (sha256 {report.corpus.get('sha256')}),",
        f"  {probe.sequences} windows of {probe.length} tokens, seed {probe.seed}, "
        f"{probe.shards} jackknife shards;",
        f"  windows sha256 {report.probe.get('windows_sha256')}.",
        f"Margins: the wider of k = {k} standard errors (se) and an absolute margin;",
        "  thresholds rounded outward (r, deviation to 0.001; rho to 0.0001; step",
        "  fraction to 0.01).  Deviations and steps are in decades of PR:",
        f"  max_pearson_r = r + max({k} se, {a['max_pearson_r']:g}), at most 1;",
        f"  rho = [rho - m, rho + m], m = max({k} se, {a['rho']:g}), lo > 0;",
        f"  max_deviation = max over undeclared layers of |deviation| + max({k} se, "
        f"{a['max_deviation']:g}),",
        f"    at least {FLOOR_DEVIATION:g}; max_deviation_sigma = {DEVIATION_SIGMA:g} "
        "(a layer fails only beyond both);",
        f"  min_step_fraction = min over undeclared layers of (step - max({k} se, "
        f"{a['min_step_fraction']:g} |mean step|))",
        f"    / |mean step|, at most {CEILING_STEP_FRACTION:g}.",
        f"Declared deviant layers (layer 0 is never judged): |deviation| > "
        f"{DECLARE_MEDIAN_FACTOR:g} × median |deviation|",
        f"  and > {DEVIATION_SIGMA:g} se, or step < -{DECLARE_STEP_FACTOR:g} × |mean step| "
        f"and < -{DECLARE_STEP_SIGMA:g} se:",
        *(declared or ["  none"]),
    ]
    if baseline is not None:
        header.append(f"Baseline: {baseline}")

    lines = [*("# " + line for line in header), f"name: {_scalar(name)}", "model:",
             f"  path: {_scalar(model_path)}"]
    spec_model = report.spec.get("model", {})
    lines += [f"  device: {_scalar(spec_model.get('device', 'cpu'))}",
              f"  dtype: {_scalar(spec_model.get('dtype', 'float32'))}"]
    if spec_model.get("allow_package_code"):
        lines.append("  allow_package_code: true  # assemble:// runs the package's assemble()")
    if spec_model.get("trust_remote_code"):
        lines.append("  trust_remote_code: true")
    if spec_model.get("tokenizer"):
        lines.append(f"  tokenizer: {_scalar(spec_model['tokenizer'])}")
    if spec_model.get("norm"):
        lines += ["  norm:", f"    kind: {spec_model['norm']['kind']}",
                  f"    eps: {_number(spec_model['norm']['eps'])}"]
    lines += [f"backend: {_scalar(report.backend)}", "probe:",
              f"  corpus: {_scalar(corpus if corpus is not None else probe.corpus)}",
              f"  sequences: {probe.sequences}", f"  length: {probe.length}",
              f"  seed: {probe.seed}", f"  batch_size: {probe.batch_size}",
              f"  shards: {probe.shards}", f"  statistics: {probe.statistics}",
              f"  loss: {'true' if probe.loss else 'false'}",
              f"measure: {report.measure}", f"normalization: {report.normalization}",
              f"target: {report.target}", "law:"]
    lines += _law_lines(calibration)
    lines += ["baseline:  # tolerances against the baseline (defaults; docs/specs.md#baseline)"]
    for f in dataclasses.fields(BaselineSpec):
        value = getattr(BaselineSpec(), f.name)
        if isinstance(value, bool):
            continue  # `required`, not a tolerance: its default (true) stays
        if f.name == "max_drift_sigma" and probe.shards < 2:
            value = None  # one shard gives no paired standard errors
        lines.append(f"  {f.name}: {'null' if value is None else _number(value)}")
    lines += _divergence_lines()
    return "\n".join(lines) + "\n"


DIVERGENCE_COMMENTS = {
    "max_kld_mean": "nats: mean KL(reference || model) per scored token",
    "max_kld_p99": "nats: 99th percentile of the per-token KL",
    "min_same_top": "fraction of tokens whose top token is the reference's",
    "max_rms_dp": "RMS change of the correct token's probability",
    "max_sigma": "fail only beyond a tolerance by more than this many SEs",
    "top_k": "ids per token the baseline's token record keeps at least",
}
"""The comment beside each ``divergence`` key of a calibrated spec (every field of
:class:`~audit.spec.DivergenceSpec` has one)."""


def _divergence_lines() -> list[str]:
    """The ``divergence`` section at its defaults, each key commented: the
    tolerances of ``NAME::divergence`` (against ``reference_model`` or the baseline's
    token record), chosen on SmolLM2's quantisation catalogue, not calibrated on this
    checkpoint."""
    rows = []
    for f in dataclasses.fields(DivergenceSpec):
        value = getattr(DivergenceSpec(), f.name)
        text = ("null" if value is None else _number(value) if isinstance(value, float)
                else str(value))
        rows.append((f"{f.name}: {text}", DIVERGENCE_COMMENTS[f.name]))
    width = max(len(key) for key, _ in rows) + 2
    return (["divergence:  # defaults, chosen on SmolLM2's quantisation catalogue, not "
             "calibrated here", "  # (docs/specs.md#divergence; README, \"Output divergence\")"]
            + [f"  {key:<{width}}# {comment}" for key, comment in rows])


def _law_lines(c: Calibration) -> list[str]:
    r, rho, dev, step = c.max_pearson_r, c.rho, c.max_deviation, c.min_step_fraction
    lo, hi = rho.value  # type: ignore[misc]
    rows = [
        (f"max_pearson_r: {_number(r.value)}",
         f"measured r {r.measured:.4f}{plus_minus(r.stderr, '.4f')}; margin {r.margin:.4f}"),
        (f"rho: [{_number(lo)}, {_number(hi)}]",
         f"measured rho {rho.measured:.5f}{plus_minus(rho.stderr, '.5f')}; "
         f"margin {rho.margin:.5f}"),
    ]
    if math.isnan(dev.measured):
        rows.append((f"max_deviation: {_number(dev.value)}", "every judged layer is declared: the floor"))
    else:
        where = f"layer {dev.layer}" if dev.layer is not None else "the floor decided"
        rows.append((f"max_deviation: {_number(dev.value)}",
                     f"largest undeclared |deviation| {dev.measured:.4f}"
                     f"{plus_minus(dev.stderr, '.4f')} ({where}); margin {dev.margin:.4f}"))
    if c.max_deviation_sigma is None:
        rows.append(("max_deviation_sigma: null", "off: one shard gives no standard errors"))
    else:
        rows.append((f"max_deviation_sigma: {_number(c.max_deviation_sigma)}",
                     "fixed: fail only beyond both deviation thresholds"))
    if step is None:
        rows.append(("min_step_fraction: null", "off: the mean step is 0 or undefined"))
    elif math.isnan(step.measured):
        rows.append((f"min_step_fraction: {_number(step.value)}", "no undeclared step: the ceiling"))
    else:
        where = (f"layer {step.layer}" if step.layer is not None
                 else f"capped at {_number(CEILING_STEP_FRACTION)}")
        rows.append((f"min_step_fraction: {_number(step.value)}",
                     f"lowest undeclared step / |mean step| {step.measured:.2f}"
                     f"{plus_minus(step.stderr, '.2f')} ({where}); margin {step.margin:.2f}"))
    declared = ", ".join(map(str, c.expected_deviations))
    rows.append((f"expected_deviations: [{declared}]",
                 "declared: see the header" if declared else "none declared"))
    width = max(len(key) for key, _ in rows) + 2
    return [f"  {key:<{width}}# {comment}" for key, comment in rows]


def _number(value: float) -> str:
    """A YAML number in fixed-point notation (YAML reads ``1e-05`` as a string)."""
    text = format(Decimal(repr(float(value))).normalize(), "f")
    return text if "." in text else text + ".0"


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain when it reads back as itself, else quoted."""
    try:
        plain_ok = yaml.safe_load(f"k: {text}") == {"k": text}
    except yaml.YAMLError:
        plain_ok = False
    if plain_ok and "#" not in text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


__all__ = ["relative_corpus", "relative_path", "spec_text"]
