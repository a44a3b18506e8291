"""Scale-out with torch.distributed (audit/integrations/distributed.py): two local processes
(gloo, launched by torchrun) give the PR, standard errors and probe loss of one
process; the share of each rank; the payload's round trip; device_map."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audit.errors import EquilawError
from audit.integrations.distributed import Part, _pack, _unpack
from audit.stats.layer_stats import LayerStats

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
PROBE = {"sequences": 24, "length": 32, "shards": 6, "batch_size": 5}
SPECS = {"windows-token-id": {"probe": PROBE},
         "documents-shuffled": {"probe": {**PROBE, "mode": "documents", "sequences": 20,
                                          "seed": 666, "permutation": "reference"},
                                "measure": "shuffled_token_id"}}

RANK_SCRIPT = r"""
import json, sys
from audit.integrations.distributed import run
from audit.spec import spec_from_dict
specs = json.loads(sys.argv[1])
out = {}
for name, data in specs.items():
    report = run(spec_from_dict(data))
    if report is not None:
        out[name] = {"pr": [r.pr for r in report.layers], "pr_se": [r.pr_se for r in report.layers],
                     "slope_se": report.law.slope_se, "r": report.law.pearson_r,
                     "loss": report.loss.mean, "loss_se": report.loss.stderr,
                     "examples": report.corpus["examples"], "tokens": report.corpus["tokens"]}
if out:
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
"""


def _spec_data(name: str, folder: Path) -> dict:
    return {"name": name, "model": {"path": str(folder)}, **SPECS[name]}


def _figures(report) -> dict:
    return {"pr": [r.pr for r in report.layers], "pr_se": [r.pr_se for r in report.layers],
            "slope_se": report.law.slope_se, "r": report.law.pearson_r,
            "loss": report.loss.mean, "loss_se": report.loss.stderr,
            "examples": report.corpus["examples"], "tokens": report.corpus["tokens"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_measure_what_one_does(tiny_model_dir: Path, tmp_path: Path) -> None:
    from audit.pipeline import run
    from audit.spec import spec_from_dict

    data = {name: _spec_data(name, tiny_model_dir) for name in SPECS}
    out = tmp_path / "rank0.json"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         "--no-python", sys.executable, "-c", RANK_SCRIPT,
         json.dumps(data), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    both = json.loads(out.read_text())
    for name in SPECS:
        one = _figures(run(spec_from_dict(data[name]), cache=False))
        two = both[name]
        assert two["examples"] == one["examples"] and two["tokens"] == one["tokens"]
        for key in ("pr", "pr_se", "slope_se", "r", "loss", "loss_se"):
            a, b = np.array(two[key], dtype=float), np.array(one[key], dtype=float)
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=0, err_msg=f"{name}: {key}")


def test_each_rank_runs_whole_shards() -> None:
    shards = np.array([0, 0, 1, 1, 2, 3, 4, 5])
    owned = [Part(rank, 2).owns(shards) for rank in range(2)]
    np.testing.assert_array_equal(owned[0], shards % 2 == 0)
    assert not np.any(owned[0] & owned[1]) and np.all(owned[0] | owned[1])
    with pytest.raises(EquilawError, match=r"rank 2 is not in 0..1"):
        Part(2, 2)


def test_one_process_reduces_to_itself() -> None:
    stats = LayerStats(shards=2)
    loss = np.ones(2)
    assert Part(0, 1).reduce(stats, loss, loss) == (stats, loss, loss)


def test_the_payload_round_trips_without_pickle() -> None:
    rng = np.random.default_rng(0)
    stats = LayerStats(measures=("token_id", "one_hot"), shards=3)
    for shard in range(3):
        stats.update(rng.normal(size=(2, 40, 5)).astype(np.float32),
                     rng.integers(0, 7, size=40), shard=shard)
    back, loss_sum, loss_count = _unpack(_pack(stats, np.arange(3.0), np.full(3, 4.0)))
    for measure in ("token_id", "one_hot"):
        np.testing.assert_array_equal(back.residuals(measure), stats.residuals(measure))
        np.testing.assert_array_equal(back.leave_one_out(measure), stats.leave_one_out(measure))
    np.testing.assert_array_equal(loss_sum, np.arange(3.0))
    np.testing.assert_array_equal(loss_count, np.full(3, 4.0))


def test_device_map_auto_gives_the_same_hidden_states(tiny_model_dir: Path) -> None:
    pytest.importorskip("accelerate")
    from audit.backends.torch_backend import TorchBackend
    from audit.spec import ModelSpec

    ids = np.random.default_rng(0).integers(3, 259, size=(2, 12))
    whole = TorchBackend(ModelSpec(path=str(tiny_model_dir)), "tiny").forward(ids, loss=True)
    spread = TorchBackend(ModelSpec(path=str(tiny_model_dir), device_map="auto"),
                          "tiny").forward(ids, loss=True)
    np.testing.assert_array_equal(spread.hidden, whole.hidden)
    np.testing.assert_array_equal(spread.token_nll, whole.token_nll)


def test_the_cli_verb_runs_alone_without_torchrun(tiny_model_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    from audit.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(f"name: tiny\nmodel: {tiny_model_dir}\nprobe: {json.dumps(PROBE)}\n"
                    "law: {max_pearson_r: 1.0}\n")
    assert main(["distributed", str(spec), "--reports", str(tmp_path / "reports")]) == 0
    assert json.loads((tmp_path / "reports" / "tiny.json").read_text())["verdict"] == "pass"
    assert capsys.readouterr().out.startswith("tiny: PASS, r ")


def test_spilled_statistics_are_refused_with_the_reason(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stats = LayerStats(shards=2, storage="spill", spill_dir=tmp_path)
    stats.update(rng.normal(size=(2, 30, 4)).astype(np.float32), rng.integers(0, 5, 30), shard=0)
    with pytest.raises(EquilawError, match="spilled to disk .* cannot be sent between ranks"):
        Part(1, 2).reduce(stats, np.zeros(2), np.zeros(2))
    stats.close()
