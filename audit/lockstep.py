"""Several models over one probe in lockstep, each over it once.

A spec with a ``reference_model`` or a merge's parents measures their statistics
too (the reference's own report, the parents' drift) and compares the model's
next-token distribution with theirs.  :func:`run_together` steps one
:class:`~audit.pipeline.Collector` per model through the same batches, all models
loaded: each batch's statistics are added and the logits that its forward pass
computed anyway go to the comparisons that need them (:class:`Consumer`: a
divergence accumulator, a token-record builder, :mod:`audit.compare.outputs`),
then are let go, so no batch's logits outlive it and each model runs once.

A model whose measurement the statistics cache serves has no logits: when they
are needed it runs ``next_token_logits`` alone over the same batches (the cache
keeps serving the law); when they are not, it does not run at all.  A model whose
probe differs from the first's (another tokenizer) cannot step in lockstep: it is
measured alone afterwards and the comparisons that need it get an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from audit.compare.outputs import flat
from audit.corpus import load_corpus
from audit.errors import BackendError, ComparisonError, EquilawError
from audit.pipeline import Collector, Measurement, Progress, collect, from_cache
from audit.probe import probe_input
from audit.spec import Spec, check_against_model


@dataclass(eq=False)
class Member:
    """One model of a lockstep run."""

    name: str
    """How consumers name it: ``model``, ``reference``, ``parent:<label>``."""
    spec: Spec
    backend: Any
    logits: bool = False
    """Its logits are compared (with a head; a model without one gives none and the
    consumers that need it get an error)."""
    required: bool = True
    """Its failure fails the run; otherwise it is kept in :attr:`error` and the run
    goes on without it (the reference model, whose failure only fails the
    divergence item)."""
    measurement: Measurement | None = None
    """After the run: its measurement (measured, or served from the cache)."""
    error: EquilawError | None = None
    """After the run, for a member that is not required: why it has no measurement."""
    _collector: Collector | None = field(default=None, repr=False)
    _key: str | None = field(default=None, repr=False)
    _logits_only: bool = field(default=False, repr=False)


@dataclass(eq=False)
class Consumer:
    """Takes each batch's logits of the members it ``needs``, in that order:
    ``target.start(windows)`` once with the probe, then ``target.add(batch,
    *logits)`` with each logits array flat [b × (t − 1), V]
    (:class:`~audit.compare.outputs.PairComparison`,
    :class:`~audit.compare.outputs.RecordBuilder`,
    :class:`~audit.compare.outputs.RecordComparison`)."""

    needs: tuple[str, ...]
    target: Any
    error: EquilawError | None = None
    """Why it could not finish (a member failed or gave no logits, or the target
    raised)."""


def run_together(members: Sequence[Member], consumers: Sequence[Consumer] = (), *,
                 store: Any = None, progress: Progress | None = None) -> Any:
    """Measure every member and feed the consumers, one pass over the probe of
    the first member's spec (``probe.batch_size`` rows a batch).  ``store``: a
    :class:`~audit.cache.stats_cache.StatsCache` or None; the first model measured
    gets ``progress``.  Returns the probe (:class:`audit.probe.ProbeInput`; None
    when every measurement came from the cache and no logits were needed).
    A required member's :class:`EquilawError` is raised; other errors land in
    ``Member.error`` and ``Consumer.error``."""
    first = members[0]
    alone: list[Member] = []
    windows = None
    try:
        for member in members:
            _open(member, progress, store)
            if member._collector is not None and member._collector.progress is not None:
                progress = None
        if first._collector is not None:
            windows = first._collector.probe
        elif any(m._collector is not None or m._logits_only for m in members):
            windows = probe_input(first.spec, load_corpus(first.spec.probe.corpus),
                                  first.backend)
        alone += [m for m in members if m._collector is not None
                  and m._collector.probe.sha256 != windows.sha256]
        _disable(members, consumers, alone)
        stepped = [m for m in members if m not in alone and m.error is None
                   and (m._collector is not None or m._logits_only)]
        if stepped:
            _lockstep(stepped, consumers, windows)
    finally:
        for member in members:
            if member._collector is not None:
                member._collector.stop()
    for member in members:
        if member._collector is not None and member.error is None:
            _finish(member, member in alone, store)
        member._collector = None
    return windows


def _finish(member: Member, alone: bool, store: Any) -> None:
    """The member's measurement (measured now on its own probe when ``alone``),
    stored in the cache."""
    try:
        member.measurement = (collect(member.spec, backend=member.backend) if alone
                              else member._collector.finish())
    except EquilawError as exc:
        if member.required:
            raise
        member.error = exc
        return
    if member._key is not None:
        store.store(member._key, member.measurement)


def _open(member: Member, progress: Progress | None, store: Any) -> None:
    """Serve the member from the cache, else make its collector (which loads it);
    served, load it when its logits are needed."""
    try:
        if store is not None:
            check_against_model(member.spec, member.backend.info().num_layers)
            member.measurement, member._key = from_cache(member.spec, member.backend, store)
        if member.measurement is None:
            member._collector = Collector(member.spec, backend=member.backend,
                                          progress=progress, logits=member.logits)
        elif member.logits:
            member.backend.load()
            member._logits_only = member.backend.head_note is None
    except EquilawError as exc:
        if member.required:
            raise
        member.error = exc


def _has_logits(member: Member) -> bool:
    if member._collector is not None:
        return member._collector.logits
    return member._logits_only


def _disable(members: Sequence[Member], consumers: Sequence[Consumer],
             alone: list[Member]) -> None:
    """Give an error to each consumer whose members cannot give it logits."""
    by_name = {m.name: m for m in members}
    for consumer in consumers:
        for name in consumer.needs:
            member = by_name[name]
            if member.error is not None:
                consumer.error = consumer.error or member.error
            elif member in alone:
                consumer.error = consumer.error or ComparisonError(
                    f"{name} was measured on other probe windows (another tokenizer?) than "
                    f"{members[0].name}: their next-token distributions cannot be compared "
                    f"token by token", fields=("windows",))
            elif not _has_logits(member):
                note = getattr(member.backend, "head_note", None) or "no logits were asked for"
                consumer.error = consumer.error or BackendError(
                    f"no logits to compare: {note}", model=member.spec.name)


def _lockstep(stepped: list[Member], consumers: Sequence[Consumer], windows: Any) -> None:
    """Step every member through ``windows``' batches; each batch's logits go to
    the consumers as soon as all they need is there, and are dropped once no
    consumer still waiting for this batch needs them."""
    spec = stepped[0].spec
    for consumer in consumers:
        if consumer.error is None:
            try:
                consumer.target.start(windows)
            except EquilawError as exc:
                consumer.error = exc
    live = [c for c in consumers if c.error is None]
    for batch in windows.batches(spec.probe.batch_size):
        held: dict[str, np.ndarray] = {}
        waiting = [c for c in live if c.error is None]
        for member in stepped:
            if member.error is not None:
                continue
            try:
                if member._collector is not None:
                    out = member._collector.step(batch)
                else:
                    out = member.backend.next_token_logits(batch.ids)
            except EquilawError as exc:
                if member.required:
                    raise
                member.error = exc
                if member._collector is not None:
                    member._collector.stop()
                member._collector = None
                for consumer in waiting:
                    if member.name in consumer.needs:
                        consumer.error = consumer.error or exc
                waiting = [c for c in waiting if c.error is None]
                continue
            if out is not None:
                held[member.name] = flat(out)
            for consumer in [c for c in waiting if all(n in held for n in c.needs)]:
                waiting.remove(consumer)
                try:
                    consumer.target.add(batch, *(held[n] for n in consumer.needs))
                except EquilawError as exc:
                    consumer.error = exc
            still = {n for c in waiting for n in c.needs}
            held = {n: v for n, v in held.items() if n in still}
        del held
