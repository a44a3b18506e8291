"""bench/bench_gpu.py, the GPU benchmark prepared for a lent machine: its --smoke
run (a tiny config on the CPU) goes through every part, so the script cannot rot
while no GPU is lent, and never writes gpu.* into bench/results.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow   # about 20 s: kept out of the quick lane's 3-minute budget
def test_the_smoke_run_writes_every_key_elsewhere(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    bench = bench_module()
    before = bench.RESULTS.read_bytes()
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"other": {"kept": 1}}))
    assert bench.main(["--smoke", "--out", str(out)]) == out
    assert bench.RESULTS.read_bytes() == before   # the real results are not touched
    data = json.loads(out.read_text())
    assert data["other"] == {"kept": 1}
    gpu = data["gpu"]
    assert sorted(gpu) == ["detail", "method", "overhead_ratio", "pr_max_rel_diff",
                           "pr_within_1e-6", "smoke", "tokens_per_second"]
    assert gpu["smoke"] is True and gpu["method"] == bench.METHOD
    # the same device twice: the parity part must find identical PR
    assert gpu["pr_max_rel_diff"] == 0.0 and gpu["pr_within_1e-6"] is True
    assert gpu["detail"]["parity"] == {"spec": "tiny", "layers": 5, "device": "cpu"}
    speed = gpu["detail"]["speed"]
    assert speed["shape"] == bench.SMOKE and speed["tokens"] == 4 * 16 and speed["rounds"] == 1
    assert gpu["overhead_ratio"] == speed["audit_seconds"][0] / speed["bare_seconds"][0] > 0
    assert gpu["tokens_per_second"] == 64 / speed["audit_seconds"][0]
    assert gpu["detail"]["gram"]["width"] == 64 and gpu["detail"]["device_name"] == "cpu"


def test_a_run_off_the_gpu_never_writes_the_real_results(tmp_path: Path) -> None:
    bench = bench_module()
    with pytest.raises(SystemExit, match="does not write gpu.* into bench/results.json"):
        bench.main(["--smoke", "--out", str(bench.RESULTS)])
