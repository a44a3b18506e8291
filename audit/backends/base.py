"""What every backend gives the pipeline: a cheap description of the model
(:class:`ModelInfo`) and the :class:`Backend` protocol.

Nothing heavy is imported here: ``import audit.backends`` must stay free of torch,
transformers and onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # NormInfo lives with the normalisations that use it.
    import numpy as np

    from audit.norms import NormInfo


@dataclass(frozen=True)
class ModelInfo:
    """A model as the audit needs to know it, read without loading weights."""

    architecture: str
    """The architecture name as its source spells it: ``config.json``'s
    ``model_type`` (``llama``, ``gemma3_text``, ``gpt2``) or a GGUF file's
    ``general.architecture`` (``llama``, ``gemma3``, ``gpt2``)."""
    num_layers: int
    """L, the number of blocks: ``hidden_states`` has L + 1 entries (0 = embeddings)."""
    width: int
    """d, the width of every hidden state."""
    norm: NormInfo
    """The final norm (kind and epsilon) that ``init_norm`` copies fresh."""
    path: str
    """The resolved weights location: a folder or a .gguf file, or ``<in-memory>``
    for a model handed over already loaded."""


@runtime_checkable
class Backend(Protocol):
    """Per-layer hidden states of one model.

    ``info``, ``encode``, ``bos_token_id``, ``weights_sha256`` and ``versions``
    never load weights; ``hidden_states`` loads them on its first call, once.
    """

    def info(self) -> ModelInfo:
        """Architecture, L, d and final norm, from the config or GGUF metadata."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens (no BOS, no EOS)."""
        ...

    @property
    def bos_token_id(self) -> int | None:
        """The tokenizer's BOS id, or None when it defines none."""
        ...

    def load(self) -> Any:
        """Load the weights once (later calls do nothing more); ``hidden_states``
        calls it too, so calling it first only separates load time from run time."""
        ...

    def hidden_states(self, input_ids: np.ndarray) -> np.ndarray:
        """``input_ids`` int64 [b, t] -> float32 [L + 1, b, t, d]; index 0 is the
        embedding output, L the last block's output after the final norm."""
        ...

    def weights_sha256(self) -> str:
        """Hex sha256 of the weights the hidden states come from."""
        ...

    def versions(self) -> dict[str, str]:
        """Versions of the libraries that compute the numbers (name -> version)."""
        ...
