"""Shared test setup: Qt always runs offscreen (no display on CI or build machines)."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
