"""Stacked bar chart "Memory at peak by layer": one bar per block / top-level layer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Slot
from PySide6.QtWidgets import QVBoxLayout, QWidget

from engine.results import LayerStats, Totals

from engine.aggregate import UNATTRIBUTED, LayerGroup, category_order, group_layers
from engine.format import short_layer_label

from .axis import fit_bar_labels

MIB = 1024.0 * 1024.0

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
        self.plot.showGrid(y=True, alpha=0.25)
        self.plot.setMenuEnabled(False)
        self.plot.getViewBox().setMouseEnabled(x=False, y=False)  # ticks fit the full view
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen("#202020")
            self.plot.getAxis(axis).setPen("#606060")
        self.legend = pg.LegendItem(colCount=len(CATEGORY_COLORS), labelTextColor="#202020")
        self.plot_widget.addItem(self.legend, row=1, col=0)
        self.plot.getViewBox().sigResized.connect(self._on_resized)
        self._bars: dict[str, pg.BarGraphItem] = {}
        self.groups: list[LayerGroup] = []
        self.labels: list[str] = []
        self.stacks: dict[str, np.ndarray] = {}  # category -> MiB per bar (what is drawn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)

    @Slot(object)
    def _on_resized(self, _view: object = None) -> None:
        self._apply_ticks()

    def clear(self) -> None:
        self.groups, self.labels, self.stacks = [], [], {}
        for bar in self._bars.values():
            bar.setVisible(False)
        self.legend.clear()
        self._apply_ticks()

    def render(self, layers: Sequence[LayerStats], totals: Totals | None = None) -> None:
        """Draw one bar per group, plus an ``unattributed`` bar when ``totals`` are given."""
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
        x = np.arange(count, dtype=float)
        positive = np.zeros(count)
        negative = np.zeros(count)  # over-attribution makes ``unattributed`` negative
        self.legend.clear()
        for category, bar in self._bars.items():
            if category not in stacks:
                bar.setVisible(False)
        for category, values in stacks.items():
            base = np.where(values >= 0, positive, negative)
            bar = self._bar(category)
            bar.setOpts(x=x, height=values, y0=base, width=0.75)
            bar.setVisible(True)
            positive += np.where(values >= 0, values, 0)
            negative += np.where(values < 0, values, 0)
            self.legend.addItem(bar, category_label(category))

        self._apply_ticks()
        if count:
            top = float(positive.max()) if positive.size else 0.0
            bottom = float(negative.min()) if negative.size else 0.0
            self.plot.setYRange(min(bottom, 0.0), max(top, 1e-6) * 1.08, padding=0)

    def _apply_ticks(self) -> None:
        fit_bar_labels(self.plot, self.labels, self.font())

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
