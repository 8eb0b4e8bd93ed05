"""FLOP formulas for ``torch.utils.flop_counter.FlopCounterMode``, made safe and GQA-aware.

PyTorch's registry (as of 2.11-2.13) has no formula for the CPU flash-attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``), so CPU SDPA counted as 0 FLOPs; and its
SDPA formulas assert that query and key have the same number of heads, which grouped-query
attention (Llama 3, Mistral, Qwen) violates on CUDA: the assertion would abort the whole run.
This module passes FlopCounterMode a ``custom_mapping`` (its public extension point) that

* counts SDPA with key/value heads broadcast to the query heads (what the kernel computes),
* adds the CPU flash-attention forward and backward, using the same formulas,
* never raises: a formula that fails reports the op through ``on_failure`` and counts 0, and the
  run marks that module's FLOPs incomplete.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter as fc

aten = torch.ops.aten


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


def _gqa(q: tuple[int, ...], k: tuple[int, ...]) -> tuple[int, ...]:
    """Key/value shape with its heads broadcast to the query's (b, h, s, d)."""
    if len(q) == 4 and len(k) == 4 and k[1] != q[1] and k[1] and q[1] % k[1] == 0:
        return (k[0], q[1], k[2], k[3])
    return k


def _sdpa_forward(query, key, value, *args, out_val=None, **kwargs) -> int:
    q = _shape(query)
    return fc.sdpa_flop_count(q, _gqa(q, _shape(key)), _gqa(q, _shape(value)))


def _sdpa_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    q = _shape(query)
    return fc.sdpa_backward_flop_count(_shape(grad_out), q, _gqa(q, _shape(key)),
                                       _gqa(q, _shape(value)))


def _ops(*names: str) -> list[Any]:
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


_FORWARD = _ops("_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
                "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
_BACKWARD = _ops("_scaled_dot_product_efficient_attention_backward",
                 "_scaled_dot_product_flash_attention_backward",
                 "_scaled_dot_product_cudnn_attention_backward",
                 "_scaled_dot_product_flash_attention_for_cpu_backward")


def custom_mapping(on_failure: Callable[[str], None]) -> dict[Any, Callable[..., int]]:
    """Every registry formula wrapped so it cannot raise, plus the attention formulas above."""

    def safe(op: Any, fn: Callable[..., int]) -> Callable[..., int]:
        def formula(*args: Any, **kwargs: Any) -> int:
            try:
                return int(fn(*args, **kwargs))
            except Exception:  # noqa: BLE001 - a FLOP formula must never abort a run
                on_failure(str(op))
                return 0

        formula._get_raw = True  # type: ignore[attr-defined] # args are passed through as-is
        return formula

    mapping = {op: safe(op, fn) for op, fn in fc.flop_registry.items()}
    for op in _FORWARD:
        mapping[op] = safe(op, _sdpa_forward)
    for op in _BACKWARD:
        mapping[op] = safe(op, _sdpa_backward)
    return mapping


def counted_ops() -> set[Any]:
    """Ops that have a formula (registry + this module)."""
    return set(fc.flop_registry) | set(_FORWARD) | set(_BACKWARD)
