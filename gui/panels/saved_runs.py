"""Saved runs (from ``RunStore.list()``) as a sortable table.

Double-click (or Open) shows a run with no model loaded; select two or more and Compare shows
them side by side; "Use as baseline" makes a run the outline the memory chart draws; the filter
keeps the rows whose text contains every word typed; Label… and Delete act on the selection
(Delete moves runs to the store's trash: Edit → Undo delete brings them back).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt, Signal, Slot
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from engine.format import MISSING, human_bytes, human_ms

RUN_ID_ROLE = Qt.ItemDataRole.UserRole
SORT_ROLE = Qt.ItemDataRole.UserRole + 1

# (title, text of a summary, sort key of a summary, tooltip)
COLUMNS: tuple[tuple[str, Any, Any, str], ...] = (
    ("Created", lambda s: str(s.created or "")[:16].replace("T", " "), lambda s: s.created or "",
     "When the run finished (UTC)"),
    ("Model", lambda s: str(s.model or "?"), lambda s: str(s.model or ""), ""),
    ("Workload", lambda s: str(s.workload or "?"), lambda s: str(s.workload or ""), ""),
    ("Input", lambda s: str(getattr(s, "input", "") or MISSING),
     lambda s: str(getattr(s, "input", "") or ""),
     "Batch and sequence measured (a prompt's own length), new tokens for generation, and "
     "the rank of a tensor-parallel estimate"),
    ("Kind", lambda s: str(getattr(s, "kind", "") or "measured"),
     lambda s: str(getattr(s, "kind", "") or "measured"),
     "measured, or estimate (fake tensors: no weights, no real memory, no latency)"),
    ("Peak", lambda s: human_bytes(s.peak_bytes), lambda s: s.peak_bytes if s.peak_bytes
     is not None else -1, "Measured peak of the run"),
    ("Latency", lambda s: human_ms(s.latency_ms) or MISSING,
     lambda s: s.latency_ms if s.latency_ms is not None else -1.0,
     "The plain pass: no hooks (the Latency tab also gives the instrumented one)"),
    ("Optimizations", lambda s: str(getattr(s, "optimizations", "") or "none"),
     lambda s: str(getattr(s, "optimizations", "") or ""), "Applied in order"),
    ("Device", lambda s: " ".join(x for x in (getattr(s, "device", ""), getattr(s, "dtype", ""))
                                  if x) or MISSING,
     lambda s: f"{getattr(s, 'device', '')} {getattr(s, 'dtype', '')}", "Device and dtype"),
    ("Quality", lambda s: str(getattr(s, "quality", "") or MISSING),
     lambda s: str(getattr(s, "quality", "") or ""),
     "KL divergence from the unoptimized model, perplexity, or cosine similarity"),
)
# The label names a run the user's way: it sits beside the model, not off-screen at the end;
# the peak and latency come before the long optimizations list (the peak was cut off at the
# default window size).
COLUMNS = (COLUMNS[:2]
           + (("Label", lambda s: str(getattr(s, "label", "") or ""),
               lambda s: str(getattr(s, "label", "")), "Your name for the run (Label…)"),)
           + COLUMNS[2:])
MAX_COLUMN_PX = 260  # a long optimizations list is elided (its cell's tooltip has all of it)
# A label is elided sooner: the guide's ("guide: lora:rank=8,… + checkpointing") pushed Kind,
# Peak and Latency out of a 1024-pixel window (its tooltip has all of it)
MAX_LABEL_PX = 150


def summary_text(summary: Any) -> str:
    """One line for logs and tooltips: ``demo · forward · int8-dynamic · peak 1.23 MiB``."""
    parts = [str(getattr(summary, "model", "") or "?"), str(getattr(summary, "workload", "") or "?"),
             str(getattr(summary, "optimizations", "") or "none"),
             f"peak {human_bytes(getattr(summary, 'peak_bytes', None))}"]
    return " · ".join(parts)


class SavedRunsPanel(QWidget):
    """Emits ``run_activated(id)``, ``refresh_requested()``, ``compare_requested([ids])``,
    ``baseline_requested(id)`` (``""`` clears the baseline), ``settings_requested(id)``,
    ``label_requested(id)`` and ``delete_requested([ids])``."""

    run_activated = Signal(str)
    settings_requested = Signal(str)
    label_requested = Signal(str)
    delete_requested = Signal(object)
    refresh_requested = Signal()
    compare_requested = Signal(object)
    baseline_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = QStandardItemModel(0, len(COLUMNS), self)
        self.model.setHorizontalHeaderLabels([c[0] for c in COLUMNS])
        for i, column in enumerate(COLUMNS):
            if column[3]:
                self.model.horizontalHeaderItem(i).setToolTip(column[3])
        self.proxy = _WordsFilter(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.view = QTableView()
        # Tab leaves the table for the next control (it cycled the cells, and the controls
        # after it could not be reached from the keyboard); arrows still move between cells
        self.view.setTabKeyNavigation(False)
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(0, Qt.SortOrder.DescendingOrder)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setAlternatingRowColors(True)
        self.view.verticalHeader().setVisible(False)
        self.view.setWordWrap(False)
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        # Activation is a double-click (or Enter) with the desktop styles.
        self.view.activated.connect(self._activated)
        self.view.selectionModel().selectionChanged.connect(self._selection_changed)

        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setVisible(False)
        self.baseline_label = QLabel("Baseline outline: the unoptimized model measured in the "
                                     "same run (when it has one).")
        self.baseline_label.setWordWrap(True)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh_requested)
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self._open_selected)
        self.compare_button = QPushButton("Compare selected")
        self.compare_button.setToolTip("Select two or more runs (Ctrl/Shift-click)")
        self.compare_button.clicked.connect(self._compare_selected)
        self.baseline_button = QPushButton("Use as baseline")
        self.baseline_button.setToolTip("Draw this run as outlines in the memory chart")
        self.baseline_button.clicked.connect(self._baseline_selected)
        self.settings_button = QPushButton("Use settings")
        self.settings_button.setToolTip("Set the controls on the left to this run's model, "
                                        "workload, sizes and optimizations (to repeat or vary it)")
        self.settings_button.clicked.connect(self._settings_selected)
        self.clear_baseline_button = QPushButton("Clear baseline")
        self.clear_baseline_button.clicked.connect(lambda: self.baseline_requested.emit(""))
        self.label_button = QPushButton("Label…")
        self.label_button.setToolTip("Name this run (the Label column; `memlens label` does "
                                     "the same)")
        self.label_button.clicked.connect(self._label_selected)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Move the selected runs to the store's trash folder "
                                      "(Edit → Undo delete, or `memlens restore`, brings them "
                                      "back)")
        self.delete_button.clicked.connect(self._delete_selected)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter the runs: model, workload, optimization, "
                                            "label, run id…")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.setToolTip("Keep the runs whose row contains every word typed "
                                    "(any column, any case)")
        self.filter_edit.textChanged.connect(self._filter_changed)
        # Two rows: the eight buttons in one made the page, and so the window, at least 1156 px
        # wide (off a 1024 px screen). What acts on the selection first; then the filter with
        # what tidies the list.
        buttons = QHBoxLayout()
        for button in (self.open_button, self.settings_button, self.compare_button,
                       self.baseline_button, self.clear_baseline_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        tidy = QHBoxLayout()
        tidy.addWidget(self.filter_edit, 1)
        for button in (self.label_button, self.delete_button, self.refresh_button):
            tidy.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addLayout(tidy)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.message)
        layout.addWidget(self.baseline_label)
        self._selection_changed()

    # -- content --------------------------------------------------------------------------------
    def set_summaries(self, summaries: Iterable[Any]) -> None:
        selected = set(self.selected_ids())
        self.view.setSortingEnabled(False)
        self.model.removeRows(0, self.model.rowCount())
        for summary in summaries:
            run_id = str(summary.run_id)
            row = []
            for _title, text, key, _tip in COLUMNS:
                item = QStandardItem(text(summary))
                item.setData(key(summary), SORT_ROLE)
                item.setData(run_id, RUN_ID_ROLE)
                path = getattr(summary, "path", None)
                tip = f"{run_id}\n{path}" if path else run_id
                item.setToolTip(f"{item.text()}\n{tip}" if len(item.text()) > 30 else tip)
                row.append(item)
            self.model.appendRow(row)
        self.view.setSortingEnabled(True)
        self._show_count()
        self.view.resizeColumnsToContents()
        label = next(i for i, c in enumerate(COLUMNS) if c[0] == "Label")
        for column in range(self.model.columnCount()):
            most = MAX_LABEL_PX if column == label else MAX_COLUMN_PX
            if self.view.columnWidth(column) > most:
                self.view.setColumnWidth(column, most)
        if selected:
            self.select(sorted(selected), scroll=False)  # a refresh keeps the user's place
        self._selection_changed()

    def show_unavailable(self, text: str) -> None:
        self.model.removeRows(0, self.model.rowCount())
        self.message.setText(text)
        self.message.setVisible(True)
        self._selection_changed()

    def set_running(self, running: bool) -> None:
        """While a run is in progress, Use settings waits (it would change the controls) and
        so does Open (the run's page is drawing the run in progress)."""
        self._running = running
        self._selection_changed()

    def set_baseline_text(self, text: str) -> None:
        self.baseline_label.setText(text)

    def run_ids(self) -> list[str]:
        """Ids in the order shown."""
        return [self.proxy.index(r, 0).data(RUN_ID_ROLE) for r in range(self.proxy.rowCount())]

    def selected_ids(self) -> list[str]:
        """Selected ids in the order shown."""
        rows = sorted({i.row() for i in self.view.selectionModel().selectedRows()})
        return [self.proxy.index(r, 0).data(RUN_ID_ROLE) for r in rows]

    def select(self, run_ids: Iterable[str], scroll: bool = True) -> None:
        wanted = set(run_ids)
        selection = self.view.selectionModel()
        selection.clearSelection()
        flags = (selection.SelectionFlag.Select | selection.SelectionFlag.Rows)
        for r in range(self.proxy.rowCount()):
            index = self.proxy.index(r, 0)
            if index.data(RUN_ID_ROLE) in wanted:
                selection.select(index, flags)
        first = selection.selectedRows()
        if scroll and first:  # a restored or chosen run is shown, not selected out of sight
            self.view.scrollTo(min(first, key=lambda i: i.row()))

    def row_rect_center(self, run_id: str) -> Any:
        """Centre of a run's first cell in viewport coordinates (for tests that click)."""
        for r in range(self.proxy.rowCount()):
            index = self.proxy.index(r, 0)
            if index.data(RUN_ID_ROLE) == run_id:
                return self.view.visualRect(index).center()
        return None

    # -- slots ----------------------------------------------------------------------------------
    @Slot()
    def _selection_changed(self, *_: Any) -> None:
        n = len(self.selected_ids()) if self.model.rowCount() else 0
        running = getattr(self, "_running", False)
        self.open_button.setEnabled(n == 1 and not running)
        self.baseline_button.setEnabled(n == 1)
        self.settings_button.setEnabled(n == 1 and not running)
        self.label_button.setEnabled(n == 1)
        self.delete_button.setEnabled(n >= 1)
        self.compare_button.setEnabled(n >= 2)

    @Slot(QModelIndex)
    def _activated(self, index: QModelIndex) -> None:
        run_id = index.data(RUN_ID_ROLE)
        if run_id:
            self.run_activated.emit(run_id)

    @Slot()
    def _open_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.run_activated.emit(ids[0])

    @Slot()
    def _compare_selected(self) -> None:
        ids = self.selected_ids()
        if len(ids) >= 2:
            self.compare_requested.emit(ids)

    @Slot()
    def _settings_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.settings_requested.emit(ids[0])

    @Slot()
    def _label_selected(self) -> None:
        ids = self.selected_ids()
        if len(ids) == 1:
            self.label_requested.emit(ids[0])

    @Slot()
    def _delete_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.delete_requested.emit(ids)

    @Slot(str)
    def _filter_changed(self, text: str) -> None:
        self.proxy.set_words(text)
        self._show_count()
        self._selection_changed()

    def _show_count(self) -> None:
        total, shown = self.model.rowCount(), self.proxy.rowCount()
        if total == 0:
            text = "No saved runs yet: every finished run is saved here."
        elif shown < total:
            text = (f"{shown} of {total} runs match the filter." if shown
                    else f"No run of {total} matches the filter.")
        else:
            text = ""
        self.message.setText(text)
        self.message.setVisible(bool(text))

    @Slot()
    def _baseline_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.baseline_requested.emit(ids[0])


class _WordsFilter(QSortFilterProxyModel):
    """Keeps the rows whose cells, together, contain every word of the filter (any case)."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._words: list[str] = []

    def set_words(self, text: str) -> None:
        # begin/endFilterChange replace invalidateFilter (deprecated in Qt 6.10).
        self.beginFilterChange()
        self._words = [w.casefold() for w in text.split()]
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:  # noqa: N802 - Qt's name
        if not self._words:
            return True
        model = self.sourceModel()
        text = " ".join(str(model.index(row, c, parent).data() or "")
                        for c in range(model.columnCount())).casefold()
        run_id = str(model.index(row, 0, parent).data(RUN_ID_ROLE) or "").casefold()
        return all(w in text or w in run_id for w in self._words)
