"""The status line: the run's stage and message, a progress bar, and the last outcome."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QWidget

ERROR_COLOR = "#c62828"
HINT_COLOR = "#e65100"
OK_COLOR = "#2e7d32"
DARK_OK_COLOR = "#66bb6a"  # the same green, readable on the dark theme's window


class StatusPanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel("Ready.")
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setWordWrap(True)
        # Three lines, whatever the text: a message that wraps (an error and its hint) does not
        # push the pages below down and back up as the run goes on. A longer one is whole in
        # the tooltip and in the log.
        self.label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        self.label.setFixedHeight(3 * self.label.fontMetrics().lineSpacing())
        self.showing_error = False
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setFixedWidth(220)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.progress_bar)

    def text(self) -> str:
        """The status as plain text (for tests and accessibility)."""
        return _plain(self.label.text())

    def _show(self, rich: str, error: bool = False) -> None:
        self.showing_error = error
        self.label.setText(rich)
        self.label.setToolTip(_plain(rich))
        self._align()

    def _align(self) -> None:
        """Centred while the text fits its three lines; from the top when it is longer, so the
        first lines show whole and the rest is cut at a line's edge (centred, a fourth line
        showed cut through its letters at the top and the bottom)."""
        spacing = self.label.fontMetrics().lineSpacing()
        need = self.label.heightForWidth(max(self.label.width(), 1))
        longer = need - self.label.height() > spacing // 2  # (a fourth line, not a margin)
        vertical = Qt.AlignmentFlag.AlignTop if longer else Qt.AlignmentFlag.AlignVCenter
        self.label.setAlignment(Qt.AlignmentFlag.AlignLeft | vertical)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._align()

    def show_started(self, model: str, workload: str) -> None:
        self.progress_bar.setRange(0, 0)  # busy until the first progress event
        self._set(f"Starting {workload} on {model}…")

    def show_progress(self, stage: str, fraction: float, message: str) -> None:
        """``fraction`` < 0 means unknown: the bar shows "busy"."""
        if fraction < 0:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(round(min(max(fraction, 0.0), 1.0) * 1000))
        text = f"<b>{html.escape(stage)}</b>"
        if fraction >= 0:
            text += f" {fraction * 100:.0f}%"
        if message:
            text += f" · {html.escape(message)}"
        self._show(text)

    def show_finished(self, text: str, good: bool = True) -> None:
        """Done; ``good=False`` for an answer that is not good news ("does not fit"), which
        read as success in green."""
        self._stop_bar(full=True)
        from .. import theme

        ok = DARK_OK_COLOR if theme.current().name == "dark" else OK_COLOR
        self._show(f'<span style="color:{ok if good else HINT_COLOR}">{html.escape(text)}</span>')

    def show_error(self, message: str, hint: str = "") -> None:
        self._stop_bar(full=False)
        text = f'<span style="color:{ERROR_COLOR}"><b>{html.escape(message)}</b></span>'
        if hint:
            text += f' <span style="color:{HINT_COLOR}">{html.escape(hint)}</span>'
        self._show(text, error=True)

    def clear_error(self) -> None:
        """A setting changed after a refusal or a failure: the red line described settings
        that are no longer the window's (it stayed after the conflict it named was resolved).
        The log keeps the message."""
        if self.showing_error:
            self.show_message("Ready. (The last attempt's error is in the log.)")

    def show_message(self, text: str) -> None:
        self._stop_bar(full=False)
        self._set(text)

    def _set(self, text: str) -> None:
        self._show(html.escape(text))

    def _stop_bar(self, full: bool) -> None:
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(1000 if full else 0)


def _plain(rich: str) -> str:
    from PySide6.QtGui import QTextDocumentFragment

    return QTextDocumentFragment.fromHtml(rich).toPlainText()
