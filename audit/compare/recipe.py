"""A merge's recipe: the weight each parent has in a mergekit configuration, and the
probe loss the merge is expected to have from its parents' losses.

With normalised weights w_i (summing to 1), the expected loss is

    L_base + Σ_i w_i (L_i − L_base)   for a method with a base model (the task-vector
                                      methods: ties, dare_ties, task_arithmetic, ...;
                                      the sum runs over the models other than the base),
    Σ_i w_i L_i                        otherwise (linear, passthrough, slerp).

A ``passthrough`` weights each parent by the share of the merged blocks it gives; a
``slerp`` gives the second model (the one that is not ``base_model``) its mean t over
the merged layers and the base 1 − t.  A weight or t may be a number, a gradient (a
list of numbers interpolated over the layers, as mergekit does) or a list of
``{filter, value}`` entries, of which the unfiltered one is used.  A ``slices``
config weighs each slice by its number of blocks.  Plain Python and YAML only; every
problem is a :class:`SpecError` naming the file, line and field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.compare.layer_map import Parents, _labels, _last_part, _line, _load, _resolve, _Where

BASE_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
                "breadcrumbs_ties", "della", "della_linear")
"""mergekit methods that add weighted task vectors (model − base) to a base model."""
RECIPE_METHODS = BASE_METHODS + ("linear", "passthrough", "slerp")
"""Every ``merge_method`` whose recipe equilaw reads."""


@dataclass(frozen=True)
class Recipe:
    """The parents' weights in a merge, read from its mergekit configuration."""

    method: str
    """mergekit's ``merge_method``."""
    weights: tuple[tuple[str, float], ...]
    """(label, w) with Σ w = 1: the models other than the base for a method with a base
    model, every parent that gives the merge something otherwise."""
    base: str | None = None
    """The base model's label for a method with a base model, else None."""
    origin: str | None = None
    """The file the recipe was read from."""

    def coefficients(self) -> dict[str, float]:
        """c_j with expected loss Σ_j c_j L_j (the base gets 1 − Σ w_i)."""
        out = dict(self.weights)
        if self.base is not None:
            out[self.base] = 1.0 - sum(w for _, w in self.weights)
        return out

    def expected_loss(self, losses: Mapping[str, float]) -> float:
        """The loss the merge is expected to have, from each parent's loss."""
        return float(sum(c * losses[label] for label, c in self.coefficients().items()))

    def formula(self, losses: Mapping[str, float]) -> str:
        """The expected loss with its pieces, in words."""
        if self.base is None:
            terms = " + ".join(f"{w:.4g}·{losses[label]:.5g} ({label})"
                               for label, w in self.weights)
        else:
            lb = losses[self.base]
            terms = f"{lb:.5g} ({self.base}) + " + " + ".join(
                f"{w:.4g}·({losses[label]:.5g} − {lb:.5g}) ({label})" for label, w in self.weights)
        return f"{terms} = {self.expected_loss(losses):.5g}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _layer_mean(value: Any, layers: int, where: _Where, field: str, line: int | None) -> float:
    """The mean over ``layers`` merged layers of a mergekit parameter value: a number,
    a gradient (numbers interpolated from the first layer to the last) or a list of
    ``{filter, value}`` entries (the unfiltered one counts)."""
    if _number(value):
        return float(value)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        plain = [i for i, v in enumerate(value) if "filter" not in v]
        if not plain or "value" not in value[plain[0]]:
            raise where.error(field, line, "a list of {filter, value} entries needs one entry "
                                           "without 'filter' (the default value) to weigh the "
                                           "merge by its recipe")
        i = plain[0]
        return _layer_mean(value[i]["value"], layers, where, f"{field}[{i}].value",
                           _line(value, i, line))
    if isinstance(value, list) and value and all(map(_number, value)):
        anchors = np.asarray(value, dtype=np.float64)
        at = np.linspace(0.0, len(anchors) - 1.0, layers)
        return float(np.interp(at, np.arange(len(anchors)), anchors).mean())
    raise where.error(field, line, f"expected a number, a gradient (list of numbers) or a list "
                                   f"of {{filter, value}}, got {value!r}")


def _parameter(key: str, scopes: list[tuple[Any, str, int | None]], layers: int,
               where: _Where) -> float:
    """``key`` from the first scope whose ``parameters`` give it (entry, slice, top level);
    missing everywhere names the innermost scope's field."""
    for node, field, line in scopes:
        params = node.get("parameters") if isinstance(node, dict) else None
        if params is not None and not isinstance(params, dict):
            raise where.error(f"{field}.parameters" if field else "parameters", line,
                              f"expected a mapping, got {params!r}")
        if params and key in params:
            pfield = f"{field}.parameters.{key}" if field else f"parameters.{key}"
            return _layer_mean(params[key], layers, where, pfield, _line(params, key, line))
    field, line = scopes[0][1], scopes[0][2]
    raise where.error(f"{field}.parameters.{key}" if field else f"parameters.{key}", line,
                      f"missing {key!r}: the recipe judge needs every weight (or set "
                      f"merge.judge: worst)")


def _segments(data: dict, labels: list[str], where: _Where, root_line: int | None,
              depth: int) -> list[tuple[int, Any, str, int | None, list[tuple]]]:
    """(blocks, node, field, line, entries) per part of the merge: one for a ``models``
    config (all ``depth`` layers), one per slice; each entry is (label, node, field, line)."""
    if "models" in data:
        models, line = data["models"], _line(data, "models", root_line)
        entries = [(_resolve(m["model"], labels, where, f"models[{i}].model", None), m,
                    f"models[{i}]", _line(models, i, line)) for i, m in enumerate(models)]
        return [(depth, None, "", root_line, entries)]
    out = []
    slices = data["slices"]
    for i, piece in enumerate(slices):
        field, pline = f"slices[{i}]", _line(slices, i, root_line)
        sources = piece["sources"]
        entries = [(_resolve(s["model"], labels, where, f"{field}.sources[{j}].model", None), s,
                    f"{field}.sources[{j}]", _line(sources, j, pline))
                   for j, s in enumerate(sources)]
        start, end = sources[0]["layer_range"]
        out.append((end - start, piece, field, pline, entries))
    return out


def _segment_weights(method: str, base: str | None, blocks: int, node: Any, field: str,
                     line: int | None, entries: list[tuple], top: tuple, where: _Where,
                     ) -> dict[str, float]:
    """Normalised weights of one part of the merge (see the module's docstring)."""
    if method == "passthrough":
        return {label: 1.0 / len(entries) for label, *_ in entries}
    if method == "slerp":
        others = list(dict.fromkeys(label for label, *_ in entries if label != base))
        if len(others) != 1:
            raise where.error(field or "models", line, f"slerp blends base_model {base!r} with "
                                                       f"one other model, got {others}")
        t = _parameter("t", [(node, field, line), top], blocks, where)
        return {base: 1.0 - t, others[0]: t}
    raw: dict[str, float] = {}
    for label, entry, efield, eline in entries:
        if method in BASE_METHODS and label == base:
            continue   # the base's own task vector is zero
        scopes = [(entry, efield, eline)] + ([(node, field, line)] if node is not None else [])
        raw[label] = raw.get(label, 0.0) + _parameter("weight", scopes + [top], blocks, where)
    total = sum(raw.values())
    if not raw or total == 0:
        raise where.error(f"{field}.parameters.weight" if field else "models", line,
                          f"the weights of {', '.join(raw) or 'no model'} sum to {total!r}: "
                          f"they cannot be normalised")
    return {label: w / total for label, w in raw.items()}


def read_recipe(path: str | os.PathLike, parents: Parents,
                parent_layers: Mapping[str, int], num_layers: int) -> Recipe:
    """The :class:`Recipe` of the mergekit config at ``path`` for a merge of
    ``num_layers`` blocks (its layer map, read by
    :func:`~audit.compare.layer_map.read_mergekit_config`, has been checked first)."""
    file = os.fspath(path)
    where = _Where(file, parent_layers)
    data, root_line = _load(file, where)
    labels = _labels(parents)
    method = data.get("merge_method")
    mline = _line(data, "merge_method", root_line)
    if method not in RECIPE_METHODS:
        raise where.error("merge_method", mline,
                          f"the recipe judge does not know merge_method {method!r} (it knows "
                          f"{', '.join(RECIPE_METHODS)}); set merge.judge: worst to judge the "
                          f"merge's loss against its worst parent")
    base = None
    if method in BASE_METHODS or method == "slerp":
        if data.get("base_model") is None:
            raise where.error("base_model", root_line, f"merge_method {method} needs a base_model")
        base = _resolve(data["base_model"], labels, where, "base_model",
                        _line(data, "base_model", root_line))
    top = (data, "", root_line)
    totals: dict[str, float] = {}
    parts = _segments(data, labels, where, root_line, num_layers)
    for blocks, node, field, line, entries in parts:
        weights = _segment_weights(method, base, blocks, node, field, line, entries, top, where)
        for label, w in weights.items():
            totals[label] = totals.get(label, 0.0) + blocks * w
    all_blocks = sum(part[0] for part in parts)
    if method in BASE_METHODS:
        totals.pop(base, None)
        base_of_formula = base
    else:
        base_of_formula = None
    weights = tuple((label, w / all_blocks) for label, w in totals.items())
    return Recipe(method, weights, base_of_formula, file)


def config_names(path: str | os.PathLike, parents: Parents) -> set[str]:
    """The labels of ``parents`` that the mergekit config at ``path`` names (as a
    ``model`` anywhere or as ``base_model``), matched as the layer map matches them."""
    file = os.fspath(path)
    data, _ = _load(file, _Where(file, {}))
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("model", "base_model") and isinstance(value, str):
                    names.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    labels = _labels(parents)
    return {label for label in labels
            if any(name == label or _last_part(name) == _last_part(label) for name in names)}
