"""How a model is spread over processes, decided once when ``watch()`` starts.

>>> from torch import nn
>>> layout_of(nn.Linear(2, 2)).kind
'local'
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from .._errors import GradscopeError

__all__ = ["Layout", "is_sharded", "layout_of", "sync_pending", "world"]

Kind = Literal["local", "ddp", "fsdp2"]


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (an FSDP2 parameter or gradient)."""
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "_local_tensor")


def world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class Layout:
    """What the watch must know about a model's distribution.

    ``kind`` is ``"local"`` (one process, or DataParallel), ``"ddp"`` (every rank holds the whole
    gradient, averaged by DDP) or ``"fsdp2"`` (every rank holds one shard of each gradient: the
    watch combines per-rank statistics with one all_gather per pass, over ``group``).
    """

    kind: Kind
    group: Any = None  # the process group FSDP2 shards over (None: the default group)


def _fsdp1(module: nn.Module) -> bool:
    # A model wrapped in FSDP1 means torch.distributed.fsdp was imported: never import it here
    # (seconds on a first watch(), and it registers torch libraries that must not load twice).
    fsdp = sys.modules.get("torch.distributed.fsdp")
    wrapper = getattr(fsdp, "FullyShardedDataParallel", None)
    return wrapper is not None and any(isinstance(m, wrapper) for m in module.modules())


def layout_of(module: nn.Module) -> Layout:
    """The layout of ``module``; a :class:`GradscopeError` for one gradscope cannot follow."""
    if _fsdp1(module):
        raise GradscopeError(
            "watch() cannot follow FullyShardedDataParallel (FSDP1): its parameters are views "
            "into one flat parameter that autograd never sees, so no per-parameter hook fires, "
            "with or without use_orig_params=True. Shard the model with FSDP2 instead "
            "(from torch.distributed.fsdp import fully_shard; fully_shard(block) for each "
            "block, then fully_shard(model)), which watch() follows on every rank"
        )
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return Layout("ddp")
    sharded = [(n, p) for n, p in module.named_parameters() if is_sharded(p)]
    if not sharded:
        return Layout("local")
    plain = [n for n, p in module.named_parameters() if not is_sharded(p)]
    if plain:
        raise GradscopeError(
            f"watch() found FSDP2 (DTensor) parameters next to {len(plain)} plain ones "
            f"({', '.join(plain[:3])}{'...' if len(plain) > 3 else ''}); gradscope follows a "
            f"model sharded as a whole: call fully_shard(model) on the root module too"
        )
    meshes = {  # fully_shard makes a new (equal) default mesh per call
        (p.device_mesh.device_type, tuple(p.device_mesh.mesh.flatten().tolist())): p.device_mesh  # type: ignore[attr-defined]
        for _, p in sharded
    }
    if len(meshes) != 1:
        raise GradscopeError(
            f"watch() found FSDP2 parameters on {len(meshes)} different device meshes; "
            f"gradscope follows one 1-D mesh (plain fully_shard): shard every module on one mesh"
        )
    mesh = next(iter(meshes.values()))
    if mesh.ndim != 1:
        raise GradscopeError(
            f"watch() follows FSDP2 on a 1-D device mesh, not on a {mesh.ndim}-D one "
            f"(HSDP or tensor parallelism: {tuple(mesh.shape)}); watch a 1-D fully_shard model, "
            f"or gather the gradients yourself"
        )
    placements = {str(p.placements) for _, p in sharded}  # type: ignore[attr-defined]
    if placements - {"(Shard(dim=0),)"}:
        raise GradscopeError(
            f"watch() follows FSDP2 parameters sharded on dim 0, not {sorted(placements)}; "
            f"use fully_shard's default shard_placement_fn"
        )
    return Layout("fsdp2", group=mesh.get_group())


def sync_pending(module: nn.Module, layout: Layout) -> bool | None:
    """Whether the coming backward pass synchronises gradients across ranks (None: local).

    DDP decides in forward (``no_sync()`` sets ``require_backward_grad_sync``); FSDP2 in
    backward (``set_requires_gradient_sync(False)`` clears each group's ``reduce_grads``).
    """
    if layout.kind == "ddp":
        return bool(getattr(module, "require_backward_grad_sync", True))
    if layout.kind == "fsdp2":
        for sub in module.modules():
            state = getattr(sub, "_get_fsdp_state", None)
            group = getattr(state(), "_fsdp_param_group", None) if state is not None else None
            if group is not None:
                return bool(group.reduce_grads)
        return True
    return None
