"""Which tensor is layer l, for every family equilaw supports, checked against the
model's own modules and against transformers' ``output_hidden_states``; the hooks
that capture them; the spec's ``model.modules`` for architectures equilaw does not
know; RWKV's inference-mode rescaling; and a tiny audit of every family from a
folder written by ``save_pretrained`` (the path a real RWKV or Mamba checkpoint on
disk takes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

from audit.backends.architectures import ARCHITECTURES  # noqa: E402
from audit.backends.torch_backend import TorchBackend  # noqa: E402
from audit.errors import BackendError  # noqa: E402
from audit.norms import NormInfo  # noqa: E402
from audit.pipeline import run  # noqa: E402
from audit.spec import ModelSpec, ModuleOverride, spec_from_dict  # noqa: E402
from audit.synthetic.tiny import FAMILIES, causal_lm, config, save_tiny_model  # noqa: E402

LAYERS = 3
IDS = np.random.default_rng(0).integers(3, 259, size=(2, 12))
PROBE = {"sequences": 8, "length": 32, "shards": 2, "batch_size": 4}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family as a tiny random model saved with ``save_pretrained``."""
    return {arch: save_tiny_model(tmp_path_factory.mktemp(arch), cfg=config(arch, LAYERS))
            for arch in FAMILIES}


def _backend(path: Path | str | None = None, model=None, **model_kw) -> TorchBackend:
    return TorchBackend(ModelSpec(path=str(path or "."), **model_kw), "tiny", model=model)


def _hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_every_family_has_a_tiny_config() -> None:
    assert set(FAMILIES) == set(ARCHITECTURES) - {"gemma3"}  # gemma3: the GGUF name of gemma3_text


@pytest.mark.parametrize("arch", FAMILIES)
def test_layers_against_the_modules_and_transformers(arch: str, family_dirs) -> None:
    """Layer 0 is the first block's input, 1..L-1 the block outputs, L the final
    norm's output, whatever layout transformers' ``hidden_states`` has."""
    backend = _backend(family_dirs[arch])
    ours = backend.forward(IDS, loss=False).hidden
    assert ours.shape == (LAYERS + 1, *IDS.shape, 32) and ours.dtype == np.float32
    base = backend.load()
    entry = ARCHITECTURES[arch]
    ids = torch.from_numpy(IDS)
    seen: dict[str, torch.Tensor] = {}
    blocks = base.get_submodule(entry.blocks)

    def first_input(module, args, kwargs) -> None:
        seen["input"] = args[0] if args else kwargs["hidden_states"]

    def last_output(module, args, out) -> None:
        seen["last"] = out[0] if isinstance(out, tuple) else out

    handles = [blocks[0].register_forward_pre_hook(first_input, with_kwargs=True),
               blocks[-1].register_forward_hook(last_output)]
    try:
        with torch.inference_mode():
            theirs = base(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    theirs = [t.float().numpy() for t in theirs]
    assert len(theirs) == LAYERS + 1
    np.testing.assert_array_equal(ours[0], seen["input"].float().numpy())
    with torch.inference_mode():
        normed = base.get_submodule(entry.module)(seen["last"]).float().numpy()
    np.testing.assert_array_equal(ours[LAYERS], normed)
    np.testing.assert_array_equal(ours[LAYERS], theirs[LAYERS])  # both layouts end so
    if entry.transformers_layout == "embedding_first":
        for layer in range(LAYERS):
            np.testing.assert_array_equal(ours[layer], theirs[layer])
    else:  # blocks 1..L, then the final norm's output: shifted by one, no embedding
        assert entry.transformers_layout == "block_outputs"
        for layer in range(1, LAYERS):
            np.testing.assert_array_equal(ours[layer], theirs[layer - 1])
        assert not np.allclose(theirs[0], ours[0])
        with torch.inference_mode():
            embedded = base.get_input_embeddings()(ids).float().numpy()
        np.testing.assert_array_equal(ours[0], embedded)  # before RWKV's pre_ln


QUICK = ("llama", "gpt2", "mamba", "rwkv")
"""Families whose whole audit runs in the quick suite; the others' in the slow one."""


@pytest.mark.parametrize("arch", [arch if arch in QUICK else pytest.param(arch, marks=pytest.mark.slow)
                                  for arch in FAMILIES])
def test_every_family_audits_from_its_saved_folder(arch: str, family_dirs) -> None:
    report = run(spec_from_dict({"name": arch.replace("_", "-"),
                                 "model": {"path": str(family_dirs[arch])}, "probe": PROBE}))
    assert report.model["architecture"] == arch and report.model["layers"] == LAYERS
    assert len(report.layers) == LAYERS + 1
    assert all(np.isfinite(row.pr) and 0 < row.pr <= 1 for row in report.layers)
    assert report.loss is not None and np.isfinite(report.loss.mean)


def test_hooks_are_removed_after_a_pass_and_after_a_failure(family_dirs) -> None:
    backend = _backend(family_dirs["llama"])
    base = backend.load()
    before = _hook_count(base)
    backend.forward(IDS, loss=False).hidden
    assert _hook_count(base) == before

    def fail(module, args):
        raise RuntimeError("block 2 failed")

    handle = base.layers[1].register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="block 2 failed"):
            backend.forward(IDS, loss=False).hidden
        assert _hook_count(base) == before + 1  # only the failing hook itself
    finally:
        handle.remove()
    np.testing.assert_array_equal(backend.forward(IDS, loss=False).hidden, _backend(
        family_dirs["llama"]).forward(IDS, loss=False).hidden)


def test_a_sink_receives_every_layer_and_the_capture_keeps_the_last(family_dirs) -> None:
    """With a sink, each layer goes to it as produced and only the last stays
    referenced (the others can be freed during the pass): the same tensors as a
    capture that keeps them all."""
    backend = _backend(family_dirs["llama"])
    backend.load()
    ids = torch.from_numpy(IDS)
    received: dict[int, np.ndarray] = {}
    with torch.inference_mode():
        kept = backend.layer_states(ids)
        sunk = backend.layer_states(
            ids, sink=lambda layer, t: received.setdefault(layer, t.float().numpy().copy()))
    assert sorted(received) == list(range(LAYERS + 1))
    assert all(state is None for state in sunk[:-1]) and sunk[-1] is not None
    for layer, state in enumerate(kept):
        np.testing.assert_array_equal(received[layer], state.float().numpy())
    np.testing.assert_array_equal(sunk[-1].float().numpy(), kept[-1].float().numpy())


def test_a_block_that_runs_twice_is_an_error(family_dirs) -> None:
    model = causal_lm(config("llama", LAYERS))
    model.model.layers[2] = model.model.layers[1]  # the same module twice
    with pytest.raises(BackendError) as err:
        _backend(family_dirs["llama"], model=model).forward(IDS, loss=False).hidden
    assert str(err.value) == (
        "model tiny: the llama architecture: block 2 ran 2 times in one forward pass "
        "(expected once): equilaw cannot tell which output is the layer")


def test_module_override_reproduces_the_table(family_dirs) -> None:
    table = _backend(family_dirs["llama"]).forward(IDS, loss=False).hidden
    paths = ModuleOverride(blocks="model.layers", final_norm="model.norm")
    np.testing.assert_array_equal(
        _backend(family_dirs["llama"], modules=paths).forward(IDS, loss=False).hidden, table)
    embedding = dataclasses.replace(paths, embedding="model.embed_tokens")
    np.testing.assert_array_equal(
        _backend(family_dirs["llama"], modules=embedding).forward(IDS, loss=False).hidden, table)
    gpt2 = _backend(family_dirs["gpt2"]).forward(IDS, loss=False).hidden
    tokens_only = _backend(family_dirs["gpt2"], modules=ModuleOverride(
        blocks="transformer.h", final_norm="transformer.ln_f", embedding="transformer.wte"))
    words = tokens_only.forward(IDS, loss=False).hidden
    np.testing.assert_array_equal(words[1:], gpt2[1:])
    assert not np.allclose(words[0], gpt2[0])  # GPT-2 adds its positions before block 1


@pytest.mark.parametrize("modules, message", [
    (ModuleOverride(blocks="model.blocks", final_norm="model.norm"),
     "model.modules.blocks: the model has no module 'model.blocks'"),
    (ModuleOverride(blocks="model.norm", final_norm="model.norm"),
     "model.modules.blocks: 'model.norm' is a LlamaRMSNorm, not a list of blocks"),
    (ModuleOverride(blocks="model.layers", final_norm="model.final"),
     "model.modules.final_norm: the model has no module 'model.final'"),
])
def test_bad_module_paths_name_the_spec_key(modules, message, family_dirs) -> None:
    with pytest.raises(BackendError) as err:
        _backend(family_dirs["llama"], modules=modules).load()
    assert str(err.value).startswith(f"model tiny: {message}")


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Linear(16, 16)

    def forward(self, x):
        return x + torch.tanh(self.mix(x))


class _Toy(torch.nn.Module):
    """A language model transformers does not know, returning logits only."""

    class Config:
        model_type = "toy"
        num_hidden_layers = 3
        hidden_size = 16

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.config = self.Config()
        self.embed = torch.nn.Embedding(300, 16)
        self.stack = torch.nn.ModuleList(_Block() for _ in range(3))
        self.out_norm = torch.nn.LayerNorm(16, eps=1e-6)
        self.head = torch.nn.Linear(16, 300)

    def forward(self, input_ids, **_: object):
        x = self.embed(input_ids)
        for block in self.stack:
            x = block(x)
        return self.head(self.out_norm(x))


def test_an_unknown_architecture_runs_from_the_spec_alone(family_dirs) -> None:
    toy = _Toy().eval()
    with pytest.raises(BackendError, match="model.modules"):
        _backend(family_dirs["llama"], model=toy).info()
    backend = _backend(family_dirs["llama"], model=toy,
                       modules=ModuleOverride(blocks="stack", final_norm="out_norm"),
                       norm=NormInfo(kind="layer", eps=1e-6))
    states = backend.forward(IDS, loss=False).hidden
    with torch.no_grad():
        x = toy.embed(torch.from_numpy(IDS))
        expected = [x]
        for block in toy.stack:
            x = block(x)
            expected.append(x)
        expected[-1] = toy.out_norm(x)
    np.testing.assert_array_equal(states, torch.stack(expected).numpy())
    assert _hook_count(toy) == 0


@pytest.mark.slow
def test_rwkv_rescaling_does_not_move_pr(tmp_path: Path) -> None:
    """RWKV halves its residual stream after every ``rescale_every`` blocks in
    inference mode; PR is invariant to that scale (architectures module docstring).
    12 blocks rescaled twice against the same weights never rescaled: measured
    differences up to 1e-7 relative, float32 rounding."""
    prs = []
    for every in (6, 0):
        cfg = config("rwkv", 12)
        cfg.rescale_every = every
        folder = save_tiny_model(tmp_path / f"every-{every}", cfg=cfg, seed=0)
        spec = spec_from_dict({"name": "rwkv", "model": {"path": str(folder)},
                               "probe": {**PROBE, "loss": False}})
        prs.append(np.array([row.pr for row in run(spec).layers]))
    np.testing.assert_allclose(prs[0], prs[1], rtol=1e-6)


@pytest.mark.parametrize("arch", ["mamba", "rwkv"])
def test_onnx_export_refuses_the_recurrent_families(arch: str, family_dirs, tmp_path: Path) -> None:
    """Measured: their export succeeds but the graph accepts only the example's
    sequence length (a Python loop over the sequence is unrolled)."""
    from audit.backends.onnx_export import export_onnx

    with pytest.raises(BackendError) as err:
        export_onnx(ModelSpec(path=str(family_dirs[arch])), arch, tmp_path / "m.onnx")
    assert str(err.value).startswith(f"model {arch}: ONNX export does not support the {arch} "
                                     "architecture: without its CUDA kernels")
    assert list(tmp_path.iterdir()) == []
