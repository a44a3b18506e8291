"""Read a GGUF file's metadata header without touching its tensors.

``gguf.GGUFReader`` maps and indexes every tensor (7-20 s on the default models);
the audit only needs four numbers to name its test items, so this module parses
the header sequentially and stops as soon as the requested keys are found.

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, uint32 version, uint64 tensor
count, uint64 key-value count, then the key-value pairs: a string key (uint64
length + UTF-8 bytes), a uint32 value type, the value.  Strings are uint64 length +
bytes; arrays are uint32 element type, uint64 count, elements.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.errors import BackendError

if TYPE_CHECKING:
    from audit.backends.base import ModelInfo
    from audit.norms import NormInfo

# value type -> (struct format, size); 8 = string and 9 = array are variable.
_SCALARS = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32",
               6: "float32", 7: "bool", 8: "string", 9: "array", 10: "uint64",
               11: "int64", 12: "float64"}

MAX_ARRAY = 1024
"""Arrays longer than this are skipped (returned as :class:`SkippedArray`) unless
their key is requested by name."""


@dataclass(frozen=True)
class SkippedArray:
    """A long array (such as the tokenizer vocabulary) that was stepped over."""

    element_type: str
    length: int


class _Truncated(Exception):
    pass


class _Cursor:
    """Sequential little-endian reader over a memory map (no per-read syscalls)."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated

    def scalar(self, vtype: int) -> Any:
        fmt, size = _SCALARS[vtype]
        self._need(size)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self) -> int:
        return self.scalar(4)

    def u64(self) -> int:
        return self.scalar(10)

    def string(self) -> str:
        n = self.u64()
        self._need(n)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.u64()
        self._need(n)
        self.pos += n

    def value(self, vtype: int, read_arrays: bool) -> Any:
        if vtype in _SCALARS:
            return self.scalar(vtype)
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.u32()
            count = self.u64()
            if etype not in _SCALARS and etype not in (_STRING, _ARRAY):
                raise ValueError(f"unknown array element type {etype}")
            if read_arrays or count <= MAX_ARRAY:
                return [self.value(etype, True) for _ in range(count)]
            self.skip_array(etype, count)
            return SkippedArray(_TYPE_NAMES[etype], count)
        raise ValueError(f"unknown value type {vtype}")

    def skip_array(self, etype: int, count: int) -> None:
        if etype in _SCALARS:
            n = _SCALARS[etype][1] * count
            self._need(n)
            self.pos += n
        elif etype == _STRING:
            buf, pos, size, unpack = self.buf, self.pos, self.size, struct.unpack_from
            for _ in range(count):  # each string: uint64 length, then bytes
                if pos + 8 > size:
                    raise _Truncated
                pos += 8 + unpack("<Q", buf, pos)[0]
            if pos > size:
                raise _Truncated
            self.pos = pos
        else:  # nested arrays
            for _ in range(count):
                self.value(_ARRAY, False)

    def skip(self, vtype: int) -> None:
        if vtype in _SCALARS:
            self._need(_SCALARS[vtype][1])
            self.pos += _SCALARS[vtype][1]
        elif vtype == _STRING:
            self.skip_string()
        elif vtype == _ARRAY:
            etype = self.u32()
            self.skip_array(etype, self.u64())
        else:
            raise ValueError(f"unknown value type {vtype}")


def read_gguf_metadata(path: str | Path, keys: list[str] | tuple[str, ...] | set[str] | None = None
                       ) -> dict[str, Any]:
    """Metadata key-value pairs of the GGUF file at ``path``.

    With ``keys``, only those are returned (the ones present) and reading stops
    once all are found; without, every pair is returned, long arrays (more than
    :data:`MAX_ARRAY` elements) as :class:`SkippedArray`.  The pseudo-keys
    ``GGUF.version``, ``GGUF.tensor_count`` and ``GGUF.kv_count`` give the header.
    Values: int, float, bool, str, or lists of them.  Raises :class:`BackendError`
    for a file that is not GGUF v2/v3 or is truncated.
    """
    path = Path(path)
    wanted = None if keys is None else set(keys)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Cursor(buf), wanted, path)
    except _Truncated:
        raise BackendError(f"GGUF file {str(path)!r} is truncated") from None
    except ValueError as exc:  # mmap of an empty file, unknown type codes
        if path.stat().st_size == 0:
            raise BackendError(f"{str(path)!r} is empty, not a GGUF file") from None
        raise BackendError(f"GGUF file {str(path)!r}: {exc}") from None
    except OSError as exc:
        raise BackendError(f"cannot read GGUF file {str(path)!r}: {exc}") from exc


def _parse(cur: _Cursor, wanted: set[str] | None, path: Path) -> dict[str, Any]:
    cur._need(4)
    if cur.buf[0:4] != b"GGUF":
        raise BackendError(f"{str(path)!r} is not a GGUF file (magic {cur.buf[0:4]!r})")
    cur.pos = 4
    version = cur.u32()
    if version not in (2, 3):
        hint = " (a big-endian file?)" if version > 0xFFFF else ""
        raise BackendError(f"GGUF file {str(path)!r} has version {version}{hint}; "
                           "equilaw reads versions 2 and 3")
    header = {"GGUF.version": version, "GGUF.tensor_count": cur.u64(), "GGUF.kv_count": cur.u64()}
    out: dict[str, Any] = {}
    if wanted is None:
        out.update(header)
    else:
        out.update({k: v for k, v in header.items() if k in wanted})
    remaining = None if wanted is None else {k for k in wanted if k not in out}
    for _ in range(header["GGUF.kv_count"]):
        if remaining is not None and not remaining:
            break
        key = cur.string()
        vtype = cur.u32()
        if remaining is None:
            out[key] = cur.value(vtype, read_arrays=False)
        elif key in remaining:
            out[key] = cur.value(vtype, read_arrays=True)
            remaining.discard(key)
        else:
            cur.skip(vtype)
    return out


def gguf_model_info(path: str | Path, norm: NormInfo | None = None, *,
                    model: str | None = None) -> ModelInfo:
    """:class:`ModelInfo` from a GGUF header: ``general.architecture``,
    ``{arch}.block_count`` (L), ``{arch}.embedding_length`` (d) and
    ``{arch}.attention.layer_norm_rms_epsilon`` or ``layer_norm_epsilon``.

    The norm kind comes from :mod:`audit.backends.architectures`; ``norm``
    (the spec's ``model.norm``) overrides kind and epsilon.  ``model`` names the
    model in errors.
    """
    from audit.backends.architectures import final_norm_info
    from audit.backends.base import MAX_LAYERS, MAX_WIDTH, ModelInfo, dimension_problem

    path = Path(path)
    arch_key = "general.architecture"
    arch = read_gguf_metadata(path, [arch_key]).get(arch_key)
    if not isinstance(arch, str):
        raise BackendError(f"GGUF file {str(path)!r} has no general.architecture", model=model)
    keys = {f"{arch}.block_count": "block count", f"{arch}.embedding_length": "width"}
    rms_key = f"{arch}.attention.layer_norm_rms_epsilon"
    ln_key = f"{arch}.attention.layer_norm_epsilon"
    # Asking for both epsilon keys would read to the end (one is always absent);
    # the RMSNorm key first keeps the common case at a fraction of a millisecond.
    meta = read_gguf_metadata(path, [*keys, rms_key])
    for key, limit in zip(keys, (MAX_LAYERS, MAX_WIDTH)):
        if key not in meta:
            raise BackendError(f"GGUF file {str(path)!r} has no {key}", model=model)
        problem = dimension_problem(meta[key], key, limit)
        if problem is not None:
            raise BackendError(f"GGUF file {str(path)!r}: {problem}", model=model)
    eps = meta.get(rms_key)
    if eps is None:
        eps = read_gguf_metadata(path, [ln_key]).get(ln_key)
    info_norm = final_norm_info(arch, eps=None if eps is None else float(eps),
                                override=norm, model=model)
    return ModelInfo(architecture=arch, num_layers=int(meta[f"{arch}.block_count"]),
                     width=int(meta[f"{arch}.embedding_length"]), norm=info_norm,
                     path=str(path))
