"""A merge's loss judged by its recipe: the expected loss from the mergekit config's
weights, per method, with exact numbers; unreadable weights and extra parents are
errors naming the file and field; the comparison says which rule judged."""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_compare import LAYERS, make_report
from test_plugin import ITEMS, inner  # noqa: F401 (inner: a fixture)

from audit.compare.layer_map import index_layer_map
from audit.compare.merge import compare_to_parents, resolve_recipe
from audit.compare.recipe import Recipe, read_recipe
from audit.errors import SpecError
from audit.report.data import Report
from audit.report.text import comparison_text
from audit.report.view import loss_rows
from audit.spec import BaselineSpec, load_spec
from audit.stats.jackknife import jackknife_se

DEPTHS = {"A": 8, "B": 8, "C": 8}
PARENTS = ["A", "B", "C"]


def _recipe(tmp_path: Path, text: str, layers: int = 8) -> Recipe:
    path = tmp_path / "mergekit_config.yml"
    path.write_text(textwrap.dedent(text))
    return read_recipe(path, PARENTS, DEPTHS, layers)


def test_ties_with_a_base_adds_the_weighted_task_vectors(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, """\
        models:
          - model: A
          - model: B
            parameters: {weight: 0.3, density: 0.5}
          - model: C
            parameters: {weight: 0.1, density: 0.5}
        merge_method: ties
        base_model: A
        """)
    assert recipe.method == "ties" and recipe.base == "A"
    assert dict(recipe.weights) == pytest.approx({"B": 0.75, "C": 0.25})
    losses = {"A": 3.0, "B": 3.2, "C": 4.0}
    # 3.0 + 0.75 (3.2 - 3.0) + 0.25 (4.0 - 3.0)
    assert recipe.expected_loss(losses) == pytest.approx(3.4, abs=1e-12)
    assert recipe.coefficients() == pytest.approx({"B": 0.75, "C": 0.25, "A": 0.0})
    assert recipe.formula(losses) == "3 (A) + 0.75·(3.2 − 3) (B) + 0.25·(4 − 3) (C) = 3.4"


def test_a_weight_given_once_for_every_model_and_task_arithmetic(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, """\
        models: [{model: B}, {model: C, parameters: {weight: 3}}]
        parameters: {weight: 1}
        merge_method: task_arithmetic
        base_model: A
        """)
    assert dict(recipe.weights) == pytest.approx({"B": 0.25, "C": 0.75})
    assert recipe.expected_loss({"A": 2.0, "B": 3.0, "C": 2.4}) == pytest.approx(2.55, abs=1e-12)


def test_linear_without_a_base_averages_the_losses(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, """\
        models:
          - model: A
            parameters: {weight: 1}
          - model: B
            parameters: {weight: 3}
        merge_method: linear
        """)
    assert recipe.base is None and dict(recipe.weights) == {"A": 0.25, "B": 0.75}
    assert recipe.expected_loss({"A": 3.0, "B": 3.4}) == pytest.approx(3.3, abs=1e-12)
    assert recipe.formula({"A": 3.0, "B": 3.4}) == "0.25·3 (A) + 0.75·3.4 (B) = 3.3"


def test_passthrough_weights_each_parent_by_its_share_of_blocks(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, """\
        slices:
          - sources: [{model: A, layer_range: [0, 6]}]
          - sources: [{model: B, layer_range: [2, 4]}]
          - sources: [{model: A, layer_range: [6, 8]}]
        merge_method: passthrough
        """, layers=10)
    assert dict(recipe.weights) == pytest.approx({"A": 0.8, "B": 0.2})
    assert recipe.expected_loss({"A": 3.0, "B": 5.0}) == pytest.approx(3.4, abs=1e-12)


def test_slerp_gives_the_second_model_its_mean_t_over_layers(tmp_path: Path) -> None:
    # t: the unfiltered gradient [0, 1, 1] over 8 layers is 0, 2/7, 4/7, 6/7, 1, 1, 1, 1:
    # mean 5/7; the filtered entries do not count
    recipe = _recipe(tmp_path, """\
        slices:
          - sources:
              - model: A
                layer_range: [0, 8]
              - model: B
                layer_range: [0, 8]
        merge_method: slerp
        base_model: A
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 0.3, 0.7, 1]
            - filter: mlp
              value: 0.9
            - value: [0, 1, 1]
        """)
    assert recipe.base is None
    assert dict(recipe.weights) == pytest.approx({"A": 2 / 7, "B": 5 / 7}, abs=1e-12)
    assert recipe.expected_loss({"A": 3.0, "B": 3.7}) == pytest.approx(3.5, abs=1e-12)

    scalar = _recipe(tmp_path, """\
        models: [{model: A}, {model: C}]
        merge_method: slerp
        base_model: A
        parameters: {t: 0.25}
        """)
    assert dict(scalar.weights) == {"A": 0.75, "C": 0.25}


@pytest.mark.parametrize("body, field, line, words", [
    ("models:\n  - model: B\n  - model: C\n    parameters: {weight: 1}\n"
     "merge_method: ties\nbase_model: A\n",
     "models[0].parameters.weight", 2, "missing 'weight'"),
    ("models:\n  - model: A\n    parameters: {weight: heavy}\n  - model: B\n"
     "    parameters: {weight: 1}\nmerge_method: linear\n",
     "models[0].parameters.weight", 3, "expected a number, a gradient"),
    ("models:\n  - model: A\n    parameters: {weight: 1}\n  - model: B\n"
     "    parameters: {weight: -1}\nmerge_method: linear\n",
     "models", 1, "sum to 0"),
    ("models: [{model: A}, {model: B}]\nmerge_method: model_stock\nbase_model: A\n",
     "merge_method", 2, "does not know merge_method 'model_stock'"),
    ("slices:\n  - sources: [{model: A, layer_range: [0, 8]}, {model: B, layer_range: [0, 8]}]\n"
     "merge_method: slerp\nbase_model: A\nparameters:\n  t: [{filter: mlp, value: 1}]\n",
     "parameters.t", 6, "needs one entry without 'filter'"),
])
def test_an_unreadable_recipe_names_the_file_and_field(tmp_path: Path, body: str, field: str,
                                                       line: int, words: str) -> None:
    path = tmp_path / "mergekit_config.yml"
    path.write_text(body)
    with pytest.raises(SpecError) as err:
        read_recipe(path, PARENTS, DEPTHS, 8)
    assert (err.value.file, err.value.field, err.value.line) == (str(path), field, line)
    assert words in str(err.value)


def _merge_spec(tmp_path: Path, parents: str, judge: str = "") -> Path:
    config = tmp_path / "merge.yml"
    config.write_text("models:\n  - model: org/A\n    parameters: {weight: 1}\n"
                      "  - model: B\n    parameters: {weight: 1}\nmerge_method: linear\n")
    path = tmp_path / "m.yaml"
    path.write_text(f"name: m\nmodel: {tmp_path}\nmerge:\n  parents:\n{parents}"
                    f"  config: {config}\n{judge}")
    return path


def test_a_parent_the_config_does_not_name_is_refused_whatever_the_judge(tmp_path: Path) -> None:
    parents = "    org/A: ../a\n    B: ../b\n    extra: ../c\n"
    for judge in ("", "  judge: worst\n"):
        path = _merge_spec(tmp_path, parents, judge)
        spec = load_spec(path)
        with pytest.raises(SpecError) as err:
            resolve_recipe(spec, 8, {"org/A": 8, "B": 8, "extra": 8}, None)
        assert str(err.value).startswith(
            f"{path}:7: merge.parents.extra: parent 'extra' is not named by the merge config "
            f"{tmp_path / 'merge.yml'}")

    spec = load_spec(_merge_spec(tmp_path, "    A: ../a\n    B: ../b\n"))
    recipe = resolve_recipe(spec, 8, {"A": 8, "B": 8}, None)
    assert spec.merge.judge == "recipe" and dict(recipe.weights) == {"A": 0.5, "B": 0.5}
    worst = load_spec(_merge_spec(tmp_path, "    A: ../a\n    B: ../b\n", "  judge: worst\n"))
    assert resolve_recipe(worst, 8, {"A": 8, "B": 8}, None) is None


def test_the_recipe_judges_where_the_worst_parent_is_lenient() -> None:
    base, noisy = make_report("base", loss=3.0), make_report("noisy", loss=3.1)
    damaged = make_report("damaged", loss=4.0)
    merged = make_report("merged", loss=3.9, noise_seed=1)   # per-shard losses differ
    parents = {"base": base, "noisy": noisy, "damaged": damaged}
    layer_map = index_layer_map(list(parents), LAYERS)
    ties = Recipe("ties", (("noisy", 0.5), ("damaged", 0.5)), "base", "mergekit_config.yml")

    worst = compare_to_parents(merged, parents, layer_map, BaselineSpec())
    (check,) = [c for c in worst.checks if c.check == "merge_loss"]
    assert check.passed and check.value == pytest.approx(-0.1)
    assert check.message.startswith("probe loss (nats) judged by its worst parent 'damaged': "
                                    "4 → 3.9: -0.1 <= max_loss_increase 0.05")
    assert worst.comparisons[0].loss_judge == "worst"
    assert math.isnan(worst.comparisons[0].expected_loss)

    judged = compare_to_parents(merged, parents, layer_map, BaselineSpec(), ties)
    (check,) = [c for c in judged.checks if c.check == "merge_loss"]
    (cmp,) = judged.comparisons
    # 3.0 + 0.5 (3.1 - 3.0) + 0.5 (4.0 - 3.0) = 3.55; 3.9 - 3.55 = 0.35 > 0.05
    assert not check.passed and check.value == pytest.approx(0.35)
    paired = (np.asarray(merged.loss.leave_one_out) - 0.5 * np.asarray(noisy.loss.leave_one_out)
              - 0.5 * np.asarray(damaged.loss.leave_one_out))   # base coefficient 1 - 1 = 0
    assert check.threshold == 0.05 and check.stderr == pytest.approx(jackknife_se(paired))
    assert check.stderr > 1e-5
    assert check.message.startswith(
        "probe loss (nats) judged by its recipe (ties): expected 3 (base) + 0.5·(3.1 − 3) (noisy)"
        " + 0.5·(4 − 3) (damaged) = 3.55; expected → measured 3.55 → 3.9: +0.35 ± ")
    assert check.message.endswith("> max_loss_increase 0.05")
    assert cmp.loss_judge == "recipe" and cmp.expected_loss == pytest.approx(3.55)
    assert cmp.loss_then == pytest.approx(3.55) and judged.verdict == "fail"

    assert "  loss judged by the merge's recipe: expected 3.5500\n" in comparison_text(cmp)
    assert "loss judged" not in comparison_text(worst.comparisons[0])
    assert [row.label for row in loss_rows(judged)] == ["this checkpoint", "parents (recipe)"]
    assert loss_rows(worst)[1].label == "parents (worst)"

    back = Report.from_dict(judged.to_dict())
    assert back.comparisons[0].loss_judge == "recipe"
    assert back.comparisons[0].expected_loss == pytest.approx(3.55)
    assert math.isnan(Report.from_dict(worst.to_dict()).comparisons[0].expected_loss)


TIES = """\
models:
  - model: noisy
    parameters: {weight: 0.5, density: 0.5}
  - model: damaged
    parameters: {weight: 0.5, density: 0.5}
merge_method: ties
base_model: base
dtype: float32
"""


@pytest.mark.slow  # two inner pytest runs on five tiny checkpoints (about 40 s)
def test_a_merge_the_worst_parent_passes_fails_by_its_recipe(
        inner, pytester: pytest.Pytester,  # noqa: F811 (inner: the fixture)
        tiny_model_dir: Path) -> None:
    """A TIES recipe of a base, its 1 %-noise sibling and a copy whose final norm is x8
    (its loss far above the others'); the merge saved is the damaged copy itself.  The
    worst parent is that copy, so the worst rule passes every item; the recipe expects
    the mean of the base's and the damaged copy's losses and fails merge-loss."""
    from test_merge_session import _variant

    rng = np.random.default_rng(0)
    root = pytester.path / "models"
    root.mkdir()
    noisy = _variant(tiny_model_dir, root / "noisy", lambda w: {
        k: (v + np.float32(0.01) * v.std() * rng.standard_normal(v.shape).astype(np.float32))
        for k, v in w.items()})
    damaged = _variant(tiny_model_dir, root / "damaged", lambda w: {
        **w, "model.norm.weight": w["model.norm.weight"] * np.float32(8)})
    merged = _variant(damaged, root / "merged", lambda w: w)
    (merged / "mergekit_config.yml").write_text(TIES)
    specs = pytester.path / "specs"
    specs.mkdir()
    for judge in ("recipe", "worst"):
        (specs / f"tiny-{judge}.yaml").write_text(
            f"name: tiny-{judge}\nmodel: {merged}\nprobe:\n  sequences: 16\n  length: 24\n"
            f"  shards: 4\nlaw:\n  max_pearson_r: 1.0\nmerge:\n  parents:\n"
            f"    base: {tiny_model_dir}\n    noisy: {noisy}\n    damaged: {damaged}\n"
            f"  judge: {judge}\n")
    result = inner("--audit-spec", str(specs), ITEMS)
    outcomes = {m.group(2): m.group(1) for line in result.outlines
                if (m := re.match(r"(PASSED|FAILED|SKIPPED|ERROR) \S*::(tiny-\w+::[\w-]+)", line))}
    worst = {item: outcome for item, outcome in outcomes.items() if item.startswith("tiny-worst")}
    assert worst and set(worst.values()) <= {"PASSED", "SKIPPED"}, worst
    assert worst["tiny-worst::merge-loss"] == "PASSED"
    assert outcomes["tiny-recipe::merge-loss"] == "FAILED"
    assert {item for item, outcome in outcomes.items() if outcome == "FAILED"} == {
        "tiny-recipe::merge-loss"}

    reports = {judge: json.loads((inner.reports / f"tiny-{judge}.json").read_text())
               for judge in ("recipe", "worst")}
    losses = {label: json.loads((inner.reports / f"tiny-recipe.parent-{label}.json").read_text())
              ["loss"]["mean"] for label in ("base", "noisy", "damaged")}
    expected = losses["base"] + 0.5 * (losses["noisy"] - losses["base"]) + 0.5 * (
        losses["damaged"] - losses["base"])
    (recipe,) = reports["recipe"]["comparisons"]
    (worst_cmp,) = reports["worst"]["comparisons"]
    assert recipe["loss_judge"] == "recipe" and worst_cmp["loss_judge"] == "worst"
    assert recipe["expected_loss"] == pytest.approx(expected, abs=1e-12)
    assert worst_cmp["expected_loss"] is None and worst_cmp["loss_then"] == losses["damaged"]
    # the damage raises the loss by about 0.3 nats: the merge (the damaged copy) is
    # half of that above its recipe, beyond the 0.05 tolerance, and level with its worst parent
    assert losses["damaged"] - losses["base"] > 0.2
    assert recipe["loss_now"] - expected > 0.1 and recipe["loss_now"] == losses["damaged"]
    (check,) = [c for c in reports["recipe"]["violations"] if c["check"] == "merge_loss"]
    assert check["message"].startswith(
        f"probe loss (nats) judged by its recipe (ties): expected {losses['base']:.5g} (base) + ")
    assert check["message"].endswith("> max_loss_increase 0.05")
