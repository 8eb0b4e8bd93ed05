"""Import the engine's heavy libraries (torch, transformers) in a background thread once the
window is up, so the first Run does not spend seconds importing.

Imports hold the interpreter lock for long stretches (loading torch's shared libraries), which
briefly slows the UI thread: better while the user reads the window than during a measured run.
Two threads importing transformers' lazy modules at once can race, so the engine worker calls
:func:`wait` before it starts a run.
"""

from __future__ import annotations

import threading
import time

_thread: threading.Thread | None = None
_lock = threading.Lock()
seconds: float | None = None  # how long the preload took (None: not run or not finished)
error: str | None = None


def _preload() -> None:
    global seconds, error
    start = time.perf_counter()
    try:
        import torch  # noqa: F401
        import transformers

        import engine.runner  # noqa: F401

        # Resolve the lazy attributes the engine touches first (each imports a module).
        _ = (transformers.AutoConfig, transformers.AutoModelForCausalLM,
             transformers.AutoTokenizer)
    except Exception as exc:  # the run will report the real problem with its own message
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start


def start() -> None:
    """Start the preload once (later calls do nothing)."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_preload, name="memlens-preload", daemon=True)
            _thread.start()


def wait(timeout: float | None = None) -> bool:
    """Block until the preload (if started) has finished; ``True`` when none is running."""
    thread = _thread
    if thread is None:
        return True
    thread.join(timeout)
    return not thread.is_alive()
