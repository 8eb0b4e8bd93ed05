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
        self._at_end_when_hidden = True  # (where the reader was when the page was left)
        self._follow_on_show = False
        self._value_when_hidden = 0
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
        bar = self.view.verticalScrollBar()
        # Follow new lines unless the reader has scrolled up. Qt follows only while the view is
        # shown: lines added while its page was hidden (compare, sweep, plan, the guide) left
        # it stuck above them, with "failed (see the log)" pointing below the visible part.
        shown = self.view.isVisible()
        follow = bar.value() >= bar.maximum() - 1 if shown else self._at_end_when_hidden
        self.view.appendHtml(f'<span style="color:#808080">{stamp}</span> {rich}')
        if follow:
            self._to_end()
            self._follow_on_show = not self.view.isVisible()

    def _to_end(self) -> None:
        bar = self.view.verticalScrollBar()
        bar.setValue(bar.maximum())

    def hideEvent(self, event) -> None:  # noqa: N802 - Qt override
        bar = self.view.verticalScrollBar()
        self._at_end_when_hidden = bar.value() >= bar.maximum() - 1
        self._value_when_hidden = bar.value()
        super().hideEvent(event)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        # After the layout has given the view its size (the range is known only then): to the
        # end when following, else back where the reader was (the relayout moved them).
        if self._follow_on_show:
            self._follow_on_show = False
            QTimer.singleShot(0, self._to_end)
        elif not self._at_end_when_hidden:
            value = self._value_when_hidden
            QTimer.singleShot(0, lambda: self.view.verticalScrollBar().setValue(value))
