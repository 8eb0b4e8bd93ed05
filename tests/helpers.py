"""Shared helpers for engine tests: tiny models built from presets, event collectors."""

from __future__ import annotations

import threading

import torch

from engine.config import RunConfig
from engine.events import Event, Failed, Finished


class Collector:
    """A runner listener that keeps every event (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.first: dict[type, threading.Event] = {}

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: type) -> list:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]

    @property
    def failed(self) -> Failed | None:
        f = self.of(Failed)
        return f[-1] if f else None

    @property
    def finished(self) -> Finished | None:
        f = self.of(Finished)
        return f[-1] if f else None


def tiny(**overrides) -> RunConfig:
    base = dict(model="preset:tiny-llama", seq=32, new_tokens=6, repeats=1, warmup=0,
                sample_hz=50.0)
    base.update(overrides)
    return RunConfig(**base)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
