"""Events the runner sends to its listener (the CLI, the GUI worker, a test): small, frozen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .results import LayerStats, RunResult


@dataclass(frozen=True)
class Progress:
    stage: str  # load | optimize | warmup | memory | timing | flops | generate | train | save
    fraction: float | None = None  # 0..1 within the stage, or None when unknown
    message: str = ""


@dataclass(frozen=True)
class Sample:
    """One telemetry sample. Missing values are None (not available), never 0."""

    t: float  # seconds since the run started
    phase: str = ""
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    gpu_used_bytes: int | None = None
    gpu_total_bytes: int | None = None
    gpu_process_bytes: int | None = None
    gpu_util_percent: float | None = None
    gpu_power_w: float | None = None
    gpu_temp_c: float | None = None
    gpu_sm_clock_mhz: float | None = None
    torch_allocated_bytes: int | None = None
    torch_reserved_bytes: int | None = None


@dataclass(frozen=True)
class LayerStatsReady:
    """Per-layer figures as soon as a pass has produced them (``final`` on the last update)."""

    layers: tuple[LayerStats, ...]
    final: bool = False


@dataclass(frozen=True)
class AttentionMaps:
    """Captured attention probabilities: layer index -> float16 array (heads, q, k), batch 0."""

    maps: dict[int, Any] = field(default_factory=dict)
    tokens: tuple[str, ...] = ()
    downsampled_from: int | None = None


@dataclass(frozen=True)
class Finished:
    result: RunResult


@dataclass(frozen=True)
class Failed:
    kind: str
    message: str
    hint: str = ""


Event = Progress | Sample | LayerStatsReady | AttentionMaps | Finished | Failed
