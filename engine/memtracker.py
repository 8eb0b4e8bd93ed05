"""The one adapter to PyTorch's private ``MemTracker`` (``torch.distributed._tools.mem_tracker``).

MemLens uses it as an independent cross-check of its own tensor accounting (tests on CPU, the GPU
check on CUDA). It is a private API: its behaviour is pinned by ``tests/test_memtracker.py`` so an
upgrade that changes its numbers fails loudly instead of silently changing ours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def available() -> bool:
    try:
        from torch.distributed._tools.mem_tracker import MemTracker  # noqa: F401
    except ImportError:
        return False
    return True


def peak_bytes(fn: Callable[[], Any], *external: Any) -> dict[str, int]:
    """Run ``fn`` under MemTracker; returns the peak snapshot per category (bytes, all devices).

    ``external`` are modules, optimizers or tensors created before the call (weights, inputs):
    MemTracker only sees what it is told about or what is created inside it. The key ``Total``
    holds the peak itself.
    """
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    if external:
        tracker.track_external(*external)
    with tracker:
        fn()
    snap = tracker.get_tracker_snapshot("peak")
    out: dict[str, int] = {}
    for per_device in snap.values():
        for key, value in per_device.items():
            name = getattr(key, "value", str(key))
            out[name] = out.get(name, 0) + int(value)
    return out
