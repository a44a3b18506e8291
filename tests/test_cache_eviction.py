"""audit.cache.eviction: the cache folder's size cap.  A run under a cap small
enough to evict gives the reports of an uncapped run, and leaves the folder under
the cap; eviction goes by last use, spares what the run uses until its end, removes
only what equilaw provably wrote (never a foreign file, never through a link), and
a statistics entry evicted while read stays readable; 0 turns the caches off."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from audit.cache import eviction
from audit.cache.converted import ConvertedCheckpoint
from audit.cache.folder import CONVERTED, CacheError, owned_entries
from audit.cache.settings import CacheSettings
from audit.cache.stats_cache import StatsCache, StoredStats, open_cache
from audit.pipeline import measure, run
from audit.spec import spec_from_dict

LOOSE = {"max_pearson_r": 1.0}
KEY = "ab" * 32


def tiny_spec(model: Path, sequences: int):
    return spec_from_dict({"name": f"tiny-{sequences}", "model": {"path": str(model)},
                           "probe": {"sequences": sequences, "length": 16, "batch_size": 8,
                                     "shards": 2}, "law": LOOSE})


def as_json(report) -> str:
    data = report.to_dict()
    data.pop("timing")   # a measurement made again takes another time
    return json.dumps(data, sort_keys=True)


def folder_bytes(folder: Path) -> int:
    """Every byte under ``folder``, counted independently of the module."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if not p.is_dir())


def fake_entry(folder: Path, name: str, size: int, used_s: int) -> Path:
    """A statistics entry's name and shape (what proves ownership), used at ``used_s``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name * 64}.npz"
    path.write_bytes(b"x" * size)
    os.utime(path, ns=(used_s * 10**9, used_s * 10**9))
    return path


# -- verdicts ------------------------------------------------------------------------------

def test_a_capped_run_gives_the_uncapped_reports_and_ends_under_the_cap(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """Entries of the tiny model are about 98 kB: a cap of 150 kB holds one, so
    each run's end evicts, and the next run measures the evicted spec again."""
    a, b = tiny_spec(tiny_model_dir, 8), tiny_spec(tiny_model_dir, 12)
    free = StatsCache(tmp_path / "free", max_gb=math.inf)
    capped = StatsCache(tmp_path / "capped", max_gb=150e3 / 1e9)
    reports = {}
    for store in (free, capped):
        got = [run(a, cache=store), run(b, cache=store)]
        store.finish()
        got += [run(a, cache=store), run(b, cache=store)]
        store.finish()
        reports[store] = [as_json(r) for r in got]
    assert reports[capped] == reports[free]
    assert [json.loads(r)["verdict"] for r in reports[free]] == ["pass"] * 4
    assert len(free.stored) == 2 and len(free.hits) == 2 and free.evicted == []
    # a stored, b stored, a evicted at the end; a measured again, b a hit; a evicted
    assert [p.name for p in capped.stored] == [p.name for p in free.stored] + [
        free.stored[0].name]
    assert [p.name for p in capped.hits] == [free.stored[1].name]
    assert [p.name for p in capped.evicted] == [free.stored[0].name, free.stored[0].name]
    size = eviction.cache_bytes(capped.folder)
    assert 90e3 < size == folder_bytes(capped.folder) <= 150e3
    assert [p.name for p in owned_entries(capped.folder)] == [free.stored[1].name]


def test_an_entry_evicted_while_read_stays_readable(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Another run may evict an entry this one has opened: the open file keeps
    its bytes; one evicted before it is opened is a miss, measured again."""
    spec = tiny_spec(tiny_model_dir, 8)
    store = StatsCache(tmp_path / "cache")
    fresh = measure(spec, cache=store)
    stored = measure(spec, cache=store)
    assert type(stored.stats) is StoredStats
    assert eviction.enforce(store.folder, 1e-9, protect=()) == store.hits   # "another run"
    assert not store.hits[0].exists()
    for name, value in fresh.stats.to_arrays().items():
        np.testing.assert_array_equal(stored.stats.to_arrays()[name], value, err_msg=name)
    again = measure(spec, cache=store)
    assert len(store.stored) == 2 and len(store.hits) == 1
    np.testing.assert_array_equal(again.pr, fresh.pr)


# -- last use, protection ------------------------------------------------------------------

def test_the_least_recently_used_go_first(tmp_path: Path) -> None:
    old, middle, new = (fake_entry(tmp_path, c, 1000, t) for c, t in
                        (("a", 1_000), ("b", 2_000), ("c", 3_000)))
    eviction.record_use(old)   # read now: the most recent
    assert old.stat().st_mtime_ns > new.stat().st_mtime_ns
    assert eviction.cache_bytes(tmp_path) == 3000
    assert eviction.enforce(tmp_path, 2000 / 1e9, protect=()) == [middle]
    assert eviction.enforce(tmp_path, 2000 / 1e9, protect=()) == []   # already under
    assert eviction.enforce(tmp_path, 999 / 1e9, protect=()) == [new, old]
    assert eviction.enforce(tmp_path, math.inf, protect=()) == []


def test_entries_in_use_are_spared_until_the_run_ends(tmp_path: Path) -> None:
    """A write evicts beyond the cap but spares what this process has read or
    written; the end of the run (:meth:`StatsCache.finish`) does not."""
    store = StatsCache(tmp_path, max_gb=1500 / 1e9)
    older = fake_entry(tmp_path, "d", 1000, 1_000)
    used = fake_entry(tmp_path, "e", 1000, 2_000)
    eviction.record_use(used)
    assert str(used) in eviction.in_use() and str(older) not in eviction.in_use()
    eviction.record_use(older)
    for path, seconds in ((older, 1_000), (used, 2_000)):   # their order, not now's jiffy
        os.utime(path, ns=(seconds * 10**9, seconds * 10**9))
    newest = fake_entry(tmp_path, "f", 1000, 3_000)
    assert eviction.enforce(tmp_path, store.max_gb) == [newest]   # the only one not in use
    assert eviction.cache_bytes(tmp_path) == 2000   # over the cap while the run goes on
    assert store.finish() == [older] and store.evicted == [older]
    assert owned_entries(tmp_path) == [used]


def test_a_concurrent_use_spares_the_entry(tmp_path: Path, monkeypatch) -> None:
    """An entry whose time moved after the survey (another run just read it) stays;
    the next oldest goes in its place."""
    old = fake_entry(tmp_path, "a", 1000, 1_000)
    other = fake_entry(tmp_path, "b", 1000, 2_000)
    size = eviction.entry_size

    def touched_meanwhile(path):
        if path == old:
            os.utime(old)   # after the survey read its time
        return size(path)

    monkeypatch.setattr(eviction, "entry_size", touched_meanwhile)
    assert eviction.enforce(tmp_path, 1500 / 1e9, protect=()) == [other]
    assert old.exists()


# -- ownership -----------------------------------------------------------------------------

def test_only_what_equilaw_wrote_is_evicted(tmp_path: Path) -> None:
    """Foreign files, links (to files outside or inside), folders with an entry's
    name and converted parts holding an unlisted file all stay, under a cap of one
    byte; equilaw's entries and converted parts go, with their emptied key folder."""
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious.npz"
    target.write_bytes(b"p" * 5000)
    ours = fake_entry(cache, "a", 1000, 1_000)
    (cache / "notes.txt").write_text("mine")
    (cache / f"{'b' * 64}.npz").symlink_to(target)
    (cache / f"{'c' * 64}.npz").mkdir()
    (cache / f"{'c' * 64}.npz" / "inside.bin").write_bytes(b"i")
    (cache / f"{'d' * 64}.npz").symlink_to(ours)
    converted = ConvertedCheckpoint("1" * 64, cache, max_gb=math.inf)
    converted.store("model", lambda f: (f / "config.json").write_text("{}"))
    converted.store("tokenizer", lambda f: (f / "tokenizer.json").write_text("{}"))
    tampered = ConvertedCheckpoint("2" * 64, cache, max_gb=math.inf)
    tampered.store("model", lambda f: (f / "config.json").write_text("{}"))
    (tampered.folder / "model" / "extra.bin").write_bytes(b"e")   # not in its manifest
    linked = cache / CONVERTED / ("3" * 64)
    linked.mkdir()
    (linked / "model").symlink_to(outside, target_is_directory=True)
    assert owned_entries(cache) == [ours, converted.folder / "model",
                                    converted.folder / "tokenizer"]

    removed = eviction.enforce(cache, 1e-9, protect=())
    assert removed[0] == ours and sorted(removed[1:]) == [converted.folder / "model",
                                                          converted.folder / "tokenizer"]
    assert not converted.folder.exists()   # its key folder went with its last part
    assert target.read_bytes() == b"p" * 5000 and (cache / "notes.txt").read_text() == "mine"
    assert (cache / f"{'b' * 64}.npz").is_symlink()
    assert (cache / f"{'c' * 64}.npz" / "inside.bin").exists()
    assert (tampered.folder / "model" / "extra.bin").exists() and (linked / "model").is_symlink()
    assert owned_entries(cache) == []


def test_a_cache_folder_reached_through_a_link_is_capped(tmp_path: Path) -> None:
    """The folder the user names may be a link (``~/.cache`` on another disk)."""
    real = tmp_path / "real"
    old = fake_entry(real, "a", 1000, 1_000)
    new = fake_entry(real, "b", 1000, 2_000)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    assert eviction.enforce(tmp_path / "link", 1500 / 1e9, protect=()) == [
        tmp_path / "link" / old.name]
    assert not old.exists() and new.exists()


def test_a_converted_write_evicts_beyond_the_cap(tmp_path: Path) -> None:
    """Converted checkpoints count toward the cap, and their writes evict too."""
    old = fake_entry(tmp_path, "a", 5000, 1_000)
    part = ConvertedCheckpoint("4" * 64, tmp_path, max_gb=3000 / 1e9)
    stored = part.store("model", lambda f: (f / "config.json").write_text("{}"))
    assert stored == part.folder / "model" and not old.exists()
    assert part.path("model") == stored
    assert 0 < eviction.cache_bytes(tmp_path) <= 3000


# -- the setting ---------------------------------------------------------------------------

def test_the_cap_setting(tmp_path: Path, tiny_model_dir: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EQUILAW_NO_CACHE", raising=False)
    monkeypatch.setenv("EQUILAW_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.delenv("EQUILAW_CACHE_MAX_GB", raising=False)
    assert CacheSettings.from_environment().max_gb == eviction.DEFAULT_MAX_GB == 5.0
    assert StatsCache(tmp_path).max_gb == 5.0
    monkeypatch.setenv("EQUILAW_CACHE_MAX_GB", "0.5")
    assert open_cache(True).max_gb == 0.5
    monkeypatch.setenv("EQUILAW_CACHE_MAX_GB", "inf")
    assert open_cache(True).max_gb == math.inf
    # 0 keeps nothing: the caches are off, nothing is written
    monkeypatch.setenv("EQUILAW_CACHE_MAX_GB", "0")
    assert CacheSettings.from_environment().enabled is False and open_cache(True) is None
    assert CacheSettings(tmp_path, max_gb=0) == CacheSettings(tmp_path, enabled=False, max_gb=0)
    run(tiny_spec(tiny_model_dir, 8))
    assert not (tmp_path / "env").exists()
    for bad in ("-1", "lots", "nan"):
        monkeypatch.setenv("EQUILAW_CACHE_MAX_GB", bad)
        with pytest.raises(CacheError, match=rf"^EQUILAW_CACHE_MAX_GB='{bad}': the cache's "
                                             rf"size cap must be a number of GB >= 0 \(0 turns "
                                             rf"the caches off, inf sets no cap\)$"):
            CacheSettings.from_environment()
    with pytest.raises(CacheError, match=r"must be >= 0 GB, got -2"):
        CacheSettings(tmp_path, max_gb=-2)


def test_the_plugin_option_is_checked(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naudit_cache_max_gb = 3\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                           "--audit-cache-max-gb", "-5", "--co")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--audit-cache-max-gb='-5': the cache's size cap must be a "
                                 "number of GB >= 0 (0 turns the caches off, inf sets no cap)*"])


@pytest.mark.slow
def test_a_pytest_run_under_a_small_cap(pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    """Inner pytest runs of two specs: under a 150 kB cap (one entry) the session's
    end evicts the older; in the next run the first spec's write evicts the other
    spec's entry (not yet used by this run, so the least recently used), and both
    are measured again.  The outcomes and reports are those of an uncapped run, and
    the folder ends under the cap."""
    import audit.plugin

    items = str(Path(audit.plugin.__file__).with_name("test_models.py"))
    pytester.makeini("[pytest]\n")
    specs = []
    for sequences in (8, 12):
        spec = tiny_spec(tiny_model_dir, sequences)
        path = pytester.path / f"{spec.name}.yaml"
        path.write_text(f"name: {spec.name}\nmodel:\n  path: {tiny_model_dir}\nprobe: "
                        f"{{sequences: {sequences}, length: 16, batch_size: 8, shards: 2}}\n"
                        f"law: {json.dumps(LOOSE)}\n")
        specs += ["--audit-spec", str(path)]

    def inner(cache: str, reports: str, *args: str) -> tuple[list[str], dict[str, str]]:
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-rA", "--audit-cache", cache, "--audit-reports", reports,
            *specs, *args, items)
        assert result.ret == 0
        outcomes = sorted(line for line in result.outlines if line.startswith("PASSED "))
        got = {}
        for path in sorted((pytester.path / reports).glob("*.json")):
            data = json.loads(path.read_text())
            data.pop("timing")
            got[path.name] = json.dumps(data, sort_keys=True)
        return outcomes + [line for line in result.outlines
                           if line.startswith("statistics cache")], got

    free_lines, free = inner("free", "free-reports")
    assert len(free) == 2 and free_lines[-1].endswith(": 0 loaded, 2 stored")
    for round_, summary in enumerate((": 0 loaded, 2 stored, 1 evicted (size cap 0.00015 GB)",
                                      ": 0 loaded, 2 stored, 2 evicted (size cap 0.00015 GB)")):
        lines, reports = inner("capped", f"capped-{round_}", "--audit-cache-max-gb", "0.00015")
        assert lines[:-1] == free_lines[:-1] and reports == free
        assert lines[-1].endswith(summary)
        folder = pytester.path / "capped"
        assert 90e3 < eviction.cache_bytes(folder) == folder_bytes(folder) <= 150e3


def test_the_command_line_enforces_the_cap_at_exit(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m audit``'s exit brings the environment's folder under its cap,
    this run's entries included, once the run has used the caches."""
    from audit import cli

    monkeypatch.setenv("EQUILAW_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("EQUILAW_NO_CACHE", raising=False)
    monkeypatch.setenv("EQUILAW_CACHE_MAX_GB", str(1500 / 1e9))
    old, mine = fake_entry(tmp_path, "a", 1000, 1_000), fake_entry(tmp_path, "b", 1000, 2_000)
    eviction.record_use(mine)
    cli._cap_cache()
    assert owned_entries(tmp_path) == [mine] and not old.exists()
    monkeypatch.setenv("EQUILAW_CACHE_MAX_GB", str(500 / 1e9))
    # any verb, here one that fails: its exit enforces the cap
    assert cli.main(["report", str(tmp_path / "absent.json"), "-o", str(tmp_path / "r.html")]) == 2
    assert owned_entries(tmp_path) == []
