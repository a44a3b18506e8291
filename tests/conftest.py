"""Shared fixtures: tiny random-weight models saved once per test session.

The equilaw plugin is registered by its pytest11 entry point, never here;
``pytester`` drives inner pytest runs in tests/test_plugin.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from audit.synthetic.tiny import TINY_LAYERS, TINY_WIDTH

# Hypothesis profiles.  Tests that set max_examples themselves keep it; the others
# follow the profile: "ci" when CI is 1/true/yes, else HYPOTHESIS_PROFILE, else "dev".
# `pytest --hypothesis-profile=thorough` picks one on the command line (it wins).
# "ci" extends Hypothesis's own (derandomized, no example database); the others
# extend its defaults, whatever Hypothesis guessed about the environment.
settings.register_profile("ci", settings.get_profile("ci"), max_examples=10, deadline=None,
                          print_blob=True)
settings.register_profile("dev", settings.get_profile("default"), max_examples=20,
                          deadline=None)
settings.register_profile("thorough", settings.get_profile("default"), max_examples=300,
                          deadline=None)
settings.load_profile(
    "ci" if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

pytest_plugins = ["pytester", "trained_fixtures"]

_CACHE_ENV = ("EQUILAW_CACHE_DIR", "EQUILAW_NO_CACHE", "EQUILAW_CACHE_KEY",
              "EQUILAW_CACHE_KEY_FILE", "EQUILAW_CACHE_MAX_GB", "CI")
_saved_cache_env: dict[str, str | None] = {}
STRICT = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
"""Whether the suite runs under CI (real-model tests then fail instead of skipping)."""


def pytest_configure(config: pytest.Config) -> None:
    """The statistics cache (audit.cache) is off in the test suite, so that each test
    measures what it asserts, and its folder is a fresh temporary one, never the
    user's, with no cache key; subprocesses and inner pytest runs inherit both.
    tests/test_cache.py turns it on, in folders of its own.  ``CI`` is taken out of
    the environment (:data:`STRICT` keeps it for this suite): the inner pytest runs
    audit tiny specs that have no baselines, which CI=true would fail; the tests of
    CI's rules set it themselves."""
    import tempfile

    _saved_cache_env.update((name, os.environ.get(name)) for name in _CACHE_ENV)
    os.environ["EQUILAW_CACHE_DIR"] = tempfile.mkdtemp(prefix="equilaw-cache-")
    os.environ["EQUILAW_NO_CACHE"] = "1"
    for name in ("EQUILAW_CACHE_KEY", "EQUILAW_CACHE_KEY_FILE", "EQUILAW_CACHE_MAX_GB", "CI"):
        os.environ.pop(name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    folder = os.environ.get("EQUILAW_CACHE_DIR")
    if folder and _saved_cache_env:
        shutil.rmtree(folder, ignore_errors=True)
    for name, value in _saved_cache_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value



@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama (4 blocks, width 32, seed 0) with a byte-level tokenizer:
    config.json, model.safetensors and tokenizer files."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from audit.synthetic.tiny import save_tiny_model  # imports torch: only when a test asks

    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama",
                           layers=TINY_LAYERS, hidden=TINY_WIDTH, seed=0)


def model_or_skip(path: str) -> Path:
    """Resolve a model path of a default spec; a missing model package skips the
    test, or fails it under CI=true (CI must run every real-model test)."""
    from audit.backends.locate import resolve_model_path
    from audit.errors import ModelUnavailableError

    try:
        return resolve_model_path(path, allow_package_code=True)  # the shipped specs' models
    except ModelUnavailableError as exc:
        if STRICT:
            pytest.fail(f"CI=true and a real model is missing: {exc}")
        pytest.skip(str(exc))


SPECS_DIR = Path(__file__).resolve().parents[1] / "model_specs"


@pytest.fixture(scope="session")
def smollm2_family(tmp_path_factory: pytest.TempPathFactory):
    """The SmolLM2 checkpoint family (tests/smollm2_family.py), built lazily once per
    test session and shared by every real-weight test; about 4.5 GB when complete,
    removed at the end of the session."""
    import shutil

    from smollm2_family import SmolLM2Family

    from audit.spec import load_spec

    gguf = model_or_skip(load_spec(SPECS_DIR / "smollm2-135m.yaml").model.path)
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("smollm2-family")
    yield SmolLM2Family(root, gguf)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def smollm2_report(smollm2_family):
    """``smollm2_report(variant)``: the report of a family member on the default
    SmolLM2 spec's probe (name = the variant), measured once per session."""
    import dataclasses

    from audit.pipeline import run
    from audit.spec import load_spec

    base = load_spec(SPECS_DIR / "smollm2-135m.yaml")
    cache = {}

    def report(variant: str):
        if variant not in cache:
            folder = smollm2_family.folder(variant)
            spec = dataclasses.replace(base, name=variant,
                                       model=dataclasses.replace(base.model, path=str(folder)))
            cache[variant] = run(spec)
        return cache[variant]

    return report


@pytest.fixture(scope="session")
def default_spec_report():
    """``default_spec_report(name)``: the report of the shipped default spec
    ``model_specs/<name>.yaml`` as it stands (its GGUF file), measured once per
    session and shared by the tests that audit it (skipped or failed, under CI,
    when the model's package is missing)."""
    from audit.pipeline import run
    from audit.spec import load_spec

    cache = {}

    def report(name: str):
        if name not in cache:
            spec = load_spec(SPECS_DIR / f"{name}.yaml")
            model_or_skip(spec.model.path)
            cache[name] = run(spec)
        return cache[name]

    return report


@pytest.fixture(scope="session")
def smollm2_onnx_report(smollm2_family, smollm2_onnx):
    """The ONNX export of the family's healthy SmolLM2 (``smollm2_onnx``) audited by
    onnxruntime on the default spec's probe (name ``onnx``), once per session."""
    import dataclasses

    from audit.pipeline import run
    from audit.spec import load_spec

    base = load_spec(SPECS_DIR / "smollm2-135m.yaml")
    model = dataclasses.replace(base.model, path=str(smollm2_family.folder("healthy")),
                                onnx=str(smollm2_onnx.path))
    return run(dataclasses.replace(base, name="onnx", backend="onnx", model=model))


@pytest.fixture(scope="session")
def smollm2_onnx(smollm2_family, tmp_path_factory: pytest.TempPathFactory):
    """The family's healthy SmolLM2 exported to ONNX (every hidden state and the
    logits; about 90 s), once per session: the
    :class:`~audit.backends.onnx_export.ExportResult`."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import dataclasses

    from audit.backends.onnx_export import export_onnx
    from audit.spec import load_spec

    model = dataclasses.replace(load_spec(SPECS_DIR / "smollm2-135m.yaml").model,
                                path=str(smollm2_family.folder("healthy")))
    return export_onnx(model, "smollm2", tmp_path_factory.mktemp("smollm2-onnx") / "smollm2.onnx")


@pytest.fixture(scope="session")
def tiny_onnx_export(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The session's tiny Llama exported to ONNX (hidden states and logits): the
    :class:`~audit.backends.onnx_export.ExportResult`, alone in its folder."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from audit.backends.onnx_export import export_onnx
    from audit.spec import ModelSpec

    out = tmp_path_factory.mktemp("tiny-onnx") / "tiny.onnx"
    return export_onnx(ModelSpec(path=str(tiny_model_dir)), "tiny", out)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_onnx_export) -> Path:
    """The session's tiny Llama exported to ONNX: the file."""
    return tiny_onnx_export.path
