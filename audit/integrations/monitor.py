"""A transformers ``TrainerCallback`` that audits the model while it trains.

::

    from audit.integrations.monitor import EquilawCallback
    trainer = Trainer(..., callbacks=[EquilawCallback("model_specs/tiny.yaml")])

At each save (and, with ``on_evaluate=True``, each evaluation) the callback runs
the spec's audit on the model in the training process, without reloading weights
from disk, and appends the step to ``reports/<name>.trajectory.json``
(:mod:`audit.trajectory`), so the law can be watched emerging, or stalling, while
the run goes on (``python -m audit trajectory`` renders the file, or audits the
saved checkpoints afterwards).  The spec's ``model.path`` (or ``model.tokenizer``)
must give the tokenizer; the weights are the trainer's.  The model's train or
eval mode is restored afterwards, whatever happens, and no gradient is recorded.
Use a small probe: it runs inside the training loop.

This module imports transformers on import (the callback subclasses its
``TrainerCallback``); ``import audit`` does not import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from audit.spec import Spec, load_spec


class EquilawCallback(TrainerCallback):
    """Audit on save (and optionally on evaluate, and at the start of training:
    ``at_start``, the initialisation when training from scratch); append to the
    trajectory file.

    ``spec``: a Spec or the path of a spec file.  ``trajectory``: the file
    (default ``reports/<name>.trajectory.json``).  ``log``: print one line per
    audit.  After each audit ``last_report`` holds the report.
    """

    def __init__(self, spec: Spec | str | os.PathLike, trajectory: str | os.PathLike | None = None,
                 *, on_save: bool = True, on_evaluate: bool = False, at_start: bool = False,
                 log: bool = True) -> None:
        self.spec = spec if isinstance(spec, Spec) else load_spec(spec)
        from audit.trajectory import trajectory_path

        self.path = Path(trajectory) if trajectory is not None else trajectory_path(self.spec)
        self.audit_on_save = on_save
        self.audit_on_evaluate = on_evaluate
        self.audit_at_start = at_start
        self.log = log
        self.last_report: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       **kwargs: Any):
        if self.audit_at_start:
            self.audit(model, state.global_step, getattr(args, "output_dir", None))
        return control

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any):
        if self.audit_on_save:
            self.audit(model, state.global_step, getattr(args, "output_dir", None))
        return control

    def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any):
        if self.audit_on_evaluate:
            self.audit(model, state.global_step, getattr(args, "output_dir", None))
        return control

    def audit(self, model: Any, step: int, run_dir: str | None = None) -> Any:
        """Audit ``model`` as it is now and append ``step`` to the trajectory."""
        import torch

        from audit.pipeline import run
        from audit.trajectory import append

        if model is None:
            raise ValueError("EquilawCallback needs the model: the trainer passes it as `model`")
        training = model.training
        try:
            with torch.no_grad():
                report = run(self.spec, model=model)
        finally:
            model.train(training)
        append(self.path, self.spec, report, step, run_dir)
        self.last_report = report
        if self.log:
            print(f"equilaw step {step}: Pearson r {report.law.pearson_r:+.4f}, ρ "
                  f"{report.law.rho:.5f}, {report.verdict} -> {self.path}")
        return report
