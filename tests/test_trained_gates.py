"""The gates on a tiny model that really learnt (the session's ``trained_llama``,
tests/trained_fixtures.py): its training run as a trajectory (the law emerging),
and mutation testing of a spec on it (the damage operators caught and located,
the healthy control not flagged).  Marked slow: the fixture trains for about a
minute or two."""

from __future__ import annotations

import math

import pytest
from trained_fixtures import TRAINED_PROBE

from audit.mutate import mutate
from audit.spec import spec_from_dict
from audit.synthetic.damage import AddNoise, ScaleMLP, ZeroBlock
from audit.trajectory import audit_run

pytestmark = pytest.mark.slow


def _spec(path, **extra):
    return spec_from_dict({"name": "trained", "model": str(path), "probe": TRAINED_PROBE,
                           "law": {"max_pearson_r": -0.9}, **extra})


def test_the_training_run_as_a_trajectory_shows_the_law_emerging(trained_llama) -> None:
    got = audit_run(_spec(trained_llama.initial), trained_llama.run_dir)
    steps = got.steps
    assert [s.step for s in steps] == sorted(trained_llama.checkpoints)
    assert steps[0].step == 0 and steps[0].verdict == "fail"   # no law at initialisation
    assert steps[-1].verdict == "pass" and steps[-1].pearson_r < -0.9
    assert steps[-1].pearson_r < steps[0].pearson_r - 0.5
    assert steps[-1].loss < steps[0].loss - 1.0


def test_mutants_of_the_trained_model(trained_llama) -> None:
    report = mutate(_spec(trained_llama.final),
                    [AddNoise(0.01, 0), ScaleMLP(2, 8.0), ZeroBlock(2)])
    control, scaled, zeroed = report.mutants
    assert not control.caught and report.control_flagged is False
    # nothing moves before the damaged block's output (bit-identical); on this small
    # model the first move beyond max_drift can come a layer later (measured: 4)
    assert scaled.caught and scaled.expected_layer == 3 and scaled.first_moved_layer >= 3
    assert zeroed.first_moved_layer is None or zeroed.first_moved_layer >= 3
    assert all(math.isfinite(row.loss) for row in report.mutants)
    assert scaled.loss > control.loss
