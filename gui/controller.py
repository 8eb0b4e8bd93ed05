"""Owns the worker thread: one job at a time, cooperative cancel, a clean shutdown.

:class:`RunController` lives in the GUI thread. Each run gets a fresh :class:`EngineWorker` in a
fresh ``QThread``; the worker's signals are forwarded through the controller's own signals, so
panels connect once. A second ``start`` while a job runs is refused. ``shutdown`` (called from
the window's ``closeEvent``) cancels the job and waits for the thread, so no ``QThread`` is ever
destroyed while running.
"""

from __future__ import annotations

import weakref
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from .worker import EngineWorker, ExecuteFn

SHUTDOWN_WAIT_MS = 30_000  # the engine promises to stop within ~1 s of a cancel

# Threads that did not stop in time at shutdown: kept referenced so Qt never destroys a running
# QThread (that aborts the process); they end on their own when the engine returns.
_ORPHANS: list[tuple[QThread, EngineWorker]] = []
_THREADS: "weakref.WeakSet[QThread]" = weakref.WeakSet()


def live_threads() -> list[QThread]:
    """Every engine thread this process started that still exists (for leak checks)."""
    return list(_THREADS) + [t for t, _ in _ORPHANS]


class RunController(QObject):
    """Starts, cancels and stops engine jobs. Signals mirror :class:`EngineWorker`'s."""

    progress = Signal(str, float, str)
    sample = Signal(object)
    layers = Signal(object)
    attention = Signal(object)
    item = Signal(object)
    finished = Signal(object)
    failed = Signal(str, str, str)
    running_changed = Signal(bool)
    _run_requested = Signal(object)

    def __init__(self, execute: ExecuteFn | None = None, store: Any = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._execute = execute
        self._store = store
        self._thread: QThread | None = None
        self._worker: EngineWorker | None = None

    @property
    def is_running(self) -> bool:
        return self._thread is not None

    @property
    def worker(self) -> EngineWorker | None:
        """The current job's worker (``None`` when idle)."""
        return self._worker

    def set_store(self, store: Any) -> None:
        """The run store passed to the engine for the next runs (so they appear as saved runs)."""
        self._store = store

    def start(self, config: dict) -> bool:
        """Start a job for a ``RunConfig`` dict; ``False`` (and nothing started) if one runs."""
        if self._thread is not None:
            return False
        worker = EngineWorker(self._execute, store=self._store)
        thread = QThread()
        thread.setObjectName("memlens-engine")
        _THREADS.add(thread)
        worker.moveToThread(thread)
        # Forward worker signals (queued: the controller lives in the GUI thread).
        worker.progress.connect(self.progress)
        worker.sample.connect(self.sample)
        worker.layers.connect(self.layers)
        worker.attention.connect(self.attention)
        worker.item.connect(self.item)
        worker.finished.connect(self.finished)
        worker.failed.connect(self.failed)
        worker.done.connect(thread.quit)
        thread.finished.connect(self._on_thread_finished)
        self._run_requested.connect(worker.run)
        self._thread, self._worker = thread, worker
        thread.start()
        self._run_requested.emit(dict(config))  # queued: ``run`` executes in the new thread
        self.running_changed.emit(True)
        return True

    @Slot()
    def cancel(self) -> None:
        """Ask the running job to stop; it reports ``failed('cancelled', ...)`` when it has."""
        if self._worker is not None:
            self._worker.cancel()

    def shutdown(self, wait_ms: int = SHUTDOWN_WAIT_MS) -> bool:
        """Cancel the job and wait for its thread; ``True`` when no thread is left running."""
        thread, worker = self._thread, self._worker
        if thread is None or worker is None:
            return True
        worker.cancel()
        thread.quit()  # ends the thread's event loop as soon as ``run`` returns
        stopped = thread.wait(wait_ms)
        if not stopped:
            _ORPHANS.append((thread, worker))
        self._release()
        return stopped

    @Slot()
    def _on_thread_finished(self) -> None:
        if self._thread is None:
            return
        self._thread.wait()  # returns at once: the thread has finished its run
        self._release()

    def _release(self) -> None:
        if self._thread is None:
            return
        for signal, slot in ((self._thread.finished, self._on_thread_finished),
                             (self._run_requested, self._worker.run if self._worker else None)):
            if slot is None:
                continue
            try:
                signal.disconnect(slot)
            except (RuntimeError, TypeError):  # pragma: no cover - already disconnected
                pass
        self._thread = None
        self._worker = None
        self.running_changed.emit(False)
