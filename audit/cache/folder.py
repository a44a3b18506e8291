"""The cache folder: the names equilaw writes there, its tag, and clearing it.

One folder (:class:`audit.cache.settings.CacheSettings`) holds the statistics
cache's entries (``<sha256>.npz``), the file-hash index (``index.json``), the
converted checkpoints (``checkpoints/``), temporary files of writes in progress
(``.tmp-*``) and a ``CACHEDIR.TAG`` (https://bford.info/cachedir/) that backup
tools honour and that marks the folder as equilaw's.
"""

from __future__ import annotations

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


class CacheError(EquilawError):
    """The statistics cache cannot be used as asked: a folder to clear that is not
    an equilaw cache (no ``CACHEDIR.TAG`` written by equilaw), or statistics
    arrays that fail their checksum when first read (the entry is deleted; run
    again to recompute it)."""


def prepare_folder(folder: Path) -> None:
    """Create ``folder`` and its tag."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = folder / TAG_NAME
    if not tag.exists():
        write_bytes_atomic(tag, TAG.encode(), prefix=TEMP_PREFIX)


def clear_folder(folder: Path) -> int:
    """Delete what equilaw wrote in ``folder`` (entries, the index, left-over
    temporary files, the converted checkpoints) and return how many files and
    folders went; other files stay.  Raises :class:`CacheError` for a folder that
    holds anything else without an equilaw ``CACHEDIR.TAG``."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    tag = folder / TAG_NAME
    try:
        tagged = tag.is_file() and "equilaw" in tag.read_text(encoding="utf-8",
                                                              errors="replace")
    except OSError:
        tagged = False
    ours = [name for name in names if _written_here(name)]
    if not tagged and len(ours) < len(names):
        raise CacheError(f"refusing to clear {folder}: it does not look like an "
                         f"equilaw statistics cache (no {TAG_NAME} written by equilaw); "
                         f"point --audit-cache or EQUILAW_CACHE_DIR at the cache folder")
    removed = 0
    for name in ours:
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _written_here(name: str) -> bool:
    """Whether a name in the cache folder is one equilaw writes (the tag stays)."""
    return (bool(ENTRY.match(name)) or name in (INDEX_NAME, CONVERTED)
            or name.startswith(TEMP_PREFIX))
