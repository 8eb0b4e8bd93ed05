"""Shared axis helper for the bar charts (memory by layer, latency by layer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtGui import QFont, QFontMetrics


def fit_bar_labels(plot: Any, labels: Sequence[str], font: QFont) -> None:
    """Fit the x range to the bars and label as many bars as fit without overlapping.

    Labels are placed greedily from the left; the last one always gets its place, and the range
    leaves room for the first and last labels.
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
    last_left = (span + left) * px - half[-1]
    ticks: list[tuple[float, str]] = []
    edge = 0.0
    for i in range(count - 1):
        center = (i + left) * px
        if center - half[i] >= edge and center + half[i] <= last_left:
            ticks.append((float(i), labels[i]))
            edge = center + half[i]
    ticks.append((float(span), labels[-1]))
    axis.setTicks([ticks, []])
