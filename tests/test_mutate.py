"""Mutation testing (``audit.mutate``, ``equilaw mutate``) on the session's tiny
random Llama: the unmutated model is every mutant's baseline on the same windows,
a mutant is caught only by checks the unmutated model passes, the first moved
layer is set against the damaged block's output, depth-changing damage is
compared through its block order, the control stays unflagged, the JSON report
holds the promised fields, and nothing is written next to the weights.

A random model has no law to break, so what catches a mutant here is whatever
moves (mostly r against the unmutated model); tests/test_training.py and the
README's SmolLM2 run show the table on trained weights."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from audit.cli import main
from audit.errors import BackendError
from audit.mutate import mutate
from audit.report.mutations import CHECK_KINDS
from audit.spec import spec_from_dict
from audit.synthetic.damage import AddNoise, RepeatBlocks, ScaleMLP, ZeroBlock

PROBE = {"sequences": 16, "length": 24, "shards": 4}


def _spec(model: Path, **extra):
    return spec_from_dict({"name": "tiny-mut", "model": str(model), "probe": PROBE,
                           "law": {"max_pearson_r": 1.0}, **extra})


def test_mutants_against_the_unmutated_model(tiny_model_dir: Path) -> None:
    before = sorted(os.listdir(tiny_model_dir))
    lines = []
    report = mutate(_spec(tiny_model_dir),
                    [AddNoise(0.01, 0), ScaleMLP(1, 8.0), ZeroBlock(2), RepeatBlocks(0, 2)],
                    log=lines.append)
    assert sorted(os.listdir(tiny_model_dir)) == before  # nothing written beside the weights
    assert len(lines) == 6 and lines[0].startswith("unmutated: Pearson r ")
    # ZeroBlock(2) and the repeat resume at block 2, ScaleMLP(1, 8) at block 1
    assert lines[1].startswith("resuming at blocks 1, 2: checked bit for bit")
    control, scaled, zeroed, repeated = report.mutants
    assert control.control and not control.caught and control.expected_layer is None
    assert report.control_flagged is False
    assert (scaled.expected_layer, zeroed.expected_layer) == (2, 3)
    assert scaled.caught and scaled.checks and set(scaled.checks) <= set(CHECK_KINDS)
    # the repeat grows the model (6 blocks) and is judged as a passthrough merge
    assert repeated.expected_layer == 3 and repeated.block == 2
    for row in (scaled, zeroed, repeated):
        # every hidden state before the damaged block's output is bit-identical, so
        # nothing can move before it (on a random model the move may come later)
        assert row.first_moved_layer is None or row.first_moved_layer >= row.expected_layer
        assert row.localised == (row.first_moved_layer == row.expected_layer)
    assert all(math.isfinite(row.loss) and math.isfinite(row.pearson_r) for row in report.mutants)
    # the next-token divergence from the unmutated model, in lockstep on the same windows
    assert all(row.kld_mean > 0 and 0 < row.same_top <= 1 for row in report.mutants)
    assert control.kld_mean < 0.05 and control.same_top > 0.9
    # measured: a random tiny model's near-flat outputs change their top token easily
    # (same top 0.70 under ScaleMLP(1, 8)), while the 1 % noise control keeps 0.96
    assert "divergence" in scaled.checks
    damaged = report.damaged
    assert report.mutation_score == sum(r.caught for r in damaged) / 3
    assert report.localisation_score == sum(r.localised for r in damaged) / 3
    # caught means: a check failed that the unmutated model passes
    for row in report.mutants:
        assert row.caught == bool(row.failures)


def test_every_check_a_mutant_can_fail_counts_as_evidence() -> None:
    from audit.checks import CHECKS

    # A mutant is judged by the law and against the unmutated model as a baseline or
    # a merge's parent, never by parity or an adapter's comparisons.
    evidence = {name: check.evidence for name, check in CHECKS.items()}
    assert {name for name, kind in evidence.items() if kind is None} == {
        "parity_loss", "parity_log10_pr", "parity_kld", "adapter_pearson_r", "adapter_rho", "adapter_loss",
        "adapter_drift", "adapter_merged_loss", "adapter_merged_log10_pr"}
    assert evidence["divergence"] == "divergence"
    assert {name for name, kind in evidence.items() if kind == "drift"} == {
        "drift", "merge_drift"}
    assert {name for name, kind in evidence.items() if kind == "loss"} == {
        "baseline_loss", "merge_loss"}
    assert set(evidence.values()) - {None} == set(CHECK_KINDS)


def test_only_the_torch_backend(tiny_model_dir: Path, tiny_onnx: Path) -> None:
    spec = spec_from_dict({"name": "tiny-mut", "backend": "onnx",
                           "model": {"path": str(tiny_model_dir), "onnx": str(tiny_onnx)}})
    with pytest.raises(BackendError, match="needs backend torch, not 'onnx'"):
        mutate(spec)


def test_cli_writes_the_report_and_prints_the_table(tiny_model_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "tiny-mut.yaml"
    spec.write_text(f"name: tiny-mut\nmodel: {tiny_model_dir}\nprobe:\n  sequences: 16\n"
                    f"  length: 24\n  shards: 4\n")
    reports = tmp_path / "reports"
    assert main(["mutate", str(spec), "--blocks", "1", "--operators", "scale_attention",
                 "--reports", str(reports)]) == 0
    out = capsys.readouterr().out
    assert "mutation score" in out and "localisation score" in out and "control: " in out
    data = json.loads((reports / "tiny-mut.mutations.json").read_text())
    assert set(data) >= {"mutation_score", "localisation_score", "mutants"}
    assert [m["operator"] for m in data["mutants"]] == ["noise", "scale_attention"]
    for row in data["mutants"]:
        assert set(row) >= {"operator", "block", "caught", "checks", "first_moved_layer",
                            "expected_layer", "loss"}
    # a block the model does not have is a clear error, and nothing is written
    assert main(["mutate", str(spec), "--blocks", "9", "--reports", str(tmp_path / "r2")]) == 2
    assert "block 9 is out of range for 4 blocks" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
