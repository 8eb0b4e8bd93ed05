"""Shared axis helper for the bar charts (memory by layer, latency by layer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QFont, QFontMetrics

from .. import theme


def show_placeholder(plot: Any, text: str | None) -> None:
    """``text`` in the middle of an empty chart, with its axes' values hidden (0-1 axes with
    ticks said nothing, and read as a chart of nothing); ``None`` takes it away and shows the
    values again, before the chart is drawn. Survives ``plot.clear()`` (it is added again)."""
    item = getattr(plot, "_memlens_placeholder", None)
    if item is not None and item.scene() is None:  # plot.clear() took it out
        item = None
    if text:
        if item is None:
            item = pg.TextItem("", anchor=(0.5, 0.5))
            plot.addItem(item, ignoreBounds=True)
        item.setText(text)
        item.setColor(theme.current().text)
        item.setPos(0.5, 0.5)
        plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
    elif item is not None:
        plot.removeItem(item)
        item = None
    if not text:  # setRange above turned auto-range off: a chart that sets no range of its
        plot.enableAutoRange()  # own (the sweep's curves) would stay stuck at 0-1
    plot._memlens_placeholder = item
    for axis in ("left", "bottom"):
        plot.getAxis(axis).setStyle(showValues=not text)


def placeholder_text(plot: Any) -> str:
    """What :func:`show_placeholder` shows on ``plot`` ('' when the chart is drawn)."""
    item = getattr(plot, "_memlens_placeholder", None)
    return item.toPlainText() if item is not None and item.scene() is not None else ""


def fit_bar_labels(plot: Any, labels: Sequence[str], font: QFont,
                   sizes: Sequence[float] | None = None) -> None:
    """Fit the x range to the bars and label as many bars as fit without overlapping.

    Labels are placed in order of ``sizes`` (the bars' heights: the largest bars are the ones a
    reader looks for, and they keep their names), or without ``sizes`` the last first and then
    from the left, each where it overlaps no label already placed. When one row cannot hold
    every whole name, the labels take two staggered rows (a long name such as "embed_tokens"
    left the block beside it unnamed, so the chart read as if block 0 were missing). The range
    leaves room for the first and last labels.
    """
    axis = plot.getAxis("bottom")
    count = len(labels)
    if not count:
        axis.setTicks(None)
        if axis.fixedHeight is not None:  # a cleared chart drops the second row's height
            axis.setHeight(None)
        return
    metrics = QFontMetrics(axis.style.get("tickFont") or font)
    half = [metrics.horizontalAdvance(label) / 2 + 3 for label in labels]
    view_width = max(plot.getViewBox().width(), 50.0)
    span = count - 1
    right = max(0.6, half[-1] * (span + 0.6) / max(view_width - half[-1], 1.0))
    left = max(0.6, half[0] * (span + right) / max(view_width - half[0], 1.0))
    plot.setXRange(-left, span + right, padding=0)
    px = view_width / (span + left + right)  # pixels per bar
    if sizes is not None and len(sizes) == count:
        key = [float(v) if v == v else float("-inf") for v in sizes]  # NaN: no bar, last
        order = sorted(range(count), key=lambda i: -key[i])
    else:
        order = [span, *range(count - 1)]
    centers = [(i + left) * px for i in range(count)]
    placed = _place_labels(labels, half, centers, order, view_width, metrics, rows=1)
    if len(placed) < count or any(text != labels[i] for i, (_, text) in placed.items()):
        two = _place_labels(labels, half, centers, order, view_width, metrics, rows=2)
        if len(two) > len(placed) or sum(t == labels[i] for i, (_, t) in two.items()) > sum(
                t == labels[i] for i, (_, t) in placed.items()):
            placed = two
    # The second row is the same tick text after a line break, which pyqtgraph draws; its
    # automatic height (0.8 of the text's box) would clip that line, so two rows set it.
    axis.setTicks([[(float(i), ("\n" if row else "") + text)
                    for i, (row, text) in sorted(placed.items())], []])
    if any(row for row, _ in placed.values()):
        height = (2 * metrics.height() + axis.style["tickTextOffset"][1]
                  + max(0, axis.style["tickLength"]) + 2)
        if axis.label.isVisible():
            height += axis.label.boundingRect().height() * 0.8
        axis.setHeight(int(height))
    elif axis.fixedHeight is not None:
        axis.setHeight(None)


def _place_labels(labels: Sequence[str], half: Sequence[float], centers: Sequence[float],
                  order: Sequence[int], view_width: float, metrics: QFontMetrics,
                  rows: int) -> dict[int, tuple[int, str]]:
    """Bar index -> (row, text) for the labels that fit ``rows`` rows of tick text."""
    taken: list[list[tuple[float, float]]] = [[] for _ in range(rows)]  # pixel extents per row

    def free(row: int, extent: tuple[float, float]) -> bool:
        return not any(a < extent[1] and extent[0] < b for a, b in taken[row])

    placed: dict[int, tuple[int, str]] = {}
    for i in order:
        extent = (centers[i] - half[i], centers[i] + half[i])
        # (the range leaves room for the first and last labels; any other label reaching past
        # an edge would be cut off)
        if 0 < i < len(labels) - 1 and (extent[0] < -0.5 or extent[1] > view_width + 0.5):
            continue
        for row in range(rows):
            if free(row, extent):
                taken[row].append(extent)
                placed[i] = (row, labels[i])
                break
    # A bar whose whole name does not fit gets as much of it as the room between its placed
    # neighbours allows ("embed_tok…"), on the row with the most room, when that keeps three
    # characters or more; hovering a bar shows its whole name. Unlabelled bars (the first one,
    # beside a taller block) read as noise.
    for i in range(len(labels)):
        if i in placed:
            continue
        center = centers[i]
        best: tuple[int, int] | None = None  # (room, row)
        for row in range(rows):
            if any(a < center < b for a, b in taken[row]):
                continue
            lo = max([b for _, b in taken[row] if b <= center], default=0.0)
            hi = min([a for a, _ in taken[row] if a >= center], default=view_width)
            room = int(2 * min(center - lo, hi - center)) - 6
            if best is None or room > best[0]:
                best = (room, row)
        if best is None:
            continue
        room, row = best
        short = metrics.elidedText(labels[i], Qt.TextElideMode.ElideRight, max(room, 0))
        if short != labels[i] and len(short.rstrip("…")) < 3:
            continue  # (a whole name that fits, "10", is kept however short)
        w = metrics.horizontalAdvance(short) / 2 + 3
        taken[row].append((center - w, center + w))
        placed[i] = (row, short)
    return placed


def fit_legend_columns(legend: Any, width: float) -> int:
    """Give a pyqtgraph ``LegendItem`` the most columns (up to one per entry) whose rows fit
    ``width`` pixels, and return that count.

    A legend laid out in one row is as wide as its entries: wider than the view, it widened
    the plot past the widget's edge, and the last bars (the head, the loss, unattributed) and
    legend entries were cut off at the default window size. Entries fill rows left to right,
    as pyqtgraph places them; a column is as wide as its widest sample and label."""
    items = list(getattr(legend, "items", []))
    if not items or width <= 0:
        return getattr(legend, "columnCount", 1)
    layout = legend.layout
    spacing = max(layout.horizontalSpacing(), 0.0)
    left, _top, right, _bottom = layout.getContentsMargins()
    sizes = [(sample.boundingRect().width(), label.itemRect().width()
              if hasattr(label, "itemRect") else label.boundingRect().width())
             for sample, label in items]
    columns = 1
    for n in range(len(items), 0, -1):
        samples = [max(sizes[i][0] for i in range(c, len(items), n)) for c in range(n)]
        labels = [max(sizes[i][1] for i in range(c, len(items), n)) for c in range(n)]
        if sum(samples) + sum(labels) + spacing * (2 * n - 1) + left + right <= width:
            columns = n
            break
    if columns != legend.columnCount:
        legend.setColumnCount(columns)
    return columns


MAX_LEGEND_SHARE = 0.34  # of the chart widget's height
QWIDGETSIZE_MAX = (1 << 24) - 1


class _LegendFitter(QObject):
    """Refits a legend's columns when its widget is resized or an entry is added."""

    def __init__(self, legend: Any, widget: Any) -> None:
        super().__init__(widget)
        self.legend, self.widget = legend, widget
        widget.installEventFilter(self)
        add = legend.addItem

        def add_and_fit(*args: Any, **kwargs: Any) -> Any:
            result = add(*args, **kwargs)
            self.fit()
            return result

        legend.addItem = add_and_fit
        clear = legend.clear

        def clear_and_fit(*args: Any, **kwargs: Any) -> Any:
            result = clear(*args, **kwargs)
            self.fit()  # (an empty legend: shown again, and the tooltip of its entries goes)
            return result

        legend.clear = clear_and_fit

    def eventFilter(self, _obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Resize:
            self.fit()
        return False

    def fit(self) -> None:
        fit_legend_columns(self.legend, self.widget.width() - 12)
        self._cap_height()

    def _cap_height(self) -> None:
        """Hide the legend while it would take more than ``MAX_LEGEND_SHARE`` of the widget's
        height: at 1024 × 700 a four-row legend left a 20-pixel plot. The widget's tooltip then
        holds the legend's entries, and the panels keep their own colour key (the Show boxes,
        the coloured run names, the parts table)."""
        items = list(getattr(self.legend, "items", []))
        columns = max(getattr(self.legend, "columnCount", 1), 1)
        rows = -(-len(items) // columns)
        row_height = max((max(sample.boundingRect().height(), label.boundingRect().height())
                          for sample, label in items), default=0.0)
        height = rows * (row_height + max(self.legend.layout.verticalSpacing(), 0.0))
        fits = height <= MAX_LEGEND_SHARE * self.widget.height()
        hidden = bool(items) and not fits
        if hidden == (not self.legend.isVisible()):
            self.widget.setToolTip(self._entries(items) if hidden else "")
            return
        self.legend.setVisible(not hidden)
        # (a hidden item keeps its row in a QGraphicsGridLayout: give the row no height)
        self.legend.setMaximumHeight(0 if hidden else QWIDGETSIZE_MAX)
        self.widget.setToolTip(self._entries(items) if hidden else "")

    @staticmethod
    def _entries(items: list) -> str:
        names = [getattr(label, "text", "") for _sample, label in items]
        return ("Legend (hidden: the chart is too small for it; enlarge the window or drag "
                "the divider): " + "; ".join(n for n in names if n))


def keep_legend_fitted(legend: Any, widget: Any) -> None:
    """Keep ``legend`` (a pyqtgraph LegendItem in ``widget``, a GraphicsLayoutWidget) within
    the widget's width: see ``fit_legend_columns``."""
    legend._memlens_fitter = _LegendFitter(legend, widget)
