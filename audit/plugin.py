"""The pytest plugin (entry point ``pytest11: equilaw``).

It only declares options, collects spec items, turns the outcome the session
gives each item into pytest's and prints the reports; every number and every
outcome comes from :class:`audit.session.AuditSession` and the core below it,
imported lazily (``import audit.plugin`` loads neither numpy nor yaml).

Items: ``<spec name>::law-fit`` (Pearson r), ``<spec name>::law-rho`` (decay
ratio), ``<spec name>::baseline-law`` and ``baseline-loss`` (against the spec's
baseline), ``merge-law`` and ``merge-loss`` (a merge against its parents), and
``<spec name>::layer-NN`` for every judged layer (the law's per-layer checks and
the drift against the baseline and the parents).  They are collected from
``audit/test_models.py`` only, so ``pytest tests/`` never audits a model, while
``pytest audit/`` and ``pytest --pyargs audit`` do.

Under pytest-xdist (``pytest audit/ -n 2``) the plugin replaces xdist's default
``--dist load`` scheduling by one that keeps the items of a spec, and of the other
backends of the same spec, on one worker (a merge's parents are audited inside the
merged spec's report), so each model is audited once; the workers send their
reports to the controller, which prints them as a serial run does.

JUnit XML (``--junitxml``) gets test properties: on ``law-fit``
``equilaw.pearson_r``, ``equilaw.rho``, ``equilaw.probe_loss`` and
``equilaw.violating_layers``; on each comparison item
``equilaw.first_moved_layer``, ``equilaw.largest_drift`` and
``equilaw.largest_drift_layer``; on ``divergence`` (the first gated source: the
reference model, else the stored baseline) ``equilaw.kld_mean`` (nats),
``equilaw.kld_p99``, ``equilaw.same_top`` (a fraction) and ``equilaw.rms_dp``.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

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
    group.addoption("--audit-update-baseline", action="store_true", default=False,
                    help="write each audited spec's report as its baseline (baselines/<name>.json "
                         "beside the spec, or --audit-baselines) instead of comparing; -k "
                         "limits which")
    group.addoption("--audit-baselines", metavar="DIR", default=None,
                    help="folder of baselines (default: baselines/ beside each spec file; ini: "
                         "audit_baselines)")
    group.addoption("--audit-cache", metavar="DIR", default=None,
                    help="folder of the statistics cache (default: $EQUILAW_CACHE_DIR, else "
                         "$XDG_CACHE_HOME/equilaw or ~/.cache/equilaw; ini: audit_cache)")
    group.addoption("--audit-no-cache", action="store_true", default=False,
                    help="measure every spec, reading and writing no statistics cache (ini: "
                         "audit_no_cache; environment: EQUILAW_NO_CACHE=1)")
    group.addoption("--audit-clear-cache", action="store_true", default=False,
                    help="delete the statistics cache's entries before the run")
    group.addoption("--audit-cache-max-gb", metavar="GB", default=None,
                    help="cap the cache folder at GB gigabytes (10**9 bytes), least recently "
                         "used entries evicted; 0 turns the caches off, inf sets no cap "
                         "(default 5; ini: audit_cache_max_gb; environment: "
                         "EQUILAW_CACHE_MAX_GB)")
    group.addoption("--audit-html", metavar="PATH", default=None,
                    help="write one self-contained HTML page of every spec's report at the end "
                         "of the run, whatever its outcome (ini: audit_html)")
    group.addoption("--audit-markdown", metavar="PATH", default=None,
                    help="write a Markdown summary table of the run (also appended to "
                         "$GITHUB_STEP_SUMMARY when set; ini: audit_markdown)")
    parser.addini("audit_html", default="", help="file for the run's HTML report")
    parser.addini("audit_markdown", default="", help="file for the run's Markdown summary")
    parser.addini("audit_baselines", default="", help="folder of baselines")
    parser.addini("audit_cache", default="", help="folder of the statistics cache")
    parser.addini("audit_no_cache", type="bool", default=False,
                  help="turn the statistics cache off")
    parser.addini("audit_cache_max_gb", default="", help="the cache folder's size cap in GB")
    parser.addini("audit_specs", type="paths", default=[],
                  help="spec files or folders to audit (default: model_specs/)")
    parser.addini("audit_reports", default="reports", help="folder for JSON reports")
    parser.addini("audit_progress", default="auto", help="auto | on | off")


_WORKER_REPORTS = "equilaw_reports"
"""The key of ``config.workeroutput`` under which an xdist worker sends its reports."""


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's default ``--dist load`` sends items anywhere, so every worker would
    audit every model.  Instead, schedule by spec group: all items of a spec (and of
    the other backends of the same spec file, which need its report for parity) go
    to one worker, and other tests by module, as ``--dist loadscope`` does.  Other
    ``--dist`` modes are left to xdist.  (xdist's own ``loadgroup`` cannot be used:
    it renames node ids in a way pytest 9 ignores.)"""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    session = config.stash[_SESSION_KEY]
    try:
        group_of = {spec.name: spec.group or spec.name for spec in session.specs()}
    except EquilawError:
        return None  # the collection reports the spec error

    class SpecScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            parts = nodeid.split("::")
            if len(parts) >= 3 and parts[-2] in group_of:
                return f"equilaw::{group_of[parts[-2]]}"
            return super()._split_scope(nodeid)

    return SpecScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    from audit.internal.signals import terminate_as_interrupt
    from audit.session import AuditSession, default_spec_paths

    config.stash[_RESTORE_SIGTERM] = terminate_as_interrupt()  # CI cancels with SIGTERM


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
    settings, cleared = _cache_settings(config, rootdir)
    config.stash[_SESSION_KEY] = AuditSession(
        spec_paths=[Path(p) for p in paths],
        reports_dir=(rootdir / reports) if reports else None,
        progress_factory=lambda: _progress(config, interactive),
        skip_missing_models=not named and not strict_environment(),
        baselines_dir=baselines,
        update_baselines=config.getoption("audit_update_baseline"),
        require_baselines=strict_environment(),
        cache=_stats_cache(settings, cleared),
        cache_settings=settings,
        run_outputs=_run_outputs(config),
    )


def _run_outputs(config: pytest.Config) -> tuple[Any, ...]:
    """The run's own files (the HTML page, the Markdown summary), for the one-owner
    check of :mod:`audit.outputs`."""
    from audit.outputs import Output

    named = {"audit_html": "the HTML page of the run",
             "audit_markdown": "the Markdown summary of the run"}
    return tuple(Output(path, what) for name, what in named.items()
                 if (path := _output_path(config, name)) is not None)


def _cache_settings(config: pytest.Config, rootdir: Path):
    """The session's cache settings, made once from the options, the ini and the
    environment; the cache folder is emptied first with ``--audit-clear-cache`` (by
    the controller only, under xdist).  A folder named on the command line turns the
    caches on whatever the environment or ini say.  The size cap: the option, else
    the ini, else ``EQUILAW_CACHE_MAX_GB``, else 5 GB."""
    from audit.cache.eviction import parse_max_gb
    from audit.cache.folder import CacheError, clear_folder
    from audit.cache.settings import CacheSettings
    from audit.session import strict_environment

    cli = config.getoption("audit_cache")
    ini = config.getini("audit_cache")
    try:
        env = CacheSettings.from_environment(require_secret=strict_environment())
        folder = (Path(config.invocation_params.dir) / cli if cli
                  else rootdir / ini if ini else env.folder)
        off = config.getoption("audit_no_cache") or (
            not cli and (not env.enabled or config.getini("audit_no_cache")))
        cap_cli = config.getoption("audit_cache_max_gb")
        cap_ini = config.getini("audit_cache_max_gb").strip()
        max_gb = (parse_max_gb(cap_cli, "--audit-cache-max-gb") if cap_cli is not None
                  else parse_max_gb(cap_ini, "audit_cache_max_gb") if cap_ini else env.max_gb)
        settings = CacheSettings(folder, not off, env.secret, env.secret_file,
                                 env.require_secret, max_gb)
        cleared = None
        if config.getoption("audit_clear_cache") and not hasattr(config, "workerinput"):
            cleared = clear_folder(folder)
    except CacheError as exc:
        raise pytest.UsageError(str(exc)) from None
    return settings, cleared


def _stats_cache(settings, cleared: int | None):
    """The session's statistics cache in the settings' folder, or False when off."""
    from audit.cache.stats_cache import StatsCache

    if not settings.enabled:
        return False
    store = StatsCache.from_settings(settings)
    store.cleared = cleared
    return store


_RESTORE_SIGTERM = pytest.StashKey[Any]()


def pytest_unconfigure(config: pytest.Config) -> None:
    restore = config.stash.get(_RESTORE_SIGTERM, None)
    if restore is not None:
        restore()


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
        from audit.checks import layer_item_name

        for name in session.item_names(self.spec):
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
        from audit.session import Outcome

        session = self.config.stash[_SESSION_KEY]
        self._record_properties(session.report(self.spec))
        done = session.outcome(self.spec, self.name)
        if done.outcome is Outcome.SKIPPED:
            pytest.skip(done.message)
        if done.outcome is Outcome.COMPARISON_FAILED:
            raise ComparisonCheckFailed(done.message)
        if done.outcome is Outcome.FAILED:
            raise AuditCheckFailed(done.message)

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
        if self.name == "divergence":
            for row in report.divergence:
                if row.gated:
                    r = row.result
                    self.user_properties += [
                        ("equilaw.kld_mean", value(r.kld_mean)),
                        ("equilaw.kld_p99", value(r.kld_p99)),
                        ("equilaw.same_top", value(r.same_top)),
                        ("equilaw.rms_dp", value(r.rms_dp)),
                    ]
                    break
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


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker: send this worker's reports, and the report files it
    wrote, to the controller.  Elsewhere: write the run's HTML page and Markdown
    summary, and bring the cache folder under its size cap."""
    output = getattr(session.config, "workeroutput", None)
    audit = session.config.stash.get(_SESSION_KEY, None)
    if output is None and audit is not None:
        _write_pages(session, audit)
        if audit.cache:
            audit.cache.finish()
    if output is None or audit is None:
        return
    output[_WORKER_REPORTS] = {"reports": [report.to_dict() for report in audit.reports],
                               "written": [str(path) for path in audit.written]}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """On the xdist controller: keep a finished worker's reports for the summary."""
    sent = getattr(node, "workeroutput", {}).get(_WORKER_REPORTS)
    if not sent:
        return
    from audit.report.data import Report

    received = node.config.stash.setdefault(_RECEIVED_KEY, ([], []))
    received[0].extend(Report.from_dict(data) for data in sent["reports"])
    received[1].extend(Path(path) for path in sent["written"])


_RECEIVED_KEY = pytest.StashKey[tuple]()


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is None:
        return
    reports, written = config.stash.get(_RECEIVED_KEY, ([], []))
    reports = sorted(reports, key=lambda r: r.name) + session.reports
    written = sorted(written) + session.written
    if not reports:
        return
    from rich.console import Console

    from audit.report.terminal import render

    terminalreporter.section("equilaw reports")
    for report in reports:
        buffer = io.StringIO()
        # The layer table needs about 120 columns; narrower, rich truncates every cell.
        console = Console(file=buffer, force_terminal=terminalreporter.hasmarkup,
                          width=max(120, terminalreporter._tw.fullwidth),
                          color_system="standard" if terminalreporter.hasmarkup else None)
        render(report, console)
        terminalreporter.write(buffer.getvalue())
    for path in written:
        terminalreporter.write_line(f"report written: {os.path.relpath(path)}")
    _cache_summary(terminalreporter, session.cache)


def _cache_summary(terminalreporter, cache) -> None:
    """One line on what the statistics cache did in this process (under xdist the
    workers' caches did the work, and the controller says nothing)."""
    if not cache or not (cache.hits or cache.stored or cache.recomputed or cache.untrusted
                         or cache.cleared is not None or cache.evicted):
        return
    loaded = f"{len(cache.hits)} loaded"
    if cache.secret is not None:
        loaded += f" ({len(cache.authenticated)} authenticated)"
    parts = [loaded, f"{len(cache.stored)} stored"]
    if cache.untrusted:
        parts.append(f"{len(cache.untrusted)} not read (under CI without a cache key)")
    if cache.recomputed:
        parts.append(f"{len(cache.recomputed)} unreadable and recomputed")
    if cache.cleared is not None:
        parts.append(f"{cache.cleared} files cleared first")
    if cache.evicted:
        parts.append(f"{len(cache.evicted)} evicted (size cap {cache.max_gb:g} GB)")
    terminalreporter.write_line(f"statistics cache {cache.folder}: {', '.join(parts)}")


def _write_pages(session: pytest.Session, audit) -> None:
    """``--audit-html``, ``--audit-markdown`` and GitHub's job summary
    (``$GITHUB_STEP_SUMMARY``, appended to), written once per run by the controller
    at the end, whatever the items' outcomes; a run that audited nothing writes the
    files asked for by name, not the job summary; a run whose files the one-owner
    check refused (:mod:`audit.outputs`) writes none."""
    config = session.config
    if audit.outputs_refused is not None:  # two outputs on one path: write neither
        return
    html, markdown = (_output_path(config, name) for name in ("audit_html", "audit_markdown"))
    job_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    received, _ = config.stash.get(_RECEIVED_KEY, ([], []))
    reports = sorted(received, key=lambda r: r.name) + audit.reports
    if not (html or markdown or (job_summary and reports)):
        return
    from audit.report.html import write_page
    from audit.report.markdown import write_markdown

    shown = os.path.relpath(html) if html else None
    lines = []
    try:
        if html:
            lines.append(f"HTML report written: {os.path.relpath(write_page(html, reports))}")
        if markdown:
            path = write_markdown(markdown, reports, html_path=shown)
            lines.append(f"Markdown summary written: {os.path.relpath(path)}")
        if job_summary and reports:
            write_markdown(job_summary, reports, append=True, html_path=shown)
    except EquilawError as exc:
        lines.append(f"equilaw: error: {exc}")
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None and lines:
        if terminal._tw.width_of_current_line:  # after the last item's progress
            terminal._tw.line()
        for line in lines:
            terminal.write_line(line)


def _output_path(config: pytest.Config, name: str) -> Path | None:
    """A file named on the command line (relative to where pytest started) or in the
    ini file (relative to the rootdir), or None."""
    cli, ini = config.getoption(name), config.getini(name)
    if cli:
        return Path(config.invocation_params.dir) / cli
    return Path(str(config.rootpath)) / ini if ini else None
