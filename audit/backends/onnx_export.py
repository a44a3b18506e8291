"""Export a checkpoint to ONNX with every hidden state as an output, and check the
file against PyTorch before it is kept.

The graph takes ``input_ids`` int64 [batch, seq] (the all-ones attention mask is
built inside it) and gives ``hidden_states.0`` … ``hidden_states.L`` float32
[batch, seq, d] in equilaw's indexing (0: the embedding output; L: the last block
after the final norm), then ``logits`` [batch, seq, V] (soft-capped like Gemma's
when the config says so) unless asked not to or the checkpoint has no head.  Batch
and sequence are dynamic (sequence >= 2: ``torch.export`` specialises lengths 0
and 1).

The weights load through :class:`~audit.backends.torch_backend.TorchBackend`, so the
same safety rules hold (safetensors or GGUF only, offline, ``trust_remote_code``
only when the spec sets it); the export always runs on the CPU in float32, whatever
the spec's ``device`` and ``dtype``, because onnxruntime's CPU provider checks it.

Then (``fuse=True``, the default) onnxscript's onnxruntime fusions
(``onnxscript.rewriter.ort_fusions.optimize_for_ort``) rewrite the graph in memory,
before it is written: RMSNorm becomes ``SimplifiedLayerNormalization``, each residual
add with the next norm ``SkipSimplifiedLayerNormalization`` (whose sum output is the
hidden state), and the attention arithmetic ``MultiHeadAttention``, all onnxruntime
contrib operators (``com.microsoft``), so the file runs on onnxruntime only.  The
graph's outputs stay what they were, every hidden state included (checked).

Right after the export (and fusion), onnxruntime and PyTorch run the same two
windows of 16 tokens; a hidden state that differs by more than ``tolerance × max(1, max |value|
of that layer)`` fails the export and nothing is kept.  The file is written into a
temporary folder beside the output and renamed into place only after that check.

torch, transformers, onnx, onnxscript and onnxruntime are imported inside the
functions: importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.errors import BackendError
from audit.internal.files import staging_folder

if TYPE_CHECKING:
    import numpy as np

    from audit.spec import ModelSpec

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INSTALL_HINT = "pip install 'equilaw[onnx]'"
EXTERNAL_DATA_BYTES = 3 << 29
"""1.5 GiB of parameters: above it, ``external_data=None`` puts the weights in a
separate ``<file>.data`` (protobuf caps one file at 2 GiB)."""
VALIDATION_WINDOWS = 2
VALIDATION_LENGTH = 16
"""The check runs this many windows of this many tokens (BOS included)."""
VALIDATION_TEXT = (
    "The quick brown fox jumps over the lazy dog.\n"
    "def mean(values):\n"
    '    """Return the arithmetic mean of a non-empty list of numbers."""\n'
    "    return sum(values) / len(values)\n"
)
_EXAMPLE_LENGTH = 8  # tokens per window of the example input that torch.export traces
_MAX_BATCH = 1024
_MAX_SEQ = 4096
_STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how closely it matches PyTorch."""

    path: Path
    """The ``.onnx`` file."""
    data_path: Path | None
    """The external weights file it references (``<file>.onnx.data``), or None when
    the weights are inside the ``.onnx`` file."""
    num_layers: int
    """L: the graph has ``hidden_states.0`` … ``hidden_states.L``."""
    outputs: tuple[str, ...]
    """The graph's output names, in order."""
    max_abs_diff: dict[str, float]
    """Output name -> largest |onnxruntime - PyTorch| on the validation windows."""
    max_rel_diff: dict[str, float]
    """Output name -> that difference over the output's largest |value| in PyTorch."""
    seconds_export: float
    """Loading the weights, tracing, converting and saving."""
    seconds_validate: float
    """Both forward passes of the check, onnxruntime's session included."""
    has_logits: bool
    """Whether the last output is ``logits``."""
    fusions: dict[str, int] = dataclasses.field(default_factory=dict)
    """onnxruntime operator outside the ONNX standard -> how many the fused graph
    holds, e.g. ``{"MultiHeadAttention": 30, "SimplifiedLayerNormalization": 1,
    "SkipSimplifiedLayerNormalization": 60}`` for SmolLM2; empty when exported with
    ``fuse=False`` or when the fused graph was not kept."""
    fusion_note: str | None = None
    """With ``fuse=True``: why the file is the unfused graph (no fusion applied, the
    rewriter failed, or the fused graph did not run or disagreed with PyTorch beyond
    the tolerance); None when the fused graph was kept or fusion was not asked for."""

    @property
    def size_bytes(self) -> int:
        """Bytes on disk: the ``.onnx`` file plus its external data, if any."""
        return sum(os.path.getsize(p) for p in (self.path, self.data_path) if p is not None)


def hidden_state_names(num_layers: int) -> list[str]:
    """``hidden_states.0`` … ``hidden_states.L``."""
    return [f"hidden_states.{i}" for i in range(num_layers + 1)]


def export_onnx(model_spec: ModelSpec, name: str, output: str | os.PathLike, *,
                logits: bool = True, tolerance: float = 1e-4,
                external_data: bool | None = None, overwrite: bool = False,
                fuse: bool = True) -> ExportResult:
    """Export the checkpoint ``model_spec.path`` to ``output`` and validate it (see the
    module docstring).

    ``name`` labels errors; ``logits`` adds the ``logits`` output when the checkpoint
    has a head; ``tolerance`` bounds each hidden state's largest absolute difference
    from PyTorch, in units of max(1, that layer's max |value|); ``external_data``
    puts the weights in ``<output>.data`` (None: when they exceed 1.5 GiB);
    ``overwrite`` replaces an existing output; ``fuse`` rewrites the graph with
    onnxruntime's fused operators before it is checked and written.  Raises :class:`BackendError`, with
    nothing written, when the output exists, a package is missing, the checkpoint
    cannot be loaded or exported, or the file disagrees with PyTorch.
    """
    output = Path(output)
    if not tolerance >= 0:
        raise BackendError(f"tolerance must be a number >= 0, got {tolerance!r}", model=name)
    data_file = output.with_name(output.name + ".data")
    if not overwrite:
        for path in (output, data_file):
            if os.path.lexists(path):
                raise BackendError(f"{str(path)!r} already exists; pass overwrite=True "
                                   "(equilaw export-onnx --force) to replace it", model=name)
    missing = [pkg for pkg in ONNX_PACKAGES if importlib.util.find_spec(pkg) is None]
    if missing:
        raise BackendError(f"exporting to ONNX needs {', '.join(missing)}: {INSTALL_HINT}",
                           model=name)

    from audit.backends.architectures import ARCHITECTURES
    from audit.backends.torch_backend import TorchBackend

    start = time.perf_counter()
    backend = TorchBackend(dataclasses.replace(model_spec, device="cpu", dtype="float32"), name)
    arch = backend.info().architecture
    entry = ARCHITECTURES.get(arch)
    if entry is not None and entry.no_onnx:
        raise BackendError(f"ONNX export does not support the {arch} architecture: "
                           f"{entry.no_onnx}; audit it with backend: torch", model=name)
    backend.load()
    num_layers = backend.info().num_layers
    with_logits = logits and backend.head is not None
    names = hidden_state_names(num_layers) + (["logits"] if with_logits else [])
    graph = _graph_module(backend, backend.head if with_logits else None, backend.logit_softcap)
    ids = _validation_ids(backend)                                        # [2, 16]
    reference = _torch_outputs(graph, ids, names, name)
    if external_data is None:
        external_data = _parameter_bytes(graph) > EXTERNAL_DATA_BYTES

    try:
        folder = staging_folder(output.parent, f".{output.name}.")
    except OSError as exc:
        raise BackendError(f"cannot write into {str(output.parent)!r}: {exc}", model=name) from exc
    try:
        staged = folder / output.name
        example = ids[:, :_EXAMPLE_LENGTH].copy()  # contiguous: a strided view adds shape guards
        program = _export(graph, example, names, name)
        got, fusions, fusion_note, seconds_validate = _write(
            program, staged, external_data, fuse, ids, reference, names, tolerance, name)
        seconds_export = time.perf_counter() - start - seconds_validate
        abs_diff, rel_diff = _check(got, reference, names, tolerance, name)
        try:
            data_path = _move_into_place(folder, output)
        except OSError as exc:
            raise BackendError(f"cannot move the exported file to {str(output)!r}: {exc}",
                               model=name) from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return ExportResult(output, data_path, num_layers, tuple(names), abs_diff, rel_diff,
                        seconds_export, seconds_validate, with_logits, fusions, fusion_note)


def _graph_module(backend: Any, head: Any, softcap: float | None) -> Any:
    """A torch module ``input_ids`` [b, t] -> (hidden state 0, …, hidden state L[,
    logits]), each [b, t, ·]: what the ONNX graph computes.  The hidden states are
    the loaded ``backend``'s layers (:meth:`TorchBackend.layer_states`, the same hooks
    as the PyTorch backend)."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = backend.load()
            self.head = head

        def forward(self, input_ids: Any) -> tuple[Any, ...]:
            states = tuple(backend.layer_states(input_ids))               # L+1 × [b, t, d]
            if self.head is None:
                return states
            scores = self.head(states[-1])                                # [b, t, V]
            if softcap is not None:
                scores = torch.tanh(scores / softcap) * softcap
            return (*states, scores)

    return HiddenStates().eval()


def _parameter_bytes(module: Any) -> int:
    """Bytes of the module's parameters and buffers, tied weights counted once."""
    seen: set[int] = set()
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def _validation_ids(backend: Any) -> np.ndarray:
    """int64 [2, 16]: consecutive pieces of :data:`VALIDATION_TEXT`'s tokens (repeated
    as needed), each after the BOS when the tokenizer has one."""
    import numpy as np

    tokens = backend.encode(VALIDATION_TEXT)
    if not tokens:
        raise BackendError("the tokenizer encodes the validation text to no tokens",
                           model=backend.name)
    bos = backend.bos_token_id
    prefix = [] if bos is None else [bos]
    body = VALIDATION_LENGTH - len(prefix)
    while len(tokens) < VALIDATION_WINDOWS * body:
        tokens = tokens + tokens
    rows = [prefix + tokens[i * body:(i + 1) * body] for i in range(VALIDATION_WINDOWS)]
    return np.asarray(rows, dtype=np.int64)


def _torch_outputs(graph: Any, ids: np.ndarray, names: list[str], name: str) -> list[np.ndarray]:
    """The module's outputs on ``ids``, float32 numpy, checked to number len(names)."""
    import torch

    with torch.inference_mode():
        outs = graph(torch.from_numpy(ids))
    if len(outs) != len(names):
        want = len(names) - (names[-1] == "logits")
        got = len(outs) - (names[-1] == "logits")
        raise BackendError(f"the model returned {got} hidden states; its config promises "
                           f"{want - 1} layers, so {want} were expected", model=name)
    return [out.to(torch.float32).numpy() for out in outs]


@contextmanager
def _quiet_export():
    """Hold back the exporter's known noise: a log line per torchvision operator it
    cannot register, and deprecation warnings from torch's own internals."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _export(graph: Any, example: np.ndarray, names: list[str], name: str) -> Any:
    """torch.export + ONNX translation (the legacy TorchScript exporter fails on
    these models): the ``ONNXProgram``, its stack traces dropped."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    seq = torch.export.Dim("seq", min=2, max=_MAX_SEQ)
    try:
        with _quiet_export():
            program = torch.onnx.export(
                graph, (torch.from_numpy(example),), None, dynamo=True, verbose=False,
                input_names=["input_ids"], output_names=names,
                dynamic_shapes={"input_ids": {0: batch, 1: seq}})
            _drop_stack_traces(program.model)
    except Exception as exc:  # torch.export and onnxscript raise many kinds
        raise BackendError(f"torch.onnx.export failed: {_first_line(exc)}", model=name) from exc
    return program


def _save(program: Any, model: Any, path: Path, external_data: bool, name: str) -> None:
    """Write ``model`` (the program's own graph or its fused copy) to ``path`` (and
    ``path.data`` with external data), replacing what a previous call wrote."""
    unfused = program.model
    program.model = model
    try:
        program.save(str(path), external_data=external_data)
    except Exception as exc:  # onnx_ir raises OSError, ValueError and protobuf's errors
        raise BackendError(f"cannot save the exported graph: {_first_line(exc)}",
                           model=name) from exc
    finally:
        program.model = unfused


def _write(program: Any, path: Path, external_data: bool, fuse: bool, ids: np.ndarray,
           reference: list[np.ndarray], names: list[str], tolerance: float,
           name: str) -> tuple[list[np.ndarray], dict[str, int], str | None, float]:
    """Save the graph to ``path``, fused when ``fuse`` and the fused graph runs and
    passes :func:`_check`, else unfused, and run it on ``ids`` with onnxruntime.
    Returns its outputs, the fusion counts, why it is unfused despite ``fuse`` (or
    None) and the seconds spent running onnxruntime."""
    seconds = 0.0
    if fuse:
        fused = _fused(program.model, names)
        if isinstance(fused, str):
            note = fused
        else:
            model, counts = fused
            _save(program, model, path, external_data, name)
            start = time.perf_counter()
            got, note = _fused_outputs(path, ids, reference, names, tolerance, name)
            seconds += time.perf_counter() - start
            if got is not None:
                return got, counts, None, seconds
    else:
        note = None
    _save(program, program.model, path, external_data, name)
    start = time.perf_counter()
    got = _onnxruntime_outputs(path, ids, name)
    return got, {}, note, seconds + time.perf_counter() - start


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _fused(model: Any, names: list[str]) -> tuple[Any, dict[str, int]] | str:
    """A copy of the exported ``onnx_ir`` model (weights shared, not copied) rewritten
    with onnxruntime's fused operators (``optimize_for_ort``) and how many of each
    operator outside the ONNX standard it holds (onnxruntime's own: those in the
    ``com.microsoft`` domain, and ``SimplifiedLayerNormalization``); or, as a string,
    why there is none to keep: the rewriter failed, nothing matched, or the graph's
    outputs changed."""
    import collections

    import onnx
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    try:
        with _quiet_export():
            fused, _ = optimize_for_ort(model.clone())
    except Exception as exc:  # onnxscript's rewriter raises many kinds
        return f"onnxscript's fusions failed: {_first_line(exc)}"
    counts = collections.Counter(node.op_type for node in fused.graph.all_nodes()
                                 if not onnx.defs.has(node.op_type, node.domain))
    if not counts:
        return "no fusion pattern matched the graph"
    if [value.name for value in fused.graph.outputs] != names:
        return "the fusions changed the graph's outputs"
    return fused, dict(sorted(counts.items()))


def _fused_outputs(path: Path, ids: np.ndarray, reference: list[np.ndarray], names: list[str],
                   tolerance: float, name: str) -> tuple[list[np.ndarray] | None, str | None]:
    """The fused file's outputs on ``ids`` when onnxruntime runs it and it passes the
    check against PyTorch (:func:`_check`), else None and why not."""
    try:
        got = _onnxruntime_outputs(path, ids, name)
        _check(got, reference, names, tolerance, name)
    except BackendError as exc:
        return None, f"the fused graph was not kept: {exc.reason}"
    return got, None


def _drop_stack_traces(model: Any) -> None:
    """Remove the Python stack trace the exporter attaches to every node: it holds
    this machine's source paths and is about 40% of a small graph file.  The other
    node metadata (module names and classes) stay for debugging."""
    graphs = [model.graph, *model.functions.values()]
    for graph in graphs:
        for node in graph.all_nodes():
            node.metadata_props.pop(_STACK_TRACE_KEY, None)


def _onnxruntime_outputs(path: Path, ids: np.ndarray, name: str) -> list[np.ndarray]:
    """Every output of the ONNX file at ``path`` on ``ids``, with onnxruntime's CPU
    provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"input_ids": ids})
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BackendError(f"onnxruntime cannot run the exported graph: "
                           f"{type(exc).__name__}: {exc}", model=name) from exc


def _check(got: list[np.ndarray], reference: list[np.ndarray], names: list[str],
           tolerance: float, name: str) -> tuple[dict[str, float], dict[str, float]]:
    """Largest absolute and relative difference per output; a BackendError naming
    the worst hidden state when one exceeds ``tolerance × max(1, max |value|)``."""
    import numpy as np

    abs_diff: dict[str, float] = {}
    rel_diff: dict[str, float] = {}
    worst: tuple[float, str, float, float] | None = None  # (excess, output, diff, scale)
    for out_name, value, ref in zip(names, got, reference):
        if value.shape != ref.shape:
            raise BackendError(f"the exported graph's {out_name} has shape {value.shape}, "
                               f"PyTorch's {ref.shape}; nothing was written", model=name)
        diff = float(np.max(np.abs(value.astype(np.float64) - ref)))
        diff = diff if np.isfinite(diff) else float("inf")  # NaN anywhere counts as infinite
        peak = float(np.max(np.abs(ref)))
        abs_diff[out_name] = diff
        rel_diff[out_name] = diff / peak if peak > 0 else (0.0 if diff == 0 else float("inf"))
        if out_name == "logits":
            continue
        scale = max(1.0, peak)
        if diff > tolerance * scale and (worst is None or diff / scale > worst[0]):
            worst = (diff / scale, out_name, diff, peak)
    if worst is not None:
        _, out_name, diff, peak = worst
        raise BackendError(f"the exported ONNX graph disagrees with PyTorch: {out_name} differs "
                           f"by up to {diff:.3g} (its max |value| is {peak:.3g}), beyond the "
                           f"tolerance {tolerance:g} × max(1, max |value|); nothing was written",
                           model=name)
    return abs_diff, rel_diff


def _move_into_place(folder: Path, output: Path) -> Path | None:
    """Rename the staged files from ``folder`` next to ``output``: the weights file
    first, the ``.onnx`` that references it last.  Returns the data file or None."""
    data_path = None
    for staged in sorted(folder.iterdir()):
        if staged.name != output.name:
            data_path = output.with_name(staged.name)
            os.replace(staged, data_path)
    os.replace(folder / output.name, output)
    return data_path
