"""The ``"gram"`` method with ``storage="spill"``: closed shards' Gram matrices
in a temporary folder on disk (:class:`SpillFolder`)."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from audit.errors import StatsError
from audit.internal.files import temporary_folder
from audit.stats.accumulator import Accumulator
from audit.stats.gram import GramAccumulator
from audit.stats.measures import Moments


class SpilledGramAccumulator(GramAccumulator):
    """``method="gram"``, ``storage="spill"``: the Gram matrices of one shard at a
    time in memory, those of the others on disk.

    The shard being fed (the open shard) keeps its Gram matrices in memory,
    float64 [layers, d, d]; feeding another shard writes them to a
    :class:`SpillFolder`, one file per shard and layer (the upper triangle, packed:
    nothing is lost, since every Gram matrix is exactly symmetric), frees them and
    opens the new shard (read back in if it was written before).  Shards fed in
    contiguous blocks, as :mod:`audit.probe` assigns windows, are each written
    once; feeding them interleaved is correct but costs a write and a read of
    layers × d(d+1)/2 values per switch.  Results go layer by layer: a layer's
    total is the sum of its shards' matrices read one at a time, in shard order
    (so equal bit for bit to :class:`GramAccumulator`'s for the same updates), and
    is kept in the folder until the next update or merge; each left-out scatter is
    that total minus one shard's matrix, made when drawn.

    Memory, in float64 values: layers × d² (the open shard) and, while results
    are computed, about 8 × d² (one layer's total, one shard's matrix, the left-out
    scatter in use and the next, the solve's workspace), plus what every
    accumulator keeps (vectors and class sums: :mod:`audit.stats.accumulator`).  Disk:
    layers × d(d+1)/2 per closed shard, and as much again for the cached totals.
    Merges, copies and :meth:`from_arrays` go one shard and layer at a time;
    :meth:`to_arrays` builds every shard's matrices in memory (shards × layers × d²).
    """

    storage = "spill"

    def __init__(self, shards: int, layers: int, width: int, shift_x: np.ndarray,
                 shift_y: float, target: bool, classed: bool,
                 spill_dir: str | Path | None = None) -> None:
        self.spill_dir = spill_dir
        # closed shards and totals: shards × layers upper triangles at most
        self.folder = SpillFolder(spill_dir, need=shards * layers * width * (width + 1) * 4)
        self.open_shard: int | None = None
        self._open: np.ndarray | None = None  # the open shard's Grams [layers, d, d]
        self._stored = np.zeros((shards, layers), dtype=bool)  # (shard, layer) in the folder
        self._totals: set[int] = set()  # layers whose total is in the folder
        super().__init__(shards, layers, width, shift_x, shift_y, target, classed)

    def _options(self) -> dict:
        return {"spill_dir": self.spill_dir}

    def _allocate(self) -> None:
        if self.target:
            self.sxy = np.zeros((self.shards, self.layers, self.width))

    def close(self) -> None:
        self._open = self.open_shard = None
        self.folder.close()

    # ------------------------------------------------------------ storage
    def add(self, shard: int, x: np.ndarray, y: np.ndarray) -> None:
        self._open_for_update(shard)
        self._forget_totals()
        super().add(shard, x, y)

    def _open_for_update(self, shard: int) -> None:
        """Make ``shard`` the open shard: write the open one out first (it stays
        open if that fails), then free it."""
        if self.open_shard == shard:
            return
        if self.open_shard is not None:
            for layer in range(self.layers):
                self.folder.write(_shard_file(self.open_shard, layer), self._open[layer])
                self._stored[self.open_shard, layer] = True
            self._open = self.open_shard = None
        block = np.zeros((self.layers, self.width, self.width))
        for layer in np.flatnonzero(self._stored[shard]):
            self.folder.read_upper(_shard_file(shard, layer), block[layer])
            _mirror_upper(block[layer])
        self._open, self.open_shard = block, shard

    def _gram_slot(self, shard: int, layer: int) -> np.ndarray:
        return self._open[layer]  # add() opened the shard

    def gram(self, shard: int, layer: int) -> np.ndarray:
        if shard == self.open_shard:
            return self._open[layer]
        out = np.zeros((self.width, self.width))
        if self._stored[shard, layer]:
            self.folder.read_upper(_shard_file(shard, layer), out)
            _mirror_upper(out)
        return out

    def _put(self, shard: int, layer: int, matrix: np.ndarray) -> None:
        """Set one shard's and layer's Gram matrix (symmetric [d, d])."""
        if shard == self.open_shard:
            self._open[layer] = matrix
        else:
            self.folder.write(_shard_file(shard, layer), matrix)
            self._stored[shard, layer] = True
        self._forget_totals()

    def _forget_totals(self) -> None:
        for layer in self._totals:
            self.folder.remove(_total_file(layer))
        self._totals.clear()

    def _total_gram(self, layer: int) -> np.ndarray:
        """Σ over shards of ``layer``'s Gram matrices [d, d], summed in shard
        order as :meth:`GramAccumulator._sums` does (upper triangles, then
        mirrored), from the folder's cache when it holds it."""
        d = self.width
        total = np.zeros((d, d))
        if not self._stored[:, layer].any():  # only the open shard: nothing to read
            if self.open_shard is not None:
                total += self._open[layer]
        elif layer in self._totals:
            self.folder.read_upper(_total_file(layer), total)
        else:
            buf = np.zeros((d, d))  # its lower triangle stays 0
            for s in range(self.shards):
                if s == self.open_shard:
                    total += self._open[layer]
                elif self._stored[s, layer]:
                    self.folder.read_upper(_shard_file(s, layer), buf)
                    total += buf
            self.folder.write(_total_file(layer), total)
            self._totals.add(layer)
        _mirror_upper(total)
        return total

    # ---------------------------------------------------- the method's part
    def _rebase_scatter(self, out: Accumulator, delta: np.ndarray, eps_y: float) -> None:
        # GramAccumulator's formula, one shard and layer at a time
        for s, layer in np.ndindex(self.shards, self.layers):
            if self.n[s]:
                sx_b, dl = self.sx[s, layer], delta[0, layer]
                out._put(s, layer, self.gram(s, layer)
                         + sx_b[:, None] * dl[None, :]
                         + dl[:, None] * sx_b[None, :]
                         + float(self.n[s]) * dl[:, None] * dl[None, :])
        self._rebase_sxy(out, delta, eps_y)

    def _merge_scatter(self, other: Accumulator) -> None:
        for s, layer in np.ndindex(self.shards, self.layers):
            if other.n[s]:
                self._put(s, layer, self.gram(s, layer) + other.gram(s, layer))
        if self.target:
            self.sxy += other.sxy

    def _copy_scatter(self, source: Accumulator) -> None:
        for s, layer in np.ndindex(self.shards, self.layers):
            if source.n[s]:
                self._put(s, layer, source.gram(s, layer))
        if self.target:
            self.sxy = source.sxy.copy()

    def _scatter_arrays(self) -> dict[str, np.ndarray]:
        sxx = np.empty((self.shards, self.layers, self.width, self.width))
        for s, layer in np.ndindex(self.shards, self.layers):
            sxx[s, layer] = self.gram(s, layer)
        d = {"sxx": sxx}
        if self.target:
            d["sxy"] = self.sxy.copy()
        return d

    def _load_scatter(self, a: dict[str, np.ndarray]) -> None:
        sxx = a["sxx"]
        if sxx.shape != (self.shards, self.layers, self.width, self.width):
            raise ValueError(f"sxx has shape {sxx.shape}, expected "
                             f"{(self.shards, self.layers, self.width, self.width)}")
        for s, layer in np.ndindex(self.shards, self.layers):
            if self.n[s]:
                self._put(s, layer, sxx[s, layer])
        if self.target:
            self.sxy[...] = a["sxy"]

    def _total_scatter(self, mom: Moments, layer: int) -> None:
        mom.sxx = self._total_gram(layer)
        mom.sxy = self.sxy[:, layer].sum(axis=0) if self.target else None

    def _left_out_scatters(self, layer: int, parts: np.ndarray,
                           total: Moments | None = None) -> Iterator[dict]:
        if total is None:
            total = Moments(n=0, sx=np.zeros(0))
            self._total_scatter(total, layer)
        total, sxy = total.sxx, total.sxy
        buf = np.zeros((self.width, self.width))  # its lower triangle stays 0
        for i in parts:
            if i == self.open_shard:
                shard = self._open[layer]
            elif self._stored[i, layer]:
                self.folder.read_upper(_shard_file(i, layer), buf)
                shard = buf
            else:  # a shard that holds no examples
                shard = 0.0
            left = total - shard  # its upper triangle is GramAccumulator's
            _mirror_upper(left)
            scatter = {"sxx": left}
            if self.target:
                scatter["sxy"] = sxy - self.sxy[i, layer]
            yield scatter


class SpillFolder:
    """A temporary folder of float64 symmetric matrices, one file each: the upper
    triangle, row by row (d(d+1)/2 values, native byte order).

    Made at the first write, in ``parent`` (default: :func:`tempfile.gettempdir`,
    which follows ``TMPDIR``), named ``equilaw-spill-*``, after checking that the
    disk there has ``need`` bytes free; removed with everything in it by
    :meth:`close`, when this object is garbage-collected, or at interpreter exit
    (:func:`weakref.finalize`), so that an exception anywhere leaves nothing
    behind.  A process killed by a signal (SIGTERM, SIGKILL, the kernel's
    out-of-memory killer) runs no clean-up: each folder is named by its process
    and host (:func:`audit.internal.files.temporary_folder`), and making a new
    folder removes those in the same parent that no live writer owns, as for
    every temporary equilaw writes (:func:`audit.internal.files.remove_stale_temporaries`:
    those of ended processes of this host, another host's after a week).
    Errors of the file system become :class:`~audit.errors.StatsError` naming the
    path."""

    def __init__(self, parent: str | Path | None = None, need: int = 0) -> None:
        self.parent = parent
        self.need = need
        self.path: Path | None = None
        self._finalizer: weakref.finalize | None = None
        self._closed = False

    def _folder(self) -> Path:
        if self._closed:
            raise StatsError("these statistics were closed: their spill folder was removed")
        if self.path is None:
            parent = tempfile.gettempdir() if self.parent is None else str(self.parent)
            free = shutil.disk_usage(parent).free
            if free < self.need:
                raise StatsError(
                    f"the spill folder's disk ({parent!r}) has {_size(free)} free, but the "
                    f"spilled statistics need up to {_size(self.need)}: free space there or "
                    f"choose spill_dir (or TMPDIR) on a larger disk")
            try:
                path = temporary_folder(Path(parent), _SPILL_PREFIX)
            except OSError as exc:
                raise StatsError(f"cannot make a spill folder in {parent!r}: {exc}") from None
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(path), ignore_errors=True)
            self.path = path
        return self.path

    def write(self, name: str, matrix: np.ndarray) -> None:
        """Store the upper triangle of the square ``matrix`` as ``name``."""
        d = matrix.shape[0]
        packed = np.empty(d * (d + 1) // 2)
        pos = 0
        for i in range(d):  # row slices: no index arrays of d² entries
            packed[pos:pos + d - i] = matrix[i, i:]
            pos += d - i
        path = self._folder() / name
        try:
            packed.tofile(path)
        except OSError as exc:
            raise StatsError(f"cannot write the spilled statistics to {str(path)!r}: {exc}; "
                             f"free space there or choose another spill_dir") from None

    def read_upper(self, name: str, out: np.ndarray) -> None:
        """Write the upper triangle (diagonal included) of the matrix stored as
        ``name`` into ``out`` [d, d]; its strict lower triangle is left as it is."""
        d = out.shape[0]
        path = self._folder() / name
        try:
            packed = np.fromfile(path, dtype=np.float64)
        except OSError as exc:
            raise StatsError(f"cannot read the spilled statistics from {str(path)!r}: "
                             f"{exc}") from None
        if packed.size != d * (d + 1) // 2:
            raise StatsError(f"the spill file {str(path)!r} holds {packed.size} values, "
                             f"not the {d * (d + 1) // 2} of a {d}×{d} upper triangle")
        pos = 0
        for i in range(d):
            out[i, i:] = packed[pos:pos + d - i]
            pos += d - i

    def remove(self, name: str) -> None:
        if self.path is not None and not self._closed:
            (self.path / name).unlink(missing_ok=True)

    def bytes(self) -> int:
        """Bytes of the files in the folder now (0 before the first write)."""
        if self.path is None or self._closed:
            return 0
        return sum(f.stat().st_size for f in self.path.iterdir())

    def close(self) -> None:
        """Remove the folder and its files; later reads and writes raise."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()


_SPILL_PREFIX = "equilaw-spill-"


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _shard_file(shard: int, layer: int) -> str:
    return f"shard{shard}-layer{layer}.f64"


def _total_file(layer: int) -> str:
    return f"total-layer{layer}.f64"


def _mirror_upper(a: np.ndarray, block: int = 256) -> None:
    """Copy the upper triangle of the square ``a`` onto its lower one, in place,
    block by block (a transposed copy of whole rows would stride over d² values)."""
    d = a.shape[0]
    for i0 in range(0, d, block):
        i1 = min(i0 + block, d)
        diag = a[i0:i1, i0:i1]
        diag[...] = np.triu(diag) + np.triu(diag, 1).T
        for j0 in range(i1, d, block):
            j1 = min(j0 + block, d)
            a[j0:j1, i0:i1] = a[i0:i1, j0:j1].T
