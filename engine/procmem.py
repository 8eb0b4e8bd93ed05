"""Process memory: RSS now and its high-water mark, resettable on Linux.

Linux keeps the peak resident set size (``VmHWM`` in ``/proc/self/status``) and resets it when
``5`` is written to ``/proc/self/clear_refs``; that gives an exact per-phase RSS peak instead of a
sampled one. Elsewhere the peak is ``None`` (not measured) and callers fall back to samples.
"""

from __future__ import annotations

import os

import psutil

_STATUS = "/proc/self/status"
_CLEAR = "/proc/self/clear_refs"


def rss_bytes() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


def reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark; False where the platform cannot."""
    try:
        with open(_CLEAR, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_peak_bytes() -> int | None:
    """The RSS high-water mark since the last reset (Linux), or None."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
