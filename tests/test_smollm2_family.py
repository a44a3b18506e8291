"""The SmolLM2 checkpoint family of tests/smollm2_family.py: each variant holds the
weights it claims (noise level, exact merges, the damaged tensor, the passthrough
stacking), and the passthrough folder loads and runs in transformers.

Builds the family from the real GGUF once for the module (about 45 s on 2 cores,
most of it dequantising the GGUF): marked slow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from smollm2_family import (
    ATTN_X8_KEY,
    HEALTHY_LABEL,
    MLP_X8_KEY,
    NOISY_LABEL,
    NORM_X8_KEY,
    VARIANTS,
    SmolLM2Family,
    _restack_config,
)

pytestmark = pytest.mark.slow

SPECS = Path(__file__).resolve().parents[1] / "model_specs"
MERGES = {"average", "wrong-average", "passthrough"}
UNTOUCHED = "layers.3.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def family(smollm2_family):
    """The session's shared family (tests/conftest.py)."""
    return smollm2_family


def tensors(folder: Path, keys=None) -> dict[str, np.ndarray]:
    """Some (default: all) tensors of a folder's model.safetensors, read with numpy."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="numpy") as handle:
        return {key: handle.get_tensor(key) for key in (keys or handle.keys())}


def block(folder: Path, index: int) -> dict[str, np.ndarray]:
    """Block ``index``'s tensors, keyed by their name within the block."""
    from safetensors import safe_open

    prefix = f"layers.{index}."
    with safe_open(str(folder / "model.safetensors"), framework="numpy") as handle:
        return {key[len(prefix):]: handle.get_tensor(key)
                for key in handle.keys() if key.startswith(prefix)}


def half_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a + b) / np.float32(2)


def assert_blocks_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and len(got) == 9
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_every_variant_is_a_complete_safetensors_folder(family) -> None:
    folders = {variant: family.folder(variant) for variant in VARIANTS}
    healthy_files = {p.name for p in folders["healthy"].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= healthy_files
    for variant, folder in folders.items():
        assert folder == family.root / variant
        names = {p.name for p in folder.iterdir()}
        expected = healthy_files | ({"mergekit_config.yml"} if variant in MERGES else set())
        assert names == expected, variant
        assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
    # Nothing half-built is left next to them; building again is a no-op.
    assert sorted(p.name for p in family.root.iterdir()) == sorted(VARIANTS)
    assert family.folder("noisy") == folders["noisy"]
    healthy = tensors(folders["healthy"])
    assert len(healthy) == 2 + 9 * 30
    assert all(value.dtype == np.float32 for value in healthy.values())
    assert healthy["embed_tokens.weight"].shape == (49152, 576)
    print("\nbuild seconds:", {k: round(v, 1) for k, v in family.timings.items()})


@pytest.mark.parametrize("variant, key", [
    ("mlp-x8", MLP_X8_KEY), ("attn-x8", ATTN_X8_KEY), ("norm-x8", NORM_X8_KEY)])
def test_damaged_copies_scale_one_tensor_by_eight(family, variant, key) -> None:
    healthy = tensors(family.folder("healthy"))
    damaged = tensors(family.folder(variant))
    assert damaged.keys() == healthy.keys()
    np.testing.assert_array_equal(damaged[key], healthy[key] * np.float32(8))
    assert np.abs(healthy[key]).max() > 0
    for name in healthy:
        if name != key:
            np.testing.assert_array_equal(damaged[name], healthy[name], err_msg=name)


def test_noisy_sibling_is_one_percent_of_each_std_away(family) -> None:
    healthy = tensors(family.folder("healthy"))
    noisy = tensors(family.folder("noisy"))
    assert noisy.keys() == healthy.keys()
    for key, h in healthy.items():
        n = noisy[key]
        assert n.dtype == np.float32 and n.shape == h.shape
        scale = np.std(h, dtype=np.float64) or np.mean(np.abs(h), dtype=np.float64)
        ratio = np.std(n - h, dtype=np.float64) / scale
        # 576-element norms: the sample std of the noise is 1 within about 3%.
        assert 0.008 <= ratio <= 0.012, (key, ratio)
    h, n = healthy[UNTOUCHED], noisy[UNTOUCHED]
    ratio = np.std(n - h, dtype=np.float64) / np.std(h, dtype=np.float64)
    assert 0.009 <= ratio <= 0.011
    assert abs(np.mean(n - h, dtype=np.float64)) < 1e-3 * np.std(h)


def test_average_is_the_exact_linear_merge(family) -> None:
    keys = [UNTOUCHED, "embed_tokens.weight", "layers.12.self_attn.q_proj.weight", "norm.weight"]
    healthy = tensors(family.folder("healthy"), keys)
    noisy = tensors(family.folder("noisy"), keys)
    average = tensors(family.folder("average"), keys)
    for key in keys:
        assert average[key].dtype == np.float32
        np.testing.assert_array_equal(average[key], half_sum(healthy[key], noisy[key]),
                                      err_msg=key)
    assert not np.array_equal(average[UNTOUCHED], healthy[UNTOUCHED])
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((family.folder("average") / "mergekit_config.yml").read_text())
    assert config == {
        "models": [{"model": HEALTHY_LABEL, "parameters": {"weight": 0.5}},
                   {"model": NOISY_LABEL, "parameters": {"weight": 0.5}}],
        "merge_method": "linear", "dtype": "float32"}


def test_wrong_average_takes_the_next_block_of_the_noisy_parent(family) -> None:
    healthy, noisy = family.folder("healthy"), family.folder("noisy")
    wrong = family.folder("wrong-average")

    def merged(h_block: int, n_block: int) -> dict:
        h, n = block(healthy, h_block), block(noisy, n_block)
        return {name: half_sum(h[name], n[name]) for name in h}

    assert_blocks_equal(block(wrong, 12), merged(12, 13))
    assert_blocks_equal(block(wrong, 10), merged(10, 11))
    assert_blocks_equal(block(wrong, 19), merged(19, 20))
    assert_blocks_equal(block(wrong, 9), merged(9, 9))
    assert_blocks_equal(block(wrong, 20), merged(20, 20))
    outside = tensors(wrong, ["embed_tokens.weight", "norm.weight"])
    average = tensors(family.folder("average"), ["embed_tokens.weight", "norm.weight"])
    for key in outside:
        np.testing.assert_array_equal(outside[key], average[key])
    assert ((wrong / "mergekit_config.yml").read_text()
            == (family.folder("average") / "mergekit_config.yml").read_text())


def test_passthrough_stacks_37_blocks(family) -> None:
    healthy, folder = family.folder("healthy"), family.folder("passthrough")
    names = tensors(folder).keys()
    indices = {int(m.group(1)) for m in map(re.compile(r"layers\.(\d+)\.").match, names) if m}
    assert indices == set(range(37)) and len(names) == 2 + 9 * 37
    for new, source in [(0, 0), (24, 24), (25, 18), (31, 24), (32, 25), (36, 29)]:
        assert_blocks_equal(block(folder, new), block(healthy, source))
    for key in ("embed_tokens.weight", "norm.weight"):
        np.testing.assert_array_equal(tensors(folder, [key])[key], tensors(healthy, [key])[key])

    config = json.loads((folder / "config.json").read_text())
    healthy_config = json.loads((healthy / "config.json").read_text())
    assert config["num_hidden_layers"] == 37 and healthy_config["num_hidden_layers"] == 30
    assert config == {**healthy_config, "num_hidden_layers": 37}  # SmolLM2 has no per-layer lists
    yaml = pytest.importorskip("yaml")
    merge = yaml.safe_load((folder / "mergekit_config.yml").read_text())
    assert merge == {
        "slices": [{"sources": [{"model": HEALTHY_LABEL, "layer_range": list(r)}]}
                   for r in ([0, 25], [18, 25], [25, 30])],
        "merge_method": "passthrough", "dtype": "float32"}


def test_passthrough_loads_and_runs_in_transformers(family) -> None:
    import torch
    import transformers

    def load(folder: Path):
        model, info = transformers.AutoModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True,
            output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert not info["mismatched_keys"], info
        return model.eval()

    stacked = load(family.folder("passthrough"))
    assert stacked.config.num_hidden_layers == 37 and len(stacked.layers) == 37
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(family.folder("passthrough")), local_files_only=True)
    ids = tokenizer("def add(a, b):", return_tensors="pt").input_ids[:, :5]
    assert ids.shape == (1, 5)
    with torch.no_grad():
        out = stacked(input_ids=ids, output_hidden_states=True)
        assert len(out.hidden_states) == 38
        assert all(torch.isfinite(h).all() for h in out.hidden_states)
        # The first 25 blocks are healthy's: so are hidden states 0..25.
        reference = load(family.folder("healthy"))(input_ids=ids, output_hidden_states=True)
    assert len(reference.hidden_states) == 31
    for i in range(26):
        torch.testing.assert_close(out.hidden_states[i], reference.hidden_states[i],
                                   rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.hidden_states[26], reference.hidden_states[26])


def test_a_failed_build_leaves_no_folder(tmp_path: Path) -> None:
    family = SmolLM2Family(tmp_path / "family", tmp_path / "absent.gguf")
    (tmp_path / "family").mkdir()
    stale = tmp_path / "family" / ".healthy.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")  # a crashed run's leftover

    def crash(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    family._builders["healthy"] = crash
    with pytest.raises(RuntimeError, match="disk full"):
        family.folder("healthy")
    assert list((tmp_path / "family").iterdir()) == []

    family._builders["healthy"] = lambda out: (out / "config.json").write_text("{}")
    folder = family.folder("healthy")
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    assert [p.name for p in (tmp_path / "family").iterdir()] == ["healthy"]
    with pytest.raises(KeyError, match="unknown"):
        family.folder("mlp-x4")


def test_restacking_a_config_rebuilds_per_layer_lists() -> None:
    config = {"num_hidden_layers": 3, "layer_types": ["a", "b", "c"], "eos": [1, 2],
              "text_config": {"num_hidden_layers": 3, "sliding": [0, 1, 0]}}
    _restack_config(config, (0, 1, 1, 2))
    assert config == {"num_hidden_layers": 4, "layer_types": ["a", "b", "b", "c"],
                      "eos": [1, 2],
                      "text_config": {"num_hidden_layers": 4, "sliding": [0, 1, 1, 0]}}
