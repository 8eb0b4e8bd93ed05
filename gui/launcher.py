"""The ``memlens`` command: the window without a subcommand, the headless CLI with one.

It lives here rather than in ``engine`` so that the engine never imports Qt or ``gui``; a
headless machine (a GPU box without PySide6) still runs every subcommand, because this module
imports Qt only on the window's path.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from engine.cli import error, main as cli_main, wants_window

    argv = sys.argv[1:] if argv is None else list(argv)
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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
