"""Benchmark: how long an audit of a GGUF checkpoint takes to start, the first time
and again (the converted-checkpoint cache, audit/cache/converted.py).

For each default spec in ``model_specs/``, two fresh Python processes share one
empty cache folder.  Each imports torch, transformers, the model family's
modelling module and tokenizers (timed apart as ``import_seconds``: every Python
process that runs the model pays it once, cache or not, and a pytest session
auditing several models pays it once for all), then times the backend's start:
resolving the path, hashing the weights file, building the tokenizer and loading
the weights.  The
first process finds the cache empty (it dequantises the GGUF tensors and builds
the tokenizer from the GGUF vocabulary, then writes both); the second reads the
safetensors and tokenizer files back.

Records under ``"audit"`` in bench/results.json (read, modify, write):
``warm_load_seconds`` (the worse of the default models' second starts) and, per
spec, ``load_cold_seconds``, ``load_warm_seconds`` and ``import_seconds``.
Usage: ``python bench/bench_load.py [SPEC ...]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.json")

CHILD = r"""
import json, sys, time
start = time.perf_counter()
import torch, transformers  # noqa: F401
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from audit.backends.torch_backend import TorchBackend
from audit.spec import load_spec
spec = load_spec(sys.argv[1])
backend = TorchBackend(spec.model, spec.name)
arch = backend.info().architecture
arch = arch if arch in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else arch + "_text"
getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[arch])  # imports the family's module
import tokenizers  # noqa: F401
imported = time.perf_counter()
t0 = time.perf_counter()
backend.weights_sha256()
backend.tokenizer
backend.load()
t1 = time.perf_counter()
print(json.dumps({"import_seconds": imported - start, "load_seconds": t1 - t0}))
"""


def _start(spec: Path, cache: str) -> dict[str, float]:
    env = {**os.environ, "EQUILAW_CACHE_DIR": cache, "EQUILAW_NO_CACHE": "0",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(spec)], env=env, check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    specs = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "model_specs").glob("*.yaml"))
    figures = {}
    print(f"{'spec':16} {'import s':>9} {'cold s':>8} {'warm s':>8}")
    for spec in specs:
        with tempfile.TemporaryDirectory(prefix="equilaw-bench-cache-") as cache:
            cold = _start(spec, cache)
            warm = _start(spec, cache)
        name = spec.stem
        figures[name] = {"import_seconds": warm["import_seconds"],
                         "load_cold_seconds": cold["load_seconds"],
                         "load_warm_seconds": warm["load_seconds"]}
        print(f"{name:16} {warm['import_seconds']:9.2f} {cold['load_seconds']:8.2f} "
              f"{warm['load_seconds']:8.2f}")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    audit = results.setdefault("audit", {})
    audit["warm_load_seconds"] = max(f["load_warm_seconds"] for f in figures.values())
    audit["warm_load"] = {**figures, "cores": os.cpu_count(),
                          "load_average": os.getloadavg()[0]}
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"warm_load_seconds {audit['warm_load_seconds']:.2f} -> {RESULTS}")


if __name__ == "__main__":
    main()
