"""Memory over time: process RSS, and GPU memory when the samples carry it (gaps, never zeros)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from engine.events import Sample

from engine.format import to_mib

from .. import theme

LEGEND_MAX_SHARE = 0.3  # of the view's area: above it the legend is hidden (see _place_legend)
# Where the memory legend may sit, in order of preference: (its corner, the plot's corner,
# offset in pixels). The top corners keep clear of the phase names hung from the top edge.
LEGEND_CORNERS = (((1, 1), (1, 1), (-10, -10)), ((0, 1), (0, 1), (10, -10)),
                  ((0, 0), (0, 0), (10, 26)), ((1, 0), (1, 0), (-10, 26)))

# (Sample field, legend name, colour): memory, in MiB
SERIES = (
    ("rss_bytes", "process RSS", "#1f77b4"),
    ("gpu_used_bytes", "GPU used (device, NVML)", "#d62728"),
    ("gpu_process_bytes", "GPU used by this process (NVML)", "#ff7f0e"),
    ("torch_allocated_bytes", "torch allocated", "#2ca02c"),
    ("torch_reserved_bytes", "torch reserved", "#9467bd"),
)
# GPU activity, in its own units (drawn only when NVML reported it)
ACTIVITY = (
    ("gpu_util_percent", "GPU utilization %", "#8c564b"),
    ("gpu_power_w", "GPU power W", "#e377c2"),
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

    def keep(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (sorted indices), in place; capacity is unchanged."""
        kept = self._data[rows]
        self._data[: kept.size] = kept
        self.size = kept.size

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)


MAX_LIVE_SAMPLES = 100_000  # the engine's sampler keeps the same bound for the saved timeline


def decimation_rows(size: int, score: np.ndarray) -> np.ndarray:
    """Rows to keep when the timeline is over its bound: the older half is halved by keeping,
    of each pair, the row with the higher memory reading (``score``), so peaks survive; the
    newer half is kept whole. The first row always survives (ties keep the earlier row)."""
    half = (size // 2) & ~1
    pairs = np.arange(half).reshape(-1, 2)
    first_wins = score[pairs[:, 0]] >= score[pairs[:, 1]]
    kept_old = np.where(first_wins, pairs[:, 0], pairs[:, 1])
    kept_old[0] = 0
    return np.concatenate([kept_old, np.arange(half, size)])


PHASE_COLOURS = ("#e8eef7", "#f3f3f3")  # alternating light bands; the name says which phase
DARK_PHASE_COLOURS = ("#2b3342", "#27292e")


def phase_spans(times: Sequence[float], phases: Sequence[str]) -> list[tuple[str, float, float]]:
    """Contiguous runs of one phase label as (name, start, end); unlabelled samples are skipped.

    Presentation only: it groups the engine's own per-sample phase labels."""
    spans: list[tuple[str, float, float]] = []
    for t, name in zip(times, phases):
        if t is None or not math.isfinite(t) or not name:
            continue
        if spans and spans[-1][0] == name:
            spans[-1] = (name, spans[-1][1], t)
        else:
            if spans:  # close the previous band where this one starts
                prev = spans[-1]
                spans[-1] = (prev[0], prev[1], t)
            spans.append((name, t, t))
    return spans


_MEMORY = {field for field, _, _ in SERIES}
LIVE_REDRAW_HZ = 12.5


def _now_ms() -> float:
    return time.monotonic() * 1000.0


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _along_line(x: np.ndarray, y: np.ndarray, step: float = 3.0,
                limit: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``step`` pixels along the drawn polyline through (x, y) (pixels; a
    non-finite value breaks the line, as ``connect="finite"`` draws it): a steep rise drawn
    from a few samples hides behind a legend as much as its length on screen. Past ``limit``
    points, the samples themselves."""
    finite = np.isfinite(x) & np.isfinite(y)
    if x.size < 2 or x.size > limit:
        return x[finite], y[finite]
    dx, dy = np.diff(x), np.diff(y)
    drawn = finite[:-1] & finite[1:]
    length = np.where(drawn, np.hypot(np.nan_to_num(dx), np.nan_to_num(dy)), 0.0)
    count = np.where(drawn, np.clip(np.ceil(length / step), 1, 1_000), 0).astype(int)
    if count.sum() > limit:
        return x[finite], y[finite]
    start = np.repeat(np.arange(dx.size), count)
    frac = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    frac = frac / np.repeat(np.maximum(count, 1), count)
    return (np.concatenate([x[start] + dx[start] * frac, x[finite]]),
            np.concatenate([y[start] + dy[start] * frac, y[finite]]))


class TimelinePanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot_widget = pg.GraphicsLayoutWidget()
        self.plot_widget.setBackground("w")
        self.plot = self.plot_widget.addPlot(row=0, col=0)
        self.plot.setTitle("Memory over time", color="#202020", size="10pt")  # a narrow column
        self.plot.setLabel("left", "MiB")
        self.plot.getAxis("left").enableAutoSIPrefix(False)  # (MiB is not an SI unit)
        self.plot.setLabel("bottom", "time", units="s")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.setMenuEnabled(False)
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen("#202020")
            self.plot.getAxis(axis).setPen("#606060")
        self.plot.setClipToView(True)
        self.plot.setDownsampling(auto=True, mode="peak")  # spikes are the data here
        # Bottom right: phase names sit along the top, and memory curves mostly rise to the right.
        self.legend = self.plot.addLegend(offset=(-10, -10), labelTextColor="#202020",
                                          brush=pg.mkBrush(255, 255, 255, 200))
        self.legend.setParentItem(self.plot)  # placed over the view by _place_legend
        self.legend.setZValue(100)  # above the axes it may overlap in a narrow column
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.timeout.connect(self._redraw)
        self._last_draw_ms = -1e12
        self._t = _Buffer()
        self.decimated = 0  # samples dropped to stay within MAX_LIVE_SAMPLES
        self._phases: list[str] = []
        self._bands: list[Any] = []
        self._phase_key: tuple = ()
        self._columns = {field: _Buffer() for field, _, _ in SERIES + ACTIVITY}
        self.curves: dict[str, pg.PlotDataItem] = {}
        for field, name, color in SERIES:
            curve = self.plot.plot([], [], pen=pg.mkPen(color, width=1.5), connect="finite")
            self.curves[field] = curve
            self.legend.addItem(curve, name)
        self._legend_shown: set[str] = {field for field, _, _ in SERIES}
        # Peak markers: one triangle per memory series at its highest sample; the value is in
        # the series' legend entry (a label beside the marker collided with the legend).
        self.peak_markers = pg.ScatterPlotItem(symbol="t1", size=11, pen=pg.mkPen("#303030"))
        self.peak_markers.setZValue(20)
        self.plot.addItem(self.peak_markers)
        self.peaks: dict[str, tuple[float, float]] = {}  # field -> (t, MiB) of its maximum
        # GPU utilization and power share a second, smaller plot, shown only with readings.
        self.activity_plot = self.plot_widget.addPlot(row=1, col=0)
        self.activity_plot.setLabel("left", "% · W")
        self.activity_plot.setMenuEnabled(False)
        self.activity_plot.showGrid(x=True, y=True, alpha=0.25)
        self.activity_plot.setXLink(self.plot)
        self.activity_plot.setMaximumHeight(130)
        self.activity_legend = self.activity_plot.addLegend(offset=(10, 5),
                                                            brush=pg.mkBrush(255, 255, 255, 200))
        for field, name, color in ACTIVITY:
            curve = self.activity_plot.plot([], [], pen=pg.mkPen(color, width=1.2),
                                            connect="finite")
            self.curves[field] = curve
            self.activity_legend.addItem(curve, name)
        self.activity_plot.setVisible(False)
        # Said in words, not drawn as zeros: a run without GPU readings has no GPU series.
        self.gpu_note = QLabel()
        self.gpu_note.setWordWrap(True)
        self.gpu_note.setStyleSheet(f"color: {theme.current().axis};")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        # Phases too narrow to carry their name on the band are named here, with their times
        # (a report's picture showed the memory and timing passes as unnamed slivers).
        self.phase_note = QLabel()
        self.phase_note.setWordWrap(True)
        self.phase_note.setStyleSheet(f"color: {theme.current().axis};")
        self.phase_note.setVisible(False)
        layout.addWidget(self.plot_widget)
        layout.addWidget(self.phase_note)
        layout.addWidget(self.gpu_note)
        self.plot.getViewBox().sigRangeChanged.connect(self._place_phase_labels)
        self.plot.getViewBox().sigResized.connect(self._place_phase_labels)
        self.plot.getViewBox().sigResized.connect(self._place_legend)
        self.legend_corner = LEGEND_CORNERS[0]
        self.legend_hides = 0
        self._redraw()
        self._last_draw_ms = -1e12  # the first samples draw at once

    @property
    def sample_count(self) -> int:
        return self._t.size

    def _decimate(self) -> None:
        size = self._t.size
        memory = np.vstack([self._columns[field].view() for field in _MEMORY])
        score = np.where(np.isnan(memory), -np.inf, memory).max(axis=0)
        rows = decimation_rows(size, score)
        self._t.keep(rows)
        for column in self._columns.values():
            column.keep(rows)
        self._phases = [self._phases[i] for i in rows.tolist()]
        self.decimated += size - rows.size

    @property
    def memory_bytes(self) -> int:
        """Bytes the live timeline holds: its columns' buffers plus the phase labels' list
        (the label strings are shared, one per phase)."""
        import sys

        return (self._t.nbytes + sum(c.nbytes for c in self._columns.values())
                + sys.getsizeof(self._phases))

    def flush(self) -> None:
        """Draw samples whose coalesced redraw is still pending."""
        if self._redraw_timer.isActive():
            self._redraw()

    def clear(self, note: str = "") -> None:
        """Empty the timeline; ``note`` says why it stays empty (an estimate samples nothing)."""
        self._redraw_timer.stop()
        self.decimated = 0
        self._t.clear()
        self._phases.clear()
        for column in self._columns.values():
            column.clear()
        self._redraw()
        if note:
            self.gpu_note.setText(note)
            self.gpu_note.setVisible(True)
        # Nothing left to fit the view to: back to the empty axes, not the last run's range;
        # and the next run's first samples draw at once.
        self.plot.setRange(xRange=(0.0, 1.0), yRange=(0.0, 1.0), padding=0)
        self.plot.enableAutoRange()
        self._last_draw_ms = -1e12
        self._last_draw_ms = -1e12

    def add_samples(self, samples: Iterable[Sample]) -> None:
        samples = list(samples)
        if not samples:
            return
        self._t.extend([float(s.t) for s in samples])
        self._phases.extend(s.phase or "" for s in samples)
        for field, column in self._columns.items():
            if field in _MEMORY:
                column.extend([to_mib(getattr(s, field, None)) for s in samples])
            else:
                column.extend([_number(getattr(s, field, None)) for s in samples])
        while self._t.size > MAX_LIVE_SAMPLES:
            self._decimate()
        # Data is appended at once (nothing is lost); drawing is coalesced to at most
        # LIVE_REDRAW_HZ: a repaint costs ~7 ms of UI-thread Python (benchmarks/
        # ui_responsiveness.py), which the engine's thread competes for.
        wait_ms = self._last_draw_ms + 1000.0 / LIVE_REDRAW_HZ - _now_ms()
        if wait_ms <= 0:
            self._redraw()
        elif not self._redraw_timer.isActive():
            self._redraw_timer.start(int(math.ceil(wait_ms)))

    def set_timeline(self, timeline: Mapping[str, Sequence[Any]]) -> bool:
        """Show a saved run's columnar timeline (``t`` + Sample field names); ``False`` if none."""
        times = timeline.get("t") or []
        if not times:
            return False
        self._t.clear()
        self._t.extend([math.nan if v is None else float(v) for v in times])
        phases = list(timeline.get("phase") or [])
        self._phases = [str(p or "") for p in phases[: len(times)]]
        self._phases += [""] * (len(times) - len(self._phases))
        for field, column in self._columns.items():
            values = list(timeline.get(field) or [])
            values += [None] * (len(times) - len(values))
            column.clear()
            convert = to_mib if field in _MEMORY else _number
            column.extend([convert(v) for v in values[: len(times)]])
        self._redraw()
        return True

    def series(self, field: str) -> np.ndarray:
        return self._columns[field].view()

    def spans(self) -> list[tuple[str, float, float]]:
        return phase_spans(self._t.view().tolist(), self._phases)

    def _draw_phases(self) -> None:
        spans = self.spans()
        key = tuple((name, start) for name, start, _ in spans)
        if key == self._phase_key and len(self._bands) == 2 * len(spans):
            # Same phases: only the last band grows.
            if spans:
                self._bands[-2].setRegion((spans[-1][1], spans[-1][2]))
        else:
            for item in self._bands:
                self.plot.removeItem(item)
            self._bands = []
            colours = DARK_PHASE_COLOURS if theme.current().name == "dark" else PHASE_COLOURS
            for i, (name, start, end) in enumerate(spans):
                region = pg.LinearRegionItem((start, end), movable=False,
                                             brush=pg.mkBrush(colours[i % 2]),
                                             pen=pg.mkPen(None))
                region.setZValue(-10)
                region.setToolTip(f"{name}: {start:.2f}–{end:.2f} s")
                label = pg.TextItem("", color="#707070", anchor=(0, 0))
                self.plot.addItem(region)
                self.plot.addItem(label, ignoreBounds=True)
                self._bands += [region, label]
            self._phase_key = key
        self._place_phase_labels()

    def theme_changed(self, new: theme.Theme) -> None:
        """Called by ``theme.apply``: the phase bands take the new theme's colours."""
        self.gpu_note.setStyleSheet(f"color: {new.axis};")
        self.phase_note.setStyleSheet(f"color: {new.axis};")
        self._phase_key = ()  # draw the bands afresh
        last = self._last_draw_ms
        self._redraw()
        self._last_draw_ms = last  # a recolouring is not a live draw: no throttling after it

    def _place_phase_labels(self, *_: Any) -> None:
        """Name each phase band along the top where the name fits in the band as drawn now.

        Called on every redraw and whenever the view's range or size changes: a phase that
        was wide when it began (the run was short then) narrows on screen as the run goes on,
        and its label must go rather than run into the next one. Short phases keep their band
        and tooltip."""
        if not self._bands:
            # (no phases: the last run's note went on naming its phases beside an estimate)
            self.phase_note.setText("")
            self.phase_note.setVisible(False)
            return
        spans = self.spans()
        viewbox = self.plot.getViewBox()
        (x0, x1), (_, top) = viewbox.viewRange()
        px_per_s = viewbox.width() / (x1 - x0) if x1 > x0 else 0.0
        metrics = QFontMetrics(self.font())
        unnamed = []
        for (name, start, end), label in zip(spans, self._bands[1::2], strict=False):
            fits = (end - start) * px_per_s >= metrics.horizontalAdvance(name) + 8
            text = name if fits else ""
            if not fits and name:
                unnamed.append(f"{name} {start:.2f}–{end:.2f} s")
            if label.toPlainText() != text:
                label.setText(text)
            # Hung from the top edge of the view (the anchor is the text's top left), above
            # the curves' highest point, which autoranging keeps a little below that edge.
            if label.pos().x() != start or label.pos().y() != top:
                label.setPos(start, top)
        note = ("Phases too short to name on the chart: " + " · ".join(unnamed)) if unnamed else ""
        if self.phase_note.text() != note:
            self.phase_note.setText(note)
            self.phase_note.setVisible(bool(note))

    def hideEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        if self._redraw_timer.isActive():
            self._redraw_timer.stop()
            self._redraw()
        super().hideEvent(event)

    def _redraw(self) -> None:
        self._redraw_timer.stop()
        self._last_draw_ms = _now_ms()
        t = self._t.view()
        self._draw_phases()
        for field, name, _ in SERIES:
            has_data = self._draw_curve(field, t)
            self._show_in_legend(field, name, has_data or field == SERIES[0][0])
        self._draw_peaks(t)
        self._place_legend()
        for axis in ("left", "bottom"):  # no samples: no made-up 0.2…0.8 ticks
            self.plot.getAxis(axis).setStyle(showValues=bool(t.size))
        shown = [self._draw_curve(field, t) for field, _, _ in ACTIVITY]
        self.activity_plot.setVisible(any(shown))
        gpu = self._columns["gpu_used_bytes"].view()
        has_gpu = bool(gpu.size) and bool(np.isfinite(gpu).any())
        self.gpu_note.setText("" if has_gpu or not t.size else
                              "GPU memory: no NVML readings in this run (a CPU run, or NVML is "
                              "not available here).")
        self.gpu_note.setVisible(bool(self.gpu_note.text()))

    def _draw_curve(self, field: str, t: np.ndarray) -> bool:
        """Set one series' curve; hidden (and empty) when it has no finite reading."""
        values = self._columns[field].view()
        has_data = bool(values.size) and bool(np.isfinite(values).any())
        if has_data:
            self.curves[field].setData(t, values, connect="finite")
        else:
            self.curves[field].setData([], [])
        # The first series stays in the legend even before any sample: visible (and empty) it
        # shows its line there, where a hidden item shows pyqtgraph's crossed-out eye.
        self.curves[field].setVisible(has_data or field == SERIES[0][0])
        return has_data

    def _draw_peaks(self, t: np.ndarray) -> None:
        self.peaks = {}
        spots = []
        for field, name, color in SERIES:
            values = self._columns[field].view()
            if not values.size or not np.isfinite(values).any():
                continue
            i = int(np.nanargmax(values))
            self.peaks[field] = (float(t[i]), float(values[i]))
            spots.append({"pos": (float(t[i]), float(values[i])), "brush": pg.mkBrush(color),
                          "data": name})
        self.peak_markers.setData(spots)
        # The legend is rebuilt rather than its labels' text changed: a label that grew kept
        # its old box, and its text ran left over the swatch and out of the plot ("rocess RSS").
        # The peak goes on a line of its own, so the box stays narrow in a narrow plot.
        texts = []
        for field, name, _ in SERIES:
            if field in self._legend_shown:
                peak = self.peaks.get(field)
                texts.append((field, f"{name}<br>run peak {peak[1]:,.1f} MiB" if peak else name))
        if texts != getattr(self, "_legend_texts", None):
            self._legend_texts = texts
            self.legend.clear()
            for field, text in texts:
                self.legend.addItem(self.curves[field], text)

    def _place_legend(self, *_: Any) -> None:
        """Put the legend in the corner of the plot where it hides the least of the curves.

        Fixed at the bottom right it covered the rise of a curve that starts low, as process
        RSS does (pyqtgraph has no "best" placement, as matplotlib's legend does). The top
        corners sit below the row of phase names. It moves only when another corner hides
        clearly less, so a live plot's legend does not hop about."""
        viewbox = self.plot.getViewBox()
        width, height = viewbox.width(), viewbox.height()
        box = self.legend.boundingRect()
        if width <= 0 or height <= 0 or box.width() <= 0:
            return
        # In a small window the legend covered half the curves and the time axis: hidden while
        # it would take more than LEGEND_MAX_SHARE of the view, its lines (kept current: they
        # hold the peaks) then in the plot's tooltip.
        crowded = box.width() * box.height() > LEGEND_MAX_SHARE * width * height
        if crowded == self.legend.isVisible():
            self.legend.setVisible(not crowded)
            if not crowded:
                self.plot_widget.setToolTip("")
        if crowded:
            self.plot_widget.setToolTip(
                "Legend (hidden: the chart is too small for it): " + "; ".join(
                    self.legend_text(f) for f, _, _ in SERIES if f in self._legend_shown))
            return
        (x0, x1), (y0, y1) = viewbox.viewRange()
        if x1 <= x0 or y1 <= y0:
            return
        t = self._t.view()
        xs, ys = [], []
        for field, _, _ in SERIES:
            values = self._columns[field].view()
            if values.size == t.size and values.size:
                x, y = _along_line((t - x0) / (x1 - x0) * width,
                                   (y1 - values) / (y1 - y0) * height)  # y from the top
                xs.append(x)
                ys.append(y)
        if not xs:
            return
        px, py = np.concatenate(xs), np.concatenate(ys)
        # The legend hangs from the plot item, not the view box, which clips its children:
        # wider than the view (a narrow column), it hangs from a left corner and moves left
        # over the axis, rather than lose the swatch or the end of its text.
        inner = viewbox.mapRectToParent(viewbox.boundingRect())  # the view, in the plot item
        outer = self.plot.boundingRect()
        fits = box.width() + 20 <= width
        corners = LEGEND_CORNERS if fits else tuple(c for c in LEGEND_CORNERS if c[0][0] == 0)
        squeezed = max(4.0 - inner.left(), min(10.0, outer.width() - inner.left()
                                                     - box.width() - 4.0))
        hidden, places = {}, {}
        for corner in corners:
            (ix, iy), _, (ox, oy) = corner
            if not fits:
                ox = squeezed
            left = ix * width + ox - ix * box.width()  # in the view's pixels
            top = iy * height + oy - iy * box.height()
            hidden[corner] = int(np.count_nonzero((px >= left) & (px <= left + box.width())
                                                  & (py >= top) & (py <= top + box.height())))
            places[corner] = (inner.left() + ox if ix == 0 else inner.right() - outer.width() + ox,
                              inner.top() + oy if iy == 0 else
                              inner.bottom() - outer.height() + oy)
        best = min(corners, key=lambda c: hidden[c])  # ties: the earlier corner
        if self.legend_corner not in hidden or hidden[best] * 2 < hidden[self.legend_corner] or (
                hidden[self.legend_corner] and not hidden[best]):
            self.legend_corner = best
        self.legend_hides = hidden[self.legend_corner]  # points every 3 px along the curves
        item, parent, _ = self.legend_corner
        self.legend.anchor(itemPos=item, parentPos=parent, offset=places[self.legend_corner])

    def legend_text(self, field: str) -> str:
        label = self.legend.getLabel(self.curves[field]) if field in self._legend_shown else None
        return label.text.replace("<br>", " · ") if label is not None else ""

    def _show_in_legend(self, field: str, name: str, shown: bool) -> None:
        if shown and field not in self._legend_shown:
            self.legend.addItem(self.curves[field], name)
            self._legend_shown.add(field)
            self._legend_texts = None  # the next redraw writes every label afresh
        elif not shown and field in self._legend_shown:
            self.legend.removeItem(self.curves[field])
            self._legend_shown.discard(field)
            self._legend_texts = None
