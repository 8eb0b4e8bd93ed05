"""GUI tests (pytest-qt, offscreen) against a fake engine that replays scripted events."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt, QTimer  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402
from PySide6.QtWidgets import QFileDialog  # noqa: E402

from engine.config import RunConfig  # noqa: E402
from engine.events import (  # noqa: E402
    AttentionMaps,
    Failed,
    Finished,
    LayerStatsReady,
    Progress,
    Sample,
)
from engine.results import LayerStats, RunResult, Totals  # noqa: E402
from engine.store import RunSummary  # noqa: E402
from engine.aggregate import UNATTRIBUTED, group_layers, reconciliation_line  # noqa: E402
from engine.format import human_bytes, human_flops, human_ms, short_layer_label  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402
from .qt_helpers import distinct_colours as _distinct_colours  # noqa: E402
from gui.worker import EngineWorker  # noqa: E402

pytestmark = pytest.mark.gui

KIB = 1024
MIB = 1024 * 1024
ARTIFACTS = Path(__file__).parent / "_artifacts"


# -- a small, reconciling run ------------------------------------------------------------------
def make_layers() -> list[LayerStats]:
    layers = [LayerStats("model.embed_tokens", "embedding", None, 0, parameters=524_288,
                         weights_bytes=2 * MIB, activation_bytes=256 * KIB, latency_ms=0.05,
                         flops=None, at_peak={"weights": 2 * MIB})]
    for i in range(2):
        block = f"model.layers.{i}"
        layers += [
            LayerStats(block, "block", None, 0, weights_bytes=0, activation_bytes=256 * KIB,
                       transient_peak_bytes=3 * MIB, latency_ms=1.5, flops=48_000_000,
                       at_peak={"activations": 256 * KIB}),
            LayerStats(f"{block}.self_attn", "attention", block, 1, parameters=262_144,
                       weights_bytes=1 * MIB, activation_bytes=256 * KIB,
                       transient_peak_bytes=1536 * KIB, kv_cache_bytes=128 * KIB,
                       latency_ms=0.6, flops=16_000_000,
                       at_peak={"weights": 1 * MIB, "activations": 512 * KIB,
                                "kv_cache": 128 * KIB}),
            LayerStats(f"{block}.mlp", "mlp", block, 1, parameters=524_288,
                       weights_bytes=2 * MIB, activation_bytes=256 * KIB,
                       transient_peak_bytes=1 * MIB, latency_ms=0.8, flops=32_000_000,
                       at_peak={"weights": 2 * MIB, "activations": 1 * MIB,
                                "temporaries": 256 * KIB}),
        ]
    layers.append(LayerStats("lm_head", "head", None, 0, parameters=524_288,
                             weights_bytes=2 * MIB, activation_bytes=None, latency_ms=0.3,
                             flops=8_000_000, at_peak={"weights": 2 * MIB, "activations": MIB}))
    return layers


def make_result(run_id: str = "run-1") -> RunResult:
    layers = make_layers()
    attributed = sum(layer.at_peak_bytes for layer in layers)
    unattributed = 3 * MIB + 123
    totals = Totals(peak_bytes=attributed + unattributed, peak_source="tensor_accounting",
                    attributed_bytes=attributed, unattributed_bytes=unattributed,
                    weights_bytes=10 * MIB, activation_bytes=4 * MIB, kv_cache_bytes=256 * KIB,
                    temporary_bytes=512 * KIB, parameters=2_621_440,
                    model_weights_bytes=10 * MIB, latency_ms=4.2, flops=104_000_000)
    n = 60
    timeline = {"t": [i * 0.05 for i in range(n)],
                "rss_bytes": [(300 + 20 * np.sin(i / 6) + i) * MIB for i in range(n)],
                "gpu_used_bytes": [None] * n}
    timeline["rss_bytes"] = [int(v) for v in timeline["rss_bytes"]]
    return RunResult(config=RunConfig(model="demo"), run_id=run_id,
                     created="2025-01-02T03:04:05", layers=layers, totals=totals,
                     timeline=timeline, duration_s=1.25,
                     warnings=["Random weights: figures are memory-exact, outputs are noise."])


class FakeEngine:
    """Stands in for ``engine.runner.execute``; runs in the worker thread like the real one.

    Modes: ``ok`` (progress, samples from a second thread, layer updates, Finished), ``fail``
    (Failed with a hint), ``oom`` (samples, then Failed('out_of_memory')), ``slow`` (works until cancelled, then Failed('cancelled')), ``raise``.
    """

    def __init__(self, mode: str = "ok", gate: threading.Event | None = None,
                 stop_delay_s: float = 0.0) -> None:
        self.mode = mode
        self.gate = gate
        self.stop_delay_s = stop_delay_s
        self.configs: list[RunConfig] = []
        self.cancels: list[threading.Event] = []
        self.threads: list[threading.Thread] = []
        self.stores: list[object] = []
        self.started = threading.Event()
        self.returned = threading.Event()

    def __call__(self, config, listener, cancel, store=None):
        self.configs.append(config)
        self.cancels.append(cancel)
        self.threads.append(threading.current_thread())
        self.stores.append(store)
        self.returned.clear()
        self.started.set()
        try:
            return self._script(config, listener, cancel)
        finally:
            self.returned.set()

    def _script(self, config, listener, cancel):
        listener(Progress("load", 0.25, "loading the fake model"))
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        if self.mode == "raise":
            raise RuntimeError("boom")
        if self.mode == "fail":
            listener(Failed("invalid_model", "No model named 'nope'.",
                            "Check the name, or open a local folder."))
            return None
        if self.mode == "late":  # layers measured, then cancelled during the timing passes
            listener(LayerStatsReady(tuple(make_result().layers[:3]), final=False))
            listener(Failed("cancelled", "The run was cancelled.", ""))
            return None
        if self.mode == "oom":
            for i in range(3):
                listener(Sample(t=i * 0.01, rss_bytes=(900 + i) * MIB))
            listener(Failed("out_of_memory", "Out of memory in the forward pass.",
                            "Use a smaller batch."))
            return None
        if self.mode == "slow":
            deadline = time.monotonic() + 20
            i = 0
            while not cancel.is_set() and time.monotonic() < deadline:
                listener(Progress("memory", None, "measuring forever"))
                listener(Sample(t=i * 0.01, rss_bytes=(200 + i) * MIB))
                i += 1
                time.sleep(0.01)
            time.sleep(self.stop_delay_s)
            listener(Failed("cancelled", "The run was cancelled.", "Start it again when ready."))
            return None
        result = make_result()
        listener(Progress("memory", 0.5, "measuring"))

        def sampler() -> None:  # the real engine samples on its own thread
            for i in range(50):
                listener(Sample(t=i * 0.02, phase="memory", rss_bytes=(300 + i) * MIB))

        thread = threading.Thread(target=sampler)
        thread.start()
        thread.join()
        listener(LayerStatsReady(tuple(result.layers[:3]), final=False))
        listener(AttentionMaps(maps={0: np.zeros((2, 4, 4), np.float16)}, tokens=("a",) * 4))
        listener(LayerStatsReady(tuple(result.layers), final=True))
        listener(Progress("timing", 1.0, "done"))
        listener(Finished(result))
        return result


class JsonStore:
    """A RunStore look-alike over JSON files in one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loaded: list[str] = []

    def save(self, result: RunResult) -> Path:
        path = self.root / f"{result.run_id}.json"
        path.write_text(json.dumps(result.to_dict()), encoding="utf-8")
        return path

    def list(self) -> list[RunSummary]:
        out = []
        for path in sorted(self.root.glob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            out.append(RunSummary(data["run_id"], data["created"], data["config"]["model"],
                               data["config"]["workload"], data["totals"]["peak_bytes"],
                               data["totals"]["latency_ms"], data["config"]["label"], path))
        return out

    def load(self, run_id: str) -> RunResult:
        self.loaded.append(run_id)
        path = self.root / f"{run_id}.json"
        return RunResult.from_dict(json.loads(path.read_text(encoding="utf-8")))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test touches the user's real run folder."""
    monkeypatch.setenv("MEMLENS_HOME", str(tmp_path / "home"))


@pytest.fixture
def store(tmp_path) -> JsonStore:
    root = tmp_path / "runs"
    root.mkdir()
    return JsonStore(root)


def make_window(qtbot, engine: FakeEngine, store=None) -> MainWindow:
    window = MainWindow(execute=engine, store=store, devices=["cpu"])
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window


def wait_idle(qtbot, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=10_000)
    assert window.controls.run_button.isEnabled()


def click_run(qtbot, window: MainWindow) -> None:
    qtbot.mouseClick(window.controls.run_button, Qt.MouseButton.LeftButton)


# -- pure helpers ------------------------------------------------------------------------------
def test_format_helpers():
    assert human_bytes(None) == "—"
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1_288_490) == "1.23 MiB"
    assert human_bytes(3 * MIB + 123) == "3.00 MiB"
    assert human_bytes(-2 * KIB) == "-2.00 KiB"
    assert human_bytes(150 * 1024**3) == "150 GiB"
    assert human_ms(None) == "—" and human_ms(1.234) == "1.23 ms" and human_ms(123.4) == "123 ms"
    assert human_flops(None) == "—" and human_flops(1.5e9) == "1.50 GFLOP"
    assert short_layer_label("model.layers.3") == "3"
    assert short_layer_label("model.embed_tokens") == "embed_tokens"
    assert short_layer_label("transformer.h.11.attn") == "11.attn"


def test_group_layers_one_bar_per_block_and_top_level_layer():
    layers = make_layers()
    groups = group_layers(layers)
    assert [g.name for g in groups] == ["model.embed_tokens", "model.layers.0", "model.layers.1",
                                        "lm_head"]
    block = groups[1]
    assert block.members == ["model.layers.0", "model.layers.0.self_attn", "model.layers.0.mlp"]
    assert block.by_category == {"activations": 256 * KIB + 512 * KIB + MIB,
                                 "weights": 3 * MIB, "kv_cache": 128 * KIB,
                                 "temporaries": 256 * KIB}
    assert sum(g.total_bytes for g in groups) == sum(layer.at_peak_bytes for layer in layers)


def test_group_layers_container_root_keeps_only_its_own_bytes():
    layers = [LayerStats("model", "other", None, 0, at_peak={"activations": 10}),
              LayerStats("model.embed", "embedding", "model", 1, at_peak={"weights": 5}),
              LayerStats("model.h.0", "block", "model", 1, at_peak={"activations": 1}),
              LayerStats("model.h.0.attn", "attention", "model.h.0", 2, at_peak={"weights": 7})]
    groups = group_layers(layers)
    assert [(g.name, g.total_bytes, g.own_only) for g in groups] == [
        ("model", 10, True), ("model.embed", 5, False), ("model.h.0", 8, False)]


def test_reconciliation_line():
    totals = make_result().totals
    line = reconciliation_line(totals, human_bytes)
    assert line == (f"peak {human_bytes(totals.peak_bytes)} = attributed "
                    f"{human_bytes(totals.attributed_bytes)} + unattributed 3.00 MiB "
                    f"(tensor accounting)")


def test_worker_batches_and_throttles_samples():
    """1000 samples in a burst reach the GUI as a few batches, none lost, in order."""

    def burst(config, listener, cancel):
        for i in range(1000):
            listener(Sample(t=float(i), rss_bytes=i))
        for i in range(200):
            listener(LayerStatsReady((LayerStats(f"l{i}", "other"),), final=(i == 199)))
        listener(Finished(make_result()))
        return None

    worker = EngineWorker(execute=burst)
    batches, layer_updates, finished = [], [], []
    worker.sample.connect(batches.append)
    worker.layers.connect(layer_updates.append)
    worker.finished.connect(finished.append)
    start = time.monotonic()
    worker.run(RunConfig().to_dict())  # called directly: signals are delivered synchronously
    elapsed = time.monotonic() - start
    allowed = 30 * elapsed + 2
    assert len(batches) <= allowed and len(layer_updates) <= allowed
    assert [s.t for batch in batches for s in batch] == [float(i) for i in range(1000)]
    assert layer_updates[-1][0].name == "l199"  # the final update always gets through
    assert len(finished) == 1


def test_worker_turns_an_engine_exception_into_failed():
    def broken(config, listener, cancel):
        raise ValueError("bad")

    worker = EngineWorker(execute=broken)
    failures, done = [], []
    worker.failed.connect(lambda *args: failures.append(args))
    worker.done.connect(lambda: done.append(True))
    worker.run({"model": "demo"})
    assert failures == [("internal", "ValueError: bad",
                         "This is a bug in MemLens; please report it with the log.")]
    assert done == [True]


def test_worker_cancel_sets_the_event():
    worker = EngineWorker(execute=FakeEngine())
    assert not worker.cancel_event.is_set()
    worker.cancel()
    assert worker.cancel_event.is_set()


# -- the window --------------------------------------------------------------------------------
def test_run_shows_progress_then_renders_the_result(qtbot, store):
    gate = threading.Event()
    engine = FakeEngine("ok", gate=gate)
    window = make_window(qtbot, engine, store)
    click_run(qtbot, window)
    assert window.controller.is_running
    assert not window.controls.run_button.isEnabled() and window.controls.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: "load" in window.status.text(), timeout=5000)
    assert "25%" in window.status.text() and "loading the fake model" in window.status.text()
    assert window.status.progress_bar.value() == 250
    assert engine.threads[0] is not threading.main_thread()  # the engine ran in the worker

    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        gate.set()
    wait_idle(qtbot, window)
    assert engine.configs[0].model == "demo" and engine.stores == [store]

    # Table: one row per layer; human-readable bytes; None as a dash, never 0.
    result = make_result()
    assert window.table.model.rowCount() == len(result.layers) == 8
    assert window.table.cell_text(2, 0).strip() == "model.layers.0.self_attn"
    assert window.table.cell_text(2, 1) == "attention"
    assert window.table.cell_text(2, 2) == "1.00 MiB"
    from gui.panels.layer_table import COLUMNS

    col = {c.title.split(" (")[0]: i for i, c in enumerate(COLUMNS)}
    assert window.table.cell_text(2, col["Saved for backward"]) == "—"  # not measured
    assert window.table.cell_text(2, col["KV cache"]) == "128 KiB"
    assert window.table.cell_text(7, 3) == "—"  # lm_head activations: None
    assert window.table.cell_text(0, col["FLOPs"]) == "—"  # embedding FLOPs: None
    assert window.table.cell_text(1, col["FLOPs"]) == "48.0 MFLOP"
    assert window.table.cell_text(1, col["Latency"]) == "1.50 ms"
    # Columns with no value in any row are hidden (no gradients outside training)
    assert window.table.view.isColumnHidden(col["Gradients"])
    assert not window.table.view.isColumnHidden(col["KV cache"])

    # Chart: embedding, two blocks, head, plus the unattributed bar.
    assert window.chart.labels == ["embed_tokens", "0", "1", "lm_head", UNATTRIBUTED]
    weights = window.chart.stacks["weights"]
    np.testing.assert_allclose(weights, [2, 3, 3, 2, 0])
    assert window.chart.stacks[UNATTRIBUTED][-1] == pytest.approx((3 * MIB + 123) / MIB)
    total_drawn = sum(values.sum() for values in window.chart.stacks.values()) * MIB
    assert total_drawn == pytest.approx(result.totals.peak_bytes)

    # Totals: the reconciliation line; the timeline got samples; warnings logged.
    assert window.totals.text().splitlines()[0] == reconciliation_line(result.totals, human_bytes)
    assert "(tensor accounting)" in window.totals.text()
    # Wrapped lines never part a number from its unit ("367" / "ms").
    shown = window.totals.label.text()
    assert "&nbsp;MiB" in shown and " MiB" not in shown.replace("&nbsp;MiB", ""), shown
    assert window.timeline.sample_count == len(result.timeline["t"])
    assert "Finished" in window.status.text()
    assert "Random weights" in window.log.text()
    assert "Attention maps captured for 1 layer" in window.log.text()


def test_live_updates_arrive_before_finished(qtbot):
    window = make_window(qtbot, FakeEngine("ok"))
    seen = []
    window.controller.layers.connect(lambda layers: seen.append(("layers", len(layers))))
    window.controller.sample.connect(lambda batch: seen.append(("samples", len(batch))))
    window.controller.finished.connect(lambda result: seen.append(("finished", 0)))
    click_run(qtbot, window)
    wait_idle(qtbot, window)
    assert seen[-1] == ("finished", 0)
    assert sum(n for what, n in seen if what == "samples") == 50
    assert ("layers", 8) in seen


def test_failure_shows_message_and_hint_and_window_stays_usable(qtbot):
    engine = FakeEngine("fail")
    window = make_window(qtbot, engine)
    with qtbot.waitSignal(window.controller.failed, timeout=5000) as blocker:
        click_run(qtbot, window)
    assert blocker.args == ["invalid_model", "No model named 'nope'.",
                            "Check the name, or open a local folder."]
    wait_idle(qtbot, window)
    assert "No model named 'nope'." in window.status.text()
    assert "Check the name, or open a local folder." in window.status.text()
    assert "open a local folder" in window.log.text()
    assert "invalid model: No model named 'nope'." in window.log.text()  # words, not an id
    assert window.totals.text() == "The run failed: see the log."  # not "Running…"
    for waiting in (window.latency_panel.summary.text(), window.model_panel.summary.text(),
                    window.attention_panel.message_text()):
        assert waiting == "The run failed: see the log."  # no tab still waits for the run
    assert window.isVisible()

    engine.mode = "ok"  # run again: works
    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        click_run(qtbot, window)
    wait_idle(qtbot, window)
    assert len(engine.configs) == 2
    assert window.table.model.rowCount() == 8


def test_a_failed_run_gives_the_page_back_to_the_run_shown_before(qtbot):
    """A refusal or a cancel measures nothing: the Current run page shows the previous run
    again (its table, chart and timeline), marked so, not an empty page or a mix of the two."""
    engine = FakeEngine("ok")
    window = make_window(qtbot, engine)
    assert window.chart.empty_text().startswith("No run yet.\nRun measures")  # not fake ticks
    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        click_run(qtbot, window)
    wait_idle(qtbot, window)
    assert window.chart.empty_text() == ""
    shown = window.current_result
    samples = window.timeline.sample_count
    totals = window.totals.text()
    assert shown is not None and samples > 0
    engine.mode = "fail"
    with qtbot.waitSignal(window.controller.failed, timeout=5000):
        click_run(qtbot, window)
    wait_idle(qtbot, window)
    assert window.current_result is shown
    assert window.table.model.rowCount() == 8
    assert window.timeline.sample_count == samples
    first, *rest = window.totals.text().splitlines()
    assert first.startswith("The last run failed (see the log)")
    assert rest == totals.splitlines()  # the previous run's totals, under the note
    assert "No model named 'nope'." in window.status.text()  # the failure is still what it says

    engine.mode = "oom"  # memory ran out while measuring: its own timeline stays on show
    with qtbot.waitSignal(window.controller.failed, timeout=5000):
        click_run(qtbot, window)
    wait_idle(qtbot, window)
    assert window.current_result is None
    assert window.totals.text() == "The run failed: see the log."
    assert window.timeline.sample_count == 3
    assert window.chart.empty_text() == ("The run failed before any layer was measured:\nsee "
                                         "the log.")

    engine.mode = "ok"
    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        click_run(qtbot, window)
    wait_idle(qtbot, window)
    engine.mode = "late"  # its layers arrived: they stay, not the run before
    with qtbot.waitSignal(window.controller.failed, timeout=5000):
        click_run(qtbot, window)
    wait_idle(qtbot, window)
    assert window.current_result is None and window.table.model.rowCount() == 3
    assert window.totals.text() == "Cancelled."


def test_a_message_that_wraps_does_not_move_the_pages_below_the_status_line(qtbot):
    window = make_window(qtbot, FakeEngine("ok"))
    window.resize(1100, 800)
    qtbot.wait(50)
    top = window.workspace.mapTo(window, window.workspace.rect().topLeft()).y()
    window.status.show_error("Out of memory in the forward pass of model.layers.3.mlp at "
                             "batch 64 × seq 8192: 23.4 GiB of 24.0 GiB were in use.",
                             "Lower the batch or the sequence, pick bfloat16, or turn on "
                             "activation checkpointing in the optimizations list.")
    qtbot.wait(50)
    assert window.status.label.heightForWidth(window.status.label.width()) > \
        window.status.label.fontMetrics().lineSpacing() * 1.5  # it does wrap to two lines
    assert window.workspace.mapTo(window, window.workspace.rect().topLeft()).y() == top
    from PySide6.QtCore import Qt

    label = window.status.label
    window.status.show_error("Out of memory.", "Lower the batch.")
    assert label.alignment() & Qt.AlignmentFlag.AlignVCenter  # it fits: centred
    # longer than three lines: from the top, cut at a line's edge (centred, a fourth line
    # showed cut through its letters at both ends)
    window.status.show_error("Cannot read the memory size 'lots'. " * 12, "Write 24GiB. " * 10)
    assert label.alignment() & Qt.AlignmentFlag.AlignTop
    assert label.height() < 4 * label.fontMetrics().lineSpacing() - label.fontMetrics().ascent()
    assert "'lots'" in label.toolTip()  # the whole of it
    window.status.show_finished("Done.")
    assert label.alignment() & Qt.AlignmentFlag.AlignVCenter


def test_engine_exception_is_reported_not_raised(qtbot):
    engine = FakeEngine("raise")
    window = make_window(qtbot, engine)
    with qtbot.waitSignal(window.controller.failed, timeout=5000) as blocker:
        click_run(qtbot, window)
    assert blocker.args[0] == "internal" and "boom" in blocker.args[1]
    wait_idle(qtbot, window)
    assert "boom" in window.log.text()


def test_cancel_sets_the_event_and_the_worker_stops(qtbot):
    engine = FakeEngine("slow")
    window = make_window(qtbot, engine)
    click_run(qtbot, window)
    qtbot.waitUntil(lambda: "memory" in window.status.text(), timeout=5000)
    assert window.status.progress_bar.maximum() == 0  # unknown fraction: busy bar
    with qtbot.waitSignal(window.controller.failed, timeout=5000) as blocker:
        qtbot.mouseClick(window.controls.cancel_button, Qt.MouseButton.LeftButton)
    assert engine.cancels[0].is_set()
    assert blocker.args[0] == "cancelled"
    wait_idle(qtbot, window)
    assert engine.returned.is_set()
    assert "Cancelled" in window.status.text()
    assert window.timeline.sample_count > 0


@pytest.mark.fault(area='interruption', case='a second run while one runs (window)',
                   outcome='refused, noted in the log')
def test_a_second_run_is_refused_while_one_runs(qtbot):
    engine = FakeEngine("slow")
    window = make_window(qtbot, engine)
    click_run(qtbot, window)
    assert engine.started.wait(5)
    assert window.start_run(window.controls.config()) is False
    assert window.controller.start({"model": "demo"}) is False
    assert "already in progress" in window.log.text()
    window.cancel_run()
    wait_idle(qtbot, window)
    assert len(engine.configs) == 1


@pytest.mark.fault(area='interruption', case='the window closed during a run',
                   outcome='the run is cancelled and its thread joined; no abort')
def test_closing_the_window_during_a_run_cancels_and_waits(qtbot):
    engine = FakeEngine("slow", stop_delay_s=0.3)  # the engine takes a while to stop
    window = make_window(qtbot, engine)
    click_run(qtbot, window)
    assert engine.started.wait(5)
    qtbot.waitUntil(lambda: window.timeline.sample_count > 0, timeout=5000)
    window.close()
    assert engine.cancels[0].is_set()
    assert engine.returned.is_set()  # close waited for the engine to return
    assert not window.controller.is_running


def test_saved_runs_list_loads_a_run_without_a_model(qtbot, store):
    store.save(make_result("saved-abc"))
    engine = FakeEngine("ok")
    window = make_window(qtbot, engine, store)
    assert window.saved_runs.run_ids() == ["saved-abc"]
    view = window.saved_runs.view
    row_text = " ".join(view.model().index(0, c).data() for c in range(view.model().columnCount()))
    assert "demo" in row_text and "forward" in row_text
    center = window.saved_runs.row_rect_center("saved-abc")
    # A real double-click is press, release, double-click: QTest's mouseDClick alone is ignored
    # by item views (no pressed index), so click first.
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=center)
    qtbot.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, pos=center)
    qtbot.waitUntil(lambda: window.current_result is not None, timeout=2000)
    assert store.loaded == ["saved-abc"]
    assert engine.configs == []  # nothing ran: the saved record is rendered as is
    assert window.table.model.rowCount() == 8
    assert window.totals.text().startswith("peak ")
    assert window.timeline.sample_count == 60
    assert "saved-abc" in window.status.text()


@pytest.mark.fault(area='data', case='a saved run the window cannot read',
                   outcome='reported in the status line and log; the window stays usable')
def test_saved_run_that_cannot_be_read_is_reported(qtbot, store):
    (store.root / "broken.json").write_text("{}", encoding="utf-8")
    window = make_window(qtbot, FakeEngine(), store)
    window.saved_runs.set_summaries([RunSummary("broken", "", "demo", "forward", None, None, "",
                                             store.root / "broken.json")])
    assert window.load_saved_run("broken") is False
    assert "Could not open run broken" in window.status.text()
    assert window.controls.run_button.isEnabled()


def test_real_run_store_round_trip(qtbot, tmp_path):
    store_module = pytest.importorskip("engine.store")
    real = store_module.RunStore(tmp_path / "real")
    real.save(make_result("real-1"))
    window = make_window(qtbot, FakeEngine(), real)
    assert window.saved_runs.run_ids() == ["real-1"]
    assert window.load_saved_run("real-1")
    assert window.table.model.rowCount() == 8


def test_controls_build_a_valid_config(qtbot, monkeypatch, tmp_path):
    window = make_window(qtbot, FakeEngine())
    controls = window.controls
    assert controls.model_combo.currentText() == "demo"
    assert controls.model_combo.findText("demo-encoder") >= 0
    assert [controls.device_combo.itemText(i) for i in range(controls.device_combo.count())] == [
        "cpu"]
    assert not controls.new_tokens_spin.isEnabled()
    controls.workload_combo.setCurrentText("generate")
    assert controls.new_tokens_spin.isEnabled()
    controls.batch_spin.setValue(4)
    controls.dtype_combo.setCurrentText("bfloat16")
    controls.attention_check.setChecked(True)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(tmp_path)))
    qtbot.mouseClick(controls.open_folder_button, Qt.MouseButton.LeftButton)
    config = RunConfig.from_dict(controls.config())
    config.validate()
    assert (config.model, config.workload, config.batch, config.dtype, config.attention_maps) == (
        str(tmp_path), "generate", 4, "bfloat16", True)
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(tmp_path / "config.json"), "")))
    qtbot.mouseClick(controls.open_config_button, Qt.MouseButton.LeftButton)
    assert controls.config()["model"] == str(tmp_path / "config.json")




def test_screenshot_of_a_finished_run_is_not_blank(qtbot, store):
    store.save(make_result("earlier-run"))
    window = make_window(qtbot, FakeEngine("ok"), store)
    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        click_run(qtbot, window)
    wait_idle(qtbot, window)
    qtbot.wait(50)
    ARTIFACTS.mkdir(exist_ok=True)  # gitignored
    path = ARTIFACTS / "main_window.png"
    image = window.grab().toImage()
    assert image.save(str(path))
    assert image.width() >= 1000 and image.height() >= 700
    assert _distinct_colours(image) > 200


def test_app_main_writes_a_screenshot_and_quits(qtbot, tmp_path):
    from gui.app import main

    path = tmp_path / "shot.png"
    assert main(["--model", "demo-encoder", "--screenshot", str(path),
                 "--quit-after-ms", "200"]) == 0
    image = QImage(str(path))
    assert not image.isNull() and _distinct_colours(image) > 50
    # main() leaves no stray quit request behind: later event loops still run.
    fired: list[int] = []
    QTimer.singleShot(20, lambda: fired.append(1))
    qtbot.waitUntil(lambda: bool(fired), timeout=2000)


@pytest.mark.slow
def test_end_to_end_with_the_real_engine(qtbot, tmp_path):
    """The real runner on the trained demo model: renders, reconciles, saves, reloads."""
    pytest.importorskip("engine.runner")
    store_module = pytest.importorskip("engine.store")
    store = store_module.RunStore(tmp_path / "e2e")
    window = MainWindow(store=store, devices=["cpu"])
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    config = {**window.controls.config(), "model": "demo", "workload": "generate", "seq": 32,
              "new_tokens": 8, "repeats": 1, "warmup": 0}
    failures = []
    window.controller.failed.connect(lambda *args: failures.append(args))
    with qtbot.waitSignal(window.controller.running_changed, timeout=5000):
        assert window.start_run(config)
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=180_000)
    assert failures == []
    result = window.current_result
    assert result is not None and result.totals.reconciles()
    assert window.table.model.rowCount() == len(result.layers)
    assert window.chart.labels[-1] == UNATTRIBUTED
    assert window.chart.labels.count("0") == 1  # one bar per block
    assert window.totals.text().startswith("peak ")
    assert window.timeline.sample_count > 0
    assert window.saved_runs.run_ids() == [result.run_id]
    ARTIFACTS.mkdir(exist_ok=True)  # gitignored
    window.grab().save(str(ARTIFACTS / "main_window_real.png"))
    assert window.load_saved_run(result.run_id)
    assert window.table.model.rowCount() == len(result.layers)


@pytest.mark.slow
def test_app_runs_the_demo_and_screenshots_the_result(qtbot, tmp_path, monkeypatch):
    """``memlens --run --screenshot``: the real window, the real engine, a picture with content."""
    from gui.app import main

    monkeypatch.setenv("MEMLENS_HOME", str(tmp_path / "home"))
    path = tmp_path / "run.png"
    assert main(["--model", "demo", "--workload", "generate", "--run",
                 "--screenshot", str(path)]) == 0
    image = QImage(str(path))
    assert not image.isNull() and _distinct_colours(image) > 200
    ARTIFACTS.mkdir(exist_ok=True)  # gitignored
    image.save(str(ARTIFACTS / "app_demo_run.png"))
    runs = list((tmp_path / "home" / "runs").glob("*.json"))
    assert len(runs) == 1  # the run was saved


def test_optimization_controls_follow_the_registry(qtbot):
    from engine.optimizations import REGISTRY

    window = MainWindow(execute=FakeEngine("ok"), store=None, devices=["cpu"])
    qtbot.addWidget(window)
    panel = window.controls.optimizations
    assert set(panel.rows) == set(REGISTRY)
    window.controls.set_workload("forward")
    assert not panel.rows["checkpointing"].check.isEnabled()
    assert "train" in panel.reason("checkpointing")
    assert panel.rows["int8-dynamic"].check.isEnabled()
    window.controls.set_workload("train")
    assert panel.rows["checkpointing"].check.isEnabled()
    assert not panel.rows["int8-dynamic"].check.isEnabled()
    panel.rows["checkpointing"].check.setChecked(True)
    panel.rows["checkpointing"].params["every_n"].setValue(2)
    config = window.controls.config()
    assert config["optimizations"] == [{"id": "checkpointing", "params": {"every_n": 2}}]
    RunConfig.from_dict(config).validate()


@pytest.mark.fault(area='environment', case='a run without GPU readings',
                   outcome='the timeline says so in words; no zero line is drawn')
def test_timeline_says_when_there_is_no_gpu_series(qtbot):
    from gui.panels.timeline import TimelinePanel

    panel = TimelinePanel()
    qtbot.addWidget(panel)
    panel.add_samples([Sample(t=0.0, rss_bytes=1 << 20), Sample(t=0.1, rss_bytes=2 << 20)])
    assert "no NVML readings" in panel.gpu_note.text()
    panel.add_samples([Sample(t=0.2, rss_bytes=2 << 20, gpu_used_bytes=3 << 20)])
    assert panel.gpu_note.text() != ""  # drawn at most LIVE_REDRAW_HZ times a second
    qtbot.waitUntil(lambda: panel.gpu_note.text() == "", timeout=1000)


def test_launcher_routes_subcommands_to_the_headless_cli(tmp_path, capsys):
    from engine import cli
    from gui import launcher

    assert launcher.main(["--store", str(tmp_path), "runs"]) == 0
    assert "no saved runs" in capsys.readouterr().out
    assert cli.wants_window([]) and cli.wants_window(["--model", "demo"])
    assert not cli.wants_window(["profile"]) and not cli.wants_window(["--store", "x", "runs"])
    assert cli.main([]) == cli.EXIT_USAGE  # the engine's own entry never opens a window


def test_launcher_gives_the_global_store_to_the_window(monkeypatch, tmp_path):
    """`memlens --store DIR [gui] [window options]` opens the window on that store (it once
    went to the headless CLI, which refused the window options)."""
    from engine import cli
    from gui import app, launcher

    seen: list[list[str]] = []
    monkeypatch.setattr(app, "main", lambda argv: seen.append(list(argv)) or 0)
    assert cli.wants_window(["--store", "x"]) and cli.wants_window(["--store=x", "--run"])
    assert cli.wants_window(["--store", "x", "gui", "--run"])
    assert launcher.main(["--store", str(tmp_path), "gui", "--run"]) == 0
    assert launcher.main([f"--store={tmp_path}", "--model", "demo"]) == 0
    assert seen == [["--run", "--store", str(tmp_path)],
                    ["--model", "demo", f"--store={tmp_path}"]]
    args = app._parser().parse_args(seen[1])
    assert args.store == tmp_path and args.model == "demo"


def test_timeline_shades_the_phases(qtbot):
    from gui.panels.timeline import TimelinePanel, phase_spans

    assert phase_spans([0.0, 0.1, 0.2, 0.3, 0.4], ["load", "load", "memory", "memory", "timing"]) \
        == [("load", 0.0, 0.2), ("memory", 0.2, 0.4), ("timing", 0.4, 0.4)]
    panel = TimelinePanel()
    qtbot.addWidget(panel)
    panel.add_samples([Sample(t=0.1 * i, phase=p, rss_bytes=(i + 1) << 20)
                       for i, p in enumerate(["load", "load", "warmup", "memory"])])
    assert [name for name, _, _ in panel.spans()] == ["load", "warmup", "memory"]
    panel.add_samples([Sample(t=0.4, phase="memory", rss_bytes=5 << 20)])
    assert panel.spans()[-1] == ("memory", 0.30000000000000004, 0.4)
    assert panel.set_timeline({"t": [0.0, 1.0], "phase": ["load", "timing"],
                               "rss_bytes": [1 << 20, 2 << 20]})
    assert [name for name, _, _ in panel.spans()] == ["load", "timing"]
    panel.show()
    qtbot.waitExposed(panel)
    panel.set_timeline({"t": [0.0, 40.0], "phase": ["load", "timing"],
                        "rss_bytes": [100 << 20, 900 << 20]})
    view = panel.plot.getViewBox()
    qtbot.waitUntil(lambda: view.viewRange()[0][1] > 30, timeout=2000)
    panel.clear()  # the next run starts from empty axes, not the last run's range
    qtbot.wait(50)
    (x0, x1), (y0, y1) = view.viewRange()
    assert x1 <= 1.5 and y1 <= 1.5 and panel.peaks == {}, (x0, x1, y0, y1, panel.peaks)


def test_timeline_legend_moves_to_the_corner_where_it_hides_no_curve(qtbot):
    """Fixed at the bottom right, the legend covered a curve that sits low there."""
    from gui.panels.timeline import TimelinePanel

    panel = TimelinePanel()
    qtbot.addWidget(panel)
    panel.resize(420, 320)
    panel.show()
    qtbot.waitExposed(panel)
    view = panel.plot.getViewBox()
    low = [100 << 20] * 20 + [900 << 20]  # flat along the bottom, a late spike
    panel.set_timeline({"t": [0.5 * i for i in range(21)], "phase": ["memory"] * 21,
                        "rss_bytes": low})
    qtbot.waitUntil(lambda: view.viewRange()[0][1] > 9, timeout=2000)
    panel._place_legend()
    assert panel.legend_corner[1][1] == 0 and panel.legend_hides == 0  # a top corner
    legend, plot = panel.legend.sceneBoundingRect(), view.sceneBoundingRect()
    assert legend.bottom() < plot.center().y()
    high = [100 << 20] + [900 << 20] * 20  # an early rise, then flat along the top
    panel.set_timeline({"t": [0.5 * i for i in range(21)], "phase": ["memory"] * 21,
                        "rss_bytes": high})
    qtbot.wait(50)
    panel._place_legend()
    assert panel.legend_hides == 0, panel.legend_corner


def test_a_legend_too_big_for_its_chart_is_hidden_and_its_entries_go_in_the_tooltip(qtbot):
    """At 1024 × 700 a four-row legend left the bars a 20-pixel strip, and the timeline's
    legend covered half its curves and the time axis."""
    from gui.panels.layer_chart import LayerChartPanel
    from gui.panels.timeline import TimelinePanel

    result = make_result()
    chart = LayerChartPanel()
    qtbot.addWidget(chart)
    chart.resize(420, 600)
    chart.show()
    chart.render(result.layers, result.totals)
    qtbot.waitUntil(lambda: chart.legend.isVisible())
    assert chart.plot_widget.toolTip() == ""
    chart.resize(420, 120)  # two rows of legend would take over a third
    qtbot.waitUntil(lambda: not chart.legend.isVisible())
    assert chart.legend.maximumHeight() == 0  # its row gives the plot the room
    tip = chart.plot_widget.toolTip()
    assert tip.startswith("Legend (hidden") and "weights" in tip and "activations" in tip
    chart.clear()  # no entries: no tooltip of old ones over the empty chart
    assert chart.plot_widget.toolTip() == ""
    chart.render(result.layers, result.totals)
    qtbot.waitUntil(lambda: not chart.legend.isVisible())
    chart.resize(900, 600)
    qtbot.waitUntil(lambda: chart.legend.isVisible())
    assert chart.legend.maximumHeight() > 1000 and chart.plot_widget.toolTip() == ""

    timeline = TimelinePanel()
    qtbot.addWidget(timeline)
    timeline.resize(420, 320)
    timeline.show()
    qtbot.waitExposed(timeline)
    timeline.set_timeline({"t": [0.5 * i for i in range(21)], "phase": ["memory"] * 21,
                           "rss_bytes": [(100 + i) << 20 for i in range(21)]})
    view = timeline.plot.getViewBox()
    qtbot.waitUntil(lambda: view.viewRange()[0][1] > 9, timeout=2000)
    timeline._place_legend()
    assert timeline.legend.isVisible()
    timeline.resize(200, 150)
    qtbot.wait(50)
    timeline._place_legend()
    assert not timeline.legend.isVisible()
    assert "process RSS" in timeline.plot_widget.toolTip()
    timeline.resize(420, 320)
    qtbot.wait(50)
    timeline._place_legend()
    assert timeline.legend.isVisible() and timeline.plot_widget.toolTip() == ""


def test_the_show_boxes_take_short_names_before_they_scroll(qtbot):
    """A training step's six categories scrolled at the default window size ("optimizer
    sta…" cut off); short names fit, with the full name in the tooltip."""
    from gui.panels.layer_chart import LayerChartPanel

    result = make_result()
    for layer in result.layers:
        layer.at_peak = dict(layer.at_peak, gradients=KIB, optimizer_state=2 * KIB)
    chart = LayerChartPanel()
    qtbot.addWidget(chart)
    chart.resize(1400, 400)
    chart.show()
    chart.render(result.layers, result.totals)
    boxes = {b.property("category"): b for b in chart._toggles.values()}
    qtbot.waitUntil(lambda: boxes["optimizer_state"].text() == "optimizer state")
    chart.resize(620, 400)  # the Memory by layer tab's width in a 1280-pixel window
    qtbot.waitUntil(lambda: boxes["optimizer_state"].text() == "optimizer")
    strip = chart.toggles_strip
    assert strip.widget().sizeHint().width() <= strip.viewport().width()  # no scrolling
    assert boxes["optimizer_state"].toolTip() == "Show optimizer state"
    chart.resize(1400, 400)
    qtbot.waitUntil(lambda: boxes["optimizer_state"].text() == "optimizer state")


def test_timeline_phase_labels_never_overlap_as_the_run_grows(qtbot):
    """A phase wide on screen when it began narrows as the run goes on: its label must go then
    (the window once printed 'loadqualitymemory' run together after a run)."""
    from gui.panels.timeline import TimelinePanel

    panel = TimelinePanel()
    qtbot.addWidget(panel)
    panel.resize(500, 300)
    panel.show()
    qtbot.waitExposed(panel)

    def labels() -> dict[str, str]:
        return {name: item.toPlainText()
                for (name, _, _), item in zip(panel.spans(), panel._bands[1::2], strict=False)}

    phases = ["load"] * 3 + ["quality"] * 3 + ["memory"] * 3
    panel.set_timeline({"t": [0.1 * i for i in range(9)], "phase": phases,
                        "rss_bytes": [(i + 1) << 20 for i in range(9)]})
    qtbot.waitUntil(lambda: labels() == {"load": "load", "quality": "quality",
                                         "memory": "memory"}, timeout=3000)
    # The last phase grows sample by sample, as in a live run (the set of phases stays the same).
    panel.add_samples([Sample(t=1.0 + 0.5 * i, phase="timing", rss_bytes=10 << 20)
                       for i in range(2)])
    qtbot.waitUntil(lambda: labels().get("timing") == "timing", timeout=3000)
    panel.add_samples([Sample(t=1.0 + 0.5 * i, phase="timing", rss_bytes=(10 + i) << 20)
                       for i in range(2, 40)])
    # 0.3 s phases in a 20 s view of ~450 px are ~7 px wide: no room for a name.
    qtbot.waitUntil(lambda: labels() == {"load": "", "quality": "", "memory": "",
                                         "timing": "timing"}, timeout=3000)


def test_window_fits_a_1024_pixel_wide_screen(qtbot):
    """No page may force the window wider than a 1024-pixel screen (the Multi-GPU plan page's
    one-row inputs once made the minimum 1368 px; the saved runs' eight buttons in a row,
    1156 px)."""
    window = make_window(qtbot, FakeEngine())
    assert window.minimumSizeHint().width() <= 1000, window.minimumSizeHint()
    for k in range(window.workspace.count()):
        page = window.workspace.widget(k)
        assert page.minimumSizeHint().width() <= 640, (window.workspace.tabText(k),
                                                       page.minimumSizeHint())
    window.resize(1024, 700)
    qtbot.waitUntil(lambda: window.width() == 1024, timeout=2000)


def test_a_theme_switch_recolours_the_timeline_bands_and_secondary_text(qtbot):
    """The phase bands were drawn once per set of phases: after a switch to dark they stayed
    light (and the names on them unreadable) until the next run."""
    from PySide6.QtWidgets import QCheckBox

    from gui import theme
    from gui.panels.timeline import DARK_PHASE_COLOURS, PHASE_COLOURS, TimelinePanel

    panel = TimelinePanel()
    qtbot.addWidget(panel)
    panel.set_timeline({"t": [0.0, 0.1, 0.2], "phase": ["load", "load", "memory"],
                        "rss_bytes": [1 << 20, 2 << 20, 3 << 20]})

    def band_colour() -> str:
        return panel._bands[0].brush.color().name()

    def _box_colour() -> str:
        box = QCheckBox()
        box.ensurePolished()  # (a class's palette reaches a widget when it is polished)
        return box.palette().base().color().name()

    assert band_colour() == PHASE_COLOURS[0]
    try:
        theme.apply("dark", panel)
        assert band_colour() == DARK_PHASE_COLOURS[0]
        assert theme.THEMES["dark"].axis in panel.gpu_note.styleSheet()
        # an unticked box was near-black on the dark window: its square is lighter there
        assert _box_colour() == theme.THEMES["dark"].indicator
    finally:
        theme.apply("light", panel)
    assert band_colour() == PHASE_COLOURS[0]
    assert _box_colour() == theme.THEMES["light"].base


def test_the_baseline_outline_follows_a_theme_switch(qtbot):
    """Switched to the dark theme with a run shown, the dashed baseline outline (and its legend
    swatch) stayed near-black on the dark background: it was coloured only when drawn."""
    from gui import theme
    from gui.panels.layer_chart import LayerChartPanel

    result = make_result("outlined")
    panel = LayerChartPanel()
    qtbot.addWidget(panel)
    panel.render(result.layers, result.totals)
    panel.set_outline([layer_bytes * 2 for layer_bytes in range(len(panel.labels))], "baseline")

    def outline() -> str:
        return panel._outline_item.opts["pen"].color().name()

    assert outline() == theme.THEMES["light"].text
    try:
        theme.apply("dark", panel)
        assert outline() == theme.THEMES["dark"].text
    finally:
        theme.apply("light", panel)
    assert outline() == theme.THEMES["light"].text
