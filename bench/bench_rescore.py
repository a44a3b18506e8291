"""Benchmark: re-judging a spec from the statistics cache (audit.cache.stats_cache).

Audits the default SmolLM2 spec once into a fresh cache folder (cold: the model
runs and the entry is written), then measures, in this process, the time from the
spec file to the report with the cache warm: ``load_spec`` then ``audit.pipeline.run``
with a new :class:`~audit.cache.stats_cache.StatsCache` each time (as a new pytest session
has), no weights loaded and nothing tokenized.  The figure is the median of
``--runs`` warm runs.  Also records what hashing the weights file costs (the
index in the cache folder spares it) and how long writing the entry took.

Writes ``rescore_seconds`` (median warm), ``rescore_cold_seconds`` and
``rescore`` (details) under ``"audit"`` in bench/results.json, keeping every other
key.  Usage: ``python bench/bench_rescore.py [--runs N] [--cache DIR] [SPEC]``
(default spec: model_specs/smollm2-135m.yaml; without ``--cache`` the temporary
folder, about 0.8 GB, is removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.json")


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from audit.backends import open_backend
    from audit.cache.stats_cache import StatsCache
    from audit.internal.files import sha256_files
    from audit.pipeline import run
    from audit.spec import load_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "model_specs" / "smollm2-135m.yaml"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--cache", default=None, help="cache folder (default: a temporary one)")
    args = parser.parse_args()
    folder = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="equilaw-rescore-"))

    written: list[float] = []

    class Timed(StatsCache):
        def store(self, key, measurement):
            start = time.perf_counter()
            try:
                return super().store(key, measurement)
            finally:
                written.append(time.perf_counter() - start)

    try:
        start = time.perf_counter()
        cold = run(load_spec(args.spec), cache=Timed(folder))
        cold_seconds = time.perf_counter() - start
        entry = next(folder.glob("*.npz"))
        warm_seconds = []
        for _ in range(args.runs):
            cache = StatsCache(folder)
            start = time.perf_counter()
            report = run(load_spec(args.spec), cache=cache)
            warm_seconds.append(time.perf_counter() - start)
            assert cache.hits and not cache.stored, "the warm run did not read the cache"
            assert [r.pr for r in report.layers] == [r.pr for r in cold.layers]

        spec = load_spec(args.spec)
        backend = open_backend(spec)
        files = list(backend.model_files().weights)
        hashing = []
        for _ in range(3):
            start = time.perf_counter()
            sha256_files(files)
            hashing.append(time.perf_counter() - start)
        cache = StatsCache(folder)
        start = time.perf_counter()
        for path in files:
            cache.file_sha256(path)
        indexed = time.perf_counter() - start
        figures = {
            "spec": spec.name,
            "runs": args.runs,
            "warm_seconds": warm_seconds,
            "cold_audit_seconds": cold_seconds,
            "store_seconds": written[0] if written else None,
            "entry_mib": entry.stat().st_size / 2**20,
            "weights_mib": sum(p.stat().st_size for p in files) / 2**20,
            "weights_sha256_seconds": statistics.median(hashing),
            "weights_sha256_indexed_seconds": indexed,
            "cores": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        }
    finally:
        if not args.cache:
            shutil.rmtree(folder, ignore_errors=True)

    median = statistics.median(warm_seconds)
    print(f"{spec.name}: cold audit {cold_seconds:.1f} s (writing the entry "
          f"{figures['store_seconds']:.2f} s, {figures['entry_mib']:.0f} MiB); warm re-judging "
          f"{median:.3f} s (median of {args.runs}: "
          f"{min(warm_seconds):.3f}..{max(warm_seconds):.3f})"
          f"; sha256 of the weights {figures['weights_sha256_seconds']:.3f} s "
          f"({figures['weights_mib']:.0f} MiB), from the index {indexed * 1e3:.1f} ms")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    audit = results.setdefault("audit", {})
    audit["rescore_seconds"] = median
    audit["rescore_cold_seconds"] = cold_seconds
    audit["rescore"] = figures
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
