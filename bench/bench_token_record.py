"""Benchmark: how close the stored baseline's KL comes to the exact one under each
token-record setting, on SmolLM2's catalogue; what chose ``TOP_MASS`` (the default
record of :mod:`audit.compare.token_record`).

Builds the SmolLM2 family (tests/smollm2_family.py; needs the default spec's GGUF
package, torch and transformers) in a temporary folder, runs every model against
the healthy one in lockstep over the default probe's batches (``--every N``: every
N-th batch, ``--batches M``: at most M of them), and computes for each setting the
mean record KL over the mean exact KL, from one sort of the reference's
distribution per token:

- ``kK``: the K most probable ids (fixed k);
- ``mM_maxX``: as many ids as hold mass M, at least 32, at most X (adaptive k);
- ``kK+gb6``: K ids and a tail split into six vocabulary-wide cells by the rank of
  each id's frequency among the probe's targets (cells of 64, 192, 768, 3072,
  12288 and the rest; six floats a token);
- ``kK+dec`` / ``mM_maxX+dec``: the tail split per token into one cell per decade
  of the reference's probability (1e-3 ... 1e-10 and below): an oracle, since a
  record would have to store every tail id's cell.

Cell masses are differences of suffix sums, so the bucket rows may exceed the
exact KL by rounding (~1e-9) on a few tokens; the record itself
(:func:`~audit.compare.token_record.bound_figures`) never does.

Records under ``"token_record"`` in bench/results.json (read, modify, write): per
setting the mean ids a token keeps and, per model, the exact mean KL and each
setting's ratio.  Usage: ``python bench/bench_token_record.py [--every N]
[--batches M]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.json")
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

FIXED = (32, 64, 128, 256, 512, 1024, 2048)
MASSES = ((0.9, 256), (0.9, 1024), (0.95, 256), (0.95, 1024), (0.95, 4096), (0.99, 256),
          (0.99, 1024), (0.99, 4096))
DECADES = np.log(10.0 ** -np.arange(3, 11))
FREQUENCY_EDGES = (64, 256, 1024, 4096, 16384)
FAMILY = ("noisy", "mlp-x8", "attn-x8", "norm-x8", "wrong-average", "passthrough")


def settings() -> dict[str, tuple]:
    out: dict[str, tuple] = {f"k{k}": ("fixed", k) for k in FIXED}
    out.update({f"m{m}_max{x}": ("mass", m, x) for m, x in MASSES})
    out.update({f"k{k}+gb6": ("frequency", k) for k in (32, 128)})
    out.update({f"k{k}+dec": ("decade", k) for k in (32, 128)})
    out.update({f"m{m}_max1024+dec": ("mass-decade", m, 1024) for m in (0.9, 0.95, 0.99)})
    return out


def _cell(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(p) - np.log(np.maximum(q, 1e-300))), 0.0)


def suffix(x: np.ndarray) -> np.ndarray:
    """[n, V + 1]: column j holds the sum of x[:, j:]."""
    s = np.cumsum(x[:, ::-1], axis=1)[:, ::-1]
    return np.concatenate([s, np.zeros((x.shape[0], 1))], axis=1)


def ratios_of_chunk(ref, mods, group, table, kept, exact) -> None:
    """Add one chunk's per-token exact KL and per-setting record KL."""
    from audit.compare.divergence import log_softmax

    lp = log_softmax(ref)
    order = np.argsort(-lp, axis=1, kind="stable")
    lp_s = np.take_along_axis(lp, order, axis=1)
    p_s = np.exp(lp_s)
    p_suf = suffix(p_s)
    n, rows = lp.shape[0], np.arange(lp.shape[0])
    cumulative = np.cumsum(p_s, axis=1)
    cuts = {}
    for name, how in settings().items():
        if how[0] in ("mass", "mass-decade"):
            cuts[name] = np.clip((cumulative < how[1]).sum(axis=1) + 1, 32, how[2])
        else:
            cuts[name] = np.full(n, how[1])
        kept[name].append(cuts[name])
    decade_at = np.stack([(lp_s >= t).sum(axis=1) for t in DECADES], axis=1)
    cells = group.max() + 1
    onehot = np.zeros((lp.shape[1], cells))
    onehot[np.arange(lp.shape[1]), group] = 1.0
    p_group = np.exp(lp) @ onehot
    for model, logits in mods.items():
        lq = log_softmax(logits)
        lq_s = np.take_along_axis(lq, order, axis=1)
        q_s = np.exp(lq_s)
        terms = p_s * (lp_s - lq_s)
        exact[model].append(terms.sum(axis=1))
        head = np.concatenate([np.zeros((n, 1)), np.cumsum(terms, axis=1)], axis=1)
        q_suf = suffix(q_s)
        q_group = np.exp(lq) @ onehot
        for name, how in settings().items():
            c = cuts[name]
            kl = head[rows, c]
            if how[0] in ("fixed", "mass"):
                kl = kl + _cell(p_suf[rows, c], q_suf[rows, c])
            elif how[0] == "frequency":
                top = group[order[:, :how[1]]]
                p_top = np.stack([(p_s[:, :how[1]] * (top == g)).sum(axis=1)
                                  for g in range(cells)], axis=1)
                q_top = np.stack([(q_s[:, :how[1]] * (top == g)).sum(axis=1)
                                  for g in range(cells)], axis=1)
                kl = kl + _cell(np.clip(p_group - p_top, 0, None), q_group - q_top).sum(axis=1)
            else:
                edges = np.concatenate([c[:, None], np.maximum(decade_at, c[:, None]),
                                        np.full((n, 1), lp.shape[1])], axis=1)
                for j in range(edges.shape[1] - 1):
                    a, b = edges[:, j], edges[:, j + 1]
                    kl = kl + _cell(p_suf[rows, a] - p_suf[rows, b],
                                    q_suf[rows, a] - q_suf[rows, b])
            table[model][name].append(kl)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=1, help="every N-th batch")
    parser.add_argument("--batches", type=int, default=None, help="at most M batches")
    args = parser.parse_args()

    from smollm2_family import SmolLM2Family

    from audit.backends import open_backend
    from audit.backends.locate import resolve_model_path
    from audit.corpus import load_corpus
    from audit.probe import probe_input
    from audit.spec import load_spec
    from audit.synthetic.damage import Quantize

    start = time.perf_counter()
    base = load_spec(ROOT / "model_specs" / "smollm2-135m.yaml")
    root = Path(tempfile.mkdtemp(prefix="smollm2-family-"))
    try:
        family = SmolLM2Family(root, resolve_model_path(base.model.path,
                                                        allow_package_code=True))

        def backend(variant: str):
            model = dataclasses.replace(base.model, path=str(family.folder(variant)))
            return open_backend(dataclasses.replace(base, name=variant, model=model))

        healthy = backend("healthy")
        healthy.load()
        windows = probe_input(base, load_corpus(base.probe.corpus), healthy)
        models = {"gguf": open_backend(base)}
        models.update({f"q{b}": healthy.with_model(Quantize(b, 32).apply(healthy.causal_lm))
                       for b in (8, 4, 3)})
        models.update({v: backend(v) for v in FAMILY})
        targets = np.concatenate([np.asarray(s)[1:] for s in windows.sequences])
        vocab = healthy.next_token_logits(np.asarray(windows.sequences)[:1, :2]).shape[-1]
        rank = np.empty(vocab, dtype=np.int64)
        rank[np.argsort(-np.bincount(targets, minlength=vocab), kind="stable")] = \
            np.arange(vocab)
        group = np.searchsorted(np.array(FREQUENCY_EDGES), rank, side="right")
        table = {m: {s: [] for s in settings()} for m in models}
        kept = {s: [] for s in settings()}
        exact = {m: [] for m in models}
        done = 0
        for i, batch in enumerate(windows.batches(base.probe.batch_size)):
            if i % args.every or (args.batches is not None and done >= args.batches):
                continue
            ref = healthy.next_token_logits(batch.ids).reshape(-1, vocab)
            mods = {m: b.next_token_logits(batch.ids).reshape(-1, vocab)
                    for m, b in models.items()}
            for a in range(0, ref.shape[0], 256):
                part = slice(a, a + 256)
                ratios_of_chunk(ref[part], {m: x[part] for m, x in mods.items()}, group,
                                table, kept, exact)
            done += 1
            print(f"batch {i} done ({time.perf_counter() - start:.0f} s)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    tokens = int(sum(len(k) for k in kept["k32"]))
    figures = {"tokens": tokens, "batches": done, "every": args.every,
               "mean_kept": {s: float(np.concatenate(kept[s]).mean()) for s in settings()},
               "models": {}}
    for m in models:
        e = np.concatenate(exact[m]).mean()
        figures["models"][m] = {"exact_kld_mean": float(e), "ratios": {
            s: (float(np.concatenate(table[m][s]).mean() / e) if e > 0 else None)
            for s in settings()}}
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["token_record"] = figures
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    for s in settings():
        print(f"{s:<20} {figures['mean_kept'][s]:6.0f}", " ".join(
            f"{m}:{r['ratios'][s]:.3f}" for m, r in figures["models"].items()
            if r["ratios"][s] is not None))


if __name__ == "__main__":
    main()
