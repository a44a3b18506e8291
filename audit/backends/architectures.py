"""Per-architecture facts the audit needs: which modules are layer 0, the blocks and
the final norm, and how the final norm normalises.

**Which tensor is layer l** (equilaw's indexing, the same for every family):

- layer 0 is the first block's input: the embedding module's output (plus the learnt
  position embeddings where the model adds them, GPT-2), before anything the first
  block applies to it (such as RWKV's first-block ``pre_ln``);
- layer l, 1 <= l < L, is block l's output (the residual stream after it);
- layer L is block L's output after the model's final norm.

The backends capture these with hooks on the modules named here
(:mod:`audit.backends.capture`), not from transformers' ``output_hidden_states``,
because that tuple does not follow one convention: for the Transformers below it is
exactly the list above, but ``MambaModel`` and ``RwkvModel`` return the L block
outputs and then the final norm's output, so their ``hidden_states[0]`` is block 1's
output and the embedding output is missing (checked with transformers 5.23 in
``tests/test_architectures.py``; :attr:`Architecture.transformers_layout` records
which convention a family's tuple follows).

``init_norm`` passes every hidden state but the last through a *fresh* copy of the
model's final norm: unit scale, zero bias, the model's epsilon.  For both RMSNorm
flavours the fresh copy computes ``x / sqrt(mean(x**2) + eps)``: Llama's RMSNorm
multiplies by ``weight`` (fresh: ones), Gemma's by ``1 + weight`` (fresh: zeros).
LayerNorm's fresh copy is ``(x - mean) / sqrt(var + eps)`` (weight ones, bias zeros).

RWKV in inference mode divides the residual stream by 2 after every
``config.rescale_every`` blocks (and its output projections by the matching power of
two), to keep float16 in range.  That does not move PR: every layer but the last
passes the fresh LayerNorm, which is invariant to the scale of its input up to its
epsilon, the last layer passes the model's own LayerNorm (likewise), and least
squares with an intercept is invariant to any rescaling of the features anyway.
``tests/test_architectures.py`` measures PR with and without the rescaling on a
12-block RWKV (two rescalings) and finds them equal.

An architecture missing here is an error unless the spec describes it: its modules
with ``model.modules`` and its final norm with ``model.norm``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from audit.errors import BackendError

if TYPE_CHECKING:
    from audit.norms import NormInfo


@dataclass(frozen=True)
class Architecture:
    """Where one model family keeps its blocks and final norm, and how that norm
    normalises."""

    kind: str
    """The final norm: ``rms`` (RMSNorm) or ``layer`` (LayerNorm)."""
    eps_key: str
    """The config attribute holding the final norm's epsilon (``config.json`` key);
    empty when the final norm ignores the config (see ``fixed_eps``)."""
    unit_weight: float
    """The weight value that gives unit scale: 1.0, or 0.0 for Gemma's ``1 + weight``."""
    module: str
    """The final norm: a dotted path from the base (headless) model."""
    blocks: str
    """The ``ModuleList`` of blocks: a dotted path from the base model."""
    transformers_layout: str = "embedding_first"
    """What transformers' ``output_hidden_states`` returns for this family:
    ``embedding_first`` (the embedding output, blocks 1..L-1, the final norm's output:
    equilaw's layers exactly) or ``block_outputs`` (blocks 1..L, then the final norm's
    output; no embedding output)."""
    attention_mask: bool = True
    """Whether the base model's forward uses ``attention_mask`` (RWKV's ignores it and
    warns)."""
    fixed_eps: float | None = None
    """The final norm's epsilon when it is not read from the config: RWKV builds
    ``ln_out`` as ``nn.LayerNorm(hidden_size)``, torch's default 1e-5, whatever
    ``layer_norm_epsilon`` says (that value goes to the blocks' norms)."""

    no_onnx: str | None = None
    """Why ``export-onnx`` refuses this family (None: it exports)."""

    def epsilon(self, lookup: Callable[[str], Any]) -> float | None:
        """The final norm's epsilon: ``fixed_eps``, or ``lookup(eps_key)`` (None when
        the config does not hold it)."""
        return self.fixed_eps if self.fixed_eps is not None else lookup(self.eps_key)


def _rms(blocks: str = "layers", eps_key: str = "rms_norm_eps", module: str = "norm",
         **more: object) -> Architecture:
    return Architecture("rms", eps_key, 1.0, module, blocks, **more)  # type: ignore[arg-type]


_SEQUENTIAL = ("without its CUDA kernels transformers runs this recurrence as a Python loop "
               "over the sequence, so torch.export fixes the sequence length and the graph "
               "would accept only its example's length (measured with transformers 5.23: "
               "onnxruntime refuses any other length)")
_LLAMA = _rms()
_GEMMA = Architecture("rms", "rms_norm_eps", 0.0, "norm", "layers")

ARCHITECTURES: dict[str, Architecture] = {
    # transformers model_type names, and GGUF general.architecture names
    "llama": _LLAMA,  # SmolLM2 is a Llama
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "phi3": _LLAMA,
    "gemma": _GEMMA,
    "gemma2": _GEMMA,
    "gemma3": _GEMMA,  # GGUF name of the text model
    "gemma3_text": _GEMMA,
    "gpt2": Architecture("layer", "layer_norm_epsilon", 1.0, "ln_f", "h"),
    "gpt_neox": Architecture("layer", "layer_norm_eps", 1.0, "final_layer_norm", "layers"),
    "phi": Architecture("layer", "layer_norm_eps", 1.0, "final_layernorm", "layers"),  # Phi-1.5/2
    "mamba": _rms(eps_key="layer_norm_epsilon", module="norm_f",
                  transformers_layout="block_outputs", no_onnx=_SEQUENTIAL),
    "rwkv": Architecture("layer", "", 1.0, "ln_out", "blocks", transformers_layout="block_outputs",
                         attention_mask=False, fixed_eps=1e-5, no_onnx=_SEQUENTIAL),
}
"""``config.model_type`` (or GGUF ``general.architecture``) -> :class:`Architecture`."""

_OVERRIDE_HINT = ("describe it in the spec: `model.modules: {blocks: ..., final_norm: ...}` "
                  "and `model.norm: {kind: rms | layer, eps: ...}`")
_NORM_HINT = "set `model.norm: {kind: rms | layer, eps: ...}` in the spec"


def architecture(name: str, *, model: str | None = None) -> Architecture:
    """The table entry for ``name``; :class:`BackendError` naming the spec keys
    ``model.modules`` and ``model.norm`` when it is unknown."""
    entry = ARCHITECTURES.get(name)
    if entry is None:
        raise BackendError(
            f"unknown architecture {name!r}: equilaw does not know its blocks and final "
            f"norm; {_OVERRIDE_HINT} (known architectures: {', '.join(sorted(ARCHITECTURES))})",
            model=model)
    return entry


def final_norm_info(name: str, eps: float | None, override: NormInfo | None = None,
                    *, model: str | None = None) -> NormInfo:
    """The :class:`~audit.norms.NormInfo` that ``init_norm`` needs.

    ``override`` (the spec's ``model.norm``) wins over the table and over ``eps``;
    otherwise the kind comes from the table and ``eps`` from the model's config or
    GGUF header (None: not found, an error).
    """
    from audit.norms import NormInfo

    if override is not None:
        return NormInfo(kind=override.kind, eps=float(override.eps))
    entry = architecture(name, model=model)
    if eps is None:
        raise BackendError(
            f"architecture {name!r}: the model's config has no final-norm epsilon "
            f"({entry.eps_key}); {_NORM_HINT}", model=model)
    return NormInfo(kind=entry.kind, eps=float(eps))
