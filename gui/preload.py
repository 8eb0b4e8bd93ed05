"""Import the engine's heavy libraries (torch, transformers) in a background thread once the
window is up, so the first Run does not spend seconds importing.

Imports hold the interpreter lock for long stretches (loading torch's shared libraries), which
briefly slows the UI thread: better while the user reads the window than during a measured run.
Two threads importing transformers' lazy modules at once can race, so the engine worker calls
:func:`wait` before it starts a run.
"""

from __future__ import annotations

import gc
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
        from engine.models import preimport_architecture

        preimport_architecture("demo")  # the model the window opens on
        # Loading once warms transformers' caches (its checkpoint conversion rules compile
        # hundreds of regular expressions on a first load); the 10 MiB model is dropped at once.
        from engine.config import RunConfig
        from engine.models import load_model

        del load_model(RunConfig(model="demo")).model

        # Resolve the lazy attributes the engine touches first (each imports a module).
        _ = (transformers.AutoConfig, transformers.AutoModelForCausalLM,
             transformers.AutoTokenizer)
        # A full garbage collection holds the interpreter lock while it scans every object:
        # ~80 ms with torch and transformers loaded (more on a busy machine), and the engine
        # collects before each measurement. Frozen objects (the libraries, the window) are
        # skipped by later collections, which then take well under a millisecond.
        gc.collect()
        gc.freeze()
    except Exception as exc:  # the run will report the real problem with its own message
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start


def freeze_imports(model: str) -> None:
    """Import ``model``'s architecture code and freeze what is alive (see ``_preload``). Called
    in the engine's thread just before a run, so a newly imported architecture does not make the
    run's garbage collections long. Freezing keeps library objects (which live forever anyway)
    out of later scans; it frees nothing and collects nothing."""
    try:
        from engine.models import preimport_architecture

        preimport_architecture(model)
    except Exception:  # the run reports an unknown or broken model with its own message
        pass
    gc.freeze()


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
