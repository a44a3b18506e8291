"""The one jackknife of equilaw.

Every standard error in a report comes from leave-one-shard-out estimates: the
probe's windows are split into g contiguous shards, each quantity θ is recomputed
with shard i left out (θ_1..θ_g), and

    se(θ) = sqrt((g − 1)/g · Σ_i (θ_i − θ̄)²),   θ̄ the mean of the θ_i.

The statistics engine, the law fit, the probe loss and the paired drift between two
checkpoints all call :func:`jackknife_se`.
"""

from __future__ import annotations

import numpy as np


def jackknife_se(estimates) -> np.ndarray | float:
    """Jackknife standard error over axis 0 of g leave-one-out estimates (shape
    [g, ...]); NaN wherever an estimate is NaN, and everywhere when g < 2.  A 1-d
    input gives a float."""
    est = np.asarray(estimates, dtype=np.float64)
    g = est.shape[0]
    if g < 2:
        out = np.full(est.shape[1:], np.nan)
    else:
        centred = est - est.mean(axis=0)
        out = np.sqrt((g - 1) / g * np.sum(centred * centred, axis=0))
    return float(out) if out.ndim == 0 else out
