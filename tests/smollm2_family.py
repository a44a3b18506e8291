"""A family of safetensors checkpoints built from the real SmolLM2-135M-Instruct GGUF,
for slow tests: healthy siblings, damaged copies and merges.

``SmolLM2Family(root, gguf).folder(variant)`` builds a variant once, lazily, under
``root/<variant>`` and returns that folder.  Every folder holds ``config.json``, the
tokenizer files and one ``model.safetensors`` (float32, the state-dict keys of
``transformers.AutoModel``: ``embed_tokens.weight``, ``layers.{i}...``,
``norm.weight``); merges also hold the ``mergekit_config.yml`` a user would have
written.  Nothing is pickled.

Only ``healthy`` needs torch and transformers (it dequantises the GGUF once); every
other variant is computed with numpy from the healthy folder's safetensors.  A
variant is built in ``root/.<variant>.tmp`` and renamed into place when complete,
so a crashed build never leaves a half folder (a stale temporary folder is removed
by the next build).
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

WEIGHTS = "model.safetensors"
HEALTHY_LABEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""How the mergekit configs name the healthy parent."""
NOISY_LABEL = "smollm2-noisy"
"""How the mergekit configs name the noisy parent."""
BLOCKS = 30
NOISE_SEED = 0
NOISE_SCALE = 0.01
"""Noise of ``noisy``: ``NOISE_SCALE * std(w)`` per tensor (``mean(|w|)`` where the
std is 0), drawn from ``default_rng(NOISE_SEED)`` tensor by tensor in sorted key
order."""
FACTOR = 8.0
MLP_X8_KEY = "layers.14.mlp.down_proj.weight"
"""Block 14 produces hidden state 15."""
ATTN_X8_KEY = "layers.24.self_attn.o_proj.weight"
NORM_X8_KEY = "layers.24.post_attention_layernorm.weight"
"""The pre-MLP norm of block 24."""
WRONG_BLOCKS = range(10, 20)
"""``wrong-average`` block k (k in 10..19) is 0.5 healthy[k] + 0.5 noisy[k + 1]."""
PASSTHROUGH_SLICES = ((0, 25), (18, 25), (25, 30))
"""Healthy layer ranges ``[start, end)`` stacked by ``passthrough``."""
PASSTHROUGH_SOURCES = tuple(i for start, end in PASSTHROUGH_SLICES for i in range(start, end))
"""Healthy block behind each of the 37 passthrough blocks."""

VARIANTS = {
    "healthy": "SmolLM2-135M-Instruct dequantised from the GGUF and re-saved as safetensors",
    "noisy": "healthy + 0.01 x std(w) Gaussian noise on every tensor (seed 0): a healthy sibling",
    "average": "element-wise 50/50 linear merge of healthy and noisy (mergekit_config.yml)",
    "mlp-x8": "healthy with layers.14.mlp.down_proj.weight x 8 (hidden state 15 damaged)",
    "attn-x8": "healthy with layers.24.self_attn.o_proj.weight x 8 (late attention damaged)",
    "norm-x8": "healthy with layers.24.post_attention_layernorm.weight x 8 (pre-MLP norm)",
    "wrong-average": "50/50 merge whose blocks 10..19 take noisy block k+1 instead of k "
                     "(same linear mergekit_config.yml as average)",
    "passthrough": "37-block self-stack: healthy blocks 0..24, 18..24, 25..29 "
                   "(passthrough mergekit_config.yml)",
}

LINEAR_MERGEKIT = f"""\
models:
  - model: {HEALTHY_LABEL}
    parameters:
      weight: 0.5
  - model: {NOISY_LABEL}
    parameters:
      weight: 0.5
merge_method: linear
dtype: float32
"""

PASSTHROUGH_MERGEKIT = "slices:\n" + "".join(
    f"  - sources:\n      - model: {HEALTHY_LABEL}\n        layer_range: [{start}, {end}]\n"
    for start, end in PASSTHROUGH_SLICES) + "merge_method: passthrough\ndtype: float32\n"

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")
Tensors = dict[str, np.ndarray]


def _load(folder: Path) -> Tensors:
    from safetensors.numpy import load_file

    return load_file(str(folder / WEIGHTS))


def _save(tensors: Tensors, folder: Path) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})


def _half_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a + b) / 2 in float32, what a linear 50/50 merge writes."""
    return ((a + b) * np.float32(0.5)).astype(np.float32, copy=False)


class SmolLM2Family:
    """Builds each variant once, lazily, under a root folder; returns its folder."""

    def __init__(self, root: Path, gguf: Path):
        self.root = Path(root)
        self.gguf = Path(gguf)
        self.timings: dict[str, float] = {}
        """Seconds each variant took to build in this process (its own work, not the
        parents it needed first)."""
        self._builders: dict[str, Callable[[Path], None]] = {
            "healthy": self._build_healthy,
            "noisy": self._build_noisy,
            "average": lambda out: self._build_average(out, wrong=False),
            "mlp-x8": lambda out: self._build_scaled(out, MLP_X8_KEY),
            "attn-x8": lambda out: self._build_scaled(out, ATTN_X8_KEY),
            "norm-x8": lambda out: self._build_scaled(out, NORM_X8_KEY),
            "wrong-average": lambda out: self._build_average(out, wrong=True),
            "passthrough": self._build_passthrough,
        }
        assert set(self._builders) == set(VARIANTS)

    def folder(self, variant: str) -> Path:
        """The folder of ``variant`` (a key of ``VARIANTS``), built first if missing."""
        if variant not in VARIANTS:
            raise KeyError(f"unknown SmolLM2 variant {variant!r}: one of {sorted(VARIANTS)}")
        final = self.root / variant
        if final.is_dir():
            return final
        # Parents first, so that a variant's own timing excludes them.
        if variant != "healthy":
            self.folder("healthy")
        if variant in ("average", "wrong-average"):
            self.folder("noisy")
        import time

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{variant}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        start = time.perf_counter()
        try:
            self._builders[variant](tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            gc.collect()
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a concurrent build that finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        self.timings[variant] = time.perf_counter() - start
        return final

    # -- builders: each writes a complete folder into ``out`` ---------------------

    def _build_healthy(self, out: Path) -> None:
        import torch
        import transformers

        gguf = self.gguf
        model = transformers.AutoModel.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        # transformers refuses save_pretrained on a GGUF-dequantised model: write the
        # (float32) weights and the config ourselves.
        model.config.save_pretrained(out)
        weights = {key: value.detach().to(torch.float32).contiguous().numpy()
                   for key, value in model.state_dict().items()}
        _save(weights, out)
        del model, weights
        transformers.AutoTokenizer.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True).save_pretrained(out)

    def _copy_side_files(self, out: Path) -> None:
        """config.json and the tokenizer files of healthy (everything but weights)."""
        for item in (self.root / "healthy").iterdir():
            if item.is_file() and item.name != WEIGHTS:
                shutil.copyfile(item, out / item.name)

    def _build_noisy(self, out: Path) -> None:
        self._copy_side_files(out)
        tensors = _load(self.root / "healthy")
        rng = np.random.default_rng(NOISE_SEED)
        for key in sorted(tensors):
            w = tensors[key]
            scale = float(np.std(w, dtype=np.float64))
            if scale == 0.0:
                scale = float(np.mean(np.abs(w), dtype=np.float64))
            noise = rng.standard_normal(w.shape, dtype=np.float32)
            noise *= np.float32(NOISE_SCALE * scale)
            noise += w
            tensors[key] = noise
            del w
        _save(tensors, out)
        del tensors

    def _build_average(self, out: Path, wrong: bool) -> None:
        self._copy_side_files(out)
        (out / "mergekit_config.yml").write_text(LINEAR_MERGEKIT)
        healthy = _load(self.root / "healthy")
        noisy = _load(self.root / "noisy")
        merged: Tensors = {}
        for key in sorted(healthy):
            partner = key
            match = _LAYER_KEY.match(key)
            if wrong and match and int(match.group(1)) in WRONG_BLOCKS:
                partner = f"layers.{int(match.group(1)) + 1}.{match.group(2)}"
            merged[key] = _half_sum(healthy[key], noisy[partner])
        del healthy, noisy
        _save(merged, out)
        del merged

    def _build_scaled(self, out: Path, key: str) -> None:
        self._copy_side_files(out)
        tensors = _load(self.root / "healthy")
        tensors[key] = tensors[key] * np.float32(FACTOR)
        _save(tensors, out)
        del tensors

    def _build_passthrough(self, out: Path) -> None:
        self._copy_side_files(out)
        (out / "mergekit_config.yml").write_text(PASSTHROUGH_MERGEKIT)
        healthy = _load(self.root / "healthy")
        stacked: Tensors = {}
        for key, value in healthy.items():
            if not _LAYER_KEY.match(key):
                stacked[key] = value
        used: set[int] = set()
        for new, source in enumerate(PASSTHROUGH_SOURCES):
            prefix = f"layers.{source}."
            for key, value in healthy.items():
                if key.startswith(prefix):
                    # A repeated block is copied: safetensors refuses two names
                    # for one buffer.
                    stacked[f"layers.{new}.{key[len(prefix):]}"] = (
                        value.copy() if source in used else value)
            used.add(source)
        del healthy
        _save(stacked, out)
        del stacked

        config_path = out / "config.json"
        config = json.loads(config_path.read_text())
        _restack_config(config, PASSTHROUGH_SOURCES)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _restack_config(config: dict, sources: tuple[int, ...]) -> None:
    """Set ``num_hidden_layers`` to ``len(sources)`` and rebuild every per-layer list
    (a list as long as the old block count, e.g. ``layer_types``) from the source
    blocks; nested configs (``text_config``) too."""
    old = config.get("num_hidden_layers")
    if isinstance(old, int):
        config["num_hidden_layers"] = len(sources)
        for key, value in config.items():
            if isinstance(value, list) and len(value) == old:
                config[key] = [value[i] for i in sources]
    for value in config.values():
        if isinstance(value, dict):
            _restack_config(value, sources)
