"""Synthetic models for trusting a gate: everything here runs on a CPU in seconds.

- :mod:`audit.synthetic.tiny`: tiny transformers language models built in-process
  from configs (Llama-family, GPT-2, Gemma-3) with a byte-level tokenizer, saved
  offline as safetensors folders that every backend reads.

Importing this package imports neither torch nor transformers; each module
imports them inside its functions.
"""
