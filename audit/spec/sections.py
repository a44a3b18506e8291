"""The dataclasses a spec file becomes, one per section.

A spec describes one checkpoint, the probe it is measured on, the measure, and the
thresholds of the law.  Each key of a spec file is a field here, described once, in
the schema (:data:`audit.spec.schema.SPEC_KEYS`, which generates docs/specs.md);
the docstrings here describe only the fields the loader sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from audit.compare.divergence import DEFAULT_THRESHOLDS
from audit.compare.token_record import TOP_K
from audit.errors import SpecError
from audit.norms import NormInfo

PROBE_MODES = ("windows", "documents")
TARGETS = ("previous", "current", "next", "next_next")
MERGE_JUDGES = ("recipe", "worst")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModuleOverride:
    """The ``model.modules`` section."""

    blocks: str
    final_norm: str
    embedding: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """The ``model`` section."""

    path: str
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    allow_package_code: bool = False
    tokenizer: str | None = None
    onnx: str | None = None
    norm: NormInfo | None = None
    modules: ModuleOverride | None = None
    device_map: str | None = None
    adapter: str | None = None


@dataclass(frozen=True)
class ProbeSpec:
    """The ``probe`` section."""

    corpus: str = "python-docstrings"
    sequences: int = 96
    length: int = 128
    seed: int = 0
    batch_size: int = 8
    shards: int = 10
    statistics: str = "gram"
    loss: bool = True
    mode: str = "windows"
    permutation: str = "equilaw"


@dataclass(frozen=True)
class LawSpec:
    """The ``law`` section: thresholds of the law; ``None`` switches a check off."""

    max_pearson_r: float | None = None
    rho: tuple[float, float] | None = None
    max_deviation: float | None = None
    max_deviation_sigma: float | None = None
    min_step_fraction: float | None = None
    expected_deviations: tuple[int, ...] = ()


ONNX_OPTIMIZATIONS = ("disabled", "basic", "extended", "all")


@dataclass(frozen=True)
class OnnxSpec:
    """The ``onnx`` section."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0
    graph_optimization: str = "all"
    layers: tuple[tuple[int, str], ...] | None = None
    """(layer, tensor name) pairs, sorted; None: found in the graph."""


@dataclass(frozen=True)
class BaselineSpec:
    """The ``baseline`` section: tolerances; ``None`` switches a check off."""

    max_pearson_r_increase: float | None = 0.02
    max_rho_increase: float | None = 0.0005
    max_loss_increase: float | None = 0.05
    max_drift: float | None = 0.0008
    max_drift_sigma: float | None = 4.0
    required: bool = True


@dataclass(frozen=True)
class ParitySpec:
    """The ``parity`` section: tolerances; ``None`` switches a check off."""

    max_log10_pr_difference: float | None = 1e-6
    max_loss_difference: float | None = 2e-4
    max_kld_mean: float | None = 1e-5


AUTO = "auto"
"""A tolerance that takes the measured default of the model's dtype."""


@dataclass(frozen=True)
class AdapterSpec:
    """The ``adapter`` section: tolerances of an adapter against its base and of its
    merge against itself unmerged; ``None`` switches a check off, ``"auto"`` takes
    the default of ``model.dtype`` (:data:`audit.compare.adapter.MERGED_TOLERANCES`)."""

    max_pearson_r_increase: float | None = 0.02
    max_rho_increase: float | None = 0.0005
    max_loss_increase: float | None = 0.05
    max_drift: float | None = 0.0008
    max_drift_sigma: float | None = 4.0
    max_merged_log10_pr_difference: float | str | None = AUTO
    max_merged_loss_difference: float | str | None = AUTO
    merged: str | None = None
    """A merged checkpoint (as shipped) to compare with the adapter unmerged, in place
    of ``merge_and_unload()``'s in-memory merge."""


@dataclass(frozen=True)
class MergeSpec:
    """The ``merge`` section."""

    parents: tuple[tuple[str, str], ...]
    config: str | None = None
    layer_map: tuple[Any, ...] | None = None
    judge: str = "recipe"


@dataclass(frozen=True)
class DivergenceSpec:
    """The ``divergence`` section: tolerances; ``None`` switches a figure off."""

    max_kld_mean: float | None = DEFAULT_THRESHOLDS.max_kld_mean
    max_kld_p99: float | None = DEFAULT_THRESHOLDS.max_kld_p99
    min_same_top: float | None = DEFAULT_THRESHOLDS.min_same_top
    max_rms_dp: float | None = DEFAULT_THRESHOLDS.max_rms_dp
    max_sigma: float = DEFAULT_THRESHOLDS.max_sigma
    top_k: int = TOP_K


@dataclass(frozen=True)
class ReferenceModelSpec:
    """The ``reference_model`` section."""

    path: str


@dataclass(frozen=True)
class Spec:
    """A spec file: its top-level keys, then what the loader sets."""

    name: str
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
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    divergence: DivergenceSpec = field(default_factory=DivergenceSpec)
    reference_model: ReferenceModelSpec | None = None
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
    "adapter": AdapterSpec,
    "divergence": DivergenceSpec, "reference_model": ReferenceModelSpec,
}
"""Each mapping of a spec file and the dataclass it becomes: the valid keys of a
mapping are that dataclass's fields (less ``INTERNAL_FIELDS``)."""
INTERNAL_FIELDS = frozenset({"source", "lines", "backends", "group"})
