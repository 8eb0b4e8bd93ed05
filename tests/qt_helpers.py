"""Helpers for GUI tests (imports Qt: engine tests do not use this module)."""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QImage


def distinct_colours(image: QImage) -> int:
    """How many different colours a rendered image has (a blank window has very few)."""
    image = image.convertToFormat(QImage.Format.Format_RGB32)
    width, height = image.width(), image.height()
    pixels = np.frombuffer(image.constBits(), dtype=np.uint32,
                           count=image.bytesPerLine() * height // 4)
    pixels = pixels.reshape(height, image.bytesPerLine() // 4)[:, :width]
    return int(np.unique(pixels).size)
