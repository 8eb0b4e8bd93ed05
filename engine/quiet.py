"""Keeping optional libraries' import-time announcements out of MemLens' output."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

# torchao logs every CUDA extension it cannot load (its mxfp8 and cutlass kernels, on a CPU-only
# machine), and registering its enums with torch's pytree logs a deprecation; peft, bitsandbytes
# and quanto do the like. transformers imports torchao whenever it is installed, so every command
# printed them, whether or not it used torchao.
_LOGGERS = ("torchao", "torch.utils._pytree", "peft", "bitsandbytes", "optimum.quanto")


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Import optional libraries without their announcements of kernels they cannot load: those
    lines say nothing about this run (a technique that needs a missing kernel fails, or is
    refused, with its own message)."""
    levels = {n: logging.getLogger(n).level for n in _LOGGERS}
    try:
        for n in _LOGGERS:
            logging.getLogger(n).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
