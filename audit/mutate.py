"""Mutation testing of a spec on its own checkpoint: would the gates catch known
damage, and name where it is?

The checkpoint is loaded once and measured as it is, on the spec's probe; that
report is every mutant's baseline.  Each damage of :mod:`audit.synthetic.damage`
is then applied to an in-memory copy (nothing is written next to the weights),
measured on the same windows with the same tokenizer, judged with the spec's own
thresholds, and compared with the unmutated report: index by index against it as
a baseline (``baseline:`` tolerances), or, when the damage changes the depth (a
repeated range of blocks), against it as the parent of a passthrough merge
through the damage's block order.  A mutant is *caught* when some check fails that
the unmutated checkpoint passes, and the row says which kinds did
(``Check.evidence`` in :data:`audit.checks.CHECKS`): the law (its checks on the mutant,
or r and ρ worse than the unmutated model's), the per-layer drift, the probe
loss, the next-token divergence from the unmutated model (run in lockstep on the
same windows, judged by the spec's ``divergence:`` tolerances; its KLD and same top
are in the row).  Its first moved layer is set against the damaged block's output layer.
The healthy control (1% weight noise) should come out not flagged.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from audit.checks import CHECKS, EVIDENCE
from audit.errors import BackendError
from audit.report.data import Report
from audit.report.mutations import MutantRow, MutationReport
from audit.spec import Spec

UNMUTATED = "unmutated"
MAX_FAILURES = 3


def mutate(spec: Spec, damages: Sequence[Any] | None = None, *,
           blocks: Sequence[int] | None = None, operators: Sequence[str] | None = None,
           factor: float = 8.0, noise: float | None = 0.01, seed: int = 0,
           log: Callable[[str], None] | None = None) -> MutationReport:
    """Audit the spec's checkpoint and each mutant of it (see the module docstring).

    ``damages``: the damages to apply (default :func:`audit.synthetic.damage.default_spread`
    with ``blocks``, ``operators``, ``factor``, ``noise`` and ``seed``).  ``log``
    gets one line per model measured.  Raises :class:`BackendError` when the spec's
    backend is not ``torch`` (mutants are made in memory from the loaded model).
    """
    from audit.backends import open_backend
    from audit.pipeline import collect, judge
    from audit.synthetic import damage as dmg

    if spec.backend != "torch":
        raise BackendError(f"mutation testing changes the model in memory and needs backend "
                           f"torch, not {spec.backend!r}", model=spec.name)
    say = log or (lambda line: None)
    start = time.perf_counter()
    backend = open_backend(spec)
    base = judge(collect(spec, backend=backend))
    say(f"{UNMUTATED}: Pearson r {base.law.pearson_r:.4f}, loss "
        f"{base.loss.mean if base.loss else float('nan'):.3f}")
    model = backend.causal_lm
    num_blocks = backend.info().num_layers
    if damages is None:
        damages = dmg.default_spread(num_blocks, blocks,
                                     operators=operators or dmg.BLOCK_OPERATORS, factor=factor,
                                     noise=noise, seed=seed)
    windows = None
    if backend.head_note is None:
        from audit.corpus import load_corpus
        from audit.probe import probe_input

        windows = probe_input(spec, load_corpus(spec.probe.corpus), backend)
    rows = []
    for damage in damages:
        mutant = damage.apply(model)
        name = f"{spec.name}.{damage.operator}" + ("" if damage.block is None
                                                   else f"-{damage.block}")
        report = judge(collect(dataclasses.replace(spec, name=name),
                               backend=backend.with_model(mutant)))
        compared = _compare(report, base, damage, num_blocks, spec)
        if windows is not None:
            compared = _divergence(compared, backend, mutant, windows, spec)
        del mutant
        rows.append(_row(compared, base, damage))
        row = rows[-1]
        say(f"{damage.operator:16} {'' if row.block is None else row.block:>4}  "
            f"{'caught' if row.caught else 'not flagged' if row.control else 'MISSED':11} "
            f"{','.join(row.checks) or '-':15} first moved {row.first_moved_layer} "
            f"(expected {row.expected_layer})")
    info = backend.info()
    return MutationReport(
        name=spec.name, spec=spec.source, model=str(info.path),
        unmutated={"pearson_r": base.law.pearson_r, "rho": base.law.rho,
                   "loss": base.loss.mean if base.loss else float("nan")},
        mutants=tuple(rows), seconds=time.perf_counter() - start)


def _compare(report: Report, base: Report, damage: Any, num_blocks: int, spec: Spec) -> Report:
    from audit.compare.baseline import compare_to_baseline
    from audit.compare.layer_map import LayerMap, LayerSource
    from audit.compare.merge import compare_to_parents

    order = damage.block_order(num_blocks)
    if len(order) == num_blocks:
        return compare_to_baseline(report, base, spec.baseline, UNMUTATED)
    layer_map = LayerMap(tuple((LayerSource(UNMUTATED, block + 1),) for block in order),
                         "passthrough", None, ((UNMUTATED, num_blocks),))
    return compare_to_parents(report, {UNMUTATED: base}, layer_map, spec.baseline)


def _divergence(report: Report, backend: Any, mutant: Any, windows: Any, spec: Spec) -> Report:
    """The mutant's next-token distribution against the unmutated model's, gated."""
    from audit.compare.output_gate import attach_divergence
    from audit.compare.outputs import compare_outputs
    from audit.report.data import DivergenceRow

    result = compare_outputs(backend.with_model(mutant), backend, windows,
                             batch_size=spec.probe.batch_size)
    return attach_divergence(report, [DivergenceRow("reference_model", UNMUTATED, True, result)],
                             spec.divergence)


def _row(report: Report, base: Report, damage: Any) -> MutantRow:
    before = {(c.check, c.layer) for c in base.violations}
    new = [c for c in report.violations if (c.check, c.layer) not in before]
    kinds = {CHECKS[c.check].evidence for c in new}
    comparison = report.comparisons[-1]
    expected = damage.expected_layer
    return MutantRow(
        operator=damage.operator, label=damage.label, block=damage.block,
        params={k: v for k, v in damage.params.items()}, control=damage.expected_layer is None
        and damage.block is None, caught=bool(new),
        checks=tuple(kind for kind in EVIDENCE if kind in kinds),
        first_moved_layer=comparison.first_moved_layer, expected_layer=expected,
        localised=expected is not None and comparison.first_moved_layer == expected,
        loss=report.loss.mean if report.loss else float("nan"),
        pearson_r=report.law.pearson_r, rho=report.law.rho,
        failures=tuple(c.message for c in new[:MAX_FAILURES]),
        kld_mean=report.divergence[-1].result.kld_mean if report.divergence else float("nan"),
        same_top=report.divergence[-1].result.same_top if report.divergence else float("nan"))
