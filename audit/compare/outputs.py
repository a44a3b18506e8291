"""Two models' next-token distributions compared on the probe, batch by batch.

:func:`compare_outputs` runs the candidate and the reference in lockstep over the
probe's sequences (both loaded, one batch's logits of each alive at a time) and
accumulates :mod:`audit.compare.divergence`'s figures by jackknife shard.
:func:`record_reference` runs a reference alone and keeps its token record
(:mod:`audit.compare.token_record`) for a later :func:`compare_with_record`, which
needs only the candidate.  The scored tokens are the probe loss's: in each
sequence of t tokens, position j < t − 1 predicting token j + 1, in batch order.

The per-batch pieces (:func:`add_pair`, :class:`RecordBuilder`,
:class:`RecordComparison`) also take logits that a statistics pass carried out of
its forward pass (:mod:`audit.lockstep`).  The functions here get them through
``next_token_logits`` (:class:`audit.backends.base.Backend`); nothing here imports
torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from audit.compare.divergence import DivergenceAccumulator, DivergenceResult, token_figures
from audit.compare.token_record import (
    TOP_K,
    TOP_MASS,
    TokenRecord,
    bound_figures,
    record_tokens,
)
from audit.errors import ComparisonError


def _shard_count(probe: Any, shards: int | None) -> int:
    return int(probe.shard_of.max()) + 1 if shards is None else int(shards)


def scored(batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """The batch's correct next tokens and their shards, int64 [b × (t − 1)]."""
    targets = batch.ids[:, 1:].reshape(-1)
    return targets, np.repeat(batch.shards, batch.ids.shape[1] - 1)


def flat(logits: np.ndarray) -> np.ndarray:
    """A batch's logits [b, t − 1, V] as rows of scored tokens [b × (t − 1), V] (a view)."""
    return logits.reshape(-1, logits.shape[-1])


def _logits(backend: Any, ids: np.ndarray) -> np.ndarray:
    """float32 [b × (t − 1), V]."""
    return flat(backend.next_token_logits(ids))                           # [b, t-1, V]


def same_tokenizer(model: Any, reference: Any) -> None:
    """:class:`ComparisonError` unless the two backends' vocabularies are one."""
    a = model.tokenizer_info().get("vocab_sha256")
    b = reference.tokenizer_info().get("vocab_sha256")
    if a != b:
        raise ComparisonError(f"the model and the reference tokenize differently (vocabulary "
                              f"sha256 {str(a)[:12]} vs {str(b)[:12]}): their next-token "
                              f"distributions cannot be compared token by token",
                              fields=("tokenizer",))


def add_pair(exact: DivergenceAccumulator, ref: np.ndarray, mod: np.ndarray,
             targets: np.ndarray, shard: np.ndarray, name: str = "model",
             bound: DivergenceAccumulator | None = None, record: TokenRecord | None = None,
             precision: str | None = None) -> None:
    """One batch of a comparison: ``mod`` (``name``'s logits [n, V]) against ``ref``
    into ``exact`` and, with ``bound``, against ``record`` (the reference's token
    record of these n tokens)."""
    if ref.shape != mod.shape:
        raise ComparisonError(f"{name}'s logits have {mod.shape[-1]} words, the "
                              f"reference's {ref.shape[-1]}", fields=("vocab_size",))
    exact.update(token_figures(ref, mod, targets, precision), shard)
    if bound is not None:
        bound.update(bound_figures(record, mod), shard)


class PairComparison:
    """A model against a reference, batch by batch: :meth:`start` with the probe,
    :meth:`add` each batch's two logits, :meth:`result` the exact figures."""

    def __init__(self, name: str = "model", shards: int | None = None) -> None:
        self.name, self.shards = name, shards
        self.acc: DivergenceAccumulator | None = None

    def start(self, windows: Any) -> None:
        self.acc = DivergenceAccumulator(_shard_count(windows, self.shards))

    def add(self, batch: Any, ref: np.ndarray, mod: np.ndarray) -> None:
        """The reference's and the model's logits [b × (t − 1), V] of ``batch``."""
        add_pair(self.acc, ref, mod, *scored(batch), self.name)

    def result(self) -> DivergenceResult:
        return self.acc.result()


class RecordBuilder:
    """A model's token record built batch by batch from its logits (in batch order):
    :meth:`start` with the probe, :meth:`add` each batch, :meth:`record`."""

    def __init__(self, top_k: int = TOP_K, mass: float | None = TOP_MASS) -> None:
        self.top_k, self.mass = top_k, mass
        self.parts: list[TokenRecord] = []
        self.windows: Any = None

    def start(self, windows: Any) -> None:
        self.windows = windows

    def add(self, batch: Any, logits: np.ndarray) -> None:
        """One batch's logits [b × (t − 1), V] (or [b, t − 1, V])."""
        self.parts.append(record_tokens(flat(logits), *scored(batch), self.top_k,
                                        mass=self.mass))

    def record(self, vocab_sha256: str | None) -> TokenRecord:
        """The record; its ``meta`` names the windows and the tokenizer."""
        if not self.parts:
            raise ComparisonError("the probe gives no scored token to record")
        meta = {**self.parts[0].meta, "windows_sha256": self.windows.sha256,
                "vocab_sha256": vocab_sha256}
        return TokenRecord.concatenate(self.parts, meta=meta)


class RecordComparison:
    """A model against a stored token record of the same windows, batch by batch:
    same-top and Δp exact, the KLs lower bounds (``kld_is_bound``).  :meth:`start`
    checks the record's windows and tokenizer (:class:`ComparisonError`)."""

    def __init__(self, record: TokenRecord, vocab_sha256: str | None,
                 shards: int | None = None) -> None:
        self.record, self.vocab, self.shards = record, vocab_sha256, shards
        self.acc: DivergenceAccumulator | None = None
        self.offset = 0

    def start(self, windows: Any) -> None:
        if self.record.meta.get("windows_sha256") != windows.sha256:
            raise ComparisonError("the token record was made on other probe windows: "
                                  "regenerate the baseline (--audit-update-baseline)",
                                  fields=("windows",))
        if self.record.meta.get("vocab_sha256") != self.vocab:
            raise ComparisonError("the token record was made with another tokenizer",
                                  fields=("tokenizer",))
        self.acc = DivergenceAccumulator(_shard_count(windows, self.shards), kld_is_bound=True)

    def add(self, batch: Any, logits: np.ndarray) -> None:
        """One batch's logits [b × (t − 1), V] (or [b, t − 1, V])."""
        targets, shard = scored(batch)
        part = self.record.rows(self.offset, self.offset + targets.size)
        if len(part) != targets.size or not np.array_equal(part.target, targets):
            raise ComparisonError("the token record's tokens differ from the probe's at token "
                                  f"{self.offset}: regenerate the baseline",
                                  fields=("windows",))
        self.acc.update(bound_figures(part, flat(logits)), shard)
        self.offset += targets.size

    def result(self) -> DivergenceResult:
        if self.offset != len(self.record):
            raise ComparisonError(f"the token record holds {len(self.record)} tokens, the "
                                  f"probe scores {self.offset}", fields=("windows",))
        return self.acc.result()


def accumulate_several(models: Mapping[str, Any], reference_backend: Any, windows: Any, *,
                       batch_size: int = 8, shards: int | None = None,
                       top_k: int | None = None, mass: float | None = TOP_MASS,
                       precision: str | None = None
                       ) -> dict[str, tuple[DivergenceAccumulator, DivergenceAccumulator | None]]:
    """Every model of ``models`` (name -> backend) against one reference in one
    lockstep pass: each batch's reference logits are computed once.  Per name, the
    exact accumulator and, when ``top_k`` is given, the one against the reference's
    token record at ``top_k`` (its KLs the stored baseline's lower bound; ``mass``:
    adaptive k, :func:`~audit.compare.token_record.record_tokens`, None for exactly
    ``top_k`` ids), from the same forward passes.  ``precision``: the exact figures'
    arithmetic (:func:`~audit.compare.divergence.token_figures`; ``float64`` to set
    them against the record's float64 bound token by token)."""
    g = _shard_count(windows, shards)
    for model in models.values():
        same_tokenizer(model, reference_backend)
    accs = {name: (DivergenceAccumulator(g),
                   None if top_k is None else DivergenceAccumulator(g, kld_is_bound=True))
            for name in models}
    for batch in windows.batches(batch_size):
        ref = _logits(reference_backend, batch.ids)                       # [n, V]
        targets, shard = scored(batch)
        record = (None if top_k is None
                  else record_tokens(ref, targets, shard, top_k, mass=mass))
        for name, model in models.items():
            exact, bound = accs[name]
            add_pair(exact, ref, _logits(model, batch.ids), targets, shard, name, bound, record,
                     precision)
    return accs


def accumulate_outputs(model_backend: Any, reference_backend: Any, windows: Any, *,
                       batch_size: int = 8, shards: int | None = None) -> DivergenceAccumulator:
    """The accumulator behind :func:`compare_outputs` (its per-token values kept)."""
    accs = accumulate_several({"model": model_backend}, reference_backend, windows,
                              batch_size=batch_size, shards=shards)
    return accs["model"][0]


def compare_outputs(model_backend: Any, reference_backend: Any, windows: Any, *,
                    batch_size: int = 8, shards: int | None = None) -> DivergenceResult:
    """Exact per-token divergence of ``model_backend`` from ``reference_backend`` over
    ``windows`` (an :class:`audit.probe.ProbeInput`: its batches and shards);
    ``shards`` defaults to the probe's (the largest shard id + 1).  The same backend
    twice gives KL 0."""
    return accumulate_outputs(model_backend, reference_backend, windows,
                              batch_size=batch_size, shards=shards).result()


def compare_outputs_with_bound(model_backend: Any, reference_backend: Any, windows: Any, *,
                               top_k: int = TOP_K, mass: float | None = TOP_MASS,
                               batch_size: int = 8, shards: int | None = None
                               ) -> tuple[DivergenceResult, DivergenceResult]:
    """:func:`compare_outputs` and, from the same forward passes, the comparison
    against the reference's token record at ``top_k`` (its KL the lower bound):
    (exact, bound), to measure how close the stored baseline's KL comes."""
    exact, bound = accumulate_several({"model": model_backend}, reference_backend, windows,
                                      batch_size=batch_size, shards=shards,
                                      top_k=top_k, mass=mass)["model"]
    return exact.result(), bound.result()


def record_reference(reference_backend: Any, windows: Any, *, top_k: int = TOP_K,
                     mass: float | None = TOP_MASS, batch_size: int = 8) -> TokenRecord:
    """The reference's token record over ``windows``, in batch order (by default a
    baseline's: at least ``top_k`` ids a token, as many as hold ``mass`` of the
    probability); its ``meta`` names the windows (``windows_sha256``) and the
    tokenizer (``vocab_sha256``)."""
    builder = RecordBuilder(top_k, mass)
    builder.start(windows)
    for batch in windows.batches(batch_size):
        builder.add(batch, _logits(reference_backend, batch.ids))
    return builder.record(reference_backend.tokenizer_info().get("vocab_sha256"))


def compare_with_record(model_backend: Any, record: TokenRecord, windows: Any, *,
                        batch_size: int = 8, shards: int | None = None) -> DivergenceResult:
    """``model_backend`` against a stored token record of the same ``windows``:
    same-top and Δp exact, the KLs lower bounds (``kld_is_bound``).
    :class:`ComparisonError` when the record was made on other windows, another
    tokenizer, or has another length."""
    vocab = model_backend.tokenizer_info().get("vocab_sha256")
    comparison = RecordComparison(record, vocab, shards)
    comparison.start(windows)
    for batch in windows.batches(batch_size):
        comparison.add(batch, _logits(model_backend, batch.ids))
    return comparison.result()
