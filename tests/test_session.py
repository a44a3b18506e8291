"""The session decides each item's outcome, without pytest: which items a spec has,
which failures are the law's (xfail-able) and which are comparisons, and what a
baseline that was not compared makes of the baseline items."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import BUMP, synthetic_report

from audit.compare.baseline import compare_to_baseline
from audit.errors import ComparisonError
from audit.session import AuditSession, BaselineState, BaselineStatus, ItemOutcome, Outcome
from audit.spec import spec_from_dict

SPEC = spec_from_dict({"name": "synth", "model": {"path": "/models/synth"}})
"""The spec of :func:`synthetic_report` (its name is what the session looks up)."""


def session_with(report) -> AuditSession:
    session = AuditSession([], None)
    session._reports[SPEC.name] = report
    return session


def test_items_of_a_plain_spec():
    assert session_with(synthetic_report()).item_names(SPEC) == [
        "law-fit", "law-rho", "baseline-law", "baseline-loss", "divergence"]


def test_a_law_failure_is_failed_and_a_drift_makes_it_a_comparison_failure():
    alone = session_with(synthetic_report())
    assert alone.outcome(SPEC, "law-fit") == ItemOutcome(Outcome.PASSED)
    assert alone.outcome(SPEC, "layer-01") == ItemOutcome(Outcome.PASSED)
    law = alone.outcome(SPEC, f"layer-{BUMP:02d}")
    assert law == ItemOutcome(Outcome.FAILED, (
        "layer 4: deviation +0.0819 ± 0.00052: |deviation| 0.0819 > max_deviation 0.05\n"
        "layer 4: step -0.00309 ± 0.00055 < 0.5 × |mean step| = 0.0485"))

    base = synthetic_report(bump=0.0)
    compared = session_with(compare_to_baseline(synthetic_report(), base, SPEC.baseline,
                                                "baselines/synth.json"))
    layer = compared.outcome(SPEC, f"layer-{BUMP:02d}")
    assert layer.outcome is Outcome.COMPARISON_FAILED
    lines = layer.message.splitlines()
    assert lines[:2] == law.message.splitlines()
    assert lines[2].startswith("layer 4: drift +0.1000 ± ")
    assert lines[3] == ("against baseline baselines/synth.json: first moved layer 4, largest "
                        "drift +0.1000 at layer 4")
    assert ("  if the change is intended, accept it: pytest audit/ --audit-update-baseline "
            "-k synth") in lines
    baseline_law = compared.outcome(SPEC, "baseline-law")
    assert baseline_law.outcome is Outcome.COMPARISON_FAILED
    assert baseline_law.message.splitlines()[:2] == [
        "pearson_r -1 → -0.97455: +0.0254 > max_pearson_r_increase 0.02",
        "rho 0.8 → 0.80528: +0.00528 > max_rho_increase 0.0005"]
    assert compared.outcome(SPEC, "layer-01") == ItemOutcome(Outcome.PASSED)


def test_uncovered_items_skip():
    session = session_with(synthetic_report())
    assert session.outcome(SPEC, "baseline-loss") == ItemOutcome(
        Outcome.SKIPPED, "synth: no threshold in the spec covers baseline-loss")


@pytest.mark.parametrize("status, message", [
    (BaselineStatus.MISSING, "synth: no baseline at baselines/synth.json; create it with: "
                             "pytest audit/ --audit-update-baseline -k synth"),
    (BaselineStatus.WRITTEN, "synth: baseline written to baselines/synth.json"),
])
def test_baseline_items_skip_when_nothing_was_compared(status, message):
    session = session_with(synthetic_report())
    session.baselines[SPEC.name] = BaselineState(status, Path("baselines/synth.json"))
    for item in ("baseline-law", "baseline-loss"):
        assert session.outcome(SPEC, item) == ItemOutcome(Outcome.SKIPPED, message)
    # The law's items do not depend on the baseline.
    assert session.outcome(SPEC, "law-fit") == ItemOutcome(Outcome.PASSED)


def test_a_baseline_error_is_raised_by_the_baseline_items_only():
    session = session_with(synthetic_report())
    error = ComparisonError("baseline unreadable")
    session.baselines[SPEC.name] = BaselineState(BaselineStatus.ERROR, None, error)
    with pytest.raises(ComparisonError) as info:
        session.outcome(SPEC, "baseline-law")
    assert info.value is error
    assert session.outcome(SPEC, "law-rho") == ItemOutcome(Outcome.PASSED)
