"""Probe corpora: the frozen built-in corpus, user files, and deterministic windows.

A corpus is an ordered tuple of documents and a sha256 that identifies it across
machines.  docs/method.md ("Data points") fixes how it becomes model input: the documents
are joined with a blank line (``"\\n\\n"``) and tokenized as ONE stream; a window is
``length`` consecutive tokens of that stream, preceded by the tokenizer's BOS token
where it has one (the BOS counts towards ``length``); the stream is cut into
non-overlapping candidate windows and ``seed`` chooses which of them are used; there
is no padding, so every position is real.

Sources accepted by :func:`load_corpus`:

- a built-in name (``python-docstrings``): a JSONL file shipped in
  :mod:`audit.corpora`, whose sha256 is recorded in :data:`BUILTIN_CORPORA` and
  checked on every load, so the probe cannot drift between machines or Python
  versions (it is never regenerated at run time);
- a ``.txt`` file: the whole file is ONE document (blank lines inside it are kept;
  nothing is split);
- a ``.jsonl`` file: each non-empty line is a JSON object with a string ``"text"``
  field, one document per line;
- a folder: its ``.txt`` and ``.jsonl`` files (not sub-folders, other suffixes
  ignored), read in sorted file-name order and concatenated.

The authors' reference code reads a corpus differently: it samples whole
documents (:func:`sample_documents`), each tokenized on its own from its start
(:mod:`audit.probe`, ``probe.mode: documents``).

This module is plain Python and numpy; the tokenizer comes from a backend as an
``encode`` callable.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from audit.errors import CorpusError
from audit.internal import safe_read

__all__ = [
    "BUILTIN_CORPORA",
    "Corpus",
    "count_windows",
    "folder_sha256",
    "load_corpus",
    "sample_documents",
    "token_windows",
    "tokenize_corpus",
]

#: Built-in corpora: name -> (file name inside ``audit.corpora``, sha256 of its bytes).
#: ``python-docstrings`` was produced once by ``scripts/make_docstring_corpus.py``
#: under CPython 3.11.7: 1325 docstrings of the standard library, 563,176
#: characters joined.  Changing the file means changing this hash, and with it
#: every report and baseline measured on it.
BUILTIN_CORPORA: dict[str, tuple[str, str]] = {
    "python-docstrings": (
        "python-docstrings.jsonl",
        "17d481aef8d947e7b8467117f3d863dab783f45105b91b1bebdc94292d9555f7",
    ),
}

_BUILTIN_PACKAGE = "audit.corpora"
_SEPARATOR = "\n\n"  # METHOD: documents are joined with a blank line
_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class Corpus:
    """A probe corpus, identified by its hash.

    ``name``: the built-in name, or the file or folder name of a path (not the full
    path, so that reports from two machines compare).
    ``sha256``: hex digest of the file's bytes; for a folder, of its sorted file
    names and their bytes (see :func:`folder_sha256`).
    ``documents``: the documents in corpus order.
    ``source``: ``"builtin"`` or the resolved path that was read.
    """

    name: str
    sha256: str
    documents: tuple[str, ...] = field(repr=False)
    source: str = "builtin"

    @property
    def text(self) -> str:
        """The documents joined with a blank line: the one stream that is tokenized."""
        return _SEPARATOR.join(self.documents)

    @property
    def characters(self) -> int:
        """Length of :attr:`text` in characters (Unicode code points)."""
        return len(self.text)


# --------------------------------------------------------------------------- loading

def load_corpus(name_or_path: str | os.PathLike[str]) -> Corpus:
    """Load a built-in corpus by name, or a ``.txt`` / ``.jsonl`` file or a folder.

    A string equal to a built-in name always means the built-in corpus, even if a
    file of that name exists in the working directory.  Raises :class:`CorpusError`
    for an unknown name, an unreadable or malformed file (naming file and line), a
    built-in file whose checksum does not match, or a corpus without documents.
    """
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_CORPORA:
        return _load_builtin(name_or_path)
    path = Path(name_or_path)
    if not path.exists():
        builtin = ", ".join(sorted(BUILTIN_CORPORA))
        raise CorpusError(
            f"unknown corpus {str(name_or_path)!r}: not a built-in corpus ({builtin}) "
            f"and no such file or folder")
    path = path.resolve()
    if path.is_dir():
        return _load_folder(path)
    if path.suffix not in _SUFFIXES:
        raise CorpusError(
            f"{path}: unsupported corpus file type {path.suffix or '(none)'!r}; "
            f"use a .txt file (one document), a .jsonl file (one {{\"text\": ...}} "
            f"object per line) or a folder of them")
    data = _read_bytes(path)
    documents = _parse(path, data)
    if not documents:
        raise CorpusError(f"{path}: empty corpus: no documents with text")
    return Corpus(name=path.name, sha256=hashlib.sha256(data).hexdigest(),
                  documents=documents, source=str(path))


def _builtin_resource(filename: str):
    """The shipped file (a Traversable); tests replace this to load a modified copy."""
    return resources.files(_BUILTIN_PACKAGE).joinpath(filename)


def _load_builtin(name: str) -> Corpus:
    filename, expected = BUILTIN_CORPORA[name]
    resource = _builtin_resource(filename)
    try:
        data = resource.read_bytes()
    except OSError as exc:
        raise CorpusError(
            f"built-in corpus {name!r}: cannot read {resource}: {exc.strerror or exc}; "
            f"the installation is incomplete: reinstall equilaw") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CorpusError(
            f"built-in corpus {name!r} fails its checksum: {resource} has sha256 "
            f"{actual}, expected {expected}. The file was modified or corrupted; "
            f"reinstall equilaw (pip install --force-reinstall --no-deps equilaw) or, "
            f"in a checkout, restore it with git checkout")
    documents = _parse_jsonl(Path(str(resource)), data)
    if not documents:  # cannot happen with the shipped file; kept for a clear message
        raise CorpusError(f"built-in corpus {name!r}: empty corpus: no documents with text")
    return Corpus(name=name, sha256=actual, documents=documents, source="builtin")


def _load_folder(folder: Path) -> Corpus:
    # Not only regular files: a FIFO named *.txt is refused by name, not skipped.
    files = sorted((p for p in folder.iterdir() if p.suffix in _SUFFIXES and not p.is_dir()),
                   key=lambda p: p.name)
    if not files:
        raise CorpusError(f"{folder}: empty corpus: no .txt or .jsonl files in this folder")
    contents = [(p, _read_bytes(p)) for p in files]
    documents: list[str] = []
    for path, data in contents:
        documents.extend(_parse(path, data))
    if not documents:
        raise CorpusError(f"{folder}: empty corpus: no documents with text")
    digest = folder_sha256((p.name, data) for p, data in contents)
    return Corpus(name=folder.name, sha256=digest, documents=tuple(documents),
                  source=str(folder))


def folder_sha256(files: Iterable[tuple[str, bytes]]) -> str:
    """sha256 of a folder corpus: over its files in sorted name order, each as
    ``name (UTF-8) NUL size (decimal ASCII) NUL bytes``.  Independent of the folder's
    location and of file timestamps; renaming a file changes it."""
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(name.encode("utf-8") + b"\0" + str(len(data)).encode("ascii") + b"\0")
        digest.update(data)
    return digest.hexdigest()


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; a FIFO, device or socket is refused (it could block)."""
    return safe_read.read_bytes(path, "corpus file",
                                lambda _field, _line, message: CorpusError(f"{path}: {message}"))


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise CorpusError(f"{path}:{line}: not valid UTF-8 (byte offset {exc.start})") from exc


def _parse(path: Path, data: bytes) -> tuple[str, ...]:
    if path.suffix == ".jsonl":
        return _parse_jsonl(path, data)
    return _parse_txt(path, data)


def _parse_txt(path: Path, data: bytes) -> tuple[str, ...]:
    """A .txt file is one document: its text with CRLF turned into LF and trailing
    newlines removed (so that joining keeps exactly one blank line between
    documents).  A file with only whitespace gives no document."""
    text = _decode(path, data).replace("\r\n", "\n").rstrip("\n")
    return (text,) if text.strip() else ()


def _parse_jsonl(path: Path, data: bytes) -> tuple[str, ...]:
    """One document per non-empty line: the line's ``"text"`` string, verbatim.
    Documents with only whitespace are skipped (they would add nothing but
    separators)."""
    documents: list[str] = []
    for lineno, line in enumerate(_decode(path, data).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(
                f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        except RecursionError:
            raise CorpusError(f"{path}:{lineno}: {safe_read.too_deep('the line')}") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            got = ("an object without a string \"text\" field" if isinstance(record, dict)
                   else f"a JSON {type(record).__name__}")
            raise CorpusError(
                f"{path}:{lineno}: expected a JSON object with a string \"text\" field, "
                f"got {got}")
        if record["text"].strip():
            documents.append(record["text"])
    return tuple(documents)


# --------------------------------------------------------------------------- tokens

def tokenize_corpus(corpus: Corpus, encode: Callable[[str], Iterable[int]]) -> np.ndarray:
    """Tokenize ``corpus.text`` as ONE stream -> int64 [tokens].

    ``encode`` maps text to token ids without special tokens (a backend's
    ``encode``); the BOS, where the model has one, is added per window by
    :func:`token_windows`, not here.
    """
    stream = np.asarray(list(encode(corpus.text)), dtype=np.int64)  # [tokens]
    if stream.ndim != 1 or stream.size == 0:
        raise CorpusError(f"corpus {corpus.name!r}: the tokenizer returned no tokens")
    return stream


def count_windows(tokens: int, length: int, bos: bool) -> int:
    """How many non-overlapping candidate windows of ``length`` a stream of
    ``tokens`` tokens gives: ``tokens // (length - 1)`` with a BOS (it takes one
    position of each window), ``tokens // length`` without."""
    per_window = length - 1 if bos else length
    return tokens // per_window if per_window > 0 else 0


def token_windows(stream: np.ndarray | Iterable[int], length: int, sequences: int, seed: int,
                  bos_id: int | None = None, *, corpus_name: str | None = None) -> np.ndarray:
    """Choose ``sequences`` windows of ``length`` tokens -> int64 [sequences, length].

    The stream is cut from its start into consecutive, non-overlapping chunks of
    ``length - 1`` tokens when ``bos_id`` is given (each window is then
    ``[bos_id, chunk...]``, the BOS counting towards ``length``) or of ``length``
    tokens otherwise; a trailing partial chunk is dropped.  The windows used are
    ``numpy.random.default_rng(seed).choice(candidates, sequences, replace=False)``,
    returned in ascending candidate order (so the stream order is kept, and a
    window's row does not depend on the order the generator drew it in).  No
    padding: every position is a real token.

    ``corpus_name`` only improves error messages.  Raises :class:`CorpusError` when
    the stream has fewer candidate windows than ``sequences``, or for a bad
    argument (``length`` < 2: a window needs at least one next-token example;
    ``sequences`` < 1).
    """
    where = f"corpus {corpus_name!r}: " if corpus_name else ""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 2:
        raise CorpusError(f"{where}window length must be an integer >= 2, got {length!r}")
    if isinstance(sequences, bool) or not isinstance(sequences, (int, np.integer)) or sequences < 1:
        raise CorpusError(f"{where}number of windows must be an integer >= 1, got {sequences!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise CorpusError(f"{where}seed must be an integer, got {seed!r}")
    stream = np.asarray(stream)
    if stream.ndim != 1 or (stream.size and not np.issubdtype(stream.dtype, np.integer)):
        raise CorpusError(f"{where}token stream must be a 1-D array of integer ids, "
                          f"got shape {stream.shape} and dtype {stream.dtype}")
    stream = stream.astype(np.int64, copy=False)  # [tokens]
    bos = bos_id is not None
    per_window = length - 1 if bos else length
    candidates = count_windows(stream.size, length, bos)
    if candidates < sequences:
        how = (f"{per_window} corpus tokens after the BOS each" if bos
               else f"{per_window} corpus tokens each")
        raise CorpusError(
            f"{where}too short: its {stream.size} tokens give {candidates} non-overlapping "
            f"windows of length {length} ({how}), but {sequences} were asked for; lower "
            f"probe.sequences or probe.length, or use a larger corpus")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(candidates, sequences, replace=False))  # [sequences]
    chunks = stream[: candidates * per_window].reshape(candidates, per_window)[chosen]
    if not bos:
        return np.ascontiguousarray(chunks)  # [sequences, length]
    windows = np.empty((sequences, length), dtype=np.int64)
    windows[:, 0] = bos_id
    windows[:, 1:] = chunks
    return windows  # [sequences, length]


def sample_documents(documents: int, sequences: int, seed: int, *,
                     corpus_name: str | None = None) -> np.ndarray:
    """The indexes of the documents the authors' reference code samples -> int64
    [sequences], in their sampling order (not sorted).

    The reference sets ``numpy.random.seed(seed)``, shuffles
    ``numpy.arange(documents)`` with ``numpy.random.shuffle`` and takes the first
    ``sequences``; ``numpy.random.RandomState(seed).shuffle`` is the same generator,
    without touching numpy's global state.  Raises :class:`CorpusError` when the
    corpus holds fewer than ``sequences`` documents, or for a bad argument.
    """
    where = f"corpus {corpus_name!r}: " if corpus_name else ""
    for name, value, low in (("number of documents", documents, 0),
                             ("number of sampled documents", sequences, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise CorpusError(f"{where}{name} must be an integer >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed < 2**32:  # RandomState's seeds
        raise CorpusError(f"{where}seed must be an integer in [0, 2**32), got {seed!r}")
    if sequences > documents:
        raise CorpusError(
            f"{where}too small: it holds {documents} documents, but {sequences} were asked "
            f"for; lower probe.sequences, or use a larger corpus")
    order = np.arange(documents)  # the reference's sent_id_list
    np.random.RandomState(seed).shuffle(order)
    return order[:sequences].astype(np.int64)
