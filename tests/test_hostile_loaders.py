"""Hostile input files (issue 29, items 2, 6, 7 and 9): every loader of untrusted
input refuses it with the project's error, naming the file, within bounded time, and
changes nothing on disk.  Cases are generated here, never shipped as files.

Each case checks the exact message and that the folder's checksum is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.backends import locate
from audit.backends.locate import resolve_model_path
from audit.compare.baseline import read_baseline
from audit.compare.layer_map import read_mergekit_config
from audit.corpus import load_corpus
from audit.errors import (
    BackendError,
    ComparisonError,
    CorpusError,
    EquilawError,
    ReportError,
    SpecError,
)
from audit.internal.safe_read import MAX_QUOTE, short_repr
from audit.report.trajectory_json import read_trajectory
from audit.spec import ModelSpec, load_spec

REPORT = Path(__file__).parent / "data" / "report-schema3.json"
SPECS_DIR = Path(__file__).resolve().parents[1] / "model_specs"


def folder_sha256(folder: Path) -> str:
    """Names, kinds and bytes of everything under ``folder`` (FIFOs by name only)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        if path.is_fifo():
            digest.update(b"fifo\0")
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


_snapshots: dict[Path, str] = {}


def snapshot(folder: Path) -> None:
    """Record ``folder``'s checksum once the test has set it up."""
    _snapshots[folder] = folder_sha256(folder)


@pytest.fixture
def unchanged(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, which must hold after the test what it held at :func:`snapshot`
    (every test using it takes one)."""
    yield tmp_path
    assert folder_sha256(tmp_path) == _snapshots.pop(tmp_path)


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail instead of blocking forever (a FIFO opened for reading blocks until a
    writer comes)."""
    def alarm(signum, frame):
        raise TimeoutError("blocked: the loader opened a FIFO")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- item 2: alias bombs and deep nesting ---------------------------------------------

def alias_bomb(levels: int, under: str) -> str:
    """A YAML 'billion laughs': each anchor repeats the previous one 9 times, the last
    one used under ``under``."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\n{under}: *a{levels}\n"


def test_alias_bomb_under_merge_method_is_refused_at_once(unchanged: Path) -> None:
    config = unchanged / "mergekit_config.yml"
    config.write_text("models:\n  - model: a\n  - model: b\n" + alias_bomb(9, "merge_method"))
    snapshot(unchanged)
    tracemalloc.start()
    try:
        with pytest.raises(SpecError) as err:
            read_mergekit_config(config, ["a", "b"], {"a": 4, "b": 4})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # was 72 s and 2.3 GB, then a MemoryError
    assert str(err.value) == (f"{config}:9: aliases expand to more than 100000 values "
                              "(a YAML alias bomb?)")


def test_alias_bomb_in_a_spec(unchanged: Path) -> None:
    spec = unchanged / "bomb.yaml"
    spec.write_text("name: m\nmodel: m.gguf\n" + alias_bomb(7, "probe"))
    snapshot(unchanged)
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert str(err.value) == f"{spec}:8: aliases expand to more than 100000 values " \
                             "(a YAML alias bomb?)"


def test_a_small_alias_bomb_gives_a_short_message(unchanged: Path) -> None:
    """Under the expansion bound, an alias-built value quoted by an error message is
    capped: a 6-level bomb under merge_method gave a 3.2 MB message."""
    config = unchanged / "mergekit_config.yml"
    config.write_text("models:\n  - model: a\n" + alias_bomb(3, "merge_method"))
    snapshot(unchanged)
    with pytest.raises(SpecError) as err:
        read_mergekit_config(config, ["a"], {"a": 4})
    assert str(err.value) == (
        f"{config}:7: merge_method: expected a string, got [[[[...], [...], [...], [...], "
        "[...], [...], ...], [[...], [...], [...], [...], ...")
    assert len(err.value.reason) < 150 and len(short_repr("x" * 10**6)) == MAX_QUOTE


def test_a_huge_shared_value_as_a_layer_map_parent_is_quoted_short() -> None:
    """10**6 references to one list (what aliases build within the bound) quoted by
    an error message: capped, never the full repr."""
    from audit.compare.layer_map import layer_map_from_entries

    huge = [["x" * 1000] * 1000] * 1000
    with pytest.raises(SpecError) as err:
        layer_map_from_entries([{"parent": huge, "layer": 1}], ["a"], {"a": 4}, file="s.yaml",
                               line=3)
    assert str(err.value) == (
        "s.yaml:3: merge.layer_map[0].parent: unknown parent [['" + "x" * 37 + "..."
        + "x" * 37 + "...; known parents: a")


@pytest.mark.parametrize("text, line, message", [
    ("name: m\nmodel: " + "[" * 5000 + "]" * 5000 + "\n", 2,
     "lists or mappings nested more than 64 levels deep"),
    ("name: m\nmodel: " + "{a: " * 100 + "1" + "}" * 100 + "\n", 2,
     "lists or mappings nested more than 64 levels deep"),
    ("name: m\nmodel: &m [*m]\n", 2, "recursive alias (an anchor used inside itself)"),
    (f"a: &a {'[' * 40}1{']' * 40}\nb: &b {'[' * 40}*a{']' * 40}\n", 2,
     "aliases nest lists or mappings more than 64 levels deep"),
])
def test_deep_or_recursive_yaml_in_a_spec(unchanged: Path, text: str, line: int,
                                         message: str) -> None:
    spec = unchanged / "deep.yaml"
    spec.write_text(text)
    snapshot(unchanged)
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert str(err.value) == f"{spec}:{line}: {message}"


def test_deep_json_baseline_and_trajectory(unchanged: Path) -> None:
    too_deep_to_parse = unchanged / "m.json"
    too_deep_to_parse.write_text("[" * 100_000 + "]" * 100_000)
    parses = unchanged / "p.json"
    parses.write_text('{"name": "x", "steps": ' + "[" * 70 + "]" * 70 + "}")
    trajectory = unchanged / "t.json"
    trajectory.write_text(parses.read_text())
    snapshot(unchanged)
    fix = ("; an unreadable baseline fails the comparison: restore it, or delete it and write "
           "it again with: pytest audit/ --audit-update-baseline -k {name}")
    with pytest.raises(ComparisonError) as err:
        read_baseline(too_deep_to_parse)
    assert str(err.value) == (f"the baseline {too_deep_to_parse} is unreadable: not JSON "
                              "(maximum recursion depth exceeded while decoding a JSON array "
                              "from a unicode string)" + fix.format(name="m"))
    with pytest.raises(ComparisonError) as err:  # parsed, then refused before it is walked
        read_baseline(parses)
    assert str(err.value) == (f"the baseline {parses} is unreadable: it nests lists or "
                              "mappings more than 64 levels deep" + fix.format(name="p"))
    with pytest.raises(ReportError) as err:
        read_trajectory(trajectory)
    assert str(err.value) == (f"cannot read trajectory {trajectory}: trajectory "
                              "nests lists or mappings more than 64 levels deep")


def test_deep_json_corpus_line(unchanged: Path) -> None:
    corpus = unchanged / "c.jsonl"
    corpus.write_text('{"text": "ok"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    snapshot(unchanged)
    with pytest.raises(CorpusError) as err:
        load_corpus(corpus)
    assert str(err.value) == f"{corpus}:2: the line nests lists or mappings more than 64 " \
                             "levels deep"


# -- item 7: config.json -----------------------------------------------------------------

def info_of(folder: Path):
    from audit.backends.torch_backend import TorchBackend

    return TorchBackend(ModelSpec(path=str(folder)), "tiny").info()


LLAMA = {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 16, "rms_norm_eps": 1e-6}


@pytest.mark.parametrize("config, message", [
    ([LLAMA], "expected a JSON object, got a JSON array"),
    ("llama", "expected a JSON object, got a JSON str"),
    ({**LLAMA, "num_hidden_layers": 0}, "{cfg!r}: num_hidden_layers must be an integer in "
                                        "1..1024, got 0"),
    ({**LLAMA, "num_hidden_layers": 100_000_000}, "{cfg!r}: num_hidden_layers must be an "
                                                  "integer in 1..1024, got 100000000"),
    ({**LLAMA, "num_hidden_layers": "4"}, "{cfg!r}: num_hidden_layers must be an integer in "
                                          "1..1024, got '4'"),
    ({**LLAMA, "num_hidden_layers": True}, "{cfg!r}: num_hidden_layers must be an integer in "
                                           "1..1024, got True"),
    ({**LLAMA, "hidden_size": 10**9}, "{cfg!r}: hidden_size must be an integer in 1..65536, "
                                      "got 1000000000"),
    ({**LLAMA, "num_hidden_layers": 4.5}, "{cfg!r}: num_hidden_layers must be an integer in "
                                          "1..1024, got 4.5"),
    ({**LLAMA, "model_type": ["llama"] * 1000}, "model_type must be a string, got ['llama', "
                                                "'llama', 'llama', 'llama', 'llama', 'llama', "
                                                "...]"),
    ({"text_config": {**LLAMA, "num_hidden_layers": -1}},
     "{cfg!r} text_config: num_hidden_layers must be an integer in 1..1024, got -1"),
], ids=["list", "string", "zero-layers", "1e8-layers", "string-layers", "bool-layers",
        "huge-width", "float-layers", "list-model-type", "text-config"])
def test_config_json_is_refused_naming_file_and_field(unchanged: Path, config,
                                                      message: str) -> None:
    cfg = unchanged / "config.json"
    cfg.write_text(json.dumps(config))
    snapshot(unchanged)
    tracemalloc.start()
    try:
        with pytest.raises(BackendError) as err:
            info_of(unchanged)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20   # refused before anything is built from the numbers
    prefix = "" if message.startswith("{cfg!r}") else f"{str(cfg)!r}: "
    assert str(err.value) == "model tiny: " + prefix + message.format(cfg=str(cfg))


def test_deeply_nested_config_json(unchanged: Path) -> None:
    cfg = unchanged / "config.json"
    cfg.write_text('{"model_type": "llama", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    snapshot(unchanged)
    with pytest.raises(BackendError) as err:
        info_of(unchanged)
    assert str(err.value) == (f"model tiny: {str(cfg)!r}: config.json nests lists or mappings "
                              "more than 64 levels deep")


@pytest.mark.parametrize("blocks", [0, 100_000_000])
def test_gguf_block_count_out_of_range(unchanged: Path, blocks: int) -> None:
    gguf = pytest.importorskip("gguf")
    path = unchanged / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(blocks)
    writer.add_embedding_length(16)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    snapshot(unchanged)
    from audit.backends.gguf_meta import gguf_model_info

    with pytest.raises(BackendError) as err:
        gguf_model_info(path, model="m")
    assert str(err.value) == (f"model m: GGUF file {str(path)!r}: llama.block_count must be an "
                              f"integer in 1..1024, got {blocks}")


def test_a_sane_config_still_reads(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, "num_hidden_layers": 1024}))
    info = info_of(tmp_path)
    assert (info.architecture, info.num_layers, info.width, info.norm.eps) == \
        ("llama", 1024, 16, 1e-6)


# -- item 6: FIFOs where files are read ------------------------------------------------

def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


FIFO_MESSAGE = ("is a FIFO (named pipe), not a regular file: equilaw reads a {what} only "
                "from a regular file (reading a FIFO (named pipe) can block forever)")

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


@needs_fifo
def test_fifo_as_spec_mergekit_config_baseline_or_trajectory(unchanged: Path,
                                                             no_hang: None) -> None:
    spec, config = fifo(unchanged / "s.yaml"), fifo(unchanged / "mergekit_config.yml")
    baseline, trajectory = fifo(unchanged / "b.json"), fifo(unchanged / "t.json")
    snapshot(unchanged)
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert str(err.value) == f"{spec}: " + FIFO_MESSAGE.format(what="spec file")
    with pytest.raises(SpecError) as err:
        read_mergekit_config(config, ["a"], {"a": 4})
    assert str(err.value) == f"{config}: " + FIFO_MESSAGE.format(what="mergekit config")
    with pytest.raises(ComparisonError) as err:
        read_baseline(baseline)
    assert str(err.value).startswith(f"the baseline {baseline} is unreadable: it is not a "
                                     "regular file; ")
    with pytest.raises(ReportError) as err:
        read_trajectory(trajectory)
    assert str(err.value) == f"cannot read trajectory {trajectory}: " + \
        FIFO_MESSAGE.format(what="trajectory")


@needs_fifo
def test_fifo_named_like_a_spec_in_a_spec_folder(unchanged: Path, no_hang: None) -> None:
    from audit.spec import load_specs

    (unchanged / "a.yaml").write_text("name: a\nmodel: a.gguf\n")
    pipe = fifo(unchanged / "b.yaml")
    snapshot(unchanged)
    with pytest.raises(SpecError) as err:
        load_specs(unchanged)
    assert str(err.value) == f"{pipe}: " + FIFO_MESSAGE.format(what="spec file")


@needs_fifo
def test_fifo_as_corpus_file_or_inside_a_corpus_folder(unchanged: Path, no_hang: None) -> None:
    lone = fifo(unchanged / "c.txt")
    folder = unchanged / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("text")
    inside = fifo(folder / "b.jsonl")
    snapshot(unchanged)
    for path, named in ((lone, lone), (folder, inside)):
        with pytest.raises(CorpusError) as err:
            load_corpus(path)
        assert str(err.value) == f"{named}: " + FIFO_MESSAGE.format(what="corpus file")


@needs_fifo
def test_fifo_as_model_file_or_inside_a_model_folder(unchanged: Path, no_hang: None) -> None:
    gguf = fifo(unchanged / "m.gguf")
    folder = unchanged / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    fifo(folder / "model.safetensors")
    config_fifo = unchanged / "ckpt2"
    config_fifo.mkdir()
    fifo(config_fifo / "config.json")
    snapshot(unchanged)
    with pytest.raises(BackendError) as err:
        resolve_model_path(str(gguf), model="m")
    assert str(err.value) == f"model m: model file {str(gguf)!r} " + \
        FIFO_MESSAGE.format(what="model file")
    for where in (folder, config_fifo):
        name = "model.safetensors" if where == folder else "config.json"
        with pytest.raises(BackendError) as err:
            resolve_model_path(str(where), model="m")
        assert str(err.value) == (f"model m: model folder {str(where)!r} holds {name!r}, which "
                                  + FIFO_MESSAGE.format(what="model file"))
        with pytest.raises(BackendError):
            info_of(where)


@needs_fifo
def test_fifo_in_a_stored_tokenizer_cache_entry(unchanged: Path, no_hang: None) -> None:
    """The converted-checkpoint cache's stored tokenizer: a FIFO is refused (its
    caller then discards the entry and rebuilds it)."""
    pytest.importorskip("tokenizers")
    from audit.backends.hf_files import StoredTokenizer

    fifo(unchanged / "tokenizer_config.json")
    (unchanged / "tokenizer.json").write_text("{}")
    snapshot(unchanged)
    with pytest.raises(BackendError) as err:
        StoredTokenizer(unchanged)
    assert str(err.value) == (f"stored tokenizer {str(unchanged / 'tokenizer_config.json')!r}: "
                              + FIFO_MESSAGE.format(what="tokenizer config"))


# -- item 9: code execution from a spec ------------------------------------------------

@pytest.fixture
def evil_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``evilpkg``, whose import writes a marker file, with a model file in a
    subpackage ``evilpkg.sub`` (whose own import would write one too)."""
    site = tmp_path / "site"
    sub = site / "evilpkg" / "sub"
    sub.mkdir(parents=True)
    marker = tmp_path / "imported"
    for init in (site / "evilpkg" / "__init__.py", sub / "__init__.py"):
        init.write_text(f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
                        "def assemble():\n    return __file__\n")
    (sub / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(site))
    for name in ("evilpkg", "evilpkg.sub"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(locate, "_assembled", {})
    return tmp_path


def test_pkg_path_into_a_subpackage_imports_nothing(evil_package: Path) -> None:
    found = resolve_model_path("pkg://evilpkg.sub/model.gguf")
    assert found == (evil_package / "site" / "evilpkg" / "sub" / "model.gguf").resolve()
    assert not (evil_package / "imported").exists()
    assert "evilpkg" not in sys.modules and "evilpkg.sub" not in sys.modules
    with pytest.raises(BackendError) as err:
        resolve_model_path("pkg://evilpkg.nothere/model.gguf")
    assert str(err.value) == ("'pkg://evilpkg.nothere/model.gguf': package 'evilpkg.nothere' "
                              "is not installed; install the distribution that provides the "
                              "import name 'evilpkg.nothere'")
    assert not (evil_package / "imported").exists()


def test_assemble_needs_the_opt_in(evil_package: Path) -> None:
    with pytest.raises(BackendError) as err:
        resolve_model_path("assemble://evilpkg", model="m")
    assert str(err.value) == (
        "model m: 'assemble://evilpkg' imports the package 'evilpkg' and runs its assemble(), "
        "which executes code from that package: set `model.allow_package_code: true` in the "
        "spec if you trust it")
    assert not (evil_package / "imported").exists()
    found = resolve_model_path("assemble://evilpkg", allow_package_code=True)
    assert found == (evil_package / "site" / "evilpkg" / "__init__.py").resolve()
    assert (evil_package / "imported").read_text() == "evilpkg\n"


def test_the_opt_in_is_a_spec_key_recorded_in_the_report(tmp_path: Path) -> None:
    from audit.report.build import _spec_dict

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("name: s\nmodel:\n  path: assemble://evilpkg\n"
                         "  allow_package_code: true\n")
    spec = load_spec(spec_file)
    assert spec.model.allow_package_code is True
    assert _spec_dict(spec)["model"]["allow_package_code"] is True
    assert load_spec(SPECS_DIR / "gemma3-270m.yaml").model.allow_package_code is True
    spec_file.write_text("name: s\nmodel:\n  path: assemble://evilpkg\n"
                         "  allow_package_code: yes please\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    assert str(err.value) == (f"{spec_file}:4: model.allow_package_code: expected true or "
                              "false, got a string ('yes please')")


def test_the_backend_passes_the_opt_in(evil_package: Path) -> None:
    from audit.backends.torch_backend import TorchBackend

    refused = TorchBackend(ModelSpec(path="assemble://evilpkg"), "m")
    with pytest.raises(BackendError):
        _ = refused.path
    assert not (evil_package / "imported").exists()
    allowed = TorchBackend(ModelSpec(path="assemble://evilpkg", allow_package_code=True), "m")
    assert allowed.path.name == "__init__.py"


# -- generated junk ----------------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.text(max_size=20))
_trees = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30)
_spec_keys = st.sampled_from(["name", "model", "probe", "law", "baseline", "merge", "backend",
                              "measure", "model.path", "probe.corpus", "merge_method", "slices",
                              "models", "layers", "law.pearson_r", "checks", "schema_version"])
_junk_text = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    _trees.map(lambda t: yaml.safe_dump(t)),
    _trees.map(json.dumps),
    st.dictionaries(_spec_keys, _trees, max_size=6).map(yaml.safe_dump),
    st.tuples(st.integers(1, 12), st.sampled_from(["probe", "merge_method", "models", "name"]))
    .map(lambda a: alias_bomb(*a)),
    st.integers(1, 3000).map(lambda n: "a: " + "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"law": ' + "{" * 0 + "[" * n + "]" * n + "}"),
)


def _report_variants():
    base = json.loads(REPORT.read_text())
    paths = [("law", "pearson_r"), ("layers",), ("layers", 0, "log10_pr_loo"), ("probe",),
             ("schema_version",), ("checks",), ("loss",), ("model", "layers"), ("spec",)]
    return st.tuples(st.sampled_from(paths), _trees).map(lambda pv: _replaced(base, *pv))


def _replaced(base: dict, path: tuple, value) -> str:
    data = json.loads(json.dumps(base))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(data)


HANG_SECONDS = 60.0


def _accepts_or_refuses(call) -> None:
    """``call()`` returns or raises the project's error, with at most 64 MiB of
    Python allocations at its peak, and does not hang (60 s: a guard against a
    hang or an exponential blow-up, not a speed figure; a normal call takes
    milliseconds, seconds on a loaded machine)."""
    start = time.perf_counter()
    tracemalloc.start()
    try:
        call()
    except EquilawError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 64 * 2**20 and time.perf_counter() - start < HANG_SECONDS


@settings(deadline=None, suppress_health_check=list(HealthCheck))
@given(text=_junk_text)
def test_junk_spec_is_accepted_or_refused(tmp_path_factory, text: str) -> None:
    spec = tmp_path_factory.mktemp("junk") / "s.yaml"
    spec.write_text(text, encoding="utf-8", errors="surrogatepass")
    _accepts_or_refuses(lambda: load_spec(spec))


@settings(deadline=None, suppress_health_check=list(HealthCheck))
@given(text=_junk_text)
def test_junk_mergekit_config_is_accepted_or_refused(tmp_path_factory, text: str) -> None:
    config = tmp_path_factory.mktemp("junk") / "mergekit_config.yml"
    config.write_text(text, encoding="utf-8", errors="surrogatepass")
    _accepts_or_refuses(lambda: read_mergekit_config(config, ["a", "b"], {"a": 4, "b": 4}))


@settings(deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.one_of(_junk_text, _report_variants()))
def test_junk_baseline_is_accepted_or_refused(tmp_path_factory, text: str) -> None:
    baseline = tmp_path_factory.mktemp("junk") / "m.json"
    baseline.write_text(text, encoding="utf-8", errors="surrogatepass")
    _accepts_or_refuses(lambda: read_baseline(baseline))
