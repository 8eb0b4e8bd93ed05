"""The model's module tree as a record: parameters, bytes, dtypes and devices of every module, and
which optimizations changed it.

"Changed" is observed, not declared: :class:`ChangeTracker` takes a signature of every module
(class, own parameters and buffers with dtype, shape, device and tensor type, trainability,
checkpointing flag, hook counts) before the optimizations and after each one, and names a module
as touched by an optimization when its signature differs, when it appeared, or (for removals) on
its parent. An optimization that changes no module (autocast, a KV-cache policy, an attention
implementation switched in the config) is recorded as touching the whole run, with no module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers import local_numel, module_weight_tensors, packed_elements, unique_nbytes

# Module attributes that some optimizations flip without changing any tensor.
_FLAGS = ("gradient_checkpointing", "sliding_window", "is_causal")


def _tensor_sig(t: torch.Tensor) -> tuple:
    return (type(t).__name__, str(t.dtype), tuple(t.shape), str(t.device),
            bool(getattr(t, "requires_grad", False)))


def _signature(module: nn.Module) -> tuple:
    own = []
    for name, p in module.named_parameters(recurse=False):
        own.append(("p", name, _tensor_sig(p)))
    for name, b in module.named_buffers(recurse=False):
        if b is not None:
            own.append(("b", name, _tensor_sig(b)))
    flags = tuple((f, repr(getattr(module, f))) for f in _FLAGS if hasattr(module, f))
    config = getattr(module, "config", None)
    window = getattr(config, "sliding_window", None) if config is not None else None
    hooks = (len(module._forward_hooks), len(module._forward_pre_hooks),
             len(getattr(module, "_state_dict_hooks", ())))
    return (type(module).__name__, tuple(own), flags, window, hooks,
            getattr(module.forward, "__func__", module.forward).__qualname__
            if hasattr(module, "forward") else "")


def signatures(model: nn.Module) -> dict[str, tuple]:
    return {name: _signature(mod) for name, mod in model.named_modules()}


class ChangeTracker:
    """Call :meth:`after` with an optimization id after each one is applied."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._last = signatures(model)
        self.touched: dict[str, list[str]] = {}  # module name -> optimization ids, in order
        self.whole_run: list[str] = []  # optimizations that changed no module
        # optimizations that say they changed modules whose weights and structure stay as they
        # were (the attention implementation: how they run) -> how many they name
        self.behaviour_only: dict[str, int] = {}

    def after(self, opt_id: str, says_touched: int = 0) -> list[str]:
        """The modules ``opt_id`` changed; ``says_touched``: how many it says it changed."""
        now = signatures(self.model)
        changed = [n for n, sig in now.items() if self._last.get(n) != sig]
        # A module that came with its replaced parent (int8's _packed_params, LoRA's lora_A)
        # is part of that change, not one more module changed: counted once, as the
        # optimization's own "modules changed" counts it.
        changed = [n for n in changed
                   if n in self._last or (n.rsplit(".", 1)[0] if "." in n else "") not in changed]
        for gone in (n for n in self._last if n not in now):
            parent = gone.rsplit(".", 1)[0] if "." in gone else ""
            if parent in now and parent not in changed:
                changed.append(parent)
        for name in changed:
            ids = self.touched.setdefault(name, [])
            if opt_id not in ids:
                ids.append(opt_id)
        if not changed and says_touched:
            self.behaviour_only[opt_id] = says_touched
        elif not changed:
            self.whole_run.append(opt_id)
        self._last = now
        return changed


def _dtypes(tensors: list[torch.Tensor]) -> list[str]:
    seen: list[str] = []
    for t in tensors:
        d = str(t.dtype).replace("torch.", "")
        if d not in seen:
            seen.append(d)
    return seen


def module_tree(model: nn.Module, tracker: ChangeTracker | None = None) -> dict[str, Any]:
    """``{"modules": [row, ...], "whole_run": [opt ids], "behaviour_only": {opt id: modules}}``,
    rows in ``named_modules`` order.

    A row: ``name`` ("" is the model), ``type`` (class name), ``class_path``, ``depth``, ``parameters`` (elements, including
    children), ``own_parameters``, ``weights_bytes`` (every tensor the module and its children
    hold as weights, counted once), ``dtypes`` and ``devices`` of those tensors, ``trainable``
    (parameters with ``requires_grad``, including children), ``touched_by`` and ``tied_to`` (the
    modules that hold, first, weights this one shares: the head tied to the embeddings).
    """
    touched = tracker.touched if tracker is not None else {}
    # A tied weight (the head sharing the embeddings') belongs to the first module that holds
    # it; a later one says it is tied, so that children's figures do not seem to add up to
    # more than their parent's (the weights, counted once, are in the first).
    # Parameters, buffers and tensor attributes keep their identity (packed weights are
    # unpacked afresh on every call, and a freed tensor's id is reused: they cannot be tied).
    own = {name: list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
           + [v for v in vars(mod).values() if isinstance(v, torch.Tensor)]
           for name, mod in model.named_modules()}
    first_holder: dict[int, str] = {}
    for name, tensors in own.items():
        for t in tensors:
            first_holder.setdefault(id(t), name)
    rows = []
    for name, mod in model.named_modules():
        tied = sorted({first_holder[id(t)] for t in own[name] if first_holder[id(t)] != name})
        tensors = module_weight_tensors(mod, recurse=True)
        params = list(mod.parameters())
        rows.append({
            "name": name,
            "type": type(mod).__name__,
            "class_path": f"{type(mod).__module__}.{type(mod).__qualname__}",
            "depth": 0 if not name else name.count(".") + 1,
            # (packed quantized weights count, as in the run's total: parameter_count)
            "parameters": sum(local_numel(p) for p in params) + packed_elements(mod, True),
            "own_parameters": sum(local_numel(p) for p in mod.parameters(recurse=False))
            + packed_elements(mod),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "weights_bytes": unique_nbytes(tensors),
            "dtypes": _dtypes(tensors),
            "devices": sorted({str(t.device) for t in tensors}),
            "touched_by": list(touched.get(name, [])),
            "tied_to": tied,
        })
    return {"modules": rows, "whole_run": list(tracker.whole_run) if tracker else [],
            "behaviour_only": dict(tracker.behaviour_only) if tracker else {}}


def tied_notes(tree: dict[str, Any] | None, rows: list[str]) -> list[str]:
    """One sentence per row of the per-layer table (``rows``: their names) whose weights are
    another module's (a head tied to the embeddings shows 0 B of weights, which reads as a
    missing figure without it)."""
    out = []
    for module in (tree or {}).get("modules") or []:
        tied = module.get("tied_to") or []
        if module.get("name") in rows and tied:
            out.append(f"{module['name']} shares its weights with {', '.join(tied)}: they are "
                       "counted once, there")
    return out

