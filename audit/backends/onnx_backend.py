"""The ONNX Runtime backend: audits the ONNX file that ships.

The file has one output per hidden state, named ``hidden_states.0`` …
``hidden_states.L`` in equilaw's indexing (0 = embedding output, L = after the
final norm), and optionally ``logits`` for the probe loss; ``python -m audit
export-onnx`` writes such a file, and any other tool's file that follows the
naming works.  The inputs fed are those the graph declares: ``input_ids`` and,
when declared, an all-ones ``attention_mask``.  The checkpoint folder
(``model.path``) gives the config (L, width, final norm) and the tokenizer
(:class:`~audit.backends.hf_files.HuggingFaceFiles`, shared with the torch
backend).  onnxruntime is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.backends.architectures import architecture
from audit.backends.base import Forward
from audit.backends.hf_files import HuggingFaceFiles
from audit.backends.locate import resolve_model_path
from audit.backends.onnx_graph import feedable, find_layers, with_outputs
from audit.errors import BackendError
from audit.internal.files import sha256_files

if TYPE_CHECKING:
    import numpy as np

    from audit.cache.settings import CacheSettings
    from audit.spec import ModelSpec, OnnxSpec, Spec

HIDDEN = re.compile(r"^hidden_states\.(\d+)$")
LOGITS = "logits"
_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class OnnxBackend(HuggingFaceFiles):
    """Hidden states (and logits) of an ONNX file run by onnxruntime."""

    backend_name = "onnx"
    versioned = ("onnxruntime", "onnx", "transformers", "tokenizers")

    def __init__(self, model_spec: ModelSpec, name: str, model: Any = None,
                 options: OnnxSpec | None = None, cache: CacheSettings | None = None) -> None:
        if model is not None:
            raise BackendError("the onnx backend runs an ONNX file (model.onnx), not a model "
                               "object", model=name)
        if model_spec.onnx is None:
            raise BackendError("backend onnx needs model.onnx, the ONNX file to run", model=name)
        super().__init__(model_spec, name, cache=cache)
        from audit.spec import OnnxSpec

        self.options = options or OnnxSpec()
        self._session: Any = None
        self._hidden_names: list[str] = []
        self._float32: dict[str, bool] = {}
        self._inputs: dict[str, Any] = {}
        self._onnx_sha256: str | None = None
        self.head_note: str | None = None
        """After loading: why there is no probe loss (the file has no logits output)."""
        self.graph_layers: tuple[str, ...] | None = None
        """After loading a file without ``hidden_states.*`` outputs: the tensors of
        layers 0..L found in its graph (or named by ``onnx.layers``)."""

    @classmethod
    def from_spec(cls, spec: Spec, model: Any = None,
                  cache: CacheSettings | None = None) -> OnnxBackend:
        return cls(spec.model, spec.name, model=model, options=spec.onnx, cache=cache)

    @property
    def onnx_path(self) -> Path:
        return resolve_model_path(self.spec.onnx, model=self.name,
                                  allow_package_code=self.spec.allow_package_code)

    def _weight_files(self) -> list[Path]:
        """The ONNX file and the external-data files its initializers name (equilaw's
        ``<file>.data``, optimum's ``model.onnx_data``, ...), in sorted order."""
        path = self.onnx_path
        return [path] + external_data_files(path, model_name=self.name)

    def load(self) -> Any:
        """Open the inference session once and check the outputs against the config.

        A file with ``hidden_states.*`` outputs is run as it is.  A file without them
        (``optimum-cli export onnx``: ``logits`` only), or a spec with ``onnx.layers``,
        gets its layers found in the graph (:mod:`audit.backends.onnx_graph`) and added
        as outputs of an in-memory copy of the graph; the file is never written."""
        if self._session is not None:
            return self._session
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError("the onnx backend needs onnxruntime: pip install 'equilaw[onnx]'",
                               model=self.name) from exc
        path = self.onnx_path
        where = repr(str(path))
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # onnx raises protobuf's DecodeError and others
            raise BackendError(f"onnxruntime cannot load {where} (corrupt, truncated or "
                               f"not an ONNX file?): {type(exc).__name__}: {exc}",
                               model=self.name) from None
        outputs = [o.name for o in proto.graph.output]
        hidden = sorted((int(m.group(1)), name) for name in outputs if (m := HIDDEN.match(name)))
        info = self.info()
        expected = info.num_layers + 1
        source: str | bytes = str(path)
        if self.options.layers is not None or not hidden:
            if not hidden and not any(node.name.startswith("/") for node in proto.graph.node):
                raise BackendError(f"{where} has no hidden-state outputs (hidden_states.0 … "
                                   f"hidden_states.L); its outputs are: {', '.join(outputs)}; "
                                   f"export with python -m audit export-onnx, or name the "
                                   f"tensors in the spec (onnx.layers)", model=self.name)
            blocks, final_norm = self._module_paths(info.architecture)
            found = find_layers(proto, blocks, final_norm, info.num_layers, info.width,
                                where=where, model_name=self.name,
                                explicit=dict(self.options.layers or ()) or None)
            self.graph_layers = found.names
            source = with_outputs(proto, found.names)
            hidden = list(enumerate(found.names))
        elif [i for i, _ in hidden] != list(range(expected)):
            raise BackendError(f"{where} has hidden-state outputs {[i for i, _ in hidden][:3]}"
                               f"…{hidden[-1][0]} ({len(hidden)} in all), but the checkpoint's "
                               f"config promises {expected - 1} layers (hidden_states.0 … "
                               f"hidden_states.{expected - 1})", model=self.name)
        session = self._open(ort, source, path)
        self._inputs = {i.name: i for i in session.get_inputs()}
        if "input_ids" not in self._inputs:
            raise BackendError(f"{where} has no input_ids input; its inputs are: "
                               f"{', '.join(self._inputs)}", model=self.name)
        unknown = [name for name, arg in self._inputs.items() if feedable(arg) is None]
        if unknown:
            raise BackendError(f"{where} needs inputs equilaw cannot feed: {', '.join(unknown)} "
                               f"(it feeds input_ids, attention_mask, position_ids and empty "
                               f"past_key_values.*)", model=self.name)
        rows = embedding_rows(proto)
        if rows is not None:
            self.check_embedding_rows(rows, where)
        self._hidden_names = [name for _, name in hidden]
        self._float32 = _float32_outputs(session, self._hidden_names)
        self.head_note = None if LOGITS in outputs else f"{where} has no logits output"
        self._session = session
        return session

    def _module_paths(self, arch: str) -> tuple[str, str]:
        """The blocks and the final norm, as module paths: the spec's ``model.modules``
        (from the model's root, e.g. ``model.layers``) or the architectures table (from
        the base model, e.g. ``layers``)."""
        if self.spec.modules is not None:
            return self.spec.modules.blocks, self.spec.modules.final_norm
        entry = architecture(arch, model=self.name)
        return entry.blocks, entry.module

    def _open(self, ort: Any, source: str | bytes, path: Path) -> Any:
        """An inference session on the file, or on the in-memory graph ``source``
        (whose external data, if any, stays beside the file)."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.options.intra_op_threads
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                _LEVELS[self.options.graph_optimization])
        opts.log_severity_level = 3
        if isinstance(source, bytes):
            opts.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(path.parent))
        try:
            return ort.InferenceSession(source, sess_options=opts,
                                        providers=list(self.options.providers))
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            raise BackendError(f"onnxruntime cannot load {str(path)!r} (corrupt, truncated or "
                               f"not an ONNX file?): {type(exc).__name__}: {exc}",
                               model=self.name) from None

    def feed(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Every input the graph declares, for the token ids ``ids`` [b, t]."""
        return {name: feedable(arg)(ids)  # type: ignore[misc]
                for name, arg in self._inputs.items()}

    def forward(self, input_ids: np.ndarray, *, loss: bool, logits: bool = False) -> Forward:
        """Hidden states float32 [L+1, b, t, d] (a fresh array) and, with a logits
        output, the next-token cross-entropy float64 [b, t-1] (``loss``) and the
        logits float32 [b, t-1, V] (``logits``), from one run of the graph."""
        import numpy as np

        ids = self._ids(input_ids)
        session = self.load()
        with_logits = (loss or logits) and self.head_note is None
        hidden, out = self._run(session, self.feed(ids), ids.shape, with_logits)
        if not with_logits:
            return Forward(hidden, None, 0.0)
        start = time.perf_counter()
        nll = _token_nll(out, ids) if loss else None
        kept = np.array(out[:, :-1], dtype=np.float32) if logits else None
        return Forward(hidden, nll, time.perf_counter() - start, kept)

    def _run(self, session: Any, feed: dict[str, np.ndarray], shape: tuple[int, ...],
             with_logits: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Hidden states float32 [L+1, b, t, d] and, ``with_logits``, the logits.

        When every hidden-state output is float32, onnxruntime writes each straight
        into its slice of one preallocated array (I/O binding): no copy per output and
        no stacking afterwards.  Other element types go through ``session.run`` and a
        conversion."""
        import numpy as np

        width = self.info().width
        if not all(self._float32.values()):
            names = self._hidden_names + ([LOGITS] if with_logits else [])
            outs = session.run(names, feed)
            hidden = np.stack(outs[:len(self._hidden_names)]).astype(np.float32, copy=False)
            if hidden.shape[-1] != width:
                raise BackendError(f"hidden states have width {hidden.shape[-1]}, the config "
                                   f"says {width}", model=self.name)
            return hidden, (outs[-1] if with_logits else None)
        hidden = np.empty((len(self._hidden_names), *shape, width), dtype=np.float32)
        binding = session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        for layer, name in enumerate(self._hidden_names):
            binding.bind_output(name, "cpu", 0, np.float32, hidden[layer].shape,
                                hidden[layer].ctypes.data)
        if with_logits:
            binding.bind_output(LOGITS, "cpu")
        try:
            session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime's own exception types; a shape mismatch
            raise BackendError(f"onnxruntime cannot write the hidden states into arrays of "
                               f"shape {list(hidden.shape[1:])} (batch, tokens and the config's "
                               f"width): {type(exc).__name__}: {exc}", model=self.name) from None
        return hidden, (binding.copy_outputs_to_cpu()[-1] if with_logits else None)

    def next_token_logits(self, input_ids: np.ndarray) -> np.ndarray:
        """float32 [b, t-1, V]: the ``logits`` output at the probe loss's positions
        (see :class:`~audit.backends.base.Backend`), fed as :meth:`forward` feeds."""
        import numpy as np

        ids = self._ids(input_ids)
        session = self.load()
        if self.head_note is not None:
            raise BackendError(f"no logits to compare: {self.head_note}", model=self.name)
        (logits,) = session.run([LOGITS], self.feed(ids))              # [b, t, V]
        return np.array(logits[:, :-1], dtype=np.float32)

    def _ids(self, input_ids: np.ndarray) -> np.ndarray:
        """``input_ids`` as contiguous int64 [b, t]; :class:`BackendError` otherwise."""
        import numpy as np

        ids = np.asarray(input_ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise BackendError(f"input_ids must be an integer array [batch, tokens], got "
                               f"{ids.dtype} of shape {ids.shape}", model=self.name)
        return np.ascontiguousarray(ids, dtype=np.int64)

    def weights_sha256(self) -> str:
        """sha256 of the ONNX file and its external data, concatenated in order."""
        if self._onnx_sha256 is None:
            self._onnx_sha256 = sha256_files(self._weight_files())
        return self._onnx_sha256


def external_data_files(path: Path, *, model_name: str | None = None) -> list[Path]:
    """The files beside ``path`` that hold its external data (the ``location`` of
    every initializer stored outside the graph), sorted; [] for a self-contained file
    or one that is not ONNX (loading it fails later, naming it).  Only the graph is
    read.  A location outside the file's folder, or a file that is missing, is a
    :class:`BackendError`."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises protobuf's DecodeError and others: load() names it
        return []
    folder = path.parent.resolve()
    files: set[Path] = set()
    for tensor in _tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        data = (path.parent / location).resolve()
        if not location or folder not in data.parents:
            raise BackendError(f"{str(path)!r}: initializer {tensor.name!r} keeps its data at "
                               f"{location!r}, outside the file's folder", model=model_name)
        if not data.is_file():
            raise BackendError(f"{str(path)!r}: initializer {tensor.name!r} keeps its data in "
                               f"{location!r}, which is missing beside the file",
                               model=model_name)
        files.add(path.parent / location)
    return sorted(files)


def _tensors(graph: Any) -> Any:
    """Every initializer of ``graph`` and of its subgraphs (``If``/``Loop`` bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g.node or attribute.g.initializer:
                yield from _tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _tensors(sub)


def embedding_rows(model: Any) -> int | None:
    """Rows of the embedding table: the first dimension of the initializer that a
    ``Gather`` indexes with ``input_ids`` (through any ``Cast``); None when the graph
    has no such node (the check is then left to onnxruntime's own bounds check).
    ``model`` is a ``ModelProto`` or a path (its external weights are not read)."""
    if isinstance(model, (str, Path)):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    ids = {"input_ids"}
    for node in graph.node:  # a Cast of the ids is the ids too
        if node.op_type == "Cast" and node.input and node.input[0] in ids:
            ids.update(node.output)
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in ids:
            dims = shapes.get(node.input[0])
            if dims and len(dims) == 2:
                return int(dims[0])
    return None


def _float32_outputs(session: Any, names: list[str]) -> dict[str, bool]:
    """Output name -> whether the session declares it float32 (a tensor made an
    output in memory, :func:`~audit.backends.onnx_graph.with_outputs`, may be
    undeclared: then False, and it goes through ``session.run``)."""
    types = {arg.name: arg.type for arg in session.get_outputs()}
    return {name: types.get(name) == "tensor(float)" for name in names}


def _token_nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[next token], float64 [b, t-1], one window at a time."""
    import numpy as np

    out = np.empty((ids.shape[0], ids.shape[1] - 1))
    for row in range(ids.shape[0]):
        x = logits[row, :-1].astype(np.float64)                       # [t-1, V]
        top = x.max(axis=1, keepdims=True)
        lse = np.log(np.exp(x - top).sum(axis=1)) + top[:, 0]
        out[row] = lse - x[np.arange(x.shape[0]), ids[row, 1:]]
    return out
