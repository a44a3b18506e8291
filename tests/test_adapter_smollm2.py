"""A LoRA adapter trained here on SmolLM2-135M-Instruct (the family's ``healthy``
safetensors folder) on narrow text (arithmetic lines; 24 steps of 2 windows of 48
tokens: 7 minutes on this shared 2-core machine under a load of 9, the whole test
18 minutes), audited
as ``model.adapter``: the forgetting figure (probe loss on the python docstrings,
adapted minus base), which layers moved (drift from the base, paired SEs), and the
adapter unmerged against its merge in float32, bfloat16 and float16, and the
adapted model's next-token KL divergence from its base.  The numbers are in the
README, "PEFT adapters"."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("peft")

PROBE = "probe:\n  sequences: 32\n  length: 64\n  shards: 8\n"
"""A smaller probe than the default spec's (2,048 tokens, not 12,288): the audit
measures the model seven times (adapted, merged and base in float32, adapted and
merged in bfloat16 and in float16)."""


def _arithmetic(path: Path) -> Path:
    rng = np.random.default_rng(0)
    path.write_text("".join(f"{a} + {b} = {a + b}\n" for a, b in rng.integers(0, 1000, (3000, 2))))
    return path


def test_a_lora_on_smollm2_against_its_base_and_its_merge(smollm2_family, tmp_path):
    from audit.backends.torch_backend import MergedAdapterBackend, TorchBackend
    from audit.compare.adapter import MERGED_TOLERANCES, compare_to_merged
    from audit.pipeline import run
    from audit.session import AuditSession, Outcome
    from audit.spec import load_spec
    from audit.synthetic.adapters import train_lora

    base = smollm2_family.folder("healthy")
    adapter = train_lora(base, tmp_path / "lora", corpus=str(_arithmetic(tmp_path / "a.txt")),
                         steps=24, batch_size=2, length=48, learning_rate=3e-3, threads=None)
    path = tmp_path / "smollm2-lora.yaml"
    path.write_text(f"name: smollm2-lora\nmodel:\n  path: {base}\n  adapter: {adapter}\n"
                    f"{PROBE}adapter:\n  max_drift: 0.01\n  max_drift_sigma: null\n")
    spec = load_spec(path)
    session = AuditSession([path], tmp_path / "reports", cache=False)
    report = session.report(spec)
    against_base, merged = report.comparisons

    def merged_parity(dtype):
        one = dataclasses.replace(spec, model=dataclasses.replace(spec.model, dtype=dtype))
        unmerged = run(one, backend=TorchBackend(one.model, one.name), cache=False)
        merged = run(dataclasses.replace(one, name=f"{one.name}.merged"),
                     backend=MergedAdapterBackend(one.model, one.name), cache=False)
        return compare_to_merged(unmerged, merged, spec.adapter, dtype).comparisons[-1]

    parity16 = merged_parity("bfloat16")
    parity_f16 = merged_parity("float16")
    (kl,) = report.divergence

    def gap(c):
        return max(abs(r.drift) for r in c.rows), abs(c.loss_now - c.loss_then)

    figures = {
        "forgetting_nats": against_base.loss_now - against_base.loss_then,
        "loss_base": against_base.loss_then, "loss_adapted": against_base.loss_now,
        "first_moved_layer": against_base.first_moved_layer,
        "largest_drift": [against_base.largest_drift, against_base.largest_drift_layer],
        "drift": [[r.layer, round(r.drift, 5), round(r.drift_se, 5)] for r in against_base.rows],
        "merged_float32": gap(merged), "merged_bfloat16": gap(parity16),
        "merged_float16": gap(parity_f16),
        "kl_from_base": [kl.result.kld_mean, kl.result.kld_mean_se, kl.result.same_top],
        "pearson_r": [against_base.pearson_r_then, against_base.pearson_r_now],
    }
    print("\nPEFT-SMOLLM2", json.dumps(figures))

    # every block carries the adapter: every layer 1..30 drifted from the base, the
    # middle and late ones most (measured: first past 0.01 at layer 14, largest
    # +0.020 at layer 21; layers 1-9 within 0.0036)
    assert [r.layer for r in against_base.rows] == list(range(1, 31))
    assert all(r.drift != 0 for r in against_base.rows)
    assert against_base.first_moved_layer is not None and against_base.largest_drift > 0.01
    # narrow text: the docstrings' loss rises (measured +0.68 nats, 3.816 -> 4.497),
    # far past the default adapter.max_loss_increase 0.05: adapter-loss says so
    assert figures["forgetting_nats"] > 0.05
    outcome = session.outcome(spec, "adapter-loss")
    assert outcome.outcome is Outcome.COMPARISON_FAILED
    assert "> adapter.max_loss_increase 0.05" in outcome.message
    # merged against unmerged, each within its dtype's default and the float32 gap
    # far below the bfloat16 one
    assert session.outcome(spec, "adapter-merged-parity").outcome is Outcome.PASSED
    for dtype, (pr, loss) in (("float32", figures["merged_float32"]),
                              ("bfloat16", figures["merged_bfloat16"]),
                              ("float16", figures["merged_float16"])):
        assert pr <= MERGED_TOLERANCES[dtype][0] and loss <= MERGED_TOLERANCES[dtype][1], dtype
    assert figures["merged_float32"][0] < figures["merged_bfloat16"][0]
    assert figures["merged_float16"][0] < figures["merged_bfloat16"][0]
    # KL(base || adapted) on the probe: reported, not gated; its NLL difference is the
    # forgetting figure.  Not yet measured: the floor is set from the +0.68 nats the
    # loss rises by (a distribution that moved so far is at least 0.05 nats away)
    assert (kl.source, kl.gated) == ("base", False)
    assert kl.result.kld_mean > 0.05
    assert abs(kl.result.ln_ppl_ratio - figures["forgetting_nats"]) < 1e-4
