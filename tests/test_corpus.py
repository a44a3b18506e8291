"""Tests for audit.corpus: the frozen built-in corpus, file corpora, windows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import audit.corpus as corpus_module
from audit.corpus import (
    BUILTIN_CORPORA,
    Corpus,
    count_windows,
    folder_sha256,
    load_corpus,
    sample_documents,
    token_windows,
    tokenize_corpus,
)
from audit.errors import CorpusError, EquilawError

SHIPPED = Path(corpus_module.__file__).parent / "corpora" / "python-docstrings.jsonl"
SHIPPED_SHA256 = "17d481aef8d947e7b8467117f3d863dab783f45105b91b1bebdc94292d9555f7"


def byte_encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


# --------------------------------------------------------------------------- built-in

@pytest.fixture(scope="module")
def builtin() -> Corpus:
    return load_corpus("python-docstrings")


def test_builtin_loads_with_recorded_hash(builtin: Corpus) -> None:
    assert BUILTIN_CORPORA["python-docstrings"] == ("python-docstrings.jsonl", SHIPPED_SHA256)
    assert builtin.name == "python-docstrings"
    assert builtin.sha256 == SHIPPED_SHA256
    assert builtin.sha256 == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert builtin.source == "builtin"
    assert len(builtin.documents) == 1325
    assert len(builtin.text) == 563_176
    assert builtin.characters == 563_176
    assert SHIPPED.stat().st_size < 2 * 1024 * 1024


def test_builtin_documents_are_clean_and_unique(builtin: Corpus) -> None:
    assert len(set(builtin.documents)) == len(builtin.documents)
    assert all(len(doc) >= 80 for doc in builtin.documents)
    assert all(doc == doc.strip() for doc in builtin.documents)
    assert builtin.documents[0].startswith("Metaclass for defining Abstract Base Classes")


def test_builtin_text_joins_documents_with_a_blank_line(builtin: Corpus) -> None:
    assert builtin.text == "\n\n".join(builtin.documents)
    assert builtin.text.startswith(builtin.documents[0] + "\n\n" + builtin.documents[1])


def test_builtin_file_lines_are_canonical_json() -> None:
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    for line in lines[:50]:
        record = json.loads(line)
        assert list(record) == ["text"]
        assert json.dumps(record, ensure_ascii=False, sort_keys=True) == line


def test_modified_builtin_copy_fails_its_checksum(tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "python-docstrings.jsonl"
    data = SHIPPED.read_bytes()
    modified = data.replace(b"Metaclass", b"Metaklass", 1)
    copy.write_bytes(modified)
    actual = hashlib.sha256(modified).hexdigest()
    monkeypatch.setattr(corpus_module, "_builtin_resource", lambda filename: tmp_path / filename)
    with pytest.raises(CorpusError) as info:
        load_corpus("python-docstrings")
    assert str(info.value) == (
        f"built-in corpus 'python-docstrings' fails its checksum: {copy} has sha256 "
        f"{actual}, expected {SHIPPED_SHA256}. The file was modified or corrupted; "
        f"reinstall equilaw (pip install --force-reinstall --no-deps equilaw) or, "
        f"in a checkout, restore it with git checkout")


def test_missing_builtin_file_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(corpus_module, "_builtin_resource", lambda filename: tmp_path / filename)
    with pytest.raises(CorpusError, match=r"^built-in corpus 'python-docstrings': cannot read "
                                          r".*reinstall equilaw$"):
        load_corpus("python-docstrings")


def test_unknown_name_lists_builtin_corpora(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CorpusError) as info:
        load_corpus("python-docstringz")
    assert str(info.value) == ("unknown corpus 'python-docstringz': not a built-in corpus "
                               "(python-docstrings) and no such file or folder")
    assert isinstance(info.value, EquilawError)


def test_builtin_name_wins_over_a_file_of_that_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "python-docstrings").write_text("shadow", encoding="utf-8")
    assert load_corpus("python-docstrings").sha256 == SHIPPED_SHA256


def test_builtin_corpus_with_byte_tokens_has_the_expected_windows(builtin: Corpus) -> None:
    stream = tokenize_corpus(builtin, byte_encode)
    assert stream.dtype == np.int64
    assert stream.shape == (len(builtin.text.encode("utf-8")),)
    assert stream.size == 563_180
    assert count_windows(stream.size, 128, bos=True) == 563_180 // 127 == 4434
    assert count_windows(stream.size, 128, bos=False) == 563_180 // 128 == 4399
    windows = token_windows(stream, 128, 96, seed=0, bos_id=256)
    assert windows.shape == (96, 128)
    with pytest.raises(CorpusError, match=r"give 4434 non-overlapping windows of length 128"):
        token_windows(stream, 128, 4435, seed=0, bos_id=256)


# --------------------------------------------------------------------------- files

def test_txt_file_is_one_document(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    raw = "First paragraph.\n\nSecond paragraph\r\nstill second.\n\n"
    path.write_bytes(raw.encode("utf-8"))
    corpus = load_corpus(path)
    assert corpus.documents == ("First paragraph.\n\nSecond paragraph\nstill second.",)
    assert corpus.name == "notes.txt"
    assert corpus.sha256 == hashlib.sha256(raw.encode("utf-8")).hexdigest()
    assert corpus.source == str(path.resolve())
    assert corpus.text == corpus.documents[0]
    assert load_corpus(str(path)) == corpus


def test_jsonl_file_one_document_per_line(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "alpha", "id": 1}\n\n{"text": "beta\\n\\ngamma"}\n'
                    '{"text": "   "}\n', encoding="utf-8")
    corpus = load_corpus(path)
    assert corpus.documents == ("alpha", "beta\n\ngamma")
    assert corpus.text == "alpha\n\nbeta\n\ngamma"


@pytest.mark.parametrize(("line", "message"), [
    ('{"text": "ok"', "invalid JSON (Expecting ',' delimiter at column 14)"),
    ('["text"]', 'expected a JSON object with a string "text" field, got a JSON list'),
    ('{"body": "x"}', 'expected a JSON object with a string "text" field, '
                      'got an object without a string "text" field'),
    ('{"text": 3}', 'expected a JSON object with a string "text" field, '
                    'got an object without a string "text" field'),
])
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError) as info:
        load_corpus(path)
    assert str(info.value) == f"{path.resolve()}:3: {message}"


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"one\ntwo \xff\n")
    with pytest.raises(CorpusError) as info:
        load_corpus(path)
    assert str(info.value) == f"{path.resolve()}:2: not valid UTF-8 (byte offset 8)"


def test_empty_corpora_are_errors(tmp_path: Path) -> None:
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("\n\n", encoding="utf-8")
    with pytest.raises(CorpusError) as info:
        load_corpus(empty_jsonl)
    assert str(info.value) == f"{empty_jsonl.resolve()}: empty corpus: no documents with text"

    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "readme.md").write_text("ignored", encoding="utf-8")
    with pytest.raises(CorpusError) as info:
        load_corpus(folder)
    assert str(info.value) == (f"{folder.resolve()}: empty corpus: no .txt or .jsonl files "
                               f"in this folder")


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "doc.md"
    path.write_text("text", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"unsupported corpus file type '\.md'"):
        load_corpus(path)


def _make_folder(folder: Path) -> None:
    folder.mkdir()
    (folder / "b.txt").write_text("bravo\n", encoding="utf-8")
    (folder / "a.jsonl").write_text('{"text": "alpha"}\n{"text": "alpha two"}\n', encoding="utf-8")
    (folder / "c.txt").write_text("charlie", encoding="utf-8")
    (folder / "skip.md").write_text("not a corpus file", encoding="utf-8")
    (folder / "sub").mkdir()
    (folder / "sub" / "d.txt").write_text("not read: not recursive", encoding="utf-8")


def test_folder_loads_sorted_files_non_recursively(tmp_path: Path) -> None:
    folder = tmp_path / "probe"
    _make_folder(folder)
    corpus = load_corpus(folder)
    assert corpus.name == "probe"
    assert corpus.source == str(folder.resolve())
    assert corpus.documents == ("alpha", "alpha two", "bravo", "charlie")
    files = [(p.name, p.read_bytes()) for p in (folder / "a.jsonl", folder / "b.txt",
                                                  folder / "c.txt")]
    assert corpus.sha256 == folder_sha256(files)
    expected = hashlib.sha256()
    for name, data in files:
        expected.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    assert corpus.sha256 == expected.hexdigest()


def test_folder_hash_is_stable_and_sensitive(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    _make_folder(first)
    _make_folder(second)
    reference = load_corpus(first).sha256
    assert load_corpus(second).sha256 == reference  # location does not matter
    (second / "skip.md").write_text("changed, but not part of the corpus", encoding="utf-8")
    assert load_corpus(second).sha256 == reference
    (second / "c.txt").rename(second / "d.txt")  # same bytes, another name
    assert load_corpus(second).sha256 != reference
    (second / "d.txt").rename(second / "c.txt")
    (second / "c.txt").write_text("charlie!", encoding="utf-8")
    assert load_corpus(second).sha256 != reference


def test_corpus_repr_does_not_dump_documents(builtin: Corpus) -> None:
    assert repr(builtin) == ("Corpus(name='python-docstrings', "
                             f"sha256='{SHIPPED_SHA256}', source='builtin')")


# --------------------------------------------------------------------------- windows

STREAM = np.arange(1000, 2000, dtype=np.int64)  # 1000 distinct tokens: a window shows its origin


def test_windows_are_deterministic_for_a_seed() -> None:
    a = token_windows(STREAM, 16, 10, seed=3)
    b = token_windows(STREAM.tolist(), 16, 10, seed=3)
    assert a.dtype == np.int64 and a.shape == (10, 16)
    np.testing.assert_array_equal(a, b)


def test_windows_follow_the_documented_choice() -> None:
    windows = token_windows(STREAM, 16, 10, seed=3)
    chosen = np.sort(np.random.default_rng(3).choice(1000 // 16, 10, replace=False))
    np.testing.assert_array_equal(windows[:, 0], STREAM[chosen * 16])


def test_different_seeds_choose_different_windows() -> None:
    a = token_windows(STREAM, 16, 10, seed=0)
    b = token_windows(STREAM, 16, 10, seed=1)
    assert not np.array_equal(a, b)


def test_windows_are_consecutive_non_overlapping_chunks_in_ascending_order() -> None:
    windows = token_windows(STREAM, 16, 62, seed=7)  # 62 of the 62 candidates
    starts = windows[:, 0] - 1000
    assert np.all(starts % 16 == 0)  # aligned to the chunk grid from the stream start
    assert np.all(np.diff(starts) >= 16)  # ascending and non-overlapping
    np.testing.assert_array_equal(windows, STREAM[:992].reshape(62, 16))
    for row in windows:
        np.testing.assert_array_equal(np.diff(row), 1)  # consecutive stream tokens
    assert len(np.unique(windows)) == windows.size


def test_bos_counts_towards_length() -> None:
    windows = token_windows(STREAM, 16, 5, seed=0, bos_id=7)
    assert windows.shape == (5, 16)
    assert np.all(windows[:, 0] == 7)
    body = windows[:, 1:]  # 15 stream tokens per window
    assert np.all((body[:, 0] - 1000) % 15 == 0)
    for row in body:
        np.testing.assert_array_equal(np.diff(row), 1)
    assert not np.isin(7, body)
    chosen = np.sort(np.random.default_rng(0).choice(1000 // 15, 5, replace=False))
    np.testing.assert_array_equal(body[:, 0], STREAM[chosen * 15])


def test_bos_id_zero_is_a_real_bos() -> None:
    windows = token_windows(STREAM, 4, 2, seed=0, bos_id=0)
    assert np.all(windows[:, 0] == 0)


def test_count_windows() -> None:
    assert count_windows(1000, 16, bos=False) == 62
    assert count_windows(1000, 16, bos=True) == 66
    assert count_windows(15, 16, bos=True) == 1
    assert count_windows(15, 16, bos=False) == 0


def test_too_few_windows_message() -> None:
    with pytest.raises(CorpusError) as info:
        token_windows(STREAM, 128, 9, seed=0, corpus_name="python-docstrings")
    assert str(info.value) == (
        "corpus 'python-docstrings': too short: its 1000 tokens give 7 non-overlapping windows "
        "of length 128 (128 corpus tokens each), but 9 were asked for; lower probe.sequences "
        "or probe.length, or use a larger corpus")
    with pytest.raises(CorpusError) as info:
        token_windows(STREAM, 128, 8, seed=0, bos_id=1)
    assert str(info.value) == (
        "too short: its 1000 tokens give 7 non-overlapping windows of length 128 "
        "(127 corpus tokens after the BOS each), but 8 were asked for; lower probe.sequences "
        "or probe.length, or use a larger corpus")
    assert token_windows(STREAM, 128, 7, seed=0).shape == (7, 128)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"length": 1}, "window length must be an integer >= 2, got 1"),
    ({"length": 16.0}, "window length must be an integer >= 2, got 16.0"),
    ({"sequences": 0}, "number of windows must be an integer >= 1, got 0"),
    ({"seed": None}, "seed must be an integer, got None"),
    ({"stream": np.zeros((2, 50), dtype=np.int64)},
     "token stream must be a 1-D array of integer ids, got shape (2, 50) and dtype int64"),
    ({"stream": np.zeros(50)},
     "token stream must be a 1-D array of integer ids, got shape (50,) and dtype float64"),
])
def test_bad_window_arguments(kwargs: dict, message: str) -> None:
    args = {"stream": STREAM, "length": 16, "sequences": 2, "seed": 0} | kwargs
    with pytest.raises(CorpusError) as info:
        token_windows(**args)
    assert str(info.value) == message


def test_tokenize_corpus_is_one_stream_over_the_joined_text() -> None:
    corpus = Corpus(name="t", sha256="0" * 64, documents=("ab", "c"), source="memory")
    stream = tokenize_corpus(corpus, byte_encode)
    np.testing.assert_array_equal(stream, [97, 98, 10, 10, 99])
    with pytest.raises(CorpusError) as info:
        tokenize_corpus(corpus, lambda text: [])
    assert str(info.value) == "corpus 't': the tokenizer returned no tokens"


# --------------------------------------------------------------------------- documents

def test_sample_documents_is_the_references_shuffle() -> None:
    """The reference: numpy.random.seed(666); shuffle(arange(N)); the first k, in
    shuffled order.  The global state is left alone."""
    state = np.random.get_state()
    try:
        np.random.seed(666)
        sent_id_list = np.arange(1325)
        np.random.shuffle(sent_id_list)
        before = np.random.get_state()[1].copy()
        chosen = sample_documents(1325, 300, 666)
        assert np.array_equal(np.random.get_state()[1], before)
    finally:
        np.random.set_state(state)
    assert chosen.dtype == np.int64
    np.testing.assert_array_equal(chosen, sent_id_list[:300])
    assert not np.all(np.diff(chosen) > 0)  # sampling order, not sorted
    np.testing.assert_array_equal(sample_documents(1325, 1325, 666)[:300], chosen)
    assert not np.array_equal(sample_documents(1325, 300, 0), chosen)


@pytest.mark.parametrize(("args", "message"), [
    ((10, 11, 666), "corpus 'c': too small: it holds 10 documents, but 11 were asked for; "
                    "lower probe.sequences, or use a larger corpus"),
    ((10, 0, 666), "corpus 'c': number of sampled documents must be an integer >= 1, got 0"),
    ((10, 2, -1), "corpus 'c': seed must be an integer in [0, 2**32), got -1"),
    ((10, 2, 2**32), "corpus 'c': seed must be an integer in [0, 2**32), got 4294967296"),
    ((10, 2, True), "corpus 'c': seed must be an integer in [0, 2**32), got True"),
])
def test_bad_document_samples(args: tuple, message: str) -> None:
    with pytest.raises(CorpusError) as info:
        sample_documents(*args, corpus_name="c")
    assert str(info.value) == message
