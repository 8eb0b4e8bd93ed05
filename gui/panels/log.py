"""The message log: run progress notes, engine warnings, and errors with their hints."""

from __future__ import annotations

import html
import time

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
