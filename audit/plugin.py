"""The pytest plugin (entry point ``pytest11: equilaw``).

It only declares options, collects spec items, turns check results into pytest
outcomes and prints the reports; every number comes from
:class:`audit.session.AuditSession` and the core below it.

Items: ``<spec name>::law-fit`` (Pearson r), ``<spec name>::law-rho`` (decay
ratio), ``<spec name>::baseline-law`` and ``baseline-loss`` (against the spec's
baseline), ``merge-law`` and ``merge-loss`` (a merge against its parents), and
``<spec name>::layer-NN`` for every judged layer (the law's per-layer checks and
the drift against the baseline and the parents).  They are collected from
``audit/test_models.py`` only, so ``pytest tests/`` never audits a model, while
``pytest audit/`` and ``pytest --pyargs audit`` do.

JUnit XML (``--junitxml``) gets test properties: on ``law-fit``
``equilaw.pearson_r``, ``equilaw.rho``, ``equilaw.probe_loss`` and
``equilaw.violating_layers``; on each comparison item
``equilaw.first_moved_layer``, ``equilaw.largest_drift`` and
``equilaw.largest_drift_layer``.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from audit.errors import EquilawError
from audit.report.text import comparison_text

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
    group.addoption("--audit-update-baseline", action="store_true", default=False,
                    help="write each audited spec's report as its baseline (baselines/<name>.json "
                         "beside the spec, or --audit-baselines) instead of comparing; -k "
                         "limits which")
    group.addoption("--audit-baselines", metavar="DIR", default=None,
                    help="folder of baselines (default: baselines/ beside each spec file; ini: "
                         "audit_baselines)")
    parser.addini("audit_baselines", default="", help="folder of baselines")
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
    cli_baselines = config.getoption("audit_baselines")
    ini_baselines = config.getini("audit_baselines")
    baselines = (Path(config.invocation_params.dir) / cli_baselines if cli_baselines
                 else rootdir / ini_baselines if ini_baselines else None)
    from audit.session import strict_environment

    # Only the default specs skip when their model package is absent: a spec named
    # on purpose must not turn a release gate green by a typo.
    named = bool(cli) or bool(config.getini("audit_specs"))
    config.stash[_SESSION_KEY] = AuditSession(
        spec_paths=[Path(p) for p in paths],
        reports_dir=(rootdir / reports) if reports else None,
        progress_factory=lambda: _progress(config, interactive),
        skip_missing_models=not named and not strict_environment(),
        baselines_dir=baselines,
        update_baselines=config.getoption("audit_update_baseline"),
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
            if not session.skip_missing_models:
                why = ("CI=true" if strict_environment() else
                       "a spec named with --audit-spec or audit_specs")
                raise self.CollectError(f"{self.spec.source}: {exc} ({why}: a missing model "
                                        f"fails the run)") from None
            pytest.skip(f"{self.spec.name}: {exc}")
        except EquilawError as exc:
            raise self.CollectError(f"{self.spec.source}: {exc}") from None
        from audit.checks import COMPARISON_ITEM_CHECKS, ITEM_CHECKS, layer_item_name

        names = list(ITEM_CHECKS) + ["baseline-law", "baseline-loss"]
        if self.spec.merge is not None:
            names += ["merge-law", "merge-loss"]
        if session.parity_reference(self.spec) is not None:
            names.append("parity")
        assert set(names) <= set(ITEM_CHECKS) | set(COMPARISON_ITEM_CHECKS)
        for name in names:
            yield SpecItem.from_parent(self, name=name, spec=self.spec)
        expected = set(self.spec.law.expected_deviations)
        for layer in range(1, layers + 1):
            item = SpecItem.from_parent(self, name=layer_item_name(layer, layers), spec=self.spec)
            if layer in expected:
                # Only the law's own failures are expected: a drift against the baseline
                # or the parents raises ComparisonCheckFailed, a real failure.
                item.add_marker(pytest.mark.xfail(
                    strict=False, raises=AuditCheckFailed,
                    reason=f"layer {layer} is declared in law.expected_deviations"))
            yield item


class AuditCheckFailed(Exception):
    """A check of the law failed; the message lists each failed check."""


class ComparisonCheckFailed(Exception):
    """A check against a baseline or a merge's parents failed; the message is a
    small report (failed checks, then and now, the layers that moved)."""


class SpecItem(pytest.Item):
    def __init__(self, *, spec, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def runtest(self) -> None:
        from audit.checks import (COMPARISON_ITEM_CHECKS, COMPARISON_LAYER_CHECKS,
                                  comparison_kind, item_results)

        session = self.config.stash[_SESSION_KEY]
        report = session.report(self.spec)
        self._record_properties(report)
        if self.name.startswith("baseline-"):
            self._baseline_state(session)
        if self.name == "parity" and self.spec.name in session.parity_errors:
            error = session.parity_errors[self.spec.name]
            raise ComparisonCheckFailed(f"parity with {self.spec.backends[0]} not judged: the "
                                        f"{self.spec.backends[0]} audit failed: {error}")
        results = item_results(report.checks, self.name)
        if not results:
            pytest.skip(f"{self.spec.name}: no threshold in the spec covers {self.name}")
        failed = [check for check in results if not check.passed]
        compared = [c for c in failed if c.check in COMPARISON_LAYER_CHECKS
                    or self.name in COMPARISON_ITEM_CHECKS]
        if compared:
            kinds = {comparison_kind(c.check) for c in compared}
            raise ComparisonCheckFailed("\n".join(
                [c.message for c in failed]
                + [comparison_text(cmp, self._fix(cmp.kind)) for cmp in report.comparisons
                   if cmp.kind in kinds]))
        if failed:
            raise AuditCheckFailed("\n".join(check.message for check in failed))

    def _fix(self, kind: str) -> str | None:
        if kind != "baseline":
            return None
        from audit.compare.baseline import UPDATE_COMMAND

        return f"if the change is intended, accept it: {UPDATE_COMMAND.format(name=self.spec.name)}"

    def _baseline_state(self, session) -> None:
        from audit.compare.baseline import UPDATE_COMMAND

        state = session.baselines.get(self.spec.name)
        if state is None:
            return
        if state.state == "error":
            raise state.error
        if state.state == "missing":
            pytest.skip(f"{self.spec.name}: no baseline at {os.path.relpath(state.path)}; "
                        f"create it with: {UPDATE_COMMAND.format(name=self.spec.name)}")
        if state.state == "written":
            pytest.skip(f"{self.spec.name}: baseline written to {os.path.relpath(state.path)}")

    def _record_properties(self, report) -> None:
        """Numbers CI reads from JUnit XML, as test properties."""
        def value(x):  # JUnit properties are text: unknown is empty
            return "" if x is None or x != x else x

        if self.name == "law-fit":
            layers = sorted({c.layer for c in report.violations if c.layer is not None})
            self.user_properties += [
                ("equilaw.pearson_r", report.law.pearson_r), ("equilaw.rho", report.law.rho),
                ("equilaw.probe_loss", report.loss.mean if report.loss else ""),
                ("equilaw.violating_layers", ",".join(map(str, layers))),
            ]
        kind = self.name.partition("-")[0]
        for cmp in report.comparisons:
            if cmp.kind == kind:
                self.user_properties += [
                    ("equilaw.first_moved_layer", value(cmp.first_moved_layer)),
                    ("equilaw.largest_drift", value(cmp.largest_drift)),
                    ("equilaw.largest_drift_layer", value(cmp.largest_drift_layer)),
                ]

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (AuditCheckFailed, ComparisonCheckFailed, EquilawError)):
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
