"""An adapter (``model.adapter``) judged against its base and against its own
merge, all three measured in one run on the same windows.  Pure numpy on report
data: the session measures, this module compares.

Against the base (comparison ``adapter``, items ``NAME::adapter-law``,
``NAME::adapter-loss`` and the layer items): the machinery of a baseline
(:func:`audit.compare.baseline.compare_paired`) with the base's report as the
reference, so each layer's drift (log10 PR adapted minus base) has a paired
jackknife standard error, and the probe loss increase is the forgetting figure:
the cross-entropy on the probe's general text after the adapter minus before,
PEFT's own check of whether a fine-tune damaged the base.  ``first_moved_layer``
and the table rows say which layers the adapter changed and by how much.

Against its merge (comparison ``adapter-merged``, item
``NAME::adapter-merged-parity``): the agreement machinery of backend parity
(:func:`audit.compare.parity.agreement`) between the adapter unmerged (peft's
float32 update beside the base's weights) and merged (ΔW folded into the base's
dtype by ``merge_and_unload()``, or the merged checkpoint ``adapter.merged`` names,
as it ships).  The tolerances depend on the dtype: :data:`MERGED_TOLERANCES`.

The adapted model's next-token divergence from its base (KL, same top, Δp) needs
both models' distributions on the same windows, not their reports: the session
(``AuditSession._compare_to_base``) runs the two in one lockstep pass
(:func:`audit.compare.outputs.compare_outputs`) and keeps the result as a ``base``
divergence row, reported and not gated.
"""

from __future__ import annotations

from audit.compare.baseline import check_comparable, compare_paired
from audit.compare.drift import require_paired
from audit.compare.parity import agreement
from audit.errors import ComparisonError
from audit.report.data import Report
from audit.spec import AdapterSpec
from audit.spec.sections import AUTO

MERGED_TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-6, 1e-5),
    "bfloat16": (5e-3, 3e-2),
    "float16": (5e-3, 3e-2),
}
"""``model.dtype`` -> default (max |log10 PR difference| per layer, max |probe loss
difference| in nats) between an adapter unmerged and merged, for the tolerances
left at ``auto``.  Measured (docs/artifacts.md, "PEFT adapters";
tests/test_adapter_smollm2.py, tests/test_adapter.py): a LoRA on
SmolLM2-135M-Instruct (rank 8, q/v projections, 24 steps) differs from its merge by
7.2e-8 in log10 PR and 1.5e-7 nats in float32 (rounding), and by 7.6e-4 and 6.9e-3
nats in bfloat16, where the unmerged update runs in float32 and the merge rounds
W + ΔW to bfloat16's 8-bit mantissa: the defaults are about 14 and 67 times the
float32 figures, 6.6 and 4.3 times the bfloat16 ones.  float16: on 1,008 tokens
(bench/bench_artifacts.py) the same LoRA's gap is 1.05e-3 and 3.9e-4 nats
(bfloat16 there: 3.6e-3 and 5.5e-3; a small probe makes the PR gap larger):
float16 keeps bfloat16's defaults, 4.8 and 77 times it."""


def merged_tolerances(tolerances: AdapterSpec, dtype: str) -> tuple[float | None, float | None]:
    """The two merged-parity tolerances, ``auto`` replaced by the default of ``dtype``."""
    pr, loss = MERGED_TOLERANCES[dtype]
    given = tolerances.max_merged_log10_pr_difference, tolerances.max_merged_loss_difference
    return (pr if given[0] == AUTO else given[0], loss if given[1] == AUTO else given[1])


def compare_to_base(now: Report, base: Report, tolerances: AdapterSpec) -> Report:
    """``now`` (the adapted model's report) with its comparison against ``base``
    (the base model's, same windows) attached as an ``adapter`` comparison."""
    what = f"the base report {base.name!r}"
    require_paired(now, base, what)
    check_comparable(now, base, what)
    return compare_paired(now, base, tolerances, base.name, "adapter")


def compare_to_merged(now: Report, merged: Report, tolerances: AdapterSpec,
                      dtype: str) -> Report:
    """``now`` (the unmerged adapter's report) with its agreement with ``merged``
    (the same adapter merged into the base, same windows) attached as an
    ``adapter-merged`` comparison; ``dtype`` is ``model.dtype``."""
    if dtype not in MERGED_TOLERANCES:
        raise ComparisonError(f"no merged-parity tolerances for dtype {dtype!r}")
    max_pr, max_loss = merged_tolerances(tolerances, dtype)
    return agreement(now, merged, max_pr, max_loss, kind="adapter-merged", label=merged.name,
                     labels=("merged", "unmerged"),
                     checks=("adapter_merged_log10_pr", "adapter_merged_loss"),
                     keys=("adapter.max_merged_log10_pr_difference",
                           "adapter.max_merged_loss_difference"))
