"""Data-parallel training on PyTorch's own engine: `torchrun --nproc_per_node=N -m visionlab train ...`.

gloo on CPU, nccl on CUDA. Rank 0 writes every file; all ranks hold the same model (DDP keeps it in sync).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns ranks and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                 timeout=datetime.timedelta(minutes=30))
    return Dist(rank, world, local), device


def cleanup(d: Dist) -> None:
    if d.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when distributed, else the model itself."""
    if not d.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def sum_dict(values: dict[str, float], d: Dist) -> dict[str, float]:
    """Sum each float over ranks (e.g. per-epoch loss sums and sample counts)."""
    if not d.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    tdist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def broadcast(obj, d: Dist):
    """Rank 0's ``obj`` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, d: Dist) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    tdist.all_gather_object(out, obj)
    return out
