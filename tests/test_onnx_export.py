"""``audit.backends.onnx_export`` and ``equilaw export-onnx`` on tiny random Llama and
GPT-2 models: output names, dynamic axes, logits, validation, files on disk, errors.

Each model is exported once (the Llama once per session, tests/conftest.py; about
10 s each on two cores); the CLI, external-data and failure tests add one export
each, and two of them are marked slow to keep the quick suite quick."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx_ir = pytest.importorskip("onnx_ir")
pytest.importorskip("onnxscript")
pytest.importorskip("onnx")
pytest.importorskip("transformers")

from audit.backends import onnx_export  # noqa: E402
from audit.backends.onnx_export import ExportResult, export_onnx  # noqa: E402
from audit.backends.torch_backend import TorchBackend  # noqa: E402
from audit.cli import main  # noqa: E402
from audit.errors import BackendError, ModelUnavailableError  # noqa: E402
from audit.spec import ModelSpec  # noqa: E402
from audit.synthetic.tiny import BOS_ID, TINY_LAYERS, TINY_WIDTH, VOCAB_SIZE  # noqa: E402

ARCHS = ("llama", "gpt2")
HIDDEN = [f"hidden_states.{i}" for i in range(TINY_LAYERS + 1)]


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's tiny Llama (tests/conftest.py) and a tiny GPT-2 of the same shape."""
    from audit.synthetic.tiny import save_tiny_model

    return {"llama": tiny_model_dir,
            "gpt2": save_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), arch="gpt2")}


@pytest.fixture(scope="module")
def exports(model_dirs: dict[str, Path], tiny_onnx_export: ExportResult,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportResult]:
    """Each tiny model exported once, alone in its folder (the Llama's is the session's)."""
    out = tmp_path_factory.mktemp("onnx-gpt2") / "gpt2.onnx"
    return {"llama": tiny_onnx_export,
            "gpt2": export_onnx(ModelSpec(path=str(model_dirs["gpt2"])), "tiny-gpt2", out)}


@pytest.fixture(scope="module")
def unfused_llama(model_dirs: dict[str, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """The tiny Llama exported with fusion asked for, but the fused graph broken (every
    SkipSimplifiedLayerNormalization's epsilon set to 10): the export keeps the
    unfused graph and says why."""
    real = onnx_export._fused

    def broken(model, names):
        fused, counts = real(model, names)
        for node in fused.graph.all_nodes():
            if node.op_type == "SkipSimplifiedLayerNormalization":
                node.attributes["epsilon"] = onnx_ir.AttrFloat32("epsilon", 10.0)
        return fused, counts

    out = tmp_path_factory.mktemp("onnx-unfused") / "llama.onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "_fused", broken)
        return export_onnx(ModelSpec(path=str(model_dirs["llama"])), "tiny-llama", out)


def operators(path: Path) -> dict[str, int]:
    """Operator type -> how many nodes of the file's graph have it."""
    import collections

    import onnx

    return dict(collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node))


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def random_ids(batch: int, length: int, seed: int = 0) -> np.ndarray:
    """int64 [batch, length]: BOS, then random byte tokens."""
    ids = np.random.default_rng(seed).integers(3, 259, size=(batch, length), dtype=np.int64)
    ids[:, 0] = BOS_ID
    return ids


@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_are_every_hidden_state_then_logits(exports: dict[str, ExportResult],
                                                    arch: str) -> None:
    result = exports[arch]
    assert result.outputs == (*HIDDEN, "logits")
    assert (result.num_layers, result.has_logits, result.data_path) == (TINY_LAYERS, True, None)
    sess = session(result.path)
    assert [(i.name, i.type, i.shape) for i in sess.get_inputs()] == [
        ("input_ids", "tensor(int64)", ["batch", "seq"])]
    assert [(o.name, o.shape) for o in sess.get_outputs()] == (
        [(name, ["batch", "seq", TINY_WIDTH]) for name in HIDDEN]
        + [("logits", ["batch", "seq", VOCAB_SIZE])])
    # The validation numbers: every output, float32 agreement, consistent ratios.
    assert set(result.max_abs_diff) == set(result.max_rel_diff) == set(result.outputs)
    assert max(result.max_abs_diff.values()) < 1e-5
    assert result.max_abs_diff["hidden_states.0"] == 0.0  # an embedding lookup is exact
    assert all(0 <= result.max_rel_diff[n] < 1e-5 for n in result.outputs)
    assert result.seconds_export > 0 and result.seconds_validate > 0
    assert result.size_bytes == os.path.getsize(result.path)
    # Fused for onnxruntime, or unfused with the reason (GPT-2: onnxscript's fusions
    # leave a Gemm on a rank-3 input that onnxruntime refuses, in onnxscript 0.7.2).
    assert bool(result.fusions) == (result.fusion_note is None)


def test_the_llama_graph_is_fused_and_keeps_every_hidden_state(
        exports: dict[str, ExportResult]) -> None:
    result = exports["llama"]
    fused = {"MultiHeadAttention": TINY_LAYERS, "SimplifiedLayerNormalization": 1,
             "SkipSimplifiedLayerNormalization": 2 * TINY_LAYERS}
    assert (result.fusions, result.fusion_note) == (fused, None)
    ops = operators(result.path)
    assert {op: ops[op] for op in fused} == fused
    # the attention and RMSNorm arithmetic is gone: no softmax, no squares, no means
    assert {"Softmax", "Pow", "ReduceMean", "IsNaN", "Sqrt"}.isdisjoint(ops)
    assert [o.name for o in session(result.path).get_outputs()] == [*HIDDEN, "logits"]


def test_a_fused_graph_that_disagrees_is_not_kept(unfused_llama: ExportResult,
                                                  exports: dict[str, ExportResult]) -> None:
    result = unfused_llama
    assert result.fusions == {}
    assert result.fusion_note.startswith(
        "the fused graph was not kept: the exported ONNX graph disagrees with PyTorch: "
        "hidden_states.")
    ops = operators(result.path)
    assert "SkipSimplifiedLayerNormalization" not in ops and ops["Softmax"] == TINY_LAYERS
    assert max(result.max_abs_diff.values()) < 1e-5
    # The fused and unfused graphs agree with each other on another shape, every output.
    ids = random_ids(3, 37, seed=2)
    fused = session(exports["llama"].path).run(None, {"input_ids": ids})
    unfused = session(result.path).run(None, {"input_ids": ids})
    assert len(fused) == len(unfused) == TINY_LAYERS + 2
    worst = max(float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(b))))
                for a, b in zip(fused, unfused))
    assert worst < 1e-5  # measured 1e-6


@pytest.mark.parametrize(("fusion", "note"), [
    (lambda model: (_ for _ in ()).throw(RuntimeError("no pattern for you")),
     "onnxscript's fusions failed: RuntimeError: no pattern for you"),
    (lambda model: (model, {}), "no fusion pattern matched the graph")])
def test_what_fusion_says_when_it_cannot(monkeypatch: pytest.MonkeyPatch, fusion, note: str,
                                         exports: dict[str, ExportResult]) -> None:
    from onnxscript.rewriter import ort_fusions

    monkeypatch.setattr(ort_fusions, "optimize_for_ort", fusion)
    model = onnx_ir.load(str(exports["gpt2"].path))
    assert onnx_export._fused(model, [*HIDDEN, "logits"]) == note


def test_nothing_but_the_onnx_files_is_left_in_the_folder(
        exports: dict[str, ExportResult]) -> None:
    for result in exports.values():
        assert os.listdir(result.path.parent) == [result.path.name]


@pytest.mark.parametrize("arch", ARCHS)
def test_dynamic_batch_and_sequence_match_torch(exports: dict[str, ExportResult],
                                                model_dirs: dict[str, Path], arch: str) -> None:
    ids = random_ids(3, 11)                                   # traced on [2, 8], checked on [2, 16]
    got = np.stack(session(exports[arch].path).run(HIDDEN, {"input_ids": ids}))
    want = TorchBackend(ModelSpec(path=str(model_dirs[arch])), arch).forward(ids, loss=False).hidden
    assert got.shape == want.shape == (TINY_LAYERS + 1, 3, 11, TINY_WIDTH)
    assert np.max(np.abs(got - want)) < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_the_torch_model(exports: dict[str, ExportResult],
                                      model_dirs: dict[str, Path], arch: str) -> None:
    import torch
    import transformers

    ids = random_ids(2, 9, seed=1)
    (got,) = session(exports[arch].path).run(["logits"], {"input_ids": ids})
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dirs[arch])).eval()
    with torch.inference_mode():
        want = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert got.shape == (2, 9, VOCAB_SIZE)
    assert np.max(np.abs(got - want)) < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_both_backends_audit_alike_within_the_default_parity(
        arch: str, model_dirs: dict[str, Path], exports: dict[str, ExportResult]) -> None:
    from audit.compare.parity import compare_backends
    from audit.pipeline import run
    from audit.spec import ParitySpec, per_backend, spec_from_dict

    spec = spec_from_dict({"name": f"tiny-{arch}", "backend": ["torch", "onnx"],
                           "model": {"path": str(model_dirs[arch]),
                                     "onnx": str(exports[arch].path)},
                           "probe": {"sequences": 24, "length": 32, "shards": 4},
                           "law": {"max_pearson_r": 1.0}})
    torch_spec, onnx_spec = per_backend(spec)
    torch_report, onnx_report = run(torch_spec), run(onnx_spec)
    assert (torch_report.backend, onnx_report.backend) == ("torch", "onnx")
    got = compare_backends(onnx_report, torch_report, ParitySpec())
    (parity,) = got.comparisons
    assert [c for c in got.checks if c.check.startswith("parity") and not c.passed] == []
    # measured here: |log10 PR difference| below 1e-8, loss difference below 1e-6 nats
    assert max(abs(row.drift) for row in parity.rows) < 1e-7
    assert abs(parity.loss_now - parity.loss_then) < 1e-5


def test_an_existing_output_is_refused_and_left_alone(exports: dict[str, ExportResult],
                                                      model_dirs: dict[str, Path]) -> None:
    path = exports["llama"].path
    before = path.read_bytes()
    with pytest.raises(BackendError) as err:
        export_onnx(ModelSpec(path=str(model_dirs["llama"])), "tiny-llama", path)
    assert str(err.value) == (f"model tiny-llama: {str(path)!r} already exists; pass "
                              "overwrite=True (equilaw export-onnx --force) to replace it")
    assert path.read_bytes() == before


@pytest.mark.slow  # one more export (about 10 s)
def test_overwrite_with_external_data(exports: dict[str, ExportResult],
                                      model_dirs: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "llama.onnx"
    shutil.copy(exports["llama"].path, target)
    result = export_onnx(ModelSpec(path=str(model_dirs["llama"])), "tiny-llama", target,
                         external_data=True, overwrite=True)
    assert (result.path, result.data_path) == (target, tmp_path / "llama.onnx.data")
    assert sorted(os.listdir(tmp_path)) == ["llama.onnx", "llama.onnx.data"]
    weights = os.path.getsize(result.data_path)                 # float32, about 210 kB
    assert weights > 200_000
    assert os.path.getsize(target) + weights // 2 < os.path.getsize(exports["llama"].path)
    assert result.size_bytes == os.path.getsize(target) + os.path.getsize(result.data_path)
    ids = random_ids(1, 5)
    got = session(target).run(None, {"input_ids": ids})
    want = session(exports["llama"].path).run(None, {"input_ids": ids})
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_cli_on_a_spec_file_without_logits(model_dirs: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "specs" / "tiny-gpt2.yaml"
    spec.parent.mkdir()
    spec.write_text(f"name: tiny-gpt2\nmodel: {os.path.relpath(model_dirs['gpt2'], spec.parent)}\n")
    out = tmp_path / "gpt2-hidden.onnx"
    assert main(["export-onnx", str(spec), "-o", str(out), "--no-logits"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"ONNX written: {out} (")
    assert f"tiny-gpt2: input_ids -> hidden_states.0 .. hidden_states.{TINY_LAYERS} " \
           f"(no logits); {TINY_LAYERS + 1} outputs" in text
    assert "largest difference from PyTorch: hidden_states." in text
    assert ("\nfused for onnxruntime: " in text) != ("\nnot fused: " in text)
    assert "; logits" not in text
    assert [o.name for o in session(out).get_outputs()] == HIDDEN


@pytest.mark.slow  # one more export (about 10 s)
def test_cli_on_a_folder_then_refuses_to_overwrite(model_dirs: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "llama.onnx"
    assert main(["export-onnx", str(model_dirs["llama"]), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"llama: input_ids -> hidden_states.0 .. hidden_states.{TINY_LAYERS}, logits; " \
           f"{TINY_LAYERS + 2} outputs" in text
    assert "; logits " in text and "seconds: export " in text
    assert (f"\nfused for onnxruntime: {TINY_LAYERS} MultiHeadAttention, 1 "
            f"SimplifiedLayerNormalization, {2 * TINY_LAYERS} SkipSimplifiedLayerNormalization\n"
            in text)
    assert [o.name for o in session(out).get_outputs()] == [*HIDDEN, "logits"]
    assert main(["export-onnx", str(model_dirs["llama"]), "-o", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"equilaw: error: model llama: {str(out)!r} already exists; pass overwrite=True "
        "(equilaw export-onnx --force) to replace it\n")


def test_a_validation_failure_names_the_worst_output_and_keeps_nothing(
        unfused_llama: ExportResult, model_dirs: dict[str, Path], tmp_path: Path) -> None:
    done = unfused_llama
    # No fused graph passes a tolerance of 0, so the unfused graph is checked last: the
    # same graph and tokens give the same differences; the worst hidden state is the
    # largest difference in units of max(1, max |value|) = max(1, diff / rel).
    excess = {n: d / max(1.0, d / done.max_rel_diff[n]) for n, d in done.max_abs_diff.items()
              if n != "logits" and d > 0}
    worst = max(excess, key=excess.get)
    with pytest.raises(BackendError) as err:
        export_onnx(ModelSpec(path=str(model_dirs["llama"])), "tiny-llama",
                    tmp_path / "out" / "llama.onnx", tolerance=0.0)
    message = str(err.value)
    assert message.startswith(f"model tiny-llama: the exported ONNX graph disagrees with "
                              f"PyTorch: {worst} differs by up to ")
    assert message.endswith("beyond the tolerance 0 × max(1, max |value|); nothing was written")
    assert err.value.model == "tiny-llama"
    assert os.listdir(tmp_path / "out") == []


def test_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelUnavailableError) as err:
        export_onnx(ModelSpec(path=str(missing)), "ghost", tmp_path / "ghost.onnx")
    assert str(err.value) == f"model ghost: model path {str(missing)!r} does not exist"
    assert main(["export-onnx", str(missing), "-o", str(tmp_path / "ghost.onnx")]) == 2
    assert capsys.readouterr().err == (
        f"equilaw: error: model ghost: model path {str(missing)!r} does not exist\n")
    assert os.listdir(tmp_path) == []


def test_a_missing_onnx_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    find_spec = onnx_export.importlib.util.find_spec
    monkeypatch.setattr(onnx_export.importlib.util, "find_spec",
                        lambda name: None if name == "onnxscript" else find_spec(name))
    with pytest.raises(BackendError) as err:
        export_onnx(ModelSpec(path=str(tmp_path)), "tiny", tmp_path / "tiny.onnx")
    assert str(err.value) == ("model tiny: exporting to ONNX needs onnxscript: "
                              "pip install 'equilaw[onnx]'")
