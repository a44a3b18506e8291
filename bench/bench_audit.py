"""Benchmark: where a real audit spends its time.

Runs ``audit.run`` on each default spec in ``model_specs/`` (real pretrained
checkpoints; their packages must be installed) and records, per spec, the time to
load the weights, the forward passes (and tokens per second), the statistics
(normalisation, Gram updates, residuals, jackknife, ranks), the probe loss (the
language-model head and the cross-entropy, timed apart) and the whole run,
which also includes loading the tokenizer and tokenizing the probe corpus.  Each
spec then runs again with ``probe.statistics: qr``, which records what the precise
statistics cost on real hidden states and how far their PR is from the Gram's
(with the largest condition number of the layers' features).

Writes its figures under ``"audit"`` in bench/results.json (read, modify, write).
Usage: ``python bench/bench_audit.py [--no-qr] [SPEC ...]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.json")


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from audit.pipeline import run
    from audit.spec import load_specs

    args = sys.argv[1:]
    with_qr = "--no-qr" not in args
    paths = [Path(p) for p in args if p != "--no-qr"] or [ROOT / "model_specs"]
    figures = {}
    print(f"{'spec':16} {'total s':>8} {'load s':>7} {'forward s':>10} {'tokens/s':>9} "
          f"{'stats s':>8} {'loss s':>7} {'Pearson r':>10}")
    for spec in load_specs(paths):
        start = time.perf_counter()
        report = run(spec, cache=False)   # measured, never read back from the cache
        total = time.perf_counter() - start
        t = report.timing
        figures[spec.name] = {
            "seconds_total": total, "seconds_load": t["load_seconds"],
            "seconds_forward": t["forward_seconds"], "seconds_stats": t["stats_seconds"],
            "seconds_loss": t["loss_seconds"],
            "probe_loss": report.loss.mean if report.loss else None,
            "tokens_per_second": t["tokens_per_second"], "tokens": report.corpus["tokens"],
            "pearson_r": report.law.pearson_r, "rho": report.law.rho,
            "max_condition": max(row.condition for row in report.layers),
            "statistics": report.statistics,
        }
        print(f"{spec.name:16} {total:8.1f} {t['load_seconds']:7.1f} "
              f"{t['forward_seconds']:10.1f} {t['tokens_per_second']:9.0f} "
              f"{t['stats_seconds']:8.1f} {t['loss_seconds']:7.1f} {report.law.pearson_r:10.4f}")
        if with_qr and spec.probe.statistics != "qr":
            qr = run(dataclasses.replace(
                spec, probe=dataclasses.replace(spec.probe, statistics="qr")), cache=False)
            pr = np.array([row.pr for row in report.layers])
            pr_qr = np.array([row.pr for row in qr.layers])
            figures[spec.name]["qr"] = {
                "seconds_stats": qr.timing["stats_seconds"],
                "max_rel_diff_pr": float(np.max(np.abs(pr_qr - pr) / pr)),
                "pearson_r": qr.law.pearson_r,
            }
            print(f"{spec.name + ' (qr)':16} {'':8} {'':7} {'':10} {'':9} "
                  f"{qr.timing['stats_seconds']:8.1f} {qr.law.pearson_r:10.4f}   "
                  f"max |PR_qr/PR_gram − 1| = {figures[spec.name]['qr']['max_rel_diff_pr']:.1e}, "
                  f"max κ = {figures[spec.name]['max_condition']:.0f}")
    figures["cores"] = os.cpu_count()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not with_qr:  # keep the last qr figures rather than drop them
        for name, old in results.get("audit", {}).items():
            if isinstance(old, dict) and "qr" in old and name in figures:
                figures[name]["qr"] = old["qr"]
    results.setdefault("audit", {}).update(figures)  # other benches' keys stay
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
