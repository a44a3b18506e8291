"""A stored baseline's token record: what a later run needs of the reference's
next-token distributions to compare a candidate with it, without the reference.

Per scored token (the probe loss's positions, in the probe's batch order) the record
keeps the reference's k most probable tokens (ids and float64 log-probabilities,
most probable first), the log of the probability mass outside them (``tail_logp``),
the correct token and its log-probability, and the top token.  Never the logits:
about 10 bytes a kept id (uint16 ids where the vocabulary fits, float64
log-probabilities) and 32 a token.  A baseline's record keeps, per token, as many
ids as hold ``TOP_MASS`` (95 %) of the probability, at least ``TOP_K`` (32), at
most ``MAX_K`` (1024): about 350 ids a token on SmolLM2's default probe.

Against a record, with S the stored ids, P the reference's and Q the candidate's
distributions, the KL is the coarse-grained

    KL_S(P ‖ Q) = Σ_{v ∈ S} P_v log(P_v / Q_v) + P_tail log(P_tail / Q_tail),

P_tail = 1 − Σ_S P_v, Q_tail = 1 − Σ_S Q_v (Q_tail summed over the ids outside S,
not subtracted, so no precision is lost).  It is KL between the two distributions
merged into the k + 1 cells {v} ∪ {tail}, so the log-sum inequality makes it a
lower bound of the exact KL(P ‖ Q) for any candidate, quantised head included, and
equal to it when k is the vocabulary.  The reverse KL_S(Q ‖ P) bounds KL(Q ‖ P) the
same way.  Same-top, Δp and both NLLs are exact.  What the bound misses is the KL
inside the tail, so a token whose top k hold little mass (a flat distribution)
loses most: with ``mass`` a token keeps more ids, as many as hold that probability
(adaptive k, at most ``max_k``; shorter rows padded with −1, which compress away).

Files are ``.npz`` archives of plain arrays, read with ``allow_pickle=False``; the
``meta`` entry is a JSON string (format, k, vocabulary, and what the caller adds,
e.g. the windows' digest).  Written through a temporary file and a rename.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audit.compare.divergence import TokenFigures, log_softmax
from audit.errors import ComparisonError

RECORD_FORMAT = "equilaw-token-record/1"
TOP_K = 32
"""The default k (``divergence.top_k``): the fewest ids a token keeps."""
TOP_MASS = 0.95
"""The default ``mass`` of a baseline's record: a token keeps as many ids as hold 95 %
of the reference's probability, at least ``TOP_K``, at most ``MAX_K``. Chosen on
SmolLM2's catalogue against the healthy model (bench/bench_token_record.py on 2,032
tokens of the default probe; tests/test_divergence_smollm2.py asserts the whole
probe): k = 32 alone gives 0.72 to 0.86 of the exact mean KL, k = 256 0.89 to 0.95
(4 bits 0.905, too close to 0.9); this record keeps 354 ids a token on average and
gives 0.92 to 0.965 (4 bits 0.930, the passthrough merge 0.928, the lowest of the
rows with an exact KL of 0.01 or more). Tail buckets do not pay: one cell per decade
of the reference's probability, which would need every tail id's bucket stored, adds
up to 0.07 at k = 32 and at most 0.013 here; six vocabulary-wide buckets by the
probe's token frequency (six floats a token) add up to 0.03 at k = 32. The KL the
record misses is spread thinly over thousands of tail ids."""
MAX_K = 1024
"""The most ids a token keeps with adaptive k (``mass``)."""
_ID_SENTINEL = np.iinfo(np.uint16).max
"""Padding of ``top_ids`` in a file whose vocabulary fits uint16 (ids < 65535)."""
_ARRAYS = ("top_ids", "top_logp", "tail_logp", "target", "target_logp", "top", "shard")
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True, eq=False)
class TokenRecord:
    """The reference's figures for n scored tokens (see the module docstring)."""

    top_ids: np.ndarray
    """int32 [n, k]: the k most probable ids, most probable first (ties: lowest id);
    with adaptive k, a row keeping fewer is padded with −1."""
    top_logp: np.ndarray
    """float64 [n, k]: their log-probabilities (−inf at padding)."""
    tail_logp: np.ndarray
    """float64 [n]: log of the mass outside ``top_ids`` (−inf when k = V)."""
    target: np.ndarray
    """int32 [n]: the correct next token."""
    target_logp: np.ndarray
    """float64 [n]: its log-probability under the reference."""
    top: np.ndarray
    """int32 [n]: the reference's argmax (``numpy.argmax`` of its logits)."""
    shard: np.ndarray
    """int32 [n]: the token's jackknife shard."""
    meta: dict = field(default_factory=dict)
    """``format``, ``top_k``, ``vocab_size`` and the caller's entries (JSON types)."""

    def __len__(self) -> int:
        return int(self.target.shape[0])

    @property
    def top_k(self) -> int:
        """Columns of ``top_ids``: the most ids any token keeps."""
        return int(self.top_ids.shape[1])

    def rows(self, start: int, stop: int) -> TokenRecord:
        """Tokens ``start..stop-1`` (views)."""
        return TokenRecord(**{name: getattr(self, name)[start:stop] for name in _ARRAYS},
                           meta=self.meta)

    @staticmethod
    def concatenate(parts: list[TokenRecord], meta: dict | None = None) -> TokenRecord:
        """One record of ``parts`` in order (narrower ones padded: −1, −inf)."""
        if not parts:
            raise ValueError("no token record to concatenate")
        width = max(p.top_k for p in parts)

        def column(p: TokenRecord, name: str) -> np.ndarray:
            values = getattr(p, name)
            if name not in ("top_ids", "top_logp") or values.shape[1] == width:
                return values
            pad = -1 if name == "top_ids" else -np.inf
            return np.pad(values, ((0, 0), (0, width - values.shape[1])), constant_values=pad)

        return TokenRecord(**{name: np.concatenate([column(p, name) for p in parts])
                              for name in _ARRAYS},
                           meta=dict(parts[0].meta if meta is None else meta))


def record_tokens(ref_logits: np.ndarray, targets: np.ndarray, shard,
                  top_k: int = TOP_K, *, mass: float | None = None,
                  max_k: int = MAX_K) -> TokenRecord:
    """The record of n scored tokens from the reference's logits [n, V] (any float
    dtype), the correct tokens int [n] and the shard (one id or int [n]).

    Each token keeps its ``top_k`` most probable ids; with ``mass`` (in (0, 1]) more
    where they hold less than that probability, as many as reach it, at most
    ``max_k`` (adaptive k: flat distributions are where a short record loses most
    KL).  Rows shorter than the longest are padded with id −1 and log-prob −inf.
    Both counts are capped at V."""
    logits = np.asarray(ref_logits)
    y = np.asarray(targets, dtype=np.int64).reshape(-1)
    if logits.ndim != 2 or y.shape[0] != logits.shape[0]:
        raise ValueError(f"logits must be [n, V] with n targets: got {logits.shape} and "
                         f"{y.shape[0]} targets")
    for name, value in (("top_k", top_k), ("max_k", max_k)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if mass is not None and not 0 < mass <= 1:
        raise ValueError(f"mass must lie in (0, 1], got {mass!r}")
    n, vocab = logits.shape
    k = min(top_k, vocab)
    width = k if mass is None else min(max(k, max_k), vocab)
    top_ids = np.full((n, width), -1, dtype=np.int32)
    top_logp = np.full((n, width), -np.inf)
    tail_logp = np.empty(n)
    target_logp = np.empty(n)
    step = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        lp = log_softmax(logits[rows])                                  # [c, V]
        c = lp.shape[0]
        order = _top_ids(lp, width)                                     # [c, width]
        logp = np.take_along_axis(lp, order, axis=1)
        if mass is not None and width > k:
            # keep j + 1 ids where the first j hold less than ``mass`` (at least k)
            short = np.cumsum(np.exp(logp), axis=1) < mass              # [c, width]
            keep = np.clip(short.sum(axis=1) + 1, k, width)
            padded = np.arange(width)[None, :] >= keep[:, None]
            order = np.where(padded, -1, order)
            logp = np.where(padded, -np.inf, logp)
        top_ids[rows] = order
        top_logp[rows] = logp
        tail_logp[rows] = _outside_logsumexp(lp, order)
        target_logp[rows] = lp[np.arange(c), y[rows]]
    used = int((top_ids >= 0).sum(axis=1).max()) if n else k
    meta = {"format": RECORD_FORMAT, "top_k": k, "vocab_size": int(vocab)}
    if mass is not None:
        meta.update(mass=float(mass), max_k=int(width))
    return TokenRecord(top_ids=top_ids[:, :used].copy(), top_logp=top_logp[:, :used].copy(),
                       tail_logp=tail_logp, target=y.astype(np.int32), target_logp=target_logp,
                       top=np.argmax(logits, axis=1).astype(np.int32),
                       shard=np.broadcast_to(np.asarray(shard, dtype=np.int32), (n,)).copy(),
                       meta=meta)


def _top_ids(lp: np.ndarray, k: int) -> np.ndarray:
    """The k largest entries' ids per row, largest first, ties by lowest id
    (a partition, then a sort of the k)."""
    if k < lp.shape[1]:
        ids = np.argpartition(-lp, k - 1, axis=1)[:, :k]
        ids.sort(axis=1)
    else:
        ids = np.broadcast_to(np.arange(lp.shape[1]), lp.shape)
    order = np.argsort(-np.take_along_axis(lp, ids, axis=1), axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1)


def _unpadded(ids: np.ndarray) -> np.ndarray:
    """``ids`` [c, k] with each padding −1 replaced by the row's first id (a repeat
    changes no set, and column 0 is never padding)."""
    return np.where(ids >= 0, ids, ids[:, :1]).astype(np.int64)


def _outside_logsumexp(lp: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log Σ_{v ∉ ids[r]} exp(lp[r, v]) per row r (padding −1 ignored): −inf where
    nothing is left."""
    rest = lp.copy()
    np.put_along_axis(rest, _unpadded(ids), -np.inf, axis=1)
    top = rest.max(axis=1)
    finite = np.isfinite(top)
    out = np.full(lp.shape[0], -np.inf)
    if finite.any():
        r = rest[finite] - top[finite, None]
        out[finite] = np.log(np.exp(r).sum(axis=1)) + top[finite]
    return out


def _cell_kl(a_logp: np.ndarray, b_logp: np.ndarray) -> np.ndarray:
    """Σ exp(a) (a − b) over the last axis, a cell with zero mass counting 0."""
    mass = np.exp(a_logp)
    with np.errstate(invalid="ignore"):
        terms = np.where(mass > 0, mass * (a_logp - b_logp), 0.0)
    return terms.sum(axis=-1)


def bound_figures(record: TokenRecord, model_logits: np.ndarray) -> TokenFigures:
    """The figures of a candidate's logits [n, V] against ``record`` (n tokens): KLs
    are the coarse-grained lower bounds, the rest exact.  :class:`ComparisonError`
    when the vocabulary differs from the record's."""
    logits = np.asarray(model_logits)
    n = len(record)
    vocab = record.meta.get("vocab_size")
    if logits.ndim != 2 or logits.shape[0] != n or logits.shape[1] != vocab:
        raise ComparisonError(f"the candidate's logits have shape {logits.shape}; the token "
                              f"record holds {n} tokens over a vocabulary of {vocab}",
                              fields=("vocab_size",))
    kld, rev, dp, nll_model = (np.empty(n) for _ in range(4))
    step = max(1, _CHUNK_ELEMENTS // max(int(vocab), 1))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        lq = log_softmax(logits[rows])                                  # [c, V]
        ids = record.top_ids[rows]
        lq_top = np.where(ids >= 0, np.take_along_axis(lq, _unpadded(ids), axis=1), -np.inf)
        lq_cells = np.concatenate([lq_top, _outside_logsumexp(lq, ids)[:, None]], axis=1)
        lp_cells = np.concatenate([record.top_logp[rows], record.tail_logp[rows, None]], axis=1)
        kld[rows] = _cell_kl(lp_cells, lq_cells)
        rev[rows] = _cell_kl(lq_cells, lp_cells)
        at = lq[np.arange(lq.shape[0]), record.target[rows].astype(np.int64)]
        nll_model[rows] = -at
        dp[rows] = np.exp(at) - np.exp(record.target_logp[rows])
    same = np.argmax(logits, axis=1) == record.top
    return TokenFigures(kld=kld, kld_reverse=rev, same_top=same, dp=dp,
                        nll_ref=-record.target_logp.astype(np.float64), nll_model=nll_model)


def _stored(record: TokenRecord) -> dict[str, np.ndarray]:
    """The arrays as written: ``top_ids`` as uint16 (padding 65535) when every id fits,
    which halves the largest array; the rest as they are."""
    arrays = {name: np.ascontiguousarray(getattr(record, name)) for name in _ARRAYS}
    ids = arrays["top_ids"]
    vocab = record.meta.get("vocab_size")
    if isinstance(vocab, int) and vocab <= _ID_SENTINEL:
        arrays["top_ids"] = np.where(ids >= 0, ids, _ID_SENTINEL).astype(np.uint16)
    return arrays


def token_record_bytes(record: TokenRecord) -> bytes:
    """The bytes :func:`save_token_record` writes (for files written together): a
    compressed ``.npz`` of plain arrays and the JSON ``meta``."""
    meta = {**record.meta, "format": RECORD_FORMAT}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta, sort_keys=True)),
                        **_stored(record))
    return buffer.getvalue()


def save_token_record(record: TokenRecord, path: str | os.PathLike) -> Path:
    """Write ``record`` as a compressed ``.npz`` (no pickled object) through a
    temporary file and a rename; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = token_record_bytes(record)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".npz", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target


def load_token_record(path: str | os.PathLike) -> TokenRecord:
    """Read a record written by :func:`save_token_record` (``allow_pickle=False``);
    :class:`ComparisonError` naming the file when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            arrays = {name: archive[name] for name in _ARRAYS}
    except (OSError, KeyError, ValueError) as exc:
        raise ComparisonError(f"{str(path)!r} is not a readable token record: "
                              f"{type(exc).__name__}: {exc}") from exc
    if meta.get("format") != RECORD_FORMAT:
        raise ComparisonError(f"{str(path)!r} has token-record format {meta.get('format')!r}, "
                              f"this equilaw reads {RECORD_FORMAT!r}: regenerate the baseline")
    ids = arrays["top_ids"]
    if ids.dtype == np.uint16:  # padding 65535 back to -1
        arrays["top_ids"] = np.where(ids == _ID_SENTINEL, -1, ids.astype(np.int32))
    return TokenRecord(**arrays, meta=meta)
