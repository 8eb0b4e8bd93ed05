"""Saved runs side by side: per-layer bars (or deltas against the reference, run [0]), a
memory-vs-quality scatter and a totals table. Renders an ``engine.compare.Comparison``; nothing
here measures.
"""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.aggregate import UNATTRIBUTED
from engine.compare import Comparison, optimizations_text
from engine.format import MISSING, human_bytes, human_ms, short_layer_label

from .. import theme
from .axis import fit_bar_labels, keep_legend_fitted, placeholder_text, show_placeholder
from .layer_chart import GIB_AXIS_FROM

MIB = 1024.0 * 1024.0
MIN_QUALITY_SPAN = 0.02  # of the quality value: the scatter's y axis spans at least this
_TEXT = "#202020"
# Twenty: a guide compares up to about fifteen runs a workload, and with ten colours its
# [0] and [10] were the same blue. The second ten are darker kin of the first, told apart
# side by side.
RUN_COLORS = ("#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#edc948",
              "#ff9da7", "#9c755f", "#bab0ac",
              "#1f3b73", "#8c1c13", "#2e6b30", "#a65c00", "#6b3d8a", "#2f7f7a", "#8a7a00",
              "#c2185b", "#5d4037", "#37474f")
LEGEND_NAME_CHARS = 44


def legend_names(names: list[str]) -> list[str]:
    """Names for the legend: a prefix every name shares up to ": " ("guide: ") is dropped,
    and a long name loses its middle, not its end (which is what tells "…targets=attention"
    from "…targets=attention,mlp")."""
    if len(names) > 1:
        head = names[0].split(": ", 1)[0] + ": " if ": " in names[0] else ""
        if head and all(n.startswith(head) and len(n) > len(head) for n in names):
            names = [n[len(head):] for n in names]
    keep = LEGEND_NAME_CHARS - 1
    return [n if len(n) <= LEGEND_NAME_CHARS else n[:keep // 2] + "…" + n[-(keep - keep // 2):]
            for n in names]
LATENCY_HEADER_TIP = (
    "Plain latency against [0]'s, runs made apart (machine load between them is in it); an "
    "optimized run's own ratio, against its unoptimized model timed in the same run, is on its "
    "Current run page")
TABLE_COLUMNS = ("Run", "Optimizations", "Peak", "Δ peak", "Weights", "Latency", "× latency",
                 "Quality")


def run_color(i: int) -> str:
    return RUN_COLORS[i % len(RUN_COLORS)]


def _signed_bytes(n: int | None) -> str:
    if n is None:
        return MISSING
    return ("+" if n > 0 else "−" if n < 0 else "±") + human_bytes(abs(n))


def _style(plot: pg.PlotItem) -> None:
    plot.showGrid(y=True, x=False, alpha=0.25)
    plot.setMenuEnabled(False)
    for axis in ("left", "bottom"):
        plot.getAxis(axis).setTextPen(_TEXT)
        plot.getAxis(axis).setPen("#606060")


# The scatter's y axis per quality metric (engine.compare.QUALITY_METRICS), with its unit.
# Short: the panel is a third of the page wide, and the note under it names the metric in full
# ("KL after training (nats/token) (x0.001" was cut off at the default window size).
_AXIS_LABELS = {
    "generated_token_agreement": "same tokens (share)",
    "after_training.kl_divergence": "KL trained (nats/tok)",
    "perplexity": "perplexity",
    "kl_divergence": "KL (nats/token)",
    "cosine_similarity": "cosine similarity",
}

NOISY_TIP = ("Noisy: the timing passes of this run or of run [0] were far apart (their "
             "warnings say how far), so this ratio may be off; rerun with more timing passes")
OWN_NOISY_TIP = ("Noisy: the timing passes of this run or of its unoptimized baseline were far "
                 "apart (its warnings say how far), so this ratio may be off")
SELECT_TEXT = "Select two or more saved runs in the table and press Compare selected."
BARS_EMPTY = "No comparison yet.\nEach compared run's bars\nappear here side by side."
SCATTER_EMPTY = "Peak memory against quality\nof each compared run."


class ComparePanel(QWidget):
    """``render(comparison)`` draws it; ``clear(text)`` empties it with a message."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.comparison: Comparison | None = None
        self.controls_shown = True  # False for a report's picture: figures, no check boxes
        self.labels: list[str] = []
        self.heights: list[np.ndarray] = []  # per run: what is drawn (MiB)

        self.message = QLabel(SELECT_TEXT)
        self.message.setWordWrap(True)
        self.delta_check = QCheckBox("Δ against the reference [0]")
        self.delta_check.setToolTip("Bars show each run's bytes minus the first run's")
        self.delta_check.toggled.connect(self._redraw)

        self.bars_widget = pg.GraphicsLayoutWidget()
        self.bars_widget.setBackground("w")
        self.bars_plot = self.bars_widget.addPlot(row=0, col=0)
        self.bars_plot.setTitle("Memory at peak by layer", color=theme.current().text)
        self.bars_plot.setLabel("left", "MiB at peak")
        self.bars_plot.getAxis("left").enableAutoSIPrefix(False)  # (MiB is not an SI unit)
        _style(self.bars_plot)
        self.bars_plot.getViewBox().setMouseEnabled(x=False, y=False)
        self.bars_plot.getViewBox().sigResized.connect(self._apply_ticks)
        # Few columns and short names: a wide legend would widen the plot past the view.
        self.legend = pg.LegendItem(colCount=3, labelTextColor=_TEXT)
        keep_legend_fitted(self.legend, self.bars_widget)
        self.bars_widget.addItem(self.legend, row=1, col=0)
        self._bar_items: list[pg.BarGraphItem] = []

        self.scatter_widget = pg.GraphicsLayoutWidget()
        self.scatter_widget.setBackground("w")
        self.scatter_plot = self.scatter_widget.addPlot(row=0, col=0)
        self.scatter_plot.setTitle("Memory vs quality", color=theme.current().text)
        self.scatter_plot.setLabel("bottom", "peak MiB")
        # (a "×0.001" prefix made a KL of 0.033 read as 33, and cut the label off)
        self.scatter_plot.getAxis("left").enableAutoSIPrefix(False)
        # room above and beside the points for their "[0]" labels, which were clipped
        self.scatter_plot.getViewBox().setDefaultPadding(0.15)
        _style(self.scatter_plot)
        self.scatter_plot.showGrid(x=True, y=True, alpha=0.25)
        self.scatter = pg.ScatterPlotItem(size=11, pen=pg.mkPen("#303030"))
        self.scatter_plot.addItem(self.scatter)
        self._point_labels: list[pg.TextItem] = []
        self.scatter_note = QLabel("")
        self.scatter_note.setWordWrap(True)
        self._show_empty(True)

        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        # Tab leaves the table for the next control (it cycled the cells, and the controls
        # after it could not be reached from the keyboard); arrows still move between cells
        self.table.setTabKeyNavigation(False)
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        # The table's deltas are against [0]; a run's KL is against its own unoptimized model.
        self.table.horizontalHeaderItem(TABLE_COLUMNS.index("Quality")).setToolTip(
            "Each run's own figures: KL divergence (nats per token) against its own unoptimized "
            "model, measured in the same run (not against [0]); perplexity on the quality text")
        self.table.horizontalHeaderItem(TABLE_COLUMNS.index("× latency")).setToolTip(
            LATENCY_HEADER_TIP)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)

        scatter_box = QWidget()
        scatter_layout = QVBoxLayout(scatter_box)
        scatter_layout.setContentsMargins(0, 0, 0, 0)
        scatter_layout.addWidget(self.scatter_widget, 1)
        scatter_layout.addWidget(self.scatter_note)
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.bars_widget)
        plots.addWidget(scatter_box)
        plots.setSizes([620, 380])
        vertical = QSplitter(Qt.Orientation.Vertical)
        vertical.addWidget(plots)
        vertical.addWidget(self.table)
        vertical.setSizes([300, 140])
        self.splitter = vertical
        top = QHBoxLayout()
        top.addWidget(self.message, 1)
        top.addWidget(self.delta_check)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(vertical, 1)

    # -- public ---------------------------------------------------------------------------------
    def clear(self, text: str = "") -> None:
        self.comparison = None
        self.labels, self.heights = [], []
        for item in self._bar_items:
            item.setVisible(False)
        self.legend.clear()
        self.scatter.setData([], [])
        for label in self._point_labels:
            label.setVisible(False)
        self.scatter_note.setText("")
        self.table.setRowCount(0)
        self.message.setText(text or SELECT_TEXT)
        self._apply_ticks()
        self._show_empty(True)

    def empty_text(self) -> str:
        """What the bar chart says in its middle while it is empty ('' when it shows runs)."""
        return placeholder_text(self.bars_plot)

    def _show_empty(self, empty: bool) -> None:
        # An empty chart says what it will show instead of drawing 0-1 axes that mean nothing
        # (as the Current run page's chart does).
        show_placeholder(self.bars_plot, BARS_EMPTY if empty else None)
        show_placeholder(self.scatter_plot, SCATTER_EMPTY if empty else None)

    def render(self, comparison: Comparison, why: str = "") -> None:
        """``why``: how the reference (the first run) was chosen, said after its id."""
        self.comparison = comparison
        runs = comparison.runs
        if comparison.against_own:
            # (no run is a reference: Δ against [0] would set the guide's techniques against
            # its first-ranked one, contradicting the guide's own table)
            figures = ("each one's Δ peak and × latency (below) are against the unoptimized "
                       "model measured in the same run" if self.table.isVisibleTo(self) else
                       "their figures are in the guide's table")
            text = (f"{len(runs)} runs, ranked as in the guide's table; {figures}. Each run's "
                    "bars plus its unattributed bytes add up to its peak.")
            self.delta_check.setChecked(False)
        else:
            text = (f"Comparing {len(runs)} runs; [0] {runs[0].run_id} is the reference"
                    f"{f' ({why})' if why else ''}. Each run's bars (in its colour in the "
                    "table's Run column) plus its unattributed bytes add up to its peak.")
        self.delta_check.setVisible(self.controls_shown and not comparison.against_own)
        own = comparison.against_own
        self.table.horizontalHeaderItem(TABLE_COLUMNS.index("Δ peak")).setToolTip(
            "Peak minus its own unoptimized model's, measured in the same run" if own
            else "Peak minus [0]'s")
        self.table.horizontalHeaderItem(TABLE_COLUMNS.index("× latency")).setToolTip(
            "Plain latency against its own unoptimized model's, timed in the same run" if own
            else LATENCY_HEADER_TIP)
        if comparison.different_models:
            text += " Different models: bars are matched by layer name."
        if len(comparison.workloads) > 1:
            text += (f" Different workloads ({', '.join(comparison.workloads)}): their peaks and "
                     "latencies measure different work.")
        if len(comparison.sizes) > 1:
            text += (f" Different inputs ({', '.join(comparison.sizes)}): their peaks and "
                     "latencies measure different amounts of work, not only what the "
                     "optimizations changed.")
        self.message.setText(text)
        self._show_empty(False)
        self._redraw()
        self._render_scatter()
        self._render_table()

    # -- drawing --------------------------------------------------------------------------------
    @Slot()
    def _redraw(self, *_: object) -> None:
        c = self.comparison
        if c is None:
            return
        delta = self.delta_check.isChecked()
        n = len(c.runs)
        self.labels = [short_layer_label(b) for b in c.bars] + [UNATTRIBUTED]
        x = np.arange(len(self.labels), dtype=float)
        width = 0.8 / n
        self.legend.clear()
        self.heights = []
        for item in self._bar_items:
            item.setVisible(False)
        for i, name in enumerate(legend_names(c.labels())):
            if delta:
                values = c.deltas(i) + [c.unattributed[i] - c.unattributed[0]]
            else:
                values = list(c.at_peak[i]) + [c.unattributed[i]]
            heights = np.array([np.nan if v is None else v / MIB for v in values], dtype=float)
            self.heights.append(heights)
            item = self._bar_item(i)
            shown = ~np.isnan(heights)
            item.setOpts(x=x[shown] - 0.4 + width * (i + 0.5), height=heights[shown],
                         width=width * 0.92, brush=pg.mkBrush(run_color(i)))
            item.setVisible(True)
            # (escaped: the legend reads HTML, and a run's label is the user's text)
            self.legend.addItem(item, html.escape(f"{c.tag(i)} {name}"))

        self.bars_plot.setTitle("Δ at peak by layer, against [0]" if delta
                                else "Memory at peak by layer", color=theme.current().text)
        finite = np.concatenate([h[~np.isnan(h)] for h in self.heights]) if self.heights else []
        low = min(0.0, float(np.min(finite))) if len(finite) else 0.0
        high = max(0.0, float(np.max(finite))) if len(finite) else 1.0
        span = (high - low) or 1.0
        # (the bars stay in MiB; a large model's axis reads in GiB, as the layer chart's)
        gib = max(high, -low) >= GIB_AXIS_FROM
        self.bars_plot.getAxis("left").setScale(1 / 1024 if gib else 1.0)
        unit = "GiB" if gib else "MiB"
        self.bars_plot.setLabel("left", f"Δ {unit} at peak" if delta else f"{unit} at peak")
        self.bars_plot.setYRange(low - 0.04 * span * (low < 0), high + 0.08 * span, padding=0)
        self.bars_plot.setXRange(-0.6, len(self.labels) - 0.4, padding=0)
        self._apply_ticks()

    def _bar_item(self, i: int) -> pg.BarGraphItem:
        while len(self._bar_items) <= i:
            item = pg.BarGraphItem(x=[0.0], height=[0.0], width=0.1,
                                   pen=pg.mkPen("#ffffff", width=0.5))
            self._bar_items.append(item)
            self.bars_plot.addItem(item)
        return self._bar_items[i]

    @Slot()
    def _apply_ticks(self, *_: object) -> None:
        sizes = None
        if self.heights and all(len(h) == len(self.labels) for h in self.heights):
            stacked = np.abs(np.vstack(self.heights))
            sizes = np.where(np.isnan(stacked), -np.inf, stacked).max(axis=0)
        fit_bar_labels(self.bars_plot, self.labels, self.font(), sizes)

    def _render_scatter(self) -> None:
        c = self.comparison
        assert c is not None
        for label in self._point_labels:
            label.setVisible(False)
        if c.metric is None:
            self.scatter.setData([], [])
            # (empty axes, not the last comparison's range: 5–45 MiB beside two 9.94 MiB runs)
            self.scatter_plot.setRange(xRange=(0.0, 1.0), yRange=(0.0, 1.0), padding=0)
            self.scatter_plot.setLabel("left", "quality")
            self.scatter_note.setText(c.no_metric_reason() + " Nothing is plotted.")
            return
        spots, missing = [], []
        for i, (run, q) in enumerate(zip(c.runs, c.quality)):
            if q is None:
                missing.append(c.tag(i))
                continue
            spots.append({"pos": (c.peaks[i] / MIB, q), "brush": pg.mkBrush(run_color(i)),
                          "data": i})
        self.scatter.setData(spots)
        # Runs at (nearly) the same point share one label, "[0,2]", rather than printing over
        # each other: within a tenth of the peak axis's span and a twentieth of the quality
        # axis's (about a label's width and height on the page).
        xs = [spot["pos"][0] for spot in spots]
        ys = [spot["pos"][1] for spot in spots]
        near_x = 0.1 * ((max(xs) - min(xs)) if xs else 0.0)
        near_y = 0.05 * ((max(ys) - min(ys)) if ys else 0.0)
        at: dict[tuple[float, float], list[int]] = {}
        for spot in spots:
            x, y = spot["pos"]
            key = next((k for k in at if abs(k[0] - x) <= near_x and abs(k[1] - y) <= near_y),
                       (x, y))
            at.setdefault(key, []).append(spot["data"])
        for n, (pos, indices) in enumerate(at.items()):
            while len(self._point_labels) <= n:
                label = pg.TextItem(color=theme.current().text, anchor=(0, 1))
                self._point_labels.append(label)
                self.scatter_plot.addItem(label)
            label = self._point_labels[n]
            label.setText("#" + ",".join(c.tag(i)[1:] for i in indices) if c.against_own
                          else f"[{','.join(map(str, indices))}]")
            # right of the point in the left half, left of it in the right half: never clipped
            label.setAnchor((1, 1) if xs and pos[0] > (min(xs) + max(xs)) / 2 else (0, 1))
            label.setPos(*pos)
            label.setVisible(True)
        axis = _AXIS_LABELS.get(c.metric) or c.metric.replace("after_training.",
                                                               "trained ").replace("_", " ")
        self.scatter_plot.setLabel("left", axis)
        note = f"y: {c.metric_label} ({c.metric_better} is better); x: measured peak."
        if missing:
            # (the metric is named once: said twice, the note squeezed the chart above it)
            note += f" Not plotted, without that figure: {', '.join(missing)}."
        self.scatter_note.setText(note)
        self.scatter_plot.enableAutoRange()
        ys = [spot["pos"][1] for spot in spots]
        if ys and max(ys) - min(ys) <= 1e-9 * max(1.0, abs(max(ys))):
            # every run has the same quality: a range of zero would be drawn as ticks
            # a float's rounding apart; show the value with some room around it instead
            pad = max(abs(ys[0]) * 0.05, 1e-3)
            self.scatter_plot.setYRange(ys[0] - pad, ys[0] + pad, padding=0)
        elif ys and max(ys) - min(ys) < MIN_QUALITY_SPAN * abs(max(ys, key=abs)):
            # nearly equal: perplexities 28.4585 and 28.4615 filled the whole height, as if
            # far apart; the axis spans at least 2% of the value, centred on them
            mid, half = (max(ys) + min(ys)) / 2, MIN_QUALITY_SPAN * abs(max(ys, key=abs)) / 2
            self.scatter_plot.setYRange(mid - half, mid + half, padding=0.05)
        elif ys:
            # room above the highest point for its label ("[2]" was cut at the top edge)
            span = max(ys) - min(ys)
            self.scatter_plot.setYRange(min(ys) - 0.1 * span, max(ys) + 0.3 * span, padding=0)

    def _render_table(self) -> None:
        c = self.comparison
        assert c is not None
        from engine.compare import quality_text

        self.table.setRowCount(len(c.runs))
        for i, run in enumerate(c.runs):
            cells = (
                f"{c.tag(i)} {run.run_id}",
                optimizations_text(run.optimizations),
                human_bytes(c.peaks[i]),
                _signed_bytes(c.peak_delta[i]) if i or c.against_own else "reference",
                human_bytes(run.totals.model_weights_bytes),
                human_ms(c.latency_ms[i]) or MISSING,
                c.ratio_text(i),
                quality_text(run.quality),
            )
            for j, cell in enumerate(cells):
                item = QTableWidgetItem(cell)
                if j == 0:
                    item.setForeground(pg.mkColor(run_color(i)))
                if j in (2, 3):
                    item.setToolTip(f"{c.peaks[i]:,} bytes")
                if j == 6:
                    item.setToolTip((OWN_NOISY_TIP if c.against_own else NOISY_TIP)
                                    if (i or c.against_own) and c.ratio_noisy(i)
                                    else "Plain latency against its own unoptimized model's"
                                    if c.against_own else "Plain latency against run [0]'s")
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
