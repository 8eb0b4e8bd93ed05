"""The ``memlens`` command: the window without a subcommand, the headless CLI with one
(``report``, which renders the app's panels offscreen, goes to ``gui.report``).

It lives here rather than in ``engine`` so that the engine never imports Qt or ``gui``; a
headless machine (a GPU box without PySide6) still runs every subcommand, because this module
imports Qt only on the window's path.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from engine.cli import error, main as cli_main, wants_window

    argv = sys.argv[1:] if argv is None else list(argv)
    index = _subcommand_index(argv)
    if index is not None and argv[index] in QT_SUBCOMMANDS:
        # ``report`` renders the panels with Qt, so it lives in gui, not in engine.cli.
        rest = argv[:index] + argv[index + 1:]
        try:
            from gui.report import main as report_main
        except ImportError as exc:
            error(f"memlens report cannot start: {exc}.",
                  "Install the GUI dependencies (pip install memlens) and, on Linux, the Qt "
                  "system libraries listed in README.md; `memlens export` needs no Qt.")
            return 1
        return report_main(rest)
    if not wants_window(argv):
        return cli_main(argv)
    try:
        from gui.app import main as window_main
    except ImportError as exc:
        error(f"The desktop app cannot start: {exc}.",
              "Install the GUI dependencies (pip install memlens) and, on Linux, the Qt system "
              "libraries listed in README.md; the command line (memlens profile) works without "
              "them.")
        return 1
    return window_main(argv[1:] if argv and argv[0] == "gui" else argv)


# Subcommands that the launcher runs itself instead of ``engine.cli`` (they need Qt).
QT_SUBCOMMANDS = ("report",)


def _subcommand_index(argv: list[str]) -> int | None:
    """Where the subcommand is in ``argv`` (the first word after the global ``--store DIR``),
    or None when ``argv`` starts with window options or is empty."""
    i = 0
    while i < len(argv) and argv[i] == "--store":
        i += 2
    if i < len(argv) and argv[i].startswith("--store="):
        i += 1
    return i if i < len(argv) and not argv[i].startswith("-") else None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
