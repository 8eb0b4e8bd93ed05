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
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from engine.format import (human_ms, layer_passes_text, overhead, si_number, short_layer_label,
                           tokens_per_s_text)
from engine.results import LayerStats, RunResult

from .. import theme
from .axis import fit_bar_labels

_TEXT = "#202020"
# (series, legend name, colour): the top-level row, then its attention and MLP sub-rows.
SERIES = (
    ("layer", "layer", "#4e79a7"),
    ("attention", "attention", "#f28e2b"),
    ("mlp", "MLP", "#59a14f"),
)
SUMMARY_SHARE = 0.25 # of the panel's height, at most, for the text above the charts
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
            f"{tokens_per_s_text(t.tokens_per_s, result.config.workload)}")
    lines = [line]
    gen = result.generation or {}
    steps = gen.get("decode_ms_per_step") or []
    if gen:
        lines.append(f"generation: prefill {human_ms(gen.get('prefill_ms'))}, decode "
                     f"{human_ms(float(np.median(steps)) if steps else None)} per step (median "
                     f"of {len(steps)} steps), {si_number(gen.get('decode_tokens_per_s'))} "
                     "tokens/s (timed in the passes with live hooks)")
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
        self.sub_rows_check = QCheckBox("Sub-rows")
        self.sub_rows_check.setToolTip("Draw each layer's attention and MLP sub-rows beside it "
                                       "(timed in the pass that hooks every module)")
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
        # (pyqtgraph's SI prefix read "ms (x0.001)" below 1 ms: a bar at 800 meant 0.8 ms)
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.plot.showGrid(y=True, alpha=0.25)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.getViewBox().setMouseEnabled(x=False, y=False)
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen(_TEXT)
            self.plot.getAxis(axis).setPen("#606060")
        # The legend is a line of text beside the sub-rows box, not a row of the canvas: in a
        # short window the canvas' title, ticks and legend left the bars no height at all.
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)  # a narrow pane puts an entry on a second line
        self.legend.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.bars: dict[str, pg.BarGraphItem] = {}
        for name, label, color in SERIES:
            bar = pg.BarGraphItem(x=[0.0], height=[0.0], width=_WIDE, brush=pg.mkBrush(color),
                                  pen=pg.mkPen("#ffffff", width=0.5))
            bar.setVisible(False)
            self.plot.addItem(bar)
            self.bars[name] = bar
        self.plot.getViewBox().sigResized.connect(self._on_resized)

        self.decode_widget = pg.PlotWidget(background="w")
        self.decode_plot = self.decode_widget.getPlotItem()
        self.decode_plot.setTitle("Decode per step", color=theme.current().text, size="9pt")
        self.decode_plot.setLabel("left", "ms")
        self.decode_plot.getAxis("left").enableAutoSIPrefix(False)
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
        row = QHBoxLayout()
        row.addWidget(self.sub_rows_check)
        row.addWidget(self.legend, 1)
        left_layout.addLayout(row)
        left_layout.addWidget(self.bars_widget, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.decode_widget)  # hidden for runs without decode steps
        split.setSizes([460, 300])
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        # The text scrolls once it would take more than SUMMARY_SHARE of the panel: in a 700 px
        # window it took all the height the bars had, and the plot was drawn 0 px tall.
        self.summary_area = QScrollArea()
        self.summary_area.setWidget(self.summary)
        self.summary_area.setWidgetResizable(True)
        self.summary_area.setFrameShape(QFrame.Shape.NoFrame)
        self.summary_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary_area)
        layout.addWidget(split, 1)
        self.clear()

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._fit_summary()

    def _fit_summary(self) -> None:
        """The text's own height, up to SUMMARY_SHARE of the panel (two lines at least)."""
        bar = self.summary_area.verticalScrollBar().sizeHint().width()
        width = max(self.summary_area.width() - bar, 50)
        need = self.summary.heightForWidth(width)
        if need < 0:
            need = self.summary.sizeHint().height()
        line = self.summary.fontMetrics().lineSpacing()
        lines = max(2, int(self.height() * SUMMARY_SHARE) // line)  # whole lines, never half
        self.summary_area.setFixedHeight(min(need, lines * line) + 2)

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
        self._fit_summary()
        self._apply_ticks()

    def render(self, result: RunResult) -> None:
        self._result = result
        # (the layers are timed by forward hooks: in a training step their bars are the
        # forward's; the backward and the optimizer are only in the step's total)
        train = getattr(getattr(result, "config", None), "workload", "") == "train"
        passes = layer_passes_text(result)
        self.plot.setTitle("Forward latency by layer (median; the step's backward is not split"
                           " by layer)" if train else
                           f"Latency by layer over {passes} (median)" if passes
                           else "Latency by layer (median)",
                           color=theme.current().text, size="9pt")
        self.summary.setText("\n".join(summary_lines(result)))
        self._fit_summary()
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
        self.legend.setText("&nbsp;&nbsp;".join(
            f'<span style="color:{colour}">&#9632;</span>&nbsp;{label}'
            for name, label, colour in SERIES if self.bars[name].isVisible()))
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
        # whole steps only (pyqtgraph's own ticks put 1.5, 2.5, … between them)
        step = max(1, int(np.ceil(self.decode_ms.size / 10)))
        self.decode_plot.getAxis("bottom").setTickSpacing(major=step, minor=step)
        self.decode_widget.setVisible(True)

    @Slot(object)
    def _on_resized(self, _view: object = None) -> None:
        self._apply_ticks()

    def _apply_ticks(self) -> None:
        fit_bar_labels(self.plot, self.labels, self.font(), self.series.get("layer"))
