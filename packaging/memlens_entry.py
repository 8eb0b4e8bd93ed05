"""The frozen app's entry point (PyInstaller runs this file as ``__main__``).

``freeze_support()`` comes first: the window starts its engine process with multiprocessing's
"spawn" method, which in a frozen app runs this same executable again with multiprocessing's
arguments; PyInstaller's version of ``freeze_support`` turns such a run into the engine process
(or the resource tracker) and never returns. Everything else is ``gui.launcher.main`` (the
``memlens`` command of a pip install).
"""

import multiprocessing

multiprocessing.freeze_support()

import sys  # noqa: E402

from gui.launcher import main  # noqa: E402

sys.exit(main())
