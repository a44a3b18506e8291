"""The report object, its JSON form and the terminal renderer, on reports assembled
from synthetic PR curves (no model is run)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from audit.errors import ReportError
from audit.law import fit_law
from audit.report.build import build_report
from audit.report.data import SCHEMA_VERSION, Report
from audit.report.json_report import read_json, report_path, write_json
from audit.spec import spec_from_dict

LAYERS = 6
BUMP = 4  # the layer pushed off the line
SHARDS = 5


def synthetic_report(name: str = "synth", shards: int = SHARDS, bump: float = 0.1,
                     expected: tuple[int, ...] = (), tokens_per_second: float = 1234.0,
                     statistics: str = "gram", conditions=None, ranks=None, **law) -> Report:
    """PR = 0.9 · 0.8**l with layer BUMP multiplied by 10**bump, judged by ``law``
    (defaults: thresholds that the bump breaks at layer BUMP only)."""
    layers = np.arange(LAYERS + 1)
    pr = 0.9 * 0.8 ** layers
    pr[BUMP] *= 10 ** bump
    loo = None
    if shards > 1:
        noise = np.random.default_rng(0).normal(0.0, 1e-3, size=(shards, LAYERS + 1))
        loo = pr * (1 + noise)
    fit = fit_law(pr, first_layer=1, leave_one_out=loo)
    thresholds = {"max_pearson_r": -0.9, "rho": [0.7, 0.9], "max_deviation": 0.05,
                  "min_step_fraction": 0.5, "expected_deviations": list(expected), **law}
    spec = spec_from_dict({"name": name, "model": {"path": "/models/synth"},
                           "probe": {"sequences": 16, "length": 8, "shards": max(shards, 1),
                                     "statistics": statistics},
                           "law": thresholds})
    return build_report(
        spec, fit,
        ranks=np.full(LAYERS + 1, 16) if ranks is None else np.asarray(ranks),
        conditions=np.full(LAYERS + 1, 30.0) if conditions is None else np.asarray(conditions),
        model={"path": "/models/synth", "resolved_path": "/models/synth", "sha256": "ab" * 32,
               "architecture": "llama", "layers": LAYERS, "width": 16},
        corpus={"name": "python-docstrings", "sha256": "cd" * 32, "tokens": 128,
                "stream_tokens": 1000, "examples": 112, "sequences": 16, "length": 8},
        versions={"python": "3.11.0", "numpy": np.__version__, "equilaw": "0.1.0",
                  "torch": "2.13.0", "transformers": "5.23.0"},
        timing={"load_seconds": 0.5, "forward_seconds": 0.1, "stats_seconds": 0.01,
                "tokens_per_second": tokens_per_second},
        probe={"windows_sha256": "ef" * 32, "tokenizer": {"class": "Byte", "vocab_size": 259}},
        shard_ids=tuple(range(shards)) if shards > 1 else (), leave_one_out=loo,
    )


@pytest.fixture(scope="module")
def report() -> Report:
    return synthetic_report()


def test_synthetic_report_flags_the_bump(report: Report) -> None:
    assert report.verdict == "fail"
    statuses = {row.index: row.status for row in report.layers}
    assert statuses == {0: "unjudged", 1: "ok", 2: "ok", 3: "ok", 4: "violation", 5: "ok",
                        6: "ok"}
    # the bump shows as a deviation above the line and as a step that loses nothing
    assert [(c.check, c.layer) for c in report.violations] == [("deviation", 4), ("step", 4)]
    assert report.expected_failures == ()


def test_expected_deviation_does_not_fail_the_verdict() -> None:
    got = synthetic_report(expected=(4,))
    assert got.verdict == "pass"
    assert got.violations == ()
    assert {row.index: row.status for row in got.layers}[4] == "expected"
    assert [(c.check, c.layer) for c in got.expected_failures] == [("deviation", 4), ("step", 4)]


# -- dict and JSON ---------------------------------------------------------------------

def _roundtrip(report: Report) -> Report:
    return Report.from_dict(json.loads(json.dumps(report.to_dict(), allow_nan=False)))


def test_json_roundtrip(report: Report) -> None:
    back = _roundtrip(report)
    assert back.to_dict() == report.to_dict()
    assert back.law == report.law
    assert back.layers[2:] == report.layers[2:]  # layers 0 and 1 hold NaN steps (NaN != NaN)
    for got, want in zip(back.checks, report.checks, strict=True):
        assert (got.check, got.layer, got.value, got.stderr, got.threshold, got.passed,
                got.expected, got.message) == (want.check, want.layer, want.value, want.stderr,
                                               want.threshold, want.passed, want.expected,
                                               want.message)
    assert isinstance(back.checks[1].threshold, tuple)


def test_nan_becomes_null_and_back() -> None:
    single = synthetic_report(shards=1, tokens_per_second=float("nan"))
    data = single.to_dict()
    text = json.dumps(data, allow_nan=False)  # would raise on a NaN left in
    assert data["law"]["slope_se"] is None and data["layers"][0]["step"] is None
    assert data["timing"]["tokens_per_second"] is None
    back = Report.from_dict(json.loads(text))
    assert math.isnan(back.law.slope_se) and math.isnan(back.layers[0].step)
    assert math.isnan(back.layers[3].pr_se) and math.isfinite(back.layers[3].pr)
    assert math.isnan(back.timing["tokens_per_second"])
    assert back.to_dict() == data


def test_from_dict_refuses_another_schema(report: Report) -> None:
    data = report.to_dict()
    data["schema_version"] = 99
    with pytest.raises(ReportError) as err:
        Report.from_dict(data)
    assert str(err.value) == (f"report schema_version 99 is not one this equilaw reads "
                              f"(2..{SCHEMA_VERSION}): re-run the audit to regenerate it")


def test_json_has_the_keys_the_issue_lists(report: Report) -> None:
    data = report.to_dict()
    assert {"spec", "model", "corpus", "measure", "normalization", "target", "backend", "seeds",
            "versions", "law", "layers", "violations", "verdict"} <= set(data)
    assert {"path", "sha256"} <= set(data["model"])
    assert {"name", "sha256", "tokens"} <= set(data["corpus"])
    assert {"python", "torch", "transformers", "numpy", "equilaw"} <= set(data["versions"])
    law_keys = ("slope", "intercept", "pearson_r", "r_squared", "rho", "mean_step")
    assert set(law_keys) | {k + "_se" for k in law_keys} <= set(data["law"])
    row_keys = ("pr", "log10_pr", "fitted", "deviation", "step")
    for row in data["layers"]:
        assert {"index", "status"} | set(row_keys) | {k + "_se" for k in row_keys} <= set(row)
        assert row["status"] in ("ok", "violation", "expected", "unjudged")
    assert [row["index"] for row in data["layers"]] == list(range(LAYERS + 1))
    assert data["violations"] == [
        {"layer": c.layer, "check": c.check, "value": c.value, "stderr": c.stderr,
         "threshold": c.threshold, "message": c.message} for c in report.violations]
    assert [(v["check"], v["layer"]) for v in data["violations"]] == [("deviation", 4), ("step", 4)]
    assert data["verdict"] == "fail"
    assert data["spec"]["law"]["rho"] == [0.7, 0.9]
    assert data["seeds"] == {"probe": 0, "shuffle": 0}


def test_write_json_is_atomic(report: Report, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    path = write_json(report, out)
    assert path == report_path(out, report) == out / "synth.json"
    assert os.listdir(out) == ["synth.json"]  # no temporary file left behind
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600
    assert read_json(path).to_dict() == report.to_dict()
    passing = synthetic_report(expected=(4,))
    assert write_json(passing, out) == path  # an existing report is replaced
    assert os.listdir(out) == ["synth.json"]
    assert json.loads(path.read_text())["verdict"] == "pass"


def test_write_json_failure_leaves_the_old_file(report: Report, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_json(report, tmp_path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ReportError) as err:
        write_json(synthetic_report(expected=(4,)), tmp_path)
    assert str(err.value) == f"cannot write report {path}: [Errno 28] No space left on device"
    assert os.listdir(tmp_path) == ["synth.json"]
    assert path.read_bytes() == before


def test_unwritable_folder_is_a_report_error(report: Report, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ReportError) as err:
        write_json(report, blocker / "reports")
    assert str(err.value).startswith(f"cannot write report {blocker / 'reports' / 'synth.json'}: ")


def test_read_json_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ReportError, match=r"^cannot read report .*bad\.json: "):
        read_json(bad)
    with pytest.raises(ReportError, match=r"^cannot read report .*missing\.json: "):
        read_json(tmp_path / "missing.json")


# -- terminal ------------------------------------------------------------------------

def _render(report: Report, color: bool = False) -> str:
    from rich.console import Console

    from audit.report.terminal import render

    buffer = io.StringIO()
    console = Console(file=buffer, width=160, force_terminal=color,
                      color_system="standard" if color else None)
    render(report, console)
    return buffer.getvalue()


def test_terminal_shows_verdict_fit_and_violations(report: Report) -> None:
    text = _render(report)
    assert "synth  FAIL" in text
    assert f"Pearson r {report.law.pearson_r:+.4f} ± {report.law.pearson_r_se:.4f}" in text
    assert f"ρ {report.law.rho:.5f} ± {report.law.rho_se:.5f}" in text
    assert "1234 tokens/s" in text
    assert f"PR_1 → PR_{LAYERS}: {report.law.pr_first:.4f} → {report.law.pr_last:.4f}" in text
    lines = text.splitlines()
    for row in report.layers:
        line = next(l for l in lines if l.lstrip("│ ").startswith(f"{row.index} ")
                    and f"{row.pr:.5f}" in l)
        assert row.status in line
        assert ("●" in line) == (row.index > 0)
    for check in report.violations:
        assert f"VIOLATION: {check.message}" in text
    assert "VIOLATION: layer 4: deviation +0.0819" in text
    assert "VIOLATION: layer 4: step -0.00309" in text


def test_terminal_highlights_violating_layers(report: Report) -> None:
    text = _render(report, color=True)
    lines = text.splitlines()
    red = "\x1b[1;31"  # bold red: the violation status and picture (on a dark background)
    for row in report.layers[1:]:
        line = next(l for l in lines if f"{row.pr:.5f}" in l)
        assert (red in line) == (row.status == "violation"), row.index
    assert "\x1b[1;32mPASS" not in text and "FAIL" in text


def test_terminal_expected_and_pass() -> None:
    text = _render(synthetic_report(expected=(4,)))
    assert "synth  PASS" in text
    assert "expected: layer 4: deviation" in text
    assert "VIOLATION" not in text


CONDITIONS = [30.0, 3.0e4, 20.0, 2.0e9, float("inf"), 40.0, 50.0]
RANKS = [16, 16, 16, 16, 15, 16, 16]


def test_warnings_name_layers_whose_condition_limits_precision() -> None:
    gram = synthetic_report(conditions=CONDITIONS, ranks=RANKS)
    assert gram.statistics == "gram"
    assert [row.condition for row in gram.layers] == CONDITIONS
    assert gram.warnings == (
        "layer 1: condition number 3.0e+04 of the centred, column-scaled features: PR is exact "
        "only to about 2e-07 relative with statistics: gram; probe.statistics: qr would give "
        "about 7e-12",
        "layer 3: condition number 2.0e+09 of the centred, column-scaled features: PR may carry "
        "no correct digit with statistics: gram; probe.statistics: qr would give about 4e-07",
        "layer 4: features have rank 15 < width 16 (constant or dependent dimensions): PR is "
        "the minimum-norm least-squares value",
    )
    qr = synthetic_report(statistics="qr", conditions=CONDITIONS, ranks=RANKS)
    assert qr.statistics == "qr" and qr.warnings == (
        "layer 3: condition number 2.0e+09 of the centred, column-scaled features: PR is exact "
        "only to about 4e-07 relative with statistics: qr",
        gram.warnings[2],
    )
    assert synthetic_report().warnings == ()


def test_warnings_and_conditions_round_trip_and_render(tmp_path: Path) -> None:
    report = synthetic_report(conditions=CONDITIONS, ranks=RANKS)
    data = report.to_dict()
    assert data["statistics"] == "gram" and data["warnings"] == list(report.warnings)
    assert [row["condition"] for row in data["layers"]] == [
        30.0, 3.0e4, 20.0, 2.0e9, "inf", 40.0, 50.0]  # rank-deficient: infinite κ
    back = read_json(write_json(report, tmp_path))
    assert back.warnings == report.warnings and back.layers[1].condition == 3.0e4
    assert back.layers[4].condition == math.inf
    text = _render(report)
    assert _render(back) == text
    assert "gram statistics, 5 jackknife shards" in text
    for warning in report.warnings:
        assert f"warning: {warning[:60]}" in text
    lines = text.splitlines()
    for row, shown in zip(report.layers, ["30", "30000", "20", "2.0e+09", "inf", "40", "50"]):
        line = next(l for l in lines if f"{row.pr:.5f}" in l)
        assert f" {shown} " in line, (row.index, line)


def test_terminal_renders_a_report_read_back_from_json(tmp_path: Path) -> None:
    single = synthetic_report(shards=1, tokens_per_second=float("nan"))
    back = read_json(write_json(single, tmp_path))
    assert _render(back) == _render(single)
    assert "nan tokens/s" in _render(back)


def test_report_keeps_leave_one_out_log10_pr_with_shard_ids(report: Report) -> None:
    assert report.shard_ids == tuple(range(SHARDS))
    for row in report.layers:
        assert len(row.log10_pr_loo) == SHARDS
        # the jackknife of the kept values is the reported standard error
        from audit.stats.jackknife import jackknife_se
        assert jackknife_se(np.array(row.log10_pr_loo)) == pytest.approx(row.log10_pr_se, rel=1e-12)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["schema_version"] == SCHEMA_VERSION == 3 and data["shard_ids"] == list(range(SHARDS))
    back = Report.from_dict(data)
    assert back.to_dict() == report.to_dict() and _render(back) == _render(report)


def test_a_missing_field_names_it_and_the_file(report: Report, tmp_path: Path) -> None:
    data = report.to_dict()
    del data["layers"][2]["log10_pr"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError) as err:
        read_json(path)
    assert str(err.value) == f"{path}: report field layers[2].log10_pr is missing"
    data = report.to_dict()
    del data["probe"]
    with pytest.raises(ReportError, match=r"^report field probe is missing$"):
        Report.from_dict(data)


def test_schema_2_reports_are_still_read(report: Report) -> None:
    """A report written before schema 3 (no probe record, loss, shard ids or
    leave-one-out values) is read, with those fields empty."""
    data = report.to_dict()
    data["schema_version"] = 2
    for key in ("probe", "loss", "loss_note", "shard_ids", "comparisons"):
        del data[key]
    for row in data["layers"]:
        del row["log10_pr_loo"]
    back = Report.from_dict(data)
    assert back.probe == {} and back.loss is None and back.shard_ids == ()
    assert back.layers[3].log10_pr_loo == () and back.layers[3].pr == report.layers[3].pr
    assert _render(back) == _render(dataclasses.replace(
        report, layers=tuple(dataclasses.replace(r, log10_pr_loo=()) for r in report.layers)))


def test_a_report_written_with_schema_3_stays_readable() -> None:
    """tests/data/report-schema3.json was written by schema 3 and is never
    regenerated: a later schema must still read it (a committed baseline stays
    usable after a bump)."""
    path = Path(__file__).with_name("data") / "report-schema3.json"
    back = read_json(path)
    assert back.name == "d" and back.shard_ids == (0, 1, 2, 3, 4)
    assert back.loss is not None and back.loss.mean == 3.0 and len(back.loss.leave_one_out) == 5
    (comparison,) = back.comparisons
    assert comparison.first_moved_layer == 3 and len(comparison.rows) == 8
    assert all(len(row.log10_pr_loo) == 5 for row in back.layers)
    assert "first moved layer 3" in _render(back)
