"""Benchmark: where onnxruntime spends its time on an exported SmolLM2.

Runs onnxruntime's own profiler (``SessionOptions.enable_profiling``) over one
batch of the default probe's shape (8 windows × 128 tokens, random ids), three
times after a warm-up, on the logits-free files that ``bench/bench_onnx.py
--onnx-dir DIR`` keeps: the fused one (``DIR/logits-False.onnx``) and the unfused
one (``DIR/unfused-logits-False.onnx``), alternating, and records each operator
type's share of the kernel time under ``onnx.profile`` (fused) and
``onnx.profile_unfused`` in bench/results.json (read, modify, write): what limits
``onnx.throughput_ratio``.  The matrix products of the linear layers (``MatMul``
nodes with a weight initializer) are told apart from the attention's
(``linear_matmul_share``).

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

    folder = Path(sys.argv[1])
    files = {"profile": folder / "logits-False.onnx",
             "profile_unfused": folder / "unfused-logits-False.onnx"}
    ids = np.random.default_rng(0).integers(3, 49_000, size=(8, 128)).astype(np.int64)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    with tempfile.TemporaryDirectory(prefix="equilaw-ort-profile-") as tmp:
        for key, model in files.items():
            if not model.is_file():
                print(f"no {model}: skipped")
                continue
            figures = profile(ort, model, ids, os.path.join(tmp, key))
            print(key, json.dumps(figures, indent=2))
            results.setdefault("onnx", {})[key] = figures
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def profile(ort, model: Path, ids: np.ndarray, prefix: str) -> dict:
    """Kernel-time shares of one file over three runs of ``ids`` after a warm-up."""
    import onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = 0
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    session.run(names, {"input_ids": ids})
    start = time.perf_counter()
    for _ in range(3):
        session.run(names, {"input_ids": ids})
    seconds = (time.perf_counter() - start) / 3
    events = json.loads(Path(session.end_profiling()).read_text())
    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    linear = {node.name for node in graph.node
              if node.op_type == "MatMul" and node.input[1] in weights}
    per_op: collections.Counter = collections.Counter()
    linear_time = 0
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
            if event["name"][:-len("_kernel_time")] in linear:
                linear_time += event["dur"]
    total = sum(per_op.values())
    return {"seconds_per_batch": seconds, "batch_tokens": int(ids.size),
            "load_average_1min": os.getloadavg()[0],
            "kernel_time_share": {op: dur / total for op, dur in per_op.most_common(TOP)},
            "linear_matmul_share": linear_time / total, "operator_types": len(per_op)}


if __name__ == "__main__":
    main()
