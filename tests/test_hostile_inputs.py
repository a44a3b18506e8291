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
