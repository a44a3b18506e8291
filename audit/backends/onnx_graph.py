"""Finding equilaw's layers inside an ONNX graph that does not output them.

An ONNX file from another exporter (``optimum-cli export onnx``) outputs ``logits``
(and ``present.*`` with a KV cache) but no hidden states.  Its node names keep the
PyTorch modules' paths, e.g. ``/model/layers.3/input_layernorm/Mul_1`` or
``/transformer/h.3/Add_1``, so the residual stream can be found from the
architectures table (:mod:`audit.backends.architectures`: the blocks'
``ModuleList`` and the final norm) and checked by the graph's topology:

- block ``n``'s *residual input* is the tensor made outside the block that a node
  directly in the block's scope consumes (the residual ``Add``) and a node in one of
  its sub-modules consumes too (the block's input norm);
- layer 0 is block 0's residual input, and no block makes it (the embedding output);
- layer l, 1 <= l < L, is block l's residual input, and block l-1 makes it;
- layer L is the final norm's output; the final norm's input is made by block L-1.

Each found tensor is checked by its inferred shape (rank 3, last dimension = the
config's width) where shape inference knows it.  The names go to the ONNX backend,
which adds them as graph outputs in memory; the file is never written.  A spec's
``onnx.layers`` (layer -> tensor name) replaces the search; its names are checked the
same way.  Everything here reads the graph only (no external weights).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from audit.errors import BackendError

if TYPE_CHECKING:
    import numpy as np

_NUMPY_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
                "tensor(double)": "float64"}


@dataclass(frozen=True)
class GraphLayers:
    """The tensors of layers 0..L in a graph, and how they were found."""

    names: tuple[str, ...]
    """Tensor names, layer 0 first."""
    source: str
    """``graph`` (found from the node names and topology) or ``spec`` (``onnx.layers``)."""


class _Graph:
    """Producers, consumers and inferred shapes of one graph's tensors."""

    def __init__(self, model: Any) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.constants = {init.name for init in graph.initializer}
        """Initializers, and what nodes compute from them alone (a ``Constant``, an
        ``Identity`` of a deduplicated weight); ONNX lists nodes in topological order."""
        for node in self.nodes:
            if all(name in self.constants for name in node.input if name):
                self.constants.update(name for name in node.output if name)
        self.inputs = {i.name for i in graph.input}
        self.outputs = [o.name for o in graph.output]
        self.shapes = _inferred_shapes(model)

    def known(self, name: str) -> bool:
        return name in self.producer or name in self.inputs

    def shape(self, name: str) -> list[int | str | None] | None:
        return self.shapes.get(name)


def _inferred_shapes(model: Any) -> dict[str, list[int | str | None]]:
    """Tensor name -> dims (int, symbolic name or None) from onnx's shape inference;
    empty when inference fails (the width is then checked on the first run)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # onnx raises several types for graphs it cannot infer
        return {}
    out: dict[str, list[int | str | None]] = {}
    graph = inferred.graph
    for info in list(graph.value_info) + list(graph.output) + list(graph.input):
        tensor = info.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        out[info.name] = [d.dim_value if d.HasField("dim_value")
                          else (d.dim_param or None) for d in tensor.shape.dim]
    return out


def _scope_pattern(path: str) -> str:
    """A module path of the table (``layers``, ``h``, ``model.norm``) as it appears in
    TorchScript node names (``layers``, ``h``, ``model/norm``)."""
    return "/".join(re.escape(part) for part in path.split("."))


def _describe(found: Mapping[str, object]) -> str:
    return "; ".join(f"{key}: {value}" for key, value in found.items())


class _Search:
    """The search for one file, with the error that names the file and what was found."""

    def __init__(self, graph: _Graph, blocks: str, final_norm: str, num_layers: int,
                 width: int, where: str, model: str | None) -> None:
        self.graph, self.num_layers, self.width = graph, num_layers, width
        self.blocks_path, self.norm_path = blocks, final_norm
        self.where, self.model = where, model
        self.found: dict[str, object] = {}

    def fail(self, why: str) -> BackendError:
        found = f"; found {_describe(self.found)}" if self.found else ""
        return BackendError(
            f"{self.where} has no hidden-state outputs and equilaw cannot find its layers in "
            f"the graph: {why}{found}; name the tensors in the spec (`onnx.layers: {{0: "
            f"TENSOR, ..., {self.num_layers}: TENSOR}}`) or export with python -m audit "
            f"export-onnx", model=self.model)

    def blocks(self) -> tuple[str, dict[int, list[Any]]]:
        """The common scope prefix of the blocks, and block index -> its nodes."""
        pattern = re.compile(rf"^(/(?:[^/]+/)*?){_scope_pattern(self.blocks_path)}\.(\d+)/")
        blocks: dict[int, list[Any]] = {}
        prefixes: set[str] = set()
        for node in self.graph.nodes:
            match = pattern.match(node.name)
            if match:
                prefixes.add(match.group(1))
                blocks.setdefault(int(match.group(2)), []).append(node)
        self.found["blocks"] = (f"{len(blocks)} ({sorted(prefixes)[0]}"
                                f"{self.blocks_path}.N)" if blocks else "none")
        if not blocks:
            raise self.fail(f"no node is named after the blocks "
                            f"(…/{self.blocks_path.replace('.', '/')}.N/…)")
        if len(prefixes) > 1:
            raise self.fail(f"the blocks sit under several scopes: {sorted(prefixes)}")
        if sorted(blocks) != list(range(self.num_layers)):
            raise self.fail(f"the config promises {self.num_layers} blocks "
                            f"(0..{self.num_layers - 1}), the graph names blocks "
                            f"{_ranges(sorted(blocks))}")
        return prefixes.pop(), blocks

    def external_inputs(self, scope: str, nodes: list[Any]) -> dict[str, set[str]]:
        """Tensors a block reads that are made outside it (no constant), each with the
        sub-modules of the block that read it (``""``: a node directly in the block's
        scope, such as the residual sum)."""
        inside = {id(node) for node in nodes}
        out: dict[str, set[str]] = {}
        for node in nodes:
            for name in node.input:
                producer = self.graph.producer.get(name)
                if (not name or name in self.graph.constants
                        or (producer is not None and id(producer) in inside)):
                    continue
                rest = node.name[len(scope):]
                out.setdefault(name, set()).add(rest.split("/")[0] if "/" in rest else "")
        return out

    def fits(self, name: str) -> bool:
        return _fits(self.graph.shape(name), self.width)

    def check_shape(self, layer: int, name: str) -> None:
        if not self.fits(name):
            raise self.fail(f"layer {layer}'s tensor {name!r} has shape "
                            f"{self.graph.shape(name)}, not [batch, tokens, {self.width}]")

    def final_norm(self, prefix: str) -> tuple[str, str]:
        """The final norm's (input, output)."""
        scope = prefix + self.norm_path.replace(".", "/") + "/"
        nodes = [node for node in self.graph.nodes if node.name.startswith(scope)]
        if not nodes:
            raise self.fail(f"no node is named after the final norm ({scope}…)")
        inside = {id(node) for node in nodes}
        made = {name for node in nodes for name in node.output if name}
        inputs = {name for node in nodes for name in node.input
                  if name and name not in made and name not in self.graph.constants}
        outputs = [name for name in sorted(made)
                   if name in self.graph.outputs
                   or any(id(c) not in inside for c in self.graph.consumers.get(name, []))]
        self.found["final norm"] = f"{scope} (inputs {sorted(inputs)}, outputs {outputs})"
        if len(inputs) != 1 or len(outputs) != 1:
            raise self.fail(f"the final norm ({scope}) must read one tensor and give one, "
                            f"it reads {len(inputs)} and gives {len(outputs)}")
        return inputs.pop(), outputs[0]

    def block_scope(self, prefix: str, index: int) -> str:
        return f"{prefix}{self.blocks_path.replace('.', '/')}.{index}/"

    def run(self) -> tuple[str, ...]:
        prefix, blocks = self.blocks()
        maker = {name: index for index, nodes in blocks.items()
                 for node in nodes for name in node.output if name}
        scopes = [self.block_scope(prefix, index) for index in range(self.num_layers)]
        external = [self.external_inputs(scopes[index], blocks[index])
                    for index in range(self.num_layers)]
        residual: list[str] = [""] * self.num_layers
        norm: set[str] | None = None
        for index in range(1, self.num_layers):
            found = [name for name, subs in external[index].items()
                     if maker.get(name) == index - 1 and self.fits(name)]
            if len(found) != 1:
                raise self.fail(f"block {index} ({scopes[index]}) reads {len(found)} tensors "
                                f"of width {self.width} made by block {index - 1}, expected "
                                f"one (the residual stream): {found}")
            residual[index] = found[0]
            subs = external[index][found[0]] - {""}
            norm = subs if norm is None else norm & subs
            if not norm:
                raise self.fail(f"block {index}'s input {found[0]!r} feeds no sub-module "
                                f"that the other blocks' inputs feed (the input norm)")
        first = [name for name, subs in external[0].items()
                 if name not in maker and self.fits(name) and (norm is None or subs & norm)]
        if len(first) != 1:
            raise self.fail(f"block 0 ({scopes[0]}) reads {len(first)} tensors of width "
                            f"{self.width} made outside the blocks"
                            + (f" into its {sorted(norm)}" if norm else "")
                            + f", expected one (the embedding output): {first}")
        residual[0] = first[0]
        self.found["residual inputs"] = f"{residual[0]!r} … {residual[-1]!r}"
        norm_in, norm_out = self.final_norm(prefix)
        if maker.get(norm_in) != self.num_layers - 1:
            raise self.fail(f"the final norm's input {norm_in!r} is not made by the last "
                            f"block ({scopes[-1]})")
        names = tuple(residual) + (norm_out,)
        for layer, name in enumerate(names):
            self.check_shape(layer, name)
        return names


def _fits(shape: list[int | str | None] | None, width: int) -> bool:
    """Whether an inferred shape (None: unknown) can be [batch, tokens, width]."""
    return shape is None or (len(shape) == 3 and not (isinstance(shape[-1], int)
                                                      and shape[-1] not in (0, width)))


def _ranges(values: list[int]) -> str:
    if len(values) > 6:
        return f"{values[:3]}…{values[-1]} ({len(values)} in all)"
    return str(values)


def find_layers(model: Any, blocks: str, final_norm: str, num_layers: int, width: int, *,
                where: str, model_name: str | None = None,
                explicit: Mapping[int, str] | None = None) -> GraphLayers:
    """Layers 0..``num_layers`` of the ONNX ``model`` (a ``ModelProto``; its weights
    need not be loaded): from ``explicit`` (the spec's ``onnx.layers``) when given,
    otherwise by the search above, with ``blocks`` and ``final_norm`` the module paths
    (``layers`` and ``norm``, or from the model's root ``model.layers``, ``model.norm``).
    ``where`` names the file in errors."""
    graph = _Graph(model)
    search = _Search(graph, blocks, final_norm, num_layers, width, where, model_name)
    if explicit is None:
        return GraphLayers(search.run(), "graph")
    expected = list(range(num_layers + 1))
    if sorted(explicit) != expected:
        missing = sorted(set(expected) - set(explicit))
        extra = sorted(set(explicit) - set(expected))
        raise BackendError(f"onnx.layers must name layers 0..{num_layers} (the config's "
                           f"{num_layers} blocks and the embedding output) for {where}; "
                           f"missing {missing}, beyond {extra}", model=model_name)
    names = tuple(explicit[layer] for layer in expected)
    for layer, name in enumerate(names):
        if not graph.known(name):
            close = difflib.get_close_matches(name, list(graph.producer), n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise BackendError(f"onnx.layers names {name!r} as layer {layer}, but {where} has "
                               f"no tensor of that name{hint}", model=model_name)
        shape = graph.shape(name)
        if not _fits(shape, width):
            raise BackendError(f"onnx.layers names {name!r} as layer {layer}, but in {where} "
                               f"it has shape {shape}, not [batch, tokens, {width}]",
                               model=model_name)
    return GraphLayers(names, "spec")


def with_outputs(model: Any, names: tuple[str, ...]) -> bytes:
    """The serialised ``model`` with ``names`` added to its outputs (those it already
    outputs are left as they are); ``model`` itself is not changed."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy.SerializeToString()


def feedable(arg: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """How to feed the graph input ``arg`` (onnxruntime's ``NodeArg``) for token ids
    [b, t], as ``optimum`` exports declare them: ``input_ids``; ``attention_mask``
    all ones; ``position_ids`` 0..t-1; ``past_key_values.*`` empty (a past of length 0,
    the other dimensions from the graph).  None for any other input."""
    import numpy as np

    name = arg.name
    if name == "input_ids":
        return lambda ids: ids
    if name == "attention_mask":
        return lambda ids: np.ones_like(ids)
    if name == "position_ids":
        return lambda ids: np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64),
                                           ids.shape).copy()
    if not name.startswith("past_key_values.") or arg.type not in _NUMPY_TYPES:
        return None
    dims = list(arg.shape)
    fixed = [d for d in dims[1:] if not isinstance(d, int)]
    if len(dims) < 3 or len(fixed) != 1:
        return None  # one symbolic dimension besides the batch: the past's length
    dtype = _NUMPY_TYPES[arg.type]

    def empty(ids: np.ndarray) -> np.ndarray:
        shape = [ids.shape[0]] + [d if isinstance(d, int) else 0 for d in dims[1:]]
        return np.zeros(shape, dtype=dtype)
    return empty
