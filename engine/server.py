"""Run engine jobs in a separate, long-lived process (what the desktop app uses).

Why a process and not a thread: the engine runs a lot of Python (module hooks, the tensor
accounting dispatch mode, the generation loop) and so does a pyqtgraph window (every repaint).
In one process they share the interpreter lock, and the window's 10 ms heartbeat missed beats by
40 ms (p99) to 140 ms during runs on a 2-core machine (benchmarks/ui_responsiveness.py). In its
own process the engine cannot stall the window, a crash or an out-of-memory kill of the engine
leaves the window running (it reports what happened), and process RSS measures the engine and
the model, not the GUI.

:class:`EngineProcess` is the client: ``execute(config, listener, cancel, store)`` has the same
contract as :func:`engine.runner.execute` (events to ``listener``, the result or ``None``), so
the GUI's worker thread calls it like the in-process engine. The child imports torch and
transformers once, then serves one job at a time: each event travels back pickled over a queue.
Cancel travels on a separate queue to a thread in the child that sets the job's event, so the
engine's frequent ``cancel.is_set()`` checks stay cheap. Nothing here imports Qt.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import MemLensError
from .events import Failed, Finished

POLL_S = 0.1  # how often the client checks for a cancel or a dead child while waiting
START_TIMEOUT_S = 120.0


# -- the child ---------------------------------------------------------------------------------
def _limit_threads() -> None:
    """Leave one core to the window: torch's intra-op threads = cores - 1 (at least 1)."""
    import torch

    threads = max(1, (os.cpu_count() or 2) - 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _warm_up() -> None:
    """Import the heavy libraries and the demo's architecture, and load the demo once (it warms
    transformers' caches), then freeze what is alive out of the garbage collector: a full
    collection would otherwise scan every library object before each measurement."""
    from .quiet import quiet_import

    with quiet_import():
        import transformers

        from . import runner  # noqa: F401
        from .models import load_model, preimport_architecture

        _ = (transformers.AutoConfig, transformers.AutoModelForCausalLM,
             transformers.AutoTokenizer)
        preimport_architecture("demo")
    del load_model(RunConfig(model="demo")).model
    gc.collect()
    gc.freeze()


def run_job(mode: str, config: RunConfig, listener: Any, cancel: threading.Event, store: Any,
            extra: dict[str, Any] | None = None) -> Any:
    """Run one job of any mode in this process; returns its result (None after ``Failed``).

    ``run``: :func:`engine.runner.execute`; ``estimate``: :func:`engine.estimate.estimate`;
    ``guide``: :func:`engine.guide.run_guide` (``GuideEntryDone`` after each technique, ends
    with ``GuideFinished``; ``extra`` may name its ``workloads`` and ``techniques``, as
    ``memlens guide --workload/--techniques`` do); ``sweep`` and ``fit``: :func:`engine.sweep.sweep` /
    :func:`engine.sweep.what_fits` with ``extra`` giving their arguments; ``plan``:
    :func:`engine.distributed.plan_inference` (forward, generate: ``devices``, ``per_device``,
    ``cpu_offload``, ``strategy``) or ``plan_training`` (train: ``ranks``, ``per_device``). The engine process and the window's in-process
    engine both call this, so a mode behaves the same in either."""
    extra = dict(extra or {})
    if mode == "guide":
        from .guide import Guide, GuideEntryDone, GuideFinished, run_guide

        guide = run_guide(model=config.model, device=config.device, dtype=config.dtype,
                          batch=config.batch, seq=config.seq, new_tokens=config.new_tokens,
                          repeats=config.repeats, listener=listener, cancel=cancel, store=store,
                          workloads=extra.get("workloads") or ("forward", "generate", "train"),
                          techniques=extra.get("techniques"),
                          on_entry=lambda g: listener(GuideEntryDone(
                              Guide.from_dict(g.to_dict()))),
                          trust_remote_code=config.trust_remote_code)
        listener(GuideFinished(guide))
        return guide
    if mode == "sweep":
        from .sweep import sweep

        return sweep(config, extra.get("seqs") or [config.seq],
                     extra.get("batches") or [config.batch], extra.get("opt_sets"),
                     listener=listener, cancel=cancel, store=store,
                     measure_limit_bytes=extra.get("measure_limit_bytes"))
    if mode == "fit":
        from .sweep import DEFAULT_MAX_BATCH, Budget, resolve_budget, what_fits

        budget = (Budget(**extra["budget"]) if isinstance(extra.get("budget"), dict)
                  else resolve_budget(extra.get("budget")))
        return what_fits(config, budget, extra.get("batches"), extra.get("opt_sets"),
                         listener=listener, cancel=cancel, store=store,
                         granularity=extra.get("granularity"), axis=extra.get("axis", "seq"),
                         seqs=extra.get("seqs"),
                         max_batch=extra.get("max_batch") or DEFAULT_MAX_BATCH)
    if mode == "plan":
        from .distributed import plan_inference, plan_training

        try:  # bad arguments are refused before the planner starts: report them as events too
            if config.workload == "train":
                return plan_training(config, extra.get("ranks", 1), extra.get("per_device"),
                                     master_dtype=extra.get("master_dtype"),
                                     replicas=extra.get("replicas", 1),
                                     listener=listener, cancel=cancel, store=store)
            return plan_inference(config, extra.get("devices", 1), extra.get("per_device"),
                                  extra.get("cpu_offload"), extra.get("strategy", "auto"),
                                  listener=listener, cancel=cancel, store=store)
        except MemLensError as exc:
            listener(Failed(exc.kind.value, exc.message, exc.hint))
            return None
    if mode == "estimate":
        from .estimate import estimate

        return estimate(config, listener=listener, cancel=cancel, store=store,
                        tensor_parallel=extra.get("tensor_parallel", 1))
    if mode != "run":
        raise MemLensError("invalid_workload", f"Unknown engine job {mode!r}.",
                           "Use run, estimate, guide, sweep, fit or plan.")
    from .runner import execute

    return execute(config, listener=listener, cancel=cancel, store=store)


def serve(requests: Any, events: Any, control: Any) -> None:
    """The child's main loop: ``(mode, job, config_dict, store_root | None, extra)`` requests
    (modes of :func:`run_job`), one at a time; ``None`` stops. Every job ends with
    ``("done", job, None)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in a terminal is the parent's to handle
    jobs: dict[int, threading.Event] = {}
    # A cancel that arrives before its job starts (the first job waits for the warm-up, a few
    # seconds) is kept for it: it was lost, and the run went on to the end.
    early: set[int] = set()
    jobs_lock = threading.Lock()

    def watch_control() -> None:
        for message in iter(control.get, None):
            if message[0] == "cancel":
                with jobs_lock:
                    event = jobs.get(message[1])
                    if event is None:
                        early.add(message[1])
                if event is not None:
                    event.set()

    threading.Thread(target=watch_control, name="memlens-control", daemon=True).start()
    ready: dict[str, Any] = {"pid": os.getpid()}
    try:
        _limit_threads()
        _warm_up()
    except Exception as exc:  # the first run reports the real problem with its own message
        ready["warning"] = f"{type(exc).__name__}: {exc}"
    events.put(("ready", 0, ready))

    from .models import preimport_architecture
    from .store import RunStore

    for message in iter(requests.get, None):
        mode, job, config_dict, root, extra = message
        cancel = threading.Event()
        with jobs_lock:
            jobs[job] = cancel
            if job in early:
                early.discard(job)
                cancel.set()

        def listener(event: Any, job: int = job) -> None:
            events.put(("event", job, event))

        try:
            if cancel.is_set():  # cancelled before it began (the client has moved on)
                from .errors import Cancelled

                raise Cancelled()
            config = RunConfig.from_dict(config_dict)
            preimport_architecture(config.model)  # a new architecture's code stays frozen too
            gc.freeze()
            store = RunStore(root) if root else None
            run_job(mode, config, listener, cancel, store, extra)
        except MemLensError as exc:  # a guide's refusal or cancel (runs report their own)
            listener(Failed(exc.kind.value, exc.message, exc.hint))
        except BaseException as exc:  # execute reports its own failures; this is a safety net
            listener(Failed("internal", f"The engine process failed: {type(exc).__name__}: "
                                        f"{exc}", "This is a bug in MemLens; please report it."))
        finally:
            with jobs_lock:
                jobs.pop(job, None)
            events.put(("done", job, None))


# -- the client --------------------------------------------------------------------------------
class EngineProcess:
    """A client for one child process; started on first use (or by :meth:`start`)."""

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")  # fork would copy the GUI's threads and Qt state
        self._lock = threading.Lock()
        self._proc: Any = None
        self._requests: Any = None
        self._events: Any = None
        self._control: Any = None
        self._jobs = itertools.count(1)
        self.ready: dict[str, Any] | None = None
        self.started_at: float | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child if it is not running (returns at once; it warms up on its own)."""
        if self.alive:
            return
        self._requests = self._ctx.Queue()
        self._events = self._ctx.Queue()
        self._control = self._ctx.Queue()
        self.ready = None
        self._proc = self._ctx.Process(target=serve, name="memlens-engine", daemon=True,
                                       args=(self._requests, self._events, self._control))
        self._proc.start()
        self.started_at = time.monotonic()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> bool:
        """Start the child if needed and wait until it has warmed up; ``False`` if it died or
        did not get ready within ``timeout`` seconds. Blocks the caller: not for the UI thread."""
        with self._lock:
            self.start()
            deadline = time.monotonic() + timeout
            while self.ready is None:
                try:
                    kind, _job, payload = self._events.get(timeout=POLL_S)
                except queue.Empty:
                    if not self.alive or time.monotonic() > deadline:
                        return False
                    continue
                if kind == "ready":
                    self.ready = payload
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child (ask, then terminate)."""
        proc = self._proc
        if proc is None:
            return
        try:
            self._requests.put(None)
            self._control.put(None)
        except (OSError, ValueError):
            pass
        proc.join(timeout)
        if proc.is_alive():
            proc.terminate()
            proc.join(2.0)
        for q in (self._requests, self._events, self._control):
            try:
                q.close()
                q.cancel_join_thread()
            except (OSError, ValueError, AttributeError):
                pass
        self._proc = None

    def execute(self, config: RunConfig, listener: Any = lambda e: None,
                cancel: threading.Event | None = None, store: Any = None,
                mode: str = "run", extra: dict[str, Any] | None = None) -> Any:
        """Run ``config`` in the child; same contract as :func:`engine.runner.execute`
        (other modes and their ``extra`` arguments: :func:`run_job`; the result is the guide,
        sweep or fit record for those).

        ``store`` must be a :class:`engine.store.RunStore` (its folder is passed to the child)
        or ``None``. Blocks the calling thread (the GUI's worker thread), never the UI thread.
        """
        cancel = cancel or threading.Event()
        root = getattr(store, "root", None) if store is not None else None
        if store is not None and root is None:
            raise TypeError("EngineProcess.execute needs a RunStore (or None) as store")
        with self._lock:
            self.start()
            job = next(self._jobs)
            self._requests.put((mode, job, config.to_dict(), str(Path(root)) if root else None,
                                dict(extra or {})))
            result = None
            cancel_sent = False
            while True:
                if cancel.is_set() and not cancel_sent:
                    self._control.put(("cancel", job))
                    cancel_sent = True
                    if self.ready is None:
                        # The engine is still starting (imports, warm-up: seconds), so the job
                        # has not begun: it is cancelled now, not when the engine gets to it
                        # (6.6 s for the first run's cancel). The engine drops the job when it
                        # comes to it (the cancel above is kept for it); what it then says
                        # about that job is a leftover the next job skips.
                        from .errors import Cancelled

                        stop = Cancelled()
                        listener(Failed(stop.kind.value, stop.message, stop.hint))
                        return None
                try:
                    kind, msg_job, payload = self._events.get(timeout=POLL_S)
                except queue.Empty:
                    if not self.alive:
                        listener(self._died())
                        return None
                    continue
                if kind == "ready":
                    self.ready = payload
                    continue
                if msg_job != job:
                    continue  # left over from an earlier job
                if kind == "done":
                    return result
                if isinstance(payload, Finished):
                    result = payload.result
                elif type(payload).__name__ == "GuideFinished":
                    result = payload.guide  # a guide job's result
                elif type(payload).__name__ in ("SweepFinished", "FitFinished"):
                    result = payload.record
                elif type(payload).__name__ == "PlanFinished":
                    result = payload.plan
                listener(payload)

    def _died(self) -> Failed:
        code = self._proc.exitcode if self._proc is not None else None
        self.close(timeout=0.1)
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            if -code == signal.SIGKILL:
                return Failed("out_of_memory", f"The engine process was killed ({name}), most "
                              "likely by the system for running out of memory.",
                              "Try a smaller batch or sequence, an optimization that saves "
                              "memory, or Estimate (fake tensors: no real memory). The window "
                              "and saved runs are "
                              "intact; the next run starts a fresh engine.")
            return Failed("internal", f"The engine process stopped with signal {name}.",
                          "The window and saved runs are intact; the next run starts a fresh "
                          "engine. Please report this with the log.")
        return Failed("internal", f"The engine process exited unexpectedly (exit code {code}).",
                      "The window and saved runs are intact; the next run starts a fresh engine.")


_shared: EngineProcess | None = None
_shared_lock = threading.Lock()


def shared() -> EngineProcess:
    """The process-wide engine process (created, not started, on first call)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = EngineProcess()
        return _shared
