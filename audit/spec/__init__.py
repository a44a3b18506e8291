"""Audit specs: the dataclasses a spec file becomes (:mod:`~audit.spec.sections`),
the checks of its values (:mod:`~audit.spec.values`), the schema of its keys that
also generates docs/specs.md (:mod:`~audit.spec.schema`), and loading it from YAML
(:mod:`~audit.spec.loader`).  The names below are the package's API."""

from audit.spec.loader import (
    check_against_model,
    load_spec,
    load_specs,
    per_backend,
    spec_from_dict,
)
from audit.spec.schema import REQUIRED, SPEC_KEYS, SpecKey, spec_reference_markdown
from audit.spec.sections import (
    DTYPES,
    ONNX_OPTIMIZATIONS,
    PROBE_MODES,
    TARGETS,
    AdapterSpec,
    BaselineSpec,
    DivergenceSpec,
    LawSpec,
    MergeSpec,
    ModelSpec,
    ModuleOverride,
    OnnxSpec,
    ParitySpec,
    ProbeSpec,
    ReferenceModelSpec,
    Spec,
)
from audit.spec.values import BACKENDS, BUILTIN_CORPORA, MODEL_SCHEMES, NAME_PATTERN

__all__ = [
    "BACKENDS", "BUILTIN_CORPORA", "DTYPES", "MODEL_SCHEMES", "NAME_PATTERN",
    "ONNX_OPTIMIZATIONS", "PROBE_MODES", "REQUIRED", "SPEC_KEYS", "TARGETS",
    "AdapterSpec", "BaselineSpec", "DivergenceSpec", "LawSpec", "MergeSpec", "ModelSpec",
    "ModuleOverride", "OnnxSpec", "ParitySpec", "ProbeSpec", "ReferenceModelSpec", "Spec",
    "SpecKey", "check_against_model", "load_spec",
    "load_specs", "per_backend", "spec_from_dict", "spec_reference_markdown",
]
