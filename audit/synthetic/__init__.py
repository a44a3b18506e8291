"""Synthetic models for trusting a gate: everything here runs on a CPU in seconds
to a couple of minutes.

- :mod:`audit.synthetic.features`: per-layer features and integer targets with a
  planted law (PR_1, ρ, noise, sample size) and broken variants of one layer
  (learns nothing, loses information, scrambled), judged by the same code as a
  real audit.  Pure numpy.
- :mod:`audit.synthetic.tiny`: tiny transformers language models built in-process
  from configs (Llama-family, GPT-2, Gemma-3) with a byte-level tokenizer, saved
  offline as safetensors folders that every backend reads.
- :mod:`audit.synthetic.damage`: damage operators on a transformers model
  (re-initialise, zero, swap or repeat blocks, scale a block's MLP or attention
  output or a norm, add weight noise), each returning a damaged copy and naming
  the hidden state where the damage first shows.
- :mod:`audit.synthetic.training`: trains a tiny model on the built-in corpus with
  a fixed seed, saving ``checkpoint-N`` folders as transformers' Trainer does.

Importing this package imports neither torch nor transformers; each module
imports them inside its functions.
"""
