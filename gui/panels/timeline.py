"""Memory over time: process RSS, and GPU memory when the samples carry it (gaps, never zeros)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from engine.events import Sample

from engine.format import to_mib

# (Sample field, legend name, colour)
SERIES = (
    ("rss_bytes", "process RSS", "#1f77b4"),
    ("gpu_used_bytes", "GPU used", "#d62728"),
)


class _Buffer:
    """A growable float64 column (amortised O(1) appends, ndarray views for plotting)."""

    def __init__(self, capacity: int = 1024) -> None:
        self._data = np.empty(capacity)
        self.size = 0

    def extend(self, values: Sequence[float]) -> None:
        needed = self.size + len(values)
        if needed > self._data.size:
            grown = np.empty(max(needed, self._data.size * 2))
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size: needed] = values
        self.size = needed

    def view(self) -> np.ndarray:
        return self._data[: self.size]

    def clear(self) -> None:
        self.size = 0


class TimelinePanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget = pg.PlotWidget(background="w")
        self.plot = self.plot_widget.getPlotItem()
        self.plot.setTitle("Memory over time", color="#202020")
        self.plot.setLabel("left", "MiB")
        self.plot.setLabel("bottom", "seconds")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.setMenuEnabled(False)
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen("#202020")
            self.plot.getAxis(axis).setPen("#606060")
        self.plot.setClipToView(True)
        self.plot.setDownsampling(auto=True, mode="peak")  # spikes are the data here
        self.legend = self.plot.addLegend(offset=(10, 10), labelTextColor="#202020",
                                          brush=pg.mkBrush(255, 255, 255, 200))
        self._t = _Buffer()
        self._columns = {field: _Buffer() for field, _, _ in SERIES}
        self.curves: dict[str, pg.PlotDataItem] = {}
        for field, name, color in SERIES:
            curve = self.plot.plot([], [], pen=pg.mkPen(color, width=1.5), connect="finite")
            self.curves[field] = curve
            self.legend.addItem(curve, name)
        self._legend_shown: set[str] = {field for field, _, _ in SERIES}
        # Said in words, not drawn as zeros: a run without GPU readings has no GPU series.
        self.gpu_note = QLabel()
        self.gpu_note.setWordWrap(True)
        self.gpu_note.setStyleSheet("color: #606060;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)
        layout.addWidget(self.gpu_note)
        self._redraw()

    @property
    def sample_count(self) -> int:
        return self._t.size

    def clear(self) -> None:
        self._t.clear()
        for column in self._columns.values():
            column.clear()
        self._redraw()

    def add_samples(self, samples: Iterable[Sample]) -> None:
        samples = list(samples)
        if not samples:
            return
        self._t.extend([float(s.t) for s in samples])
        for field, column in self._columns.items():
            column.extend([to_mib(getattr(s, field, None)) for s in samples])
        self._redraw()

    def set_timeline(self, timeline: Mapping[str, Sequence[Any]]) -> bool:
        """Show a saved run's columnar timeline (``t`` + Sample field names); ``False`` if none."""
        times = timeline.get("t") or []
        if not times:
            return False
        self._t.clear()
        self._t.extend([math.nan if v is None else float(v) for v in times])
        for field, column in self._columns.items():
            values = list(timeline.get(field) or [])
            values += [None] * (len(times) - len(values))
            column.clear()
            column.extend([to_mib(v) for v in values[: len(times)]])
        self._redraw()
        return True

    def series(self, field: str) -> np.ndarray:
        return self._columns[field].view()

    def _redraw(self) -> None:
        t = self._t.view()
        for field, name, _ in SERIES:
            values = self._columns[field].view()
            has_data = bool(values.size) and bool(np.isfinite(values).any())
            if has_data:
                self.curves[field].setData(t, values, connect="finite")
            else:
                self.curves[field].setData([], [])
            self.curves[field].setVisible(has_data)
            self._show_in_legend(field, name, has_data or field == SERIES[0][0])
        gpu = self._columns["gpu_used_bytes"].view()
        has_gpu = bool(gpu.size) and bool(np.isfinite(gpu).any())
        self.gpu_note.setText("" if has_gpu or not t.size else
                              "GPU memory: no NVML readings in this run (a CPU run, or NVML is "
                              "not available here).")
        self.gpu_note.setVisible(bool(self.gpu_note.text()))

    def _show_in_legend(self, field: str, name: str, shown: bool) -> None:
        if shown and field not in self._legend_shown:
            self.legend.addItem(self.curves[field], name)
            self._legend_shown.add(field)
        elif not shown and field in self._legend_shown:
            self.legend.removeItem(self.curves[field])
            self._legend_shown.discard(field)
