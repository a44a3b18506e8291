"""Trajectories (``audit.trajectory``, ``equilaw trajectory``) on checkpoint
folders of tiny random models: step order, the file's fields, appending and
replacing a step, refusing another probe's windows, clear errors for a run
folder without checkpoints and for a damaged trajectory file.  Training runs
(the law emerging) are in tests/test_training.py."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from audit.cli import main
from audit.errors import ReportError, SpecError
from audit.pipeline import run
from audit.report.trajectory import SCHEMA, Trajectory
from audit.report.trajectory_json import read_trajectory
from audit.spec import spec_from_dict
from audit.synthetic.tiny import TINY_LAYERS, save_tiny_model
from audit.trajectory import append, audit_run, find_checkpoints

PROBE = {"sequences": 12, "length": 24, "shards": 3}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkpoint-0, checkpoint-5 and checkpoint-40 (numeric, not name order), and
    a stray folder that is not a checkpoint."""
    root = tmp_path_factory.mktemp("run")
    for step, seed in ((40, 2), (0, 0), (5, 1)):
        save_tiny_model(root / f"checkpoint-{step}", seed=seed)
    (root / "runs").mkdir()
    return root


def _spec(tmp_path: Path, model: str = "unused"):
    return spec_from_dict({"name": "tiny-run", "model": model, "probe": PROBE,
                           "law": {"max_pearson_r": 1.0}}, source=tmp_path / "tiny-run.yaml")


def test_every_checkpoint_in_step_order(run_dir: Path, tmp_path: Path) -> None:
    assert [step for step, _ in find_checkpoints(run_dir)] == [0, 5, 40]
    got = audit_run(_spec(tmp_path), run_dir)
    assert [s.step for s in got.steps] == [0, 5, 40]
    first = run(dataclasses.replace(_spec(tmp_path), model=dataclasses.replace(
        _spec(tmp_path).model, path=str(run_dir / "checkpoint-0"))))
    assert got.steps[0].pearson_r == first.law.pearson_r
    assert got.steps[0].pr == tuple(row.pr for row in first.layers)
    assert len(got.steps[0].pr) == TINY_LAYERS + 1
    assert got.windows_sha256 == first.probe["windows_sha256"]
    # differently seeded checkpoints give different numbers
    assert len({s.pearson_r for s in got.steps}) == 3


def test_the_cli_writes_the_file_and_prints_each_step(run_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "tiny-run.yaml"
    spec.write_text("name: tiny-run\nmodel: unused\nprobe:\n  sequences: 12\n  length: 24\n"
                    "  shards: 3\n")
    assert main(["trajectory", str(spec), str(run_dir), "--reports", str(tmp_path / "r")]) == 0
    out = capsys.readouterr()
    assert "the law during training (3 checkpoints)" in out.out
    assert "step       0: Pearson r" in out.err
    data = json.loads((tmp_path / "r" / "tiny-run.trajectory.json").read_text())
    assert data["schema"] == SCHEMA and data["name"] == "tiny-run"
    assert [s["step"] for s in data["steps"]] == [0, 5, 40]
    assert set(data["steps"][0]) == {"step", "pearson_r", "rho", "loss", "pr", "verdict"}
    assert math.isclose(data["steps"][1]["loss"], read_trajectory(
        tmp_path / "r" / "tiny-run.trajectory.json").steps[1].loss)


def test_appending_replaces_a_step_and_refuses_other_windows(run_dir: Path,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    spec = _spec(tmp_path, str(run_dir / "checkpoint-5"))
    report = run(spec)
    append(path, spec, report, 5)
    append(path, spec, report, 1)
    again = append(path, spec, report, 5)
    assert [s.step for s in again.steps] == [1, 5]
    other = dataclasses.replace(report, probe={**report.probe, "windows_sha256": "x" * 64})
    with pytest.raises(ReportError, match="step 7 was measured on other token windows"):
        append(path, spec, other, 7)
    assert [s.step for s in read_trajectory(path).steps] == [1, 5]  # unchanged on error
    with pytest.raises(ReportError, match="is the trajectory of 'tiny-run', not of 'else'"):
        append(path, dataclasses.replace(spec, name="else"), report, 9)


def test_errors_name_the_folder_and_the_field(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SpecError, match=r"empty: no checkpoint-N subfolders .* it holds: notes.txt"):
        find_checkpoints(tmp_path / "empty")
    with pytest.raises(SpecError, match="does not exist"):
        find_checkpoints(tmp_path / "missing")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": SCHEMA, "name": "x", "windows_sha256": "a",
                               "steps": [{"step": 1, "pearson_r": -0.9, "rho": 0.99}]}))
    with pytest.raises(ReportError, match=r"bad.json lacks the field steps\[0\].loss"):
        read_trajectory(bad)
    fixed = Trajectory.from_dict(json.loads(bad.read_text().replace(
        '"rho": 0.99', '"rho": 0.99, "loss": null, "pr": [1.0], "verdict": "pass"')))
    assert math.isnan(fixed.steps[0].loss)  # null is "no loss"
