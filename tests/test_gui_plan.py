"""The Multi-GPU plan page: inference split across devices and FSDP2 training planned by the
engine process, drawn per device against its budget, labelled estimates; bad sizes refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings

from engine.store import RunStore

from .qt_helpers import distinct_colours

pytestmark = pytest.mark.gui

ARTIFACTS = Path(__file__).parent / "_artifacts"  # gitignored


def make_window(qtbot, tmp_path, workload: str):
    from gui.main_window import MainWindow

    window = MainWindow(store=RunStore(tmp_path / "runs"), devices=["cpu"],
                        settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.resize(1300, 860)
    window.show()
    qtbot.waitExposed(window)
    window.controls.set_model("preset:tiny-llama")
    window.controls.set_workload(workload)
    window.controls.seq_spin.setValue(32)
    return window


def plan_and_wait(qtbot, window) -> list:
    failures: list = []
    window.controller.failed.connect(lambda *args: failures.append(args))
    with qtbot.waitSignal(window.controller.running_changed, timeout=5000):
        assert window.run_plan()
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=180_000)
    return failures


@pytest.mark.slow
def test_an_inference_plan_across_two_devices(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path, "generate")
    page = window.plan_panel
    page.devices_spin.setValue(2)
    page.per_device_edit.setText("4MiB")
    assert page.strategy_combo.isEnabled() and page.offload_edit.isEnabled()
    assert plan_and_wait(qtbot, window) == []
    plan = page.plan
    assert plan is not None and plan.kind == "inference_plan" and plan.figures == "estimate"
    assert [r.device for r in plan.rows][:2] == ["cuda:0", "cuda:1"]
    assert sum(r.weights_bytes for r in plan.rows) == plan.model_weights_bytes
    text = page.text()
    assert text.startswith("ESTIMATE — preset:tiny-llama · generate")
    assert "cuda:0 | 4.00 MiB |" in text and "cuda:1 | 4.00 MiB |" in text
    assert window.workspace.currentWidget() is page
    assert "ESTIMATE" in page.notes.toPlainText()
    saved = window.save_record(tmp_path / "plan.json", plan)
    assert json.loads(saved.read_text())["kind"] == "inference_plan"
    ARTIFACTS.mkdir(exist_ok=True)
    image = window.grab().toImage()
    assert image.save(str(ARTIFACTS / "plan_page.png"))
    assert distinct_colours(image) > 100


@pytest.mark.slow
def test_an_fsdp2_training_plan(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path, "train")
    page = window.plan_panel
    assert not page.strategy_combo.isEnabled() and not page.offload_edit.isEnabled()
    page.devices_spin.setValue(2)
    page.per_device_edit.setText("64KiB")  # too small: the plan says so
    assert plan_and_wait(qtbot, window) == []
    plan = page.plan
    assert plan.kind == "training_plan" and plan.ranks == 2 and plan.fits is False
    assert plan.total_bytes == sum(plan.parts.values())
    text = page.text()
    assert "FSDP2 on 2 ranks" in text and "does NOT fit" in text
    assert "sharded parameters (padded)" in text


@pytest.mark.fault(area="inputs", case="an unreadable per-device size for a multi-GPU plan",
                   outcome="refused before any job starts; the status line names the size and "
                           "the accepted forms")
def test_a_bad_plan_size_is_refused_before_anything_runs(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path, "forward")
    window.plan_panel.per_device_edit.setText("80 gigs")
    assert not window.run_plan()
    assert not window.controller.is_running
    assert "Cannot read the memory size" in window.status.text()
    assert "80GB" in window.status.text()
