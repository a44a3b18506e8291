"""Merge gates through the audit session on tiny random Llamas: parents resolved
before anything is measured, measured on the same windows, their reports kept
inside the reports folder whatever their labels hold; a correct average passes,
a wrong one fails and names the first moved layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audit.errors import ComparisonError, SpecError
from audit.session import AuditSession, parent_spec_name
from audit.spec import load_spec
from audit.synthetic.tiny import TINY_LAYERS

BASE, NOISY = "org/tiny base", "tiny-noisy"
LINEAR = f"""models:
  - model: {BASE}
    parameters: {{weight: 0.5}}
  - model: ./{NOISY}
    parameters: {{weight: 0.5}}
merge_method: linear
dtype: float32
"""


def _variant(source: Path, folder: Path, change) -> Path:
    from safetensors.numpy import load_file, save_file

    folder.mkdir()
    for item in source.iterdir():
        if item.suffix != ".safetensors":
            (folder / item.name).write_bytes(item.read_bytes())
    weights = load_file(str(source / "model.safetensors"))
    save_file(change(weights), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def family(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safetensors.numpy import load_file

    root = tmp_path_factory.mktemp("tiny-family")
    rng = np.random.default_rng(0)

    def noisy(w):
        return {k: (v + np.float32(0.01) * v.std() * rng.standard_normal(v.shape).astype(np.float32)
                    ).astype(np.float32) for k, v in w.items()}

    out = {"base": tiny_model_dir}
    out["noisy"] = _variant(tiny_model_dir, root / NOISY, noisy)
    other = load_file(str(out["noisy"] / "model.safetensors"))

    def average(w):
        return {k: ((v + other[k]) * np.float32(0.5)).astype(np.float32) for k, v in w.items()}

    def wrong(w):  # block 1 averaged with the other parent's block 2
        avg = average(w)
        for k in w:
            if k.startswith("model.layers.1."):
                avg[k] = (w[k] + other[k.replace("layers.1.", "layers.2.")]) * np.float32(0.5)
        return avg

    for name, change in (("average", average), ("wrong", wrong)):
        out[name] = _variant(tiny_model_dir, root / name, change)
        (out[name] / "mergekit_config.yml").write_text(LINEAR)
    return out


def _spec(folder: Path, merged: Path, parents: dict[str, Path], extra: str = "",
          sigma: str = "1.5") -> Path:
    lines = ["name: tiny-merge", f"model: {merged}", "probe:", "  sequences: 16", "  length: 24",
             "  shards: 4", "law:", "  max_pearson_r: 1.0", "baseline:", f"  max_drift_sigma: {sigma}",
             "merge:", "  parents:"]
    lines += [f"    {label}: {path}" for label, path in parents.items()]
    path = folder / "tiny-merge.yaml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def test_correct_average_passes_and_parents_stay_in_the_reports_folder(
        family: dict[str, Path], tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, family["average"], {f'"{BASE}"': family["base"],
                                                          NOISY: family["noisy"]}))
    session = AuditSession([Path(spec.source)], tmp_path / "reports")
    assert session.num_layers(spec) == TINY_LAYERS
    report = session.report(spec)
    (comparison,) = report.comparisons
    assert comparison.kind == "merge" and comparison.first_moved_layer is None
    assert report.verdict == "pass", [c.message for c in report.violations]
    assert comparison.rows[0].sources == f"{BASE}:1, {NOISY}:1"
    assert comparison.notes == (f"layers mapped by linear from {family['average'] / 'mergekit_config.yml'}",)
    assert {c.check for c in report.checks if c.layer is None} >= {
        "merge_pearson_r", "merge_rho", "merge_loss"}
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "tiny-merge.json", "tiny-merge.parent-org-tiny-base.json", "tiny-merge.parent-tiny-noisy.json"]
    assert parent_spec_name(spec, "../../etc/passwd") == "tiny-merge.parent-etc-passwd"


def test_wrong_block_average_fails_at_that_block(family: dict[str, Path], tmp_path: Path) -> None:
    # 16 windows in 4 shards: the effect alone judges here
    spec = load_spec(_spec(tmp_path, family["wrong"], {f'"{BASE}"': family["base"],
                                                        NOISY: family["noisy"]}, sigma="null"))
    report = AuditSession([Path(spec.source)], None).report(spec)
    (comparison,) = report.comparisons
    assert report.verdict == "fail"
    assert comparison.first_moved_layer == 2  # block 1 produces hidden state 2
    assert comparison.rows[0].drift == 0.0 and comparison.rows[1].status == "violation"


def test_a_missing_parent_fails_before_anything_is_measured(family: dict[str, Path],
                                                            tmp_path: Path) -> None:
    missing = tmp_path / "no-such-parent"
    path = _spec(tmp_path, family["average"], {f'"{BASE}"': family["base"], NOISY: missing})
    spec = load_spec(path)
    session = AuditSession([path], tmp_path / "reports")
    with pytest.raises(SpecError) as err:
        session.num_layers(spec)
    assert str(err.value).startswith(f"{path}:14: merge.parents.{NOISY}: parent '{NOISY}' at "
                                     f"{missing}: ")
    assert not (tmp_path / "reports").exists()


def test_layer_map_of_the_wrong_length_is_refused(family: dict[str, Path], tmp_path: Path) -> None:
    path = _spec(tmp_path, family["base"], {"a": family["base"]},
                 "  layer_map: [{parent: a, layer: 1}, {parent: a, layer: 2}]\n")
    spec = load_spec(path)
    with pytest.raises(ComparisonError, match=rf"^merge.layer_map of {path} describes 2 merged "
                                              rf"layers, but the "
                                              rf"merged model of 'tiny-merge' has {TINY_LAYERS}$"):
        AuditSession([path], None).num_layers(spec)


def test_parents_run_on_torch_whatever_runs_the_merged_model(
        family: dict[str, Path], tmp_path: Path, tiny_onnx: Path) -> None:
    """A merged model audited from its ONNX file (alone or beside torch) is compared
    with its parents' checkpoints, measured by torch: the merged file is not theirs."""
    path = _spec(tmp_path, family["base"], {f'"{BASE}"': family["base"], NOISY: family["noisy"]},
                 extra="backend: [torch, onnx]\n")
    text = path.read_text().replace(f"model: {family['base']}",
                                    f"model:\n  path: {family['base']}\n  onnx: {tiny_onnx}")
    path.write_text(text)
    session = AuditSession([path], None)
    torch_spec, onnx_spec = session.specs()
    assert session.num_layers(onnx_spec) == TINY_LAYERS
    parents = session._parents[onnx_spec.name]
    assert {p.backend for p in parents.values()} == {"torch"}
    assert {p.model.onnx for p in parents.values()} == {None}
    assert all(p.group is None and p.backends == () for p in parents.values())
