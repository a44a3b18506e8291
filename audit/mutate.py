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

The unmutated model runs once: its logits are kept for every mutant's comparison,
and each batch's hidden state at every damaged block, so that a mutant whose damage
starts at block p runs from block p on and takes layers 0..p from the unmutated
measurement (:mod:`audit.resume`; ``resume=False`` measures every mutant in full,
which gives the same table).
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
           log: Callable[[str], None] | None = None, resume: bool = True) -> MutationReport:
    """Audit the spec's checkpoint and each mutant of it (see the module docstring).

    ``damages``: the damages to apply (default :func:`audit.synthetic.damage.default_spread`
    with ``blocks``, ``operators``, ``factor``, ``noise`` and ``seed``).  ``log``
    gets one line per model measured.  ``resume``: measure each mutant whose damage
    starts at a block from that block on (:mod:`audit.resume`), where a check on the
    unmutated model shows that this reproduces the full pass bit for bit; False runs
    every mutant in full (the same table, slower).  Raises :class:`BackendError`
    when the spec's backend is not ``torch`` (mutants are made in memory from the
    loaded model).
    """
    from audit.backends import open_backend
    from audit.pipeline import Collector, judge
    from audit.resume import LogitStore, resume_mismatch
    from audit.synthetic import damage as dmg

    if spec.backend != "torch":
        raise BackendError(f"mutation testing changes the model in memory and needs backend "
                           f"torch, not {spec.backend!r}", model=spec.name)
    say = log or (lambda line: None)
    start = time.perf_counter()
    backend = open_backend(spec)
    num_blocks = backend.info().num_layers
    if damages is None:
        damages = dmg.default_spread(num_blocks, blocks,
                                     operators=operators or dmg.BLOCK_OPERATORS, factor=factor,
                                     noise=noise, seed=seed)
    positions = tuple(sorted({d.block for d in damages if d.block}) if resume else ())
    rows = []
    with LogitStore() as unmutated_logits:
        collector = Collector(spec, backend=backend, logits=True, keep=positions)
        with backend.reusing_logits():  # each batch's logits are stored before the next
            base_measurement = _run(collector, lambda i, batch, logits:
                                    unmutated_logits.append(logits))
        base = judge(base_measurement)
        say(f"{UNMUTATED}: Pearson r {base.law.pearson_r:.4f}, loss "
            f"{base.loss.mean if base.loss else float('nan'):.3f}")
        probe, kept = collector.probe, collector.kept
        del collector
        if positions:
            first = next(probe.batches(spec.probe.batch_size)).ids
            for position, why in resume_mismatch(backend, first, positions).items():
                say(f"resuming at block {position} does not reproduce the full pass ({why}): "
                    "its mutants run in full")
                del kept[position]
            if kept:
                say(f"resuming at blocks {', '.join(map(str, sorted(kept)))}: checked bit for "
                    "bit against the unmutated model's full pass on one batch")
        model = backend.causal_lm
        for damage in damages:
            row = _mutant(spec, backend, model, damage, base_measurement, base, kept, probe,
                          unmutated_logits if len(unmutated_logits) else None, num_blocks)
            rows.append(row)
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


def _run(collector: Any, on_logits: Callable[[int, Any, Any], None]) -> Any:
    """Step ``collector`` through its probe, handing each batch's logits (when it
    gives them) to ``on_logits(index, batch, logits)``; its measurement."""
    try:
        for index, batch in enumerate(collector.probe.batches(collector.spec.probe.batch_size)):
            logits = collector.step(batch)
            if logits is not None:
                on_logits(index, batch, logits)
    finally:
        collector.stop()
    return collector.finish()


def _mutant(spec: Spec, backend: Any, model: Any, damage: Any, base_measurement: Any,
            base: Report, kept: dict[int, list[Any]], probe: Any, unmutated_logits: Any,
            num_blocks: int) -> MutantRow:
    """One mutant measured (from its damaged block on where ``kept`` holds that
    block's states), compared with the unmutated model and judged: its row."""
    from audit.compare.outputs import PairComparison, flat
    from audit.pipeline import Collector, judge
    from audit.resume import ResumedCollector

    name = f"{spec.name}.{damage.operator}" + ("" if damage.block is None
                                               else f"-{damage.block}")
    mutant_spec = dataclasses.replace(spec, name=name)
    mutant = backend.with_model(damage.apply(model))
    mutant.reuse_logits = True  # each batch's logits are compared before the next
    compare = unmutated_logits is not None
    if damage.block in kept:
        collector = ResumedCollector(mutant_spec, mutant, damage.block, kept[damage.block],
                                     base_measurement, logits=compare)
    else:
        collector = Collector(mutant_spec, backend=mutant, logits=compare)
    comparison = PairComparison()
    comparison.start(probe)

    def against_unmutated(index: int, batch: Any, logits: Any) -> None:
        comparison.add(batch, flat(unmutated_logits[index]), flat(logits))

    report = _compare(judge(_run(collector, against_unmutated)), base, damage, num_blocks, spec)
    if compare:
        report = _divergence(report, comparison.result(), spec)
    return _row(report, base, damage)


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


def _divergence(report: Report, result: Any, spec: Spec) -> Report:
    """The mutant's next-token divergence from the unmutated model, gated."""
    from audit.compare.output_gate import attach_divergence
    from audit.report.data import DivergenceRow

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
