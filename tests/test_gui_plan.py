"""The Multi-GPU plan page: inference split across devices and FSDP2 training planned by the
engine process, drawn per device against its budget, labelled estimates; bad sizes refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")  # engine-only installs (no Qt) skip this module

from PySide6.QtCore import QSettings  # noqa: E402

from engine.store import RunStore  # noqa: E402

from .qt_helpers import distinct_colours  # noqa: E402

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
    from gui.panels.axis import placeholder_text

    window = make_window(qtbot, tmp_path, "generate")
    page = window.plan_panel
    assert placeholder_text(page.plot).startswith("No plan yet")
    page.devices_spin.setValue(2)
    page.per_device_edit.setText("4MiB")
    assert page.strategy_combo.isEnabled() and page.offload_edit.isEnabled()
    assert plan_and_wait(qtbot, window) == []
    assert placeholder_text(page.plot) == ""
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
    from gui.panels.status import HINT_COLOR

    # not good news: in the warning colour, not the success green
    assert "does not fit" in window.status.text() and HINT_COLOR in window.status.label.text()
    assert "sharded parameters (padded)" in text
    # A budget far above the bars does not flatten them: the legend gives it instead.
    page.per_device_edit.setText("80GiB")
    assert plan_and_wait(qtbot, window) == []
    legend = [label.text for _, label in page.legend.items]
    assert any("budget 80.0 GiB: above the scale" in t for t in legend), legend
    # whole: "< 0.1%" in the legend's HTML opened a tag that swallowed the rest of the line
    assert any("(the tallest bar is &lt; 0.1% of it)" in t for t in legend), legend
    # two devices' rows stay in view in a 700-pixel window (one showed, under the notes)
    assert page.table.minimumHeight() >= 4 * page.table.fontMetrics().lineSpacing()
    top = page.plot.getViewBox().viewRange()[1][1]
    assert top < 1024, top  # the axis is in KiB or MiB, not up to 80 GiB


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
    assert "'gpu'" not in window.status.text()  # a budget's words are not sizes
    assert window.plan_panel.message.text().startswith("Not planned: Memory each: Cannot read")
    window.plan_panel.per_device_edit.setText("80GiB")
    for word in ("none", "0", ""):  # the placeholder's word is accepted, as on the CLI
        window.plan_panel.offload_edit.setText(word)
        assert "cpu_offload" in window.plan_panel.plan_job("forward")
        assert window.plan_panel.plan_job("forward")["cpu_offload"] is None


@pytest.mark.fault(area="inputs", case="a multi-GPU plan whose model cannot be loaded (window)",
                   outcome="the plan page says it failed and why instead of 'running…'; the "
                           "Current run page is left as it was")
def test_a_failed_plan_says_so_on_its_page(qtbot, tmp_path):
    window = make_window(qtbot, tmp_path, "forward")
    window.controls.set_model(str(tmp_path / "no-such-model"))
    before = window.totals.text()
    failures = plan_and_wait(qtbot, window)
    assert [f[0] for f in failures] == ["not_found"]
    text = window.plan_panel.message.text()
    assert text.startswith("Failed: ") and "no-such-model" in text
    assert window.totals.text() == before
    from gui.panels.axis import placeholder_text

    assert placeholder_text(window.plan_panel.plot).startswith("No plan yet")  # not blank axes


def _distributed_run():
    """A measured FSDP2 record as engine.distributed_run writes it (two ranks; the figures are
    what tests/test_distributed_run.py measured on tiny-llama, to exercise the drawing)."""
    from engine.distributed_run import DistributedRun, RankRow

    parts = {"sharded_params": 213632, "buffers": 64, "sharded_gradients": 0,
             "optimizer_state": 427348, "unsharded_params": 139648,
             "gradient_reduction": 370048, "activations": 117896}
    rows = [RankRow(rank=r, world_size=2, device="cpu", peak_bytes=sum(parts.values()),
                    as_plan_parts=dict(parts), plan_bound_bytes=2_346_780)
            for r in (0, 1)]
    return DistributedRun(run_id="fsdp2-2x-test", created="2026-11-29T05:00:00+00:00",
                          config={"model": "preset:tiny-llama", "batch": 1, "seq": 32,
                                  "dtype": "bfloat16"},
                          world_size=2, backend="gloo", recipe="fully_shard", ranks=rows,
                          master_dtype="float32", within_plan=True,
                          optimizations=[{"id": "lora"}, {"id": "checkpointing"}])


def test_saved_records_open_on_their_pages(qtbot, tmp_path):
    """File → Open run file takes every record MemLens writes: a distributed run and a plan on
    the Multi-GPU plan page, a sweep on the Sweep & fit page; a newer record is refused."""
    from engine.config import RunConfig
    from engine.distributed import plan_training
    from engine.sweep import sweep

    window = make_window(qtbot, tmp_path, "train")
    run_path = tmp_path / "dist.json"
    run_path.write_text(json.dumps(_distributed_run().to_dict()), encoding="utf-8")
    assert window.open_run_file(run_path)
    page = window.plan_panel
    assert window.workspace.currentWidget() is page
    text = page.text()
    assert text.startswith("MEASURED — preset:tiny-llama · train, FSDP2 on 2 ranks (gloo")
    assert "master float32; lora, checkpointing" in text
    assert "every rank within its plan bound" in text
    assert "0 | cpu | 1.21 MiB | 2.24 MiB |" in text and "1 | cpu |" in text
    assert "measured distributed run" in window.status.text()
    ARTIFACTS.mkdir(exist_ok=True)
    image = window.grab().toImage()
    assert image.save(str(ARTIFACTS / "distributed_run_page.png"))
    assert distinct_colours(image) > 100

    plan = plan_training(RunConfig(model="preset:tiny-llama", workload="train", seq=16), 2)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan.to_dict()), encoding="utf-8")
    assert window.open_run_file(plan_path)
    assert page.text().startswith("ESTIMATE — preset:tiny-llama · train, FSDP2 on 2 ranks")

    record = sweep(RunConfig(model="preset:tiny-llama", workload="forward"), [16], [1],
                   measure_limit_bytes=0)
    sweep_path = tmp_path / "sweep.json"
    sweep_path.write_text(json.dumps(record.to_dict()), encoding="utf-8")
    assert window.open_run_file(sweep_path)
    assert window.workspace.currentWidget() is window.sweep_panel
    assert "16" in window.sweep_panel.text()

    # A guide.json (README's own, written before guides named their kind) on the Guide page,
    # drawn afresh from the JSON.
    guide_path = Path(__file__).parent.parent / "docs" / "guide" / "guide.json"
    assert window.open_run_file(guide_path)
    assert window.workspace.currentWidget() is window.guide_panel
    assert "The measured guide: demo on cpu" in window.guide_panel.text()
    assert "measured guide" in window.status.text()
    guides = Path(window._get_store().root).parent / "guides"
    shown = set(guides.iterdir())
    assert window.open_run_file(guide_path)  # opened again: redrawn in place, not copied
    assert set(guides.iterdir()) == shown and len(shown) == 1

    newer = dict(_distributed_run().to_dict(), schema_version=99)
    newer_path = tmp_path / "newer.json"
    newer_path.write_text(json.dumps(newer), encoding="utf-8")
    assert not window.open_run_file(newer_path)
    assert "newer MemLens" in window.status.text()
    assert window.controls.run_button.isEnabled()


def test_training_plan_options_hsdp_and_master_weights(qtbot, tmp_path):
    """Replicas and master weights apply to training only; replicas must divide the ranks
    (refused before any job starts, naming the fix)."""
    window = make_window(qtbot, tmp_path, "train")
    page = window.plan_panel
    assert page.replicas_spin.isEnabled() and page.master_combo.isEnabled()
    page.devices_spin.setValue(4)
    page.replicas_spin.setValue(2)
    page.master_combo.setCurrentIndex(1)
    job = page.plan_job("train")
    assert (job["ranks"], job["replicas"], job["master_dtype"]) == (4, 2, "float32")
    page.replicas_spin.setValue(3)
    assert not window.run_plan()
    assert "3 replicas do not divide 4 ranks" in window.status.text()
    assert not window.controller.is_running
    # the engine's limits, refused before a job starts and naming this page's fields (the spin
    # box stopped at 4,096 ranks; 2,000 inference GPUs failed only in the engine process)
    page.devices_spin.setValue(100_000)
    page.replicas_spin.setValue(1)
    assert page.devices_spin.value() == 100_000
    assert not window.run_plan()
    assert "more than a plan takes" in window.status.text()
    assert "e.g. 100000 ranks with 8 replicas" in window.status.text()
    page.replicas_spin.setValue(8)
    assert page.plan_job("train")["ranks"] == 100_000
    window.controls.set_workload("generate")
    assert not page.replicas_spin.isEnabled() and not page.master_combo.isEnabled()
    page.devices_spin.setValue(2000)
    assert not window.run_plan()
    assert "devices or fewer (GPUs / ranks)" in window.status.text()
    assert not window.controller.is_running


@pytest.mark.slow
def test_a_tensor_parallel_estimate_from_the_plan_page(qtbot, tmp_path):
    """The plan page's Tensor-parallel estimate: rank 0 of its GPUs / ranks, estimated in the
    engine process and shown on the Current run page like any estimate."""
    window = make_window(qtbot, tmp_path, "generate")
    window.plan_panel.devices_spin.setValue(2)
    failures: list = []
    window.controller.failed.connect(lambda *args: failures.append(args))
    with qtbot.waitSignal(window.controller.running_changed, timeout=5000):
        assert window.run_tensor_parallel_estimate()
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=180_000)
    assert failures == []
    result = window.current_result
    assert result is not None and result.estimate["tensor_parallel"] == 2
    assert any(line.startswith("Tensor parallelism: rank 0 of 2") for line in result.limitations)
    assert window.workspace.currentIndex() == 0
    title = window.chart.plot.titleLabel.text
    assert title.startswith("Estimated memory") and "rank 0 of 2 (tensor parallel)" in title
    assert "(estimate)" not in title  # said once, by "Estimated"
    assert "ESTIMATE, rank 0 of 2" in window.windowTitle()
    assert "rank 0 of 2, tensor parallel" in window.totals.text()
    ARTIFACTS.mkdir(exist_ok=True)
    image = window.grab().toImage()
    assert image.save(str(ARTIFACTS / "tensor_parallel_estimate.png"))
    assert distinct_colours(image) > 100
