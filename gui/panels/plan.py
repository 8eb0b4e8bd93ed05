"""Plans across devices, in the window: the engine's ``DevicePlan`` (inference split across GPUs
by transformers/accelerate ``device_map``) or ``ShardPlan`` (FSDP2 training on N ranks) drawn as
stacked bars per device against its budget, with a table and the plan's notes.

Every figure is an estimate and says so. The panel turns what the user typed into the plan job's
arguments (sizes are read by the engine's own parser, so the messages are the CLI's) and draws
the record; it computes nothing.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.distributed import (MAX_RANKS, STRATEGIES, TRAIN_PARTS, check_devices, check_ranks,
                                parse_size)
from engine.format import MISSING, human_bytes

from .axis import keep_legend_fitted, show_placeholder
from .. import theme
from .layer_chart import CATEGORY_COLORS
from .sweep import byte_unit

INFERENCE_PARTS = (("weights", "weights"), ("kv_cache", "KV cache"),
                   ("activations", "activations"), ("offload_transit", "offload in transit"))
PART_COLORS = {**CATEGORY_COLORS, "offload_transit": "#76b7b2", "sharded_params": "#4e79a7",
               "buffers": "#9c755f", "sharded_gradients": "#e15759",
               "unsharded_params": "#a0cbe8", "gradient_reduction": "#ff9da7"}
INFERENCE_COLUMNS = ("Device", "Budget", "Weights", "KV cache", "Activations",
                     "Offload in transit", "Total", "Fits", "Holds")
TRAINING_COLUMNS = ("Part (per rank)", "Bytes", "All ranks")


PLAN_EMPTY = ("No plan yet.\nPlan shows each device's memory, stacked by part,\nagainst its "
              "budget.")


def _share(part: float, whole: float) -> str:
    """``part / whole`` as a percentage that is never a bare 0.0% ("< 0.1%")."""
    share = part / whole
    return f"{share:.1%}" if share >= 0.001 else "< 0.1%"


def _item(text: str, right: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


class _CountSpin(QSpinBox):
    """A spin box for counts up to MAX_RANKS that asks for the width of a few digits only: Qt
    sizes a spin box for its largest value, and seven digits on two boxes made the window's
    minimum wider than a 1024-pixel screen."""

    def _narrow(self, size: QSize) -> QSize:
        return QSize(min(size.width(), self.fontMetrics().horizontalAdvance("0" * 4) + 29),
                     size.height())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return self._narrow(super().sizeHint())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return self._narrow(super().minimumSizeHint())


class PlanPanel(QWidget):
    """Inputs for a plan and its result. Emits ``plan_requested()``; the window builds the job
    with :meth:`plan_job` and the controls' model, workload, sizes and dtype."""

    plan_requested = Signal()
    tensor_parallel_requested = Signal()
    save_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plan: Any = None

        self.devices_spin = _CountSpin()
        # (the engine's limits: up to MAX_RANKS training ranks; an inference plan of more than
        # MAX_DEVICES GPUs is refused by the engine with a message naming this field)
        self.devices_spin.setRange(1, MAX_RANKS)
        self.devices_spin.setValue(2)
        self.devices_spin.setToolTip("GPUs to split the model across (inference), or FSDP2 "
                                     "ranks (training)")
        self.per_device_edit = QLineEdit("80GiB")
        self.per_device_edit.setToolTip("Memory of each GPU or rank: 80GiB, 80GB, 24GiB…")
        self.offload_edit = QLineEdit("")
        self.offload_edit.setPlaceholderText("none")
        self.offload_edit.setToolTip("Inference: CPU memory for layers that do not fit the GPUs "
                                     "(accelerate offload); empty, 0 or none for none")
        self.strategy_combo = QComboBox()
        self.strategy_combo.addItems(STRATEGIES)
        self.strategy_combo.setToolTip("Inference: from_pretrained's device_map strategy")
        self.replicas_spin = _CountSpin()
        self.replicas_spin.setRange(1, MAX_RANKS)
        self.replicas_spin.setToolTip("Training: HSDP replica groups; each group holds the model "
                                      "sharded among ranks / replicas ranks (1: plain FSDP2)")
        self.master_combo = QComboBox()
        # (a combo as wide as its longest item set the page's, and the window's, minimum width)
        for combo in (self.strategy_combo, self.master_combo):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        self.master_combo.addItem("the run's dtype", None)
        self.master_combo.addItem("float32 (mixed precision)", "float32")
        self.master_combo.setToolTip("Training: dtype of the sharded parameters, gradients and "
                                     "optimizer state; float32 all-gathers in the run's dtype "
                                     "(FSDP2 MixedPrecisionPolicy)")
        self.plan_button = QPushButton("Plan")
        self.plan_button.setToolTip("Per-device memory (estimate) for the model, workload, batch, "
                                    "sequence and dtype on the left")
        self.plan_button.clicked.connect(lambda _=False: self.plan_requested.emit())
        self.save_button = QPushButton("Save JSON…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self.save_requested)
        self.tp_button = QPushButton("Tensor-parallel estimate")
        self.tp_button.setToolTip("Estimate rank 0 of GPUs / ranks ranks of tensor parallelism "
                                  "(each block's layers split as the architecture declares), "
                                  "shown on the Current run page")
        self.tp_button.clicked.connect(lambda _=False: self.tensor_parallel_requested.emit())

        box = QGroupBox("Split across devices")
        box.setToolTip("Forward and generate are placed with device_map, train is sharded with "
                       "FSDP2; model, workload, batch, sequence and dtype come from the left")
        grid = QGridLayout(box)
        # Three short rows rather than one long one: the page must not set the window's
        # minimum width (a 10-column row made it 1368 px, wider than many laptop screens).
        for row, pairs in enumerate(((("GPUs / ranks", self.devices_spin),
                                      ("Memory each", self.per_device_edit),
                                      ("CPU offload", self.offload_edit)),
                                     (("Strategy", self.strategy_combo),
                                      ("Replicas (HSDP)", self.replicas_spin),
                                      ("Master weights", self.master_combo)))):
            for i, (label, widget) in enumerate(pairs):
                grid.addWidget(QLabel(label), row, 2 * i)
                grid.addWidget(widget, row, 2 * i + 1)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.tp_button, self.save_button, self.plan_button):
            buttons.addWidget(button)
        grid.addLayout(buttons, 2, 0, 1, 6)
        for column in (1, 3, 5):
            grid.setColumnStretch(column, 1)

        self.message = QLabel("Plan how a model splits across GPUs for inference (placed with "
                              "device_map), or shards across ranks for training (FSDP2), with "
                              "the model, workload, batch, sequence and dtype on the left. Every "
                              "figure is an estimate.")
        self.message.setWordWrap(True)
        self.chart = pg.GraphicsLayoutWidget()
        self.chart.setBackground(theme.current().background)
        self.plot = self.chart.addPlot(row=0, col=0)
        self.legend = pg.LegendItem(colCount=4, labelTextColor=theme.current().text)
        keep_legend_fitted(self.legend, self.chart)
        self.chart.addItem(self.legend, row=1, col=0)
        self._style("Memory per device (ESTIMATE)", "bytes")
        self.table = QTableWidget(0, len(INFERENCE_COLUMNS))
        # Tab leaves the table for the next control (it cycled the cells, and the controls
        # after it could not be reached from the keyboard); arrows still move between cells
        self.table.setTabKeyNavigation(False)
        self.table.setHorizontalHeaderLabels(list(INFERENCE_COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.resizeColumnsToContents()  # the headers whole ("Offload in transit") at once
        show_placeholder(self.plot, PLAN_EMPTY)
        # Two devices' rows (a row wraps to two lines when it names its modules) stay in view
        # in a 700-pixel window, where the notes below (which scroll) took the room.
        line = self.table.fontMetrics().lineSpacing()
        self.table.setMinimumHeight(self.table.horizontalHeader().sizeHint().height()
                                    + 4 * (line + 6) + 18)
        self.notes = QPlainTextEdit()
        self.notes.setReadOnly(True)
        self.notes.setMaximumHeight(130)
        self.notes.setMinimumHeight(3 * line + 12)

        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addWidget(self.table, 1)
        lower_layout.addWidget(self.notes)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.chart)
        split.addWidget(lower)
        split.setSizes([330, 250])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(box)
        layout.addWidget(self.message)
        layout.addWidget(split, 1)

    # -- inputs ---------------------------------------------------------------------------------
    def set_running(self, running: bool) -> None:
        self.plan_button.setEnabled(not running)
        self.tp_button.setEnabled(not running)

    def set_workload(self, workload: str) -> None:
        """Training is sharded (FSDP2): CPU offload and the placement strategy do not apply;
        replicas and master weights apply to training only."""
        inference = workload != "train"
        for widget in (self.offload_edit, self.strategy_combo):
            widget.setEnabled(inference)
            widget.setToolTip(widget.toolTip().split(" (not for training")[0]
                              + ("" if inference else " (not for training: FSDP2 shards every "
                                                      "block across the ranks)"))
        for widget in (self.replicas_spin, self.master_combo):
            widget.setEnabled(not inference)

    def plan_job(self, workload: str) -> dict[str, Any]:
        """The plan job's arguments (raises ``MemLensError`` naming a bad size)."""
        per_device = self.per_device_edit.text().strip()
        parse_size(per_device, "Memory each")
        offload = self.offload_edit.text().strip()
        if offload.lower() in ("none", "0"):  # the placeholder's word, as the CLI takes it
            offload = ""
        if offload:
            parse_size(offload, "CPU offload", allow_zero=True)
        job: dict[str, Any] = {"per_device": per_device}
        if workload == "train":
            # (the engine's own checks, here so that a refusal comes before any job starts)
            ranks, replicas = check_ranks(self.devices_spin.value(), self.replicas_spin.value(),
                                          ("GPUs / ranks", "Replicas (HSDP)"))
            job.update({"ranks": ranks, "replicas": replicas,
                        "master_dtype": self.master_combo.currentData()})
        else:
            job.update({"devices": check_devices(self.devices_spin.value(), "GPUs / ranks"),
                        "cpu_offload": offload or None,
                        "strategy": self.strategy_combo.currentText()})
        return job

    def inputs(self) -> dict[str, Any]:
        return {"devices": self.devices_spin.value(), "per_device": self.per_device_edit.text(),
                "cpu_offload": self.offload_edit.text(),
                "strategy": self.strategy_combo.currentText(),
                "replicas": self.replicas_spin.value(),
                "master": self.master_combo.currentIndex()}

    def restore(self, values: dict[str, Any]) -> None:
        for spin, key in ((self.devices_spin, "devices"), (self.replicas_spin, "replicas")):
            try:
                if values.get(key) is not None:
                    spin.setValue(int(values[key]))
            except (TypeError, ValueError):
                pass
        try:
            if values.get("master") is not None:
                self.master_combo.setCurrentIndex(int(values["master"]))
        except (TypeError, ValueError):
            pass
        if values.get("per_device"):
            self.per_device_edit.setText(str(values["per_device"]))
        if values.get("cpu_offload") is not None:
            self.offload_edit.setText(str(values["cpu_offload"]))
        index = self.strategy_combo.findText(str(values.get("strategy") or ""))
        if index >= 0:
            self.strategy_combo.setCurrentIndex(index)

    # -- drawing --------------------------------------------------------------------------------
    def _style(self, title: str, unit: str) -> None:
        t = theme.current()
        self.plot.setTitle(title, color=t.text, size="9pt")
        self.plot.setLabel("left", unit)
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.plot.showGrid(y=True, alpha=0.25)
        self.plot.setMenuEnabled(False)
        self.plot.getViewBox().setMouseEnabled(x=False, y=False)
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen(t.text)
            self.plot.getAxis(axis).setPen(t.axis)

    def clear(self, text: str = "", placeholder: str | None = PLAN_EMPTY) -> None:
        """Empty the page; ``text`` replaces the message, ``placeholder`` stands in the chart
        (None: the chart is about to be drawn)."""
        self.plan = None
        self.plot.clear()
        show_placeholder(self.plot, placeholder)
        self.legend.clear()
        self.table.setRowCount(0)
        self.notes.setPlainText("")
        self.save_button.setEnabled(False)
        if text:
            self.message.setText(text)

    def render(self, plan: Any) -> None:
        self.clear(placeholder=None)
        self.plan = plan
        if plan.kind == "training_plan":
            self._render_training(plan)
        elif plan.kind == "distributed_run":
            self._render_distributed(plan)
        else:
            self._render_inference(plan)
        self.notes.setPlainText("\n".join(f"• {n}" for n in plan.notes))
        self.save_button.setEnabled(True)

    def _stack(self, labels: list[str], parts: list[tuple[str, str, list[int]]],
               budgets: list[int | None], title: str, line: str = "budget") -> None:
        tallest = max([sum(v[i] for _k, _l, v in parts) for i in range(len(labels))] + [1])
        # A budget far above the bars (an 80 GiB GPU for a small model) would flatten them to
        # nothing: then the bars keep the scale and the budget is said in the legend instead.
        off_scale = max((b or 0 for b in budgets), default=0) > 4 * tallest
        largest = tallest if off_scale else max([tallest] + [b or 0 for b in budgets])
        unit, scale = byte_unit(largest)
        self._style(title, unit)
        x = np.arange(len(labels), dtype=float)
        bottom = np.zeros(len(labels))
        for key, label, values in parts:
            heights = np.array(values, dtype=float) / scale
            if not heights.any():
                continue
            bars = pg.BarGraphItem(x=x, height=heights, y0=bottom, width=0.6,
                                   brush=PART_COLORS.get(key, "#bab0ac"), pen=pg.mkPen(None))
            self.plot.addItem(bars)
            self.legend.addItem(bars, label)
            bottom += heights
        for i, budget in enumerate(budgets):
            if budget and not off_scale:
                y = budget / scale
                self.plot.plot([i - 0.4, i + 0.4], [y, y],
                               pen=pg.mkPen("#d62728", width=2, style=Qt.PenStyle.DashLine))
        if any(budgets):
            top = max(b or 0 for b in budgets)
            self.legend.addItem(pg.PlotDataItem(pen=pg.mkPen("#d62728", width=2,
                                                             style=Qt.PenStyle.DashLine)),
                                # (escaped: the legend reads HTML, and "< 0.1%" opened a tag
                                # that swallowed the rest of the line)
                                html.escape(f"{line} {human_bytes(top)}: above the scale")
                                + html.escape(f"\n(the tallest bar is {_share(tallest, top)} "
                                              "of it)").replace("\n", "<br>")
                                if off_scale else html.escape(line))
        self.plot.getAxis("bottom").setTicks([list(enumerate(labels)), []])
        self.plot.setXRange(-0.6, len(labels) - 0.4, padding=0)
        self.plot.setYRange(0, largest / scale * 1.08, padding=0)

    def _render_inference(self, plan: Any) -> None:
        rows = plan.rows
        self._stack([r.device for r in rows],
                    [(k, label, [r.parts()[k] for r in rows]) for k, label in INFERENCE_PARTS],
                    [r.budget_bytes for r in rows],
                    f"Memory per device, {plan.workload} (ESTIMATE)")
        self.table.setColumnCount(len(INFERENCE_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(INFERENCE_COLUMNS))
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            fits = "yes" if r.fits else f"no: over by {human_bytes(r.over_by_bytes)}"
            values = [(r.device, False), (human_bytes(r.budget_bytes), True),
                      (human_bytes(r.weights_bytes), True), (human_bytes(r.kv_cache_bytes), True),
                      (human_bytes(r.activation_bytes), True),
                      (human_bytes(r.offload_transit_bytes), True),
                      (human_bytes(r.total_bytes), True), (fits, False),
                      (r.summary or MISSING, False)]
            for c, (text, right) in enumerate(values):
                self.table.setItem(i, c, _item(text, right))
        self.table.resizeColumnsToContents()
        verdict = ("fits" if plan.fits else "does NOT fit: " + "; ".join(plan.does_not_fit))
        self.message.setText(
            f"ESTIMATE — {plan.model} · {plan.workload} (batch {plan.batch}, seq {plan.seq}"
            + (f" + {plan.new_tokens} new" if plan.workload == "generate" else "")
            + f", {plan.dtype}) on {plan.devices} × {human_bytes(plan.per_device_bytes)}"
            + (f" + {human_bytes(plan.cpu_offload_bytes)} CPU offload"
               if plan.cpu_offload_bytes else "")
            + f", device_map {plan.strategy!r} ({plan.placement}): {verdict}. Weights in all: "
            f"{human_bytes(plan.model_weights_bytes)}.")

    def _render_training(self, plan: Any) -> None:
        self._stack(["each rank"],
                    [(k, label, [plan.parts.get(k, 0)]) for k, label in TRAIN_PARTS],
                    [plan.per_rank_budget_bytes],
                    f"FSDP2 on {plan.ranks} ranks: memory per rank (ESTIMATE)")
        self.table.setColumnCount(len(TRAINING_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TRAINING_COLUMNS))
        self.table.setRowCount(len(TRAIN_PARTS) + 1)
        for i, (key, label) in enumerate(TRAIN_PARTS):
            self.table.setItem(i, 0, _item(label))
            self.table.setItem(i, 1, _item(human_bytes(plan.parts.get(key)), True))
            self.table.setItem(i, 2, _item(human_bytes(plan.all_ranks.get(key)), True))
        self.table.setItem(len(TRAIN_PARTS), 0, _item("total (each part at its maximum)"))
        self.table.setItem(len(TRAIN_PARTS), 1, _item(human_bytes(plan.total_bytes), True))
        self.table.setItem(len(TRAIN_PARTS), 2, _item(MISSING, True))
        self.table.resizeColumnsToContents()
        if plan.fits is None:
            verdict = "no budget given"
        elif plan.fits:
            verdict = f"fits {human_bytes(plan.per_rank_budget_bytes)} per rank"
        else:
            verdict = (f"does NOT fit {human_bytes(plan.per_rank_budget_bytes)} per rank (over "
                       f"by {human_bytes(plan.over_by_bytes)}; largest part: "
                       f"{plan.binding})")
        self.message.setText(
            f"ESTIMATE — {plan.model} · train, FSDP2 on {plan.ranks} ranks"
            + (f" (HSDP: {plan.replicas} replicas × {plan.ranks // plan.replicas} shards)"
               if plan.replicas > 1 else "")
            + f" (micro-batch "
            f"{plan.batch}, seq {plan.seq}, compute {plan.dtype}, master {plan.master_dtype}): "
            f"{human_bytes(plan.total_bytes)} per rank, {verdict}.")

    def _render_distributed(self, run: Any) -> None:
        """A measured FSDP2 run (engine.distributed_run): every rank's parts at its peak, under
        the plan's names, against the plan's per-rank bound."""
        ranks = run.ranks
        self._stack([f"rank {r.rank}" for r in ranks],
                    [(k, label, [r.as_plan_parts.get(k, 0) for r in ranks])
                     for k, label in TRAIN_PARTS],
                    [r.plan_bound_bytes for r in ranks],
                    f"FSDP2 on {run.world_size} ranks: each rank at its peak (MEASURED)",
                    line="plan bound")
        columns = ["Rank", "Device", "Peak (measured)", "Plan bound"] + [
            label for _k, label in TRAIN_PARTS]
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setRowCount(len(ranks))
        for i, r in enumerate(ranks):
            values = [(str(r.rank), False), (r.device, False), (human_bytes(r.peak_bytes), True),
                      (human_bytes(r.plan_bound_bytes), True)] + [
                (human_bytes(r.as_plan_parts.get(k)), True) for k, _label in TRAIN_PARTS]
            for c, (text, right) in enumerate(values):
                self.table.setItem(i, c, _item(text, right))
        self.table.resizeColumnsToContents()
        cfg = run.config
        peaks = [r.peak_bytes for r in ranks]
        verdict = ("no plan to compare" if run.within_plan is None else
                   "every rank within its plan bound" if run.within_plan else
                   "a rank EXCEEDED its plan bound")
        opts = ", ".join(o.get("id", "?") for o in run.optimizations) or "no optimizations"
        self.message.setText(
            f"MEASURED — {cfg.get('model')} · train, FSDP2 on {run.world_size} ranks "
            f"({run.backend}; micro-batch {cfg.get('batch')}, seq {cfg.get('seq')}, "
            f"{cfg.get('dtype')}" + (f", master {run.master_dtype}" if run.master_dtype else "")
            + f"; {opts}): peaks {human_bytes(min(peaks))}–{human_bytes(max(peaks))}, "
            f"{verdict}.")

    def text(self) -> str:
        rows = [self.message.text()]
        for r in range(self.table.rowCount()):
            rows.append(" | ".join(self.table.item(r, c).text() if self.table.item(r, c) else ""
                                   for c in range(self.table.columnCount())))
        return "\n".join(rows)
