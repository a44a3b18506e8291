"""The statistics cache: a measurement kept on disk, so that re-judging a spec
(new thresholds, a baseline update) loads no model and tokenizes nothing.

One entry per measurement, ``<key>.npz`` in the cache folder
(:class:`~audit.cache.settings.CacheSettings`; outside pytest's own cache, so
``-p no:cacheprovider`` keeps it).  The key is the
sha256 of a canonical JSON of everything the measurement depends on
(:meth:`StatsCache.key_inputs`), each read from files' bytes and the spec, never
by tokenizing: the weights' and the tokenizer and config files' sha256, the
corpus sha256, every ``probe`` setting, the measure, normalisation and target,
the backend (its registry name, class and, for onnx, its options), the model's
device, dtype, ``trust_remote_code``, norm and module overrides and paths, the
versions of python, numpy, equilaw and the backend's libraries, the sha256 of
equilaw's own source (:func:`code_sha256`) and :data:`FORMAT`.  Thresholds
(``law``, ``baseline``, ``parity``) and the spec's name are not in it.

An entry (``np.savez``, read with ``allow_pickle=False``) holds:

- ``meta``: UTF-8 JSON (uint8): the format, the key and its inputs (when
  :meth:`StatsCache.key` made it), the small records of the measurement (model,
  corpus, probe, versions, timing, backend, probe loss, loss note, shard ids) and
  the sha256 of the statistics arrays;
- ``result.*``: the measure per layer, its leave-one-shard-out values, ranks and
  condition numbers (what the report needs);
- ``stats.*``: the statistics engine's arrays (:meth:`LayerStats.to_arrays`;
  about 0.8 GB for SmolLM2-135M with 10 shards);
- ``checksum``: the sha256 of ``meta`` and the ``result.*`` arrays;
- ``mac`` (when a cache key is set): the HMAC-SHA256 of ``checksum`` under the key.

Reading checks ``checksum``, the format, the key and, with a cache key, the MAC
before anything is used; a truncated, corrupt, foreign or unauthenticated file is
reported (:class:`CacheWarning`) and the measurement recomputed and written
again.  A checksum alone detects damage, not a rewrite (anyone can recompute
it); the MAC detects a rewrite by anyone without the key (docs/ci.md).  The statistics arrays are read, and
checked against their sha256, only when :attr:`Measurement.stats` is first used
(:class:`StoredStats`): the report does not need them, and reading 0.8 GB
would cost more than the whole re-judging.  Writes go to a temporary file
renamed over the entry (atomic).

The folder has a size cap (:mod:`audit.cache.eviction`): each read and write
records the entry's last use, and each write evicts the least recently used
entries beyond the cap, sparing those this process uses; :meth:`StatsCache.finish`
enforces it over all of them at the end of a run.

File hashes go through the folder's file-hash index (:mod:`audit.cache.index`).

numpy and the standard library only: no backend library is imported.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import time
import warnings
import weakref
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.cache import eviction
from audit.cache.folder import TEMP_PREFIX, CacheError, CacheWarning, clear_folder, prepare_folder
from audit.cache.index import FileHashIndex
from audit.cache.settings import CacheSettings
from audit.corpus import load_corpus
from audit.internal.files import remove_stale_temporaries, write_bytes_atomic
from audit.stats.layer_stats import LayerStats
from audit.versions import software_versions

if TYPE_CHECKING:
    from audit.spec import Spec

__all__ = ["FORMAT", "CacheWarning", "StatsCache", "StoredStats", "code_sha256", "open_cache"]

FORMAT = 2
"""The entry layout and key recipe; raising it orphans every older entry (2: the
class-based measures' sums stored as (shard, class) pairs, not dense)."""


def open_cache(cache: Any = True) -> StatsCache | None:
    """The cache that ``cache`` names: ``True`` the environment's
    (:meth:`CacheSettings.from_environment`; None when ``EQUILAW_NO_CACHE`` turns it
    off), ``False`` or None none, a path that folder, a :class:`CacheSettings` its
    folder when enabled, a :class:`StatsCache` itself."""
    if isinstance(cache, StatsCache):
        return cache
    if cache is None or cache is False:
        return None
    if cache is True:
        cache = CacheSettings.from_environment()
    if isinstance(cache, CacheSettings):
        return StatsCache.from_settings(cache) if cache.enabled else None
    if isinstance(cache, (str, os.PathLike)):
        return StatsCache(Path(cache))
    raise TypeError(f"cache must be True, False, a folder, CacheSettings or a StatsCache, "
                    f"got {cache!r}")


class StatsCache:
    """The entries in ``folder`` (created on the first write).  ``hits``,
    ``stored`` and ``recomputed`` list the entry paths this object loaded, wrote
    and found unreadable, ``authenticated`` the hits whose MAC verified,
    ``untrusted`` the entries not read because ``require_secret`` and no secret, and
    ``cleared`` counts what :meth:`clear` deleted and ``evicted`` lists the entries
    evicted beyond the size cap ``max_gb`` (:mod:`audit.cache.eviction`), for the
    plugin's summary line.

    ``secret`` (the cache key): entries are written with an HMAC-SHA256 of their
    checksum under it and read only when that verifies (the checksum covers the
    meta, with the statistics arrays' sha256, and the result arrays: verifying
    costs one HMAC of 64 bytes, the arrays are hashed as before, lazily).
    ``require_secret`` without a secret: no entry is read, each spec is measured
    (and stored)."""

    def __init__(self, folder: str | os.PathLike[str], secret: bytes | None = None,
                 require_secret: bool = False,
                 max_gb: float = eviction.DEFAULT_MAX_GB) -> None:
        self.folder = Path(folder).expanduser()
        self.secret = secret
        self.require_secret = require_secret
        self.max_gb = max_gb
        self.evicted: list[Path] = []
        self.authenticated: list[Path] = []
        self.untrusted: list[Path] = []
        self.hits: list[Path] = []
        self.stored: list[Path] = []
        self.recomputed: list[Path] = []
        self.cleared: int | None = None
        """How many files :meth:`clear` deleted; None before it runs."""
        self.index = FileHashIndex(self.folder)
        self._inputs: dict[str, dict[str, Any]] = {}
        self._tidied = False

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> StatsCache:
        return cls(settings.folder, settings.secret, settings.require_secret,
                   settings.max_gb)

    def __repr__(self) -> str:
        return f"StatsCache({str(self.folder)!r})"

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    # ------------------------------------------------------------------ the key
    def key_inputs(self, spec: Spec, backend: Any) -> dict[str, Any] | None:
        """Everything the measurement of ``spec`` by ``backend`` depends on, as
        JSON-able values; None when the model has no file identity (a model handed
        over in memory, a backend without files), which is never cached."""
        info = backend.info()
        files = backend.model_files()
        if files is None:
            return None
        corpus = load_corpus(spec.probe.corpus)
        model = asdict(spec.model)
        cls = type(backend)
        return {
            "format": FORMAT,
            "backend": {"name": spec.backend, "runs_as": getattr(backend, "backend_name", None),
                        "class": f"{cls.__module__}.{cls.__qualname__}",
                        "options": asdict(spec.onnx) if spec.backend == "onnx" else None},
            "model": model,
            "resolved": {"model": str(info.path),
                         "tokenizer": str(getattr(backend, "tokenizer_path", ""))},
            "info": {"architecture": info.architecture, "layers": info.num_layers,
                     "width": info.width, "norm": [info.norm.kind, float(info.norm.eps)]},
            "weights": [[str(p), self.file_sha256(p)] for p in files.weights],
            "config_files": [[str(p), self.file_sha256(p)] for p in files.config],
            "corpus": {"name": corpus.name, "sha256": corpus.sha256},
            "probe": asdict(spec.probe),
            "measure": spec.measure,
            "normalization": spec.normalization,
            "target": spec.target,
            "versions": {"machine": platform.machine(), **software_versions(backend)},
            "code": code_sha256(),
        }

    def key(self, spec: Spec, backend: Any) -> str | None:
        """The sha256 of :meth:`key_inputs` as canonical JSON, or None (not cached)."""
        inputs = self.key_inputs(spec, backend)
        if inputs is None:
            return None
        key = hashlib.sha256(_canonical(inputs)).hexdigest()
        self._inputs[key] = inputs  # written into the entry's meta by store()
        return key

    def file_sha256(self, path: Path) -> str:
        """sha256 of a file's bytes, through the folder's file-hash index."""
        return self.index.file_sha256(path)

    # -------------------------------------------------------------- read, write
    def load(self, key: str) -> dict[str, Any] | None:
        """The stored parts of the measurement under ``key``: the fields of
        :class:`audit.pipeline.Measurement` but ``spec`` (``loss`` as a dict of
        :class:`~audit.report.data.LossSummary` fields, or None; ``stats`` a
        :class:`StoredStats`), or None when there is no entry.  An entry that is
        truncated, corrupt, of another format or of another key gives a
        :class:`CacheWarning` and None (never its numbers)."""
        path = self.path(key)
        if not self._tidied:   # entries' temporaries left by killed processes (~0.8 GB each)
            remove_stale_temporaries(self.folder, TEMP_PREFIX)
            self._tidied = True
        if self.secret is None and self.require_secret:
            if path.exists():
                warnings.warn(CacheWarning(
                    f"statistics cache entry {path} is not read: under CI an entry is used "
                    f"only when authenticated, and no key is set (EQUILAW_CACHE_KEY or "
                    f"EQUILAW_CACHE_KEY_FILE: docs/ci.md); measuring again"), stacklevel=2)
                self.untrusted.append(path)
            return None
        try:
            fid = open(path, "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._unreadable(path, f"{type(exc).__name__}: {exc}")
        try:
            npz = np.load(fid, allow_pickle=False)
            checksum = npz["checksum"].tobytes().decode("ascii")
            meta_bytes = npz["meta"].tobytes()
            results = {name: npz[name] for name in npz.files if name.startswith("result.")}
            if _digest(meta_bytes, results) != checksum:
                raise ValueError("its checksum does not match its content")
            meta = json.loads(meta_bytes.decode("utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
            if meta.get("key") != key:
                raise ValueError(f"it holds the entry of key {str(meta.get('key'))[:12]}…")
            stats_names = sorted(name[len("stats."):] for name in npz.files
                                 if name.startswith("stats."))
            if stats_names != sorted(meta["stats_arrays"]):
                raise ValueError("its statistics arrays are not those it lists")
            if self.secret is not None:
                if "mac" not in npz.files:
                    raise ValueError("it carries no MAC (written without the cache key), and "
                                     "a key is set")
                mac = npz["mac"].tobytes().decode("ascii")
                if not hmac.compare_digest(mac, _mac(self.secret, checksum)):
                    raise ValueError("its MAC does not verify with the cache key (written "
                                     "with another key, or altered)")
            parts = _parts(meta["records"], results)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile,
                UnicodeDecodeError) as exc:
            fid.close()
            return self._unreadable(path, f"{type(exc).__name__}: {exc}")
        parts["stats"] = StoredStats(path, fid, npz, stats_names, meta["stats_sha256"])
        eviction.record_use(path)
        self.hits.append(path)
        if self.secret is not None:
            self.authenticated.append(path)
        return parts

    def _unreadable(self, path: Path, why: str) -> None:
        warnings.warn(CacheWarning(f"statistics cache entry {path} is unreadable ({why}); "
                                   f"recomputing it"), stacklevel=3)
        self.recomputed.append(path)
        return None

    def store(self, key: str, measurement: Any) -> Path | None:
        """Write ``measurement`` (an :class:`audit.pipeline.Measurement`) under
        ``key``, atomically; returns the entry's path, or None with a
        :class:`CacheWarning` when it cannot be written (the audit goes on)."""
        m = measurement
        if getattr(m.stats, "spilled", False):
            # Statistics kept on disk because they do not fit in memory (a 7B model:
            # 41 GiB of Gram matrices) cannot be written as one entry either.
            warnings.warn(CacheWarning("not cached: the statistics were spilled to disk "
                                       "(too large for memory), so an entry cannot hold them"),
                          stacklevel=2)
            return None
        stats = {f"stats.{name}": np.asarray(value, order="C")
                 for name, value in m.stats.to_arrays().items()}
        results = {"result.pr": np.asarray(m.pr, dtype=np.float64),
                   "result.ranks": np.asarray(m.ranks),
                   "result.conditions": np.asarray(m.conditions, dtype=np.float64)}
        if m.leave_one_out is not None:
            results["result.leave_one_out"] = np.asarray(m.leave_one_out, dtype=np.float64)
        loss = None if m.loss is None else {
            "mean": m.loss.mean, "stderr": m.loss.stderr,
            "leave_one_out": list(m.loss.leave_one_out), "tokens": m.loss.tokens}
        meta = {
            "format": FORMAT, "key": key, "inputs": self._inputs.get(key),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "stats_arrays": sorted(name[len("stats."):] for name in stats),
            "stats_sha256": _digest(b"", {k[len("stats."):]: v for k, v in stats.items()}),
            "records": {"model": m.model, "corpus": m.corpus, "probe": m.probe,
                        "versions": m.versions, "timing": m.timing, "backend": m.backend,
                        "loss": loss, "loss_note": m.loss_note,
                        "shard_ids": [int(i) for i in m.shard_ids]},
        }
        meta_bytes = json.dumps(meta, sort_keys=True, default=_plain).encode("utf-8")
        checksum = _digest(meta_bytes, results)
        arrays = {"meta": np.frombuffer(meta_bytes, dtype=np.uint8), **results, **stats,
                  "checksum": np.frombuffer(checksum.encode("ascii"), dtype=np.uint8)}
        if self.secret is not None:
            arrays["mac"] = np.frombuffer(_mac(self.secret, checksum).encode("ascii"),
                                          dtype=np.uint8)
        path = self.path(key)
        try:
            self._prepare_folder()
            write_bytes_atomic(path, lambda f: np.savez(f, **arrays), prefix=TEMP_PREFIX)
        except OSError as exc:
            warnings.warn(CacheWarning(f"cannot write the statistics cache entry {path}: "
                                       f"{type(exc).__name__}: {exc}"), stacklevel=2)
            return None
        self.stored.append(path)
        eviction.record_use(path)
        self.evicted += eviction.enforce(self.folder, self.max_gb)
        return path

    # ------------------------------------------------------------------ folder
    def _prepare_folder(self) -> None:
        prepare_folder(self.folder)

    def finish(self) -> list[Path]:
        """At the end of a run: evict the least recently used entries beyond the cap,
        this run's own included (they go last), and return them."""
        removed = eviction.enforce(self.folder, self.max_gb, protect=())
        self.evicted += removed
        return removed

    def clear(self) -> int:
        """Delete what equilaw wrote in the folder (:func:`audit.cache.folder.clear_folder`)
        and return how many files and folders went; raises :class:`CacheError`."""
        removed = clear_folder(self.folder)
        self.index.forget()
        self.cleared = removed
        return removed


class StoredStats(LayerStats):
    """A :class:`LayerStats` whose arrays are still in a cache entry: they are read,
    checked against their sha256 and turned into the statistics on the first use
    of any attribute, after which it is an ordinary :class:`LayerStats`.  The entry
    stays open until then, so a later rewrite of the entry does not change it.  A
    failed check raises :class:`CacheError` and deletes the entry."""

    def __init__(self, path: Path, fid: Any, npz: Any, names: list[str], sha256: str) -> None:
        # LayerStats.__init__ is not called: its state comes from the entry.
        self.__dict__["_stored"] = (path, npz, names, sha256)
        self.__dict__["_stored_close"] = weakref.finalize(self, _close, npz, fid)

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes not yet set: the statistics' own state.
        stored = self.__dict__.get("_stored")
        if stored is None or name.startswith("__"):
            raise AttributeError(name)
        self._read(stored)
        return getattr(self, name)

    def _read(self, stored: tuple) -> None:
        path, npz, names, sha256 = stored
        try:
            try:
                arrays = {name: npz[f"stats.{name}"] for name in names}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise CacheError(f"statistics cache entry {path}: its statistics arrays are "
                                 f"unreadable ({type(exc).__name__}: {exc}); the entry is "
                                 f"deleted: run again to recompute it") from None
            if _digest(b"", arrays) != sha256:
                raise CacheError(f"statistics cache entry {path}: its statistics arrays fail "
                                 f"their checksum; the entry is deleted: run again to "
                                 f"recompute it")
            state = LayerStats.from_arrays(arrays)
        except CacheError:
            self.__dict__["_stored_close"]()
            try:
                path.unlink()
            except OSError:
                pass
            raise
        self.__dict__["_stored_close"]()
        del self.__dict__["_stored"]
        self.__dict__.update(vars(state))


# --------------------------------------------------------------------------- helpers

def code_sha256() -> str:
    """sha256 of equilaw's own source files (names and bytes; about 3 ms): any
    change of the code re-measures, where the version number might not move."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root).as_posix()}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _close(npz: Any, fid: Any) -> None:
    npz.close()
    fid.close()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=_plain).encode("ascii")


def _plain(value: Any) -> Any:
    """numpy scalars and tuples as JSON knows them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def _mac(key: bytes, checksum: str) -> str:
    """HMAC-SHA256 of an entry's checksum under the cache key."""
    return hmac.new(key, checksum.encode("ascii"), hashlib.sha256).hexdigest()


def _digest(head: bytes, arrays: dict[str, np.ndarray]) -> str:
    """sha256 of ``head`` and each array's name, dtype, shape and bytes, by name."""
    digest = hashlib.sha256(head)
    for name in sorted(arrays):
        a = np.asarray(arrays[name], order="C")   # 0-d stays 0-d
        digest.update(f"\n{name}|{a.dtype.str}|{a.shape}\n".encode())
        digest.update(a.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _parts(records: dict[str, Any], results: dict[str, np.ndarray]) -> dict[str, Any]:
    loo = results.get("result.leave_one_out")
    return {
        "pr": results["result.pr"], "leave_one_out": loo,
        "shard_ids": tuple(int(i) for i in records["shard_ids"]),
        "ranks": results["result.ranks"], "conditions": results["result.conditions"],
        "loss": records["loss"], "loss_note": records["loss_note"],
        "model": records["model"], "corpus": records["corpus"], "probe": records["probe"],
        "versions": records["versions"], "timing": records["timing"],
        "backend": records["backend"],
    }
