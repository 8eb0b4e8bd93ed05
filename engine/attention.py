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
                      output_attentions: bool) -> tuple[Any, float, int]:
    acc = TensorAccountant()
    for w in list(model.parameters()) + list(model.buffers()):
        acc.track(w, None, "weights")
    acc.track(inputs.input_ids, None, "inputs")
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad(), acc:
        kwargs: dict[str, Any] = {"input_ids": inputs.input_ids[:1]}
        if output_attentions:
            kwargs["output_attentions"] = True
        out = model(**kwargs)
    sync(device)
    return out, (time.perf_counter() - t0) * 1e3, acc.peak


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
    try:
        out, ms, peak = _measured_forward(model, inputs, device, output_attentions=True)
    finally:
        if switched:
            _set_impl(model, original)
    attentions = getattr(out, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        info["reason"] = "the model returned no attention probabilities"
        return None, info
    seq = attentions[0].shape[-1]
    maps = {i: downsample(a[0].detach().float().cpu()).to(torch.float16).numpy()
            for i, a in enumerate(attentions)}
    side = next(iter(maps.values())).shape[-1]
    tokens = list(inputs.tokens[:seq]) if inputs.tokens else []
    if tokens and side < seq:  # one label per pooled bin: the first token of the bin
        tokens = [tokens[int(i * seq / side)] for i in range(side)]
    info.update({
        "captured": True,
        "layers": len(maps),
        "heads": int(attentions[0].shape[1]),
        "tokens": seq,
        "stored_side": side,
        "downsampled_from": seq if side < seq else None,
        "cost": {
            "forward_ms": ms, "plain_forward_ms": base_ms,
            "peak_bytes": peak, "plain_peak_bytes": base_peak,
            "note": f"capturing used eager attention with output_attentions for one forward "
                    f"(batch row 0) instead of {original}",
        },
    })
    event = AttentionMaps(maps=maps, tokens=tuple(tokens),
                          downsampled_from=seq if side < seq else None)
    return event, info
