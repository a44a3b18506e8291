"""audit.compare on synthetic reports (no model): paired drift and its standard
error, first_moved_layer, the baseline's refusal of another setup, merge ranges
through a layer map, and the small report a failing item prints."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from audit.compare.baseline import (
    check_comparable,
    compare_to_baseline,
    fingerprint,
    read_baseline,
    write_baseline,
)
from audit.compare.drift import Reference, curve, drift, first_moved_layer
from audit.compare.layer_map import LayerMap, LayerSource, index_layer_map
from audit.compare.merge import compare_to_parents
from audit.errors import ComparisonError
from audit.law import fit_law
from audit.report.build import build_report
from audit.report.data import LossSummary, Report
from audit.report.text import comparison_text
from audit.spec import BaselineSpec, spec_from_dict
from audit.stats.jackknife import jackknife_se

LAYERS, SHARDS = 8, 5
TOL = BaselineSpec()


def make_report(name: str = "m", pr=None, *, bump_at: int | None = None, bump: float = 0.0,
                noise_seed: int = 0, loss: float = 3.0, windows: str = "ab" * 32,
                sequences: int = 16, layers: int = LAYERS, versions=None) -> Report:
    """A report of PR = 0.9 · 0.97**l whose leave-one-out curves share the noise of
    ``noise_seed`` (same windows: paired), with log10 PR raised by ``bump`` from
    layer ``bump_at`` on."""
    ell = np.arange(layers + 1)
    log10 = np.log10(0.9 * 0.97 ** ell) if pr is None else np.log10(pr)
    if bump_at is not None:
        log10 = log10 + np.where(ell >= bump_at, bump, 0.0)
    noise = np.random.default_rng(noise_seed).normal(0, 2e-3, size=(SHARDS, layers + 1))
    loo = 10 ** (log10 + noise)
    spec = spec_from_dict({"name": name, "model": {"path": "/models/m"},
                           "probe": {"sequences": sequences, "length": 8, "shards": SHARDS},
                           "law": {"max_pearson_r": -0.9}})
    loss_loo = tuple(loss + 0.01 * n for n in noise[:, 0])
    return build_report(
        spec, fit_law(10 ** log10, leave_one_out=loo),
        ranks=np.full(layers + 1, 16), conditions=np.full(layers + 1, 30.0),
        model={"path": "/models/m", "resolved_path": "/models/m", "sha256": name,
               "architecture": "llama", "layers": layers, "width": 16},
        corpus={"name": "python-docstrings", "sha256": "cd" * 32, "tokens": 128,
                "stream_tokens": 1000, "examples": 112, "sequences": sequences, "length": 8},
        versions=versions or {"python": "3.11.7", "torch": "2.13.0"},
        timing={"load_seconds": 0.1, "forward_seconds": 0.1, "stats_seconds": 0.1},
        probe={"windows_sha256": windows, "tokenizer": {"source": "/tok"}},
        loss=LossSummary(mean=loss, stderr=jackknife_se(np.array(loss_loo)),
                         leave_one_out=loss_loo, tokens=112),
        shard_ids=tuple(range(SHARDS)), leave_one_out=loo)


def test_identical_checkpoints_do_not_drift() -> None:
    base = make_report()
    got = compare_to_baseline(make_report("again"), base, TOL, "b.json")
    (cmp,) = got.comparisons
    assert got.verdict == "pass" and cmp.first_moved_layer is None
    assert all(row.drift == 0 and row.sigma == 0 and row.status == "ok" for row in cmp.rows)
    assert [c.check for c in got.checks if c.layer is None] == [
        "pearson_r", "baseline_pearson_r", "baseline_rho", "baseline_loss"]


def test_paired_standard_error_comes_from_the_per_shard_differences() -> None:
    then = make_report(noise_seed=0)
    now = make_report(noise_seed=1, bump_at=5, bump=0.01)
    values, se = drift(now, Reference(*curve(then)[:1] * 2, *curve(then)[1:] * 2))
    log_now, loo_now = curve(now)
    log_then, loo_then = curve(then)
    np.testing.assert_allclose(values[1:], (log_now - log_then)[1:])
    np.testing.assert_allclose(se[1:], jackknife_se(loo_now - loo_then)[1:])
    assert math.isnan(values[0]) and math.isnan(se[0])


def test_damage_is_located_by_effect_and_judged_by_effect_and_sigma() -> None:
    """Layers before the damage are identical; the first layer that moves is named
    even when its sigma is small; later layers beyond both tolerances fail."""
    then = make_report()
    now = make_report("damaged", bump_at=5, bump=0.004)
    # a small first step, then the damage grows downstream
    now_pr = 10 ** np.array([r.log10_pr for r in now.layers])
    now_pr[6:] *= 10 ** 0.03
    # other per-shard noise: the paired standard error is about 0.004
    now = make_report("damaged", pr=now_pr, noise_seed=1)
    got = compare_to_baseline(now, then, TOL, "baselines/m.json")
    (cmp,) = got.comparisons
    assert cmp.first_moved_layer == 5
    assert cmp.largest_drift == pytest.approx(0.034) and cmp.largest_drift_layer in range(6, 9)
    assert {c.layer for c in got.violations if c.check == "drift"} == {6, 7, 8}
    assert got.verdict == "fail"
    row = cmp.rows[4]
    assert (row.layer, row.status, row.drift) == (5, "moved", pytest.approx(0.004))
    assert row.sigma < TOL.max_drift_sigma
    # without a significance threshold the effect alone decides
    effect_only = dataclasses.replace(TOL, max_drift_sigma=None)
    got = compare_to_baseline(now, then, effect_only, "baselines/m.json")
    assert {c.layer for c in got.violations if c.check == "drift"} == {5, 6, 7, 8}


def test_first_moved_layer_either_sign_and_none() -> None:
    values = np.array([np.nan, 0.0, -0.0001, -0.002, 0.01])
    assert first_moved_layer(values, 0.0015) == 3
    assert first_moved_layer(values, 0.1) is None
    assert first_moved_layer(values, None) is None


def test_law_and_loss_against_the_baseline() -> None:
    then = make_report()
    worse = make_report("worse", loss=4.2, bump_at=4, bump=0.05)
    got = compare_to_baseline(worse, then, TOL, "b.json")
    failed = {c.check: c for c in got.violations if c.layer is None}
    assert set(failed) >= {"baseline_loss", "baseline_rho"}
    message = failed["baseline_loss"].message
    assert message.startswith("probe loss (nats) 3 → 4.2: +1.2 ± ")
    assert message.endswith(" > max_loss_increase 0.05")
    off = dataclasses.replace(TOL, max_loss_increase=None, max_rho_increase=None,
                              max_pearson_r_increase=None)
    assert not [c for c in compare_to_baseline(worse, then, off, "b.json").checks
                if c.check.startswith("baseline_")]


def test_a_run_without_loss_fails_the_loss_check_and_says_why() -> None:
    now = dataclasses.replace(make_report(), loss=None, loss_note="switched off (probe.loss: false)")
    got = compare_to_baseline(now, make_report(), TOL, "b.json")
    (check,) = [c for c in got.checks if c.check == "baseline_loss"]
    assert not check.passed and check.message == (
        "probe loss: no probe loss in this run (switched off (probe.loss: false)); set "
        "baseline.max_loss_increase: null to compare without it")


def test_another_setup_is_refused_naming_the_fields() -> None:
    then = make_report()
    with pytest.raises(ComparisonError) as err:
        check_comparable(make_report(sequences=32, windows="00" * 32), then, "the baseline b.json")
    assert err.value.fields == ("probe.sequences", "windows sha256")
    assert str(err.value).startswith("the baseline b.json was measured on another setup "
                                     "(probe.sequences: 16 there, 32 here; windows sha256:")
    with pytest.raises(ComparisonError) as err:
        check_comparable(make_report(windows="00" * 32), then, "the baseline b.json")
    assert err.value.fields == ("windows sha256",)
    assert "the tokenizers differ" in str(err.value) and "model.tokenizer" in str(err.value)
    # different weights are what a release check expects; versions are only noted
    got = compare_to_baseline(make_report("other", versions={"python": "3.11.7", "torch": "2.14.0"}),
                              then, TOL, "b.json")
    assert got.comparisons[0].notes == (
        "library versions differ: torch 2.13.0 in the baseline, 2.14.0 now",)
    assert got.warnings[-1] == got.comparisons[0].notes[0] and got.verdict == "pass"


def test_a_baseline_without_per_shard_values_is_refused() -> None:
    then = make_report()
    old = dataclasses.replace(then, shard_ids=(), layers=tuple(
        dataclasses.replace(r, log10_pr_loo=()) for r in then.layers))
    with pytest.raises(ComparisonError, match=r"has no per-shard values .*: regenerate it$"):
        compare_to_baseline(make_report(), old, TOL, "b.json")


def test_baseline_round_trip_on_disk(tmp_path) -> None:
    then = make_report()
    compared = compare_to_baseline(make_report("x"), then, TOL, "b.json")
    path = write_baseline(compared, tmp_path / "baselines" / "m.json")
    back = read_baseline(path)
    assert back.comparisons == () and not [c for c in back.checks if c.check.startswith(
        ("baseline_", "drift"))]
    assert fingerprint(back) == fingerprint(then)
    again = compare_to_baseline(make_report("x"), back, TOL, "b.json")
    assert again.comparisons[0].rows == compared.comparisons[0].rows
    assert json.loads(path.read_text())["schema_version"] == 4


def test_merge_range_index_by_index_and_through_a_passthrough_map() -> None:
    a, b = make_report("a"), make_report("b", bump_at=1, bump=0.002)
    average = make_report("avg", bump_at=1, bump=0.001)
    got = compare_to_parents(average, {"a": a, "b": b}, index_layer_map(["a", "b"], LAYERS), TOL)
    (cmp,) = got.comparisons
    assert got.verdict == "pass" and cmp.first_moved_layer is None
    assert all(row.drift == 0 for row in cmp.rows) and cmp.rows[0].sources == "a:1, b:1"
    assert {c.check for c in got.checks if c.layer is None} >= {"merge_pearson_r", "merge_rho",
                                                               "merge_loss"}

    # outside the range, below it: a layer that learnt more than either parent also moves
    below = make_report("avg", bump_at=3, bump=-0.01)
    cmp = compare_to_parents(below, {"a": a, "b": b}, index_layer_map(["a", "b"], LAYERS),
                             TOL).comparisons[0]
    assert cmp.first_moved_layer == 3 and cmp.rows[2].drift == pytest.approx(-0.01)

    # a passthrough of 10 layers that repeats layers 5-6 of parent a after layer 6
    order = [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]
    stacked = make_report("pt", pr=np.r_[0.9, [0.9 * 0.97 ** min(l, 6) for l in range(1, 11)]],
                          layers=10)
    layer_map = LayerMap(tuple((LayerSource("a", k),) for k in order), "passthrough", None,
                         (("a", LAYERS),))
    got = compare_to_parents(stacked, {"a": a}, layer_map, TOL)
    (cmp,) = got.comparisons
    assert layer_map.repeat_start == 7 and cmp.first_moved_layer == 7
    assert "merge_rho" not in {c.check for c in got.checks}  # depth changed
    assert math.isnan(cmp.rho_then)


def test_failure_text_is_a_small_capped_report() -> None:
    then = make_report(layers=30)
    now = make_report("d", bump_at=3, bump=0.01, layers=30, loss=4.0)
    cmp = compare_to_baseline(now, then, TOL, "baselines/m.json").comparisons[0]
    text = comparison_text(cmp, fix="accept: pytest audit/ --audit-update-baseline -k m")
    lines = text.splitlines()
    assert lines[0].startswith("against baseline baselines/m.json: first moved layer 3, "
                               "largest drift +0.0100 at layer ")
    assert lines[4].split() == ["loss", "(nats)", "3.0000", "4.0000"]
    assert lines[5] == "  accept: pytest audit/ --audit-update-baseline -k m"
    assert lines[7].split()[0] == "3" and lines[7].endswith("violation ← first moved")
    assert lines[-1] == "  … and 16 more layers" and len(lines) == 7 + 12 + 1


def test_terminal_shows_the_comparison_and_renders_it_alike_after_json(tmp_path) -> None:
    from test_report import _render

    from audit.report.json_report import read_json, write_json

    got = compare_to_baseline(make_report("d", bump_at=3, bump=0.01, noise_seed=2), make_report(),
                              TOL, "baselines/m.json")
    text = _render(got)
    assert "against baseline baselines/m.json: first moved layer 3" in text
    row = next(line for line in text.splitlines() if "← first moved" in line)
    assert row.split()[:4] == ["│", "3", "-0.08544", "-0.07544"]
    assert "probe loss 3.0000 → 3.0000 nats" in text
    assert _render(read_json(write_json(got, tmp_path))) == text
