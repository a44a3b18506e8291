"""Parity between two backends of one checkpoint (audit.compare.parity), on
synthetic reports: agreement within the tolerances passes, a layer or a loss
beyond them fails naming it, a missing loss fails saying where, and the parity
item covers its per-layer checks itself (the layer items do not)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from test_compare import make_report

from audit.checks import item_results
from audit.compare.parity import compare_backends
from audit.errors import ComparisonError
from audit.report.text import comparison_text
from audit.spec import ParitySpec

TOL = ParitySpec()


def onnx_of(report, **changes):
    return dataclasses.replace(report, backend="onnx", **changes)


def test_identical_backends_agree_and_the_item_covers_every_layer() -> None:
    torch_report = make_report()
    got = compare_backends(onnx_of(make_report()), torch_report, TOL)
    (cmp,) = got.comparisons
    assert cmp.kind == "parity" and cmp.reference == "torch" and cmp.title == "parity with torch"
    assert got.verdict == "pass" and cmp.first_moved_layer is None
    parity = item_results(got.checks, "parity")
    assert [c.check for c in parity] == ["parity_loss"] + ["parity_log10_pr"] * 8
    assert all(c.passed for c in parity)
    # the layer items judge the law and the drift, not the parity (one item for it)
    assert all(c.check != "parity_log10_pr" for c in item_results(got.checks, "layer-03"))


def test_a_layer_beyond_the_tolerance_fails_naming_it() -> None:
    torch_report = make_report()
    onnx_report = onnx_of(make_report(bump_at=6, bump=3e-5))
    got = compare_backends(onnx_report, torch_report, TOL)
    (cmp,) = got.comparisons
    failed = [c for c in got.checks if not c.passed]
    assert [c.layer for c in failed] == [6, 7, 8]
    assert failed[0].message.startswith("layer 6: log10 PR difference +3.00e-05")
    assert "|difference| 3e-05 > parity.max_log10_pr_difference 1e-06" in failed[0].message
    assert cmp.first_moved_layer == 6 and got.verdict == "fail"
    text = comparison_text(cmp)
    assert text.startswith("parity with torch: first moved layer 6")
    assert "+3.0e-05" in text and "torch" in text.splitlines()[1]
    # a difference within the tolerance passes
    close = compare_backends(onnx_of(make_report(bump_at=6, bump=5e-7)), torch_report, TOL)
    assert close.verdict == "pass"


def test_the_loss_difference_is_judged_both_ways() -> None:
    torch_report = make_report(loss=3.0)
    for loss in (3.0 + 3e-4, 3.0 - 3e-4):
        got = compare_backends(onnx_of(make_report(loss=loss)), torch_report, TOL)
        (check,) = [c for c in got.checks if c.check == "parity_loss"]
        assert not check.passed
        assert check.value == pytest.approx(loss - 3.0)
        assert "> parity.max_loss_difference 0.0002" in check.message


def test_a_backend_without_loss_fails_the_loss_check_unless_it_is_off() -> None:
    torch_report = make_report()
    headless = onnx_of(make_report(), loss=None, loss_note="'m.onnx' has no logits output")
    got = compare_backends(headless, torch_report, TOL)
    (check,) = [c for c in got.checks if c.check == "parity_loss"]
    assert not check.passed and math.isnan(check.value)
    assert check.message == ("probe loss: missing in onnx ('m.onnx' has no logits output); set "
                             "parity.max_loss_difference: null to compare without it")
    off = compare_backends(headless, torch_report, ParitySpec(max_loss_difference=None))
    assert off.verdict == "pass" and not [c for c in off.checks if c.check == "parity_loss"]



def _row(kld: float):
    import numpy as np

    from audit.compare.divergence import DivergenceAccumulator, TokenFigures
    from audit.report.data import DivergenceRow

    acc = DivergenceAccumulator(2)
    n = 10
    acc.update(TokenFigures(kld=np.full(n, kld), kld_reverse=np.full(n, kld),
                            same_top=np.ones(n, bool), dp=np.zeros(n), nll_ref=np.ones(n),
                            nll_model=np.ones(n)), np.arange(n) % 2)
    return DivergenceRow("backend:torch", "/m", False, acc.result())


def test_the_next_token_kld_is_judged_when_the_session_measured_it() -> None:
    torch_report, onnx_report = make_report(), onnx_of(make_report())
    assert not [c for c in compare_backends(onnx_report, torch_report, TOL).checks
                if c.check == "parity_kld"]
    for kld, passed in ((1e-7, True), (2e-5, False)):
        got = compare_backends(onnx_report, torch_report, TOL, _row(kld))
        (check,) = [c for c in got.checks if c.check == "parity_kld"]
        assert (check.passed, check.value, got.verdict) == (passed, kld,
                                                            "pass" if passed else "fail")
        assert check.message.startswith("next-token KL(torch ‖ onnx) over 10 tokens: mean ")
        assert got.divergence[-1].source == "backend:torch"
        assert item_results(got.checks, "parity")[-1] is check
    missing = compare_backends(onnx_report, torch_report, TOL, None, "'m.onnx' has no logits")
    (check,) = [c for c in missing.checks if c.check == "parity_kld"]
    assert not check.passed and check.message == (
        "next-token KL divergence: not measured ('m.onnx' has no logits); set "
        "parity.max_kld_mean: null to compare without it")
    off = compare_backends(onnx_report, torch_report, ParitySpec(max_kld_mean=None), _row(1.0))
    assert off.verdict == "pass" and not off.divergence

def test_other_windows_are_refused() -> None:
    with pytest.raises(ComparisonError, match="windows sha256"):
        compare_backends(onnx_of(make_report(windows="cd" * 32)), make_report(), TOL)


def test_parity_checks_are_not_kept_in_a_baseline(tmp_path) -> None:
    from audit.compare.baseline import read_baseline, write_baseline

    got = compare_backends(onnx_of(make_report()), make_report(), TOL)
    path = write_baseline(got, tmp_path / "m.onnx.json")
    back = read_baseline(path)
    assert back.comparisons == () and not [c for c in back.checks if c.check.startswith("parity")]
