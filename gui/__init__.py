"""MemLens desktop GUI: a thin Qt layer over ``engine`` (which never imports Qt).

* ``app.main`` starts the window; ``main_window.MainWindow`` composes the panels.
* ``controller.RunController`` owns the worker thread; ``worker.EngineWorker`` turns engine events
  into Qt signals (the only bridge between the engine and Qt).
* ``panels/``: one module per panel; panels render engine records and never measure.
* ``format`` and ``aggregate``: Qt-free helpers (human-readable figures, per-block grouping).
"""
