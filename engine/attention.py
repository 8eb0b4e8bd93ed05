"""Attention maps: probabilities per layer and head, captured with eager attention.

Only the eager implementation materialises the probabilities (SDPA and flash kernels never do),
so capturing switches the model to eager for one extra forward and switches it back. What that
cost (time and peak bytes against the same forward with the run's own implementation) is measured
and recorded beside the maps, so the user sees the price of looking.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch
import torch.nn.functional as F

from .accounting import TensorAccountant
from .errors import Cancelled
from .events import AttentionMaps
from .workloads import Inputs, sync

MAX_SIDE = 256  # maps larger than this are average-pooled to MAX_SIDE x MAX_SIDE


def _set_impl(model: torch.nn.Module, impl: str) -> bool:
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        return False
    setter(impl)
    return True


def _measured_forward(model: torch.nn.Module, inputs: Inputs, device: torch.device,
                      output_attentions: bool, collect: dict[int, Any] | None = None
                      ) -> tuple[Any, float, int]:
    """One forward of batch row 0 under tensor accounting: (output, ms, peak live bytes).

    With ``collect``, a hook on every attention module takes the probabilities it returns,
    pools them to at most MAX_SIDE² per head at once and keeps only that (``collect[layer]``),
    so the full maps of one layer at a time exist, never those of every layer."""
    acc = TensorAccountant()
    for w in list(model.parameters()) + list(model.buffers()):
        acc.track(w, None, "weights")
    acc.track(inputs.input_ids, None, "inputs")
    handles = []
    if collect is not None:
        from .layers import select_layers

        attention = [t for t in select_layers(model) if t.kind == "attention"]
        for order, tracked in enumerate(attention):
            index = tracked.layer_index if tracked.layer_index is not None else order

            def hook(_module: Any, _args: Any, output: Any, index: int = index) -> None:
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if isinstance(weights, torch.Tensor) and weights.dim() == 4:
                    collect[index] = _pool_row0(weights)

            handles.append(tracked.module.register_forward_hook(hook))
    sync(device)
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), acc:
            kwargs: dict[str, Any] = {"input_ids": inputs.input_ids[:1]}
            if output_attentions:
                kwargs["output_attentions"] = True
            out = model(**kwargs)
    finally:
        for h in handles:
            h.remove()
    sync(device)
    return out, (time.perf_counter() - t0) * 1e3, acc.peak


def _pool_row0(weights: torch.Tensor) -> Any:
    """Batch row 0 of (batch, heads, q, k) probabilities, pooled head by head (so at most one
    head's float32 copy exists at a time) to float16 on the CPU."""
    row = weights[0].detach()
    return torch.stack([downsample(row[h:h + 1].float())[0].cpu()
                        for h in range(row.shape[0])]).to(torch.float16).numpy()


def downsample(attn: torch.Tensor, side: int | None = None) -> torch.Tensor:
    """(heads, q, k) -> at most (heads, side, side) by average pooling; rows sum to 1."""
    side = side or MAX_SIDE
    heads, q, k = attn.shape
    if q <= side and k <= side:
        return attn
    pooled = F.adaptive_avg_pool2d(attn.unsqueeze(0).float(), (min(q, side), min(k, side)))[0]
    # Adaptive windows overlap when q is not a multiple of side: renormalise so each stored row is
    # again a distribution over key bins.
    return pooled / pooled.sum(-1, keepdim=True).clamp_min(1e-12)


def capture_attention(model: torch.nn.Module, inputs: Inputs, device: torch.device,
                      cancel: threading.Event | None = None
                      ) -> tuple[AttentionMaps | None, dict[str, Any]]:
    """Capture batch row 0's attention maps. Returns the event (or None) and the record."""
    original = getattr(getattr(model, "config", None), "_attn_implementation", None) or "unknown"
    info: dict[str, Any] = {"captured": False, "original_implementation": original,
                            "implementation_used": "eager"}
    if cancel is not None and cancel.is_set():
        raise Cancelled()
    _, base_ms, base_peak = _measured_forward(model, inputs, device, output_attentions=False)
    switched = False
    if original != "eager":
        try:
            switched = _set_impl(model, "eager")
        except (ValueError, TypeError) as exc:
            info["reason"] = f"the model cannot switch to eager attention ({exc})"
            return None, info
        if not switched:
            info["reason"] = "the model has no set_attn_implementation"
            return None, info
    collected: dict[int, Any] = {}
    method = "hooks on the attention modules, pooled layer by layer"
    try:
        out, ms, peak = _measured_forward(model, inputs, device, output_attentions=False,
                                          collect=collected)
        n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if not collected or (n_layers and len(collected) != n_layers):
            # The attention modules do not return their probabilities: ask the model for all
            # of them at once (every layer's full maps are alive together at the end).
            collected = {}
            method = "output_attentions (every layer's full maps at once)"
            out, ms, peak = _measured_forward(model, inputs, device, output_attentions=True)
            attentions = getattr(out, "attentions", None)
            if not attentions or any(a is None for a in attentions):
                info["reason"] = "the model returned no attention probabilities"
                return None, info
            collected = {i: _pool_row0(a) for i, a in enumerate(attentions)}
    finally:
        if switched:
            _set_impl(model, original)
    maps = dict(sorted(collected.items()))
    seq = int(inputs.input_ids.shape[-1])
    side = next(iter(maps.values())).shape[-1]
    tokens = list(inputs.tokens[:seq]) if inputs.tokens else []
    if tokens and side < seq:  # one label per pooled bin: the first token of the bin
        tokens = [tokens[int(i * seq / side)] for i in range(side)]
    info.update({
        "captured": True,
        "layers": len(maps),
        "heads": int(next(iter(maps.values())).shape[0]),
        "tokens": seq,
        "stored_side": side,
        "method": method,
        "downsampled_from": seq if side < seq else None,
        "cost": {
            "forward_ms": ms, "plain_forward_ms": base_ms,
            "peak_bytes": peak, "plain_peak_bytes": base_peak,
            "note": f"capturing used eager attention ({method}) for one forward "
                    f"(batch row 0) instead of {original}",
        },
    })
    event = AttentionMaps(maps=maps, tokens=tuple(tokens),
                          downsampled_from=seq if side < seq else None)
    return event, info
