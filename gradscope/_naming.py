"""Parameter names: unwrap DDP and torch.compile wrappers, resolve tied aliases, suggest names.

Every public function that takes ``params=`` (a module, a name -> tensor mapping, or any
iterable of tensors or (name, tensor) pairs, such as ``net.parameters()``) goes through
:func:`named_parameters` so the same parameter gets the same name everywhere in gradscope, and
through :func:`reject_meta` where it needs values.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ._errors import GradscopeError, UnknownParameterError

__all__ = [
    "ParamNames",
    "describe",
    "named_parameters",
    "reject_meta",
    "suggest",
    "unsharded_aliases",
    "unwrap_module",
]

ParamsLike = (
    nn.Module
    | Mapping[str, torch.Tensor]
    | Iterable[torch.Tensor]
    | Iterable[tuple[str, torch.Tensor]]
)


def describe(obj: object) -> str:
    """A short description of ``obj`` for error messages: its type and, for tensors, shape."""
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)} ({obj.dtype})"
    text = repr(obj)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(obj).__name__} {text}"


def unwrap_module(module: nn.Module) -> nn.Module:
    """The user's own module inside DDP, DataParallel and torch.compile wrappers."""
    seen = 0
    while seen < 16:
        seen += 1
        inner = getattr(module, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            module = inner
            continue
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
            continue
        break
    return module


def unsharded_aliases(module: nn.Module, names: dict[int, str]) -> dict[int, str]:
    """FSDP2: ``id`` of each parameter's unsharded copy (what autograd sees) -> its name.

    ``names`` maps ``id`` of the sharded (DTensor) parameters to their names. FSDP2 runs forward
    and backward on unsharded copies it keeps per parameter; empty for any other model.
    """
    aliases: dict[int, str] = {}
    for sub in module.modules():
        get_state = getattr(sub, "_get_fsdp_state", None)
        group = getattr(get_state(), "_fsdp_param_group", None) if get_state else None
        for fsdp_param in getattr(group, "fsdp_params", ()):
            name = names.get(id(getattr(fsdp_param, "sharded_param", None)))
            unsharded = getattr(fsdp_param, "_unsharded_param", None)
            if name is not None and unsharded is not None:
                aliases[id(unsharded)] = name
    return aliases


@dataclass
class ParamNames:
    """Parameters by name, with tied parameters (one tensor, several names) resolved to one entry.

    ``canonical`` maps every name, aliases included, to the first name the module gives that
    tensor; ``params`` holds one tensor per canonical name, in module order.
    """

    params: dict[str, torch.Tensor] = field(default_factory=dict)
    canonical: dict[str, str] = field(default_factory=dict)

    def aliases(self, name: str) -> list[str]:
        """Every name of the tensor that ``name`` refers to, the canonical one first."""
        key = self.resolve(name)
        return [alias for alias, target in self.canonical.items() if target == key]

    def resolve(self, name: str) -> str:
        """The canonical name for ``name``; raise a helpful error for an unknown one."""
        try:
            return self.canonical[name]
        except KeyError:
            raise UnknownParameterError(
                f"no parameter named {name!r}{suggest(name, self.canonical)}"
            ) from None

    def name_of(self, tensor: torch.Tensor) -> str | None:
        for name, param in self.params.items():
            if param is tensor:
                return name
        return None


def suggest(name: str, known: Iterable[str]) -> str:
    """A ' (did you mean ...?)' suffix naming the closest known names, or the list of names."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if not known:
        return "; there are no parameters at all"
    shown = ", ".join(repr(k) for k in known[:8])
    more = f" and {len(known) - 8} more" if len(known) > 8 else ""
    return f"; known names: {shown}{more}"


def named_parameters(params: ParamsLike, *, argument: str = "params") -> ParamNames:
    """Resolve ``params`` to a :class:`ParamNames`.

    ``params`` is a module (its parameter names), a mapping of name -> tensor, or an iterable
    (list, generator such as ``net.parameters()``) of tensors, named by position ``"[0]"``,
    ``"[1]"``..., or of (name, tensor) pairs such as ``net.named_parameters()``.

    >>> net = nn.Linear(2, 1)
    >>> list(named_parameters(net).params)
    ['weight', 'bias']
    >>> list(named_parameters(net.parameters()).params)
    ['[0]', '[1]']
    """
    if isinstance(params, nn.Module):
        pairs: Iterable[tuple[str, torch.Tensor]] = unwrap_module(params).named_parameters(
            remove_duplicate=False
        )
    elif isinstance(params, Mapping):
        pairs = params.items()
        for name in params:
            if not isinstance(name, str):
                raise GradscopeError(
                    f"{argument}= mapping keys are parameter names (str), got {describe(name)}"
                )
    elif isinstance(params, (torch.Tensor, str, bytes)) or not isinstance(params, Iterable):
        raise GradscopeError(
            f"{argument}= takes an nn.Module, a mapping of name -> tensor, or an iterable of "
            f"tensors or (name, tensor) pairs, not {describe(params)}; pass the model itself "
            f"(e.g. {argument}=net), net.parameters() or dict(net.named_parameters())"
            + (f", or [{argument}] for a single tensor" if isinstance(params, torch.Tensor) else "")
        )
    else:
        pairs = _pairs(params, argument)
    names = ParamNames()
    by_id: dict[int, str] = {}
    for name, tensor in pairs:
        if not isinstance(tensor, torch.Tensor):
            raise GradscopeError(f"{argument}= entry {name!r} is {describe(tensor)}, not a tensor")
        first = by_id.setdefault(id(tensor), name)
        names.canonical[name] = first
        if first == name:
            names.params[name] = tensor
    return names


def _pairs(items: Iterable[object], argument: str) -> list[tuple[str, torch.Tensor]]:
    """Tensors, named by position, or (name, tensor) pairs, from any iterable (read once)."""
    pairs: list[tuple[str, torch.Tensor]] = []
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            pairs.append((f"[{i}]", item))
        elif (
            isinstance(item, tuple | list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], torch.Tensor)
        ):
            pairs.append((item[0], item[1]))
        else:
            hint = (
                "; pass the model itself, or nn.ModuleList([...]) of several modules"
                if isinstance(item, nn.Module)
                else ""
            )
            raise GradscopeError(
                f"{argument}= entry {i} is {describe(item)}: an iterable passed as {argument}= "
                f"must hold tensors or (name, tensor) pairs{hint}"
            )
    return pairs


def reject_meta(tensors: Mapping[str, torch.Tensor], caller: str, what: str = "parameters") -> None:
    """Raise when any tensor is on the meta device: it has a shape but no values."""
    meta = [name for name, tensor in tensors.items() if tensor.is_meta]
    if meta:
        shown = ", ".join(meta[:3]) + (f" and {len(meta) - 3} more" if len(meta) > 3 else "")
        raise GradscopeError(
            f"{caller}: {len(meta)} of {len(tensors)} {what} are on the meta device "
            f"({shown}): they have shapes but no values, so there are no gradients to look at; "
            "materialize the model first (model.to_empty(device='cpu') and initialise it, or "
            "load a checkpoint), or build it outside torch.device('meta')"
        )
