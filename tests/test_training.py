"""audit.synthetic.training: the held-out probe windows, the checkpoints (transformers
Trainer's layout, read by transformers and by equilaw), bit-reproducible short runs,
argument errors; and, marked slow, the law emerging in the session's trained Llama,
GPT-2, GPT-NeoX, Mamba and RWKV (tests/trained_fixtures.py) while their
initialisations do not follow it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from trained_fixtures import HELD_OUT, SAVE_STEPS, TRAINED_PROBE

from audit.corpus import token_windows
from audit.errors import CorpusError
from audit.spec import ProbeSpec, spec_from_dict
from audit.synthetic.training import checkpoint_dir, held_out_mask

SHORT = dict(layers=2, hidden=32, steps=3, batch_size=4, length=32)
"""A run of a few steps (under a second once torch is imported)."""


def audit(folder: Path, name: str = "trained"):
    """The report of ``folder`` on ``TRAINED_PROBE``, run on one torch thread (as
    training is: on a shared 2-core machine two threads can be ten times slower)."""
    import torch

    from audit.pipeline import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(spec_from_dict({"name": name, "model": {"path": str(folder)},
                                   "probe": TRAINED_PROBE, "law": {}}))
    finally:
        torch.set_num_threads(threads)


def short_run(folder: Path, **options):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from audit.synthetic.training import train_tiny

    return train_tiny(folder, **{**SHORT, **options})


def weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(folder / "model.safetensors")


# -- held-out probe windows ------------------------------------------------------------

@pytest.mark.parametrize("bos", [1, None])
def test_the_held_out_mask_is_exactly_the_probe_windows(bos: int | None) -> None:
    probe = ProbeSpec(sequences=5, length=16, seed=3)
    mask = held_out_mask(1000, [probe], bos)
    stream = np.arange(1000) * 7 + 2  # any ids: the windows' tokens name their positions
    windows = token_windows(stream, 16, 5, 3, bos_id=bos)
    read = windows[:, 1:] if bos is not None else windows
    np.testing.assert_array_equal(np.flatnonzero(mask), np.sort((read.ravel() - 2) // 7))
    assert mask.sum() == (5 * 15 if bos is not None else 5 * 16)


def test_two_held_out_probes_are_both_masked() -> None:
    a, b = ProbeSpec(sequences=4, length=10, seed=0), ProbeSpec(sequences=3, length=20, seed=1)
    both = held_out_mask(500, [a, b], 1)
    np.testing.assert_array_equal(both, held_out_mask(500, [a], 1) | held_out_mask(500, [b], 1))


def test_a_held_out_probe_larger_than_the_stream_is_a_corpus_error() -> None:
    with pytest.raises(CorpusError, match="too short: its 100 tokens give 6 non-overlapping "
                                          "windows of length 16"):
        held_out_mask(100, [ProbeSpec(sequences=7, length=16)], 1)


def test_checkpoint_dir_is_trainers_name() -> None:
    assert checkpoint_dir("run", 40) == Path("run/checkpoint-40")


# -- short runs: layout, loading, reproducibility ------------------------------------------

@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory):
    """3 steps of a 2-block Llama, saved at steps 0, 2 and 3."""
    return short_run(tmp_path_factory.mktemp("short"), save_steps=2)


def test_checkpoints_are_in_trainers_layout(short) -> None:
    from transformers.trainer_utils import get_last_checkpoint

    assert sorted(p.name for p in short.run_dir.iterdir()) == [
        "checkpoint-0", "checkpoint-2", "checkpoint-3"]
    assert list(short.checkpoints) == [0, 2, 3]
    assert short.initial == short.run_dir / "checkpoint-0"
    assert short.final == short.run_dir / "checkpoint-3"
    assert Path(get_last_checkpoint(str(short.run_dir))) == short.final
    for step, folder in short.checkpoints.items():
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "trainer_state.json"} <= {p.name for p in folder.iterdir()}
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["global_step"] == step and state["max_steps"] == 3
        assert [e["step"] for e in state["log_history"]] == list(range(1, step + 1))
        assert [e["loss"] for e in state["log_history"]] == list(short.losses[:step])


def test_the_record(short) -> None:
    assert short.steps == 3 and len(short.losses) == 3 and short.seed == 0
    assert short.tokens_per_step == 4 * 31
    # the default held-out probe: 96 windows of 127 corpus tokens after the BOS
    assert short.held_out_tokens == 96 * 127
    assert short.seconds > 0


def test_checkpoints_load_in_transformers_and_equilaw(short) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from audit.synthetic.tiny import byte_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(short.final)
    text = "Return the sum.\n\n"
    assert tokenizer(text)["input_ids"] == byte_tokenizer()(text)["input_ids"]
    assert tokenizer.bos_token_id == 1
    model = AutoModelForCausalLM.from_pretrained(short.final)
    for name, value in weights(short.final).items():
        np.testing.assert_array_equal(model.state_dict()[name].numpy(), value)
    report = audit(short.final)
    assert len(report.layers) == SHORT["layers"] + 1
    assert np.isfinite(report.law.pearson_r)


def test_step_zero_is_the_seeded_initialisation(short) -> None:
    from audit.synthetic.tiny import causal_lm, config

    model = causal_lm(config("llama", SHORT["layers"], SHORT["hidden"]), seed=0)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    saved = weights(short.initial)
    assert saved.keys() <= state.keys()
    for name, value in saved.items():
        np.testing.assert_array_equal(value, state[name])


def test_training_is_bit_reproducible_with_the_same_seed(short, tmp_path: Path) -> None:
    again = short_run(tmp_path / "again", save_steps=2)
    assert again.losses == short.losses
    for step in (0, 2, 3):
        first, second = weights(short.checkpoints[step]), weights(again.checkpoints[step])
        assert first.keys() == second.keys()
        for name in first:
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_another_seed_gives_another_run(short, tmp_path: Path) -> None:
    other = short_run(tmp_path / "other", seed=1)
    assert other.losses != short.losses
    assert not np.array_equal(weights(other.initial)["model.embed_tokens.weight"],
                              weights(short.initial)["model.embed_tokens.weight"])


def test_a_given_model_is_trained_in_place(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from audit.synthetic.tiny import causal_lm, config

    model = causal_lm(config("gpt2", 2, 32), seed=5)
    before = model.transformer.wte.weight.detach().clone()
    run = short_run(tmp_path, model=model, save_initial=False)
    assert list(run.checkpoints) == [3]
    assert not model.training
    assert not np.array_equal(before.numpy(), model.transformer.wte.weight.detach().numpy())
    assert json.loads((run.final / "config.json").read_text())["model_type"] == "gpt2"


@pytest.mark.parametrize(("options", "message"), [
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0, got 0.0"),
    ({"threads": 0}, "threads must be None or an integer >= 1, got 0"),
    ({"save_steps": [2, 7]}, r"save_steps \[7\] lie outside 0..3"),
    ({"length": 300}, "length 300 exceeds the model's 256 positions"),
    ({"held_out": [ProbeSpec(corpus="other.txt")]},
     "held-out probe reads corpus 'other.txt' but training reads 'python-docstrings': a "
     "held-out probe must name the training corpus"),
    ({"held_out": [ProbeSpec(mode="documents")]},
     "a held-out probe must use mode: windows, not 'documents': training draws windows "
     "from the corpus stream, and only a windows probe's text can be cut out of it"),
])
def test_bad_arguments_are_refused(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        short_run(tmp_path, **options)
    assert not any(tmp_path.iterdir())


# -- the law emerges (session fixtures, slow) ----------------------------------------------

INITIAL_PR = {"llama": "rises", "gpt2": "flat", "neox": "flat", "mamba": "rises",
              "rwkv": "rises"}
"""Family -> how PR goes with depth at the initialisation of its session run (the
fixture ``trained_<family>``, seed 0), audited on ``TRAINED_PROBE``."""


def trained_run(request: pytest.FixtureRequest, family: str):
    """The session's training run of ``family``: only the families a test asks for
    are trained (a Mamba or RWKV run takes about a minute)."""
    return request.getfixturevalue(f"trained_{family}")


@pytest.mark.slow
@pytest.mark.parametrize("family", INITIAL_PR)
def test_trained_model_follows_the_law_and_its_initialisation_does_not(
        family: str, request: pytest.FixtureRequest) -> None:
    """Each family's session run (6 blocks, byte-level; the recipe of
    ``RECIPES[arch]``), audited on ``TRAINED_PROBE`` (48 held-out windows of 64
    tokens, token-id PR, init-norm) at step 0 and after the last step.

    At step 0 PR must not fall with depth.  "rises": the fitted per-layer ratio
    ρ > 1.002 and PR at layer L above PR at layer 1; "flat": ρ > 0.999 (the fit
    falls by at most 0.1 % a layer) and PR at layer L at least 99 % of PR at layer
    1 (there r says nothing).  Trained, the fit falls by 1.5 to 5 % a layer.
    Measured here (seed 0; other seeds of the same recipe in brackets):

    =====  ===============================  ======================================
    arch   step 0: r, ρ                     end: r, ρ, loss (nats per byte)
    =====  ===============================  ======================================
    llama  +0.973, 1.0072: rises            −0.977, 0.9698, 2.20 (300-step runs,
                                            seeds 0-3, steps 200 and 300: −0.978
                                            to −0.994)
    gpt2   +0.495, 1.0003: flat (0.9125 to  −0.974, 0.9843, 2.68 (−0.95 to −0.99
           0.9156 over layers 1-6)          after 400-600 steps)
    neox   −0.116, 0.9998: flat (0.8191 to  −0.997, 0.9630, 2.30 (−0.962, −0.998)
           0.8283); seeds 1-2 rise
           (+0.853, +0.774)
    mamba  +0.982, 1.0082: rises (+0.982,   −0.972, 0.9500, 2.06 (−0.984, −0.967)
           +0.989)
    rwkv   +0.512, 1.0046: rises to layer   −0.979, 0.9663, 1.91 (−0.961, −0.984)
           3, then flat (+0.890, +0.919)
    =====  ===============================  ======================================

    The bound −0.9 leaves room for a CPU whose rounding sends training down another
    path (the recipes' worst seeds measured: −0.95 for GPT-2, −0.961 for RWKV;
    nearby Llama recipes reached −0.87 on some seeds).  At step 0 the loss is 5.5 to 5.9 nats, near ln 259."""
    run = trained_run(request, family)
    start, end = audit(run.initial), audit(run.final)
    if INITIAL_PR[family] == "rises":
        assert start.law.rho > 1.002 and start.law.pr_last > start.law.pr_first
    else:
        assert start.law.rho > 0.999 and start.law.pr_last >= 0.99 * start.law.pr_first
    assert end.law.pearson_r <= -0.9
    assert end.law.rho < 0.99
    assert end.loss.mean < start.loss.mean - 2.0


@pytest.mark.slow
@pytest.mark.parametrize("family", INITIAL_PR)
def test_the_fixture_runs_are_in_trainers_layout(family: str,
                                                 request: pytest.FixtureRequest) -> None:
    run = trained_run(request, family)
    expected = [0, *range(SAVE_STEPS, run.steps + 1, SAVE_STEPS)]
    assert list(run.checkpoints) == expected
    assert sorted(p.name for p in run.run_dir.iterdir()) == sorted(
        f"checkpoint-{step}" for step in expected)
    assert len(run.losses) == run.steps
    assert np.mean(run.losses[-20:]) < run.losses[0] - 2.0
    # the held-out windows: the default probe and TRAINED_PROBE (they may overlap)
    sizes = [p.sequences * (p.length - 1) for p in HELD_OUT]
    assert max(sizes) <= run.held_out_tokens <= sum(sizes)
