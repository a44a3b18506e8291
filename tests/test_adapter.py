"""PEFT adapters (``model.adapter``) on a tiny random Llama with LoRA adapters trained
here for a few seconds: the adapter runs unmerged through the wrapped modules, the
base measured beside it is the unmodified base, and the session judges the adapter
against its base (drift, forgetting) and against its own merge (parity)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audit.errors import BackendError, ComparisonError
from audit.spec import AdapterSpec, ModelSpec, ProbeSpec, load_spec

pytest.importorskip("peft")
PROBE = {"sequences": 16, "length": 24, "shards": 4}
IDS = (np.arange(2 * 16).reshape(2, 16) * 7) % 250 + 3   # [2, 16] byte-level token ids


@pytest.fixture(scope="module")
def lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 LoRA on q_proj and v_proj, 20 steps on the probe's corpus with the
    probe's windows held out (about a second)."""
    from audit.synthetic.adapters import train_lora

    return train_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "adapter", steps=20,
                      held_out=(ProbeSpec(**PROBE),))


def _backend(base: Path, adapter: Path | None, dtype: str = "float32", merged: bool = False):
    from audit.backends.torch_backend import MergedAdapterBackend, TorchBackend

    cls = MergedAdapterBackend if merged else TorchBackend
    return cls(ModelSpec(path=str(base), adapter=str(adapter) if adapter else None, dtype=dtype),
               "tiny-lora")


# -- the backend ------------------------------------------------------------------------

def test_the_adapter_runs_unmerged_through_the_wrapped_modules(tiny_model_dir, lora):
    from peft.tuners.lora import Linear as LoraLinear

    adapted = _backend(tiny_model_dir, lora)
    out = adapted.forward(IDS, loss=True)
    wrapped = adapted.peft_model
    for n, block in enumerate(adapted._layers.blocks):
        assert block is wrapped.get_submodule(f"base_model.model.model.layers.{n}")
        assert isinstance(block.self_attn.q_proj, LoraLinear)
        assert not isinstance(block.self_attn.k_proj, LoraLinear)
    plain = _backend(tiny_model_dir, None).forward(IDS, loss=True)
    # layer 0, the embedding output: the adapter targets only projections
    assert np.array_equal(out.hidden[0], plain.hidden[0])
    assert all(np.abs(out.hidden[k] - plain.hidden[k]).max() > 1e-4 for k in range(1, 5))
    assert adapted.versions()["peft"] == "0.21.2"
    assert adapted.weights_sha256() != _backend(tiny_model_dir, None).weights_sha256()
    files = adapted.model_files()
    assert files.weights[-1] == lora / "adapter_model.safetensors"
    assert files.config[-1] == lora / "adapter_config.json"


def test_the_base_beside_the_adapter_is_the_unmodified_base(tiny_model_dir, lora):
    """peft mutates the model an adapter is loaded into: the base is a separate load,
    bit for bit a fresh plain load, also after the adapter was loaded and run; and
    the adapter switched off (disable_adapter) gives it too."""
    adapted = _backend(tiny_model_dir, lora)
    adapted.forward(IDS, loss=True)
    base = _backend(tiny_model_dir, None).forward(IDS, loss=True)
    fresh = _backend(tiny_model_dir, None).forward(IDS, loss=True)
    assert np.array_equal(base.hidden, fresh.hidden)
    assert np.array_equal(base.token_nll, fresh.token_nll)
    with adapted.peft_model.disable_adapter():
        off = adapted.forward(IDS, loss=True)
    assert np.array_equal(off.hidden, base.hidden)


def test_merged_and_unmerged_agree_to_the_rounding_of_the_dtype(tiny_model_dir, lora):
    def gap(dtype):
        a = _backend(tiny_model_dir, lora, dtype).forward(IDS, loss=True)
        m = _backend(tiny_model_dir, lora, dtype, merged=True).forward(IDS, loss=True)
        return (np.abs(a.hidden - m.hidden).max(),
                abs(float(a.token_nll.mean()) - float(m.token_nll.mean())))

    hidden32, loss32 = gap("float32")
    hidden16, loss16 = gap("bfloat16")
    assert hidden32 < 1e-5 and loss32 < 1e-5
    assert hidden16 > 100 * hidden32                # ΔW rounded into bfloat16 weights



def test_the_merged_parity_defaults_hold_per_dtype(tiny_model_dir, lora, tmp_path):
    """The audit's figures (largest |log10 PR difference|, |probe loss difference|)
    of the adapter unmerged against merge_and_unload(), per dtype, within the
    defaults of MERGED_TOLERANCES; measured on this tiny LoRA: float32 1.6e-8 and
    0, bfloat16 and float16 in the figures printed (docs/artifacts.md)."""
    import dataclasses

    from audit.compare.adapter import MERGED_TOLERANCES, compare_to_merged
    from audit.pipeline import run

    spec = load_spec(_spec(tmp_path, tiny_model_dir, lora))
    gaps = {}
    for dtype in ("float32", "bfloat16", "float16"):
        one = dataclasses.replace(spec, model=dataclasses.replace(spec.model, dtype=dtype))
        unmerged = run(one, cache=False)
        merged = run(dataclasses.replace(one, name=f"{one.name}.merged"), cache=False,
                     backend=_backend(tiny_model_dir, lora, dtype, merged=True))
        c = compare_to_merged(unmerged, merged, spec.adapter, dtype).comparisons[-1]
        gaps[dtype] = (max(abs(r.drift) for r in c.rows), abs(c.loss_now - c.loss_then))
    print("\nTINY-LORA merged vs unmerged " + ", ".join(
        f"{dtype}: {pr:.2g} log10 PR, {loss:.2g} nats" for dtype, (pr, loss) in gaps.items()))
    for dtype, (pr, loss) in gaps.items():
        assert pr <= MERGED_TOLERANCES[dtype][0] and loss <= MERGED_TOLERANCES[dtype][1], dtype
    assert gaps["float32"][0] < gaps["float16"][0] < gaps["bfloat16"][0]

@pytest.mark.parametrize(("make", "message"), [
    (lambda d: None, "has no adapter_config.json"),
    (lambda d: (d / "adapter_config.json").write_text("{}"), "has no adapter_model.safetensors"),
    (lambda d: ((d / "adapter_config.json").write_text("{}"),
                (d / "adapter_model.bin").write_bytes(b"\x80\x04")),
     "holds only pickle weights (adapter_model.bin); equilaw never loads pickle files"),
])
def test_an_adapter_folder_without_safetensors_is_refused(tiny_model_dir, tmp_path, make, message):
    folder = tmp_path / "adapter"
    folder.mkdir()
    make(folder)
    with pytest.raises(BackendError) as err:
        _backend(tiny_model_dir, folder).forward(IDS, loss=False)
    assert f"adapter folder {str(folder)!r} {message}" in str(err.value)


def test_a_prompt_learning_adapter_is_refused(tiny_model_dir, tmp_path):
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    peft.get_peft_model(model, config).save_pretrained(tmp_path / "prompt")
    with pytest.raises(BackendError, match=r"is a prompt-learning adapter \(PROMPT_TUNING\)"):
        _backend(tiny_model_dir, tmp_path / "prompt").forward(IDS, loss=False)


# -- the session: against the base and against the merge -------------------------------

def _spec(folder: Path, base: Path, adapter: Path, extra: str = "") -> Path:
    probe = "".join(f"  {key}: {value}\n" for key, value in PROBE.items())
    path = folder / "tiny-lora.yaml"
    path.write_text(f"name: tiny-lora\nmodel:\n  path: {base}\n  adapter: {adapter}\n"
                    f"probe:\n{probe}law:\n  max_pearson_r: 1.0\n{extra}")
    return path


def test_the_session_judges_the_adapter_against_its_base_and_its_merge(
        tiny_model_dir, lora, tmp_path):
    from audit.pipeline import run
    from audit.session import AuditSession, Outcome

    path = _spec(tmp_path, tiny_model_dir, lora, "adapter:\n  max_drift: 0.5\n"
                                                 "  max_loss_increase: 0.01\n")
    spec = load_spec(path)
    session = AuditSession([path], tmp_path / "reports", cache=False)
    names = session.item_names(spec)
    assert names[-3:] == ["adapter-law", "adapter-loss", "adapter-merged-parity"]
    report = session.report(spec)
    base, merged = report.comparisons
    assert (merged.kind, merged.reference, base.kind, base.reference) == (
        "adapter-merged", "tiny-lora.merged", "adapter", "tiny-lora.base")
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "tiny-lora.base.json", "tiny-lora.json", "tiny-lora.merged.json"]

    # the base measured in the session is the plain base's audit, number for number
    plain = run(_plain_spec(spec), cache=False)
    base_json = json.loads((tmp_path / "reports" / "tiny-lora.base.json").read_text())
    assert [row["log10_pr"] for row in base_json["layers"]] == [
        row.log10_pr for row in plain.layers]
    assert base.loss_then == plain.loss.mean

    # the adapter trained on this corpus: the probe loss falls; every layer 1..L
    # drifted, none by more than adapter.max_drift 0.5
    assert base.loss_now < base.loss_then
    assert [r.layer for r in base.rows] == [1, 2, 3, 4]
    assert all(r.drift != 0 and r.drift_se > 0 and r.status == "ok" for r in base.rows)
    assert base.first_moved_layer is None
    assert session.outcome(spec, "adapter-loss").outcome is Outcome.PASSED
    # float32: merged and unmerged differ by rounding only
    assert max(abs(r.drift) for r in merged.rows) < 1e-5
    assert abs(merged.loss_now - merged.loss_then) < 1e-5
    assert session.outcome(spec, "adapter-merged-parity").outcome is Outcome.PASSED

    # KL(base || adapted) on the same windows: reported beside the drift and the loss,
    # not gated (the divergence item skips); its NLL difference is the forgetting figure
    (row,) = report.divergence
    assert (row.source, row.reference, row.gated) == ("base", str(tiny_model_dir), False)
    kl = row.result
    print(f"\nTINY-LORA KL from base {kl.kld_mean:.4g} ± {kl.kld_mean_se:.2g}, same top "
          f"{kl.same_top:.4f}, loss {base.loss_then:.4f} -> {base.loss_now:.4f}")
    assert kl.tokens == 16 * 23 and 1e-4 < kl.kld_mean < 1.0 and kl.kld_mean_se > 0
    assert kl.ln_ppl_ratio == pytest.approx(base.loss_now - base.loss_then, abs=1e-6)
    assert session.outcome(spec, "divergence").outcome is Outcome.SKIPPED
    written = json.loads((tmp_path / "reports" / "tiny-lora.json").read_text())
    assert [(d["source"], d["gated"]) for d in written["divergence"]] == [("base", False)]
    assert written["divergence"][0]["kld_mean"] == kl.kld_mean
    from audit.report.terminal import divergence_text

    assert divergence_text(row).startswith(f"divergence from the adapter's base "
                                           f"{tiny_model_dir} (reported, not gated; 368 tokens")


def _plain_spec(spec):
    import dataclasses

    return dataclasses.replace(spec, name="plain", model=dataclasses.replace(spec.model,
                                                                             adapter=None))


def test_a_forgetting_adapter_fails_the_loss_item_with_the_figure(
        tiny_model_dir, tmp_path):
    """An adapter trained on other text (bytes that docstrings hardly use), its
    output projection among the targets, raises the probe loss: adapter-loss fails
    and says by how much."""
    from audit.session import AuditSession, Outcome
    from audit.synthetic.adapters import train_lora

    narrow = tmp_path / "narrow.txt"
    narrow.write_text("~^|`{}~^|`{}\n" * 400)
    adapter = train_lora(tiny_model_dir, tmp_path / "narrow", corpus=str(narrow), steps=30,
                         learning_rate=1e-2, targets=("q_proj", "v_proj", "lm_head"))
    path = _spec(tmp_path, tiny_model_dir, adapter, "adapter:\n  max_loss_increase: 0.05\n")
    spec = load_spec(path)
    session = AuditSession([path], None, cache=False)
    report = session.report(spec)
    base = report.comparisons[0]
    assert base.loss_now - base.loss_then > 0.05
    outcome = session.outcome(spec, "adapter-loss")
    assert outcome.outcome is Outcome.COMPARISON_FAILED
    assert outcome.message.startswith("probe loss (nats) ")
    assert "> adapter.max_loss_increase 0.05" in outcome.message.splitlines()[0]


def test_merged_tolerances_follow_the_dtype_unless_given():
    from audit.compare.adapter import MERGED_TOLERANCES, compare_to_merged, merged_tolerances

    assert merged_tolerances(AdapterSpec(), "float32") == MERGED_TOLERANCES["float32"]
    assert merged_tolerances(AdapterSpec(), "bfloat16") == MERGED_TOLERANCES["bfloat16"]
    assert merged_tolerances(AdapterSpec(max_merged_loss_difference=None), "float16") == (
        MERGED_TOLERANCES["float16"][0], None)
    with pytest.raises(ComparisonError, match="no merged-parity tolerances for dtype 'int8'"):
        compare_to_merged(None, None, AdapterSpec(), "int8")


# -- a merged checkpoint as shipped (adapter.merged) -----------------------------------

def _save_merge(base: Path, adapter: Path, out: Path, *, alpha_factor: float = 1.0,
                unmerged: str | None = None) -> Path:
    """``merge_and_unload()`` of ``adapter`` into ``base``, saved to ``out`` (weights
    and config, no tokenizer); ``alpha_factor`` folds ΔW with lora_alpha scaled by
    it, ``unmerged`` names one weight put back to the base's (a module left out of
    the merge)."""
    import shutil

    import peft
    import torch
    import transformers

    folder = out.with_name(out.name + "-adapter")
    shutil.copytree(adapter, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["lora_alpha"] *= alpha_factor
    (folder / "adapter_config.json").write_text(json.dumps(config))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    if unmerged is not None:
        plain = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        with torch.no_grad():
            merged.get_parameter(unmerged).copy_(plain.get_parameter(unmerged))
    merged.save_pretrained(out)
    return out


@pytest.mark.parametrize(("damage", "passes", "first"), [
    ({}, True, None),
    ({"alpha_factor": 2.0}, False, 1),             # ΔW folded at twice its scale
    ({"unmerged": "model.layers.2.self_attn.q_proj.weight"}, False, 3),
])
def test_a_shipped_merge_is_judged_against_the_adapter(tiny_model_dir, lora, tmp_path, damage,
                                                       passes, first):
    """adapter.merged: a merged folder as it ships, audited against the adapter
    unmerged; a faithful merge passes adapter-merged-parity, one folded with the
    wrong lora_alpha or with block 2's q_proj left unmerged fails it, the message
    naming the layers that differ (layer l is block l-1's output: the unmerged
    q_proj of block 2 first shows at layer 3)."""
    from audit.session import AuditSession, Outcome

    merged = _save_merge(tiny_model_dir, lora, tmp_path / "merged", **damage)
    path = _spec(tmp_path, tiny_model_dir, lora, f"adapter:\n  merged: {merged}\n")
    spec = load_spec(path)
    assert spec.adapter.merged == str(merged)
    session = AuditSession([path], None, cache=False)
    comparison = session.report(spec).comparisons[1]
    assert (comparison.kind, comparison.reference) == ("adapter-merged", "tiny-lora.merged")
    drift = [abs(r.drift) for r in comparison.rows]
    print(f"\nMERGED {damage}: |log10 PR difference| per layer {[f'{d:.2g}' for d in drift]}, "
          f"loss {comparison.loss_then:.6f} merged, {comparison.loss_now:.6f} unmerged")
    outcome = session.outcome(spec, "adapter-merged-parity")
    if passes:
        assert outcome.outcome is Outcome.PASSED
        assert max(drift) < 1e-6
        return
    assert outcome.outcome is Outcome.COMPARISON_FAILED
    assert comparison.first_moved_layer == first
    assert max(drift[:first - 1], default=0.0) < 1e-6 < drift[first - 1]
    lines = outcome.message.splitlines()
    assert any(line.startswith(f"layer {first}:") for line in lines), lines
    assert "adapter.max_merged_log10_pr_difference 1e-06" in outcome.message


def test_adapter_merged_needs_an_adapter(tmp_path):
    from audit.errors import SpecError

    with pytest.raises(SpecError, match="adapter.merged is the merge of model.adapter"):
        load_spec(_spec_without_adapter(tmp_path))


def _spec_without_adapter(folder: Path) -> Path:
    path = folder / "no-adapter.yaml"
    path.write_text("name: x\nmodel:\n  path: base\nadapter:\n  merged: merged\n")
    return path
