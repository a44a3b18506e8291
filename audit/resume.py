"""A damaged copy of a model measured from the damaged block on (mutation testing).

A mutant of :mod:`audit.synthetic.damage` whose damage starts at block p (its
``block``) has blocks 0..p − 1 and the embedding of the model it was made from, so
its layers 0..p are the unmutated model's, bit for bit.  :func:`audit.mutate.mutate`
therefore keeps, from the unmutated model's pass, each batch's layer p (its raw
hidden state, 28 MB for SmolLM2's default probe) and its logits
(:class:`LogitStore`), and measures each mutant with a :class:`ResumedCollector`:
the backend runs blocks p.. on the kept state
(:meth:`~audit.backends.torch_backend.TorchBackend.forward_from`), the statistics
are accumulated for layers p + 1.. only, and the measurement takes layers 0..p from
the unmutated one.  The mutant's logits from that same pass meet the stored
unmutated logits in the divergence comparison, so the unmutated model never runs
again.

That shortcut equals the full pass only where the base model feeds its input
embeddings to the first block unchanged; :func:`resume_mismatch` checks it bit for
bit on one batch of the unmutated model before anything relies on it, and a model
where it fails (GPT-2 adds its position embeddings) has its mutants measured in full.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import BackendError, EquilawError
from audit.internal.files import temporary_folder
from audit.pipeline import Collector, Measurement


class LogitStore:
    """Each batch's logits of one pass, float32, in a file of a temporary folder
    (SmolLM2's default probe: 2.4 GB, read back from the page cache where memory
    allows), so that later passes compare with them without running that model again.
    ``with LogitStore() as store``: :meth:`append` each batch in order, ``store[i]``
    batch i (read-only); the folder is removed when the block ends."""

    def __init__(self, parent: str | Path | None = None) -> None:
        self.folder = temporary_folder(Path(parent or tempfile.gettempdir()), "equilaw-logits-")
        self.path = self.folder / "logits.f32"
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._parts: list[tuple[int, tuple[int, ...]]] = []
        self._size = 0

    def append(self, logits: np.ndarray) -> None:
        array = np.ascontiguousarray(logits, dtype=np.float32)
        self._file.write(memoryview(array).cast("B"))
        self._file.flush()
        self._parts.append((self._size, array.shape))
        self._size += array.nbytes

    def __len__(self) -> int:
        return len(self._parts)

    def __getitem__(self, index: int) -> np.ndarray:
        offset, shape = self._parts[index]
        return np.memmap(self.path, dtype=np.float32, mode="r", offset=offset, shape=shape)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LogitStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def resume_mismatch(backend: Any, ids: np.ndarray, positions: tuple[int, ...]
                    ) -> dict[int, str]:
    """For each block of ``positions``: why resuming ``backend``'s model there
    (:meth:`~audit.backends.torch_backend.TorchBackend.forward_from` on the full
    pass's state) does not give the full pass's later layers, loss and logits of
    ``ids`` bit for bit; positions where it does are left out."""
    full = backend.forward(ids, loss=True, logits=True)
    if full.logits is not None:  # a backend that reuses its logits array overwrites it
        full = dataclasses.replace(full, logits=full.logits.copy())
    why: dict[int, str] = {}
    for position in positions:
        try:
            part = backend.forward_from(position, full.hidden[position], ids, loss=True,
                                        logits=True)
        except (EquilawError, TypeError, ValueError, RuntimeError) as exc:
            why[position] = f"{type(exc).__name__}: {exc}"
            continue
        pairs = [(f"layer {position + k}", part.hidden[k], full.hidden[position + k])
                 for k in range(1, len(part.hidden))]
        pairs += [("the probe loss", part.token_nll, full.token_nll),
                  ("the logits", part.logits, full.logits)]
        for what, got, want in pairs:
            if (got is None) != (want is None) or (
                    got is not None and (got.shape != want.shape or not np.array_equal(got, want))):
                diff = (float(np.max(np.abs(got - want)))
                        if got is not None and want is not None and got.shape == want.shape
                        else float("nan"))
                why[position] = f"{what} differs from the full pass (max |diff| {diff:.3g})"
                break
    return why


class ResumedCollector(Collector):
    """A :class:`~audit.pipeline.Collector` of a mutant whose layers 0..``position``
    are ``base``'s (the unmutated model's measurement on the same probe): each batch
    runs from ``states[i]`` (layer ``position`` of batch i, as the unmutated pass
    gave it), statistics are kept for layers ``position`` + 1.. only, and
    :meth:`finish` puts ``base``'s layers in front."""

    def __init__(self, spec: Any, backend: Any, position: int, states: list[np.ndarray],
                 base: Measurement, logits: bool = False) -> None:
        super().__init__(spec, backend=backend, logits=logits)
        self.first_layer = position + 1
        self.position, self.states, self.base = position, states, base
        self._batch = 0

    def _forward(self, ids: np.ndarray) -> Any:
        state = self.states[self._batch]
        self._batch += 1
        return self.backend.forward_from(self.position, state, ids, loss=self.want_loss,
                                         logits=self.logits)

    def finish(self) -> Measurement:
        tail = super().finish()
        base, keep = self.base, self.first_layer
        if tail.shard_ids != base.shard_ids or self._batch != len(self.states):
            raise BackendError("the resumed pass saw other batches or shards than the "
                               "unmutated one", model=self.spec.name)
        loo = None
        if tail.leave_one_out is not None:
            loo = np.concatenate([base.leave_one_out[:, :keep], tail.leave_one_out], axis=1)
        return dataclasses.replace(
            tail, stats=None, pr=np.concatenate([base.pr[:keep], tail.pr]), leave_one_out=loo,
            ranks=np.concatenate([base.ranks[:keep], tail.ranks]),
            conditions=np.concatenate([base.conditions[:keep], tail.conditions]))
