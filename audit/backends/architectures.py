"""Per-architecture facts the audit needs: the final norm of each model family.

``init_norm`` passes every hidden state but the last through a *fresh* copy of the
model's final norm: unit scale, zero bias, the model's epsilon.  For both RMSNorm
flavours the fresh copy computes ``x / sqrt(mean(x**2) + eps)``: Llama's RMSNorm
multiplies by ``weight`` (fresh: ones), Gemma's by ``1 + weight`` (fresh: zeros).
LayerNorm's fresh copy is ``(x - mean) / sqrt(var + eps)`` (weight ones, bias zeros).

An architecture missing here is an error unless the spec describes its norm with
``model.norm: {kind, eps}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from audit.errors import BackendError

if TYPE_CHECKING:
    from audit.norms import NormInfo
    from audit.spec import NormOverride


@dataclass(frozen=True)
class FinalNorm:
    """How one architecture normalises its last hidden state."""

    kind: str
    """``rms`` (RMSNorm) or ``layer`` (LayerNorm)."""
    eps_key: str
    """The config attribute holding the epsilon (``config.json`` key)."""
    unit_weight: float
    """The weight value that gives unit scale: 1.0, or 0.0 for Gemma's ``1 + weight``."""
    module: str
    """Attribute of the base (headless) model that holds the final norm."""


_LLAMA = FinalNorm("rms", "rms_norm_eps", 1.0, "norm")
_GEMMA = FinalNorm("rms", "rms_norm_eps", 0.0, "norm")

FINAL_NORMS: dict[str, FinalNorm] = {
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
    "gpt2": FinalNorm("layer", "layer_norm_epsilon", 1.0, "ln_f"),
    "gpt_neox": FinalNorm("layer", "layer_norm_eps", 1.0, "final_layer_norm"),
}

_OVERRIDE_HINT = "set `model.norm: {kind: rms | layer, eps: ...}` in the spec"


def final_norm(architecture: str, *, model: str | None = None) -> FinalNorm:
    """The table entry for ``architecture``; :class:`BackendError` naming the spec
    key ``model.norm`` when it is unknown."""
    entry = FINAL_NORMS.get(architecture)
    if entry is None:
        raise BackendError(
            f"unknown architecture {architecture!r}: equilaw does not know its final "
            f"norm; {_OVERRIDE_HINT} (known architectures: {', '.join(sorted(FINAL_NORMS))})",
            model=model)
    return entry


def final_norm_info(architecture: str, eps: float | None, override: NormOverride | None = None,
                    *, model: str | None = None) -> NormInfo:
    """The :class:`~audit.norms.NormInfo` that ``init_norm`` needs.

    ``override`` (the spec's ``model.norm``) wins over the table and over ``eps``;
    otherwise the kind comes from the table and ``eps`` from the model's config or
    GGUF header (None: not found, an error).
    """
    from audit.norms import NormInfo

    if override is not None:
        return NormInfo(kind=override.kind, eps=float(override.eps))
    entry = final_norm(architecture, model=model)
    if eps is None:
        raise BackendError(
            f"architecture {architecture!r}: the model's config has no final-norm epsilon "
            f"({entry.eps_key}); {_OVERRIDE_HINT}", model=model)
    return NormInfo(kind=entry.kind, eps=float(eps))
