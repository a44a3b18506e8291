"""Figures of docs/artifacts.md on real SmolLM2-135M-Instruct, on a small probe
(``--sequences`` x ``--length`` tokens of the default spec's corpus) so that they
take minutes, not the slow tests' half hour:

- ``onnx``: the next-token KL divergence (and same top) of optimum's export of
  the healthy checkpoint (``optimum-cli export onnx --task text-generation``, via
  scripts/make_optimum_exports.py) and of its export of ``mlp-x8`` (block 14's MLP
  down projection x 8), each from PyTorch's healthy model: what
  ``parity.max_kld_mean`` separates.
- ``adapter``: a LoRA trained as tests/test_adapter_smollm2.py trains it (24
  steps of arithmetic lines), its KL from the base, and the adapter unmerged against
  ``merge_and_unload()`` in float32, bfloat16 and float16 (largest |log10 PR
  difference|, |probe loss difference|): what ``adapter:``'s dtype defaults
  separate.

    PYTHONPATH=. .venv/bin/python bench/bench_artifacts.py OUT [--only onnx|adapter]

Prints one JSON line per part and writes ``OUT/artifacts.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _spec(args: argparse.Namespace, folder: Path, **model: object):
    from audit.spec import load_spec

    base = load_spec(ROOT / "model_specs" / "smollm2-135m.yaml")
    probe = dataclasses.replace(base.probe, sequences=args.sequences, length=args.length,
                                shards=args.shards)
    return dataclasses.replace(base, probe=probe, model=dataclasses.replace(
        base.model, path=str(folder), **model))


def onnx_part(args: argparse.Namespace, family, out: Path) -> dict:
    from audit.backends import open_backend
    from audit.compare.outputs import compare_outputs
    from audit.corpus import load_corpus
    from audit.probe import probe_input

    healthy, damaged = family.folder("healthy"), family.folder("mlp-x8")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_optimum_exports.py"),
                    str(out / "exports"), f"--model=smollm2={healthy}",
                    f"--model=mlp-x8={damaged}", "--task=text-generation"], check=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    records = json.loads((out / "exports" / "exports.json").read_text())["exports"]
    torch_spec = _spec(args, healthy)
    torch_backend = open_backend(torch_spec)
    torch_backend.load()
    windows = probe_input(torch_spec, load_corpus(torch_spec.probe.corpus), torch_backend)
    figures = {}
    for record in records:
        spec = dataclasses.replace(_spec(args, healthy, onnx=record["file"]), backend="onnx")
        r = compare_outputs(open_backend(spec), torch_backend, windows, batch_size=4)
        figures[record["name"]] = {"kld_mean": r.kld_mean, "kld_mean_se": r.kld_mean_se,
                                   "kld_p99": r.kld_p99, "same_top": r.same_top,
                                   "ln_ppl_ratio": r.ln_ppl_ratio, "tokens": r.tokens}
    return figures


def adapter_part(args: argparse.Namespace, family, out: Path) -> dict:
    import numpy as np

    from audit.backends.torch_backend import MergedAdapterBackend, TorchBackend
    from audit.compare.adapter import compare_to_merged
    from audit.compare.outputs import compare_outputs
    from audit.corpus import load_corpus
    from audit.pipeline import run
    from audit.probe import probe_input
    from audit.synthetic.adapters import train_lora

    healthy = family.folder("healthy")
    text = out / "arithmetic.txt"
    rng = np.random.default_rng(0)
    text.write_text("".join(f"{a} + {b} = {a + b}\n" for a, b in rng.integers(0, 1000, (3000, 2))))
    adapter = train_lora(healthy, out / "lora", corpus=str(text), steps=24, batch_size=2,
                         length=48, learning_rate=3e-3, threads=None)
    spec = _spec(args, healthy, adapter=str(adapter))
    adapted = TorchBackend(spec.model, spec.name)
    base_spec = _spec(args, healthy)
    base = TorchBackend(base_spec.model, "base")
    windows = probe_input(spec, load_corpus(spec.probe.corpus), adapted)
    kl = compare_outputs(adapted, base, windows, batch_size=4)
    figures = {"kl_from_base": {"kld_mean": kl.kld_mean, "kld_mean_se": kl.kld_mean_se,
                                "same_top": kl.same_top, "ln_ppl_ratio": kl.ln_ppl_ratio,
                                "tokens": kl.tokens}}
    del adapted, base
    for dtype in ("float32", "bfloat16", "float16"):
        one = dataclasses.replace(spec, model=dataclasses.replace(spec.model, dtype=dtype))
        unmerged = run(one, backend=TorchBackend(one.model, one.name), cache=False)
        merged = run(dataclasses.replace(one, name=f"{one.name}.merged"), cache=False,
                     backend=MergedAdapterBackend(one.model, one.name))
        c = compare_to_merged(unmerged, merged, spec.adapter, dtype).comparisons[-1]
        figures[f"merged_{dtype}"] = [max(abs(r.drift) for r in c.rows),
                                      abs(c.loss_now - c.loss_then)]
        print(dtype, figures[f"merged_{dtype}"], flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", choices=("onnx", "adapter"))
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    from smollm2_family import SmolLM2Family

    from audit.backends.locate import resolve_model_path
    from audit.spec import load_spec

    args.out.mkdir(parents=True, exist_ok=True)
    gguf = resolve_model_path(load_spec(ROOT / "model_specs" / "smollm2-135m.yaml").model.path)
    family = SmolLM2Family(args.out / "family", gguf)
    results = {"probe": [args.sequences, args.length, args.shards]}
    for name, part in (("onnx", onnx_part), ("adapter", adapter_part)):
        if args.only in (None, name):
            start = time.perf_counter()
            results[name] = part(args, family, args.out)
            results[name]["seconds"] = round(time.perf_counter() - start)
            print(name, json.dumps(results[name]), flush=True)
    (args.out / "artifacts.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
