"""Draw MemLens' application icon with Qt (no downloaded artwork) into resources/icons/.

    QT_QPA_PLATFORM=offscreen python packaging/make_icon.py [--size 256] [--out PATH]

The motif is the app's main chart: stacked memory bars per layer (weights, activations, KV
cache) seen through a lens. The PNG is committed; rerun this only to change the design.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "resources" / "icons" / "memlens.png"


def draw(size: int):
    from PySide6.QtCore import QPointF, QRectF, Qt
    from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPainterPath, QPen

    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    s = size / 256.0
    p = QPainter(image)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    # Rounded tile.
    tile = QPainterPath()
    tile.addRoundedRect(QRectF(8 * s, 8 * s, 240 * s, 240 * s), 44 * s, 44 * s)
    p.fillPath(tile, QBrush(QColor("#1f2a44")))
    # Stacked bars: weights (blue), activations (orange), KV cache (green).
    heights = [(60, 40, 20), (60, 62, 28), (60, 84, 34), (60, 52, 24)]
    colours = [QColor("#4c78a8"), QColor("#f58518"), QColor("#54a24b")]
    base_y, bar_w, gap, x = 204 * s, 32 * s, 12 * s, 42 * s
    for stack in heights:
        y = base_y
        for value, colour in zip(stack, colours):
            h = value * s
            p.fillRect(QRectF(x, y - h, bar_w, h), colour)
            y -= h
        x += bar_w + gap
    # Lens: a ring with a handle, over the right bars.
    centre, radius = QPointF(158 * s, 104 * s), 50 * s
    p.setBrush(QColor(255, 255, 255, 60))
    p.setPen(QPen(QColor("#f2f2f2"), 12 * s))
    p.drawEllipse(centre, radius, radius)
    p.setPen(QPen(QColor("#f2f2f2"), 18 * s, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    p.drawLine(QPointF(194 * s, 140 * s), QPointF(226 * s, 172 * s))
    p.end()
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not draw(args.size).save(str(args.out)):
        print(f"could not write {args.out}", file=sys.stderr)
        return 1
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
