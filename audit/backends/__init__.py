"""Backends: per-layer hidden states of a model, behind one protocol.

``open_backend(spec)`` picks the backend the spec names.  Backends are registered
by dotted name (:mod:`audit.backends.registry`) so that importing this package
imports no heavy library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from audit.backends.base import Backend, ModelInfo
from audit.backends.registry import BACKENDS
from audit.errors import BackendError

if TYPE_CHECKING:
    from audit.cache.settings import CacheSettings

__all__ = ["BACKENDS", "Backend", "ModelInfo", "open_backend"]


def open_backend(spec: Any, model: Any = None, cache: CacheSettings | None = None) -> Backend:
    """The backend ``spec.backend`` names (``spec`` an :class:`audit.spec.Spec`; not
    imported here, which would make a cycle), for ``spec.model``; ``model`` is an
    already loaded model to use instead of the weights at ``spec.model.path``;
    ``cache`` the run's cache settings (default: read from the environment).
    Nothing is loaded until the backend is asked for hidden states."""
    target = BACKENDS.get(spec.backend)
    if target is None:
        raise BackendError(f"unknown backend {spec.backend!r}; available: "
                           f"{', '.join(sorted(BACKENDS))}", model=spec.name)
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if hasattr(cls, "from_spec"):
        return cls.from_spec(spec, model=model, cache=cache)
    return cls(spec.model, spec.name, model=model, cache=cache)
