"""Session fixtures of tiny models trained here (audit.synthetic.training): each
trained once per test session and shared.  Loaded by tests/conftest.py."""

from __future__ import annotations
