"""The training monitor (``audit.integrations.monitor.EquilawCallback``): it audits the model in
the training process, restores its train/eval mode whatever happens, records no
gradient, and appends each step to the trajectory file; in a real (short)
transformers ``Trainer`` run on the built-in corpus, r falls as the law emerges."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from audit.report.trajectory_json import read_trajectory  # noqa: E402
from audit.spec import spec_from_dict  # noqa: E402

PROBE = {"sequences": 16, "length": 64, "shards": 4}


def _callback(folder: Path, trajectory: Path, **kw):
    from audit.integrations.monitor import EquilawCallback

    spec = spec_from_dict({"name": "tiny-train", "model": str(folder), "probe": PROBE,
                           "law": {"max_pearson_r": 1.0}})
    return EquilawCallback(spec, trajectory, log=False, **kw)


def test_the_callback_restores_train_mode_and_appends(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    from audit.synthetic.tiny import causal_lm, config

    model = causal_lm(config("llama", 4, 32), seed=0).train()
    callback = _callback(tiny_model_dir, tmp_path / "t.json")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = callback.audit(model, 7)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert callback.last_report is report
    (step,) = read_trajectory(tmp_path / "t.json").steps
    assert step.step == 7 and step.pearson_r == report.law.pearson_r
    model.eval()
    callback.audit(model, 8)
    assert not model.training  # eval stays eval
    # a failing audit still restores the mode
    model.train()
    broken = _callback(tmp_path / "no-such-folder", tmp_path / "u.json")
    with pytest.raises(Exception):
        broken.audit(model, 9)
    assert model.training and not (tmp_path / "u.json").exists()


@pytest.mark.slow
def test_in_a_trainer_run_r_falls_as_training_proceeds(tmp_path: Path) -> None:
    """A 6-block, 64-wide byte-level Llama trained for 240 steps by transformers'
    Trainer; the callback audits at the start and at each save (every 80 steps)."""
    import numpy as np
    import torch
    from transformers import Trainer, TrainingArguments

    from audit.corpus import load_corpus, tokenize_corpus
    from audit.synthetic.tiny import byte_tokenizer, causal_lm, config

    tokenizer = byte_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    stream = tokenize_corpus(load_corpus("python-docstrings"),
                             lambda t: tokenizer(t, add_special_tokens=False)["input_ids"])
    starts = np.random.default_rng(0).integers(0, stream.size - 128, size=16 * 240)

    class Windows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return starts.size

        def __getitem__(self, i: int) -> dict:
            ids = torch.tensor([tokenizer.bos_token_id, *stream[starts[i]:starts[i] + 127]])
            return {"input_ids": ids, "labels": ids}

    torch.set_num_threads(2)
    model = causal_lm(config("llama", 6, 64), seed=0)
    callback = _callback(tmp_path / "tokenizer", tmp_path / "trajectory.json", at_start=True)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=240,
                             per_device_train_batch_size=16, learning_rate=3e-3,
                             lr_scheduler_type="cosine", warmup_steps=20, weight_decay=0.1,
                             save_steps=80, logging_steps=80, report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0, dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[callback]).train()
    steps = read_trajectory(tmp_path / "trajectory.json").steps
    assert [s.step for s in steps] == [0, 80, 160, 240]
    r = [s.pearson_r for s in steps]
    assert r[-1] < r[0] - 0.5, r          # measured: see the README, "Trajectories"
    assert r[-1] < -0.9, r
    assert steps[-1].loss < steps[0].loss - 1.0
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint-160", "checkpoint-240", "checkpoint-80"]
