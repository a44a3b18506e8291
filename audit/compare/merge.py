"""Merge gates: a merged checkpoint judged against its parents, all measured on
the same windows.

The merged model fails when its Pearson r is worse than its worst parent's beyond
the ``baseline`` tolerances (ρ too, only when the merge keeps the depth), when its
probe loss exceeds the loss its recipe predicts (:mod:`audit.compare.recipe`; with
``merge.judge: worst``, or without a mergekit config, its worst parent's) by more
than ``baseline.max_loss_increase``, and when a merged layer's log10 PR lies
outside the range spanned by the parent layers it came from beyond the drift
tolerances, in either direction (:mod:`audit.compare.drift`).  Where each merged
layer came from is a :class:`~audit.compare.layer_map.LayerMap`: the spec's
``merge.layer_map``, a mergekit configuration (``merge.config``, or the merged
folder's own ``mergekit_config.yml``), or index by index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from audit.compare.baseline import check_comparable
from audit.compare.drift import (
    Reference,
    attach,
    curve,
    increase_check,
    judge_layers,
    largest,
    loss_check,
    require_paired,
)
from audit.compare.layer_map import (
    LayerMap,
    index_layer_map,
    layer_map_from_entries,
    read_mergekit_config,
)
from audit.compare.recipe import Recipe, config_names, read_recipe
from audit.errors import ComparisonError
from audit.report.data import Comparison, Report
from audit.spec import BaselineSpec, Spec
from audit.stats.jackknife import jackknife_se

MERGEKIT_CONFIG = "mergekit_config.yml"


def resolve_layer_map(spec: Spec, num_layers: int, parent_layers: Mapping[str, int],
                      merged_folder: Path | None) -> LayerMap:
    """The merged spec's layer map, checked against the merged depth ``num_layers``
    and the parents' depths (raises SpecError or ComparisonError naming the file)."""
    merge = spec.merge
    assert merge is not None
    labels = [label for label, _ in merge.parents]
    if merge.layer_map is not None:
        where = f"merge.layer_map of {spec.source}" if spec.source else "merge.layer_map"
        layer_map = layer_map_from_entries(list(merge.layer_map), labels, parent_layers,
                                           file=spec.source, line=spec.lines.get("merge.layer_map"))
    elif (config := _config_path(spec, merged_folder)) is not None:
        where = config
        layer_map = read_mergekit_config(config, labels, parent_layers)
    else:
        other = {label: depth for label, depth in parent_layers.items() if depth != num_layers}
        if other:
            listed = ", ".join(f"{label} has {depth}" for label, depth in other.items())
            raise spec.error("merge", f"no merge config or layer map, so layers are compared "
                                      f"index by index, but the merged model has {num_layers} "
                                      f"layers and {listed}: give merge.config or merge.layer_map")
        layer_map = index_layer_map(labels, num_layers)
        where = "index by index"
    if layer_map.num_layers != num_layers:
        raise ComparisonError(f"{where} describes {layer_map.num_layers} merged layers, but the "
                              f"merged model of {spec.name!r} has {num_layers}")
    return layer_map


def _config_path(spec: Spec, merged_folder: Path | None) -> str | None:
    """The mergekit config that describes the merge: ``merge.config``, else the merged
    folder's own, else None."""
    if spec.merge.config is not None:
        return spec.merge.config
    if merged_folder is not None and (merged_folder / MERGEKIT_CONFIG).is_file():
        return str(merged_folder / MERGEKIT_CONFIG)
    return None


def resolve_recipe(spec: Spec, num_layers: int, parent_layers: Mapping[str, int],
                   merged_folder: Path | None) -> Recipe | None:
    """The merge's recipe, which judges its loss; None when the worst parent judges it
    (``merge.judge: worst``, or no mergekit config).  With a config, every parent of
    ``merge.parents`` must be named by it (a SpecError naming the extra parent), whatever
    the judge; an unreadable weight is a SpecError naming the config's field."""
    merge = spec.merge
    assert merge is not None
    config = None if merge.layer_map is not None else _config_path(spec, merged_folder)
    if config is None:
        return None
    named = config_names(config, merge.parents)
    for label, _ in merge.parents:
        if label not in named:
            raise spec.error(f"merge.parents.{label}",
                             f"parent {label!r} is not named by the merge config {config} "
                             f"(as a model or base_model); remove it or fix the config")
    if merge.judge == "worst":
        return None
    return read_recipe(config, merge.parents, parent_layers, num_layers)


def compare_to_parents(now: Report, parents: Mapping[str, Report], layer_map: LayerMap,
                       tolerances: BaselineSpec, recipe: Recipe | None = None) -> Report:
    """``now`` with its comparison against its parents attached; its loss is judged by
    ``recipe`` when given, else against its worst parent."""
    for label, parent in parents.items():
        require_paired(now, parent, f"the report of parent {label!r}")
        check_comparable(now, parent, f"parent {label!r}")
    curves = {label: curve(report) for label, report in parents.items()}
    size = now.model["layers"] + 1
    g = len(now.shard_ids)
    low, high = np.full(size, np.nan), np.full(size, np.nan)
    low_loo, high_loo = np.full((g, size), np.nan), np.full((g, size), np.nan)
    sources = [""]
    for layer in range(1, size):
        came_from = layer_map.for_layer(layer)
        values = np.array([curves[s.parent][0][s.layer] for s in came_from])
        per_shard = np.stack([curves[s.parent][1][:, s.layer] for s in came_from])   # [k, g]
        low[layer], high[layer] = values.min(), values.max()
        low_loo[:, layer], high_loo[:, layer] = per_shard.min(axis=0), per_shard.max(axis=0)
        sources.append(", ".join(f"{s.parent}:{s.layer}" for s in came_from))
    ref = Reference(low=low, high=high, low_loo=low_loo, high_loo=high_loo, sources=tuple(sources))
    layer_checks, rows, moved = judge_layers(now, ref, "merge_drift", tolerances.max_drift,
                                             tolerances.max_drift_sigma)

    worst_r = max(parents, key=lambda label: _nan_high(parents[label].law.pearson_r))
    law = [increase_check("merge_pearson_r", now.law.pearson_r, parents[worst_r].law.pearson_r,
                          tolerances.max_pearson_r_increase,
                          f"pearson_r (worst parent {worst_r!r})", "max_pearson_r_increase")]
    rho_then = math.nan
    if layer_map.keeps_depth:
        worst_rho = max(parents, key=lambda label: _nan_high(parents[label].law.rho))
        rho_then = parents[worst_rho].law.rho
        law.append(increase_check("merge_rho", now.law.rho, rho_then, tolerances.max_rho_increase,
                                  f"rho (worst parent {worst_rho!r})", "max_rho_increase"))
    loss_then, expected = math.nan, math.nan
    losses = {label: p.loss.mean for label, p in parents.items() if p.loss is not None}
    if len(losses) == len(parents) and now.loss is not None:
        if recipe is not None:
            loss_then = expected = recipe.expected_loss(losses)
            what = (f"probe loss (nats) judged by its recipe ({recipe.method}): expected "
                    f"{recipe.formula(losses)}; expected → measured")
            se = _recipe_se(now, parents, recipe)
        else:
            worst_loss = max(losses, key=losses.get)
            loss_then, se = losses[worst_loss], math.nan
            what = f"probe loss (nats) judged by its worst parent {worst_loss!r}:"
        law.append(increase_check("merge_loss", now.loss.mean, loss_then,
                                  tolerances.max_loss_increase, what, "max_loss_increase", se))
    else:
        law.append(loss_check("merge_loss", now, math.nan, math.nan, math.nan,
                               tolerances.max_loss_increase, "a parent"))
    top, top_layer = largest(rows)
    notes = (f"layers mapped by {layer_map.method}"
             + (f" from {layer_map.origin}" if layer_map.origin else "")
             + (f"; blocks repeat from merged layer {layer_map.repeat_start}"
                if layer_map.repeat_start else ""),)
    comparison = Comparison(
        kind="merge", reference=", ".join(parents),
        pearson_r_then=parents[worst_r].law.pearson_r, pearson_r_now=now.law.pearson_r,
        rho_then=rho_then, rho_now=now.law.rho, loss_then=loss_then,
        loss_now=now.loss.mean if now.loss else math.nan, first_moved_layer=moved,
        largest_drift=top, largest_drift_layer=top_layer, rows=rows, notes=notes,
        loss_judge="recipe" if recipe is not None else "worst", expected_loss=expected)
    return attach(now, comparison, tuple(c for c in law if c is not None) + layer_checks)


def _recipe_se(now: Report, parents: Mapping[str, Report], recipe: Recipe) -> float:
    """Jackknife standard error of (merge loss − expected loss), paired by shard; NaN
    without leave-one-out losses on every side."""
    sides = [now.loss.leave_one_out] + [parents[label].loss.leave_one_out
                                        for label in recipe.coefficients()]
    if any(len(side) != len(sides[0]) or len(side) < 2 for side in sides):
        return math.nan
    expected = sum(c * np.asarray(parents[label].loss.leave_one_out)
                   for label, c in recipe.coefficients().items())
    return jackknife_se(np.asarray(now.loss.leave_one_out) - expected)


def _nan_high(value: float) -> float:
    """Sort key that takes an undefined value as the worst."""
    return math.inf if math.isnan(value) else value
