"""Benchmark: what one mutant of mutation testing costs against one audit.

On the default SmolLM2 spec (real weights) with the default damages (blocks 7, 15
and 22 and the control), in one process:

- ``audit``: one full audit of the unmutated model, ``judge(collect(spec))`` with
  the model loaded (forward pass, statistics, probe loss, fit), timed before and
  after the mutation run; their median is the denominator;
- the mutation run, ``audit.mutate.mutate``: each mutant's time is the interval
  between its table line and the line before (the damaged copy made, measured
  from its damaged block on where resuming was checked, compared with the
  unmutated model's stored logits, judged);
- for reference, one mutant (MLP output × 8 at block 15) measured in full
  (``resume=False``): what every mutant cost before.

``mutate.mutant_cost_ratio`` = median over the damaged mutants / median audit.
The run's table (what caught each mutant, its loss, r, KLD and same top) is
recorded beside it: the README's mutation table comes from it.

Records under ``"mutate"`` in bench/results.json (read, modify, write).
Usage: ``python bench/bench_mutate.py [SPEC]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.json")


def _timed_mutate(mutate, spec, damages=None, **options) -> tuple[object, list[float], float]:
    """The report, each mutant's seconds (table order) and the unmutated pass's."""
    stamps: list[tuple[float, str]] = []
    start = time.perf_counter()
    report = mutate(spec, damages, log=lambda line: stamps.append((time.perf_counter(), line)),
                    **options)
    rows = len(report.mutants)
    times = [t for t, _ in stamps]
    seconds = [times[i] - times[i - 1] for i in range(len(times) - rows, len(times))]
    return report, seconds, times[0] - start


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from audit.backends import open_backend
    from audit.mutate import mutate
    from audit.pipeline import collect, judge
    from audit.spec import load_spec
    from audit.synthetic.damage import ScaleMLP

    parser = argparse.ArgumentParser()
    parser.add_argument("spec", nargs="?", default=str(ROOT / "model_specs" / "smollm2-135m.yaml"))
    args = parser.parse_args()
    spec = load_spec(args.spec)
    backend = open_backend(spec)
    backend.load()

    def audit() -> float:
        start = time.perf_counter()
        judge(collect(spec, backend=backend))
        return time.perf_counter() - start

    load_before = os.getloadavg()[0]
    audits = [audit()]
    report, seconds, unmutated = _timed_mutate(mutate, spec)
    audits.append(audit())
    _, full, _ = _timed_mutate(mutate, spec, [ScaleMLP(15, 8.0)], resume=False)
    damaged = [s for s, row in zip(seconds, report.mutants) if not row.control]
    t_audit, t_mutant = statistics.median(audits), statistics.median(damaged)
    table = [{"operator": r.operator, "block": r.block, "label": r.label, "caught": r.caught,
              "checks": list(r.checks), "first_moved_layer": r.first_moved_layer,
              "expected_layer": r.expected_layer, "loss": r.loss, "pearson_r": r.pearson_r,
              "kld_mean": r.kld_mean, "same_top": r.same_top, "seconds": s}
             for r, s in zip(report.mutants, seconds)]
    figures = {
        "mutant_cost_ratio": t_mutant / t_audit,
        "spec": spec.name, "audit_seconds": audits, "median_mutant_seconds": t_mutant,
        "unmutated_pass_seconds": unmutated,
        "full_mutant_seconds": {"scale_mlp-15": full[0]},
        "full_mutant_cost_ratio": full[0] / t_audit,
        "mutants": table, "unmutated": report.unmutated,
        "mutation_score": report.mutation_score,
        "localisation_score": report.localisation_score,
        "control_flagged": report.control_flagged,
        "cores": os.cpu_count(), "load_average": [load_before, os.getloadavg()[0]],
        "method": "median seconds of the damaged mutants of one mutate run (each from its "
                  "damaged block on, audit.resume) over the median of two full audits of the "
                  "unmutated model (before and after the run), one process, model loaded",
    }
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["mutate"] = figures
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "mutants"}, indent=2))
    for row in table:
        print(f"{row['operator']:16} {row['block'] or '':>4} {row['seconds']:7.1f} s  "
              f"{','.join(row['checks']) or '-':20} loss {row['loss']:.3f} r "
              f"{row['pearson_r']:+.3f} KLD {row['kld_mean']:.3g} same {row['same_top']:.3f}")


if __name__ == "__main__":
    main()
