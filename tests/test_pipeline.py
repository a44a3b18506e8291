"""audit.pipeline.run: one spec end to end on a tiny random-weight Llama (nothing downloaded),
checked against a direct numpy computation on the backend's own hidden states."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from audit.corpus import BUILTIN_CORPORA, load_corpus, token_windows, tokenize_corpus
from audit.norms import apply_normalization
from audit.pipeline import run
from audit.probe import example_positions
from audit.report.data import Report
from audit.spec import Spec, spec_from_dict
from audit.synthetic.tiny import TINY_LAYERS, TINY_WIDTH

SEQUENCES, LENGTH, SHARDS, BATCH = 24, 32, 4, 8
LAW = {"max_pearson_r": -0.9, "rho": [0.5, 1.0], "max_deviation": 0.02,
       "max_deviation_sigma": 6, "min_step_fraction": -3.0}


def tiny_spec(folder: Path | str, **overrides) -> Spec:
    data = {"name": "tiny", "model": {"path": str(folder)},
            "probe": {"sequences": SEQUENCES, "length": LENGTH, "seed": 0,
                      "batch_size": BATCH, "shards": SHARDS},
            "law": LAW, **overrides}
    return spec_from_dict(data)


@pytest.fixture(scope="module")
def spec(tiny_model_dir: Path) -> Spec:
    return tiny_spec(tiny_model_dir)


@pytest.fixture(scope="module")
def report(spec: Spec) -> Report:
    return run(spec)


# -- example positions ------------------------------------------------------------------

@pytest.mark.parametrize(("target", "features", "targets"), [
    ("previous", [1, 2, 3, 4], [0, 1, 2, 3]),
    ("current", [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]),
    ("next", [0, 1, 2, 3], [1, 2, 3, 4]),
    ("next_next", [0, 1, 2], [2, 3, 4]),
])
def test_example_positions(target: str, features: list[int], targets: list[int]) -> None:
    j, t = example_positions(5, target)
    np.testing.assert_array_equal(j, features)
    np.testing.assert_array_equal(t, targets)
    assert j.dtype.kind == t.dtype.kind == "i"


# -- the report of one run ----------------------------------------------------------------

def test_report_shape_and_provenance(report: Report, spec: Spec, tiny_model_dir: Path) -> None:
    assert isinstance(report, Report)
    assert report.name == "tiny"
    assert [row.index for row in report.layers] == list(range(TINY_LAYERS + 1))
    assert report.layers[0].status == "unjudged"
    assert all(0 < row.pr <= 1 for row in report.layers)
    assert all(math.isfinite(row.pr_se) and row.pr_se > 0 for row in report.layers)
    assert all(row.rank == TINY_WIDTH for row in report.layers)
    law = report.law
    for name in ("slope", "intercept", "pearson_r", "r_squared", "rho", "mean_step",
                 "slope_se", "intercept_se", "pearson_r_se", "rho_se", "mean_step_se"):
        assert math.isfinite(getattr(law, name)), name
    assert law.first_layer == 1
    assert law.pr_first == report.layers[1].pr and law.pr_last == report.layers[-1].pr
    assert report.corpus == {
        "name": "python-docstrings", "sha256": BUILTIN_CORPORA["python-docstrings"][1],
        "tokens": SEQUENCES * LENGTH, "stream_tokens": report.corpus["stream_tokens"],
        "examples": SEQUENCES * (LENGTH - 1), "sequences": SEQUENCES, "length": LENGTH,
    }
    # a byte-level tokenizer: one token per UTF-8 byte of the joined corpus
    assert report.corpus["stream_tokens"] == len(load_corpus("python-docstrings").text.encode())
    assert report.model["path"] == str(tiny_model_dir)
    assert report.model["resolved_path"] == str(tiny_model_dir.resolve())
    assert (report.model["architecture"], report.model["layers"], report.model["width"]) == \
        ("llama", TINY_LAYERS, TINY_WIDTH)
    assert len(report.model["sha256"]) == 64
    assert (report.measure, report.normalization, report.target, report.backend) == \
        ("token_id", "init_norm", "next", "torch")
    assert report.shards == SHARDS
    assert {"python", "numpy", "equilaw", "torch", "transformers"} <= set(report.versions)
    assert report.timing["tokens_per_second"] > 0


def test_checks_follow_the_thresholds(report: Report) -> None:
    """One result per switched-on check, each judged by the rule of audit.checks."""
    keys = [(c.check, c.layer) for c in report.checks]
    assert keys == [("pearson_r", None), ("rho", None), ("deviation", 1),
                    ("deviation", 2), ("step", 2), ("deviation", 3), ("step", 3),
                    ("deviation", 4), ("step", 4)]
    law = report.law
    by_key = {(c.check, c.layer): c for c in report.checks}
    assert by_key["pearson_r", None].passed == (law.pearson_r <= LAW["max_pearson_r"])
    assert by_key["pearson_r", None].threshold == LAW["max_pearson_r"]
    assert by_key["rho", None].passed == (0.5 <= law.rho <= 1.0)
    assert by_key["rho", None].threshold == (0.5, 1.0)
    for row in report.layers[1:]:
        dev = by_key["deviation", row.index]
        assert dev.value == row.deviation and dev.stderr == row.deviation_se
        assert dev.passed == (not (abs(row.deviation) > 0.02
                                   and abs(row.deviation) / row.deviation_se > 6))
        failed = not dev.passed
        if row.index > 1:
            step = by_key["step", row.index]
            assert step.value == row.step
            assert step.threshold == pytest.approx(-3.0 * abs(law.mean_step))
            assert step.passed == (row.step >= -3.0 * abs(law.mean_step))
            failed = failed or not step.passed
        assert row.status == ("violation" if failed else "ok")
    assert report.verdict == ("pass" if all(c.passed for c in report.checks) else "fail")
    # the law is absent at init: PR does not fall with depth, so law-fit fails
    assert not by_key["pearson_r", None].passed
    assert report.verdict == "fail"


def test_random_init_has_no_law(report: Report) -> None:
    """At random init PR does not decay with depth: r > 0 for this seed (r ≈ 0.24)."""
    assert report.law.pearson_r > 0
    assert report.law.pearson_r == pytest.approx(0.2365, abs=5e-3)


def _direct_pr(spec: Spec) -> list[float]:
    """PR per layer by lstsq with intercept on the very features the backend gives
    for the spec's windows."""
    from audit.backends import open_backend

    backend = open_backend(spec)
    info = backend.info()
    stream = tokenize_corpus(load_corpus(spec.probe.corpus), backend.encode)
    windows = token_windows(stream, LENGTH, SEQUENCES, 0, bos_id=backend.bos_token_id)  # [n, t]
    assert windows.shape == (SEQUENCES, LENGTH) and (windows[:, 0] == 1).all()
    hidden = np.concatenate([backend.forward(windows[i:i + BATCH], loss=False).hidden
                             for i in range(0, SEQUENCES, BATCH)], axis=1)   # [L+1, n, t, d]
    hidden = apply_normalization("init_norm", hidden, info.norm)
    j, t = example_positions(LENGTH, "next")
    y = windows[:, t].reshape(-1).astype(np.float64)                         # [n·m]
    expected = []
    for layer in range(TINY_LAYERS + 1):
        x = hidden[layer][:, j, :].reshape(-1, TINY_WIDTH).astype(np.float64)  # [n·m, d]
        design = np.column_stack([np.ones(len(x)), x])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        resid = y - design @ coef
        expected.append(resid @ resid / ((y - y.mean()) @ (y - y.mean())))
    return expected


@pytest.fixture(scope="module")
def direct_pr(spec: Spec) -> list[float]:
    return _direct_pr(spec)


def test_streaming_engine_matches_direct_numpy(report: Report, direct_pr: list[float]) -> None:
    """PR per layer from run() equals lstsq on the same float32 features (exact in
    float64, Grams formed in float64: about κ² × 1e-16 with κ < 100 here)."""
    np.testing.assert_allclose([row.pr for row in report.layers], direct_pr, rtol=1e-10)
    assert report.statistics == "gram" and report.warnings == ()
    assert all(1.0 < row.condition < 1e3 for row in report.layers)


def test_qr_statistics_give_the_same_numbers(tiny_model_dir: Path, report: Report,
                                             direct_pr: list[float]) -> None:
    qr = run(tiny_spec(tiny_model_dir, probe={"sequences": SEQUENCES, "length": LENGTH,
                                              "batch_size": BATCH, "shards": SHARDS,
                                              "statistics": "qr"}))
    assert qr.statistics == "qr" and qr.spec["probe"]["statistics"] == "qr"
    np.testing.assert_allclose([row.pr for row in qr.layers], direct_pr, rtol=1e-10)
    np.testing.assert_allclose([row.pr_se for row in qr.layers],
                               [row.pr_se for row in report.layers], rtol=1e-8)
    np.testing.assert_allclose([row.condition for row in qr.layers],
                               [row.condition for row in report.layers], rtol=1e-8)
    assert [row.rank for row in qr.layers] == [row.rank for row in report.layers]
    assert qr.law.pearson_r == pytest.approx(report.law.pearson_r, rel=1e-10)


def test_loaded_model_gives_the_same_numbers(report: Report, spec: Spec) -> None:
    from audit.synthetic.tiny import causal_lm, config

    model = causal_lm(config("llama", TINY_LAYERS, TINY_WIDTH), seed=0)
    given = run(spec, model=model)
    np.testing.assert_allclose([r.pr for r in given.layers], [r.pr for r in report.layers],
                               rtol=1e-6)
    assert given.law.pearson_r == pytest.approx(report.law.pearson_r, rel=1e-6)
    assert given.model["resolved_path"] == "<in-memory>"
    assert given.model["sha256"] != report.model["sha256"]  # a state-dict hash, not the file's
    assert given.corpus == report.corpus


def test_other_target_and_single_shard(tiny_model_dir: Path) -> None:
    """target previous keeps length - 1 positions; one shard has no standard errors."""
    small = tiny_spec(tiny_model_dir, target="previous",
                      probe={"sequences": 8, "length": 16, "batch_size": 8, "shards": 1},
                      law={"max_pearson_r": 1.0})
    got = run(small)
    assert got.corpus["examples"] == 8 * 15 and got.corpus["tokens"] == 8 * 16
    assert all(math.isnan(row.pr_se) for row in got.layers)
    assert [(c.check, c.layer) for c in got.checks] == [("pearson_r", None)]
    assert got.verdict == "pass"


# -- the probe loss and the probe record ---------------------------------------------------

def test_probe_loss_is_the_models_own_cross_entropy(report: Report, spec: Spec) -> None:
    """The loss equals transformers' own mean next-token loss of the model with its
    head, over the same windows; its jackknife comes from the per-shard sums."""
    import torch

    from audit.backends import open_backend
    from audit.synthetic.tiny import causal_lm, config

    backend = open_backend(spec)
    windows = token_windows(tokenize_corpus(load_corpus(spec.probe.corpus), backend.encode),
                            LENGTH, SEQUENCES, 0, bos_id=backend.bos_token_id)
    model = causal_lm(config("llama", TINY_LAYERS, TINY_WIDTH), seed=0)
    ids = torch.from_numpy(windows)
    with torch.no_grad():
        per_window = [float(model(input_ids=ids[i:i + 1], labels=ids[i:i + 1]).loss)
                      for i in range(SEQUENCES)]
    assert report.loss is not None and report.loss_note is None
    assert report.loss.tokens == SEQUENCES * (LENGTH - 1)
    assert report.loss.mean == pytest.approx(np.mean(per_window), rel=1e-6)
    # shard k holds windows 6k..6k+5: leaving it out averages the others
    blocks = np.array(per_window).reshape(SHARDS, -1).mean(axis=1)
    expected_loo = [(blocks.sum() - b) / (SHARDS - 1) for b in blocks]
    np.testing.assert_allclose(report.loss.leave_one_out, expected_loo, rtol=1e-6)
    assert report.loss.stderr > 0 and report.timing["loss_seconds"] > 0
    # a random model predicts no better than chance over its 264 rows
    assert report.loss.mean == pytest.approx(math.log(264), abs=0.3)
    assert len(report.probe["windows_sha256"]) == 64
    assert report.probe["tokenizer"]["vocab_size"] == 259


def test_loss_switched_off_and_headless_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    off = run(tiny_spec(tiny_model_dir, probe={"sequences": 8, "length": 16, "shards": 2,
                                               "loss": False}, law={"max_pearson_r": 1.0}))
    assert off.loss is None and off.loss_note == "switched off (probe.loss: false)"
    assert off.timing["loss_seconds"] == 0.0
    # a checkpoint saved without its head: hidden states only
    import transformers

    headless = tmp_path / "headless"
    transformers.AutoModel.from_pretrained(str(tiny_model_dir)).save_pretrained(headless)
    for item in tiny_model_dir.iterdir():
        if item.name.startswith(("tokenizer", "special_tokens")):
            (headless / item.name).write_bytes(item.read_bytes())
    got = run(tiny_spec(headless, probe={"sequences": 8, "length": 16, "shards": 2},
                        law={"max_pearson_r": 1.0}))
    assert got.loss is None and got.loss_note == f"{str(headless)!r} holds no language-model head weights"
    same = run(tiny_spec(tiny_model_dir, probe={"sequences": 8, "length": 16, "shards": 2},
                         law={"max_pearson_r": 1.0}))
    np.testing.assert_allclose([r.pr for r in got.layers], [r.pr for r in same.layers], rtol=1e-9)
    assert got.probe["windows_sha256"] == same.probe["windows_sha256"]


def test_expected_deviations_beyond_the_model_fail_before_loading(tiny_model_dir: Path,
                                                                   tmp_path: Path) -> None:
    from audit.backends import open_backend
    from audit.errors import SpecError
    from audit.pipeline import collect
    from audit.spec import load_spec

    path = tmp_path / "spec.yaml"
    path.write_text(f"name: tiny\nmodel: {tiny_model_dir}\nlaw:\n  max_pearson_r: -0.9\n"
                    f"  expected_deviations: [2, {TINY_LAYERS + 1}, 0]\n".replace(", 0]", "]"))
    spec = load_spec(path)
    backend = open_backend(spec)
    with pytest.raises(SpecError) as err:
        collect(spec, backend=backend)
    assert str(err.value) == (f"{path}:5: law.expected_deviations: layer {TINY_LAYERS + 1} "
                              f"outside 1..{TINY_LAYERS}: the model of 'tiny' has "
                              f"{TINY_LAYERS} layers")
    assert backend._model is None  # nothing was loaded


def test_the_report_names_the_backend_that_ran(tiny_model_dir: Path) -> None:
    from audit.backends.torch_backend import TorchBackend

    class Renamed(TorchBackend):
        backend_name = "renamed"

    spec = tiny_spec(tiny_model_dir, probe={"sequences": 8, "length": 16, "shards": 2},
                     law={"max_pearson_r": 1.0})
    got = run(spec, backend=Renamed(spec.model, spec.name))
    assert got.backend == "renamed" and got.spec["backend"] == "torch"


def test_one_registry_of_backends() -> None:
    from audit.backends import BACKENDS as registry
    from audit.spec import BACKENDS, SPEC_KEYS

    assert BACKENDS == tuple(registry)
    assert SPEC_KEYS["backend"].allowed == (" \\| ".join(f"`{name}`" for name in registry)
                                            + ", or a list of distinct ones")
