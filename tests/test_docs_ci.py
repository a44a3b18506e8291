"""docs/ci.md and docs/report-schema.md against the code: the GitHub Actions
workflow parses and has the steps CI relies on, every option and JUnit property
the docs name exists in the plugin, and every report key is documented.  Fast: no
model is loaded."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from test_report import synthetic_report

ROOT = Path(__file__).resolve().parents[1]
CI_DOC = ROOT / "docs" / "ci.md"
SCHEMA_DOC = ROOT / "docs" / "report-schema.md"
PLUGIN = ROOT / "audit" / "plugin.py"


def _yaml_blocks(text: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def workflow() -> dict:
    """The workflow of docs/ci.md: the ```yaml block that has ``jobs``."""
    found = [data for data in map(yaml.safe_load, _yaml_blocks(CI_DOC.read_text()))
             if isinstance(data, dict) and "jobs" in data]
    assert len(found) == 1, "docs/ci.md must hold exactly one workflow (a ```yaml block with jobs)"
    return found[0]


@pytest.fixture(scope="module")
def steps(workflow: dict) -> list[dict]:
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    return job["steps"]


def _uses(steps: list[dict], action: str) -> list[dict]:
    return [s for s in steps if str(s.get("uses", "")).split("@")[0] == action]


def _runs(steps: list[dict], *needles: str) -> list[dict]:
    return [s for s in steps if all(n in str(s.get("run", "")) for n in needles)]


def test_workflow_triggers(workflow: dict) -> None:
    # PyYAML (YAML 1.1) reads the key `on` as the boolean True.
    triggers = workflow[True]
    assert "pull_request" in triggers
    assert "workflow_dispatch" in triggers


def test_workflow_checks_out_and_sets_up_python_311(steps: list[dict]) -> None:
    assert _uses(steps, "actions/checkout")
    (setup,) = _uses(steps, "actions/setup-python")
    assert str(setup["with"]["python-version"]) == "3.11"


def test_workflow_installs_and_runs_the_audit(steps: list[dict]) -> None:
    assert _runs(steps, "bash scripts/install.sh")
    (audit,) = _runs(steps, "pytest audit/", "--junitxml")
    assert "--audit-spec" in audit["run"]
    assert "if" not in audit, "the audit step must fail the job on a violation"
    install = steps.index(_runs(steps, "bash scripts/install.sh")[0])
    assert install < steps.index(audit)


def test_workflow_caches_the_checkpoint(steps: list[dict]) -> None:
    (cache,) = _uses(steps, "actions/cache")
    assert "checkpoints" in str(cache["with"]["path"])
    assert "hashFiles(" in cache["with"]["key"]


def test_workflow_uploads_reports_always(steps: list[dict]) -> None:
    (upload,) = _uses(steps, "actions/upload-artifact")
    assert upload["if"] == "always()"
    assert str(upload["with"]["path"]).rstrip("/") == "reports"


def test_workflow_property_printer_runs(steps: list[dict], tmp_path: Path) -> None:
    """The step that prints the JUnit properties runs on a JUnit file like the
    plugin writes."""
    (printer,) = [s for s in _runs(steps, "xml.etree") if s.get("if") == "always()"]
    script = re.search(r"<<'EOF'\n(.*?)^EOF", printer["run"], flags=re.S | re.M).group(1)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "junit.xml").write_text(textwrap.dedent("""\
        <?xml version="1.0" encoding="utf-8"?>
        <testsuites><testsuite name="pytest">
          <testcase classname="audit.test_models.my-model" name="law-fit">
            <properties>
              <property name="equilaw.pearson_r" value="-0.97"/>
              <property name="equilaw.violating_layers" value=""/>
            </properties>
          </testcase>
          <testcase classname="audit.test_models.my-model" name="baseline-law">
            <properties><property name="equilaw.first_moved_layer" value="15"/></properties>
          </testcase>
          <testcase classname="audit.test_models.my-model" name="layer-01"/>
        </testsuite></testsuites>
        """))
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert "my-model::law-fit: equilaw.pearson_r=-0.97 equilaw.violating_layers=-" in out
    assert "my-model::baseline-law: equilaw.first_moved_layer=15" in out
    assert "layer-01" not in out
    # without a JUnit file (pytest stopped early) the step says so and does not fail
    (tmp_path / "reports" / "junit.xml").unlink()
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True)


def test_every_option_named_in_ci_doc_exists() -> None:
    named = set(re.findall(r"--audit-[a-z]+(?:-[a-z]+)*", CI_DOC.read_text()))
    assert named >= {"--audit-spec", "--audit-update-baseline"}
    source = PLUGIN.read_text()
    missing = sorted(o for o in named if f'addoption("{o}"' not in source)
    assert not missing, f"docs/ci.md names options the plugin does not add: {missing}"


def test_every_junit_property_named_in_ci_doc_exists() -> None:
    # `(?<![\w/.-])` leaves out file names such as .github/workflows/equilaw.yml
    named = set(re.findall(r"(?<![\w/.-])equilaw\.[a-z_0-9]+", CI_DOC.read_text()))
    assert len(named) >= 7
    source = PLUGIN.read_text()
    missing = sorted(p for p in named if f'"{p}"' not in source)
    assert not missing, f"docs/ci.md names JUnit properties the plugin does not record: {missing}"
    # and every property the plugin records is documented
    recorded = set(re.findall(r'"(equilaw\.[a-z_0-9]+)"', source))
    assert recorded <= named, f"undocumented JUnit properties: {sorted(recorded - named)}"


def test_every_item_is_in_ci_doc() -> None:
    from audit.checks import CHECKS

    text = CI_DOC.read_text()
    for item in {check.item for check in CHECKS.values()}:
        assert f"`{item}`" in text, item


def test_every_report_key_is_in_schema_doc() -> None:
    data = synthetic_report().to_dict()
    assert data["schema_version"] == 4
    text = SCHEMA_DOC.read_text()
    missing = [key for key in data if f"`{key}`" not in text]
    assert not missing, f"docs/report-schema.md does not mention: {missing}"


def test_every_nested_field_and_check_is_in_schema_doc() -> None:
    from audit.checks import CHECKS
    from audit.report.data import Comparison, DriftRow, LayerRow, LossSummary

    text = SCHEMA_DOC.read_text()
    names = {f.name for cls in (Comparison, DriftRow, LayerRow, LossSummary) for f in fields(cls)}
    names |= set(CHECKS)
    names |= {"windows_sha256", "tokenizer", "source", "class", "vocab_size", "vocab_sha256",
              "bos_token_id", "loss_seconds", "inf", "-inf", "null"}
    # `<key>_se` documents the standard errors of a layer row's numbers at once
    names = {n for n in names if not (n.endswith("_se") and n != "drift_se")}
    assert "`<key>_se`" in text
    missing = sorted(n for n in names if f"`{n}`" not in text and f'`"{n}"`' not in text)
    assert not missing, f"docs/report-schema.md does not mention: {missing}"
