"""Loading specs from YAML files (or plain data) and the rules that tie keys together.

The loader uses a safe YAML loader that records line numbers, so every error names
the file, the line and the field.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import Any

from audit.errors import SpecError
from audit.internal import yaml_lines
from audit.spec.schema import SPEC_KEYS
from audit.spec.sections import Spec
from audit.spec.values import Context, build, describe


def _check_spec(spec: Spec, ctx: Context) -> None:
    """Rules that tie keys of different sections together."""
    if "onnx" in (spec.backends or (spec.backend,)) and spec.model.onnx is None:
        raise ctx.error("model.onnx", ctx.lines.get("backend"),
                        "backend: onnx needs model.onnx, the ONNX file to run (export one with "
                        "python -m audit export-onnx)")
    if spec.model.adapter is not None:
        if (spec.backends or (spec.backend,)) != ("torch",):
            raise ctx.error("model.adapter", ctx.lines.get("model.adapter"),
                            "a PEFT adapter runs on backend: torch only (peft applies it to "
                            "the PyTorch model), not on "
                            f"{', '.join(spec.backends or (spec.backend,))}")
        if spec.merge is not None:
            raise ctx.error("model.adapter", ctx.lines.get("model.adapter"),
                            "give either model.adapter or merge, not both: an adapter's "
                            "reference is its base")
    if spec.adapter.merged is not None and spec.model.adapter is None:
        raise ctx.error("adapter.merged", ctx.lines.get("adapter.merged"),
                        "adapter.merged is the merge of model.adapter, and there is no "
                        "model.adapter to compare it with")
    if "adapter.max_drift_sigma" in ctx.lines and spec.adapter.max_drift_sigma is not None:
        _needs_shards(spec, ctx, "adapter.max_drift_sigma", "paired standard errors")
    merge = spec.merge
    if merge is not None and merge.config is not None and merge.layer_map is not None:
        raise ctx.error("merge.layer_map", ctx.lines.get("merge.layer_map"),
                        "give either merge.config or merge.layer_map, not both")
    if "baseline.max_drift_sigma" in ctx.lines and spec.baseline.max_drift_sigma is not None:
        _needs_shards(spec, ctx, "baseline.max_drift_sigma", "paired standard errors")
    if spec.law.max_deviation_sigma is not None:
        _needs_shards(spec, ctx, "law.max_deviation_sigma", "standard errors")
    uses = [f"probe.{key}: {value}" for key, value, reference in (
        ("mode", spec.probe.mode, "documents"),
        ("permutation", spec.probe.permutation, "reference"))
        if value == reference]
    if uses and spec.probe.seed >= 2**32:
        raise ctx.error("probe.seed", ctx.lines.get("probe.seed"),
                        f"must be < 2**32 with {' and '.join(uses)} (numpy's RandomState seeds, "
                        f"as the reference code uses), got {spec.probe.seed}")


def _needs_shards(spec: Spec, ctx: Context, key: str, what: str) -> None:
    """``key`` (set) is judged in jackknife standard errors: it needs two shards."""
    if spec.probe.shards < 2:
        raise ctx.error(key, ctx.lines.get(key),
                        f"needs probe.shards >= 2 ({what} come from the jackknife shards), "
                        f"got probe.shards = {spec.probe.shards}")


def _from_data(data: Any, root_line: int | None, ctx: Context, source: str | None) -> Spec:
    if not isinstance(data, dict):
        raise ctx.error(None, root_line, f"expected a mapping of spec keys at the top level, "
                                         f"got {describe(data)}")
    spec = build("", data, root_line, ctx)
    if isinstance(spec.backend, tuple):
        backends = spec.backend
        spec = dataclasses.replace(spec, backend=backends[0],
                                   backends=backends if len(backends) > 1 else ())
    _check_spec(spec, ctx)
    return dataclasses.replace(spec, source=source, lines=dict(ctx.lines))


def spec_from_dict(data: Mapping[str, Any], source: str | os.PathLike | None = None) -> Spec:
    """Build a spec from plain Python data, with the checks of :func:`load_spec`.

    ``data`` looks like a parsed spec file (``rho`` may be a tuple).  Relative paths
    resolve against the folder of ``source`` when given, else the current working
    directory.  Errors name ``source`` (if any) and the field, no line.
    """
    file = None if source is None else os.fspath(source)
    base_dir = os.path.dirname(os.path.abspath(file)) if file is not None else os.getcwd()
    ctx = Context(file, base_dir, SPEC_KEYS)
    return _from_data(dict(data) if isinstance(data, Mapping) else data, None, ctx, file)


def _read_spec(path: str | os.PathLike) -> tuple[Spec, Context]:
    file = os.fspath(path)
    ctx = Context(file, os.path.dirname(os.path.abspath(file)), SPEC_KEYS)
    if os.path.isdir(file):
        raise ctx.error(None, None, "is a folder, not a spec file (load_specs reads folders)")
    data, root_line = yaml_lines.load_file(file, "spec file", ctx.error)
    if data is None:
        raise ctx.error(None, None, "empty spec file; a spec needs at least 'name' and 'model'")
    return _from_data(data, root_line, ctx, file), ctx


def load_spec(path: str | os.PathLike) -> Spec:
    """Read one spec file (YAML, safe loader) and check every key.

    Relative ``model.path`` and ``probe.corpus`` resolve against the file's folder
    (nothing else on disk is read).  ``Spec.source`` is ``path`` as given.  Raises
    :class:`SpecError` naming the file, line and field of the first problem.
    """
    return _read_spec(path)[0]


def load_specs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Spec]:
    """Load spec files and folders of them, in the order given.

    A folder contributes its ``*.yaml`` and ``*.yml`` files sorted by name (not its
    subfolders); a folder without any is an error.  A file reached twice is loaded
    once.  Two files naming the same spec are an error naming both, and so is a name
    that a spec naming several backends makes (``<name>.<backend>``,
    :func:`per_backend`): the names of the specs that run are unique.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            # Not only regular files: a FIFO named *.yaml is refused by name, not skipped.
            found = sorted(entry.name for entry in os.scandir(path)
                           if entry.name.endswith((".yaml", ".yml")) and not entry.is_dir())
            if not found:
                raise SpecError("no spec files (*.yaml, *.yml) in this folder", file=path)
            files.extend(os.path.join(path, name) for name in found)
        else:
            files.append(path)
    specs: list[Spec] = []
    loaded: set[str] = set()
    first_file: dict[str, str] = {}
    for file in files:
        if os.path.abspath(file) in loaded:
            continue
        loaded.add(os.path.abspath(file))
        spec, ctx = _read_spec(file)
        for name in dict.fromkeys([spec.name] + [one.name for one in per_backend(spec)]):
            if name in first_file:
                raise ctx.error("name", ctx.lines.get("name"),
                                f"spec name {name!r} is already used by {first_file[name]}")
            first_file[name] = file
        specs.append(spec)
    return specs


def per_backend(spec: Spec) -> list[Spec]:
    """The specs that run: ``spec`` itself, or for a spec that names several
    backends one spec per backend, named ``<name>.<backend>``, in the file's order
    (the first is the reference of the others' parity)."""
    if len(spec.backends) < 2:
        return [spec]
    return [dataclasses.replace(spec, name=f"{spec.name}.{backend}", backend=backend,
                                group=spec.name) for backend in spec.backends]


def check_against_model(spec: Spec, num_layers: int) -> None:
    """Rules that need the model's depth L, checked before anything is measured:
    every layer in ``law.expected_deviations`` lies in 1..L.  Raises
    :class:`SpecError` naming the spec file, line and field."""
    outside = [layer for layer in spec.law.expected_deviations if not 1 <= layer <= num_layers]
    if outside:
        listed = ", ".join(map(str, outside))
        raise spec.error("law.expected_deviations",
                         f"layer{'s' * (len(outside) > 1)} {listed} outside 1..{num_layers}: "
                         f"the model of {spec.name!r} has {num_layers} layers")
