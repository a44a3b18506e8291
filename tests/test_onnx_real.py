"""ONNX on real weights: SmolLM2 (the session's re-saved healthy checkpoint,
tests/smollm2_family.py) exported with every hidden state and its logits, then
audited by onnxruntime on the default probe and compared with the PyTorch audit
of the same checkpoint (measured once per session, ``smollm2_report``) within
the default parity tolerances.  Marked slow: the export takes about 90 s."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.slow


def test_smollm2_exported_to_onnx_tells_the_same_story(smollm2_report, smollm2_onnx,
                                                        smollm2_onnx_report) -> None:
    from audit.compare.parity import compare_backends
    from audit.spec import ParitySpec

    exported = smollm2_onnx
    assert exported.num_layers == 30 and exported.has_logits
    hidden = [v for k, v in exported.max_rel_diff.items() if k.startswith("hidden_states.")]
    assert max(hidden) < 1e-4  # measured: 2e-6 of the layer's largest |value|
    # fused for onnxruntime (the default), every hidden state still an output
    assert exported.fusion_note is None
    assert {op: exported.fusions.get(op) for op in (
        "MultiHeadAttention", "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization")} == {
        "MultiHeadAttention": 30, "SimplifiedLayerNormalization": 1,
        "SkipSimplifiedLayerNormalization": 60}

    onnx_report = smollm2_onnx_report  # the export audited by onnxruntime
    torch_report = smollm2_report("healthy")
    assert onnx_report.probe["windows_sha256"] == torch_report.probe["windows_sha256"]
    got = compare_backends(onnx_report, torch_report, ParitySpec())
    (parity,) = got.comparisons
    failed = [c.message for c in got.checks if c.check.startswith("parity") and not c.passed]
    assert failed == []
    assert parity.first_moved_layer is None
    # the law's verdict is the same on both backends
    assert onnx_report.verdict == torch_report.verdict
    assert onnx_report.law.pearson_r == pytest.approx(torch_report.law.pearson_r, abs=1e-5)
    pr_t = np.array([row.pr for row in torch_report.layers])
    pr_o = np.array([row.pr for row in onnx_report.layers])
    np.testing.assert_allclose(pr_o, pr_t, rtol=1e-4)
