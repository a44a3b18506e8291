"""Where the caches live and whether they are on, decided once per run.

A :class:`CacheSettings` is made once, from the pytest options (the plugin) or
from the environment (:meth:`CacheSettings.from_environment`, for code that runs
outside pytest), and handed to what uses a cache: the statistics cache, the
file-hash index and the converted checkpoints.  The environment is only read,
never rewritten: ``EQUILAW_CACHE_DIR`` names the folder, ``EQUILAW_NO_CACHE``
(any value but empty, 0, false or no) turns the caches off, and
``EQUILAW_CACHE_KEY`` (the secret itself) or ``EQUILAW_CACHE_KEY_FILE`` (a file
holding it, outside the cache folder) authenticates the statistics cache's
entries (docs/ci.md, "The statistics cache under CI"), and ``EQUILAW_CACHE_MAX_GB``
caps the folder's size (:mod:`audit.cache.eviction`; default 5 GB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from audit.cache.eviction import DEFAULT_MAX_GB, max_gb_from_environment
from audit.cache.folder import CacheError

KEY_VARIABLE = "EQUILAW_CACHE_KEY"
KEY_FILE_VARIABLE = "EQUILAW_CACHE_KEY_FILE"


def default_folder(environ: Mapping[str, str] | None = None) -> Path:
    """``$EQUILAW_CACHE_DIR``, else ``$XDG_CACHE_HOME/equilaw``, else ``~/.cache/equilaw``."""
    env = os.environ if environ is None else environ
    own = env.get("EQUILAW_CACHE_DIR", "").strip()
    if own:
        return Path(own).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    if xdg and os.path.isabs(xdg):   # the XDG spec ignores relative values
        return Path(xdg) / "equilaw"
    return Path.home() / ".cache" / "equilaw"


def off_by_environment(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``EQUILAW_NO_CACHE`` is set to anything but empty, 0, false or no."""
    env = os.environ if environ is None else environ
    return env.get("EQUILAW_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class CacheSettings:
    """The caches of one run: their folder, and whether they are used at all."""

    folder: Path
    """The cache folder: statistics entries, ``index.json`` and ``checkpoints/``."""
    enabled: bool = True
    """False: nothing is read from or written to any cache (hashes are recomputed,
    GGUF files converted on every load, every spec measured)."""
    secret: bytes | None = field(default=None, repr=False)
    """The cache key, a secret that authenticates statistics cache entries: each is
    written with an HMAC-SHA256 of its checksum, and read only when that verifies."""
    secret_file: Path | None = None
    """Where :attr:`secret` was read from (None: ``EQUILAW_CACHE_KEY`` or no key)."""
    require_secret: bool = False
    """Read no entry that is not authenticated (without a key: none at all).  The
    plugin sets it under CI, where an entry rewritten by anyone who can write the
    folder must not decide a verdict."""
    max_gb: float = DEFAULT_MAX_GB
    """The folder's size cap in GB (10**9 bytes), least recently used entries evicted
    beyond it (:mod:`audit.cache.eviction`); ``inf``: no cap; 0 keeps nothing, so it
    turns the caches off (``enabled`` becomes False)."""

    def __post_init__(self) -> None:
        if not self.max_gb >= 0:   # NaN too
            raise CacheError(f"the cache's size cap must be >= 0 GB, got {self.max_gb!r}")
        if self.max_gb == 0:
            object.__setattr__(self, "enabled", False)
        if self.secret_file is not None and self.folder.resolve() in (
                self.secret_file.resolve().parents):
            raise CacheError(f"the cache key file {self.secret_file} is inside the cache folder "
                             f"{self.folder}: whoever can rewrite the entries could read or "
                             f"replace it; keep it outside the cache folder")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None,
                         require_secret: bool = False) -> CacheSettings:
        """:func:`default_folder`, on unless ``EQUILAW_NO_CACHE`` turns it off, with
        the key of ``EQUILAW_CACHE_KEY`` or ``EQUILAW_CACHE_KEY_FILE`` and the cap
        of ``EQUILAW_CACHE_MAX_GB``."""
        secret, secret_file = read_key(environ)
        return cls(default_folder(environ), not off_by_environment(environ), secret,
                   secret_file, require_secret, max_gb_from_environment(environ))


def read_key(environ: Mapping[str, str] | None = None) -> tuple[bytes | None, Path | None]:
    """The cache key (the variable's value, or the key file's bytes, surrounding
    whitespace stripped) and the file it came from; (None, None) when neither is
    set.  An unreadable or empty key file is a :class:`CacheError`."""
    env = os.environ if environ is None else environ
    own = env.get(KEY_VARIABLE, "").strip()
    if own:
        return own.encode("utf-8"), None
    name = env.get(KEY_FILE_VARIABLE, "").strip()
    if not name:
        return None, None
    path = Path(name).expanduser()
    try:
        key = path.read_bytes().strip() if path.is_file() else None
    except OSError as exc:
        raise CacheError(f"{KEY_FILE_VARIABLE}={name}: cannot read the cache key "
                         f"({type(exc).__name__}: {exc})") from None
    if not key:
        raise CacheError(f"{KEY_FILE_VARIABLE}={name}: not a file holding a key (a missing, "
                         f"empty or non-regular file)")
    return key, path
