"""Tiny transformers language models, built in-process from configs and saved offline.

Nothing is downloaded: a model comes from a config with a fixed torch seed, and its
tokenizer is a byte-level BPE with no merges (every byte is a token, so any text,
including the built-in docstring corpus, tokenizes into about one token per byte).
torch and transformers are imported inside the functions, so importing this module
is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
"""Ids 0, 1, 2; the 256 byte tokens follow (ids 3..258)."""
BOS_ID = 1
BYTE_VOCAB = len(SPECIAL_TOKENS) + 256
VOCAB_SIZE = 264
"""The models' embedding rows: the tokenizer's 259 ids, rounded up."""
TINY_LAYERS = 4
TINY_WIDTH = 32
"""The shape of the session's shared tiny model (tests/conftest.py)."""


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text",
            "gpt2", "gpt_neox", "phi", "mamba", "rwkv")
"""Every ``config.model_type`` that :func:`config` builds: one per family equilaw
supports (:data:`audit.backends.architectures.ARCHITECTURES`)."""


def config(arch: str = "llama", layers: int = 4, hidden: int = 32, eps: float = 1e-5,
           vocab_size: int = VOCAB_SIZE) -> Any:
    """A transformers config for ``arch`` (one of :data:`FAMILIES`) with ``layers``
    blocks of width ``hidden`` (two attention heads where there is attention; a
    state size of 8 for Mamba, a feed-forward of 2 × ``hidden`` elsewhere)."""
    import transformers as tf

    ids = dict(vocab_size=vocab_size, bos_token_id=BOS_ID, eos_token_id=2)
    if arch == "gpt2":
        return tf.GPT2Config(n_layer=layers, n_embd=hidden, n_head=2, n_positions=256,
                             layer_norm_epsilon=eps, **ids)
    if arch == "mamba":
        return tf.MambaConfig(hidden_size=hidden, num_hidden_layers=layers, state_size=8,
                              expand=2, conv_kernel=4, layer_norm_epsilon=eps,
                              pad_token_id=0, **ids)
    if arch == "rwkv":
        return tf.RwkvConfig(hidden_size=hidden, num_hidden_layers=layers,
                             attention_hidden_size=hidden, intermediate_size=2 * hidden,
                             context_length=256, layer_norm_epsilon=eps, **ids)
    shape = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                 num_attention_heads=2, max_position_embeddings=256, pad_token_id=0, **ids)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(**shape, layer_norm_eps=eps)
    if arch == "phi":
        return tf.PhiConfig(**shape, num_key_value_heads=2, layer_norm_eps=eps)
    common = dict(shape, num_key_value_heads=1, rms_norm_eps=eps)
    simple = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
              "phi3": tf.Phi3Config}
    if arch in simple:
        return simple[arch](**common)
    half = dict(common, head_dim=hidden // 2)
    if arch == "qwen3":
        return tf.Qwen3Config(**half)
    if arch == "gemma":
        return tf.GemmaConfig(**half)
    if arch == "gemma2":
        return tf.Gemma2Config(**half, sliding_window=8)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(**half, sliding_window=8)
    raise ValueError(f"no tiny config for {arch!r}: use one of {', '.join(FAMILIES)}")


def causal_lm(cfg: Any, seed: int = 0) -> Any:
    """A random-weight model with its LM head for ``cfg``, in eval mode; the same
    ``seed`` gives the same weights."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


def byte_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast``: byte-level BPE with the 256 byte tokens and no
    merges, BOS ``<s>`` (id 1) added only when special tokens are asked for."""
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for bytes
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", BOS_ID)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                      pad_token="<pad>")


def save_tiny_model(folder: str | Path, arch: str = "llama", layers: int = TINY_LAYERS,
                    hidden: int = TINY_WIDTH, seed: int = 0, *, eps: float = 1e-5,
                    cfg: Any = None, tokenizer: Any = None) -> Path:
    """Write config.json, model.safetensors (with the LM head) and a byte-level
    tokenizer into ``folder``; returns the folder.  ``cfg`` (a transformers config)
    replaces ``arch``, ``layers``, ``hidden`` and ``eps``; ``tokenizer`` (any
    transformers tokenizer) replaces the byte-level one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_config = cfg if cfg is not None else config(arch, layers, hidden, eps)
    causal_lm(model_config, seed).save_pretrained(folder)
    (tokenizer if tokenizer is not None else byte_tokenizer()).save_pretrained(folder)
    return folder
