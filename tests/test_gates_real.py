"""Regression and merge gates on real SmolLM2 weights (tests/smollm2_family.py),
with the default tolerances of a spec's ``baseline:`` section: healthy siblings
pass, every damage fails and the first moved layer names the damaged block, the
probe loss catches what the law misses, and merges are judged against their
parents through their mergekit configs.  Every checkpoint is measured once per
test session (``smollm2_report``, tests/conftest.py).  Marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
from smollm2_family import HEALTHY_LABEL, NOISY_LABEL

from audit.compare.baseline import compare_to_baseline
from audit.compare.layer_map import read_mergekit_config
from audit.compare.merge import compare_to_parents
from audit.spec import BaselineSpec

pytestmark = pytest.mark.slow

DEFAULTS = BaselineSpec()
# damage -> the hidden state its block produces (transformers' layers[k] -> k + 1)
DAMAGES = {"mlp-x8": 15, "attn-x8": 25, "norm-x8": 25}


def against_healthy(smollm2_report, variant: str):
    report = compare_to_baseline(smollm2_report(variant), smollm2_report("healthy"), DEFAULTS,
                                 "baselines/smollm2.json")
    return report, report.comparisons[0]


def comparison_violations(report) -> set[str]:
    return {c.check for c in report.violations if c.check.startswith(("baseline_", "drift", "merge_"))}


@pytest.mark.parametrize("sibling", ["noisy", "average"])
def test_healthy_siblings_pass_the_default_tolerances(smollm2_report, sibling: str) -> None:
    report, cmp = against_healthy(smollm2_report, sibling)
    assert comparison_violations(report) == set()
    assert cmp.first_moved_layer is None
    drifts = np.array([row.drift for row in cmp.rows])
    assert np.abs(drifts).max() < 0.0005  # measured: 0.00027 (noisy), 0.00013 (average)
    assert max(row.sigma for row in cmp.rows) < DEFAULTS.max_drift_sigma
    assert abs(cmp.loss_now - cmp.loss_then) < 0.01  # measured: +0.0065, +0.0019 nats
    assert report.verdict == "pass"


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damage_fails_and_the_first_moved_layer_names_the_block(smollm2_report, damage: str) -> None:
    report, cmp = against_healthy(smollm2_report, damage)
    first = DAMAGES[damage]
    assert report.verdict == "fail" and "baseline_loss" in comparison_violations(report)
    assert cmp.loss_now - cmp.loss_then > 1.0  # measured: +3.9, +4.1, +16.6 nats
    # every layer before the damaged block is bit-identical to the baseline
    assert all(row.drift == 0.0 for row in cmp.rows[:first - 1])
    assert cmp.rows[first - 1].drift != 0.0
    assert cmp.first_moved_layer == first


def test_the_law_alone_misses_a_late_attention_damage_the_loss_catches(smollm2_report) -> None:
    """Block 24's attention output × 8: r stays at the healthy value (−0.980 against
    −0.977), no layer's drift is significant, yet the loss rises by 4 nats; the first
    moved layer still says where."""
    report, cmp = against_healthy(smollm2_report, "attn-x8")
    assert abs(cmp.pearson_r_now - cmp.pearson_r_then) < 0.02
    assert comparison_violations(report) == {"baseline_loss"}
    assert cmp.first_moved_layer == 25


def test_correct_average_of_two_parents_passes(smollm2_report, smollm2_family) -> None:
    parents = {HEALTHY_LABEL: smollm2_report("healthy"), NOISY_LABEL: smollm2_report("noisy")}
    layer_map = read_mergekit_config(smollm2_family.folder("average") / "mergekit_config.yml",
                                     list(parents), {label: 30 for label in parents})
    report = compare_to_parents(smollm2_report("average"), parents, layer_map, DEFAULTS)
    (cmp,) = report.comparisons
    assert comparison_violations(report) == set() and report.verdict == "pass"
    assert cmp.first_moved_layer is None and layer_map.keeps_depth


def test_averaging_with_the_wrong_block_fails_at_the_first_such_layer(smollm2_report,
                                                                       smollm2_family) -> None:
    """Blocks 10-19 averaged with the other parent's next block: hidden state 11 is
    the first that leaves the range of its parents."""
    parents = {HEALTHY_LABEL: smollm2_report("healthy"), NOISY_LABEL: smollm2_report("noisy")}
    layer_map = read_mergekit_config(smollm2_family.folder("wrong-average") / "mergekit_config.yml",
                                     list(parents), {label: 30 for label in parents})
    report = compare_to_parents(smollm2_report("wrong-average"), parents, layer_map, DEFAULTS)
    (cmp,) = report.comparisons
    assert report.verdict == "fail"
    assert {"merge_drift", "merge_loss", "merge_pearson_r"} <= comparison_violations(report)
    # layers 1-10 are a correct average: within (or a hair outside) their parents' range
    assert max(abs(row.drift) for row in cmp.rows[:10]) < 0.0002
    assert cmp.first_moved_layer == 11


def test_passthrough_repeat_is_reported_where_the_repeat_begins(smollm2_report,
                                                                smollm2_family) -> None:
    """Blocks 18-24 stacked again after block 24 (37 blocks): the first 25 layers are
    the parent's, and merged layer 26 (block 18 again) falls far below its source's
    log10 PR: the repeated blocks add nothing where the parent's did."""
    parents = {HEALTHY_LABEL: smollm2_report("healthy")}
    layer_map = read_mergekit_config(smollm2_family.folder("passthrough") / "mergekit_config.yml",
                                     list(parents), {HEALTHY_LABEL: 30})
    merged = smollm2_report("passthrough")
    report = compare_to_parents(merged, parents, layer_map, DEFAULTS)
    (cmp,) = report.comparisons
    assert merged.model["layers"] == 37 and layer_map.repeat_start == 26
    assert all(row.drift == 0.0 for row in cmp.rows[:25])
    assert cmp.first_moved_layer == 26 == layer_map.repeat_start
    assert cmp.rows[25].status == "violation" and cmp.rows[25].sources == f"{HEALTHY_LABEL}:19"
    assert "merge_rho" not in {c.check for c in report.checks}  # the depth changed
    assert report.verdict == "fail"
