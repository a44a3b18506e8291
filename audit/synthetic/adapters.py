"""Train a LoRA adapter on top of a checkpoint folder, for tests and examples of
``model.adapter``: peft's ``LoraConfig`` on the base, a few AdamW steps of
:func:`audit.synthetic.training.train_tiny`'s loop on a corpus, and the adapter
folder peft writes (``adapter_config.json``, ``adapter_model.safetensors``, and the
tokenizer files).  Nothing is downloaded.

With peft's default initialisation (B = 0) an untrained adapter is the identity;
the steps move it.  Train on another corpus than the probe's to see forgetting
(the probe's loss rising), on the probe's corpus (its windows held out) to see it
fall.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit.spec import ProbeSpec

LORA_TARGETS = ("q_proj", "v_proj")
"""peft's default LoRA targets for Llama-like models: the query and value projections."""


def train_lora(base: str | Path, out: str | Path, *, corpus: str = "python-docstrings",
               targets: Sequence[str] = LORA_TARGETS, rank: int = 8, alpha: int = 16,
               steps: int = 20, batch_size: int = 8, length: int = 64,
               learning_rate: float = 1e-3, warmup_steps: int = 2,
               held_out: Sequence[ProbeSpec] = (), seed: int = 0,
               threads: int | None = 1) -> Path:
    """Train a LoRA adapter (``rank``, ``alpha``, on the modules named ``targets``)
    on the float32 model in the folder ``base`` for ``steps`` steps of
    ``batch_size`` windows of ``length`` tokens of ``corpus`` (a built-in name or a
    file), keeping ``held_out`` probes' windows out (they must read ``corpus``);
    write it to ``out`` and return ``out``.  The learning rate warms up over
    ``warmup_steps`` and decays by a cosine (:func:`train_tiny`)."""
    import tempfile

    import peft
    import torch
    import transformers

    from audit.backends.peft_adapter import quiet_peft
    from audit.synthetic.training import train_tiny

    torch.manual_seed(seed)   # LoRA's A matrices are drawn at random
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(base), local_files_only=True, use_safetensors=True, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                             lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    with quiet_peft():
        wrapped: Any = peft.get_peft_model(model, config)
    with tempfile.TemporaryDirectory(prefix="lora-run-") as run:
        train_tiny(run, model=wrapped, tokenizer=tokenizer, corpus=corpus, steps=steps,
                   batch_size=batch_size, length=length, learning_rate=learning_rate,
                   warmup_steps=warmup_steps, save_steps=[], save_initial=False,
                   held_out=held_out, seed=seed, threads=threads)
    out = Path(out)
    wrapped.save_pretrained(out)           # adapter_config.json, adapter_model.safetensors
    tokenizer.save_pretrained(out)
    return out
