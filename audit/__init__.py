"""equilaw: audit language-model checkpoints against the law of equi-learning.

The core (specs, corpora, statistics, the law fit, checks, report data) is plain
Python and numpy.  Heavy libraries load only when a backend runs a model.
"""

from audit.versions import __version__

__all__ = ["run", "__version__"]


def run(spec, model=None, progress=None, backend=None, cache=True):
    """Audit one spec without pytest and return its report: see
    :func:`audit.pipeline.run` (imported on first call, keeping ``import audit``
    light)."""
    from audit.pipeline import run as _run

    return _run(spec, model=model, progress=progress, backend=backend, cache=cache)
