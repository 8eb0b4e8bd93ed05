"""Latency: per-layer bars, decode time per step, and the profiler's own overhead.

Renders the run's measured figures (``LayerStats.latency_ms``: inclusive medians of the timing
passes; ``RunResult.generation``; ``RunResult.timing``; ``Totals``). Nothing here measures; a
value the engine did not record shows as "—" and draws no bar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import QCheckBox, QLabel, QSplitter, QVBoxLayout, QWidget

from engine.format import human_ms, overhead, si_number, short_layer_label
from engine.results import LayerStats, RunResult

from .. import theme
from .axis import fit_bar_labels, keep_legend_fitted

_TEXT = "#202020"
# (series, legend name, colour): the top-level row, then its attention and MLP sub-rows.
SERIES = (
    ("layer", "layer", "#4e79a7"),
    ("attention", "attention", "#f28e2b"),
    ("mlp", "MLP", "#59a14f"),
)
_WIDE, _NARROW = 0.75, 0.27  # bar widths: top-level rows alone, or grouped with sub-rows


def _ms(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def summary_lines(result: RunResult) -> list[str]:
    """Plain-text lines: latencies and the profiler's overhead, generation, one-time costs."""
    t, timing = result.totals, result.timing or {}
    if getattr(result, "estimate", None) is not None:
        return ["ESTIMATE: latency is not estimated (fake tensors do no arithmetic to time); "
                "measure the run to see it."]
    live = timing.get("live_modules")
    detailed = timing.get("detailed_modules")
    line = (f"latency {human_ms(t.plain_latency_ms)} plain, {human_ms(t.latency_ms)} with live "
            f"hooks{f' on {live} top-level layers' if live else ''} (profiler overhead "
            f"{overhead(t.instrumentation_overhead)}); attention/MLP rows from a pass hooking "
            f"{f'all {detailed} modules' if detailed else 'every module'} (overhead "
            f"{overhead(timing.get('detailed_overhead'))}) · "
            f"{si_number(t.tokens_per_s)} tokens/s")
    lines = [line]
    gen = result.generation or {}
    steps = gen.get("decode_ms_per_step") or []
    if gen:
        lines.append(f"generation: prefill {human_ms(gen.get('prefill_ms'))}, decode "
                     f"{human_ms(float(np.median(steps)) if steps else None)} per step (median "
                     f"of {len(steps)} steps), {si_number(gen.get('decode_tokens_per_s'))} "
                     "tokens/s")
    warm = [w for w in (timing.get("warmup_ms") or []) if w is not None]
    one_time = ("one-time costs (kernel selection, lazy initialisation, compilation): first "
                f"warm-up pass {human_ms(warm[0] if warm else None)}")
    if len(warm) > 1:
        one_time += f", later warm-up passes {human_ms(float(np.median(warm[1:])))}"
    elif not warm and "warmup_ms" in timing:
        one_time += " (no warm-up pass ran: the measured passes carried them)"
    lines.append(one_time)
    return lines


def _children_ms(layers: Sequence[LayerStats], parent: str, kind: str) -> float:
    """Sum of the measured latencies of ``parent``'s sub-rows of ``kind`` (usually one)."""
    values = [layer.latency_ms for layer in layers
              if layer.parent == parent and layer.kind == kind and layer.latency_ms is not None]
    return float(sum(values)) if values else math.nan


class LatencyPanel(QWidget):
    """Bars are built once per series and updated in place; the decode curve likewise."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.labels: list[str] = []
        self.series: dict[str, np.ndarray] = {}  # series -> ms per top-level row (NaN: none)
        self.decode_ms: np.ndarray = np.zeros(0)
        self._result: RunResult | None = None

        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.sub_rows_check = QCheckBox("Attention / MLP sub-rows")
        self.sub_rows_check.setChecked(True)
        self.sub_rows_check.toggled.connect(self._on_sub_rows_toggled)

        self.bars_widget = pg.GraphicsLayoutWidget()
        self.bars_widget.setBackground("w")
        self.plot = self.bars_widget.addPlot(row=0, col=0)
        self.plot.setTitle("Latency by layer (median)", color=theme.current().text, size="9pt")
        self.bars_widget.setToolTip(
            "Inclusive latency per top-level layer, median of the timing passes with live hooks "
            "on top-level layers only; attention and MLP sub-rows come from the separate pass "
            "that hooks every module (its overhead is in the text above).")
        self.plot.setLabel("left", "ms")
        self.plot.showGrid(y=True, alpha=0.25)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.getViewBox().setMouseEnabled(x=False, y=False)
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen(_TEXT)
            self.plot.getAxis(axis).setPen("#606060")
        self.legend = pg.LegendItem(colCount=len(SERIES), labelTextColor=_TEXT)
        keep_legend_fitted(self.legend, self.bars_widget)
        self.bars_widget.addItem(self.legend, row=1, col=0)
        self.bars: dict[str, pg.BarGraphItem] = {}
        for name, label, color in SERIES:
            bar = pg.BarGraphItem(x=[0.0], height=[0.0], width=_WIDE, brush=pg.mkBrush(color),
                                  pen=pg.mkPen("#ffffff", width=0.5))
            bar.setVisible(False)
            self.plot.addItem(bar)
            self.bars[name] = bar
            self.legend.addItem(bar, label)
        self.plot.getViewBox().sigResized.connect(self._on_resized)

        self.decode_widget = pg.PlotWidget(background="w")
        self.decode_plot = self.decode_widget.getPlotItem()
        self.decode_plot.setTitle("Decode per step", color=theme.current().text, size="9pt")
        self.decode_plot.setLabel("left", "ms")
        self.decode_plot.setLabel("bottom", "step")
        self.decode_plot.showGrid(x=True, y=True, alpha=0.25)
        self.decode_plot.setMenuEnabled(False)
        for axis in ("left", "bottom"):
            self.decode_plot.getAxis(axis).setTextPen(_TEXT)
            self.decode_plot.getAxis(axis).setPen("#606060")
        self.decode_curve = self.decode_plot.plot([], [], pen=pg.mkPen("#4e79a7", width=1.5),
                                                  symbol="o", symbolSize=4,
                                                  symbolBrush="#4e79a7", symbolPen=None)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.sub_rows_check)
        left_layout.addWidget(self.bars_widget, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.decode_widget)  # hidden for runs without decode steps
        split.setSizes([460, 300])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(split, 1)
        self.clear()

    # -- public ---------------------------------------------------------------------------------
    def summary_text(self) -> str:
        return self.summary.text()

    @property
    def decode_shown(self) -> bool:
        return not self.decode_widget.isHidden()

    def clear(self, message: str = "No run yet.") -> None:
        self._result = None
        self.labels, self.series, self.decode_ms = [], {}, np.zeros(0)
        for bar in self.bars.values():
            bar.setVisible(False)
        self.decode_curve.setData([], [])
        self.decode_widget.setVisible(False)
        self.bars_widget.setVisible(True)
        self.summary.setText(message)
        self._apply_ticks()

    def render(self, result: RunResult) -> None:
        self._result = result
        self.summary.setText("\n".join(summary_lines(result)))
        # An estimate has no latency to draw: the sentence above says so, no empty axes.
        self.bars_widget.setVisible(getattr(result, "estimate", None) is None)
        top = [layer for layer in result.layers if layer.depth == 0]
        self.labels = [short_layer_label(layer.name) for layer in top]
        self.series = {
            "layer": np.array([_ms(layer.latency_ms) for layer in top], dtype=float),
            "attention": np.array([_children_ms(result.layers, layer.name, "attention")
                                   for layer in top], dtype=float),
            "mlp": np.array([_children_ms(result.layers, layer.name, "mlp") for layer in top],
                            dtype=float),
        }
        self._draw_bars()
        self._render_decode(result.generation)

    # -- drawing --------------------------------------------------------------------------------
    @Slot(bool)
    def _on_sub_rows_toggled(self, _checked: bool) -> None:
        self._draw_bars()

    def _draw_bars(self) -> None:
        sub_rows = self.sub_rows_check.isChecked() and any(
            np.isfinite(self.series.get(name, np.zeros(0))).any() for name in ("attention", "mlp"))
        offsets = {"layer": -_NARROW, "attention": 0.0, "mlp": _NARROW} if sub_rows else \
            {"layer": 0.0}
        top = 0.0
        for name, bar in self.bars.items():
            values = self.series.get(name, np.zeros(0))
            shown = np.isfinite(values)
            if name not in offsets or not shown.any():
                bar.setVisible(False)
                continue
            x = np.arange(values.size, dtype=float)[shown] + offsets[name]
            bar.setOpts(x=x, height=values[shown], width=_NARROW if sub_rows else _WIDE)
            bar.setVisible(True)
            top = max(top, float(values[shown].max()))
        self.legend.clear()
        for name, label, _ in SERIES:
            if self.bars[name].isVisible():
                self.legend.addItem(self.bars[name], label)
        self._apply_ticks()
        if self.labels:
            self.plot.setYRange(0.0, max(top, 1e-6) * 1.08, padding=0)

    def _render_decode(self, generation: Mapping[str, Any] | None) -> None:
        steps = [_ms(v) for v in ((generation or {}).get("decode_ms_per_step") or [])]
        self.decode_ms = np.array(steps, dtype=float)
        if not self.decode_ms.size:
            self.decode_curve.setData([], [])
            self.decode_widget.setVisible(False)  # no generation: the bars take the room
            return
        x = np.arange(1, self.decode_ms.size + 1, dtype=float)
        self.decode_curve.setData(x, self.decode_ms, connect="finite")
        finite = self.decode_ms[np.isfinite(self.decode_ms)]
        top = float(finite.max()) if finite.size else 1.0
        self.decode_plot.setYRange(0.0, max(top, 1e-6) * 1.1, padding=0)
        self.decode_plot.setXRange(0.5, self.decode_ms.size + 0.5, padding=0)
        self.decode_widget.setVisible(True)

    @Slot(object)
    def _on_resized(self, _view: object = None) -> None:
        self._apply_ticks()

    def _apply_ticks(self) -> None:
        fit_bar_labels(self.plot, self.labels, self.font(), self.series.get("layer"))
