"""The file-hash index: sha256 of large files remembered in the cache folder.

Hashing a weights file costs about 0.12 s per 100 MB here, so the hashes of files
of 1 MiB or more are remembered in ``index.json`` by (resolved path, size,
mtime_ns, ctime_ns, inode); a file modified less than :data:`SETTLE_SECONDS`
before it was hashed is not remembered (its timestamp may not move on the next
write).  The statistics cache's key and the GGUF weights hash use it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from audit.cache.folder import INDEX_NAME, TEMP_PREFIX, prepare_folder
from audit.internal.files import sha256_files, write_bytes_atomic

FORMAT = 2
"""The index file's layout."""
SETTLE_SECONDS = 2.0
"""A file modified more recently than this before hashing is hashed again next time."""
_INDEXED_BYTES = 1 << 20   # smaller files are hashed every time (cheaper than the index)


class FileHashIndex:
    """The index in ``folder`` (read on first use, written when it learns a hash)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).expanduser()
        self._index: dict[str, list] | None = None

    def file_sha256(self, path: Path) -> str:
        """sha256 of a file's bytes; remembered for files of 1 MiB or more, by
        (resolved path, size, mtime_ns, ctime_ns, inode)."""
        path = Path(path).resolve()
        before = path.stat()
        if before.st_size < _INDEXED_BYTES:
            return sha256_files([path])
        stamp = [before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino]
        index = self._load()
        known = index.get(str(path))
        if known is not None and known[:4] == stamp:
            return known[4]
        digest = sha256_files([path])
        after = path.stat()
        settled = time.time_ns() - after.st_mtime_ns > SETTLE_SECONDS * 1e9
        if settled and [after.st_size, after.st_mtime_ns, after.st_ctime_ns,
                        after.st_ino] == stamp:
            index[str(path)] = stamp + [digest]
            self._save(index)
        return digest

    def forget(self) -> None:
        """Drop what was read (the file was cleared)."""
        self._index = None

    def _read(self) -> dict[str, list]:
        try:
            data = json.loads((self.folder / INDEX_NAME).read_text(encoding="utf-8"))
            files = data["files"] if data.get("format") == FORMAT else {}
            return {k: v for k, v in files.items() if isinstance(v, list) and len(v) == 5}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}   # missing or unreadable: hashes are recomputed

    def _load(self) -> dict[str, list]:
        if self._index is None:
            self._index = self._read()
        return self._index

    def _save(self, index: dict[str, list]) -> None:
        live = {k: v for k, v in index.items() if os.path.exists(k)}
        try:
            prepare_folder(self.folder)
            write_bytes_atomic(self.folder / INDEX_NAME,
                               json.dumps({"format": FORMAT, "files": live}, indent=0).encode(),
                               prefix=TEMP_PREFIX)
        except OSError:
            pass  # the index only saves time
