"""The PyTorch backend: transformers models from a safetensors folder or a GGUF file.

The checkpoint's files (config, tokenizer, no-pickle policy, hashes) are
:class:`~audit.backends.hf_files.HuggingFaceFiles`, shared with other backends;
this module runs the model:

- weights load with ``use_safetensors=True`` or from GGUF, ``local_files_only``;
- the model is loaded with its language-model head (``AutoModelForCausalLM``);
  the base model gives the hidden states and the head runs only when the probe
  loss is asked for, window by window, so that no batch's logits outlive it
  (Gemma-3's 262k-word head costs more than its 18 blocks).  A checkpoint whose
  head weights are absent runs without one and says so (``head_note``);
- everything runs under ``torch.inference_mode()``;
- ``model.adapter`` (a PEFT folder) is applied to the loaded base through peft,
  unmerged (:mod:`audit.backends.peft_adapter`); :class:`MergedAdapterBackend`
  runs the same adapter merged into the base (``merge_and_unload()``).

torch and transformers are imported lazily, inside methods: importing this module
costs nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from audit.backends.architectures import ARCHITECTURES
from audit.backends.base import Forward
from audit.backends.capture import Capture, LayerModules, layer_modules
from audit.backends.hf_files import (
    HuggingFaceFiles,
    import_transformers,
    quiet_loading,
    text_config,
)
from audit.errors import BackendError
from audit.internal.files import sha256_files

if TYPE_CHECKING:
    import numpy as np

    from audit.backends.base import ModelFiles
    from audit.cache.settings import CacheSettings
    from audit.spec import ModelSpec

_HEAD_PREFIXES = ("lm_head.", "embed_out.", "output.")
_DTYPES = ("float32", "bfloat16", "float16")


def _headless(model: Any) -> Any:
    """The base model of a model with an LM head (``base_model``: ``.model`` for
    Llama and Gemma-3, ``.transformer`` for GPT-2); the model itself otherwise."""
    base = getattr(model, "base_model", None)
    if base is not None and base is not model and hasattr(base, "forward"):
        return base
    return model


def _save_dequantised(model: Any, folder: Any) -> None:
    """Write a model loaded from GGUF as ``config.json`` and ``model.safetensors``
    (transformers' ``save_pretrained`` refuses GGUF-loaded models).  The config
    drops the GGUF quantisation record: the tensors are already dequantised.

    Tensors that share memory (tied embeddings) are written once, under the
    body's name rather than the head's (``model.embed_tokens.weight``, not
    ``lm_head.weight``): loading re-ties the head to the embedding as the config
    says, whereas a file holding only the head's name leaves the embedding
    "missing", and transformers then fills it with random numbers before tying
    it (1.1 s for Gemma-3's 262,144 × 640 table, for nothing)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    Path(folder, "config.json").write_text(json.dumps(config, indent=1, sort_keys=True),
                                           encoding="utf-8")
    state = model.state_dict()
    shared: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        shared.setdefault(key, []).append(name)
    keep = {}
    for names in shared.values():
        name = min(names, key=lambda n: (n.startswith(_HEAD_PREFIXES), n))
        keep[name] = state[name].contiguous()
    save_file(keep, str(Path(folder, "model.safetensors")), metadata={"format": "pt"})


_PER_BLOCK_CONFIG = ("layer_types", "no_rope_layers")
"""Config lists with one entry per block, which a model may index by position."""


@contextlib.contextmanager
def _blocks_from(base: Any, blocks: tuple[Any, ...], position: int) -> Iterator[None]:
    """While the block holds, ``base``'s list of ``blocks`` holds only
    ``blocks[position:]`` and its config's depth and per-block lists match; both are
    put back after, also when the pass fails."""
    import torch

    holder = next((name for name, module in base.named_modules()
                   if isinstance(module, torch.nn.ModuleList) and len(module) == len(blocks)
                   and all(a is b for a, b in zip(module, blocks))), None)
    if holder is None:
        raise BackendError("cannot resume: the blocks are not one list of the base model")
    parent_name, _, attribute = holder.rpartition(".")
    parent = base.get_submodule(parent_name)
    original = getattr(parent, attribute)
    config = text_config(base.config)
    saved = {key: getattr(config, key) for key in ("num_hidden_layers", *_PER_BLOCK_CONFIG)
             if isinstance(getattr(config, key, None), (int, list))}
    try:
        setattr(parent, attribute, torch.nn.ModuleList(blocks[position:]))
        for key, value in saved.items():
            if key == "num_hidden_layers":
                setattr(config, key, len(blocks) - position)
            elif len(value) == len(blocks):
                setattr(config, key, value[position:])
        yield
    finally:
        setattr(parent, attribute, original)
        for key, value in saved.items():
            setattr(config, key, value)


class TorchBackend(HuggingFaceFiles):
    """Hidden states of a transformers model (see the module docstring).

    ``model_spec.path`` locates the weights and the tokenizer; ``name`` (the spec
    name) labels errors; ``model``, an already loaded torch model with or without
    its LM head, replaces the weights (it is put in eval mode and run on its own
    device and dtype; the tokenizer still comes from ``model_spec.path``).
    """

    backend_name = "torch"
    merge_adapter = False
    """Fold ``model.adapter`` into the base weights (:class:`MergedAdapterBackend`)
    instead of running it unmerged."""

    def __init__(self, model_spec: ModelSpec, name: str, model: Any = None,
                 cache: CacheSettings | None = None) -> None:
        if model_spec.dtype not in _DTYPES:
            raise BackendError(f"dtype {model_spec.dtype!r} is not one of {', '.join(_DTYPES)}",
                               model=name)
        super().__init__(model_spec, name, model, cache)
        self._model: Any = None
        self._full: Any = None
        self._head: Any = None
        self._softcap: float | None = None
        self.head_note: str | None = None
        """Why the model has no language-model head (None when it has one)."""
        self._device: Any = None
        self.load_seconds: float | None = None
        """Seconds the weights took to load (None until loaded, or when given)."""
        self._layers: LayerModules | None = None
        self._mask = True
        self.reuse_logits = False
        """Whether every batch's logits (:attr:`Forward.logits`) are written into one
        array kept from batch to batch instead of a new one, so that each is valid only
        until the next pass: for a caller that is done with a batch's logits before it
        asks for the next (mutation testing), it spares a fresh array's page faults
        (SmolLM2: 200 MB a batch).  :meth:`reusing_logits` turns it on for a block."""
        self._logits_buffer: Any = None
        self.peft_model: Any = None
        """After :meth:`load` with ``model.adapter`` unmerged: the ``PeftModel``."""
        if model_spec.adapter is not None:
            self.versioned = (*type(self).versioned, "peft")

    def _resolve_device(self, torch: Any) -> Any:
        want = self.spec.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {want!r} requested but torch sees no CUDA device "
                               "(use device: cpu or auto)", model=self.name)
        try:
            return torch.device(want)
        except RuntimeError as exc:
            raise BackendError(f"bad device {want!r}: {exc}", model=self.name) from exc

    def load(self) -> Any:
        """Load the weights (once) and return the headless model; later calls return
        the same model."""
        if self._model is not None:
            return self._model
        tf = import_transformers()
        import torch

        if self._given is not None:
            model = _headless(self._given).eval()
            param = next(model.parameters(), None)
            self._device = param.device if param is not None else torch.device("cpu")
            self._model = model
            self._full = self._given
            self._find_layers()
            self._set_head(self._given if self._given is not model else None,
                           "the model handed over has no language-model head")
            return model
        device = self._resolve_device(torch)
        kw: dict[str, Any] = {"local_files_only": True, "dtype": getattr(torch, self.spec.dtype),
                              "output_loading_info": True, **self._remote_code()}
        if self.spec.device_map is not None:
            kw["device_map"] = self.spec.device_map  # spread over devices: no .to() below
        start = time.perf_counter()
        try:
            with quiet_loading(tf):
                model, loading = self._from_pretrained(tf, kw)
        except BackendError:
            raise
        except (OSError, ValueError, KeyError, ImportError, RuntimeError) as exc:
            raise BackendError(f"transformers cannot load {str(self.path)!r}: "
                               f"{type(exc).__name__}: {exc}", model=self.name) from exc
        missing = sorted(set(loading.get("missing_keys", ()))
                         | {k[0] for k in loading.get("mismatched_keys", ())})
        head = model
        if missing and all(key.startswith(_HEAD_PREFIXES) for key in missing):
            head = None  # a headless checkpoint: hidden states only, no probe loss
            missing = []
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise BackendError(f"{len(missing)} weights were not found in {str(self.path)!r} "
                               f"and would be random: {', '.join(missing[:5])}{more}",
                               model=self.name)
        if self.spec.adapter is not None and self._given is None:
            model, head = self._adapt(model, head)
        full = (model if self.spec.device_map is not None else model.to(device)).eval()
        model = _headless(full)
        embedding = model.get_input_embeddings()
        if self.spec.device_map is not None and embedding is not None:
            device = embedding.weight.device  # the input goes where the embedding is
        if embedding is not None and getattr(embedding, "weight", None) is not None:
            self.check_embedding_rows(int(embedding.weight.shape[0]), repr(str(self.path)))
        self.load_seconds = time.perf_counter() - start
        self._device = device
        self._model = model
        self._full = full
        self._find_layers()
        self._set_head(head if head is not model else None,
                       f"{str(self.path)!r} holds no language-model head weights")
        return model

    def _adapt(self, model: Any, head: Any) -> tuple[Any, Any]:
        """The loaded base with ``model.adapter`` applied (unmerged, or merged for
        :class:`MergedAdapterBackend`), and its head (None when the base had none)."""
        from audit.backends import peft_adapter

        wrapped = peft_adapter.apply_adapter(model, self.spec.adapter, name=self.name)
        if self.merge_adapter:
            adapted = peft_adapter.merged_model(wrapped)
        else:
            adapted = peft_adapter.inner_model(wrapped)
            self.peft_model = wrapped
        return adapted, (adapted if head is not None else None)

    def _find_layers(self) -> None:
        """Find the modules whose tensors are the layers (the architecture table or
        ``model.modules``), and whether the base model takes an attention mask."""
        import inspect

        info = self.info()
        override = self.spec.modules
        if override is not None and self.spec.adapter is not None:
            # paths from the PeftModel or from the model it wraps: the same modules
            from dataclasses import replace

            from audit.backends.peft_adapter import strip_wrapped_prefix

            override = replace(override, blocks=strip_wrapped_prefix(override.blocks),
                               final_norm=strip_wrapped_prefix(override.final_norm),
                               embedding=(strip_wrapped_prefix(override.embedding)
                                          if override.embedding else None))
        self._layers = layer_modules(self._full, self._model, info.architecture,
                                     info.num_layers, override, name=self.name)
        entry = ARCHITECTURES.get(info.architecture)
        if entry is not None and self.spec.modules is None:
            self._mask = entry.attention_mask
        else:
            self._mask = "attention_mask" in inspect.signature(self._model.forward).parameters

    def layer_states(self, input_ids: Any, sink: Any = None) -> list[Any]:
        """After :meth:`load`: equilaw's layers 0..L of the torch tensor ``input_ids``
        [b, t], as torch tensors [b, t, d] in the model's dtype (the caller chooses the
        grad mode).  Captured with hooks (:mod:`audit.backends.capture`), removed
        before this returns.  ``sink(layer, tensor)`` receives each layer as it is
        produced, and only the last is returned (the others are None): see
        :class:`~audit.backends.capture.Capture`."""
        import torch

        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
        if self._mask:
            kwargs["attention_mask"] = torch.ones_like(input_ids)
        with Capture(self._layers, name=self.name, sink=sink) as capture:
            self._model(**kwargs)
        return capture.states()

    @property
    def causal_lm(self) -> Any:
        """After :meth:`load`: the whole model as loaded (with its language-model
        head when the checkpoint has one), for tools that change it in memory."""
        return self._full

    def with_model(self, model: Any) -> TorchBackend:
        """A backend for ``model`` (an in-memory transformers model, e.g. a damaged
        copy of :attr:`causal_lm`) that reuses this one's files: same spec, name and
        already loaded tokenizer, so a series of models is measured without loading
        the tokenizer again.  The depth is read from ``model``'s own config."""
        other = TorchBackend(self.spec, self.name, model)
        other._path, other._tokenizer = self._path, self._tokenizer
        return other

    @property
    def head(self) -> Any:
        """After :meth:`load`: the output projection (the language-model head), or
        None when the checkpoint has none (``head_note`` says why)."""
        return self._head

    @property
    def logit_softcap(self) -> float | None:
        """After :meth:`load`: Gemma's final logit soft-capping c (logits become
        c·tanh(logits / c)), or None."""
        return self._softcap

    def _set_head(self, full: Any, missing_note: str) -> None:
        """Keep the output projection (and Gemma's logit soft-capping) of ``full``,
        a model with its head, or note why there is none."""
        get = getattr(full, "get_output_embeddings", None)
        head = get() if callable(get) else None
        if head is None:
            self.head_note = missing_note
            return
        self._head = head
        cap = getattr(text_config(full.config), "final_logit_softcapping", None)
        self._softcap = float(cap) if cap else None

    def model_files(self) -> ModelFiles | None:
        """The base's files (:meth:`HuggingFaceFiles.model_files`) and, with
        ``model.adapter``, the adapter's weights and config."""
        files = super().model_files()
        if files is None or self.spec.adapter is None:
            return files
        from audit.backends.base import ModelFiles
        from audit.backends.peft_adapter import adapter_files

        config, weights = adapter_files(self.spec.adapter, name=self.name)
        return ModelFiles(files.weights + (weights,), files.config + (config,))

    def weights_sha256(self) -> str:
        """sha256 of the weights (:meth:`HuggingFaceFiles.weights_sha256`); with
        ``model.adapter``, of the base's weight files then the adapter's
        ``adapter_model.safetensors``, concatenated."""
        if self.spec.adapter is None or self._given is not None:
            return super().weights_sha256()
        if self._sha256 is None:
            from audit.backends.peft_adapter import adapter_files

            _, weights = adapter_files(self.spec.adapter, name=self.name)
            self._sha256 = sha256_files([*self._weight_files(), weights])
        return self._sha256

    def _from_pretrained(self, tf: Any, kw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if self._is_gguf():
            if importlib.util.find_spec("gguf") is None:
                raise BackendError("reading a GGUF file needs the gguf package: "
                                   "pip install gguf==0.19.0", model=self.name)
            entry = self._converted(self.spec.dtype)
            folder = entry.path("model") if entry is not None else None
            if folder is not None:  # dequantised before: read the safetensors
                try:
                    return self._auto_class(tf).from_pretrained(str(folder),
                                                                use_safetensors=True, **kw)
                except Exception as exc:  # noqa: BLE001 - safetensors, transformers: many kinds
                    entry.discard("model", f"{type(exc).__name__}: {exc}")   # rebuilt below
            model, loading = self._auto_class(tf).from_pretrained(
                str(self.path.parent), gguf_file=self.path.name, **kw)
            if entry is not None:
                entry.store("model", lambda folder: _save_dequantised(model, folder))
            return model, loading
        self._safetensors_files(self.path)
        return self._auto_class(tf).from_pretrained(str(self.path), use_safetensors=True, **kw)

    def _auto_class(self, tf: Any) -> Any:
        """``AutoModelForCausalLM`` when it knows the architecture, else ``AutoModel``
        (then there is no head and no probe loss)."""
        arch = self.info().architecture
        mapping = tf.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        if arch in mapping or (arch == "gemma3" and "gemma3_text" in mapping):
            return tf.AutoModelForCausalLM
        return tf.AutoModel

    def forward(self, input_ids: np.ndarray, *, loss: bool, logits: bool = False) -> Forward:
        """Hidden states of ``input_ids`` int64 [b, t] and, with a head, each
        position's next-token cross-entropy (``loss``) and the head's logits
        (``logits``), from one run of the head (see :class:`Forward`)."""
        import numpy as np

        ids = self._checked_ids(input_ids)
        info = self.info()
        self.load()
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self._device)
        hidden = np.empty((len(self._layers.blocks) + 1, *ids.shape, info.width),
                          dtype=np.float32)
        with torch.inference_mode():
            last = self.layer_states(tensor, sink=self._copier(hidden, ids))[-1]
            if not (loss or logits) or self._head is None:
                return Forward(hidden, None, 0.0)
            start = time.perf_counter()
            nll, out = self._head_outputs(last, tensor, loss=loss, logits=logits)
            return Forward(hidden, nll, time.perf_counter() - start, out)

    def forward_from(self, position: int, state: np.ndarray, input_ids: np.ndarray, *,
                     loss: bool, logits: bool = False) -> Forward:
        """:meth:`forward` from block ``position`` on: ``state`` float32 [b, t, d] is
        layer ``position`` (that block's input) of ``input_ids`` as an earlier pass
        gave it, and ``hidden`` holds layers ``position``..L (its index 0 ``state``
        itself).  The blocks before ``position`` do not run: the base model runs its
        blocks ``position``.. on ``state`` as its input embeddings, with the config's
        depth and per-block lists cut to match for the pass (restored after it).
        Equal to the full pass's layers and logits only where the base model adds
        nothing to its input embeddings before the first block (GPT-2 adds position
        embeddings); :mod:`audit.resume` checks that bit for bit before it relies on
        it."""
        import numpy as np
        import torch

        ids = self._checked_ids(input_ids)
        info = self.info()
        self.load()
        blocks = self._layers.blocks
        if not 0 < position < len(blocks):
            raise BackendError(f"cannot resume at block {position}: the model has blocks "
                               f"0..{len(blocks) - 1} and block 0 starts from the embedding",
                               model=self.name)
        if tuple(state.shape) != (*ids.shape, info.width):
            raise BackendError(f"the state to resume from has shape {tuple(state.shape)}, "
                               f"expected {(*ids.shape, info.width)}", model=self.name)
        dtype = next(self._model.parameters()).dtype
        tensor = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self._device)
        embeds = torch.from_numpy(np.ascontiguousarray(state)).to(self._device, dtype=dtype)
        kwargs: dict[str, Any] = {"inputs_embeds": embeds, "use_cache": False}
        if self._mask:
            kwargs["attention_mask"] = torch.ones_like(tensor)
        modules = LayerModules(blocks[position:], self._layers.final_norm, None,
                               self._layers.where)
        hidden = np.empty((len(blocks) + 1 - position, *ids.shape, info.width), np.float32)
        with torch.inference_mode(), _blocks_from(self._model, blocks, position):
            with Capture(modules, name=self.name, sink=self._copier(hidden, ids)) as capture:
                self._model(**kwargs)
            last = capture.states()[-1]
            if not (loss or logits) or self._head is None:
                return Forward(hidden, None, 0.0, first_layer=position)
            start = time.perf_counter()
            nll, out = self._head_outputs(last, tensor, loss=loss, logits=logits)
            return Forward(hidden, nll, time.perf_counter() - start, out, position)

    def next_token_logits(self, input_ids: np.ndarray) -> np.ndarray:
        """float32 [b, t-1, V]: the head's logits at the probe loss's positions (see
        :class:`~audit.backends.base.Backend`); only the last hidden state is kept."""
        import numpy as np

        ids = self._checked_ids(input_ids)
        self.load()
        if self._head is None:
            raise BackendError(f"no logits to compare: {self.head_note}", model=self.name)
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self._device)
        with torch.inference_mode():
            last = self.layer_states(tensor, sink=lambda layer, state: None)[-1]
            return self._head_outputs(last, tensor, loss=False, logits=True)[1]

    def _checked_ids(self, input_ids: np.ndarray) -> np.ndarray:
        import numpy as np

        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise BackendError(f"input_ids must be an integer array [batch, tokens], got "
                               f"{ids.dtype} of shape {ids.shape}", model=self.name)
        return ids

    def _copier(self, hidden: np.ndarray, ids: np.ndarray) -> Any:
        """A capture's sink that copies each layer into ``hidden`` [layers, b, t, d]
        (float32, on the host) as it is produced, on any device."""
        import torch

        width, shape = hidden.shape[-1], hidden.shape[1:]

        def copy_out(layer: int, state: Any) -> None:
            if state.shape[-1] != width:
                raise BackendError(f"hidden states have width {state.shape[-1]}, the config "
                                   f"says {width}", model=self.name)
            if tuple(state.shape) != shape:
                raise BackendError(f"layer {layer} has shape {tuple(state.shape)}, expected "
                                   f"{shape} for input ids of shape {ids.shape}", model=self.name)
            hidden[layer] = state.detach().to(torch.float32).cpu().numpy()

        return copy_out

    def _window_logits(self, last: Any) -> Any:
        """float32 logits [t-1, V] of one window's final hidden states [t-1, d]."""
        import torch

        logits = self._head(last).to(torch.float32)
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _head_outputs(self, last: Any, ids: Any, *, loss: bool, logits: bool
                      ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """From the final hidden state [b, t, d], one window's logits [t-1, V] at a
        time: the next-token cross-entropy float64 [b, t-1] (``loss``) and the
        logits float32 [b, t-1, V] (``logits``; :meth:`next_token_logits`'s array)."""
        import numpy as np
        import torch

        nll = torch.empty(ids.shape[0], ids.shape[1] - 1, dtype=torch.float64) if loss else None
        out = None
        for row in range(ids.shape[0]):
            window = self._window_logits(last[row, :-1])                  # [t-1, V]
            if nll is not None:
                nll[row] = torch.nn.functional.cross_entropy(
                    window, ids[row, 1:].to(window.device),
                    reduction="none").to(torch.float64).cpu()
            if logits:
                if out is None:  # each window straight into the batch's array: no stack
                    out = self._logits_array((ids.shape[0], *window.shape))
                torch.from_numpy(out[row]).copy_(window)
        if logits and out is None:
            out = np.empty((0, ids.shape[1] - 1, 0), np.float32)
        return (None if nll is None else nll.numpy()), out

    @contextlib.contextmanager
    def reusing_logits(self) -> Iterator[TorchBackend]:
        """``with backend.reusing_logits():`` :attr:`reuse_logits` on inside the block,
        as it was after it."""
        before, self.reuse_logits = self.reuse_logits, True
        try:
            yield self
        finally:
            self.reuse_logits = before

    def _logits_array(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of ``shape`` for one batch's logits: a new one, or a view
        of the kept one (:attr:`reuse_logits`), grown when a batch needs more."""
        import math

        import numpy as np

        size = math.prod(shape)
        if not self.reuse_logits:
            return np.empty(shape, np.float32)
        if self._logits_buffer is None or self._logits_buffer.size < size:
            self._logits_buffer = np.empty(size, np.float32)
        return self._logits_buffer[:size].reshape(shape)


class MergedAdapterBackend(TorchBackend):
    """``model.adapter`` merged into the base (peft's ``merge_and_unload()``): the
    checkpoint a user would ship after merging, measured beside the unmerged adapter
    for ``NAME::adapter-merged-parity``.  A class of its own, so the statistics
    cache keys it apart from the unmerged run."""

    merge_adapter = True
