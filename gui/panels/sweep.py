"""Sweeps and what fits, in the window: the engine's ``SweepRecord`` / ``FitRecord`` drawn as
curves of peak memory (and measured latency) and as tables, point by point as they arrive.

Measured points are filled markers on solid lines; estimated points are hollow markers on dashed
lines, and their rows say ESTIMATE: an estimate never looks like a measurement. Every figure here
comes from the engine's records; the panel only parses what the user typed into the job's
arguments (with the engine's own parsers, so the messages are the CLI's) and draws.
"""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.format import MISSING, bytes_against, human_bytes
from engine.sweep import BUDGET_FORMS, CATEGORY_LABELS, parse_bytes, parse_int_list

from .axis import keep_legend_fitted, show_placeholder
from .. import theme
from .compare import run_color

UNITS = (("B", 1.0), ("KiB", 1024.0), ("MiB", 1024.0**2), ("GiB", 1024.0**3),
         ("TiB", 1024.0**4))


def byte_unit(largest: float) -> tuple[str, float]:
    """The unit the memory axis is drawn in: the largest with the biggest value at least 1."""
    name, scale = UNITS[0]
    for n, s in UNITS:
        if largest >= s:
            name, scale = n, s
    return name, scale
# (a sweep point's "binding" is only the largest part of its peak; in a fit, Binding is what
# grows past the budget: one word for two things read as one)
SWEEP_COLUMNS = ("Set", "Seq", "Batch", "Kind", "Peak", "Largest part", "Latency", "Note")
FIT_COLUMNS = ("Set", "At", "Answer", "Est. peak", "Next tested", "Its peak", "Binding",
               "Largest part", "Estimates", "Says")
# (short items: "Longest sequence per b…" was cut at 1024 px; the whole phrase is the tooltip)
FIT_AXES = (("seq", "Longest sequence", "The longest sequence that fits, for each batch size"),
            ("batch", "Largest batch", "The largest batch that fits, for each sequence length"))


def integer_step(span: float, most: int = 8) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that puts at most ``most`` ticks on ``span``."""
    step, k = 1, 0
    while span / step > most:
        k += 1
        step = (1, 2, 5)[k % 3] * 10 ** (k // 3)
    return step


def _item(text: str, align_right: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if align_right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def _style(plot: pg.PlotItem, title: str, left: str, bottom: str) -> None:
    t = theme.current()
    plot.setTitle(title, color=t.text, size="9pt")
    plot.setLabel("left", left)
    plot.getAxis("left").enableAutoSIPrefix(False)  # the unit is chosen from the data
    plot.setLabel("bottom", bottom)
    plot.showGrid(x=True, y=True, alpha=0.25)
    plot.setMenuEnabled(False)
    for axis in ("left", "bottom"):
        plot.getAxis(axis).setTextPen(t.text)
        plot.getAxis(axis).setPen(t.axis)


SWEEP_EMPTY = ("No sweep yet.\nRun sweep draws the peak over sequence length\nand batch; Find "
               "what fits marks the largest\nthat fits the budget.")
LATENCY_EMPTY = "Latency of the measured points\nappears here."

class SweepPanel(QWidget):
    """Inputs for a sweep or a fit, and their results.

    Emits ``sweep_requested(job)`` / ``fit_requested(job)`` with the engine job's arguments
    (see ``engine.server.run_job``) after checking them; ``save_requested()`` asks the window to
    save the record on show. ``add_point`` / ``add_answer`` draw live events; ``render_sweep`` /
    ``render_fit`` draw a finished record (which replaces the live drawing).
    """

    sweep_requested = Signal(object)
    fit_requested = Signal(object)
    save_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.record: Any = None  # the finished SweepRecord or FitRecord on show
        self.points: list[Any] = []  # sweep points drawn so far (live or from the record)
        self.answers: list[Any] = []
        self._mode = ""  # "sweep" | "fit" | ""

        self.seq_edit = QLineEdit("128,256,512")
        self.seq_edit.setToolTip("Sequence lengths, comma-separated (for generate: prompt "
                                 "lengths). A fit by batch searches at these lengths.")
        self.batch_edit = QLineEdit("1")
        self.batch_edit.setToolTip("Batch sizes, comma-separated. A fit by sequence answers "
                                   "for each of these batches.")
        self.baseline_check = QCheckBox("Also without optimizations")
        self.baseline_check.setChecked(True)
        self.baseline_check.setToolTip("With optimizations selected on the left, sweep or fit "
                                       "the plain model too, as a second set of curves")
        self.estimate_check = QCheckBox("Estimate only")
        self.estimate_check.setToolTip("Estimate every point (fake tensors: no weights, no "
                                       "memory, no latency) instead of measuring those that fit")
        self.sweep_button = QPushButton("Run sweep")
        self.sweep_button.setToolTip("Peak memory over sequence length × batch: measured where "
                                     "it fits this device, estimated beyond")
        self.budget_edit = QLineEdit("ram")
        self.budget_edit.setToolTip("A size such as 24GiB or 80GB, or gpu (the detected GPU's "
                                    "memory) or ram (the available RAM)")
        self.axis_combo = QComboBox()
        # (as wide as its longest item, it set the page's, and the window's, minimum width)
        self.axis_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.axis_combo.setMinimumContentsLength(12)
        for axis, text, tip in FIT_AXES:
            self.axis_combo.addItem(text, axis)
            self.axis_combo.setItemData(self.axis_combo.count() - 1, tip,
                                        Qt.ItemDataRole.ToolTipRole)
        self.axis_combo.currentIndexChanged.connect(
            lambda i: self.axis_combo.setToolTip(FIT_AXES[i][2] if i >= 0 else ""))
        self.axis_combo.setToolTip(FIT_AXES[0][2])
        self.fit_button = QPushButton("Find what fits")
        self.fit_button.setToolTip("Search over estimates for what fits the budget")
        self.save_button = QPushButton("Save JSON…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self.save_requested)

        # (a short title: a group box is at least as wide as its title, and this one set the
        # window's minimum width; the message below says what the page uses)
        box = QGroupBox("Sweep and what fits")
        box.setToolTip("Uses the model, workload, dtype and optimizations on the left")
        grid = QGridLayout(box)
        # Three short rows (sizes, budget, options) rather than two long ones: the page must not
        # set the window's minimum width beyond a 1024 px screen.
        grid.addWidget(QLabel("Sequence lengths"), 0, 0)
        grid.addWidget(self.seq_edit, 0, 1)
        grid.addWidget(QLabel("Batches"), 0, 2)
        grid.addWidget(self.batch_edit, 0, 3)
        grid.addWidget(self.sweep_button, 0, 4)
        grid.addWidget(QLabel("Budget"), 1, 0)
        grid.addWidget(self.budget_edit, 1, 1)
        grid.addWidget(QLabel("Search"), 1, 2)
        grid.addWidget(self.axis_combo, 1, 3)
        grid.addWidget(self.fit_button, 1, 4)
        options = QHBoxLayout()
        options.addWidget(self.baseline_check)
        options.addWidget(self.estimate_check)
        options.addStretch(1)
        options.addWidget(self.save_button)
        grid.addLayout(options, 2, 0, 1, 5)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)

        self.message = QLabel("Run a sweep to see how the peak grows with sequence length and "
                              "batch, or find what fits a memory budget, for the model, "
                              "workload, dtype and optimizations on the left.")
        self.message.setWordWrap(True)

        self.memory_widget = pg.GraphicsLayoutWidget()
        self.memory_widget.setBackground(theme.current().background)
        self.memory_plot = self.memory_widget.addPlot(row=0, col=0)
        _style(self.memory_plot, "Peak memory", "MiB", "sequence length")
        self.legend = pg.LegendItem(colCount=3, labelTextColor=theme.current().text)
        keep_legend_fitted(self.legend, self.memory_widget)
        self.memory_widget.addItem(self.legend, row=1, col=0)
        self.latency_widget = pg.GraphicsLayoutWidget()
        self.latency_widget.setBackground(theme.current().background)
        self.latency_plot = self.latency_widget.addPlot(row=0, col=0)
        _style(self.latency_plot, "Latency (measured points)", "ms", "sequence length")
        self.plots = QSplitter(Qt.Orientation.Horizontal)
        self.plots.addWidget(self.memory_widget)
        self.plots.addWidget(self.latency_widget)
        self.plots.setSizes([600, 400])

        self.table = QTableWidget(0, len(SWEEP_COLUMNS))
        # Tab leaves the table for the next control (it cycled the cells, and the controls
        # after it could not be reached from the keyboard); arrows still move between cells
        self.table.setTabKeyNavigation(False)
        self.table.setHorizontalHeaderLabels(list(SWEEP_COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setWordWrap(False)
        self.table.resizeColumnsToContents()  # the headers whole before any sweep
        self._placeholders(SWEEP_EMPTY)

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.plots)
        split.addWidget(self.table)
        split.setSizes([330, 200])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(box)
        top = QHBoxLayout()
        top.addWidget(self.message, 1)
        layout.addLayout(top)
        layout.addWidget(split, 1)

        self.sweep_button.clicked.connect(lambda _=False: self.request_sweep())
        self.fit_button.clicked.connect(lambda _=False: self.request_fit())

    # -- inputs ---------------------------------------------------------------------------------
    def set_running(self, running: bool) -> None:
        self.sweep_button.setEnabled(not running)
        self.fit_button.setEnabled(not running)

    def set_default_budget(self, text: str) -> None:
        """``gpu`` where a GPU is offered, else ``ram`` (only while the user has not typed)."""
        if not self.budget_edit.isModified():
            self.budget_edit.setText(text)

    def inputs(self) -> dict[str, Any]:
        """What the user typed (saved in the window's settings)."""
        return {"seqs": self.seq_edit.text(), "batches": self.batch_edit.text(),
                "budget": self.budget_edit.text(), "axis": self.axis_combo.currentData(),
                "baseline": self.baseline_check.isChecked(),
                "estimate_only": self.estimate_check.isChecked()}

    def restore(self, values: dict[str, Any]) -> None:
        """Set the inputs from saved settings (missing values are left as they are)."""
        for key, edit in (("seqs", self.seq_edit), ("batches", self.batch_edit),
                          ("budget", self.budget_edit)):
            if values.get(key):
                edit.setText(str(values[key]))
                edit.setModified(key == "budget")
        index = self.axis_combo.findData(values.get("axis"))
        if index >= 0:
            self.axis_combo.setCurrentIndex(index)
        for key, check in (("baseline", self.baseline_check),
                           ("estimate_only", self.estimate_check)):
            if values.get(key) is not None:
                check.setChecked(str(values[key]).lower() in ("true", "1"))

    def _sets(self, optimizations: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        if optimizations and self.baseline_check.isChecked():
            return [[], list(optimizations)]
        return [list(optimizations)]

    def _lists(self) -> tuple[list[int], list[int]]:
        return (parse_int_list(self.seq_edit.text(), "Sequence lengths"),
                parse_int_list(self.batch_edit.text(), "Batches", sample="1,2,4"))

    def sweep_job(self, optimizations: list[dict[str, Any]]) -> dict[str, Any]:
        """The sweep job's arguments from the inputs (raises ``MemLensError`` on bad input)."""
        seqs, batches = self._lists()
        return {"seqs": seqs, "batches": batches, "opt_sets": self._sets(optimizations),
                "measure_limit_bytes": 0 if self.estimate_check.isChecked() else None}

    def fit_job(self, optimizations: list[dict[str, Any]]) -> dict[str, Any]:
        """The fit job's arguments from the inputs (raises ``MemLensError`` on bad input)."""
        seqs, batches = self._lists()
        budget = self.budget_edit.text().strip() or "ram"
        if budget.lower() not in ("gpu", "ram"):
            parse_bytes(budget, BUDGET_FORMS)  # refuse a bad size here, as the engine would
        axis = self.axis_combo.currentData()
        job: dict[str, Any] = {"budget": budget, "axis": axis,
                               "opt_sets": self._sets(optimizations)}
        if axis == "batch":
            job["seqs"] = seqs
        else:
            job["batches"] = batches
        return job

    def request_sweep(self) -> None:
        self.sweep_requested.emit(None)  # the window adds the controls' optimizations

    def request_fit(self) -> None:
        self.fit_requested.emit(None)

    # -- drawing --------------------------------------------------------------------------------
    def _placeholders(self, memory: str | None) -> None:
        show_placeholder(self.memory_plot, memory)
        show_placeholder(self.latency_plot, LATENCY_EMPTY if memory else None)

    def clear(self, text: str = "", placeholder: str | None = None) -> None:
        """Empty the page; ``text`` replaces the message, ``placeholder`` stands in the charts
        (default: what the page is for)."""
        self.record = None
        self.points, self.answers = [], []
        self._mode = ""
        self.memory_plot.clear()
        self.latency_plot.clear()
        # back to the page's plain layout: a failed search left the fit's title, its columns
        # and no latency chart beside "No sweep yet"
        _style(self.memory_plot, "Peak memory", "MiB", "sequence length")
        self.memory_plot.getAxis("bottom").setTickSpacing()  # (a batch fit's whole-batch ticks)
        self.latency_widget.setVisible(True)
        self.table.setColumnCount(len(SWEEP_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(SWEEP_COLUMNS))
        self._placeholders(placeholder or SWEEP_EMPTY)
        self.legend.clear()
        self.table.setRowCount(0)
        self.save_button.setEnabled(False)
        if text:
            self.message.setText(text)

    def refuse(self, text: str) -> None:
        """A sweep or fit refused before it ran (a budget that is not a size): ``text`` says
        why, above the result already on the page, which is said to be the previous one
        (clearing it lost a sweep for a typing slip; keeping it silently passed it off as
        this one's answer)."""
        if self.record is None:
            self.clear(text)
            return
        kind = "sweep" if self._mode == "sweep" else "search"
        self.message.setText(f"{text} Below, unchanged: the previous {kind}. "
                             f"{self._record_message}")

    def start(self, mode: str, text: str) -> None:
        """A job has started: empty the page and show ``text``."""
        self.clear(text, "Searching: the answer is drawn when it is found." if mode == "fit"
                   else "Working: each point is drawn as it is measured or estimated.")
        self._mode = mode
        self.latency_widget.setVisible(mode != "fit")  # a fit has estimates only: no latency
        if mode == "fit":
            self.table.setColumnCount(len(FIT_COLUMNS))
            self.table.setHorizontalHeaderLabels(list(FIT_COLUMNS))
        else:
            self.table.setColumnCount(len(SWEEP_COLUMNS))
            self.table.setHorizontalHeaderLabels(list(SWEEP_COLUMNS))

    def add_point(self, point: Any) -> None:
        if self._mode != "sweep":
            self.start("sweep", "")
        self.points.append(point)
        self._draw_sweep()

    def add_answer(self, answer: Any) -> None:
        if self._mode != "fit":
            self.start("fit", "")
        self.answers.append(answer)
        self._draw_fit(None)

    def render_sweep(self, record: Any) -> None:
        self.start("sweep", "")
        self.record = record
        self.points = list(record.points)
        self._draw_sweep()
        measured = sum(p.kind == "measured" for p in record.points)
        estimated = sum(p.kind == "estimate" for p in record.points)
        failed = sum(p.kind == "failed" for p in record.points)
        text = (f"Sweep of {record.model} · {record.workload} · {len(record.points)} points: "
                f"{measured} measured, {estimated} ESTIMATED (hollow markers, dashed lines: "
                f"fake tensors, no latency)" + (f", {failed} failed" if failed else "")
                + f". Rule: {record.measure_rule}")
        if record.measure_limit_bytes and record.available_bytes:
            text += (f" (limit {human_bytes(record.measure_limit_bytes)} of "
                     f"{human_bytes(record.available_bytes)} available)")
        self.message.setText(text + ".")
        self._record_message = self.message.text()
        self.latency_widget.setVisible(any(p.latency_ms is not None for p in record.points))
        self.save_button.setEnabled(True)

    def render_fit(self, record: Any) -> None:
        self.start("fit", "")
        self.record = record
        self.answers = list(record.answers)
        self._draw_fit(record)
        what = "largest batch" if record.axis == "batch" else "longest sequence"
        self.message.setText(
            f"ESTIMATE — the {what} that fits {record.budget_description}, for {record.model} · "
            f"{record.workload} ({len(record.answers)} answer(s), {record.duration_s:.1f} s). "
            + " ".join(record.notes))
        self._record_message = self.message.text()
        self.save_button.setEnabled(True)

    def _curve_key(self, p: Any) -> tuple[str, int]:
        return (p.opt_set, p.batch)

    def _draw_sweep(self) -> None:
        self.memory_plot.clear()
        self.latency_plot.clear()
        self._placeholders(None)
        self.legend.clear()
        unit, MIB = byte_unit(max((p.peak_bytes or 0 for p in self.points), default=0))
        _style(self.memory_plot, "Peak memory", unit, "sequence length")
        _style(self.latency_plot, "Latency (measured points)", "ms", "sequence length")
        keys: list[tuple[str, int]] = []
        for p in self.points:
            if self._curve_key(p) not in keys:
                keys.append(self._curve_key(p))
        sets = {k[0] for k in keys}
        for i, key in enumerate(keys):
            color = run_color(i)
            pts = sorted((p for p in self.points if self._curve_key(p) == key),
                         key=lambda p: p.seq)
            name = (f"{key[0]}, " if len(sets) > 1 or key[0] != "none" else "") + f"batch {key[1]}"
            drawn = [p for p in pts if p.peak_bytes is not None]
            # measured stretches of a curve are solid, any stretch touching an estimate dashed
            for a, b in zip(drawn, drawn[1:]):
                both = a.kind == b.kind == "measured"
                self.memory_plot.plot(
                    [a.seq, b.seq], [a.peak_bytes / MIB, b.peak_bytes / MIB],
                    pen=pg.mkPen(color, width=1.5,
                                 style=Qt.PenStyle.SolidLine if both else Qt.PenStyle.DashLine))
            first = True
            for kind in ("measured", "estimate"):
                ks = [p for p in drawn if p.kind == kind]
                if not ks:
                    continue
                item = self.memory_plot.plot(
                    [p.seq for p in ks], [p.peak_bytes / MIB for p in ks], pen=None,
                    symbol="o" if kind == "measured" else "s", symbolSize=8,
                    symbolPen=pg.mkPen(color, width=1.5),
                    symbolBrush=pg.mkBrush(color) if kind == "measured" else pg.mkBrush(None))
                if first:
                    self.legend.addItem(item, name)
                    first = False
            timed = [p for p in pts if p.latency_ms is not None]
            if timed:
                self.latency_plot.plot([p.seq for p in timed], [p.latency_ms for p in timed],
                                       pen=pg.mkPen(color, width=1.5), symbol="o",
                                       symbolSize=7, symbolBrush=pg.mkBrush(color),
                                       symbolPen=pg.mkPen(color))
        if not any(p.latency_ms is not None for p in self.points):
            self.latency_plot.setTitle("Latency: no measured points (estimates have none)",
                                       color=theme.current().text, size="9pt")
        self._sweep_table()

    def _sweep_table(self) -> None:
        rows = sorted(self.points, key=lambda p: (p.opt_set, p.batch, p.seq))
        self.table.setRowCount(len(rows))
        for r, p in enumerate(rows):
            kind = "ESTIMATE" if p.kind == "estimate" else p.kind
            note = p.error or p.reason or ""
            phase = getattr(p, "peak_phase", None)
            if phase and not p.error:  # a training step's peak: where the length cannot move it
                note = f"peak in the {phase} step; {note}" if note else f"peak in the {phase} step"
            values = [(p.opt_set, False), (str(p.seq), True), (str(p.batch), True),
                      (kind, False), (human_bytes(p.peak_bytes), True),
                      (CATEGORY_LABELS.get(p.binding or "", p.binding or MISSING), False),
                      (f"{p.latency_ms:.2f} ms" if p.latency_ms is not None else MISSING, True),
                      (note, False)]
            for c, (text, right) in enumerate(values):
                item = _item(text, right)
                if c == 7 and note:
                    item.setToolTip(note)
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()

    def _draw_fit(self, record: Any) -> None:
        self.memory_plot.clear()
        self.latency_plot.clear()
        self._placeholders(None)
        self.legend.clear()
        by_batch = bool(self.answers) and self.answers[0].axis == "batch"
        x_name = "batch" if by_batch else "sequence length"
        budget = getattr(record, "budget_bytes", None)
        top_peak = max((t["peak_bytes"] for a in self.answers for t in a.tested), default=0)
        # A budget far above every tested point (a search stopped by the model's positions)
        # would flatten them all at the bottom of the scale: it is named, not drawn.
        budget_drawn = bool(budget) and (not top_peak or budget <= 4 * top_peak)
        unit, MIB = byte_unit(max(top_peak, budget if budget_drawn else 0))
        # (a second line for the budget: on one line the title was wider than a 1024-pixel
        # window's page, and pyqtgraph cut the plot's right side with it)
        _style(self.memory_plot, "Estimated peak at each tested point (ESTIMATE); ★ the answer"
               + ("" if budget_drawn or not budget else
                  f"<br>budget {human_bytes(budget)}: above the scale"), unit, x_name)
        # A batch is a whole number: ticks at whole batches, a round step apart (pyqtgraph's
        # own choice put ticks at 1.5 and 2.5); sequence lengths keep pyqtgraph's ticks.
        bottom = self.memory_plot.getAxis("bottom")
        if by_batch:
            xs_all = [t["batch"] for a in self.answers for t in a.tested] or [1]
            bottom.setTickSpacing(levels=[(integer_step(max(xs_all) - min(xs_all)), 0)])
        else:
            bottom.setTickSpacing()
        for i, a in enumerate(self.answers):
            color = run_color(i)
            tested = sorted(a.tested, key=lambda t: t["batch" if by_batch else "seq"])
            xs = [t["batch" if by_batch else "seq"] for t in tested]
            ys = [t["peak_bytes"] / MIB for t in tested]
            if not xs:
                continue
            at = f"seq {a.seq}" if by_batch else f"batch {a.batch}"
            name = (f"{a.opt_set}, " if a.opt_set != "none" or len(self.answers) > 1 else "") + at
            line = self.memory_plot.plot(xs, ys, pen=pg.mkPen(color, width=1.5,
                                                               style=Qt.PenStyle.DashLine),
                                         symbol="s", symbolSize=7, symbolBrush=pg.mkBrush(None),
                                         symbolPen=pg.mkPen(color, width=1.5))
            self.legend.addItem(line, name)
            best = a.batch if by_batch else a.seq
            if best is not None and a.peak_bytes is not None:
                self.memory_plot.plot([best], [a.peak_bytes / MIB], pen=None, symbol="star",
                                      symbolSize=15, symbolBrush=pg.mkBrush(color),
                                      symbolPen=pg.mkPen(theme.current().text))
        if budget_drawn:
            # The label hangs below the line: above it, it was cut off at the top of the plot.
            self.memory_plot.addItem(pg.InfiniteLine(
                pos=budget / MIB, angle=0, pen=pg.mkPen("#d62728", width=1.5,
                                                        style=Qt.PenStyle.DotLine),
                label=f"budget {human_bytes(budget)}",
                labelOpts={"color": "#d62728", "position": 0.92, "anchors": [(1, 0), (1, 0)]}))
        self._fit_table(by_batch)

    def _fit_table(self, by_batch: bool) -> None:
        self.table.setRowCount(len(self.answers))
        for r, a in enumerate(self.answers):
            best = a.batch if by_batch else a.seq
            nxt = a.next_batch if by_batch else a.next_seq
            answer = MISSING if best is None else (
                f"{'batch' if by_batch else 'seq'} {best}"
                + (" (limit)" if a.status == "limit" else ""))
            values = [(a.opt_set, False),
                      (f"seq {a.seq}" if by_batch else f"batch {a.batch}", False),
                      (answer, True), (bytes_against(a.peak_bytes, a.budget_bytes), True),
                      (MISSING if nxt is None else str(nxt), True),
                      (bytes_against(a.next_peak_bytes, a.budget_bytes), True),
                      (CATEGORY_LABELS.get(a.binding or "", a.binding or MISSING), False),
                      (CATEGORY_LABELS.get(a.largest or "", a.largest or MISSING), False),
                      (str(a.estimates), True), (a.message or a.error or "", False)]
            for c, (text, right) in enumerate(values):
                item = _item(text, right)
                item.setToolTip(a.message or a.error or "")
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()

    def text(self) -> str:
        """The page's message and table as text (tests and accessibility)."""
        rows = [self.message.text()]
        for r in range(self.table.rowCount()):
            rows.append(" | ".join(self.table.item(r, c).text() if self.table.item(r, c) else ""
                                   for c in range(self.table.columnCount())))
        return "\n".join(rows)
