"""Benchmark: an audit split over two local processes with torch.distributed (gloo),
against the same audit in one process.

Runs the default SmolLM2 spec (real weights; its package must be installed) with a
smaller probe (``--sequences``, default 32 windows of 128 tokens, 8 shards) once
in this process (all cores) and once under ``torchrun --nproc-per-node 2`` (one
thread per rank), and compares PR, its standard errors, the fit and the probe loss.

Records under ``"distributed"`` in bench/results.json (read, modify, write):
``max_rel_diff`` (the largest relative difference of any of those numbers),
``seconds_one_process``, ``seconds_two_processes`` (wall time of the whole
launch, loading included) and the probe.
Usage: ``python bench/bench_distributed.py [--sequences N] [SPEC]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.json")

RANK = r"""
import json, sys
from audit.integrations.distributed import run
from audit.spec import spec_from_dict
report = run(spec_from_dict(json.loads(sys.argv[1])))
if report is not None:
    json.dump(report.to_dict(), open(sys.argv[2], "w"))
"""


def _numbers(report: dict) -> np.ndarray:
    rows = report["layers"]
    law = report["law"]
    return np.array([r["pr"] for r in rows] + [r["pr_se"] for r in rows]
                    + [law["slope"], law["slope_se"], law["pearson_r"], law["pearson_r_se"],
                       report["loss"]["mean"], report["loss"]["stderr"]], dtype=float)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from audit.pipeline import run
    from audit.spec import load_spec

    parser = argparse.ArgumentParser()
    parser.add_argument("spec", nargs="?", default=str(ROOT / "model_specs" / "smollm2-135m.yaml"))
    parser.add_argument("--sequences", type=int, default=32)
    args = parser.parse_args()
    spec = load_spec(args.spec)
    data = {"name": spec.name, "model": {"path": spec.model.path},
            "probe": {"sequences": args.sequences, "length": spec.probe.length, "shards": 8}}
    from audit.spec import spec_from_dict

    start = time.perf_counter()
    one = run(spec_from_dict(data), cache=False).to_dict()
    seconds_one = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        out = Path(tmp) / "rank0.json"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-addr", "127.0.0.1", "--master-port", str(port), "--no-python",
                        sys.executable, "-c", RANK, json.dumps(data), str(out)],
                       cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                  "EQUILAW_NO_CACHE": "1"})
        seconds_two = time.perf_counter() - start
        two = json.loads(out.read_text())
    a, b = _numbers(two), _numbers(one)
    diff = float(np.max(np.abs(a - b) / np.abs(b)))
    figures = {"max_rel_diff": diff, "seconds_one_process": seconds_one,
               "seconds_two_processes": seconds_two, "spec": spec.name, "probe": data["probe"],
               "backend": "gloo", "cores": os.cpu_count()}
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["distributed"] = figures
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
