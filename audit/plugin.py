"""The pytest plugin (entry point ``pytest11: equilaw``).

It only declares options, collects spec items, turns check results into pytest
outcomes and prints the reports; every number comes from
:class:`audit.session.AuditSession` and the core below it.

Items: ``<spec name>::law-fit`` (Pearson r), ``<spec name>::law-rho`` (decay
ratio) and ``<spec name>::layer-NN`` for every judged layer (every per-layer check).
They are collected from ``audit/test_models.py`` only, so ``pytest tests/`` never
audits a model, while ``pytest audit/`` and ``pytest --pyargs audit`` do.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from audit.errors import EquilawError

ITEMS_MODULE = Path(__file__).with_name("test_models.py")
_SESSION_KEY = pytest.StashKey["AuditSession"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("equilaw", "equilaw: audit checkpoints against the law of equi-learning")
    group.addoption("--audit-spec", action="append", default=[], metavar="PATH",
                    help="audit this spec file or folder of specs instead of the defaults "
                         "(repeatable; ini: audit_specs)")
    group.addoption("--audit-reports", metavar="DIR", default=None,
                    help="folder for <spec name>.json reports (default: reports/ under the "
                         "rootdir; ini: audit_reports)")
    group.addoption("--audit-progress", choices=("auto", "on", "off"), default=None,
                    help="progress bar while extracting hidden states: auto shows it on a "
                         "terminal outside CI (ini: audit_progress)")
    parser.addini("audit_specs", type="paths", default=[],
                  help="spec files or folders to audit (default: model_specs/)")
    parser.addini("audit_reports", default="reports", help="folder for JSON reports")
    parser.addini("audit_progress", default="auto", help="auto | on | off")


def pytest_configure(config: pytest.Config) -> None:
    from audit.session import AuditSession, default_spec_paths

    rootdir = Path(str(config.rootpath))
    cli = [Path(config.invocation_params.dir) / p for p in config.getoption("audit_spec")]
    paths = cli or list(config.getini("audit_specs")) or default_spec_paths(rootdir)
    # A command-line folder is relative to where pytest was started, an ini one to
    # the rootdir, as pytest does for its own options.
    cli_reports = config.getoption("audit_reports")
    if cli_reports:
        reports = Path(config.invocation_params.dir) / cli_reports
    else:
        reports = config.getini("audit_reports")
    # Whether the real terminal is a tty: asked now, while output is not captured
    # (during an item's run, sys.stdout is pytest's capture buffer).
    interactive = sys.stdout.isatty()
    config.stash[_SESSION_KEY] = AuditSession(
        spec_paths=[Path(p) for p in paths],
        reports_dir=(rootdir / reports) if reports else None,
        progress_factory=lambda: _progress(config, interactive),
    )


def _progress(config: pytest.Config, interactive: bool):
    mode = config.getoption("audit_progress") or config.getini("audit_progress")
    from audit.session import strict_environment

    if mode == "off" or (mode == "auto" and (strict_environment() or not interactive)):
        return None
    from audit.report.progress import RichProgress

    return _Uncaptured(config, RichProgress())


class _Uncaptured:
    """Lets the progress bar reach the terminal while pytest captures output."""

    def __init__(self, config: pytest.Config, inner) -> None:
        self._capman = config.pluginmanager.getplugin("capturemanager")
        self._inner = inner
        self._ctx = None

    def start(self, name: str, total_tokens: int) -> None:
        if self._capman is not None:
            self._ctx = self._capman.global_and_fixture_disabled()
            self._ctx.__enter__()
        self._inner.start(name, total_tokens)

    def advance(self, tokens: int) -> None:
        self._inner.advance(tokens)

    def stop(self) -> None:
        self._inner.stop()
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector):
    if Path(module_path).resolve() == ITEMS_MODULE.resolve():
        return SpecFile.from_parent(parent, path=Path(module_path))
    return None


class SpecFile(pytest.File):
    """The items module: one collector per spec."""

    def collect(self):
        session = self.config.stash[_SESSION_KEY]
        try:
            specs = session.specs()
        except EquilawError as exc:
            raise self.CollectError(str(exc)) from None
        for spec in specs:
            yield SpecCollector.from_parent(self, name=spec.name, spec=spec)


class SpecCollector(pytest.Collector):
    """One spec: its law-level items and one item per judged layer."""

    def __init__(self, *, spec, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def collect(self):
        from audit.errors import ModelUnavailableError
        from audit.session import strict_environment

        session = self.config.stash[_SESSION_KEY]
        try:
            layers = session.num_layers(self.spec)
        except ModelUnavailableError as exc:
            if strict_environment():
                raise self.CollectError(f"{self.spec.source}: {exc} (CI=true: a missing model fails the run)") from None
            pytest.skip(f"{self.spec.name}: {exc}")
        except EquilawError as exc:
            raise self.CollectError(f"{self.spec.source}: {exc}") from None
        from audit.checks import ITEM_CHECKS, layer_item_name

        for name in ITEM_CHECKS:
            yield SpecItem.from_parent(self, name=name, spec=self.spec)
        expected = set(self.spec.law.expected_deviations)
        for layer in range(1, layers + 1):
            item = SpecItem.from_parent(self, name=layer_item_name(layer, layers), spec=self.spec)
            if layer in expected:
                item.add_marker(pytest.mark.xfail(
                    strict=False, reason=f"layer {layer} is declared in law.expected_deviations"))
            yield item


class AuditCheckFailed(Exception):
    """A check of the law failed; the message lists each failed check."""


class SpecItem(pytest.Item):
    def __init__(self, *, spec, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def runtest(self) -> None:
        from audit.checks import item_results

        report = self.config.stash[_SESSION_KEY].report(self.spec)
        results = item_results(report.checks, self.name)
        if not results:
            pytest.skip(f"{self.spec.name}: no threshold in the spec covers {self.name}")
        failed = [check for check in results if not check.passed]
        if failed:
            raise AuditCheckFailed("\n".join(check.message for check in failed))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (AuditCheckFailed, EquilawError)):
            return f"{self.spec.name}::{self.name} ({self.spec.source})\n{excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"{self.spec.name}::{self.name}"


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is None or not session.reports:
        return
    from rich.console import Console

    from audit.report.terminal import render

    terminalreporter.section("equilaw reports")
    for report in session.reports:
        buffer = io.StringIO()
        # The layer table needs about 120 columns; narrower, rich truncates every cell.
        console = Console(file=buffer, force_terminal=terminalreporter.hasmarkup,
                          width=max(120, terminalreporter._tw.fullwidth),
                          color_system="standard" if terminalreporter.hasmarkup else None)
        render(report, console)
        terminalreporter.write(buffer.getvalue())
    for path in session.written:
        terminalreporter.write_line(f"report written: {os.path.relpath(path)}")
