"""Root conftest: keeps every run offline.  The equilaw plugin itself is registered
by its pytest11 entry point (pyproject.toml), never here."""

import os

# No model or dataset hub is reachable: transformers must never try one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
