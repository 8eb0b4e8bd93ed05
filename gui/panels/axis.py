"""Shared axis helper for the bar charts (memory by layer, latency by layer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QFont, QFontMetrics


def fit_bar_labels(plot: Any, labels: Sequence[str], font: QFont,
                   sizes: Sequence[float] | None = None) -> None:
    """Fit the x range to the bars and label as many bars as fit without overlapping.

    Labels are placed in order of ``sizes`` (the bars' heights: the largest bars are the ones a
    reader looks for, and they keep their names), or without ``sizes`` the last first and then
    from the left, each where it overlaps no label already placed. The range leaves room for
    the first and last labels.
    """
    axis = plot.getAxis("bottom")
    count = len(labels)
    if not count:
        axis.setTicks(None)
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
    taken: list[tuple[float, float]] = []  # pixel extents of the labels placed
    chosen: set[int] = set()
    for i in order:
        center = (i + left) * px
        extent = (center - half[i], center + half[i])
        # (the range puts the first label's left edge at 0, give or take a rounding)
        if taken and (extent[0] < -0.5
                      or any(a < extent[1] and extent[0] < b for a, b in taken)):
            continue
        taken.append(extent)
        chosen.add(i)
    # A bar whose whole name does not fit gets as much of it as the room between its placed
    # neighbours allows ("embed_tok…"), when that keeps three characters or more; hovering a bar
    # shows its whole name. Unlabelled bars (the first one, beside a taller block) read as noise.
    text = {i: labels[i] for i in chosen}
    for i in range(count):
        if i in chosen:
            continue
        center = (i + left) * px
        if any(a < center < b for a, b in taken):
            continue
        lo = max([b for _, b in taken if b <= center], default=0.0)
        hi = min([a for a, _ in taken if a >= center], default=view_width)
        room = int(2 * min(center - lo, hi - center)) - 6
        short = metrics.elidedText(labels[i], Qt.TextElideMode.ElideRight, max(room, 0))
        if short != labels[i] and len(short.rstrip("…")) < 3:
            continue  # (a whole name that fits, "10", is kept however short)
        w = metrics.horizontalAdvance(short) / 2 + 3
        taken.append((center - w, center + w))
        text[i] = short
    axis.setTicks([[(float(i), text[i]) for i in sorted(text)], []])


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

    def eventFilter(self, _obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Resize:
            self.fit()
        return False

    def fit(self) -> None:
        fit_legend_columns(self.legend, self.widget.width() - 12)


def keep_legend_fitted(legend: Any, widget: Any) -> None:
    """Keep ``legend`` (a pyqtgraph LegendItem in ``widget``, a GraphicsLayoutWidget) within
    the widget's width: see ``fit_legend_columns``."""
    legend._memlens_fitter = _LegendFitter(legend, widget)
