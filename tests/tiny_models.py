"""The tests' name for :mod:`audit.synthetic.tiny` (tiny models built in-process)."""

from audit.synthetic.tiny import *  # noqa: F401,F403
from audit.synthetic.tiny import (BOS_ID, BYTE_VOCAB, SPECIAL_TOKENS, TINY_LAYERS,  # noqa: F401
                                  TINY_WIDTH, VOCAB_SIZE, byte_tokenizer, causal_lm, config,
                                  save_tiny_model)
