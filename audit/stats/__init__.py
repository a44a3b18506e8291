"""The statistics engine: streaming, mergeable per-layer sums and the measures
computed from them.

:mod:`audit.stats.layer_stats` holds the facade, :class:`LayerStats`; the
accumulators keep the sums (one module per method and storage), the measures are
pure functions of their moments (:mod:`audit.stats.measures`, dense solves in
:mod:`audit.stats.linalg`), and every standard error comes from the one jackknife
(:mod:`audit.stats.jackknife`).  This file imports nothing, so that importing one
module of the engine never pulls in the others.
"""
