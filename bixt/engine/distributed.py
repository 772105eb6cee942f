"""Process-group setup and the few collectives the engine needs.

Works the same under ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set: DDP, NCCL on GPU,
gloo on CPU) and as a plain single process (world size 1, no process group at all).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  #: True if :func:`init_distributed` created the process group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is present, else ``cpu``."""
    if spec == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"trainer.device={spec!r} but CUDA is not available; use trainer.device=auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_spec: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (idempotent); single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_spec, local_rank)
    if world_size <= 1:
        return DistEnv(device=device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        owns = True
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device, owns_group=owns)


def cleanup(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensors: dict[str, torch.Tensor], env: DistEnv) -> dict[str, torch.Tensor]:
    """Sum each tensor over ranks (returns CPU tensors; the inputs are left untouched)."""
    if not env.distributed:
        return {k: v.detach().cpu() for k, v in tensors.items()}
    out = {}
    for k, v in tensors.items():
        # NCCL only reduces CUDA tensors; gloo only CPU ones
        t = v.detach().to(env.device if env.device.type == "cuda" else "cpu").clone()
        if not t.is_floating_point() and t.dtype != torch.int64:
            t = t.to(torch.int64)
        dist.all_reduce(t)
        out[k] = t.cpu()
    return out


def broadcast_object(obj: Any, env: DistEnv, src: int = 0) -> Any:
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()
