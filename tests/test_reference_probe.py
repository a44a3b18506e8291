"""audit.probe: the two probe modes.  ``windows`` must stay exactly what it was;
``documents`` must build exactly the examples of the authors' reference code
(HornHehhf/LLM-ELL: feature_learning.py, analyzing_law.py,
feature_quality_assessment.py), checked against a direct re-implementation of it on
tiny models."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from audit.corpus import Corpus, load_corpus, token_windows, tokenize_corpus
from audit.errors import CorpusError, SpecError
from audit.norms import NormInfo, apply_normalization
from audit.probe import (
    ProbeInput,
    documents_sha256,
    example_positions,
    min_length,
    probe_input,
    windows_sha256,
)
from audit.spec import ModelSpec, Spec, load_spec, spec_from_dict
from audit.synthetic.tiny import TINY_LAYERS, TINY_WIDTH

BOS = 1
SEED = 666          # the reference's seed
MAX_LENGTH = 48     # the reference truncates to 512; the tiny models allow 256 positions
SAMPLED = 28        # sent_num
REFERENCE_BATCH = 5  # the reference's batch size; equilaw's differs on purpose


class ByteTokens:
    """A tokenizer without transformers: one id per UTF-8 byte (byte + ``offset``);
    ``encode_document`` adds ``bos`` first when there is one (a Llama-style
    tokenizer) and truncates, as ``tokenizer(text, truncation=True, max_length=n)``."""

    def __init__(self, bos: int | None = BOS, offset: int = 3) -> None:
        self.bos_token_id = bos
        self.offset = offset

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def encode_document(self, text: str, max_length: int) -> list[int]:
        special = [] if self.bos_token_id is None else [self.bos_token_id]
        return (special + self.encode(text))[:max_length]


def make_texts(n: int = 40, seed: int = 1) -> list[str]:
    """Documents of 1 to 90 characters (some multi-byte, some of equal length, some
    of one character: too short for an example without a BOS)."""
    rng = np.random.default_rng(seed)
    alphabet = list("abcdefghijklmnopqrstuvwxyz.,;é") + [" "] * 6
    lengths = rng.integers(1, 91, n)
    lengths[[3, 11, 17, 25, 33]] = 1
    lengths[[5, 6, 7, 8]] = 20
    texts = []
    for length in lengths:
        text = "".join(rng.choice(alphabet, size=int(length)))
        texts.append("x" + text[1:] if not text[:1].strip() else text)  # never blank
    return texts


def spec_for(corpus: str = "python-docstrings", **probe) -> Spec:
    return spec_from_dict({"name": "probe", "model": "m.gguf", "probe": {"corpus": corpus, **probe}})


# -- windows: unchanged ----------------------------------------------------------------

# windows_sha256 of the default probe (96 windows of 128 tokens, seed 0) on the built-in
# corpus with the byte ids of ByteTokens(bos=256, offset=0), measured before the probe
# left audit.pipeline (commit df830e7): reports and baselines compare this digest.
DEFAULT_WINDOWS_SHA256 = "4d2096a4f7b341ab90b43d45d64a19858e407b20dcef30ce36e2f169e7fdad07"


def test_windows_mode_is_unchanged() -> None:
    corpus = load_corpus("python-docstrings")
    tokens = ByteTokens(bos=256, offset=0)
    spec = spec_for()
    assert spec.probe.mode == "windows"
    got = probe_input(spec, corpus, tokens)
    windows = token_windows(tokenize_corpus(corpus, tokens.encode), 128, 96, 0, bos_id=256)
    assert got.mode == "windows" and got.sha256 == windows_sha256(windows) == DEFAULT_WINDOWS_SHA256
    np.testing.assert_array_equal(got.sequences, windows)
    np.testing.assert_array_equal(got.shard_of, np.arange(96) * 10 // 96)
    assert got.tokens == 96 * 128 and got.counts == {"stream_tokens": 563_180}
    batches = list(got.batches(8))
    assert [b.rows.tolist() for b in batches] == [list(range(s, s + 8)) for s in range(0, 96, 8)]
    for batch in batches:  # the windows in their plain order, as before
        np.testing.assert_array_equal(batch.ids, windows[batch.rows[0]:batch.rows[-1] + 1])
        np.testing.assert_array_equal(batch.shards, got.shard_of[batch.rows])
    assert sum(b.ids.shape[0] for b in got.batches(7)) == 96  # a last, partial batch


# -- documents: sampling, tokens, batches --------------------------------------------------

@pytest.fixture(scope="module")
def texts() -> list[str]:
    return make_texts()


@pytest.fixture(scope="module")
def corpus_file(texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reference-corpus") / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    assert load_corpus(path).documents == tuple(texts)
    return path


def reference_sample(n: int, k: int, seed: int = SEED) -> np.ndarray:
    """analyzing_law.py + sample_sentences: the global seed, then a shuffle of arange."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        sent_id_list = np.arange(n)
        np.random.shuffle(sent_id_list)
    finally:
        np.random.set_state(state)
    return sent_id_list[:k]


def documents_probe(texts: list[str], tokens: ByteTokens, target: str = "next",
                    **probe) -> ProbeInput:
    corpus = Corpus(name="c", sha256="0" * 64, documents=tuple(texts), source="memory")
    settings = {"mode": "documents", "sequences": SAMPLED, "length": 16, "seed": SEED,
                "batch_size": 3, "shards": 4, **probe}
    spec = spec_from_dict({"name": "probe", "model": "m.gguf", "target": target,
                           "probe": settings})
    return probe_input(spec, corpus, tokens)


@pytest.mark.parametrize("bos", [BOS, None])
def test_documents_are_the_references_sample_tokenized_from_their_start(texts, bos) -> None:
    tokens = ByteTokens(bos=bos)
    got = documents_probe(texts, tokens)
    chosen = reference_sample(len(texts), SAMPLED)
    assert got.mode == "documents" and len(got.sequences) == SAMPLED
    for ids, index in zip(got.sequences, chosen):
        assert ids.dtype == np.int64
        assert ids.tolist() == tokens.encode_document(texts[index], 16)
        assert len(ids) <= 16 and (ids[0] == BOS) == (bos is not None)
    lengths = np.array([len(texts[i].encode()) + (bos is not None) for i in chosen])
    np.testing.assert_array_equal(got.lengths, np.minimum(lengths, 16))
    np.testing.assert_array_equal(got.shard_of, np.arange(SAMPLED) * 4 // SAMPLED)
    short = int((got.lengths < 2).sum())
    assert got.counts == {"documents": len(texts), "short_documents": short}
    assert (short > 0) == (bos is None)  # one character: one token without a BOS
    assert got.tokens == int(got.lengths[got.lengths >= 2].sum())
    assert got.sha256 == documents_sha256(got.sequences)


@pytest.mark.parametrize("target", ["previous", "current", "next", "next_next"])
def test_documents_are_batched_by_exact_length_without_padding(texts, target) -> None:
    got = documents_probe(texts, ByteTokens(bos=None), target=target)
    need = min_length(target)  # the shortest sequence with one example
    assert need == {"previous": 2, "current": 1, "next": 2, "next_next": 3}[target]
    assert len(example_positions(need, target)[0]) == 1
    assert len(example_positions(need - 1, target)[0]) == 0
    seen, last_length = [], np.inf
    for batch in got.batches(3):
        b, t = batch.ids.shape
        assert 1 <= b <= 3 and need <= t <= last_length  # longest first
        last_length = t
        assert np.all(got.lengths[batch.rows] == t)
        for row, ids in zip(batch.rows, batch.ids):
            np.testing.assert_array_equal(ids, got.sequences[row])
        assert np.all(np.diff(batch.rows) > 0)  # sampling order within a length
        np.testing.assert_array_equal(batch.shards, got.shard_of[batch.rows])
        assert np.all(np.diff(batch.shards) >= 0)  # one shard's rows are contiguous
        seen += batch.rows.tolist()
    assert sorted(seen) == np.flatnonzero(got.lengths >= need).tolist()
    full = got.batches(SAMPLED)
    assert all(len(set(got.lengths[b.rows])) == 1 for b in full)


def test_documents_digest_identifies_the_split_and_the_mode() -> None:
    a = (np.array([1, 2, 3]), np.array([4, 5]))
    b = (np.array([1, 2]), np.array([3, 4, 5]))  # the same ids, split differently
    assert documents_sha256(a) != documents_sha256(b)
    assert documents_sha256(a) == documents_sha256([x.astype(np.int32) for x in a])
    same = (np.array([1, 2]), np.array([3, 4]))
    assert documents_sha256(same) != windows_sha256(np.stack(same))


def test_more_documents_than_the_corpus_holds_names_probe_sequences(corpus_file: Path,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: tiny\nmodel: m.gguf\nprobe:\n  corpus: {corpus_file}\n"
                    f"  mode: documents\n  sequences: 41\n")
    spec = load_spec(path)
    with pytest.raises(SpecError) as info:
        probe_input(spec, load_corpus(corpus_file), ByteTokens())
    assert str(info.value) == (f"{path}:6: probe.sequences: asks for 41 documents, but corpus "
                               f"'texts.jsonl' holds 40: lower probe.sequences, or use a "
                               f"larger corpus")
    assert info.value.field == "probe.sequences"


def test_documents_too_short_for_any_example() -> None:
    with pytest.raises(CorpusError) as info:
        documents_probe(["a", "b", "c"], ByteTokens(bos=None), sequences=2)
    assert str(info.value) == ("corpus 'c': none of the 2 sampled documents has the 2 tokens "
                               "one example of target 'next' needs")


# -- the tokenizer side -------------------------------------------------------------------

def gpt2_style_tokenizer():
    """The tiny byte tokenizer without its post-processor: like GPT-2's, it has a BOS
    but adds no special token by default."""
    from tokenizers import processors

    from audit.synthetic.tiny import byte_tokenizer

    tok = byte_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A",
                                                                         special_tokens=[])
    return tok


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from audit.synthetic.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), arch="gpt2",
                           layers=TINY_LAYERS, hidden=TINY_WIDTH, seed=0,
                           tokenizer=gpt2_style_tokenizer())


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir: Path, gpt2_dir: Path) -> dict[str, Path]:
    return {"llama": tiny_model_dir, "gpt2": gpt2_dir}


def test_default_special_tokens_llama_adds_its_bos_gpt2_nothing(model_dirs) -> None:
    from audit.backends import open_backend

    for arch, bos_first in (("llama", True), ("gpt2", False)):
        backend = open_backend(Spec(name=arch, model=ModelSpec(path=str(model_dirs[arch]))))
        body = backend.encode("hello")
        assert backend.bos_token_id == BOS  # both define a BOS; only one adds it
        assert backend.encode_document("hello", 512) == [BOS] * bos_first + body
        assert backend.encode_document("hello", 3) == ([BOS] * bos_first + body)[:3]
        assert backend.encode_document("hello", 3) == \
            backend.tokenizer("hello", truncation=True, max_length=3)["input_ids"]


# -- equality with the reference's example construction -----------------------------------

FRESH_NORM = {"llama": ("rms", "rms_norm_eps"), "gpt2": ("layer", "layer_norm_epsilon")}
"""normalize_features: LlamaRMSNorm(eps=rms_norm_eps), nn.LayerNorm(eps=layer_norm_epsilon)."""


@pytest.fixture(scope="module")
def models() -> dict[str, object]:
    """The tiny models in float64: float32 features would depend on the batch shape
    (the reference pads, equilaw does not) by about 1e-7; in float64 both sides'
    features agree once rounded to float32."""
    pytest.importorskip("torch")
    from audit.synthetic.tiny import causal_lm, config

    return {arch: causal_lm(config(arch, TINY_LAYERS, TINY_WIDTH), seed=0).double()
            for arch in ("llama", "gpt2")}


def reference_examples(model, folder: Path, texts: list[str], arch: str, target: str):
    """The reference's examples, re-implemented from its code: sample_sentences,
    load_model's tokenizer tweak, get_features_only, normalize_features
    ('initialized-LN': with audit.norms, so that this test is about which examples
    are built) and convert_sentences_to_examples.  Returns (features float64
    [L+1, n, d], target ids int64 [n])."""
    import torch
    import transformers

    sentences = [texts[int(i)] for i in reference_sample(len(texts), SAMPLED)]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens({"eos_token": "<eos>"})  # "cannot deal with batches" otherwise
    tokenizer.pad_token = tokenizer.eos_token
    model = copy.deepcopy(model)
    model.resize_token_embeddings(len(tokenizer))
    all_tokens, all_features = [], []
    for i in range(0, len(sentences), REFERENCE_BATCH):
        inputs = tokenizer(sentences[i:i + REFERENCE_BATCH], padding=True, truncation=True,
                           max_length=MAX_LENGTH, return_tensors="pt")
        input_ids, attention_masks = inputs["input_ids"], inputs["attention_mask"]
        assert tokenizer.padding_side == "right"
        with torch.no_grad():
            features = model(input_ids, attention_mask=attention_masks,
                             output_hidden_states=True).hidden_states
        for j in range(features[0].shape[0]):
            non_padded_indices = attention_masks[j].nonzero().squeeze(1)
            all_tokens.append(input_ids[j][non_padded_indices].numpy())
            # float32 as equilaw's backends give hidden states
            all_features.append(np.array([layer[j][non_padded_indices].to(torch.float32).numpy()
                                          for layer in features]))          # [L+1, n_j, d]
    kind, eps_key = FRESH_NORM[arch]
    norm = NormInfo(kind, float(getattr(model.config, eps_key)))
    all_features = [apply_normalization("init_norm", f, norm) for f in all_features]
    token_features, token_outputs = [], []
    for cur_tokens, cur_features in zip(all_tokens, all_features):
        n = len(cur_tokens)
        if target == "current":
            pairs = [(j, j) for j in range(n)]
        elif target == "next_next":
            pairs = [(j, j + 2) for j in range(n)[:-2]]
        elif target == "previous":
            pairs = [(j, j - 1) for j in range(n)[1:]]
        else:
            pairs = [(j, j + 1) for j in range(n)[:-1]]
        for j, k in pairs:
            token_features.append(cur_features[:, j, :])
            token_outputs.append(cur_tokens[k])
    features = np.array(token_features, dtype=np.float64).transpose(1, 0, 2)   # [L+1, n, d]
    return features, np.array(token_outputs, dtype=np.int64)


RCOND = 1e-6
"""The rank cutoff of the OLS below, relative to the largest singular value of the
centred features.  The features are float32 (relative rounding 6e-8), so a
direction below this is rounding noise: after a fresh LayerNorm every token's
features sum to zero, and that direction keeps only float32 noise (about 3e-8 of
the largest singular value on the tiny GPT-2, against 0.2 for the smallest real
one).  equilaw's statistics and the reference's own fit (sklearn's
LinearRegression) leave it out; numpy's default cutoff (1e-13) would fit the
noise and lower PR by up to 1e-2 here (:func:`test_the_references_own_fit_agrees`)."""


def reference_pr(features: np.ndarray, targets: np.ndarray, shuffled: bool,
                 rcond: float | None = RCOND) -> np.ndarray:
    """get_layer_feature_quality: the shuffled vocabulary (np.random.permutation right
    after set_random_seed(666)), then per layer OLS with intercept (numpy lstsq in
    float64 on the centred features, as LinearRegression centres them) and
    PR = MSE / Var = SS_res / SS_tot."""
    y = targets
    if shuffled:
        state = np.random.get_state()
        try:
            np.random.seed(SEED)
            unique_labels = np.unique(y)
            label_mapping = dict(zip(unique_labels, np.random.permutation(unique_labels)))
        finally:
            np.random.set_state(state)
        y = np.array([label_mapping[label] for label in y])
    yc = y.astype(np.float64) - y.mean()
    out = []
    for x in features:
        xc = x - x.mean(axis=0)                                  # [n, d] float64
        coef, *_ = np.linalg.lstsq(xc, yc, rcond=rcond)
        resid = yc - xc @ coef
        out.append(resid @ resid / (yc @ yc))
    return np.array(out)


def equilaw_measurement(model, folder: Path, corpus_file: Path, measure: str, target: str,
                        permutation: str = "reference"):
    """collect() in documents mode with the reference's settings on an in-memory
    model (the tokenizer comes from ``folder``)."""
    from audit.pipeline import collect

    spec = spec_from_dict({
        "name": "reference", "model": {"path": str(folder)}, "measure": measure,
        "target": target, "normalization": "init_norm",
        "probe": {"corpus": str(corpus_file), "mode": "documents", "sequences": SAMPLED,
                  "length": MAX_LENGTH, "seed": SEED, "batch_size": 4, "shards": 4,
                  "permutation": permutation}})
    return collect(spec, model=model)


@pytest.fixture(scope="module")
def reference(models, model_dirs, texts):
    cache = {}

    def get(arch: str, target: str):
        if (arch, target) not in cache:
            cache[arch, target] = reference_examples(models[arch], model_dirs[arch], texts,
                                                     arch, target)
        return cache[arch, target]
    return get


@pytest.mark.parametrize(("arch", "measure", "target"), [
    ("llama", "token_id", "next"),
    ("llama", "shuffled_token_id", "next"),
    ("gpt2", "token_id", "next"),
    ("gpt2", "shuffled_token_id", "next"),
    ("llama", "token_id", "previous"),
    ("llama", "token_id", "current"),
    ("gpt2", "token_id", "next_next"),
])
def test_documents_mode_equals_the_reference(arch, measure, target, models, model_dirs,
                                            corpus_file, reference) -> None:
    """PR per layer from collect(mode: documents) equals the reference's OLS on the
    reference's own examples to 1e-8 relative (measured: 6e-16 on Llama, 9e-11 on
    GPT-2, whose LayerNorm features are nearly rank-deficient: see RCOND)."""
    features, targets = reference(arch, target)
    expected = reference_pr(features, targets, shuffled=measure == "shuffled_token_id")
    got = equilaw_measurement(models[arch], model_dirs[arch], corpus_file, measure, target)
    assert got.corpus["examples"] == len(targets)
    assert got.pr.shape == (TINY_LAYERS + 1,)
    # atol: target current at layer 0 (the token's own embedding) gives PR = 0 up to
    # rounding on both sides (about 1e-15 and 1e-30)
    np.testing.assert_allclose(got.pr, expected, rtol=1e-8, atol=1e-12)
    assert got.probe["mode"] == "documents"


def test_the_references_own_fit_agrees(reference) -> None:
    """Regression_measure itself (sklearn's LinearRegression, then MSE / np.var) on
    the reference's examples gives the PR above, rank cutoff included; numpy's
    default cutoff fits the float32 noise of the LayerNorm mean direction."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    features, targets = reference("gpt2", "next")
    sk = []
    for x in features:
        predictions = sklearn.LinearRegression().fit(x, targets).predict(x)
        sk.append(np.mean((targets - predictions) ** 2) / np.var(targets))
    np.testing.assert_allclose(reference_pr(features, targets, False), sk, rtol=1e-8)
    noisy = reference_pr(features, targets, False, rcond=None)
    assert np.max(np.abs(noisy / sk - 1)) > 1e-3


def test_shuffled_vocabulary_follows_the_reference_permutation(models, model_dirs, corpus_file,
                                                              reference) -> None:
    """permutation: reference is RandomState(666) over the sorted target ids; equilaw's
    own permutation (default_rng) gives other numbers on the same examples."""
    features, targets = reference("llama", "next")
    unique = np.unique(targets)
    mapping = dict(zip(unique, np.random.RandomState(SEED).permutation(unique)))
    mapped = np.array([mapping[t] for t in targets])
    plain = reference_pr(features, mapped, shuffled=False)
    np.testing.assert_array_equal(plain, reference_pr(features, targets, shuffled=True))
    equilaw_order = dict(zip(unique, unique[np.random.default_rng(SEED).permutation(unique.size)]))
    other = reference_pr(features, np.array([equilaw_order[t] for t in targets]), shuffled=False)
    assert np.max(np.abs(other / plain - 1)) > 1e-3
    got = equilaw_measurement(models["llama"], model_dirs["llama"], corpus_file,
                              "shuffled_token_id", "next", permutation="equilaw")
    np.testing.assert_allclose(got.pr, other, rtol=1e-8)


def test_documents_record_and_probe_loss_per_document(models, model_dirs, corpus_file,
                                                      texts) -> None:
    """The record says the mode, sequences and tokens; the probe loss is the model's
    own mean next-token cross-entropy over every sampled document's tokens."""
    import torch

    from audit.backends import open_backend

    got = equilaw_measurement(models["gpt2"], model_dirs["gpt2"], corpus_file, "token_id", "next")
    backend = open_backend(got.spec)
    docs = [backend.encode_document(texts[int(i)], MAX_LENGTH)
            for i in reference_sample(len(texts), SAMPLED)]
    lengths = np.array([len(d) for d in docs])
    used = lengths >= 2
    assert got.corpus == {
        "name": "texts.jsonl", "sha256": load_corpus(corpus_file).sha256,
        "tokens": int(lengths[used].sum()), "documents": len(texts),
        "short_documents": int((~used).sum()), "examples": int((lengths[used] - 1).sum()),
        "sequences": SAMPLED, "length": MAX_LENGTH}
    assert got.corpus["short_documents"] > 0 and lengths.max() == MAX_LENGTH  # some truncated
    assert got.probe["mode"] == "documents"
    assert got.probe["windows_sha256"] == documents_sha256([np.array(d) for d in docs])
    total = count = 0.0
    with torch.no_grad():
        for ids in (torch.tensor([d]) for d, keep in zip(docs, used) if keep):
            n = ids.shape[1] - 1
            total += float(models["gpt2"](input_ids=ids, labels=ids).loss) * n
            count += n
    assert got.loss is not None and got.loss.tokens == count
    assert got.loss.mean == pytest.approx(total / count, rel=1e-6)
