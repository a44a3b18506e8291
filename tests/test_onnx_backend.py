"""The ONNX Runtime backend on tiny exported models: the same audit as PyTorch on
the same windows (parity), the probe loss from the file's logits, and a clear
error for every file it cannot use."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from audit.errors import BackendError
from audit.pipeline import run
from audit.spec import ModelSpec, Spec, spec_from_dict
from audit.synthetic.tiny import TINY_LAYERS

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

PROBE = {"sequences": 24, "length": 32, "shards": 4}


def _spec(model: Path, onnx_file: Path | None, **extra) -> Spec:
    data = {"name": "tiny", "model": {"path": str(model)}, "probe": PROBE,
            "law": {"max_pearson_r": 1.0}, **extra}
    if onnx_file is not None:
        data["backend"] = "onnx"
        data["model"]["onnx"] = str(onnx_file)
    return spec_from_dict(data)


def test_onnx_audit_equals_the_torch_audit(tiny_model_dir: Path, tiny_onnx: Path) -> None:
    torch_report = run(_spec(tiny_model_dir, None))
    onnx_report = run(_spec(tiny_model_dir, tiny_onnx, onnx={"intra_op_threads": 1}))
    assert onnx_report.backend == "onnx" and torch_report.backend == "torch"
    assert onnx_report.probe["windows_sha256"] == torch_report.probe["windows_sha256"]
    pr_torch = np.array([row.pr for row in torch_report.layers])
    pr_onnx = np.array([row.pr for row in onnx_report.layers])
    np.testing.assert_allclose(pr_onnx, pr_torch, rtol=1e-6)  # measured: 2.6e-9
    assert onnx_report.loss.mean == pytest.approx(torch_report.loss.mean, rel=1e-6)
    digest = hashlib.sha256(tiny_onnx.read_bytes())
    for data in sorted(tiny_onnx.parent.glob(tiny_onnx.name + "*.data")):
        digest.update(data.read_bytes())
    assert onnx_report.model["sha256"] == digest.hexdigest()
    assert "onnxruntime" in onnx_report.versions


def _backend(model: Path, onnx: Path):
    from audit.backends import open_backend

    return open_backend(_spec(model, onnx))


def test_a_file_without_hidden_state_outputs_lists_its_outputs(tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["last_hidden_state"])], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.INT64, ["b", "t"])])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(BackendError) as err:
        _backend(tiny_model_dir, path).load()
    assert str(err.value) == (f"model tiny: {str(path)!r} has no hidden-state outputs "
                              f"(hidden_states.0 … hidden_states.L); its outputs are: "
                              f"last_hidden_state; export with python -m audit export-onnx, or "
                              f"name the tensors in the spec (onnx.layers)")


def test_a_truncated_file_is_named(tiny_model_dir: Path, tiny_onnx: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.onnx"
    path.write_bytes(tiny_onnx.read_bytes()[:200])
    with pytest.raises(BackendError, match=rf"^model tiny: onnxruntime cannot load "
                                           rf"{str(path)!r} \(corrupt, truncated or not an ONNX "
                                           rf"file\?\): "):
        _backend(tiny_model_dir, path).load()


def test_a_layer_count_that_disagrees_with_the_config(tiny_onnx: Path, tmp_path: Path) -> None:
    from audit.synthetic.tiny import save_tiny_model

    shallow = save_tiny_model(tmp_path / "shallow", layers=2)
    with pytest.raises(BackendError, match=rf"has hidden-state outputs .* \({TINY_LAYERS + 1} in "
                                           rf"all\), but the checkpoint's config promises 2 layers"):
        _backend(shallow, tiny_onnx).load()


def test_a_file_without_logits_is_audited_without_the_loss(tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    from audit.backends.onnx_export import export_onnx

    path = export_onnx(ModelSpec(path=str(tiny_model_dir)), "tiny", tmp_path / "nologits.onnx",
                       logits=False).path
    report = run(_spec(tiny_model_dir, path))
    assert report.loss is None and report.loss_note == f"{str(path)!r} has no logits output"


def test_an_embedding_smaller_than_the_tokenizer_is_refused(tiny_model_dir: Path,
                                                            tiny_onnx: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from audit.backends.onnx_backend import embedding_rows

    model = onnx.load(str(tiny_onnx))
    rows = embedding_rows(tiny_onnx)
    assert rows == 264  # padded: the byte-level tokenizer has 259 tokens
    for init in model.graph.initializer:
        if list(init.dims) == [rows, 32]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:200], init.name))
    path = tmp_path / "small-vocab.onnx"
    onnx.save(model, str(path))
    assert embedding_rows(path) == 200
    with pytest.raises(BackendError) as err:
        _backend(tiny_model_dir, path).load()
    assert str(err.value) == (
        f"model tiny: {str(path)!r}: the embedding table has 200 rows but the tokenizer from "
        f"{str(tiny_model_dir)!r} has 259 tokens (ids up to 258): the model and the tokenizer "
        f"do not belong together (model.tokenizer of the spec names another tokenizer)")


def test_hidden_states_are_written_in_place_as_the_plain_run_gives_them(
        tiny_model_dir: Path, tiny_onnx: Path) -> None:
    from audit.backends.onnx_backend import _token_nll

    backend = _backend(tiny_model_dir, tiny_onnx)
    session = backend.load()
    names = [f"hidden_states.{i}" for i in range(TINY_LAYERS + 1)]
    assert backend._float32 == dict.fromkeys(names, True)  # all float32: I/O binding
    ids = np.random.default_rng(3).integers(3, 259, size=(3, 19)).astype(np.int64)
    *plain, logits = session.run([*names, "logits"], {"input_ids": ids})
    bound = backend.forward(ids, loss=True)
    assert bound.hidden.shape == (TINY_LAYERS + 1, 3, 19, 32)
    assert np.array_equal(bound.hidden, np.stack(plain))
    assert np.array_equal(bound.token_nll, _token_nll(logits, ids))
    backend._float32 = dict.fromkeys(names, False)  # the session.run path, for other types
    unbound = backend.forward(ids, loss=True)
    assert np.array_equal(unbound.hidden, bound.hidden)
    assert np.array_equal(unbound.token_nll, bound.token_nll)
