"""Files on disk: hashing their bytes, and writing them so that a reader never sees
a partial one.

Every atomic write in equilaw goes through here: reports, baselines, specs, the
statistics cache's entries, index and tag, the converted checkpoints and ONNX
exports.  The spilled statistics' folders (:mod:`audit.stats.spilled_gram`) are
temporaries of the same kind.  A file is written to a temporary name in its target's folder and
renamed over the target (``os.replace``, atomic on one file system); a folder of
several files is staged in a temporary folder (:func:`staging_folder`) and its
content renamed into place by the caller.

Temporaries are named by their process: ``<base><pid>@<host>~<8 random
characters>[.ext]``.  A process killed by SIGKILL (or a crash of the machine)
leaves its temporary behind; the next write into the same folder with the same
base removes those of ended processes of this host, and those of other hosts
once older than :data:`STALE_AFTER_SECONDS` (their processes cannot be asked).
A live writer's temporary, and any name not of this form, is never touched.
SIGTERM is turned into KeyboardInterrupt by :mod:`audit.internal.signals`, so a
terminated write removes its own temporary as an interrupted one does.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Callable

_CHUNK = 1 << 20
STALE_AFTER_SECONDS = 7 * 24 * 3600
"""Another host's temporary is removed once its last change is this old (7 days)."""
_HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def _owned(base: str) -> str:
    """The prefix of this process's temporaries of ``base``."""
    return f"{base}{os.getpid()}@{_HOST}~"


def _process_ended(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:   # PermissionError: alive, someone else's
        return False
    return False


def remove_stale_temporaries(folder: Path, base: str) -> list[Path]:
    """Remove the temporaries of ``base`` in ``folder`` that no live writer owns
    (see the module's docstring) and return them; errors leave a file in place."""
    pattern = re.compile(rf"^{re.escape(base)}(\d+)@([A-Za-z0-9.-]+)~[a-z0-9_]{{8}}"
                         rf"(\.[A-Za-z0-9]+)?$")
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid, host = int(match[1]), match[2]
        try:
            if host == _HOST:
                if pid == os.getpid() or not _process_ended(pid):
                    continue
            elif time.time() - entry.stat(follow_symlinks=False).st_mtime < STALE_AFTER_SECONDS:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            elif entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            else:
                continue   # a link or special file is not a temporary equilaw made
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def sha256_files(paths: list[Path]) -> str:
    """sha256 of the files' bytes, concatenated in the given order (for one file:
    what ``sha256sum`` prints)."""
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(path: str | os.PathLike, content: bytes | Callable[[IO[bytes]], None],
                       prefix: str | None = None, public: bool = False) -> Path:
    """Write ``content`` (bytes, or a function that writes a binary file) to a
    temporary file in ``path``'s folder (named from ``prefix``, default
    ``.<name>.``, by process) and rename it over ``path``; the folder must exist.
    Stale temporaries of the same prefix there are removed first.  ``public``
    gives the file the mode the umask gives (mkstemp's private 0600 is for
    secrets, not reports or specs).  Raises OSError; on failure nothing is left
    behind."""
    target = Path(path)
    base = f".{target.name}." if prefix is None else prefix
    remove_stale_temporaries(target.parent, base)
    fd, tmp = tempfile.mkstemp(prefix=_owned(base),
                               suffix=target.suffix if prefix is not None else "",
                               dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(content, bytes):
                handle.write(content)
            else:
                content(handle)
        if public:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder
    and an atomic rename; creates the folder.  The file gets the ordinary mode the
    umask gives.  Raises OSError; on failure nothing is left behind."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(target, text.encode("utf-8"), public=True)


def write_together(files: dict[Path, bytes]) -> list[Path]:
    """Write several files that belong together (a spec and its baseline, a
    baseline and its token record) so that they land together or not at all:
    every file is first written to a temporary beside its target; only when all
    are written is each renamed into place, the file it replaces kept aside until
    the last rename has succeeded.  A failure or an interrupt (SIGINT, SIGTERM)
    at any step puts back what was there before and leaves no temporary.  Only a
    SIGKILL between two renames (microseconds) can leave one without the other.
    Creates the folders; raises OSError."""
    staged: list[tuple[Path, str]] = []
    moved: list[tuple[Path, str | None]] = []   # (target, where its old file went)
    try:
        for target, content in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            base = f".{target.name}."
            remove_stale_temporaries(target.parent, base)
            fd, tmp = tempfile.mkstemp(prefix=_owned(base), dir=target.parent)
            staged.append((target, tmp))
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
        for target, tmp in staged:
            old = None
            if os.path.lexists(target):
                old = str(target.parent / f"{_owned(f'.{target.name}.')}{secrets.token_hex(4)}")
                os.replace(target, old)
            moved.append((target, old))
            os.replace(tmp, target)
    except BaseException:
        for target, old in reversed(moved):
            try:
                if old is not None:
                    os.replace(old, target)
                elif os.path.lexists(target):
                    os.unlink(target)
            except OSError:
                pass
        for _, tmp in staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    for _, old in moved:
        if old is not None:
            try:
                os.unlink(old)
            except OSError:
                pass
    return list(files)


def temporary_folder(parent: Path, prefix: str) -> Path:
    """A new empty folder in the existing ``parent``, named from ``prefix`` by
    process (see the module's docstring); the caller removes it.  Stale folders
    of the same prefix there (their writer ended) are removed first.  Raises
    OSError."""
    remove_stale_temporaries(parent, prefix)
    return Path(tempfile.mkdtemp(prefix=_owned(prefix), dir=parent))


def staging_folder(parent: Path, prefix: str) -> Path:
    """A :func:`temporary_folder` in ``parent`` (created with its parents), where
    files that must appear together are written before the caller renames them
    into place; the caller removes it."""
    parent.mkdir(parents=True, exist_ok=True)
    return temporary_folder(parent, prefix)
