"""Run one spec end to end, without pytest, in two halves:

- :func:`collect`: spec → corpus → probe sequences (:mod:`audit.probe`) → backend →
  statistics and probe loss, as a :class:`Measurement` (what was measured and on
  which tokens);
- :func:`judge`: measurement → law fit → :func:`audit.report.build.build_report`
  (checks, report data) → :class:`~audit.report.data.Report`.

:func:`measure` is :func:`collect` through the statistics cache
(:mod:`audit.cache.stats_cache`); :func:`run` is :func:`judge` of :func:`measure`.
Comparisons (baselines, merges) judge two measurements' reports against each
other and never re-run a model (``audit.compare``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from audit.corpus import load_corpus
from audit.law import fit_law
from audit.norms import NormInfo, apply_normalization
from audit.probe import example_slices, probe_input
from audit.report.build import build_report
from audit.report.data import LossSummary, Report
from audit.spec import Spec, check_against_model
from audit.stats.jackknife import jackknife_se
from audit.stats.layer_stats import LayerStats
from audit.versions import software_versions


class Progress(Protocol):
    """What :func:`run` tells about its progress (the plugin draws a bar from it)."""

    def start(self, name: str, total_tokens: int) -> None: ...

    def advance(self, tokens: int) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True, eq=False)
class Measurement:
    """What :func:`collect` measured on one checkpoint: the statistics and a record
    of the probe, enough to judge the law (:func:`judge`) or compare it with another
    measurement without running the model again."""

    spec: Spec
    stats: LayerStats | None
    """The sums behind the figures below; None for a mutant measured from its damaged
    block on (:mod:`audit.resume`: its first layers' figures are the unmutated
    model's), which is never cached."""
    pr: np.ndarray
    """The measure per hidden state, float64 [L+1]."""
    leave_one_out: np.ndarray | None
    """The measure with each shard of ``shard_ids`` left out, [g, L+1]; None with one shard."""
    shard_ids: tuple[int, ...]
    ranks: np.ndarray
    conditions: np.ndarray
    loss: LossSummary | None
    loss_note: str | None
    """Why there is no loss (switched off, or no head); None when there is one."""
    model: dict[str, Any]
    corpus: dict[str, Any]
    probe: dict[str, Any]
    """``mode`` (``probe.mode``), ``windows_sha256`` (the digest of the token
    sequences fed to the model, windows or documents: :mod:`audit.probe`) and
    ``tokenizer``."""
    versions: dict[str, str]
    timing: dict[str, float]
    backend: str = "torch"
    """The name of the backend that ran (``backend_name`` of its class)."""


def run(spec: Spec, model: Any = None, progress: Progress | None = None,
        backend: Any = None, cache: Any = True) -> Report:
    """Audit ``spec`` and return its report: :func:`judge` of :func:`measure`.

    ``model`` may be an already loaded torch model (the tokenizer still comes from
    ``spec.model.path``); ``backend`` an already opened backend (it wins over
    ``model``); ``cache`` as :func:`measure` takes it (``False`` turns the
    statistics cache off).  Raises :class:`~audit.errors.EquilawError` subclasses
    on bad input.
    """
    return judge(measure(spec, model=model, progress=progress, backend=backend, cache=cache))


def measure(spec: Spec, model: Any = None, progress: Progress | None = None,
            backend: Any = None, cache: Any = True) -> Measurement:
    """:func:`collect`, through the statistics cache: an entry for the same inputs
    (:meth:`audit.cache.stats_cache.StatsCache.key_inputs`) gives the measurement
    without loading weights or tokenizing; otherwise :func:`collect` runs and its
    measurement is stored.  ``cache``: ``True`` the environment's settings
    (:meth:`audit.cache.settings.CacheSettings.from_environment`; off when
    ``EQUILAW_NO_CACHE`` is set), ``False`` off, a folder, a ``CacheSettings``, or
    an :class:`audit.cache.stats_cache.StatsCache`.  A model
    handed over in memory (``model``, or a backend made from one) is never cached:
    it has no file identity, and hashing its state dict costs about as much as
    re-judging should.  Spec rules that need the model's depth are checked first,
    as :func:`collect` does."""
    from audit.cache.stats_cache import open_cache

    store = open_cache(cache)
    if store is None or model is not None:
        return collect(spec, model=model, progress=progress, backend=backend)
    if backend is None:
        from audit.backends import open_backend

        backend = open_backend(spec)
    check_against_model(spec, backend.info().num_layers)
    served, key = from_cache(spec, backend, store)
    if served is not None:
        return served
    measurement = collect(spec, progress=progress, backend=backend)
    if key is not None:
        store.store(key, measurement)
    return measurement


def from_cache(spec: Spec, backend: Any, store: Any) -> tuple[Measurement | None, str | None]:
    """(the measurement ``store`` holds for ``spec`` on ``backend``, or None; the key a
    new measurement is stored under, None when this one cannot be cached)."""
    key = store.key(spec, backend)
    if key is None:
        return None, None
    parts = store.load(key)
    if parts is None:
        return None, key
    loss = parts.pop("loss")
    if loss is not None:
        loss = LossSummary(mean=loss["mean"], stderr=loss["stderr"],
                           leave_one_out=tuple(loss["leave_one_out"]), tokens=loss["tokens"])
    return Measurement(spec=spec, loss=loss, **parts), key


def collect(spec: Spec, model: Any = None, progress: Progress | None = None,
            backend: Any = None, part: Any = None) -> Measurement | None:
    """Run the model over the probe's sequences (windows or documents,
    :mod:`audit.probe`) and accumulate the statistics (and the probe loss): a
    :class:`Collector` stepped through its own probe.  Spec rules that need the
    model's depth are checked before any weight is loaded.

    ``part`` (an :class:`audit.integrations.distributed.Part`) runs only this process's share
    of the sequences and merges every rank's sums on rank 0, which returns the
    measurement; other ranks return None."""
    collector = Collector(spec, model=model, backend=backend, part=part, progress=progress)
    try:
        for batch in collector.probe.batches(spec.probe.batch_size):
            collector.step(batch)
    finally:
        collector.stop()
    return collector.finish()


class Collector:
    """One model's statistics pass over the probe, a batch at a time.

    Made, it has checked the spec against the model's depth, built its probe
    (:attr:`probe`) and loaded the weights.  :meth:`step` runs one batch of that
    probe through the model, adds its statistics and probe loss, and returns the
    head's logits of the batch (float32 [b, t - 1, V], from the same forward pass;
    only with ``logits`` and a head, else None); :meth:`finish` gives the
    :class:`Measurement`.  :func:`collect` steps one collector through its probe;
    :mod:`audit.lockstep` steps several models through the same batches, so each
    goes over the probe once and no batch's logits outlive the batch."""

    first_layer = 0
    """The first layer this collector measures (:class:`audit.resume.ResumedCollector`
    starts later)."""

    def __init__(self, spec: Spec, model: Any = None, backend: Any = None, part: Any = None,
                 progress: Progress | None = None, logits: bool = False,
                 keep: tuple[int, ...] = ()) -> None:
        if backend is None:
            from audit.backends import open_backend

            backend = open_backend(spec, model=model)
        self.spec, self.backend, self.part, self.progress = spec, backend, part, progress
        self.info = backend.info()
        check_against_model(spec, self.info.num_layers)
        self.norm = _norm_info(spec, self.info)
        self.corpus = load_corpus(spec.probe.corpus)
        self.probe = probe_input(spec, self.corpus, backend)
        self.stats = LayerStats(measures=(spec.measure,), shards=spec.probe.shards,
                                shuffle_seed=spec.probe.seed, method=spec.probe.statistics,
                                permutation=spec.probe.permutation)
        t_load = time.perf_counter()
        backend.load()
        self.load_seconds = time.perf_counter() - t_load
        self.want_loss = spec.probe.loss and backend.head_note is None
        self.logits = logits and backend.head_note is None
        """Whether :meth:`step` returns logits (asked for, and the model has a head)."""
        self.loss_sum = np.zeros(spec.probe.shards)      # nats per shard
        self.loss_count = np.zeros(spec.probe.shards)    # predicted tokens per shard
        self.forward_seconds = self.stats_seconds = self.loss_seconds = 0.0
        self.kept: dict[int, list[np.ndarray]] = {layer: [] for layer in keep}
        """Per layer of ``keep``: each batch's hidden state there, float32 [b, t, d],
        as the model gave it (before the normalisation), in batch order."""
        self._started = False

    def step(self, batch: Any) -> np.ndarray | None:
        """Add one batch of :attr:`probe` (its ``ids`` [b, t] and ``shards`` [b]);
        the head's logits [b, t - 1, V] of this process's rows when asked for."""
        if not self._started and self.progress is not None:
            self.progress.start(self.spec.name, self.probe.tokens)
        self._started = True
        ids, shard_of = batch.ids, batch.shards                            # [b, t], [b]
        if self.part is not None:                                          # this rank's rows
            mine = self.part.owns(shard_of)
            if not mine.any():
                return None
            ids, shard_of = ids[mine], shard_of[mine]
        t0 = time.perf_counter()
        out = self._forward(ids)
        hidden = out.hidden[self.first_layer - out.first_layer:]           # [L+1, b, t, d]
        for layer, states in self.kept.items():
            states.append(out.hidden[layer - out.first_layer].copy())
        t1 = time.perf_counter()
        in_place = hidden if hidden.dtype in (np.float32, np.float64) else None
        hidden = apply_normalization(self.spec.normalization, hidden, self.norm, out=in_place)
        features_at, targets_at = example_slices(ids.shape[1], self.spec.target)
        feats = hidden[:, :, features_at, :]                               # [L+1, b, m, d]
        targets = ids[:, targets_at]                                       # [b, m]
        if out.token_nll is not None:                                      # [b, t-1]
            np.add.at(self.loss_sum, shard_of, out.token_nll.sum(axis=1))
            np.add.at(self.loss_count, shard_of, out.token_nll.shape[1])
        for shard in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == shard)                       # contiguous
            block = slice(int(rows[0]), int(rows[-1]) + 1)
            self.stats.update(feats[:, block], targets[block], shard=int(shard))
        self.stats_seconds += time.perf_counter() - t1
        self.forward_seconds += t1 - t0 - out.loss_seconds
        self.loss_seconds += out.loss_seconds
        if self.progress is not None:
            self.progress.advance(ids.size)
        return out.logits

    def _forward(self, ids: np.ndarray) -> Any:
        """The backend's :class:`~audit.backends.base.Forward` of one batch's ids."""
        return (self.backend.forward(ids, loss=self.want_loss, logits=True) if self.logits
                else self.backend.forward(ids, loss=self.want_loss))

    def stop(self) -> None:
        """Take the progress display down (the pass ended or failed)."""
        if self._started and self.progress is not None:
            self.progress.stop()

    def finish(self) -> Measurement | None:
        """The measurement of the batches stepped (with ``part``: every rank's,
        merged, on rank 0; None on the others)."""
        spec, backend, info, probe = self.spec, self.backend, self.info, self.probe
        stats, loss_sum, loss_count = self.stats, self.loss_sum, self.loss_count
        if self.part is not None:
            merged = self.part.reduce(stats, loss_sum, loss_count)
            if merged is None:
                return None
            stats, loss_sum, loss_count = merged
        t_fit = time.perf_counter()
        results = stats.results(spec.measure)
        pr, ranks, conditions = results.values, results.ranks, results.conditions
        shard_ids = stats.filled_shards
        loo = results.leave_one_out if shard_ids else None
        stats_seconds = self.stats_seconds + time.perf_counter() - t_fit
        if self.want_loss:
            loss, loss_note = _probe_loss(loss_sum, loss_count, shard_ids), None
        else:
            loss = None
            loss_note = ("switched off (probe.loss: false)" if not spec.probe.loss
                         else backend.head_note)
        forward_seconds = self.forward_seconds
        timing = {"load_seconds": self.load_seconds, "forward_seconds": forward_seconds,
                  "stats_seconds": stats_seconds, "loss_seconds": self.loss_seconds,
                  "tokens_per_second": (probe.tokens / forward_seconds if forward_seconds
                                        else float("nan"))}
        return Measurement(
            spec=spec, stats=stats, pr=pr, leave_one_out=loo, shard_ids=shard_ids,
            ranks=ranks, conditions=conditions, loss=loss, loss_note=loss_note,
            model={"path": spec.model.path, "resolved_path": str(info.path),
                   "sha256": backend.weights_sha256(), "architecture": info.architecture,
                   "layers": info.num_layers, "width": info.width},
            corpus={"name": self.corpus.name, "sha256": self.corpus.sha256,
                    "tokens": probe.tokens, **probe.counts, "examples": int(stats.count),
                    "sequences": spec.probe.sequences, "length": spec.probe.length},
            probe={"mode": probe.mode, "windows_sha256": probe.sha256,
                   "tokenizer": backend.tokenizer_info()},
            versions=software_versions(backend),
            timing=timing,
            backend=getattr(backend, "backend_name", spec.backend),
        )


def _probe_loss(total: np.ndarray, count: np.ndarray,
                shard_ids: tuple[int, ...]) -> LossSummary:
    """Mean nats per token and its jackknife over the filled shards."""
    n = float(count.sum())
    loo = tuple(float((total.sum() - total[i]) / (n - count[i])) for i in shard_ids)
    se = jackknife_se(np.array(loo)) if len(loo) >= 2 else math.nan
    return LossSummary(mean=float(total.sum() / n), stderr=float(se), leave_one_out=loo,
                       tokens=int(n))


def judge(measurement: Measurement) -> Report:
    """Fit the law to a measurement and judge it against its spec's ``law``
    thresholds (comparisons with a baseline or parents come on top: ``audit.compare``)."""
    m = measurement
    fit = fit_law(m.pr, first_layer=1, leave_one_out=m.leave_one_out)
    return build_report(
        m.spec, fit, ranks=m.ranks, conditions=m.conditions, model=m.model, corpus=m.corpus,
        versions=m.versions, timing=m.timing, probe=m.probe, loss=m.loss, loss_note=m.loss_note,
        shard_ids=m.shard_ids, leave_one_out=m.leave_one_out, backend=m.backend)


def _norm_info(spec: Spec, info: Any) -> NormInfo:
    """The spec's ``model.norm`` override, else the backend's own description."""
    if spec.model.norm is not None:
        return NormInfo(kind=spec.model.norm.kind, eps=spec.model.norm.eps)
    return info.norm
