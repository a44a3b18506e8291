"""One audit session: which specs, their backends and reports, cached.

The pytest plugin keeps one :class:`AuditSession` on its config and hands every
hook to it, so the logic is testable without pytest.  A model is opened once per
spec, its weights loaded only when the first item of that spec runs, and released
once its report exists.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from audit.errors import EquilawError
from audit.report.data import Report
from audit.spec import Spec, load_specs


def default_spec_paths(rootdir: Path | None) -> list[Path]:
    """``model_specs/`` under the rootdir when there is one, else the default specs
    shipped inside the package."""
    if rootdir is not None and (rootdir / "model_specs").is_dir():
        return [rootdir / "model_specs"]
    return [Path(str(importlib.resources.files("audit.model_specs")))]


def strict_environment() -> bool:
    """Under CI a missing model package fails the run instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class AuditSession:
    spec_paths: list[Path]
    reports_dir: Path | None
    """Where ``<name>.json`` goes; None writes no report files."""
    progress_factory: Callable[[], Any] | None = None
    _specs: list[Spec] | None = None
    _backends: dict[str, Any] = field(default_factory=dict)
    _reports: dict[str, Report] = field(default_factory=dict)
    _errors: dict[str, EquilawError] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    def specs(self) -> list[Spec]:
        if self._specs is None:
            self._specs = load_specs(self.spec_paths)
        return self._specs

    def backend(self, spec: Spec) -> Any:
        if spec.name not in self._backends:
            from audit.backends import open_backend

            self._backends[spec.name] = open_backend(spec)
        return self._backends[spec.name]

    def num_layers(self, spec: Spec) -> int:
        """L, from the model's config or GGUF metadata: no weights are loaded."""
        return self.backend(spec).info().num_layers

    def report(self, spec: Spec) -> Report:
        """The spec's report, computed on first use; a failure is remembered and
        raised again for every item of that spec."""
        if spec.name in self._errors:
            raise self._errors[spec.name]
        if spec.name not in self._reports:
            from audit.pipeline import run

            progress = self.progress_factory() if self.progress_factory else None
            try:
                report = run(spec, backend=self.backend(spec), progress=progress)
            except EquilawError as exc:
                self._errors[spec.name] = exc
                raise
            finally:
                # The report holds every number the items need: free the model.
                self._backends.pop(spec.name, None)
            self._reports[spec.name] = report
            if self.reports_dir is not None:
                from audit.report.json_report import write_json

                self.written.append(write_json(report, self.reports_dir))
        return self._reports[spec.name]

    @property
    def reports(self) -> list[Report]:
        return list(self._reports.values())
