"""Shared axis helper for the bar charts (memory by layer, latency by layer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    axis.setTicks([[(float(i), labels[i]) for i in sorted(chosen)], []])
