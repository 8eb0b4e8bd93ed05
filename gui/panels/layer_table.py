"""Per-layer table: one row per tracked module, figures as the engine recorded them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QVBoxLayout, QWidget

from engine.results import PSEUDO_ROWS, LayerStats

from engine.format import MISSING, human_bytes, human_flops, human_ms

_Index = QModelIndex | QPersistentModelIndex


@dataclass(frozen=True)
class Column:
    title: str
    value: Callable[[LayerStats], Any]
    text: Callable[[Any], str]
    tooltip: str = ""
    numeric: bool = True
    mark: Callable[[LayerStats], str] | None = None  # a suffix such as "*" (FLOPs incomplete)


def cell_text(column: Column, layer: LayerStats) -> str:
    """A cell as the table (and the report) shows it: "—" for a value not recorded."""
    value = column.value(layer)
    text = column.text(value) if value is not None else MISSING
    return text + (column.mark(layer) if column.mark is not None else "")


def _flops_mark(layer: LayerStats) -> str:
    return "*" if layer.flops_complete is False else ""


FLOPS_INCOMPLETE = ("* FLOPs incomplete: an op without a FLOP formula ran in this row (the "
                    "run's warnings name it)")


def _exact_bytes(value: Any) -> str:
    return MISSING if value is None else f"{value:,} bytes"


COLUMNS: tuple[Column, ...] = (
    Column("Name", lambda s: s.name, str, "Fully qualified module name", numeric=False),
    Column("Kind", lambda s: s.kind, str, numeric=False),
    Column("Weights (own)", lambda s: s.weights_bytes, human_bytes,
           "Parameters and buffers of this module not counted by its tracked children "
           "(exclusive: a block's row leaves out its attention and MLP rows; the chart's bar "
           "for a block includes them)"),
    Column("Activations (output)", lambda s: s.activation_bytes, human_bytes,
           "Bytes of the module's output (inclusive of children)"),
    Column("Saved for backward (own)", lambda s: s.saved_for_backward_bytes, human_bytes,
           "Tensors kept for the backward pass (exclusive)"),
    Column("Gradients (own)", lambda s: s.gradient_bytes, human_bytes,
           "Gradients of this module's own parameters (training; exclusive)"),
    Column("Optimizer state (own)", lambda s: s.optimizer_state_bytes, human_bytes,
           "Optimizer state of this module's own parameters, e.g. Adam's two moments "
           "(training; exclusive)"),
    Column("KV cache (at end)", lambda s: s.kv_cache_bytes, human_bytes,
           "This layer's key/value cache when generation ended (the totals' KV cache is the "
           "cache at the memory peak, which may come earlier)"),
    Column("Transient peak", lambda s: s.transient_peak_bytes, human_bytes,
           "Highest live bytes during the module minus those at its entry (inclusive)"),
    Column("Latency", lambda s: s.latency_ms, human_ms, "Milliseconds (inclusive)"),
    Column("FLOPs", lambda s: s.flops, human_flops,
           "Floating-point operations (inclusive); " + FLOPS_INCOMPLETE, mark=_flops_mark),
    # (a module that holds nothing at the peak holds 0 B there: measured, not missing)
    Column("At peak (own)", lambda s: s.at_peak_bytes, human_bytes,
           "Bytes this module holds at the measured peak (exclusive)"),
)


def used_columns(layers: Sequence[LayerStats]) -> list[int]:
    """Indexes of the columns with a value in some row (name, kind and at peak always: the
    unattributed and peak rows under the table need the last)."""
    return [i for i, c in enumerate(COLUMNS)
            if i < 2 or i == len(COLUMNS) - 1
            or any(c.value(layer) is not None for layer in layers)]


class LayerTableModel(QAbstractTableModel):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._layers: list[LayerStats] = []

    def set_layers(self, layers: Sequence[LayerStats]) -> None:
        self.beginResetModel()
        self._layers = list(layers)
        self.endResetModel()

    def layer_at(self, row: int) -> LayerStats:
        return self._layers[row]

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008 - Qt signature
        return 0 if parent.isValid() else len(self._layers)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008 - Qt signature
        return 0 if parent.isValid() else len(COLUMNS)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        layer = self._layers[index.row()]
        column = COLUMNS[index.column()]
        value = column.value(layer)
        if role == Qt.ItemDataRole.DisplayRole:
            if index.column() == 0:
                return "    " * max(layer.depth, 0) + layer.name
            return cell_text(column, layer)
        if role == Qt.ItemDataRole.ToolTipRole:
            if index.column() == 0 and layer.name in PSEUDO_ROWS:
                return PSEUDO_ROWS[layer.name]
            if column.text is human_bytes:
                return _exact_bytes(value)
            if column.mark is not None and column.mark(layer):
                return FLOPS_INCOMPLETE
            return column.tooltip or None
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if column.numeric:
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            return int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.UserRole:
            return value
        return None

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal:
            if role == Qt.ItemDataRole.DisplayRole:
                return COLUMNS[section].title
            if role == Qt.ItemDataRole.ToolTipRole:
                return COLUMNS[section].tooltip or None
        return None


class LayerTablePanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = LayerTableModel(self)
        self.view = QTableView()
        # Tab leaves the table for the next control (it cycled the cells, and the controls
        # after it could not be reached from the keyboard); arrows still move between cells
        self.view.setTabKeyNavigation(False)
        self.view.setModel(self.model)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setAlternatingRowColors(True)
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(22)
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        self.view.resizeColumnsToContents()  # before any run: the headers' own widths, unclipped
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view)

    def render(self, layers: Sequence[LayerStats]) -> None:
        resize = len(layers) != self.model.rowCount()  # live updates keep the user's widths
        self.model.set_layers(layers)
        # A column with no value in any row (saved for backward in inference, the KV cache
        # outside generation, gradients outside training) is hidden rather than a column of
        # dashes; it comes back with the first value.
        used = set(used_columns(layers)) if layers else set(range(len(COLUMNS)))
        for i in range(len(COLUMNS)):
            self.view.setColumnHidden(i, i not in used)
        if resize:
            self.view.resizeColumnsToContents()

    def clear(self) -> None:
        self.render([])

    def cell_text(self, row: int, column: int) -> str:
        return self.model.data(self.model.index(row, column))
