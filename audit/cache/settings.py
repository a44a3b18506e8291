"""Where the caches live and whether they are on, decided once per run.

A :class:`CacheSettings` is made once, from the pytest options (the plugin) or
from the environment (:meth:`CacheSettings.from_environment`, for code that runs
outside pytest), and handed to what uses a cache: the statistics cache, the
file-hash index and the converted checkpoints.  The environment is only read,
never rewritten: ``EQUILAW_CACHE_DIR`` names the folder, ``EQUILAW_NO_CACHE``
(any value but empty, 0, false or no) turns the caches off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


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

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> CacheSettings:
        """:func:`default_folder`, on unless ``EQUILAW_NO_CACHE`` turns it off."""
        return cls(default_folder(environ), not off_by_environment(environ))
