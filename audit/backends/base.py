"""What every backend gives the pipeline: a cheap description of the model
(:class:`ModelInfo`) and the :class:`Backend` protocol.

Nothing heavy is imported here: ``import audit.backends`` must stay free of torch,
transformers and onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # NormInfo lives with the normalisations that use it.
    import numpy as np

    from audit.norms import NormInfo


MAX_LAYERS = 1024
"""Most blocks a model may have.  The deepest released language models have 126
(Llama-3.1-405B) and 96 (GPT-3); equilaw keeps a d x d Gram matrix and a report row
per layer, so a config claiming 10**8 layers would allocate and loop until killed.
Eight times the deepest known model leaves room and still fails at once."""
MAX_WIDTH = 65536
"""Widest hidden state accepted: four times Llama-3.1-405B's 16384.  One float64
Gram matrix of this width is 32 GiB; a hostile width must fail before any is made."""


def dimension_problem(value: Any, key: str, limit: int) -> str | None:
    """Why ``value``, read from a model's description as ``key``, is not a layer
    count or width in 1..``limit`` (None when it is), quoting at most 40 characters."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        return f"{key} must be an integer in 1..{limit}, got {value!r:.40}"
    return None


@dataclass(frozen=True)
class ModelInfo:
    """A model as the audit needs to know it, read without loading weights."""

    architecture: str
    """The architecture name as its source spells it: ``config.json``'s
    ``model_type`` (``llama``, ``gemma3_text``, ``gpt2``) or a GGUF file's
    ``general.architecture`` (``llama``, ``gemma3``, ``gpt2``)."""
    num_layers: int
    """L, the number of blocks: :attr:`Forward.hidden` has L + 1 entries (0 = embeddings)."""
    width: int
    """d, the width of every hidden state."""
    norm: NormInfo
    """The final norm (kind and epsilon) that ``init_norm`` copies fresh."""
    path: str
    """The resolved weights location: a folder or a .gguf file, or ``<in-memory>``
    for a model handed over already loaded."""


@dataclass(frozen=True)
class ModelFiles:
    """The files whose bytes identify a model (what the statistics cache's key
    hashes), listed without reading them."""

    weights: tuple[Path, ...]
    """The files :meth:`Backend.weights_sha256` hashes, in its order: a GGUF file,
    a folder's ``*.safetensors``, an ONNX file and its external data."""
    config: tuple[Path, ...]
    """The model folder's and the tokenizer's other files (``config.json``,
    tokenizer files, remote code; never weights or pickles), sorted."""


@dataclass(frozen=True)
class Forward:
    """What one forward pass over a batch of windows gives the pipeline."""

    hidden: np.ndarray
    """float32 [L + 1, b, t, d]: index 0 the embedding output, L the last block's
    output after the final norm.  A fresh, writable array that the caller owns:
    the pipeline normalises it in place."""
    token_nll: np.ndarray | None
    """float64 [b, t - 1]: -log p(token j+1 | tokens ..j) under the model's own
    language-model head, in nats; None when not asked for or without a head."""
    loss_seconds: float
    """Time spent in the head and the cross-entropy (0 when not computed)."""
    logits: np.ndarray | None = None
    """float32 [b, t - 1, V]: the head's logits at the positions ``token_nll``
    scores (what :meth:`Backend.next_token_logits` gives for the same ids), from
    this same pass; None when not asked for or without a head."""
    first_layer: int = 0
    """The layer ``hidden[0]`` is: 0, or the block a resumed pass started from
    (:meth:`audit.backends.torch_backend.TorchBackend.forward_from`)."""


@runtime_checkable
class Backend(Protocol):
    """Per-layer hidden states of one model.

    ``backend_name`` (a class attribute) is the name the registry and reports use.
    ``info``, ``encode``, ``encode_document``, ``bos_token_id``, ``tokenizer_info``,
    ``model_files``, ``weights_sha256`` and ``versions`` never load weights;
    ``forward`` loads them on its first call, once.
    """

    backend_name: str

    def info(self) -> ModelInfo:
        """Architecture, L, d and final norm, from the config or GGUF metadata."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens (no BOS, no EOS)."""
        ...

    def encode_document(self, text: str, max_length: int) -> list[int]:
        """Token ids of ``text`` with the tokenizer's default special tokens,
        truncated to ``max_length`` (``tokenizer(text, truncation=True,
        max_length=max_length)["input_ids"]``, as the authors' reference code)."""
        ...

    @property
    def bos_token_id(self) -> int | None:
        """The tokenizer's BOS id, or None when it defines none."""
        ...

    def load(self) -> Any:
        """Load the weights once (later calls do nothing more); ``forward``
        calls it too, so calling it first only separates load time from run time."""
        ...

    def forward(self, input_ids: np.ndarray, *, loss: bool, logits: bool = False) -> Forward:
        """Hidden states of ``input_ids`` and, when the model has a language-model
        head, with ``loss`` the next-token cross-entropy per position and with
        ``logits`` the head's logits there (:attr:`Forward.logits`): the head runs
        once for both, so comparing two models' outputs needs no second pass."""
        ...

    def next_token_logits(self, input_ids: np.ndarray) -> np.ndarray:
        """``input_ids`` int64 [b, t] -> float32 [b, t - 1, V]: the language-model
        head's logits (soft-capped where the model caps them) at the positions the
        probe loss scores, position j predicting token j + 1, for comparing two
        models' output distributions (:mod:`audit.compare.outputs`).  A fresh array
        the caller owns; :class:`~audit.errors.BackendError` without a head."""
        ...

    @property
    def head_note(self) -> str | None:
        """After loading: why the model has no language-model head, or None."""
        ...

    def tokenizer_info(self) -> dict[str, Any]:
        """What identifies the tokenizer (source, class, vocabulary size and sha256,
        BOS id), for the report's probe record."""
        ...

    def model_files(self) -> ModelFiles | None:
        """The files that identify the model, or None for a model without files
        (handed over in memory): such a model is never cached."""
        ...

    def weights_sha256(self) -> str:
        """Hex sha256 of the weights the hidden states come from."""
        ...

    def versions(self) -> dict[str, str]:
        """Versions of the libraries that compute the numbers (name -> version)."""
        ...
