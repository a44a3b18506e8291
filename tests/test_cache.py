"""audit.cache.stats_cache: a measurement kept on disk, on the tiny random Llama.  A second run
loads no weights and tokenizes nothing and gives the same report; a new threshold
is judged from the cache; every input of the key moves it; a damaged or foreign
entry is detected and recomputed; the plugin's options turn the cache off and
clear it, and ``-p no:cacheprovider`` keeps it."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from audit.cache.folder import CONVERTED, CacheError
from audit.cache.settings import CacheSettings, default_folder
from audit.cache.stats_cache import FORMAT, CacheWarning, StatsCache, StoredStats, open_cache
from audit.pipeline import measure, run
from audit.spec import spec_from_dict

PROBE = {"sequences": 8, "length": 16, "batch_size": 8, "shards": 2}
LOOSE = {"max_pearson_r": 1.0}
STRICT = {"max_pearson_r": -0.999}  # r > 0 at random init: fails


def small_spec(folder: Path | str, name: str = "tiny", **overrides):
    data = {"name": name, "model": {"path": str(folder)}, "probe": dict(PROBE), "law": LOOSE}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return spec_from_dict(data)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache on (the suite turns it off), in a folder of this test's own."""
    folder = tmp_path / "cache"
    monkeypatch.delenv("EQUILAW_NO_CACHE", raising=False)
    monkeypatch.setenv("EQUILAW_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the specs whose weights were loaded, or whose text was tokenized."""
    from audit.backends.hf_files import HuggingFaceFiles
    from audit.backends.torch_backend import TorchBackend

    seen: list[str] = []
    load, encode, encode_document = (TorchBackend.load, HuggingFaceFiles.encode,
                                     HuggingFaceFiles.encode_document)

    def counted(real):
        def wrapper(self, *args, **kwargs):
            seen.append(self.name)
            return real(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(TorchBackend, "load", counted(load))
    monkeypatch.setattr(HuggingFaceFiles, "encode", counted(encode))
    monkeypatch.setattr(HuggingFaceFiles, "encode_document", counted(encode_document))
    return seen


def as_json(report, timing: bool = True) -> str:
    data = report.to_dict()
    if not timing:  # a measurement made again takes another time
        data.pop("timing")
    return json.dumps(data, sort_keys=True)  # NaN == NaN as text


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []


# -- hits ----------------------------------------------------------------------------------

def test_second_run_loads_nothing_and_gives_the_same_report(
        tiny_model_dir: Path, cache_dir: Path, loads: list[str]) -> None:
    spec = small_spec(tiny_model_dir)
    first = run(spec)
    assert loads and len(entries(cache_dir)) == 1
    loads.clear()
    second = run(spec)
    assert loads == []  # no weights loaded, nothing tokenized
    assert as_json(second) == as_json(first)
    assert [r.pr for r in second.layers] == [r.pr for r in first.layers]
    assert [r.pr_se for r in second.layers] == [r.pr_se for r in first.layers]
    assert second.loss.mean == first.loss.mean and second.loss.stderr == first.loss.stderr
    assert second.verdict == first.verdict == "pass"
    assert (cache_dir / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172")


def test_a_new_threshold_is_judged_from_the_cache(
        tiny_model_dir: Path, loads: list[str]) -> None:
    loose = run(small_spec(tiny_model_dir))
    loads.clear()
    strict = run(small_spec(tiny_model_dir, name="renamed", law=STRICT))
    assert loads == []
    assert loose.verdict == "pass" and strict.verdict == "fail" and strict.name == "renamed"
    assert [r.pr for r in strict.layers] == [r.pr for r in loose.layers]


def test_the_stored_statistics_are_the_engines(tiny_model_dir: Path) -> None:
    spec = small_spec(tiny_model_dir)
    fresh = measure(spec)
    stored = measure(spec)
    assert type(stored.stats) is StoredStats
    assert stored.stats.count == fresh.stats.count  # read on first use
    for name, value in fresh.stats.to_arrays().items():
        np.testing.assert_array_equal(stored.stats.to_arrays()[name], value, err_msg=name)
    np.testing.assert_array_equal(stored.stats.residuals("token_id"), fresh.pr)


def test_off_in_memory_and_by_the_environment(
        tiny_model_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.synthetic.tiny import TINY_LAYERS, TINY_WIDTH, causal_lm, config

    spec = small_spec(tiny_model_dir)
    run(spec, cache=False)
    run(spec, model=causal_lm(config("llama", TINY_LAYERS, TINY_WIDTH), seed=0))
    monkeypatch.setenv("EQUILAW_NO_CACHE", "1")
    run(spec)
    assert entries(cache_dir) == []
    other = cache_dir.parent / "elsewhere"
    run(spec, cache=other)  # an explicit folder wins over the environment
    assert len(entries(other)) == 1 and open_cache(True) is None
    assert open_cache(CacheSettings(other, enabled=False)) is None
    assert open_cache(CacheSettings(other)).folder == other


def test_default_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EQUILAW_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_folder() == tmp_path / "xdg" / "equilaw"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_folder() == tmp_path / "home" / ".cache" / "equilaw"
    monkeypatch.setenv("EQUILAW_CACHE_DIR", str(tmp_path / "own"))
    assert default_folder() == tmp_path / "own"


# -- the key -------------------------------------------------------------------------------

def key_of(spec, cache: StatsCache) -> str:
    from audit.backends import open_backend

    return cache.key(spec, open_backend(spec))


def test_every_input_moves_the_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not read: only hashed")
    cache = StatsCache(tmp_path / "keys")
    base = key_of(small_spec(tiny_model_dir), cache)
    changes = {
        "probe.seed": {"probe": {"seed": 1}}, "probe.shards": {"probe": {"shards": 4}},
        "probe.sequences": {"probe": {"sequences": 10}}, "probe.length": {"probe": {"length": 20}},
        "probe.batch_size": {"probe": {"batch_size": 4}}, "probe.loss": {"probe": {"loss": False}},
        "probe.statistics": {"probe": {"statistics": "qr"}},
        "probe.mode": {"probe": {"mode": "documents"}},
        "probe.permutation": {"probe": {"permutation": "reference"}},
        "probe.corpus": {"probe": {"corpus": str(write_corpus(tmp_path))}},
        "measure": {"measure": "shuffled_token_id"}, "normalization": {"normalization": "none"},
        "target": {"target": "current"},
        "model.dtype": {"model": {"path": str(tiny_model_dir), "dtype": "bfloat16"}},
        "model.device": {"model": {"path": str(tiny_model_dir), "device": "auto"}},
        "model.trust_remote_code": {"model": {"path": str(tiny_model_dir),
                                              "trust_remote_code": True}},
        "model.norm": {"model": {"path": str(tiny_model_dir),
                                 "norm": {"kind": "rms", "eps": 1e-6}}},
        "model.modules": {"model": {"path": str(tiny_model_dir),
                                    "modules": {"blocks": "model.layers",
                                                "final_norm": "model.norm"}}},
        "backend": {"backend": "onnx", "model": {"path": str(tiny_model_dir),
                                                 "onnx": str(onnx_file)}},
        "onnx options": {"backend": "onnx", "model": {"path": str(tiny_model_dir),
                                                      "onnx": str(onnx_file)},
                         "onnx": {"graph_optimization": "basic"}},
    }
    keys = {what: key_of(small_spec(tiny_model_dir, **change), cache)
            for what, change in changes.items()}
    assert base not in keys.values()
    assert len(set(keys.values())) == len(keys), keys
    # what does not change the measurement does not change the key
    assert key_of(small_spec(tiny_model_dir, name="other", law=STRICT,
                             baseline={"max_drift": 0.1}), cache) == base


def write_corpus(folder: Path) -> Path:
    path = folder / "corpus.txt"
    path.write_text("def f():\n    return 1\n" * 50)
    return path


def test_the_files_bytes_move_the_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    from audit.backends import open_backend
    from audit.internal.files import sha256_files

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    cache = StatsCache(tmp_path / "keys")
    spec = small_spec(model)
    base = key_of(spec, cache)
    backend = open_backend(spec)
    # the key hashes the files weights_sha256 hashes
    assert sha256_files(list(backend.model_files().weights)) == backend.weights_sha256()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"):
        path = model / name
        original = path.read_bytes()
        changed = bytearray(original)
        if path.suffix == ".json":
            changed += b" "  # still valid JSON
        else:
            changed[-2] ^= 1  # same size, one bit of a tensor
        path.write_bytes(bytes(changed))
        assert key_of(spec, cache) != base, name
        path.write_bytes(original)
        assert key_of(spec, cache) == base, name


def test_a_changed_weights_file_is_measured_again(
        tiny_model_dir: Path, tmp_path: Path, loads: list[str]) -> None:
    from safetensors.numpy import load_file, save_file

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    spec = small_spec(model)
    before = run(spec)
    tensors = load_file(model / "model.safetensors")
    name = next(k for k in tensors if "layers.1.mlp.down_proj" in k)
    tensors[name] = tensors[name] * 8
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    loads.clear()
    after = run(spec)
    assert loads and after.layers[1].pr == before.layers[1].pr
    assert after.layers[-1].pr != before.layers[-1].pr


def test_the_index_remembers_settled_files_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.cache.index as cache_module

    hashed: list[str] = []
    real = cache_module.sha256_files
    monkeypatch.setattr(cache_module, "sha256_files",
                        lambda paths: hashed.extend(p.name for p in paths) or real(paths))
    cache = StatsCache(tmp_path / "cache")
    big = tmp_path / "weights.gguf"
    big.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    fresh = cache.file_sha256(big)  # just written: its timestamp may not move again
    assert not (cache.folder / "index.json").exists()
    old = time.time_ns() - 3_600 * 10**9
    os.utime(big, ns=(old, old))
    assert cache.file_sha256(big) == fresh and hashed == ["weights.gguf"] * 2
    assert cache.file_sha256(big) == fresh and len(hashed) == 2  # from the index
    assert StatsCache(cache.folder).file_sha256(big) == fresh and len(hashed) == 2
    data = bytearray(big.read_bytes())
    data[12345] ^= 0xFF
    big.write_bytes(bytes(data))
    os.utime(big, ns=(old, old))  # same size, same mtime: ctime and inode still tell
    assert cache.file_sha256(big) != fresh and len(hashed) == 3


# -- damaged entries -----------------------------------------------------------------------

def rewrite(path: Path, change) -> None:
    """Rewrite an entry as a valid zip with ``change(arrays)`` applied."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    change(arrays)
    np.savez(path, **arrays)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_meta_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(f'"format": {FORMAT}'.encode())
    data[at + 10] = ord("7")
    path.write_bytes(bytes(data))


def change_pr(arrays: dict) -> None:
    arrays["result.pr"] = arrays["result.pr"] * 1.01


def new_format(arrays: dict) -> None:
    from audit.cache.stats_cache import _digest

    meta = json.loads(arrays["meta"].tobytes())
    meta["format"] = 99
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    results = {name: value for name, value in arrays.items() if name.startswith("result.")}
    arrays["checksum"] = np.frombuffer(_digest(arrays["meta"].tobytes(), results).encode(),
                                       dtype=np.uint8)


@pytest.mark.parametrize("damage", [
    truncate, flip_meta_byte, lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(b"PK\x03\x04junk"),
    lambda p: rewrite(p, change_pr), lambda p: rewrite(p, new_format),
    lambda p: rewrite(p, lambda a: a.pop("checksum")),
], ids=["truncated", "flipped-byte", "empty", "not-a-zip", "tampered-result", "other-format",
        "no-checksum"])
def test_a_damaged_entry_is_recomputed(
        tiny_model_dir: Path, cache_dir: Path, loads: list[str], damage) -> None:
    spec = small_spec(tiny_model_dir)
    first = run(spec)
    [entry] = entries(cache_dir)
    damage(entry)
    loads.clear()
    with pytest.warns(CacheWarning, match=f"statistics cache entry {entry} is unreadable"):
        again = run(spec)
    assert loads and as_json(again, timing=False) == as_json(first, timing=False)
    loads.clear()
    assert as_json(run(spec)) == as_json(again) and loads == []  # rewritten, whole


def test_an_entry_of_another_key_is_not_trusted(
        tiny_model_dir: Path, cache_dir: Path, loads: list[str]) -> None:
    a, b = small_spec(tiny_model_dir), small_spec(tiny_model_dir, probe={"seed": 1})
    report_b = run(b)
    [entry_b] = entries(cache_dir)
    key_a = key_of(a, StatsCache(cache_dir))
    shutil.copyfile(entry_b, cache_dir / f"{key_a}.npz")
    loads.clear()
    with pytest.warns(CacheWarning, match="it holds the entry of key"):
        report_a = run(a)
    assert loads and report_a.probe["windows_sha256"] != report_b.probe["windows_sha256"]


def test_damaged_statistics_fail_when_read(tiny_model_dir: Path, cache_dir: Path) -> None:
    spec = small_spec(tiny_model_dir)
    run(spec)
    [entry] = entries(cache_dir)
    rewrite(entry, lambda a: a.__setitem__("stats.sx", a["stats.sx"] + 1.0))
    got = measure(spec)  # the report's numbers are whole: their checksum holds
    with pytest.raises(CacheError, match="its statistics arrays fail their checksum; the entry "
                                         "is deleted: run again to recompute it"):
        got.stats.count
    assert not entry.exists()


# -- the folder ----------------------------------------------------------------------------

def test_clear_deletes_only_its_own_files(tiny_model_dir: Path, cache_dir: Path) -> None:
    """Entries, the index, temporaries and converted checkpoints go, the tag stays;
    anything else refuses the clear (tests/test_hostile_inputs.py has those cases)."""
    from audit.cache.converted import ConvertedCheckpoint

    run(small_spec(tiny_model_dir))
    (cache_dir / "index.json").write_text("{}")
    (cache_dir / ".tmp-abc.npz").write_bytes(b"half")
    entry = ConvertedCheckpoint("0" * 64, cache_dir)
    entry.store("model", lambda folder: (folder / "config.json").write_text("{}"))
    (entry.folder / ".tmp-tokenizer-x").mkdir()  # an interrupted store's staging folder
    (entry.folder / ".tmp-tokenizer-x" / "tokenizer.json").write_text("{")
    assert StatsCache(cache_dir).clear() == 4
    assert sorted(p.name for p in cache_dir.iterdir()) == ["CACHEDIR.TAG"]
    # a folder of converted checkpoints only (no tag yet) is equilaw's too
    (cache_dir / "CACHEDIR.TAG").unlink()
    (cache_dir / CONVERTED).mkdir()
    assert StatsCache(cache_dir).clear() == 1 and list(cache_dir.iterdir()) == []
    assert StatsCache(cache_dir.parent / "absent").clear() == 0


# -- the plugin ----------------------------------------------------------------------------

from test_plugin import LOAD_COUNTER  # noqa: E402  (the plugin tests' load counter)


@pytest.mark.slow
def test_plugin_reads_turns_off_and_clears_the_cache(
        pytester: pytest.Pytester, tiny_model_dir: Path, cache_dir: Path) -> None:
    """Inner runs without pytest's cacheprovider: the cache (from EQUILAW_CACHE_DIR)
    survives between them; --audit-no-cache and --audit-clear-cache."""
    import audit.plugin

    items = str(Path(audit.plugin.__file__).with_name("test_models.py"))
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(loadcount=LOAD_COUNTER)

    def inner(law: dict, *args: str) -> tuple[pytest.RunResult, list[str]]:
        spec = pytester.path / "tiny-a.yaml"
        spec.write_text(f"name: tiny-a\nmodel:\n  path: {tiny_model_dir}\n"
                        f"probe: {json.dumps(PROBE)}\nlaw: {json.dumps(law)}\n")
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "loadcount",
                                               "--audit-spec", str(spec), *args, items)
        counted = pytester.path / "loads.json"
        loaded = json.loads(counted.read_text()) if counted.exists() else None
        if counted.exists():
            counted.unlink()
        return result, loaded

    result, loaded = inner(LOOSE)
    assert result.ret == 0 and loaded == ["tiny-a"]
    result.stdout.fnmatch_lines([f"statistics cache {cache_dir}: 0 loaded, 1 stored"])
    result, loaded = inner(STRICT)  # new thresholds: judged from the cache
    assert result.ret == pytest.ExitCode.TESTS_FAILED and loaded == []
    result.stdout.fnmatch_lines([f"statistics cache {cache_dir}: 1 loaded, 0 stored"])
    result, loaded = inner(LOOSE, "--audit-no-cache")
    assert result.ret == 0 and loaded == ["tiny-a"]
    assert "statistics cache" not in result.stdout.str()
    result, loaded = inner(LOOSE, "--audit-clear-cache")
    assert result.ret == 0 and loaded == ["tiny-a"]
    result.stdout.fnmatch_lines([f"statistics cache {cache_dir}: 0 loaded, 1 stored, "
                                 f"1 files cleared first"])
    foreign = pytester.path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    result, _ = inner(LOOSE, "--audit-clear-cache", "--audit-cache", str(foreign))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*refusing to clear {foreign}: it holds what equilaw did "
                                 f"not write (keep.txt); nothing was deleted*"])
    assert (foreign / "keep.txt").exists()


def test_spilled_statistics_are_not_stored(tmp_path: Path) -> None:
    """Statistics too large for memory (spilled to disk) would have to be built in
    memory to be written: the measurement is returned uncached, with a warning."""
    import dataclasses

    from audit.stats.layer_stats import LayerStats

    rng = np.random.default_rng(0)
    stats = LayerStats(shards=2, storage="spill", spill_dir=tmp_path)
    stats.update(rng.normal(size=(2, 30, 4)).astype(np.float32), rng.integers(0, 5, 30), shard=0)
    fake = dataclasses.make_dataclass("M", [("stats", object)])(stats)
    store = StatsCache(tmp_path / "cache")
    with pytest.warns(CacheWarning, match="spilled to disk"):
        assert store.store("ab" * 32, fake) is None
    assert entries(tmp_path / "cache") == []
    stats.close()


def test_a_gguf_weights_hash_is_remembered_while_the_caches_are_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend's weights hash of a GGUF file goes through the cache folder's
    index: a second start reads no weight byte; with the caches off it hashes."""
    import audit.cache.index as cache_module
    from audit.backends.hf_files import HuggingFaceFiles
    from audit.internal.files import sha256_files
    from audit.spec import ModelSpec

    hashed: list[str] = []
    real = cache_module.sha256_files
    monkeypatch.setattr(cache_module, "sha256_files",
                        lambda paths: hashed.extend(p.name for p in paths) or real(paths))
    big = tmp_path / "weights.gguf"
    big.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    old = time.time_ns() - 3_600 * 10**9
    os.utime(big, ns=(old, old))
    monkeypatch.setenv("EQUILAW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EQUILAW_NO_CACHE", "0")

    def digest() -> str:
        return HuggingFaceFiles(ModelSpec(path=str(big)), "w").weights_sha256()

    assert digest() == digest() == sha256_files([big]) and hashed == ["weights.gguf"]
    assert str(big.resolve()) in (tmp_path / "cache" / "index.json").read_text()
    monkeypatch.setenv("EQUILAW_NO_CACHE", "1")
    assert digest() == sha256_files([big]) and hashed == ["weights.gguf"]  # not via the index
