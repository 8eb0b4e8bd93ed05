"""Attention maps: a layer × head grid of small heat maps, a large view of one head, entropy.

Renders the engine's :class:`~engine.events.AttentionMaps` (per layer a float16 array
``(heads, q, k)`` of batch row 0, at most 256 × 256) and the run's ``attention`` record. Nothing
here measures. The presentation math is: block means that shrink the grid tiles (display only;
the large view shows the stored map), the mean over heads for the large view's "head mean", and
the entropy of each displayed head (``-Σ p ln p`` per query row, averaged over rows, in nats; on
downsampled maps it is the entropy over the stored key bins).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Slot
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (
    QCheckBox,
    QGraphicsRectItem,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from engine.events import AttentionMaps
from engine.format import MISSING, human_bytes, human_ms

from .. import theme

GRID_SIDE = 64  # grid tiles are block means down to at most this many bins per side
MAX_TOKEN_LABELS = 64  # at most this many token labels per axis of the large view
GAP = 0.15  # space between grid tiles, in tile widths
NO_MAPS = "No attention maps: tick 'Attention maps' and run again."
SELECTED_COLOR = "#d62728"
BAR_COLOR = "#4e79a7"
_TEXT = "#202020"
_CMAP = pg.colormap.get("viridis")


def _message_style(current: theme.Theme) -> str:
    return f"color: {current.axis}; font-size: 14px; padding: 24px;"


def block_mean(maps: np.ndarray, side: int = GRID_SIDE) -> np.ndarray:
    """Shrink the last two axes to at most ``side`` bins by near-equal block means (display)."""
    out = np.asarray(maps, dtype=np.float32)
    for axis in (out.ndim - 2, out.ndim - 1):
        n = out.shape[axis]
        if n <= side:
            continue
        bins = -(-n // -(-n // side))  # ceil(n / block), block = ceil(n / side)
        starts = (np.arange(bins) * n) // bins
        counts = np.diff(np.append(starts, n)).astype(np.float32)
        shape = [1] * out.ndim
        shape[axis] = bins
        out = np.add.reduceat(out, starts, axis=axis) / counts.reshape(shape)
    return out


def head_entropy(layer_map: np.ndarray) -> np.ndarray:
    """Entropy in nats of each head's rows, averaged over query rows: shape ``(heads,)``.

    Presentation math on the displayed distributions (``0 ln 0 = 0``): a uniform row over ``k``
    keys gives ``ln k``, a one-hot row gives 0.
    """
    p = np.asarray(layer_map, dtype=np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=-1).mean(axis=-1)


def token_label(token: str, limit: int = 8) -> str:
    """A short axis label for a token's text (the engine decodes each token; runs saved before
    it did keep tokenizer pieces, whose byte-level and SentencePiece markers are mapped too)."""
    text = (token.replace("Ġ", "·").replace("▁", "·").replace(" ", "·").replace("Ċ", "↵")
            .replace("\n", "↵"))
    text = text or "∅"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def capture_text(info: Mapping[str, Any] | None, maps: AttentionMaps | None) -> str:
    """How the maps were captured and what that cost, from the run's ``attention`` record,
    then what they hold (:func:`shape_text`)."""
    if info and info.get("captured"):
        used = info.get("implementation_used") or "eager"
        original = info.get("original_implementation")
        how = f"Captured with {used} attention"
        if original and original != used:
            how += f" (the run used {original})"
        spent = info.get("cost") or {}
        # (the pair is measured side by side in the capture step: "peak 10.0 MiB vs" beside
        # the run's own 9.94 MiB peak read as a contradiction)
        how += (f": one extra forward, {human_ms(spent.get('forward_ms'))} and peak "
                f"{human_bytes(spent.get('peak_bytes'))}, against "
                f"{human_ms(spent.get('plain_forward_ms'))} and "
                f"{human_bytes(spent.get('plain_peak_bytes'))} for a plain forward measured "
                "beside it.")
    else:
        how = "Capture details were not recorded."
    return how + " " + shape_text(info, maps)


def shape_text(info: Mapping[str, Any] | None, maps: AttentionMaps | None) -> str:
    """What the maps hold: "6 layers × 6 heads, batch row 0, 32 tokens." (and a downsampling)."""
    parts: list[str] = []
    layers = len(maps.maps) if maps is not None else (info or {}).get("layers")
    heads = _heads(maps) if maps is not None else (info or {}).get("heads")
    tokens = (info or {}).get("tokens")
    shape = f"{layers if layers is not None else MISSING} layers × " \
            f"{heads if heads is not None else MISSING} heads, batch row 0"
    if tokens is not None:
        shape += f", {tokens} tokens"
    parts.append(shape + ".")
    source = (maps.downsampled_from if maps is not None else None) or \
        (info or {}).get("downsampled_from")
    if source:
        side = (info or {}).get("stored_side") or _side(maps)
        parts.append(f"Stored downsampled from {source} tokens to {side} × {side} "
                     "(average pooling, rows renormalised).")
    return " ".join(parts)


TOP_PERCENTILE = 99.0
COMPACT_CAPTION_BELOW = 360  # panel height (px) under which the caption keeps to its first line
NARROW_BELOW = 560  # panel width (px) under which the entropy bars fold away (above the
# three panes' minimum widths, 500 px: shown, they would hold the panel at that width)


def _top(values: np.ndarray) -> float:
    """The upper colour level: the 99th percentile of the positive finite values (brighter
    ones saturate), or 1 when there is none above 0. A causal map's first query attends only
    to itself, weight 1: scaled to the largest value, the rest of the map was one dark shade."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    top = float(np.percentile(positive, TOP_PERCENTILE)) if positive.size else 0.0
    return top if top > 0 else 1.0


def no_maps_text(info: Mapping[str, Any] | None, reason: str | None = None) -> str:
    why = reason or (info or {}).get("reason")
    return f"No attention maps: {why}." if why else NO_MAPS


def _heads(maps: AttentionMaps | None) -> int:
    if maps is None or not maps.maps:
        return 0
    return max(int(np.shape(m)[0]) for m in maps.maps.values())


def _side(maps: AttentionMaps | None) -> int | str:
    if maps is None or not maps.maps:
        return MISSING
    return int(np.shape(next(iter(maps.maps.values())))[-1])


def _style(plot: pg.PlotItem) -> None:
    plot.setMenuEnabled(False)
    for axis in ("left", "bottom"):
        plot.getAxis(axis).setTextPen(_TEXT)
        plot.getAxis(axis).setPen("#606060")


class AttentionPanel(QWidget):
    """Grid tiles and the large view are built once per shape and updated with ``setImage``."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.maps: AttentionMaps | None = None
        self.info: dict[str, Any] | None = None
        self.layer_ids: list[int] = []
        self.grid_tiles: list[np.ndarray] = []  # per layer, (heads, t, t) block means
        self.grid_levels: tuple[float, float] = (0.0, 1.0)
        self.grid_images: list[list[pg.ImageItem]] = []
        self.large_data: np.ndarray | None = None  # what the large view shows
        self.large_levels: tuple[float, float] = (0.0, 1.0)
        self.entropy: np.ndarray = np.zeros(0)  # per head of the selected layer, nats
        self._tokens: list[str] = []
        self._lut = _CMAP.getLookupTable(nPts=256)

        self.message = QLabel(NO_MAPS)
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setWordWrap(True)
        self.message.setStyleSheet(_message_style(theme.current()))

        self.caption = QLabel()
        self._caption_full = self._caption_short = ""
        self.caption.setWordWrap(True)
        self.caption.setStyleSheet("font-size: 11px;")
        self.caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        # Grid: one plot, one ImageItem per (layer, head) placed on a unit square. One view box
        # holds them all, so hundreds of heads stay cheap (no view box per tile).
        self.grid_widget = pg.GraphicsLayoutWidget()
        self.grid_widget.setBackground("w")
        self.grid_plot = self.grid_widget.addPlot(row=0, col=0)
        _style(self.grid_plot)
        self.grid_plot.setTitle("Layers × heads", color=theme.current().text, size="9pt")
        self._narrow = False
        self.grid_widget.setToolTip("Click a tile to show that head in the large view")
        self.grid_plot.setLabel("left", "layer")
        self.grid_plot.setLabel("bottom", "head")
        grid_view = self.grid_plot.getViewBox()
        grid_view.setMouseEnabled(x=False, y=False)
        grid_view.invertY(True)
        grid_view.setAspectLocked(True)
        self.grid_plot.hideButtons()
        self._highlight = QGraphicsRectItem()
        self._highlight.setPen(pg.mkPen(SELECTED_COLOR, width=2, cosmetic=True))
        self._highlight.setZValue(10)
        self._highlight.setVisible(False)
        self.grid_plot.addItem(self._highlight, ignoreBounds=True)
        self.grid_widget.scene().sigMouseClicked.connect(self._on_grid_clicked)
        # Every tile in view at any size: with the aspect locked, a pane narrowed after the
        # maps arrived kept the rows in view and cut the last heads off.
        grid_view.sigResized.connect(self._fit_grid)

        # Selection controls.
        self.layer_spin = QSpinBox()
        self.head_spin = QSpinBox()
        self.mean_check = QCheckBox("Head mean")
        self.mean_check.setToolTip("Show the mean over this layer's heads in the large view")
        for spin in (self.layer_spin, self.head_spin):
            spin.setRange(0, 0)
            spin.valueChanged.connect(self._on_selection_changed)
        self.mean_check.toggled.connect(self._on_selection_changed)

        # Large view of the selected head: keys across, queries down, explicit levels.
        self.large_widget = pg.GraphicsLayoutWidget()
        self.large_widget.setBackground("w")
        self.large_plot = self.large_widget.addPlot(row=0, col=0)
        _style(self.large_plot)
        self.large_plot.setLabel("left", "query")
        self.large_plot.setLabel("bottom", "key")
        large_view = self.large_plot.getViewBox()
        large_view.invertY(True)
        large_view.setAspectLocked(True)
        self.large_image = pg.ImageItem(axisOrder="row-major")
        self.large_image.setLookupTable(self._lut)
        self.large_plot.addItem(self.large_image)
        self.colorbar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=_CMAP, interactive=False,
                                        width=12, colorMapMenu=False)
        self.colorbar.axis.setTextPen(_TEXT)
        self.colorbar.axis.setWidth(32)  # ("0.97" showed as "0." in a narrow pane)
        self.large_widget.addItem(self.colorbar, row=0, col=1)
        large_view.sigResized.connect(self._on_large_view_changed)
        large_view.sigRangeChanged.connect(self._on_large_view_changed)

        # Entropy per head of the selected layer: horizontal bars, one per head.
        self.entropy_widget = pg.PlotWidget(background="w")
        self.entropy_plot = self.entropy_widget.getPlotItem()
        _style(self.entropy_plot)
        self.entropy_widget.setMinimumWidth(100)  # no title: the label under it names it
        self.entropy_plot.getViewBox().invertY(True)
        self.entropy_plot.getViewBox().setMouseEnabled(x=False, y=False)
        self.entropy_plot.hideButtons()
        self.entropy_bars = pg.BarGraphItem(x0=[0.0], y=[0.0], width=[0.0], height=0.7,
                                            brush=BAR_COLOR)
        self.entropy_plot.addItem(self.entropy_bars)
        self.entropy_label = QLabel()
        self.entropy_inline = QLabel()  # the same figures on one line, while the bars are folded
        self.entropy_inline.setToolTip("Drag the divider at the right edge, or widen the "
                                       "window, for the entropy bars of every head")
        self.entropy_inline.hide()
        self.entropy_label.setWordWrap(True)
        self.entropy_label.setStyleSheet(f"color: {theme.current().axis};")
        tip = ("Entropy of each head's attention rows, −Σ p ln p in nats, averaged over query "
               "rows (on downsampled maps: over the stored key bins). Uniform attention over k "
               "keys gives ln k; attention on one key gives 0.")
        self.entropy_widget.setToolTip(tip)
        self.entropy_label.setToolTip(tip)

        self._build_layout()
        self.clear()

    def theme_changed(self, new: theme.Theme) -> None:
        """Called by ``theme.apply``: labels styled here follow the theme (a style sheet
        keeps the colours it was given, and Qt re-polishes a label only when it is set)."""
        self.message.setStyleSheet(_message_style(new))
        self.entropy_label.setStyleSheet(f"color: {new.axis};")
        self.caption.setStyleSheet(f"font-size: 11px; color: {new.text};")

    def _build_layout(self) -> None:
        controls = QHBoxLayout()
        controls.setContentsMargins(0, 0, 0, 0)
        controls.addWidget(QLabel("Layer"))
        controls.addWidget(self.layer_spin)
        controls.addWidget(QLabel("Head"))
        controls.addWidget(self.head_spin)
        controls.addWidget(self.mean_check)
        controls.addWidget(self.entropy_inline)
        controls.addStretch(1)
        entropy = self.entropy_pane = QWidget()
        entropy_layout = QVBoxLayout(entropy)
        entropy_layout.setContentsMargins(0, 0, 0, 0)
        entropy_layout.addWidget(self.entropy_widget, 1)
        entropy_layout.addWidget(self.entropy_label)
        # Room for what pyqtgraph lays out (wider, and the right of it was cut: the last heads
        # of the grid, the large view's colour bar); in a narrow pane (a 1024-pixel window)
        # the entropy bars fold away instead (_fit_narrow), their figures said beside the
        # layer and head boxes.
        self.grid_widget.setMinimumWidth(170)
        self.large_widget.setMinimumWidth(222)
        split = self.split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.grid_widget)
        split.addWidget(self.large_widget)
        split.addWidget(entropy)
        split.setSizes([160, 360, 110])
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 4)
        split.setStretchFactor(2, 1)
        content = QWidget()
        content_layout = QVBoxLayout(content)
        content_layout.setContentsMargins(0, 0, 0, 0)
        content_layout.setSpacing(2)
        content_layout.addWidget(self.caption)
        content_layout.addLayout(controls)
        content_layout.addWidget(split, 1)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.message)
        self.stack.addWidget(content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.stack)

    # -- public ---------------------------------------------------------------------------------
    @property
    def has_maps(self) -> bool:
        return self.maps is not None

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads) in the grid; (0, 0) when there are no maps."""
        return (len(self.layer_ids), _heads(self.maps)) if self.maps is not None else (0, 0)

    @property
    def selected(self) -> tuple[int, int | None]:
        """(layer index as stored, head or None for the head mean)."""
        layer = self.layer_ids[self.layer_spin.value()] if self.layer_ids else 0
        return layer, None if self.mean_check.isChecked() else self.head_spin.value()

    def message_text(self) -> str:
        return self.message.text() if self.stack.currentIndex() == 0 else ""

    def caption_text(self) -> str:
        """The whole caption (shown, or in its tooltip while the panel is short)."""
        return self._caption_full

    def _fit_caption(self) -> None:
        """In a short panel (a 700-pixel window) the caption's four lines left the maps a
        strip: there it says what the maps hold, and the capture's cost and the colour scales
        are in its tooltip."""
        compact = bool(self._caption_full) and self.height() < COMPACT_CAPTION_BELOW
        self.caption.setText(self._caption_short + " Capture cost and colour scales: hover here."
                             if compact else self._caption_full)
        self.caption.setToolTip(self._caption_full if compact else "")

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._fit_caption()
        self._fit_narrow()

    def _fit_narrow(self) -> None:
        narrow = self.width() < NARROW_BELOW
        if narrow == self._narrow:
            return
        self._narrow = narrow
        # (hidden, not collapsed: a collapsed pane's minimum width still widened the panel)
        self.entropy_pane.setVisible(not narrow)
        self.entropy_inline.setVisible(narrow)

    def clear(self, message: str = NO_MAPS) -> None:
        self.maps, self.info, self.layer_ids, self.grid_tiles = None, None, [], []
        self.large_data, self.entropy, self._tokens = None, np.zeros(0), []
        for row in self.grid_images:
            for image in row:
                image.setVisible(False)
        self.large_image.clear()
        self._highlight.setVisible(False)
        self.entropy_bars.setOpts(x0=[0.0], y=[0.0], width=[0.0], brushes=None)
        self._caption_full = self._caption_short = ""
        self._fit_caption()
        self.entropy_label.clear()
        self.entropy_inline.clear()
        self.message.setText(message)
        self.stack.setCurrentIndex(0)

    def render(self, maps: AttentionMaps | None, info: Mapping[str, Any] | None,
               reason: str | None = None) -> None:
        """Show ``maps`` with the run's ``attention`` record ``info`` (either may be None).

        Without maps the panel shows why (``reason``, else the engine's ``info['reason']``, else
        how to ask for maps), never an empty plot. Rendering the same maps again only refreshes
        the caption (a live run sends the maps first and the record with the result).
        """
        self.info = dict(info) if info is not None else None
        if maps is None or not maps.maps:
            self.clear(no_maps_text(info, reason))
            self.info = dict(info) if info is not None else None
            return
        if maps is not self.maps:
            self._set_maps(maps)
        tiles = self.grid_tiles[0].shape[-1] if self.grid_tiles else 0
        self._caption_full = (capture_text(self.info, maps) +
                              f" Grid: ≤ {tiles} × {tiles} block means, all tiles on one "
                              f"scale 0–{self.grid_levels[1]:.3g} (the colour bar is the large "
                              f"view's; each scale ends at the {TOP_PERCENTILE:.0f}th "
                              "percentile of its weights above 0, brighter ones saturate).")
        self._caption_short = shape_text(self.info, maps)
        self._fit_caption()
        self.stack.setCurrentIndex(1)

    def select(self, layer: int, head: int | None = None) -> None:
        """Select grid row ``layer`` (position in the grid) and ``head`` (None: head mean)."""
        for widget in (self.layer_spin, self.head_spin, self.mean_check):
            widget.blockSignals(True)
        self.layer_spin.setValue(layer)
        if head is not None:
            self.head_spin.setValue(head)
        self.mean_check.setChecked(head is None)
        for widget in (self.layer_spin, self.head_spin, self.mean_check):
            widget.blockSignals(False)
        self._update_selection()

    # -- rendering ------------------------------------------------------------------------------
    def _set_maps(self, maps: AttentionMaps) -> None:
        self.maps = maps
        self.layer_ids = sorted(maps.maps)
        layers, heads = len(self.layer_ids), _heads(maps)
        self.grid_tiles = [block_mean(maps.maps[i]) for i in self.layer_ids]
        self.grid_levels = (0.0, max((_top(t) for t in self.grid_tiles), default=1.0))
        self._ensure_grid(layers, heads)
        for row, tiles in enumerate(self.grid_tiles):
            for head, image in enumerate(self.grid_images[row]):
                shown = head < tiles.shape[0]
                if shown:  # the rect is set with each image: it scales by the image's size
                    image.setImage(tiles[head], autoLevels=False, levels=self.grid_levels,
                                   rect=self._tile_rect(row, head))
                image.setVisible(shown)
        self.grid_plot.getViewBox().enableAutoRange()
        self._tokens = [token_label(t) for t in maps.tokens]
        for widget in (self.layer_spin, self.head_spin):
            widget.blockSignals(True)
        self.layer_spin.setRange(0, max(layers - 1, 0))
        self.head_spin.setRange(0, max(heads - 1, 0))
        for widget in (self.layer_spin, self.head_spin):
            widget.blockSignals(False)
        self._update_selection()

    def _ensure_grid(self, layers: int, heads: int) -> None:
        if len(self.grid_images) == layers and all(len(r) == heads for r in self.grid_images):
            return
        for row in self.grid_images:
            for image in row:
                self.grid_plot.removeItem(image)
        self.grid_images = []
        for _layer in range(layers):
            row = []
            for _head in range(heads):
                image = pg.ImageItem(axisOrder="row-major")
                image.setLookupTable(self._lut)
                self.grid_plot.addItem(image)
                row.append(image)
            self.grid_images.append(row)
        self.grid_plot.getAxis("left").setTicks([self._index_ticks(layers, 16, self.layer_ids)])
        self.grid_plot.getAxis("bottom").setTicks([self._index_ticks(heads, 16)])

    @staticmethod
    def _tile_rect(layer: int, head: int) -> QRectF:
        step = 1.0 + GAP
        return QRectF(head * step, layer * step, 1.0, 1.0)

    @staticmethod
    def _index_ticks(count: int, most: int, names: list[int] | None = None
                     ) -> list[tuple[float, str]]:
        every = max(1, math.ceil(count / most))
        return [((1.0 + GAP) * i + 0.5, str(names[i] if names else i))
                for i in range(0, count, every)]

    def _layer_array(self, position: int) -> np.ndarray:
        assert self.maps is not None
        return np.asarray(self.maps.maps[self.layer_ids[position]], dtype=np.float32)

    @Slot()
    def _on_selection_changed(self, *_args: object) -> None:
        self._update_selection()

    def _update_selection(self) -> None:
        if self.maps is None or not self.layer_ids:
            return
        position = self.layer_spin.value()
        layer_map = self._layer_array(position)
        heads = layer_map.shape[0]
        head = min(self.head_spin.value(), heads - 1)
        mean = self.mean_check.isChecked()
        self.head_spin.setEnabled(not mean)
        data = layer_map.mean(axis=0) if mean else layer_map[head]
        self.large_data = data
        self.large_levels = (0.0, _top(data))
        q, k = data.shape
        self.large_image.setImage(data, autoLevels=False, levels=self.large_levels,
                                  rect=QRectF(0.0, 0.0, float(k), float(q)))
        self.colorbar.setLevels(self.large_levels)
        layer_id = self.layer_ids[position]
        title = (f"Layer {layer_id}, mean of {heads} heads" if mean
                 else f"Layer {layer_id}, head {head}")
        self.large_plot.setTitle(title, color=theme.current().text, size="9pt")
        self.large_plot.getViewBox().enableAutoRange()
        self._apply_token_ticks()

        step = 1.0 + GAP
        if mean:
            self._highlight.setRect(QRectF(-0.05, position * step - 0.05,
                                           (heads - 1) * step + 1.1, 1.1))
        else:
            self._highlight.setRect(QRectF(head * step - 0.05, position * step - 0.05, 1.1, 1.1))
        self._highlight.setVisible(True)

        self.entropy = head_entropy(layer_map)
        brushes = [pg.mkBrush(SELECTED_COLOR if (mean or h == head) else BAR_COLOR)
                   for h in range(heads)]
        self.entropy_bars.setOpts(x0=np.zeros(heads), y=np.arange(heads, dtype=float),
                                  width=self.entropy, height=0.7, brushes=brushes)
        self.entropy_plot.getAxis("left").setTicks([[(float(h), str(h))
                                                     for h in range(0, heads,
                                                                    max(1, heads // 16 + 1))]])
        upper = max(float(self.entropy.max()) if heads else 0.0, math.log(max(k, 2)))
        self.entropy_plot.setXRange(0.0, upper * 1.05, padding=0)
        self.entropy_plot.setYRange(-0.6, heads - 0.4, padding=0)
        shown = "mean" if mean else f"head {head}"
        value = float(self.entropy.mean() if mean else self.entropy[head])
        self.entropy_label.setText(f"Entropy (nats) per head\n{shown}: {value:.2f}\n"
                                   f"uniform ({k} keys): {math.log(k):.2f}")
        self.entropy_inline.setText(f"entropy {value:.2f} nats (uniform {math.log(k):.2f})")

    def _fit_grid(self, *_args: object) -> None:
        if self.grid_tiles:
            self.grid_plot.getViewBox().autoRange(padding=0.02)

    @Slot()
    def _on_large_view_changed(self, *_args: object) -> None:
        self._apply_token_ticks()

    def _apply_token_ticks(self) -> None:
        """Token labels on both axes: all of them up to 64, otherwise every k-th, and never
        closer than the labels need at the current zoom."""
        if self.large_data is None:
            return
        q, k = self.large_data.shape
        metrics = QFontMetrics(self.font())
        view = self.large_plot.getViewBox()
        x_units, y_units = view.viewPixelSize()  # data units per pixel
        for axis, count, needed, units in (
                ("bottom", k, None, x_units), ("left", q, metrics.height() + 2, y_units)):
            labels = self._tokens if len(self._tokens) == count else [str(i) for i in range(count)]
            if needed is None:
                needed = max((metrics.horizontalAdvance(t) for t in labels), default=10) + 6
            px_per_token = 1.0 / units if units > 0 else 1.0
            every = max(1, math.ceil(count / MAX_TOKEN_LABELS),
                        math.ceil(needed / max(px_per_token, 1e-6)))
            ticks = [(i + 0.5, labels[i]) for i in range(0, count, every)]
            self.large_plot.getAxis(axis).setTicks([ticks])

    @Slot(object)
    def _on_grid_clicked(self, event: Any) -> None:
        if self.maps is None or event.button() != Qt.MouseButton.LeftButton:
            return
        view = self.grid_plot.getViewBox()
        pos = event.scenePos()
        if not view.sceneBoundingRect().contains(pos):
            return
        point = view.mapSceneToView(pos)
        step = 1.0 + GAP
        col, row = point.x() / step, point.y() / step
        head, layer = math.floor(col), math.floor(row)
        if col - head > 1.0 / step or row - layer > 1.0 / step:
            return  # in the gap between tiles
        layers, heads = self.shape
        if 0 <= layer < layers and 0 <= head < heads:
            self.select(layer, head)
            event.accept()
