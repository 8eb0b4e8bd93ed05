"""Stacked bar chart "Memory at peak by layer": one bar per block / top-level layer.

Category toggles hide a category's segments, a log scale spreads small layers out, hovering a
bar shows its exact bytes, and a baseline (the unoptimized model measured in the same run, or a
saved run the user picked) is drawn as dashed outlines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Slot
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import (QCheckBox, QFrame, QHBoxLayout, QLabel, QScrollArea, QToolTip,
                               QVBoxLayout, QWidget)

from engine.results import LayerStats, Totals

from engine.aggregate import UNATTRIBUTED, LayerGroup, category_order, group_layers
from engine.format import human_bytes, short_layer_label

from .. import theme
from .axis import fit_bar_labels, keep_legend_fitted, placeholder_text, show_placeholder

MIB = 1024.0 * 1024.0
GIB_AXIS_FROM = 2048.0  # MiB: the tallest bar from which the axis reads in GiB
EMPTY_TEXT = ("No run yet.\nRun measures the chosen model;\nEstimate works it out without "
              "loading weights.")

CATEGORY_COLORS = {
    "weights": "#4e79a7",
    "activations": "#f28e2b",
    "kv_cache": "#59a14f",
    "gradients": "#e15759",
    "optimizer_state": "#b07aa1",
    "temporaries": "#edc948",
    UNATTRIBUTED: "#9e9e9e",
}
_EXTRA_COLORS = ("#76b7b2", "#ff9da7", "#9c755f", "#bab0ac", "#17becf", "#bcbd22")


def category_label(category: str) -> str:
    return category.replace("_", " ")


# The Show boxes' short names, used only when the full ones do not fit the row (a training
# step's six categories scrolled, "optimizer sta…" cut at the default window size); each box's
# tooltip keeps the full name.
SHORT_LABELS = {"activations": "activ.", "optimizer_state": "optimizer", "temporaries": "temp.",
                UNATTRIBUTED: "unattr.", "gradients": "grads", "kv_cache": "KV"}


def _exact(mib: float) -> str:
    n = int(round(mib * MIB))
    return f"{human_bytes(n)} ({n:,} bytes)"


def _decade(k: int) -> str:
    value = 10.0 ** k
    return f"{value:g}" if 1e-3 <= value <= 1e5 else f"1e{k}"


class _Strip(QScrollArea):
    """The row of category boxes, scrolling sideways when the panel is narrower than the row.
    Laid out plainly, six categories and "Log scale" made the panel at least 720 px wide at
    any window size, squeezing the timeline beside it until it was cut off."""

    def __init__(self, inner: QWidget) -> None:
        super().__init__()
        self.setWidget(inner)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.fit()

    def fit(self) -> None:
        """As tall as the row, plus the scroll bar when the row does not fit even with the
        short names."""
        boxes = [b for b in self.widget().findChildren(QCheckBox) if b.property("category")]
        for short in (False, True):
            for box in boxes:
                category = box.property("category")
                box.setText(SHORT_LABELS.get(category, category_label(category)) if short
                            else category_label(category))
            if self.widget().sizeHint().width() <= self.viewport().width():
                break
        need = self.widget().sizeHint()
        bar = (self.horizontalScrollBar().sizeHint().height()
               if need.width() > self.viewport().width() else 0)
        self.setFixedHeight(need.height() + bar)

    def resizeEvent(self, event: object) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self.fit()


class LayerChartPanel(QWidget):
    """Renders grouped ``at_peak`` bytes; bars are built once per category and updated in place."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # The legend sits in its own row under the plot, so it never hides a bar.
        self.plot_widget = pg.GraphicsLayoutWidget()
        self.plot_widget.setBackground("w")
        self.plot = self.plot_widget.addPlot(row=0, col=0)
        self.plot.setTitle("Memory at peak by layer", color="#202020")
        self.plot.setLabel("left", "MiB at peak")
        # (pyqtgraph's SI prefix read "MiB at peak (x0.001)" for a run under 1 MiB)
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.plot.showGrid(y=True, alpha=0.25)
        self.plot.setMenuEnabled(False)
        self.plot.getViewBox().setMouseEnabled(x=False, y=False)  # ticks fit the full view
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen("#202020")
            self.plot.getAxis(axis).setPen("#606060")
        self.legend = pg.LegendItem(colCount=len(CATEGORY_COLORS), labelTextColor="#202020")
        keep_legend_fitted(self.legend, self.plot_widget)
        self.plot_widget.addItem(self.legend, row=1, col=0)
        self.plot.getViewBox().sigResized.connect(self._on_resized)
        self._bars: dict[str, pg.BarGraphItem] = {}
        self.groups: list[LayerGroup] = []
        self.labels: list[str] = []
        self.stacks: dict[str, np.ndarray] = {}  # category -> MiB per bar (the run's data)
        self.hidden: set[str] = set()  # categories toggled off
        self.outline: np.ndarray | None = None  # baseline MiB per bar (NaN: not measured)
        self.outline_label = ""
        self._segments: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # drawn (y0, top) MiB
        self._outline_item = pg.BarGraphItem(x=[0.0], height=[0.0], width=0.86, brush=None,
                                             pen=pg.mkPen("#202020", width=1.4,
                                                          style=pg.QtCore.Qt.PenStyle.DashLine))
        self._outline_item.setZValue(10)
        self._outline_item.setVisible(False)
        self.plot.addItem(self._outline_item)
        # What an empty chart is waiting for, instead of axes with made-up ticks.
        self._empty_text = EMPTY_TEXT

        self.toggles_row = QHBoxLayout()
        self.toggles_row.setContentsMargins(4, 0, 4, 0)
        self.toggles_row.addWidget(QLabel("Show:"))
        self._toggles: dict[str, QCheckBox] = {}
        self.toggles_row.addStretch(1)
        # Outside the scrolling strip: with a training step's six categories the strip scrolls,
        # and "Log scale" at its end was cut off
        self.log_check = QCheckBox("Log scale")
        self.log_check.setToolTip("Segments end at the logarithm of the running sum, so small "
                                  "layers stay visible; negative values are not drawn")
        self.log_check.toggled.connect(self._redraw)
        self.plot.scene().sigMouseMoved.connect(self._hover)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        strip = QWidget()
        strip.setLayout(self.toggles_row)
        self.toggles_strip = _Strip(strip)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 4, 0)
        top.addWidget(self.toggles_strip, 1)
        top.addWidget(self.log_check)
        layout.addLayout(top)
        layout.addWidget(self.plot_widget)
        self._show_empty(True)

    @Slot(object)
    def _on_resized(self, _view: object = None) -> None:
        self._apply_ticks()

    def empty_text(self) -> str:
        """The message an empty chart shows ("" when bars are drawn)."""
        return placeholder_text(self.plot)

    def clear(self, text: str = "") -> None:
        """Empty the chart; ``text`` (or what it waits for by default) stands in its middle."""
        self._empty_text = text or EMPTY_TEXT
        self.groups, self.labels, self.stacks = [], [], {}
        self.outline, self.outline_label = None, ""
        self._segments = {}
        for bar in self._bars.values():
            bar.setVisible(False)
        self._outline_item.setVisible(False)
        self.legend.clear()
        self._apply_ticks()
        self._show_empty(True)

    def _show_empty(self, empty: bool) -> None:
        show_placeholder(self.plot, self._empty_text if empty else None)

    def render(self, layers: Sequence[LayerStats], totals: Totals | None = None) -> None:
        """Draw one bar per group, plus an ``unattributed`` bar when ``totals`` are given.
        A previous outline is dropped (its bars may not match): call :meth:`set_outline`."""
        groups = group_layers(layers)
        categories = category_order(groups)
        labels = [short_layer_label(g.name) + (" (own)" if g.own_only else "") for g in groups]
        count = len(groups) + (1 if totals is not None else 0)
        stacks: dict[str, np.ndarray] = {}
        for category in categories:
            values = np.array([g.by_category.get(category, 0) for g in groups] +
                              ([0] if totals is not None else []), dtype=float) / MIB
            if values.any():
                stacks[category] = values
        if totals is not None:
            labels.append(UNATTRIBUTED)
            values = np.zeros(count)
            values[-1] = totals.unattributed_bytes / MIB
            if values.any():
                stacks[UNATTRIBUTED] = values
        self.groups, self.labels, self.stacks = groups, labels, stacks
        self.outline, self.outline_label = None, ""
        self._sync_toggles()
        self._redraw()

    def theme_changed(self, new: theme.Theme) -> None:
        """Called by ``theme.apply``: the baseline outline (and its legend swatch) is drawn in
        the theme's text colour when the chart is drawn; a chart already shown kept the old
        one, dark on a dark background."""
        if self.labels:
            self._redraw()

    def set_outline(self, values: Sequence[int | None] | None, label: str = "baseline") -> None:
        """Bytes per bar of a baseline (same order as the bars; ``None``: not measured there)."""
        if values is None or not self.labels:
            self.outline, self.outline_label = None, ""
        else:
            padded = list(values) + [None] * (len(self.labels) - len(values))
            self.outline = np.array([np.nan if v is None else v / MIB
                                     for v in padded[:len(self.labels)]], dtype=float)
            self.outline_label = label
        self._redraw()

    def _sync_toggles(self) -> None:
        for category in self.stacks:
            if category not in self._toggles:
                box = QCheckBox(category_label(category))
                box.setProperty("category", category)
                box.setToolTip(f"Show {category_label(category)}")
                box.setChecked(category not in self.hidden)
                box.setStyleSheet(f"QCheckBox {{ color: {CATEGORY_COLORS.get(category, '')}; }}"
                                  if category in CATEGORY_COLORS else "")
                box.toggled.connect(lambda on, c=category: self.set_category_visible(c, on))
                self._toggles[category] = box
                self.toggles_row.insertWidget(self.toggles_row.count() - 1, box)  # before the stretch
        for category, box in self._toggles.items():
            box.setVisible(category in self.stacks)
        self.toggles_strip.fit()

    def set_category_visible(self, category: str, visible: bool) -> None:
        if visible:
            self.hidden.discard(category)
        else:
            self.hidden.add(category)
        box = self._toggles.get(category)
        if box is not None and box.isChecked() != visible:
            box.setChecked(visible)
        self._redraw()

    @Slot()
    def _redraw(self, *_: object) -> None:
        count = len(self.labels)
        self._show_empty(not count)
        log = self.log_check.isChecked()
        x = np.arange(count, dtype=float)
        positive = np.zeros(count)
        negative = np.zeros(count)  # over-attribution makes ``unattributed`` negative
        self.legend.clear()
        self._segments = {}
        shown = {c: v for c, v in self.stacks.items() if c not in self.hidden}
        for category, bar in self._bars.items():
            if category not in shown:
                bar.setVisible(False)
        all_tops = []
        for category, values in shown.items():
            y0 = np.where(values >= 0, positive, negative)
            top = y0 + values
            positive += np.where(values >= 0, values, 0)
            negative += np.where(values < 0, values, 0)
            self._segments[category] = (y0, top)
            all_tops.append(np.abs(top))
        floor = 0.0
        if log:
            nonzero = [t[t > 0] for t in all_tops] + (
                [self.outline[self.outline > 0]] if self.outline is not None else [])
            smallest = min((float(t.min()) for t in nonzero if t.size), default=1e-3)
            floor = math.floor(math.log10(smallest)) - 0.3
        for category, (y0, top) in self._segments.items():
            bar = self._bar(category)
            if log:
                lo = np.where(y0 > 0, np.log10(np.maximum(y0, 1e-300)), floor)
                hi = np.where(top > 0, np.log10(np.maximum(top, 1e-300)), floor)
                bar.setOpts(x=x, height=np.maximum(hi - lo, 0.0), y0=lo, width=0.75)
            else:
                bar.setOpts(x=x, height=top - y0, y0=y0, width=0.75)
            bar.setVisible(True)
            self.legend.addItem(bar, category_label(category))
        outline_top = 0.0
        self._outline_item.setOpts(pen=pg.mkPen(theme.current().text, width=1.4,
                                                style=pg.QtCore.Qt.PenStyle.DashLine))
        if self.outline is not None and count:
            heights = np.nan_to_num(self.outline, nan=0.0)
            if log:
                heights = np.where(heights > 0, np.log10(np.maximum(heights, 1e-300)) - floor, 0)
                self._outline_item.setOpts(x=x, height=heights, y0=np.full(count, floor),
                                           width=0.86)
            else:
                self._outline_item.setOpts(x=x, height=heights, y0=np.zeros(count), width=0.86)
            self._outline_item.setVisible(True)
            self.legend.addItem(self._outline_item, self.outline_label or "baseline")
            outline_top = float(np.nanmax(self.outline)) if np.any(~np.isnan(self.outline)) else 0
        else:
            self._outline_item.setVisible(False)

        self._apply_ticks()
        left = self.plot.getAxis("left")
        if log and count:
            top = max(float(positive.max()), outline_top, 1e-6)
            high = math.log10(top) + 0.15
            left.setTicks([[(float(k), _decade(k)) for k in range(int(math.ceil(floor)),
                                                                  int(math.floor(high)) + 1)],
                           []])
            left.setScale(1.0)
            self.plot.setLabel("left", "MiB at peak (log)")
            self.plot.setYRange(floor, high, padding=0)
        else:
            left.setTicks(None)
            top = max(float(positive.max()) if count and positive.size else 0.0, outline_top)
            # The bars stay in MiB; past GIB_AXIS_FROM MiB the axis reads in GiB (a 70B
            # estimate's axis ran to 9,000 "MiB at peak").
            gib = top >= GIB_AXIS_FROM
            left.setScale(1 / 1024 if gib else 1.0)
            self.plot.setLabel("left", "GiB at peak" if gib else "MiB at peak")
            if count:
                bottom = float(negative.min()) if negative.size else 0.0
                self.plot.setYRange(min(bottom, 0.0), max(top, 1e-6) * 1.08, padding=0)

    def bar_at(self, x: float) -> int | None:
        index = int(round(x))
        return index if 0 <= index < len(self.labels) and abs(x - index) <= 0.45 else None

    def hover_text(self, index: int) -> str:
        """Exact bytes of bar ``index``: each category, the total, and the baseline."""
        lines = [self.labels[index]]
        total = 0.0
        for category, values in self.stacks.items():
            value = values[index]
            if value:
                total += value
                hidden = " (hidden)" if category in self.hidden else ""
                lines.append(f"{category_label(category)}: {_exact(value)}{hidden}")
        lines.append(f"total: {_exact(total)}")
        if self.outline is not None and not np.isnan(self.outline[index]):
            lines.append(f"{self.outline_label or 'baseline'}: {_exact(self.outline[index])}")
        return "\n".join(lines)

    @Slot(object)
    def _hover(self, pos: QPointF) -> None:
        if not self.labels or not self.plot.sceneBoundingRect().contains(pos):
            return
        point = self.plot.getViewBox().mapSceneToView(pos)
        index = self.bar_at(point.x())
        if index is None:
            QToolTip.hideText()
            return
        QToolTip.showText(QCursor.pos(), self.hover_text(index), self.plot_widget)

    def _apply_ticks(self) -> None:
        sizes = (np.nansum(np.vstack(list(self.stacks.values())), axis=0) if self.stacks
                 else None)
        fit_bar_labels(self.plot, self.labels, self.font(), sizes)

    def _bar(self, category: str) -> pg.BarGraphItem:
        bar = self._bars.get(category)
        if bar is None:
            color = CATEGORY_COLORS.get(category) or _EXTRA_COLORS[
                (len(self._bars) - len(CATEGORY_COLORS)) % len(_EXTRA_COLORS)]
            bar = pg.BarGraphItem(x=[0.0], height=[0.0], width=0.75, brush=pg.mkBrush(color),
                                  pen=pg.mkPen("#ffffff", width=0.5))
            self._bars[category] = bar
            self.plot.addItem(bar)
        return bar
