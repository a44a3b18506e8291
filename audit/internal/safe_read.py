"""Reading files equilaw does not trust, with bounds.

Specs come from pull requests, ``mergekit_config.yml`` and ``config.json`` ship with
third-party checkpoints, baselines and corpora live in shared folders.  Every such
file is read here, so that each one:

- is a regular file: a FIFO, socket or device would block ``open()`` or never end,
  so :func:`open_regular` opens without blocking and refuses anything else, naming
  the file and what it is (:func:`require_regular` does the same for files that a
  library opens later, such as weights);
- is nested at most :data:`MAX_DEPTH` containers deep: deeper JSON or YAML is
  refused with the project's error instead of a ``RecursionError`` in the parser
  or in whatever walks the data afterwards (:func:`loads_json`; YAML in
  :mod:`audit.internal.yaml_lines`);
- is quoted in messages through :func:`short_repr`, which caps the length, so that
  an error about a huge value stays a line long.

Every function takes ``error(field, line, message) -> Exception``, the caller's way
of building its own error (a :class:`~audit.errors.SpecError` for a spec, a
:class:`~audit.errors.ReportError` for a report...), as
:func:`audit.internal.yaml_lines.load_file` does.
"""

from __future__ import annotations

import json
import os
import reprlib
import stat
from collections.abc import Callable
from typing import Any

ErrorFactory = Callable[[str | None, int | None, str], Exception]
"""``error(field, line, message)``: the caller's error for a problem at ``field``
(dotted, or None for the whole file) and 1-based ``line`` (or None)."""

MAX_DEPTH = 64
"""Deepest nesting of lists and mappings accepted in any JSON or YAML input.  The
deepest file equilaw writes or reads on purpose (a report, with its spec inside)
nests 7 levels; a mergekit config with per-layer parameter gradients about 8."""

MAX_YAML_NODES = 100_000
"""Most values a YAML document may hold once its aliases are expanded.  A spec holds
about a hundred and a mergekit config of a 128-layer model a few thousand; a YAML
alias bomb (each level repeating the previous one 9 times) passes this at level 6,
long before it exhausts memory or time."""

MAX_QUOTE = 80
"""Longest quotation of an input value in an error message (characters)."""


def file_kind(mode: int) -> str | None:
    """What a non-regular file is, for messages; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def not_regular(what: str, kind: str) -> str:
    """The message for a file of ``kind`` given where a ``what`` was expected."""
    if kind == "a folder":
        return f"is a folder, not a {what}"
    return (f"is {kind}, not a regular file: equilaw reads a {what} only from a regular "
            f"file (reading {kind} can block forever)")


def require_regular(path: str | os.PathLike, what: str, error: ErrorFactory) -> None:
    """Raise ``error`` unless ``path`` (symlinks followed) is a regular file.  Reads
    nothing, so it never blocks; for files that a library opens later."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(None, None, f"{what} not found") from None
    except OSError as exc:
        raise error(None, None, f"cannot read {what}: {exc.strerror or exc}") from None
    kind = file_kind(mode)
    if kind is not None:
        raise error(None, None, not_regular(what, kind))


def open_regular(path: str | os.PathLike, what: str, error: ErrorFactory):
    """Open ``path`` for binary reading, refusing anything but a regular file.

    The file is opened with ``O_NONBLOCK`` and checked on its descriptor, so a FIFO
    cannot block the open and cannot be swapped in between the check and the read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(None, None, f"{what} not found") from None
    except IsADirectoryError:
        raise error(None, None, not_regular(what, "a folder")) from None
    except OSError as exc:
        raise error(None, None, f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise error(None, None, not_regular(what, kind))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, what: str, error: ErrorFactory) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`)."""
    with open_regular(path, what, error) as stream:
        try:
            return stream.read()
        except OSError as exc:
            raise error(None, None, f"cannot read {what}: {exc.strerror or exc}") from None


def read_text(path: str | os.PathLike, what: str, error: ErrorFactory) -> str:
    """The UTF-8 text (a BOM allowed) of the regular file ``path``."""
    raw = read_bytes(path, what, error)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(None, None, f"not UTF-8 text (byte {exc.start})") from None


def too_deep(what: str) -> str:
    return f"{what} nests lists or mappings more than {MAX_DEPTH} levels deep"


def check_depth(data: Any, what: str, error: ErrorFactory) -> None:
    """Raise ``error`` when ``data`` nests containers more than :data:`MAX_DEPTH`
    levels deep (walked without recursion; shared or cyclic containers are walked
    once)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen: set[int] = set()
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, (dict, list, tuple)) or id(value) in seen:
            continue
        if depth > MAX_DEPTH:
            raise error(None, None, too_deep(what))
        seen.add(id(value))
        items = value.values() if isinstance(value, dict) else value
        stack.extend((item, depth + 1) for item in items)


def loads_json(text: str | bytes, what: str, error: ErrorFactory) -> Any:
    """Parse JSON text, refusing invalid JSON and nesting deeper than
    :data:`MAX_DEPTH` with ``error`` (never ``RecursionError``)."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise error(None, None, too_deep(what)) from None
    except json.JSONDecodeError as exc:
        raise error(None, exc.lineno, f"invalid JSON: {exc.msg} (line {exc.lineno}, "
                                      f"column {exc.colno})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(None, None, f"invalid JSON: {short_repr(str(exc))}") from None
    check_depth(data, what, error)
    return data


def read_json(path: str | os.PathLike, what: str, error: ErrorFactory) -> Any:
    """Read and :func:`loads_json` the regular file ``path`` (UTF-8, a BOM allowed)."""
    return loads_json(read_text(path, what, error), what, error)


class _ShortRepr(reprlib.Repr):
    """``reprlib.Repr`` that also caps subclasses of list, tuple, dict and str (the
    YAML loader's ``LineList`` and ``LineDict``): reprlib dispatches on the exact type
    name and would fall back to the full ``repr`` of a subclass."""

    def repr1(self, x: Any, level: int) -> str:
        for base in (dict, list, tuple, str):
            if isinstance(x, base) and type(x) is not base:
                return super().repr1(base(x), level) if base is str else \
                    getattr(self, f"repr_{base.__name__}")(x, level)
        return super().repr1(x, level)


_REPR = _ShortRepr()
_REPR.maxlevel = 3
_REPR.maxstring = MAX_QUOTE
_REPR.maxother = MAX_QUOTE
_REPR.maxlong = 40
for _name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_REPR, _name, 6)


def short_repr(value: Any) -> str:
    """``repr(value)`` capped at about :data:`MAX_QUOTE` characters (with ``...``),
    for error messages that quote input: never proportional to the input's size, and
    safe on shared, deep or cyclic containers."""
    text = _REPR.repr(value)
    return text if len(text) <= MAX_QUOTE + 10 else text[:MAX_QUOTE] + "..."
