"""Start the engine process as soon as the window is up, so its imports (torch, transformers)
and warm-up happen while the user reads the window, not when they press Run.

The engine runs in its own process (see ``engine.server``): its imports and its work never hold
the window's interpreter lock. Starting it returns at once.
"""

from __future__ import annotations

import os

ENGINE_MODE_VARIABLE = "MEMLENS_ENGINE"  # "thread": run the engine in the window's process


def engine_in_process() -> bool:
    return os.environ.get(ENGINE_MODE_VARIABLE, "").strip().lower() == "thread"


def start() -> None:
    """Start the shared engine process (does nothing when it runs or when in thread mode)."""
    if engine_in_process():
        return
    from engine.server import shared

    shared().start()


def stop() -> None:
    """Stop the shared engine process, if one was started."""
    import engine.server as server

    if server._shared is not None:
        # Nothing is lost by not waiting long: runs are saved atomically by the engine.
        server._shared.close(timeout=1.0)
