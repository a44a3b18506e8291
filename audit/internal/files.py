"""Files on disk: hashing their bytes, and writing them so that a reader never sees
a partial one.

Every atomic write in equilaw goes through here: reports, baselines, specs, the
statistics cache's entries, index and tag, the converted checkpoints and ONNX
exports.  A file is written to a temporary name in its target's folder and
renamed over the target (``os.replace``, atomic on one file system); a folder of
several files is staged in a temporary folder (:func:`staging_folder`) and its
content renamed into place by the caller.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable

_CHUNK = 1 << 20


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
    temporary file in ``path``'s folder (named ``prefix`` + random, default
    ``.<name>.``) and rename it over ``path``; the folder must exist.  ``public``
    gives the file the mode the umask gives (mkstemp's private 0600 is for
    secrets, not reports or specs).  Raises OSError; on failure nothing is left
    behind."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}." if prefix is None else prefix,
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


def staging_folder(parent: Path, prefix: str) -> Path:
    """A new empty folder ``parent/<prefix><random>`` (created with its parents),
    where files that must appear together are written before the caller renames
    them into place; the caller removes it."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
