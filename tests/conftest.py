"""Shared test setup: Qt always runs offscreen (no display on CI or build machines)."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# No test may reach a model hub: every Hub lookup runs in offline mode.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_qt_settings(tmp_path_factory):
    """Every test gets its own QSettings folder (never the user's), and a GUI test fails if it
    leaves an engine QThread running or a QTimer active on a window it created."""
    try:
        from PySide6.QtCore import QSettings
    except ImportError:  # engine-only installs
        yield
        return
    folder = tmp_path_factory.mktemp("qsettings")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder))
    yield
    import sys

    if "gui.controller" not in sys.modules:
        return
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from gui.controller import live_threads

    running = [t for t in live_threads() if t.isRunning()]
    assert not running, f"{len(running)} engine QThread(s) left running by the test"
    app = QApplication.instance()
    if app is not None:
        active = [t for w in app.topLevelWidgets() if w.isVisible()
                  for t in w.findChildren(QTimer) if t.isActive()]
        assert not active, f"QTimer(s) left active: {[t.objectName() or t for t in active]}"
