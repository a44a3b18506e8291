"""The files of a Hugging Face checkpoint, shared by every backend that runs one:
the model's description from ``config.json`` or GGUF metadata (:class:`ModelInfo`),
the tokenizer, the no-pickle policy and the weights hashes.

Safety rules, enforced here:

- never pickle: only ``*.safetensors`` or GGUF weights are read; a folder holding
  only ``*.bin``/``*.pt``/``*.pth`` is refused;
- never the hub: ``HF_HUB_OFFLINE=1`` is set before transformers is imported and
  every load passes ``local_files_only=True``;
- ``trust_remote_code`` is passed only when the spec sets it;
- ``config.json`` is untrusted input: read as a regular file with bounded nesting
  (:mod:`audit.internal.safe_read`), a JSON object, its layer count and width
  integers in 1..:data:`~audit.backends.base.MAX_LAYERS` and
  1..:data:`~audit.backends.base.MAX_WIDTH`.

transformers is imported lazily, inside methods: importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.backends.architectures import ARCHITECTURES, architecture, final_norm_info
from audit.backends.base import MAX_LAYERS, MAX_WIDTH, ModelFiles, ModelInfo, dimension_problem
from audit.backends.gguf_meta import gguf_model_info
from audit.backends.locate import resolve_model_path
from audit.errors import BackendError
from audit.internal import safe_read
from audit.internal.files import sha256_files

if TYPE_CHECKING:
    from audit.cache.settings import CacheSettings
    from audit.spec import ModelSpec

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
_VERSIONED = ("torch", "transformers", "tokenizers", "safetensors", "gguf", "accelerate")
IN_MEMORY = "<in-memory>"
# Files of a model or tokenizer folder that are not read as config or tokenizer:
# weights (hashed as weights) and pickles (never read).
_NOT_CONFIG = (".safetensors", ".gguf", ".onnx", ".data", *PICKLE_SUFFIXES)


def import_transformers() -> Any:
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
def quiet_loading(tf: Any):
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


def sha256_state_dict(module: Any) -> str:
    """sha256 over a module's state dict: every tensor's name, dtype, shape and
    bytes, in sorted name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


class StoredTokenizer:
    """A tokenizer read back from the ``tokenizer.json`` and ``tokenizer_config.json``
    that transformers wrote for it (the converted-checkpoint cache's entries), by
    the Rust ``tokenizers`` library alone.

    transformers' tokenizer classes run the same Rust tokenizer: encoding with
    ``add_special_tokens`` and ``truncation``/``max_length`` is that tokenizer's
    ``encode`` with its truncation set, and ``get_vocab`` its vocabulary with the
    added tokens.  Building the transformers object around it costs Gemma-3's
    262,144-token vocabulary 2 s more than reading the file (3.4 s against
    1.2 s here), for nothing equilaw uses.  This class offers the part of
    transformers' interface equilaw calls, with the same results (tested against
    the tokenizer it was saved from); :attr:`class_name` is the transformers class
    that built it, as ``tokenizer_class`` in the config records it."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        def error_in(name: str) -> safe_read.ErrorFactory:
            return lambda _field, _line, message: BackendError(
                f"stored tokenizer {str(folder / name)!r}: {message}")

        # A cache entry is untrusted: regular files only, nesting bounded.
        config = safe_read.read_json(folder / "tokenizer_config.json", "tokenizer config",
                                     error_in("tokenizer_config.json"))
        if not isinstance(config, dict):
            raise error_in("tokenizer_config.json")(None, None, "not a JSON object")
        safe_read.require_regular(folder / "tokenizer.json", "tokenizer file",
                                  error_in("tokenizer.json"))
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.class_name = str(config.get("tokenizer_class") or "TokenizersBackend")
        bos = config.get("bos_token")
        if isinstance(bos, dict):  # an AddedToken written out
            bos = bos.get("content")
        self.bos_token_id = self._tok.token_to_id(bos) if isinstance(bos, str) else None

    def __call__(self, text: str, add_special_tokens: bool = True, truncation: bool = False,
                 max_length: int | None = None, verbose: bool = True) -> dict[str, list[int]]:
        if truncation and max_length is not None:
            self._tok.enable_truncation(max_length)
        else:
            self._tok.no_truncation()
        return {"input_ids": self._tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)


class HuggingFaceFiles:
    """A checkpoint's files: ``model_spec.path`` locates the weights and the
    tokenizer (``model_spec.tokenizer`` overrides the latter); ``name`` (the spec
    name) labels errors; ``model``, an already loaded model, replaces the weights
    (its config describes it and its state dict is hashed); ``cache``, the run's
    cache settings (default: :meth:`CacheSettings.from_environment`, read here, once),
    says where the file-hash index and the converted checkpoints are, and whether
    they are used.  Nothing here loads weights; a backend subclasses this and adds
    ``load`` and ``forward``."""

    def __init__(self, model_spec: ModelSpec, name: str, model: Any = None,
                 cache: CacheSettings | None = None) -> None:
        from audit.cache.settings import CacheSettings

        self.spec = model_spec
        self.name = name
        self.cache = CacheSettings.from_environment() if cache is None else cache
        self._given = model
        self._path: Path | None = None
        self._info: ModelInfo | None = None
        self._tokenizer: Any = None
        self._sha256: str | None = None

    @property
    def path(self) -> Path:
        """The resolved folder or .gguf file of ``model_spec.path``."""
        if self._path is None:
            self._path = resolve_model_path(self.spec.path, model=self.name,
                                            allow_package_code=self.spec.allow_package_code)
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

    def info(self) -> ModelInfo:
        """Architecture, L, d and final norm; never loads weights."""
        if self._info is None:
            if self._given is not None:
                self._info = self._info_from_config(text_config(self._given.config), IN_MEMORY)
            elif self._is_gguf():
                self._info = gguf_model_info(self.path, norm=self.spec.norm, model=self.name)
            else:
                self._info = self._info_from_folder(self.path)
        return self._info

    def _check_known(self, arch: str) -> None:
        """Raise the table's error naming ``model.modules`` and ``model.norm`` unless
        equilaw can find ``arch``'s modules and final norm: from its table, or from
        the spec (both keys set)."""
        if arch not in ARCHITECTURES and (self.spec.modules is None or self.spec.norm is None):
            architecture(arch, model=self.name)  # raises, naming the spec keys

    def _norm(self, arch: str, lookup: Any) -> Any:
        if self.spec.norm is not None:
            return final_norm_info(arch, None, self.spec.norm, model=self.name)
        return final_norm_info(arch, architecture(arch, model=self.name).epsilon(lookup),
                               model=self.name)

    def _info_from_config(self, config: Any, where: str) -> ModelInfo:
        arch = getattr(config, "model_type", None) or "unknown"
        self._check_known(arch)
        found = {k: getattr(config, k) for k in _LAYER_KEYS + _WIDTH_KEYS
                 if getattr(config, k, None) is not None}
        if not any(k in found for k in _LAYER_KEYS) or not any(k in found for k in _WIDTH_KEYS):
            raise BackendError(f"the {arch!r} config names no layer count or width",
                               model=self.name)
        layers, width = self._dimensions(found, f"the config of {where}")
        norm = self._norm(arch, lambda key: getattr(config, key, None))
        return ModelInfo(arch, layers, width, norm, where)

    def _dimensions(self, cfg: dict, where: str) -> tuple[int, int]:
        """The layer count and width of a config (the first key of each that is set),
        checked: integers in 1..MAX_LAYERS and 1..MAX_WIDTH."""
        out = []
        for keys, limit in ((_LAYER_KEYS, MAX_LAYERS), (_WIDTH_KEYS, MAX_WIDTH)):
            key = next(k for k in keys if cfg.get(k) is not None)
            problem = dimension_problem(cfg[key], key, limit)
            if problem is not None:
                raise BackendError(f"{where}: {problem}", model=self.name)
            out.append(cfg[key])
        return out[0], out[1]

    def _info_from_folder(self, folder: Path) -> ModelInfo:
        cfg_file = folder / "config.json"
        if not os.path.lexists(cfg_file):
            raise BackendError(f"folder {str(folder)!r} has no config.json", model=self.name)

        def error(_field: str | None, _line: int | None, message: str) -> BackendError:
            return BackendError(f"{str(cfg_file)!r}: {message}", model=self.name)

        cfg = safe_read.read_json(cfg_file, "config.json", error)
        if not isinstance(cfg, dict):
            raise error(None, None, f"expected a JSON object, got a JSON "
                                    f"{'array' if isinstance(cfg, list) else type(cfg).__name__}")
        where = repr(str(cfg_file))
        if isinstance(cfg.get("text_config"), dict) and "model_type" in cfg["text_config"]:
            cfg = cfg["text_config"]  # a multimodal wrapper: the text model has the layers
            where += " text_config"
        arch = cfg.get("model_type")
        if arch is not None and not isinstance(arch, str):
            raise error(None, None, f"model_type must be a string, got "
                                    f"{safe_read.short_repr(arch)}")
        layers = next((cfg[k] for k in _LAYER_KEYS if cfg.get(k) is not None), None)
        width = next((cfg[k] for k in _WIDTH_KEYS if cfg.get(k) is not None), None)
        if layers is not None and width is not None:
            layers, width = self._dimensions(cfg, where)
        if arch is not None:
            self._check_known(arch)  # an unknown architecture fails here, clearly
        eps_known = self.spec.norm is not None or (
            arch is not None and ARCHITECTURES[arch].epsilon(cfg.get) is not None)
        if arch is None or layers is None or width is None or not eps_known:
            # config.json left some value at its class default: ask transformers.
            return self._info_from_config(self._auto_config(folder), str(folder))
        norm = self._norm(arch, cfg.get)
        return ModelInfo(arch, layers, width, norm, str(folder))

    def _auto_config(self, folder: Path) -> Any:
        tf = import_transformers()
        try:
            config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                   **self._remote_code())
        except Exception as exc:  # transformers and huggingface_hub raise many kinds
            raise BackendError(f"transformers cannot read the config in {str(folder)!r}: "
                               f"{type(exc).__name__}: {exc}", model=self.name) from exc
        return text_config(config)

    def _remote_code(self) -> dict[str, bool]:
        return {"trust_remote_code": True} if self.spec.trust_remote_code else {}

    @property
    def tokenizer_path(self) -> Path:
        """Where the tokenizer comes from: ``model_spec.tokenizer`` when set (a
        folder or .gguf file), else the model's own path."""
        if self.spec.tokenizer is None:
            return self.path
        return resolve_model_path(self.spec.tokenizer, model=self.name,
                                  allow_package_code=self.spec.allow_package_code)

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer, loaded once from :attr:`tokenizer_path`."""
        if self._tokenizer is None:
            tf = import_transformers()
            kw = {"local_files_only": True, **self._remote_code()}
            source = self.tokenizer_path
            try:
                with quiet_loading(tf):
                    if source.is_file() and source.suffix.lower() == ".gguf":
                        self._tokenizer = self._gguf_tokenizer(tf, source, kw)
                    else:
                        self._tokenizer = tf.AutoTokenizer.from_pretrained(str(source), **kw)
            except (OSError, ValueError, KeyError, ImportError) as exc:
                raise BackendError(f"cannot load the tokenizer from {str(source)!r}: "
                                   f"{type(exc).__name__}: {exc}", model=self.name) from exc
        return self._tokenizer

    def _converted(self, dtype: str, gguf: Path | None = None) -> Any:
        """The converted-checkpoint cache entry of the GGUF file ``gguf`` (default:
        the weights) loaded in ``dtype``, or None when the caches are off."""
        from audit.cache import converted

        if not self.cache.enabled:
            return None
        gguf = self.path if gguf is None else gguf
        digest = self.weights_sha256() if gguf == self.path else sha256_files([gguf])
        return converted.entry(self.cache, digest, dtype)

    def _gguf_tokenizer(self, tf: Any, source: Path, kw: dict[str, Any]) -> Any:
        """The tokenizer transformers builds from a GGUF file, read back from the
        converted-checkpoint cache after the first build (Gemma-3's takes 16 s) as
        a :class:`StoredTokenizer`."""
        entry = self._converted("tokenizer", source)
        folder = entry.path("tokenizer") if entry is not None else None
        if folder is not None:
            try:
                return StoredTokenizer(folder)
            except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
                entry.discard("tokenizer", f"{type(exc).__name__}: {exc}")  # rebuilt below
        tokenizer = tf.AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name,
                                                     **kw)
        if entry is not None:
            entry.store("tokenizer", tokenizer.save_pretrained)
        return tokenizer

    def tokenizer_info(self) -> dict[str, Any]:
        """Source, class, vocabulary size, sha256 of the sorted vocabulary, BOS id."""
        tok = self.tokenizer
        vocab = sorted(tok.get_vocab().items(), key=lambda item: item[1])
        digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
        name = tok.class_name if isinstance(tok, StoredTokenizer) else type(tok).__name__
        return {"source": str(self.tokenizer_path), "class": name,
                "vocab_size": len(vocab), "vocab_sha256": digest, "bos_token_id": self.bos_token_id}

    def check_embedding_rows(self, rows: int, where: str) -> None:
        """Raise :class:`BackendError` when the model's embedding table (``rows``
        rows, read from ``where``) is smaller than the tokenizer's vocabulary: the
        tokenizer would give ids the model has no embedding for.  A larger table is
        normal (tables are padded to a multiple of 64 or 128)."""
        vocab = max(self.tokenizer.get_vocab().values(), default=-1) + 1
        if rows < vocab:
            raise BackendError(
                f"{where}: the embedding table has {rows} rows but the tokenizer from "
                f"{str(self.tokenizer_path)!r} has {vocab} tokens (ids up to {vocab - 1}): the "
                f"model and the tokenizer do not belong together (model.tokenizer of the spec "
                f"names another tokenizer)", model=self.name)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        tok = self.tokenizer
        return [int(i) for i in tok(text, add_special_tokens=False, verbose=False)["input_ids"]]

    def encode_document(self, text: str, max_length: int) -> list[int]:
        """Token ids of ``text`` as the authors' reference code gets them: the
        tokenizer's default special tokens (a Llama-style tokenizer adds its BOS, a
        GPT-2-style one nothing), truncated to at most ``max_length`` ids, special
        tokens included.  The reference tokenizes a padded batch; without its padding
        each text's ids are the same."""
        tok = self.tokenizer
        ids = tok(text, truncation=True, max_length=max_length, verbose=False)["input_ids"]
        return [int(i) for i in ids]

    @property
    def bos_token_id(self) -> int | None:
        """The tokenizer's BOS id, or None."""
        bos = self.tokenizer.bos_token_id
        return None if bos is None else int(bos)

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

    def model_files(self) -> ModelFiles | None:
        """The weights :meth:`weights_sha256` hashes and the model folder's and the
        tokenizer's other files (config, tokenizer, remote code; no pickles); None for
        a model handed over in memory."""
        if self._given is not None:
            return None
        weights = self._weight_files()
        places = [self.path] if self.path.is_dir() else []
        if self.tokenizer_path not in places:
            places.append(self.tokenizer_path)
        config: list[Path] = []
        for place in places:
            if place.is_dir():
                config += sorted(p for p in place.iterdir() if p.is_file()
                                 and not p.name.lower().endswith(_NOT_CONFIG))
            elif place.is_file():
                config.append(place)
        return ModelFiles(tuple(weights), tuple(p for p in config if p not in weights))

    def _weight_files(self) -> list[Path]:
        """The GGUF file, or the folder's ``*.safetensors`` in sorted name order."""
        return [self.path] if self._is_gguf() else self._safetensors_files(self.path)

    def weights_sha256(self) -> str:
        """sha256 of the weights: the GGUF file; the folder's ``*.safetensors``
        concatenated in sorted name order (one file: its ``sha256sum``); or, for a
        model handed over in memory, its state dict (names, dtypes, shapes, bytes)."""
        if self._sha256 is None:
            if self._given is not None:
                self._sha256 = sha256_state_dict(self._given)
            elif self._is_gguf():
                self._sha256 = self._remembered_sha256(self.path)
            else:
                self._sha256 = sha256_files(self._safetensors_files(self.path))
        return self._sha256

    def _remembered_sha256(self, path: Path) -> str:
        """sha256 of one file, remembered in the cache folder's file-hash index
        (:class:`audit.cache.index.FileHashIndex`) while the caches are on, so that a
        GGUF file is read once, not on every start (Gemma-3's 253 MB take 0.45 s
        here); hashed every time when they are off."""
        if not self.cache.enabled:
            return sha256_files([path])
        from audit.cache.index import FileHashIndex

        return FileHashIndex(self.cache.folder).file_sha256(path)

    versioned: tuple[str, ...] = _VERSIONED
    """The distributions whose versions a report records (a backend sets its own)."""

    def versions(self) -> dict[str, str]:
        """Installed versions of the libraries behind the numbers (not imported)."""
        out = {}
        for dist in self.versioned:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
        return out
