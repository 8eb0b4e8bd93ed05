"""Optimization controls, generated from the engine's registry.

One checkbox per technique (its summary as tooltip) with a widget per parameter (combo box for
choices, spin boxes for numbers, checkbox for flags). A technique that cannot apply to the chosen
workload and device is disabled, with the engine's reason as its tooltip. The panel only reads
the registry's schema and checks; it measures nothing.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.optimizations import REGISTRY, Optimization, Param

from .status import ERROR_COLOR


def _param_widget(param: Param) -> QWidget:
    if param.kind == "choice":
        w = QComboBox()
        w.addItems([str(c) for c in param.choices])
        w.setCurrentText(str(param.default))
    elif param.kind == "int":
        w = QSpinBox()
        w.setRange(int(param.minimum if param.minimum is not None else 0),
                   int(param.maximum if param.maximum is not None else 1 << 30))
        w.setValue(int(param.default))
    elif param.kind == "float":
        w = QDoubleSpinBox()
        w.setDecimals(2)
        w.setSingleStep(0.05)
        w.setRange(float(param.minimum if param.minimum is not None else 0.0),
                   float(param.maximum if param.maximum is not None else 1e9))
        w.setValue(float(param.default))
    else:
        w = QCheckBox()
        w.setChecked(bool(param.default))
    if param.help:
        w.setToolTip(param.help)
    return w


def _value(widget: QWidget) -> Any:
    if isinstance(widget, QComboBox):
        return widget.currentText()
    if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        return widget.value()
    return widget.isChecked()


def _set_value(widget: QWidget, value: Any) -> None:
    if isinstance(widget, QComboBox):
        widget.setCurrentText(str(value))
    elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        widget.setValue(value)
    else:
        widget.setChecked(bool(value))


class _Row(QWidget):
    def __init__(self, opt: Optimization, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.opt = opt
        self.check = QCheckBox(opt.name)
        self.check.setToolTip(opt.summary)
        self.params: dict[str, QWidget] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.check)
        if opt.params:
            form = QFormLayout()
            form.setContentsMargins(22, 0, 0, 0)
            for p in opt.params:
                widget = _param_widget(p)
                widget.setEnabled(False)
                self.params[p.name] = widget
                form.addRow(p.name, widget)
            layout.addLayout(form)
        self.check.toggled.connect(self._toggled)

    def _toggled(self, on: bool) -> None:
        for widget in self.params.values():
            widget.setEnabled(on)

    def set_applicable(self, reason: str | None) -> str:
        """Enable or disable the row for the workload and device. A ticked row that stops
        applying is unticked and remembered, and ticked again when it applies again (it was
        unticked for good, without a word). Returns "unticked", "ticked again" or ""."""
        self.check.setEnabled(reason is None)
        if reason is None:
            self.check.setToolTip(self.opt.summary)
            if getattr(self, "_wanted", False):
                self._wanted = False
                self.check.setChecked(True)
                return "ticked again"
            return ""
        self.check.setToolTip(f"Not available: {reason}.\n{self.opt.summary}")
        if self.check.isChecked():
            self.check.setChecked(False)
            self._wanted = True
            return "unticked"
        return ""

    def reset(self) -> None:
        """Untick, with every parameter back at its default."""
        self._wanted = False
        self.check.setChecked(False)
        for param in self.opt.params:
            _set_value(self.params[param.name], param.default)

    def spec(self) -> dict[str, Any] | None:
        if not (self.check.isEnabled() and self.check.isChecked()):
            return None
        return {"id": self.opt.id, "params": {k: _value(w) for k, w in self.params.items()}}


class OptimizationsPanel(QWidget):
    """Checkboxes and parameters for every registered optimization."""

    # What the engine would refuse in the ticked set ("" when nothing): the Run and Estimate
    # buttons wait until it is resolved.
    problem_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        box = QGroupBox("Optimizations")
        inner = QWidget()
        rows_layout = QVBoxLayout(inner)
        rows_layout.setContentsMargins(4, 4, 4, 4)
        self.rows = {opt.id: _Row(opt) for opt in REGISTRY.values()}
        for row in self.rows.values():
            rows_layout.addWidget(row)
            row.check.toggled.connect(lambda _=False: self._check_selection())
            for widget in row.params.values():  # (a parameter can make a choice invalid)
                for name in ("currentIndexChanged", "valueChanged", "toggled"):
                    signal = getattr(widget, name, None)
                    if signal is not None:
                        signal.connect(lambda *_: self._check_selection())
                        break
        # What the engine would refuse in the ticked set (a conflict, a value), said as soon as
        # it is ticked: it was said only after Run.
        self.problem = QLabel("")
        self.problem.setWordWrap(True)
        self.problem.setObjectName("optimizationProblem")
        self.problem.setStyleSheet(f"color: {ERROR_COLOR};")
        self.problem.hide()
        self._where = ("forward", "cpu")
        rows_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(inner)
        box_layout = QVBoxLayout(box)
        box_layout.setContentsMargins(2, 2, 2, 2)
        box_layout.addWidget(self.problem)
        box_layout.addWidget(scroll)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(box)

    def update_applicability(self, workload: str, device: str) -> list[str]:
        """Disable what cannot apply, with the engine's reason as tooltip; returns a line for
        each ticked optimization unticked (with the reason) or ticked again."""
        said = []
        self._where = (workload, device)
        for row in self.rows.values():
            reason = row.opt.check_config(workload, device, row.opt.defaults())
            change = row.set_applicable(reason)
            if change == "unticked":
                said.append(f"{row.opt.name} unticked: it {reason} (ticked again when it "
                            "applies).")
            elif change:
                said.append(f"{row.opt.name} ticked again: it applies to {workload} on "
                            f"{device}.")
        self._check_selection()
        return said

    def _check_selection(self) -> None:
        """Show what the engine's own check (``engine.optimizations.resolve``) refuses in the
        ticked set for the workload and device, or nothing."""
        from engine.errors import MemLensError
        from engine.optimizations import resolve

        text = ""
        try:
            resolve(self.selected(), *self._where)
        except MemLensError as exc:
            text = f"{exc.message} {exc.hint}".strip()
        except Exception:  # noqa: BLE001 - never let a check break the controls
            pass
        changed = text != self.problem.text()
        self.problem.setText(text)
        self.problem.setVisible(bool(text))
        if changed:
            self.problem_changed.emit(text)

    def problem_text(self) -> str:
        return self.problem.text()

    def selected(self) -> list[dict[str, Any]]:
        return [spec for row in self.rows.values() if (spec := row.spec()) is not None]

    def preselect(self, spec: str) -> str | None:
        """Tick an optimization from an ``ID[:key=value,...]`` string; returns a problem or None."""
        from engine.errors import MemLensError
        from engine.optimizations import parse_spec

        try:
            entry = parse_spec(spec)
        except MemLensError as exc:
            return exc.message
        return self._tick(entry["id"], entry["params"])

    def set_selected(self, entries: list[dict[str, Any]]) -> list[str]:
        """Tick exactly these ``{"id", "params"}`` entries (a saved run's optimizations) and
        untick the rest; returns one line per entry that could not be ticked, and why."""
        for row in self.rows.values():
            row.reset()  # no parameter is left over from what was ticked before
        problems = []
        for entry in entries:
            ident = str(entry.get("id", ""))
            problem = self._tick(ident, dict(entry.get("params") or {}))
            if problem is not None:
                problems.append(f"{ident}: {problem}")
        return problems

    def _tick(self, ident: str, given: dict[str, Any]) -> str | None:
        from engine.errors import MemLensError

        row = self.rows.get(ident)
        if row is None:
            return f"unknown optimization (known: {', '.join(self.rows)})"
        try:
            params = row.opt.parse_params(given)
        except MemLensError as exc:
            return exc.message
        if not row.check.isEnabled():
            return row.check.toolTip().splitlines()[0].removeprefix("Not available: ")
        row.check.setChecked(True)
        for key, value in params.items():
            _set_value(row.params[key], value)
        return None

    def reason(self, ident: str) -> str:
        return self.rows[ident].check.toolTip()
