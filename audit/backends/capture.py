"""Equilaw's layers of a torch model, captured with hooks on the modules that define
them (see :mod:`audit.backends.architectures` for which tensor is layer l).

:func:`layer_modules` finds the modules, from the architecture table or from the
spec's ``model.modules``, and checks the block count against the config;
:class:`Capture` hooks them for one forward pass and hands back the L + 1 tensors.
Every hook is removed when the ``with`` block ends, also when the forward pass
fails, so a model is left as it was found.  A module that runs twice in one pass (a
model that reuses a block) or not at all is an error, not a silent wrong layer.

torch is only touched through the modules given: importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from audit.backends.architectures import architecture
from audit.errors import BackendError

_INPUT_KWARGS = ("hidden_states", "hidden", "x", "inputs_embeds")


@dataclass(frozen=True)
class LayerModules:
    """The modules whose tensors are equilaw's layers 0..L."""

    blocks: tuple[Any, ...]
    """The L blocks: layer l (1 <= l < L) is block l's output."""
    final_norm: Any
    """Its output is layer L."""
    embedding: Any = None
    """When set, layer 0 is this module's output; otherwise the first block's input."""
    where: str = ""
    """Where the modules came from, for errors: ``model.modules`` or the architecture."""


def _submodule(root: Any, path: str, key: str, name: str | None) -> Any:
    try:
        return root.get_submodule(path)
    except AttributeError as exc:
        raise BackendError(f"{key}: the model has no module {path!r} ({exc})", model=name) from exc


def layer_modules(full: Any, base: Any, arch: str, num_layers: int, override: Any = None,
                  *, name: str | None = None) -> LayerModules:
    """The modules of ``full`` (the model as loaded) or ``base`` (its headless base
    model) that give the layers: ``override`` (the spec's ``model.modules``, paths
    from ``full``) or the table entry of ``arch`` (paths from ``base``).  Checks that
    the block list holds ``num_layers`` blocks."""
    if override is not None:
        root, where = full, "model.modules"
        blocks_path, norm_path, embedding_path = (override.blocks, override.final_norm,
                                                  override.embedding)
        keys = ("model.modules.blocks", "model.modules.final_norm", "model.modules.embedding")
    else:
        entry = architecture(arch, model=name)
        root, where = base, f"the {arch} architecture"
        blocks_path, norm_path, embedding_path = entry.blocks, entry.module, None
        keys = (f"{where}'s blocks", f"{where}'s final norm", "")
    blocks = _submodule(root, blocks_path, keys[0], name)
    try:
        blocks = tuple(blocks)
    except TypeError:
        raise BackendError(f"{keys[0]}: {blocks_path!r} is a {type(blocks).__name__}, not a "
                           "list of blocks", model=name) from None
    if len(blocks) != num_layers:
        raise BackendError(f"{keys[0]}: {blocks_path!r} holds {len(blocks)} blocks; the "
                           f"config promises {num_layers} layers", model=name)
    norm = _submodule(root, norm_path, keys[1], name)
    embedding = _submodule(root, embedding_path, keys[2], name) if embedding_path else None
    return LayerModules(blocks, norm, embedding, where)


def _tensor(value: Any) -> Any:
    """A module's output, or the first element of a tuple / ModelOutput holding it."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    if isinstance(value, (tuple, list)) and value:
        return _tensor(value[0])
    if hasattr(value, "to_tuple"):
        return _tensor(value.to_tuple())
    return None


class Capture:
    """``with Capture(modules) as capture: model(...)``, then ``capture.states()``:
    the L + 1 layers of that forward pass, torch tensors [b, t, d].

    ``sink``, when given, receives each layer as its module produces it,
    ``sink(layer, tensor)``, and the capture keeps only the last layer (L): the
    others are then freed as the forward pass moves on instead of all staying
    alive until it ends (SmolLM2: 73 MB per batch of 8 windows of 128 tokens
    less at the peak), and the caller copies each while it is still in cache."""

    def __init__(self, modules: LayerModules, *, name: str | None = None,
                 sink: Callable[[int, Any], None] | None = None) -> None:
        self.modules = modules
        self.name = name
        self.sink = sink
        self._handles: list[Any] = []
        self._states: list[Any] = []
        self._runs: list[int] = []

    def _store(self, layer: int, value: Any, what: str) -> None:
        tensor = _tensor(value)
        if tensor is None:
            raise BackendError(f"{self.modules.where}: {what} gave {type(value).__name__}, "
                               "not a tensor", model=self.name)
        self._runs[layer] += 1
        if self.sink is not None:
            self.sink(layer, tensor)
            if layer < len(self._states) - 1:
                return
        self._states[layer] = tensor

    def __enter__(self) -> Capture:
        m = self.modules
        layers = len(m.blocks)
        self._states = [None] * (layers + 1)
        self._runs = [0] * (layers + 1)
        try:
            if m.embedding is not None:
                self._handles.append(m.embedding.register_forward_hook(
                    lambda mod, args, out: self._store(0, out, "the embedding")))
            else:
                self._handles.append(m.blocks[0].register_forward_pre_hook(
                    self._first_input, with_kwargs=True))
            for layer in range(1, layers):
                self._handles.append(m.blocks[layer - 1].register_forward_hook(
                    lambda mod, args, out, layer=layer: self._store(layer, out, f"block {layer}")))
            self._handles.append(m.final_norm.register_forward_hook(
                lambda mod, args, out: self._store(layers, out, "the final norm")))
        except BaseException:
            self._remove()
            raise
        return self

    def _first_input(self, module: Any, args: tuple, kwargs: dict) -> None:
        value = args[0] if args else next(
            (kwargs[key] for key in _INPUT_KWARGS if key in kwargs),
            next((v for v in kwargs.values() if hasattr(v, "shape")), None))
        self._store(0, value, "block 1's input")

    def __exit__(self, *exc: Any) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def states(self) -> list[Any]:
        """The captured layers 0..L (with a ``sink``, None but the last);
        :class:`BackendError` when a module ran twice or not at all during the pass."""
        what = {0: "layer 0's module", len(self._runs) - 1: "the final norm"}
        for layer, runs in enumerate(self._runs):
            if runs != 1:
                module = what.get(layer, f"block {layer}")
                raise BackendError(f"{self.modules.where}: {module} ran {runs} times in one "
                                   "forward pass (expected once): equilaw cannot tell which "
                                   "output is the layer", model=self.name)
        return list(self._states)
