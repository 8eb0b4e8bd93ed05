"""The main window: composes the panels and connects them to the :class:`RunController`.

Only the GUI thread touches widgets: every worker signal arrives queued through the controller
and lands in a method of this window. Panels render engine records; nothing here measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QFileSystemWatcher, QSettings, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QGuiApplication, QKeySequence, QShowEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QInputDialog,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from engine.aggregate import outline_from_layers, outline_from_run
from engine.config import one_line
from engine.events import AttentionMaps
from engine.format import human_bytes, human_seconds
from engine.results import RunResult

from . import theme
from .controller import RunController
from .panels.attention import NO_MAPS, AttentionPanel
from .panels.compare import ComparePanel
from .panels.controls import ControlPanel
from .panels.guide import GuidePanel
from .panels.layer_chart import LayerChartPanel
from .panels.latency import LatencyPanel
from .panels.layer_table import LayerTablePanel
from .panels.log import LogPanel
from .panels.model_tree import ModelTreePanel
from .panels.saved_runs import SavedRunsPanel
from .panels.plan import PlanPanel
from .panels.status import StatusPanel
from .panels.sweep import SweepPanel
from .panels.timeline import TimelinePanel
from .panels.totals import TotalsPanel
from .worker import ExecuteFn

_NO_STORE = object()
MAX_RECENT = 8
# What the window remembers between sessions ('Trust remote code' is deliberately not among
# them: the opt-in lasts one session).
STORE_REFRESH_MS = 300  # how long the saved-runs list waits for a burst of file events to end
SETTINGS_CONTROLS = ("model", "workload", "batch", "seq", "new_tokens", "prompt", "device",
                     "dtype", "sample_hz", "repeats", "attention_maps")


class MainWindow(QMainWindow):
    """``execute`` replaces ``engine.runner.execute`` (a fake engine in tests); ``store`` replaces
    the default ``engine.store.RunStore()`` (anything with ``list()`` and ``load(run_id)``)."""

    def __init__(self, execute: ExecuteFn | None = None, store: Any = None, model: str | None = None,
                 devices: Sequence[str] | None = None, parent: QWidget | None = None,
                 settings: QSettings | None = None) -> None:
        super().__init__(parent)
        self.settings = settings if settings is not None else QSettings()
        self._baseline_run: RunResult | None = None  # a saved run picked as the chart's outline
        self.setWindowTitle("MemLens")
        self.resize(1280, 820)
        self._store: Any = store
        self._closing = False
        self._last_stage = ""
        self._config: dict[str, Any] = {}
        self.current_result: RunResult | None = None
        self._live_attention: AttentionMaps | None = None  # the maps of the run in progress
        self._guide_folder: Path | None = None  # a guide job's files, chosen at its first entry
        self._job = ""  # the page the running job reports to: run, guide, sweep, fit or plan
        self._shown: tuple | None = None  # the run on the Current run page (render_result's args)
        self._shown_before: tuple | None = None  # what it showed before the running run cleared it
        self._last_deleted: list[str] = []  # the runs the last Delete moved to the trash
        self._listed: list[Any] | None = None  # the summaries the saved-runs table shows
        # The saved-runs list follows the store folder: runs saved, labelled or deleted by the
        # command line or another window appear without Refresh (a burst of file events from
        # one atomic write is one refresh).
        self._store_watcher = QFileSystemWatcher(self)
        self._store_refresh = QTimer(self)
        self._store_refresh.setSingleShot(True)
        self._store_refresh.setInterval(STORE_REFRESH_MS)
        self._store_refresh.timeout.connect(self.refresh_saved_runs)
        self._store_watcher.directoryChanged.connect(lambda _path: self._store_refresh.start())

        self.controller = RunController(execute, store=store, parent=self)
        self.controls = ControlPanel(model=model or "demo", devices=devices)
        self.saved_runs = SavedRunsPanel()
        self.compare_panel = ComparePanel()
        self.model_panel = ModelTreePanel()
        self.guide_panel = GuidePanel()
        self.sweep_panel = SweepPanel()
        self.plan_panel = PlanPanel()
        self.status = StatusPanel()
        self.chart = LayerChartPanel()
        self.table = LayerTablePanel()
        self.totals = TotalsPanel()
        self.timeline = TimelinePanel()
        self.attention_panel = AttentionPanel()
        self.latency_panel = LatencyPanel()
        self.log = LogPanel()
        self._build_layout()
        self._build_menus()

        self.controls.run_requested.connect(self.start_run)
        self.controls.cancel_requested.connect(self.cancel_run)
        self.controls.note.connect(lambda line: self.log.info(line))
        self.controls.runnable_changed.connect(self.run_action.setEnabled)
        self.run_action.setEnabled(self.controls.runnable)
        self.controls.edited.connect(self._on_settings_edited)
        self.saved_runs.run_activated.connect(self.load_saved_run)
        self.saved_runs.refresh_requested.connect(self.refresh_saved_runs)
        self.saved_runs.compare_requested.connect(self.compare_saved_runs)
        self.saved_runs.baseline_requested.connect(self.set_baseline_run)
        self.saved_runs.settings_requested.connect(self.use_saved_run_settings)
        self.saved_runs.label_requested.connect(lambda run_id: self.label_saved_run(run_id))
        self.saved_runs.delete_requested.connect(lambda ids: self.delete_saved_runs(ids))
        # (a guide's runs against their own unoptimized models, as its table: none of them is
        # unoptimized, and the first-ranked one as [0] showed int8 at "+576 KiB")
        self.guide_panel.compare_requested.connect(
            lambda ids: self.compare_saved_runs(ids, against_own=True))
        self.guide_panel.report_requested.connect(self.export_guide_report_dialog)
        self.guide_panel.run_requested.connect(self.run_guide)
        self.sweep_panel.sweep_requested.connect(lambda _=None: self.run_sweep())
        self.sweep_panel.fit_requested.connect(lambda _=None: self.run_fit())
        self.sweep_panel.save_requested.connect(self.save_sweep_dialog)
        self.plan_panel.plan_requested.connect(self.run_plan)
        self.plan_panel.tensor_parallel_requested.connect(self.run_tensor_parallel_estimate)
        self.plan_panel.save_requested.connect(self.save_plan_dialog)
        self.controls.workload_combo.currentTextChanged.connect(self.plan_panel.set_workload)
        self.plan_panel.set_workload(self.controls.workload_combo.currentText())
        self.controller.item.connect(self._on_item)
        self.controller.progress.connect(self._on_progress)
        self.controller.sample.connect(self._on_samples)
        self.controller.layers.connect(self._on_layers)
        self.controller.attention.connect(self._on_attention)
        self.controller.finished.connect(self._on_finished)
        self.controller.failed.connect(self._on_failed)
        self.controller.running_changed.connect(self._on_running_changed)

        self.restore_settings(model)
        self.refresh_saved_runs()

    def _build_layout(self) -> None:
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(self.controls, 1)

        runs_tab = QSplitter(Qt.Orientation.Vertical)
        runs_tab.addWidget(self.saved_runs)
        runs_tab.addWidget(self.compare_panel)
        runs_tab.setSizes([330, 490])
        self.runs_tab = runs_tab
        self.plot_tabs = QTabWidget()
        self.plot_tabs.addTab(self.chart, "Memory by layer")
        self.plot_tabs.addTab(self.attention_panel, "Attention")
        self.plot_tabs.addTab(self.latency_panel, "Latency")
        self.plot_tabs.addTab(self.model_panel, "Model")
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.plot_tabs)
        plots.addWidget(self.timeline)
        plots.setSizes([680, 320])
        self._splitters = {"plots": plots}
        details = QWidget()
        details_layout = QVBoxLayout(details)
        details_layout.setContentsMargins(0, 0, 0, 0)
        details_layout.addWidget(self.totals)
        details_layout.addWidget(self.table, 1)
        # the table keeps its header, five rows and its scroll bar; the totals above it scroll
        # instead (they had pushed it down to one row)
        view = self.table.view
        self.table.setMinimumHeight(view.horizontalHeader().sizeHint().height()
                                    + 5 * view.verticalHeader().defaultSectionSize()
                                    + view.horizontalScrollBar().sizeHint().height() + 4)
        vertical = QSplitter(Qt.Orientation.Vertical)
        vertical.addWidget(plots)
        vertical.addWidget(details)
        vertical.addWidget(self.log)
        vertical.setSizes([360, 300, 80])
        self._splitters["vertical"] = vertical
        self._splitters["runs"] = runs_tab

        # The current run and the saved runs are two pages: comparing runs needs the room.
        self.workspace = QTabWidget()
        self.workspace.setDocumentMode(True)
        self.workspace.addTab(vertical, "Current run")
        self.workspace.addTab(runs_tab, "Saved runs && compare")
        self.workspace.addTab(self.guide_panel, "Guide")
        self.workspace.addTab(self.sweep_panel, "Sweep && fit")
        self.workspace.addTab(self.plan_panel, "Multi-GPU plan")
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addWidget(self.status)
        right_layout.addWidget(self.workspace, 1)

        main = QSplitter(Qt.Orientation.Horizontal)
        main.addWidget(left)
        main.addWidget(right)
        main.setStretchFactor(1, 1)
        main.setSizes([330, 950])
        self._splitters["main"] = main
        self.setCentralWidget(main)

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self.open_run_action = self._action(file_menu, "&Open run file…", self.open_run_dialog,
                                            QKeySequence.StandardKey.Open)
        self.recent_menu = file_menu.addMenu("Recent run files")
        file_menu.addSeparator()
        self.report_action = self._action(file_menu, "Export &report…", self.export_report_dialog,
                                          "Ctrl+E")
        self.export_action = self._action(file_menu, "Export run &JSON…", self.export_run_dialog,
                                          "Ctrl+Shift+E")
        self.save_png_action = self._action(file_menu, "&Save current plot as PNG…",
                                            self.save_plot_dialog, QKeySequence.StandardKey.Save)
        self.save_window_action = self._action(file_menu, "Save &window as PNG…",
                                               lambda: self.save_plot_dialog(self))
        save_panel = file_menu.addMenu("Save panel as PNG")
        for title, widget in self.panels().items():
            self._action(save_panel, f"{title}…", lambda w=widget: self.save_plot_dialog(w))
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)

        edit_menu = bar.addMenu("&Edit")
        self.copy_plot_action = self._action(edit_menu, "&Copy current plot",
                                             self.copy_plot, "Ctrl+Shift+C")
        copy_panel = edit_menu.addMenu("Copy panel")
        for title, widget in self.panels().items():
            self._action(copy_panel, title, lambda w=widget: self.copy_plot(w))
        edit_menu.addSeparator()
        self.undo_delete_action = self._action(edit_menu, "&Undo delete", self.undo_delete,
                                               QKeySequence.StandardKey.Undo)
        self.undo_delete_action.setEnabled(False)
        self._action(edit_menu, "&Restore a deleted run…", self.restore_deleted_run_dialog)
        self._action(edit_menu, "&Empty the trash…", self.empty_trash)

        run_menu = bar.addMenu("&Run")
        self.run_action = self._action(run_menu, "&Run", lambda: self.start_run(
            self.controls.config()), "Ctrl+R")
        self.run_action.setShortcuts([QKeySequence("Ctrl+R"), QKeySequence("F5")])
        self.guide_action = self._action(run_menu, "Run the &guide", self.run_guide, "Ctrl+G")
        self.sweep_action = self._action(run_menu, "Run a &sweep", self.run_sweep,
                                         "Ctrl+Shift+R")
        self.fit_action = self._action(run_menu, "Find what &fits", self.run_fit, "Ctrl+Shift+F")
        self.plan_action = self._action(run_menu, "&Plan across devices", self.run_plan,
                                        "Ctrl+Shift+P")
        run_menu.addSeparator()
        self.use_settings_action = self._action(
            run_menu, "&Use the shown run's settings", self.use_shown_run_settings, "Ctrl+U")
        run_menu.addSeparator()
        self.cancel_action = self._action(run_menu, "&Cancel", self.cancel_run, "Ctrl+.")
        self.cancel_action.setEnabled(False)
        # Escape cancels too, but a guide (minutes of runs) asks first: one stray key press
        # ended it (Ctrl+. and Run ▸ Cancel are deliberate and do not ask).
        self.escape_action = QAction("Cancel (Escape)", self)
        self.escape_action.setShortcut(QKeySequence("Escape"))
        self.escape_action.triggered.connect(lambda _=False: self.cancel_on_escape())
        self.escape_action.setEnabled(False)
        self.addAction(self.escape_action)

        view_menu = bar.addMenu("&View")
        for i in range(self.plot_tabs.count()):
            self._action(view_menu, self.plot_tabs.tabText(i), lambda _=False, i=i: (
                self.workspace.setCurrentIndex(0), self.plot_tabs.setCurrentIndex(i)),
                f"Ctrl+{i + 1}")
        self._action(view_menu, "Saved runs && compare",
                     lambda: self.workspace.setCurrentWidget(self.runs_tab), "Ctrl+0")
        self._action(view_menu, "Guide", lambda: self.workspace.setCurrentWidget(
            self.guide_panel))
        self._action(view_menu, "Sweep && fit", lambda: self.workspace.setCurrentWidget(
            self.sweep_panel), "Ctrl+9")
        self._action(view_menu, "Multi-GPU plan", lambda: self.workspace.setCurrentWidget(
            self.plan_panel), "Ctrl+8")
        view_menu.addSeparator()
        themes = QActionGroup(self)
        self.theme_actions: dict[str, QAction] = {}
        for name in theme.THEMES:
            action = self._action(view_menu, f"{name.capitalize()} theme",
                                  lambda _=False, n=name: self.set_theme(n))
            action.setCheckable(True)
            themes.addAction(action)
            self.theme_actions[name] = action

        help_menu = bar.addMenu("&Help")
        self.about_action = self._action(help_menu, "&About MemLens", self.show_about)

    def about_text(self) -> str:
        """What Help → About says: the version and its libraries' (``memlens --version``), and
        where the saved runs are."""
        from engine import version_text

        store = self._get_store()
        where = f"Saved runs: {store.root}" if store is not None else "Saved runs: unavailable"
        first, _, libraries = version_text().partition(" · ")  # "memlens 0.1.0", the rest
        return (f"MemLens {first.split()[-1]}\n\nMeasures where a transformer model's working "
                f"memory goes and what each optimization does to it.\n\n"
                f"{libraries.replace(' · ', chr(10))}\n\n{where}")

    def show_about(self) -> Any:
        """Help → About MemLens: a window-modal box (``open``, not ``exec``: the engine's
        events keep arriving while it shows)."""
        from PySide6.QtWidgets import QMessageBox

        box = QMessageBox(QMessageBox.Icon.Information, "About MemLens", self.about_text(),
                          QMessageBox.StandardButton.Ok, self)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        return box

    def _action(self, menu: Any, text: str, slot: Any, shortcut: Any = None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(lambda _=False: slot())
        menu.addAction(action)
        return action

    # -- runs -----------------------------------------------------------------------------------
    @Slot(object)
    def start_run(self, config: dict[str, Any]) -> bool:
        """Start a run (the Run button); refused, with a note in the log, while one runs."""
        if self.controller.is_running:
            self.log.warning("A run is already in progress: wait for it or cancel it first.")
            return False
        if config.get("mode") == "estimate":
            config = self._as_estimate(config)
        if config.get("mode") == "guide":
            return self._start_guide(config)
        self.controller.set_store(self._get_store())
        self._config = dict(config)
        self.workspace.setCurrentIndex(0)
        self._last_stage = ""
        self._job = "run"
        self._shown_before, self._shown = self._shown, None
        self.current_result = None
        self._live_attention = None
        self._guide_folder = None
        self.attention_panel.clear(
            "Attention maps arrive near the end of the run." if config.get("attention_maps")
            else NO_MAPS)
        self.latency_panel.clear("Running…")
        self.chart.clear("Estimating…\nthe bars appear when the estimate ends."
                         if config.get("mode") == "estimate"
                         else "Measuring…\nthe bars appear as the layers are measured.")
        self.table.clear()
        self.model_panel.clear("The module tree appears when the run ends.")
        self.totals.clear("Running…")
        self.timeline.clear()
        model, workload = config.get("model", "?"), config.get("workload", "?")
        self.status.show_started(model, workload)
        what = "Estimate" if config.get("mode") == "estimate" else "Run"
        tp = (config.get("job") or {}).get("tensor_parallel")
        size = ("the prompt's tokens" if config.get("prompt") else f"seq {config.get('seq')}")
        self.log.info(f"{what}: {workload} on {model} (batch {config.get('batch')}, "
                      f"{size}, {config.get('device')}, {config.get('dtype')}"
                      + (f"; tensor parallel, rank 0 of {tp}" if tp else "") + ")")
        self._note_remote_code(config)
        return self.controller.start(config)

    def _by_length(self, config: dict[str, Any], what: str,
                   lengths: str | None = None) -> dict[str, Any]:
        """``config`` without the prompt, for jobs that take a sequence length (estimates,
        sweeps, fit, plans, the guide), saying so in the log when a prompt was given."""
        if not config.get("prompt"):
            return config
        lengths = lengths or f"Sequence ({config.get('seq')} tokens)"
        self.log.info(f"{what} uses {lengths}, not the prompt: only Run tokenizes text.")
        return {**config, "prompt": None}

    def _as_estimate(self, config: dict[str, Any]) -> dict[str, Any]:
        """What an estimate can take from the controls: no prompt, no attention maps (fake
        tensors have no values) and the cpu device (estimates model the CPU's kernels), each
        change said in the log."""
        config = self._by_length(config, "The estimate")
        if config.get("attention_maps"):
            self.log.info("The estimate captures no attention maps: fake tensors have no "
                          "values (Run captures them).")
            config = {**config, "attention_maps": False}
        if str(config.get("device") or "cpu") != "cpu":
            self.log.info(f"The estimate models the CPU's kernels, so it runs on cpu (the "
                          f"Device {config.get('device')} is for Run).")
            config = {**config, "device": "cpu"}
        return config

    def _note_remote_code(self, config: dict[str, Any]) -> None:
        if config.get("trust_remote_code"):
            self.log.warning("Remote code is trusted for this job: a model whose config has "
                             "auto_map runs the Python code that ships with it.")

    @Slot()
    def cancel_run(self) -> None:
        if self.controller.is_running:
            self.status.show_message("Cancelling…")
            self.log.info("Cancelling the run…")
            self.controller.cancel()

    def cancel_on_escape(self, ask: Any = None) -> bool:
        """Escape: cancel the run; a guide asks first, saying what is kept. ``ask`` (title,
        text) -> bool replaces the question box (tests). True when it cancelled."""
        if not self.controller.is_running:
            return False
        if self._job == "guide":
            guide = self.guide_panel.guide
            done = len(guide.entries) if guide is not None else 0
            kept = (f"The {done} technique{'s' if done != 1 else ''} measured so far stay on "
                    "the Guide page and in the run store." if done else
                    "No technique has finished yet.")
            if not (ask or self._ask)("Cancel the guide?", f"Stop the guide now? {kept}"):
                self.log.info("The guide goes on (Escape was not confirmed).")
                return False
        self.cancel_run()
        return True

    @Slot()
    def _on_settings_edited(self) -> None:
        if not self.controller.is_running:
            self.status.clear_error()

    @Slot(bool)
    def _on_running_changed(self, running: bool) -> None:
        if not self._closing:
            self.controls.set_running(running)
            self.run_action.setEnabled(self.controls.runnable)
            self.guide_action.setEnabled(not running)
            self.guide_panel.run_button.setEnabled(not running)
            self.sweep_action.setEnabled(not running)
            self.fit_action.setEnabled(not running)
            self.plan_action.setEnabled(not running)
            self.use_settings_action.setEnabled(not running)
            self.open_run_action.setEnabled(not running)  # (opening one waits for the run)
            self.saved_runs.set_running(running)
            self.sweep_panel.set_running(running)
            self.plan_panel.set_running(running)
            self.cancel_action.setEnabled(running)
            self.escape_action.setEnabled(running)

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
        if not self._closing and self._job != "guide":  # (the guide's runs: not this page's)
            self.timeline.add_samples(samples)

    @Slot(object)
    def _on_layers(self, layers: Sequence) -> None:
        if self._closing or self._job == "guide":
            return
        self.table.render(layers)
        self.chart.render(layers)

    @Slot(object)
    def _on_attention(self, maps: Any) -> None:
        if self._closing or self._job == "guide":
            return
        count = len(getattr(maps, "maps", {}) or {})
        tokens = len(getattr(maps, "tokens", ()) or ())
        self.log.info(f"Attention maps captured for {count} layer(s), {tokens} token(s).")
        self._live_attention = maps
        self.attention_panel.render(maps, None)  # the capture record comes with the result

    def run_guide(self) -> bool:
        """Run → Run the guide: every technique on the chosen model and sizes, in the engine
        process, one run each (saved); the Guide page shows the result."""
        config = self._by_length({**self.controls.config(), "mode": "guide",
                                  "optimizations": []}, "The guide")
        if self.controller.is_running:
            self.log.warning("A run is already in progress: wait for it or cancel it first.")
            return False
        self.log.info(f"Guide: every technique on {config['model']} ({config['device']}); "
                      "this takes a few minutes on a small model.")
        return self._start_guide(config)

    def _start_guide(self, config: dict[str, Any]) -> bool:
        """Start a guide job: it reports to the Guide page, and the Current run page keeps the
        run it shows (the guide's own runs are many: they go to the store, not to that page,
        which was cleared and left saying "Measuring…" for good)."""
        self.controller.set_store(self._get_store())
        self._last_stage = ""
        self._job = "guide"
        self._guide_folder = None
        self.guide_panel.starting(f"Running the guide on {config.get('model')} "
                                  f"({config.get('device')}): the first technique appears here "
                                  "when it is measured…")
        self.workspace.setCurrentWidget(self.guide_panel)
        self.status.show_started(config.get("model", "?"), "guide")
        self._note_remote_code(config)
        return self.controller.start(config)

    def run_sweep(self) -> bool:
        """Run → Run a sweep: the Sweep & fit page's lengths and batches on the controls' model
        (with and without the selected optimizations), measured where they fit."""
        return self._start_job("sweep")

    def run_fit(self) -> bool:
        """Run → Find what fits: the page's budget and search, over estimates."""
        return self._start_job("fit")

    def _start_job(self, mode: str) -> bool:
        if self.controller.is_running:
            self.log.warning("A run is already in progress: wait for it or cancel it first.")
            return False
        from engine.errors import MemLensError

        config = self._by_length(self.controls.config(), "The sweep" if mode == "sweep"
                                 else "Find what fits", "the page's lengths")
        optimizations = config.pop("optimizations", [])
        try:
            job = (self.sweep_panel.sweep_job(optimizations) if mode == "sweep"
                   else self.sweep_panel.fit_job(optimizations))
        except MemLensError as exc:
            self.status.show_error(exc.message, exc.hint)
            self.log.error(exc.message, exc.hint, "invalid_workload")
            # the page says it too (it kept showing the previous result, as if it were this
            # one), above the previous result, kept and named as such
            self.sweep_panel.refuse(f"Not run: {exc.message} {exc.hint}".strip())
            self.workspace.setCurrentWidget(self.sweep_panel)
            return False
        config.update({"mode": mode, "job": job, "attention_maps": False,
                       "optimizations": optimizations})
        self.controller.set_store(self._get_store())
        self._last_stage = ""
        self._job = mode
        self.workspace.setCurrentWidget(self.sweep_panel)
        model, workload = config["model"], config["workload"]
        if mode == "sweep":
            what = (f"Sweep: {workload} on {model}, seq {job['seqs']} × batch {job['batches']}, "
                    f"{len(job['opt_sets'])} optimization set(s)")
        else:
            at = (f"at seq {job['seqs']}" if job["axis"] == "batch"
                  else f"for batch {job['batches']}")
            what = (f"What fits {job['budget']}: {workload} on {model}, the "
                    f"{'largest batch' if job['axis'] == 'batch' else 'longest sequence'} {at}")
        self.sweep_panel.start(mode, what + " — running…")
        self.status.show_started(model, f"{mode} · {workload}")
        self.log.info(what)
        self._note_remote_code(config)
        return self.controller.start(config)

    def run_tensor_parallel_estimate(self) -> bool:
        """Estimate rank 0 of the plan page's GPUs / ranks of tensor parallelism for the
        controls' model and workload (shown like any estimate, on the Current run page)."""
        ranks = self.plan_panel.devices_spin.value()
        return self.start_run({**self.controls.config(), "mode": "estimate",
                               "attention_maps": False, "job": {"tensor_parallel": ranks}})

    def run_plan(self) -> bool:
        """Run → Plan across devices: per-device memory of the controls' model and workload
        split across the Multi-GPU plan page's devices (an estimate, in the engine process)."""
        if self.controller.is_running:
            self.log.warning("A run is already in progress: wait for it or cancel it first.")
            return False
        from engine.errors import MemLensError

        config = self._by_length(self.controls.config(), "The plan")
        try:
            job = self.plan_panel.plan_job(config["workload"])
        except MemLensError as exc:
            self.status.show_error(exc.message, exc.hint)
            self.log.error(exc.message, exc.hint, "invalid_workload")
            # (the previous plan stayed on show, "fits", beside this refusal)
            self.plan_panel.clear(f"Not planned: {exc.message} {exc.hint}".strip())
            self.workspace.setCurrentWidget(self.plan_panel)
            return False
        config.update({"mode": "plan", "job": job, "attention_maps": False})
        self.controller.set_store(self._get_store())
        self._last_stage = ""
        self._job = "plan"
        self.workspace.setCurrentWidget(self.plan_panel)
        n = job.get("ranks") or job.get("devices")
        what = (f"Plan: {config['workload']} on {config['model']} across {n} × "
                f"{job['per_device']}" + (" (FSDP2)" if "ranks" in job else ""))
        self.plan_panel.clear(what + " — running…")
        self.status.show_started(config["model"], f"plan · {config['workload']}")
        self.log.info(what)
        self._note_remote_code(config)
        return self.controller.start(config)

    def show_plan(self, plan: Any) -> None:
        self.plan_panel.render(plan)
        self.workspace.setCurrentWidget(self.plan_panel)
        fits = plan.fits
        self.status.show_finished("Plan finished (estimate): " + (
            "no budget to check" if fits is None else "fits" if fits else "does not fit") + ".",
            good=fits is not False)
        for note in plan.notes:
            self.log.info(note)

    def save_plan_dialog(self) -> None:
        if self.plan_panel.plan is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save the plan as JSON", "memlens-plan.json",
                                              "JSON (*.json)")
        if path:
            self.save_record(path, self.plan_panel.plan)

    @Slot(object)
    def _on_item(self, event: Any) -> None:
        if self._closing:
            return
        if type(event).__name__ == "PointDone":
            self.sweep_panel.add_point(event.point)
        elif type(event).__name__ == "FitDone":
            self.sweep_panel.add_answer(event.answer)
            self.log.info(f"{event.answer.opt_set}: {event.answer.message}")
        elif type(event).__name__ == "GuideEntryDone" and event.guide.partial:
            self.show_guide(event.guide)  # (the last one is the finished guide: shown once)

    def save_sweep_dialog(self) -> None:
        record = self.sweep_panel.record
        if record is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, f"Save the {record.kind} as JSON",
                                              f"memlens-{record.kind}.json", "JSON (*.json)")
        if path:
            self.save_sweep(path)

    def save_sweep(self, path: str | Path) -> Path | None:
        """Write the sweep or fit on show as JSON (what ``memlens sweep/fit --out`` writes)."""
        return self.save_record(path, self.sweep_panel.record)

    def save_record(self, path: str | Path, record: Any) -> Path | None:
        """Write a sweep, fit or plan record as JSON (what the CLI's ``--out`` writes)."""
        import json

        if record is None:
            return None
        path = Path(path)
        try:
            path.write_text(json.dumps(record.to_dict(), indent=1), encoding="utf-8")
        except OSError as exc:
            self.status.show_error(f"Could not write {path}: {exc.strerror or exc}.",
                                   "Choose a writable folder.")
            return None
        self.log.info(f"Saved the {record.kind} to {path}.")
        return path

    def show_sweep(self, record: Any) -> None:
        if record.kind == "sweep":
            self.sweep_panel.render_sweep(record)
            kinds = [p.kind for p in record.points]
            failed = kinds.count("failed")
            self.status.show_finished(
                f"Sweep finished: {len(kinds)} points, {kinds.count('measured')} measured, "
                f"{kinds.count('estimate')} estimated" + (f", {failed} failed" if failed else "")
                + ".", good=not failed)
            for warning in record.warnings:
                self.log.warning(warning)
        else:
            self.sweep_panel.render_fit(record)
            found = sum(a.status in ("fits", "limit") for a in record.answers)
            self.status.show_finished(
                f"What fits {record.budget_description}: {len(record.answers)} answer(s), "
                "estimated" + ("" if found else "; nothing fits") + ".", good=bool(found))
        self.workspace.setCurrentWidget(self.sweep_panel)
        self.refresh_saved_runs()

    def _new_guide_folder(self, guide: Any, opened: str | Path | None = None) -> Path:
        """Where a guide's files go: ``guides/`` beside the run store, one folder a guide; a
        guide opened from a file gets one folder per file (opening it again redraws that
        folder instead of adding another copy)."""
        import datetime as _dt
        import hashlib
        import re
        import tempfile

        store = self._get_store()
        base = (Path(store.root).parent / "guides") if getattr(store, "root", None) else Path(
            tempfile.gettempdir()) / "memlens-guides"
        model = re.sub(r'[^A-Za-z0-9._-]+', '_', guide.model)[-60:]
        if opened is not None:
            key = hashlib.sha1(str(Path(opened).resolve()).encode()).hexdigest()[:10]
            return base / f"opened-{key}-{model}"
        return base / f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{model}"

    def show_guide(self, guide: Any) -> bool:
        """Write the guide's files and show them on the Guide page: after each technique while
        the guide runs (``guide.partial``; the page is brought forward at the first), and at
        the end. A cancelled guide stays on show as far as it got."""
        from engine.guide import write_guide

        folder = self._guide_folder
        first = folder is None
        if folder is None:
            folder = self._guide_folder = self._new_guide_folder(guide)
        try:
            path, _charts = write_guide(guide, folder)
        except OSError as exc:
            self.status.show_error(f"Could not write the guide: {exc}", "Check the data folder.")
            return False
        self.guide_panel.render(guide, path.parent)
        if first:
            self.workspace.setCurrentWidget(self.guide_panel)
        ran = sum(e.status == "ok" for e in guide.entries)
        if guide.partial:
            self.log.info(f"Guide: {len(guide.entries)} of {guide.planned} techniques done "
                          f"({guide.entries[-1].label}: {guide.entries[-1].status}).")
            return True
        self.status.show_finished(f"Guide finished: {ran} of {len(guide.entries)} techniques "
                                  "measured.")
        self.log.info(f"Guide written to {path}.")
        self.refresh_saved_runs()
        return True

    @Slot(object)
    def _on_finished(self, result: RunResult) -> None:
        if self._closing:
            return
        self._job = ""  # (the job is over: nothing is filtered for it any more)
        if getattr(result, "kind", None) in ("sweep", "fit"):
            self.show_sweep(result)
            return
        if getattr(result, "kind", None) in ("inference_plan", "training_plan"):
            self.show_plan(result)
            return
        if not isinstance(result, RunResult):  # a guide's result
            self.show_guide(result)
            return
        self.render_result(result, self._live_attention)
        t = result.totals
        what = ("Estimate finished (fake tensors): estimated peak" if result.is_estimate
                else "Finished: peak")
        self.status.show_finished(f"{what} {human_bytes(t.peak_bytes)} "
                                  f"in {human_seconds(result.duration_s)}.")
        kind, peak = (("estimate", "estimated peak") if result.is_estimate
                      else ("run", "peak"))
        self.log.info(f"Finished {kind} {result.run_id or '(unsaved)'}: "
                      f"{peak} {human_bytes(t.peak_bytes)}.")
        for warning in result.warnings:
            self.log.warning(warning)
        self.refresh_saved_runs()

    @Slot(str, str, str)
    def _on_failed(self, kind: str, message: str, hint: str) -> None:
        """A job ended without a result: say so in the status line and the log, and on the page
        the job reports to. A run that stopped before it measured anything (a refusal, a
        cancel, a missing model) gives the Current run page back to the run it showed before,
        marked as such; one that ran out of memory keeps its own timeline (how memory climbed)."""
        if self._closing:
            return
        cancelled = kind == "cancelled"
        if cancelled:
            self.status.show_message("Cancelled.")
            self.log.info(f"{message} {hint}".strip())
        else:
            self.status.show_error(message, hint)
            self.log.error(message, hint, kind)
        what = "Cancelled" if cancelled else "Failed"
        job, self._job = self._job, ""
        if job in ("sweep", "fit"):
            self.sweep_panel.message.setText(
                f"{what}: {message}" + ("" if cancelled or not hint else f" {hint}"))
            return
        if job == "plan":
            self.plan_panel.clear(f"{what}: {message}"
                                  + ("" if cancelled or not hint else f" {hint}"))
            return
        if job == "guide":  # what finished stays on its page; the Current run page is untouched
            if self._guide_folder is not None:
                self.guide_panel.stopped(what)
                self.refresh_saved_runs()
            else:
                self.guide_panel.starting(
                    f"{what} before the first technique was measured: {message}"
                    + ("" if cancelled or not hint else f" {hint}"))
            return
        previous, self._shown_before = self._shown_before, None
        if (previous is not None and self._guide_folder is None
                and kind != "out_of_memory" and not self.chart.labels):  # no layer arrived
            self.render_result(*previous)
            self.totals.render(previous[0], note=(
                f"The last run {'was cancelled' if cancelled else 'failed'}"
                " (see the log): this is still the run shown before it."))
            return
        ended = "Cancelled." if cancelled else "The run failed: see the log."
        self.totals.clear(ended)
        # Every tab that said what it was waiting for now says why nothing came.
        self.latency_panel.clear(ended)
        self.model_panel.clear(ended)
        if self._live_attention is None:
            self.attention_panel.clear(ended)
        if not self.chart.labels:  # no layer arrived: say why the chart stays empty
            self.chart.clear("Cancelled before any layer was measured." if cancelled
                             else "The run failed before any layer was measured:\nsee the log.")

    # -- results --------------------------------------------------------------------------------
    def render_result(self, result: RunResult, attention: AttentionMaps | None = None,
                      attention_reason: str | None = None) -> None:
        """Show a finished or saved run: table, chart with ``unattributed``, totals, timeline,
        latency, and the attention maps (``attention``: the live event or the store's file)
        with the run's capture record; ``attention_reason`` says why maps are missing."""
        self.current_result = result
        self._shown = (result, attention, attention_reason)
        self.table.render(result.layers)
        self.chart.render(result.layers, result.totals)
        self._draw_outline()
        self.model_panel.render(result)
        self.totals.render(result)
        self.latency_panel.render(result)
        self.attention_panel.render(attention, result.attention, attention_reason)
        config = result.config
        estimated = getattr(result, "estimate", None)
        if result.timeline:
            self.timeline.set_timeline(result.timeline)
        else:  # not the samples of a run that did not finish
            self.timeline.clear("ESTIMATE: fake tensors take no memory, so nothing was sampled "
                                "over time; the chart and table hold the estimate."
                                if estimated else "")
        tp = (estimated or {}).get("tensor_parallel") or 1
        rank = f", rank 0 of {tp} (tensor parallel)" if tp > 1 else ""
        kind = f" · ESTIMATE{rank}" if estimated is not None else ""
        self.setWindowTitle(f"MemLens · {config.model} · {config.workload}{kind}")
        self.chart.plot.setTitle((f"Estimated memory at peak by layer{rank}"
                                  if estimated is not None else "Memory at peak by layer"),
                                 color=theme.current().text)

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
            summaries = store.list()
            # A file event that changed no run (our own save, already listed) leaves the table,
            # its scroll position and the user's column widths alone.
            if summaries != self._listed:
                self._listed = summaries
                self.saved_runs.set_summaries(summaries)
        except Exception as exc:
            self._listed = None
            self.saved_runs.show_unavailable(f"Could not list saved runs: {exc}")
            return
        self._watch_store(store)
        self._follow_store({s.run_id for s in summaries}, store)

    def _follow_store(self, listed: set[str], store: Any) -> None:
        """Runs restored or deleted elsewhere (the command line, another window): Undo delete
        offers only runs still in the trash, and a baseline run no longer listed says so."""
        if self._last_deleted:
            trashed = set(getattr(store, "trashed", lambda: [])())
            self._last_deleted = [i for i in self._last_deleted if i in trashed]
            self.undo_delete_action.setEnabled(bool(self._last_deleted))
        base = self._baseline_run
        if base is not None:
            self.saved_runs.set_baseline_text(
                self._baseline_text(base) if base.run_id in listed else
                f"Baseline outline: run {base.run_id} ({base.config.model}, "
                f"{base.config.workload}), no longer in the store (deleted elsewhere); its "
                "outline stays until you clear it.")

    @staticmethod
    def _baseline_text(base: RunResult) -> str:
        return (f"Baseline outline: saved run {base.run_id} ({base.config.model}, "
                f"{base.config.workload}), bars matched by layer name.")

    def _watch_store(self, store: Any) -> None:
        """Watch the store folder: a save, a label (an atomic rename over the file) and a
        delete all change its entries, so one directory watch sees them all. A folder that does
        not exist yet (a fresh install) is waited for by watching its nearest existing parent."""
        root = getattr(store, "root", None)
        target = Path(root) if root is not None else None
        while target is not None and not target.is_dir():
            target = target.parent if target.parent != target else None
        wanted = [str(target)] if target is not None else []
        old = self._store_watcher.directories()
        if old != wanted:
            if old:
                self._store_watcher.removePaths(old)
            if wanted:
                self._store_watcher.addPaths(wanted)

    @Slot(str)
    def load_saved_run(self, run_id: str) -> bool:
        """Show a saved run (no model is loaded); errors go to the log, the window stays usable."""
        if self.controller.is_running:
            self.log.warning("Wait for the current run to finish (or cancel it) "
                             "before opening a saved run.")
            return False
        result = self._load_from_store(run_id)
        if result is None:
            return False
        store = self._get_store()
        self.timeline.clear()
        self._live_attention = None
        maps, reason = self._saved_attention(store, run_id, result)
        self.render_result(result, maps, reason)
        self.workspace.setCurrentIndex(0)
        self.status.show_message(f"Saved run {run_id}: {result.config.model}, "
                                 f"{result.config.workload}"
                                 + (" (ESTIMATE)" if result.is_estimate else "") + ".")
        self.log.info(f"Opened saved run {run_id}.")
        return True

    # -- labels and the trash --------------------------------------------------------------------
    def label_saved_run(self, run_id: str, text: str | None = None) -> bool:
        """Saved runs → Label…: name a saved run (``text`` None asks for it)."""
        store = self._get_store()
        if store is None:
            return False
        if text is None:
            from engine.config import MAX_LABEL

            current = next((s.label for s in store.list() if s.run_id == run_id), "")
            while True:  # a label too long is asked again with the text kept (it was lost)
                text, ok = QInputDialog.getText(
                    self, "Label a run",
                    f"Label of run {run_id} (at most {MAX_LABEL} characters):", text=current)
                if not ok:
                    self.status.clear_error()  # (the too-long label's red line stayed)
                    return False
                if len(one_line(text)) <= MAX_LABEL:
                    break
                self.status.show_error(f"The label has {len(one_line(text))} characters; a "
                                       f"label holds at most {MAX_LABEL}.", "Shorten it.")
                current = text
        try:
            store.set_label(run_id, text)
        except Exception as exc:  # MemLensError(store / not_found)
            self._store_error(f"Could not label run {run_id}", exc)
            return False
        label = one_line(text)
        said = f"Run {run_id} labelled {label!r}." if label else f"Run {run_id}: label cleared."
        self.log.info(said)
        self.status.show_message(said)
        self.refresh_saved_runs()
        return True

    def delete_saved_runs(self, run_ids: Sequence[str], confirm: bool = True) -> bool:
        """Saved runs → Delete: move runs (and their attention maps) to the store's trash, after
        asking; Edit → Undo delete brings the last ones back."""
        store = self._get_store()
        run_ids = list(run_ids)
        if store is None or not run_ids:
            return False
        what = run_ids[0] if len(run_ids) == 1 else f"these {len(run_ids)} runs"
        if confirm and not self._ask(
                "Delete runs", f"Move {what} to the trash?\n\nThey are kept in "
                f"{store.trash_root}: Edit → Undo delete brings them back, and Edit → Empty "
                "the trash… frees their space for good."):
            return False
        moved = self._each_run(run_ids, store.trash, "delete")
        if moved:
            self._last_deleted = moved
            self.undo_delete_action.setEnabled(True)
            if self._baseline_run is not None and self._baseline_run.run_id in moved:
                self.set_baseline_run("")  # its outline would name a run no longer listed
            self.log.info(f"Moved {len(moved)} run(s) to {store.trash_root}: "
                          f"{', '.join(moved)} (Edit → Undo delete brings them back).")
            self.status.show_message(f"Deleted {len(moved)} run(s): Edit → Undo delete "
                                     "brings them back.")
        self.refresh_saved_runs()
        return len(moved) == len(run_ids)

    def undo_delete(self) -> bool:
        """Edit → Undo delete: bring back the runs the last Delete moved to the trash."""
        ids, self._last_deleted = self._last_deleted, []
        self.undo_delete_action.setEnabled(False)
        store = self._get_store()
        trashed = set(store.trashed()) if store is not None else set()
        gone = [i for i in ids if i not in trashed]
        if gone:  # restored elsewhere meanwhile: nothing to undo for those
            self.log.info(f"Already back in the store: {', '.join(gone)}.")
        ids = [i for i in ids if i in trashed]
        return bool(ids) and self._restore_runs(ids)

    def restore_deleted_run_dialog(self) -> bool:
        """Edit → Restore a deleted run…: pick one run in the store's trash."""
        store = self._get_store()
        if store is None:
            return False
        ids = store.trashed()
        if not ids:
            self.log.info(f"The trash of {store.root} is empty.")
            self.status.show_message("No deleted runs to restore.")
            return False
        described = {s.run_id: s for s in store.trashed_runs()}
        items = [_trashed_item(run_id, described.get(run_id)) for run_id in ids]
        choice, ok = QInputDialog.getItem(self, "Restore a deleted run",
                                          "Run (newest id last):", items, len(items) - 1, False)
        if not ok or choice not in items:
            return False
        return self._restore_runs([ids[items.index(choice)]])

    def empty_trash(self, confirm: bool = True) -> bool:
        """Edit → Empty the trash…: remove every deleted run (and its maps) for good, after
        asking; the size freed is logged."""
        store = self._get_store()
        if store is None:
            return False
        ids = store.trashed()
        _, size = store.usage(trash=True)
        if not size and not ids:
            self.log.info(f"The trash of {store.root} is empty.")
            self.status.show_message("The trash is empty.")
            return False
        if confirm and not self._ask(
                "Empty the trash", f"Remove the {len(ids)} deleted run(s) in "
                f"{store.trash_root} for good, freeing {human_bytes(size)}?\n\nThis cannot be "
                "undone."):
            return False
        removed, freed, errors = store.empty_trash()
        for exc in errors:
            self._store_error("Could not empty the trash", exc)
        self._last_deleted = [i for i in self._last_deleted if i not in removed]
        self.undo_delete_action.setEnabled(bool(self._last_deleted))
        if removed or freed:
            said = f"Removed {len(removed)} deleted run(s) for good: {human_bytes(freed)} freed."
            self.log.info(said)
            if not errors:
                self.status.show_message(said)
        return not errors

    def _restore_runs(self, run_ids: Sequence[str]) -> bool:
        store = self._get_store()
        if store is None:
            return False
        restored = self._each_run(run_ids, store.restore, "restore")
        self._last_deleted = [i for i in self._last_deleted if i not in restored]
        self.undo_delete_action.setEnabled(bool(self._last_deleted))
        if restored:
            self.log.info(f"Restored {len(restored)} run(s): {', '.join(restored)}.")
            self.status.show_message(f"Restored {len(restored)} run(s).")
        self.refresh_saved_runs()
        self.saved_runs.select(restored)
        return len(restored) == len(run_ids)

    def _each_run(self, run_ids: Sequence[str], move: Any, verb: str) -> list[str]:
        """``move(run_id)`` for each run; the ids it moved (a failure is shown and skipped)."""
        done = []
        for run_id in run_ids:
            try:
                move(run_id)
            except Exception as exc:  # MemLensError(store / not_found)
                self._store_error(f"Could not {verb} run {run_id}", exc)
                continue
            done.append(run_id)
        return done

    def _ask(self, title: str, text: str) -> bool:
        """A yes/no question; True for yes."""
        return QMessageBox.question(self, title, text) == QMessageBox.StandardButton.Yes

    def _store_error(self, what: str, exc: Exception) -> None:
        message = getattr(exc, "message", None) or str(exc)
        hint = getattr(exc, "hint", "") or ""
        self.status.show_error(f"{what}: {message}", hint)
        self.log.error(f"{what}: {message}", hint)

    def use_saved_run_settings(self, run_id: str) -> bool:
        """Saved runs → Use settings: set the controls from a saved run's configuration."""
        result = self._load_from_store(run_id)
        return result is not None and self.use_run_settings(result)

    def use_shown_run_settings(self) -> bool:
        """Run → Use the shown run's settings (the run on the Current run page)."""
        if self.current_result is None:
            self.log.warning("No run is shown: open a saved run or run one first.")
            return False
        return self.use_run_settings(self.current_result)

    def use_run_settings(self, result: RunResult) -> bool:
        """Set every control from ``result``'s configuration, logging what could not be set
        (a device missing here, an optimization that no longer applies, a command-line-only
        setting); refused while a run is in progress."""
        if self.controller.is_running:
            self.log.warning("Wait for the current run to finish (or cancel it) before "
                             "changing the controls.")
            return False
        notes = self.controls.apply_run_config(result.config.to_dict())
        again = "Estimate" if result.estimate is not None else "Run"
        tp = int((result.estimate or {}).get("tensor_parallel") or 1)
        if tp > 1:  # kept in the estimate record, not the config: the plan page holds it
            self.plan_panel.devices_spin.setValue(tp)
            again = f"Tensor-parallel estimate on the Multi-GPU plan page ({tp} ranks)"
        name = result.run_id or result.config.model
        self.status.show_message(f"Controls set from run {name}: press {again} to repeat it.")
        self.log.info(f"Controls set from run {name} ({result.config.model}, "
                      f"{result.config.workload}); press {again} to repeat it.")
        for note in notes:
            self.log.warning(f"Not set from run {name}: {note.rstrip('.')}.")
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

    # -- baseline and comparison ---------------------------------------------------------------
    def _draw_outline(self) -> None:
        """The chart's dashed outline: a saved run the user picked, else the unoptimized model
        measured in the same run (when the run had optimizations)."""
        result = self.current_result
        if result is None or not self.chart.groups:
            return
        unattributed_index = len(self.chart.groups)
        if self._baseline_run is not None:
            base = self._baseline_run
            values = outline_from_run(self.chart.groups, base.layers)
            if len(self.chart.labels) > unattributed_index:
                values.append(base.totals.unattributed_bytes)
            self.chart.set_outline(values, f"baseline: {base.run_id}")
        elif result.baseline and result.baseline.get("layers"):
            per_layer = {name: row.get("at_peak_bytes")
                         for name, row in result.baseline["layers"].items()}
            self.chart.set_outline(outline_from_layers(self.chart.groups, per_layer),
                                   "unoptimized (same run)")
        else:
            self.chart.set_outline(None)

    @Slot(str)
    def set_baseline_run(self, run_id: str) -> bool:
        """Use a saved run as the chart's outline (``""`` goes back to the same-run baseline)."""
        if not run_id:
            self._baseline_run = None
            self.saved_runs.set_baseline_text("Baseline outline: the unoptimized model measured "
                                              "in the same run (when it has one).")
            self._draw_outline()
            return True
        result = self._load_from_store(run_id)
        if result is None:
            return False
        self._baseline_run = result
        self.saved_runs.set_baseline_text(self._baseline_text(result))
        self.log.info(f"Baseline for the memory chart: run {run_id}.")
        self._draw_outline()
        return True

    @Slot(object)
    def compare_saved_runs(self, run_ids: Sequence[str], against_own: bool = False) -> bool:
        from engine.compare import compare, reference_first

        runs = []
        for run_id in run_ids:
            result = self._load_from_store(run_id)
            if result is None:
                return False
            runs.append(result)
        if len(runs) < 2:
            self.compare_panel.clear("Select two or more runs to compare.")
            return False
        if against_own:  # (in the guide's order: #1… as its table)
            self.compare_panel.render(compare(runs, against_own=True))
            self.workspace.setCurrentWidget(self.runs_tab)
            self.status.show_message(f"Comparing {len(runs)} runs of the guide.")
            self.log.info(f"Comparing {len(runs)} runs of the guide, each against its own "
                          "unoptimized model.")
            return True
        baseline = self._baseline_run.run_id if self._baseline_run is not None else None
        runs, why = reference_first(runs, baseline)
        self.compare_panel.render(compare(runs), why)
        self.workspace.setCurrentWidget(self.runs_tab)
        # (the status still said the last action's line: "Controls set from run…")
        self.status.show_message(f"Comparing {len(runs)} runs against {runs[0].run_id} "
                                 f"({why}).")
        self.log.info(f"Comparing {len(runs)} runs against {runs[0].run_id} ({why}): "
                      f"{', '.join(r.run_id for r in runs[1:])}.")
        return True

    def _load_from_store(self, run_id: str) -> RunResult | None:
        store = self._get_store()
        if store is None:
            return None
        try:
            return store.load(run_id)
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc)
            hint = (getattr(exc, "hint", "")
                    or "The run file may be damaged or from a newer MemLens.")
            self.status.show_error(f"Could not open run {run_id}: {message}", hint)
            self.log.error(f"Could not open run {run_id}: {message}", hint)
            return None

    # -- files ----------------------------------------------------------------------------------
    def open_run_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a MemLens run or record", "",
            "MemLens run, sweep, fit, plan, distributed run or guide (*.json);;All files (*)")
        if path:
            self.open_run_file(path)

    def open_run_file(self, path: str | Path) -> bool:
        """Show a run JSON from anywhere on disk (no model is loaded), or a sweep, fit, plan or
        distributed run record on its own page."""
        from engine.records import RECORD_KINDS, read

        if self.controller.is_running:
            self.log.warning("Wait for the current run to finish (or cancel it) "
                             "before opening a run file.")
            return False
        try:
            kind, result = read(path)
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc)
            hint = getattr(exc, "hint", "") or "Check the file."
            self.status.show_error(f"Could not open {path}: {message}", hint)
            self.log.error(f"Could not open {path}: {message}", hint)
            self._forget_recent(str(path))
            return False
        if kind is not None:
            if kind in ("sweep", "fit"):
                (self.sweep_panel.render_sweep if kind == "sweep"
                 else self.sweep_panel.render_fit)(result)
                self.workspace.setCurrentWidget(self.sweep_panel)
            elif kind == "guide":
                # Drawn afresh from the JSON (the Markdown and charts beside it may be older).
                from engine.guide import write_guide

                try:
                    written, _charts = write_guide(result, self._new_guide_folder(result, path))
                except OSError as exc:
                    self.status.show_error(f"Could not show the guide: {exc}",
                                           "Check the data folder.")
                    return False
                self.guide_panel.render(result, written.parent)
                self.workspace.setCurrentWidget(self.guide_panel)
            else:
                self.plan_panel.render(result)
                self.workspace.setCurrentWidget(self.plan_panel)
            self.status.show_message(f"{Path(path).name}: {RECORD_KINDS[kind]}.")
            self.log.info(f"Opened {path} ({RECORD_KINDS[kind]}).")
            self._remember_recent(str(Path(path).resolve()))
            return True
        self.timeline.clear()
        self._live_attention = None
        captured = bool((result.attention or {}).get("captured"))
        self.render_result(result, None,
                           "attention maps are kept in the run store, not in a run file"
                           if captured else None)
        self.workspace.setCurrentIndex(0)
        self.status.show_message(f"Run file {Path(path).name}: {result.config.model}, "
                                 f"{result.config.workload}"
                                 + (" (ESTIMATE)" if result.is_estimate else "") + ".")
        self.log.info(f"Opened run file {path}.")
        self._remember_recent(str(Path(path).resolve()))
        return True

    def recent_files(self) -> list[str]:
        value = self.settings.value("recent_run_files", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or []) if v][:MAX_RECENT]

    def _remember_recent(self, path: str) -> None:
        files = [path] + [f for f in self.recent_files() if f != path]
        self.settings.setValue("recent_run_files", files[:MAX_RECENT])
        self._fill_recent_menu()

    def _forget_recent(self, path: str) -> None:
        files = [f for f in self.recent_files() if f != path and f != str(Path(path).resolve())]
        self.settings.setValue("recent_run_files", files)
        self._fill_recent_menu()

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        files = self.recent_files()
        for f in files:
            action = self.recent_menu.addAction(Path(f).name)
            action.setToolTip(f)
            action.setStatusTip(f)
            action.triggered.connect(lambda _=False, f=f: self.open_run_file(f))
        self.recent_menu.setEnabled(bool(files))

    def export_run_dialog(self) -> None:
        if self.current_result is None:
            self.log.warning("Nothing to export yet: run a profile or open a saved run first.")
            return
        name = f"{self.current_result.run_id or 'memlens-run'}.json"
        path, _ = QFileDialog.getSaveFileName(self, "Export the run as JSON", name,
                                              "MemLens run (*.json)")
        if path:
            self.export_run(path)

    def export_run(self, path: str | Path) -> Path | None:
        from engine.store import write_run_file

        if self.current_result is None:
            return None
        try:
            written = write_run_file(self.current_result, path)
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc)
            self.status.show_error(message, getattr(exc, "hint", ""))
            self.log.error(message, getattr(exc, "hint", ""))
            return None
        self.log.info(f"Run exported to {written}.")
        self._remember_recent(str(written.resolve()))
        return written

    def report_runs(self) -> list[RunResult]:
        """What File → Export report covers: the compared runs when the saved-runs page shows a
        comparison, else the run on screen."""
        if (self.workspace.currentWidget() is self.runs_tab
                and self.compare_panel.comparison is not None):
            return list(self.compare_panel.comparison.runs)
        return [self.current_result] if self.current_result is not None else []

    def export_report_dialog(self) -> None:
        if self.workspace.currentWidget() is self.guide_panel and self.guide_panel.guide:
            self.export_guide_report_dialog()
            return
        runs = self.report_runs()
        if not runs:
            self.log.warning("Nothing to report yet: run a profile, open a saved run, or "
                             "compare saved runs first.")
            return
        folder = QFileDialog.getExistingDirectory(self, "Export the report into a folder")
        if folder and self._may_replace(folder, "report.html"):
            self.export_report(folder, runs, pdf=True)

    def export_report(self, folder: str | Path, runs: Sequence[RunResult] | None = None,
                      pdf: bool = True) -> Any:
        """Write report.html (and report.pdf) with the panels' pictures into ``folder``.

        Rendering takes a moment on the UI thread (the panels are widgets); the status line
        says so first."""
        from .report import write_report

        runs = list(runs) if runs is not None else self.report_runs()
        if not runs:
            return None
        self.status.show_message(f"Writing the report into {folder}…")
        QGuiApplication.processEvents()
        attention: dict[str, Any] = {}
        store = self._get_store()
        load = getattr(store, "load_attention", None) if store is not None else None
        for run in runs:
            if load is None or not (run.attention or {}).get("captured"):
                continue
            if run is self.current_result and self._live_attention is not None:
                attention[run.run_id] = self._live_attention
                continue
            try:
                maps = load(run.run_id)
            except Exception:  # a damaged maps file: the report goes without that picture
                maps = None
            if maps is not None:
                attention[run.run_id] = maps
        try:
            from engine.cli import refuse_store_folder

            if getattr(store, "trash_root", None) is not None:  # (else: damaged runs)
                refuse_store_folder(folder, store, "The folder", "the report's files",
                                    f"Choose another folder than {store.root}.")
            files = write_report(runs, Path(folder), pdf=pdf, attention=attention)
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc)
            hint = getattr(exc, "hint", "") or "Choose a writable folder."
            self.status.show_error(f"Could not write the report: {message}", hint)
            self.log.error(f"Could not write the report: {message}", hint)
            return None
        written = ", ".join(p.name for p in (files.html, files.pdf) if p is not None)
        self.status.show_message(f"Report written: {written} in {files.folder}.")
        self.log.info(f"Report written to {files.folder} ({written}, "
                      f"{len(files.images)} pictures).")
        return files

    def export_guide_report_dialog(self) -> None:
        if self.guide_panel.guide is None:
            self.log.warning("No guide yet: Run → Run the guide first.")
            return
        folder = QFileDialog.getExistingDirectory(self, "Export the guide's report into a folder")
        if folder and self._may_replace(folder, "guide.html"):
            self.export_guide_report(folder)

    def _may_replace(self, folder: str | Path, name: str) -> bool:
        """A folder that already holds a report of this kind: ask before writing over it (the
        previous report's pictures are removed with it, see ``gui.report``)."""
        if not (Path(folder) / name).exists():
            return True
        return self._ask("Replace the report?", f"{Path(folder) / name} already exists. "
                         "Replace that report (its pictures and PDF too) with this one?")

    def export_guide_report(self, folder: str | Path, pdf: bool = True) -> Any:
        """Write guide.html (and guide.pdf): the guide on show with the compare view of each
        workload's runs, read from the run store."""
        from .report import write_guide_report

        guide = self.guide_panel.guide
        if guide is None:
            return None
        self.status.show_message(f"Writing the guide's report into {folder}…")
        QGuiApplication.processEvents()
        try:
            from engine.cli import refuse_store_folder

            store = self._get_store()
            if getattr(store, "trash_root", None) is not None:
                refuse_store_folder(folder, store, "The folder", "the report's files",
                                    f"Choose another folder than {store.root}.")
            files = write_guide_report(guide, Path(folder), store, pdf=pdf)
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc)
            hint = getattr(exc, "hint", "") or "Choose a writable folder."
            self.status.show_error(f"Could not write the guide's report: {message}", hint)
            self.log.error(f"Could not write the guide's report: {message}", hint)
            return None
        written = ", ".join(p.name for p in (files.html, files.pdf) if p is not None)
        self.status.show_message(f"Guide report written: {written} in {files.folder}.")
        self.log.info(f"Guide report written to {files.folder} ({written}).")
        return files

    def panels(self) -> dict[str, QWidget]:
        """Every panel that can be saved or copied as a picture, by title."""
        return {"Memory by layer": self.chart, "Attention": self.attention_panel,
                "Latency": self.latency_panel, "Model": self.model_panel,
                "Timeline": self.timeline, "Per-layer table": self.table,
                "Totals": self.totals, "Compare view": self.compare_panel,
                "Sweep & fit": self.sweep_panel, "Multi-GPU plan": self.plan_panel}

    def current_plot(self) -> QWidget:
        """The plot the user is looking at: the current tab of the Current run page, or the
        page's own panel on the other pages (Ctrl+S and Copy saved the hidden Current run
        chart from the Sweep, Plan or compare pages). The Guide page has none: the window."""
        page = self.workspace.currentWidget()
        if page is self.runs_tab:
            return self.compare_panel
        if page is self.sweep_panel or page is self.plan_panel:
            return page
        if page is self.guide_panel:
            return self
        return self.plot_tabs.currentWidget()

    def save_plot_dialog(self, widget: QWidget | None = None) -> None:
        target = widget or self.current_plot()
        names = {w: t for t, w in self.panels().items()}
        title = ("window" if target is self else names.get(target, "plot")).lower().replace(
            " ", "-")
        path, _ = QFileDialog.getSaveFileName(self, "Save as PNG", f"memlens-{title}.png",
                                              "PNG image (*.png)")
        if path:
            self.save_png(path, target)

    def save_png(self, path: str | Path, widget: QWidget | None = None) -> bool:
        """Render ``widget`` (the current tab by default) to a PNG at its on-screen size."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            path = path.with_suffix(".png")
        ok = (widget or self.current_plot()).grab().save(str(path), "PNG")
        if ok:
            self.log.info(f"Saved {path}.")
        else:
            self.status.show_error(f"Could not write {path}.", "Choose a writable folder.")
            self.log.error(f"Could not write {path}.", "Choose a writable folder.")
        return ok

    def copy_plot(self, widget: QWidget | None = None) -> None:
        QGuiApplication.clipboard().setPixmap((widget or self.current_plot()).grab())
        self.log.info("Plot copied to the clipboard.")

    # -- settings and themes --------------------------------------------------------------------
    def set_theme(self, name: str) -> None:
        applied = theme.apply(name, self)
        action = self.theme_actions.get(applied.name)
        if action is not None and not action.isChecked():
            action.setChecked(True)
        self.settings.setValue("theme", applied.name)

    def restore_settings(self, model: str | None = None) -> None:
        """Last controls, recent models and run files, window layout, theme (QSettings)."""
        s = self.settings
        values = {key: s.value(f"controls/{key}") for key in SETTINGS_CONTROLS}
        recent_models = s.value("recent_models", []) or []
        for m in ([recent_models] if isinstance(recent_models, str) else recent_models):
            self.controls.add_recent_model(str(m))
        if model is not None:  # the command line wins over the last session
            values["model"] = model
        self.controls.restore({k: v for k, v in values.items() if v is not None})
        geometry = s.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        for name, splitter in self._splitters.items():
            state = s.value(f"window/splitter_{name}")
            if state is not None:
                splitter.restoreState(state)
        tab = s.value("window/tab")
        if tab is not None:
            try:
                self.plot_tabs.setCurrentIndex(int(tab))
            except (TypeError, ValueError):
                pass
        page = s.value("window/page")
        if page is not None:
            try:
                self.workspace.setCurrentIndex(int(page))
            except (TypeError, ValueError):
                pass
        devices = [self.controls.device_combo.itemText(i)
                   for i in range(self.controls.device_combo.count())]
        self.sweep_panel.set_default_budget(
            "gpu" if any(d.startswith("cuda") for d in devices) else "ram")
        self.sweep_panel.restore({key: s.value(f"sweep/{key}")
                                  for key in self.sweep_panel.inputs()})
        self.plan_panel.restore({key: s.value(f"plan/{key}") for key in self.plan_panel.inputs()})
        self._fill_recent_menu()
        self.set_theme(str(s.value("theme", "light") or "light"))

    def save_settings(self) -> None:
        s = self.settings
        config = self.controls.config()
        for key in SETTINGS_CONTROLS:
            s.setValue(f"controls/{key}", config.get(key))
        model = str(config.get("model") or "")
        if model and ("/" in model or model.endswith(".json")):
            recent = s.value("recent_models", []) or []
            recent = [recent] if isinstance(recent, str) else list(recent)
            s.setValue("recent_models", ([model] + [m for m in recent if m != model])[:MAX_RECENT])
        for key, value in self.sweep_panel.inputs().items():
            s.setValue(f"sweep/{key}", value)
        for key, value in self.plan_panel.inputs().items():
            s.setValue(f"plan/{key}", value)
        s.setValue("window/geometry", self.saveGeometry())
        for name, splitter in self._splitters.items():
            s.setValue(f"window/splitter_{name}", splitter.saveState())
        s.setValue("window/tab", self.plot_tabs.currentIndex())
        s.setValue("window/page", self.workspace.currentIndex())
        s.sync()

    # -- Qt -------------------------------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        self._closing = False  # a closed window can be shown again
        super().showEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self._closing = True
        self.controller.shutdown()
        try:
            self.save_settings()
        except Exception as exc:  # settings must never keep the window from closing
            self.log.error(f"Could not save the settings: {exc}")
        super().closeEvent(event)


def _trashed_item(run_id: str, summary: Any) -> str:
    """A trashed run as the restore dialog lists it: id, then model, workload and label."""
    if summary is None:
        return run_id
    label = f" · {summary.label}" if getattr(summary, "label", "") else ""
    return f"{run_id} — {summary.model}, {summary.workload}{label}"
