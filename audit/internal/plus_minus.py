"""`` ± se`` after a number in messages, specs and tables: the one rule."""

from __future__ import annotations

import math


def plus_minus(se: float, spec: str) -> str:
    """``" ± {se:spec}"``, or nothing when the standard error is unknown (NaN: one
    shard, or an undefined value).  An infinite standard error is shown (``± inf``):
    a value without one would read as exact."""
    return "" if math.isnan(se) else f" ± {se:{spec}}"
