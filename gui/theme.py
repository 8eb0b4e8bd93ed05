"""Light and dark themes: a Qt palette (Fusion style) for the widgets and matching colours for
every pyqtgraph canvas, applied by walking the plots' scenes, so panels need no theme code.
Panels that set a colour while drawing read :func:`current`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pyqtgraph as pg
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QWidget


@dataclass(frozen=True)
class Theme:
    name: str
    background: str  # plot canvas
    text: str
    axis: str
    window: str
    base: str
    alternate: str
    button: str
    highlight: str
    # A check box's square: Fusion fills it with Base and outlines it with Window darkened,
    # which on a dark window left an unticked box all but invisible.
    indicator: str = ""


THEMES = {
    "light": Theme("light", "#ffffff", "#202020", "#606060", "#efefef", "#ffffff", "#f5f5f5",
                   "#e8e8e8", "#2a6fdb"),
    "dark": Theme("dark", "#1f2024", "#dddddd", "#9a9a9a", "#2b2d31", "#1f2024", "#26282c",
                  "#34363b", "#3d7be0", indicator="#4a4d54"),
}
_current = THEMES["light"]


def current() -> Theme:
    return _current


@contextlib.contextmanager
def drawing_with(name: str) -> Iterator[Theme]:
    """Panels drawn inside this block pick ``name``'s colours (e.g. light paper for a report
    exported from a dark window); the application's palette is left alone."""
    global _current
    saved, _current = _current, THEMES.get(name, THEMES["light"])
    try:
        yield _current
    finally:
        _current = saved


def _palette(theme: Theme) -> QPalette:
    p = QPalette()
    role, group = QPalette.ColorRole, QPalette.ColorGroup
    text = QColor(theme.text)
    p.setColor(role.Window, QColor(theme.window))
    p.setColor(role.WindowText, text)
    p.setColor(role.Base, QColor(theme.base))
    p.setColor(role.AlternateBase, QColor(theme.alternate))
    p.setColor(role.Text, text)
    p.setColor(role.Button, QColor(theme.button))
    p.setColor(role.ButtonText, text)
    p.setColor(role.ToolTipBase, QColor(theme.base))
    p.setColor(role.ToolTipText, text)
    p.setColor(role.PlaceholderText, QColor(theme.axis))
    p.setColor(role.Highlight, QColor(theme.highlight))
    p.setColor(role.HighlightedText, QColor("#ffffff"))
    p.setColor(role.BrightText, QColor("#ff5555"))
    for r in (role.WindowText, role.Text, role.ButtonText):
        p.setColor(group.Disabled, r, QColor(theme.axis))
    return p


def apply(name: str, root: QWidget | None = None) -> Theme:
    """Switch to theme ``name`` (``light`` or ``dark``); recolour ``root``'s plots."""
    global _current
    theme = THEMES.get(name, THEMES["light"])
    _current = theme
    app = QApplication.instance()
    if isinstance(app, QApplication):
        app.setStyle("Fusion")
        app.setPalette(_palette(theme))
        boxes = _palette(theme)
        if theme.indicator:
            boxes.setColor(QPalette.ColorGroup.Active, QPalette.ColorRole.Base,
                           QColor(theme.indicator))
            boxes.setColor(QPalette.ColorGroup.Inactive, QPalette.ColorRole.Base,
                           QColor(theme.indicator))
            boxes.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Base,
                           QColor(theme.button))
        app.setPalette(boxes, "QCheckBox")  # every theme: the last one's must not linger
    if root is not None:
        recolor_plots(root, theme)
    return theme


def recolor_plots(root: QWidget, theme: Theme | None = None) -> None:
    theme = theme or _current
    views = root.findChildren(pg.GraphicsView)
    for view in views:
        view.setBackground(theme.background)
        scene = view.scene()
        if scene is None:
            continue
        for item in scene.items():
            if isinstance(item, pg.AxisItem):
                item.setTextPen(theme.text)
                item.setPen(theme.axis)
            elif isinstance(item, pg.LegendItem):
                item.setLabelTextColor(theme.text)
                if item.opts.get("brush") is not None:
                    fill = pg.mkColor(theme.background)
                    fill.setAlpha(200)
                    item.setBrush(pg.mkBrush(fill))
            elif isinstance(item, pg.LabelItem):
                item.setText(item.text, color=theme.text)
            elif isinstance(item, pg.TextItem):
                item.setColor(theme.text)
    # Panels with colours of their own (phase bands, secondary text) recolour themselves.
    for widget in [root, *root.findChildren(QWidget)]:
        hook = getattr(widget, "theme_changed", None)
        if callable(hook):
            hook(theme)
