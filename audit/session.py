"""One audit session: which specs, their backends and reports, cached.

The pytest plugin keeps one :class:`AuditSession` on its config and hands every
hook to it, so the logic is testable without pytest.  A model is opened once per
spec, its weights loaded only when the first item of that spec runs, and released
once its report exists.  A merge's parents are opened (their paths resolved, their
depths read, the layer map checked) before anything is measured, and measured on
the same windows when the merged spec's first item runs; so are an adapter's base
(``<spec>.base``, a separate load of ``model.path``, never the model the adapter
was injected into) and its merge (``<spec>.merged``).  The baseline of a spec
is read, compared or written (``update_baselines``) right after its report.  The
session also decides each item's outcome (:meth:`AuditSession.outcome`): passed,
skipped, a failure of the law, or a failed comparison.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from audit.errors import EquilawError
from audit.outputs import check_specs, parent_spec_name
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


class BaselineStatus(enum.Enum):
    """What happened to a spec's baseline in this session."""

    MISSING = "missing"
    WRITTEN = "written"
    COMPARED = "compared"
    ERROR = "error"


@dataclass
class BaselineState:
    """What happened to a spec's baseline in this session, and where it is."""

    state: BaselineStatus
    path: Path | None
    error: EquilawError | None = None


class Outcome(enum.Enum):
    """How an item ends."""

    PASSED = "passed"
    SKIPPED = "skipped"
    FAILED = "failed"
    """A check of the law failed (xfail when the layer is a declared deviation)."""
    COMPARISON_FAILED = "comparison failed"
    """A check against a baseline, a merge's parents or another backend failed: a
    real failure even for a declared layer."""


@dataclass(frozen=True)
class ItemOutcome:
    """An item's outcome and what it says: why it was skipped, or the failed
    checks' messages then the comparisons' small reports."""

    outcome: Outcome
    message: str = ""


@dataclass
class AuditSession:
    spec_paths: list[Path]
    reports_dir: Path | None
    """Where ``<name>.json`` goes; None writes no report files."""
    progress_factory: Callable[[], Any] | None = None
    skip_missing_models: bool = True
    """Skip a spec whose model is not installed (the default specs outside CI);
    False fails it (specs named on the command line, or CI=true)."""
    baselines_dir: Path | None = None
    """Where baselines are; None: ``baselines/`` beside each spec file."""
    update_baselines: bool = False
    """Write each audited spec's report as its baseline instead of comparing."""
    require_baselines: bool = False
    """A missing baseline is an error (under CI) for specs with ``baseline.required``."""
    cache: Any = True
    """The statistics cache (:func:`audit.pipeline.measure`): True the default
    folder, False none, or an :class:`audit.cache.stats_cache.StatsCache`."""
    cache_settings: Any = None
    """The run's :class:`audit.cache.settings.CacheSettings` that backends get (the
    file-hash index, the converted checkpoints); None: read from the environment."""
    run_outputs: tuple[Any, ...] = ()
    """Files the run writes besides the specs' own (:class:`audit.outputs.Output`: the
    HTML page, the Markdown summary), in the one-owner check."""
    outputs_refused: EquilawError | None = None
    """Why the one-owner check refused this run's files: then none is written, the
    run's own pages included."""
    _specs: list[Spec] | None = None
    _backends: dict[str, Any] = field(default_factory=dict)
    _reports: dict[str, Report] = field(default_factory=dict)
    _errors: dict[str, EquilawError] = field(default_factory=dict)
    _parents: dict[str, dict[str, Spec]] = field(default_factory=dict)
    _layer_maps: dict[str, Any] = field(default_factory=dict)
    _recipes: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, BaselineState] = field(default_factory=dict)
    parity_errors: dict[str, EquilawError] = field(default_factory=dict)
    """Spec name -> why its parity could not be judged (the first backend failed)."""
    written: list[Path] = field(default_factory=list)
    _divergence_errors: dict[str, EquilawError] = field(default_factory=dict)
    _divergence_notes: dict[str, str] = field(default_factory=dict)
    _token_records: dict[str, Any] = field(default_factory=dict)

    def specs(self) -> list[Spec]:
        """The specs that run: one per spec file, or one per backend of a spec that
        names several (``<name>.<backend>``)."""
        if self._specs is None:
            from audit.spec import per_backend

            # load_specs checks that these names are unique; check_specs that no two
            # files the run writes (reports, parents' reports, baselines) are one.
            specs = [one for spec in load_specs(self.spec_paths) for one in per_backend(spec)]
            try:
                check_specs(specs, self.reports_dir, self.baselines_dir, self.run_outputs)
            except EquilawError as exc:
                self.outputs_refused = exc
                raise
            self._specs = specs
        return self._specs

    def parity_reference(self, spec: Spec) -> Spec | None:
        """For a backend after the first of a spec that names several, the spec of
        the first backend (which its parity item compares with); else None."""
        if spec.group is None or spec.backend == spec.backends[0]:
            return None
        return next(s for s in self.specs()
                    if s.group == spec.group and s.backend == spec.backends[0])

    def backend(self, spec: Spec) -> Any:
        if spec.name not in self._backends:
            from audit.backends import open_backend

            self._backends[spec.name] = open_backend(spec, cache=self.cache_settings)
        return self._backends[spec.name]

    def num_layers(self, spec: Spec) -> int:
        """L, from the model's config or GGUF metadata: no weights are loaded.
        Also checks, before anything is measured, the spec rules that need L and,
        for a merge, that every parent resolves and the layer map fits."""
        from audit.spec import check_against_model

        layers = self.backend(spec).info().num_layers
        check_against_model(spec, layers)
        if spec.merge is not None and spec.name not in self._layer_maps:
            self._prepare_merge(spec, layers)
        if spec.reference_model is not None:
            self._open_reference(spec)
        return layers

    def _prepare_merge(self, spec: Spec, layers: int) -> None:
        from audit.compare.merge import resolve_layer_map, resolve_recipe
        from audit.errors import ModelUnavailableError

        parents: dict[str, Spec] = {}
        depths: dict[str, int] = {}
        for label, path in spec.merge.parents:
            # A parent is a checkpoint folder: it runs on torch, whatever runs the merged
            # model (the merged model's ONNX file is not the parent's).
            parent = dataclasses.replace(spec, name=parent_spec_name(spec, label), merge=None,
                                         backend="torch", backends=(), group=None,
                                         model=dataclasses.replace(spec.model, path=path,
                                                                   onnx=None))
            try:
                depths[label] = self.backend(parent).info().num_layers
            except ModelUnavailableError as exc:
                raise spec.error(f"merge.parents.{label}", f"parent {label!r} at {path}: "
                                 f"{exc.reason}") from None
            parents[label] = parent
        info = self.backend(spec).info()
        folder = Path(info.path) if Path(info.path).is_dir() else None
        self._layer_maps[spec.name] = resolve_layer_map(spec, layers, depths, folder)
        self._recipes[spec.name] = resolve_recipe(spec, layers, depths, folder)
        self._parents[spec.name] = parents

    def report(self, spec: Spec) -> Report:
        """The spec's report, computed on first use, with its comparisons (merge
        parents, baseline); a failure is remembered and raised again for every
        item of that spec."""
        if spec.name in self._errors:
            raise self._errors[spec.name]
        if spec.name not in self._reports:
            try:
                reference = self._parity_reference_report(spec)
                kld = (self._parity_divergence(spec) if reference is not None
                       else (None, None))
                report, parents, divergence = self._measure_together(spec)
                if spec.merge is not None:
                    report = self._compare_to_parents(spec, report, parents)
                if spec.model.adapter is not None:
                    report = self._compare_to_base(spec, report)
                if reference is not None:
                    from audit.compare.parity import compare_backends

                    report = compare_backends(report, reference, spec.parity, *kld)
            except EquilawError as exc:
                self._errors[spec.name] = exc
                raise
            report = self._baseline(spec, report)
            from audit.compare.output_gate import attach_divergence

            report = attach_divergence(report, divergence, spec.divergence)
            self._reports[spec.name] = report
            self._write(report)
        return self._reports[spec.name]

    def item_names(self, spec: Spec) -> list[str]:
        """The spec's items before its layer items: the law's, the baseline's, a
        merge's, an adapter's and, for a backend after the first, parity."""
        from audit.checks import items_of

        names = [*items_of("law"), *items_of("baseline"), *items_of("divergence")]
        if spec.merge is not None:
            names += items_of("merge")
        if spec.model.adapter is not None:
            names += items_of("adapter") + items_of("adapter-merged")
        if self.parity_reference(spec) is not None:
            names += items_of("parity")
        return names

    def outcome(self, spec: Spec, item: str) -> ItemOutcome:
        """The outcome of the item ``item`` (``law-fit``, ``layer-07``...) of ``spec``,
        measuring the spec first if needed.  Raises the spec's error, or the
        baseline's on a baseline item."""
        from audit.checks import comparison_kind, item_results

        report = self.report(spec)
        if item.startswith("baseline-"):
            skipped = self._baseline_outcome(spec)
            if skipped is not None:
                return skipped
        if item == "divergence":
            skipped = self._divergence_outcome(spec, report)
            if skipped is not None:
                return skipped
        if item == "parity" and spec.name in self.parity_errors:
            first = spec.backends[0]
            return ItemOutcome(Outcome.COMPARISON_FAILED,
                               f"parity with {first} not judged: the {first} audit failed: "
                               f"{self.parity_errors[spec.name]}")
        results = item_results(report.checks, item)
        if not results:
            return ItemOutcome(Outcome.SKIPPED,
                               f"{spec.name}: no threshold in the spec covers {item}")
        failed = [check for check in results if not check.passed]
        kinds = {comparison_kind(c.check) for c in failed} - {None}
        if kinds:
            from audit.report.text import comparison_text

            return ItemOutcome(Outcome.COMPARISON_FAILED, "\n".join(
                [c.message for c in failed]
                + [comparison_text(cmp, self._fix(spec, cmp.kind)) for cmp in report.comparisons
                   if cmp.kind in kinds]))
        if failed:
            return ItemOutcome(Outcome.FAILED, "\n".join(check.message for check in failed))
        return ItemOutcome(Outcome.PASSED)

    def _baseline_outcome(self, spec: Spec) -> ItemOutcome | None:
        """A baseline item's skip when there was nothing to compare with."""
        from audit.compare.baseline import UPDATE_COMMAND

        state = self.baselines.get(spec.name)
        if state is None:
            return None
        if state.state is BaselineStatus.ERROR:
            raise state.error
        if state.state is BaselineStatus.MISSING:
            return ItemOutcome(Outcome.SKIPPED,
                               f"{spec.name}: no baseline at {os.path.relpath(state.path)}; "
                               f"create it with: {UPDATE_COMMAND.format(name=spec.name)}")
        if state.state is BaselineStatus.WRITTEN:
            return ItemOutcome(Outcome.SKIPPED,
                               f"{spec.name}: baseline written to {os.path.relpath(state.path)}")
        return None

    @staticmethod
    def _fix(spec: Spec, kind: str) -> str | None:
        """How to accept an intended change, for a failed comparison of ``kind``."""
        if kind != "baseline":
            return None
        from audit.compare.baseline import UPDATE_COMMAND

        return ("if the change is intended, accept it: "
                f"{UPDATE_COMMAND.format(name=spec.name)}")

    def _parity_reference_report(self, spec: Spec) -> Report | None:
        """The first backend's report, measured before this backend's so that one
        model at a time is held; when it failed, the error is kept for the parity
        item and this backend is audited on its own."""
        reference = self.parity_reference(spec)
        if reference is None:
            return None
        try:
            return self.report(reference)
        except EquilawError as exc:
            self.parity_errors[spec.name] = exc
            self._backends.pop(reference.name, None)
            return None

    def _parity_divergence(self, spec: Spec) -> tuple[Any, str | None]:
        """This backend's next-token distribution against the first backend's (the
        ``parity_kld`` check), with this backend left open for its measurement; a
        comparison that cannot be made is a note that fails the check."""
        first = self.parity_reference(spec)
        if spec.parity.max_kld_mean is None:
            return None, None
        try:
            return self._divergence_from(spec, first, f"backend:{first.backend}", keep=spec)
        except EquilawError as exc:
            return None, str(exc)

    def _measure(self, spec: Spec) -> Report:
        from audit.pipeline import judge, measure

        progress = self.progress_factory() if self.progress_factory else None
        try:
            return judge(measure(spec, backend=self.backend(spec), progress=progress,
                                 cache=self.cache))
        finally:
            # The report holds every number the items need: free the model, unless a
            # later backend's parity compares next-token distributions with it.
            if not self._held_for_parity(spec):
                self._backends.pop(spec.name, None)

    def _held_for_parity(self, spec: Spec) -> bool:
        """Whether ``spec`` is the first backend of a group whose later backend, not yet
        reported, compares next-token distributions with it (``parity.max_kld_mean``):
        its model stays loaded until then, so that it is loaded once."""
        return spec.group is not None and spec.backend == spec.backends[0] and any(
            other.group == spec.group and other.name != spec.name
            and other.name not in self._reports and other.name not in self._errors
            and other.parity.max_kld_mean is not None for other in self.specs())

    def _compare_to_parents(self, spec: Spec, report: Report,
                            parents: dict[str, Report]) -> Report:
        """``report`` against its parents' reports, measured on the same windows
        (:meth:`_measure_together`) and written beside it."""
        from audit.compare.merge import compare_to_parents

        for parent in parents.values():
            self._write(parent)
        return compare_to_parents(report, parents, self._layer_maps[spec.name], spec.baseline,
                                  self._recipes[spec.name])

    def _compare_to_base(self, spec: Spec, report: Report) -> Report:
        """``report`` (the adapter's, unmerged) against its merge and its base, both
        measured now on the same windows and written beside it, with the adapted
        model's next-token divergence from the base (a ``base`` row, reported and not
        gated: an adapter is meant to change the distribution).  The base is a
        separate load: peft changes the model an adapter is loaded into in place.  The
        merge is ``merge_and_unload()``'s, or the checkpoint at ``adapter.merged``."""
        from audit.backends.torch_backend import MergedAdapterBackend
        from audit.compare.adapter import compare_to_base, compare_to_merged

        merged = dataclasses.replace(spec, name=f"{spec.name}.merged")
        if spec.adapter.merged is not None:   # the base's tokenizer: the same tokens
            merged = dataclasses.replace(merged, model=dataclasses.replace(
                spec.model, path=spec.adapter.merged, adapter=None,
                tokenizer=spec.model.tokenizer or spec.model.path))
        else:
            self._backends[merged.name] = MergedAdapterBackend(merged.model, merged.name,
                                                               cache=self.cache_settings)
        merged_report = self._measure(merged)
        base = dataclasses.replace(spec, name=f"{spec.name}.base",
                                   model=dataclasses.replace(spec.model, adapter=None))
        row, _ = self._divergence_from(spec, base, "base", keep=base)
        base_report = self._measure(base)
        for other in (merged_report, base_report):
            self._write(other)
        report = compare_to_base(report, base_report, spec.adapter)
        report = compare_to_merged(report, merged_report, spec.adapter, spec.model.dtype)
        return dataclasses.replace(report, divergence=report.divergence
                                   + ((row,) if row is not None else ()))

    def _divergence_from(self, spec: Spec, reference: Spec, source: str,
                         keep: Spec | None) -> tuple[Any, str | None]:
        """``spec``'s model against ``reference``'s, token by token on the probe
        windows (:func:`audit.compare.outputs.compare_outputs`), as a divergence row
        named ``source``, not gated; or None and why, when a model has no next-token
        head.  Both backends are opened here; ``keep``'s stays open for its
        measurement, the other is released (both with ``keep`` None)."""
        from audit.compare.outputs import compare_outputs
        from audit.corpus import load_corpus
        from audit.probe import probe_input
        from audit.report.data import DivergenceRow

        model, other = self.backend(spec), self.backend(reference)
        try:
            for one in (model, other):
                one.load()
            notes = [one.head_note for one in (other, model) if one.head_note is not None]
            if notes:
                return None, notes[0]
            windows = probe_input(spec, load_corpus(spec.probe.corpus), model)
            result = compare_outputs(model, other, windows, batch_size=spec.probe.batch_size)
        finally:
            for one in (spec, reference):
                if keep is None or one.name != keep.name:
                    self._backends.pop(one.name, None)
        shown = reference.model.onnx if reference.backend == "onnx" else reference.model.path
        return DivergenceRow(source, shown, False, result), None

    def _baseline(self, spec: Spec, report: Report) -> Report:
        from audit.compare.baseline import (
            baseline_path,
            compare_to_baseline,
            missing_baseline_error,
            read_baseline,
        )

        try:
            path = baseline_path(spec, self.baselines_dir)
            if self.update_baselines:
                from audit.compare.output_gate import write_baseline_with_record

                write_baseline_with_record(report, path, self._token_records.pop(spec.name, None))
                self.baselines[spec.name] = BaselineState(BaselineStatus.WRITTEN, path)
            elif os.path.lexists(path):   # unreadable (a folder, a dangling link) fails
                shown = os.path.relpath(path)
                report = compare_to_baseline(report, read_baseline(path, shown), spec.baseline,
                                             shown)
                self.baselines[spec.name] = BaselineState(BaselineStatus.COMPARED, path)
            elif self.require_baselines and spec.baseline.required:
                raise missing_baseline_error(spec, path)
            else:
                self.baselines[spec.name] = BaselineState(BaselineStatus.MISSING, path)
        except EquilawError as exc:
            self.baselines[spec.name] = BaselineState(BaselineStatus.ERROR, None, exc)
        return report

    def reference_spec(self, spec: Spec) -> Spec:
        """The spec ``reference_model`` runs under: the spec's probe and model settings
        (tokenizer, device, dtype) with the reference's path, on torch, named
        ``<spec>.reference`` (its report ``reports/<spec>.reference.json``)."""
        return dataclasses.replace(
            spec, name=f"{spec.name}.reference", merge=None, reference_model=None,
            backend="torch", backends=(), group=None,
            model=dataclasses.replace(spec.model, path=spec.reference_model.path, onnx=None))

    def _open_reference(self, spec: Spec) -> None:
        """Resolve the reference model before anything is measured: a SpecError
        naming ``reference_model.path`` when it cannot be found."""
        from audit.errors import ModelUnavailableError

        try:
            self.backend(self.reference_spec(spec)).info()
        except ModelUnavailableError as exc:
            raise spec.error("reference_model.path", f"reference model at "
                             f"{spec.reference_model.path}: {exc.reason}") from None

    def _measure_together(self, spec: Spec) -> tuple[Report, dict[str, Report], list]:
        """The spec's report, its merge parents' reports (by label) and its divergence
        rows, from one lockstep pass (:func:`audit.lockstep.run_together`): the model,
        the reference model (whose report is written here) and each parent go over
        the probe once, both or all loaded, and the logits of each batch's forward
        passes are compared as they come: the model against the reference and each
        parent, against the stored baseline's token record, or (``update_baselines``)
        into the token record the baseline gets.  A measurement served from the
        statistics cache has no logits: such a model runs again for its logits only.
        A comparison that cannot be made is kept for the ``divergence`` item; the
        reference row carries the per-layer drift against the reference's report.
        With nothing to compare, the model is measured alone (:meth:`_measure`)."""
        from audit.cache.stats_cache import open_cache
        from audit.compare.baseline import baseline_path
        from audit.compare.output_gate import reference_drift, token_record_path
        from audit.compare.outputs import (
            PairComparison,
            RecordBuilder,
            RecordComparison,
            same_tokenizer,
        )
        from audit.compare.token_record import load_token_record
        from audit.lockstep import Consumer, Member, run_together
        from audit.pipeline import judge
        from audit.report.data import DivergenceRow

        try:
            record = token_record_path(baseline_path(spec, self.baselines_dir))
        except EquilawError:
            record = None
        stored = record is not None and not self.update_baselines and record.exists()
        wanted = self.update_baselines and record is not None
        compares = bool(stored or wanted or spec.reference_model or spec.merge)
        if not compares:
            return self._measure(spec), {}, []
        self.num_layers(spec)
        model = Member("model", spec, self.backend(spec), logits=True)
        members, consumers = [model], {}
        if spec.reference_model is not None:
            members.append(Member("reference", self.reference_spec(spec),
                                  self.backend(self.reference_spec(spec)), logits=True,
                                  required=False))
        members += [Member(f"parent:{label}", parent, self.backend(parent), logits=True)
                    for label, parent in self._parents.get(spec.name, {}).items()]
        for other in members[1:]:
            consumers[other.name] = Consumer((other.name, "model"), PairComparison())
            try:
                same_tokenizer(model.backend, other.backend)
            except EquilawError as exc:
                consumers[other.name].error, other.logits = exc, False
        vocab = model.backend.tokenizer_info().get("vocab_sha256")
        if wanted:
            consumers["record"] = Consumer(("model",), RecordBuilder(spec.divergence.top_k))
        elif stored:
            try:
                consumers["baseline"] = Consumer(("model",), RecordComparison(
                    load_token_record(record), vocab))
            except EquilawError as exc:
                consumers["baseline"] = Consumer(("model",), None, exc)
        progress = self.progress_factory() if self.progress_factory else None
        try:
            run_together(members, list(consumers.values()), store=open_cache(self.cache),
                         progress=progress)
        finally:
            # The reports hold every number the items need: free the models (the
            # model's stays while a later backend's parity compares logits with it).
            for member in members:
                if member is not model or not self._held_for_parity(spec):
                    self._backends.pop(member.spec.name, None)
        report = judge(model.measurement)
        parents = {m.name.partition(":")[2]: judge(m.measurement) for m in members
                   if m.name.startswith("parent:")}
        if model.backend.head_note is not None:
            self._divergence_notes[spec.name] = (f"{spec.name}: no next-token distribution to "
                                                 f"compare: {model.backend.head_note}")
            return report, parents, []
        rows, errors = [], [c.error for c in consumers.values() if c.error is not None]
        if spec.reference_model is not None and members[1].error is None:
            reference = judge(members[1].measurement)
            self._write(reference)
            if consumers["reference"].error is None:
                rows.append(DivergenceRow(
                    "reference_model", spec.reference_model.path, True,
                    consumers["reference"].target.result(),
                    drift=reference_drift(report, reference, spec.baseline)))
        for member in members:
            done = consumers.get(member.name)
            if member.name.startswith("parent:") and done.error is None:
                rows.append(DivergenceRow(member.name, member.spec.model.path, False,
                                          done.target.result()))
        done = consumers.get("record") or consumers.get("baseline")
        try:
            if done is not None and done.error is None and wanted:
                self._token_records[spec.name] = done.target.record(vocab)
            elif done is not None and done.error is None:
                rows.append(DivergenceRow("baseline", os.path.relpath(record), True,
                                          done.target.result()))
        except EquilawError as exc:
            errors.append(exc)
        if errors:
            self._divergence_errors[spec.name] = errors[0]
        return report, parents, rows

    def _divergence_outcome(self, spec: Spec, report: Report) -> ItemOutcome | None:
        """The divergence item's skip when nothing gates it, or its error."""
        from audit.checks import item_results
        from audit.compare.baseline import UPDATE_COMMAND
        from audit.compare.output_gate import token_record_path

        if spec.name in self._divergence_errors:
            raise self._divergence_errors[spec.name]
        if item_results(report.checks, "divergence"):
            return None
        if spec.name in self._divergence_notes:
            return ItemOutcome(Outcome.SKIPPED, self._divergence_notes[spec.name])
        state = self.baselines.get(spec.name)
        command = UPDATE_COMMAND.format(name=spec.name)
        if state is None or state.state is BaselineStatus.ERROR:
            why = "no baseline" if state is None else f"the baseline failed: {state.error}"
            return ItemOutcome(Outcome.SKIPPED, f"{spec.name}: no reference_model and {why}")
        shown = os.path.relpath(token_record_path(state.path))
        if state.state is BaselineStatus.WRITTEN:
            return ItemOutcome(Outcome.SKIPPED, f"{spec.name}: baseline token record written "
                                                f"to {shown}")
        if state.state is BaselineStatus.MISSING:
            return ItemOutcome(Outcome.SKIPPED,
                               f"{spec.name}: no baseline at {os.path.relpath(state.path)} and "
                               f"no reference_model to judge the next-token distribution "
                               f"against; create the baseline and its token record with: "
                               f"{command}")
        return ItemOutcome(Outcome.SKIPPED,
                           f"{spec.name}: the baseline {os.path.relpath(state.path)} has no "
                           f"token record ({shown}) to judge the next-token distribution "
                           f"against; write it with: {command}")

    def _write(self, report: Report) -> None:
        if self.reports_dir is not None:
            from audit.report.json_report import write_json

            self.written.append(write_json(report, self.reports_dir))

    @property
    def reports(self) -> list[Report]:
        return list(self._reports.values())
