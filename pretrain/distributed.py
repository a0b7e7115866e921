"""Single process by default; DistributedDataParallel when launched by torchrun (RANK/WORLD_SIZE in the env).

gloo on CPU, NCCL on GPU. Only rank 0 writes files and prints; every rank reads checkpoint.pth at resume, so
multi-node runs need the output dir on a shared filesystem (as SimSiam/DINO assume).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # long timeout: rank 0 scans the data folder (headers of every image) while the others wait
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2),
                                **({"device_id": dev} if use_cuda else {}))
    return Dist(rank, world, local_rank, dev)


def broadcast_object(obj, d: Dist):
    """rank 0's `obj` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank if `flag` is true on any rank (ranks must agree on stopping, or DDP deadlocks)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
