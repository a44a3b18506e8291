"""GGUF checkpoints converted once: a content-addressed cache of the dequantised
weights (safetensors) and of the tokenizer transformers builds from a GGUF file.

Loading a GGUF file costs transformers a dequantisation of every tensor and, for
the tokenizer, a conversion of the GGUF vocabulary and merges into a fast
tokenizer: 12 s for SmolLM2-135M and 39 s for Gemma-3-270M here, of which 16 s is
Gemma's tokenizer.  The first load of a file writes what it built into
``<cache folder>/checkpoints/<key>/`` (the folder of the run's
:class:`~audit.cache.settings.CacheSettings`, the statistics cache's):
``config.json`` and ``model.safetensors`` through ``save_pretrained``, and the
tokenizer's own files (``tokenizer.json`` and its config).  Later loads of the same file read those instead.

The key is the sha256 of the GGUF file's bytes with the dtype the weights were
loaded in and the versions of transformers, gguf and torch (a new dequantiser
may round differently): a changed file, dtype or library gets a new entry; an old
entry is never read for it.  Nothing in an entry is pickle.

Every part is written into a temporary folder and renamed into place once
complete, so a crash leaves no half entry.  ``manifest.json`` records each file's
size and sha256; before use, every listed file must be a regular file of that
size and hash (the hash through the folder's file-hash index: a file whose size,
times and inode have not moved is not read again).  A part that fails (truncated,
deleted, zeroed, a manifest that lists nothing), or that transformers or
tokenizers cannot load although intact, is removed with a :class:`CacheWarning`
and built again from the GGUF file: its numbers never reach the statistics.

The converted checkpoints count toward the cache folder's size cap
(:mod:`audit.cache.eviction`): each part is an entry whose last use is recorded
when it is found intact or written, and a write evicts the least recently used
entries beyond the cap (a part this process uses is spared).

Settings that turn the caches off (``EQUILAW_NO_CACHE``, ``--audit-no-cache``)
turn this one off too: the backend gets no entry (:func:`entry`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from audit.cache import eviction
from audit.cache.folder import CONVERTED, MANIFEST, PARTS, TEMP_PREFIX, CacheWarning
from audit.cache.index import FileHashIndex
from audit.cache.settings import CacheSettings
from audit.internal.files import sha256_files, staging_folder

FORMAT = 3
"""2: tied weights are stored under the body's name (1 stored the head's); 3: the
manifest records each file's sha256 too."""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def entry_key(gguf_sha256: str, dtype: str) -> str:
    """The entry of a GGUF file (its sha256) loaded in ``dtype``."""
    recipe = {"format": FORMAT, "gguf_sha256": gguf_sha256, "dtype": dtype,
              "versions": {dist: _version(dist) for dist in ("transformers", "gguf", "torch")}}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def entry(settings: CacheSettings, gguf_sha256: str, dtype: str) -> ConvertedCheckpoint | None:
    """The entry of a GGUF file (its sha256) loaded in ``dtype`` in the settings'
    folder, or None when the caches are off."""
    if not settings.enabled:
        return None
    return ConvertedCheckpoint(entry_key(gguf_sha256, dtype), settings.folder, settings.max_gb)


class ConvertedCheckpoint:
    """One entry: ``part`` is ``model`` or ``tokenizer``, each stored and found on
    its own (a tokenizer GGUF may be another file than the weights')."""

    def __init__(self, key: str, root: Path, max_gb: float = eviction.DEFAULT_MAX_GB) -> None:
        self.root = Path(root)
        self.folder = self.root / CONVERTED / key
        self.index = FileHashIndex(root)
        self.max_gb = max_gb

    def path(self, part: str) -> Path | None:
        """The folder of ``part`` when it is complete and intact: each file the
        manifest lists is a regular file of the recorded size and sha256 (through
        the folder's file-hash index, so an unchanged file is read once, not on
        every start).  A part that fails is removed with a :class:`CacheWarning`
        and None returned: the GGUF file is converted again."""
        folder = self.folder / part
        if not folder.exists() and not folder.is_symlink():
            return None
        try:
            why = self._damage(folder)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        if why is None:
            eviction.record_use(folder)
            return folder
        self.discard(part, why)
        return None

    def _damage(self, folder: Path) -> str | None:
        """Why the part in ``folder`` cannot be used, or None."""
        if folder.is_symlink() or not folder.is_dir():
            return "not a folder"
        if not (folder / MANIFEST).is_file():
            return "its manifest is missing"
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            return f"format {manifest.get('format')!r}, expected {FORMAT}"
        sizes, digests = manifest["sizes"], manifest["sha256"]
        if not sizes or set(sizes) != set(digests):
            return "its manifest lists no files, or sizes and hashes of different files"
        for name, size in sorted(sizes.items()):
            file = folder / name
            if file.is_symlink() or not file.is_file():
                return f"{name} is missing or not a regular file"
            if file.stat().st_size != size:
                return f"{name} has {file.stat().st_size} bytes, its manifest says {size}"
            if self.index.file_sha256(file) != digests[name]:
                return f"{name} does not match its recorded sha256"
        return None

    def discard(self, part: str, why: str) -> None:
        """Remove ``part`` (damaged, or unreadable although intact), warning why."""
        warnings.warn(CacheWarning(f"converted checkpoint {self.folder / part} is unusable "
                                   f"({why}); it is removed and built again from the GGUF "
                                   f"file"), stacklevel=3)
        shutil.rmtree(self.folder / part, ignore_errors=True)

    def store(self, part: str, save: Any) -> Path | None:
        """Write ``part`` with ``save(folder)`` (a ``save_pretrained``) into a
        temporary folder, record its files' sizes and rename it into place.
        Returns the folder, or None when it could not be written (a full disk or
        a read-only cache never fails the audit)."""
        assert part in PARTS
        target = self.folder / part
        try:
            staging = staging_folder(self.folder, f"{TEMP_PREFIX}{part}-")
        except OSError:
            return None
        try:
            save(staging)
            files = [p for p in sorted(staging.iterdir()) if p.is_file()]
            sizes = {p.name: p.stat().st_size for p in files}
            digests = {p.name: sha256_files([p]) for p in files}   # once per conversion
            (staging / MANIFEST).write_text(
                json.dumps({"format": FORMAT, "sizes": sizes, "sha256": digests}),
                encoding="utf-8")
            os.replace(staging, target)
            eviction.record_use(target)
            eviction.enforce(self.root, self.max_gb)
            return target
        except OSError:
            return None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
