"""The probe's model input: the token sequences a model reads, their batches and
jackknife shards, and the digest that identifies them.

``probe.mode`` chooses how a corpus becomes sequences (docs/method.md, "Data points"):

- ``windows`` (equilaw's default): the documents are joined and tokenized as one
  stream without special tokens, and ``sequences`` windows of ``length`` tokens,
  each preceded by the BOS where the tokenizer has one, are chosen by ``seed``
  (:func:`audit.corpus.token_windows`);
- ``documents`` (the authors' reference code): ``sequences`` documents are sampled
  as the reference samples them (:func:`audit.corpus.sample_documents`), and each
  is ONE sequence from its start, tokenized with the tokenizer's default special
  tokens and truncated to ``length`` (the backend's ``encode_document``).

Every position of a sequence whose target lies inside it is one example
(:func:`example_positions`).  Nothing is ever padded: windows share one length,
and documents are batched by exact length (:meth:`ProbeInput.batches`), so every
backend runs its plain forward pass, without an attention mask, and every
position is a real token.  Sequence i of n, in sampling order, belongs to jackknife
shard ⌊i × shards / n⌋: contiguous blocks, so neighbouring windows, which share
text, share a shard.

Plain numpy: the tokenizer comes in as an object with ``encode``,
``encode_document`` and ``bos_token_id`` (a backend).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from audit.corpus import Corpus, sample_documents, token_windows, tokenize_corpus
from audit.errors import CorpusError

if TYPE_CHECKING:
    from audit.spec import Spec

__all__ = [
    "TARGET_OFFSETS",
    "Batch",
    "ProbeInput",
    "Tokenizer",
    "documents_sha256",
    "example_positions",
    "example_slices",
    "min_length",
    "probe_input",
    "windows_sha256",
]

# Where the target sits relative to the position whose features are used.
TARGET_OFFSETS = {"previous": -1, "current": 0, "next": 1, "next_next": 2}


def example_positions(length: int, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions j whose features are used and positions j+offset of their targets,
    for a sequence of ``length`` tokens: every position whose target lies inside
    the sequence (for ``next``: every position but the last).  Empty when the
    sequence is shorter than :func:`min_length`."""
    offset = TARGET_OFFSETS[target]
    j = np.arange(max(0, -offset), length - max(0, offset))
    return j, j + offset


def example_slices(length: int, target: str) -> tuple[slice, slice]:
    """:func:`example_positions` as slices (both are contiguous ranges: slices take
    views where index arrays would copy); the sequence must give an example."""
    offset = TARGET_OFFSETS[target]
    first = max(0, -offset)
    stop = length - max(0, offset)
    return slice(first, stop), slice(first + offset, stop + offset)


def min_length(target: str) -> int:
    """The fewest tokens a sequence needs for one example of ``target``."""
    return abs(TARGET_OFFSETS[target]) + 1


class Tokenizer(Protocol):
    """What :func:`probe_input` needs of a tokenizer (every backend has it)."""

    def encode(self, text: str) -> list[int]:
        """Ids without special tokens (``windows``)."""
        ...

    def encode_document(self, text: str, max_length: int) -> list[int]:
        """Ids with the default special tokens, truncated (``documents``)."""
        ...

    @property
    def bos_token_id(self) -> int | None: ...


@dataclass(frozen=True)
class Batch:
    """One forward pass: sequences of one length, in sampling order."""

    ids: np.ndarray
    """int64 [b, t]: the token ids, no padding."""
    shards: np.ndarray
    """int64 [b]: each row's jackknife shard; non-decreasing, so the rows of one
    shard are contiguous."""
    rows: np.ndarray
    """int64 [b]: each row's index among the probe's sequences (sampling order)."""


@dataclass(frozen=True, eq=False)
class ProbeInput:
    """The sequences a probe feeds to the model, as :func:`probe_input` builds them."""

    mode: str
    """``windows`` or ``documents`` (``probe.mode``)."""
    sequences: Sequence[np.ndarray] = field(repr=False)
    """The token ids of each sequence, int64, in sampling order: windows as one
    array [n, length], documents as a tuple of 1-D arrays of their own lengths."""
    shard_of: np.ndarray = field(repr=False)
    """int64 [n]: sequence i's jackknife shard, ⌊i × shards / n⌋."""
    sha256: str
    """Identifies the input (the report's ``probe.windows_sha256``):
    :func:`windows_sha256` or :func:`documents_sha256`."""
    min_length: int
    """Sequences shorter than this give no example and are not run."""
    counts: dict[str, int] = field(default_factory=dict)
    """Mode-specific counts for the report's ``corpus`` record: ``stream_tokens``
    (windows: the whole tokenized corpus); ``documents`` (documents: how many the
    corpus holds) and ``short_documents`` (sampled documents too short for one
    example)."""

    @property
    def lengths(self) -> np.ndarray:
        """int64 [n]: each sequence's length in tokens."""
        return np.array([len(s) for s in self.sequences], dtype=np.int64)

    @property
    def tokens(self) -> int:
        """Tokens fed to the model (the sequences long enough for an example)."""
        lengths = self.lengths
        return int(lengths[lengths >= self.min_length].sum())

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """The forward passes, at most ``batch_size`` sequences each: sequences of
        equal length together (no padding), longer ones first (a probe too large
        for the memory fails on its first batch), each length's sequences in
        sampling order.  Windows (one length) come in their plain order:
        sequences 0..b-1, b..2b-1, ...  Sequences shorter than
        :attr:`min_length` are left out."""
        lengths = self.lengths
        for length in np.unique(lengths[lengths >= self.min_length])[::-1]:
            same = np.flatnonzero(lengths == length)              # ascending: sampling order
            for start in range(0, same.size, batch_size):
                rows = same[start:start + batch_size]
                ids = np.stack([self.sequences[i] for i in rows])  # [b, t]
                yield Batch(ids=ids, shards=self.shard_of[rows], rows=rows)


def windows_sha256(windows: np.ndarray) -> str:
    """sha256 of the token windows as little-endian int64, with their shape."""
    digest = hashlib.sha256(f"{windows.shape}".encode())
    digest.update(np.ascontiguousarray(windows, dtype="<i8").tobytes())
    return digest.hexdigest()


def documents_sha256(sequences: Sequence[np.ndarray]) -> str:
    """sha256 of documents of unequal lengths: a header naming the mode and the
    count, the lengths, then every document's ids, all little-endian int64, in
    sampling order.  Never equal to a :func:`windows_sha256` (whose header is a
    shape)."""
    lengths = np.array([len(s) for s in sequences], dtype="<i8")
    digest = hashlib.sha256(f"documents {lengths.size}".encode())
    digest.update(lengths.tobytes())
    for ids in sequences:
        digest.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    return digest.hexdigest()


def _shards(n: int, shards: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * shards // n


def probe_input(spec: Spec, corpus: Corpus, tokenizer: Tokenizer) -> ProbeInput:
    """The model input of ``spec.probe`` on ``corpus`` (see the module docstring).

    Raises :class:`~audit.errors.SpecError` naming ``probe.sequences`` when a
    ``documents`` probe asks for more documents than the corpus holds, and
    :class:`~audit.errors.CorpusError` when the corpus gives too few windows or
    no sampled document is long enough for one example.
    """
    probe = spec.probe
    need = min_length(spec.target)
    if probe.mode == "windows":
        stream = tokenize_corpus(corpus, tokenizer.encode)
        windows = token_windows(stream, probe.length, probe.sequences, probe.seed,
                                bos_id=tokenizer.bos_token_id)            # [n, length]
        return ProbeInput(mode="windows", sequences=windows,
                          shard_of=_shards(len(windows), probe.shards),
                          sha256=windows_sha256(windows), min_length=need,
                          counts={"stream_tokens": int(stream.size)})
    if probe.mode != "documents":
        raise spec.error("probe.mode", f"unknown probe mode {probe.mode!r}; "
                                       f"expected windows or documents")
    held = len(corpus.documents)
    if probe.sequences > held:
        raise spec.error("probe.sequences",
                         f"asks for {probe.sequences} documents, but corpus {corpus.name!r} "
                         f"holds {held}: lower probe.sequences, or use a larger corpus")
    chosen = sample_documents(held, probe.sequences, probe.seed, corpus_name=corpus.name)
    documents = tuple(np.asarray(tokenizer.encode_document(corpus.documents[i], probe.length),
                                 dtype=np.int64).reshape(-1) for i in chosen)
    short = sum(len(ids) < need for ids in documents)
    if short == len(documents):
        raise CorpusError(
            f"corpus {corpus.name!r}: none of the {len(documents)} sampled documents has the "
            f"{need} tokens one example of target {spec.target!r} needs")
    return ProbeInput(mode="documents", sequences=documents,
                      shard_of=_shards(len(documents), probe.shards),
                      sha256=documents_sha256(documents), min_length=need,
                      counts={"documents": held, "short_documents": int(short)})
