"""Whole-run figures: the reconciliation line and the category totals at the peak."""

from __future__ import annotations

import html
import re

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

from engine.aggregate import reconciliation_line
from engine.compare import optimizations_text
from engine.format import (PROMPT_EXCERPT, against_baseline, excerpt, human_bytes, human_count,
                           human_flops, human_ms, human_seconds, inputs_text, overhead,
                           quality_parts, tokens_per_s_text)
from engine.results import RunResult

from .status import ERROR_COLOR

def totals_lines(result: RunResult, speed: bool = True) -> list[str]:
    """Plain-text lines: the reconciliation first, then the categories and speeds
    (``speed=False`` leaves out the latency, overhead and tokens/s, for a page that shows the
    latency panel's own lines beside them)."""
    t = result.totals
    lines = [reconciliation_line(t, human_bytes)]
    if getattr(result, "estimate", None) is not None:
        tp = result.estimate.get("tensor_parallel") or 1
        lines[0] = ("ESTIMATE (fake tensors: no weights, no real memory"
                    + (f"; rank 0 of {tp}, tensor parallel" if tp > 1 else "") + ") · "
                    + lines[0])
    detail = getattr(t, "unattributed_detail", None)  # newer engines name the remainder's parts
    if isinstance(detail, dict) and detail:
        lines.append("unattributed: " + " · ".join(f"{name} {human_bytes(value)}"
                                                   for name, value in detail.items()))
    categories = [
        ("weights", t.weights_bytes), ("activations", t.activation_bytes),
        ("KV cache", t.kv_cache_bytes), ("gradients", t.gradient_bytes),
        ("optimizer state", t.optimizer_state_bytes), ("temporaries", t.temporary_bytes),
    ]
    lines.append("at peak: " + " · ".join(f"{name} {human_bytes(value)}"
                                         for name, value in categories if value))
    from engine.modeltree import tied_notes

    lines.extend(tied_notes((getattr(result, "model_info", None) or {}).get("module_tree"),
                            [x.name for x in result.layers]))
    lines.append("input: " + inputs_text(result))
    generated = (getattr(result, "generation", None) or {}).get("text")
    if generated:
        lines.append(f"generated: {excerpt(generated, 2 * PROMPT_EXCERPT)!r}")
    timing = speed
    speed = [f"{human_count(t.parameters)} parameters",
             f"model weights {human_bytes(t.model_weights_bytes)}"]
    if timing:
        speed.append(f"latency {human_ms(t.plain_latency_ms)}")
    if timing and t.instrumentation_overhead is not None:
        speed.append(f"profiler overhead {overhead(t.instrumentation_overhead)}")
    if t.compile_seconds is not None:
        speed.append(f"compile {human_seconds(t.compile_seconds)} (not in the latency)")
    if t.compiled_peak_bytes is not None:
        speed.append(f"compiled peak {human_bytes(t.compiled_peak_bytes)}")
    if timing and t.tokens_per_s is not None:
        speed.append(tokens_per_s_text(t.tokens_per_s, result.config.workload))  # as on Latency
    if t.flops is not None:
        # (the table marked the rows "*" while the total read as a complete count)
        missed = list(t.flops_uncounted_ops or [])
        speed.append(human_flops(t.flops) + (
            f"* (under-counted: no FLOP formula for {', '.join(missed[:3])}"
            f"{' and more' if len(missed) > 3 else ''})" if missed else ""))
    if t.process_rss_peak_bytes is not None:
        speed.append(f"process RSS peak in the memory pass {human_bytes(t.process_rss_peak_bytes)}")
    if t.cuda_reserved_peak_bytes is not None:
        speed.append(f"CUDA reserved peak {human_bytes(t.cuda_reserved_peak_bytes)}")
    made = getattr(result, "estimate_seconds", None)
    if made is not None:  # (the figure the command line prints)
        speed.append(f"estimate made in {human_seconds(made)}"
                     + (f" of a {human_seconds(result.duration_s)} run (libraries, saving)"
                        if result.duration_s else ""))
    elif result.duration_s:
        speed.append(f"run took {human_seconds(result.duration_s)}")
    lines.append(" · ".join(speed))
    if t.load_peak_bytes is not None or t.steady_bytes is not None:
        lines.append(f"load: peak {human_bytes(t.load_peak_bytes)}, steady "
                     f"{human_bytes(t.steady_bytes)}")
    if result.optimizations:
        line = f"optimizations: {optimizations_text(result.optimizations)}"  # as --opt takes
        base, d = result.baseline or {}, result.deltas or {}
        if base and d:
            line += f" · vs the baseline measured in this run: {', '.join(against_baseline(result))}"
        lines.append(line)
    quality = quality_parts(result.quality)
    if quality:
        through = (result.quality or {}).get("through_cache")
        lines.append("quality: " + " · ".join(quality)
                     + (f" (scored as {through})" if through else ""))
    return lines


# A number and its unit ("367 ms", "9.67 MiB", "124 MFLOP") stay on one line when wrapped.
_NUMBER_UNIT = re.compile(r"(\d) (?=(?:[KMGTP]i?B|B|ms|s|[kMGTP]?FLOP|[kMGT]\b|nats))")


def _html(line: str) -> str:
    return _NUMBER_UNIT.sub("\\1&nbsp;", html.escape(line))


class TotalsPanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel("No run yet.")
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # A run with optimizations has ten lines or more: in a small window they pushed the
        # per-layer table down to one row and were cut off themselves. They scroll now, and
        # take only the height they need when there is room.
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.label)
        self.scroll.setMinimumHeight(2 * self.fontMetrics().lineSpacing())
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll)
        self._plain = "No run yet."

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        """As tall as the text at the current width (a scroll area's own hint ignores it)."""
        width = max(self.width(), 200)
        return QSize(width, self.label.heightForWidth(width) + 4)

    def text(self) -> str:
        return self._plain

    def render(self, result: RunResult, note: str = "") -> None:
        """Show ``result``'s totals; ``note`` (in the error colour) goes above them."""
        lines = totals_lines(result)
        parts = [f"<b>{_html(lines[0])}</b>"] + [_html(line) for line in lines[1:]]
        if note:
            lines.insert(0, note)
            parts.insert(0, f'<span style="color:{ERROR_COLOR}">{html.escape(note)}</span>')
        if not result.totals.reconciles():
            warning = "the figures do not add up: attributed + unattributed ≠ peak"
            lines.append(warning)
            parts.append(f'<span style="color:{ERROR_COLOR}">{html.escape(warning)}</span>')
        self._plain = "\n".join(lines)
        self.label.setText("<br>".join(parts))
        self.updateGeometry()

    def clear(self, text: str = "No run yet.") -> None:
        self._plain = text
        self.label.setText(html.escape(text))
        self.updateGeometry()
