"""Benchmark: onnxruntime against PyTorch on the same audit, and how closely they agree.

Exports SmolLM2 (the default spec ``model_specs/smollm2-135m.yaml``) three times
with ``audit.backends.onnx_export.export_onnx`` into a temporary folder: fused for
onnxruntime (the default) with the ``logits`` output (for the probe loss) and
without it, and unfused (``fuse=False``) without it.  Then, in one process, over
the same probe windows:

* throughput: the hidden-state extraction (``timing.forward_seconds``: the forward
  pass up to float32 hidden states in numpy, no head) of PyTorch, of the fused
  logits-free ONNX file and of the unfused one, probe loss off, in ``ROUNDS``
  rounds of (torch, onnx, onnx unfused); ``onnx.throughput_ratio`` is the median
  over rounds of fused-ONNX tokens/s over PyTorch tokens/s in the same round
  (``onnx.throughput_ratio_unfused`` the same for the unfused file), which cancels
  most of the drift of a shared machine (every round's figures are kept, with the
  load average).  The head is
  left out on both sides because onnxruntime computes every output of a graph
  whichever are fetched, so a file with logits always pays for the head;
* parity: the full default audit (probe loss on) with PyTorch and with the
  logits file: the largest |log10 PR| difference over layers 0..L, the largest
  relative PR difference, the probe-loss and Pearson-r differences, and the
  exporter's own largest hidden-state difference on its validation windows.

onnxruntime runs with ``intra_op_threads: 0`` (one thread per core, as torch uses)
and ``graph_optimization: all``; the figures say which.

Writes its figures under ``"onnx"`` in bench/results.json (read, modify, write).
Usage: ``python bench/bench_onnx.py [SPEC] [--onnx-dir DIR] [--rounds N]``: with
``--onnx-dir`` the three exports are kept in DIR and reused by later runs (their
export figures are then those of the run that wrote them, kept in
DIR/export.json, or of the export check run again on the kept file); ``--rounds``
(default 5, at least 3) sets ``ROUNDS``.
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
    rounds = ROUNDS
    if "--rounds" in args:
        at = args.index("--rounds")
        rounds = max(3, int(args[at + 1]))
        del args[at:at + 2]
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
        paths["unfused"] = folder / "unfused-logits-False.onnx"
        for key in (True, False, "unfused"):
            if keep is not None and paths[key].is_file():
                print(f"reusing {paths[key]}")
                continue
            start = time.perf_counter()
            done = export_onnx(spec.model, spec.name, paths[key], logits=key is True,
                               overwrite=True, fuse=key != "unfused")
            print(f"exported ({key}) in {time.perf_counter() - start:.0f} s: "
                  f"{done.fusions or done.fusion_note}", flush=True)
            if key is True:
                made = export_figures(done)
                if keep is not None:
                    record.write_text(json.dumps(made, indent=2) + "\n")
        if keep is not None and record.is_file():
            made = json.loads(record.read_text())
        elif keep is not None:  # kept without its record: check the file again
            made = export_figures(recheck(spec, paths[True]))
            record.write_text(json.dumps(made, indent=2) + "\n")
        figures.update(made)

        def variant(backend: str, logits: bool | str, loss: bool):
            model = dataclasses.replace(spec.model, onnx=str(paths[logits]))
            return dataclasses.replace(spec, name=f"{spec.name}.{backend}", backend=backend,
                                       model=model, onnx=options,
                                       probe=dataclasses.replace(spec.probe, loss=loss))

        # Throughput: extraction only, no head on either side.
        sides = {"torch": ("torch", False), "onnx": ("onnx", False),
                 "onnx_unfused": ("onnx", "unfused")}
        speed: dict[str, list[float]] = {side: [] for side in sides}
        load_seconds: dict[str, list[float]] = {side: [] for side in sides}
        loads = []
        for _ in range(rounds):
            for side, (backend, file) in sides.items():
                s = variant(backend, logits=file, loss=False)
                m = collect(s, backend=open_backend(s))
                speed[side].append(m.timing["tokens_per_second"])
                load_seconds[side].append(m.timing["load_seconds"])
                print(f"{side:12} extraction {m.timing['tokens_per_second']:7.0f} tokens/s "
                      f"(load {m.timing['load_seconds']:.1f} s, load average "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
            loads.append(os.getloadavg()[0])
        ratios = [o / t for o, t in zip(speed["onnx"], speed["torch"])]
        unfused_ratios = [o / t for o, t in zip(speed["onnx_unfused"], speed["torch"])]
        figures["rounds_count"] = rounds
        figures["torch_tokens_per_second"] = float(np.median(speed["torch"]))
        figures["onnx_tokens_per_second"] = float(np.median(speed["onnx"]))
        figures["onnx_unfused_tokens_per_second"] = float(np.median(speed["onnx_unfused"]))
        figures["throughput_ratio"] = float(np.median(ratios))
        figures["throughput_ratio_unfused"] = float(np.median(unfused_ratios))
        figures["rounds"] = {"torch_tokens_per_second": speed["torch"],
                             "onnx_tokens_per_second": speed["onnx"],
                             "onnx_unfused_tokens_per_second": speed["onnx_unfused"],
                             "ratio": ratios, "ratio_unfused": unfused_ratios,
                             "torch_load_seconds": load_seconds["torch"],
                             "onnx_load_seconds": load_seconds["onnx"],
                             "load_average_1min": loads}
        figures["tokens"] = int(m.corpus["tokens"])

        # Parity: the default audit, probe loss on, on both backends (the fused file).
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


def export_figures(done) -> dict:
    """The figures of the fused export with logits (an ``ExportResult``)."""
    hidden = [n for n in done.max_abs_diff if n.startswith("hidden_states.")]
    seconds = done.seconds_export
    return {"export_seconds": None if seconds != seconds else seconds,  # NaN: rechecked
            "export_hidden_max_abs_diff": max(done.max_abs_diff[n] for n in hidden),
            "export_hidden_max_rel_diff": max(done.max_rel_diff[n] for n in hidden),
            "export_logits_max_abs_diff": done.max_abs_diff.get("logits"),
            "fusions": done.fusions, "fusion_note": done.fusion_note}


def recheck(spec, path: Path):
    """The export check (same windows, same comparison) run again on a kept file, as
    an ``ExportResult`` without export time: for a folder whose record was lost."""
    import collections

    import onnx

    from audit.backends import onnx_export as ox
    from audit.backends.torch_backend import TorchBackend

    backend = TorchBackend(dataclasses.replace(spec.model, device="cpu", dtype="float32"),
                           spec.name)
    backend.load()
    layers = backend.info().num_layers
    names = ox.hidden_state_names(layers) + ["logits"]
    graph = ox._graph_module(backend, backend.head, backend.logit_softcap)
    ids = ox._validation_ids(backend)
    reference = ox._torch_outputs(graph, ids, names, spec.name)
    start = time.perf_counter()
    got = ox._onnxruntime_outputs(path, ids, spec.name)
    seconds = time.perf_counter() - start
    abs_diff, rel_diff = ox._check(got, reference, names, 1e-4, spec.name)
    model = onnx.load(str(path), load_external_data=False)
    fusions = collections.Counter(node.op_type for node in model.graph.node
                                  if not onnx.defs.has(node.op_type, node.domain))
    return ox.ExportResult(path, None, layers, tuple(names), abs_diff, rel_diff, float("nan"),
                           seconds, True, dict(sorted(fusions.items())))


if __name__ == "__main__":
    main()
