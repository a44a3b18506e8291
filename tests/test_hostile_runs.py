"""Hostile files met during a run (issue 29, items 3 and 8): a baseline that does not
fit the model fails only the baseline items, with one clear message, while the law
items run and the report is written; two outputs of one run that would land on the
same file are refused before anything is measured (at collection, when the session
loads its specs).  Each case checks the exact
message and that the spec folder (spec, baselines) is unchanged on disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_plugin import ITEMS, inner  # noqa: F401 (inner: a fixture)
from test_report import LAYERS, synthetic_report

from audit.compare.baseline import compare_to_baseline, read_baseline, write_baseline
from audit.errors import ComparisonError, EquilawError, SpecError
from audit.outputs import Output
from audit.session import AuditSession, BaselineStatus, Outcome
from audit.spec import BaselineSpec


def folder_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _fewer_layers(data: dict) -> None:
    data["layers"] = data["layers"][:5]


def _more_layers(data: dict) -> None:
    extra = [dict(data["layers"][-1], index=len(data["layers"]) + i) for i in range(4)]
    data["layers"] = data["layers"] + extra


def _string_pearson_r(data: dict) -> None:
    data["law"]["pearson_r"] = "-0.97"


def _short_loo(data: dict) -> None:
    data["layers"][3]["log10_pr_loo"] = data["layers"][3]["log10_pr_loo"][:2]


def _spec_not_a_mapping(data: dict) -> None:
    data["spec"] = "synth"


SPEC_BASELINE = BaselineSpec()
BASELINE = "the baseline specs/baselines/synth.json does not fit this model: "


@pytest.mark.parametrize("damage, error, message", [
    (_fewer_layers, ComparisonError, BASELINE + f"layers describe 4 layers, this model has "
                                                f"{LAYERS}; regenerate it"),
    (_more_layers, ComparisonError, BASELINE + f"layers describe 10 layers, this model has "
                                               f"{LAYERS}; regenerate it"),
    (_string_pearson_r, ComparisonError, BASELINE + "law.pearson_r is '-0.97', not a number; "
                                                    "regenerate it"),
    (_short_loo, ComparisonError, BASELINE + "layers[3].log10_pr_loo has 2 values for 5 shards; "
                                             "regenerate it"),
    (_spec_not_a_mapping, ComparisonError, BASELINE + "spec is str, not a mapping; "
                                                      "regenerate it"),
    ("deep", ComparisonError, "the baseline specs/baselines/synth.json is unreadable: not JSON "
                              "(maximum recursion depth exceeded while decoding a JSON array "
                              "from a unicode string); an unreadable baseline fails the "
                              "comparison: restore it, or delete it and write it again with: "
                              "pytest audit/ --audit-update-baseline -k synth"),
], ids=["fewer-layers", "more-layers", "string-pearson-r", "short-loo", "spec-string", "deep"])
def test_a_baseline_that_does_not_fit_fails_only_the_baseline_items(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage, error, message: str) -> None:
    specs = tmp_path / "specs"
    (specs / "baselines").mkdir(parents=True)
    (specs / "synth.yaml").write_text(
        "name: synth\nmodel: /models/synth\nprobe:\n  sequences: 16\n  length: 8\n"
        "  shards: 5\nlaw:\n  max_pearson_r: -0.9\n  rho: [0.7, 0.9]\n  max_deviation: 0.05\n"
        "  min_step_fraction: 0.5\n")
    baseline = specs / "baselines" / "synth.json"
    if damage == "deep":
        baseline.write_text("[" * 100_000 + "]" * 100_000)
    else:
        write_baseline(synthetic_report(bump=0.0), baseline)
        data = json.loads(baseline.read_text())
        damage(data)
        baseline.write_text(json.dumps(data))
    before = folder_sha256(specs)
    monkeypatch.chdir(tmp_path)
    session = AuditSession([specs], tmp_path / "reports")
    measured = []
    monkeypatch.setattr(session, "_measure",
                        lambda spec: measured.append(spec.name) or synthetic_report())
    spec = session.specs()[0]
    # the law items run and judge as without a baseline (layer 4 is bumped off the line)
    assert session.outcome(spec, "law-fit").outcome is Outcome.PASSED
    assert session.outcome(spec, "layer-04").outcome is Outcome.FAILED
    assert session.outcome(spec, "layer-01").outcome is Outcome.PASSED
    for item in ("baseline-law", "baseline-loss"):
        with pytest.raises(error) as err:
            session.outcome(spec, item)
        assert str(err.value) == message
    assert session.baselines["synth"].state is BaselineStatus.ERROR
    assert measured == ["synth"]  # measured once, not once per item
    written = json.loads((tmp_path / "reports" / "synth.json").read_text())
    assert (written["verdict"], written["comparisons"]) == ("fail", [])
    assert folder_sha256(specs) == before
    assert issubclass(error, EquilawError)


_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8))
_junk = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=12)
_PATHS = [("law", "pearson_r"), ("law", "rho"), ("layers",), ("layers", 2),
          ("layers", 2, "log10_pr"), ("layers", 2, "log10_pr_loo"), ("layers", 2, "index"),
          ("layers", 2, "log10_pr_loo", 1), ("shard_ids",), ("shard_ids", 0), ("probe",),
          ("probe", "tokenizer"), ("probe", "windows_sha256"), ("spec",), ("spec", "probe"),
          ("corpus",), ("loss",), ("loss", "mean"), ("loss", "leave_one_out"), ("versions",),
          ("model",), ("model", "layers"), ("warnings",), ("checks",)]


@settings(deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(st.tuples(st.sampled_from(_PATHS), _junk), min_size=1, max_size=3))
def test_a_junk_baseline_is_compared_or_refused(tmp_path_factory, edits) -> None:
    """Any baseline the reader accepts is compared, or refused with the project's error:
    never a numpy or attribute error from inside the comparison."""
    now = synthetic_report()
    data = synthetic_report(bump=0.0).to_dict()
    for path, value in edits:
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    baseline = tmp_path_factory.mktemp("junk") / "synth.json"
    baseline.write_text(json.dumps(data))
    try:
        then = read_baseline(baseline)
        compare_to_baseline(now, then, SPEC_BASELINE, "synth.json")
    except EquilawError:
        pass


# -- item 8: one owner per file ---------------------------------------------------------

def _specs_folder(tmp_path: Path, files: dict[str, str]) -> Path:
    specs = tmp_path / "specs"
    specs.mkdir()
    for name, text in files.items():
        (specs / name).write_text(text)
    return specs


def _refused(tmp_path: Path, specs: Path, baselines: Path | None = None) -> str:
    before = folder_sha256(tmp_path)
    session = AuditSession([specs], tmp_path / "reports", baselines_dir=baselines)
    with pytest.raises(SpecError) as err:
        session.specs()
    assert folder_sha256(tmp_path) == before and not (tmp_path / "reports").exists()
    return str(err.value)


def test_a_spec_named_like_a_merge_parents_report_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    specs = _specs_folder(tmp_path, {
        "m-parent.yaml": "name: m.parent-a\nmodel: /models/a\n",
        "m.yaml": "name: m\nmodel: /models/m\nmerge:\n  parents:\n    a: /models/a\n"
                  "    b: /models/b\n"})
    assert _refused(tmp_path, specs) == (
        f"{specs / 'm.yaml'}:5: merge.parents.a: reports/m.parent-a.json would be written as "
        "the report of parent 'a' of spec 'm' and as the report of spec 'm.parent-a': every "
        "file a run writes has one owner; rename one of them")


def test_a_spec_named_like_another_specs_mutation_report_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    specs = _specs_folder(tmp_path, {"a.yaml": "name: x\nmodel: /models/x\n",
                                     "b.yaml": "name: x.mutations\nmodel: /models/x\n"})
    assert _refused(tmp_path, specs) == (
        f"{specs / 'b.yaml'}:1: name: reports/x.mutations.json would be written as the report "
        "of spec 'x.mutations' and as the mutation report of spec 'x': every file a run writes "
        "has one owner; rename one of them")


def test_a_spec_named_like_an_adapters_base_report_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    specs = _specs_folder(tmp_path, {"a.yaml": "name: x\nmodel: /models/x\n",
                                     "b.yaml": "name: x.base\nmodel: /models/x\n"})
    assert _refused(tmp_path, specs) == (
        f"{specs / 'b.yaml'}:1: name: reports/x.base.json would be written as the report "
        "of spec 'x.base' and as the report of the adapter's base of spec 'x': every file a run "
        "writes has one owner; rename one of them")


def test_baselines_in_the_reports_folder_are_refused(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The report would overwrite the baseline it was just compared with."""
    monkeypatch.chdir(tmp_path)
    specs = _specs_folder(tmp_path, {"a.yaml": "name: x\nmodel: /models/x\n"})
    assert _refused(tmp_path, specs, baselines=tmp_path / "reports") == (
        f"{specs / 'a.yaml'}:1: name: reports/x.json would be written as the baseline of spec "
        "'x' and as the report of spec 'x': every file a run writes has one owner; rename one "
        "of them")


def test_distinct_outputs_pass_and_list_every_file(tmp_path: Path) -> None:
    from audit.outputs import check_one_owner, spec_outputs

    specs = _specs_folder(tmp_path, {
        "m.yaml": "name: m\nmodel: /models/m\nmerge:\n  parents:\n    a: /models/a\n"
                  "    B c: /models/b\n"})
    session = AuditSession([specs], tmp_path / "reports")
    (spec,) = session.specs()
    outputs = spec_outputs(spec, tmp_path / "reports")
    assert [str(o.path.relative_to(tmp_path)) for o in outputs] == [
        "reports/m.json", "reports/m.reference.json", "reports/m.base.json",
        "reports/m.merged.json", "reports/m.mutations.json",
        "reports/m.trajectory.json", "reports/m.parent-a.json", "reports/m.parent-b-c.json",
        "specs/baselines/m.json", "specs/baselines/m.tokens.npz"]
    with pytest.raises(SpecError) as err:  # the run's own files (an HTML page) count too
        check_one_owner([Output(tmp_path / "reports" / "m.json", "the HTML page of the run"),
                         *outputs])
    assert err.value.field == "name" and err.value.reason.endswith(
        "as the report of spec 'm' and as the HTML page of the run: every file a run writes "
        "has one owner; rename one of them")


def test_pytest_refuses_the_collision_at_collection(inner,  # noqa: F811 (the fixture)
                                                    pytester: pytest.Pytester) -> None:
    """Through pytest: the run stops at collection, nothing measured or written (the
    models named do not even exist)."""
    specs = pytester.path / "specs"
    specs.mkdir()
    (specs / "m-parent.yaml").write_text("name: m.parent-a\nmodel: /models/a\n")
    (specs / "m.yaml").write_text("name: m\nmodel: /models/m\nmerge:\n  parents:\n"
                                  "    a: /models/a\n    b: /models/b\n")
    before = folder_sha256(specs)
    result = inner("--audit-spec", str(specs), ITEMS)
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error stops the run
    result.stdout.fnmatch_lines([
        "*m.yaml:5: merge.parents.a: *m.parent-a.json would be written as the report of "
        "parent 'a' of spec 'm' and as the report of spec 'm.parent-a': every file a run "
        "writes has one owner; rename one of them"])
    assert folder_sha256(specs) == before and not inner.reports.exists()


def test_the_html_page_named_like_a_report_is_refused(inner,  # noqa: F811 (the fixture)
                                                      pytester: pytest.Pytester) -> None:
    specs = pytester.path / "specs"
    specs.mkdir()
    (specs / "m.yaml").write_text("name: m\nmodel: /models/m\n")
    result = inner("--audit-spec", str(specs), "--audit-html", str(inner.reports / "m.json"),
                   ITEMS)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        "*m.yaml:1: name: *reports/m.json would be written as the report of spec 'm' and as "
        "the HTML page of the run: every file a run writes has one owner; rename one of them"])
    assert not inner.reports.exists()
