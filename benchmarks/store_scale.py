"""A long-lived run store: do 200 saved runs still list and open fast? Measured in one run.

Makes one real run of the demo model (generate, attention maps on, 100 Hz sampling), copies it
to ``--runs`` run files in a fresh store, then times: listing the store (``RunStore.list``),
listing it again with nothing changed
and with one file rewritten (the listing re-reads only changed files), opening one run
(``RunStore.load``) and its attention maps, the window's saved-runs table filled
with every summary, and the window showing one saved run. Goals: list ≤0.5 s, open ≤0.2 s,
table ≤0.5 s, window shows a run ≤0.5 s.

    QT_QPA_PLATFORM=offscreen python benchmarks/store_scale.py [--runs 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _median_s(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from engine.config import RunConfig
    from engine.runner import execute
    from engine.store import RunStore, clear_summary_cache

    root = Path(tempfile.mkdtemp(prefix="memlens-store-bench-"))
    try:
        store = RunStore(root)
        result = execute(RunConfig(model="demo", workload="generate", seq=64, new_tokens=32,
                                   repeats=1, sample_hz=100, attention_maps=True), store=store)
        assert result is not None, "the demo run failed"
        source = store.path_for(result.run_id)
        maps = store.attention_path(result.run_id)
        data = json.loads(source.read_text(encoding="utf-8"))
        for i in range(args.runs - 1):
            data["run_id"] = f"{result.run_id}-copy{i:04d}"
            data["created"] = f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}+00:00"
            store.path_for(data["run_id"]).write_text(json.dumps(data), encoding="utf-8")
            if maps.exists():
                shutil.copyfile(maps, store.attention_path(data["run_id"]))
        run_bytes = source.stat().st_size
        store_bytes = sum(p.stat().st_size for p in root.iterdir())

        list_s = _median_s(lambda: (clear_summary_cache(), store.list()))  # every file read
        store.list()
        cached_s = _median_s(store.list)  # nothing changed: one stat per file
        changed = store.path_for(f"{result.run_id}-copy0000")

        def one_changed() -> None:  # a label written by another window: that file is re-read
            changed.write_text(changed.read_text(encoding="utf-8"), encoding="utf-8")
            store.list()

        one_changed_s = _median_s(one_changed)
        summaries = store.list()
        assert len(summaries) == args.runs
        target = summaries[len(summaries) // 2].run_id
        open_s = _median_s(lambda: store.load(target))
        maps_s = _median_s(lambda: store.load_attention(target))

        from PySide6.QtCore import QSettings
        from PySide6.QtWidgets import QApplication

        from gui.main_window import MainWindow

        app = QApplication.instance() or QApplication([])
        window = MainWindow(store=store, devices=["cpu"],
                            settings=QSettings(str(root / "bench.ini"),
                                               QSettings.Format.IniFormat))
        window.resize(1400, 900)
        window.show()
        app.processEvents()
        table_s = _median_s(lambda: (window.saved_runs.set_summaries(summaries),
                                     app.processEvents()))
        show_s = _median_s(lambda: (window.load_saved_run(target), app.processEvents()))
        window.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    figures = {"runs": args.runs, "run_file_bytes": run_bytes, "store_bytes": store_bytes,
               "list_s": list_s, "list_cached_s": cached_s, "list_one_changed_s": one_changed_s,
               "open_s": open_s, "open_maps_s": maps_s,
               "table_fill_s": table_s, "window_show_run_s": show_s}
    print(f"{args.runs} runs, {run_bytes / 1024:.0f} KiB per run file "
          f"(+ attention maps), {store_bytes / 2**20:.1f} MiB in all")
    print(f"list the store: {list_s * 1e3:.0f} ms cold (goal ≤500); again with nothing changed "
          f"{cached_s * 1e3:.1f} ms, with one run rewritten {one_changed_s * 1e3:.1f} ms "
          f"(×{list_s / max(cached_s, 1e-9):.0f} faster than cold)")
    print(f"open one run: {open_s * 1e3:.1f} ms, its attention maps {maps_s * 1e3:.1f} ms "
          f"(goal ≤200 together)")
    print(f"window: fill the saved-runs table {table_s * 1e3:.0f} ms (goal ≤500), show one run "
          f"{show_s * 1e3:.0f} ms (goal ≤500)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
