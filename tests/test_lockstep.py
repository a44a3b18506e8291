"""Several models over one probe in lockstep (audit.lockstep): on the session's tiny
Llama and a noisy copy, the single pass gives bit for bit what the separate passes
gave (each model's statistics and loss, the divergence, the token record), and a
counting backend shows each model running over the probe once; through the audit
session, a reference model, a token record and a merge's parents add no pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_divergence_session import _spec as div_spec
from test_merge_session import family  # noqa: F401 (a fixture)

from audit.backends import open_backend
from audit.compare.outputs import (
    PairComparison,
    RecordBuilder,
    RecordComparison,
    compare_outputs,
    compare_with_record,
    record_reference,
)
from audit.corpus import load_corpus
from audit.errors import BackendError
from audit.lockstep import Consumer, Member, run_together
from audit.pipeline import collect, judge
from audit.probe import probe_input
from audit.session import AuditSession
from audit.spec import ModelSpec, ProbeSpec, Spec, load_spec
from audit.synthetic.damage import AddNoise

PROBE = ProbeSpec(sequences=12, length=10, shards=4, batch_size=5)   # 3 batches


class Counting:
    """A backend that counts its passes over batches: ``forward`` (the statistics
    pass) and ``next_token_logits`` (a logits-only pass)."""

    def __init__(self, inner) -> None:
        self.inner, self.forwards, self.logit_passes = inner, 0, 0

    def forward(self, ids, **kwargs):
        self.forwards += 1
        return self.inner.forward(ids, **kwargs)

    def next_token_logits(self, ids):
        self.logit_passes += 1
        return self.inner.next_token_logits(ids)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path):
    """(spec, healthy backend, noisy backend)."""
    spec = Spec(name="tiny", model=ModelSpec(path=str(tiny_model_dir)), probe=PROBE)
    healthy = open_backend(spec)
    healthy.load()
    noisy = healthy.with_model(AddNoise(0.3, seed=1).apply(healthy.causal_lm))
    return spec, healthy, noisy


def _same_measurement(a, b) -> None:
    for name in ("pr", "leave_one_out", "ranks", "conditions"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.loss == b.loss and a.shard_ids == b.shard_ids
    assert (a.model, a.corpus, a.probe) == (b.model, b.corpus, b.probe)
    one, two = judge(a).to_dict(), judge(b).to_dict()
    one.pop("timing"), two.pop("timing")
    assert one == two


def test_one_lockstep_pass_equals_the_separate_passes_bit_for_bit(pair) -> None:
    spec, healthy, noisy = pair
    model, reference = Counting(noisy), Counting(healthy)
    members = [Member("model", spec, model, logits=True),
               Member("reference", spec, reference, logits=True)]
    divergence = Consumer(("reference", "model"), PairComparison())
    builder = Consumer(("model",), RecordBuilder(top_k=8))
    windows = run_together(members, [divergence, builder])
    assert (model.forwards, model.logit_passes) == (3, 0)
    assert (reference.forwards, reference.logit_passes) == (3, 0)
    assert divergence.error is None and builder.error is None
    # the old way: each model's statistics alone, then a lockstep pass for logits
    _same_measurement(members[0].measurement, collect(spec, backend=noisy))
    _same_measurement(members[1].measurement, collect(spec, backend=healthy))
    old = compare_outputs(noisy, healthy, windows, batch_size=5)
    new = divergence.target.result()
    assert new == old and new.kld_mean > 1e-3
    assert all(np.array_equal(a, b) for a, b in zip(divergence.target.acc.per_token(),
                                                    _per_token(noisy, healthy, windows)))
    record, before = builder.target.record(noisy.tokenizer_info()["vocab_sha256"]), \
        record_reference(noisy, windows, top_k=8, batch_size=5)
    assert record.meta == before.meta and len(record) == len(before) == 12 * 9
    for name in ("top_ids", "top_logp", "tail_logp", "target", "target_logp", "top", "shard"):
        assert np.array_equal(getattr(record, name), getattr(before, name)), name


def _per_token(model, reference, windows):
    from audit.compare.outputs import accumulate_outputs

    return accumulate_outputs(model, reference, windows, batch_size=5).per_token()


def test_a_stored_record_is_compared_in_the_statistics_pass(pair) -> None:
    spec, healthy, noisy = pair
    windows = probe_input(spec, load_corpus(spec.probe.corpus), healthy)
    record = record_reference(healthy, windows, top_k=8, batch_size=5)
    model = Counting(noisy)
    stored = Consumer(("model",), RecordComparison(record, noisy.tokenizer_info()["vocab_sha256"]))
    run_together([Member("model", spec, model, logits=True)], [stored])
    assert (model.forwards, model.logit_passes) == (3, 0)
    assert stored.target.result() == compare_with_record(noisy, record, windows, batch_size=5)


def test_served_from_the_cache_a_model_runs_for_its_logits_only(pair, tmp_path: Path) -> None:
    from audit.cache.stats_cache import StatsCache

    spec, healthy, noisy = pair
    cache = StatsCache(tmp_path / "cache")
    folder = Spec(name="tiny", model=ModelSpec(path=healthy.spec.path), probe=PROBE)
    first = Counting(open_backend(folder))
    run_together([Member("model", folder, first)], store=cache)
    assert (first.forwards, len(cache.stored)) == (3, 1)
    again, other = Counting(open_backend(folder)), Counting(noisy)
    members = [Member("model", folder, again, logits=True),
               Member("noisy", folder, other, logits=True)]
    pair_ = Consumer(("noisy", "model"), PairComparison())
    run_together(members, [pair_], store=cache)
    assert (again.forwards, again.logit_passes, len(cache.hits)) == (0, 3, 1)
    assert (other.forwards, other.logit_passes) == (3, 0)   # in memory: never cached
    assert pair_.target.result() == compare_outputs(healthy, noisy, probe_input(
        folder, load_corpus(PROBE.corpus), healthy), batch_size=5)
    _same_measurement(members[0].measurement, collect(folder, backend=open_backend(folder)))
    # nothing compared: a cached model does not run at all
    idle = Counting(open_backend(folder))
    assert run_together([Member("model", folder, idle)], store=cache) is None
    assert (idle.forwards, idle.logit_passes) == (0, 0)


def test_a_member_without_a_head_fails_only_its_comparison(pair) -> None:
    spec, healthy, noisy = pair
    body = healthy.with_model(healthy.causal_lm.model)  # the base model, no LM head
    members = [Member("model", spec, noisy, logits=True),
               Member("reference", spec, body, logits=True, required=False)]
    divergence = Consumer(("reference", "model"), PairComparison())
    run_together(members, [divergence])
    assert isinstance(divergence.error, BackendError)
    assert str(divergence.error).endswith("no logits to compare: the model handed over has no "
                                          "language-model head")
    assert members[1].measurement is not None and members[1].measurement.loss is None


def _count_passes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Per backend name (the spec name), [forward calls, next_token_logits calls]."""
    from audit.backends.torch_backend import TorchBackend

    counts: dict[str, list[int]] = {}
    forward, logits = TorchBackend.forward, TorchBackend.next_token_logits

    def counted_forward(self, ids, **kwargs):
        counts.setdefault(self.name, [0, 0])[0] += 1
        return forward(self, ids, **kwargs)

    def counted_logits(self, ids):
        counts.setdefault(self.name, [0, 0])[1] += 1
        return logits(self, ids)

    monkeypatch.setattr(TorchBackend, "forward", counted_forward)
    monkeypatch.setattr(TorchBackend, "next_token_logits", counted_logits)
    return counts


def test_the_session_runs_the_model_and_its_reference_once_each(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.cache.stats_cache import StatsCache

    counts = _count_passes(monkeypatch)
    spec = load_spec(div_spec(tmp_path, tiny_model_dir, f"reference_model: {tiny_model_dir}\n"))
    cache = StatsCache(tmp_path / "cache")
    writer = AuditSession([Path(spec.source)], tmp_path / "reports",
                          baselines_dir=tmp_path / "baselines", update_baselines=True,
                          cache=cache)
    report = writer.report(spec)
    # 12 windows, 8 a batch: 2 batches; the token record and the reference's report
    # come from the same passes
    assert counts == {"tiny-div": [2, 0], "tiny-div.reference": [2, 0]}
    assert sorted(p.name for p in (tmp_path / "baselines").iterdir()) == [
        "tiny-div.json", "tiny-div.tokens.npz"]
    assert report.divergence[0].result.kld_mean == 0.0
    counts.clear()
    reader = AuditSession([Path(spec.source)], None, baselines_dir=tmp_path / "baselines",
                          cache=cache)
    again = reader.report(spec)
    # served from the cache: one logits-only pass each, for the reference and the record
    assert counts == {"tiny-div": [0, 2], "tiny-div.reference": [0, 2]}
    assert [row.source for row in again.divergence] == ["reference_model", "baseline"]


def test_a_merge_and_its_parents_run_once_each(family, tmp_path: Path,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from test_merge_session import BASE, NOISY
    from test_merge_session import _spec as merge_spec

    counts = _count_passes(monkeypatch)
    spec = load_spec(merge_spec(tmp_path, family["average"], {f'"{BASE}"': family["base"],
                                                               NOISY: family["noisy"]}))
    report = AuditSession([Path(spec.source)], None, baselines_dir=tmp_path,
                          cache=False).report(spec)
    assert sorted(counts.values()) == [[2, 0]] * 3          # 16 windows: 2 batches each
    assert len(counts) == 3 and [c.kind for c in report.comparisons] == ["merge"]
    assert len(report.divergence) == 2


def test_a_reference_that_fails_to_load_fails_only_the_divergence_item(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    from test_merge_session import _variant

    from audit.session import Outcome

    broken = _variant(tiny_model_dir, tmp_path / "broken",   # a block's weight missing
                      lambda w: {k: v for k, v in w.items() if "layers.1.mlp.up" not in k})
    spec = load_spec(div_spec(tmp_path, tiny_model_dir, f"reference_model: {broken}\n"))
    session = AuditSession([Path(spec.source)], tmp_path / "reports", baselines_dir=tmp_path,
                           cache=False)
    report = session.report(spec)
    assert report.divergence == () and report.verdict == "pass"
    assert session.outcome(spec, "law-fit").outcome is Outcome.PASSED
    with pytest.raises(BackendError, match="1 weights were not found"):
        session.outcome(spec, "divergence")
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["tiny-div.json"]
