"""Errors the engine reports: each names its kind, what went wrong and what to do about it."""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    """What kind of failure a run ended with (stable strings: they are saved in run files)."""

    NOT_FOUND = "not_found"
    INVALID_MODEL = "invalid_model"
    CORRUPT_CHECKPOINT = "corrupt_checkpoint"
    UNSAFE_CHECKPOINT = "unsafe_checkpoint"
    REMOTE_CODE = "remote_code"
    OFFLINE = "offline"
    TOO_LARGE = "too_large"
    INVALID_WORKLOAD = "invalid_workload"
    NOT_APPLICABLE = "not_applicable"
    OUT_OF_MEMORY = "out_of_memory"
    CANCELLED = "cancelled"
    NO_DEVICE = "no_device"
    STORE = "store"
    ENVIRONMENT = "environment"  # the installed packages are missing or broken, not the input
    INTERNAL = "internal"


class MemLensError(Exception):
    """A failure with a user-facing message and a hint naming the fix."""

    def __init__(self, kind: ErrorKind | str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class Cancelled(MemLensError):
    """Raised inside hooks when the user cancels; the runner turns it into a 'cancelled' result."""

    def __init__(self) -> None:
        super().__init__(ErrorKind.CANCELLED, "The run was cancelled.", "Start it again when ready.")
