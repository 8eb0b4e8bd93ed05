"""The Sweep & fit page: sweeps and fits run by the engine process, drawn point by point, the
estimated ones marked as such, saved as the CLI's JSON; bad input refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")  # engine-only installs (no Qt) skip this module

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from engine.estimate import estimate  # noqa: E402
from engine.store import RunStore  # noqa: E402
from engine.sweep import FitRecord, SweepRecord  # noqa: E402

from .helpers import tiny  # noqa: E402

pytestmark = pytest.mark.gui

ARTIFACTS = Path(__file__).parent / "_artifacts"  # gitignored


def distinct_colours(image) -> int:
    step = max(1, image.width() // 200)
    return len({image.pixel(x, y) for x in range(0, image.width(), step)
                for y in range(0, image.height(), step)})


def make_window(qtbot, tmp_path):
    from gui.main_window import MainWindow

    window = MainWindow(store=RunStore(tmp_path / "runs"), devices=["cpu"],
                        settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.resize(1300, 860)
    window.show()
    qtbot.waitExposed(window)
    window.controls.set_model("preset:tiny-llama")
    window.controls.set_workload("forward")
    return window


def run_and_wait(qtbot, window, start) -> tuple[list, list]:
    failures: list = []
    items: list = []
    window.controller.failed.connect(lambda *args: failures.append(args))
    window.controller.item.connect(items.append)
    with qtbot.waitSignal(window.controller.running_changed, timeout=5000):
        assert start()
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=180_000)
    return failures, items


@pytest.mark.slow
def test_a_sweep_runs_in_the_engine_process_and_draws_every_point(qtbot, tmp_path):
    from gui.panels.axis import placeholder_text

    window = make_window(qtbot, tmp_path)
    page = window.sweep_panel
    # before any sweep the charts say what they are for, with no 0-1 axes
    assert placeholder_text(page.memory_plot).startswith("No sweep yet")
    assert not page.memory_plot.getAxis("left").style["showValues"]
    page.seq_edit.setText("16,32,64")
    page.batch_edit.setText("1,2")
    page.estimate_check.setChecked(True)
    assert window.sweep_action.shortcut().toString() == "Ctrl+Shift+R"
    failures, items = run_and_wait(qtbot, window, lambda: qtbot.mouseClick(
        page.sweep_button, Qt.MouseButton.LeftButton) or window.controller.is_running)
    assert failures == []
    assert [type(e).__name__ for e in items] == ["PointDone"] * 6  # live, one per point
    assert window.workspace.currentWidget() is page
    record = page.record
    assert isinstance(record, SweepRecord) and len(record.points) == 6
    assert {p.kind for p in record.points} == {"estimate"}
    assert placeholder_text(page.memory_plot) == ""
    assert page.memory_plot.getAxis("left").style["showValues"]
    # ... and the view follows the curves (the placeholder's 0-1 range once stuck there)
    box = page.memory_plot.getViewBox()

    def shows_every_point() -> bool:
        box.prepareForPaint()  # pyqtgraph updates an auto range when it paints
        (x0, x1), (y0, y1) = box.viewRange()
        return x0 <= 16 and x1 >= 64 and y1 > 1
    qtbot.waitUntil(shows_every_point, timeout=3000)
    # the page shows what the engine recorded, labelled as estimates
    text = page.text()
    assert "6 ESTIMATED" in text and text.count("ESTIMATE |") == 6
    assert [page.table.item(r, 1).text() for r in range(3)] == ["16", "32", "64"]
    p = record.point(64, 2)
    assert p.peak_bytes == estimate(tiny(workload="forward", seq=64, batch=2)).totals.peak_bytes
    assert "sequence length" in page.memory_plot.getAxis("bottom").labelText
    assert len(page.legend.items) == 2  # one curve per batch
    # saved as the CLI's JSON
    out = window.save_sweep(tmp_path / "sweep.json")
    assert SweepRecord.from_dict(json.loads(out.read_text())) == record
    ARTIFACTS.mkdir(exist_ok=True)
    image = window.grab().toImage()
    assert image.save(str(ARTIFACTS / "sweep_page.png"))
    assert distinct_colours(image) > 100


@pytest.mark.slow
def test_what_fits_by_batch_from_the_window(qtbot, tmp_path):
    budget = estimate(tiny(workload="forward", seq=16, batch=3)).totals.peak_bytes + 1
    window = make_window(qtbot, tmp_path)
    page = window.sweep_panel
    page.seq_edit.setText("16")
    page.budget_edit.setText(str(budget))
    page.axis_combo.setCurrentIndex(page.axis_combo.findData("batch"))
    failures, items = run_and_wait(qtbot, window, window.run_fit)
    assert failures == []
    assert [type(e).__name__ for e in items] == ["FitDone"]
    record = page.record
    assert isinstance(record, FitRecord) and record.axis == "batch"
    a = record.answer_at(16)
    assert (a.batch, a.next_batch) == (3, 4)
    text = page.text()
    assert text.startswith("ESTIMATE — the largest batch")
    assert "batch 3" in text and "largest tested batch that fits at seq 16: 3" in text
    assert not page.latency_widget.isVisible()  # a fit has no latency to show
    # the table's columns: the binding part beside the largest part of the peak
    headers = [page.table.horizontalHeaderItem(c).text() for c in range(page.table.columnCount())]
    assert headers[6:8] == ["Binding", "Largest part"]
    assert page.table.item(0, 7).text() == "weights"
    # a batch axis has ticks at whole batches only
    axis = page.memory_plot.getAxis("bottom")
    low, high = page.memory_plot.getViewBox().viewRange()[0]
    values = [v for _, level in axis.tickValues(low, high, 600) for v in level]
    assert values and all(float(v).is_integer() for v in values), values
    ARTIFACTS.mkdir(exist_ok=True)
    assert window.grab().save(str(ARTIFACTS / "fit_page.png"))
    # a typing slip in the budget: refused above the answer, which stays and is named the
    # previous one (clearing it lost the search; keeping it silently passed it off as new)
    page.budget_edit.setText("banana")
    assert not window.run_fit()
    assert page.record is record and page.table.rowCount() > 0
    assert page.message.text().startswith("Not run: Cannot read the memory size")
    assert "Below, unchanged: the previous search. ESTIMATE — the largest batch" in \
        page.message.text()
    page.budget_edit.setText("bananas")  # again: the previous search is named once
    assert not window.run_fit()
    assert page.message.text().count("Below, unchanged") == 1
    page.budget_edit.setText(str(budget))
    assert FitRecord.from_dict(json.loads(window.save_sweep(tmp_path / "f.json").read_text())
                               ) == record
    # the inputs are remembered for the next session
    window.save_settings()
    assert window.settings.value("sweep/axis") == "batch"
    assert window.settings.value("sweep/budget") == str(budget)


@pytest.mark.fault(area="inputs", case="unreadable sweep lengths or fit budget typed in the "
                   "window", outcome="refused before any job starts; the status line names the "
                   "bad value and the accepted forms")
def test_bad_sweep_input_is_refused_before_anything_runs(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path)
    page = window.sweep_panel
    page.seq_edit.setText("12,x")
    assert not window.run_sweep()
    assert not window.controller.is_running
    assert "Cannot read 'x' in the Sequence lengths list" in window.status.text()
    assert "--" not in window.status.text()  # the window has fields, not options
    # the page says it too (it kept its previous result as if it were this one's)
    assert page.message.text().startswith("Not run: Cannot read 'x'")
    assert page.record is None and not page.save_button.isEnabled()  # no old result beneath
    page.seq_edit.setText("12,²")  # a digit to isdigit, not to int(): it raised a traceback
    assert not window.run_sweep()
    assert "Cannot read '²'" in window.status.text()
    page.seq_edit.setText("16")
    page.batch_edit.setText(" , ")
    assert not window.run_sweep()
    assert "The Batches list" in window.status.text() and "e.g. 1,2,4" in window.status.text()
    page.batch_edit.setText("1")
    page.budget_edit.setText("24 gigs")
    assert not window.run_fit()
    assert "Cannot read the memory size" in window.status.text()
    assert "24GiB" in window.status.text()  # the fix: the accepted forms
    assert "'ram'" in window.status.text()  # a budget also takes the words gpu and ram


@pytest.mark.fault(area="inputs", case="a sweep whose model cannot be loaded (window)",
                   outcome="the Sweep & fit page says it failed and why; the Current run page "
                           "is left as it was")
def test_a_failed_sweep_says_so_on_its_page_and_leaves_the_current_run_alone(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path)
    window.controls.set_model(str(tmp_path / "no-such-model"))
    window.sweep_panel.seq_edit.setText("16")
    before = window.totals.text()
    failures, _ = run_and_wait(qtbot, window, window.run_sweep)
    assert [f[0] for f in failures] == ["not_found"]
    text = window.sweep_panel.message.text()
    assert text.startswith("Failed: ") and "no-such-model" in text
    assert "running" not in text
    assert window.totals.text() == before  # not "The run failed" over a run that is not there


def test_a_training_sweep_names_the_step_phase_of_each_peak(qtbot):
    """A peak in the optimizer step is one the length and checkpointing do not move."""
    from engine.sweep import SweepPoint
    from gui.panels.sweep import SWEEP_COLUMNS, SweepPanel

    panel = SweepPanel()
    qtbot.addWidget(panel)
    record = SweepRecord(model="demo", workload="train", seqs=[32], batches=[1],
                         opt_sets=[{"label": "none", "optimizations": []}],
                         points=[SweepPoint(seq=32, batch=1, opt_set="none", kind="estimate",
                                            peak_bytes=1 << 20, peak_phase="optimizer")])
    panel.render_sweep(record)
    note = panel.table.item(0, SWEEP_COLUMNS.index("Note")).text()
    assert note.startswith("peak in the optimizer step"), note


def test_a_failed_search_leaves_the_page_in_its_plain_layout(qtbot):
    """A fit that failed left the fit's title, its columns and no latency chart beside
    "No sweep yet"."""
    from gui.panels.sweep import SWEEP_COLUMNS, SweepPanel

    panel = SweepPanel()
    qtbot.addWidget(panel)
    panel.start("fit", "Searching…")
    assert panel.latency_widget.isHidden()
    panel.clear("Failed: the budget is too small.")
    headers = [panel.table.horizontalHeaderItem(c).text()
               for c in range(panel.table.columnCount())]
    assert headers == list(SWEEP_COLUMNS)
    assert not panel.latency_widget.isHidden()
    assert panel.memory_plot.titleLabel.text == "Peak memory"
    assert panel.message.text() == "Failed: the budget is too small."


def test_a_fit_where_nothing_fits_is_not_shown_as_success(qtbot, tmp_path):
    """"What fits …: 1 answer(s)" was green when the answer was that the weights alone
    exceed the budget."""
    from engine.sweep import Budget, what_fits
    from gui.panels.status import HINT_COLOR, OK_COLOR

    from .helpers import tiny

    record = what_fits(tiny(workload="forward"), Budget(1024, "given", "1 KiB"), [1])
    assert record is not None and record.answers[0].status == "weights_exceed"
    window = make_window(qtbot, tmp_path)
    window.show_sweep(record)
    assert "nothing fits" in window.status.text()
    assert HINT_COLOR in window.status.label.text() and OK_COLOR not in window.status.label.text()
