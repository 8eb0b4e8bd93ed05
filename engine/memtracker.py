"""The one adapter to PyTorch's private ``MemTracker`` (``torch.distributed._tools.mem_tracker``).

MemLens uses it as an independent cross-check of its own tensor accounting (tests on CPU, the GPU
check on CUDA). It is a private API: its behaviour is pinned by ``tests/test_memtracker.py`` so an
upgrade that changes its numbers fails loudly instead of silently changing ours. It also holds
the naming that every ``ModTracker`` MemLens runs (its own module tracker, MemTracker's and
FSDPMemTracker's) uses for modules outside the model (``distinct_outside_names``).
"""

from __future__ import annotations

import types
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
    name_outside_modules_apart(tracker)
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


def distinct_outside_names(tracker: Any, mod: Any) -> str:
    """``ModTracker._get_mod_name`` giving each module outside the model a name of its own.

    ``ModTracker`` names a module that is not a submodule of one it has seen by its class alone.
    Since transformers 5.25 (through the ``kernels`` package) functions such as Llama's
    ``apply_rotary_pos_emb`` are modules: a shared instance that calls the attention layer's
    private instance of the same class, neither of them a submodule. Both were named ``Func``,
    so the inner call looked like a module re-entering itself: ModTracker warned "the module
    hierarchy tracking maybe be messed up", and where warnings are errors its forward hook then
    raised "The Module hierarchy tracking is wrong". The first instance of a class keeps the
    class's name (a loss row, ``layers.LossScope``, is found by it); later ones get ``#2``,
    ``#3``…"""
    known = tracker._known_modules
    if mod not in known:
        base = type(mod).__name__
        taken = set(known.values())
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}#{n}"
        known[mod] = name
    from torch.distributed._tools.mod_tracker import ModTracker

    return ModTracker._get_mod_name(tracker, mod)


def name_outside_modules_apart(tracker: Any) -> None:
    """Give a ``MemTracker``'s (or ``FSDPMemTracker``'s) own ``ModTracker`` the naming of
    ``distinct_outside_names``."""
    inner = getattr(tracker, "_mod_tracker", None)
    if inner is not None:
        inner._get_mod_name = types.MethodType(distinct_outside_names, inner)
