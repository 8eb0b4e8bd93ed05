"""GUI tests: runs table and compare view, baseline outlines, model tree, chart options, menus,
settings, themes, run files and PNG export (offscreen, fake engine, real run store)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from engine.config import RunConfig  # noqa: E402
from engine.format import human_bytes  # noqa: E402
from engine.store import RunStore  # noqa: E402

from .qt_helpers import distinct_colours  # noqa: E402
from .test_gui import (  # noqa: E402
    MIB,
    FakeEngine,
    click_run,
    make_result,
    make_window,
    wait_idle,
)

pytestmark = pytest.mark.gui


from gui.panels.saved_runs import COLUMNS as RUN_COLUMNS  # noqa: E402

PEAK_COLUMN = [c[0] for c in RUN_COLUMNS].index("Peak")
KIND_COLUMN = [c[0] for c in RUN_COLUMNS].index("Kind")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLENS_HOME", str(tmp_path / "home"))


def optimized(run_id: str, factor: float = 0.5, perplexity: float | None = 31.5):
    """``make_result`` with every block's weights scaled: a fake "optimized" run."""
    result = make_result(run_id)
    removed = 0
    for layer in result.layers:
        if "weights" in layer.at_peak and ".layers." in layer.name:
            new = int(layer.at_peak["weights"] * factor)
            removed += layer.at_peak["weights"] - new
            layer.at_peak["weights"] = new
    t = result.totals
    t.attributed_bytes -= removed
    t.peak_bytes -= removed
    t.plain_latency_ms = 3.0
    result.optimizations = [{"id": "int8-dynamic", "name": "int8", "params": {}}]
    result.quality = {"perplexity": perplexity, "kl_divergence": 0.01}
    result.created = "2025-01-02T04:00:00"
    return result


def reference(run_id: str = "ref"):
    result = make_result(run_id)
    result.totals.plain_latency_ms = 4.0
    result.quality = {"perplexity": 31.0}
    return result


@pytest.fixture
def real_store(tmp_path) -> RunStore:
    store = RunStore(tmp_path / "runs")
    store.save(reference("ref"))
    store.save(optimized("opt"))
    return store


def test_runs_table_shows_optimizations_and_quality_and_sorts(qtbot, real_store):
    window = make_window(qtbot, FakeEngine(), real_store)
    panel = window.saved_runs
    assert set(panel.run_ids()) == {"ref", "opt"}
    model = panel.view.model()
    headers = [model.headerData(c, Qt.Orientation.Horizontal) for c in range(model.columnCount())]
    assert headers == ["Created", "Model", "Label", "Workload", "Input", "Kind",
                       "Peak", "Latency", "Optimizations", "Device", "Quality"]
    col = {title: i for i, title in enumerate(headers)}
    rows = {model.index(r, 0).data(Qt.ItemDataRole.UserRole):
            [model.index(r, c).data() for c in range(model.columnCount())]
            for r in range(model.rowCount())}
    assert rows["opt"][col["Optimizations"]] == "int8-dynamic"
    assert rows["ref"][col["Optimizations"]] == "none"
    assert rows["opt"][col["Kind"]] == rows["ref"][col["Kind"]] == "measured"
    assert rows["opt"][col["Quality"]].startswith("KL 0.01")
    assert rows["ref"][col["Quality"]] == "ppl 31.00"
    assert rows["ref"][col["Input"]].startswith("b1 s")  # a sweep's runs differ by it alone
    panel.view.sortByColumn(col["Peak"], Qt.SortOrder.AscendingOrder)  # numerically
    assert panel.run_ids() == ["opt", "ref"]
    panel.view.sortByColumn(col["Peak"], Qt.SortOrder.DescendingOrder)
    assert panel.run_ids() == ["ref", "opt"]
    # Compare needs two selected runs; Open and Use as baseline need exactly one.
    panel.select(["ref"])
    assert panel.open_button.isEnabled() and not panel.compare_button.isEnabled()
    panel.select(["ref", "opt"])
    assert panel.compare_button.isEnabled() and not panel.open_button.isEnabled()


def test_compare_view_draws_each_run_and_the_scatter(qtbot, real_store, tmp_path):
    window = make_window(qtbot, FakeEngine(), real_store)
    panel = window.saved_runs
    panel.view.sortByColumn(PEAK_COLUMN, Qt.SortOrder.DescendingOrder)  # ref first
    compare = window.compare_panel
    # Before a comparison, the charts say what they will show (no 0-1 axes meaning nothing)
    assert "No comparison yet" in compare.empty_text()
    assert not compare.bars_plot.getAxis("left").style["showValues"]
    panel.select(["ref", "opt"])
    qtbot.mouseClick(panel.compare_button, Qt.MouseButton.LeftButton)
    assert compare.empty_text() == "" and compare.bars_plot.getAxis("left").style["showValues"]
    assert window.workspace.currentWidget() is window.runs_tab
    c = compare.comparison
    assert c is not None and [r.run_id for r in c.runs] == ["ref", "opt"]
    # What is drawn: each run's bars plus unattributed add up to its peak.
    for i, run in enumerate(c.runs):
        assert np.nansum(compare.heights[i]) * MIB == pytest.approx(run.totals.peak_bytes)
    assert compare.labels[-1] == "unattributed"
    compare.delta_check.setChecked(True)
    deltas = compare.heights[1]
    assert deltas[0] == 0 and (deltas[1:3] < 0).all()  # embeddings same, blocks smaller
    assert compare.table.rowCount() == 2
    assert compare.table.item(1, 3).text().startswith("−")  # Δ peak of the optimized run
    assert compare.table.item(1, 6).text() == "×0.75"  # 3 ms against 4 ms
    # Perplexity is the shared quality metric: two points, none left out.
    xs, ys = compare.scatter.getData()
    assert len(xs) == 2 and sorted(ys) == [31.0, 31.5]
    assert "lower is better" in compare.scatter_note.text()
    window.resize(1400, 900)
    window.workspace.setCurrentWidget(window.runs_tab)
    path = tmp_path / "compare.png"
    assert window.save_png(path, window.runs_tab)
    image = QImage(str(path))
    assert distinct_colours(image) > 40
    image.save(str(tmp_path.parent / "compare-view.png"))


def test_compare_puts_the_unoptimized_run_or_the_chosen_baseline_first(qtbot, real_store):
    """The reference is what "what did each optimization change" reads against: the chosen
    baseline if selected, else the unoptimized run, whatever the table's order."""
    window = make_window(qtbot, FakeEngine(), real_store)
    panel = window.saved_runs
    for order in (Qt.SortOrder.AscendingOrder, Qt.SortOrder.DescendingOrder):
        panel.view.sortByColumn(PEAK_COLUMN, order)
        panel.select(["ref", "opt"])
        assert window.compare_saved_runs(panel.selected_ids())
        assert [r.run_id for r in window.compare_panel.comparison.runs] == ["ref", "opt"]
        assert "ref is the reference (the first unoptimized run)" in \
            window.compare_panel.message.text()
    assert window.set_baseline_run("opt")
    assert window.compare_saved_runs(["ref", "opt"])
    assert [r.run_id for r in window.compare_panel.comparison.runs] == ["opt", "ref"]
    assert "(the chosen baseline)" in window.compare_panel.message.text()
    # the status says so (it kept the last action's line)
    assert window.status.text() == "Comparing 2 runs against opt (the chosen baseline)."


def test_compare_without_a_shared_quality_metric_says_so(qtbot, tmp_path):
    store = RunStore(tmp_path / "runs")
    a, b = make_result("a"), optimized("b", perplexity=None)
    b.quality = {"cosine_similarity": 0.99}
    store.save(a)
    store.save(b)
    window = make_window(qtbot, FakeEngine(), store)
    assert window.compare_saved_runs(["a", "b"])
    assert window.compare_panel.scatter.getData()[0].size == 0
    note = window.compare_panel.scatter_note.text()
    assert "Nothing is plotted" in note
    assert "[1] has cosine similarity" in note, note  # what each holds, not a fixed reason
    # an estimate beside a measured run: said to be the estimate, not "needs a tokenizer"
    est = make_result("c")
    est.estimate = {"method": "fake"}
    est.quality = None
    store.save(est)
    measured = make_result("d")
    measured.quality = {"perplexity": 28.46}
    store.save(measured)
    assert window.compare_saved_runs(["d", "c"])
    note = window.compare_panel.scatter_note.text()
    assert "[1] is an estimate" in note and "only [0] has perplexity" in note, note
    assert "tokenizer" not in note, note


def test_baseline_outline_from_a_saved_run_and_from_the_same_run(qtbot, real_store):
    window = make_window(qtbot, FakeEngine(), real_store)
    assert window.load_saved_run("opt")
    assert window.chart.outline is None  # no same-run baseline in this record
    assert window.set_baseline_run("ref")
    outline = window.chart.outline
    assert outline is not None and window.chart.outline_label == "baseline: ref"
    ref_groups = reference().layers
    from engine.aggregate import group_layers

    expected = [g.total_bytes / MIB for g in group_layers(ref_groups)]
    assert list(outline[:-1]) == pytest.approx(expected)
    assert outline[-1] == pytest.approx(reference().totals.unattributed_bytes / MIB)
    assert "baseline: ref" in window.chart.hover_text(1)
    window.set_baseline_run("")
    assert window.chart.outline is None
    # A run with a same-run baseline draws it without any choice.
    result = optimized("with-baseline")
    result.baseline = {"layers": {layer.name: {"at_peak_bytes": layer.at_peak_bytes * 2}
                                  for layer in result.layers}}
    window.render_result(result)
    assert window.chart.outline_label == "unoptimized (same run)"
    assert window.chart.outline[0] == pytest.approx(2 * 2 * MIB / MIB)


def test_chart_category_toggles_log_scale_and_exact_hover(qtbot):
    window = make_window(qtbot, FakeEngine())
    window.render_result(make_result())
    chart = window.chart
    assert set(chart._toggles) >= {"weights", "activations", "unattributed"}
    assert chart._bars["weights"].isVisible()
    chart._toggles["weights"].setChecked(False)
    assert not chart._bars["weights"].isVisible() and "weights" in chart.hidden
    text = chart.hover_text(0)
    assert "weights: 2.00 MiB (2,097,152 bytes) (hidden)" in text
    chart._toggles["weights"].setChecked(True)
    chart.log_check.setChecked(True)
    opts = chart._bars["weights"].opts
    assert max(np.asarray(opts["y0"]) + np.asarray(opts["height"])) == pytest.approx(
        np.log10(2.0), abs=1.0)  # log10 of MiB
    ticks = chart.plot.getAxis("left")._tickLevels
    assert ticks and any(label == "1" for _, label in ticks[0])
    chart.log_check.setChecked(False)
    assert chart.plot.getAxis("left")._tickLevels is None


def test_model_tree_shows_modules_and_what_changed_them(qtbot):
    window = make_window(qtbot, FakeEngine())
    result = make_result()
    result.model_info["module_tree"] = {
        "modules": [
            {"name": "", "type": "LlamaForCausalLM", "parameters": 100, "weights_bytes": 400,
             "dtypes": ["float32"], "devices": ["cpu"], "trainable": 100, "touched_by": []},
            {"name": "model", "type": "LlamaModel", "parameters": 100, "weights_bytes": 400,
             "dtypes": ["float32"], "devices": ["cpu"], "trainable": 100, "touched_by": []},
            {"name": "model.q_proj", "type": "Linear", "class_path": "torch.ao.Linear",
             "parameters": 0, "weights_bytes": 100, "dtypes": ["qint8"], "devices": ["cpu"],
             "trainable": 0, "touched_by": ["int8-dynamic"]},
            {"name": "model.norm", "type": "LlamaRMSNorm", "parameters": 8,
             "weights_bytes": 32, "dtypes": ["float32"], "devices": ["cpu"], "trainable": 8,
             "touched_by": []},
        ],
        "whole_run": ["autocast"], "behaviour_only": {"attention": 6}}
    result.model_info["parameters"] = 2_621_440  # before int8 packed most of them
    window.render_result(result)
    panel = window.model_panel
    assert panel.module_names() == ["", "model", "model.q_proj", "model.norm"]
    assert "1 changed by an optimization" in panel.summary.text()
    assert "autocast" in panel.summary.text()
    assert "attention changes how 6 modules run, not their weights" in panel.summary.text()
    # The root counts 100 parameters of the model's 2.62 M: the rest were packed (int8)
    assert "100 of the model's 2.62 M parameters are still parameters" in panel.summary.text()
    panel.changed_only.setChecked(True)
    assert panel.visible_names() == ["", "model", "model.q_proj"]  # ancestors stay
    panel.changed_only.setChecked(False)
    panel.filter_edit.setText("norm")
    assert panel.visible_names() == ["", "model", "model.norm"]
    assert panel.changed_only.isEnabled()
    for row in result.model_info["module_tree"]["modules"]:
        row["touched_by"] = []  # a run no optimization changed: nothing to narrow down to
    window.render_result(result)
    assert not panel.changed_only.isEnabled() and not panel.changed_only.isChecked()
    window.render_result(make_result("old"))  # a record without a tree
    assert "no module tree" in panel.summary.text()


def test_settings_persist_controls_layout_and_theme(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "memlens.ini"), QSettings.Format.IniFormat)
    from gui.main_window import MainWindow

    window = MainWindow(execute=FakeEngine(), devices=["cpu"], settings=settings)
    qtbot.addWidget(window)
    window.controls.set_workload("generate")
    window.controls.seq_spin.setValue(333)
    window.controls.sample_spin.setValue(50)
    window.controls.repeats_spin.setValue(7)
    window.controls.set_model(str(tmp_path / "my-model"))
    window.set_theme("dark")
    window.plot_tabs.setCurrentIndex(2)
    window.close()
    again = MainWindow(execute=FakeEngine(), devices=["cpu"], settings=settings)
    qtbot.addWidget(again)
    config = again.controls.config()
    assert config["workload"] == "generate" and config["seq"] == 333
    assert config["sample_hz"] == 50.0 and config["model"] == str(tmp_path / "my-model")
    assert config["repeats"] == 7
    assert again.controls.model_combo.findText(str(tmp_path / "my-model")) >= 0  # recent
    assert again.plot_tabs.currentIndex() == 2
    assert again.theme_actions["dark"].isChecked()
    from gui import theme

    assert theme.current().name == "dark"
    assert again.chart.plot_widget.backgroundBrush().color().name() == theme.THEMES[
        "dark"].background
    # The command line's model wins over the last session's.
    third = MainWindow(execute=FakeEngine(), devices=["cpu"], settings=settings, model="demo")
    qtbot.addWidget(third)
    assert third.controls.config()["model"] == "demo"
    third.set_theme("light")


def test_open_run_file_export_and_recent_files(qtbot, tmp_path):
    window = make_window(qtbot, FakeEngine())
    window.render_result(make_result("exported"))
    written = window.export_run(tmp_path / "out" / "exported")
    assert written == tmp_path / "out" / "exported.json"
    assert json.loads(written.read_text())["run_id"] == "exported"
    window.current_result = None
    assert window.open_run_file(written)
    assert window.current_result.run_id == "exported"
    assert window.recent_files()[0] == str(written.resolve())
    actions = window.recent_menu.actions()
    assert actions and actions[0].text() == "exported.json"
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    window._remember_recent(str(broken.resolve()))
    assert not window.open_run_file(broken)
    assert "Could not open" in window.status.text()
    assert str(broken.resolve()) not in window.recent_files()  # a bad file leaves the list
    assert window.controls.run_button.isEnabled()


def test_save_and_copy_plot_png(qtbot, tmp_path):
    window = make_window(qtbot, FakeEngine())
    window.render_result(make_result())
    path = tmp_path / "chart"
    assert window.save_png(path)
    image = QImage(str(tmp_path / "chart.png"))
    assert not image.isNull() and distinct_colours(image) > 20
    window.copy_plot()
    from PySide6.QtGui import QGuiApplication

    assert not QGuiApplication.clipboard().pixmap().isNull()
    # on another page, its own panel (the hidden Current run chart was saved from there)
    assert window.current_plot() is window.chart
    for page, panel in ((window.runs_tab, window.compare_panel),
                        (window.sweep_panel, window.sweep_panel),
                        (window.plan_panel, window.plan_panel), (window.guide_panel, window)):
        window.workspace.setCurrentWidget(page)
        assert window.current_plot() is panel
    # Tab leaves every table (it cycled the saved runs' cells: the controls after them could
    # not be reached from the keyboard)
    for view in (window.saved_runs.view, window.table.view, window.compare_panel.table,
                 window.sweep_panel.table, window.plan_panel.table):
        assert not view.tabKeyNavigation()


def test_keyboard_shortcuts_run_and_cancel(qtbot):
    engine = FakeEngine("slow")
    window = make_window(qtbot, engine)
    assert window.run_action.shortcut().toString() == "Ctrl+R"
    window.run_action.trigger()
    assert engine.started.wait(5)
    qtbot.waitUntil(lambda: window.cancel_action.isEnabled(), timeout=2000)
    assert not window.run_action.isEnabled()
    window.cancel_action.trigger()
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=5000)
    assert window.run_action.isEnabled() and not window.cancel_action.isEnabled()
    assert window.escape_action.shortcut().toString() == "Esc"  # a plain run: no question
    assert not window.escape_action.isEnabled()
    engine.started.clear()
    window.run_action.trigger()
    assert engine.started.wait(5)
    qtbot.waitUntil(lambda: window.escape_action.isEnabled(), timeout=2000)
    window.escape_action.trigger()
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=5000)


def test_help_about_names_the_version_and_the_store(qtbot, tmp_path):
    from engine import __version__

    store = RunStore(tmp_path / "runs")
    window = make_window(qtbot, FakeEngine(), store=store)
    from PySide6.QtWidgets import QMessageBox

    window.about_action.trigger()  # (it returns: open(), not exec(), the events keep coming)
    box = window.findChild(QMessageBox)
    assert box is not None and box.isVisible()
    assert box.windowModality() == Qt.WindowModality.WindowModal
    text = box.text()
    assert f"MemLens {__version__}" in text and "\ntorch " in text and str(store.root) in text
    box.accept()


def test_an_optimization_that_stops_applying_is_unticked_with_a_word_and_comes_back(qtbot):
    """Checkpointing ticked for train vanished without a word on switching to forward, and
    stayed unticked on switching back."""
    window = make_window(qtbot, FakeEngine())
    controls = window.controls
    controls.workload_combo.setCurrentText("train")
    row = controls.optimizations.rows["checkpointing"]
    row.check.setChecked(True)
    controls.workload_combo.setCurrentText("forward")
    assert not row.check.isChecked() and not row.check.isEnabled()
    assert "Activation checkpointing unticked: it applies to the train" in window.log.text()
    controls.workload_combo.setCurrentText("train")
    assert row.check.isChecked()
    assert "Activation checkpointing ticked again" in window.log.text()
    assert {"id": "checkpointing"}.items() <= controls.optimizations.selected()[0].items()
    # a conflict is said as soon as it is ticked (it was said only after Run)
    panel = controls.optimizations
    assert panel.problem.isHidden()
    controls.workload_combo.setCurrentText("forward")
    panel.rows["cast"].check.setChecked(True)
    panel.rows["int8-dynamic"].check.setChecked(True)
    assert not panel.problem.isHidden()
    assert "conflicts with" in panel.problem.text() and "separately" in panel.problem.text()
    # Run and Estimate wait until it is resolved (clicking Run only turned the status into
    # the same refusal), the reason in their tooltips
    assert not controls.run_button.isEnabled() and not controls.estimate_button.isEnabled()
    assert not window.run_action.isEnabled()
    assert "conflicts with" in controls.run_button.toolTip()
    window.status.show_error("cast conflicts with int8-dynamic.", "Run them separately.")
    panel.rows["cast"].check.setChecked(False)
    assert panel.problem.isHidden()
    assert controls.run_button.isEnabled() and controls.estimate_button.isEnabled()
    assert window.run_action.isEnabled() and "conflicts" not in controls.run_button.toolTip()
    # the red line named a conflict no longer there: it goes (the log keeps it)
    assert "conflicts" not in window.status.text() and "in the log" in window.status.text()
    controls.set_running(True)
    assert not controls.run_button.isEnabled()
    controls.set_running(False)
    assert controls.run_button.isEnabled()
    # the app applies top to bottom: quantizing and pruning both ticked go prune-first, which
    # works (quantize-first was refused with "put prune-ffn first", which the app cannot do)
    panel.rows["int8-dynamic"].check.setChecked(False)
    panel.rows["torchao-int8"].check.setChecked(True)
    panel.rows["prune-ffn"].check.setChecked(True)
    assert panel.problem.isHidden(), panel.problem.text()
    assert [e["id"] for e in panel.selected()] == ["prune-ffn", "torchao-int8"]
    panel.rows["torchao-int8"].check.setChecked(False)
    panel.rows["prune-ffn"].check.setChecked(False)
    # a run's settings replace the selection: no "ticked again" promise is logged for it
    before = window.log.text().count("unticked")
    controls.apply_run_config({"model": "demo", "workload": "train", "optimizations": []})
    assert window.log.text().count("unticked") == before
    assert controls.optimizations.selected() == []


def test_an_estimate_is_labelled_in_the_table_totals_and_title(qtbot, tmp_path):
    store = RunStore(tmp_path / "runs")
    result = make_result("est-1")
    result.estimate = {"method": "fake tensors"}
    result.config.label = "guide: lora:rank=8,alpha=16,targets=attention + checkpointing"
    result.optimizations = [
        {"id": "lora", "name": "LoRA", "params": {"rank": 8, "alpha": 16,
                                                  "targets": "attention"}},
        {"id": "checkpointing", "name": "Activation checkpointing", "params": {"every_n": 1}}]
    store.save(result)
    window = make_window(qtbot, FakeEngine(), store)
    model = window.saved_runs.view.model()
    assert model.index(0, KIND_COLUMN).data() == "estimate"
    # the peak is in view at the default window size (it was cut off behind the optimizations)
    view = window.saved_runs.view
    window.workspace.setCurrentWidget(window.runs_tab)
    qtbot.waitUntil(lambda: view.viewport().width() > 100)
    right = view.columnViewportPosition(PEAK_COLUMN) + view.columnWidth(PEAK_COLUMN)
    assert 0 <= view.columnViewportPosition(PEAK_COLUMN) and right <= view.viewport().width()
    window.workspace.setCurrentIndex(0)
    assert window.load_saved_run("est-1")
    assert window.totals.text().startswith("ESTIMATE")
    assert "ESTIMATE" in window.windowTitle()


def test_copy_of_a_result_is_independent():
    """Guard for the helpers above: ``optimized`` must not mutate the shared fixture data."""
    a = make_result("x")
    b = optimized("y")
    assert a.totals.peak_bytes > b.totals.peak_bytes
    assert copy.deepcopy(a).to_dict() == a.to_dict()


def test_timeline_draws_every_memory_series_peaks_and_gpu_activity(qtbot, tmp_path):
    from engine.events import Sample

    window = make_window(qtbot, FakeEngine())
    timeline = window.timeline
    samples = [Sample(t=i * 0.1, phase="memory" if i < 10 else "timing",
                      rss_bytes=(500 + i) * MIB, gpu_used_bytes=(2000 + 30 * (i % 7)) * MIB,
                      gpu_process_bytes=(1500 + i) * MIB, torch_allocated_bytes=(900 + i) * MIB,
                      torch_reserved_bytes=1200 * MIB, gpu_util_percent=float(10 * (i % 10)),
                      gpu_power_w=150.0 + i) for i in range(20)]
    timeline.add_samples(samples)
    assert all(timeline.curves[f].isVisible() for f in (
        "rss_bytes", "gpu_used_bytes", "gpu_process_bytes", "torch_allocated_bytes",
        "torch_reserved_bytes"))
    assert timeline.activity_plot.isVisible()
    assert timeline.peaks["gpu_used_bytes"] == (pytest.approx(0.6), 2180.0)
    assert timeline.peaks["rss_bytes"] == (pytest.approx(1.9), 519.0)
    assert timeline.legend_text("gpu_used_bytes").endswith("peak 2,180.0 MiB")
    window.resize(1400, 900)
    image = timeline.grab().toImage()
    assert distinct_colours(image) > 30
    # A CPU run: no GPU series, no activity plot, a sentence instead of zeros.
    timeline.clear()
    timeline.add_samples([Sample(t=i * 0.1, rss_bytes=(500 + i) * MIB) for i in range(5)])
    assert not timeline.activity_plot.isVisible()
    assert not timeline.curves["gpu_used_bytes"].isVisible()
    assert "no NVML readings" in timeline.gpu_note.text()
    assert set(timeline.peaks) == {"rss_bytes"}


def test_export_report_from_the_window_covers_the_run_or_the_comparison(qtbot, real_store,
                                                                       tmp_path):
    window = make_window(qtbot, FakeEngine(), real_store)
    window.set_theme("dark")  # the report is drawn on light paper anyway
    assert window.load_saved_run("opt")
    files = window.export_report(tmp_path / "one", pdf=False)
    assert files is not None and files.html.exists() and files.pdf is None
    text = files.html.read_text(encoding="utf-8")
    assert "opt" in text and text.count("data:image/png;base64,") == len(files.images) >= 3
    assert "Report written" in window.status.text()
    chart = QImage(str(next(p for p in files.images if "memory-by-layer" in p.name)))
    corner = chart.pixelColor(3, 3)
    assert corner.lightness() > 200  # light paper, not the dark theme's canvas
    assert window.compare_saved_runs(["ref", "opt"])
    assert [r.run_id for r in window.report_runs()] == ["ref", "opt"]
    both = window.export_report(tmp_path / "two", pdf=False)
    assert "ref" in both.html.read_text(encoding="utf-8")
    assert any("compare" in p.name for p in both.images)
    # the run store's own folder is refused (its files would be listed as damaged runs)
    listed = sorted(p.name for p in real_store.root.iterdir())
    assert window.export_report(real_store.root, pdf=False) is None
    assert "is the run store's folder" in window.status.text()
    assert sorted(p.name for p in real_store.root.iterdir()) == listed
    window.set_theme("light")


@pytest.mark.fault(area='load', case='an hour-long run sampled at 100 Hz, live in the window',
                   outcome='the live timeline stays within 100,000 samples (older half decimated, memory peaks kept) and under 16 MiB (12.4 MiB measured)')
def test_live_timeline_stays_bounded_for_an_hour_at_100_hz(qtbot):
    from engine.events import Sample
    from gui.panels.timeline import MAX_LIVE_SAMPLES, TimelinePanel

    panel = TimelinePanel()
    qtbot.addWidget(panel)
    hz, seconds, batch = 100, 3600, 3000
    spike_at = 1234.56
    t = 0
    for start in range(0, hz * seconds, batch):
        samples = []
        for i in range(start, start + batch):
            ti = i / hz
            rss = (700 if abs(ti - spike_at) < 0.005 else 500 + (i % 7)) * MIB
            samples.append(Sample(t=ti, phase="decode", rss_bytes=rss))
        panel.add_samples(samples)
        t += batch
    panel.flush()
    assert panel.sample_count <= MAX_LIVE_SAMPLES
    assert panel.decimated == hz * seconds - panel.sample_count
    times = panel.series("rss_bytes"), panel._t.view()
    assert times[1][0] == 0.0 and times[1][-1] == pytest.approx(seconds - 1 / hz)
    assert np.nanmax(panel.series("rss_bytes")) == 700.0  # the spike survived decimation
    assert panel.peaks["rss_bytes"][1] == 700.0
    assert panel.memory_bytes < 16 * MIB  # measured: 12.4 MiB (8 float64 columns + labels)


def test_every_panel_can_be_saved_and_copied_from_the_menus(qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    window = make_window(qtbot, FakeEngine())
    window.render_result(make_result())
    menu_titles = [a.text() for a in window.menuBar().actions()]
    assert menu_titles[:4] == ["&File", "&Edit", "&Run", "&View"]
    file_menu = window.menuBar().actions()[0].menu()
    save_panel = next(a.menu() for a in file_menu.actions() if a.text() == "Save panel as PNG")
    assert [a.text() for a in save_panel.actions()] == [f"{t}…" for t in window.panels()]
    target = tmp_path / "timeline.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(target), "PNG image (*.png)")))
    next(a for a in save_panel.actions() if a.text() == "Timeline…").trigger()
    assert QImage(str(target)).width() == window.timeline.width()
    edit_menu = window.menuBar().actions()[1].menu()
    copy_panel = next(a.menu() for a in edit_menu.actions() if a.text() == "Copy panel")
    next(a for a in copy_panel.actions() if a.text() == "Totals").trigger()
    from PySide6.QtGui import QGuiApplication

    assert QGuiApplication.clipboard().pixmap().width() == window.totals.width()


@pytest.mark.slow
def test_estimate_button_runs_an_estimate_in_the_engine_process(qtbot, tmp_path):
    """The real engine process estimates a preset too large to load here; the window labels
    it and the store lists it as an estimate."""
    from gui.main_window import MainWindow

    store = RunStore(tmp_path / "runs")
    window = MainWindow(store=store, devices=["cpu"],
                        settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    window.controls.set_model("preset:llama-3-8b")
    window.controls.seq_spin.setValue(256)
    failures = []
    window.controller.failed.connect(lambda *args: failures.append(args))
    with qtbot.waitSignal(window.controller.running_changed, timeout=5000):
        qtbot.mouseClick(window.controls.estimate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=180_000)
    assert failures == []
    result = window.current_result
    assert result is not None and result.estimate is not None
    assert result.totals.model_weights_bytes > 16 * 2**30  # 8B parameters in float32
    assert window.totals.text().startswith("ESTIMATE") and "ESTIMATE" in window.windowTitle()
    assert "(estimate: tensor accounting on fake tensors)" in window.totals.text()
    assert window.latency_panel.summary.text().startswith("ESTIMATE: latency is not estimated")
    assert window.latency_panel.bars_widget.isHidden()
    # The empty timeline says why it is empty (it was bare axes).
    assert window.timeline.gpu_note.text().startswith("ESTIMATE: fake tensors take no memory")
    assert window.status.text().startswith("Estimate finished (fake tensors): estimated "
                                           "peak"), window.status.text()
    assert [s.kind for s in store.list()] == ["estimate"]


@pytest.mark.slow
def test_run_the_guide_from_the_window(qtbot, tmp_path):
    """Run → Run the guide: the engine process measures every technique on a tiny model, the
    Guide page shows the ranked tables, and its buttons compare a workload's runs."""
    from gui.main_window import MainWindow

    store = RunStore(tmp_path / "runs")
    window = MainWindow(store=store, devices=["cpu"],
                        settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    window.controls.set_model("preset:tiny-llama")
    window.controls.seq_spin.setValue(16)
    window.controls.new_tokens_spin.setValue(4)
    window.render_result(make_result("shown-before"))  # the Current run page keeps it
    failures, so_far = [], []
    window.controller.failed.connect(lambda *args: failures.append(args))
    window.controller.item.connect(lambda e: so_far.append(
        (len(e.guide.entries), e.guide.planned, window.guide_panel.message.text())))
    assert window.guide_action.shortcut().toString() == "Ctrl+G"
    with qtbot.waitSignal(window.controller.running_changed, timeout=5000):
        # What Run the guide starts, with one timing pass per run and a few of its techniques
        # (each workload, one the CPU cannot run, a combination) to keep the test short: the
        # whole guide is `memlens guide`'s test.
        window.start_run({**window.controls.config(), "mode": "guide", "optimizations": [],
                          "repeats": 1, "job": {"techniques": [
                              "cast", "kv-cache", "checkpointing", "torchao-int4"]}})
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=300_000)
    assert failures == []
    assert window.workspace.currentWidget() is window.guide_panel
    text = window.guide_panel.text()
    assert "The measured guide: preset:tiny-llama" in text
    assert "forward" in text and "train" in text and "Could not run here" in text
    guide = window.guide_panel.guide
    saved = {s.run_id for s in store.list()}
    assert {e.run_id for e in guide.entries if e.status == "ok"} <= saved
    # The page grew one technique at a time while the guide ran.
    assert [n for n, _, _ in so_far] == list(range(1, len(guide.entries) + 1))
    assert so_far[0][1] == len(guide.entries) and "done so far" in so_far[-2][2]
    assert "Partial guide" not in text
    # The guide reported to its page: the run shown before is still on the Current run page
    # (it was cleared and left saying "Measuring…"), and the guide was written once.
    assert window.current_result.run_id == "shown-before"
    assert window.chart.labels and "Running" not in window.totals.text()
    assert window.log.text().count("Guide written to") == 1
    buttons = window.guide_panel._compare_buttons
    assert buttons
    # the guide's report, from the Guide page's button (File → Export report does the same)
    assert window.guide_panel.report_button.isEnabled()
    files = window.export_guide_report(tmp_path / "guide-report", pdf=False)
    assert files is not None and files.html.is_file()
    assert len(files.images) == len([w for w in guide.workloads() if guide.ranked(w)])
    buttons[0].click()
    assert window.workspace.currentWidget() is window.runs_tab
    assert window.compare_panel.comparison is not None
    # each run against its own unoptimized model, numbered as the guide's table (the first
    # ranked as [0] set every other technique against it)
    assert window.compare_panel.comparison.against_own
    assert window.compare_panel.table.item(0, 0).text().startswith("#1 ")


@pytest.mark.slow
def test_a_cancelled_guide_stays_on_its_page(qtbot, tmp_path):
    """Cancel during the guide: the techniques that finished stay on the Guide page, marked
    partial, and their runs are in the store."""
    from gui.main_window import MainWindow

    store = RunStore(tmp_path / "runs")
    window = MainWindow(store=store, devices=["cpu"],
                        settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.controls.set_model("preset:tiny-llama")
    window.controls.seq_spin.setValue(16)
    failures = []
    window.controller.failed.connect(lambda *args: failures.append(args))
    window.start_run({**window.controls.config(), "mode": "guide", "optimizations": [],
                      "repeats": 1})
    qtbot.waitUntil(lambda: window.guide_panel.guide is not None, timeout=120_000)
    assert window.workspace.currentWidget() is window.guide_panel
    asked: list[str] = []  # Escape asks first during a guide; "no" leaves it running
    assert not window.cancel_on_escape(ask=lambda _title, text: asked.append(text) or False)
    assert window.controller.is_running and "measured so far stay" in asked[0]
    assert window.cancel_on_escape(ask=lambda _title, _text: True)
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=60_000)
    assert [f[0] for f in failures] == ["cancelled"]
    guide = window.guide_panel.guide
    assert guide.partial and 1 <= len(guide.entries) < guide.planned
    assert "Cancelled: the guide stopped after" in window.guide_panel.message.text()
    assert "Partial guide:" in window.guide_panel.text()
    saved = {s.run_id for s in store.list()}
    assert {e.run_id for e in guide.entries if e.status == "ok"} <= saved


def test_use_settings_sets_the_controls_from_a_saved_run_and_names_what_it_cannot(qtbot,
                                                                                 tmp_path):
    """Saved runs → Use settings: the controls take the run's model, sizes, prompt and
    optimizations; a device missing here, a remote-code opt-in and command-line-only settings
    are named in the log, never applied silently; Run then repeats the run."""
    store = RunStore(tmp_path / "runs")
    saved = make_result("gen-run")
    saved.config = RunConfig(
        model="preset:gpt2", workload="generate", batch=3, seq=40, new_tokens=7,
        prompt="你好, world", device="cuda:0", dtype="bfloat16", attention_maps=True,
        sample_hz=50.0, trust_remote_code=True, repeats=5, seed=7,
        optimizations=[{"id": "kv-cache", "params": {"policy": "static"}},
                       {"id": "checkpointing", "params": {}}])
    store.save(saved)
    engine = FakeEngine()
    window = make_window(qtbot, engine, store=store)
    window.controls.optimizations.rows["cast"].check.setChecked(True)  # unticked by the run's
    window.saved_runs.select(["gen-run"])
    assert window.saved_runs.settings_button.isEnabled()
    qtbot.mouseClick(window.saved_runs.settings_button, Qt.MouseButton.LeftButton)
    config = window.controls.config()
    assert (config["model"], config["workload"], config["batch"], config["seq"],
            config["new_tokens"], config["prompt"], config["dtype"], config["sample_hz"],
            config["attention_maps"], config["repeats"]) == (
        "preset:gpt2", "generate", 3, 40, 7, "你好, world", "bfloat16", 50.0, True, 5)
    assert config["device"] == "cpu"  # no cuda:0 here
    assert config["trust_remote_code"] is False  # an opt-in is never carried over
    assert [o["id"] for o in config["optimizations"]] == ["kv-cache"]
    assert config["optimizations"][0]["params"]["policy"] == "static"
    log = window.log.text()
    assert "device cuda:0 is not available here" in log
    assert "checkpointing: applies to the train workload" in log  # refused for generate
    assert "tick 'Trust remote code' again" in log
    assert "seed=7" in log and "the command line sets them" in log
    assert "repeats=5" not in log  # the window has Timing passes now
    assert "press Run to repeat it" in log
    click_run(qtbot, window)
    wait_idle(qtbot, window)
    ran = engine.configs[-1]
    assert ran.prompt == "你好, world" and ran.new_tokens == 7 and not ran.trust_remote_code


def test_use_the_shown_runs_settings_from_the_run_menu(qtbot, tmp_path):
    store = RunStore(tmp_path / "runs")
    saved = make_result("fwd")
    saved.config = RunConfig(model="demo-encoder", workload="forward", batch=2, seq=64)
    store.save(saved)
    window = make_window(qtbot, FakeEngine(), store=store)
    assert not window.use_shown_run_settings()  # nothing shown yet: a note, no change
    assert "No run is shown" in window.log.text()
    assert window.load_saved_run("fwd")
    window.use_settings_action.trigger()
    config = window.controls.config()
    assert (config["model"], config["batch"], config["seq"]) == ("demo-encoder", 2, 64)
    assert "Not set from run" not in window.log.text()  # nothing left out: no notes


def test_the_prompt_goes_to_run_and_length_jobs_take_the_sequence(qtbot, tmp_path):
    """The prompt field feeds Run; an estimate (fake tensors have no text) uses Sequence and
    says so; 'Trust remote code' reaches the engine, is logged, and is not remembered."""
    settings = QSettings(str(tmp_path / "memlens.ini"), QSettings.Format.IniFormat)
    from gui.main_window import MainWindow

    engine = FakeEngine()
    window = MainWindow(execute=engine, devices=["cpu"], settings=settings)
    qtbot.addWidget(window)
    window.controls.prompt_edit.setText("Ein Satz, 一句话")
    window.controls.trust_check.setChecked(True)
    assert "Run uses the prompt" in window.controls.seq_spin.toolTip()
    assert window.start_run(window.controls.config())
    wait_idle(qtbot, window)
    assert engine.configs[-1].prompt == "Ein Satz, 一句话" and engine.configs[-1].trust_remote_code
    assert "Remote code is trusted for this job" in window.log.text()
    estimate = {**window.controls.config(), "mode": "estimate"}
    assert window.start_run(estimate)
    wait_idle(qtbot, window)
    assert window._config.get("prompt") is None
    assert "The estimate uses Sequence (128 tokens), not the prompt" in window.log.text()
    window.close()
    again = MainWindow(execute=FakeEngine(), devices=["cpu"], settings=settings)
    qtbot.addWidget(again)
    assert again.controls.prompt_edit.text() == "Ein Satz, 一句话"  # remembered, commas kept
    assert not again.controls.trust_check.isChecked()  # the opt-in lasts one session


def test_filter_label_delete_and_undo_in_the_saved_runs(qtbot, real_store, monkeypatch):
    from PySide6.QtWidgets import QInputDialog, QMessageBox

    window = make_window(qtbot, FakeEngine(), store=real_store)
    panel = window.saved_runs
    assert sorted(panel.run_ids()) == ["opt", "ref"]
    panel.filter_edit.setText("INT8")  # any case, any column (the optimizations here)
    assert panel.run_ids() == ["opt"] and "1 of 2 runs match" in panel.message.text()
    panel.filter_edit.setText("int8 nothing-like-this")  # every word must match
    assert panel.run_ids() == [] and "No run of 2 matches" in panel.message.text()
    panel.filter_edit.clear()
    assert len(panel.run_ids()) == 2 and not panel.message.isVisible()

    panel.select(["ref"])
    # a label too long is asked again with its text kept (it was refused and lost)
    asked = []
    answers_text = iter([("x" * 201, True), ("the reference 参考", True)])
    monkeypatch.setattr(QInputDialog, "getText",
                        lambda *a, **k: asked.append(k.get("text")) or next(answers_text))
    qtbot.mouseClick(panel.label_button, Qt.MouseButton.LeftButton)
    assert asked[1] == "x" * 201  # asked again, the text kept
    assert {s.run_id: s.label for s in real_store.list()}["ref"] == "the reference 参考"
    panel.filter_edit.setText("参考")
    assert panel.run_ids() == ["ref"]
    panel.filter_edit.clear()

    answers = iter([QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: next(answers))
    panel.select(["ref", "opt"])
    qtbot.mouseClick(panel.delete_button, Qt.MouseButton.LeftButton)  # answered No
    assert len(real_store.list()) == 2
    qtbot.mouseClick(panel.delete_button, Qt.MouseButton.LeftButton)  # answered Yes
    assert real_store.list() == [] and panel.run_ids() == []
    assert sorted(real_store.trashed()) == ["opt", "ref"]
    assert window.undo_delete_action.isEnabled() and "Undo delete" in window.log.text()
    window.undo_delete_action.trigger()
    assert sorted(panel.run_ids()) == ["opt", "ref"] and real_store.trashed() == []
    assert not window.undo_delete_action.isEnabled()
    assert window.load_saved_run("ref")  # intact after the round trip

    window.delete_saved_runs(["opt"], confirm=False)
    monkeypatch.setattr(QInputDialog, "getItem", lambda *a, **k: (
        next(item for item in a[3] if item.startswith("opt — ")), True))
    assert window.restore_deleted_run_dialog()
    assert "opt" in panel.run_ids()
    assert not window.restore_deleted_run_dialog()  # an empty trash: a note, no dialog
    assert "trash of" in window.log.text()

    # Edit → Empty the trash… removes the deleted runs for good, after asking
    window.delete_saved_runs(["opt"], confirm=False)
    assert window.undo_delete_action.isEnabled()
    asked: list[str] = []
    answers = iter([QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *a, **k: (asked.append(a[2]), next(answers))[1])
    action = next(a for a in window.menuBar().actions()[1].menu().actions()
                  if a.text() == "&Empty the trash…")
    action.trigger()  # answered No
    assert real_store.trashed() == ["opt"] and "cannot be undone" in asked[0]
    size = real_store.usage(trash=True)[1]
    assert f"freeing {human_bytes(size)}" in asked[0]
    action.trigger()  # answered Yes
    assert real_store.trashed() == [] and not any(real_store.trash_root.iterdir())
    assert f"for good: {human_bytes(size)} freed" in window.log.text()
    assert not window.undo_delete_action.isEnabled()  # nothing left to bring back
    assert panel.run_ids() == ["ref"]
    assert not window.empty_trash()  # empty: a note, no question
    assert len(asked) == 2 and "The trash of" in window.log.text()


def test_estimate_takes_from_the_controls_only_what_an_estimate_can_use(qtbot, tmp_path):
    """Attention maps ticked and a CUDA device chosen (for Run) do not make Estimate fail: the
    estimate runs on cpu without maps, and the log says both."""
    from gui.main_window import MainWindow

    window = MainWindow(execute=FakeEngine(), devices=["cpu", "cuda:0"],
                        settings=QSettings(str(tmp_path / "m.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.controls.attention_check.setChecked(True)
    window.controls.device_combo.setCurrentText("cuda:0")
    qtbot.mouseClick(window.controls.estimate_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    assert window._config["device"] == "cpu" and window._config["attention_maps"] is False
    log = window.log.text()
    assert "captures no attention maps" in log and "runs on cpu" in log
    assert window.controls.config()["device"] == "cuda:0"  # the controls are left as they were



def test_use_settings_names_every_value_it_could_not_keep(qtbot, tmp_path):
    """Clamped sizes, a bare 'cuda', the optimizations' order and a ticked opt-in from an
    earlier model: each is handled and named, never changed silently."""
    from gui.panels.controls import ControlPanel

    panel = ControlPanel(devices=["cpu", "cuda:0"])
    qtbot.addWidget(panel)
    panel.trust_check.setChecked(True)  # ticked for another model
    notes = panel.apply_run_config(RunConfig(
        model="demo", workload="train", batch=10_000, sample_hz=0.5, device="cuda",
        optimizations=[{"id": "checkpointing", "params": {}},
                       {"id": "cast", "params": {"dtype": "bfloat16"}}]).to_dict())
    config = panel.config()
    assert config["trust_remote_code"] is False
    assert config["device"] == "cuda:0" and not any("device" in n for n in notes)
    assert "batch 10000 is outside the window's range (set to 4096)" in notes
    assert "sample_hz 0.5 is outside the window's range (set to 1.0)" in notes
    order = [n for n in notes if "own order" in n]
    assert order and "(cast, checkpointing), not the run's (checkpointing, cast)" in order[0]
    assert not any(n.endswith(".") for n in notes)
    assert panel.apply_run_config(RunConfig(model="demo", workload="forward").to_dict()) == []


def test_deleting_the_baseline_run_clears_it_and_undo_follows_the_trash(qtbot, real_store):
    window = make_window(qtbot, FakeEngine(), store=real_store)
    assert window.set_baseline_run("ref")
    window.delete_saved_runs(["ref"], confirm=False)
    assert window._baseline_run is None and "ref" not in window.saved_runs.baseline_label.text()
    assert window.undo_delete_action.isEnabled()
    assert window._restore_runs(["ref"])  # brought back another way (the restore dialog)
    assert not window.undo_delete_action.isEnabled()  # nothing left for Undo to restore
    window.saved_runs.set_running(True)
    window.saved_runs.select(["ref"])
    assert not window.saved_runs.settings_button.isEnabled()  # a run in progress owns them
    assert not window.saved_runs.open_button.isEnabled()  # (Open would only refuse)
    window.saved_runs.set_running(False)
    assert window.saved_runs.settings_button.isEnabled()


def test_the_saved_runs_follow_the_store_folder(qtbot, real_store):
    """Runs saved, labelled or deleted by the command line (or another window) appear in the
    list without Refresh."""
    window = make_window(qtbot, FakeEngine(), store=real_store)
    other = RunStore(real_store.root)  # another process's view of the same folder
    other.save(reference("from-the-cli"))
    qtbot.waitUntil(lambda: "from-the-cli" in window.saved_runs.run_ids(), timeout=5000)
    other.set_label("ref", "labelled elsewhere")
    panel = window.saved_runs
    rows = lambda: [" ".join(panel.model.item(r, c).text()  # noqa: E731
                             for c in range(panel.model.columnCount()))
                    for r in range(panel.model.rowCount())]
    qtbot.waitUntil(lambda: any("labelled elsewhere" in row for row in rows()), timeout=5000)
    other.trash("opt")
    qtbot.waitUntil(lambda: "opt" not in window.saved_runs.run_ids(), timeout=5000)


def test_use_settings_and_undo_follow_what_the_store_and_the_run_hold(qtbot, real_store):
    """A tensor-parallel estimate's ranks go to the plan page (they are not in the config);
    parameters of techniques the run did not tick go back to their defaults; Undo delete and
    the baseline line follow runs restored or deleted elsewhere; whitespace is no prompt."""
    window = make_window(qtbot, FakeEngine(), store=real_store)
    tp = make_result("tp-est")
    tp.estimate = {"method": "fake tensors", "tensor_parallel": 4}
    window.controls.optimizations.preselect("autocast:dtype=float16")
    assert window.use_run_settings(tp)
    assert window.plan_panel.devices_spin.value() == 4
    assert "Tensor-parallel estimate on the Multi-GPU plan page (4 ranks)" in window.log.text()
    autocast = window.controls.optimizations.rows["autocast"]
    assert not autocast.check.isChecked()
    assert autocast.params["dtype"].currentText() == "bfloat16"  # the default again

    window.delete_saved_runs(["opt"], confirm=False)
    RunStore(real_store.root).restore("opt")  # the command line restores it
    window.refresh_saved_runs()
    assert not window.undo_delete_action.isEnabled()
    assert not window.undo_delete()  # nothing to undo: no error
    assert "Could not restore" not in window.log.text()

    assert window.set_baseline_run("ref")
    RunStore(real_store.root).trash("ref")  # deleted elsewhere
    window.refresh_saved_runs()
    assert "no longer in the store" in window.saved_runs.baseline_label.text()

    window.controls.prompt_edit.setText("   ")
    assert window.controls.config()["prompt"] is None


def test_a_store_folder_made_after_the_window_opened_is_followed(qtbot, tmp_path):
    """A fresh install has no store folder yet: the window waits for it (watching its parent),
    so the first run another process saves appears without Refresh."""
    store = RunStore(tmp_path / "not-yet" / "runs")
    window = make_window(qtbot, FakeEngine(), store=store)
    assert window.saved_runs.run_ids() == []
    RunStore(store.root).save(reference("first"))
    qtbot.waitUntil(lambda: window.saved_runs.run_ids() == ["first"], timeout=8000)


def test_nearly_equal_qualities_are_not_spread_over_the_whole_axis(qtbot):
    """Perplexities 28.4585 and 28.4615 filled the scatter's height, as if far apart."""
    from engine.compare import compare
    from gui.panels.compare import MIN_QUALITY_SPAN, ComparePanel

    panel = ComparePanel()
    qtbot.addWidget(panel)
    ref, opt = reference(), optimized("opt", perplexity=28.4615)
    ref.quality = {"perplexity": 28.4585}
    panel.render(compare([ref, opt]))
    low, high = panel.scatter_plot.getViewBox().viewRange()[1]
    assert high - low >= MIN_QUALITY_SPAN * 28.4615 and low < 28.4585 < 28.4615 < high
    tip = panel.table.horizontalHeaderItem(7).toolTip()
    assert "against its own unoptimized model" in tip and "not against [0]" in tip


def test_the_log_follows_lines_added_while_its_page_was_hidden(qtbot):
    """Lines logged while another page showed (compare, sweep, plan, guide) left the log stuck
    above them, and "failed (see the log)" pointed at nothing visible; a reader who scrolled up
    is left where they were."""
    window = make_window(qtbot, FakeEngine())
    bar = window.log.view.verticalScrollBar()
    for i in range(40):
        window.log.info(f"line {i}")
    qtbot.waitUntil(lambda: bar.maximum() > 0)
    assert bar.value() == bar.maximum()
    window.workspace.setCurrentWidget(window.runs_tab)
    for i in range(10):
        window.log.error(f"hidden failure {i} " + "long text " * 20, "a hint")
    window.workspace.setCurrentIndex(0)
    qtbot.waitUntil(lambda: bar.value() == bar.maximum() > 0)
    bar.setValue(0)  # the reader scrolls up: new lines do not pull them down
    window.workspace.setCurrentWidget(window.runs_tab)
    window.log.info("one more")
    window.workspace.setCurrentIndex(0)
    qtbot.wait(50)
    assert bar.value() == 0
    window.log.info("and another, visible")
    assert bar.value() == 0


def test_the_log_keeps_following_after_the_window_grows_and_shrinks(qtbot):
    """The follow test read the scroll bar when a line arrived: after the window was maximised
    and restored (or a splitter moved) the bar stood short of its new end, and new lines
    (a refusal, a cancel) went on below the visible part with no one having scrolled up."""
    window = make_window(qtbot, FakeEngine())
    window.resize(1024, 700)
    bar = window.log.view.verticalScrollBar()
    for i in range(30):
        window.log.info(f"line {i}")
    qtbot.waitUntil(lambda: bar.maximum() > 0 and bar.value() == bar.maximum())
    window.resize(1600, 1000)
    qtbot.wait(50)
    window.resize(1024, 700)
    qtbot.wait(50)
    for i in range(5):
        window.log.info(f"after the resize {i}")
    qtbot.waitUntil(lambda: bar.value() == bar.maximum())
    assert window.log.following
    bar.setValue(bar.maximum() // 2)  # the reader scrolls up: left there
    assert not window.log.following
    window.log.info("one more")
    assert bar.value() == bar.maximum() // 2 or bar.value() < bar.maximum()
    bar.setValue(bar.maximum())  # and back to the end: followed again
    window.log.info("followed")
    qtbot.waitUntil(lambda: bar.value() == bar.maximum())


def test_the_guide_picture_sets_each_run_against_its_own_unoptimized_model(qtbot):
    """The guide's runs each carry their own baseline, and none is unoptimized: its picture
    set every technique against the first-ranked one ("Δ peak +576 KiB" for a run the guide's
    table said saved 6 MiB) and numbered them [0]… where the table says #1…."""
    from engine.compare import compare
    from gui.panels.compare import TABLE_COLUMNS, ComparePanel

    a, b = optimized("a", factor=0.25), optimized("b", factor=0.5)
    for run, base_ms in ((a, 6.0), (b, 2.0)):
        run.baseline = {"peak_bytes": run.totals.peak_bytes + 4096, "plain_latency_ms": base_ms}
    first = compare([a, b])
    assert first.peak_delta == [0, b.totals.peak_bytes - a.totals.peak_bytes]
    own = compare([a, b], against_own=True)
    assert own.peak_delta == [-4096, -4096]
    assert own.latency_ratio == [pytest.approx(0.5), pytest.approx(1.5)]
    assert (own.tag(0), own.tag(1)) == ("#1", "#2")
    panel = ComparePanel()
    qtbot.addWidget(panel)
    panel.render(own)
    column = TABLE_COLUMNS.index("Δ peak")
    assert [panel.table.item(r, column).text() for r in (0, 1)] == ["−4.00 KiB"] * 2
    assert panel.table.item(0, 0).text().startswith("#1 ")
    assert "unoptimized model measured in the same run" in panel.message.text()
    assert panel.delta_check.isHidden() and "reference" not in panel.message.text()
    assert "own unoptimized" in panel.table.horizontalHeaderItem(column).toolTip()
    panel.render(first)  # the window's compare: [0] the reference again
    assert panel.table.item(0, column).text() == "reference"
    assert not panel.delta_check.isHidden()
    # a run missing from the store does not renumber the rest (#1 and #3, as the table)
    assert compare([a, b], against_own=True, ranks=[1, 3]).tag(1) == "#3"
    # noisy against its own baseline's passes, not run [0]'s
    b.timing = {"plain_ms": [3.0, 3.1, 3.0]}
    b.baseline["plain_ms"] = [2.0, 9.0, 2.1]
    assert compare([a, b], against_own=True).ratio_noisy(1)
    b.baseline["plain_ms"] = [2.0, 2.1, 2.0]
    assert not compare([a, b], against_own=True).ratio_noisy(1)


def test_a_long_label_is_elided_so_the_peak_stays_in_view(qtbot, real_store):
    """A guide's labels ("guide: lora:rank=8,… + checkpointing") pushed Kind, Peak and
    Latency out of a 1024-pixel window: the Label column is capped, its tooltip whole."""
    from gui.panels.saved_runs import COLUMNS, MAX_LABEL_PX

    long = "guide: lora:rank=8,alpha=16,targets=attention + checkpointing:every=1"
    real_store.set_label("ref", long)
    window = make_window(qtbot, FakeEngine(), real_store)
    window.refresh_saved_runs()
    panel = window.saved_runs
    label = next(i for i, c in enumerate(COLUMNS) if c[0] == "Label")
    assert panel.view.columnWidth(label) <= MAX_LABEL_PX
    row = next(r for r in range(panel.model.rowCount())
               if panel.model.item(r, label).text() == long)
    assert long in panel.model.item(row, label).toolTip()
