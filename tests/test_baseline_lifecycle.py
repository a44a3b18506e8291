"""The baseline lifecycle through inner pytest runs on a tiny random Llama: missing
→ skipped with the command that writes it; --audit-update-baseline → written, exit
0, only for the specs -k selects; then compared: the same weights pass, damaged
weights fail naming the first moved layer, another probe is refused naming the
fields; JUnit XML carries the numbers CI reads."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from test_plugin import GENEROUS, ITEMS, inner, write_spec  # noqa: F401 (inner: a fixture)

from audit.synthetic.tiny import TINY_LAYERS

DAMAGED_BLOCK = 1
FACTOR = 64
"""transformers' layers[1] produces hidden state 2."""


@pytest.fixture(scope="module")
def damaged_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.numpy import load_file, save_file

    folder = tmp_path_factory.mktemp("tiny-damaged")
    for item in tiny_model_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    weights = load_file(str(folder / "model.safetensors"))
    key = f"model.layers.{DAMAGED_BLOCK}.mlp.down_proj.weight"
    weights[key] = weights[key] * np.float32(FACTOR)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _properties(xml: Path, item: str) -> dict[str, str]:
    """The properties of the testcase ``<spec>::<item>`` (JUnit: classname ends with
    the spec name, name is the item)."""
    spec, _, name = item.partition("::")
    for case in ET.parse(xml).getroot().iter("testcase"):
        if case.get("name") == name and case.get("classname").endswith(spec):
            return {p.get("name"): p.get("value") for p in case.iter("property")}
    raise AssertionError(f"no testcase {item} in {xml}")


@pytest.mark.slow  # five inner pytest runs
def test_lifecycle(inner, pytester: pytest.Pytester, tiny_model_dir: Path,  # noqa: F811
                   damaged_dir: Path) -> None:
    specs = pytester.path / "specs"
    specs.mkdir()
    spec_a = write_spec(specs, "tiny-a", tiny_model_dir, GENEROUS)
    # 16 windows in 4 shards make paired errors wide: a lower significance threshold
    spec_a.write_text(spec_a.read_text() + "baseline:\n  max_drift_sigma: 1.5\n")
    write_spec(specs, "tiny-b", tiny_model_dir, GENEROUS)
    baselines = specs / "baselines"

    # missing: skipped, never created by a plain run
    result = inner("--audit-spec", str(specs), ITEMS)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["SKIPPED [[]2[]] *tiny-a: no baseline at specs/baselines/tiny-a.json; "
                                 "create it with: pytest audit/ --audit-update-baseline -k tiny-a"])
    assert not baselines.exists()

    # update, limited by -k: exit 0, one baseline written
    result = inner("--audit-spec", str(specs), "--audit-update-baseline", "-k", "tiny-a", ITEMS)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["SKIPPED [[]2[]] *tiny-a: baseline written to specs/baselines/tiny-a.json"])
    assert sorted(p.name for p in baselines.iterdir()) == ["tiny-a.json", "tiny-a.tokens.npz"]
    written = json.loads((baselines / "tiny-a.json").read_text())
    assert written["schema_version"] == 4 and written["comparisons"] == []
    assert written["divergence"] == []
    assert len(written["layers"][1]["log10_pr_loo"]) == 4

    # compared: the same weights pass, with zero drift everywhere
    xml = pytester.path / "junit.xml"
    result = inner("--audit-spec", str(spec_a), f"--junitxml={xml}", ITEMS)
    assert result.ret == 0
    result.assert_outcomes(passed=5 + TINY_LAYERS)
    report = json.loads((inner.reports / "tiny-a.json").read_text())
    (comparison,) = report["comparisons"]
    (divergence,) = report["divergence"]
    assert divergence["source"] == "baseline" and divergence["kld_is_bound"] is True
    assert divergence["kld_mean"] == 0 and divergence["same_top"] == 1
    props = _properties(xml, "tiny-a::divergence")
    assert (props["equilaw.kld_mean"], props["equilaw.same_top"]) == ("0.0", "1.0")
    assert (props["equilaw.kld_p99"], props["equilaw.rms_dp"]) == ("0.0", "0.0")
    assert comparison["first_moved_layer"] is None and comparison["largest_drift"] == 0
    props = _properties(xml, "tiny-a::law-fit")
    assert float(props["equilaw.pearson_r"]) == pytest.approx(report["law"]["pearson_r"])
    assert float(props["equilaw.rho"]) == pytest.approx(report["law"]["rho"])
    assert float(props["equilaw.probe_loss"]) == pytest.approx(report["loss"]["mean"])
    assert props["equilaw.violating_layers"] == ""
    assert _properties(xml, "tiny-a::baseline-law")["equilaw.first_moved_layer"] == ""

    # damaged weights under the same spec name: layers before the block are identical,
    # the block's output is the first that moves, the item prints a small report
    spec_a.write_text(spec_a.read_text().replace(str(tiny_model_dir), str(damaged_dir)))
    result = inner("--audit-spec", str(spec_a), f"--junitxml={xml}", ITEMS)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = json.loads((inner.reports / "tiny-a.json").read_text())
    (comparison,) = report["comparisons"]
    assert comparison["first_moved_layer"] == DAMAGED_BLOCK + 1
    rows = {row["layer"]: row for row in comparison["rows"]}
    assert rows[1]["drift"] == 0 and abs(rows[2]["drift"]) > 0.0008
    assert report["verdict"] == "fail"
    result.stdout.fnmatch_lines([
        "*tiny-a::layer-02*",
        "layer 2: drift +0.03* (log10 PR -0.1* → -0.0*): |drift| 0.03* > max_drift 0.0008 and "
        "* σ > max_drift_sigma 1.5",
        "against baseline specs/baselines/tiny-a.json: first moved layer 2, largest drift *",
        "*pearson_r*",
        "*if the change is intended, accept it: pytest audit/ --audit-update-baseline -k tiny-a",
        "*layer*then*now*drift*",
        "*2 * violation ← first moved",
    ])
    props = _properties(xml, "tiny-a::baseline-law")
    assert props["equilaw.first_moved_layer"] == "2"
    assert float(props["equilaw.largest_drift"]) == pytest.approx(comparison["largest_drift"])
    assert _properties(xml, "tiny-a::law-fit")["equilaw.violating_layers"] != ""

    # another probe: refused, naming the fields; the law items still run
    spec_a.write_text(spec_a.read_text().replace(str(damaged_dir), str(tiny_model_dir))
                      .replace("sequences: 16", "sequences: 12"))
    result = inner("--audit-spec", str(spec_a), ITEMS)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # the token record was made on the other windows: the divergence item fails too
    result.assert_outcomes(passed=2 + TINY_LAYERS, failed=3)
    result.stdout.fnmatch_lines(["*the baseline specs/baselines/tiny-a.json was measured on "
                                 "another setup (probe.sequences: 16 there, 12 here; windows "
                                 "sha256: *"])
    assert (baselines / "tiny-a.json").read_text() == json.dumps(written, indent=2) + "\n"
