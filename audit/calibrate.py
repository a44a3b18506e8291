"""Calibrate a spec in one call: measure a checkpoint once, choose thresholds a
stated margin outside what it shows (:mod:`audit.thresholds`), write them as a
commented spec (:mod:`audit.calibrated_spec`) that the same measurement must pass
when read back, and write its baseline.  ``equilaw calibrate`` parses its
arguments and calls :func:`calibrate`."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from audit import pipeline
from audit.backends.locate import command_line_model
from audit.calibrated_spec import relative_corpus, relative_path, spec_text
from audit.compare.baseline import baseline_of, baseline_path
from audit.errors import EquilawError
from audit.internal.files import write_together
from audit.report.data import Report
from audit.report.json_report import report_text
from audit.spec import NAME_PATTERN, spec_from_dict
from audit.thresholds import Calibration, calibrate_thresholds


@dataclass(frozen=True)
class Calibrated:
    """What :func:`calibrate` wrote and measured."""

    spec_path: Path
    baseline_path: Path
    report: Report
    """The measurement judged by the calibrated spec (it passes)."""
    calibration: Calibration


def calibrate(checkpoint: str, output: str | os.PathLike, *, name: str | None = None,
              probe: dict[str, Any] | None = None, measure: str | None = None,
              margin_sigma: float | None = None, force: bool = False,
              progress: Any = None) -> Calibrated:
    """Measure ``checkpoint`` (a folder, a .gguf file, ``pkg://`` or ``assemble://``)
    and write the calibrated spec ``output`` and its baseline
    ``<output's folder>/baselines/<name>.json``.

    ``name``: the spec's name (default: ``output``'s file name without suffix);
    ``probe``: ``probe`` keys of the spec (``sequences``, ``length``, ``shards``,
    ``corpus``; defaults otherwise); ``measure``: the spec's measure;
    ``margin_sigma``: k of :func:`audit.thresholds.calibrate_thresholds`; ``force``:
    overwrite an existing spec or baseline; ``progress`` as :func:`audit.pipeline.run`
    takes it.  Names and options are checked, and existing files refused, before
    anything is measured.  Raises :class:`~audit.errors.EquilawError` subclasses."""
    out = Path(output)
    if name is None:
        name = out.stem
        if not re.fullmatch(NAME_PATTERN, name):
            raise EquilawError(f"spec name {name!r}, from the output file name, must match "
                               f"{NAME_PATTERN}: rename {out.name} or pass --name")
    data: dict[str, Any] = {"name": name, "model": command_line_model(checkpoint),
                            "probe": dict(probe or {})}
    if measure is not None:
        data["measure"] = measure
    spec = spec_from_dict(data)  # checks the name and the options before anything runs
    baseline = baseline_path(dataclasses.replace(spec, source=str(out)))
    if not force:
        for path in (out, baseline):
            if os.path.lexists(path):
                raise EquilawError(f"{path} already exists; pass --force to overwrite it")

    measurement = pipeline.collect(spec, progress=progress)
    margin = {} if margin_sigma is None else {"margin_sigma": margin_sigma}
    measured = pipeline.judge(measurement)  # no thresholds: the numbers only
    calibration = calibrate_thresholds(measured, **margin)
    text = spec_text(name, relative_path(spec.model.path, out), calibration, measured,
                     spec.probe, corpus=relative_corpus(spec.probe.corpus, out),
                     baseline=os.path.relpath(baseline, out.parent))
    # Judge the measurement by the spec as it will be read back: it must pass.
    calibrated = spec_from_dict(yaml.safe_load(text), source=out)
    report = pipeline.judge(dataclasses.replace(measurement, spec=calibrated))
    if report.verdict != "pass":
        raise EquilawError("calibrated thresholds fail their own measurement (a bug in "
                           "audit.calibrate): " + "; ".join(c.message for c in report.violations))

    try:   # the spec and its baseline land together or not at all
        write_together({out: text.encode("utf-8"),
                        baseline: report_text(baseline_of(report)).encode("utf-8")})
    except OSError as exc:
        raise EquilawError(f"cannot write spec {out} and its baseline {baseline}: {exc}; "
                           f"neither was written") from exc
    return Calibrated(spec_path=out, baseline_path=baseline, report=report,
                      calibration=calibration)
