"""Session fixtures of tiny models trained here (audit.synthetic.training): each
trained once per test session and shared.  Loaded by tests/conftest.py.

Every fixture keeps the windows of :data:`TRAINED_PROBE` (and of the default probe)
out of training, so a test that audits a checkpoint with ``TRAINED_PROBE`` measures
text the model never saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.spec import ProbeSpec

TRAINED_PROBE = {"sequences": 48, "length": 64, "shards": 4}
"""The probe the tests audit trained checkpoints with (a spec's ``probe`` mapping)."""
HELD_OUT = (ProbeSpec(), ProbeSpec(**TRAINED_PROBE))
"""Probes whose windows the fixtures never train on: the default probe and
:data:`TRAINED_PROBE`."""
SAVE_STEPS = 100
"""The fixtures save ``checkpoint-0`` and every ``SAVE_STEPS`` steps."""


def _train(tmp_path_factory: pytest.TempPathFactory, arch: str):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from audit.synthetic.training import train_tiny  # imports torch: only when a test asks

    folder: Path = tmp_path_factory.mktemp(f"trained-{arch}")
    return train_tiny(folder, arch=arch, held_out=HELD_OUT, save_steps=SAVE_STEPS,
                      save_initial=True, seed=0)


@pytest.fixture(scope="session")
def trained_llama(tmp_path_factory: pytest.TempPathFactory):
    """A :class:`~audit.synthetic.training.TrainingRun`: ``train_tiny``'s default
    Llama (6 blocks, width 128, byte-level) trained with its recipe (200 steps,
    about 45 s on one thread), seed 0; checkpoints at steps 0, 100 and 200."""
    return _train(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def trained_gpt2(tmp_path_factory: pytest.TempPathFactory):
    """The same for GPT-2 (6 blocks, width 64; 400 steps, about 50 s);
    checkpoints at steps 0, 100, 200, 300 and 400."""
    return _train(tmp_path_factory, "gpt2")


@pytest.fixture(scope="session")
def trained_neox(tmp_path_factory: pytest.TempPathFactory):
    """The same for GPT-NeoX (6 blocks, width 128; Llama's recipe: 200 steps of 32
    windows of 64 tokens, about 45 s); checkpoints at steps 0, 100 and 200."""
    return _train(tmp_path_factory, "gpt_neox")


@pytest.fixture(scope="session")
def trained_mamba(tmp_path_factory: pytest.TempPathFactory):
    """The same for Mamba (6 blocks, width 64, state size 8; 200 steps of 16 windows
    of 32 tokens, about 60 s on transformers' reference scan); checkpoints at steps
    0, 100 and 200."""
    return _train(tmp_path_factory, "mamba")


@pytest.fixture(scope="session")
def trained_rwkv(tmp_path_factory: pytest.TempPathFactory):
    """The same for RWKV (6 blocks, width 64; 200 steps of 16 windows of 64 tokens,
    about 55 s on transformers' CPU recurrence); checkpoints at steps 0, 100 and
    200."""
    return _train(tmp_path_factory, "rwkv")
