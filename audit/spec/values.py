"""Checks of the values of a spec file, and building a section's dataclass.

Each check is ``check(value, field, line, ctx) -> the value to store`` or raises
``ctx.error``, a :class:`SpecError` naming the file, the line and the field.  Which
check a key uses is the schema's (:data:`audit.spec.schema.SPEC_KEYS`), handed in
through the :class:`Context` so that this module does not import the schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from audit.backends.locate import SCHEMES as MODEL_SCHEMES
from audit.backends.locate import split_scheme
from audit.backends.registry import BACKENDS as _BACKEND_REGISTRY
from audit.corpus import BUILTIN_CORPORA as _CORPUS_FILES
from audit.errors import SpecError
from audit.internal.safe_read import short_repr
from audit.spec.sections import INTERNAL_FIELDS, SECTIONS, ModelSpec

BACKENDS = tuple(_BACKEND_REGISTRY)
"""Backend names ``backend`` takes: the keys of the one registry,
``audit.backends.registry.BACKENDS``."""
BUILTIN_CORPORA = tuple(_CORPUS_FILES)
"""Corpus names that ``probe.corpus`` takes as names, not paths."""
NAME_PATTERN = r"[a-z0-9._-]+"
DEVICES_HELP = "cpu | cuda | cuda:N | auto"
DEVICE_PATTERN = r"cpu|cuda|cuda:[0-9]+|auto"


class Context:
    """Where the values being checked come from, where each one was seen, and the
    schema's key -> check table."""

    def __init__(self, file: str | None, base_dir: str, keys: Mapping[str, Any]) -> None:
        self.file = file
        self.base_dir = base_dir
        self.keys = keys
        self.lines: dict[str, int | None] = {}

    def error(self, field: str | None, line: int | None, message: str) -> SpecError:
        return SpecError(message, file=self.file, line=line, field=field)


Check = Callable[[Any, str, "int | None", Context], Any]
"""``check(value, field, line, ctx) -> the value to store``, or raise ``ctx.error``."""


def describe(value: Any) -> str:
    """The YAML-side name of a value's type, for 'expected X, got Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({short_repr(value)})"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return f"a string ({short_repr(text)})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({short_repr(value)})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format_number(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def integer(minimum: int) -> Check:
    def check(value: Any, field: str, line: int | None, ctx: Context) -> int:
        if not _is_int(value):
            raise ctx.error(field, line, f"expected an integer, got {describe(value)}")
        if value < minimum:
            raise ctx.error(field, line, f"must be >= {minimum}, got {value}")
        return value
    return check


def finite_number(*, gt: float | None = None, lo: float | None = None,
                  hi: float | None = None) -> Check:
    """A finite number (an integer is accepted and stored as float), > gt or in [lo, hi]."""
    def check(value: Any, field: str, line: int | None, ctx: Context) -> float:
        if not _is_number(value):
            raise ctx.error(field, line, f"expected a number, got {describe(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise ctx.error(field, line, f"must be a finite number, got {short_repr(value)}")
        if gt is not None and not number > gt:
            raise ctx.error(field, line, f"must be > {_format_number(gt)}, got {short_repr(value)}")
        if lo is not None and hi is not None and not lo <= number <= hi:
            raise ctx.error(field, line, f"must be in [{_format_number(lo)}, "
                                         f"{_format_number(hi)}], got {short_repr(value)}")
        return number
    return check


def boolean(value: Any, field: str, line: int | None, ctx: Context) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(field, line, f"expected true or false, got {describe(value)}")
    return value


def string(value: Any, field: str, line: int | None, ctx: Context) -> str:
    if not isinstance(value, str):
        raise ctx.error(field, line, f"expected a string, got {describe(value)}")
    if not value.strip():
        raise ctx.error(field, line, "must not be empty")
    return value


def choice(values: tuple[str, ...]) -> Check:
    listed = ", ".join(values)

    def check(value: Any, field: str, line: int | None, ctx: Context) -> str:
        if not isinstance(value, str):
            raise ctx.error(field, line, f"expected one of {listed}, got {describe(value)}")
        if value not in values:
            message = f"{short_repr(value)} is not one of {listed}"
            close = difflib.get_close_matches(value.lower(), values, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
            raise ctx.error(field, line, message)
        return value
    return check


def spec_name(value: Any, field: str, line: int | None, ctx: Context) -> str:
    if not isinstance(value, str):
        raise ctx.error(field, line, f"expected a string, got {describe(value)}")
    if not re.fullmatch(NAME_PATTERN, value):
        raise ctx.error(field, line, f"{short_repr(value)} must match {NAME_PATTERN} "
                                     "(lowercase letters, digits, '.', '_' and '-')")
    return value


def device(value: Any, field: str, line: int | None, ctx: Context) -> str:
    if not isinstance(value, str):
        raise ctx.error(field, line, f"expected a string ({DEVICES_HELP}), got {describe(value)}")
    if not re.fullmatch(DEVICE_PATTERN, value):
        raise ctx.error(field, line,
                        f"{short_repr(value)} is not a device; expected {DEVICES_HELP}")
    return value


def _resolve(path: str, ctx: Context) -> str:
    """An absolute path: relative ones join the spec's folder.  Touches no disk."""
    return os.path.normpath(os.path.join(ctx.base_dir, os.path.expanduser(path)))


def model_path(value: Any, field: str, line: int | None, ctx: Context) -> str:
    value = string(value, field, line, ctx)
    scheme = split_scheme(value)
    if scheme is None:
        return _resolve(value, ctx)
    if scheme[0] not in MODEL_SCHEMES:
        raise ctx.error(field, line, f"unknown scheme {scheme[0] + '://'!r}; expected "
                                     "pkg://MODULE/FILE, assemble://MODULE or a filesystem path")
    return value


def corpus(value: Any, field: str, line: int | None, ctx: Context) -> str:
    value = string(value, field, line, ctx)
    return value if value in BUILTIN_CORPORA else _resolve(value, ctx)


def rho_range(value: Any, field: str, line: int | None, ctx: Context) -> tuple[float, float]:
    expected = "expected a list of two numbers [lo, hi]"
    if not isinstance(value, (list, tuple)):
        raise ctx.error(field, line, f"{expected}, got {describe(value)}")
    if len(value) != 2:
        raise ctx.error(field, line, f"{expected}, got {len(value)} item{'s' * (len(value) != 1)}")
    bounds = tuple(finite_number()(item, f"{field}[{index}]", _item_line(value, index, line), ctx)
                   for index, item in enumerate(value))
    if bounds[0] > bounds[1]:
        raise ctx.error(field, line, f"lo must be <= hi, got "
                                     f"[{short_repr(value[0])}, {short_repr(value[1])}]")
    return bounds


def layer_list(value: Any, field: str, line: int | None, ctx: Context) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ctx.error(field, line, f"expected a list of layer indexes (integers >= 1), "
                                     f"got {describe(value)}")
    seen: dict[int, int] = {}
    for index, item in enumerate(value):
        item_field, item_line = f"{field}[{index}]", _item_line(value, index, line)
        layer = integer(1)(item, item_field, item_line, ctx)
        if layer in seen:
            raise ctx.error(item_field, item_line, f"layer {layer} is listed twice "
                                                   f"(also at index {seen[layer]})")
        seen[layer] = index
    return tuple(value)


def parent_paths(value: Any, field: str, line: int | None,
                 ctx: Context) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not value:
        got = describe(value) if value != {} else "an empty mapping"
        raise ctx.error(field, line, f"expected a mapping of parent label -> checkpoint path, "
                                     f"got {got}")
    lines = getattr(value, "value_lines", {})
    out = []
    for label, path in value.items():
        if not isinstance(label, str) or not label.strip():
            raise ctx.error(field, line, f"parent labels must be strings, got {describe(label)}")
        ctx.lines[f"{field}.{label}"] = lines.get(label, line)
        out.append((label, model_path(path, f"{field}.{label}", lines.get(label, line), ctx)))
    return tuple(out)


def file_path(value: Any, field: str, line: int | None, ctx: Context) -> str:
    return _resolve(string(value, field, line, ctx), ctx)


def backend_names(value: Any, field: str, line: int | None, ctx: Context) -> str | tuple[str, ...]:
    """A backend name, or a non-empty list of distinct ones."""
    one = choice(BACKENDS)
    if not isinstance(value, list):
        return one(value, field, line, ctx)
    if not value:
        raise ctx.error(field, line, f"expected a backend or a non-empty list of backends "
                                     f"({', '.join(BACKENDS)}), got an empty list")
    names = tuple(one(item, f"{field}[{i}]", _item_line(value, i, line), ctx)
                  for i, item in enumerate(value))
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ctx.error(field, line, f"names {', '.join(twice)} more than once")
    return names


def providers(value: Any, field: str, line: int | None, ctx: Context) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ctx.error(field, line, f"expected a non-empty list of execution provider names, "
                                     f"got {describe(value)}")
    return tuple(string(item, f"{field}[{i}]", _item_line(value, i, line), ctx)
                 for i, item in enumerate(value))


def tensor_names(value: Any, field: str, line: int | None,
                 ctx: Context) -> tuple[tuple[int, str], ...]:
    """A mapping of layer index (0 = the embedding output) -> tensor name, stored as
    sorted pairs; whether it covers 0..L is checked against the model's config when
    the file is opened."""
    if not isinstance(value, dict) or not value:
        got = describe(value) if value != {} else "an empty mapping"
        raise ctx.error(field, line, f"expected a mapping of layer index (0..L) -> tensor "
                                     f"name, got {got}")
    lines = getattr(value, "value_lines", {})
    out = []
    for layer, name in value.items():
        item_line = lines.get(layer, line)
        if not _is_int(layer) or layer < 0:
            raise ctx.error(field, item_line, f"layer indexes are integers >= 0, got "
                                              f"{describe(layer)}")
        out.append((layer, string(name, f"{field}.{layer}", item_line, ctx)))
    return tuple(sorted(out))


def layer_map(value: Any, field: str, line: int | None, ctx: Context) -> tuple[Any, ...]:
    if not isinstance(value, list) or not value:
        raise ctx.error(field, line, "expected a list with one entry per merged layer 1..L "
                                     f"({{parent: LABEL, layer: K}} or a list of them), got "
                                     f"{describe(value) if value != [] else 'an empty list'}")
    return tuple(value)


def _item_line(items: Any, index: int, default: int | None) -> int | None:
    lines = getattr(items, "item_lines", None)
    return lines[index] if lines else default


def nullable(check: Check) -> Check:
    def nullable(value: Any, field: str, line: int | None, ctx: Context) -> Any:
        return None if value is None else check(value, field, line, ctx)
    return nullable


def or_auto(check: Check) -> Check:
    """``check``, or the string ``auto`` (a default chosen when the model is known)."""
    def or_auto(value: Any, field: str, line: int | None, ctx: Context) -> Any:
        return "auto" if value == "auto" else check(value, field, line, ctx)
    return or_auto


def section(prefix: str) -> Check:
    """A nested mapping that becomes the dataclass ``SECTIONS[prefix]``."""
    def check(value: Any, field: str, line: int | None, ctx: Context) -> Any:
        if not isinstance(value, dict):
            raise ctx.error(field, line, f"expected a mapping, got {describe(value)}")
        return build(prefix, value, line, ctx)
    return check


_MODULE_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def module_path(value: Any, field: str, line: int | None, ctx: Context) -> str:
    """A dotted attribute path such as ``model.layers`` (list items by number:
    ``model.layers.0``)."""
    text = string(value, field, line, ctx)
    if not _MODULE_PATH_RE.match(text):
        raise ctx.error(field, line, f"{short_repr(text)} is not a dotted attribute path such as "
                                     "'model.layers'")
    return text


def model_section(value: Any, field: str, line: int | None, ctx: Context) -> ModelSpec:
    if isinstance(value, str):  # `model: PATH` is short for `model: {path: PATH}`
        ctx.lines["model.path"] = line
        return ModelSpec(path=model_path(value, "model.path", line, ctx))
    if not isinstance(value, dict):
        raise ctx.error(field, line, f"expected a mapping or a string (the model path), "
                                     f"got {describe(value)}")
    return build("model", value, line, ctx)


def reference_model_section(value: Any, field: str, line: int | None, ctx: Context) -> Any:
    """``reference_model: {path: CHECKPOINT}``, or ``reference_model: CHECKPOINT``."""
    if isinstance(value, str):
        ctx.lines[f"{field}.path"] = line
        return SECTIONS[field](path=model_path(value, f"{field}.path", line, ctx))
    if not isinstance(value, dict):
        raise ctx.error(field, line, f"expected a mapping ({{path: CHECKPOINT}}) or a string "
                                     f"(the checkpoint path), got {describe(value)}")
    return build(field, value, line, ctx)


def _section_keys(prefix: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[prefix]) if f.name not in INTERNAL_FIELDS]


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def build(prefix: str, data: dict, line: int | None, ctx: Context) -> Any:
    """Check the mapping ``data`` (found at ``line``) and build its dataclass."""
    valid = _section_keys(prefix)
    key_lines = getattr(data, "key_lines", {})
    value_lines = getattr(data, "value_lines", {})
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(valid)
            if not prefix and key in INTERNAL_FIELDS:
                hint = f"{short_repr(key)} is set by the loader, not in the file"
            raise ctx.error(_join(prefix, key), key_lines.get(key, line), f"unknown key; {hint}")
    kwargs = {}
    for key in valid:
        path = _join(prefix, key)
        if key in data:
            # A mapping or list is located by its key (`model:`), a scalar by itself.
            lines = key_lines if isinstance(data[key], (dict, list)) else value_lines
            ctx.lines[path] = lines.get(key, line)
            kwargs[key] = ctx.keys[path].check(data[key], path, ctx.lines[path], ctx)
        elif ctx.keys[path].required:
            raise ctx.error(path, line, "missing required key")
    return SECTIONS[prefix](**kwargs)
