"""Distributed training under torchrun: DDP by default, FSDP2 (`fully_shard`) on request.

The same `lumenlm train` command runs single-process or under
`torchrun --nproc_per_node N`. Backend: NCCL on CUDA, gloo on CPU. Only rank 0
logs and writes files. Checkpoints always hold full (unsharded) tensors keyed by
parameter name, gathered with `torch.distributed.checkpoint.state_dict`, so they load
at any world size and as plain model dirs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from lumenlm.devices import resolve_device
from lumenlm.errors import ConfigError


@dataclass
class DistEnv:
    """Where this process sits: rank, world size and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_name: str | None) -> DistEnv:
    """Read torchrun's environment and join the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and (device_name or "").lower().startswith("cuda:"):
        raise ConfigError(
            f"--device {device_name} under torchrun: each rank takes cuda:<LOCAL_RANK>; "
            "pass --device cuda and pick GPUs with CUDA_VISIBLE_DEVICES"
        )
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        # The current device is where CUDA RNG state, streams and NCCL live: make it
        # the training device also in one process with --device cuda:N.
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, strategy: str, env: DistEnv) -> torch.nn.Module:
    """DDP, or FSDP2 with one shard unit per block plus the root, when distributed."""
    if not env.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(env.device.type, (env.world_size,))
        for block in model.blocks:  # type: ignore[attr-defined]
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def grad_sync(
    model: torch.nn.Module, strategy: str, sync: bool
) -> contextlib.AbstractContextManager[Any]:
    """Skip the gradient all-reduce on all but the last micro-step of accumulation."""
    if hasattr(model, "no_sync") and not sync:
        return model.no_sync()
    if strategy == "fsdp" and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / env.world_size
    return value


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def any_rank(flag: int, env: DistEnv) -> int:
    """Max of an int flag over ranks (all ranks must stop at the same step)."""
    if not env.enabled:
        return flag
    t = torch.tensor(
        [flag], dtype=torch.int64, device=env.device if env.device.type == "cuda" else "cpu"
    )
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any, env: DistEnv) -> list[Any]:
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded model weights on CPU (complete on rank 0; every rank must call it)."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Optimizer state keyed by parameter name, unsharded, on CPU (every rank must call it)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, osd: dict[str, Any]
) -> None:
    """Load a full, name-keyed optimizer state (shards it again under FSDP)."""
    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))
