"""The divergence gate through the audit session on the tiny random Llama: a
reference model at the model's own path (KL 0, passing, its report written), a
damaged copy against the healthy reference (the item fails with
judge_divergence's messages), a missing reference (a SpecError before anything is
measured), and the stored baseline's token record (written with the baseline, both
or neither; compared: same top 1, KL 0; absent: the item skips naming the command)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from test_merge_session import family  # noqa: F401 (a fixture)

from audit.compare.divergence import judge_divergence
from audit.compare.output_gate import thresholds, token_record_path
from audit.compare.token_record import TOP_MASS, load_token_record
from audit.errors import ReportError, SpecError
from audit.report.data import Report
from audit.report.html import render_page
from audit.report.markdown import markdown_summary
from audit.report.terminal import render
from audit.session import AuditSession, Outcome
from audit.spec import load_spec

PROBE = "probe:\n  sequences: 12\n  length: 16\n  shards: 4\nlaw:\n  max_pearson_r: 1.0\n"


def _spec(folder: Path, model: Path, extra: str = "", name: str = "tiny-div") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: {model}\n{PROBE}{extra}")
    return path


@pytest.fixture(scope="module")
def sharpened_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with its final norm ×8: the same top token, far sharper
    next-token distributions."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path_factory.mktemp("tiny-sharpened")
    for item in tiny_model_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    weights = load_file(str(folder / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] * np.float32(8)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_a_reference_at_the_models_own_path_gives_kl_zero_and_passes(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, tiny_model_dir, f"reference_model: {tiny_model_dir}\n"))
    session = AuditSession([Path(spec.source)], tmp_path / "reports", baselines_dir=tmp_path)
    assert "divergence" in session.item_names(spec)
    report = session.report(spec)
    (row,) = report.divergence
    assert (row.source, row.gated) == ("reference_model", True)
    assert row.result.kld_mean == 0.0 and row.result.same_top == 1.0
    assert row.result.rms_dp == 0.0 and row.result.tokens == 12 * 15
    assert session.outcome(spec, "divergence").outcome is Outcome.PASSED
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "tiny-div.json", "tiny-div.reference.json"]
    reference = json.loads((tmp_path / "reports" / "tiny-div.reference.json").read_text())
    assert reference["model"]["resolved_path"] == report.model["resolved_path"]
    back = Report.from_dict(report.to_dict())
    assert back.divergence == report.divergence and back.to_dict()["schema_version"] == 4
    console = Console(record=True, width=120)
    render(report, console)
    shown = console.export_text()
    assert f"divergence from reference model {tiny_model_dir} (gated; 180 tokens)" in shown
    for line in ("====== KL divergence statistics ======", "Mean    KLD:   0.000000 ±   0.000000",
                 "99.9%   KLD:   0.000000", "====== Token probability statistics ======",
                 "RMS Δp    :    0.000 ± 0.000 %", "Same top p:  100.000 ± 0.000 %"):
        assert line in shown


def test_a_damaged_model_against_a_healthy_reference_fails_with_the_figures(
        tiny_model_dir: Path, sharpened_dir: Path, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, sharpened_dir, f"reference_model: {tiny_model_dir}\n"))
    session = AuditSession([Path(spec.source)], None, baselines_dir=tmp_path)
    report = session.report(spec)
    (row,) = report.divergence
    assert row.result.kld_mean > 0.05 and row.result.kld_mean / row.result.kld_mean_se > 8
    failures = judge_divergence(row.result, thresholds(spec.divergence))
    assert failures and failures[0].startswith(f"KLD mean {row.result.kld_mean:.6g} ± ")
    done = session.outcome(spec, "divergence")
    assert done.outcome is Outcome.COMPARISON_FAILED
    # the final norm ×8 leaves every layer's log10 PR as it was (PR is scale-free):
    # the law's per-layer view says the distribution moved without a layer moving
    assert done.message == "\n".join(
        [f"divergence from reference model {tiny_model_dir}: {line}" for line in failures]
        + ["per-layer drift of log10 PR from the reference model (not gated): no layer moved"])
    assert row.drift.first_moved_layer is None and row.drift.kind == "reference"
    assert [r.drift for r in row.drift.rows] == [0.0] * 4
    assert report.verdict == "fail"
    page = render_page([report])
    assert "<th>next-token divergence from</th>" in page
    assert f"<td class=\"n\">{row.result.kld_p99:.6f}</td>" in page
    (line,) = markdown_summary([report]).splitlines()[4:5]
    assert line.endswith(f"| reference\\_model: {row.result.kld_mean:.6f} / "
                         f"{100 * row.result.same_top:.2f} % |")


def test_a_missing_reference_is_a_spec_error_before_anything_is_measured(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, tiny_model_dir, "reference_model:\n  path: ./nowhere\n"))
    session = AuditSession([Path(spec.source)], tmp_path / "reports")
    with pytest.raises(SpecError) as info:
        session.num_layers(spec)
    nowhere = tmp_path / "nowhere"
    assert str(info.value) == (f"{spec.source}:10: reference_model.path: reference model at "
                               f"{nowhere}: model path '{nowhere}' does not exist")
    assert not (tmp_path / "reports").exists()


def test_the_baseline_token_record_round_trip(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, tiny_model_dir, "divergence:\n  top_k: 8\n"))
    baselines = tmp_path / "baselines"
    # no baseline: the item skips naming the command that writes both files
    session = AuditSession([Path(spec.source)], None, baselines_dir=baselines)
    done = session.outcome(spec, "divergence")
    assert done.outcome is Outcome.SKIPPED and done.message.endswith(
        "create the baseline and its token record with: "
        "pytest audit/ --audit-update-baseline -k tiny-div")
    writer = AuditSession([Path(spec.source)], None, baselines_dir=baselines,
                          update_baselines=True)
    assert writer.outcome(spec, "divergence").message.startswith(
        "tiny-div: baseline token record written to ")
    assert sorted(p.name for p in baselines.iterdir()) == ["tiny-div.json", "tiny-div.tokens.npz"]
    record = load_token_record(baselines / "tiny-div.tokens.npz")
    assert len(record) == 12 * 15 and record.meta["top_k"] == 8
    assert record.meta["mass"] == TOP_MASS  # a baseline's record is adaptive
    assert (record.top_ids >= 0).sum(axis=1).min() >= 8
    assert "divergence" not in json.loads((baselines / "tiny-div.json").read_text()) or \
        json.loads((baselines / "tiny-div.json").read_text())["divergence"] == []
    reader = AuditSession([Path(spec.source)], None, baselines_dir=baselines)
    report = reader.report(spec)
    (row,) = report.divergence
    assert (row.source, row.gated, row.result.kld_is_bound) == ("baseline", True, True)
    assert row.result.same_top == 1.0 and row.result.kld_mean == 0.0
    assert row.result.rms_dp == 0.0
    assert reader.outcome(spec, "divergence").outcome is Outcome.PASSED
    # a baseline without its record: skipped, naming the command
    os.unlink(baselines / "tiny-div.tokens.npz")
    done = AuditSession([Path(spec.source)], None, baselines_dir=baselines).outcome(
        spec, "divergence")
    assert done.outcome is Outcome.SKIPPED and "has no token record" in done.message
    assert done.message.endswith("write it with: pytest audit/ --audit-update-baseline "
                                 "-k tiny-div")


def test_the_baseline_and_its_record_land_together_or_not_at_all(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(_spec(tmp_path, tiny_model_dir))
    baselines = tmp_path / "baselines"
    real = os.replace

    def fail_on_json(src, dst):
        if Path(dst) == baselines / "tiny-div.json":
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_json)
    writer = AuditSession([Path(spec.source)], None, baselines_dir=baselines,
                          update_baselines=True)
    writer.report(spec)
    with pytest.raises(ReportError, match="tiny-div.tokens.npz: disk full"):
        writer.outcome(spec, "baseline-law")
    assert list(baselines.iterdir()) == []
    assert token_record_path(baselines / "tiny-div.json") == baselines / "tiny-div.tokens.npz"


def test_merge_parents_each_get_a_reported_row(family, tmp_path: Path) -> None:  # noqa: F811
    from test_merge_session import BASE, NOISY
    from test_merge_session import _spec as merge_spec

    spec = load_spec(merge_spec(tmp_path, family["average"], {f'"{BASE}"': family["base"],
                                                               NOISY: family["noisy"]}))
    session = AuditSession([Path(spec.source)], None, baselines_dir=tmp_path)
    report = session.report(spec)
    rows = {row.source: row for row in report.divergence}
    assert sorted(rows) == [f"parent:{BASE}", f"parent:{NOISY}"]
    assert not any(row.gated for row in rows.values())
    for row in rows.values():
        assert 0 < row.result.kld_mean < 0.05 and row.result.tokens == 16 * 23
    assert not [c for c in report.checks if c.check == "divergence"]
    done = session.outcome(spec, "divergence")
    assert done.outcome is Outcome.SKIPPED and "no baseline" in done.message


def test_a_measurement_served_from_the_cache_still_runs_the_models(
        tiny_model_dir: Path, sharpened_dir: Path, tmp_path: Path) -> None:
    from audit.cache.stats_cache import StatsCache

    spec = load_spec(_spec(tmp_path, sharpened_dir, f"reference_model: {tiny_model_dir}\n"))
    cache = StatsCache(tmp_path / "cache")
    first = AuditSession([Path(spec.source)], None, baselines_dir=tmp_path, cache=cache)
    (measured,) = first.report(spec).divergence
    assert cache.hits == [] and len(cache.stored) == 2    # the model's and the reference's
    again = AuditSession([Path(spec.source)], None, baselines_dir=tmp_path, cache=cache)
    (served,) = again.report(spec).divergence
    assert len(cache.hits) == 2
    assert served == measured and served.result.kld_mean > 0.05


def test_the_reference_row_says_where_the_model_moved(tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    from test_merge_session import _variant

    def damaged(weights):  # block 2 (0-based) produces hidden state 3
        key = "model.layers.2.mlp.down_proj.weight"
        return {**weights, key: weights[key] * np.float32(8)}

    model = _variant(tiny_model_dir, tmp_path / "block3-x8", damaged)
    spec = load_spec(_spec(tmp_path, model, f"reference_model: {tiny_model_dir}\n"))
    session = AuditSession([Path(spec.source)], tmp_path / "reports", baselines_dir=tmp_path)
    report = session.report(spec)
    (row,) = report.divergence
    drift = row.drift
    reference = Report.from_dict(json.loads(
        (tmp_path / "reports" / "tiny-div.reference.json").read_text()))
    assert (drift.kind, drift.reference, drift.first_moved_layer) == (
        "reference", str(tiny_model_dir), 3)
    # layers before the damaged block are the reference's, bit for bit
    assert [r.drift for r in drift.rows[:2]] == [0.0, 0.0]
    assert [r.now for r in drift.rows] == [layer.log10_pr for layer in report.layers[1:]]
    assert [r.then_low for r in drift.rows] == [layer.log10_pr for layer in reference.layers[1:]]
    assert drift.rows[2].status == "moved" and abs(drift.rows[2].drift) > 0.0008
    assert {r.status for r in drift.rows} <= {"ok", "moved"}     # reported, never gated
    assert not [c for c in report.checks if c.check == "drift"]
    (check,) = [c for c in report.checks if c.check == "divergence"]
    top = drift.rows[drift.largest_drift_layer - 1]
    assert check.message.splitlines()[-1] == (
        "per-layer drift of log10 PR from the reference model (not gated): first moved layer "
        f"3, largest drift {drift.largest_drift:+.4g} ± {top.drift_se:.2g} at layer "
        f"{drift.largest_drift_layer}")
    back = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert back.divergence == report.divergence
    console = Console(record=True, width=160)
    render(back, console)
    shown = console.export_text()
    assert f"against reference {tiny_model_dir}: first moved layer 3" in shown
    assert "moved ← first moved" in shown
