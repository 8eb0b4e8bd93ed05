"""The ``memlens`` command: the window without a subcommand, the headless CLI with one
(``report``, which renders the app's panels offscreen, goes to ``gui.report``).

It lives here rather than in ``engine`` so that the engine never imports Qt or ``gui``; a
headless machine (a GPU box without PySide6) still runs every subcommand, because this module
imports Qt only on the window's path.

``memlens --self-test`` checks an installation end to end (the packaged app's smoke test, see
:func:`self_test`). This module is also the frozen (PyInstaller) app's entry point
(``packaging/memlens.spec``), so :func:`main` starts with ``multiprocessing.freeze_support()``:
the window runs the engine in a process started with the "spawn" method, which in a frozen app
re-executes this same executable with multiprocessing's arguments.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    # First of all: in a frozen app this turns a spawned child (the engine process, or
    # multiprocessing's resource tracker) into that child and never returns. Unfrozen on Linux
    # it does nothing.
    multiprocessing.freeze_support()
    argv = sys.argv[1:] if argv is None else list(argv)
    if SELF_TEST_OPTION in argv:
        return self_test(argv)

    from engine.cli import error, main as cli_main, split_store, wants_window

    index = _subcommand_index(argv)
    if index is not None and argv[index] in QT_SUBCOMMANDS:
        # ``report`` renders the panels with Qt, so it lives in gui, not in engine.cli.
        rest = argv[:index] + argv[index + 1:]
        try:
            from gui.report import main as report_main
        except ImportError as exc:
            error(f"memlens report cannot start: {exc}.",
                  f"{INSTALL_HINT}; `memlens export` needs no Qt.")
            return 1
        return report_main(rest)
    if not wants_window(argv):
        return cli_main(argv)
    if "--version" in argv:  # (`memlens --model demo --version` went to the window's parser)
        return cli_main(["--version"])
    try:
        from gui.app import main as window_main
    except ImportError as exc:
        error(f"The desktop app cannot start: {exc}.",
              f"{INSTALL_HINT}; the command line (memlens profile) works without them.")
        return 1
    # The global ``--store DIR`` goes to the window too (its saved runs and new runs).
    store_words, argv = split_store(argv)
    argv = argv[1:] if argv and argv[0] == "gui" else argv
    return window_main(argv + store_words)


INSTALL_HINT = ("Install MemLens with its dependencies (in the checkout: pip install "
                "torch==2.13.0 -e ., as README's 'Install, start, test' says) and, on Linux, the "
                "Qt system libraries that .ci/run installs with apt-get")
# Subcommands that the launcher runs itself instead of ``engine.cli`` (they need Qt).
QT_SUBCOMMANDS = ("report",)
SELF_TEST_OPTION = "--self-test"
SELF_TEST_TIMEOUT_S = 300.0
# The profile the self-test runs: short, on the CPU, through the engine process.
SELF_TEST_CONFIG = {"model": "demo", "workload": "forward", "batch": 1, "seq": 32,
                    "device": "cpu", "dtype": "auto", "repeats": 1, "attention_maps": False,
                    "optimizations": [], "label": "self-test"}


def _subcommand_index(argv: list[str]) -> int | None:
    """Where the subcommand is in ``argv`` (the first word after the global ``--store DIR``),
    or None when ``argv`` starts with window options or is empty."""
    from engine.cli import split_store

    i = len(split_store(argv)[0])
    return i if i < len(argv) and not argv[i].startswith("-") else None


# -- memlens --self-test ------------------------------------------------------------------------
class SelfTestFailed(Exception):
    """A self-test step failed; the message says what and how to fix it."""


def _self_test_parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="memlens --self-test",
        description="Check this installation end to end, offscreen: load the demo model, run a "
                    "short profile in the engine process, save the run into a temporary store, "
                    "take a screenshot of the window and check it is not blank. Exits 0 when "
                    "every step passed, 1 with the failing step's message otherwise.")
    parser.add_argument(SELF_TEST_OPTION, action="store_true", required=True)
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="keep the store, settings and screenshot in DIR (default: a "
                             "temporary folder, removed at the end)")
    parser.add_argument("--timeout", type=float, default=SELF_TEST_TIMEOUT_S, metavar="S",
                        help=f"fail when the run has not ended after S seconds "
                             f"(default {SELF_TEST_TIMEOUT_S:.0f})")
    return parser


def image_problem(image: Any, min_colours: int = 8) -> str | None:
    """Why a ``QImage`` looks blank (null, tiny, one flat colour, hardly any distinct colours),
    or ``None`` when it has real content. Samples a grid of up to 200 × 200 pixels."""
    if image.isNull() or image.width() < 50 or image.height() < 50:
        return f"the image is empty ({image.width()} × {image.height()})"
    step_x = max(1, image.width() // 200)
    step_y = max(1, image.height() // 200)
    colours: dict[int, int] = {}
    for y in range(0, image.height(), step_y):
        for x in range(0, image.width(), step_x):
            rgb = image.pixel(x, y) & 0xFFFFFF
            colours[rgb] = colours.get(rgb, 0) + 1
    total = sum(colours.values())
    dominant = max(colours.values())
    if len(colours) < min_colours:
        return f"only {len(colours)} distinct colours in {total} sampled pixels"
    if dominant > 0.995 * total:
        return f"{dominant / total:.1%} of the sampled pixels have one colour"
    return None


def text_renders() -> bool:
    """Whether the application font draws letters as letters: with no font found, Qt draws
    every character as the same box, so "A" and "W" give identical pictures. Needs a
    ``QGuiApplication``."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QFont, QGuiApplication, QImage, QPainter

    font = QFont(QGuiApplication.font())
    font.setPixelSize(32)
    pictures = []
    for letter in ("A", "W", "o"):
        image = QImage(48, 48, QImage.Format.Format_RGB32)
        image.fill(Qt.GlobalColor.white)
        painter = QPainter(image)
        painter.setFont(font)
        painter.setPen(Qt.GlobalColor.black)
        painter.drawText(image.rect(), Qt.AlignmentFlag.AlignCenter, letter)
        painter.end()
        pictures.append(image)
    return len({bytes(image.constBits()) for image in pictures}) == len(pictures)


def self_test(argv: list[str]) -> int:
    """``memlens --self-test``: the installation's end-to-end check (see the parser's text).

    Every step goes through the real paths: the window (offscreen), its controller and worker
    thread, the engine in its own process (``engine.server``, started as the window starts it),
    a folder-backed run store. It prints one line per step and exits non-zero with the failing
    step's message. Works the same from a source checkout and from the frozen bundle."""
    import os
    import shutil
    import tempfile
    import threading

    args = _self_test_parser().parse_args(argv)
    started = time.monotonic()
    try:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            folder = args.out.resolve()
        else:
            folder = Path(tempfile.mkdtemp(prefix="memlens-self-test-"))
    except OSError as exc:
        print(f"memlens self-test FAILED: no work folder: {exc}", file=sys.stderr)
        return 1
    # Offscreen unless the caller chose a platform; the self-test never needs a display.
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo model is local; never reach a hub
    # The self-test checks the engine *process* (what the window uses), never the thread mode.
    os.environ.pop("MEMLENS_ENGINE", None)
    os.environ["MEMLENS_HOME"] = str(folder)  # the engine process inherits it

    # If Qt or the engine hangs in a way the event loop cannot see, still end with a message.
    def give_up() -> None:
        print(f"memlens self-test FAILED: no answer after {args.timeout + 60:.0f} s; "
              "the process is stopped", file=sys.stderr, flush=True)
        os._exit(3)

    watchdog = threading.Timer(args.timeout + 60, give_up)
    watchdog.daemon = True
    watchdog.start()

    step_name = "start"

    def step(name: str, detail: str = "") -> None:
        nonlocal step_name
        step_name = name
        print(f"[{time.monotonic() - started:6.1f} s] {name}{': ' + detail if detail else ''}",
              flush=True)

    frozen = bool(getattr(sys, "frozen", False))
    print(f"memlens self-test: {'frozen app' if frozen else 'Python'} {sys.executable}, "
          f"Python {sys.version.split()[0]}, platform {sys.platform}, "
          f"QT_QPA_PLATFORM={os.environ['QT_QPA_PLATFORM']}, work folder {folder}", flush=True)
    window = None
    app = None
    try:
        window, app = _self_test_steps(args, folder, step)
        print(f"memlens self-test passed in {time.monotonic() - started:.1f} s", flush=True)
        return 0
    except SelfTestFailed as exc:
        print(f"memlens self-test FAILED at step '{step_name}': {exc}", file=sys.stderr,
              flush=True)
        return 1
    except Exception as exc:  # an unexpected error is a failure with its traceback
        import traceback

        traceback.print_exc()
        print(f"memlens self-test FAILED at step '{step_name}': {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        return 1
    finally:
        _self_test_close(window, app)
        watchdog.cancel()
        if args.out is None:
            shutil.rmtree(folder, ignore_errors=True)


def _self_test_steps(args: Any, folder: Path, step: Any) -> tuple[Any, Any]:
    """The self-test's steps; raises :class:`SelfTestFailed` with a message on a failure.
    Returns the window and the application so the caller closes them whatever happens."""
    import os

    step("import Qt")
    try:
        from PySide6.QtCore import QEventLoop, QSettings, QTimer
        from PySide6.QtGui import QFontDatabase
        from PySide6.QtWidgets import QApplication
    except ImportError as exc:
        raise SelfTestFailed(f"Qt does not load: {exc}. On Linux install the runtime libraries "
                             "(README: libgl1 libegl1 fonts-dejavu-core fontconfig-config).") \
            from exc

    # Settings go to the work folder, never the user's.
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(folder / "settings"))
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "memlens"])
    app.setApplicationName("MemLens")
    app.setOrganizationName("MemLens")
    families = QFontDatabase.families()
    if not families or not text_renders():
        raise SelfTestFailed(
            f"Qt finds no usable font ({len(families)} font families, and different letters "
            "are drawn identically): every label would be drawn as boxes. Install fonts and "
            "fontconfig's configuration (Debian, Ubuntu: fonts-dejavu-core fontconfig-config).")
    step("Qt", f"{app.platformName()} platform, {len(families)} font families, "
               f"text renders ({app.font().family()})")

    step("open the window")
    from engine.store import RunStore

    from . import preload
    from .main_window import MainWindow

    store = RunStore(folder / "runs")
    window = MainWindow(store=store, model="demo")
    window.show()
    preload.start()  # as the window does: the engine process starts and warms up

    step("run a short profile in the engine process",
         ", ".join(f"{k} {v}" for k, v in SELF_TEST_CONFIG.items()
                   if k in ("model", "workload", "batch", "seq", "device")))
    config = dict(window.controls.config())
    config.update(SELF_TEST_CONFIG)
    outcome: dict[str, Any] = {}
    loop = QEventLoop()
    window.controller.finished.connect(lambda result: outcome.setdefault("result", result))
    window.controller.failed.connect(
        lambda kind, message, hint: outcome.setdefault("failed", (kind, message, hint)))
    window.controller.running_changed.connect(lambda running: None if running else loop.exit(0))
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(lambda: loop.exit(1))
    timer.start(int(args.timeout * 1000))
    if not window.start_run(config):
        raise SelfTestFailed("the window refused to start the run")
    timed_out = loop.exec() == 1
    timer.stop()
    if timed_out:
        raise SelfTestFailed(f"the run did not end within {args.timeout:.0f} s")
    if "failed" in outcome:
        kind, message, hint = outcome["failed"]
        raise SelfTestFailed(f"the run failed ({kind}): {message} {hint}".strip())
    result = outcome.get("result")
    if result is None:
        raise SelfTestFailed("the run ended without a result")

    import engine.server as server

    engine = server._shared
    if engine is None or not engine.alive or engine.pid in (None, os.getpid()):
        raise SelfTestFailed("the run did not go through the engine process")
    totals = result.totals
    if not result.layers or totals.peak_bytes <= 0 or not totals.reconciles():
        raise SelfTestFailed(f"implausible result: {len(result.layers)} layers, peak "
                             f"{totals.peak_bytes} B, reconciles {totals.reconciles()}")
    step("result", f"engine process pid {engine.pid} (window pid {os.getpid()}), "
                   f"{result.model_info.get('architecture', '?')}, {len(result.layers)} layers, "
                   f"peak {totals.peak_bytes} B = attributed {totals.attributed_bytes} + "
                   f"unattributed {totals.unattributed_bytes}, {result.duration_s:.2f} s")

    step("check the saved run")
    runs = [summary.run_id for summary in RunStore(folder / "runs").list()]
    if result.run_id not in runs:
        raise SelfTestFailed(f"run {result.run_id!r} is not in the store {folder / 'runs'} "
                             f"(it lists {runs})")
    loaded = RunStore(folder / "runs").load(result.run_id)
    if loaded.totals.peak_bytes != totals.peak_bytes:
        raise SelfTestFailed("the saved run does not read back as it was measured")
    step("saved run", f"{result.run_id} in {folder / 'runs'}")

    step("screenshot")
    wait = QEventLoop()
    QTimer.singleShot(500, lambda: wait.exit(0))  # the last repaints after the result
    wait.exec()
    shot = folder / "self-test.png"
    image = window.grab().toImage()
    if not image.save(str(shot)):
        raise SelfTestFailed(f"could not write {shot}")
    problem = image_problem(image)
    if problem is not None:
        raise SelfTestFailed(f"the window's screenshot looks blank: {problem} ({shot})")
    chart_problem = image_problem(window.chart.grab().toImage(), min_colours=4)
    if chart_problem is not None:
        raise SelfTestFailed(f"the memory chart looks blank: {chart_problem}")
    step("screenshot", f"{image.width()} × {image.height()} px, not blank, {shot}")
    return window, app


def _self_test_close(window: Any, app: Any) -> None:
    """Close the window (stops its worker thread) and the engine process."""
    if window is not None:
        app.setQuitOnLastWindowClosed(False)
        window.close()
        window.deleteLater()
    if "gui.preload" in sys.modules:
        sys.modules["gui.preload"].stop()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
