"""Mutants measured from the damaged block on (``audit.resume``): the resumed pass
gives the full pass's layers, loss and logits bit for bit where the base model feeds
its input embeddings to the first block unchanged (every family the damage
operators know but GPT-2, whose position embeddings are added inside), the model
is left as it was, and ``equilaw mutate``'s table is the one a full recomputation
of every mutant gives, field for field."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from audit.backends.torch_backend import TorchBackend  # noqa: E402
from audit.errors import BackendError  # noqa: E402
from audit.mutate import mutate  # noqa: E402
from audit.resume import LogitStore, resume_mismatch  # noqa: E402
from audit.spec import ModelSpec, spec_from_dict  # noqa: E402
from audit.synthetic.damage import (  # noqa: E402
    LAYOUTS,
    AddNoise,
    ReinitBlock,
    RepeatBlocks,
    ScaleAttention,
    ScaleNorm,
    SwapBlocks,
    ZeroBlock,
)
from audit.synthetic.tiny import config, save_tiny_model  # noqa: E402

IDS = np.random.default_rng(1).integers(3, 259, size=(3, 20))  # longer than Gemma's window 8
PROBE = {"sequences": 12, "length": 20, "shards": 3, "batch_size": 4}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {arch: save_tiny_model(tmp_path_factory.mktemp(arch), cfg=config(arch, 4))
            for arch in LAYOUTS}


@pytest.mark.parametrize("arch", sorted(LAYOUTS))
def test_the_resumed_pass_is_the_full_pass_bit_for_bit(arch: str, family_dirs) -> None:
    backend = TorchBackend(ModelSpec(path=str(family_dirs[arch])), arch)
    backend.load()
    blocks = backend._layers.blocks
    cfg = backend._model.config
    before = (getattr(cfg, "layer_types", None), cfg.num_hidden_layers)
    why = resume_mismatch(backend, IDS, (1, 2, 3))
    if arch == "gpt2":  # wpe is added to the input embeddings inside the model
        assert sorted(why) == [1, 2, 3]
        assert all("differs from the full pass" in line for line in why.values())
    else:
        assert why == {}
        full = backend.forward(IDS, loss=True, logits=True)
        part = backend.forward_from(2, full.hidden[2], IDS, loss=False)
        assert part.first_layer == 2 and part.token_nll is None and part.logits is None
        assert np.array_equal(part.hidden, full.hidden[2:])
    # the model is as it was: its block list, depth and per-block config lists
    assert tuple(backend._layers.blocks) == blocks
    assert tuple(backend._model.get_submodule(LAYOUTS[arch].blocks)) == blocks
    assert (getattr(cfg, "layer_types", None), cfg.num_hidden_layers) == before


def test_resuming_needs_a_block_after_the_first_and_a_matching_state(family_dirs) -> None:
    backend = TorchBackend(ModelSpec(path=str(family_dirs["llama"])), "tiny")
    state = np.zeros((*IDS.shape, 32), np.float32)
    for position in (0, 4):
        with pytest.raises(BackendError, match=f"cannot resume at block {position}"):
            backend.forward_from(position, state, IDS, loss=False)
    with pytest.raises(BackendError, match=r"shape \(3, 20, 31\), expected \(3, 20, 32\)"):
        backend.forward_from(1, state[..., :31], IDS, loss=False)


def test_reused_logits_are_the_new_arrays_values_in_one_array(family_dirs) -> None:
    """``reuse_logits``: every batch's logits, from forward and forward_from, land in
    one kept array, valid until the next pass, with the values a new array gets;
    batches of another shape get a view of the right shape; the flag is scoped."""
    backend = TorchBackend(ModelSpec(path=str(family_dirs["llama"])), "tiny")
    other = IDS[:, ::-1].copy()
    fresh = backend.forward(IDS, loss=True, logits=True)
    fresh_other = backend.forward(other, loss=True, logits=True)
    fresh_tail = backend.forward_from(2, fresh_other.hidden[2], other, loss=True, logits=True)
    assert not np.array_equal(fresh.logits, fresh_other.logits)
    with backend.reusing_logits():
        first = backend.forward(IDS, loss=True, logits=True)
        assert np.array_equal(first.logits, fresh.logits)
        assert np.array_equal(first.token_nll, fresh.token_nll)
        tail = backend.forward_from(2, fresh_other.hidden[2], other, loss=True, logits=True)
        assert np.shares_memory(tail.logits, first.logits)
        assert np.array_equal(tail.logits, fresh_tail.logits)
        assert np.array_equal(first.logits, fresh_other.logits)  # overwritten by the next
        short = backend.forward(IDS[:2], loss=False, logits=True)
        assert short.logits.shape == fresh.logits[:2].shape
        assert np.shares_memory(short.logits, first.logits)
        assert np.array_equal(short.logits, fresh.logits[:2])
        # the shortcut's check keeps its own copy of the full pass's logits: a resumed
        # pass whose logits alone are off is still caught when both share the array
        assert resume_mismatch(backend, IDS, (1, 2, 3)) == {}
        resumed = backend.forward_from

        def off_by_one(*args, **kwargs):
            out = resumed(*args, **kwargs)
            out.logits[...] += 1.0  # in place: the kept array
            return out

        backend.forward_from = off_by_one
        why = resume_mismatch(backend, IDS, (2,))
        del backend.forward_from
        assert list(why) == [2] and why[2].startswith("the logits differs")
    assert backend.reuse_logits is False
    assert not np.shares_memory(backend.forward(IDS, loss=False, logits=True).logits,
                                first.logits)


def test_the_logit_store_gives_back_each_batch_and_removes_its_folder(tmp_path: Path) -> None:
    parts = [np.random.default_rng(i).normal(size=(2, 5, 7)).astype(np.float32)
             for i in range(3)]
    with LogitStore(tmp_path) as store:
        for part in parts:
            store.append(part)
        folder = store.folder
        assert folder.parent == tmp_path and len(store) == 3
        for i, part in enumerate(parts):
            assert np.array_equal(store[i], part) and store[i].shape == (2, 5, 7)
    assert not folder.exists()


def _rows(report) -> list[dict]:
    """The table's rows with NaN made comparable."""
    return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v)
             for k, v in dataclasses.asdict(row).items()} for row in report.mutants]


@pytest.mark.parametrize("arch", ["llama", pytest.param("gemma3_text", marks=pytest.mark.slow),
                                  pytest.param("gpt2", marks=pytest.mark.slow)])
def test_the_mutation_table_equals_a_full_recomputation(arch: str, family_dirs, tiny_model_dir
                                                        ) -> None:
    model = tiny_model_dir if arch == "llama" else family_dirs[arch]
    spec = spec_from_dict({"name": f"resume-{arch}", "model": str(model), "probe": PROBE,
                           "law": {"max_pearson_r": 1.0}})
    damages = [AddNoise(0.01, 0), ReinitBlock(1, 0), ZeroBlock(2), SwapBlocks(1, 2),
               ScaleAttention(3, 8.0), ScaleNorm(2, "pre_mlp", 8.0), RepeatBlocks(0, 2)]
    fast_log, full_log = [], []
    fast = mutate(spec, damages, log=fast_log.append)
    full = mutate(spec, damages, log=full_log.append, resume=False)
    assert _rows(fast) == _rows(full)
    assert fast.unmutated == full.unmutated
    assert len(fast.mutants) == 7 and all(r.kld_mean >= 0 for r in fast.mutants)
    # the damaged rows moved, so equality is not that of two empty tables
    assert all(r.kld_mean > 0 for r in fast.mutants)
    notes = [line for line in fast_log if line.startswith("resuming at block")]
    if arch == "gpt2":
        assert [line.split(" (max")[0] for line in notes] == [
            f"resuming at block {b} does not reproduce the full pass (layer {b + 1} differs "
            "from the full pass" for b in (1, 2, 3)]
        assert all(line.endswith("its mutants run in full") for line in notes)
    else:
        assert notes == ["resuming at blocks 1, 2, 3: checked bit for bit against the "
                         "unmutated model's full pass on one batch"]
    assert full_log == [line for line in fast_log if line not in notes]
