"""Benchmark: how an audit's memory grows with its probe.

For a default spec (real weights, the default probe of 96 windows and the same
probe grown tenfold, 960 windows), one fresh Python process per run:

1. imports, opens the backend and loads the model and tokenizer (from the
   converted-checkpoint cache when it holds them: the first run fills it);
2. resets the process's peak resident set (``/proc/self/clear_refs``, value 5)
   and records its resident set;
3. runs :func:`audit.pipeline.collect` (tokenizing the corpus, the forward
   passes with the probe loss, the statistics, PR and its standard errors) and
   :func:`audit.pipeline.judge`, with the statistics cache off.

Per run it records ``peak_mib`` (the peak resident set of the whole process,
``VmHWM`` at the end: the load's own peak is behind the reset, so this is the
audit's peak with the model in memory) and ``growth_mib`` (that peak minus the
resident set before the audit).  ``audit.memory_growth_mib`` is the difference
of the peaks between the tenfold and the default probe of the token_id audit of
SmolLM2: what memory the audit holds per token.  The same two runs with glibc's
mmap threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``) give
``audit.memory_growth_mib_fixed_mmap_threshold``: the part of the growth that is
the allocator's, not data the audit keeps.  With ``--class-measures`` the
tenfold probe is also run with ``one_hot`` and ``separation`` on both default
models, recording the peak beside the class sums' size from the statistics
(``class_pairs``, the distinct (shard, target) pairs, × layers × d × 8 bytes).

Records under ``"audit"`` in bench/results.json (read, modify, write).
Usage: ``python bench/bench_memory.py [--class-measures]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.json")
DEFAULT_WINDOWS = 96
FIXED_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
"""glibc: every allocation of 1 MiB or more gets its own mapping, returned when
freed.  By default the threshold rises to the size of the largest block freed
(up to 32 MiB), so per-batch buffers then come from the heap, whose free space
is not always given back: the peak then drifts with the number of batches."""

CHILD = r"""
import dataclasses, json, sys
from audit.backends import open_backend
from audit.pipeline import collect, judge
from audit.spec import load_spec

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0  # kB -> MiB

spec = load_spec(sys.argv[1])
probe = dataclasses.replace(spec.probe, sequences=int(sys.argv[2]))
spec = dataclasses.replace(spec, probe=probe, measure=sys.argv[3])
backend = open_backend(spec)
backend.tokenizer
backend.load()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident set starts again from the current one
before = status("VmRSS")
m = collect(spec, backend=backend)
report = judge(m)
st = m.stats
print(json.dumps({"peak_mib": status("VmHWM"), "before_mib": before,
                  "growth_mib": status("VmHWM") - before, "tokens": m.corpus["tokens"],
                  "class_pairs": st.class_pairs, "layers": st.layers, "width": st.width,
                  "class_sums_mib": st.class_pairs * st.layers * st.width * 8 / 2**20,
                  "verdict": report.verdict}))
"""


def _run(spec: Path, windows: int, measure: str, env_extra: dict | None = None) -> dict:
    env = {**os.environ, "EQUILAW_NO_CACHE": "0", "PYTHONPATH": str(ROOT), **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", CHILD, str(spec), str(windows), measure],
                         env=env, check=True, capture_output=True, text=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{spec.stem:14} {measure:11} {windows:5} windows: peak {result['peak_mib']:8.0f} MiB, "
          f"audit adds {result['growth_mib']:7.0f} MiB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--class-measures", action="store_true",
                        help="also run one_hot and separation on the tenfold probe of both models")
    args = parser.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("bench_memory needs Linux's /proc/self/clear_refs")
    smollm2 = ROOT / "model_specs" / "smollm2-135m.yaml"
    runs = {f"token_id_{w}": _run(smollm2, w, "token_id")
            for w in (DEFAULT_WINDOWS, 10 * DEFAULT_WINDOWS)}
    fixed = {f"token_id_{w}_fixed_mmap_threshold": _run(smollm2, w, "token_id", FIXED_THRESHOLD)
             for w in (DEFAULT_WINDOWS, 10 * DEFAULT_WINDOWS)}
    runs.update(fixed)
    figures = {"memory_growth_mib": runs[f"token_id_{10 * DEFAULT_WINDOWS}"]["peak_mib"]
               - runs[f"token_id_{DEFAULT_WINDOWS}"]["peak_mib"],
               "memory_growth_mib_fixed_mmap_threshold":
                   fixed[f"token_id_{10 * DEFAULT_WINDOWS}_fixed_mmap_threshold"]["peak_mib"]
                   - fixed[f"token_id_{DEFAULT_WINDOWS}_fixed_mmap_threshold"]["peak_mib"]}
    detail = {"smollm2-135m": runs, "cores": os.cpu_count(),
              "method": "peak resident set (VmHWM) of the audit after the model is loaded, "
                        "one process per run, statistics cache off"}
    if args.class_measures:
        for spec in sorted((ROOT / "model_specs").glob("*.yaml")):
            for measure in ("one_hot", "separation"):
                detail.setdefault(spec.stem, {})[f"{measure}_{10 * DEFAULT_WINDOWS}"] = \
                    _run(spec, 10 * DEFAULT_WINDOWS, measure)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    audit = results.setdefault("audit", {})
    memory = audit.setdefault("memory", {})
    for name, value in detail.items():  # runs of an earlier call stay unless run again
        if isinstance(value, dict):
            memory.setdefault(name, {}).update(value)
        else:
            memory[name] = value
    audit.update(figures)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"memory_growth_mib {figures['memory_growth_mib']:.1f} (mmap threshold fixed: "
          f"{figures['memory_growth_mib_fixed_mmap_threshold']:.1f}) -> {RESULTS}")


if __name__ == "__main__":
    main()
