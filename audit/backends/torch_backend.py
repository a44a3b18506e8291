"""The PyTorch backend: transformers models from a safetensors folder or a GGUF file.

Safety and reproducibility rules, enforced here:

- never pickle: only ``*.safetensors`` (``use_safetensors=True``) or GGUF weights
  are read; a folder holding only ``*.bin``/``*.pt``/``*.pth`` is refused;
- never the hub: ``HF_HUB_OFFLINE=1`` is set before transformers is imported and
  every load passes ``local_files_only=True``;
- ``trust_remote_code`` is passed only when the spec sets it;
- the model is loaded with its language-model head (``AutoModelForCausalLM``);
  the base model gives the hidden states and the head runs only when the probe
  loss is asked for, window by window, so that no batch's logits outlive it
  (Gemma-3's 262k-word head costs more than its 18 blocks).  A checkpoint whose
  head weights are absent runs without one and says so (``head_note``);
- everything runs under ``torch.inference_mode()``.

torch and transformers are imported lazily, inside methods: importing this module
costs nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import time
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.backends.architectures import final_norm, final_norm_info
from audit.backends.base import Forward, ModelInfo
from audit.backends.gguf_meta import gguf_model_info
from audit.backends.locate import resolve_model_path
from audit.errors import BackendError

if TYPE_CHECKING:
    import numpy as np

    from audit.spec import ModelSpec

_HEAD_PREFIXES = ("lm_head.", "embed_out.", "output.")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
_DTYPES = ("float32", "bfloat16", "float16")
_VERSIONED = ("torch", "transformers", "tokenizers", "safetensors", "gguf", "accelerate")
_CHUNK = 1 << 20
IN_MEMORY = "<in-memory>"


def _transformers() -> Any:
    """Import transformers offline; a clear error when the extra is missing."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as exc:
        raise BackendError("the torch backend needs torch and transformers: "
                           "pip install 'equilaw[torch]'") from exc
    return transformers


@contextmanager
def _quiet_loading(tf: Any):
    """Silence transformers' load report and progress bars while loading: the
    audit draws its own progress, and CI logs stay readable.  The GGUF dequantiser
    writes its tqdm bar straight to stderr, so stderr is held for the duration
    (failures still arrive as exceptions)."""
    verbosity = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()
    tf.logging.disable_progress_bar()
    try:
        with redirect_stderr(io.StringIO()):
            yield
    finally:
        tf.logging.set_verbosity(verbosity)
        tf.logging.enable_progress_bar()


def _sha256_files(paths: list[Path]) -> str:
    """sha256 of the files' bytes, concatenated in the given order (for one file:
    what ``sha256sum`` prints)."""
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def _sha256_state_dict(module: Any) -> str:
    """sha256 over a module's state dict: every tensor's name, dtype, shape and
    bytes, in sorted name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _headless(model: Any) -> Any:
    """The base model of a model with an LM head (``base_model``: ``.model`` for
    Llama and Gemma-3, ``.transformer`` for GPT-2); the model itself otherwise."""
    base = getattr(model, "base_model", None)
    if base is not None and base is not model and hasattr(base, "forward"):
        return base
    return model


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


class TorchBackend:
    """Hidden states of a transformers model (see the module docstring).

    ``model_spec.path`` locates the weights and the tokenizer; ``name`` (the spec
    name) labels errors; ``model``, an already loaded torch model with or without
    its LM head, replaces the weights (it is put in eval mode and run on its own
    device and dtype; the tokenizer still comes from ``model_spec.path``).
    """

    backend_name = "torch"

    def __init__(self, model_spec: ModelSpec, name: str, model: Any = None) -> None:
        if model_spec.dtype not in _DTYPES:
            raise BackendError(f"dtype {model_spec.dtype!r} is not one of {', '.join(_DTYPES)}",
                               model=name)
        self.spec = model_spec
        self.name = name
        self._given = model
        self._path: Path | None = None
        self._info: ModelInfo | None = None
        self._tokenizer: Any = None
        self._model: Any = None
        self._head: Any = None
        self._softcap: float | None = None
        self.head_note: str | None = None
        """Why the model has no language-model head (None when it has one)."""
        self._device: Any = None
        self._sha256: str | None = None
        self.load_seconds: float | None = None
        """Seconds the weights took to load (None until loaded, or when given)."""

    # -- locating --------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The resolved folder or .gguf file of ``model_spec.path``."""
        if self._path is None:
            self._path = resolve_model_path(self.spec.path, model=self.name)
        return self._path

    def _is_gguf(self) -> bool:
        p = self.path
        if p.is_dir():
            return False
        if p.suffix.lower() == ".gguf":
            return True
        if p.suffix.lower() in PICKLE_SUFFIXES:
            raise BackendError(f"{str(p)!r} is a pickle file; equilaw never loads pickle "
                               "weights: convert them to safetensors", model=self.name)
        raise BackendError(f"{str(p)!r} is neither a folder (config.json, tokenizer, "
                           "*.safetensors) nor a .gguf file", model=self.name)

    # -- cheap facts -----------------------------------------------------------
    def info(self) -> ModelInfo:
        """Architecture, L, d and final norm; never loads weights."""
        if self._info is None:
            if self._given is not None:
                self._info = self._info_from_config(_text_config(self._given.config), IN_MEMORY)
            elif self._is_gguf():
                self._info = gguf_model_info(self.path, norm=self.spec.norm, model=self.name)
            else:
                self._info = self._info_from_folder(self.path)
        return self._info

    def _norm(self, architecture: str, lookup: Any) -> Any:
        if self.spec.norm is not None:
            return final_norm_info(architecture, None, self.spec.norm, model=self.name)
        entry = final_norm(architecture, model=self.name)
        return final_norm_info(architecture, lookup(entry.eps_key), model=self.name)

    def _info_from_config(self, config: Any, where: str) -> ModelInfo:
        arch = getattr(config, "model_type", None) or "unknown"
        layers = next((getattr(config, k) for k in _LAYER_KEYS
                       if getattr(config, k, None) is not None), None)
        width = next((getattr(config, k) for k in _WIDTH_KEYS
                      if getattr(config, k, None) is not None), None)
        if layers is None or width is None:
            raise BackendError(f"the {arch!r} config names no layer count or width",
                               model=self.name)
        norm = self._norm(arch, lambda key: getattr(config, key, None))
        return ModelInfo(arch, int(layers), int(width), norm, where)

    def _info_from_folder(self, folder: Path) -> ModelInfo:
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise BackendError(f"folder {str(folder)!r} has no config.json", model=self.name)
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read {str(cfg_file)!r}: {exc}", model=self.name) from exc
        if isinstance(cfg.get("text_config"), dict) and "model_type" in cfg["text_config"]:
            cfg = cfg["text_config"]  # a multimodal wrapper: the text model has the layers
        arch = cfg.get("model_type")
        layers = next((cfg[k] for k in _LAYER_KEYS if cfg.get(k) is not None), None)
        width = next((cfg[k] for k in _WIDTH_KEYS if cfg.get(k) is not None), None)
        if arch is not None and self.spec.norm is None:
            final_norm(arch, model=self.name)  # an unknown architecture fails here, clearly
        eps_known = self.spec.norm is not None or (
            arch is not None and cfg.get(final_norm(arch).eps_key) is not None)
        if arch is None or layers is None or width is None or not eps_known:
            # config.json left some value at its class default: ask transformers.
            return self._info_from_config(self._auto_config(folder), str(folder))
        norm = self._norm(arch, cfg.get)
        return ModelInfo(arch, int(layers), int(width), norm, str(folder))

    def _auto_config(self, folder: Path) -> Any:
        tf = _transformers()
        try:
            config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                   **self._remote_code())
        except Exception as exc:  # transformers and huggingface_hub raise many kinds
            raise BackendError(f"transformers cannot read the config in {str(folder)!r}: "
                               f"{type(exc).__name__}: {exc}", model=self.name) from exc
        return _text_config(config)

    def _remote_code(self) -> dict[str, bool]:
        return {"trust_remote_code": True} if self.spec.trust_remote_code else {}

    # -- tokenizer -------------------------------------------------------------
    @property
    def tokenizer_path(self) -> Path:
        """Where the tokenizer comes from: ``model_spec.tokenizer`` when set (a
        folder or .gguf file), else the model's own path."""
        if self.spec.tokenizer is None:
            return self.path
        return resolve_model_path(self.spec.tokenizer, model=self.name)

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer, loaded once from :attr:`tokenizer_path`."""
        if self._tokenizer is None:
            tf = _transformers()
            kw = {"local_files_only": True, **self._remote_code()}
            source = self.tokenizer_path
            try:
                with _quiet_loading(tf):
                    if source.is_file() and source.suffix.lower() == ".gguf":
                        self._tokenizer = tf.AutoTokenizer.from_pretrained(
                            str(source.parent), gguf_file=source.name, **kw)
                    else:
                        self._tokenizer = tf.AutoTokenizer.from_pretrained(str(source), **kw)
            except (OSError, ValueError, KeyError, ImportError) as exc:
                raise BackendError(f"cannot load the tokenizer from {str(source)!r}: "
                                   f"{type(exc).__name__}: {exc}", model=self.name) from exc
        return self._tokenizer

    def tokenizer_info(self) -> dict[str, Any]:
        """Source, class, vocabulary size, sha256 of the sorted vocabulary, BOS id."""
        tok = self.tokenizer
        vocab = sorted(tok.get_vocab().items(), key=lambda item: item[1])
        digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
        return {"source": str(self.tokenizer_path), "class": type(tok).__name__,
                "vocab_size": len(vocab), "vocab_sha256": digest, "bos_token_id": self.bos_token_id}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        tok = self.tokenizer
        return [int(i) for i in tok(text, add_special_tokens=False, verbose=False)["input_ids"]]

    @property
    def bos_token_id(self) -> int | None:
        """The tokenizer's BOS id, or None."""
        bos = self.tokenizer.bos_token_id
        return None if bos is None else int(bos)

    # -- weights ---------------------------------------------------------------
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

    def _safetensors_files(self, folder: Path) -> list[Path]:
        files = sorted(folder.glob("*.safetensors"))
        if files:
            return files
        pickles = sorted(f.name for f in folder.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise BackendError(
                f"folder {str(folder)!r} holds only pickle weights ({', '.join(pickles)}); "
                "equilaw never loads pickle files because unpickling can run arbitrary code: "
                "load it once in a trusted environment and re-save it with save_pretrained(folder), "
                "which writes safetensors",
                model=self.name)
        raise BackendError(f"folder {str(folder)!r} holds no *.safetensors weights",
                           model=self.name)

    def load(self) -> Any:
        """Load the weights (once) and return the headless model; later calls return
        the same model."""
        if self._model is not None:
            return self._model
        tf = _transformers()
        import torch

        if self._given is not None:
            model = _headless(self._given).eval()
            param = next(model.parameters(), None)
            self._device = param.device if param is not None else torch.device("cpu")
            self._model = model
            self._set_head(self._given if self._given is not model else None,
                           "the model handed over has no language-model head")
            return model
        device = self._resolve_device(torch)
        kw: dict[str, Any] = {"local_files_only": True, "dtype": getattr(torch, self.spec.dtype),
                              "output_loading_info": True, **self._remote_code()}
        start = time.perf_counter()
        try:
            with _quiet_loading(tf):
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
        full = model.to(device).eval()
        model = _headless(full)
        self.load_seconds = time.perf_counter() - start
        self._device = device
        self._model = model
        self._set_head(head if head is not model else None,
                       f"{str(self.path)!r} holds no language-model head weights")
        return model

    def _set_head(self, full: Any, missing_note: str) -> None:
        """Keep the output projection (and Gemma's logit soft-capping) of ``full``,
        a model with its head, or note why there is none."""
        get = getattr(full, "get_output_embeddings", None)
        head = get() if callable(get) else None
        if head is None:
            self.head_note = missing_note
            return
        self._head = head
        cap = getattr(_text_config(full.config), "final_logit_softcapping", None)
        self._softcap = float(cap) if cap else None

    def _from_pretrained(self, tf: Any, kw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if self._is_gguf():
            if importlib.util.find_spec("gguf") is None:
                raise BackendError("reading a GGUF file needs the gguf package: "
                                   "pip install gguf==0.19.0", model=self.name)
            return self._auto_class(tf).from_pretrained(
                str(self.path.parent), gguf_file=self.path.name, **kw)
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

    def hidden_states(self, input_ids: np.ndarray) -> np.ndarray:
        """``input_ids`` int64 [b, t] -> float32 [L + 1, b, t, d] (index 0: the
        embedding output; L: the last block after the final norm)."""
        return self.forward(input_ids, loss=False).hidden

    def forward(self, input_ids: np.ndarray, *, loss: bool) -> Forward:
        """Hidden states of ``input_ids`` int64 [b, t] and, with ``loss`` and a
        head, each position's next-token cross-entropy (see :class:`Forward`)."""
        import numpy as np

        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise BackendError(f"input_ids must be an integer array [batch, tokens], got "
                               f"{ids.dtype} of shape {ids.shape}", model=self.name)
        info = self.info()
        model = self.load()
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self._device)
        with torch.inference_mode():
            out = model(input_ids=tensor, attention_mask=torch.ones_like(tensor),
                        output_hidden_states=True, use_cache=False, return_dict=True)
            states = out.hidden_states
            if states is None or len(states) != info.num_layers + 1:
                got = "none" if states is None else len(states)
                raise BackendError(f"the model returned {got} hidden states; its config "
                                   f"promises {info.num_layers} layers, so "
                                   f"{info.num_layers + 1} were expected", model=self.name)
            stacked = torch.stack(states).to(torch.float32).cpu().numpy()  # [L+1, b, t, d]
            if stacked.shape[-1] != info.width:
                raise BackendError(f"hidden states have width {stacked.shape[-1]}, the config "
                                   f"says {info.width}", model=self.name)
            if not loss or self._head is None:
                return Forward(stacked, None, 0.0)
            start = time.perf_counter()
            nll = self._token_nll(states[-1], tensor)
            return Forward(stacked, nll, time.perf_counter() - start)

    def _token_nll(self, last: Any, ids: Any) -> np.ndarray:
        """Next-token cross-entropy, float64 [b, t-1], from the final hidden state
        [b, t, d]; one window's logits [t, V] at a time."""
        import torch

        out = torch.empty(ids.shape[0], ids.shape[1] - 1, dtype=torch.float64)
        for row in range(ids.shape[0]):
            logits = self._head(last[row, :-1]).to(torch.float32)          # [t-1, V]
            if self._softcap is not None:
                logits = torch.tanh(logits / self._softcap) * self._softcap
            out[row] = torch.nn.functional.cross_entropy(
                logits, ids[row, 1:], reduction="none").to(torch.float64).cpu()
        return out.numpy()

    def weights_sha256(self) -> str:
        """sha256 of the weights: the GGUF file; the folder's ``*.safetensors``
        concatenated in sorted name order (one file: its ``sha256sum``); or, for a
        model handed over in memory, its state dict (names, dtypes, shapes, bytes)."""
        if self._sha256 is None:
            if self._given is not None:
                self._sha256 = _sha256_state_dict(self._given)
            elif self._is_gguf():
                self._sha256 = _sha256_files([self.path])
            else:
                self._sha256 = _sha256_files(self._safetensors_files(self.path))
        return self._sha256

    def versions(self) -> dict[str, str]:
        """Installed versions of the libraries behind the numbers (not imported)."""
        out = {}
        for dist in _VERSIONED:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
        return out
