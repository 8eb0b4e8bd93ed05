"""Saved runs (from ``RunStore.list()``): double-click one to show it, with no model loaded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.format import human_bytes, human_ms

RUN_ID_ROLE = Qt.ItemDataRole.UserRole


def summary_text(summary: Any) -> str:
    """Two lines: ``demo · forward · label`` and ``2024-05-01 12:00 · peak 1.23 MiB · 4.56 ms``."""
    first = [str(getattr(summary, "model", "") or "?"),
             str(getattr(summary, "workload", "") or "?")]
    label = getattr(summary, "label", "")
    if label:
        first.append(str(label))
    created = str(getattr(summary, "created", "") or "")[:16].replace("T", " ")
    second = [created, f"peak {human_bytes(getattr(summary, 'peak_bytes', None))}",
              human_ms(getattr(summary, "latency_ms", None))]
    return " · ".join(first) + "\n" + " · ".join(p for p in second if p)


class SavedRunsPanel(QWidget):
    """Lists run summaries; emits ``run_activated(run_id)`` and ``refresh_requested()``."""

    run_activated = Signal(str)
    refresh_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        box = QGroupBox("Saved runs")
        self.list = QListWidget()
        self.list.setAlternatingRowColors(True)
        # Activation is a double-click (or Enter) with the desktop styles; a double-click also
        # fires ``itemDoubleClicked``, so only ``itemActivated`` is connected (loads once).
        self.list.itemActivated.connect(self._activated)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setVisible(False)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh_requested)
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self._open_selected)
        buttons = QHBoxLayout()
        buttons.addWidget(self.refresh_button)
        buttons.addWidget(self.open_button)
        inner = QVBoxLayout(box)
        inner.addWidget(self.list, 1)
        inner.addWidget(self.message)
        inner.addLayout(buttons)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(box)

    def set_summaries(self, summaries: Iterable[Any]) -> None:
        self.list.clear()
        for summary in summaries:
            item = QListWidgetItem(summary_text(summary))
            item.setData(RUN_ID_ROLE, str(summary.run_id))
            path = getattr(summary, "path", None)
            item.setToolTip(f"{summary.run_id}\n{path}" if path else str(summary.run_id))
            self.list.addItem(item)
        self.message.setVisible(self.list.count() == 0)
        self.message.setText("No saved runs yet." if self.list.count() == 0 else "")

    def show_unavailable(self, text: str) -> None:
        self.list.clear()
        self.message.setText(text)
        self.message.setVisible(True)

    def run_ids(self) -> list[str]:
        return [self.list.item(i).data(RUN_ID_ROLE) for i in range(self.list.count())]

    @Slot(QListWidgetItem)
    def _activated(self, item: QListWidgetItem) -> None:
        run_id = item.data(RUN_ID_ROLE)
        if run_id:
            self.run_activated.emit(run_id)

    @Slot()
    def _open_selected(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self._activated(item)
