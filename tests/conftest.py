"""Shared fixtures: tiny random-weight models saved once per test session.

The equilaw plugin is registered by its pytest11 entry point, never here;
``pytester`` drives inner pytest runs in tests/test_plugin.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

from tiny_models import TINY_LAYERS, TINY_WIDTH


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama (4 blocks, width 32, seed 0) with a byte-level tokenizer:
    config.json, model.safetensors and tokenizer files."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import save_tiny_model  # imports torch: only when a test asks

    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama",
                           layers=TINY_LAYERS, hidden=TINY_WIDTH, seed=0)


def model_or_skip(path: str) -> Path:
    """Resolve a model path of a default spec; a missing model package skips the
    test, or fails it under CI=true (CI must run every real-model test)."""
    from audit.backends.locate import resolve_model_path
    from audit.errors import ModelUnavailableError
    from audit.session import strict_environment

    try:
        return resolve_model_path(path)
    except ModelUnavailableError as exc:
        if strict_environment():
            pytest.fail(f"CI=true and a real model is missing: {exc}")
        pytest.skip(str(exc))
