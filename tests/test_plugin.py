"""The pytest plugin, driven through inner pytest runs (pytester) on a tiny random
Llama: item ids, selection, outcomes and messages, xfail/XPASS, reports, spec errors,
missing models under CI, and that the model is loaded once per spec."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

import audit.plugin
from audit.synthetic.tiny import TINY_LAYERS

ITEMS = str(Path(audit.plugin.__file__).with_name("test_models.py"))

# Counts weight loads in the inner run (a load is a TorchBackend.load() that finds
# no model yet) and writes them to loads.json when the session ends.
LOAD_COUNTER = '''
import json
from audit.backends import torch_backend

LOADS = []
_load = torch_backend.TorchBackend.load

def load(self):
    if self._model is None:
        LOADS.append(self.name)
    return _load(self)

torch_backend.TorchBackend.load = load

def pytest_sessionfinish(session):
    with open("loads.json", "w") as f:
        json.dump(LOADS, f)
'''

GENEROUS = {"max_pearson_r": 1.0, "rho": [0.0, 10.0], "max_deviation": 10.0,
            "max_deviation_sigma": 1000.0, "min_step_fraction": -1000.0}


def write_spec(folder: Path, name: str, model: Path | str, law: dict) -> Path:
    lines = [f"name: {name}", "model:", f"  path: {model}", "probe:", "  sequences: 16",
             "  length: 24", "  batch_size: 8", "  shards: 4", "law:"]
    # a str is written as is: YAML reads 1e-08 as a string, 0.00000001 as a number
    lines += [f"  {key}: {value if isinstance(value, str) else json.dumps(value)}"
              for key, value in law.items()]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def inner(pytester: pytest.Pytester, tmp_path: Path):
    """Runs ``pytest`` in a subprocess inside the pytester folder (its own rootdir and
    ini, so the checkout's conftest and pyproject do not apply), with the load
    counter, reports going to ``tmp_path/reports``."""
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(loadcount=LOAD_COUNTER)
    reports = tmp_path / "reports"

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-p", "loadcount", "--audit-reports", str(reports),
            "-rA", *args)

    run.reports = reports
    run.loads = lambda: json.loads((pytester.path / "loads.json").read_text())
    return run


_ITEM_ID = re.compile(r"(?:^|::)([a-z0-9._-]+::(?:law-fit|law-rho|baseline-law|baseline-loss|"
                      r"merge-law|merge-loss|parity|layer-\d+))$")


def _names(result: pytest.RunResult) -> list[str]:
    """``<spec>::<item>`` of each collected item in ``--collect-only -q`` output (the
    file part of the node id depends on where the items module lies)."""
    return [m.group(1) for line in result.outlines if (m := _ITEM_ID.search(line.strip()))]


def test_collect_only_gives_the_item_ids_without_loading(
        inner, pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    spec = write_spec(pytester.path, "tiny-a", tiny_model_dir, GENEROUS)
    result = inner("--audit-spec", str(spec), "--collect-only", "-q", ITEMS)
    assert result.ret == 0
    assert _names(result) == ["tiny-a::law-fit", "tiny-a::law-rho", "tiny-a::baseline-law",
                              "tiny-a::baseline-loss"] + [
        f"tiny-a::layer-{layer:02d}" for layer in range(1, TINY_LAYERS + 1)]
    assert inner.loads() == []  # collection reads the config only
    assert not inner.reports.exists()

    picked = inner("--audit-spec", str(spec), "--collect-only", "-q", "-k", "layer-02", ITEMS)
    assert _names(picked) == ["tiny-a::layer-02"]
    picked = inner("--audit-spec", str(spec), "--collect-only", "-q", "-k", "tiny-a and law",
                   "--pyargs", "audit")
    assert _names(picked) == ["tiny-a::law-fit", "tiny-a::law-rho", "tiny-a::baseline-law"]


def test_pass_fail_xfail_xpass_reports_and_one_load_per_spec(
        inner, pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    good = write_spec(pytester.path, "tiny-good", tiny_model_dir,
                      {**GENEROUS, "expected_deviations": [3]})
    # r > 0 at random init; a zero deviation tolerance fails every layer
    bad = write_spec(pytester.path, "tiny-bad", tiny_model_dir,
                     {"max_pearson_r": -0.99, "max_deviation": "0.00000001", "expected_deviations": [2]})
    result = inner("--audit-spec", str(good), "--audit-spec", str(bad), ITEMS)
    layers = TINY_LAYERS
    # good: law-fit, law-rho and every layer but 3 pass, 3 XPASSes; bad: law-fit and
    # every layer but 2 fail, 2 xfails, law-rho is skipped (no rho threshold); neither
    # has a baseline yet: baseline-law and baseline-loss skip, saying how to write one
    result.assert_outcomes(passed=2 + layers - 1, xpassed=1, failed=1 + layers - 1, xfailed=1,
                           skipped=1 + 4)
    result.stdout.fnmatch_lines(["SKIPPED [[]2[]] *tiny-good: no baseline at *baselines/tiny-good.json; "
                                 "create it with: pytest audit/ --audit-update-baseline -k tiny-good"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # each spec's model is loaded once, although each has layers + 2 items
    assert sorted(inner.loads()) == ["tiny-bad", "tiny-good"]

    # passing spec: every item passes, the declared layer XPASSes (non-strict)
    result.stdout.fnmatch_lines(["PASSED *tiny-good::law-fit", "PASSED *tiny-good::law-rho",
                                 "PASSED *tiny-good::layer-01", "XPASS *tiny-good::layer-03*"])
    good_report = json.loads((inner.reports / "tiny-good.json").read_text())
    assert good_report["verdict"] == "pass" and good_report["violations"] == []
    assert good_report["name"] == "tiny-good" and len(good_report["layers"]) == layers + 1

    # failing spec: the message names the check, the value with its stderr, the threshold
    bad_report = json.loads((inner.reports / "tiny-bad.json").read_text())
    assert bad_report["verdict"] == "fail"
    law = bad_report["law"]
    assert law["pearson_r"] > 0
    message = f"pearson_r {law['pearson_r']:.4f} ± {law['pearson_r_se']:.2g} > max_pearson_r -0.99"
    result.stdout.fnmatch_lines(["*tiny-bad::law-fit (*tiny-bad.yaml)", message])
    result.stdout.fnmatch_lines(["XFAIL *tiny-bad::layer-02*declared in law.expected_deviations*",
                                 "FAILED *tiny-bad::law-fit*", "FAILED *tiny-bad::layer-01*"])
    layer1 = next(row for row in bad_report["layers"] if row["index"] == 1)
    # the summary's layer table is wide enough to show whole cells
    result.stdout.fnmatch_lines(["*tiny-bad  FAIL*", f"* 1  {layer1['pr']:.5f} *  violation *"])
    result.stdout.fnmatch_lines([
        f"layer 1: deviation {layer1['deviation']:+.3g} ± {layer1['deviation_se']:.2g}: "
        f"|deviation| {abs(layer1['deviation']):.3g} > max_deviation 1e-08"])
    result.stdout.fnmatch_lines(["SKIPPED *tiny-bad: no threshold in the spec covers law-rho"])
    assert sorted(p.name for p in inner.reports.iterdir()) == ["tiny-bad.json", "tiny-good.json"]

    # the terminal summary: one rich report per spec, and where the files went
    result.stdout.fnmatch_lines(["*equilaw reports*", "*tiny-good  PASS*", "*tiny-bad  FAIL*",
                                 "report written: *tiny-good.json",
                                 "report written: *tiny-bad.json"])


def test_invalid_spec_is_a_collection_error_and_writes_nothing(
        inner, pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    spec = pytester.path / "typo.yaml"
    spec.write_text(textwrap.dedent(f"""\
        name: typo
        model:
          path: {tiny_model_dir}
        probe:
          sequences: 16
          lenght: 24
        """))
    result = inner("--audit-spec", str(spec), ITEMS)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        f"*{spec}:6: probe.lenght: unknown key; did you mean 'length'?*"])
    result.stdout.fnmatch_lines(["*1 error*"])
    assert not inner.reports.exists()
    assert inner.loads() == []


def test_missing_model_skips_or_fails_under_ci(
        inner, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A default spec (model_specs/ under the rootdir) whose model is absent skips,
    except under CI; a spec named with --audit-spec fails the run everywhere (a
    typo must not turn a release gate green)."""
    missing = pytester.path / "no-such-model"
    (pytester.path / "model_specs").mkdir()
    spec = write_spec(pytester.path / "model_specs", "ghost", missing, GENEROUS)
    monkeypatch.delenv("CI", raising=False)
    ini = next(pytester.path.glob("*.ini"))
    as_default = ("-c", str(ini), "--rootdir", str(pytester.path))
    result = inner(*as_default, ITEMS)
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["SKIPPED *ghost: *no-such-model*"])

    result = inner("--audit-spec", str(spec), ITEMS)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*no-such-model*(a spec named with --audit-spec or audit_specs: "
                                 "a missing model fails the run)*", "*1 error*"])

    monkeypatch.setenv("CI", "true")
    result = inner(*as_default, ITEMS)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*no-such-model*(CI=true: a missing model fails the run)*",
                                 "*1 error*"])
    assert not inner.reports.exists()


def test_plain_test_runs_never_collect_audit_items(
        inner, pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    spec = write_spec(pytester.path, "tiny-a", tiny_model_dir, GENEROUS)
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")
    result = inner("--audit-spec", str(spec), "test_plain.py")
    result.assert_outcomes(passed=1)
    assert "tiny-a" not in result.stdout.str()
    assert "equilaw reports" not in result.stdout.str()
    assert inner.loads() == []
    assert not inner.reports.exists()


def test_two_backends_give_items_reports_and_a_parity_item_each(
        inner, pytester: pytest.Pytester, tiny_model_dir: Path, tiny_onnx: Path) -> None:
    law = "law:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in GENEROUS.items())
    for name, parity in (("tiny-p", ""), ("tiny-q", "parity:\n  max_log10_pr_difference: 1.0e-15\n")):
        (pytester.path / f"{name}.yaml").write_text(
            f"name: {name}\nmodel:\n  path: {tiny_model_dir}\n  onnx: {tiny_onnx}\n"
            "backend: [torch, onnx]\nprobe:\n  sequences: 16\n  length: 24\n  shards: 4\n"
            + law + parity)
    collected = inner("--audit-spec", str(pytester.path / "tiny-p.yaml"), "--collect-only", "-q",
                      ITEMS)
    layers = [f"layer-{layer:02d}" for layer in range(1, TINY_LAYERS + 1)]
    per_backend = ["law-fit", "law-rho", "baseline-law", "baseline-loss"]
    assert _names(collected) == (
        [f"tiny-p.torch::{n}" for n in per_backend + layers]
        + [f"tiny-p.onnx::{n}" for n in per_backend + ["parity"] + layers])

    result = inner("--audit-spec", str(pytester.path / "tiny-p.yaml"),
                   "--audit-spec", str(pytester.path / "tiny-q.yaml"), ITEMS)
    out = result.stdout.str()
    assert re.search(r"PASSED .*tiny-p\.onnx::parity", out)
    assert re.search(r"FAILED .*tiny-q\.onnx::parity", out)
    assert "parity with torch: first moved layer 1" in out
    assert "> parity.max_log10_pr_difference 1e-15" in out
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1 and outcomes["passed"] == 4 * (2 + TINY_LAYERS) + 1
    assert sorted(p.name for p in inner.reports.iterdir()) == [
        "tiny-p.onnx.json", "tiny-p.torch.json", "tiny-q.onnx.json", "tiny-q.torch.json"]
    onnx_report = json.loads((inner.reports / "tiny-p.onnx.json").read_text())
    (parity,) = onnx_report["comparisons"]
    assert onnx_report["backend"] == "onnx" and parity["kind"] == "parity"
    assert parity["reference"] == "torch"
    assert max(abs(row["drift"]) for row in parity["rows"]) < 1e-7  # measured: about 1e-9
    torch_report = json.loads((inner.reports / "tiny-p.torch.json").read_text())
    assert torch_report["backend"] == "torch" and torch_report["comparisons"] == []
    # the terminal shows both reports
    assert out.count("tiny-p.torch") >= 2 and "report written: " in out
    assert inner.loads() == ["tiny-p.torch", "tiny-q.torch"]  # one torch load per spec


# Counts loads per xdist worker (each worker is its own process).
WORKER_LOAD_COUNTER = LOAD_COUNTER.replace(
    'with open("loads.json", "w") as f:',
    'import os\n    with open(f"loads-{os.environ.get(\'PYTEST_XDIST_WORKER\', \'main\')}.json", "w") as f:')


@pytest.mark.slow
def test_xdist_keeps_each_spec_on_one_worker_and_prints_every_report(
        inner, pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    """``-n 2``: each spec's items run on one worker, each model is loaded once in
    the whole run, and the controller prints every worker's report."""
    pytest.importorskip("xdist")
    pytester.makepyfile(loadcount=WORKER_LOAD_COUNTER)
    specs = [write_spec(pytester.path, name, tiny_model_dir, GENEROUS)
             for name in ("tiny-a", "tiny-b", "tiny-c")]
    args = [arg for spec in specs for arg in ("--audit-spec", str(spec))]
    result = inner("-n", "2", *args, ITEMS)
    result.assert_outcomes(passed=3 * (2 + TINY_LAYERS), skipped=3 * 2)
    # A worker that runs any item of a spec loads its model: one load per spec in
    # the whole run means every spec's items ran on one worker.
    loads = {path.stem: json.loads(path.read_text())
             for path in pytester.path.glob("loads-gw*.json")}
    assert sorted(loads) == ["loads-gw0", "loads-gw1"]
    assert sorted(name for names in loads.values() for name in names) == \
        ["tiny-a", "tiny-b", "tiny-c"]
    result.stdout.fnmatch_lines(["*equilaw reports*"])
    for name in ("tiny-a", "tiny-b", "tiny-c"):
        result.stdout.fnmatch_lines([f"*{name}  PASS*"])
        result.stdout.fnmatch_lines([f"report written: *{name}.json"])
