"""The cache folder: the names equilaw writes there, its tag, and clearing it.

One folder (:class:`audit.cache.settings.CacheSettings`) holds the statistics
cache's entries (``<sha256>.npz``), the file-hash index (``index.json``), the
converted checkpoints (``checkpoints/``), temporary files of writes in progress
(``.tmp-*``) and a ``CACHEDIR.TAG`` (https://bford.info/cachedir/) that backup
tools honour and that marks the folder as equilaw's.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from audit.errors import EquilawError
from audit.internal.files import write_bytes_atomic

TAG_NAME = "CACHEDIR.TAG"
TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
       "# This file is a cache directory tag created by equilaw (statistics cache).\n"
       "# For information about cache directory tags see https://bford.info/cachedir/\n")
INDEX_NAME = "index.json"
"""The file-hash index (:mod:`audit.cache.index`)."""
CONVERTED = "checkpoints"
"""The subfolder of the converted checkpoints (:mod:`audit.cache.converted`)."""
ENTRY = re.compile(r"^[0-9a-f]{64}\.npz$")
"""A statistics cache entry's name (:mod:`audit.cache.stats_cache`)."""
TEMP_PREFIX = ".tmp-"
"""The prefix of every temporary file or folder equilaw makes in the cache folder."""
PARTS = ("model", "tokenizer")
"""The parts of a converted checkpoint, each a folder of its own."""
MANIFEST = "manifest.json"
"""A converted part's list of its files and their sizes."""


class CacheError(EquilawError):
    """The statistics cache cannot be used as asked: a folder to clear that holds
    anything equilaw did not write (named in the message), or statistics
    arrays that fail their checksum when first read (the entry is deleted; run
    again to recompute it)."""


class CacheWarning(UserWarning):
    """A cache entry was unusable (truncated, corrupt, another key's, not
    authenticated, a damaged converted checkpoint) and is being recomputed, or a
    new entry could not be written."""


def prepare_folder(folder: Path) -> None:
    """Create ``folder`` and its tag."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = folder / TAG_NAME
    if not tag.exists():
        write_bytes_atomic(tag, TAG.encode(), prefix=TEMP_PREFIX)


def clear_folder(folder: Path) -> int:
    """Delete what equilaw provably wrote in ``folder`` and return how many files
    and folders went; the tag stays.  Provably: each name is one equilaw writes,
    with the shape it writes it in (a regular file, never a link; the converted
    checkpoints' folder holding only ``<sha256>/model|tokenizer`` folders whose
    files their manifest lists, or staging folders of plain files).  Anything else
    (a user's ``checkpoints/`` folder, notes, a link, another tool's tag) makes the
    whole clear refuse with :class:`CacheError`, naming it, before anything is
    deleted."""
    if not folder.is_dir():
        return 0
    ours: list[Path] = []
    foreign: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.name == TAG_NAME:
            if not _is_our_tag(path):
                foreign.append(path)
        elif path.name == CONVERTED and _is_plain_dir(path):
            strangers = _foreign_checkpoints(path)
            foreign += strangers
            if not strangers:
                ours.append(path)
        elif _is_plain_file(path) and (ENTRY.match(path.name) or path.name == INDEX_NAME
                                       or path.name.startswith(TEMP_PREFIX)):
            ours.append(path)
        else:
            foreign.append(path)
    if foreign:
        shown = ", ".join(str(p.relative_to(folder)) for p in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise CacheError(f"refusing to clear {folder}: it holds what equilaw did not write "
                         f"({shown}{more}); nothing was deleted: move those out, or point "
                         f"--audit-cache or EQUILAW_CACHE_DIR at equilaw's own cache folder")
    removed = 0
    for path in ours:
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _is_plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _is_plain_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _is_our_tag(path: Path) -> bool:
    try:
        return _is_plain_file(path) and path.read_bytes() == TAG.encode()
    except OSError:
        return False


_KEY = re.compile(r"^[0-9a-f]{64}$")


def _foreign_checkpoints(converted: Path) -> list[Path]:
    """What in ``checkpoints/`` equilaw did not write: it writes ``<sha256>/<part>/``
    folders of plain files that their ``manifest.json`` lists, and staging folders
    ``<sha256>/.tmp-<part>-*`` of plain files (left by an interrupted store)."""
    foreign: list[Path] = []
    for entry in sorted(converted.iterdir()):
        if not (_KEY.match(entry.name) and _is_plain_dir(entry)):
            foreign.append(entry)
            continue
        for part in sorted(entry.iterdir()):
            staging = any(part.name.startswith(f"{TEMP_PREFIX}{p}-") for p in PARTS)
            if not (_is_plain_dir(part) and (part.name in PARTS or staging)):
                foreign.append(part)
                continue
            files = sorted(part.iterdir())
            if not all(_is_plain_file(f) for f in files):
                foreign += [f for f in files if not _is_plain_file(f)]
            elif not staging and not _listed(part, {f.name for f in files}):
                foreign.append(part)
    return foreign


def owned_entries(folder: Path) -> list[Path]:
    """The entries in ``folder`` that equilaw provably wrote, each removable on its
    own, by the rules :func:`clear_folder` proves ownership with: statistics entries
    (``<sha256>.npz``, regular files) and converted parts (``checkpoints/<sha256>/
    model|tokenizer``, plain folders of plain files that their manifest lists).
    Links inside the folder are never followed (the folder itself may be one: the
    user chose it), and anything else (the tag, the index, temporaries of writes
    in progress, a user's file) is not an entry.  A name that vanishes during the
    walk (another run removed it) is skipped."""
    found: list[Path] = []
    try:
        names = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return []
    for path in names:
        try:
            if ENTRY.match(path.name) and _is_plain_file(path):
                found.append(path)
            elif path.name == CONVERTED and _is_plain_dir(path):
                found += _owned_parts(path)
        except OSError:
            continue
    return found


def _owned_parts(converted: Path) -> list[Path]:
    parts: list[Path] = []
    for entry in sorted(converted.iterdir()):
        if not (_KEY.match(entry.name) and _is_plain_dir(entry)):
            continue
        for name in PARTS:
            part = entry / name
            try:
                if not _is_plain_dir(part):
                    continue
                files = list(part.iterdir())
                if all(_is_plain_file(f) for f in files) and _listed(
                        part, {f.name for f in files}):
                    parts.append(part)
            except OSError:
                continue
    return parts


def _listed(part: Path, names: set[str]) -> bool:
    """Whether ``names`` are a part's manifest and the files it lists."""
    try:
        manifest = json.loads((part / MANIFEST).read_text(encoding="utf-8"))
        listed = set(manifest["sizes"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return names <= listed | {MANIFEST}
