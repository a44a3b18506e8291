"""PEFT adapters (LoRA and the other adapters ``peft`` injects into a model's
modules) applied to a loaded transformers model, for ``model.adapter``.

The folder is what ``PeftModel.save_pretrained`` writes: ``adapter_config.json``
and ``adapter_model.safetensors``.  A pickled ``adapter_model.bin`` is refused, as
pickled weights are everywhere in equilaw; remote code never runs (peft is given
the folder, and the base model was loaded without ``trust_remote_code`` unless the
spec says so).

Three traps, and what is done about them:

- ``PeftModel`` wraps the model: block paths become
  ``base_model.model.model.layers.N`` and a targeted ``Linear`` becomes a
  ``lora.Linear``.  The adapter is injected into the base model's own modules, so
  the transformers model inside (:func:`inner_model`) runs the adapted
  computation, and its block list (``model.layers``) is the same list of modules
  as ``base_model.model.model.layers``: layers are captured through those.
- peft upcasts the adapter's weights to float32 by default (``autocast_adapter_dtype``)
  and computes the unmerged update in float32, while ``merge_and_unload()`` folds
  ΔW into the base's dtype: in bfloat16 merged and unmerged differ.  That default
  is kept (it is how users run adapters); ``NAME::adapter-merged-parity`` measures
  the difference.
- loading an adapter mutates the base model in place, so the base equilaw compares
  with is a separate load of ``model.path``, never the model the adapter was
  loaded into (tests check that it equals a fresh load bit for bit).

Prompt-learning adapters (prefix or prompt tuning) change the inputs, not the
modules, and run only through ``PeftModel.forward``: they are refused.

peft and torch are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from audit.backends.hf_files import PICKLE_SUFFIXES
from audit.errors import BackendError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
WRAPPED_PREFIX = "base_model.model."
"""What ``PeftModel`` puts before the paths of the model it wraps."""


def adapter_files(folder: str | Path, *, name: str | None = None) -> tuple[Path, Path]:
    """``(adapter_config.json, adapter_model.safetensors)`` of an adapter folder;
    :class:`BackendError` naming the folder when one is missing or the weights are
    pickled."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BackendError(f"model.adapter {str(folder)!r} is not a folder (a PEFT adapter "
                           f"folder holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})", model=name)
    config, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config.is_file():
        raise BackendError(f"adapter folder {str(folder)!r} has no {ADAPTER_CONFIG}", model=name)
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.name.startswith("adapter_model")
                         and p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise BackendError(
                f"adapter folder {str(folder)!r} holds only pickle weights "
                f"({', '.join(pickles)}); equilaw never loads pickle files because unpickling "
                "can run arbitrary code: load it once in a trusted environment and re-save it "
                "with save_pretrained(folder), which writes safetensors", model=name)
        raise BackendError(f"adapter folder {str(folder)!r} has no {ADAPTER_WEIGHTS}", model=name)
    return config, weights


def adapter_config(folder: str | Path, *, name: str | None = None) -> dict[str, Any]:
    """The adapter's ``adapter_config.json`` as a dict (checked: a mapping naming a
    ``peft_type``)."""
    path, _ = adapter_files(folder, name=name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackendError(f"{str(path)!r} is not readable JSON: {exc}", model=name) from exc
    if not isinstance(data, dict) or not isinstance(data.get("peft_type"), str):
        raise BackendError(f"{str(path)!r} names no peft_type: not a PEFT adapter config",
                           model=name)
    return data


def apply_adapter(model: Any, folder: str | Path, *, name: str | None = None) -> Any:
    """``model`` (a transformers model, modified in place) with the adapter at
    ``folder`` injected, unmerged: the ``PeftModel`` wrapping it."""
    adapter_files(folder, name=name)
    try:
        import peft
    except ImportError as exc:
        raise BackendError("model.adapter needs the peft package: pip install peft==0.21.2",
                           model=name) from exc
    try:
        with quiet_peft():
            wrapped = peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False,
                                                     local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BackendError(f"peft cannot apply the adapter {str(folder)!r}: "
                           f"{type(exc).__name__}: {exc}", model=name) from exc
    config = wrapped.peft_config[wrapped.active_adapter]
    if config.is_prompt_learning:
        kind = getattr(config.peft_type, "value", config.peft_type)
        raise BackendError(f"adapter {str(folder)!r} is a prompt-learning adapter "
                           f"({kind}): it "
                           "changes the inputs, not the modules, and equilaw captures layers "
                           "from the modules; only injected adapters (LoRA, IA3, ...) are "
                           "audited", model=name)
    return wrapped.eval()


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the deprecation transformers 5 raises when peft asks whether a model
    checkpoints its activations (``is_gradient_checkpointing``): noise, not advice
    to the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        yield


def inner_model(wrapped: Any) -> Any:
    """The transformers model a ``PeftModel`` wraps (its modules carry the adapter)."""
    return wrapped.get_base_model()


def merged_model(wrapped: Any) -> Any:
    """The adapter of a ``PeftModel`` folded into the base weights
    (``merge_and_unload()``): a plain transformers model in the base's dtype."""
    return wrapped.merge_and_unload().eval()


def strip_wrapped_prefix(path: str) -> str:
    """A module path given from the ``PeftModel`` (``base_model.model.model.layers``)
    as a path in the model it wraps (``model.layers``); other paths unchanged."""
    return path[len(WRAPPED_PREFIX):] if path.startswith(WRAPPED_PREFIX) else path
