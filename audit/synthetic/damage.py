"""Damage operators on transformers language models: known harm at a known block.

Each operator is a small frozen dataclass (its ``operator`` name, the ``block`` it
damages, its parameters) whose :meth:`~Damage.apply` returns a NEW damaged model, a
deep copy of the one given, which is left untouched.  ``expected_layer`` is the
hidden state where the damage first shows, in equilaw's indexing: hidden state 0 is
the embedding output, block ``k`` (0-based, transformers' ``layers[k]``) produces
hidden state ``k + 1``, and hidden state ``L`` comes after the final norm.  Every
hidden state before it is bit-identical to the input model's on the same tokens, so
an audit's ``first_moved_layer`` should name it.

``python -m audit mutate`` loads a checkpoint once, takes :func:`default_spread`
(blocks at about 1/4, 1/2 and 3/4 depth, and the healthy control), and audits one
mutant at a time.  Memory: each live mutant is one full copy of the weights (plus,
for :class:`RepeatBlocks`, its repeated blocks), on the input model's device; drop a
mutant before applying the next to keep one copy alive.

Where blocks and their parts live is one table, :data:`LAYOUTS`, keyed by
transformers' ``config.model_type``; the final norm and whether the family's norms
multiply by ``weight`` or ``1 + weight`` (Gemma) come from
:data:`audit.backends.architectures.ARCHITECTURES`.

torch is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from audit.backends.architectures import ARCHITECTURES
from audit.errors import BackendError

NORM_ROLES = {
    "input": "input norm",
    "post_attention": "post-attention norm",
    "pre_mlp": "pre-MLP norm",
    "post_mlp": "post-MLP norm",
}
"""Where a block's norms sit, by role -> the words a label uses.  ``input`` normalises
the block's input before attention; ``pre_mlp`` the residual stream before the MLP
(Llama's ``post_attention_layernorm``, GPT-2's ``ln_2``); ``post_attention`` and
``post_mlp`` (Gemma 2 and 3 only) normalise a sublayer's output before it is added
to the residual stream."""


@dataclass(frozen=True)
class Layout:
    """Where one architecture keeps its blocks and their parts.

    Paths are dotted attribute names: ``blocks`` from the base (headless) model,
    everything else from inside one block.
    """

    architecture: str
    """transformers' ``config.model_type``."""
    attention_out: str
    """The attention output projection (``nn.Linear``, or GPT-2's ``Conv1D``)."""
    mlp_out: str
    """The MLP output projection."""
    norms: tuple[tuple[str, str], ...]
    """(role, path) for each norm of a block; roles are keys of :data:`NORM_ROLES`."""
    depth_key: str
    """The config attribute holding the number of blocks."""

    @property
    def blocks(self) -> str:
        """The ``ModuleList`` of blocks in the base model (``model.base_model``)."""
        return ARCHITECTURES[self.architecture].blocks

    @property
    def final_norm(self) -> str:
        """The final norm, an attribute of the base model."""
        return ARCHITECTURES[self.architecture].module

    @property
    def norm_offset(self) -> float:
        """0.0 where a norm multiplies by ``weight``, 1.0 where by ``1 + weight``
        (Gemma): the effective multiplier is ``norm_offset + weight``."""
        return 1.0 - ARCHITECTURES[self.architecture].unit_weight

    def norm(self, role: str) -> str:
        """The path of the block norm with ``role``; :class:`BackendError` listing this
        architecture's roles when it has none."""
        for name, path in self.norms:
            if name == role:
                return path
        raise BackendError(f"{self.architecture} blocks have no {role!r} norm; their norms: "
                           f"{', '.join(name for name, _ in self.norms)}")


_LLAMA_BLOCK = dict(attention_out="self_attn.o_proj", mlp_out="mlp.down_proj",
                    norms=(("input", "input_layernorm"), ("pre_mlp", "post_attention_layernorm")),
                    depth_key="num_hidden_layers")
_SANDWICH_BLOCK = dict(_LLAMA_BLOCK, norms=(
    ("input", "input_layernorm"), ("post_attention", "post_attention_layernorm"),
    ("pre_mlp", "pre_feedforward_layernorm"), ("post_mlp", "post_feedforward_layernorm")))
_GPT2_BLOCK = dict(attention_out="attn.c_proj", mlp_out="mlp.c_proj",
                   norms=(("input", "ln_1"), ("pre_mlp", "ln_2")), depth_key="n_layer")

LAYOUTS: dict[str, Layout] = {arch: Layout(arch, **fields) for arch, fields in {
    # model_type: blocks, attention / MLP output projections, norms (final norm: ARCHITECTURES)
    "llama": _LLAMA_BLOCK,  # model.layers[k].self_attn.o_proj, .mlp.down_proj; model.norm
    "mistral": _LLAMA_BLOCK,
    "qwen2": _LLAMA_BLOCK,
    "qwen3": _LLAMA_BLOCK,
    "phi3": _LLAMA_BLOCK,
    "gemma": _LLAMA_BLOCK,  # norms multiply by 1 + weight
    "gemma2": _SANDWICH_BLOCK,  # 1 + weight; post-sublayer norms
    "gemma3_text": _SANDWICH_BLOCK,
    "gpt2": _GPT2_BLOCK,  # transformer.h[k].attn.c_proj, .mlp.c_proj (Conv1D); transformer.ln_f
}.items()}
"""``config.model_type`` -> :class:`Layout`.  Every architecture here is also in
``ARCHITECTURES``; Gemma's multimodal ``gemma3`` (blocks under ``language_model``) is
not."""


def layout(architecture: str) -> Layout:
    """The layout of ``architecture`` (a ``config.model_type``); :class:`BackendError`
    naming it and listing the supported ones when unknown."""
    entry = LAYOUTS.get(architecture)
    if entry is None:
        raise BackendError(f"unknown architecture {architecture!r}: the damage operators know "
                           f"where the blocks are only for {', '.join(sorted(LAYOUTS))}")
    return entry


def layout_of(model: Any) -> Layout:
    """The layout of a loaded transformers model (from its ``config.model_type``)."""
    return layout(getattr(model.config, "model_type", None))


def depth(model: Any) -> int:
    """The number of blocks of a loaded transformers model."""
    return len(_blocks(model, layout_of(model)))


# -- the operators ---------------------------------------------------------------------


@dataclass(frozen=True)
class Damage:
    """One damage, described; :meth:`apply` makes it.

    Subclasses define ``operator`` (a key of :data:`OPERATORS`), ``block`` (the block
    whose output first carries the damage, or None), ``expected_layer`` and ``label``.
    """

    operator: ClassVar[str]
    # ``block`` is a field of each block operator and a property of the others: a
    # class attribute here would become every subclass field's default.

    @property
    def expected_layer(self) -> int | None:
        """The hidden state where the damage first shows: block k -> k + 1."""
        return None if self.block is None else self.block + 1

    @property
    def label(self) -> str:
        """A short description for tables."""
        raise NotImplementedError

    @property
    def params(self) -> dict[str, Any]:
        """The parameters, by field name (``block`` included where it is a field)."""
        return dataclasses.asdict(self)

    def block_order(self, num_blocks: int) -> tuple[int, ...]:
        """Where each block of the damaged model comes from: position i holds the
        input model's block ``block_order[i]`` (the identity unless blocks move)."""
        return tuple(range(num_blocks))

    def apply(self, model: Any) -> Any:
        """A damaged deep copy of ``model`` (a transformers model, with or without its
        LM head); ``model`` is not modified.  :class:`BackendError` when the model's
        architecture is unknown or the damage does not fit it (a block out of range)."""
        import torch

        where = layout_of(model)  # fails before anything is copied
        self._check(model, where)
        mutant = copy.deepcopy(model)
        with torch.no_grad():
            self._damage(mutant, where)
        return mutant

    def _check(self, model: Any, where: Layout) -> None:
        if self.block is not None:
            _check_block(self.block, len(_blocks(model, where)), model)

    def _damage(self, mutant: Any, where: Layout) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class ReinitBlock(Damage):
    """Block ``block`` re-initialised: fresh weights from the model's own initialiser
    (``_init_weights``: the config's ``initializer_range``, Gemma's zero norms, GPT-2's
    scaled ``c_proj``), drawn from the weights' device's generator seeded with ``seed``
    (CPU and GPU give different draws).  The global torch RNG state is restored
    afterwards."""

    operator: ClassVar[str] = "reinit"
    block: int
    seed: int = 0

    def __post_init__(self) -> None:
        _require_index("block", self.block)

    @property
    def label(self) -> str:
        return f"block {self.block} re-initialised (seed {self.seed})"

    def _damage(self, mutant: Any, where: Layout) -> None:
        import torch

        block = _blocks(mutant, where)[self.block]
        params = list(block.parameters())
        devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
        # transformers' init functions skip tensors flagged as loaded from a checkpoint
        # (torch 2.13's deepcopy drops the flag; a later torch may keep it).
        flags = [p.__dict__.get("_is_hf_initialized", _MISSING) for p in params]
        for p in params:
            p._is_hf_initialized = False
        try:
            with torch.random.fork_rng(devices=devices):
                torch.random.default_generator.manual_seed(self.seed)
                for index in devices:
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(self.seed)
                block.apply(mutant._init_weights)  # children first, as transformers does
        finally:
            for p, flag in zip(params, flags):
                if flag is _MISSING:
                    del p._is_hf_initialized
                else:
                    p._is_hf_initialized = flag


@dataclass(frozen=True)
class ZeroBlock(Damage):
    """Block ``block`` made the identity on the residual stream: its attention and MLP
    output projections (weights and biases) set to zero, so both sublayers add exactly
    0 (Gemma's post-sublayer norms map 0 to 0).  Hidden state ``block + 1`` then equals
    hidden state ``block``, unless the block is the last (the final norm follows)."""

    operator: ClassVar[str] = "zero"
    block: int

    def __post_init__(self) -> None:
        _require_index("block", self.block)

    @property
    def label(self) -> str:
        return f"block {self.block} zeroed"

    def _damage(self, mutant: Any, where: Layout) -> None:
        block = _blocks(mutant, where)[self.block]
        for path in (where.attention_out, where.mlp_out):
            for tensor in _weight_and_bias(block.get_submodule(path)):
                tensor.zero_()


@dataclass(frozen=True)
class SwapBlocks(Damage):
    """Blocks ``block`` and ``other`` exchanged (whole modules: weights and per-layer
    settings such as Gemma's sliding window travel with them; ``layer_idx`` attributes
    and the config's ``layer_types`` follow the new order).  The damage shows at the
    earlier of the two."""

    operator: ClassVar[str] = "swap"
    block: int
    other: int

    def __post_init__(self) -> None:
        _require_index("block", self.block)
        _require_index("other", self.other)
        if self.block >= self.other:
            raise ValueError(f"swap: block must be below other, got {self.block} and "
                             f"{self.other}")

    @property
    def label(self) -> str:
        return f"blocks {self.block} and {self.other} swapped"

    def _check(self, model: Any, where: Layout) -> None:
        _check_block(self.other, len(_blocks(model, where)), model)

    def block_order(self, num_blocks: int) -> tuple[int, ...]:
        sources = list(range(num_blocks))
        sources[self.block], sources[self.other] = self.other, self.block
        return tuple(sources)

    def _damage(self, mutant: Any, where: Layout) -> None:
        _restack(mutant, where, list(self.block_order(len(_blocks(mutant, where)))))


@dataclass(frozen=True)
class _ScaleOutput(Damage):
    """A sublayer's contribution to the residual stream × ``factor``."""

    part: ClassVar[str]
    """``mlp`` or ``attention``."""
    block: int
    factor: float = 8.0

    def __post_init__(self) -> None:
        _require_index("block", self.block)
        _require_factor(self.factor)

    @property
    def label(self) -> str:
        words = "MLP" if self.part == "mlp" else self.part
        return f"block {self.block}'s {words} output × {self.factor:g}"

    def _damage(self, mutant: Any, where: Layout) -> None:
        block = _blocks(mutant, where)[self.block]
        post = dict(where.norms).get(f"post_{self.part}")
        if post is not None:
            # A norm between the projection and the residual stream would undo a
            # scaled projection (RMSNorm(f x) = RMSNorm(x) once mean(x^2) >> eps).
            _scale_norm(block.get_submodule(post), self.factor, where.norm_offset)
            return
        path = where.mlp_out if self.part == "mlp" else where.attention_out
        for tensor in _weight_and_bias(block.get_submodule(path)):
            tensor.mul_(self.factor)


@dataclass(frozen=True)
class ScaleMLP(_ScaleOutput):
    """Block ``block``'s MLP output × ``factor``: the MLP output projection's weight
    and bias (a conversion bug; what ``tests/smollm2_family.py`` calls ``mlp-x8``).
    Where a norm follows the MLP (Gemma 2 and 3's ``post_feedforward_layernorm``), it
    scales that norm's effective multiplier instead, since the norm would undo a
    scaled projection."""

    operator: ClassVar[str] = "scale_mlp"
    part: ClassVar[str] = "mlp"


@dataclass(frozen=True)
class ScaleAttention(_ScaleOutput):
    """Block ``block``'s attention output × ``factor``: the attention output
    projection's weight and bias; for Gemma 2 and 3 the effective multiplier of
    ``post_attention_layernorm`` (see :class:`ScaleMLP`)."""

    operator: ClassVar[str] = "scale_attention"
    part: ClassVar[str] = "attention"


@dataclass(frozen=True)
class ScaleNorm(Damage):
    """Block ``block``'s ``norm`` (a role of :data:`NORM_ROLES`) × ``factor``: its
    output is multiplied by ``factor``.  RMSNorm: ``weight × factor``; LayerNorm
    (GPT-2): weight and bias × factor; Gemma's ``1 + weight`` norms: the effective
    multiplier, ``weight' = factor × (1 + weight) − 1`` (so ``weight`` itself does not
    change by ``factor``).  The default, ``pre_mlp``, is the one every architecture
    has whose scale no later norm undoes.  On a trained Gemma-3, scaling the ``input``
    norm should barely show: its queries and keys are normalised again and its
    values pass the post-attention norm (not measured here; on tiny random models the
    norms' epsilon lets it show)."""

    operator: ClassVar[str] = "scale_norm"
    block: int
    norm: str = "pre_mlp"
    factor: float = 8.0

    def __post_init__(self) -> None:
        _require_index("block", self.block)
        _require_factor(self.factor)
        if self.norm not in NORM_ROLES:
            raise ValueError(f"scale_norm: unknown norm {self.norm!r}: one of "
                             f"{', '.join(NORM_ROLES)}")

    @property
    def label(self) -> str:
        return f"block {self.block}'s {NORM_ROLES[self.norm]} × {self.factor:g}"

    def _check(self, model: Any, where: Layout) -> None:
        super()._check(model, where)
        where.norm(self.norm)

    def _damage(self, mutant: Any, where: Layout) -> None:
        block = _blocks(mutant, where)[self.block]
        _scale_norm(block.get_submodule(where.norm(self.norm)), self.factor, where.norm_offset)


@dataclass(frozen=True)
class ScaleFinalNorm(Damage):
    """The final norm × ``factor`` (as :class:`ScaleNorm`), on a model of ``depth``
    blocks: only hidden state ``depth`` (the last) changes, and by a uniform factor
    per position, which PR with an intercept cannot see; the probe loss can.  Not in
    :func:`default_spread` for that reason."""

    operator: ClassVar[str] = "scale_final_norm"
    depth: int
    factor: float = 8.0

    def __post_init__(self) -> None:
        _require_index("depth", self.depth, low=1)
        _require_factor(self.factor)

    @property
    def expected_layer(self) -> int:
        return self.depth

    @property
    def label(self) -> str:
        return f"final norm × {self.factor:g}"

    @property
    def block(self) -> None:
        """No block: the final norm follows them all."""
        return None

    def _check(self, model: Any, where: Layout) -> None:
        blocks = len(_blocks(model, where))
        if blocks != self.depth:
            raise BackendError(f"scale_final_norm was described for {self.depth} blocks; the "
                               f"model has {blocks}", model=_model_name(model))

    def _damage(self, mutant: Any, where: Layout) -> None:
        _scale_norm(mutant.base_model.get_submodule(where.final_norm), self.factor,
                    where.norm_offset)


@dataclass(frozen=True)
class AddNoise(Damage):
    """Gaussian noise on every parameter (tied ones once; buffers untouched):
    ``w + fraction × std(w) × N(0, 1)``, with ``mean(|w|)`` where ``std(w)`` is 0, drawn
    from ``numpy.random.default_rng(seed)`` tensor by tensor in sorted parameter-name
    order, in float32 (then cast back to the parameter's dtype).  At the default 1%
    it is the healthy control.

    ``expected_layer`` is None: the embedding changes too, so every hidden state from
    0 on differs in its last bits, and the audit is expected to name no layer.  On a
    float32 model with tied embeddings (SmolLM2) it reproduces the ``noisy`` sibling of
    ``tests/smollm2_family.py`` bit for bit."""

    operator: ClassVar[str] = "noise"
    fraction: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, (int, float)) and math.isfinite(self.fraction)
                and self.fraction >= 0):
            raise ValueError(f"noise: fraction must be a finite number >= 0, got "
                             f"{self.fraction!r}")

    @property
    def block(self) -> None:
        """No block: every tensor is touched."""
        return None

    @property
    def label(self) -> str:
        return f"every weight + {self.fraction * 100:g}% of its std as noise (seed {self.seed})"

    def _damage(self, mutant: Any, where: Layout) -> None:
        import numpy as np
        import torch

        rng = np.random.default_rng(self.seed)
        for _, param in sorted(mutant.named_parameters()):
            w = param.detach().to("cpu", torch.float32).numpy()
            scale = float(np.std(w, dtype=np.float64))
            if scale == 0.0:
                scale = float(np.mean(np.abs(w), dtype=np.float64))
            noise = rng.standard_normal(w.shape, dtype=np.float32)
            noise *= np.float32(self.fraction * scale)
            noise += w
            param.copy_(torch.from_numpy(noise))


def quantize_groups(weight: Any, bits: int, group: int = 32, axis: int = -1) -> Any:
    """Symmetric round-to-nearest group quantisation of a numpy array, returned
    dequantised as float32 of the same shape: along ``axis`` (the input dimension),
    each run of ``group`` consecutive values (the last run may be shorter) gets
    ``scale = max |w| / (2^(bits−1) − 1)`` and becomes ``round(w / scale) × scale``
    (numpy's round, half to even; a run of zeros stays zero), computed in float64.
    Q8_0 / Q4_0-like (without their float16 scales)."""
    import numpy as np

    _require_index("bits", bits, low=2)
    _require_index("group", group, low=1)
    w = np.moveaxis(np.asarray(weight, dtype=np.float64), axis, -1)
    width = w.shape[-1]
    pad = -width % group
    runs = np.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, pad)]).reshape(*w.shape[:-1], -1, group)
    qmax = 2 ** (bits - 1) - 1
    scale = np.abs(runs).max(axis=-1, keepdims=True) / qmax          # [..., groups, 1]
    safe = np.where(scale > 0, scale, 1.0)
    out = np.clip(np.round(runs / safe), -qmax, qmax) * scale
    out = out.reshape(*w.shape[:-1], -1)[..., :width]
    return np.ascontiguousarray(np.moveaxis(out, -1, axis), dtype=np.float32)


@dataclass(frozen=True)
class Quantize(Damage):
    """Every 2-D weight, the embedding and the head included (tied ones once),
    quantised by :func:`quantize_groups` at ``bits`` bits in groups of ``group``
    along the input dimension (the last axis of ``nn.Linear`` and ``nn.Embedding``
    weights, the first of GPT-2's ``Conv1D``), then cast back to the weight's
    dtype; norms, biases and buffers untouched.  Quantisation gates can be tested
    without GGUF tools.  ``expected_layer`` is None: the embedding changes."""

    operator: ClassVar[str] = "quantize"
    bits: int = 4
    group: int = 32

    def __post_init__(self) -> None:
        _require_index("bits", self.bits, low=2)
        _require_index("group", self.group, low=1)

    @property
    def block(self) -> None:
        """No block: every 2-D weight is touched."""
        return None

    @property
    def label(self) -> str:
        return f"every 2-D weight quantised to {self.bits} bits (groups of {self.group})"

    def _damage(self, mutant: Any, where: Layout) -> None:
        import torch

        seen: set[int] = set()
        for module in mutant.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.nn.Parameter) or weight.ndim != 2 \
                    or id(weight) in seen:
                continue
            seen.add(id(weight))
            axis = 0 if type(module).__name__ == "Conv1D" else -1  # GPT-2: [in, out]
            w = weight.detach().to("cpu", torch.float32).numpy()
            weight.copy_(torch.from_numpy(quantize_groups(w, self.bits, self.group, axis)))


@dataclass(frozen=True)
class RepeatBlocks(Damage):
    """A passthrough merge: blocks ``[start, end)`` inserted again right after block
    ``end − 1``, as copies (the model grows by ``end − start`` blocks; the config's
    block count and ``layer_types``, and every ``layer_idx``, follow).  The first
    repeated block sits at position ``end`` and produces hidden state ``end + 1``."""

    operator: ClassVar[str] = "repeat"
    start: int
    end: int

    def __post_init__(self) -> None:
        _require_index("start", self.start)
        _require_index("end", self.end)
        if self.start >= self.end:
            raise ValueError(f"repeat: the range [{self.start}, {self.end}) is empty")

    @property
    def block(self) -> int:  # type: ignore[override]
        """Where the damage starts: the position of the first repeated block."""
        return self.end

    @property
    def label(self) -> str:
        if self.end - self.start == 1:
            return f"block {self.start} repeated after itself"
        return f"blocks {self.start}-{self.end - 1} repeated after block {self.end - 1}"

    def _check(self, model: Any, where: Layout) -> None:
        _check_block(self.end - 1, len(_blocks(model, where)), model)

    def block_order(self, num_blocks: int) -> tuple[int, ...]:
        return (*range(self.end), *range(self.start, self.end), *range(self.end, num_blocks))

    def _damage(self, mutant: Any, where: Layout) -> None:
        _restack(mutant, where, list(self.block_order(len(_blocks(mutant, where)))))


OPERATORS: dict[str, type[Damage]] = {cls.operator: cls for cls in (
    ReinitBlock, ZeroBlock, SwapBlocks, ScaleMLP, ScaleAttention, ScaleNorm, ScaleFinalNorm,
    AddNoise, Quantize, RepeatBlocks)}
"""Operator name -> its dataclass."""

BLOCK_OPERATORS = ("reinit", "zero", "swap", "scale_mlp", "scale_attention", "scale_norm",
                   "repeat")
"""What :func:`default_spread` applies at each block, in this order."""


# -- the spread ------------------------------------------------------------------------


def default_blocks(num_blocks: int) -> tuple[int, ...]:
    """Blocks at about 1/4, 1/2 and 3/4 depth (``num_blocks * q`` rounded down), kept
    within ``1 .. num_blocks − 2`` where the model has 3 blocks or more, so that a swap
    with the next block and a repeat ending there both fit; 30 blocks: (7, 15, 22)."""
    _require_index("num_blocks", num_blocks, low=1)
    low, high = (1, num_blocks - 2) if num_blocks >= 3 else (0, num_blocks - 1)
    return tuple(sorted({min(max(num_blocks * q // 4, low), high) for q in (1, 2, 3)}))


def default_spread(num_blocks: int, blocks: Sequence[int] | None = None, *,
                   operators: Sequence[str] = BLOCK_OPERATORS, factor: float = 8.0,
                   noise: float | None = 0.01, seed: int = 0) -> tuple[Damage, ...]:
    """The damages to audit on a model of ``num_blocks`` blocks: first the healthy
    control (``AddNoise(noise, seed)``; ``noise=None`` leaves it out), then, for each
    block ``b`` of ``blocks`` (default :func:`default_blocks`), each of ``operators``
    placed so that its ``expected_layer`` is ``b + 1``:

    - ``reinit``: ``ReinitBlock(b, seed)``; ``zero``: ``ZeroBlock(b)``;
    - ``swap``: ``SwapBlocks(b, b + 1)`` (left out at the last block);
    - ``scale_mlp``, ``scale_attention``: × ``factor``; ``scale_norm``: the pre-MLP
      norm × ``factor``;
    - ``repeat``: ``RepeatBlocks(max(0, b − span), b)`` with ``span = max(1,
      num_blocks // 4)``, the first repeat at position ``b`` (left out at block 0).

    Descriptions only: nothing is copied until a damage is applied.
    """
    _require_index("num_blocks", num_blocks, low=1)
    chosen = default_blocks(num_blocks) if blocks is None else tuple(blocks)
    for b in chosen:
        if not (isinstance(b, int) and 0 <= b < num_blocks):
            raise ValueError(f"block {b!r} is out of range for {num_blocks} blocks "
                             f"(0..{num_blocks - 1})")
    for name in operators:
        if name not in BLOCK_OPERATORS:
            raise ValueError(f"unknown block operator {name!r}: one of "
                             f"{', '.join(BLOCK_OPERATORS)}")
    span = max(1, num_blocks // 4)
    spread: list[Damage] = [] if noise is None else [AddNoise(noise, seed)]
    for b in chosen:
        for name in operators:
            if name == "reinit":
                spread.append(ReinitBlock(b, seed))
            elif name == "zero":
                spread.append(ZeroBlock(b))
            elif name == "swap" and b + 1 < num_blocks:
                spread.append(SwapBlocks(b, b + 1))
            elif name == "scale_mlp":
                spread.append(ScaleMLP(b, factor))
            elif name == "scale_attention":
                spread.append(ScaleAttention(b, factor))
            elif name == "scale_norm":
                spread.append(ScaleNorm(b, "pre_mlp", factor))
            elif name == "repeat" and b >= 1:
                spread.append(RepeatBlocks(max(0, b - span), b))
    return tuple(spread)


# -- helpers ---------------------------------------------------------------------------

_MISSING = object()
_PER_LAYER_CONFIG_KEYS = ("layer_types", "no_rope_layers")
"""Config lists with one entry per block, reordered with the blocks."""


def _blocks(model: Any, where: Layout) -> Any:
    return model.base_model.get_submodule(where.blocks)


def _model_name(model: Any) -> str | None:
    return getattr(model.config, "_name_or_path", None) or None


def _check_block(block: int, count: int, model: Any) -> None:
    if not 0 <= block < count:
        raise BackendError(f"block {block} is out of range: the model has {count} blocks "
                           f"(0..{count - 1})", model=_model_name(model))


def _require_index(name: str, value: Any, low: int = 0) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _require_factor(factor: Any) -> None:
    if not (isinstance(factor, (int, float)) and math.isfinite(factor)):
        raise ValueError(f"factor must be a finite number, got {factor!r}")


def _weight_and_bias(module: Any) -> list[Any]:
    return [t for t in (getattr(module, "weight", None), getattr(module, "bias", None))
            if t is not None]


def _scale_norm(norm: Any, factor: float, offset: float) -> None:
    """Multiply a norm's output by ``factor``: its effective multiplier
    ``offset + weight`` and its bias (LayerNorm)."""
    if offset:
        norm.weight.copy_((norm.weight + offset) * factor - offset)
    else:
        norm.weight.mul_(factor)
    if getattr(norm, "bias", None) is not None:
        norm.bias.mul_(factor)


def _restack(mutant: Any, where: Layout, sources: list[int]) -> None:
    """Rebuild the mutant's blocks as ``[blocks[s] for s in sources]`` (a block used
    twice is copied), then renumber ``layer_idx`` and restack the config."""
    import torch

    config = mutant.config
    old = _blocks(mutant, where)
    used: set[int] = set()
    stacked = []
    for source in sources:
        # The copy shares the model's config object, as the original blocks do.
        stacked.append(copy.deepcopy(old[source], {id(config): config}) if source in used
                       else old[source])
        used.add(source)
    parent, _, name = where.blocks.rpartition(".")
    setattr(mutant.base_model.get_submodule(parent), name, torch.nn.ModuleList(stacked))
    for position, block in enumerate(stacked):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position  # cache slots and mask types are per position
    for key in _PER_LAYER_CONFIG_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) == len(old):
            setattr(config, key, [value[s] for s in sources])
    setattr(config, where.depth_key, len(sources))
