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
size; a file of another size (truncated, replaced) makes the entry unusable, it
is removed and the GGUF file loaded again.  Bit rot inside a file of the right
size is not detected (hashing the weights on every load would cost what the cache
saves); ``--audit-clear-cache`` or deleting the folder removes every entry.

Settings that turn the caches off (``EQUILAW_NO_CACHE``, ``--audit-no-cache``)
turn this one off too: the backend gets no entry (:func:`entry`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

from audit.cache.folder import CONVERTED, MANIFEST, PARTS, TEMP_PREFIX
from audit.cache.settings import CacheSettings
from audit.internal.files import staging_folder

FORMAT = 2
"""2: tied weights are stored under the body's name (1 stored the head's)."""


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
    return ConvertedCheckpoint(entry_key(gguf_sha256, dtype), settings.folder)


class ConvertedCheckpoint:
    """One entry: ``part`` is ``model`` or ``tokenizer``, each stored and found on
    its own (a tokenizer GGUF may be another file than the weights')."""

    def __init__(self, key: str, root: Path) -> None:
        self.folder = Path(root) / CONVERTED / key

    def path(self, part: str) -> Path | None:
        """The folder of ``part`` when it is complete and its files have the sizes
        the manifest recorded; an entry that fails that check is removed."""
        folder = self.folder / part
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            sizes = manifest["sizes"]
            if all((folder / name).stat().st_size == size for name, size in sizes.items()):
                return folder
        except FileNotFoundError:
            if not folder.exists():
                return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        shutil.rmtree(folder, ignore_errors=True)  # damaged: recompute, never trust
        return None

    def discard(self, part: str) -> None:
        """Remove ``part`` (found unreadable although its sizes were right)."""
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
            sizes = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
            (staging / MANIFEST).write_text(json.dumps({"format": FORMAT, "sizes": sizes}),
                                            encoding="utf-8")
            os.replace(staging, target)
            return target
        except OSError:
            return None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
