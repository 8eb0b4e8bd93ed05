"""The engine in its own process (what the window uses): same results and events as in-process,
cancel, and a killed engine reported as such with the next run working."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from engine.events import Failed, Finished, LayerStatsReady, Progress, Sample
from engine.server import EngineProcess
from engine.store import RunStore

from .helpers import Collector, tiny


# Long enough to be stopped mid-way (the demo's 512 positions bound prompt + new tokens).
LONG = tiny(model="demo", workload="generate", seq=64, new_tokens=440, repeats=5)


def _wait(started: threading.Event, thread: threading.Thread, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        if started.wait(0.1):
            return True
    return started.is_set()


@pytest.fixture(scope="module")
def engine():
    proc = EngineProcess()
    assert proc.wait_ready(180), "the engine process did not start"
    yield proc
    proc.close()
    assert not proc.alive


def test_a_run_in_the_engine_process_reports_events_and_saves(engine, tmp_path):
    store = RunStore(tmp_path / "runs")
    events = Collector()
    result = engine.execute(tiny(workload="generate", new_tokens=4), events, store=store)
    assert result is not None and result.totals.reconciles()
    assert engine.ready and engine.ready["pid"] == engine.pid != os.getpid()
    assert events.of(Progress) and events.of(LayerStatsReady) and events.of(Sample)
    assert isinstance(events.events[-1], Finished)
    assert events.finished.result.run_id == result.run_id
    assert [s.run_id for s in store.list()] == [result.run_id]
    # Process RSS is the engine's, sampled in the child.
    assert result.timeline["rss_bytes"] and all(v is None or v > 0
                                                for v in result.timeline["rss_bytes"])


def test_cancel_reaches_the_engine_process(engine):
    events = Collector()
    cancel = threading.Event()
    started = threading.Event()

    def listener(event):
        events(event)
        if isinstance(event, Progress) and event.stage in ("warmup", "memory", "timing"):
            started.set()

    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault(
        "result", engine.execute(LONG, listener, cancel)))
    thread.start()
    assert _wait(started, thread), f"the run never got going: {events.failed}"
    t0 = time.monotonic()
    cancel.set()
    thread.join(30)
    assert not thread.is_alive()
    assert time.monotonic() - t0 < 5.0
    assert out["result"] is None
    assert events.failed is not None and events.failed.kind == "cancelled"
    # The engine serves the next job.
    assert engine.execute(tiny()) is not None


@pytest.mark.fault(area='resources',
                   case='the engine process is killed mid-run (e.g. by the out-of-memory killer)',
                   outcome='the run fails with a message naming the likely cause and what to try; the window keeps running and the next run starts a fresh engine')
def test_a_killed_engine_is_reported_and_replaced(engine):
    events = Collector()
    started = threading.Event()

    def listener(event):
        events(event)
        if isinstance(event, Progress) and event.stage in ("warmup", "memory", "timing"):
            started.set()

    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault(
        "result", engine.execute(LONG, listener)))
    thread.start()
    assert _wait(started, thread), f"the run never got going: {events.failed}"
    old_pid = engine.pid
    os.kill(old_pid, signal.SIGKILL)
    thread.join(30)
    assert not thread.is_alive() and out["result"] is None
    failed = events.failed
    assert isinstance(failed, Failed) and failed.kind == "out_of_memory"
    assert "killed" in failed.message and "Estimate" in failed.hint
    result = engine.execute(tiny())  # a fresh engine process
    assert result is not None and engine.pid != old_pid


def test_a_cancel_sent_while_the_engine_starts_is_kept_for_its_job():
    """The first job waits for the engine's warm-up; a cancel sent meanwhile found no job to
    stop and was dropped, and the run went on to the end and was saved."""
    proc = EngineProcess()
    try:
        cancel = threading.Event()
        cancel.set()  # pressed before the engine was ready
        events = Collector()
        t0 = time.perf_counter()
        assert proc.execute(LONG, events, cancel) is None
        # answered at once (it waited for the engine's start: 6.6 s in the window)
        assert time.perf_counter() - t0 < 1.0
        assert events.failed is not None and events.failed.kind == "cancelled"
        assert not events.of(Finished)
        result = proc.execute(tiny())  # the next job runs: the cancelled one never did
        assert result is not None and result.config.seq == tiny().seq
    finally:
        proc.close()
