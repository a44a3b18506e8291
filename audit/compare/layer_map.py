"""Where each layer of a merged checkpoint came from: layer maps and mergekit configs.

equilaw indexes hidden states 0..L (0 = embedding output, l = output of block l-1).
A :class:`LayerMap` says, for each merged layer l = 1..L, which layers of which
parents it was made from.  Three ways to get one: :func:`index_layer_map` (layer l of
every parent), :func:`read_mergekit_config` (a ``mergekit_config.yml``: ``slices``
or ``models``) and :func:`layer_map_from_entries` (a spec's explicit list).  Plain
Python and YAML only; every problem is a :class:`SpecError` naming file, line, field.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audit.errors import SpecError
from audit.internal import yaml_lines
from audit.internal.safe_read import short_repr

Parents = Mapping[str, str] | Sequence[str] | Sequence[tuple[str, str]]
"""The parents a spec knows: label -> checkpoint, labels, or (label, checkpoint) pairs
(as ``MergeSpec.parents``).  A label is the model name as the merge config spells it."""


@dataclass(frozen=True)
class LayerSource:
    """One parent layer that a merged layer was made from."""

    parent: str
    """The parent's label as the spec names it."""
    layer: int
    """equilaw hidden-state index in that parent, 1..L_parent (block k gives layer k+1)."""


@dataclass(frozen=True)
class LayerMap:
    """The sources of each layer of a merged checkpoint.  Layer 0 (embeddings) is not mapped."""

    sources: tuple[tuple[LayerSource, ...], ...]
    """``sources[l-1]``: where merged layer l (1..L) came from; several sources are a blend."""
    method: str
    """mergekit's ``merge_method`` (``"unknown"`` when absent), ``"layer_map"`` (given in a
    spec) or ``"index"`` (layer l of every parent)."""
    origin: str | None = None
    """The file the map was read from, or None."""
    parent_layers: tuple[tuple[str, int], ...] = ()
    """``(label, L_parent)`` for each parent the map draws on, in first-use order; empty
    when unknown (then :attr:`keeps_depth` judges from the sources alone)."""

    @property
    def num_layers(self) -> int:
        """L, the merged checkpoint's number of blocks."""
        return len(self.sources)

    def for_layer(self, layer: int) -> tuple[LayerSource, ...]:
        """The sources of merged layer ``layer``, 1..L."""
        if not 1 <= layer <= self.num_layers:
            raise ValueError(f"layer must be in 1..{self.num_layers}, got {layer}")
        return self.sources[layer - 1]

    @property
    def keeps_depth(self) -> bool:
        """True iff every merged layer l comes only from layer l of its parents and
        every parent has L layers (a whole-model merge, not a slice or a stack)."""
        return (all(s.layer == l for l, row in enumerate(self.sources, 1) for s in row)
                and all(depth == self.num_layers for _, depth in self.parent_layers))

    @property
    def repeat_start(self) -> int | None:
        """The first merged layer l that re-enters a range of blocks: some source of l is
        not strictly after the latest earlier merged layer drawing on the same parent
        (for a contiguous stack, layer l-1).  None when nothing repeats."""
        last: dict[str, int] = {}  # parent -> highest layer of the latest merged layer using it
        for l, row in enumerate(self.sources, 1):
            if any(s.parent in last and s.layer <= last[s.parent] for s in row):
                return l
            for parent in {s.parent for s in row}:
                last[parent] = max(s.layer for s in row if s.parent == parent)
        return None


def index_layer_map(parents: Sequence[str], num_layers: int) -> LayerMap:
    """Merged layer l (1..num_layers) <- layer l of each parent, all of depth num_layers."""
    if not parents or num_layers < 1:
        raise ValueError(f"need at least one parent and num_layers >= 1, got {list(parents)}, {num_layers}")
    row = lambda l: tuple(LayerSource(p, l) for p in parents)  # noqa: E731
    return LayerMap(tuple(row(l) for l in range(1, num_layers + 1)), "index", None,
                    tuple((p, num_layers) for p in dict.fromkeys(parents)))


class _Where:
    """The file being read (for errors) and the parents' depths."""

    def __init__(self, file: str | None, depths: Mapping[str, int]) -> None:
        self.file, self.depths = file, depths

    def error(self, field: str | None, line: int | None, message: str) -> SpecError:
        return SpecError(message, file=self.file, line=line, field=field)

    def depth(self, label: str) -> int:
        if label not in self.depths:
            raise ValueError(f"parent_layers has no depth for parent {label!r}")
        return self.depths[label]

    def layer_map(self, rows: list[tuple[LayerSource, ...]], method: str) -> LayerMap:
        used = dict.fromkeys(s.parent for row in rows for s in row)
        return LayerMap(tuple(rows), method, self.file, tuple((p, self.depth(p)) for p in used))


def _line(data: Any, key: Any, default: int | None) -> int | None:
    """Line of ``data[key]``: a list item's line, a mapping or list by its key, a scalar by itself."""
    if isinstance(data, (list, tuple)):  # a tuple made from a LineList keeps its items' own lines
        lines = getattr(data, "item_lines", [])
        return lines[key] if key < len(lines) else getattr(data[key], "line", None) or default
    lines = getattr(data, "key_lines" if isinstance(data.get(key), (dict, list)) else "value_lines", {})
    return lines.get(key, default)


def _labels(parents: Parents) -> list[str]:
    return [p[0] if isinstance(p, tuple) else p for p in parents]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _last_part(name: str) -> str:
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _resolve(name: Any, labels: list[str], where: _Where, field: str, line: int | None) -> str:
    """The parent label a config's model name means: exact, else by last path component."""
    if not isinstance(name, str) or not name:
        raise where.error(field, line, f"expected a model name, got {short_repr(name)}")
    if name in labels:
        return name
    matches = [label for label in labels if _last_part(label) == _last_part(name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise where.error(field, line, f"model {short_repr(name)} matches several parents "
                                       f"by its last path "
                                       f"component: {', '.join(matches)}; name one of them exactly")
    raise where.error(field, line,
                      f"unknown model {short_repr(name)}; known parents: {', '.join(labels)}")


def _slice_rows(slices: Any, labels: list[str], where: _Where, line: int | None) -> list[tuple]:
    if not isinstance(slices, list) or not slices:
        raise where.error("slices", line,
                          f"expected a non-empty list of slices, got {short_repr(slices)}")
    rows: list[tuple[LayerSource, ...]] = []
    for i, piece in enumerate(slices):
        field, piece_line = f"slices[{i}]", _line(slices, i, line)
        sources = piece.get("sources") if isinstance(piece, dict) else None
        if not isinstance(sources, list) or not sources:
            raise where.error(field, piece_line, "expected a mapping with 'sources': a non-empty list "
                                                 "of {model, layer_range}")
        ranges: list[tuple[str, int, int]] = []
        for j, source in enumerate(sources):
            sfield, sline = f"{field}.sources[{j}]", _line(sources, j, piece_line)
            if not isinstance(source, dict) or "model" not in source or "layer_range" not in source:
                raise where.error(sfield, sline, "expected a mapping with 'model' and 'layer_range'")
            mline, rline = _line(source, "model", sline), _line(source, "layer_range", sline)
            label = _resolve(source["model"], labels, where, f"{sfield}.model", mline)
            span, rfield = source["layer_range"], f"{sfield}.layer_range"
            if not (isinstance(span, list) and len(span) == 2 and all(map(_is_int, span))
                    and 0 <= span[0] < span[1]):
                raise where.error(rfield, rline, f"expected [start, end] with integers 0 <= start < end "
                                                 f"(blocks, 0-based, end excluded), got "
                                                 f"{short_repr(span)}")
            depth = where.depth(label)
            if span[1] > depth:
                raise where.error(rfield, rline, f"slice {i} takes blocks {span[0]}..{span[1] - 1} of "
                                                 f"{label!r}, which has {depth} blocks (end <= {depth})")
            if ranges and span[1] - span[0] != ranges[0][2] - ranges[0][1]:
                raise where.error(rfield, rline, f"covers {span[1] - span[0]} blocks but sources[0] covers "
                                                 f"{ranges[0][2] - ranges[0][1]}; sources in one slice "
                                                 f"need ranges of equal length")
            ranges.append((label, span[0], span[1]))
        # Block start+m of each source gives equilaw layer start+m+1.
        rows += [tuple(LayerSource(label, start + m + 1) for label, start, _ in ranges)
                 for m in range(ranges[0][2] - ranges[0][1])]
    return rows


def _model_rows(data: dict, labels: list[str], where: _Where, root_line: int | None) -> list[tuple]:
    models, line = data["models"], _line(data, "models", root_line)
    if not isinstance(models, list) or not models:
        raise where.error("models", line,
                          f"expected a non-empty list of models, got {short_repr(models)}")
    used: dict[str, tuple[str, int | None]] = {}  # label -> (field, line) where first named
    for i, entry in enumerate(models):
        field, entry_line = f"models[{i}]", _line(models, i, line)
        if not isinstance(entry, dict) or "model" not in entry:
            raise where.error(field, entry_line, "expected a mapping with 'model'")
        named = (f"{field}.model", _line(entry, "model", entry_line))
        used.setdefault(_resolve(entry["model"], labels, where, *named), named)
    if data.get("base_model") is not None:
        named = ("base_model", _line(data, "base_model", root_line))
        used.setdefault(_resolve(data["base_model"], labels, where, *named), named)
    first = next(iter(used))
    for label, (field, mline) in used.items():
        if where.depth(label) != where.depth(first):
            raise where.error(field, mline, f"{label!r} has {where.depth(label)} layers but {first!r} has "
                                            f"{where.depth(first)}; a whole-model merge needs parents of "
                                            f"equal depth (use slices otherwise)")
    return [tuple(LayerSource(label, l) for label in used) for l in range(1, where.depth(first) + 1)]


def _load(file: str, where: _Where) -> tuple[Any, int | None]:
    return yaml_lines.load_file(file, "mergekit config", where.error)


def read_mergekit_config(path: str | os.PathLike, parents: Parents,
                         parent_layers: Mapping[str, int]) -> LayerMap:
    """Read a ``mergekit_config.yml`` (safe YAML) into a :class:`LayerMap`.

    ``slices``: merged blocks follow the slices in order; ``layer_range: [a, b]`` is
    half-open and 0-based over blocks, so block k gives layer k+1; a slice's sources
    (equal-length ranges) are blended block by block (a top-level ``base_model`` adds
    nothing: it is one of the sources).  ``models``: merged layer l blends
    layer l of each model and of ``base_model`` (if not listed); depth is kept.  A model
    name matches a label of ``parents`` exactly, else by last path component (unique).
    ``parent_layers[label]`` is that parent's L.  Other keys are ignored.
    """
    file = os.fspath(path)
    where = _Where(file, parent_layers)
    data, root_line = _load(file, where)
    if not isinstance(data, dict) or ("slices" in data) == ("models" in data):
        both = isinstance(data, dict) and "slices" in data
        what = "both 'slices' and" if both else "neither 'slices' nor"
        raise where.error(None, root_line,
                          f"has {what} 'models'; a mergekit config gives exactly one of them")
    method = data.get("merge_method", "unknown")
    if not isinstance(method, str):
        raise where.error("merge_method", _line(data, "merge_method", root_line),
                          f"expected a string, got {short_repr(method)}")
    labels = _labels(parents)
    if "slices" in data:
        rows = _slice_rows(data["slices"], labels, where, _line(data, "slices", root_line))
    else:
        rows = _model_rows(data, labels, where, root_line)
    return where.layer_map(rows, method)


def _entry_source(item: Any, labels: list[str], where: _Where, field: str, line: int | None) -> LayerSource:
    if not isinstance(item, dict):
        raise where.error(field, line,
                          f"expected {{parent: LABEL, layer: K}}, got {short_repr(item)}")
    for key in [key for key in item if key not in ("parent", "layer")]:
        close = difflib.get_close_matches(str(key), ["parent", "layer"], n=1)
        hint = f"did you mean {close[0]!r}?" if close else "valid keys: parent, layer"
        key_line = getattr(item, "key_lines", {}).get(key, line)
        raise where.error(f"{field}.{key}", key_line, f"unknown key; {hint}")
    for key in [key for key in ("parent", "layer") if key not in item]:
        raise where.error(f"{field}.{key}", line, "missing required key")
    label, layer = item["parent"], item["layer"]
    if not isinstance(label, str) or label not in labels:
        close = difflib.get_close_matches(label, labels, n=1) if isinstance(label, str) else []
        hint = f"did you mean {close[0]!r}?" if close else f"known parents: {', '.join(labels)}"
        raise where.error(f"{field}.parent", _line(item, "parent", line),
                          f"unknown parent {short_repr(label)}; {hint}")
    depth = where.depth(label)
    if not _is_int(layer) or not 1 <= layer <= depth:
        raise where.error(f"{field}.layer", _line(item, "layer", line),
                          f"expected an integer in 1..{depth} (layers of {label!r}), got "
                          f"{short_repr(layer)}")
    return LayerSource(label, layer)


def layer_map_from_entries(entries: Sequence[Any], parents: Parents,
                           parent_layers: Mapping[str, int], *, file: str | None = None,
                           line: int | None = None, field: str = "merge.layer_map") -> LayerMap:
    """A spec's explicit layer map: ``entries[l-1]`` for merged layer l is
    ``{parent: LABEL, layer: K}`` or a list of them (a blend), 1 <= K <= L_parent.
    ``file``, ``line`` (of the list) and ``field`` locate errors; a ``LineList`` from
    :mod:`audit.internal.yaml_lines` gives each entry its own line."""
    where, labels = _Where(file, parent_layers), _labels(parents)
    if not isinstance(entries, (list, tuple)) or not entries:
        raise where.error(field, line, "expected a non-empty list, one entry per merged layer: "
                                       f"{{parent: LABEL, layer: K}} or a list of them, got "
                                       f"{short_repr(entries)}")
    rows = []
    for i, entry in enumerate(entries):
        efield, eline = f"{field}[{i}]", _line(entries, i, line)
        if not isinstance(entry, (list, tuple)):
            rows.append((_entry_source(entry, labels, where, efield, eline),))
            continue
        if not entry:
            raise where.error(efield, eline, "empty blend; give at least one {parent: LABEL, layer: K}")
        rows.append(tuple(_entry_source(item, labels, where, f"{efield}[{j}]", _line(entry, j, eline))
                          for j, item in enumerate(entry)))
    return where.layer_map(rows, "layer_map")
