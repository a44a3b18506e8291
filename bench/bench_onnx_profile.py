"""Benchmark: where onnxruntime spends its time on an exported SmolLM2.

Runs onnxruntime's own profiler (``SessionOptions.enable_profiling``) over one
batch of the default probe's shape (8 windows × 128 tokens, random ids), three
times after a warm-up, on the logits-free file that ``bench/bench_onnx.py
--onnx-dir DIR`` keeps (``DIR/logits-False.onnx``), and records each operator
type's share of the kernel time under ``onnx.profile`` in bench/results.json
(read, modify, write): what limits ``onnx.throughput_ratio``.

Usage: ``python bench/bench_onnx_profile.py DIR``.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results.json")
TOP = 12


def main() -> None:
    import onnxruntime as ort

    model = Path(sys.argv[1]) / "logits-False.onnx"
    with tempfile.TemporaryDirectory(prefix="equilaw-ort-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 0
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        ids = np.random.default_rng(0).integers(3, 49_000, size=(8, 128)).astype(np.int64)
        names = [o.name for o in session.get_outputs()]
        session.run(names, {"input_ids": ids})
        start = time.perf_counter()
        for _ in range(3):
            session.run(names, {"input_ids": ids})
        seconds = (time.perf_counter() - start) / 3
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values())
    shares = {op: dur / total for op, dur in per_op.most_common(TOP)}
    figures = {"seconds_per_batch": seconds, "batch_tokens": int(ids.size),
               "load_average_1min": os.getloadavg()[0], "kernel_time_share": shares,
               "operator_types": len(per_op)}
    print(json.dumps(figures, indent=2))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("onnx", {})["profile"] = figures
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
