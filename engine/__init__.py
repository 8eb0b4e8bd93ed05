"""MemLens' headless engine: measures where a transformer model's working memory goes.

Never imports Qt. The public entry points (imported lazily, so ``import engine`` stays cheap)::

    from engine import RunConfig, execute, Runner, RunStore
    result = execute(RunConfig(model="demo", workload="generate"))
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it from here


def version_text() -> str:
    """``memlens 0.1.0 · torch 2.13.0 · transformers 5.x · PySide6 6.11.3 · Python 3.11.7``:
    from the installed packages' metadata, without importing them (``--version`` stays
    instant); a package not installed is left out."""
    import importlib.metadata
    import platform

    parts = [f"memlens {__version__}"]
    for name in ("torch", "transformers", "PySide6-Essentials", "pyqtgraph"):
        try:
            parts.append(f"{name.split('-')[0]} {importlib.metadata.version(name)}")
        except Exception:  # noqa: BLE001 - not installed, or a frozen app without metadata
            pass
    parts.append(f"Python {platform.python_version()}")
    return " · ".join(parts)


__all__ = ["RunConfig", "RunResult", "LayerStats", "Totals", "execute", "Runner", "RunStore",
           "MemLensError", "ErrorKind"]

_WHERE = {
    "RunConfig": "config", "RunResult": "results", "LayerStats": "results", "Totals": "results",
    "execute": "runner", "Runner": "runner", "RunStore": "store",
    "MemLensError": "errors", "ErrorKind": "errors",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
