"""Scale-out: one audit split across processes or machines with ``torch.distributed``.

Every process (rank) opens the same spec and reads the same probe, and runs the
model over its share of the sequences. The share is by jackknife shard: rank r takes
the sequences of shards s with s mod world = r, so a shard's sums come whole from one
rank. Each rank accumulates its own statistics and probe-loss sums. Rank 0 then
receives every other rank's arrays and merges them.
:meth:`LayerStats.merge <audit.stats.layer_stats.LayerStats.merge>` converts sums taken around
different shifts exactly, and matches class slots by token id, which is why arrays
are gathered and merged rather than summed with ``all_reduce``. Rank 0 then fits
and judges as a single process does. PR and its standard errors equal the
single-process run to float64 rounding (``tests/test_distributed.py``).

What goes over the wire: each rank's ``LayerStats.to_arrays()`` and its loss sums,
written with ``numpy.savez`` into bytes and sent as a uint8 tensor
(``send``/``recv`` to rank 0, one rank at a time, so rank 0 holds at most two sets
of statistics). No pickle is involved, in either direction.

The process group comes from the environment ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``), or from one
already initialised. Backends: ``nccl`` when CUDA is available, else ``gloo``.
With CUDA, each rank runs on ``cuda:LOCAL_RANK``. A model too large for one device
can instead load across a machine's devices with ``model.device_map: auto``.

torch is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.errors import EquilawError

if TYPE_CHECKING:
    from audit.report.data import Report
    from audit.spec import Spec
    from audit.stats.layer_stats import LayerStats

__all__ = ["Part", "init_from_environment", "run"]


@dataclass(frozen=True)
class Part:
    """This process's share of an audit: ``rank`` of ``world`` processes."""

    rank: int
    world: int
    device: str = "cpu"
    """Where the process group's tensors live (``cuda:N`` for nccl)."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise EquilawError(f"rank {self.rank} is not in 0..{self.world - 1}")

    def owns(self, shards: np.ndarray) -> np.ndarray:
        """bool [b]: which of these sequences (by their shard) this rank runs."""
        return np.asarray(shards) % self.world == self.rank

    def reduce(self, stats: LayerStats, loss_sum: np.ndarray, loss_count: np.ndarray
               ) -> tuple[LayerStats, np.ndarray, np.ndarray] | None:
        """Send this rank's sums to rank 0; on rank 0, return everyone's merged
        (statistics, loss sums, loss counts), elsewhere None."""
        if self.world == 1:
            return stats, loss_sum, loss_count
        import torch
        import torch.distributed as dist

        if getattr(stats, "spilled", False):
            raise EquilawError("statistics spilled to disk (too large for memory) cannot be "
                               "sent between ranks yet: run this model in one process, or with "
                               "fewer shards so that they stay in memory")
        if self.rank != 0:
            payload = _pack(stats, loss_sum, loss_count)
            dist.send(torch.tensor([payload.size], dtype=torch.int64, device=self.device), dst=0)
            dist.send(torch.from_numpy(payload).to(self.device), dst=0)
            return None
        for source in range(1, self.world):
            size = torch.zeros(1, dtype=torch.int64, device=self.device)
            dist.recv(size, src=source)
            buffer = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
            dist.recv(buffer, src=source)
            other, other_sum, other_count = _unpack(buffer.cpu().numpy())
            stats = stats.merge(other)
            loss_sum = loss_sum + other_sum
            loss_count = loss_count + other_count
        return stats, loss_sum, loss_count


def _pack(stats: LayerStats, loss_sum: np.ndarray, loss_count: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    arrays = {f"stats.{k}": v for k, v in stats.to_arrays().items()}
    np.savez(buffer, loss_sum=loss_sum, loss_count=loss_count, **arrays)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy()


def _unpack(payload: np.ndarray) -> tuple[LayerStats, np.ndarray, np.ndarray]:
    from audit.stats.layer_stats import LayerStats

    with np.load(io.BytesIO(payload.tobytes()), allow_pickle=False) as npz:
        arrays = {k[len("stats."):]: npz[k] for k in npz.files if k.startswith("stats.")}
        return LayerStats.from_arrays(arrays), npz["loss_sum"], npz["loss_count"]


def init_from_environment() -> Part:
    """This process's :class:`Part`: from an initialised default process group,
    else from ``torchrun``'s environment (initialising the group), else rank 0 of 1."""
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return Part(0, 1)
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
            return Part(0, 1)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return Part(dist.get_rank(), dist.get_world_size(), device)


def run(spec: Spec, part: Part | None = None, progress: Any = None) -> Report | None:
    """Audit ``spec`` with this process as ``part`` (default:
    :func:`init_from_environment`); rank 0 returns the report, other ranks None.
    With CUDA, a spec whose ``model.device`` is ``cuda`` or ``auto`` runs each rank
    on its own ``cuda:LOCAL_RANK``."""
    from audit.pipeline import collect, judge

    part = part or init_from_environment()
    if part.device.startswith("cuda") and spec.model.device in ("cuda", "auto") \
            and spec.model.device_map is None:
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, device=part.device))
    measurement = collect(spec, progress=progress, part=part)
    return None if measurement is None else judge(measurement)
