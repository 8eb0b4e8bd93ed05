"""Which modules MemLens reports on, and which tracked module owns each weight.

Tracked: the embeddings, every transformer block with its attention and MLP sub-blocks, the final
norm, the LM head, and any other top-level module that holds weights (rotary tables, poolers), so
that every parameter and buffer of the model has an owner row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .results import LOSS_ROW  # defined where torch is not imported (the guide, the window)

_ATTN_NAMES = ("attn", "attention", "self_attn", "self_attention")
_MLP_NAMES = ("mlp", "ffn", "feed_forward", "feedforward", "intermediate", "output", "block_sparse_moe")


@dataclass
class TrackedModule:
    name: str
    kind: str  # embedding | block | attention | mlp | norm | head | other
    parent: str | None
    depth: int
    module: nn.Module
    layer_index: int | None = None  # block index (attention: its KV-cache layer)


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The transformer's block list: the largest ModuleList of one repeated class."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            classes = {type(m) for m in mod}
            if len(classes) == 1 and (best is None or len(mod) > len(best[1])):
                n_params = sum(p.numel() for p in mod.parameters())
                if n_params:
                    best = (name, mod)
    return best


def _kind_of(name: str, mod: nn.Module) -> str:
    leaf = name.rsplit(".", 1)[-1].lower()
    cls = type(mod).__name__.lower()
    if "rotary" in leaf or "rotary" in cls:
        return "other"
    if isinstance(mod, nn.Embedding) or "embed" in leaf or "embed" in cls or leaf in ("wte", "wpe"):
        return "embedding"
    if "norm" in cls or leaf.startswith("ln") or "norm" in leaf:
        return "norm"
    if leaf in ("lm_head", "head", "cls", "classifier", "score") or "head" in cls:
        return "head"
    return "other"


def select_layers(model: nn.Module, loss: bool = False) -> list[TrackedModule]:
    """The tracked modules of ``model`` in execution-like order (embeddings, blocks, head).

    With ``loss`` (a training workload), the loss gets a row of its own after the head (see
    :func:`loss_row`)."""
    tracked = _select_layers(model)
    if loss:
        tracked.append(loss_row(model))
    return tracked


def _select_layers(model: nn.Module) -> list[TrackedModule]:
    found = _blocks(model)
    tracked: list[TrackedModule] = []
    block_prefix = found[0] if found else None
    block_ancestors: set[str] = set()
    if block_prefix:
        parts = block_prefix.split(".")
        block_ancestors = {".".join(parts[:i]) for i in range(len(parts) + 1)}

    def visit(prefix: str, mod: nn.Module) -> None:
        for child_name, child in mod.named_children():
            fqn = f"{prefix}.{child_name}" if prefix else child_name
            if fqn == block_prefix:
                for i, (bname, block) in enumerate(child.named_children()):
                    bfqn = f"{fqn}.{bname}"
                    tracked.append(TrackedModule(bfqn, "block", None, 0, block, i))
                    for sub_name, sub in block.named_children():
                        low = sub_name.lower()
                        cls = type(sub).__name__.lower()
                        if low in _ATTN_NAMES or "attention" in cls:
                            kind = "attention"
                        elif low in _MLP_NAMES or "mlp" in cls or "feedforward" in cls:
                            kind = "mlp"
                        else:
                            continue
                        # Weights, not only parameters: quantized modules keep packed ones.
                        if not module_weight_tensors(sub, recurse=True):
                            continue
                        tracked.append(TrackedModule(f"{bfqn}.{sub_name}", kind, bfqn, 1, sub, i))
            elif fqn in block_ancestors:
                visit(fqn, child)
            elif any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
                tracked.append(TrackedModule(fqn, _kind_of(fqn, child), None, 0, child))

    visit("", model)
    # Weights owned directly by the root or a block ancestor (rare) get an "other" row.
    for anc in sorted(block_ancestors):
        mod = model.get_submodule(anc) if anc else model
        direct = list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
        if direct:
            tracked.append(TrackedModule(anc or "(root)", "other", None, 0, mod))
    # Order: as the modules first appear in named_modules (embeddings before blocks before head).
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    tracked.sort(key=lambda t: order.get(t.name if t.name != "(root)" else "", -1))
    return tracked


# -- the loss as a row ----------------------------------------------------------------------------------


def is_causal_lm(model: nn.Module) -> bool:
    return hasattr(model, "lm_head") or type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def synthetic_loss(hidden: torch.Tensor) -> torch.Tensor:
    """The training loss of a model without an LM head: the mean square of the last hidden state
    (it exercises the same backward; runs say so)."""
    return hidden.float().pow(2).mean()


class LossScope(nn.Module):
    """A training step's loss function run as a module, so the hooks that measure every row (its
    activations, what it saves for the backward, its transient peak, its share of the peak and its
    latency) measure the loss too.

    A language model's loss is often the largest transient of its training step: transformers
    upcasts the logits to float32 and cross-entropy keeps a log-softmax of them, and the backward
    makes their gradients, each batch x seq x vocab. Computed in the model's own forward but in no
    submodule of it, these bytes used to show only as "unattributed". The scope is held outside
    the model's children (not in ``named_modules()`` or the state dict).

    Tensor arguments are passed to the module positionally (by name in ``_names``) so that module
    trackers register gradient hooks on them: ``ModTracker`` sees only positional inputs, and
    without one on the logits it would leave the loss "running" for the whole backward."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *tensors: Any, _names: tuple[str, ...] = (), _n_args: int = 0,
                **kwargs: Any) -> Any:
        args = tensors[:_n_args]
        kwargs.update(zip(_names, tensors[_n_args:]))
        return self.fn(*args, **kwargs)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` through the module (the function installed in the model)."""
        names = tuple(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
        tensors = [kwargs.pop(k) for k in names]
        return self(*args, *tensors, _names=names, _n_args=len(args), **kwargs)


def _loss_host(model: nn.Module) -> nn.Module | None:
    """The transformers model whose forward computes the loss through ``self.loss_function``
    (under a peft wrapper, the wrapped model)."""
    for m in model.modules():
        if any("loss_function" in vars(c) for c in type(m).__mro__) and is_causal_lm(m):
            return m
    return None


def loss_row(model: nn.Module) -> TrackedModule:
    """The training loss's row, installing its :class:`LossScope` on first use (idempotent).

    A causal LM's own loss function (``PreTrainedModel.loss_function``, called by its forward
    when labels are given) is routed through the scope by the setter transformers provides for
    it, so the model computes the same loss the same way. Other models train on
    :func:`synthetic_loss`, which ``workloads.train_step`` calls through the same scope."""
    scope = model.__dict__.get("_memlens_loss")
    if not isinstance(scope, LossScope):
        host = _loss_host(model) if is_causal_lm(model) else None
        installed = getattr(host.__dict__.get("_loss_function"), "__self__", None) if host else None
        if isinstance(installed, LossScope):  # a wrapper (peft) of a model that has one
            scope = installed
        elif host is not None:
            scope = LossScope(host.loss_function)
            host.loss_function = scope.call  # a bound method, not a module: not a child
        else:
            scope = LossScope(synthetic_loss)
        model.__dict__["_memlens_loss"] = scope  # not through Module.__setattr__: not a child
    return TrackedModule(LOSS_ROW, "loss", None, 0, scope)


def owned_submodules(tracked: TrackedModule, tracked_names: set[str]) -> list[nn.Module]:
    """``tracked.module`` and its descendants, except those under another tracked module (a
    tracked child owns its own subtree)."""
    out = []
    for name, sub in tracked.module.named_modules():
        parts = name.split(".") if name else []
        if any(f"{tracked.name}." + ".".join(parts[:i]) in tracked_names
               for i in range(1, len(parts) + 1)):
            continue
        out.append(sub)
    return out


def weight_owners(model: nn.Module, tracked: list[TrackedModule]) -> dict[str, str | None]:
    """Map each parameter/buffer name to the innermost tracked module that holds it."""
    names = sorted((t.name for t in tracked), key=len, reverse=True)
    owners: dict[str, str | None] = {}
    for pname, _ in list(model.named_parameters()) + list(model.named_buffers()):
        owner = None
        for n in names:
            if n != "(root)" and pname.startswith(n + "."):
                owner = n
                break
        if owner is None and "(root)" in names:
            owner = "(root)"
        owners[pname] = owner
    return owners


def module_weight_tensors(module: nn.Module, recurse: bool = False) -> list[torch.Tensor]:
    """Parameters, buffers and tensors that are weights without being parameters.

    Quantized modules keep packed weights outside ``parameters()`` (e.g. ``quantize_dynamic``'s
    ``_packed_params``); they are unpacked here so their bytes are counted (the unpacked int8
    size: fbgemm's packed layout is not visible from Python).
    """
    tensors = list(module.parameters(recurse=recurse)) + list(module.buffers(recurse=recurse))
    mods = module.modules() if recurse else [module]
    for m in mods:
        # Plain tensor attributes are memory the module holds too (e.g. the weight that
        # torch.nn.utils.prune recomputes from weight_orig and weight_mask).
        tensors.extend(v for v in vars(m).values()
                       if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter))
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            try:
                w, b = packed._weight_bias()
                tensors.extend(t for t in (w, b) if isinstance(t, torch.Tensor))
            except Exception:  # noqa: BLE001 - an unknown packing: counted as missing, see warnings
                pass
    return tensors


def local_numel(p: torch.Tensor) -> int:
    """A tensor's elements on this rank: a tensor-parallel shard (DTensor) counts its local
    elements, as its bytes do (its numel() is the whole tensor's)."""
    local = p.to_local() if hasattr(p, "to_local") and hasattr(p, "device_mesh") else p
    return local.numel()


def packed_elements(module: nn.Module, recurse: bool = False) -> int:
    """Elements of the packed weights and biases quantized modules keep outside
    ``parameters()`` (``quantize_dynamic``'s ``_packed_params``), which count as parameters."""
    total = 0
    for m in (module.modules() if recurse else [module]):
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            try:
                total += sum(t.numel() for t in packed._weight_bias()
                             if isinstance(t, torch.Tensor))
            except Exception:  # noqa: BLE001 - an unknown packing (its bytes are flagged apart)
                pass
    return total


def parameter_count(model: nn.Module) -> int:
    """Elements of the model's weights: its parameters and the packed weights and biases that
    quantized modules keep outside ``parameters()`` (``quantize_dynamic`` turned 2.53 M of the
    demo's parameters into 396 K). Shared parameters count once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            # (a shard's local elements: rank 0 of 2 claimed more parameters than the model has)
            total += local_numel(p)
    return total + packed_elements(model, recurse=True)


def weights_dtype(model: nn.Module) -> str | None:
    """The floating-point dtype holding most of the model's parameter elements, as the model
    now is (after a cast, bfloat16 though it was loaded in float32); ``None`` if it has none."""
    counts: dict[torch.dtype, int] = {}
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) not in seen and p.dtype.is_floating_point:
            seen.add(id(p))
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    if not counts:
        return None
    return str(max(counts, key=lambda d: counts[d])).replace("torch.", "")


def unique_nbytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storages counted once; wrapper
    subclasses such as torchao's quantized weights counted by their inner tensors)."""
    return sum(storage_nbytes(tensors).values())


def storage_nbytes(tensors: list[torch.Tensor]) -> dict[Any, int]:
    """The distinct storages behind ``tensors``, each with its bytes (as :func:`unique_nbytes`
    counts them); merged across calls made at one moment, shared storages still count once."""
    from .accounting import leaves, storage_key

    out: dict[Any, int] = {}
    for t in (leaf for x in tensors for leaf in leaves(x)):
        if t.is_meta:
            out[("meta", id(t))] = t.numel() * t.element_size()
            continue
        key = storage_key(t)
        if key not in out:
            out[key] = t.untyped_storage().nbytes()
    return out
