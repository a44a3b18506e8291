"""The converted-checkpoint cache (audit/cache/converted.py): GGUF weights and
tokenizers loaded once, read back as safetensors and tokenizer files, identical,
and never trusted when damaged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from audit.cache import converted
from audit.cache.converted import ConvertedCheckpoint, entry_key
from audit.cache.settings import CacheSettings


def _write(files: dict[str, bytes]):
    def save(folder: Path) -> None:
        for name, data in files.items():
            (folder / name).write_bytes(data)
    return save


def test_an_entry_is_found_only_once_complete_and_intact(tmp_path: Path) -> None:
    entry = ConvertedCheckpoint(entry_key("ab" * 32, "float32"), tmp_path)
    assert entry.path("model") is None
    folder = entry.store("model", _write({"config.json": b"{}", "model.safetensors": b"x" * 10}))
    assert folder == entry.path("model") == entry.folder / "model"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "manifest.json",
                                                        "model.safetensors"]
    assert [p.name for p in entry.folder.iterdir()] == ["model"]  # no staging left behind
    (folder / "model.safetensors").write_bytes(b"x" * 5)          # truncated
    with pytest.warns(converted.CacheWarning, match="model.safetensors has 5 bytes, its "
                                                    "manifest says 10"):
        assert entry.path("model") is None
    assert not folder.exists()                                    # removed, not trusted


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    entry = ConvertedCheckpoint(entry_key("cd" * 32, "float32"), tmp_path)

    def fail(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    assert entry.store("model", fail) is None
    assert entry.path("model") is None and list(entry.folder.iterdir()) == []


def test_the_key_names_file_dtype_and_libraries() -> None:
    keys = {entry_key("ab" * 32, "float32"), entry_key("ab" * 32, "bfloat16"),
            entry_key("cd" * 32, "float32")}
    assert len(keys) == 3 and all(len(k) == 64 for k in keys)


def test_the_settings_switch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The environment is read into settings once; the entry follows the settings."""
    monkeypatch.setenv("EQUILAW_NO_CACHE", "1")
    monkeypatch.setenv("EQUILAW_CACHE_DIR", str(tmp_path))
    off = CacheSettings.from_environment()
    assert off == CacheSettings(tmp_path, enabled=False)
    assert converted.entry(off, "ab" * 32, "float32") is None
    monkeypatch.setenv("EQUILAW_NO_CACHE", "0")
    on = CacheSettings.from_environment()
    assert converted.entry(on, "ab" * 32, "float32").folder == (
        tmp_path / "checkpoints" / entry_key("ab" * 32, "float32"))
    monkeypatch.setenv("EQUILAW_NO_CACHE", "1")   # settings already made do not change
    assert converted.entry(on, "ab" * 32, "float32") is not None


@pytest.mark.slow
def test_smollm2_loads_identically_from_the_cache(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The first load of the GGUF file writes the dequantised weights and the built
    tokenizer; the second reads them back: same tokens, same vocabulary record,
    bit-identical hidden states and loss; a damaged entry is rebuilt."""
    pytest.importorskip("torch")
    from safetensors import safe_open

    from audit.backends.hf_files import StoredTokenizer
    from audit.backends.torch_backend import TorchBackend
    from audit.corpus import load_corpus
    from audit.probe import probe_input
    from audit.spec import load_spec
    from conftest import model_or_skip

    spec = load_spec(Path(__file__).parent.parent / "model_specs" / "smollm2-135m.yaml")
    model_or_skip(spec.model.path)
    monkeypatch.setenv("EQUILAW_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("EQUILAW_NO_CACHE", "0")
    text = "def mean(values):\n    return sum(values) / len(values)\n"
    corpus = load_corpus(spec.probe.corpus)

    def measure():
        backend = TorchBackend(spec.model, spec.name)
        ids = np.array([[backend.bos_token_id, *backend.encode(text)]])
        out = backend.forward(ids, loss=True)
        return backend, ids, out

    cold, ids, first = measure()
    assert sorted(p.name for p in tmp_path.glob("checkpoints/*/*")) == ["model", "tokenizer"]
    warm, ids_again, second = measure()
    np.testing.assert_array_equal(ids_again, ids)
    assert warm.tokenizer_info() == cold.tokenizer_info()
    assert isinstance(warm.tokenizer, StoredTokenizer)
    for mode in ("windows", "documents"):  # the probe's token sequences, bit for bit
        probe = dataclasses.replace(spec.probe, mode=mode, sequences=40)
        both = [probe_input(dataclasses.replace(spec, probe=probe), corpus, b).sha256
                for b in (cold, warm)]
        assert both[0] == both[1], mode
    assert "lm_head.weight" not in safe_open(
        str(next(tmp_path.glob("checkpoints/*/model/model.safetensors"))), "pt").keys()
    np.testing.assert_array_equal(second.hidden, first.hidden)
    np.testing.assert_array_equal(second.token_nll, first.token_nll)
    weights = next(tmp_path.glob("checkpoints/*/model/model.safetensors"))
    with open(weights, "r+b") as f:
        f.truncate(1000)
    rebuilt, _, third = measure()
    np.testing.assert_array_equal(third.hidden, first.hidden)
    assert weights.stat().st_size > 1000   # written again from the GGUF file
    tokenizer = next(tmp_path.glob("checkpoints/*/tokenizer/tokenizer.json"))
    tokenizer.write_bytes(b"{" * tokenizer.stat().st_size)  # right size, unreadable
    again = TorchBackend(spec.model, spec.name)
    assert again.tokenizer_info() == cold.tokenizer_info()
    assert not isinstance(again.tokenizer, StoredTokenizer)  # rebuilt from the GGUF file
    assert isinstance(TorchBackend(spec.model, spec.name).tokenizer, StoredTokenizer)
