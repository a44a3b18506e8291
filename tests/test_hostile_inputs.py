"""Hostile and unlucky inputs (issue 29), each reproduced on generated files: the
exact message, and that nothing changed on disk (the folders' checksums before and
after) where equilaw must not write or delete."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from audit.cache.folder import CacheError, clear_folder
from audit.cache.stats_cache import StatsCache
from audit.session import BaselineStatus


def tree_sha256(folder: Path) -> str:
    """sha256 of a folder: every path under it (sorted), its kind, and a file's
    bytes or a link's target (links are not followed)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        if path.is_symlink():
            digest.update(b"link:" + os.readlink(path).encode())
        elif path.is_dir():
            digest.update(b"dir")
        else:
            digest.update(b"file:" + path.read_bytes())
    return digest.hexdigest()


def refusal(folder: Path, names: str) -> str:
    return (f"refusing to clear {folder}: it holds what equilaw did not write ({names}); "
            f"nothing was deleted: move those out, or point --audit-cache or "
            f"EQUILAW_CACHE_DIR at equilaw's own cache folder")


# -- 1. --audit-clear-cache deletes only what equilaw provably wrote -----------------------

def test_a_users_own_checkpoints_folder_is_never_cleared(tmp_path: Path) -> None:
    """The reported case: a cache folder holding a user's own ``checkpoints/``
    (training runs, no equilaw files besides) was deleted whole."""
    folder = tmp_path / "cache"
    run = folder / "checkpoints" / "run-1"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"weights" * 100)
    (folder / "checkpoints" / "notes.md").write_text("lr 3e-4")
    before = tree_sha256(tmp_path)
    with pytest.raises(CacheError) as info:
        StatsCache(folder).clear()
    assert str(info.value) == refusal(folder, "checkpoints/notes.md, checkpoints/run-1")
    assert tree_sha256(tmp_path) == before


def test_one_foreign_file_refuses_the_whole_clear(tmp_path: Path) -> None:
    """Even beside equilaw's own entries, tag and index: nothing is deleted."""
    from audit.cache.folder import TAG, TAG_NAME

    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / TAG_NAME).write_text(TAG)
    (folder / ("ab" * 32 + ".npz")).write_bytes(b"entry")
    (folder / "index.json").write_text("{}")
    (folder / "thesis.tex").write_text("x")
    before = tree_sha256(tmp_path)
    with pytest.raises(CacheError, match=re.escape(refusal(folder, "thesis.tex"))):
        clear_folder(folder)
    assert tree_sha256(tmp_path) == before


@pytest.mark.parametrize("case", ["entry link", "index folder", "foreign tag", "checkpoint link",
                                  "unlisted file", "part without manifest"])
def test_equilaw_names_in_another_shape_are_not_equilaws(tmp_path: Path, case: str) -> None:
    """A name equilaw uses is not proof: a link (its target may be anything), a
    folder where equilaw writes a file, another tool's CACHEDIR.TAG, a file in a
    converted checkpoint that its manifest does not list."""
    from audit.cache.converted import ConvertedCheckpoint

    folder = tmp_path / "cache"
    folder.mkdir()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.bin").write_bytes(b"\x00" * 64)
    key = "cd" * 32
    if case == "entry link":
        (folder / f"{key}.npz").symlink_to(precious / "data.bin")
        shown = f"{key}.npz"
    elif case == "index folder":
        (folder / "index.json").mkdir()
        (folder / "index.json" / "mine.txt").write_text("x")
        shown = "index.json"
    elif case == "foreign tag":
        (folder / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n"
                                             "# created by another tool\n")
        shown = "CACHEDIR.TAG"
    else:
        entry = ConvertedCheckpoint(key, folder)
        entry.store("model", lambda f: (f / "config.json").write_text("{}"))
        if case == "checkpoint link":
            (entry.folder / "tokenizer").symlink_to(precious)
            shown = f"checkpoints/{key}/tokenizer"
        elif case == "unlisted file":
            (entry.folder / "model" / "extra.txt").write_text("mine")
            shown = f"checkpoints/{key}/model"
        else:
            (entry.folder / "model" / "manifest.json").unlink()
            shown = f"checkpoints/{key}/model"
    before = tree_sha256(tmp_path)
    with pytest.raises(CacheError) as info:
        clear_folder(folder)
    assert str(info.value) == refusal(folder, shown)
    assert tree_sha256(tmp_path) == before


def test_many_foreign_names_are_counted_past_five(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    for i in range(7):
        (folder / f"f{i}.txt").write_text(str(i))
    before = tree_sha256(tmp_path)
    with pytest.raises(CacheError) as info:
        clear_folder(folder)
    assert str(info.value) == refusal(folder, "f0.txt, f1.txt, f2.txt, f3.txt, f4.txt and 2 more")
    assert tree_sha256(tmp_path) == before


# -- 11. gates that go green without a comparison ------------------------------------------

PROBE = {"sequences": 8, "length": 16, "batch_size": 8, "shards": 2}


def spec_file(folder: Path, model: Path, name: str = "tiny", extra: str = "") -> Path:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel:\n  path: {model}\nprobe: {json.dumps(PROBE)}\n"
                    f"law:\n  max_pearson_r: 1.0\n{extra}")
    return path


def baseline_state(spec: Path, require: bool):
    """The baseline state of ``spec`` after its report, in a session that writes no
    report and reads no cache."""
    from audit.session import AuditSession

    session = AuditSession(spec_paths=[spec], reports_dir=None, skip_missing_models=False,
                           require_baselines=require, cache=False)
    [one] = session.specs()
    session.report(one)
    return session.baselines[one.name]


def test_a_missing_baseline_fails_under_ci_naming_the_command(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path / "specs", tiny_model_dir)
    before = tree_sha256(tmp_path)
    state = baseline_state(spec, require=True)
    assert state.state is BaselineStatus.ERROR and str(state.error) == (
        "no baseline at specs/baselines/tiny.json: under CI (CI=true) a missing baseline "
        "fails, so that the gate never passes without a comparison; write it with: pytest "
        "audit/ --audit-update-baseline -k tiny and commit it, or set `baseline: {required: "
        f"false}}` in {spec} to compare only when a baseline exists")
    assert tree_sha256(tmp_path) == before
    assert baseline_state(spec, require=False).state is BaselineStatus.MISSING   # outside CI: a skip
    optional = spec_file(tmp_path / "specs", tiny_model_dir, "opt",
                         "baseline:\n  required: false\n")
    assert baseline_state(optional, require=True).state is BaselineStatus.MISSING


@pytest.mark.parametrize("case", ["folder", "dangling link", "not utf-8", "not json",
                                  "fifo", "deep nesting"])
def test_an_unreadable_baseline_always_fails(tiny_model_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """It used to count as missing (a skip) when a folder or a dangling link, and to
    raise UnicodeDecodeError on bytes that are not UTF-8."""
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path / "specs", tiny_model_dir)
    baselines = tmp_path / "specs" / "baselines"
    baselines.mkdir()
    path = baselines / "tiny.json"
    if case == "folder":
        path.mkdir()
        why = "it is a folder"
    elif case == "dangling link":
        path.symlink_to(tmp_path / "gone.json")
        why = f"it is a link to {tmp_path / 'gone.json'}, which does not exist"
    elif case == "not utf-8":
        path.write_bytes(b'{"name": "\xff"}')
        why = "byte 10 is not UTF-8"
    elif case == "not json":
        path.write_text("{")
        why = ("not JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
               "(char 1))")
    elif case == "fifo":
        os.mkfifo(path)   # opening it would block forever
        why = "it is not a regular file"
    else:
        path.write_text("[" * 100_000 + "]" * 100_000)
        why = "not JSON (maximum recursion depth exceeded while decoding a JSON array from a " \
              "unicode string)"
    before = tree_sha256(tmp_path) if case != "fifo" else None
    for require in (False, True):
        state = baseline_state(spec, require=require)
        assert state.state is BaselineStatus.ERROR and str(state.error) == (
            f"the baseline specs/baselines/tiny.json is unreadable: {why}; an unreadable "
            f"baseline fails the comparison: restore it, or delete it and write it again "
            f"with: pytest audit/ --audit-update-baseline -k tiny")
    if before is not None:
        assert tree_sha256(tmp_path) == before


def forge(entry: Path) -> None:
    """What anyone who can write the cache folder can do: make the stored law fit
    perfect (log10 PR falling by 0.1 per layer) and recompute the entry's checksum."""
    import json

    import numpy as np

    from audit.cache.stats_cache import _digest

    with np.load(entry, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    pr = arrays["result.pr"]
    arrays["result.pr"] = 10.0 ** (2.0 - 0.1 * np.arange(pr.size)).reshape(pr.shape)
    arrays["result.leave_one_out"] = np.broadcast_to(
        arrays["result.pr"], arrays["result.leave_one_out"].shape).copy()
    results = {k: v for k, v in arrays.items() if k.startswith("result.")}
    meta = arrays["meta"].tobytes()
    json.loads(meta)   # untouched
    arrays["checksum"] = np.frombuffer(_digest(meta, results).encode(), dtype=np.uint8)
    np.savez(entry, **arrays)


def test_a_forged_cache_entry_cannot_flip_a_verdict(tiny_model_dir: Path,
                                                    tmp_path: Path) -> None:
    """A failing spec (r must be below -0.999) passes from an entry whose checksum was
    recomputed after its numbers were changed, when nothing authenticates it; with a
    cache key the forgery is detected, the spec measured again, and it fails."""

    from audit.cache.stats_cache import CacheWarning, StatsCache
    from audit.pipeline import run

    spec_path = spec_file(tmp_path / "specs", tiny_model_dir)
    spec_path.write_text(spec_path.read_text().replace("max_pearson_r: 1.0",
                                                       "max_pearson_r: -0.999"))
    from audit.spec import load_spec

    spec = load_spec(spec_path)
    folder = tmp_path / "cache"
    key = b"a secret from the CI's secret store"
    honest = run(spec, cache=StatsCache(folder, secret=key))
    assert honest.verdict == "fail"
    [entry] = sorted(folder.glob("*.npz"))
    store = StatsCache(folder, secret=key)
    # re-scored from the authenticated entry, not measured again
    assert run(spec, cache=store).verdict == "fail" and store.authenticated == [entry]
    forge(entry)
    unkeyed = StatsCache(folder)   # outside CI, without a key: the forgery is served
    assert run(spec, cache=unkeyed).verdict == "pass" and unkeyed.hits == [entry]
    forged = tree_sha256(folder)
    ci = StatsCache(folder, require_secret=True)   # under CI without a key: not read
    with pytest.warns(CacheWarning) as caught:
        again = run(spec, cache=ci)
    assert again.verdict == "fail" and ci.untrusted == [entry] and ci.hits == []
    assert str(caught[0].message) == (
        f"statistics cache entry {entry} is not read: under CI an entry is used only when "
        f"authenticated, and no key is set (EQUILAW_CACHE_KEY or EQUILAW_CACHE_KEY_FILE: "
        f"docs/ci.md); measuring again")
    forge(entry)   # stored again by the CI run: forge once more
    keyed = StatsCache(folder, secret=key)
    with pytest.warns(CacheWarning) as caught:
        assert run(spec, cache=keyed).verdict == "fail"
    assert str(caught[0].message) == (
        f"statistics cache entry {entry} is unreadable (ValueError: it carries no MAC "
        f"(written without the cache key), and a key is set); recomputing it")
    assert keyed.recomputed == [entry] and keyed.stored == [entry]
    forge(entry)   # now a keyed entry, forged: its MAC does not verify
    with pytest.warns(CacheWarning, match=re.escape(
            "(ValueError: its MAC does not verify with the cache key (written with another "
            "key, or altered)); recomputing it")):
        assert run(spec, cache=StatsCache(folder, secret=key)).verdict == "fail"
    assert forged != tree_sha256(folder)


def test_the_cache_key_comes_from_the_environment_once(tmp_path: Path) -> None:
    from audit.cache.settings import CacheSettings

    key_file = tmp_path / "keys" / "equilaw.key"
    key_file.parent.mkdir()
    key_file.write_text("  s3cret\n")
    env = {"EQUILAW_CACHE_DIR": str(tmp_path / "cache"), "EQUILAW_CACHE_KEY_FILE": str(key_file)}
    settings = CacheSettings.from_environment(env)
    assert settings.secret == b"s3cret" and settings.secret_file == key_file
    assert "s3cret" not in repr(settings)
    assert CacheSettings.from_environment({**env, "EQUILAW_CACHE_KEY": "other"}).secret == b"other"
    inside = tmp_path / "cache" / "equilaw.key"
    inside.parent.mkdir()
    inside.write_text("s3cret")
    before = tree_sha256(tmp_path)
    with pytest.raises(CacheError) as info:
        CacheSettings.from_environment({**env, "EQUILAW_CACHE_KEY_FILE": str(inside)})
    assert str(info.value) == (
        f"the cache key file {inside} is inside the cache folder {tmp_path / 'cache'}: whoever "
        f"can rewrite the entries could read or replace it; keep it outside the cache folder")
    (tmp_path / "empty.key").write_text("\n")
    with pytest.raises(CacheError) as info:
        CacheSettings.from_environment({**env,
                                        "EQUILAW_CACHE_KEY_FILE": str(tmp_path / "empty.key")})
    assert str(info.value) == (
        f"EQUILAW_CACHE_KEY_FILE={tmp_path / 'empty.key'}: not a file holding a key (a "
        f"missing, empty or non-regular file)")
    assert tree_sha256(tmp_path) != before   # only the empty key file was added


@pytest.mark.slow   # one inner pytest run
def test_ci_fails_the_baseline_items_of_a_spec_without_baseline(
        pytester: pytest.Pytester, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the plugin: CI=true turns the two skips into failures naming the
    command; the law items still judge the checkpoint; no baseline is written."""
    from test_plugin import ITEMS

    pytester.makeini("[pytest]\n")
    spec = spec_file(pytester.path / "specs", tiny_model_dir)
    monkeypatch.setenv("CI", "true")
    before = tree_sha256(pytester.path / "specs")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--audit-spec", str(spec),
                                           "--audit-no-cache", ITEMS)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # law-fit passes; law-rho and the 4 layers have no threshold in this spec, divergence
    # no baseline to compare with: skips
    result.assert_outcomes(failed=2, passed=1, skipped=6)
    result.stdout.fnmatch_lines([
        "*tiny::baseline-law (*tiny.yaml)",
        "no baseline at specs/baselines/tiny.json: under CI (CI=true) a missing baseline fails, "
        "so that the gate never passes without a comparison; write it with: pytest audit/ "
        "--audit-update-baseline -k tiny and commit it, or set `baseline: {required: false}` in "
        f"{spec} to compare only when a baseline exists"])
    assert tree_sha256(pytester.path / "specs") == before


# -- 10. temporaries left by killed processes ----------------------------------------------

def ended_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_stale_temporaries_of_ended_processes_go_on_the_next_write(tmp_path: Path) -> None:
    """A SIGKILL during a store leaves ``.tmp-*.npz`` (0.8 GB for SmolLM2) in the
    cache, ``.NAME.json.*`` beside reports and baselines, ``.m.onnx.*/`` beside
    exports; the next write there removes those of ended processes only."""
    import subprocess
    import sys
    import time

    from audit.internal.files import (
        _HOST,
        STALE_AFTER_SECONDS,
        staging_folder,
        write_bytes_atomic,
        write_text_atomic,
    )

    dead, me = ended_pid(), os.getpid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead entry": f".tmp-{dead}@{_HOST}~abcd1234.npz",
            "dead report": f".tiny.json.{dead}@{_HOST}~abcd1234",
            "dead export": f".m.onnx.{dead}@{_HOST}~abcd1234",
            "live entry": f".tmp-{alive.pid}@{_HOST}~abcd1234.npz",
            "own report": f".tiny.json.{me}@{_HOST}~abcd1234",
            "fresh other host": f".tmp-{dead}@elsewhere~abcd1234.npz",
            "old other host": f".tmp-{dead}@elsewhere~old12345.npz",
            "not our form": f".tmp-{dead}-abcd1234.npz",
            "user file": ".tiny.json.bak",
        }
        for label, name in names.items():
            if label == "dead export":
                (tmp_path / name).mkdir()
                (tmp_path / name / "m.onnx").write_bytes(b"half")
            else:
                (tmp_path / name).write_bytes(b"half")
        old = time.time() - STALE_AFTER_SECONDS - 60
        os.utime(tmp_path / names["old other host"], (old, old))
        write_bytes_atomic(tmp_path / ("ab" * 32 + ".npz"), b"entry", prefix=".tmp-")
        write_text_atomic(tmp_path / "tiny.json", "{}")
        staging_folder(tmp_path, ".m.onnx.").rmdir()
        left = sorted(p.name for p in tmp_path.iterdir())
    finally:
        alive.kill()
        alive.wait()
    gone = {"dead entry", "dead report", "dead export", "old other host"}
    assert left == sorted([n for label, n in names.items() if label not in gone]
                          + ["ab" * 32 + ".npz", "tiny.json"])


def test_sigterm_unwinds_a_write_like_ctrl_c(tmp_path: Path) -> None:
    """CI cancels with SIGTERM: the writer's temporary is removed, as on Ctrl-C."""
    import signal
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from audit.internal.files import write_bytes_atomic\n"
        "from audit.internal.signals import terminate_as_interrupt\n"
        "terminate_as_interrupt()\n"
        "def slow(f):\n"
        "    f.write(b'x' * 1000)\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "write_bytes_atomic(Path(sys.argv[1]) / 'r.json', slow)\n")
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=root,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(root)})
    assert child.stdout.readline() == "writing\n"
    assert len(list(tmp_path.iterdir())) == 1   # the temporary, being written
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    # an uncaught KeyboardInterrupt ends Python as SIGINT does (the shell sees 130)
    assert child.returncode == -signal.SIGINT
    assert err.endswith("KeyboardInterrupt: terminated by signal 15 (SIGTERM)\n")
    assert list(tmp_path.iterdir()) == []


# -- 5. the converted-checkpoint cache -----------------------------------------------------

@pytest.mark.parametrize("case", ["zeroed bytes", "empty manifest", "weights deleted",
                                  "damaged header", "weights a link"])
def test_a_damaged_converted_checkpoint_is_never_used(tmp_path: Path, case: str) -> None:
    """Zeroed bytes of the same size moved r from 0.29 to 0.16 silently; a manifest
    ``{"sizes": {}}`` with the weights deleted looked valid; a damaged safetensors
    header gave a raw SafetensorError on every later run.  Each part is checked
    against the sizes and sha256 its manifest recorded, and removed with a warning
    (the caller converts the GGUF file again); nothing outside it is touched."""
    import json

    from audit.cache.converted import ConvertedCheckpoint, entry_key
    from audit.cache.folder import CacheWarning

    weights = b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}" + bytes(range(256)) * 4
    entry = ConvertedCheckpoint(entry_key("ef" * 32, "float32"), tmp_path)
    for part in ("model", "tokenizer"):
        entry.store(part, lambda f: ((f / "config.json").write_text("{}"),
                                     (f / "model.safetensors").write_bytes(weights)))
    folder = entry.folder / "model"
    target = folder / "model.safetensors"
    if case == "zeroed bytes":
        target.write_bytes(weights[:100] + bytes(200) + weights[300:])
        why = "model.safetensors does not match its recorded sha256"
    elif case == "empty manifest":
        (folder / "manifest.json").write_text(json.dumps({"format": 3, "sizes": {},
                                                          "sha256": {}}))
        target.unlink()
        why = "its manifest lists no files, or sizes and hashes of different files"
    elif case == "weights deleted":
        target.unlink()
        why = "model.safetensors is missing or not a regular file"
    elif case == "damaged header":
        target.write_bytes(b"\xff" * 8 + weights[8:])
        why = "model.safetensors does not match its recorded sha256"
    else:
        outside = tmp_path / "elsewhere.safetensors"
        outside.write_bytes(weights)
        target.unlink()
        target.symlink_to(outside)
        why = "model.safetensors is missing or not a regular file"
    others = tree_sha256(entry.folder / "tokenizer")
    with pytest.warns(CacheWarning) as caught:
        assert entry.path("model") is None
    assert str(caught[0].message) == (f"converted checkpoint {folder} is unusable ({why}); it "
                                      f"is removed and built again from the GGUF file")
    assert not folder.exists() and entry.path("tokenizer") == entry.folder / "tokenizer"
    assert tree_sha256(entry.folder / "tokenizer") == others
    if case == "weights a link":
        assert (tmp_path / "elsewhere.safetensors").read_bytes() == weights
