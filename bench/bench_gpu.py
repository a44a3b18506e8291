"""Benchmark for a lent GPU machine (issue 31, goal 5), prepared so that its few
minutes go to measuring.  Three parts, in one process:

1. Speed: a Llama of 7B shape (width 4096, 32 blocks, feed-forward 11008, 32
   heads; SmolLM2's 49,152-word vocabulary, whose tokenizer makes the probe) built
   from its config with random bf16 weights on the GPU.  Rounds alternate a bare
   forward pass over the probe's batches (the headless model, nothing captured,
   ``torch.inference_mode``) and the audit's ``audit.pipeline.collect`` on the
   same batches (the pass with every layer captured and copied to the host, then
   the statistics, the fit and the standard errors; probe loss off).
   ``gpu.overhead_ratio`` = median audit / median bare pass, ``gpu.tokens_per_second``
   = probe tokens / median audit time (the audit's rate, what a user gets).
2. What statistics on the GPU would save: the float64 Gram product of one
   1024-token chunk at width 4096, on the GPU (torch) and on the host (numpy), per
   layer (``gpu.detail.gram``).  The statistics engine (audit/stats/) is numpy: in
   part 1 the statistics run on the host's CPU, so ``gpu.overhead_ratio`` means
   forward pass on the GPU + statistics on the CPU.
3. Parity: SmolLM2's default spec (the GGUF, float32) measured on the CPU and on
   the GPU: ``gpu.pr_max_rel_diff`` (largest relative PR difference over layers),
   ``gpu.pr_within_1e-6``.

Writes ``gpu.overhead_ratio``, ``gpu.tokens_per_second``, ``gpu.pr_max_rel_diff``,
``gpu.pr_within_1e-6`` and ``gpu.detail`` under ``"gpu"`` in bench/results.json
(read, modify, write) only when run on a CUDA device; ``--smoke`` (a tiny config,
the tiny test model's byte-level tokenizer, CPU, one round) checks the script
runs and writes to ``--out`` (default a temporary file), never to
bench/results.json (tests/test_bench_gpu.py runs it).

Usage: ``python bench/bench_gpu.py [--rounds 3] [--sequences 64] [--parity-model
GGUF]`` on the GPU machine; ``python bench/bench_gpu.py --smoke [--out PATH]``
anywhere.

On a lent machine (the ``device`` tool; its image has torch with CUDA,
transformers, numpy, scipy, PyYAML and rich, not ``gguf`` nor the SmolLM2
package): carry the ``gguf==0.19.0`` wheel (pure Python) as the device notes say,
and the SmolLM2 GGUF (98 MB, over one call's 64 MiB) in two halves over two calls
while the machine stays warm (``split -n 2``, then ``cat`` on the machine), then
``python3 bench/bench_gpu.py --parity-model PATH``.  Expected cost on 16 cores:
part 1 about a minute per round (the host's float64 statistics at width 4096
dominate), part 3 under two minutes.  No GPU was lent to the session that wrote
this script, so the keys are absent from bench/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.json")
SMOLLM2 = ROOT / "model_specs" / "smollm2-135m.yaml"
SEVEN_B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32}
"""Llama-2-7B's shape."""
SMOKE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4}
METHOD = ("forward pass on the GPU (bf16, random weights of a 7B-shaped Llama), hidden "
          "states copied to the host, statistics by the numpy engine on the host's CPU; "
          "medians of alternating rounds in one process, probe loss off")


def _sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_llama(torch, tf, shape: dict, vocab: int, device: str, dtype, seed: int = 0):
    """A random-weight Llama of ``shape``, built on ``device`` in ``dtype`` (no
    float32 copy on the host first: a 7B model is 13.5 GB in bf16)."""
    cfg = tf.LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, **shape)
    torch.manual_seed(seed)
    with torch.device(device):
        model = tf.LlamaForCausalLM._from_config(cfg, dtype=dtype)
    return model.eval()


def speed(args, torch, tf, tokenizer_spec) -> dict:
    """Part 1: bare forward pass against the audit's collect, alternating."""
    from audit.backends import open_backend
    from audit.corpus import load_corpus
    from audit.pipeline import collect
    from audit.probe import probe_input
    from audit.spec import spec_from_dict

    # the tokenizer spec's model file gives the tokenizer; the law is not judged here
    spec = spec_from_dict({
        "name": "gpu-7b-shape",
        "model": {"path": tokenizer_spec.model.path, "device": args.device,
                  "dtype": args.dtype},
        "probe": {"corpus": tokenizer_spec.probe.corpus, "sequences": args.sequences,
                  "length": args.length, "batch_size": args.batch_size,
                  "shards": args.shards, "loss": False},
        "law": {"max_pearson_r": 1.0}})
    shape = SMOKE if args.smoke else SEVEN_B
    dtype = getattr(torch, args.dtype)
    vocab = args.vocab
    model = build_llama(torch, tf, shape, vocab, args.device, dtype)
    backend = open_backend(spec, model=model)
    base = backend.load()
    probe_in = probe_input(spec, load_corpus(spec.probe.corpus), backend)
    batches = [torch.from_numpy(b.ids).to(args.device)
               for b in probe_in.batches(spec.probe.batch_size)]
    assert max(int(b.max()) for b in batches) < vocab, "the tokenizer's ids exceed the vocabulary"

    def bare() -> float:
        _sync(torch, args.device)
        start = time.perf_counter()
        with torch.inference_mode():
            for ids in batches:
                base(input_ids=ids, use_cache=False)
        _sync(torch, args.device)
        return time.perf_counter() - start

    def audit() -> tuple[float, dict]:
        m = collect(spec, backend=backend)
        return m.timing["forward_seconds"] + m.timing["stats_seconds"], dict(m.timing)

    bare()   # warm-up: kernels chosen, memory allocated
    bares, audits, timings = [], [], []
    for _ in range(args.rounds):
        bares.append(bare())
        seconds, timing = audit()
        audits.append(seconds)
        timings.append(timing)
    t_bare, t_audit = statistics.median(bares), statistics.median(audits)
    tokens = probe_in.tokens
    params = sum(p.numel() for name, p in base.named_parameters() if "embed" not in name)
    return {
        "overhead_ratio": t_audit / t_bare,
        "tokens_per_second": tokens / t_audit,
        "speed": {"shape": shape, "vocab": vocab, "dtype": args.dtype, "device": args.device,
                  "non_embedding_parameters": params, "tokens": tokens,
                  "probe": dataclasses.asdict(spec.probe), "rounds": args.rounds,
                  "bare_seconds": bares, "audit_seconds": audits,
                  "forward_seconds": [t["forward_seconds"] for t in timings],
                  "stats_seconds": [t["stats_seconds"] for t in timings],
                  "bare_tokens_per_second": tokens / t_bare},
    }


def gram(args, torch) -> dict:
    """Part 2: one float64 Gram product (1024 tokens × width) per layer, device and host."""
    import numpy as np

    width = (SMOKE if args.smoke else SEVEN_B)["hidden_size"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, width)).astype(np.float32)
    xd = torch.from_numpy(x).to(args.device)

    def on_device() -> float:
        _sync(torch, args.device)
        start = time.perf_counter()
        xx = xd.to(torch.float64)
        xx.T @ xx
        _sync(torch, args.device)
        return time.perf_counter() - start

    def on_host() -> float:
        start = time.perf_counter()
        xx = x.astype(np.float64)
        xx.T @ xx
        return time.perf_counter() - start

    on_device(), on_host()   # warm-up
    device_s = statistics.median(on_device() for _ in range(5))
    host_s = statistics.median(on_host() for _ in range(5))
    return {"tokens": 1024, "width": width, "device_seconds": device_s, "host_seconds": host_s,
            "host_over_device": host_s / device_s}


def parity(args, torch, spec) -> dict:
    """Part 3: the same spec on the CPU and on ``args.device`` (float32)."""
    import numpy as np

    from audit.pipeline import collect

    def on(device: str):
        model = dataclasses.replace(spec.model, device=device, dtype="float32")
        probe = dataclasses.replace(spec.probe, loss=False)
        return collect(dataclasses.replace(spec, model=model, probe=probe)).pr

    cpu, device = np.asarray(on("cpu")), np.asarray(on(args.device))
    worst = float(np.max(np.abs(device - cpu) / np.abs(cpu)))
    return {"pr_max_rel_diff": worst, "pr_within_1e-6": worst <= 1e-6,
            "parity": {"spec": spec.name, "layers": len(cpu), "device": args.device}}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny config on the CPU, one round; writes to --out only")
    parser.add_argument("--out", default=None,
                        help="results file (default: bench/results.json on a GPU, a "
                             "temporary file with --smoke or without one)")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (1 with --smoke)")
    parser.add_argument("--sequences", type=int, default=None,
                        help="probe windows for part 1 (default 64; 4 with --smoke)")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--parity-model", default=None,
                        help="the SmolLM2 GGUF file, where its package is not installed")
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.rounds = args.rounds or (1 if args.smoke else 3)
    args.sequences = args.sequences or (4 if args.smoke else 64)
    if args.smoke:
        args.length, args.shards = 16, 2
    return args


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the file the figures went to."""
    sys.path.insert(0, str(ROOT))
    args = parse(argv)
    import torch
    import transformers as tf

    from audit.spec import load_spec, spec_from_dict

    on_gpu = args.device.startswith("cuda") and not args.smoke
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke, or on a machine with a GPU")
    out = Path(args.out) if args.out else RESULTS if on_gpu else Path(
        tempfile.mkdtemp(prefix="bench-gpu-")) / "results.json"
    if not on_gpu and out.resolve() == RESULTS.resolve():
        raise SystemExit("a run not on a GPU does not write gpu.* into bench/results.json: "
                         "give --out a temporary path")
    if args.smoke:
        from audit.synthetic.tiny import VOCAB_SIZE, save_tiny_model

        folder = save_tiny_model(Path(tempfile.mkdtemp(prefix="bench-gpu-tiny-")), seed=0)
        spec = spec_from_dict({"name": "tiny", "model": {"path": str(folder)},
                               "probe": {"sequences": 8, "length": 16, "batch_size": 8,
                                         "shards": 2}, "law": {"max_pearson_r": 1.0}})
        args.vocab = VOCAB_SIZE
    else:
        spec = load_spec(SMOLLM2)
        if args.parity_model:
            spec = dataclasses.replace(spec, model=dataclasses.replace(
                spec.model, path=str(Path(args.parity_model).resolve())))
        args.vocab = 49152   # SmolLM2's tokenizer makes the probe

    figures = {"method": METHOD, "smoke": args.smoke}
    start = time.perf_counter()
    same = parity(args, torch, spec)
    figures.update(pr_max_rel_diff=same["pr_max_rel_diff"],
                   **{"pr_within_1e-6": same["pr_within_1e-6"]})
    found = speed(args, torch, tf, spec)
    figures.update(overhead_ratio=found.pop("overhead_ratio"),
                   tokens_per_second=found.pop("tokens_per_second"))
    figures["detail"] = {**found, "parity": same["parity"], "gram": gram(args, torch),
                         "device_name": (torch.cuda.get_device_name() if on_gpu else "cpu"),
                         "torch": torch.__version__, "cores": os.cpu_count(),
                         "seconds": time.perf_counter() - start}
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("gpu", {}).update(figures)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"written: {out}")
    return out


if __name__ == "__main__":
    main()
