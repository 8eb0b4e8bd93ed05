"""The main window: composes the panels and connects them to the :class:`RunController`.

Only the GUI thread touches widgets: every worker signal arrives queued through the controller
and lands in a method of this window. Panels render engine records; nothing here measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QCloseEvent, QShowEvent
from PySide6.QtWidgets import QMainWindow, QSplitter, QTabWidget, QVBoxLayout, QWidget

from engine.events import AttentionMaps
from engine.results import RunResult

from .controller import RunController
from engine.format import human_bytes, human_seconds
from .panels.attention import NO_MAPS, AttentionPanel
from .panels.controls import ControlPanel
from .panels.layer_chart import LayerChartPanel
from .panels.latency import LatencyPanel
from .panels.layer_table import LayerTablePanel
from .panels.log import LogPanel
from .panels.saved_runs import SavedRunsPanel
from .panels.status import StatusPanel
from .panels.timeline import TimelinePanel
from .panels.totals import TotalsPanel
from .worker import ExecuteFn

_NO_STORE = object()


class MainWindow(QMainWindow):
    """``execute`` replaces ``engine.runner.execute`` (a fake engine in tests); ``store`` replaces
    the default ``engine.store.RunStore()`` (anything with ``list()`` and ``load(run_id)``)."""

    def __init__(self, execute: ExecuteFn | None = None, store: Any = None, model: str = "demo",
                 devices: Sequence[str] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("MemLens")
        self.resize(1280, 820)
        self._store: Any = store
        self._closing = False
        self._last_stage = ""
        self._config: dict[str, Any] = {}
        self.current_result: RunResult | None = None
        self._live_attention: AttentionMaps | None = None  # the maps of the run in progress

        self.controller = RunController(execute, store=store, parent=self)
        self.controls = ControlPanel(model=model, devices=devices)
        self.saved_runs = SavedRunsPanel()
        self.status = StatusPanel()
        self.chart = LayerChartPanel()
        self.table = LayerTablePanel()
        self.totals = TotalsPanel()
        self.timeline = TimelinePanel()
        self.attention_panel = AttentionPanel()
        self.latency_panel = LatencyPanel()
        self.log = LogPanel()
        self._build_layout()

        self.controls.run_requested.connect(self.start_run)
        self.controls.cancel_requested.connect(self.cancel_run)
        self.saved_runs.run_activated.connect(self.load_saved_run)
        self.saved_runs.refresh_requested.connect(self.refresh_saved_runs)
        self.controller.progress.connect(self._on_progress)
        self.controller.sample.connect(self._on_samples)
        self.controller.layers.connect(self._on_layers)
        self.controller.attention.connect(self._on_attention)
        self.controller.finished.connect(self._on_finished)
        self.controller.failed.connect(self._on_failed)
        self.controller.running_changed.connect(self._on_running_changed)

        self.refresh_saved_runs()

    def _build_layout(self) -> None:
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(self.controls)
        left_layout.addWidget(self.saved_runs, 1)

        self.plot_tabs = QTabWidget()
        self.plot_tabs.addTab(self.chart, "Memory by layer")
        self.plot_tabs.addTab(self.attention_panel, "Attention")
        self.plot_tabs.addTab(self.latency_panel, "Latency")
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.plot_tabs)
        plots.addWidget(self.timeline)
        plots.setSizes([680, 320])
        details = QWidget()
        details_layout = QVBoxLayout(details)
        details_layout.setContentsMargins(0, 0, 0, 0)
        details_layout.addWidget(self.totals)
        details_layout.addWidget(self.table, 1)
        vertical = QSplitter(Qt.Orientation.Vertical)
        vertical.addWidget(plots)
        vertical.addWidget(details)
        vertical.addWidget(self.log)
        vertical.setSizes([390, 250, 100])

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addWidget(self.status)
        right_layout.addWidget(vertical, 1)

        main = QSplitter(Qt.Orientation.Horizontal)
        main.addWidget(left)
        main.addWidget(right)
        main.setStretchFactor(1, 1)
        main.setSizes([330, 950])
        self.setCentralWidget(main)

    # -- runs -----------------------------------------------------------------------------------
    @Slot(object)
    def start_run(self, config: dict[str, Any]) -> bool:
        """Start a run (the Run button); refused, with a note in the log, while one runs."""
        if self.controller.is_running:
            self.log.warning("A run is already in progress: wait for it or cancel it first.")
            return False
        self.controller.set_store(self._get_store())
        self._config = dict(config)
        self._last_stage = ""
        self.current_result = None
        self._live_attention = None
        self.attention_panel.clear(
            "Attention maps arrive near the end of the run." if config.get("attention_maps")
            else NO_MAPS)
        self.latency_panel.clear("Running…")
        self.chart.clear()
        self.table.clear()
        self.totals.clear("Running…")
        self.timeline.clear()
        model, workload = config.get("model", "?"), config.get("workload", "?")
        self.status.show_started(model, workload)
        self.log.info(f"Run: {workload} on {model} (batch {config.get('batch')}, "
                      f"seq {config.get('seq')}, {config.get('device')}, {config.get('dtype')})")
        return self.controller.start(config)

    @Slot()
    def cancel_run(self) -> None:
        if self.controller.is_running:
            self.status.show_message("Cancelling…")
            self.log.info("Cancelling the run…")
            self.controller.cancel()

    @Slot(bool)
    def _on_running_changed(self, running: bool) -> None:
        if not self._closing:
            self.controls.set_running(running)

    @Slot(str, float, str)
    def _on_progress(self, stage: str, fraction: float, message: str) -> None:
        if self._closing:
            return
        self.status.show_progress(stage, fraction, message)
        if stage != self._last_stage:
            self._last_stage = stage
            self.log.info(f"{stage}: {message}" if message else stage)

    @Slot(object)
    def _on_samples(self, samples: list) -> None:
        if not self._closing:
            self.timeline.add_samples(samples)

    @Slot(object)
    def _on_layers(self, layers: Sequence) -> None:
        if self._closing:
            return
        self.table.render(layers)
        self.chart.render(layers)

    @Slot(object)
    def _on_attention(self, maps: Any) -> None:
        if self._closing:
            return
        count = len(getattr(maps, "maps", {}) or {})
        tokens = len(getattr(maps, "tokens", ()) or ())
        self.log.info(f"Attention maps captured for {count} layer(s), {tokens} token(s).")
        self._live_attention = maps
        self.attention_panel.render(maps, None)  # the capture record comes with the result

    @Slot(object)
    def _on_finished(self, result: RunResult) -> None:
        if self._closing:
            return
        self.render_result(result, self._live_attention)
        t = result.totals
        self.status.show_finished(f"Finished: peak {human_bytes(t.peak_bytes)} "
                                  f"in {human_seconds(result.duration_s)}.")
        self.log.info(f"Finished run {result.run_id or '(unsaved)'}: "
                      f"peak {human_bytes(t.peak_bytes)}.")
        for warning in result.warnings:
            self.log.warning(warning)
        self.refresh_saved_runs()

    @Slot(str, str, str)
    def _on_failed(self, kind: str, message: str, hint: str) -> None:
        if self._closing:
            return
        if kind == "cancelled":
            self.status.show_message("Cancelled.")
            self.log.info(f"{message} {hint}".strip())
            self.totals.clear("Cancelled.")
        else:
            self.status.show_error(message, hint)
            self.log.error(message, hint, kind)
            self.totals.clear("The run failed: see the log.")

    # -- results --------------------------------------------------------------------------------
    def render_result(self, result: RunResult, attention: AttentionMaps | None = None,
                      attention_reason: str | None = None) -> None:
        """Show a finished or saved run: table, chart with ``unattributed``, totals, timeline,
        latency, and the attention maps (``attention``: the live event or the store's file)
        with the run's capture record; ``attention_reason`` says why maps are missing."""
        self.current_result = result
        self.table.render(result.layers)
        self.chart.render(result.layers, result.totals)
        self.totals.render(result)
        self.latency_panel.render(result)
        self.attention_panel.render(attention, result.attention, attention_reason)
        if result.timeline:
            self.timeline.set_timeline(result.timeline)
        config = result.config
        self.setWindowTitle(f"MemLens · {config.model} · {config.workload}")

    # -- saved runs -----------------------------------------------------------------------------
    def _get_store(self) -> Any:
        if self._store is None:
            try:
                from engine.store import RunStore

                self._store = RunStore()
            except Exception as exc:  # no store module yet, or an unwritable data folder
                self._store = _NO_STORE
                self.saved_runs.show_unavailable(f"Saved runs are unavailable: {exc}")
        return None if self._store is _NO_STORE else self._store

    @Slot()
    def refresh_saved_runs(self) -> None:
        store = self._get_store()
        if store is None:
            return
        try:
            self.saved_runs.set_summaries(store.list())
        except Exception as exc:
            self.saved_runs.show_unavailable(f"Could not list saved runs: {exc}")

    @Slot(str)
    def load_saved_run(self, run_id: str) -> bool:
        """Show a saved run (no model is loaded); errors go to the log, the window stays usable."""
        if self.controller.is_running:
            self.log.warning("Wait for the current run to finish (or cancel it) "
                             "before opening a saved run.")
            return False
        store = self._get_store()
        if store is None:
            return False
        try:
            result = store.load(run_id)
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc)
            hint = (getattr(exc, "hint", "")
                    or "The run file may be damaged or from a newer MemLens.")
            self.status.show_error(f"Could not open run {run_id}: {message}", hint)
            self.log.error(f"Could not open run {run_id}: {message}", hint)
            return False
        self.timeline.clear()
        self._live_attention = None
        maps, reason = self._saved_attention(store, run_id, result)
        self.render_result(result, maps, reason)
        self.status.show_message(f"Saved run {run_id}: {result.config.model}, "
                                 f"{result.config.workload}.")
        self.log.info(f"Opened saved run {run_id}.")
        return True

    def _saved_attention(self, store: Any, run_id: str, result: RunResult
                         ) -> tuple[AttentionMaps | None, str | None]:
        """A saved run's attention maps, or None and why; a damaged file is logged, not raised."""
        captured = bool((result.attention or {}).get("captured"))
        load = getattr(store, "load_attention", None)
        if load is None:
            return None, ("this run store keeps no attention maps" if captured else None)
        try:
            maps = load(run_id)
        except Exception as exc:  # MemLensError(kind=store): a damaged maps file
            message = getattr(exc, "message", None) or str(exc)
            self.log.error(f"Could not read the attention maps of run {run_id}: {message}",
                           getattr(exc, "hint", ""),
                           str(getattr(getattr(exc, "kind", None), "value", "store")))
            return None, "the saved maps file could not be read (see the log)"
        if maps is None and captured:
            return None, "the saved maps file of this run is missing"
        return maps, None

    # -- Qt -------------------------------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        self._closing = False  # a closed window can be shown again
        super().showEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self._closing = True
        self.controller.shutdown()
        super().closeEvent(event)
