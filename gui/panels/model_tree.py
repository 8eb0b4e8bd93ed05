"""The model's module tree as the engine recorded it (``model_info["module_tree"]``): parameters,
weight bytes, dtypes, devices, trainable parameters, and which optimizations changed each module.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.format import human_bytes, si_number

COLUMNS = ("Module", "Type", "Parameters", "Weights", "Dtype", "Device", "Trainable",
           "Changed by")
CHANGED_BACKGROUND = QColor("#fff3c4")
NO_TREE = ("This run has no module tree (runs saved before MemLens recorded one, or "
           "estimates of models that were never built).")


class ModelTreePanel(QWidget):
    """``render(result)``; ``clear(text)``."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tree = QTreeWidget()
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setAlternatingRowColors(True)
        self.tree.setUniformRowHeights(True)
        self.tree.header().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.tree.header().setStretchLastSection(True)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter by name or type…")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self._apply_filter)
        self.changed_only = QCheckBox("Only modules an optimization changed")
        self.changed_only.toggled.connect(self._apply_filter)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.filter_edit, 1)
        top.addWidget(self.changed_only)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.summary)
        self._items: dict[str, QTreeWidgetItem] = {}
        self.clear("The module tree appears when a run has loaded its model.")

    def clear(self, text: str = "") -> None:
        self.tree.clear()
        self._items = {}
        self.summary.setText(text)

    def render(self, result: Any) -> None:
        info = getattr(result, "model_info", None) or {}
        record = info.get("module_tree")
        self.tree.clear()
        self._items = {}
        if not record or not record.get("modules"):
            self.summary.setText(NO_TREE)
            self.changed_only.setEnabled(False)
            return
        rows = record["modules"]
        bold = QFont(self.tree.font())
        bold.setBold(True)
        changed = 0
        self.tree.setUpdatesEnabled(False)
        try:
            for row in rows:
                name = row.get("name", "")
                parent_name = name.rsplit(".", 1)[0] if "." in name else ("" if name else None)
                parent = self._items.get(parent_name) if parent_name is not None else None
                leaf = name.rsplit(".", 1)[-1] if name else (info.get("architecture")
                                                             or "(model)")
                touched = row.get("touched_by") or []
                cells = [
                    leaf, row.get("type", ""),
                    si_number(row.get("parameters")) if row.get("parameters") else "0",
                    human_bytes(row.get("weights_bytes"))
                    + (" (tied)" if row.get("tied_to") else ""),
                    ", ".join(row.get("dtypes") or []), ", ".join(row.get("devices") or []),
                    si_number(row.get("trainable")) if row.get("trainable") else "0",
                    ", ".join(touched),
                ]
                item = QTreeWidgetItem(cells)
                item.setData(0, Qt.ItemDataRole.UserRole, name)
                item.setToolTip(0, name or "(the model)")
                item.setToolTip(1, row.get("class_path", ""))
                item.setToolTip(2, f"{row.get('parameters', 0):,} parameters "
                                   f"({row.get('own_parameters', 0):,} its own)")
                item.setToolTip(3, f"{row.get('weights_bytes', 0):,} bytes, children included"
                                + (f"; shared with {', '.join(row['tied_to'])}, where they are "
                                   "counted (the per-layer table gives this module 0 B of them)"
                                   if row.get("tied_to") else ""))
                for col in range(2, 4):
                    item.setTextAlignment(col, Qt.AlignmentFlag.AlignRight
                                          | Qt.AlignmentFlag.AlignVCenter)
                if touched:
                    changed += 1
                    for col in range(len(COLUMNS)):
                        item.setBackground(col, QBrush(CHANGED_BACKGROUND))
                    item.setFont(7, bold)
                if parent is None:
                    self.tree.addTopLevelItem(item)
                else:
                    parent.addChild(item)
                self._items[name] = item
        finally:
            self.tree.setUpdatesEnabled(True)
        # Open the model and the first levels; blocks stay collapsed unless a change is inside.
        for name, item in self._items.items():
            depth = 0 if not name else name.count(".") + 1
            if depth <= 2:
                item.setExpanded(True)
        for name, item in self._items.items():
            if item.text(7):
                parent = item.parent()
                while parent is not None:
                    parent.setExpanded(True)
                    parent = parent.parent()
        for col in range(len(COLUMNS) - 1):
            self.tree.resizeColumnToContents(col)
        whole = record.get("whole_run") or []
        text = f"{len(rows)} modules"
        if changed:
            text += f"; {changed} changed by an optimization (highlighted)"
        root, total = rows[0].get("parameters"), info.get("parameters")
        if rows[0].get("name") == "" and root is not None and total and root < total:
            text += (f". {si_number(root)} of the model's {si_number(total)} parameters are "
                     "still parameters: an optimization packed the rest into other tensors, "
                     "which the Weights column counts")
        if whole:
            text += (f". Changed no module (they act on the whole run): {', '.join(whole)}")
        for opt_id, count in (record.get("behaviour_only") or {}).items():
            text += (f". {opt_id} changes how {count} module{'s' if count != 1 else ''} run, "
                     "not their weights or structure (not highlighted)")
        self.summary.setText(text + ".")
        # Nothing to narrow the tree to when no optimization changed a module.
        self.changed_only.setEnabled(changed > 0)
        if not changed:
            self.changed_only.setChecked(False)
        self.changed_only.setToolTip("" if changed else "No optimization changed a module in "
                                                        "this run.")
        self._apply_filter()

    def module_names(self) -> list[str]:
        return list(self._items)

    def visible_names(self) -> list[str]:
        return [n for n, item in self._items.items() if not item.isHidden()]

    @Slot()
    def _apply_filter(self, *_: Any) -> None:
        needle = self.filter_edit.text().strip().lower()
        only_changed = self.changed_only.isChecked()

        def matches(item: QTreeWidgetItem) -> bool:
            name = str(item.data(0, Qt.ItemDataRole.UserRole) or "")
            if only_changed and not item.text(7):
                return False
            return not needle or needle in name.lower() or needle in item.text(1).lower()

        def visit(item: QTreeWidgetItem) -> bool:
            shown_child = False
            for i in range(item.childCount()):
                shown_child = visit(item.child(i)) or shown_child
            shown = matches(item) or shown_child
            item.setHidden(not shown)
            return shown

        for i in range(self.tree.topLevelItemCount()):
            visit(self.tree.topLevelItem(i))
