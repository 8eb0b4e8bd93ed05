"""MemLens' headless engine: measures where a transformer model's working memory goes.

Never imports Qt. The public entry points (imported lazily, so ``import engine`` stays cheap)::

    from engine import RunConfig, execute, Runner, RunStore
    result = execute(RunConfig(model="demo", workload="generate"))
"""

from __future__ import annotations

from typing import Any

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
