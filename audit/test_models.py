"""Audit items for the specs in ``model_specs/`` (or ``--audit-spec``).

The equilaw pytest plugin replaces this module's collection with one item per
law-level check and per layer of every spec: ``pytest audit/`` or
``pytest --pyargs audit``.  It holds no test functions of its own.
"""
