"""One error hierarchy for equilaw.

Every error the project raises on purpose is an :class:`EquilawError`.  Subclasses
carry the data that locate the problem (file, line and field of a spec; model and
layer of a measurement) so that callers and the pytest layer can show it without
parsing the message.
"""

from __future__ import annotations

from dataclasses import dataclass


class EquilawError(Exception):
    """Root of every error equilaw raises on purpose."""


class SpecError(EquilawError):
    """A spec file is invalid.

    Causes: unknown or duplicate key, wrong type, value out of range, missing
    required key, unreadable YAML.  Fix: edit the file at the line named in the
    message.  ``file``, ``line`` (1-based, or None when unknown) and ``field``
    (dotted path such as ``probe.length``) locate the problem.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.reason = message
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        if field:
            where += f"{field}: "
        super().__init__(where + message)


class CorpusError(EquilawError):
    """A probe corpus cannot be read, fails its checksum, or is too short for the
    requested windows.  The message names the corpus and what it lacks."""


class StatsError(EquilawError):
    """The statistics engine was given input it cannot use, or asked for a result it
    cannot give: mismatched shapes, NaN or infinite features, a shard index out of
    range, one distinct target, an empty accumulator, or a merge of incompatible
    accumulators.  ``layer`` names the layer concerned, when there is one."""

    def __init__(self, message: str, *, layer: int | None = None) -> None:
        self.layer = layer
        self.reason = message
        super().__init__(f"layer {layer}: {message}" if layer is not None else message)


class BackendError(EquilawError):
    """A backend cannot load or run a model: missing optional dependency, unknown
    architecture, unsafe weight format, unresolvable model path.  ``model`` names the
    model (its spec name or path)."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        self.model = model
        self.reason = message
        super().__init__(f"model {model}: {message}" if model else message)


class ReportError(EquilawError):
    """A report cannot be written or read back."""


@dataclass(frozen=True)
class Location:
    """Where a value came from in a spec file (1-based line)."""

    file: str
    line: int | None


class ModelUnavailableError(BackendError):
    """The model's files or the package that carries them are not installed here.
    Fix: install the package named in the message.  The pytest plugin skips such a
    spec, or fails under CI=true."""


class ComparisonError(EquilawError):
    """Two measurements cannot be compared: a baseline or parent measured on another
    probe, measure, normalisation, target or windows (``fields`` names what
    differs), a baseline without per-shard values, or a merge whose parents or
    layer map do not fit the merged model.  Fix: as the message says (regenerate
    the baseline, point both specs at one tokenizer, correct the merge section)."""

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        self.fields = fields
        self.reason = message
        super().__init__(message)
