"""Benchmark: onnxruntime against PyTorch on the same audit, and how closely they agree.

Exports SmolLM2 (the default spec ``model_specs/smollm2-135m.yaml``) twice with
``audit.backends.onnx_export.export_onnx`` into a temporary folder: once with the
``logits`` output (for the probe loss) and once without it.  Then, in one
process, over the same probe windows:

* throughput: the hidden-state extraction (``timing.forward_seconds``: the forward
  pass up to float32 hidden states in numpy, no head) of PyTorch and of the
  logits-free ONNX file, probe loss off, in ``ROUNDS`` rounds of (torch, onnx);
  ``onnx.throughput_ratio`` is the median over rounds of ONNX tokens/s over
  PyTorch tokens/s in the same round, which cancels most of the drift of a shared
  machine (every round's figures are kept, with the load average).  The head is
  left out on both sides because onnxruntime computes every output of a graph
  whichever are fetched, so a file with logits always pays for the head;
* parity: the full default audit (probe loss on) with PyTorch and with the
  logits file: the largest |log10 PR| difference over layers 0..L, the largest
  relative PR difference, the probe-loss and Pearson-r differences, and the
  exporter's own largest hidden-state difference on its validation windows.

onnxruntime runs with ``intra_op_threads: 0`` (one thread per core, as torch uses)
and ``graph_optimization: all``; the figures say which.

Writes its figures under ``"onnx"`` in bench/results.json (read, modify, write).
Usage: ``python bench/bench_onnx.py [SPEC] [--onnx-dir DIR]``: with ``--onnx-dir``
the two exports are kept in DIR and reused by later runs (their export figures are
then those of the run that wrote them, kept in DIR/export.json).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.json")
ROUNDS = 5


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from audit.backends import open_backend
    from audit.backends.onnx_export import export_onnx
    from audit.pipeline import collect, judge
    from audit.spec import OnnxSpec, load_spec

    args = sys.argv[1:]
    keep = None
    if "--onnx-dir" in args:
        at = args.index("--onnx-dir")
        keep = Path(args[at + 1])
        del args[at:at + 2]
    path = Path(args[0]) if args else ROOT / "model_specs" / "smollm2-135m.yaml"
    spec = load_spec(path)
    options = OnnxSpec(intra_op_threads=0, graph_optimization="all")
    figures: dict = {"spec": spec.name, "cores": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(),
                     "onnx_intra_op_threads": options.intra_op_threads,
                     "onnx_graph_optimization": options.graph_optimization}
    with tempfile.TemporaryDirectory(prefix="equilaw-bench-onnx-") as tmp:
        folder = keep or Path(tmp)
        record = folder / "export.json"
        paths = {logits: folder / f"logits-{logits}.onnx" for logits in (True, False)}
        if keep is not None and record.is_file() and all(p.is_file() for p in paths.values()):
            figures.update(json.loads(record.read_text()))
            print(f"reusing the exports in {folder}")
        else:
            exports = {}
            for logits in (True, False):
                start = time.perf_counter()
                exports[logits] = export_onnx(spec.model, spec.name, paths[logits],
                                              logits=logits, overwrite=True)
                print(f"exported (logits={logits}) in {time.perf_counter() - start:.0f} s")
            first = exports[True]
            hidden = [n for n in first.max_abs_diff if n.startswith("hidden_states.")]
            made = {"export_seconds": first.seconds_export,
                    "export_hidden_max_abs_diff": max(first.max_abs_diff[n] for n in hidden),
                    "export_hidden_max_rel_diff": max(first.max_rel_diff[n] for n in hidden),
                    "export_logits_max_abs_diff": first.max_abs_diff.get("logits")}
            figures.update(made)
            if keep is not None:
                record.write_text(json.dumps(made, indent=2) + "\n")

        def variant(backend: str, logits: bool, loss: bool):
            model = dataclasses.replace(spec.model, onnx=str(paths[logits]))
            return dataclasses.replace(spec, name=f"{spec.name}.{backend}", backend=backend,
                                       model=model, onnx=options,
                                       probe=dataclasses.replace(spec.probe, loss=loss))

        # Throughput: extraction only, no head on either side.
        speed = {"torch": [], "onnx": []}
        load_seconds = {"torch": [], "onnx": []}
        loads = []
        for _ in range(ROUNDS):
            for backend in ("torch", "onnx"):
                s = variant(backend, logits=False, loss=False)
                m = collect(s, backend=open_backend(s))
                speed[backend].append(m.timing["tokens_per_second"])
                load_seconds[backend].append(m.timing["load_seconds"])
                print(f"{backend:6} extraction {m.timing['tokens_per_second']:7.0f} tokens/s "
                      f"(load {m.timing['load_seconds']:.1f} s)")
            loads.append(os.getloadavg()[0])
        ratios = [o / t for o, t in zip(speed["onnx"], speed["torch"])]
        figures["torch_tokens_per_second"] = float(np.median(speed["torch"]))
        figures["onnx_tokens_per_second"] = float(np.median(speed["onnx"]))
        figures["throughput_ratio"] = float(np.median(ratios))
        figures["rounds"] = {"torch_tokens_per_second": speed["torch"],
                             "onnx_tokens_per_second": speed["onnx"], "ratio": ratios,
                             "torch_load_seconds": load_seconds["torch"],
                             "onnx_load_seconds": load_seconds["onnx"],
                             "load_average_1min": loads}
        figures["tokens"] = int(m.corpus["tokens"])

        # Parity: the default audit, probe loss on, on both backends.
        reports = {}
        for backend in ("torch", "onnx"):
            s = variant(backend, logits=True, loss=True)
            reports[backend] = judge(collect(s, backend=open_backend(s)))
        a, b = reports["torch"], reports["onnx"]
        la = np.array([row.log10_pr for row in a.layers])
        lb = np.array([row.log10_pr for row in b.layers])
        pa = np.array([row.pr for row in a.layers])
        pb = np.array([row.pr for row in b.layers])
        figures["parity"] = {
            "max_abs_log10_pr_difference": float(np.max(np.abs(lb - la))),
            "max_rel_pr_difference": float(np.max(np.abs(pb - pa) / pa)),
            "loss_difference": (b.loss.mean - a.loss.mean) if a.loss and b.loss else None,
            "pearson_r_difference": b.law.pearson_r - a.law.pearson_r,
            "rho_difference": b.law.rho - a.law.rho,
            "torch_pearson_r": a.law.pearson_r, "onnx_pearson_r": b.law.pearson_r,
        }
    print(json.dumps(figures, indent=2))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["onnx"] = figures
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
