"""Integrations with third-party frameworks: the transformers TrainerCallback
(:mod:`.monitor`) and torch.distributed scale-out (:mod:`.distributed`).  Each
imports its framework lazily."""
