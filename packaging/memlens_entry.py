"""The frozen app's entry point (PyInstaller runs this file as ``__main__``).

``freeze_support()`` comes first: the window starts its engine process with multiprocessing's
"spawn" method, which in a frozen app runs this same executable again with multiprocessing's
arguments; PyInstaller's version of ``freeze_support`` turns such a run into the engine process
(or the resource tracker) and never returns. Two hidden first arguments run PyTorch's launcher
and a distributed worker (``memlens profile --distributed``). Everything else is
``gui.launcher.main`` (the ``memlens`` command of a pip install).
"""

import multiprocessing

multiprocessing.freeze_support()

import sys  # noqa: E402

# `memlens profile --distributed N` (engine.distributed_run.launcher_command): this executable
# runs PyTorch's launcher, which starts this executable again on every rank as a worker.
if sys.argv[1:2] == ["--memlens-torchrun"]:
    from torch.distributed.run import main as torchrun

    sys.exit(torchrun(sys.argv[2:]))
if sys.argv[1:2] == ["--memlens-distributed-worker"]:
    from engine.distributed_run import main as worker

    sys.exit(worker(sys.argv[2:]))

from gui.launcher import main  # noqa: E402

sys.exit(main())
