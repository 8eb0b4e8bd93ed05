"""The one bridge between the engine and Qt: runs ``engine.runner.execute`` and emits signals.

:class:`EngineWorker` lives in a ``QThread`` (see :mod:`gui.controller`). Its ``run`` slot calls
the engine in that thread; the engine's listener (which may also be called from the engine's
sampler thread) turns events into Qt signals, which reach the GUI thread queued. Samples and
layer updates are throttled to at most :data:`MAX_EMITS_PER_S` emits per second; samples are
batched into lists so none is lost.

Why not superqt's ``thread_worker``: it suits generator-style jobs whose yields arrive in the
worker's own thread, but the engine reports through a callback that is also called from its
sampler thread, and needs per-event-type throttling with loss-free batching of samples; a small
QObject with explicit signals does exactly that and keeps the signal order testable.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from engine.events import AttentionMaps, Failed, Finished, LayerStatsReady, Progress, Sample

# Events the window shows as they arrive: a sweep's points, a fit's answers, the guide so far.
ITEM_EVENTS = ("PointDone", "FitDone", "GuideEntryDone")

MAX_EMITS_PER_S = 30.0
UNKNOWN_FRACTION = -1.0  # ``progress`` carries this when the engine does not know the fraction

ExecuteFn = Callable[..., Any]


def _default_execute(config: Any, listener: Any = None, cancel: Any = None,
                     store: Any = None, mode: str = "run", extra: Any = None) -> Any:
    """The real engine: in its own process (``engine.server``), so it never holds this
    process's interpreter lock; in this process only with ``MEMLENS_ENGINE=thread`` or a store
    that is not a folder-backed ``RunStore``."""
    from engine.store import RunStore

    from .preload import engine_in_process

    kwargs = {"listener": listener, "cancel": cancel, "store": store}
    if not engine_in_process() and (store is None or isinstance(store, RunStore)):
        from engine.server import shared

        return shared().execute(config, mode=mode, extra=extra, **kwargs)
    keep_a_core_for_the_ui()
    # lazy: the GUI imports without the engine's heavy parts
    from engine.server import run_job

    return run_job(mode, config, listener, cancel, store, extra)


def keep_a_core_for_the_ui() -> int:
    """Limit torch's intra-op threads to cores - 1 (at least 1), so the window keeps a core
    while the engine computes; returns the thread count set."""
    import os

    import torch

    threads = max(1, (os.cpu_count() or 2) - 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


class EngineWorker(QObject):
    """Runs one engine job at a time in the thread it was moved to.

    Signals (all queued to the GUI thread):

    * ``progress(stage, fraction, message)``: ``fraction`` is 0..1, or ``-1.0`` when unknown.
    * ``sample(list[Sample])``: a batch of telemetry samples, oldest first.
    * ``layers(tuple[LayerStats, ...])``: the latest per-layer figures.
    * ``attention(AttentionMaps)``: captured attention probabilities.
    * ``item(event)``: a sweep point, fit answer or the guide so far as it is done
      (``PointDone`` / ``FitDone`` / ``GuideEntryDone``).
    * ``finished(result)`` / ``failed(kind, message, hint)``: how the job ended (exactly one);
      the result is a ``RunResult``, or the guide / sweep / fit record of those jobs.
    * ``done()``: ``run`` has returned; the thread may be stopped.
    """

    progress = Signal(str, float, str)
    sample = Signal(object)
    layers = Signal(object)
    attention = Signal(object)
    item = Signal(object)
    finished = Signal(object)
    failed = Signal(str, str, str)
    done = Signal()

    def __init__(self, execute: ExecuteFn | None = None, store: Any = None,
                 min_interval_s: float = 1.0 / MAX_EMITS_PER_S) -> None:
        super().__init__()
        self._execute = execute if execute is not None else _default_execute
        self._store = store
        self._cancel = threading.Event()
        self._min_interval = min_interval_s
        self._lock = threading.Lock()  # the engine may call the listener from several threads
        self._samples: list[Sample] = []
        self._last_sample_emit = -math.inf
        self._pending_layers: tuple | None = None
        self._last_layers_emit = -math.inf
        self._pending_progress: tuple[str, float, str] | None = None
        self._last_progress: tuple[str, float, str] | None = None
        self._last_progress_emit = -math.inf
        self._ended = False

    # -- called from the GUI thread -------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the running job to stop (thread-safe; the engine stops within about a second)."""
        self._cancel.set()

    @property
    def cancel_event(self) -> threading.Event:
        return self._cancel

    # -- runs in the worker thread --------------------------------------------------------------
    @Slot(object)
    def run(self, config_dict: dict) -> None:
        """Run one job described by a ``RunConfig`` dict, plus ``mode`` (run, estimate, guide,
        sweep, fit) and ``job`` (the sweep's or fit's own arguments, see
        ``engine.server.run_job``); always ends with ``done``."""
        from engine.config import RunConfig

        try:
            config_dict = dict(config_dict)
            mode = str(config_dict.pop("mode", "run"))  # "estimate": fake tensors, no memory
            extra = config_dict.pop("job", None)
            config = RunConfig.from_dict(config_dict)
            kwargs: dict[str, Any] = {"listener": self._on_event, "cancel": self._cancel}
            if self._store is not None:
                kwargs["store"] = self._store
            if mode != "run":
                kwargs["mode"] = mode
            if extra:
                kwargs["extra"] = dict(extra)
            result = self._execute(config, **kwargs)
            self._flush()
            if not self._ended:
                if result is not None:
                    self._end_finished(result)
                elif self._cancel.is_set():
                    self._end_failed("cancelled", "The run was cancelled.",
                                     "Start it again when ready.")
                else:
                    self._end_failed("internal", "The engine stopped without reporting a result.",
                                     "This is a bug in MemLens; please report it with the log.")
        except ImportError as exc:
            self._flush()
            self._end_failed("internal", f"The measuring engine is not available ({exc}).",
                             "Reinstall MemLens (pip install -e .) and try again.")
        except Exception as exc:  # the engine promises not to raise; never let a bug kill the GUI
            self._flush()
            self._end_failed("internal", f"{type(exc).__name__}: {exc}",
                             "This is a bug in MemLens; please report it with the log.")
        finally:
            self.done.emit()

    def _on_event(self, event: object) -> None:
        """The engine's listener: turn one event into (throttled) signals. Thread-safe."""
        if self._ended:
            return  # late events (a sampler tick after the end) are dropped
        now = time.monotonic()
        if isinstance(event, Sample):
            with self._lock:
                self._samples.append(event)
                due = now - self._last_sample_emit >= self._min_interval
            if due:
                self._flush_samples(now)
        elif isinstance(event, LayerStatsReady):
            with self._lock:
                self._pending_layers = tuple(event.layers)
                due = event.final or now - self._last_layers_emit >= self._min_interval
            if due:
                self._flush_layers(now)
        elif isinstance(event, Progress):
            fraction = UNKNOWN_FRACTION if event.fraction is None else float(event.fraction)
            record = (event.stage, fraction, event.message)
            with self._lock:
                last = self._last_progress
                changed = (last is None or last[0] != record[0] or last[2] != record[2]
                           or fraction >= 1.0)
                self._pending_progress = record
                due = changed or now - self._last_progress_emit >= self._min_interval
            if due:
                self._flush_progress(now)
        elif isinstance(event, AttentionMaps):
            self.attention.emit(event)
        elif type(event).__name__ in ITEM_EVENTS:
            self._flush_progress(now)
            self.item.emit(event)
        elif isinstance(event, Finished):
            self._flush()
            self._end_finished(event.result)
        elif isinstance(event, Failed):
            self._flush()
            self._end_failed(str(getattr(event.kind, "value", event.kind)), event.message,
                             event.hint)

    def _flush_samples(self, now: float) -> None:
        with self._lock:
            batch, self._samples = self._samples, []
            self._last_sample_emit = now
        if batch:
            self.sample.emit(batch)

    def _flush_layers(self, now: float) -> None:
        with self._lock:
            layers, self._pending_layers = self._pending_layers, None
            self._last_layers_emit = now
        if layers is not None:
            self.layers.emit(layers)

    def _flush_progress(self, now: float) -> None:
        with self._lock:
            record, self._pending_progress = self._pending_progress, None
            if record is not None:
                self._last_progress = record
            self._last_progress_emit = now
        if record is not None:
            self.progress.emit(*record)

    def _flush(self) -> None:
        now = time.monotonic()
        self._flush_progress(now)
        self._flush_samples(now)
        self._flush_layers(now)

    def _end_finished(self, result: object) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self.finished.emit(result)

    def _end_failed(self, kind: str, message: str, hint: str) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self.failed.emit(kind, message, hint)
