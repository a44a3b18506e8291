"""Benchmark: what comparing two models' next-token distributions costs, and what
float32 log-softmax and exp change.

On SmolLM2-135M-Instruct (the shared family of tests/smollm2_family.py: the GGUF
dequantised and re-saved, and its 1 %-noise sibling; the 8-bit copy is
``audit.synthetic.damage.Quantize(8, 32)`` of it in memory) over the default
probe of ``model_specs/smollm2-135m.yaml`` (96 windows of 128 tokens, batches of 8):

- ``float32``: per comparison (the 8-bit copy and the noisy sibling against the
  healthy model), the relative change of every mean of
  :class:`~audit.compare.divergence.DivergenceResult` when
  :func:`~audit.compare.divergence.token_figures` runs its float32 path instead of
  the float64 one (``max_relative_change`` the largest; Δp's mean, near 0, also as
  an absolute change), whether same-top agrees, and the largest per-token KL change;
- ``overhead_ratio``: the comparison's own time for one model (token figures and
  accumulation of every batch, float32 path, the logits already there) over one
  model's forward pass on the probe (the statistics pass's ``backend.forward(ids,
  loss=True, logits=True)``, the mean of the healthy model's and the 8-bit copy's),
  medians of ``ROUNDS`` rounds in one process, forward and comparison alternating
  batch by batch.

The machine may be shared: the times are upper bounds, but a loaded machine slows
torch's multi-threaded forward pass far more than numpy's single-threaded
comparison, so the ratio then understates an idle machine's (``load_average``, the
one-minute load at the start and the end, says how loaded it was).  Writes its
figures under ``"divergence"`` in bench/results.json (read, modify, write).
Usage: ``python bench/bench_divergence.py [--batches N] [FAMILY_FOLDER]`` (the
family is built there, or in a temporary folder removed afterwards; ``--batches N``
times and compares only the first N batches of each round, for a loaded machine:
the ratio is per batch, the accuracy then covers N × 8 windows).
"""

from __future__ import annotations

import dataclasses
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
ROUNDS = 3
MEANS = ("kld_mean", "kld_reverse_mean", "same_top", "dp_mean", "rms_dp", "nll_ref_mean",
         "nll_model_mean", "ln_ppl_ratio")


def _rounds(healthy, q8, noisy, windows, batch_size: int,
            batches: int | None) -> tuple[dict, dict]:
    """``ROUNDS`` alternating rounds over the probe.  Per batch: the statistics
    pass's forward of the healthy model and of the 8-bit copy (``forward(ids,
    loss=True, logits=True)``, timed: one model's forward pass as the audit runs it,
    handing out the logits its head computed anyway), then the comparison of the
    8-bit copy against the healthy model (token figures, float32 path, and the
    accumulation, timed).  The first round also compares both copies with the
    float64 path and the noisy sibling with both (untimed): the accuracy figures.
    ``batches``: only the first so many batches of each round (None: all)."""
    from audit.compare.divergence import DivergenceAccumulator, token_figures
    from audit.compare.outputs import flat, scored

    g = int(windows.shard_of.max()) + 1
    accs = {name: {p: DivergenceAccumulator(g) for p in ("float32", "float64")}
            for name in ("q8", "noisy")}
    forward, compare = [], []
    for round_ in range(ROUNDS):
        spent_forward = spent_compare = 0.0
        for i, batch in enumerate(windows.batches(batch_size)):
            if batches is not None and i >= batches:
                break
            start = time.perf_counter()
            ref = flat(healthy.forward(batch.ids, loss=True, logits=True).logits)
            middle = time.perf_counter()
            mod = flat(q8.forward(batch.ids, loss=True, logits=True).logits)
            spent_forward += (time.perf_counter() - middle + middle - start) / 2
            targets, shard = scored(batch)
            start = time.perf_counter()
            accs["q8"]["float32"].update(token_figures(ref, mod, targets), shard)
            spent_compare += time.perf_counter() - start
            if round_ == 0:
                accs["q8"]["float64"].update(token_figures(ref, mod, targets, "float64"), shard)
                other = flat(noisy.next_token_logits(batch.ids))
                for precision, acc in accs["noisy"].items():
                    acc.update(token_figures(ref, other, targets, precision), shard)
                del other
            del ref, mod
            print(f"round {round_} batch {i}: forward {spent_forward:.1f} s, comparison "
                  f"{spent_compare:.1f} s", file=sys.stderr, flush=True)
        forward.append(spent_forward)
        compare.append(spent_compare)
        if round_ == 0:
            accuracy = {name: _accuracy(pair) for name, pair in accs.items()}
            accs["q8"]["float32"] = DivergenceAccumulator(g)
        else:
            accs["q8"]["float32"].result()
            accs["q8"]["float32"] = DivergenceAccumulator(g)
    timing = {"forward_seconds": statistics.median(forward),
              "comparison_seconds": statistics.median(compare),
              "overhead_ratio": statistics.median(compare) / statistics.median(forward),
              "rounds": {"forward": forward, "comparison": compare}}
    return timing, accuracy


def _accuracy(pair: dict) -> dict:
    """The float32 path's means against the float64 path's, one comparison."""
    import numpy as np

    fast, exact = pair["float32"].result(), pair["float64"].result()
    change = {m: abs(getattr(fast, m) / getattr(exact, m) - 1) for m in MEANS}
    kld32, _, _ = pair["float32"].per_token()
    kld64, _, _ = pair["float64"].per_token()
    return {"relative_change": change, "max_relative_change": max(change.values()),
            "dp_mean_absolute_change": abs(fast.dp_mean - exact.dp_mean),
            "kld_mean": exact.kld_mean, "same_top": exact.same_top,
            "same_top_equal": fast.same_top == exact.same_top,
            "max_token_kld_difference": float(np.max(np.abs(kld32 - kld64))),
            "tokens": exact.tokens}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from smollm2_family import SmolLM2Family

    from audit.backends import open_backend
    from audit.backends.locate import resolve_model_path
    from audit.corpus import load_corpus
    from audit.probe import probe_input
    from audit.spec import load_spec
    from audit.synthetic.damage import Quantize

    load = os.getloadavg()[0]
    base = load_spec(ROOT / "model_specs" / "smollm2-135m.yaml")
    args = sys.argv[1:]
    batches = None
    if "--batches" in args:
        at = args.index("--batches")
        batches = int(args[at + 1])
        del args[at:at + 2]
    given = args[0] if args else None
    root = Path(given) if given else Path(tempfile.mkdtemp(prefix="smollm2-family-"))
    try:
        family = SmolLM2Family(root, resolve_model_path(base.model.path, allow_package_code=True))

        def backend(variant: str):
            model = dataclasses.replace(base.model, path=str(family.folder(variant)))
            return open_backend(dataclasses.replace(base, name=variant, model=model))

        healthy = backend("healthy")
        healthy.load()
        windows = probe_input(base, load_corpus(base.probe.corpus), healthy)
        q8 = healthy.with_model(Quantize(8, 32).apply(healthy.causal_lm))
        noisy = backend("noisy")
        timing, accuracy = _rounds(healthy, q8, noisy, windows, base.probe.batch_size,
                                   batches)
    finally:
        if not given:
            shutil.rmtree(root, ignore_errors=True)
    every = -(-len(windows.shard_of) // base.probe.batch_size)
    figures = {**timing, "float32": accuracy, "cores": os.cpu_count(),
               "tokens": windows.tokens, "rounds_count": ROUNDS,
               "batches_per_round": min(batches or every, every), "probe_batches": every,
               "float32_within_1e-6": all(row["max_relative_change"] < 1e-6
                                          for row in accuracy.values()),
               "method": "median of 3 rounds in one process, forward and comparison "
                         "alternating batch by batch; comparison = token_figures (float32 "
                         "path) + DivergenceAccumulator.update, one model against the "
                         "reference; forward = TorchBackend.forward(ids, loss=True, "
                         "logits=True), the statistics pass, over the probe; on a "
                         "shared machine both times are upper bounds, and a loaded one "
                         "slows the multi-threaded forward more than the single-threaded "
                         "comparison (see load_average)",
               "load_average": [round(x, 1) for x in (load, os.getloadavg()[0])]}
    print(json.dumps(figures, indent=2))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("divergence", {}).update(figures)  # other benches' keys stay
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
