"""Start the MemLens window: ``memlens`` with no subcommand calls :func:`main`.

``--screenshot PATH --quit-after-ms N`` grabs the window to a PNG after N ms and quits (for
tests and CI, with ``QT_QPA_PLATFORM=offscreen``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_SCREENSHOT_DELAY_MS = 500


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memlens", description="MemLens desktop window.")
    parser.add_argument("--model", default="demo",
                        help="model to preselect (demo, demo-encoder, preset:ID, a folder, ...)")
    parser.add_argument("--screenshot", type=Path, metavar="PATH",
                        help="save a PNG of the window, then quit")
    parser.add_argument("--quit-after-ms", type=int, metavar="N",
                        help="quit after N milliseconds (after the screenshot, if any)")
    parser.add_argument("--run", action="store_true",
                        help="start a run with the default settings at once; with --screenshot, "
                             "the picture is taken when the run ends")
    parser.add_argument("--workload", choices=("forward", "generate", "train"), default=None,
                        help="workload to preselect")
    parser.add_argument("--opt", action="append", default=[], metavar="ID[:key=value,...]",
                        help="optimization to preselect (repeatable)")
    parser.add_argument("--store", type=Path, default=None, metavar="DIR",
                        help="run store folder (default: $MEMLENS_HOME/runs or the user data "
                             "directory)")
    return parser


def _display_problem() -> str | None:
    """Why no window can open here (Linux without a display and no platform chosen), or None."""
    import os

    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("no display: DISPLAY and WAYLAND_DISPLAY are unset. Run under a desktop session, "
            "under Xvfb (xvfb-run -a memlens), or offscreen (QT_QPA_PLATFORM=offscreen memlens "
            "--screenshot out.png); the command line (memlens profile) needs no display")


def main(argv: Sequence[str] | None = None) -> int:
    """Create the application and window, run the event loop; returns the exit code."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    problem = _display_problem()
    if problem is not None:
        print(f"memlens: cannot open the window: {problem}.", file=sys.stderr)
        return 1

    store = None
    if args.store is not None:  # an unusable folder is reported where it is used, as by default
        from engine.store import RunStore

        store = RunStore(args.store)
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "memlens"])
    app.setApplicationName("MemLens")
    app.setOrganizationName("MemLens")
    settings = None
    scripted = args.screenshot is not None or args.quit_after_ms is not None
    if scripted:
        # A scripted window (tests, CI, reports) neither reads nor writes the user's settings:
        # its pictures must not depend on them, and it must not leave its offscreen geometry.
        import tempfile

        from PySide6.QtCore import QSettings

        scratch = tempfile.TemporaryDirectory(prefix="memlens-settings-")
        settings = QSettings(str(Path(scratch.name) / "memlens.ini"), QSettings.Format.IniFormat)
    window = MainWindow(model=args.model, settings=settings, store=store)
    if args.workload:
        window.controls.set_workload(args.workload)
    for spec in args.opt:
        problem = window.controls.optimizations.preselect(spec)
        if problem:
            print(f"memlens: --opt {spec}: {problem}", file=sys.stderr)
            return 2
    window.show()
    from . import preload

    QTimer.singleShot(0, window, preload.start)  # after the window's first paint

    status = {"code": 0}
    delay = args.quit_after_ms
    if delay is None and args.screenshot is not None:
        delay = DEFAULT_SCREENSHOT_DELAY_MS

    def finish() -> None:
        if args.screenshot is not None:
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            if not window.grab().save(str(args.screenshot)):
                print(f"memlens: could not write the screenshot {args.screenshot}",
                      file=sys.stderr)
                status["code"] = 1
        # ``exit`` leaves the loop directly. ``quit`` also goes through the platform, which
        # queues a second Quit event; delivered outside ``exec`` it makes every later event loop
        # in this process return at once (it matters when main() runs inside a test session).
        app.exit(0)

    if args.run:
        window.controller.running_changed.connect(
            lambda running: None if running else QTimer.singleShot(
                max(delay or 0, 300), window, finish) if args.screenshot else None)
        QTimer.singleShot(0, window, lambda: window.start_run(window.controls.config()))
    elif delay is not None:
        QTimer.singleShot(max(delay, 0), window, finish)
    code = app.exec()
    # Close (which stops a running job) without an automatic quit request, for the same reason.
    quit_on_close = app.quitOnLastWindowClosed()
    app.setQuitOnLastWindowClosed(False)
    window.close()
    app.setQuitOnLastWindowClosed(quit_on_close)
    window.deleteLater()
    preload.stop()
    if scripted:
        scratch.cleanup()
    return status["code"] or int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
