"""Two models' next-token distributions compared on the probe, batch by batch.

:func:`compare_outputs` runs the candidate and the reference in lockstep over the
probe's sequences (both loaded, one batch's logits of each alive at a time) and
accumulates :mod:`audit.compare.divergence`'s figures by jackknife shard.
:func:`record_reference` runs a reference alone and keeps its token record
(:mod:`audit.compare.token_record`) for a later :func:`compare_with_record`, which
needs only the candidate.  The scored tokens are the probe loss's: in each
sequence of t tokens, position j < t − 1 predicting token j + 1, in batch order.

The backends give logits through ``next_token_logits``
(:class:`audit.backends.base.Backend`); nothing here imports torch.
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


def _scored(batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """The batch's correct next tokens and their shards, int64 [b × (t − 1)]."""
    targets = batch.ids[:, 1:].reshape(-1)
    return targets, np.repeat(batch.shards, batch.ids.shape[1] - 1)


def _logits(backend: Any, ids: np.ndarray) -> np.ndarray:
    """float32 [b × (t − 1), V]."""
    out = backend.next_token_logits(ids)                                  # [b, t-1, V]
    return out.reshape(-1, out.shape[-1])


def _same_tokenizer(model: Any, reference: Any) -> None:
    a = model.tokenizer_info().get("vocab_sha256")
    b = reference.tokenizer_info().get("vocab_sha256")
    if a != b:
        raise ComparisonError(f"the model and the reference tokenize differently (vocabulary "
                              f"sha256 {str(a)[:12]} vs {str(b)[:12]}): their next-token "
                              f"distributions cannot be compared token by token",
                              fields=("tokenizer",))


def accumulate_several(models: Mapping[str, Any], reference_backend: Any, windows: Any, *,
                       batch_size: int = 8, shards: int | None = None,
                       top_k: int | None = None, mass: float | None = TOP_MASS
                       ) -> dict[str, tuple[DivergenceAccumulator, DivergenceAccumulator | None]]:
    """Every model of ``models`` (name -> backend) against one reference in one
    lockstep pass: each batch's reference logits are computed once.  Per name, the
    exact accumulator and, when ``top_k`` is given, the one against the reference's
    token record at ``top_k`` (its KLs the stored baseline's lower bound; ``mass``:
    adaptive k, :func:`~audit.compare.token_record.record_tokens`, None for exactly
    ``top_k`` ids), from the same forward passes."""
    g = _shard_count(windows, shards)
    for model in models.values():
        _same_tokenizer(model, reference_backend)
    accs = {name: (DivergenceAccumulator(g),
                   None if top_k is None else DivergenceAccumulator(g, kld_is_bound=True))
            for name in models}
    for batch in windows.batches(batch_size):
        ref = _logits(reference_backend, batch.ids)                       # [n, V]
        targets, shard = _scored(batch)
        record = (None if top_k is None
                  else record_tokens(ref, targets, shard, top_k, mass=mass))
        for name, model in models.items():
            mod = _logits(model, batch.ids)
            if ref.shape != mod.shape:
                raise ComparisonError(f"{name}'s logits have {mod.shape[-1]} words, the "
                                      f"reference's {ref.shape[-1]}", fields=("vocab_size",))
            exact, bound = accs[name]
            exact.update(token_figures(ref, mod, targets), shard)
            if bound is not None:
                bound.update(bound_figures(record, mod), shard)
            del mod
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
    parts = [record_tokens(_logits(reference_backend, batch.ids), *_scored(batch), top_k,
                           mass=mass)
             for batch in windows.batches(batch_size)]
    if not parts:
        raise ComparisonError("the probe gives no scored token to record")
    meta = {**parts[0].meta, "windows_sha256": windows.sha256,
            "vocab_sha256": reference_backend.tokenizer_info().get("vocab_sha256")}
    return TokenRecord.concatenate(parts, meta=meta)


def compare_with_record(model_backend: Any, record: TokenRecord, windows: Any, *,
                        batch_size: int = 8, shards: int | None = None) -> DivergenceResult:
    """``model_backend`` against a stored token record of the same ``windows``:
    same-top and Δp exact, the KLs lower bounds (``kld_is_bound``).
    :class:`ComparisonError` when the record was made on other windows, another
    tokenizer, or has another length."""
    if record.meta.get("windows_sha256") != windows.sha256:
        raise ComparisonError("the token record was made on other probe windows: regenerate "
                              "the baseline (--audit-update-baseline)", fields=("windows",))
    vocab = model_backend.tokenizer_info().get("vocab_sha256")
    if record.meta.get("vocab_sha256") != vocab:
        raise ComparisonError("the token record was made with another tokenizer",
                              fields=("tokenizer",))
    acc = DivergenceAccumulator(_shard_count(windows, shards), kld_is_bound=True)
    offset = 0
    for batch in windows.batches(batch_size):
        targets, shard = _scored(batch)
        part = record.rows(offset, offset + targets.size)
        if len(part) != targets.size or not np.array_equal(part.target, targets):
            raise ComparisonError("the token record's tokens differ from the probe's at token "
                                  f"{offset}: regenerate the baseline", fields=("windows",))
        acc.update(bound_figures(part, _logits(model_backend, batch.ids)), shard)
        offset += targets.size
    if offset != len(record):
        raise ComparisonError(f"the token record holds {len(record)} tokens, the probe "
                              f"scores {offset}", fields=("windows",))
    return acc.result()
