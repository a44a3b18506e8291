"""The accumulation methods and the accumulator class of each (see
:mod:`audit.stats.accumulator`)."""

from __future__ import annotations

from audit.stats.accumulator import Accumulator
from audit.stats.gram import GramAccumulator
from audit.stats.qr import QRAccumulator
from audit.stats.spilled_gram import SpilledGramAccumulator

ACCUMULATORS: dict[str, type[Accumulator]] = {
    cls.method: cls for cls in (GramAccumulator, QRAccumulator)}
"""The accumulator class of each method (every shard in memory)."""
METHODS = tuple(ACCUMULATORS)
"""The accumulation methods, default first."""
SPILLED: dict[str, type[Accumulator]] = {SpilledGramAccumulator.method: SpilledGramAccumulator}
"""The accumulator class of each method that can spill closed shards to disk."""
