"""Output divergence on the real SmolLM2-135M (the shared family of
tests/smollm2_family.py), the healthy model as reference, on the default probe:
8-, 4- and 3-bit group quantisation (audit.synthetic.damage.Quantize, g = 32), the
1 %-noise sibling and the attention ×8 damage, in one lockstep pass.  KLD rises as
bits fall, the stored record's bound never exceeds the exact KL, and with the
default thresholds the 8-bit copy passes and the 3-bit copy fails.

Set EQUILAW_DIVERGENCE_TABLE to a path to keep the measured figures as JSON.
Measured here (12,192 tokens; 24 min on 2 shared cores), KLD mean ± SE, p99, same
top, RMS Δp, ln PPL ratio, and the stored record's bound (k = 32) over the exact KL:

    q8       0.00152 ± 0.00003   0.0080   97.91 %  0.0083   0.0019   bound 0.721
    noisy    0.00680 ± 0.00011   0.0307   94.91 %  0.0187   0.0065   bound 0.730
    q4       0.525   ± 0.0077    2.008    63.27 %  0.153    0.375    bound 0.749
    q3       2.450   ± 0.033     7.610    24.73 %  0.331    2.176    bound 0.794
    attn-x8  4.298   ± 0.063    13.78     25.32 %  0.369    4.052    bound 0.822
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from audit.backends import open_backend
from audit.compare.divergence import DEFAULT_THRESHOLDS, judge_divergence
from audit.compare.outputs import accumulate_several
from audit.corpus import load_corpus
from audit.probe import probe_input
from audit.spec import load_spec
from audit.synthetic.damage import Quantize

pytestmark = pytest.mark.slow

SPECS = Path(__file__).resolve().parents[1] / "model_specs"
FIELDS = ("kld_mean", "kld_mean_se", "kld_p99", "same_top", "same_top_se", "rms_dp",
          "rms_dp_se", "ln_ppl_ratio", "ln_ppl_ratio_se", "kld_reverse_mean")


def test_quantisation_divergence_ordering_bound_and_verdicts(smollm2_family) -> None:
    base = load_spec(SPECS / "smollm2-135m.yaml")

    def backend(variant: str):
        model = dataclasses.replace(base.model, path=str(smollm2_family.folder(variant)))
        return open_backend(dataclasses.replace(base, name=variant, model=model))

    healthy = backend("healthy")
    healthy.load()
    windows = probe_input(base, load_corpus(base.probe.corpus), healthy)
    models = {f"q{bits}": healthy.with_model(Quantize(bits, 32).apply(healthy.causal_lm))
              for bits in (8, 4, 3)}
    models.update(noisy=backend("noisy"), **{"attn-x8": backend("attn-x8")})
    accs = accumulate_several(models, healthy, windows, batch_size=base.probe.batch_size,
                              top_k=32)
    table = {}
    for name, (exact_acc, bound_acc) in accs.items():
        exact, bound = exact_acc.result(), bound_acc.result()
        table[name] = {**{f: getattr(exact, f) for f in FIELDS},
                       "bound_kld_mean": bound.kld_mean,
                       "bound_ratio": bound.kld_mean / exact.kld_mean,
                       "verdict": judge_divergence(exact, DEFAULT_THRESHOLDS),
                       "tokens": exact.tokens}
        kld, _, _ = exact_acc.per_token()
        bkld, _, _ = bound_acc.per_token()
        table[name]["bound_exceeds_tokens"] = int((bkld > kld + 1e-12 * (1 + kld)).sum())
    out = os.environ.get("EQUILAW_DIVERGENCE_TABLE")
    if out:
        Path(out).write_text(json.dumps(table, indent=1), encoding="utf-8")
    print(json.dumps(table, indent=1))

    assert table["q8"]["kld_mean"] < table["q4"]["kld_mean"] < table["q3"]["kld_mean"]
    assert table["q8"]["same_top"] > table["q4"]["same_top"] > table["q3"]["same_top"]
    assert all(row["bound_exceeds_tokens"] == 0 for row in table.values())
    assert all(0 < row["bound_ratio"] <= 1 + 1e-9 for row in table.values())
    assert table["q8"]["verdict"] == [] and table["noisy"]["verdict"] == []
    assert table["q3"]["verdict"] and table["q4"]["verdict"]
    assert table["q8"]["tokens"] == 96 * 127
