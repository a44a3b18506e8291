"""The dataclasses a spec file becomes, one per section.

A spec describes one checkpoint, the probe it is measured on, the measure, and the
thresholds of the law.  What each key means, its type and default are in the
schema (:data:`audit.spec.schema.SPEC_KEYS`, which generates docs/specs.md); the
docstrings here describe only what the loader sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from audit.errors import SpecError
from audit.norms import NormInfo

PROBE_MODES = ("windows", "documents")
TARGETS = ("previous", "current", "next", "next_next")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModuleOverride:
    """Where the modules of a model whose architecture equilaw does not know are:
    dotted attribute paths from the model as transformers loads it (with its head)."""

    blocks: str
    """The ``ModuleList`` of blocks, e.g. ``model.layers``."""
    final_norm: str
    """The final norm, e.g. ``model.norm``; its output is layer L."""
    embedding: str | None = None
    """The module whose output is layer 0; by default layer 0 is the first block's
    input."""


@dataclass(frozen=True)
class ModelSpec:
    path: str
    """Where the weights are: a folder (config.json, tokenizer, *.safetensors), a
    .gguf file, ``pkg://MODULE/FILE`` or ``assemble://MODULE``.  A relative
    filesystem path is already resolved against the spec's folder."""
    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    dtype: str = "float32"
    """``float32``, ``bfloat16`` or ``float16``: the dtype the model runs in."""
    trust_remote_code: bool = False
    """Passed to transformers only when true here."""
    tokenizer: str | None = None
    """Where the tokenizer comes from when not from ``path`` (same forms as
    ``path``): lets a quantised GGUF and its safetensors original read the same
    windows."""
    onnx: str | None = None
    """``backend: onnx``: the ONNX file to run (same forms as ``path``); ``path``
    still gives the config, tokenizer and final norm."""
    norm: NormInfo | None = None
    """Overrides the final-norm description for ``init_norm``."""
    modules: ModuleOverride | None = None
    """Overrides where the blocks, the final norm and layer 0 are."""
    device_map: str | None = None
    """``auto``: spread the model over every device (transformers' ``device_map``),
    for a model larger than one device; None runs it whole on ``device``."""


@dataclass(frozen=True)
class ProbeSpec:
    corpus: str = "python-docstrings"
    """A built-in corpus name, or a path to a .txt/.jsonl file or a folder of them
    (already resolved against the spec's folder)."""
    sequences: int = 96
    """Number of windows (``mode: documents``: of documents sampled), >= 2."""
    length: int = 128
    """Tokens per window, BOS included (``mode: documents``: the truncation
    length, special tokens included), >= 4."""
    seed: int = 0
    """Chooses the windows (or documents) and the shuffled-vocabulary permutation."""
    batch_size: int = 8
    """Sequences per forward pass, >= 1."""
    shards: int = 10
    """Jackknife shards (1 turns standard errors off); sequence i of n (in
    sampling order) goes to shard ⌊i × shards / n⌋ (contiguous blocks)."""
    statistics: str = "gram"
    """How the per-layer statistics are accumulated (``LayerStats(method=...)``):
    ``gram`` or ``qr``."""
    loss: bool = True
    """Also measure the model's own next-token cross-entropy on the windows."""
    mode: str = "windows"
    """How the corpus becomes model input (:mod:`audit.probe`): ``windows``
    (equilaw's: runs of one token stream, BOS first) or ``documents`` (the authors'
    reference: sampled documents, each one sequence from its start, truncated to
    ``length``, the tokenizer's default special tokens)."""
    permutation: str = "equilaw"
    """The ``shuffled_token_id`` permutation (``LayerStats(permutation=...)``):
    ``equilaw`` (``default_rng(seed)``) or ``reference`` (the authors':
    ``RandomState(seed)`` over the sorted target ids)."""


@dataclass(frozen=True)
class LawSpec:
    """Thresholds of the law.  ``None`` switches a check off."""

    max_pearson_r: float | None = None
    """The fit's Pearson r must be <= this (e.g. -0.93)."""
    rho: tuple[float, float] | None = None
    """Inclusive range for the decay ratio rho = 10**slope."""
    max_deviation: float | None = None
    """Per layer: |deviation| in log10 PR must be <= this."""
    max_deviation_sigma: float | None = None
    """Per layer: |deviation| / stderr must be <= this (ANDed with max_deviation)."""
    min_step_fraction: float | None = None
    """Per layer: step_l >= min_step_fraction * |mean step|."""
    expected_deviations: tuple[int, ...] = ()
    """Layers known to deviate: their failures are xfail, their passes XPASS."""


ONNX_OPTIMIZATIONS = ("disabled", "basic", "extended", "all")


@dataclass(frozen=True)
class OnnxSpec:
    """onnxruntime's own options for ``backend: onnx``."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """Execution providers, in order of preference."""
    intra_op_threads: int = 0
    """Threads inside one operator; 0 lets onnxruntime use every core."""
    graph_optimization: str = "all"
    """onnxruntime's graph optimisation level: disabled, basic, extended or all."""


@dataclass(frozen=True)
class BaselineSpec:
    """Tolerances of a comparison with a baseline, also used against a merge's
    parents.  ``None`` switches a check off.  The defaults pass healthy siblings
    (per-layer drift < 0.0005, loss ± 0.002 nats) and fail the damages measured on
    SmolLM2 (README, "Baselines")."""

    max_pearson_r_increase: float | None = 0.02
    """Pearson r may rise (weaken) by at most this."""
    max_rho_increase: float | None = 0.0005
    """ρ may move towards 1 (rise) by at most this."""
    max_loss_increase: float | None = 0.05
    """The probe loss may rise by at most this many nats per token."""
    max_drift: float | None = 0.0008
    """Per layer: |drift| of log10 PR beyond this is an effect (and sets
    ``first_moved_layer``)."""
    max_drift_sigma: float | None = 4.0
    """Per layer: |drift| / its paired standard error beyond this is significant;
    a layer fails when both thresholds that are set are exceeded."""


@dataclass(frozen=True)
class ParitySpec:
    """How closely the backends of a spec that names several (``backend: [torch,
    onnx]``) must agree; each backend after the first is compared with the first.
    ``None`` switches a check off.  The defaults are about 50 and 20 times the
    differences measured between PyTorch and its ONNX export of SmolLM2 on the
    default probe (1.9e-8 in log10 PR, 8.7e-6 nats; bench/results.json ``onnx``),
    and far below what the gates call a change (``baseline.max_drift`` 0.0008)."""

    max_log10_pr_difference: float | None = 1e-6
    """Per layer: |log10 PR of this backend − the first backend's| at most this."""
    max_loss_difference: float | None = 2e-4
    """|probe loss difference| in nats per token at most this."""


@dataclass(frozen=True)
class MergeSpec:
    """A merged checkpoint's parents and where its layers came from."""

    parents: tuple[tuple[str, str], ...]
    """(label, checkpoint path) pairs, in file order; labels as the merge config
    spells the models, or any label."""
    config: str | None = None
    """A mergekit configuration (YAML); None reads ``mergekit_config.yml`` from the
    merged checkpoint's folder when there is one."""
    layer_map: tuple[Any, ...] | None = None
    """Instead of ``config``: per merged layer 1..L, ``{parent, layer}`` or a list
    of them (validated against the parents' depths when they are opened)."""


@dataclass(frozen=True)
class Spec:
    name: str
    """[a-z0-9._-]+; test ids and report file names derive from it."""
    model: ModelSpec
    probe: ProbeSpec = field(default_factory=ProbeSpec)
    backend: str = "torch"
    measure: str = "token_id"
    normalization: str = "init_norm"
    target: str = "next"
    law: LawSpec = field(default_factory=LawSpec)
    onnx: OnnxSpec = field(default_factory=OnnxSpec)
    baseline: BaselineSpec = field(default_factory=BaselineSpec)
    merge: MergeSpec | None = None
    parity: ParitySpec = field(default_factory=ParitySpec)
    backends: tuple[str, ...] = ()
    """Every backend the spec file names, in order, when it names several (``backend:
    [torch, onnx]``); empty when it names one.  Set by the loader."""
    group: str | None = None
    """For one backend of a spec that names several: the name in the file (this
    spec's name is ``<group>.<backend>``).  Set by :func:`per_backend`."""
    source: str | None = None
    """The file the spec was loaded from, or None for a spec built in code."""
    lines: Mapping[str, int | None] = field(default_factory=dict, repr=False, compare=False)
    """Dotted key -> line in ``source`` where it was given (for errors found later,
    when the model is known)."""

    def error(self, field: str, message: str) -> SpecError:
        """A :class:`SpecError` naming this spec's file, the field's line and the field."""
        return SpecError(message, file=self.source, line=self.lines.get(field), field=field)


SECTIONS: dict[str, type] = {
    "": Spec, "model": ModelSpec, "model.norm": NormInfo,
    "model.modules": ModuleOverride, "probe": ProbeSpec, "law": LawSpec,
    "baseline": BaselineSpec, "merge": MergeSpec, "onnx": OnnxSpec, "parity": ParitySpec,
}
"""Each mapping of a spec file and the dataclass it becomes: the valid keys of a
mapping are that dataclass's fields (less ``INTERNAL_FIELDS``)."""
INTERNAL_FIELDS = frozenset({"source", "lines", "backends", "group"})
