"""The measured guide in the window: the engine's Markdown (ranked tables, charts, notes, what
could not run) and one button per workload to compare its runs. Renders; measures nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QTextBrowser, QVBoxLayout, QWidget


class GuidePanel(QWidget):
    """``render(guide, folder)`` shows ``folder/guide.md``; emits ``compare_requested([ids])``."""

    compare_requested = Signal(object)
    report_requested = Signal()
    run_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        # (line breaks of its own: a placeholder is drawn on one line, cut at the edge)
        self.browser.setPlaceholderText(
            "No guide yet.\n\nThe guide runs every technique in the registry that applies "
            "here\n(and two combinations) on the model, sizes and dtype chosen on the left,\n"
            "each against the unoptimized model measured in the same run,\nthen ranks them by "
            "memory saved, with latency and quality beside.\nOn the demo model it takes a few "
            "minutes.")
        self.message = QLabel("Run → Run the guide (Ctrl+G) measures every technique on the "
                              "chosen model.")
        self.message.setWordWrap(True)
        self.buttons = QHBoxLayout()
        self.run_button = QPushButton("Run the guide")
        self.run_button.clicked.connect(lambda _=False: self.run_requested.emit())
        self.buttons.addWidget(self.run_button)
        self.buttons.addStretch(1)
        self.report_button = QPushButton("Export report…")
        self.report_button.setToolTip("guide.html and guide.pdf: the ranked tables and notes "
                                      "with each workload's runs drawn side by side")
        self.report_button.setEnabled(False)
        self.report_button.clicked.connect(self.report_requested)
        self.buttons.addWidget(self.report_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.message)
        layout.addLayout(self.buttons)
        layout.addWidget(self.browser, 1)
        self._compare_buttons: list[QPushButton] = []
        self.guide: Any = None

    def render(self, guide: Any, folder: Path | str) -> None:
        self.guide = guide
        folder = Path(folder)
        self.browser.setSearchPaths([str(folder)])
        self.browser.setMarkdown((folder / "guide.md").read_text(encoding="utf-8"))
        ran = sum(e.status == "ok" for e in guide.entries)
        if guide.partial:
            self.message.setText(f"{len(guide.entries)} of {guide.planned} techniques done so "
                                 f"far ({ran} measured) on {guide.model} ({guide.device}); files "
                                 f"in {folder}.")
        else:
            self.message.setText(f"{ran} of {len(guide.entries)} techniques measured on "
                                 f"{guide.model} ({guide.device}); files in {folder}.")
        for button in self._compare_buttons:
            self.buttons.removeWidget(button)
            button.deleteLater()
        self._compare_buttons = []
        self.report_button.setEnabled(True)
        for workload in guide.workloads():
            ids = [e.run_id for e in guide.ranked(workload) if e.run_id]
            if len(ids) < 2:
                continue
            button = QPushButton(f"Compare the {workload} runs")
            button.clicked.connect(lambda _=False, ids=ids: self.compare_requested.emit(ids))
            self.buttons.insertWidget(self.buttons.count() - 1, button)
            self._compare_buttons.append(button)

    def starting(self, text: str) -> None:
        """A guide job started (or ended before its first technique): the previous guide goes
        (its buttons would export or compare the old one under the new one's message)."""
        self.guide = None
        self.browser.clear()
        for button in self._compare_buttons:
            self.buttons.removeWidget(button)
            button.deleteLater()
        self._compare_buttons = []
        self.report_button.setEnabled(False)
        self.message.setText(text)

    def stopped(self, why: str) -> None:
        """The guide on show was cut short (cancelled or failed): say so above it."""
        if self.guide is not None and self.guide.partial:
            self.message.setText(f"{why}: the guide stopped after {len(self.guide.entries)} of "
                                 f"{self.guide.planned} techniques; those are shown.")

    def text(self) -> str:
        return self.browser.toPlainText()
