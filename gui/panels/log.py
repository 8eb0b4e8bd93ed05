"""The message log: run progress notes, engine warnings, and errors with their hints."""

from __future__ import annotations

import html
import time

from PySide6.QtCore import QTimer
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QPlainTextEdit, QVBoxLayout, QWidget

from .status import ERROR_COLOR, HINT_COLOR

WARNING_COLOR = HINT_COLOR
MAX_BLOCKS = 5000


class LogPanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = QPlainTextEdit()
        self.view.setReadOnly(True)
        self.view.setMaximumBlockCount(MAX_BLOCKS)
        font = QFont("DejaVu Sans Mono")
        font.setStyleHint(QFont.StyleHint.Monospace)
        # The window's text size, not QFont's 12 pt default (it read larger than the rest).
        font.setPointSizeF(max(self.font().pointSizeF(), 7.0))
        self.view.setFont(font)
        self.view.setPlaceholderText("Messages and warnings appear here.")
        # Whether the view follows new lines: true until the reader scrolls up, again when they
        # scroll back to the end. Kept as a flag, not read from the scroll bar when a line
        # arrives: a window grown then shrunk (maximise, restore, a splitter) left the bar short
        # of its new end, and the log stopped following with no one having scrolled.
        self._following = True
        self._value_when_hidden = 0
        bar = self.view.verticalScrollBar()
        bar.valueChanged.connect(self._on_value_changed)
        bar.rangeChanged.connect(self._on_range_changed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view)

    def text(self) -> str:
        return self.view.toPlainText()

    def info(self, text: str) -> None:
        self._append(html.escape(text))

    def warning(self, text: str) -> None:
        self._append(f'<span style="color:{WARNING_COLOR}">warning: {html.escape(text)}</span>')

    def error(self, message: str, hint: str = "", kind: str = "") -> None:
        prefix = f"{kind.replace('_', ' ')}: " if kind else "error: "  # "not found: ..."
        line = f'<span style="color:{ERROR_COLOR}"><b>{html.escape(prefix + message)}</b></span>'
        if hint:
            line += f' <span style="color:{HINT_COLOR}">→ {html.escape(hint)}</span>'
        self._append(line)

    def _append(self, rich: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.view.appendHtml(f'<span style="color:#808080">{stamp}</span> {rich}')
        # Lines added while the page is hidden (compare, sweep, plan, the guide) are followed
        # when it shows again: "failed (see the log)" pointed below the visible part.
        if self._following:
            self._to_end()

    @property
    def following(self) -> bool:
        return self._following

    def _on_value_changed(self, value: int) -> None:
        if self.view.isVisible():  # (a hidden view's relayout is not the reader scrolling)
            self._following = value >= self.view.verticalScrollBar().maximum() - 1

    def _on_range_changed(self, _low: int, high: int) -> None:
        if self._following:
            self.view.verticalScrollBar().setValue(high)

    def _to_end(self) -> None:
        bar = self.view.verticalScrollBar()
        bar.setValue(bar.maximum())

    def hideEvent(self, event) -> None:  # noqa: N802 - Qt override
        self._value_when_hidden = self.view.verticalScrollBar().value()
        super().hideEvent(event)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        # After the layout has given the view its size (the range is known only then): to the
        # end when following, else back where the reader was (the relayout moved them).
        if self._following:
            QTimer.singleShot(0, self._to_end)
        else:
            value = self._value_when_hidden
            QTimer.singleShot(0, lambda: self.view.verticalScrollBar().setValue(value))
