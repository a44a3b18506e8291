"""The ``equilaw`` command (also ``python -m audit``): argument parsing, each verb
calling the core.

``equilaw calibrate CHECKPOINT -o model_specs/NAME.yaml`` measures the law once on
CHECKPOINT and writes a commented spec whose thresholds the checkpoint passes by a
stated margin (``audit.calibrate``), and its baseline as
``<spec folder>/baselines/NAME.json``.  ``equilaw export-onnx`` writes an ONNX file
with every hidden state (``audit.backends.onnx_export``); ``equilaw mutate SPEC``
audits damaged in-memory copies of the spec's checkpoint (``audit.mutate``);
``equilaw trajectory SPEC RUN_DIR`` audits a training run's checkpoints
(``audit.trajectory``); ``equilaw report FILES -o FILE.html`` renders saved reports
as one HTML page (``audit.report.html``).  Errors of equilaw print
``equilaw: error: MESSAGE`` on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit.errors import EquilawError

PROG = "equilaw"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Audit language-model checkpoints against the law of "
                               "equi-learning (pytest runs the audit; this command prepares it).")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    cal = verbs.add_parser(
        "calibrate", help="measure a checkpoint once and write a spec it passes, and its baseline",
        description="Measure the law once on CHECKPOINT and write a commented spec whose "
                    "thresholds sit a stated margin outside what it shows (in standard errors "
                    "and in absolute terms), with its deviant layers declared, and its baseline "
                    "as <spec folder>/baselines/NAME.json.")
    cal.add_argument("checkpoint", metavar="CHECKPOINT",
                     help="a folder (config.json, tokenizer, *.safetensors), a .gguf file, "
                          "pkg://MODULE/FILE or assemble://MODULE")
    cal.add_argument("-o", "--output", required=True, metavar="OUT",
                     help="the spec file to write, e.g. model_specs/NAME.yaml")
    cal.add_argument("--name", help="the spec's name (default: OUT's file name without suffix)")
    cal.add_argument("--sequences", type=int, help="probe windows (default 96)")
    cal.add_argument("--length", type=int, help="tokens per window (default 128)")
    cal.add_argument("--shards", type=int, help="jackknife shards for standard errors (default 10)")
    cal.add_argument("--corpus", help="built-in corpus name or a .txt/.jsonl path "
                                      "(default python-docstrings)")
    cal.add_argument("--measure", help="token_id | shuffled_token_id | one_hot | separation "
                                       "(default token_id)")
    cal.add_argument("--margin-sigma", type=float, default=None, metavar="K",
                     help="standard errors between each measured value and its threshold "
                          "(default 3)")
    cal.add_argument("--force", action="store_true",
                     help="overwrite an existing spec or baseline")
    cal.set_defaults(func=calibrate)
    onnx = verbs.add_parser(
        "export-onnx", help="export a checkpoint to ONNX with every hidden state as an output",
        description="Export the model of SPEC_OR_CHECKPOINT to an ONNX graph: input_ids in, "
                    "hidden_states.0 .. hidden_states.L (and logits) out, dynamic batch and "
                    "sequence; onnxruntime and PyTorch then run the same tokens and the file "
                    "is kept only when they agree.")
    onnx.add_argument("source", metavar="SPEC_OR_CHECKPOINT",
                      help="a spec file (.yaml/.yml: its model section and name), or a folder, "
                           ".gguf file, pkg://MODULE/FILE or assemble://MODULE")
    onnx.add_argument("-o", "--output", required=True, metavar="FILE.onnx",
                      help="the ONNX file to write (large weights go to FILE.onnx.data)")
    onnx.add_argument("--tolerance", type=float, default=None, metavar="T",
                      help="largest difference from PyTorch allowed in any hidden state, in "
                           "units of max(1, that layer's max |value|) (default 1e-4)")
    onnx.add_argument("--no-logits", action="store_true",
                      help="hidden states only, no logits output")
    onnx.add_argument("--no-fuse", action="store_true",
                      help="keep the graph as torch.onnx writes it, without onnxruntime's fused "
                           "operators (the default fuses them when the fused graph passes the "
                           "check)")
    onnx.add_argument("--force", action="store_true", help="overwrite an existing FILE.onnx")
    onnx.set_defaults(func=export_onnx)
    mut = verbs.add_parser(
        "mutate", help="damage the spec's checkpoint in memory and see whether the audit "
                       "catches it and names the layer",
        description="Load the spec's checkpoint once, measure it, then apply damage "
                    "operators (re-initialised, zeroed, swapped, scaled or repeated blocks, "
                    "and a 1%% weight-noise control) in memory at a spread of blocks; audit "
                    "each mutant with the spec's thresholds and against the unmutated model "
                    "as its baseline, and print which were caught, by which check, and "
                    "whether the first moved layer is the damaged block's output. Writes "
                    "REPORTS/<name>.mutations.json. Nothing is written next to the weights.")
    mut.add_argument("spec", metavar="SPEC", help="the spec file (backend torch)")
    mut.add_argument("--blocks", metavar="K,K,...", default=None,
                     help="blocks to damage, 0-based as transformers counts them (default: "
                          "about 1/4, 1/2 and 3/4 of the depth)")
    mut.add_argument("--operators", metavar="OP,OP,...", default=None,
                     help="damage operators to apply at each block (default: reinit, zero, "
                          "swap, scale_mlp, scale_attention, scale_norm, repeat)")
    mut.add_argument("--factor", type=float, default=8.0,
                     help="the scale factor of scale_mlp, scale_attention, scale_norm (default 8)")
    mut.add_argument("--no-control", action="store_true",
                     help="leave out the healthy control (1%% weight noise)")
    mut.add_argument("--reports", metavar="DIR", default="reports",
                     help="where <name>.mutations.json goes (default: reports)")
    mut.set_defaults(func=mutate)
    traj = verbs.add_parser(
        "trajectory", help="audit every checkpoint-N of a training run on the same windows",
        description="Audit each checkpoint-N subfolder of RUN_DIR (as transformers' Trainer "
                    "writes them) with SPEC's probe and thresholds, in step order, print r and "
                    "rho per step, and write REPORTS/<name>.trajectory.json (the file "
                    "audit.integrations.monitor.EquilawCallback appends to while training).")
    traj.add_argument("spec", metavar="SPEC", help="the spec file (its model.path is replaced "
                                                   "by each checkpoint)")
    traj.add_argument("run_dir", metavar="RUN_DIR", help="the training run's output folder")
    traj.add_argument("--reports", metavar="DIR", default="reports",
                      help="where <name>.trajectory.json goes (default: reports)")
    traj.set_defaults(func=trajectory)
    page = verbs.add_parser(
        "report", help="render saved reports as one self-contained HTML page",
        description="Render audit reports (<name>.json), mutation reports "
                    "(<name>.mutations.json) and trajectories (<name>.trajectory.json) as one "
                    "self-contained HTML page, the page --audit-html writes at the end of a "
                    "run, and optionally the run's Markdown summary table.")
    page.add_argument("files", nargs="+", metavar="REPORT.json",
                      help="report files of any of the three kinds, shown in this order")
    page.add_argument("-o", "--output", required=True, metavar="FILE.html",
                      help="the HTML file to write")
    page.add_argument("--markdown", metavar="FILE.md", default=None,
                      help="also write the Markdown summary of the audit reports")
    page.add_argument("--title", default="equilaw report", help="the page's title")
    page.set_defaults(func=report)
    dist = verbs.add_parser(
        "distributed", help="audit a spec across processes or machines (under torchrun)",
        description="Run under torchrun: every rank measures its share of the probe's "
                    "jackknife shards, rank 0 merges the statistics, judges SPEC's thresholds, "
                    "writes REPORTS/<name>.json and prints the verdict (exit status 1 when it "
                    "fails).  Without torchrun it runs in this process alone.")
    dist.add_argument("spec", metavar="SPEC", help="the spec file")
    dist.add_argument("--reports", metavar="DIR", default="reports",
                      help="where rank 0 writes <name>.json (default: reports)")
    dist.set_defaults(func=distributed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else 0
    if args.verb is None:
        parser.print_help(sys.stderr)
        return 2
    from audit.internal.signals import terminate_as_interrupt

    restore = terminate_as_interrupt()   # a cancelled job unwinds, removing its temporaries
    try:
        return args.func(args)
    except EquilawError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        restore()
        _cap_cache()


def _cap_cache() -> None:
    """At exit, when this run used the caches: the environment's cache folder under
    its size cap (:mod:`audit.cache.eviction`; ``EQUILAW_CACHE_MAX_GB``, default 5 GB),
    this run's entries evicted last."""
    from audit.cache.eviction import enforce, in_use

    if not in_use():
        return
    from audit.cache.settings import CacheSettings

    try:
        settings = CacheSettings.from_environment()
    except EquilawError:
        return   # already reported by the verb that read the same settings
    if settings.enabled:
        enforce(settings.folder, settings.max_gb, protect=())


def calibrate(args: argparse.Namespace) -> int:
    """The ``calibrate`` verb: :func:`audit.calibrate.calibrate`, then a summary."""
    from audit.calibrate import calibrate as run_calibration

    probe = {key: value for key, value in (("sequences", args.sequences), ("length", args.length),
                                           ("shards", args.shards), ("corpus", args.corpus))
             if value is not None}
    result = run_calibration(args.checkpoint, args.output, name=args.name, probe=probe,
                             measure=args.measure, margin_sigma=args.margin_sigma,
                             force=args.force, progress=_progress())
    law = result.report.law
    declared = ", ".join(map(str, result.calibration.expected_deviations)) or "none"
    print(f"spec written: {result.spec_path}")
    print(f"baseline written: {result.baseline_path}")
    print(f"{result.report.name}: r {law.pearson_r:.4f} ± {law.pearson_r_se:.2g}, "
          f"rho {law.rho:.5f} ± {law.rho_se:.2g}; declared layers: {declared}")
    return 0


def export_onnx(args: argparse.Namespace) -> int:
    """The ``export-onnx`` verb: export, validate, print a summary."""
    from audit.backends import onnx_export
    from audit.backends.locate import command_line_model
    from audit.spec import load_spec, spec_from_dict

    out = Path(args.output)
    if args.source.endswith((".yaml", ".yml")):
        spec = load_spec(args.source)
        model, name = spec.model, spec.name
    else:  # the checkpoint argument resolves as calibrate's does; the name only labels errors
        model = spec_from_dict({"name": "export",
                                "model": command_line_model(args.source)}).model
        name = out.stem
    tolerance = {} if args.tolerance is None else {"tolerance": args.tolerance}
    result = onnx_export.export_onnx(model, name, out, logits=not args.no_logits,
                                     overwrite=args.force, fuse=not args.no_fuse, **tolerance)
    hidden = [n for n in result.outputs if n != "logits"]
    worst = max(hidden, key=lambda n: result.max_abs_diff[n])
    data = f"; weights in {result.data_path.name}" if result.data_path is not None else ""
    print(f"ONNX written: {result.path} ({result.size_bytes / 1e6:.1f} MB{data})")
    print(f"{name}: input_ids -> {hidden[0]} .. {hidden[-1]}"
          + (", logits" if result.has_logits else " (no logits)")
          + f"; {len(result.outputs)} outputs")
    line = (f"largest difference from PyTorch: {worst} {result.max_abs_diff[worst]:.2g} "
            f"({result.max_rel_diff[worst]:.2g} of its max |value|)")
    if result.has_logits:
        line += f"; logits {result.max_abs_diff['logits']:.2g}"
    print(line)
    if result.fusions:
        print("fused for onnxruntime: " + ", ".join(f"{count} {op}"
                                                     for op, count in result.fusions.items()))
    elif result.fusion_note is not None:
        print(f"not fused: {result.fusion_note}")
    print(f"seconds: export {result.seconds_export:.1f}, validation {result.seconds_validate:.1f}")
    return 0


def mutate(args: argparse.Namespace) -> int:
    """The ``mutate`` verb: mutants, the table, the JSON report."""
    from rich.console import Console

    from audit.mutate import mutate as run_mutations
    from audit.report.mutations_json import write_mutations
    from audit.report.mutations_terminal import render
    from audit.spec import load_spec

    spec = load_spec(args.spec)
    blocks = None if args.blocks is None else _integers(args.blocks, "--blocks")
    operators = None if args.operators is None else tuple(
        op.strip() for op in args.operators.split(",") if op.strip())
    try:
        report = run_mutations(spec, blocks=blocks, operators=operators, factor=args.factor,
                               noise=None if args.no_control else 0.01,
                               log=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as exc:  # a block or operator the model does not have
        raise EquilawError(f"{args.spec}: {exc}") from None
    render(report, Console(width=max(150, Console().width)))
    out = write_mutations(report, args.reports)
    print(f"report written: {out}")
    return 0


def trajectory(args: argparse.Namespace) -> int:
    """The ``trajectory`` verb: audit each checkpoint, render, write."""
    from rich.console import Console

    from audit.report.trajectory_json import write_trajectory
    from audit.report.trajectory_terminal import render
    from audit.spec import load_spec
    from audit.trajectory import audit_run, trajectory_path

    spec = load_spec(args.spec)
    result = audit_run(spec, args.run_dir,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    render(result, Console(width=max(100, Console().width)))
    out = trajectory_path(spec, args.reports)
    write_trajectory(result, out)
    print(f"trajectory written: {out}")
    return 0


def report(args: argparse.Namespace) -> int:
    """The ``report`` verb: read the files, write the page (and the summary)."""
    from audit.report.html import write_page
    from audit.report.markdown import write_markdown
    from audit.report.sources import read_report_files

    inputs = read_report_files(args.files)
    path = write_page(args.output, inputs.reports, inputs.mutations, inputs.trajectories,
                      title=args.title)
    print(f"HTML report written: {path}")
    if args.markdown:
        print(f"Markdown summary written: "
              f"{write_markdown(args.markdown, inputs.reports, html_path=str(path))}")
    return 0


def _integers(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise EquilawError(f"{option} takes comma-separated integers, got {text!r}") from None


def _progress() -> Any:
    """A progress bar on stderr when it is a terminal, else nothing."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console

    from audit.report.progress import RichProgress

    return RichProgress(Console(stderr=True))


def distributed(args: argparse.Namespace) -> int:
    """The ``distributed`` verb: this rank's share of one audit; rank 0 reports."""
    from audit.integrations.distributed import run
    from audit.report.json_report import write_json
    from audit.spec import load_spec

    spec = load_spec(args.spec)
    report = run(spec)
    if report is None:  # not rank 0: its sums went to rank 0
        return 0
    path = write_json(report, args.reports)
    law = report.law
    print(f"{spec.name}: {report.verdict.upper()}, r {law.pearson_r:.4f} ± {law.pearson_r_se:.2g}, "
          f"rho {law.rho:.5f} ± {law.rho_se:.2g}; report written: {path}")
    return 0 if report.verdict == "pass" else 1
