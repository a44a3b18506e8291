"""Feature-level synthetic models with a planted law of equi-learning.

No model, no torch: per-layer features and integer next-token targets drawn with
numpy so that the prediction residual of every layer is known in advance.  They let
a test (or a sceptical user) check that the statistics engine, the law fit and the
checks recover what was planted, and flag a layer that was planted broken.

Construction, for hidden states l = 0..L of ``n`` examples and width ``d``:

- targets: integer ids t = clip(round(vocab/2 + u · vocab/6), 0, vocab − 1) with
  u ~ N(0, 1) (a discretised normal over ``vocab`` ids); z = the targets
  standardised in-sample (mean 0, ``z·z = n``).  PR is invariant to affine maps of
  the target, so PR(t) = PR(z).
- layer l: one signal column f_l = √(1 − q_l) · z + √q_l · e_l and d − 1 noise
  columns, all independent standard normal (e_l too, fresh for every layer),
  mixed by a random d × d matrix Q_l · diag(s_l) (Q_l orthogonal, singular values
  s_l log-uniform in [1/2, 2], so its condition number is at most 4) plus a
  random offset, so that the signal is no single column.
- q_l, the population PR (what the best linear predictor leaves, 1 − corr(z, f_l)²):
  q_l = PR_1 · ρ^(l−1) for l = 1..L, times 10^(jitter · ε_l) with ε_l ~ N(0, 1)
  when ``jitter`` > 0; q_0 = ``pr_embedding`` (default q_1).

In-sample least squares with an intercept and d features fits part of the noise,
so PR measured on the n examples is biased low: its expectation is

    E[PR_l] ≈ q_l · (n − d − 1) / (n − 1)

(exact for a fixed target and features independent of it, q_l = 1; for q_l < 1
the relative error is at most about 2 (1 − q_l) / n).  Its sampling standard error, from
the fluctuations of z·e_l / n and e_l·e_l / n and of the d − 1 noise columns, is
about

    se(log10 PR_l) ≈ sqrt(2 (1 − q_l²) / n + 2 d / n²) / ln 10,

independent across layers (each layer draws its own noise).  For q_l = 0.8 and
n = 20,000: 0.0026.  :attr:`SyntheticFeatures.expected_pr` and
:attr:`SyntheticFeatures.log10_pr_se` give both per layer; tests derive their
tolerances from them.

A :class:`BrokenLayer` breaks one layer k, 1 ≤ k ≤ L, and only that layer:

``learns_nothing``
    q_k = q_{k−1}: the step into layer k is flat.
``loses_information``
    q_k = q_{k−1} · 10^rise: PR rises by ``rise`` decades (> 0) into layer k.
``scrambled``
    the layer is drawn healthy, then its rows are permuted across examples, as if
    its hidden states and the targets were misaligned: q_k = 1 and
    E[PR_k] = (n − d − 1)/(n − 1).  Every other layer is drawn exactly as
    without the damage (same seed, same numbers).

Every layer after k keeps its healthy q_l (the damage does not persist), so a
flat step at k is followed by a double one.

Usage::

    from audit.spec import LawSpec
    from audit.synthetic.features import BrokenLayer, PlantedLaw, planted_features

    law = PlantedLaw(layers=8, pr_first=0.8, rho=0.9, broken=BrokenLayer("scrambled", 4))
    synth = planted_features(law, n=20_000, d=8, seed=0)
    stats = synth.stats(shards=10)            # LayerStats fed in batches
    report = synth.judge(LawSpec(min_step_fraction=0.5))   # pipeline.judge's verdict

Everything is seeded (``numpy.random.default_rng``) and deterministic.  Invalid
parameters raise :class:`~audit.errors.StatsError` naming the parameter and the
fix.  Only numpy is imported; :meth:`SyntheticFeatures.judge` imports the
pipeline when called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from audit.errors import StatsError
from audit.stats.layer_stats import LayerStats

BREAKS = ("learns_nothing", "loses_information", "scrambled")
"""The kinds of :class:`BrokenLayer`."""

_MIX_SPREAD = 2.0
"""Singular values of each layer's mixing matrix lie in [1/_MIX_SPREAD, _MIX_SPREAD]."""


@dataclass(frozen=True)
class BrokenLayer:
    """One broken layer of a :class:`PlantedLaw` (see the module docstring)."""

    kind: str
    """``learns_nothing``, ``loses_information`` or ``scrambled``."""
    layer: int
    """The broken layer k, 1 ≤ k ≤ L (the embedding output, 0, cannot be broken)."""
    rise: float = 0.05
    """``loses_information`` only: log10 PR_k − log10 PR_{k−1}, in decades, > 0."""


@dataclass(frozen=True)
class PlantedLaw:
    """The population PR curve to plant: PR_l = pr_first · rho^(l−1), l = 1..L."""

    layers: int
    """L, the number of blocks: hidden states 0..L, L ≥ 2."""
    pr_first: float
    """PR_1, the population PR of the first block's output, in (0, 1)."""
    rho: float
    """The decay ratio ρ > 0 per layer (< 1: layers learn)."""
    pr_embedding: float | None = None
    """PR_0 of the embedding output, in (0, 1); None: equal to PR_1."""
    jitter: float = 0.0
    """Standard deviation, in decades, of seeded random departures of log10 PR_l
    from the line (layers 1..L): a healthy model's curvature.  0: a perfect line."""
    jitter_seed: int = 0
    """Seed of the jitter, so that the curve does not depend on n, d or the
    sampling seed."""
    broken: BrokenLayer | None = None
    """A broken layer, or None."""

    def population_pr(self) -> np.ndarray:
        """q_l, the population PR per hidden state, float64 [L+1]: what the best
        linear predictor leaves (before the in-sample bias).  Raises StatsError
        for invalid parameters or a curve leaving (0, 1)."""
        _check_law(self)
        L = int(self.layers)
        log_q = math.log10(self.pr_first) + np.arange(L) * math.log10(self.rho)
        if self.jitter > 0:
            log_q = log_q + self.jitter * np.random.default_rng(self.jitter_seed).standard_normal(L)
        q = np.empty(L + 1)
        q[1:] = 10.0 ** log_q
        q[0] = q[1] if self.pr_embedding is None else float(self.pr_embedding)
        kind = None if self.broken is None else self.broken.kind
        if kind is not None:
            k = self.broken.layer
            q[k] = {"learns_nothing": q[k - 1], "scrambled": 1.0,
                    "loses_information": q[k - 1] * 10.0 ** self.broken.rise}[kind]
        scrambled = self.broken.layer if kind == "scrambled" else None
        for layer, value in enumerate(q):
            if layer != scrambled and not 0.0 < value < 1.0:
                raise StatsError(
                    f"planted PR of layer {layer} is {value:.4g}, outside (0, 1): lower "
                    f"pr_first or jitter, raise rho towards 1 or use fewer layers"
                    + (", or a smaller broken.rise" if kind == "loses_information" else ""))
        return q


@dataclass(frozen=True, eq=False)
class SyntheticFeatures:
    """Features and targets drawn from a :class:`PlantedLaw` (see
    :func:`planted_features`), with what they should measure."""

    law: PlantedLaw
    n: int
    """Examples (tokens)."""
    d: int
    """Feature width."""
    seed: int
    """The seed the arrays were drawn with."""
    features: np.ndarray
    """float32 or float64 [L+1, n, d]; layer 0 = embedding output."""
    targets: np.ndarray
    """int64 [n], next-token ids in [0, vocab)."""
    population_pr: np.ndarray
    """q_l, float64 [L+1] (:meth:`PlantedLaw.population_pr`)."""
    expected_pr: np.ndarray = field(init=False)
    """Expected in-sample PR of the ``token_id`` measure (the one planted),
    q_l · (n − d − 1)/(n − 1), float64 [L+1]."""
    log10_pr_se: np.ndarray = field(init=False)
    """Approximate sampling standard error of log10 of the in-sample PR,
    sqrt(2 (1 − q_l²)/n + 2 d/n²) / ln 10, float64 [L+1] (module docstring)."""

    def __post_init__(self) -> None:
        q, n, d = self.population_pr, self.n, self.d
        expected = q * (n - d - 1) / (n - 1)
        se = np.sqrt(2.0 * (1.0 - q * q) / n + 2.0 * d / n**2) / math.log(10.0)
        for name, value in (("expected_pr", expected), ("log10_pr_se", se)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @property
    def layers(self) -> int:
        """L: hidden states are 0..L."""
        return self.features.shape[0] - 1

    def shard_of(self, shards: int) -> np.ndarray:
        """The shard of each example, int64 [n]: contiguous blocks, example i in
        shard ⌊i · shards / n⌋ (as the pipeline assigns windows)."""
        return np.arange(self.n, dtype=np.int64) * int(shards) // self.n

    def stats(self, shards: int = 10, measures=("token_id",), batch_size: int = 4096,
              method: str = "gram", shuffle_seed: int = 0) -> LayerStats:
        """A :class:`~audit.stats.layer_stats.LayerStats` fed with every example, in order, in
        batches of at most ``batch_size`` examples that never straddle a shard
        (:meth:`shard_of`)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise StatsError(f"batch_size must be a positive integer, got {batch_size!r}")
        stats = LayerStats(measures, shards=shards, shuffle_seed=shuffle_seed, method=method)
        bounds = np.searchsorted(self.shard_of(stats.shards), np.arange(stats.shards + 1))
        for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            for start in range(int(lo), int(hi), int(batch_size)):
                stop = min(start + int(batch_size), int(hi))
                stats.update(self.features[:, start:stop], self.targets[start:stop], shard=shard)
        return stats

    def judge(self, law_spec, shards: int = 10, method: str = "gram", name: str = "synthetic"):
        """The report :func:`audit.pipeline.judge` gives these features under the
        thresholds ``law_spec`` (an :class:`~audit.spec.LawSpec`): the law fit, the
        checks and the verdict, by the audit's own code path (measure
        ``token_id``, no probe loss)."""
        from audit.pipeline import Measurement, judge
        from audit.spec import ModelSpec, ProbeSpec, Spec

        stats = self.stats(shards=shards, method=method)
        shard_ids = stats.filled_shards
        spec = Spec(name=name, model=ModelSpec(path=f"synthetic://{name}"),
                    probe=ProbeSpec(shards=shards, statistics=method, loss=False,
                                    seed=self.seed),
                    law=law_spec, normalization="none")
        measurement = Measurement(
            spec=spec, stats=stats, pr=stats.residuals("token_id"),
            leave_one_out=stats.leave_one_out("token_id") if shard_ids else None,
            shard_ids=shard_ids, ranks=stats.rank(), conditions=stats.condition(),
            loss=None, loss_note="synthetic features: no language-model head",
            model={"path": spec.model.path, "architecture": "synthetic",
                   "layers": self.layers, "width": self.d},
            corpus={"name": "synthetic", "examples": self.n}, probe={},
            versions={"numpy": np.__version__}, timing={}, backend="synthetic")
        return judge(measurement)


def planted_features(law: PlantedLaw, *, n: int, d: int, seed: int = 0, vocab: int = 32768,
                     dtype="float64") -> SyntheticFeatures:
    """Draw ``n`` examples of width ``d`` whose PR per layer follows ``law``.

    ``n`` > d + 1 examples; ``d`` ≥ 1 features per layer; ``seed`` seeds
    ``numpy.random.default_rng`` (same arguments, same arrays); ``vocab`` ≥ 2
    possible target ids; ``dtype`` float32 or float64 features.  See the module
    docstring for the construction, the expected in-sample PR and its standard
    error.  Memory: (L+1) · n · d values of ``dtype``.  Raises StatsError for
    invalid parameters, and when the targets drawn take a single value (raise
    ``vocab`` or ``n``).
    """
    q = law.population_pr()
    drawn = q                                     # the q_l the features are drawn with
    if law.broken is not None and law.broken.kind == "scrambled":
        drawn = q.copy()
        drawn[law.broken.layer] = replace(law, broken=None).population_pr()[law.broken.layer]
    for key, value, low in (("n", n, None), ("d", d, 1), ("vocab", vocab, 2), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise StatsError(f"{key} must be an integer, got {value!r}")
        if low is not None and value < low:
            raise StatsError(f"{key} must be >= {low}, got {value}")
    if n < d + 2:
        raise StatsError(f"n must exceed d + 1 = {d + 1} (in-sample least squares with an "
                         f"intercept and {d} features needs more examples), got n = {n}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise StatsError(f"dtype must be float32 or float64, got {dtype}")
    n, d = int(n), int(d)
    rng = np.random.default_rng(seed)

    ids = np.rint(vocab / 2 + rng.standard_normal(n) * (vocab / 6))
    targets = np.clip(ids, 0, vocab - 1).astype(np.int64)
    z = targets - targets.mean()
    scale = np.sqrt(z @ z / n)
    if scale == 0.0:
        raise StatsError(f"the {n} targets drawn all equal {targets[0]}: PR is undefined; "
                         f"raise vocab (now {vocab}) or n")
    z /= scale

    features = np.empty((law.layers + 1, n, d), dtype=dtype)
    for layer, q_l in enumerate(drawn):
        block = rng.standard_normal((n, d))                                 # [n, d]
        block[:, 0] = math.sqrt(1.0 - q_l) * z + math.sqrt(q_l) * block[:, 0]
        orth, r = np.linalg.qr(rng.standard_normal((d, d)))
        orth *= np.sign(np.diag(r))                  # Haar-distributed orthogonal
        spread = np.exp(rng.uniform(-1.0, 1.0, d) * math.log(_MIX_SPREAD))
        offset = rng.standard_normal(d)
        # einsum, not BLAS: a threaded product of an [n, d] by a d × d matrix is
        # slower than a plain loop when the cores are busy
        features[layer] = np.einsum("nj,jk->nk", block, orth * spread) + offset
    if law.broken is not None and law.broken.kind == "scrambled":
        k = law.broken.layer
        features[k] = features[k][rng.permutation(n)]
    return SyntheticFeatures(law=law, n=n, d=d, seed=int(seed), features=features,
                             targets=targets, population_pr=q)


def _check_law(law: PlantedLaw) -> None:
    """StatsError naming the first invalid field of ``law``."""
    L = law.layers
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 2:
        raise StatsError(f"layers must be an integer >= 2 (the law needs two judged "
                         f"layers), got {L!r}")
    for key in ("pr_first", "pr_embedding"):
        value = getattr(law, key)
        if value is None and key == "pr_embedding":
            continue
        if not _real(value) or not 0.0 < value < 1.0:
            raise StatsError(f"{key} must be a number in (0, 1), got {value!r}")
    if not _real(law.rho) or not law.rho > 0.0:
        raise StatsError(f"rho must be a positive number, got {law.rho!r}")
    if not _real(law.jitter) or law.jitter < 0.0:
        raise StatsError(f"jitter must be a number >= 0 (decades), got {law.jitter!r}")
    if isinstance(law.jitter_seed, bool) or not isinstance(law.jitter_seed, (int, np.integer)) \
            or law.jitter_seed < 0:
        raise StatsError(f"jitter_seed must be an integer >= 0, got {law.jitter_seed!r}")
    broken = law.broken
    if broken is None:
        return
    if not isinstance(broken, BrokenLayer):
        raise StatsError(f"broken must be a BrokenLayer or None, got {broken!r}")
    if broken.kind not in BREAKS:
        raise StatsError(f"unknown kind of broken layer {broken.kind!r}; valid kinds: "
                         f"{', '.join(BREAKS)}")
    if isinstance(broken.layer, bool) or not isinstance(broken.layer, (int, np.integer)) \
            or not 1 <= broken.layer <= L:
        raise StatsError(f"broken.layer must be an integer in 1..{L} (the blocks' outputs), "
                         f"got {broken.layer!r}")
    if broken.kind == "loses_information" and (not _real(broken.rise) or not broken.rise > 0.0):
        raise StatsError(f"broken.rise must be a number > 0 (decades of log10 PR), "
                         f"got {broken.rise!r}")


def _real(value) -> bool:
    """A finite real number (not a bool)."""
    return (not isinstance(value, bool)
            and isinstance(value, (int, float, np.integer, np.floating))
            and math.isfinite(value))
