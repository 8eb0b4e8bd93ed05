"""Attention and latency panels (pytest-qt, offscreen), alone and inside the main window."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402

from engine.config import RunConfig  # noqa: E402
from engine.events import AttentionMaps, Finished, LayerStatsReady, Progress  # noqa: E402
from engine.format import MISSING  # noqa: E402
from engine.results import LayerStats, RunResult, Totals  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402
from .qt_helpers import distinct_colours  # noqa: E402
from gui.panels.attention import NO_MAPS, AttentionPanel, block_mean, head_entropy  # noqa: E402
from gui.panels.latency import LatencyPanel  # noqa: E402

pytestmark = pytest.mark.gui

MIB = 1024 * 1024
ARTIFACTS = Path(__file__).parent / "_artifacts"
SEQ = 40


# -- records -----------------------------------------------------------------------------------
def make_maps(layers: int = 2, heads: int = 4, seq: int = SEQ, seed: int = 0,
              downsampled_from: int | None = None) -> AttentionMaps:
    """Random rows summing to 1, except layer 0: head 0 uniform, head 1 one-hot (key 0)."""
    rng = np.random.default_rng(seed)
    maps = {}
    for layer in range(layers):
        a = rng.random((heads, seq, seq))
        a /= a.sum(-1, keepdims=True)
        if layer == 0:
            a[0] = 1.0 / seq
            a[1] = 0.0
            a[1, :, 0] = 1.0
        maps[layer] = a.astype(np.float16)
    return AttentionMaps(maps=maps, tokens=tuple(f"Ġtok{i}" for i in range(seq)),
                         downsampled_from=downsampled_from)


def capture_info(layers: int = 2, heads: int = 4, seq: int = SEQ) -> dict:
    return {"captured": True, "implementation_used": "eager", "original_implementation": "sdpa",
            "layers": layers, "heads": heads, "tokens": seq, "stored_side": seq,
            "downsampled_from": None,
            "cost": {"forward_ms": 12.3, "plain_forward_ms": 8.1, "peak_bytes": int(1.2 * MIB),
                     "plain_peak_bytes": int(0.9 * MIB), "note": "one extra forward"}}


def make_result(run_id: str = "panels-1", generation: bool = True,
                attention: dict | None = None) -> RunResult:
    layers = [LayerStats("model.embed_tokens", "embedding", None, 0, latency_ms=0.4,
                         at_peak={"weights": MIB})]
    for i in range(2):
        block = f"model.layers.{i}"
        layers += [
            LayerStats(block, "block", None, 0, latency_ms=3.0 + i, at_peak={"activations": MIB}),
            LayerStats(f"{block}.self_attn", "attention", block, 1, latency_ms=1.5,
                       at_peak={"weights": MIB}),
            LayerStats(f"{block}.mlp", "mlp", block, 1, latency_ms=1.0, at_peak={"weights": MIB}),
        ]
    layers.append(LayerStats("lm_head", "head", None, 0, latency_ms=None,
                             at_peak={"weights": MIB}))
    attributed = sum(layer.at_peak_bytes for layer in layers)
    totals = Totals(peak_bytes=attributed + 1024, peak_source="tensor_accounting",
                    attributed_bytes=attributed, unattributed_bytes=1024, latency_ms=9.5,
                    plain_latency_ms=9.0, instrumentation_overhead=9.5 / 9.0,
                    tokens_per_s=334.0)
    timing = {"repeats": 1, "plain_ms": [9.0], "instrumented_ms": [9.5], "detailed_ms": [10.0],
              "detailed_overhead": 10.0 / 9.0, "live_modules": 4, "detailed_modules": 8,
              "warmup_ms": [120.0, 50.0]}
    gen = None
    if generation:
        gen = {"prefill_ms": 7.13, "decode_ms_per_step": [3.0, 2.9, 3.1, 2.8],
               "decode_tokens_per_s": 334.0, "kv_bytes_per_step": [100, 200, 300, 400, 500]}
    return RunResult(config=RunConfig(model="demo", workload="generate" if generation
                                      else "forward"),
                     run_id=run_id, created="2025-01-02T03:04:05", layers=layers, totals=totals,
                     generation=gen, timing=timing, attention=attention, duration_s=1.0)


class ScriptedEngine:
    """Stands in for ``engine.runner.execute``: maps, then the result (in the worker thread)."""

    def __init__(self, maps: AttentionMaps | None, result: RunResult) -> None:
        self.maps, self.result = maps, result
        self.threads: list[threading.Thread] = []

    def __call__(self, config, listener, cancel, store=None):
        self.threads.append(threading.current_thread())
        listener(Progress("memory", 0.5, "measuring"))
        listener(LayerStatsReady(tuple(self.result.layers), final=True))
        if self.maps is not None:
            listener(AttentionMaps(maps=self.maps.maps, tokens=self.maps.tokens))
        listener(Finished(self.result))
        return self.result


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLENS_HOME", str(tmp_path / "home"))


def make_panel(qtbot) -> AttentionPanel:
    panel = AttentionPanel()
    qtbot.addWidget(panel)
    panel.resize(900, 420)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def make_window(qtbot, execute=None, store=None) -> MainWindow:
    window = MainWindow(execute=execute, store=store, devices=["cpu"])
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window




# -- attention panel ---------------------------------------------------------------------------
def test_a_short_narrow_attention_panel_keeps_its_maps_whole(qtbot):
    """At 1024 × 700 the tab is about 430 × 250: the four-line caption left the maps a strip,
    the grid lost its last heads and the colour bar its numbers. There the caption says what
    the maps hold (the rest in its tooltip) and the entropy bars fold into one line."""
    panel = make_panel(qtbot)
    panel.render(make_maps(), capture_info())
    panel.resize(430, 250)
    qtbot.waitUntil(lambda: panel.entropy_pane.isHidden())
    assert not panel.entropy_inline.isHidden()
    assert panel.entropy_inline.text().startswith("entropy ") and "nats" in panel.entropy_inline.text()
    assert panel.caption.text().startswith("2 layers × 4 heads") and "hover here" in panel.caption.text()
    assert panel.caption.toolTip() == panel.caption_text()
    assert panel.caption_text().startswith("Captured with eager attention")
    # what pyqtgraph lays out fits each pane (the right of it was cut)
    for widget, item in ((panel.grid_widget, panel.grid_plot),
                         (panel.large_widget, panel.colorbar)):
        assert item.geometry().right() <= widget.width(), (widget, item.geometry())
    panel.resize(900, 450)
    qtbot.waitUntil(lambda: not panel.entropy_pane.isHidden())
    assert panel.entropy_inline.isHidden() and panel.caption.text() == panel.caption_text()
    assert panel.caption.toolTip() == ""


def test_attention_panel_renders_the_grid_and_the_capture_line(qtbot):
    panel = make_panel(qtbot)
    maps = make_maps()
    panel.render(maps, capture_info())
    assert panel.has_maps and panel.message_text() == ""
    assert panel.shape == (2, 4)
    assert [len(row) for row in panel.grid_images] == [4, 4]
    assert all(image.isVisible() for row in panel.grid_images for image in row)
    assert panel.grid_tiles[0].shape == (4, SEQ, SEQ)  # 40 tokens: no display downsampling
    assert panel.grid_images[1][3].levels is not None
    assert tuple(panel.grid_images[1][3].levels) == pytest.approx(panel.grid_levels)
    caption = panel.caption_text()
    assert caption.startswith("Captured with eager attention (the run used sdpa): one extra "
                              "forward, 12.3 ms and peak 1.20 MiB, against 8.10 ms and 922 KiB "
                              "for a plain forward measured beside it.")
    assert "2 layers × 4 heads" in caption and "downsampled" not in caption
    # The large view starts on layer 0, head 0, with every token labelled (40 <= 64).
    assert panel.selected == (0, 0)
    np.testing.assert_array_equal(panel.large_data, maps.maps[0][0].astype(np.float32))
    # The colour scale ends at the 99th percentile of the weights above 0: a causal map's
    # first row (weight 1 on itself) no longer darkens all the rest.
    head = maps.maps[0][0].astype(np.float64)
    assert panel.large_levels == (0.0, pytest.approx(np.percentile(head[head > 0], 99)))
    assert panel.large_levels[1] <= head.max()
    ticks = panel.large_plot.getAxis("left")._tickLevels[0]
    assert ticks[0] == (0.5, "·tok0")
    # Re-rendering the same maps with a new record only refreshes the caption.
    images = [image for row in panel.grid_images for image in row]
    panel.render(maps, None)
    assert [image for row in panel.grid_images for image in row] == images
    assert panel.caption_text().startswith("Capture details were not recorded.")


def test_selecting_a_head_updates_the_large_view(qtbot):
    panel = make_panel(qtbot)
    maps = make_maps()
    panel.render(maps, capture_info())
    panel.head_spin.setValue(2)
    assert panel.selected == (0, 2)
    np.testing.assert_array_equal(panel.large_data, maps.maps[0][2].astype(np.float32))
    panel.select(1, 3)
    assert panel.selected == (1, 3)
    np.testing.assert_array_equal(panel.large_data, maps.maps[1][3].astype(np.float32))
    assert "Layer 1, head 3" in panel.large_plot.titleLabel.text
    # A click on a grid tile selects it.
    qtbot.wait(20)
    view = panel.grid_plot.getViewBox()
    rect = panel._tile_rect(1, 2)
    scene = view.mapViewToScene(QPointF(rect.center()))
    pos = panel.grid_widget.mapFromScene(scene)
    qtbot.mouseClick(panel.grid_widget.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(pos))
    assert panel.selected == (1, 2)
    np.testing.assert_array_equal(panel.large_data, maps.maps[1][2].astype(np.float32))


def test_head_mean_toggle(qtbot):
    panel = make_panel(qtbot)
    maps = make_maps()
    panel.render(maps, capture_info())
    panel.select(1, 1)
    panel.mean_check.setChecked(True)
    assert panel.selected == (1, None)
    assert not panel.head_spin.isEnabled()
    expected = maps.maps[1].astype(np.float32).mean(axis=0)
    np.testing.assert_allclose(panel.large_data, expected, rtol=1e-6)
    assert "mean of 4 heads" in panel.large_plot.titleLabel.text
    panel.mean_check.setChecked(False)
    assert panel.selected == (1, 1) and panel.head_spin.isEnabled()
    np.testing.assert_array_equal(panel.large_data, maps.maps[1][1].astype(np.float32))


def test_entropy_matches_a_hand_computation(qtbot):
    panel = make_panel(qtbot)
    maps = make_maps()
    panel.render(maps, capture_info())
    panel.select(0, 0)
    assert panel.entropy.shape == (4,)
    assert panel.entropy[0] == pytest.approx(math.log(SEQ), rel=1e-3)  # uniform: ln k
    assert panel.entropy[1] == pytest.approx(0.0, abs=1e-12)  # one-hot: 0
    row = maps.maps[0][2].astype(np.float64)
    by_hand = float(np.mean([-sum(p * math.log(p) for p in r if p > 0) for r in row]))
    assert panel.entropy[2] == pytest.approx(by_hand, rel=1e-9)
    assert panel.entropy_label.text() == (f"Entropy (nats) per head\nhead 0: {math.log(SEQ):.2f}\n"
                                          f"uniform ({SEQ} keys): {math.log(SEQ):.2f}")
    assert head_entropy(np.full((1, 3, 8), 1 / 8)) == pytest.approx([math.log(8)])


def test_no_maps_shows_a_message_not_an_empty_plot(qtbot):
    panel = make_panel(qtbot)
    assert panel.message_text() == NO_MAPS
    panel.render(None, None)
    assert panel.message_text() == NO_MAPS and not panel.has_maps
    panel.render(make_maps(), capture_info())
    assert panel.message_text() == ""
    panel.render(None, {"captured": False, "reason": "the model returned no attention "
                                                     "probabilities"})
    assert panel.message_text() == ("No attention maps: the model returned no attention "
                                    "probabilities.")
    assert panel.large_data is None and panel.shape == (0, 0)
    assert not any(image.isVisible() for row in panel.grid_images for image in row)
    panel.render(AttentionMaps(maps={}), capture_info())
    assert panel.message_text() == NO_MAPS
    panel.render(make_maps(), capture_info())
    panel.clear()
    assert panel.message_text() == NO_MAPS and not panel.has_maps


@pytest.mark.fault(area='load', case='a 256 × 256 attention map in the window',
                   outcome='renders well under half a second')
def test_long_inputs_stay_fast(qtbot):
    panel = make_panel(qtbot)
    maps = make_maps(layers=6, heads=6, seq=256, downsampled_from=1000)
    info = {**capture_info(6, 6, 1000), "stored_side": 256, "downsampled_from": 1000}
    start = time.perf_counter()
    panel.render(maps, info)
    qtbot.wait(1)
    panel.grab()
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"render took {elapsed:.3f} s"
    assert panel.grid_tiles[0].shape == (6, 64, 64)  # the grid shows 4 × 4 block means
    # Layer 0, head 0 is uniform: each tile bin is the mean of 4 × 4 values of 1/256.
    np.testing.assert_allclose(panel.grid_tiles[0][0], 1 / 256, rtol=1e-3)
    assert panel.large_data.shape == (256, 256)  # the large view keeps the stored map
    assert "Stored downsampled from 1000 tokens to 256 × 256" in panel.caption_text()
    ticks = panel.large_plot.getAxis("bottom")._tickLevels[0]
    assert 1 < len(ticks) <= 64
    start = time.perf_counter()
    panel.select(5, 5)
    panel.mean_check.setChecked(True)
    assert time.perf_counter() - start < 0.2


def test_block_mean_handles_sides_that_do_not_divide():
    a = np.arange(2 * 100 * 130, dtype=np.float32).reshape(2, 100, 130)
    out = block_mean(a, 64)
    assert out.shape == (2, 50, 44)  # blocks of 2 rows; 2 or 3 columns (130 = 44 near-equal)
    assert out[0, 0, 0] == pytest.approx(a[0, :2, :2].mean())
    assert out[1, -1, -1] == pytest.approx(a[1, -2:, -3:].mean())
    np.testing.assert_allclose(block_mean(np.full((1, 257, 300), 0.5), 64), 0.5)
    assert block_mean(a[:, :10, :10], 64).shape == (2, 10, 10)


# -- latency panel -----------------------------------------------------------------------------
def test_latency_panel_renders_bars_decode_and_overhead(qtbot):
    panel = LatencyPanel()
    qtbot.addWidget(panel)
    panel.resize(900, 400)
    panel.show()
    panel.render(make_result())
    assert panel.labels == ["embed_tokens", "0", "1", "lm_head"]
    np.testing.assert_array_equal(panel.series["layer"][:3], [0.4, 3.0, 4.0])
    assert math.isnan(panel.series["layer"][3])  # not measured: no bar, not 0
    np.testing.assert_array_equal(panel.series["attention"][1:3], [1.5, 1.5])
    assert math.isnan(panel.series["attention"][0])
    assert all(panel.bars[name].isVisible() for name in ("layer", "attention", "mlp"))
    assert panel.bars["layer"].opts["x"].size == 3
    text = panel.summary_text()
    assert "latency 9.00 ms plain, 9.50 ms with live hooks on 4 top-level layers" in text
    assert "profiler overhead ×1.06" in text and "(overhead ×1.11)" in text
    assert "334 tokens/s" in text
    assert "first warm-up pass 120 ms, later warm-up passes 50.0 ms" in text
    assert "prefill 7.13 ms" in text and "median of 4 steps" in text
    assert panel.decode_shown
    np.testing.assert_array_equal(panel.decode_ms, [3.0, 2.9, 3.1, 2.8])
    panel.sub_rows_check.setChecked(False)
    assert panel.bars["layer"].isVisible() and not panel.bars["attention"].isVisible()
    # Below 1 ms pyqtgraph's SI prefix made the axis "ms (x0.001)": a bar at 800 meant 0.8 ms.
    for plot in (panel.plot, panel.decode_plot):
        axis = plot.getAxis("left")
        assert not axis.autoSIPrefix and axis.labelString().count("ms") == 1
    panel.clear()
    assert panel.labels == [] and not panel.decode_shown


def test_latency_panel_shows_missing_values_as_dashes(qtbot):
    panel = LatencyPanel()
    qtbot.addWidget(panel)
    result = make_result(generation=False)
    result.timing = None
    result.totals.plain_latency_ms = None
    result.totals.instrumentation_overhead = None
    result.totals.tokens_per_s = None
    panel.render(result)
    text = panel.summary_text()
    assert f"latency {MISSING} plain" in text
    assert f"profiler overhead {MISSING}" in text and f"(overhead {MISSING})" in text
    assert f"{MISSING} tokens/s" in text
    assert f"first warm-up pass {MISSING}" in text
    assert not panel.decode_shown


# -- main window -------------------------------------------------------------------------------
def test_window_shows_live_maps_then_the_capture_record(qtbot):
    maps = make_maps()
    engine = ScriptedEngine(maps, make_result(attention=capture_info()))
    window = make_window(qtbot, engine)
    tabs = [window.plot_tabs.tabText(i) for i in range(window.plot_tabs.count())]
    assert tabs == ["Memory by layer", "Attention", "Latency", "Model"]
    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        window.start_run({**window.controls.config(), "attention_maps": True})
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=5000)
    window.plot_tabs.setCurrentWidget(window.attention_panel)
    qtbot.wait(10)
    panel = window.attention_panel
    assert panel.shape == (2, 4) and panel.message_text() == ""
    assert panel.caption_text().startswith("Captured with eager attention (the run used sdpa)")
    assert "Attention maps captured for 2 layer(s), 40 token(s)." in window.log.text()
    assert window.latency_panel.labels == ["embed_tokens", "0", "1", "lm_head"]
    # A new run without maps clears both panels and ends in the no-maps state.
    engine.maps = None
    engine.result = make_result(generation=False)
    with qtbot.waitSignal(window.controller.finished, timeout=5000):
        window.start_run({**window.controls.config(), "attention_maps": False})
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=5000)
    assert panel.message_text() == NO_MAPS
    assert not window.latency_panel.decode_shown


def test_saved_run_without_its_maps_file_shows_the_no_maps_state(qtbot, tmp_path):
    from engine.store import RunStore

    store = RunStore(tmp_path / "runs")
    store.save(make_result("no-file", attention=capture_info()))
    store.save(make_result("damaged", attention=capture_info()))
    store.attention_path("damaged").write_bytes(b"not a safetensors file")
    window = make_window(qtbot, store=store)
    assert window.load_saved_run("no-file")
    assert window.attention_panel.message_text() == ("No attention maps: the saved maps file "
                                                     "of this run is missing.")
    assert window.latency_panel.labels  # the rest of the run renders
    assert window.load_saved_run("damaged")
    assert "could not be read" in window.attention_panel.message_text()
    assert "attention maps file damaged.attn.safetensors is damaged" in window.log.text()
    assert window.table.model.rowCount() == len(make_result().layers)  # still usable
    assert window.load_saved_run("no-file")


@pytest.mark.slow
def test_real_engine_attention_and_latency_tabs(qtbot, tmp_path):
    """The real runner on the demo model with attention maps; screenshots of both tabs."""
    from engine.store import RunStore

    store = RunStore(tmp_path)
    window = make_window(qtbot, store=store)
    config = {**window.controls.config(), "model": "demo", "workload": "forward", "seq": 24,
              "attention_maps": True, "repeats": 1, "warmup": 0}
    failures: list = []
    window.controller.failed.connect(lambda *args: failures.append(args))
    with qtbot.waitSignal(window.controller.running_changed, timeout=5000):
        assert window.start_run(config)
    qtbot.waitUntil(lambda: not window.controller.is_running, timeout=60_000)
    assert failures == []
    result = window.current_result
    assert result is not None and result.attention and result.attention["captured"]
    panel = window.attention_panel
    assert panel.shape == (6, 6)
    assert panel.large_data is not None and panel.large_data.shape == (24, 24)
    assert panel.caption_text().startswith("Captured with eager attention (the run used sdpa)")
    np.testing.assert_allclose(panel.large_data.sum(-1), 1.0, atol=5e-3)
    assert window.latency_panel.labels[:2] == ["embed_tokens", "0"]
    assert "profiler overhead ×" in window.latency_panel.summary_text()

    ARTIFACTS.mkdir(exist_ok=True)  # gitignored
    for tab, name in ((panel, "attention_tab.png"),
                      (window.latency_panel, "latency_tab.png")):
        window.plot_tabs.setCurrentWidget(tab)
        qtbot.wait(30)
        image = window.grab().toImage()
        assert image.save(str(ARTIFACTS / name))
        assert distinct_colours(image) > 200

    # Reopened from the store, the maps come from the saved file.
    assert window.load_saved_run(result.run_id)
    assert panel.shape == (6, 6) and panel.message_text() == ""


def test_an_overhead_below_one_reads_as_none_measurable():
    from engine.format import overhead

    assert overhead(1.06) == "×1.06"
    assert overhead(0.98) == "×0.98 (none measurable)"  # noise, never a speed-up
    assert overhead(None) == "—"


def test_bar_labels_name_the_largest_bars_first(qtbot):
    """Labels placed from the left dropped whatever came after a long one, the head's big
    logits bar included; with the bars' sizes the largest keep their names. When one row cannot
    hold every name, a second staggered row does ("embed_tokens" left block 0 unnamed)."""
    import pyqtgraph as pg
    from PySide6.QtGui import QFontMetrics

    from gui.panels.axis import fit_bar_labels

    widget = pg.GraphicsLayoutWidget()
    qtbot.addWidget(widget)
    widget.resize(360, 240)
    widget.show()
    qtbot.waitExposed(widget)
    plot = widget.addPlot()
    axis = plot.getAxis("bottom")
    labels = ["embed_tokens", *map(str, range(12)), "norm", "lm_head", "unattributed"]
    sizes = [1.5, *[1.4] * 12, 0.1, 3.0, 0.01]
    metrics = QFontMetrics(widget.font())

    def placed() -> dict[int, tuple[int, str]]:
        """bar -> (row, text); the labels on one row never overlap."""
        ticks = {int(x): (int(t.startswith("\n")), t.lstrip("\n"))
                 for x, t in axis._tickLevels[0]}
        box = plot.getViewBox()
        for row in (0, 1):
            extents = sorted((box.mapViewToScene(pg.Point(i, 0)).x(),
                              metrics.horizontalAdvance(t)) for i, (r, t) in ticks.items()
                             if r == row)
            assert all(x1 - w1 / 2 >= x0 + w0 / 2 - 1
                       for (x0, w0), (x1, w1) in zip(extents, extents[1:])), (row, ticks)
        return ticks

    fit_bar_labels(plot, labels, widget.font(), sizes)
    shown = {t for _, t in placed().values()}
    assert "lm_head" in shown and "embed_tokens" in shown, shown
    assert "unattributed" not in shown  # the smallest bar, beside the largest: it gave way
    assert axis.fixedHeight >= 2 * metrics.height()  # the second row is not clipped
    # Wider, every bar has its whole name, on two rows
    widget.resize(900, 240)
    qtbot.waitUntil(lambda: plot.getViewBox().width() > 800, timeout=2000)
    fit_bar_labels(plot, labels, widget.font(), sizes)
    ticks = placed()
    assert [ticks[i][1] for i in range(len(labels))] == labels
    assert ticks[0][0] != ticks[1][0]  # block 0 on the other row than embed_tokens
    # Where two rows cannot hold every whole name, a bar gets a shortened name rather than none
    widget.resize(700, 240)
    qtbot.waitUntil(lambda: plot.getViewBox().width() < 700, timeout=2000)
    many = ["embed_tokens", *[f"h.{i}.attention" for i in range(12)], "lm_head", "unattributed"]
    fit_bar_labels(plot, many, widget.font(), [1.0] * len(many))
    elided = {i: t for i, (_, t) in placed().items() if t.endswith("…")}
    assert elided and all(many[i].startswith(t[:-1]) and len(t) >= 4 for i, t in elided.items())
    # A chart whose names all fit one row keeps one row and the axis's own height
    fit_bar_labels(plot, ["a", "b", "c"], widget.font(), [1, 2, 3])
    assert all(r == 0 for r, _ in placed().values()) and axis.fixedHeight is None
    widget.resize(360, 240)
    qtbot.waitUntil(lambda: plot.getViewBox().width() < 400, timeout=2000)
    fit_bar_labels(plot, labels, widget.font())  # without sizes: from the left, as before
    ticks = placed()
    assert ticks[0][1] == "embed_tokens" and ticks[len(labels) - 1][1] == "unattributed"
    assert axis.fixedHeight is not None  # two rows here...
    fit_bar_labels(plot, [], widget.font())  # ...and a cleared chart gives the height back
    assert axis.fixedHeight is None


def test_the_guide_page_explains_itself_and_has_its_run_button(qtbot):
    from gui.panels.guide import GuidePanel

    panel = GuidePanel()
    qtbot.addWidget(panel)
    assert "No guide yet" in panel.browser.placeholderText()
    with qtbot.waitSignal(panel.run_requested, timeout=1000):
        qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)


def test_rows_that_are_not_modules_say_what_they_hold(qtbot):
    from PySide6.QtCore import Qt

    from engine.results import LayerStats
    from gui.panels.layer_table import LayerTablePanel

    panel = LayerTablePanel()
    qtbot.addWidget(panel)
    panel.render([LayerStats("lm_head", "head"), LayerStats("(loss)", "loss",
                                                            at_peak={"activations": 4})])
    tip = panel.model.data(panel.model.index(1, 0), Qt.ItemDataRole.ToolTipRole)
    assert "loss function" in tip and "not a module" in tip
    assert panel.model.data(panel.model.index(0, 0), Qt.ItemDataRole.ToolTipRole) == \
        "Fully qualified module name"


def test_table_marks_incomplete_flops_shows_measured_zeros_and_training_columns(qtbot):
    """FLOPs from a row where an op had no formula carry the CLI's '*'; a module holding
    nothing at the peak shows 0 B (measured), not '—' (not measured); a training run's
    gradients and optimizer state have columns; columns with no value are hidden."""
    from PySide6.QtCore import Qt

    from engine.results import LayerStats
    from gui.panels.layer_table import COLUMNS, LayerTablePanel

    col = {c.title.split(" (")[0]: i for i, c in enumerate(COLUMNS)}
    panel = LayerTablePanel()
    qtbot.addWidget(panel)
    panel.render([LayerStats("mlp", "mlp", flops=12_600_000, flops_complete=False,
                             gradient_bytes=2048, optimizer_state_bytes=4096,
                             at_peak={"weights": 10}),
                  LayerStats("lm_head", "head", flops=5, flops_complete=True)])
    assert panel.cell_text(0, col["FLOPs"]) == "12.6 MFLOP*"
    tip = panel.model.data(panel.model.index(0, col["FLOPs"]), Qt.ItemDataRole.ToolTipRole)
    assert "FLOPs incomplete" in tip
    assert panel.cell_text(1, col["FLOPs"]) == "5 FLOP"
    assert panel.cell_text(1, col["At peak"]) == "0 B"
    assert panel.cell_text(0, col["Gradients"]) == "2.00 KiB"
    assert panel.cell_text(0, col["Optimizer state"]) == "4.00 KiB"
    assert panel.cell_text(1, col["Gradients"]) == "—"
    hidden = {c.title for i, c in enumerate(COLUMNS) if panel.view.isColumnHidden(i)}
    assert hidden == {"Activations (output)", "Saved for backward (own)", "KV cache (at end)",
                      "Transient peak", "Latency"}
    panel.clear()
    assert not any(panel.view.isColumnHidden(i) for i in range(len(COLUMNS)))


def test_the_memory_axes_carry_no_si_factor_for_a_small_run(qtbot):
    """A run under 1 MiB read "MiB at peak (x0.001)": pyqtgraph's SI prefix on a MiB axis."""
    from gui.panels.layer_chart import LayerChartPanel

    result = make_result("small")
    for layer in result.layers:
        layer.at_peak = {k: v // 4096 for k, v in layer.at_peak.items()}
    result.totals.unattributed_bytes //= 4096
    panel = LayerChartPanel()
    qtbot.addWidget(panel)
    panel.resize(800, 400)
    panel.show()
    panel.render(result.layers, result.totals)
    assert "(x" not in panel.plot.getAxis("left").labelString()
    assert "MiB at peak" in panel.plot.getAxis("left").labelString()
    # a 70B-sized run reads in GiB (its axis ran to 9,000 "MiB at peak"); the bars stay MiB
    for layer in result.layers:
        layer.at_peak = {k: v * 4096 * 10_000 for k, v in layer.at_peak.items()}
    panel.render(result.layers, result.totals)
    axis = panel.plot.getAxis("left")
    assert "GiB at peak" in axis.labelString() and axis.scale == 1 / 1024
    panel.log_check.setChecked(True)  # log ticks are decades of MiB
    assert "MiB at peak (log)" in axis.labelString() and axis.scale == 1.0
    from engine.compare import compare
    from gui.panels.compare import ComparePanel

    other = make_result("big-2")
    for layer in other.layers:
        layer.at_peak = {k: v * 4096 * 10_000 for k, v in layer.at_peak.items()}
    view = ComparePanel()
    qtbot.addWidget(view)
    view.resize(900, 500)
    view.show()
    view.render(compare([result, other]))
    bars = view.bars_plot.getAxis("left")
    assert "GiB at peak" in bars.labelString() and bars.scale == 1 / 1024


def test_compare_legend_tells_many_runs_apart():
    """A guide's fifteen runs a workload: [0] and [10] were the same blue, and names cut at
    36 characters hid what told two runs apart ("lora:rank=8,targets=attentio…" twice)."""
    from gui.panels.compare import RUN_COLORS, legend_names, run_color

    assert len({run_color(i) for i in range(15)}) == 15 and len(set(RUN_COLORS)) == 20
    names = legend_names(["guide: lora:rank=8,targets=attention,mlp + checkpointing:every_n=1",
                          "guide: lora:rank=8,targets=attention",
                          "guide: prune-unstructured:amount=0.5,permanent=true"])
    assert names[1:] == ["lora:rank=8,targets=attention",
                         "prune-unstructured:amount=0.5,permanent=true"]  # shared "guide: " off
    assert names[0].startswith("lora:rank=8") and names[0].endswith("every_n=1")
    assert len(set(names)) == 3 and all(len(n) <= 44 for n in names)
    assert legend_names(["fwd", "guide: x"]) == ["fwd", "guide: x"]  # nothing shared: as given


def test_an_estimates_totals_give_the_time_the_command_line_gives():
    """The report said "run took 4.4 s" where `memlens show` said "estimate made in 1.34 s":
    both now give the estimate's own time, the window's with the whole run's beside it."""
    from engine.config import RunConfig
    from engine.results import RunResult
    from gui.panels.totals import totals_lines

    run = RunResult(config=RunConfig(), run_id="e", duration_s=4.4,
                    estimate={"build_seconds": 0.25, "warmup_seconds": 0.0,
                              "pass_seconds": 1.09})
    assert run.estimate_seconds == pytest.approx(1.34)
    text = "\n".join(totals_lines(run))
    assert "estimate made in 1.3 s of a 4.4 s run" in text, text
    assert "run took" not in text
    measured = RunResult(config=RunConfig(), run_id="m", duration_s=4.4)
    assert "run took 4.4 s" in "\n".join(totals_lines(measured))
    # an under-counted FLOP total is marked as the table's rows are (it read as complete)
    measured.totals.flops = 29_900_000
    assert "29.9 MFLOP" in "\n".join(totals_lines(measured))
    assert "*" not in "\n".join(totals_lines(measured))
    measured.totals.flops_uncounted_ops = ["quantized.linear_dynamic"]
    assert ("29.9 MFLOP* (under-counted: no FLOP formula for quantized.linear_dynamic)"
            in "\n".join(totals_lines(measured)))


def test_a_tied_head_says_where_its_weights_are_counted():
    """The per-layer tables showed the tied head's weights as 0 B with nothing to say why."""
    import io

    from engine.cli import print_report
    from engine.runner import execute
    from gui.panels.totals import totals_lines

    from .helpers import Collector, tiny

    run = execute(tiny(model="preset:tiny-gpt2", workload="forward", seq=8), Collector())
    head = next(x for x in run.layers if x.name == "lm_head")
    assert head.weights_bytes == 0
    words = "lm_head shares its weights with transformer.wte: they are counted once, there"
    out = io.StringIO()
    print_report(run, out)
    assert words in out.getvalue()
    assert words in "\n".join(totals_lines(run))


def test_timeline_names_phases_too_short_for_their_band(qtbot):
    """A report's timeline showed the memory and timing passes as unnamed slivers after a long
    load: a phase whose name does not fit on its band is named under the chart, with its times."""
    from gui.panels.timeline import TimelinePanel

    panel = TimelinePanel()
    qtbot.addWidget(panel)
    panel.resize(800, 300)
    panel.show()
    t = [i * 0.01 for i in range(400)]
    phase = ["load"] * 390 + ["memory"] * 5 + ["timing"] * 5
    assert panel.set_timeline({"t": t, "phase": phase, "rss_bytes": [1 << 20] * 400})
    qtbot.waitUntil(lambda: panel.phase_note.isVisible(), timeout=2000)
    note = panel.phase_note.text()
    assert "memory 3.90–3.95 s" in note and "timing 3.95–3.99 s" in note, note
    assert "load" not in note  # named on its band
    # an estimate's empty timeline next: the note of the last run's phases goes with them
    panel.clear("An estimate samples nothing.")
    qtbot.waitUntil(lambda: not panel.phase_note.isVisible(), timeout=2000)
    assert panel.phase_note.text() == ""
