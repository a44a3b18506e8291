"""The cache folder's size cap: each entry's last use, and evicting the least
recently used entries until what equilaw keeps there fits.

The cap (:attr:`~audit.cache.settings.CacheSettings.max_gb`, default
:data:`DEFAULT_MAX_GB`; ``--audit-cache-max-gb``, ini ``audit_cache_max_gb``,
``EQUILAW_CACHE_MAX_GB``) covers everything equilaw keeps in the folder: the
statistics cache's entries, the converted GGUF checkpoints, the file-hash index
and the tag (1 GB = 10**9 bytes).  Temporaries of writes in progress and files
equilaw did not write are not counted, and are never removed here.

Only entries equilaw provably wrote are evicted
(:func:`audit.cache.folder.owned_entries`: a ``<sha256>.npz`` regular file, a
converted part whose plain files its manifest lists), one at a time, oldest last
use first.  An entry's last use is its modification time, set to now
(:func:`record_use`, one ``utime`` call: atomic, and no shared record whose
read-modify-write two concurrent runs could lose) when it is written and each
time it is read.  An entry's content never changes after it is written (a new
content is a new key), so its time is free to mean "last used".

While a process runs, the entries it has read or written are in use
(:func:`in_use`) and evicting after a write (:func:`enforce` with the default
``protect``) spares them, even when that leaves the folder over the cap; at the
end of a run (the pytest session's end, the command line's exit) the cap is
enforced over every entry, the run's own last (they are the most recent), so that
the folder is under the cap after the run.  A statistics entry removed while
another process reads it stays readable to that process (an open file on
POSIX); one removed before it is opened is a miss there, measured again.  Two
runs evicting at once may each remove an entry; a vanished entry is skipped.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping

from audit.cache.folder import INDEX_NAME, TAG_NAME, CacheError, owned_entries

DEFAULT_MAX_GB = 5.0
"""The default cap, in GB (10**9 bytes): a SmolLM2-135M statistics entry is about
0.8 GB and its converted checkpoint about 0.5 GB."""
MAX_GB_VARIABLE = "EQUILAW_CACHE_MAX_GB"
GB = 10**9

_IN_USE: set[str] = set()
"""The entries this process has read or written (absolute paths)."""


def parse_max_gb(text: str | float, where: str) -> float:
    """The cap that ``text`` gives, in GB: a number >= 0, or ``inf`` (no cap); 0
    keeps nothing, so it turns the caches off.  Anything else is a
    :class:`CacheError` that quotes it and says where it came from."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise CacheError(f"{where}={text!r}: the cache's size cap must be a number of GB >= 0 "
                         f"(0 turns the caches off, inf sets no cap)")
    return value


def max_gb_from_environment(environ: Mapping[str, str] | None = None) -> float:
    """``EQUILAW_CACHE_MAX_GB`` when set, else :data:`DEFAULT_MAX_GB`."""
    env = os.environ if environ is None else environ
    text = env.get(MAX_GB_VARIABLE, "").strip()
    return parse_max_gb(text, MAX_GB_VARIABLE) if text else DEFAULT_MAX_GB


def record_use(path: Path) -> None:
    """Mark the entry at ``path`` (a statistics entry's file, a converted part's
    folder) used now by this process: its modification time becomes now, and it is
    in use until the run ends.  Never follows a link; a failure (a read-only
    folder, the entry gone) only loses the record."""
    _IN_USE.add(os.path.abspath(path))
    try:
        os.utime(path, follow_symlinks=False)
    except OSError:
        pass


def in_use() -> frozenset[str]:
    """The entries this process has read or written, as absolute paths."""
    return frozenset(_IN_USE)


def entry_size(path: Path) -> int:
    """Bytes of an entry: its file, or the files of its folder (not following links)."""
    try:
        if path.is_symlink() or not path.is_dir():
            return path.lstat().st_size
        return sum(f.lstat().st_size for f in path.iterdir())
    except OSError:
        return 0


def cache_bytes(folder: Path) -> int:
    """The bytes equilaw keeps in ``folder`` as the cap counts them: its entries,
    the file-hash index and the tag."""
    fixed = 0
    for name in (INDEX_NAME, TAG_NAME):
        try:
            stat = (folder / name).lstat()
            fixed += stat.st_size
        except OSError:
            pass
    return fixed + sum(entry_size(p) for p in owned_entries(folder))


def enforce(folder: Path, max_gb: float, protect: Iterable[str] | None = None) -> list[Path]:
    """Evict the least recently used entries of ``folder`` until what equilaw keeps
    there (:func:`cache_bytes`) is at most ``max_gb``; returns the entries removed,
    oldest first.  ``protect``: absolute paths never evicted (default: those this
    process has used, :func:`in_use`; pass ``()`` at the end of a run).  An entry
    whose time moved since the survey (another run just used it) is spared."""
    if math.isinf(max_gb) or not folder.is_dir():
        return []
    spared = in_use() if protect is None else frozenset(protect)
    limit = max_gb * GB
    survey: list[tuple[int, Path, int]] = []
    for path in owned_entries(folder):
        try:
            survey.append((path.lstat().st_mtime_ns, path, entry_size(path)))
        except OSError:
            continue   # gone meanwhile
    total = cache_bytes(folder)
    removed: list[Path] = []
    for used, path, size in sorted(survey, key=lambda item: (item[0], str(item[1]))):
        if total <= limit:
            break
        if os.path.abspath(path) in spared or not _remove(path, used):
            continue
        total -= size
        removed.append(path)
    return removed


def _remove(path: Path, used: int) -> bool:
    """Remove an entry unless it changed since it was surveyed; False when it was
    kept or already gone."""
    try:
        stat = path.lstat()
        if stat.st_mtime_ns != used:
            return False
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
            try:
                path.parent.rmdir()   # the converted key's folder, once it holds no part
            except OSError:
                pass
    except FileNotFoundError:
        return False
    except OSError:
        return False
    _IN_USE.discard(os.path.abspath(path))
    return True
