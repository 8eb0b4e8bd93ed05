"""Shared test setup: Qt always runs offscreen (no display on CI or build machines)."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# No test may reach a model hub: every Hub lookup runs in offline mode.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
