"""Train a tiny causal language model on a probe corpus, saving Trainer-style checkpoints.

The law of equi-learning is absent at initialisation and appears during pre-training
(He & Su 2024).  :func:`train_tiny` reproduces that in about a minute on one CPU
thread, so that tests and examples can audit a model that really learnt, and the
checkpoints a real training run leaves behind, without downloading anything.

What it does, in order:

1. builds a random-weight model from :func:`audit.synthetic.tiny.config` (or takes
   the ``model`` given) with ``torch.manual_seed(seed)``;
2. tokenizes the corpus as ONE stream exactly as the probe does
   (:func:`audit.corpus.tokenize_corpus`, documents joined by a blank line);
3. removes from training every token of the ``held_out`` probes' windows (the
   windows :func:`audit.corpus.token_windows` picks for their ``sequences``,
   ``length`` and ``seed``), so an audit with one of those probes measures text the
   model never trained on;
4. runs a plain torch loop: each step draws ``batch_size`` windows at random
   offsets of the remaining stream (``numpy.random.default_rng(seed)``: the data
   order is fixed by the seed), each a BOS followed by ``length - 1`` corpus tokens
   like a probe window, and takes one AdamW step on the mean next-token
   cross-entropy, with a linear warm-up and a cosine decay of the learning rate;
5. saves ``run_dir/checkpoint-<step>/`` folders in the layout transformers'
   ``Trainer`` writes: ``config.json``, ``generation_config.json`` (where the model
   has one), ``model.safetensors``, the tokenizer files and ``trainer_state.json``
   (``global_step``, ``max_steps``, ``log_history`` with the loss and learning rate
   of every step so far).  Trainer's optimizer, scheduler and RNG states are not
   written: a run cannot be resumed, only audited.

Training text and probe text: only the windows of the ``held_out`` probes are
kept out (by default the default probe's; the test fixtures add theirs).  A probe
with another seed or length reads text the model trained on: with the recipes
below the model sees each corpus token about 0.7 (Llama, GPT-NeoX), 1.5 (GPT-2),
0.2 (Mamba) or 0.4 (RWKV) times.  A model this small cannot memorise it (its loss
stays near 2 nats per byte or above), and the law is about how predictability grows
with depth, not about its level, so for these synthetic checks the overlap is
acceptable; hold the probe out when it is not.

Reproducibility: on CPU, the same arguments, torch version and thread count give
bit-identical weights and losses (the tests check two runs against each other).  A
different thread count can change the order of floating-point reductions and with
it the last bits, and over a few hundred steps the run then goes its own way, like
another seed; on a GPU, kernels need not be deterministic at all.

Measured here (seed 0, one thread on a shared 2-core CPU; audited on 48 held-out
windows of 64 tokens, 4 shards, token-id PR, init-norm; the last column on the
default probe, 96 held-out windows of 128 tokens):

===========  ===============================  =====  ==============  ==============  =======
arch         recipe (:data:`RECIPES`)         train  step 0: r, rho  end: r, rho     default
===========  ===============================  =====  ==============  ==============  =======
llama        width 128, 200 steps x 32 x 64   43 s   +0.973, 1.0072  -0.977, 0.9698  -0.992
gpt2         width 64, 400 steps x 16 x 128   49 s   +0.495, 1.0003  -0.974, 0.9843  -0.988
gemma3_text  as llama                         53 s   +0.954, 1.0088  -0.976, 0.9519  -0.970
gpt_neox     as llama                         45 s   -0.116, 0.9998  -0.997, 0.9630  -0.992
mamba        width 64, 200 steps x 16 x 32    54 s   +0.982, 1.0082  -0.972, 0.9500  -0.955
rwkv         width 64, 200 steps x 16 x 64    52 s   +0.512, 1.0046  -0.979, 0.9663  -0.990
===========  ===============================  =====  ==============  ==============  =======

At initialisation PR rises with depth (Llama, Gemma-3, Mamba; RWKV up to block 3,
then about flat: 0.932 to 0.925) or is flat (GPT-2: 0.9125 to 0.9156 over the six
blocks, GPT-NeoX: 0.8191 to 0.8283, so their r means nothing).  Other seeds and
recipes tried: the Llama recipe in 300-step runs, seeds 0-3, gave r between -0.978
and -0.994 at steps 200 and 300; at width 64 r wandered between -0.87 and -0.99 from
seed to seed and step to step, and 16 windows of 128 tokens instead of 32 of 64 gave
-0.92 to -0.98.  GPT-2 learns later (its positions are learnt from scratch): width 64
reached -0.95 to -0.99 after 400-600 steps on seeds 0-2; width 128 was slower and
weaker (-0.78 to -0.94 after 300 steps), and peak learning rates of 6e-3 and 1e-2
slowed it.  GPT-NeoX takes Llama's recipe unchanged: seeds 1 and 2 gave -0.962 and
-0.998 (their initialisations rise: r = +0.853 and +0.774, rho 1.0048 and 1.0038).
Mamba and RWKV run transformers' reference CPU paths, Python loops over the
positions; Mamba's backward pass also allocates a full-size gradient for every
position, so its step costs the square of the length (one thread: 0.4 s at width 64
with 16 windows of 32 tokens, 1.2 s with 16 of 64, 6 s at width 128 with 32 of 64),
hence width 64 and short windows for both.  Mamba, seeds 1 and 2: -0.984 and -0.967
(initialisation r = +0.982 and +0.989); 250 steps: -0.975 and -0.985 (seeds 0, 1); 8
windows of 64 tokens instead of 16 of 32: -0.978 in 80 s.  Trained on 32 tokens, it
keeps the law on 64 and 128 tokens (above; probe loss 2.06 and 1.99 nats).  RWKV,
seeds 1 and 2: -0.961 and -0.984 (initialisation r = +0.890 and +0.919); 300 steps:
-0.983 in 116 s.  Both show the law early: after 50 steps r was already -0.905 to
-0.992 (seeds 0, 1).  At width 128 (Llama, GPT-NeoX) a linear map of the normed byte
embeddings fits the bigram statistics exactly (the corpus has 100 distinct bytes), so
layer 0's PR is 0.8497 whatever the seed or the step; at width 64 it is not.  Two
torch threads on the shared machine ran 1.4 to 30 times slower than one.

torch and transformers are imported inside the functions, so importing this module
is cheap.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.corpus import load_corpus, token_windows, tokenize_corpus
from audit.spec import ProbeSpec

__all__ = [
    "DEFAULT_HELD_OUT",
    "RECIPES",
    "Recipe",
    "TrainingRun",
    "checkpoint_dir",
    "held_out_mask",
    "train_tiny",
]

DEFAULT_HELD_OUT: tuple[ProbeSpec, ...] = (ProbeSpec(),)
"""The probes kept out of training by default: the default probe (96 windows of
128 tokens, seed 0, on the built-in corpus)."""


@dataclass(frozen=True)
class Recipe:
    """The defaults of :func:`train_tiny` for one architecture: a training of about
    a minute on one CPU thread after which a 6-block byte-level model follows the
    law on seed after seed (module docstring, "Measured here")."""

    hidden: int
    """Width of the blocks (two attention heads where the family has attention)."""
    steps: int
    """Optimizer steps."""
    batch_size: int
    """Windows per step."""
    length: int
    """Tokens per window, BOS included.  A probe with longer windows reads
    positions the model never trained on: measured harmless for Llama's rotary
    positions at twice the length (the default probe's 128 tokens), fatal for
    learnt ones (GPT-2's position embeddings beyond ``length`` stay random).  Mamba
    and RWKV have no positions; Mamba trains on 32 tokens because the backward pass
    of transformers' reference scan (its CPU path) costs the square of the length,
    and measured fine at 64 and 128."""
    learning_rate: float = 3e-3
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 20
    """Steps of linear warm-up before the cosine decay."""


RECIPES: dict[str, Recipe] = {
    "llama": Recipe(hidden=128, steps=200, batch_size=32, length=64),
    "gemma3_text": Recipe(hidden=128, steps=200, batch_size=32, length=64),
    "gpt2": Recipe(hidden=64, steps=400, batch_size=16, length=128),
    "gpt_neox": Recipe(hidden=128, steps=200, batch_size=32, length=64),
    "mamba": Recipe(hidden=64, steps=200, batch_size=16, length=32),
    "rwkv": Recipe(hidden=64, steps=200, batch_size=16, length=64),
}
"""Per architecture: the defaults of :func:`train_tiny` (see :class:`Recipe`)."""


@dataclass(frozen=True, eq=False)
class TrainingRun:
    """What :func:`train_tiny` did and where it left the checkpoints."""

    run_dir: Path
    """The folder holding the ``checkpoint-<step>`` folders."""
    checkpoints: Mapping[int, Path] = field(repr=False)
    """Global step -> its checkpoint folder, in ascending step order (step 0 is the
    initialisation, when it was saved)."""
    losses: tuple[float, ...] = field(repr=False)
    """Training loss of each step 1..steps: mean next-token cross-entropy of that
    step's batch, in nats per token, before the update."""
    steps: int
    """Optimizer steps taken."""
    tokens_per_step: int
    """Predicted tokens per step: ``batch_size * (length - 1)``."""
    train_tokens: int
    """Corpus tokens training windows may use (the stream minus the held-out ones)."""
    held_out_tokens: int
    """Corpus tokens removed from training because a held-out probe window uses them."""
    seed: int
    seconds: float
    """Wall time of the whole call: importing torch the first time, tokenizing,
    building, training and saving."""

    @property
    def final(self) -> Path:
        """The last checkpoint saved."""
        return self.checkpoints[max(self.checkpoints)]

    @property
    def initial(self) -> Path | None:
        """The step-0 checkpoint (the initialisation), or None when it was not saved."""
        return self.checkpoints.get(0)


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """``run_dir/checkpoint-<step>``: the name transformers' Trainer gives the
    checkpoint saved after ``step`` optimizer steps."""
    return Path(run_dir) / f"checkpoint-{step}"


def held_out_mask(tokens: int, probes: Sequence[ProbeSpec], bos_id: int | None) -> np.ndarray:
    """bool [tokens]: True for every stream position that a window of one of
    ``probes`` reads, with windows chosen exactly as the audit chooses them
    (:func:`audit.corpus.token_windows` on a stream of ``tokens`` tokens; the BOS
    of a window is not a stream position).  A probe too large for the stream raises
    :class:`~audit.errors.CorpusError`."""
    positions = np.arange(tokens, dtype=np.int64)  # [tokens]: a stream of its own indices
    mask = np.zeros(tokens, dtype=bool)
    marker = -1 if bos_id is not None else None  # the BOS column is not a position
    for probe in probes:
        windows = token_windows(positions, probe.length, probe.sequences, probe.seed,
                                bos_id=marker)  # [sequences, length]
        used = windows[:, 1:] if marker is not None else windows
        mask[used.ravel()] = True
    return mask


def train_tiny(run_dir: str | Path, *, arch: str = "llama", layers: int = 6,
               hidden: int | None = None, model: Any = None, tokenizer: Any = None,
               corpus: str = "python-docstrings", steps: int | None = None,
               batch_size: int | None = None, length: int | None = None,
               learning_rate: float | None = None, warmup_steps: int | None = None,
               min_lr_ratio: float = 0.1, weight_decay: float = 0.1, max_grad_norm: float = 1.0,
               dropout: float = 0.0, save_steps: int | Sequence[int] | None = None,
               save_initial: bool = True, held_out: Sequence[ProbeSpec] = DEFAULT_HELD_OUT,
               seed: int = 0, threads: int | None = 1) -> TrainingRun:
    """Train a tiny causal LM on ``corpus`` and save checkpoints under ``run_dir``.

    Every argument left at None takes its value from ``RECIPES[arch]`` (for a given
    ``model``: the recipe of its ``config.model_type``; Llama's for a family that has
    none): see :class:`Recipe` for what each default is and why.

    Model: ``model`` (any transformers causal LM, trained in place) or, when None, a
    random-weight ``arch`` (one of :data:`audit.synthetic.tiny.FAMILIES`) with ``layers``
    blocks of width ``hidden`` from :func:`audit.synthetic.tiny.config`, built with
    ``seed`` and with every dropout probability of its config set to ``dropout``.
    ``tokenizer`` defaults to :func:`audit.synthetic.tiny.byte_tokenizer`; its BOS
    (when it has one) starts every training window, as it starts every probe window.

    Training: ``steps`` AdamW steps (betas 0.9/0.95, ``weight_decay`` on matrices
    only, gradients clipped to norm ``max_grad_norm``) on batches of ``batch_size``
    windows of ``length`` tokens (BOS included); the learning rate rises linearly to
    ``learning_rate`` over ``warmup_steps`` steps, then follows a cosine down to
    ``min_lr_ratio * learning_rate`` at the last step.  ``held_out`` probes (see
    :func:`held_out_mask`) must name ``corpus``; their windows' tokens are never
    trained on.

    Checkpoints: ``checkpoint-0`` (the initialisation) when ``save_initial``, then
    every ``save_steps`` steps (an int), or at the listed steps (a sequence), and
    always after the last step.  ``threads`` sets ``torch.set_num_threads`` for the
    run and restores it afterwards (None keeps the current setting): one thread is
    the fastest for models this small on a shared CPU, and the same on every
    machine, which keeps runs bit-identical across core counts.

    Returns a :class:`TrainingRun`.  Raises ``ValueError`` for a bad argument and
    :class:`~audit.errors.CorpusError` for an unusable corpus.
    """
    import torch

    from audit.synthetic import tiny

    started = time.perf_counter()
    recipe = RECIPES.get(arch if model is None else getattr(model.config, "model_type", ""),
                         RECIPES["llama"])  # an unknown arch fails in tiny.config below
    hidden = recipe.hidden if hidden is None else hidden
    steps = recipe.steps if steps is None else steps
    batch_size = recipe.batch_size if batch_size is None else batch_size
    length = recipe.length if length is None else length
    learning_rate = recipe.learning_rate if learning_rate is None else learning_rate
    warmup_steps = recipe.warmup_steps if warmup_steps is None else warmup_steps
    _check_arguments(steps=steps, batch_size=batch_size, length=length,
                     learning_rate=learning_rate, warmup_steps=warmup_steps,
                     min_lr_ratio=min_lr_ratio, seed=seed, threads=threads)
    for probe in held_out:
        if probe.corpus != corpus:
            raise ValueError(f"held-out probe reads corpus {probe.corpus!r} but training "
                             f"reads {corpus!r}: a held-out probe must name the training corpus")
        if probe.mode != "windows":
            raise ValueError(f"a held-out probe must use mode: windows, not {probe.mode!r}: "
                             "training draws windows from the corpus stream, and only a "
                             "windows probe's text can be cut out of it")
    save_at = _save_steps(save_steps, steps, save_initial)
    run_dir = Path(run_dir)

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if tokenizer is None:
            tokenizer = tiny.byte_tokenizer()
        if model is None:
            cfg = tiny.config(arch, layers, hidden)
            _set_dropout(cfg, dropout)
            model = tiny.causal_lm(cfg, seed)
        limit = getattr(model.config, "max_position_embeddings", None) or \
            getattr(model.config, "n_positions", None)
        if limit is not None and length > limit:
            raise ValueError(f"length {length} exceeds the model's {limit} positions")

        bos_id = tokenizer.bos_token_id
        text_corpus = load_corpus(corpus)
        stream = tokenize_corpus(
            text_corpus,
            lambda text: tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        excluded = held_out_mask(stream.size, held_out, bos_id)
        chunk = length - 1 if bos_id is not None else length  # corpus tokens per window
        starts = _window_starts(excluded, chunk)  # [n] int64
        if starts.size == 0:
            raise ValueError(f"corpus {corpus!r} has no window of {chunk} tokens outside the "
                             f"held-out probes")
        data_rng = np.random.default_rng(seed)
        offsets = np.arange(chunk, dtype=np.int64)  # [chunk]

        torch.manual_seed(seed)  # dropout, if any
        optimizer = _adamw(torch, model, learning_rate, weight_decay)
        schedule = _Schedule(learning_rate, warmup_steps, steps, min_lr_ratio)
        stream_t = torch.from_numpy(stream)
        log: list[dict[str, float | int]] = []
        losses: list[float] = []
        checkpoints: dict[int, Path] = {}
        epoch_tokens = starts.size + chunk - 1  # roughly the trainable stream
        device = next(model.parameters()).device
        state = {"max_steps": steps, "logging_steps": 1, "train_batch_size": batch_size,
                 "save_steps": save_steps if isinstance(save_steps, int) else None}

        if 0 in save_at:
            checkpoints[0] = _save(model, tokenizer, checkpoint_dir(run_dir, 0), state, log)
        model.train()
        for step in range(1, steps + 1):
            picks = data_rng.integers(0, starts.size, size=batch_size)  # [batch]
            index = torch.from_numpy(starts[picks, None] + offsets)  # [batch, chunk]
            ids = stream_t[index]  # [batch, chunk]
            if bos_id is not None:
                ids = torch.cat([torch.full((batch_size, 1), bos_id, dtype=ids.dtype), ids], 1)
            ids = ids.to(device)  # [batch, length]
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = model(input_ids=ids, labels=ids).loss  # HF shifts the labels by one
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
            log.append({"epoch": round(step * batch_size * chunk / epoch_tokens, 4),
                        "grad_norm": float(grad_norm), "learning_rate": lr,
                        "loss": losses[-1], "step": step})
            if step in save_at:
                model.eval()
                checkpoints[step] = _save(model, tokenizer, checkpoint_dir(run_dir, step),
                                          state, log)
                model.train()
        model.eval()
    finally:
        torch.set_num_threads(previous_threads)

    return TrainingRun(run_dir=run_dir, checkpoints=dict(sorted(checkpoints.items())),
                       losses=tuple(losses), steps=steps,
                       tokens_per_step=batch_size * (length - 1),
                       train_tokens=int((~excluded).sum()), held_out_tokens=int(excluded.sum()),
                       seed=seed, seconds=time.perf_counter() - started)


# --------------------------------------------------------------------------- helpers

def _check_arguments(**values: Any) -> None:
    minimum = {"steps": 1, "batch_size": 1, "length": 2, "warmup_steps": 0}
    for name, low in minimum.items():
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not values["learning_rate"] > 0:
        raise ValueError(f"learning_rate must be > 0, got {values['learning_rate']!r}")
    if not 0 <= values["min_lr_ratio"] <= 1:
        raise ValueError(f"min_lr_ratio must lie in [0, 1], got {values['min_lr_ratio']!r}")
    if isinstance(values["seed"], bool) or not isinstance(values["seed"], int):
        raise ValueError(f"seed must be an integer, got {values['seed']!r}")
    threads = values["threads"]
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads must be None or an integer >= 1, got {threads!r}")


def _save_steps(save_steps: int | Sequence[int] | None, steps: int, initial: bool) -> set[int]:
    if save_steps is None:
        at = set()
    elif isinstance(save_steps, int) and not isinstance(save_steps, bool):
        if save_steps < 1:
            raise ValueError(f"save_steps must be >= 1, got {save_steps}")
        at = set(range(save_steps, steps + 1, save_steps))
    else:
        at = set(save_steps)
        bad = sorted(s for s in at if not isinstance(s, int) or not 0 <= s <= steps)
        if bad:
            raise ValueError(f"save_steps {bad} lie outside 0..{steps}")
    at.add(steps)
    if initial:
        at.add(0)
    return at


def _set_dropout(cfg: Any, p: float) -> None:
    """Every dropout probability the config knows (names differ by family)."""
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout",
                 "hidden_dropout", "summary_first_dropout"):
        if hasattr(cfg, name):
            setattr(cfg, name, p)


def _window_starts(excluded: np.ndarray, chunk: int) -> np.ndarray:
    """Every start s whose window stream[s : s + chunk] avoids the excluded tokens."""
    if excluded.size < chunk:
        return np.zeros(0, dtype=np.int64)
    hits = np.concatenate([[0], np.cumsum(excluded, dtype=np.int64)])  # [tokens + 1]
    inside = hits[chunk:] - hits[:-chunk]  # [tokens - chunk + 1]: excluded tokens per window
    return np.flatnonzero(inside == 0).astype(np.int64)


def _adamw(torch: Any, model: Any, lr: float, weight_decay: float) -> Any:
    """AdamW with weight decay on matrices only (not on norms' scales or biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


@dataclass(frozen=True)
class _Schedule:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then a cosine down to
    ``floor * peak`` at step ``steps``."""

    peak: float
    warmup: int
    steps: int
    floor: float

    def __call__(self, step: int) -> float:
        if step <= self.warmup:
            return self.peak * step / self.warmup
        span = max(1, self.steps - self.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * (step - self.warmup) / span))
        return self.peak * (self.floor + (1 - self.floor) * cosine)


def _save(model: Any, tokenizer: Any, folder: Path, state: dict[str, Any],
          log: list[dict[str, float | int]]) -> Path:
    """One checkpoint folder; ``trainer_state.json`` holds ``state`` (the run's
    settings), the step and the log so far, under Trainer's key names."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)  # config.json, generation_config.json, model.safetensors
    tokenizer.save_pretrained(folder)
    trainer_state = {"global_step": log[-1]["step"] if log else 0,
                     "epoch": log[-1]["epoch"] if log else 0.0,
                     **state, "log_history": list(log)}
    (folder / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
    return folder
