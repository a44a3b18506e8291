"""equilaw: audit language-model checkpoints against the law of equi-learning.

The core (specs, corpora, statistics, the law fit, checks, report data) is plain
Python and numpy.  Heavy libraries load only when a backend runs a model.
"""

__version__ = "0.1.0"
