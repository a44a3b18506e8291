"""ONNX files as ``optimum-cli export onnx`` writes them (logits only, or with a KV
cache), audited as they are: tiny Llama and GPT-2 exported by
scripts/make_optimum_exports.py in its own environment (built once per machine,
about 90 s, then reused; each tiny export takes about 10 s), their layers found in
the graph, and the same hidden states and loss as PyTorch on the same tokens; a
wrong ``onnx.layers`` or a graph whose layers cannot be found is a clear error; the
file on disk is never written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audit.errors import BackendError
from audit.spec import spec_from_dict
from conftest import STRICT

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("text-generation", "text-generation-with-past")
EXPORTS = [(arch, task) for arch in ("llama", "gpt2") for task in TASKS]


@pytest.fixture(scope="session")
def optimum_exports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """exports.json of scripts/make_optimum_exports.py for tiny Llama and GPT-2, both
    tasks; skips when the optimum environment cannot be built (fails under CI)."""
    out = tmp_path_factory.mktemp("optimum")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_optimum_exports.py"),
                           str(out), "--tiny", "llama", "gpt2"],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        message = f"optimum exports failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    return json.loads((out / "exports.json").read_text(encoding="utf-8"))


def _export(exports: dict, arch: str, task: str) -> tuple[Path, Path]:
    """(the source folder, the ONNX file) of one export."""
    (record,) = [r for r in exports["exports"] if r["name"] == f"tiny-{arch}"
                 and r["task"] == task]
    return Path(record["source"]), Path(record["file"])


def _spec(source: Path, onnx_file: Path | None, **onnx_options):
    data = {"name": "tiny", "model": {"path": str(source)},
            "probe": {"sequences": 24, "length": 32, "shards": 4},
            "law": {"max_pearson_r": 1.0}}
    if onnx_file is not None:
        data["backend"] = "onnx"
        data["model"]["onnx"] = str(onnx_file)
        data["onnx"] = {"intra_op_threads": 1, **onnx_options}
    return spec_from_dict(data)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_script_exports_both_tasks_of_both_families(optimum_exports: dict) -> None:
    assert {(r["name"], r["task"]) for r in optimum_exports["exports"]} == {
        (f"tiny-{arch}", task) for arch, task in EXPORTS}
    for record in optimum_exports["exports"]:
        model = onnx.load(record["file"], load_external_data=False)
        inputs = [i.name for i in model.graph.input]
        outputs = [o.name for o in model.graph.output]
        assert outputs[0] == "logits"
        assert not any(name.startswith("hidden_states.") for name in outputs)
        if record["task"] == "text-generation":
            assert outputs == ["logits"]
            assert inputs == ["input_ids", "attention_mask", "position_ids"]
        else:
            assert len([n for n in inputs if n.startswith("past_key_values.")]) == 8
            assert len([n for n in outputs if n.startswith("present.")]) == 8
        assert record["bytes"] < 500_000  # measured: 388 KB (Llama) to 446 KB (GPT-2)


GRAPH_LAYERS = {
    "llama": ("/model/embed_tokens/Gather_output_0", "/model/layers.0/Add_1_output_0",
              "/model/layers.1/Add_1_output_0", "/model/layers.2/Add_1_output_0",
              "/model/norm/Mul_1_output_0"),
    "gpt2": ("/transformer/Add_output_0", "/transformer/h.0/Add_1_output_0",
             "/transformer/h.1/Add_1_output_0", "/transformer/h.2/Add_1_output_0",
             "/transformer/ln_f/LayerNormalization_output_0"),
}


@pytest.mark.parametrize(("arch", "task"), EXPORTS)
def test_an_optimum_export_has_pytorchs_hidden_states(optimum_exports: dict, arch: str,
                                                      task: str) -> None:
    from audit.backends import open_backend

    source, path = _export(optimum_exports, arch, task)
    before = _sha256(path)
    onnx_backend = open_backend(_spec(source, path))
    torch_backend = open_backend(_spec(source, None))
    ids = np.random.default_rng(0).integers(3, 259, size=(3, 24))
    got = onnx_backend.forward(ids, loss=True)
    want = torch_backend.forward(ids, loss=True)
    names = onnx_backend.graph_layers
    assert names[1:4] == GRAPH_LAYERS[arch][1:4] and names[-1] == GRAPH_LAYERS[arch][-1]
    if not (arch == "gpt2" and task == "text-generation-with-past"):
        assert names[0] == GRAPH_LAYERS[arch][0]  # with past, GPT-2's sum is Add_1
    assert got.hidden.shape == want.hidden.shape == (5, 3, 24, 32)
    diff = np.abs(got.hidden - want.hidden).max(axis=(1, 2, 3))
    scale = np.abs(want.hidden).max(axis=(1, 2, 3))
    # measured: 0 at layer 0, <= 1.5e-8 at layers 1..3, 6e-7 after the final norm
    assert diff[0] == 0.0
    assert np.all(diff <= 1e-6 * scale), diff / scale
    # measured: 4.4e-7 (Llama), 4.0e-7 (GPT-2) nats per token at most
    np.testing.assert_allclose(got.token_nll, want.token_nll, atol=5e-6)
    assert _sha256(path) == before
    assert onnx_backend.weights_sha256() == before


def test_the_audit_of_the_shipped_file_equals_pytorchs(optimum_exports: dict) -> None:
    from audit.compare.parity import compare_backends
    from audit.pipeline import run
    from audit.spec import ParitySpec

    source, path = _export(optimum_exports, "llama", "text-generation-with-past")
    before = path.stat().st_mtime_ns, _sha256(path)
    onnx_report = run(_spec(source, path))
    torch_report = run(_spec(source, None))
    assert onnx_report.model["sha256"] == before[1]
    assert (path.stat().st_mtime_ns, _sha256(path)) == before
    got = compare_backends(onnx_report, torch_report, ParitySpec())
    assert [c.message for c in got.checks if c.check.startswith("parity") and not c.passed] == []
    pr_t = np.log10([row.pr for row in torch_report.layers])
    pr_o = np.log10([row.pr for row in onnx_report.layers])
    assert np.abs(pr_o - pr_t).max() < 1e-7  # measured: 1.7e-9 (GPT-2: 3.4e-9)
    assert abs(onnx_report.loss.mean - torch_report.loss.mean) < 1e-6  # measured: 6.3e-10


def test_onnx_layers_names_the_tensors(optimum_exports: dict) -> None:
    from audit.backends import open_backend

    source, path = _export(optimum_exports, "gpt2", "text-generation")
    found = open_backend(_spec(source, path))
    found.load()
    # naming the layers the search finds gives the same hidden states
    named = open_backend(_spec(source, path, layers=dict(enumerate(found.graph_layers))))
    ids = np.random.default_rng(1).integers(3, 259, size=(2, 16))
    np.testing.assert_array_equal(named.forward(ids, loss=False).hidden,
                                  found.forward(ids, loss=False).hidden)


def _layers_error(exports: dict, layers: dict) -> str:
    from audit.backends import open_backend

    source, path = _export(exports, "llama", "text-generation")
    with pytest.raises(BackendError) as err:
        open_backend(_spec(source, path, layers=layers)).load()
    return str(err.value)


def test_a_wrong_onnx_layers_mapping_is_named(optimum_exports: dict) -> None:
    good = dict(enumerate(GRAPH_LAYERS["llama"]))
    _, path = _export(optimum_exports, "llama", "text-generation")
    where = repr(str(path))
    missing = _layers_error(optimum_exports, {k: v for k, v in good.items() if k != 2})
    assert missing == (f"model tiny: onnx.layers must name layers 0..4 (the config's 4 blocks "
                       f"and the embedding output) for {where}; missing [2], beyond []")
    typo = _layers_error(optimum_exports, {**good, 2: "/model/layers.1/Add_2_output_0"})
    assert typo.startswith(f"model tiny: onnx.layers names '/model/layers.1/Add_2_output_0' "
                           f"as layer 2, but {where} has no tensor of that name (close: ")
    assert "/model/layers.1/Add_1_output_0" in typo
    inner = "/model/layers.1/mlp/act_fn/Mul_output_0"  # the MLP's 64-wide activation
    wide = _layers_error(optimum_exports, {**good, 2: inner})
    assert wide.startswith(f"model tiny: onnx.layers names {inner!r} as layer 2, but in {where} "
                           f"it has shape [")
    assert wide.endswith(", 64], not [batch, tokens, 32]")


def _renamed(path: Path, out: Path, old: str, new: str) -> Path:
    """A copy of the graph with ``old`` replaced by ``new`` in every node name."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        node.name = node.name.replace(old, new)
    onnx.save(model, str(out))
    return out


def test_a_graph_whose_layers_cannot_be_found_is_named(optimum_exports: dict,
                                                       tmp_path: Path) -> None:
    from audit.backends import open_backend

    source, path = _export(optimum_exports, "llama", "text-generation")
    blocks = _renamed(path, tmp_path / "blocks.onnx", "/layers.", "/blocks.")
    with pytest.raises(BackendError) as err:
        open_backend(_spec(source, blocks)).load()
    assert str(err.value) == (
        f"model tiny: {str(blocks)!r} has no hidden-state outputs and equilaw cannot find its "
        f"layers in the graph: no node is named after the blocks (…/layers.N/…); found "
        f"blocks: none; name the tensors in the spec (`onnx.layers: {{0: TENSOR, ..., 4: "
        f"TENSOR}}`) or export with python -m audit export-onnx")
    norm = _renamed(path, tmp_path / "norm.onnx", "/model/norm/", "/model/final/")
    with pytest.raises(BackendError) as err:
        open_backend(_spec(source, norm)).load()
    message = str(err.value)
    assert "cannot find its layers in the graph: no node is named after the final norm " \
           "(/model/norm/…); found blocks: 4 (/model/layers.N); residual inputs: " \
           "'/model/embed_tokens/Gather_output_0' … '/model/layers.2/Add_1_output_0'" in message
    # a graph cut between two blocks: block 2 no longer reads block 1's output
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.name.startswith("/model/layers.2/"):
            node.input[:] = ["/model/layers.0/Add_1_output_0" if name ==
                             "/model/layers.1/Add_1_output_0" else name for name in node.input]
    cut = tmp_path / "cut.onnx"
    onnx.save(model, str(cut))
    with pytest.raises(BackendError, match=r"block 2 \(/model/layers\.2/\) reads 0 tensors of "
                                           r"width 32 made by block 1, expected one"):
        open_backend(_spec(source, cut)).load()


def test_external_data_stays_beside_the_file(optimum_exports: dict, tmp_path: Path) -> None:
    """A file stored with external data (optimum's layout for models over 2 GB:
    ``model.onnx`` + ``model.onnx_data``; the same code path at any size): its layers
    are added as outputs of the graph read without its weights, onnxruntime reads the
    weights from beside the shipped file, the hidden states and the audit equal the
    inline file's, the report's sha256 covers both files, and neither is written."""
    from audit.backends import open_backend
    from audit.pipeline import run

    source, path = _export(optimum_exports, "llama", "text-generation-with-past")
    split = tmp_path / "split" / "model.onnx"
    split.parent.mkdir()
    onnx.save(onnx.load(str(path)), str(split), save_as_external_data=True,
              location="model.onnx_data", size_threshold=0)
    files = sorted(split.parent.iterdir())
    assert [p.name for p in files] == ["model.onnx", "model.onnx_data"]
    data_bytes = (split.parent / "model.onnx_data").stat().st_size
    assert data_bytes > 150_000 and split.stat().st_size + 150_000 < path.stat().st_size
    before = {p.name: (p.stat().st_mtime_ns, _sha256(p)) for p in files}
    backend = open_backend(_spec(source, split))
    ids = np.random.default_rng(2).integers(3, 259, size=(2, 16))
    inline = open_backend(_spec(source, path))
    np.testing.assert_array_equal(backend.forward(ids, loss=False).hidden,
                                  inline.forward(ids, loss=False).hidden)
    assert backend.graph_layers == inline.graph_layers
    report = run(_spec(source, split), cache=False)
    want = run(_spec(source, path), cache=False)
    assert [row.pr for row in report.layers] == [row.pr for row in want.layers]
    assert report.loss.mean == want.loss.mean
    both = hashlib.sha256(split.read_bytes() + (split.parent / "model.onnx_data").read_bytes())
    assert report.model["sha256"] == backend.weights_sha256() == both.hexdigest()
    assert {p.name: (p.stat().st_mtime_ns, _sha256(p))
            for p in sorted(split.parent.iterdir())} == before


def test_missing_external_data_is_named(optimum_exports: dict, tmp_path: Path) -> None:
    from audit.backends import open_backend

    source, path = _export(optimum_exports, "llama", "text-generation")
    split = tmp_path / "model.onnx"
    onnx.save(onnx.load(str(path)), str(split), save_as_external_data=True,
              location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(BackendError, match=r"keeps its data in 'weights.bin', which is missing "
                                           r"beside the file"):
        open_backend(_spec(source, split)).weights_sha256()


def _scaled(path: Path, out: Path, initializer: str, factor: float) -> Path:
    """A copy of the graph with one weight multiplied by ``factor`` (a damaged export)."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    (init,) = [i for i in model.graph.initializer if i.name == initializer]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
    onnx.save(model, str(out))
    return out


def _mlp_weight(path: Path) -> str:
    """The initializer block 1's MLP down projection multiplies by."""
    model = onnx.load(str(path), load_external_data=False)
    names = {i.name for i in model.graph.initializer}
    (node,) = [n for n in model.graph.node if n.name == "/model/layers.1/mlp/down_proj/MatMul"]
    (weight,) = [name for name in node.input if name in names]
    return weight


@pytest.mark.parametrize("task", TASKS)
def test_parity_compares_the_next_token_distributions(optimum_exports: dict, task: str,
                                                      tmp_path: Path) -> None:
    """backend: [torch, onnx] on an optimum export: the parity item also judges the mean
    KL of the file's next-token distribution from PyTorch's (parity.max_kld_mean),
    shown as a backend:torch divergence row; a damaged export (block 1's MLP down
    projection x 8) fails it."""
    from audit.session import AuditSession, Outcome

    source, path = _export(optimum_exports, "llama", task)
    damaged = _scaled(path, tmp_path / "damaged.onnx", _mlp_weight(path), 8.0)
    figures = {}
    for label, file in (("faithful", path), ("damaged", damaged)):
        spec_file = tmp_path / f"{label}.yaml"
        spec_file.write_text(f"name: {label}\nbackend: [torch, onnx]\nmodel:\n  path: {source}\n"
                             f"  onnx: {file}\nonnx:\n  intra_op_threads: 1\nprobe:\n"
                             f"  sequences: 24\n  length: 32\n  shards: 4\n"
                             f"law:\n  max_pearson_r: 1.0\n")
        session = AuditSession([spec_file], tmp_path / "reports", cache=False)
        spec = session.specs()[1]
        report = session.report(spec)
        (row,) = report.divergence
        assert (row.source, row.reference, row.gated) == ("backend:torch", str(source), False)
        (check,) = [c for c in report.checks if c.check == "parity_kld"]
        assert check.value == row.result.kld_mean and check.threshold == 1e-5
        figures[label] = (row.result.kld_mean, row.result.same_top,
                          session.outcome(spec, "parity"))
        written = json.loads((tmp_path / "reports" / f"{label}.onnx.json").read_text())
        assert [d["source"] for d in written["divergence"]] == ["backend:torch"]
    print(f"\nOPTIMUM-TINY {task} KLD: faithful {figures['faithful'][0]:.3g}, "
          f"damaged {figures['damaged'][0]:.3g} (same top {figures['damaged'][1]:.4f})")
    kld, same_top, outcome = figures["faithful"]
    assert outcome.outcome is Outcome.PASSED
    assert kld < 1e-9 and same_top == 1.0     # measured: about 1e-13 nats
    kld, _, outcome = figures["damaged"]
    assert outcome.outcome is Outcome.COMPARISON_FAILED
    assert kld > 1e-4                          # measured: 5.7e-4
    (line,) = [ln for ln in outcome.message.splitlines() if ln.startswith("next-token KL")]
    assert line.startswith("next-token KL(torch ‖ onnx) over 744 tokens: mean ")
    assert line.endswith("> parity.max_kld_mean 1e-05")
