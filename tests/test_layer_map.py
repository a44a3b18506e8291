"""Layer maps of merged checkpoints: mergekit configs, explicit entries, index maps."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from audit.compare.layer_map import (
    LayerMap,
    LayerSource,
    index_layer_map,
    layer_map_from_entries,
    read_mergekit_config,
)
from audit.errors import SpecError
from audit.internal import yaml_lines

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"

PASSTHROUGH = f"""\
slices:
  - sources:
      - model: {SMOL}
        layer_range: [0, 25]
  - sources:
      - model: {SMOL}
        layer_range: [18, 25]
  - sources:
      - model: {SMOL}
        layer_range: [25, 30]
merge_method: passthrough
dtype: float32
"""

LINEAR = """\
models:
  - model: A
    parameters: {weight: 0.5}
  - model: B
    parameters: {weight: 0.5}
merge_method: linear
dtype: float16
"""

SLERP = """\
slices:
  - sources:
      - model: A
        layer_range: [0, 4]
      - model: B
        layer_range: [2, 6]
merge_method: slerp
base_model: A
parameters:
  t: [0, 0.5, 1]
dtype: bfloat16
"""


def write(tmp_path: Path, text: str, name: str = "mergekit_config.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def config_error(tmp_path: Path, text: str, parents=("A", "B"), layers=None) -> SpecError:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        read_mergekit_config(path, parents, layers or {p: 6 for p in parents})
    assert info.value.file == str(path)
    return info.value


def test_passthrough_repeats_blocks(tmp_path: Path) -> None:
    path = write(tmp_path, PASSTHROUGH)
    layer_map = read_mergekit_config(path, {SMOL: "/ckpt/smol"}, {SMOL: 30})
    assert layer_map.num_layers == 37
    assert layer_map.method == "passthrough"
    assert layer_map.origin == str(path)
    assert layer_map.for_layer(1) == (LayerSource(SMOL, 1),)
    assert layer_map.for_layer(25) == (LayerSource(SMOL, 25),)
    assert layer_map.for_layer(26) == (LayerSource(SMOL, 19),)  # block 18 -> layer 19
    assert layer_map.for_layer(32) == (LayerSource(SMOL, 25),)
    assert layer_map.for_layer(33) == (LayerSource(SMOL, 26),)
    assert layer_map.for_layer(37) == (LayerSource(SMOL, 30),)
    assert layer_map.repeat_start == 26
    assert layer_map.keeps_depth is False
    assert layer_map.parent_layers == ((SMOL, 30),)


def test_truncating_slice_does_not_keep_depth(tmp_path: Path) -> None:
    path = write(tmp_path, "slices:\n  - sources:\n      - {model: A, layer_range: [0, 4]}\n")
    layer_map = read_mergekit_config(path, ["A"], {"A": 6})
    assert [row[0].layer for row in layer_map.sources] == [1, 2, 3, 4]
    assert layer_map.method == "unknown"
    assert layer_map.keeps_depth is False
    assert layer_map.repeat_start is None


def test_linear_models_keep_depth(tmp_path: Path) -> None:
    layer_map = read_mergekit_config(write(tmp_path, LINEAR), {"A": "/a", "B": "/b"}, {"A": 6, "B": 6})
    assert layer_map.num_layers == 6
    assert layer_map.method == "linear"
    assert all(layer_map.for_layer(l) == (LayerSource("A", l), LayerSource("B", l)) for l in range(1, 7))
    assert layer_map.keeps_depth is True
    assert layer_map.repeat_start is None


def test_base_model_joins_a_whole_model_merge_once(tmp_path: Path) -> None:
    text = "models:\n  - model: B\n  - model: C\nmerge_method: ties\nbase_model: A\n"
    layer_map = read_mergekit_config(write(tmp_path, text), ["A", "B", "C"], {"A": 3, "B": 3, "C": 3})
    assert [s.parent for s in layer_map.for_layer(2)] == ["B", "C", "A"]
    text = LINEAR + "base_model: A\n"
    layer_map = read_mergekit_config(write(tmp_path, text), ["A", "B"], {"A": 6, "B": 6})
    assert [s.parent for s in layer_map.for_layer(2)] == ["A", "B"]


def test_slerp_slices_blend_two_sources(tmp_path: Path) -> None:
    layer_map = read_mergekit_config(write(tmp_path, SLERP), ["A", "B"], {"A": 6, "B": 6})
    assert layer_map.method == "slerp"
    assert layer_map.sources == tuple((LayerSource("A", m + 1), LayerSource("B", m + 3)) for m in range(4))
    assert layer_map.keeps_depth is False
    assert layer_map.repeat_start is None


def test_model_names_match_by_last_path_component(tmp_path: Path) -> None:
    text = "models:\n  - model: ./models/foo/\n  - model: org/bar\n"
    path = write(tmp_path, text)
    layer_map = read_mergekit_config(path, ["foo", "local/bar"], {"foo": 2, "local/bar": 2})
    assert layer_map.for_layer(1) == (LayerSource("foo", 1), LayerSource("local/bar", 1))


def test_exact_name_wins_over_suffix_match(tmp_path: Path) -> None:
    text = "models:\n  - model: a/foo\n"
    layer_map = read_mergekit_config(write(tmp_path, text), ["a/foo", "b/foo"], {"a/foo": 2, "b/foo": 2})
    assert layer_map.for_layer(2) == (LayerSource("a/foo", 2),)


def test_ambiguous_suffix_match(tmp_path: Path) -> None:
    error = config_error(tmp_path, "models:\n  - model: A\n  - model: ./models/foo\n",
                         parents=("A", "a/foo", "b/foo"))
    assert str(error) == (f"{error.file}:3: models[1].model: model './models/foo' matches several "
                          f"parents by its last path component: a/foo, b/foo; name one of them exactly")


def test_unknown_model(tmp_path: Path) -> None:
    error = config_error(tmp_path, "models:\n  - model: A\n  - model: C\n")
    assert (error.line, error.field) == (3, "models[1].model")
    assert error.reason == "unknown model 'C'; known parents: A, B"


def test_range_beyond_depth(tmp_path: Path) -> None:
    error = config_error(tmp_path, PASSTHROUGH, parents=(SMOL,), layers={SMOL: 28})
    assert str(error) == (f"{error.file}:10: slices[2].sources[0].layer_range: slice 2 takes blocks "
                          f"25..29 of '{SMOL}', which has 28 blocks (end <= 28)")


def test_unequal_ranges_within_a_slice(tmp_path: Path) -> None:
    error = config_error(tmp_path, SLERP.replace("[2, 6]", "[2, 5]"))
    assert str(error) == (f"{error.file}:6: slices[0].sources[1].layer_range: covers 3 blocks but "
                          f"sources[0] covers 4; sources in one slice need ranges of equal length")


@pytest.mark.parametrize("span", ["[-1, 4]", "[0, 2.5]", "[3, 3]", "[0]", "four", "[true, 4]"])
def test_bad_layer_range(tmp_path: Path, span: str) -> None:
    error = config_error(tmp_path, SLERP.replace("[0, 4]", span))
    assert (error.line, error.field) == (4, "slices[0].sources[0].layer_range")
    assert error.reason.startswith("expected [start, end] with integers 0 <= start < end "
                                   "(blocks, 0-based, end excluded), got ")


def test_missing_layer_range(tmp_path: Path) -> None:
    error = config_error(tmp_path, "slices:\n  - sources:\n      - model: A\n")
    assert str(error) == (f"{error.file}:3: slices[0].sources[0]: "
                          f"expected a mapping with 'model' and 'layer_range'")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    with pytest.raises(SpecError) as info:
        read_mergekit_config(path, ["A"], {"A": 2})
    assert str(info.value) == f"{path}: mergekit config not found"
    assert (info.value.file, info.value.line, info.value.field) == (str(path), None, None)


def test_invalid_yaml(tmp_path: Path) -> None:
    error = config_error(tmp_path, "models:\n  - model: A\n   bad: [\n")
    assert error.line == 3 and error.field is None
    assert error.reason.startswith("invalid YAML: ")


def test_duplicate_key(tmp_path: Path) -> None:
    error = config_error(tmp_path, "models:\n  - model: A\n    model: B\n")
    assert str(error) == f"{error.file}:3: models[0].model: duplicate key (first given on line 2)"


def test_neither_slices_nor_models(tmp_path: Path) -> None:
    error = config_error(tmp_path, "merge_method: linear\ndtype: float16\n")
    assert str(error) == (f"{error.file}:1: has neither 'slices' nor 'models'; "
                          f"a mergekit config gives exactly one of them")


def test_both_slices_and_models(tmp_path: Path) -> None:
    error = config_error(tmp_path, SLERP + "models:\n  - model: A\n")
    assert error.reason == "has both 'slices' and 'models'; a mergekit config gives exactly one of them"


def test_unknown_base_model(tmp_path: Path) -> None:
    error = config_error(tmp_path, LINEAR + "base_model: Z\n")
    assert (error.line, error.field) == (8, "base_model")
    assert error.reason == "unknown model 'Z'; known parents: A, B"


def test_models_of_unequal_depth(tmp_path: Path) -> None:
    error = config_error(tmp_path, LINEAR, layers={"A": 6, "B": 5})
    assert str(error) == (f"{error.file}:4: models[1].model: 'B' has 5 layers but 'A' has 6; a "
                          f"whole-model merge needs parents of equal depth (use slices otherwise)")


def test_layer_map_from_entries() -> None:
    entries, _ = yaml_lines.load(textwrap.dedent("""\
        - {parent: A, layer: 1}
        - [{parent: A, layer: 2}, {parent: B, layer: 1}]
        - {parent: A, layer: 2}
        """))
    layer_map = layer_map_from_entries(entries, {"A": "/a", "B": "/b"}, {"A": 3, "B": 2}, file="s.yaml")
    assert layer_map == LayerMap(((LayerSource("A", 1),), (LayerSource("A", 2), LayerSource("B", 1)),
                                  (LayerSource("A", 2),)), "layer_map", "s.yaml", (("A", 3), ("B", 2)))
    assert layer_map.repeat_start == 3
    assert layer_map.keeps_depth is False


def test_entries_as_stored_by_the_spec_keep_their_lines() -> None:
    # MergeSpec keeps parents as (label, path) pairs and the list as a tuple of LineDicts.
    data, _ = yaml_lines.load("layer_map:\n  - {parent: A, layer: 1}\n  - {parent: A, layer: 9}\n")
    with pytest.raises(SpecError) as info:
        layer_map_from_entries(tuple(data["layer_map"]), (("A", "/a"),), {"A": 2}, file="s.yaml", line=1)
    assert str(info.value) == ("s.yaml:3: merge.layer_map[1].layer: "
                               "expected an integer in 1..2 (layers of 'A'), got 9")


def test_entries_that_keep_depth() -> None:
    layer_map = layer_map_from_entries([{"parent": "A", "layer": 1}, {"parent": "A", "layer": 2}],
                                       ["A"], {"A": 2})
    assert layer_map.keeps_depth is True and layer_map.origin is None


@pytest.mark.parametrize("text, line, field, reason", [
    ("merge:\n  layer_map: []\n", 2, "merge.layer_map",
     "expected a non-empty list, one entry per merged layer: {parent: LABEL, layer: K} or a list "
     "of them, got []"),
    ("merge:\n  layer_map:\n    - {parent: A, layer: 1}\n    - {parent: C, layer: 1}\n", 4,
     "merge.layer_map[1].parent", "unknown parent 'C'; known parents: A, B"),
    ("merge:\n  layer_map:\n    - {parent: AA, layer: 1}\n", 3,
     "merge.layer_map[0].parent", "unknown parent 'AA'; did you mean 'A'?"),
    ("merge:\n  layer_map:\n    - {parent: B, layer: 3}\n", 3,
     "merge.layer_map[0].layer", "expected an integer in 1..2 (layers of 'B'), got 3"),
    ("merge:\n  layer_map:\n    - {parent: B, layer: 0}\n", 3,
     "merge.layer_map[0].layer", "expected an integer in 1..2 (layers of 'B'), got 0"),
    ("merge:\n  layer_map:\n    - {parent: A, layers: 1}\n", 3,
     "merge.layer_map[0].layers", "unknown key; did you mean 'layer'?"),
    ("merge:\n  layer_map:\n    - {parent: A}\n", 3, "merge.layer_map[0].layer", "missing required key"),
    ("merge:\n  layer_map:\n    - {parent: A, layer: 1}\n    - []\n", 4,
     "merge.layer_map[1]", "empty blend; give at least one {parent: LABEL, layer: K}"),
    ("merge:\n  layer_map:\n    - - {parent: A, layer: 1}\n      - 7\n", 4,
     "merge.layer_map[0][1]", "expected {parent: LABEL, layer: K}, got 7"),
])
def test_bad_entries(text: str, line: int, field: str, reason: str) -> None:
    data, _ = yaml_lines.load(text)
    with pytest.raises(SpecError) as info:
        layer_map_from_entries(data["merge"]["layer_map"], ["A", "B"], {"A": 4, "B": 2}, file="s.yaml",
                               line=data["merge"].key_lines["layer_map"])
    error = info.value
    assert (error.file, error.line, error.field, error.reason) == ("s.yaml", line, field, reason)


def test_index_layer_map() -> None:
    layer_map = index_layer_map(["A", "B"], 3)
    assert layer_map.method == "index" and layer_map.origin is None
    assert layer_map.for_layer(3) == (LayerSource("A", 3), LayerSource("B", 3))
    assert layer_map.keeps_depth is True and layer_map.repeat_start is None
    with pytest.raises(ValueError, match=r"layer must be in 1\.\.3, got 0"):
        layer_map.for_layer(0)
    with pytest.raises(ValueError):
        index_layer_map([], 3)


def test_repeat_after_another_parent() -> None:
    rows = [("A", 1), ("A", 2), ("B", 1), ("A", 2)]
    layer_map = LayerMap(tuple((LayerSource(p, k),) for p, k in rows), "layer_map")
    assert layer_map.repeat_start == 4
