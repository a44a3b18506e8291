"""The one registry of backends: name -> where its class is, as text.

A table of names only, so that the spec's validator can list the backends without
importing any of them (or this package's protocol)."""

from __future__ import annotations

BACKENDS: dict[str, str] = {
    "torch": "audit.backends.torch_backend:TorchBackend",
    "onnx": "audit.backends.onnx_backend:OnnxBackend",
}
"""Backend name -> ``module:Class``; the class takes ``(model_spec, name, model=None)``,
or builds itself with ``from_spec(spec, model=None)`` when it reads other sections."""
