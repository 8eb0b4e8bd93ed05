"""Reports: one run, or several side by side, as a self-contained HTML file, a PDF and PNGs.

The pictures are the app's own panels (``gui.panels``) rendered offscreen at a fixed size, so a
report shows exactly what the window shows; there is no second plotting stack. The text is the
run record formatted (``engine.format``, the panels' own text helpers): the report measures and
computes nothing; a value the run did not record shows as "—", and an estimate says so at the
top of its section, in its totals line and in its chart title.

API (for the window's File → Export report… and for scripts)::

    from gui.report import write_report
    files = write_report(results, Path("out"), pdf=True, attention={run_id: maps})
    files.html, files.pdf, files.images   # report.html, report.pdf (or None), the PNGs

``results`` is a list of ``RunResult`` (the first is the reference when there are several: a
comparison section with the compare view follows the runs); ``attention`` maps run ids to their
``AttentionMaps`` (``RunStore.load_attention``), runs without maps get no attention picture.
A ``QApplication`` must exist (the CLI creates one; the window already has one). Errors are
``MemLensError`` (kind ``store``) naming the folder and the fix.

Command line (through the ``memlens`` launcher, headless with offscreen Qt)::

    memlens report RUN [RUN2 ...] --out DIR [--pdf] [--store DIR]
    memlens report --guide DIR/guide.json --out DIR [--pdf] [--store DIR]

``RUN`` is a run id in the store or a path to a run JSON; attention maps are read from the store
(or from ``RUN_ID.attn.safetensors`` beside a run file).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.compare import optimizations_text
from engine.errors import ErrorKind, MemLensError
from engine.format import (MISSING, against_baseline, human_bytes, human_count, human_flops,
                           human_ms, human_seconds, kv_cache_text, layer_passes_text,
                           quality_parts)
from engine.results import RunResult

PANEL_WIDTH = 1200  # every picture is this many pixels wide
PANEL_HEIGHTS = {"chart": 520, "timeline": 420, "latency": 480, "attention": 560, "model": 560,
                 "compare": 700}
PDF_IMAGE_WIDTH = 700  # of the A4 printable width, 705 units at 96 per inch
FONT_FAMILIES = ("DejaVu Sans", "WenQuanYi Micro Hei", "Noto Sans CJK SC", "Microsoft YaHei",
                 "PingFang SC", "sans-serif")
ESTIMATE_BANNER = ("ESTIMATE — no weights, no real memory: the model ran on fake tensors "
                   "(shapes only). Figures are what a CPU run would count; latency is not "
                   "estimated.")


@dataclass
class Shot:
    """One rendered panel: a PNG file and what it shows."""

    key: str
    title: str
    path: Path
    caption: str = ""


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    folder: Path
    html: Path
    pdf: Path | None = None
    images: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # a guide's runs not in the run store
    removed: list[str] = field(default_factory=list)  # the previous report's files, not rewritten


# -- cancelling, and writing all or nothing --------------------------------------------------------
# Ctrl+C while Qt renders: Python's KeyboardInterrupt raised inside a paint callback crashed the
# process (a segfault) or left half a report. ``memlens report`` sets this flag from its signal
# handler instead, and the report stops at the next panel.
_INTERRUPTED = threading.Event()


def _check_interrupt() -> None:
    if _INTERRUPTED.is_set():
        raise MemLensError(ErrorKind.CANCELLED, "The report was cancelled.",
                           "Nothing was written: the folder's previous report, if any, is as it "
                           "was. Run it again when ready.")


STALE_STAGING_S = 3600  # a staging folder this old is a killed report's, not one being written


@contextlib.contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    """A hidden folder inside ``folder`` the report is written into; :func:`_publish` moves its
    files out once all are written, so a cancelled or failed report leaves nothing half done
    (nor half of a previous report overwritten)."""
    for old in folder.glob(".memlens-writing-*"):  # a report killed outright (SIGKILL) left it
        with contextlib.suppress(OSError):
            if old.is_dir() and time.time() - old.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(old, ignore_errors=True)
    try:
        stage = Path(tempfile.mkdtemp(prefix=".memlens-writing-", dir=folder))
    except OSError as exc:
        raise MemLensError(ErrorKind.STORE, f"Cannot write the report to {folder}: "
                           f"{exc.strerror or exc}.",
                           "Choose a writable folder with free space.") from exc
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(files: ReportFiles, folder: Path) -> ReportFiles:
    """Move what was written into the staging folder to ``folder`` (renames in one file
    system), the HTML last; a file in the way that cannot be replaced (a folder of that name,
    a PDF held open by a viewer on Windows) puts back every file already replaced, so the
    folder holds the previous report or the new one, never a mix. Returns the files at their
    final paths."""
    _check_interrupt()
    stage = files.html.parent
    previous = stage / ".previous"
    order = [p for p in (*files.images, files.pdf, files.html) if p is not None]
    done: list[tuple[Path, Path | None]] = []  # (final path, the previous file kept aside)

    def undo() -> None:
        for final, kept in reversed(done):
            with contextlib.suppress(OSError):
                if kept is not None:
                    os.replace(kept, final)
                else:
                    final.unlink()

    for path in order:
        final = folder / path.name
        kept: Path | None = None
        try:
            if final.is_dir() and not final.is_symlink():
                raise IsADirectoryError(21, "a folder of that name is in the way", str(final))
            if final.exists() or final.is_symlink():
                previous.mkdir(exist_ok=True)
                kept = previous / path.name
                os.replace(final, kept)
            done.append((final, kept))
            os.replace(path, final)
        except OSError as exc:
            undo()
            raise MemLensError(ErrorKind.STORE, f"Cannot write {final}: {exc.strerror or exc}; "
                               "the folder keeps the previous report.",
                               "Close a viewer that holds the file open, or choose another "
                               "folder.") from exc
    by_name = {p.name: folder / p.name for p in order}
    return ReportFiles(folder=folder, html=by_name[files.html.name],
                       pdf=by_name[files.pdf.name] if files.pdf is not None else None,
                       images=[by_name[p.name] for p in files.images], missing=files.missing)


# -- rendering the panels -----------------------------------------------------------------------
def _grab(widget: Any, height: int | None, path: Path,
          fill: Callable[[], Any] | None = None,
          fit: Callable[[], int] | None = None,
          wide: Callable[[], int] | None = None) -> Path:
    """Show ``widget`` offscreen at PANEL_WIDTH × ``height``, call ``fill`` (the panel's
    ``render``: charts fit their labels to the size they have), optionally resize to the
    height ``fit`` returns (or the widget's preferred height when ``height`` is None) and to
    the width ``wide`` returns when more than PANEL_WIDTH (a table whose columns need more),
    render it to ``path`` and close it."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    from . import theme

    _check_interrupt()
    light = theme.THEMES["light"]
    widget.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen, True)
    widget.setPalette(theme._palette(light))  # paper is light, whatever the window's theme
    widget.setAutoFillBackground(True)
    widget.resize(PANEL_WIDTH, height or 200)
    widget.show()
    QApplication.processEvents()
    if fill is not None:
        fill()
        QApplication.processEvents()
    wanted = fit() if fit is not None else None
    if wanted is None and height is None:
        wanted = widget.heightForWidth(PANEL_WIDTH)
        wanted = wanted if wanted > 0 else widget.sizeHint().height()
    width = max(PANEL_WIDTH, int(wide())) if wide is not None else PANEL_WIDTH
    if wanted is not None or width != PANEL_WIDTH:
        widget.resize(width, max(int(wanted), 20) if wanted is not None else widget.height())
        QApplication.processEvents()
    theme.recolor_plots(widget, light)
    if hasattr(widget, "_apply_ticks"):  # the bar charts fit their labels to the final size
        widget._apply_ticks()
    QApplication.processEvents()
    image = widget.grab().toImage()
    widget.close()
    widget.deleteLater()
    if not image.save(str(path), "PNG"):
        raise MemLensError(ErrorKind.STORE, f"Could not write {path}.",
                           "Choose a writable folder with free space.")
    return path


def _tree_height(panel: Any) -> int:
    """Enough height for the module tree's open rows (the panel's own expansion), capped."""
    tree = panel.tree
    rows = 0

    def visit(item: Any) -> None:
        nonlocal rows
        rows += 1
        if item.isExpanded():
            for i in range(item.childCount()):
                visit(item.child(i))

    for i in range(tree.topLevelItemCount()):
        visit(tree.topLevelItem(i))
    row = max(tree.sizeHintForRow(0), 14)
    chrome = panel.height() - tree.viewport().height()
    return min(chrome + rows * row + 8, PANEL_HEIGHTS["model"])


TABLE_PICTURE_MAX_HEIGHT = 1600


def _table_height(rows: int) -> int:
    return min(30 + 22 * rows + 6, TABLE_PICTURE_MAX_HEIGHT)


def _table_width(panel: Any) -> int:
    """The width the per-layer table's shown columns take at their contents' widths."""
    view = panel.view
    view.resizeColumnsToContents()
    columns = sum(view.columnWidth(i) for i in range(view.model().columnCount())
                  if not view.isColumnHidden(i))
    return columns + 2 * view.frameWidth() + 4


def _table_rows_shown(rows: int) -> int:
    """How many of ``rows`` the per-layer table's picture holds (its height is capped)."""
    return min(rows, (TABLE_PICTURE_MAX_HEIGHT - 36) // 22)


def _chart_outline(chart: Any, result: RunResult) -> None:
    """The dashed outline the window draws: the unoptimized model measured in the same run."""
    from engine.aggregate import outline_from_layers

    if result.baseline and result.baseline.get("layers") and chart.groups:
        per_layer = {name: row.get("at_peak_bytes")
                     for name, row in result.baseline["layers"].items()}
        chart.set_outline(outline_from_layers(chart.groups, per_layer), "unoptimized (same run)")


def render_run_panels(result: RunResult, folder: Path, prefix: str,
                      attention: Any = None) -> list[Shot]:
    """Render the window's panels for one run to PNGs in ``folder`` (names start ``prefix``)."""
    from .panels.attention import AttentionPanel
    from .panels.latency import LatencyPanel
    from .panels.layer_chart import LayerChartPanel
    from .panels.layer_table import LayerTablePanel
    from .panels.model_tree import ModelTreePanel
    from .panels.timeline import TimelinePanel
    from .panels.totals import TotalsPanel

    from PySide6.QtCore import Qt

    estimate = result.estimate is not None
    shots: list[Shot] = []

    def add(key: str, title: str, widget: Any, height: int | None, fill: Callable[[], Any],
            fit: Callable[[], int] | None = None) -> None:
        shots.append(Shot(key, title, _grab(widget, height, folder / f"{prefix}-{key}.png",
                                            fill, fit)))

    chart = LayerChartPanel()

    def fill_chart() -> None:
        chart.render(result.layers, result.totals)
        _chart_outline(chart, result)
        chart.plot.setTitle("Estimated memory at peak by layer" if estimate
                            else "Memory at peak by layer", color="#202020")

    shots.append(Shot("memory-by-layer", "Memory at peak by layer"
                      + (" (estimate)" if estimate else ""),
                      _grab(chart, PANEL_HEIGHTS["chart"], folder / f"{prefix}-memory-by-layer.png",
                            fill_chart),
                      f"Stacked bytes live at the {'estimated' if estimate else 'measured'} "
                      "peak per block or top-level layer; the unattributed bar completes the "
                      "peak. A dashed outline, when drawn, is the unoptimized model measured in "
                      "the same run."))
    mark = " (estimate)" if estimate else ""
    table = LayerTablePanel()
    # (every column whole, however many a run has: a training run's last column was cut off
    # behind a scroll bar at the picture's width; the picture is as wide as they need)
    for bar in (table.view.horizontalScrollBar(), table.view.verticalScrollBar()):
        bar.setEnabled(False)
    table.view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    table.view.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    shots.append(Shot("per-layer-table", "Per-layer table" + mark, _grab(
        table, _table_height(len(result.layers)), folder / f"{prefix}-per-layer-table.png",
        lambda: table.render(result.layers), wide=lambda: _table_width(table))))
    shown = _table_rows_shown(len(result.layers))
    if shown < len(result.layers):
        shots[-1].caption = (f"The first {shown} of {len(result.layers)} rows; the per-layer "
                             "table in the text lists every row.")
    totals = TotalsPanel()
    add("totals", "Totals" + mark, totals, None, lambda: totals.render(result))
    if result.timeline and result.timeline.get("t"):
        timeline = TimelinePanel()
        add("timeline", "Memory over time", timeline, PANEL_HEIGHTS["timeline"],
            lambda: timeline.set_timeline(result.timeline))
    if any(layer.latency_ms is not None for layer in result.layers):
        latency = LatencyPanel()
        latency.sub_rows_check.setVisible(False)  # (a control; the sub-rows are drawn)
        add("latency", "Latency", latency, PANEL_HEIGHTS["latency"],
            lambda: latency.render(result))
    if attention is not None and getattr(attention, "maps", None):
        panel = AttentionPanel()
        add("attention", "Attention maps", panel, PANEL_HEIGHTS["attention"],
            lambda: panel.render(attention, result.attention))
    if (result.model_info.get("module_tree") or {}).get("modules"):
        tree = ModelTreePanel()
        add("model", "Model (module tree)", tree, PANEL_HEIGHTS["model"],
            lambda: tree.render(result), lambda: _tree_height(tree))
        shots[-1].caption = ("Opened as the window opens it (the first levels, and every module "
                             "an optimization changed), up to the picture's height; the run file "
                             "lists every module.")
    return shots


def render_compare_panel(results: Sequence[RunResult], folder: Path,
                         name: str = "compare.png", against_own: bool = False,
                         table: bool = True, ranks: Sequence[int] | None = None) -> Shot:
    """The compare view of ``results``; ``against_own`` (the guide's picture) sets each run
    against its own unoptimized model, numbered #1… as the guide's table, not against [0].
    Without ``table``, the charts alone (the guide's own ranked table gives the figures: its
    13 rows shrunk to the page's width with the charts could not be read on paper)."""
    from engine.compare import compare

    from .panels.compare import ComparePanel

    panel = ComparePanel()
    panel.table.setVisible(table)
    # (a control, not a figure: on paper its box read as an option, cut at the picture's edge)
    panel.controls_shown = False

    def fit() -> int:
        """The charts at their usual height and the table at its rows' height: no empty
        space under a short table, no rows cut from a long one."""
        plots = 460
        message = panel.message.heightForWidth(PANEL_WIDTH - 12)
        if not table:
            panel.splitter.setSizes([plots, 0])
            return max(message, 20) + plots + 12
        table_view = panel.table
        table_view.resizeColumnsToContents()
        for column in range(table_view.columnCount()):  # long optimization lists wrap instead
            table_view.setColumnWidth(column, min(table_view.columnWidth(column), 320))
        table_view.setWordWrap(True)
        table_view.resizeRowsToContents()
        rows = (table_view.horizontalHeader().height() + 6
                + sum(table_view.rowHeight(r) for r in range(table_view.rowCount())))
        if table_view.horizontalHeader().length() > PANEL_WIDTH:
            rows += table_view.horizontalScrollBar().sizeHint().height()
        panel.splitter.setSizes([plots, rows])
        return max(message, 20) + plots + rows + panel.splitter.handleWidth() + 12

    path = _grab(panel, PANEL_HEIGHTS["compare"], folder / name,
                 lambda: panel.render(compare(results, against_own=against_own, ranks=ranks)),
                 fit)
    return Shot("compare", "Compare view", path)


# -- text ---------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value))


def _v(value: Any) -> str:
    """A record value as text: None is "—", never 0."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_v(v) for v in value) or MISSING
    if isinstance(value, dict):
        return ", ".join(f"{k}={_v(v)}" for k, v in value.items()) or MISSING
    return str(value)


def _bytes_exact(value: Any) -> str:
    if value is None:
        return MISSING
    return f"{human_bytes(value)} ({int(value):,} B)"


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th align='left' valign='top'>{_e(k)}</th><td>{_e(v)}</td></tr>"
                   for k, v in rows)
    return (f"<table class='kv' border='0' cellspacing='0' cellpadding='2'>{body}</table>")


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _flatten(f"{prefix}.{k}" if prefix else str(k), v)
        return out
    return [(prefix, value)]


def _config_rows(result: RunResult) -> list[tuple[str, str]]:
    from engine.compare import optimizations_text

    cfg, info = result.config, result.model_info
    rows = [("run id", result.run_id or MISSING), ("created", result.created or MISSING),
            ("kind", ("ESTIMATE (fake tensors" + (
                f"; rank 0 of {result.estimate['tensor_parallel']}, tensor parallel"
                if (result.estimate.get("tensor_parallel") or 1) > 1 else "") + ")")
             if result.estimate is not None else "measured"),
            ("model", cfg.model), ("label", cfg.label or MISSING),
            ("workload", cfg.workload), ("batch", _v(cfg.batch))]
    shape = (result.inputs or {}).get("shape")
    if cfg.prompt and shape and len(shape) > 1:  # the prompt sets the length, not Sequence
        rows.append(("sequence", f"{shape[1]} tokens: the prompt's (the sequence setting, "
                                 f"{cfg.seq}, was not used)"))
    else:
        rows.append(("sequence", _v(cfg.seq)))
    if cfg.workload == "generate":
        rows.append(("new tokens", _v(cfg.new_tokens)))
    rows += [("prompt", cfg.prompt if cfg.prompt is not None else MISSING),
             ("inputs", f"{(result.inputs or {}).get('source', MISSING)}, shape "
                        + ("(" + ", ".join(map(str, shape)) + ")"
                           if (shape := (result.inputs or {}).get("shape")) else MISSING)),
             ("seed", _v(getattr(cfg, "seed", None))),
             ("device", _v(info.get("device") or cfg.device)),
             ("dtype", f"{_v(info.get('dtype'))} ("
                       + (f"loaded {info['loaded_dtype']}; "
                          if info.get("loaded_dtype") not in (None, info.get("dtype")) else "")
                       + f"asked: {cfg.dtype})"),
             ("attention", f"{_v(info.get('attn_implementation'))} (asked: {cfg.attention_impl})"),
             ("attention maps", _v(cfg.attention_maps)),
             ("repeats / warm-up", "none: an estimate times nothing" if result.estimate
              is not None else f"{cfg.repeats} / {cfg.warmup}"),
             ("optimizations", optimizations_text(result.optimizations)),
             *([("optimizer", f"{result.training.get('optimizer', MISSING)}, learning rate "
                              f"{_v(result.training.get('lr'))}")] if result.training else []),
             ("architecture", _v(info.get("architecture"))),
             ("parameters", f"{human_count(info.get('parameters'))} ({_v(info.get('parameters'))})"),
             ("layers × heads (KV heads, head dim)",
              f"{_v(info.get('num_layers'))} × {_v(info.get('num_attention_heads'))} "
              f"({_v(info.get('num_key_value_heads'))}, {_v(info.get('head_dim'))})"),
             ("weights", "none: fake tensors (shapes only)" if result.estimate is not None
              else "random (built from the config)" if info.get("random_weights")
              else "loaded" if info else MISSING),
             ("run took", human_seconds(result.duration_s) if result.duration_s else MISSING)]
    if result.estimate is not None:
        rows.append(("estimate", "; ".join(
            f"{k.removesuffix('_seconds').replace('_', ' ')} {v:.2f} s"
            if k.endswith("seconds") and isinstance(v, (int, float))
            else f"{k.replace('_', ' ')} {v}" for k, v in result.estimate.items())))
    return rows


_ENV_NAMES = {"python_implementation": "Python implementation", "python": "Python",
              "ram_total_bytes": "RAM", "nvml.available": "NVML available",
              "nvml.reason": "NVML", "memlens": "MemLens"}


def _environment_rows(result: RunResult) -> list[tuple[str, str]]:
    """The run's environment, keys made readable ("cpu.logical_cores" → "CPU logical cores",
    "libraries.torch" → "torch"); a library recorded without a version was not installed."""
    rows = []
    for key, value in _flatten("", result.environment):
        library = key.startswith("libraries.")
        name = key.removeprefix("libraries.")
        if name in _ENV_NAMES:
            label = _ENV_NAMES[name]
        elif library:
            label = name
        else:
            label = name.removesuffix("_bytes").replace(".", " ").replace("_", " ")
            label = " ".join(w.upper() if w in ("cpu", "cuda", "gpu", "nvml", "ram") else w
                             for w in label.split())
        if library and value is None:
            text = "not installed"
        else:
            text = _bytes_exact(value) if key.endswith("_bytes") else _v(value)
        rows.append((label[:1].upper() + label[1:] if not library else label, text))
    return rows or [("environment", "not recorded")]


def _totals_html(result: RunResult) -> str:
    from engine.aggregate import reconciliation_line

    from .panels.latency import summary_lines
    from .panels.totals import totals_lines

    t = result.totals
    timed = any(layer.latency_ms is not None for layer in result.layers)
    lines = totals_lines(result, speed=not timed)  # the latency lines below say it once
    ok = "reconciles" if t.reconciles() else "DOES NOT RECONCILE"
    exact = (f"{ok}: {t.peak_bytes:,} = {t.attributed_bytes:,} + {t.unattributed_bytes:,} bytes "
             f"({reconciliation_line(t, str).split('(')[-1].rstrip(')')})")
    g = result.generation
    full_text = bool(g and g.get("text"))
    parts = [f"<p class='recon'><b>{_e(lines[0])}</b><br>{_e(exact)}</p>", "<ul>"]
    # (the generated text is given whole below: its excerpt would say it twice)
    parts += [f"<li>{_e(line)}</li>" for line in lines[1:]
              if not (full_text and line.startswith("generated: "))]
    if result.phase_peaks:
        parts.append("<li>phase peaks: " + _e(" · ".join(
            f"{k} {human_bytes(v)}" for k, v in result.phase_peaks.items())) + "</li>")
    if timed:
        parts += [f"<li>{_e(line)}</li>" for line in summary_lines(result)]
    if g:
        steps = g.get("decode_ms_per_step") or []
        peaks = ("" if result.phase_peaks else  # (the phase peaks above say them)
                 f"; tensor-accounting peak prefill {human_bytes(g.get('prefill_peak_bytes'))}"
                 f", decode {human_bytes(g.get('decode_peak_bytes'))}")
        parts.append(
            f"<li>KV cache and memory of the generation: {_v(g.get('prompt_tokens'))} prompt "
            f"tokens + {_v(g.get('new_tokens'))} new; at the end {kv_cache_text(g)} (the "
            f"totals' KV cache is the cache at the peak){peaks}; {len(steps)} decode steps "
            "timed</li>")
        if g.get("text"):
            parts.append(f"<li>generated text: <span class='user'>{_e(g['text'])}</span></li>")
    tr = result.training
    if tr:
        parts.append(
            f"<li>training step: loss {_v(tr.get('loss'))}"
            f"{' (synthetic)' if tr.get('synthetic_loss') else ''}; saved for backward "
            f"{human_bytes(tr.get('saved_for_backward_bytes'))}, gradients "
            f"{human_bytes(tr.get('gradient_bytes'))}, optimizer state "
            f"{human_bytes(tr.get('optimizer_state_bytes'))}; forward "
            f"{human_ms(tr.get('forward_ms'))}, backward {human_ms(tr.get('backward_ms'))}, "
            f"optimizer {human_ms(tr.get('optimizer_ms'))}"
            + (f" = {human_ms(tr['step_ms'])}, from {_e(tr['phases_from'])}, with live hooks"
               if tr.get("step_ms") and tr.get("phases_from") else "")
            + "</li>")
    a = result.attention
    if a and a.get("captured"):
        from .panels.attention import capture_text

        parts.append(f"<li>attention maps: {_e(capture_text(a, None))}</li>")
    elif a and a.get("reason"):
        parts.append(f"<li>attention maps not captured: {_e(a['reason'])}</li>")
    parts.append("</ul>")
    return "".join(parts)


def _layer_table_html(result: RunResult) -> str:
    from .panels.layer_table import COLUMNS, FLOPS_INCOMPLETE, cell_text, used_columns

    # The columns with a value in some row, as the window shows them: a column of dashes (saved
    # for backward in inference, gradients outside training) only pushed the last columns off
    # the PDF's page.
    shown = used_columns(result.layers)
    columns = [COLUMNS[i] for i in shown]
    left_out = [c.title for i, c in enumerate(COLUMNS) if i not in shown]
    # Cells do not wrap, so a wider table (a training run's eleven columns) takes a smaller
    # type to stay within the A4 page (set on every cell: Qt's rich text does not inherit a
    # table's font size).
    size = max(6.5, 8.0 - 0.75 * max(len(columns) - 9, 0))
    nowrap = f"style='white-space: nowrap; font-size: {size:g}pt'"
    rows = []
    for layer in result.layers:
        cells = []
        for i, column in enumerate(columns):
            if i == 0:  # children indented under their block, by their own name
                name = layer.name.rsplit(".", 1)[-1] if layer.depth else layer.name
                text = "&nbsp;" * 3 * max(layer.depth, 0) + _e(name)
            else:
                text = _e(cell_text(column, layer))
            align = "right" if column.numeric else "left"
            cells.append(f"<td align='{align}' {nowrap}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    # Header words broken mid-word ("Activation s") read badly: a header breaks only at spaces.
    head = "".join(f"<th {nowrap}>{_e(c.title).replace(' ', '<br>')}</th>" for c in columns)
    t = result.totals
    peak_name = "estimated peak" if result.estimate is not None else "peak"
    # The peak row also carries the run's totals where a column has one (as the CLI's table):
    # all the model's weights at rest, the whole pass's latency and FLOPs.
    whole = {"Weights (own)": human_bytes(t.model_weights_bytes),
             "Latency": human_ms(t.latency_ms) if t.latency_ms is not None else "",
             "FLOPs": (human_flops(t.flops) + ("*" if t.flops_uncounted_ops else ""))
             if t.flops is not None else ""}

    def summary(label: str, at_peak: str, totals: dict[str, str]) -> str:
        cells = [f"<td {nowrap}>{label}</td>"]
        for column in columns[1:-1]:
            cells.append(f"<td align='right' {nowrap}>{_e(totals.get(column.title, ''))}</td>")
        cells.append(f"<td align='right' {nowrap}>{at_peak}</td>")
        return "<tr class='sum'>" + "".join(cells) + "</tr>"

    rows.append(summary("unattributed", _e(human_bytes(t.unattributed_bytes)), {}))
    rows.append(summary(f"<b>{peak_name}</b>", f"<b>{_e(human_bytes(t.peak_bytes))}</b>",
                        whole))
    notes = ["Weights, saved for backward, gradients, optimizer state and at-peak bytes are "
             "exclusive (a block's row excludes its attention and MLP rows); output bytes, "
             "transient peaks, latency and FLOPs are inclusive. The peak row's weights are all "
             "the model's weights at rest, and its latency and FLOPs the whole pass's"
             + (f" (timed with the layers' hooks, as each row is; {human_ms(t.plain_latency_ms)}"
                " without them, the latency in the totals)"
                if t.latency_ms is not None and t.plain_latency_ms is not None else "") + "."]
    if result.training:
        notes.append("A training step's rows time and count each layer's forward; the peak "
                     "row's latency and FLOPs are the whole step (forward, backward, optimizer).")
    if passes := layer_passes_text(result):
        notes.append(f"A generation's rows time and count each layer over {passes} (its "
                     "output bytes are its largest call's, the prefill's); the decode steps alone "
                     "are timed in the latency chart.")
    if any(layer.flops_complete is False for layer in result.layers) or t.flops_uncounted_ops:
        notes.append(FLOPS_INCOMPLETE + ".")
    if left_out:
        notes.append("Not recorded in this run, so left out: " + ", ".join(left_out).lower()
                     + ".")
    notes.append("Exact bytes are in layers.csv (<code>memlens export RUN --csv DIR</code>).")
    # <thead>: the PDF repeats the header row on every page the table continues on.
    return (f"<table class='grid' border='1' cellspacing='0' cellpadding='3'>"
            f"<thead><tr>{head}</tr></thead>"
            + "".join(rows) + "</table>"
            "<p class='note'>" + " ".join(
                n if n.endswith("</code>).") else _e(n) for n in notes) + "</p>")


def _optimizations_html(result: RunResult) -> str:
    parts = []
    if not result.optimizations:
        parts.append("<p>No optimization was applied in this run.</p>")
    else:
        rows = []
        for a in result.optimizations:
            rows.append(
                f"<tr><td>{_e(a.get('name', a.get('id')))} "
                f"(<code>{_e(optimizations_text([a]))}</code>)</td>"
                f"<td align='right'>{_e(_v(a.get('modules_touched')))}</td>"
                f"<td align='right'>{_e(human_bytes(a.get('weights_bytes_before')))} → "
                f"{_e(human_bytes(a.get('weights_bytes_after')))}</td>"
                f"<td align='right'>{_e(human_seconds(a.get('seconds')))}</td>"
                f"<td>{_e('; '.join(a.get('notes') or []) or MISSING)}</td></tr>")
        parts.append("<table class='grid' border='1' cellspacing='0' cellpadding='3'><tr>"
                     "<th>optimization</th><th>modules changed</th><th>weights</th>"
                     "<th>applied in</th><th>notes</th></tr>" + "".join(rows) + "</table>")
    base, d = result.baseline, result.deltas or {}
    if base:
        parts.append("<p>Against the unoptimized model measured in the same run: "
                     f"{_e(', '.join(against_baseline(result)))}"
                     + ("" if d.get("latency_ratio") else f", latency {MISSING}") + ".</p>")
    q = result.quality or {}
    quality = quality_parts(q)
    if quality:
        how = f" Scored as {q['through_cache']}." if q.get("through_cache") else ""
        parts.append(f"<p>Quality on {_e(q.get('text', MISSING))} ({_e(_v(q.get('tokens')))} "
                     f"tokens): {_e('; '.join(quality))}.{_e(how)}</p>")
    elif q:
        parts.append(f"<p>Quality: no figure ({_e(q.get('text', 'not measured'))}).</p>")
    else:
        parts.append("<p>Quality: not measured in this run.</p>")
    return "".join(parts)


def _signed(n: Any) -> str:
    if n is None:
        return MISSING
    return ("+" if n > 0 else "−" if n < 0 else "±") + human_bytes(abs(n))


def _list_html(items: Sequence[str], empty: str) -> str:
    if not items:
        return f"<p>{_e(empty)}</p>"
    return "<ul>" + "".join(f"<li>{_e(item)}</li>" for item in items) + "</ul>"


def _compare_table_html(results: Sequence[RunResult]) -> str:
    from engine.compare import compare, optimizations_text, quality_text

    c = compare(results)
    names = c.labels()
    # The model and workload get a column only when they differ (else the note says them once);
    # a run id never breaks ("20261207-0 54518-…"): it sits under the run's name, whole.
    kinds = list(dict.fromkeys(f"{r.config.model} · {r.config.workload}" for r in c.runs))
    nowrap = "style='white-space: nowrap'"
    rows = []
    for i, run in enumerate(c.runs):
        # (labels() says "(estimate)" already; a long name keeps its end, which is what tells
        # repeated names apart)
        name = names[i]
        spec = optimizations_text(run.optimizations) if run.optimizations else ""
        if spec and not (run.config.label or "").strip() and name.startswith(spec):
            # (the name is the optimizations column's text: said once, in that column; the
            # same long spec twice took two fifths of the page from the quality column)
            name = name[len(spec):].strip(" ·")
        name = name if len(name) <= 40 else "…" + name[-39:]
        # (the run ids are listed under the table: in the table, a whole id took a third of
        # the page and squeezed the quality column to a few letters a line)
        first = f"<td>[{i}] {_e(name)}</td>" if name else f"<td>[{i}]</td>"
        words = ([f"{run.config.model} · {run.config.workload}"] if len(kinds) > 1 else []) + [
            optimizations_text(run.optimizations)]
        figures = [human_bytes(c.peaks[i]), _signed(c.peaks[i] - c.peaks[0]) if i else
                   "reference", human_bytes(run.totals.model_weights_bytes),
                   human_ms(c.latency_ms[i]), c.ratio_text(i)]
        rows.append("<tr>" + first + "".join(f"<td>{_e(x)}</td>" for x in words)
                    + "".join(f"<td {nowrap}>{_e(x)}</td>" for x in figures)
                    + f"<td width='22%'>{_e(quality_text(run.quality))}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in (
        "run", *(["model · workload"] if len(kinds) > 1 else []), "optimizations")) + "".join(
        f"<th {nowrap}>{h}</th>" for h in ("peak", "Δ peak", "weights", "latency")) + (
        "<th>× latency vs [0]</th><th width='22%'>quality (vs its own baseline; KL in nats "
        "per token)</th>")
    ids = "<br>".join(f"[{i}] {_e(run.run_id)}" for i, run in enumerate(c.runs))
    note = (f"Every run: {kinds[0]}. " if len(kinds) == 1 else "")
    if any(c.ratio_noisy(i) for i in range(1, len(c.runs))):
        from engine.results import NOISY_TIMING_SPREAD

        note += ("A ratio marked noisy rests on timing passes (of that run or of [0]) more than "
                 f"×{NOISY_TIMING_SPREAD:g} apart: the runs' warnings say how far. ")
    note += ("× latency compares each run's plain latency with run [0]'s; a run's own section "
             "compares it with the unoptimized model timed in the same run, so the two ratios "
             "differ when [0] was timed at another moment. ")
    note += ("Different models: per-layer bars are matched by layer name. "
             if c.different_models else "")
    if len(c.workloads) > 1:
        note += (f"Different workloads ({', '.join(c.workloads)}): their peaks and latencies "
                 "measure different work. ")
    return (f"<table class='grid' border='1' cellspacing='0' cellpadding='3'>"
            f"<thead><tr>{head}</tr></thead>"
            + "".join(rows) + "</table>"
            f"<p class='note'>Run ids: <br>{ids}</p>"
            f"<p class='note'>{note}The first run is the reference; each run's bars plus its "
            "unattributed bytes add up to its peak.</p>")


_CSS = """
body { font-family: %s; font-size: 10pt; color: #202020; background: #ffffff; }
h1 { font-size: 18pt; } h2 { font-size: 14pt; margin-top: 18px; } h3 { font-size: 11pt; }
table.grid { border-collapse: collapse; font-size: 8pt; }
table.grid th { background-color: #e8eef7; }
table.kv th { padding-right: 12px; font-weight: normal; color: #505050; }
table.kv { font-size: 9pt; }
.estimate { background-color: #fde2e1; color: #8a1c14; font-weight: bold; padding: 6px;
            border: 2px solid #c0392b; }
.recon { font-size: 10pt; }
.note { color: #505050; font-size: 8pt; }
.caption { color: #505050; font-size: 8pt; }
img.shot { border: 1px solid #c8c8c8; }
""" % ", ".join(f"'{f}'" if " " in f else f for f in FONT_FAMILIES)


# Pictures left out of the PDF: the Totals panel is text, printed in full as the Totals
# section above it; shrunk to the page's width its letters were about 4 pt. The per-layer
# table's picture likewise: the text's per-layer table has every row (the picture stops at
# the layers, without the unattributed and peak rows) in letters that can be read on paper.
PDF_OMITS = frozenset({"totals", "per-layer-table"})


def build_html(results: Sequence[RunResult], shots: Mapping[str, Sequence[Shot]],
               image_src: Callable[[Shot], str], image_width: int | None = None,
               omit: frozenset[str] = frozenset()) -> str:
    """The report as HTML; ``shots`` maps run ids (and ``"compare"``) to their pictures and
    ``image_src`` gives each picture's ``src`` (a data URI, or a resource name for the PDF);
    pictures whose key is in ``omit`` are left out."""
    from engine.compare import compare

    width = f" width='{image_width}'" if image_width else " style='max-width:100%'"
    # Runs are named as the compare view names them (the user's label, else the optimizations,
    # plus what tells repeated names apart): "demo · forward" three times told nothing.
    names = compare(results).labels() if len(results) > 1 else []
    shared = list(dict.fromkeys(f"{r.config.model} · {r.config.workload}" for r in results))
    title = "MemLens report: " + ", ".join(shared) + (
        f" — {len(results)} runs" if len(results) > 1 else
        f" — {' '.join((results[0].config.label or '').split())}"
        if results[0].config.label else "")
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
           f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_e(title)}</h1>"]
    if any(r.estimate is not None for r in results):
        out.append(f"<p class='estimate'>{_e(ESTIMATE_BANNER)} "
                   + _e("Estimated runs: " + ", ".join(r.run_id for r in results
                                                        if r.estimate is not None)) + "</p>")
    out.append("<p class='note'>Every figure is copied from the run files (values not measured "
               "show as —). Pictures are the MemLens window's panels, rendered at "
               f"{PANEL_WIDTH} px.</p>")

    def pictures(items: Sequence[Shot]) -> None:
        for shot in items:
            if shot.key in omit:
                continue
            out.append(f"<h3>{_e(shot.title)}</h3><p><img class='shot' src='{image_src(shot)}'"
                       f" alt='{_e(shot.title)}'{width}></p>")
            if shot.caption:
                out.append(f"<p class='caption'>{_e(shot.caption)}</p>")

    for i, r in enumerate(results):
        prefix = (f"[{i}] {names[i].replace(' (estimate)', '')} — "  # the heading says it
                  if len(results) > 1 else "")
        kind = " — ESTIMATE" if r.estimate is not None else ""
        brk = " style='page-break-before: always'" if i else ""  # each run on a new page
        out.append(f"<h2{brk}>{_e(prefix)}{_e(r.config.model)} · {_e(r.config.workload)}{kind}"
                   "</h2>")
        if r.estimate is not None:
            out.append(f"<p class='estimate'>{_e(ESTIMATE_BANNER)}</p>")
        out.append("<h3>Run configuration</h3>" + _kv_table(_config_rows(r)))
        out.append("<h3>Totals</h3>" + _totals_html(r))
        out.append("<h3>Optimization effects and quality</h3>" + _optimizations_html(r))
        out.append("<h3>Warnings</h3>" + _list_html(r.warnings, "No warnings."))
        out.append("<h3>Limitations</h3>" + _list_html(r.limitations, "None recorded."))
        out.append("<h3>Per-layer table</h3>" + _layer_table_html(r))
        out.append("<h3>Environment</h3>" + _kv_table(_environment_rows(r)))
        pictures(shots.get(r.run_id, ()))
    if len(results) > 1:
        out.append(f"<h2 style='page-break-before: always'>Comparison of {len(results)} runs"
                   "</h2>" + _compare_table_html(results))
        pictures(shots.get("compare", ()))
    out.append("</body></html>")
    return "\n".join(out)


def _data_uri(shot: Shot) -> str:
    return "data:image/png;base64," + base64.b64encode(shot.path.read_bytes()).decode("ascii")


def write_pdf(html_text: str, shots: Sequence[Shot], path: Path,
              title: str = "MemLens report") -> Path:
    """Lay ``html_text`` out with QTextDocument and print it to an A4 PDF with QPdfWriter."""
    from PySide6.QtCore import QMarginsF, QSizeF, QUrl
    from PySide6.QtGui import QFont, QImage, QPageLayout, QPageSize, QPdfWriter, QTextDocument

    writer = QPdfWriter(str(path))
    writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
    writer.setPageMargins(QMarginsF(12, 12, 12, 12), QPageLayout.Unit.Millimeter)
    writer.setResolution(300)
    writer.setTitle(title)
    writer.setCreator("MemLens")
    # Lay out in the document's own units (96 per inch) on the printable area, so point sizes
    # print at their size and pictures (PDF_IMAGE_WIDTH) fit the width.
    rect = writer.pageLayout().paintRect(QPageLayout.Unit.Point)
    images = {shot.path.name: QImage(str(shot.path)) for shot in shots}

    def document() -> Any:
        doc = QTextDocument()
        font = QFont()
        font.setFamilies(list(FONT_FAMILIES[:-1]))
        font.setPointSizeF(9)
        # No ligatures: a run id's "ff" became one glyph (U+FB00) that a reader copying the id
        # (or pdftotext) gets instead of the two letters.
        for tag in ("liga", "clig", "dlig"):
            font.setFeature(QFont.Tag(tag), 0)
        doc.setDefaultFont(font)
        for name, image in images.items():
            doc.addResource(QTextDocument.ResourceType.ImageResource, QUrl(name), image)
        doc.setHtml(html_text)
        _repeat_table_headers(doc)
        doc.setPageSize(QSizeF(rect.width() * 96 / 72, rect.height() * 96 / 72))
        _fit_table_columns(doc, doc.textWidth() if doc.textWidth() > 0
                           else rect.width() * 96 / 72 - 2 * doc.documentMargin())
        return doc

    # The headings to move are found on a copy laid out for the purpose: a document laid out
    # before print_ lost its pictures in the PDF.
    doc = document()
    _keep_headings_with_next(document(), doc)
    doc.print_(writer)
    if not path.is_file() or path.stat().st_size == 0:
        raise MemLensError(ErrorKind.STORE, f"Could not write the PDF {path}.",
                           "Choose a writable folder with free space.")
    return path


def _tables(doc: Any) -> list[Any]:
    from PySide6.QtGui import QTextTable

    out: list[Any] = []

    def visit(frame: Any) -> None:
        for child in frame.childFrames():
            if isinstance(child, QTextTable):
                out.append(child)
            visit(child)

    visit(doc.rootFrame())
    return out


def _repeat_table_headers(doc: Any) -> int:
    """A table whose first row is all header cells (bold: ``<th>``, or a Markdown table's
    header, which Qt imports without a header row) repeats that row at the top of every page
    it continues on (the guide's ranked tables lost their column names after a page break).
    Returns the tables changed."""
    from PySide6.QtGui import QFont

    changed = 0
    for table in _tables(doc):
        fmt = table.format()
        if fmt.headerRowCount() or table.rows() < 3:
            continue
        first = [table.cellAt(0, c) for c in range(table.columns())]
        if all(cell.firstCursorPosition().charFormat().fontWeight() >= QFont.Weight.Bold
               for cell in first):
            fmt.setHeaderRowCount(1)
            table.setFormat(fmt)
            changed += 1
    return changed


def _cell_text(cell: Any) -> str:
    from PySide6.QtGui import QTextCursor

    cursor = cell.firstCursorPosition()
    cursor.setPosition(cell.lastCursorPosition().position(), QTextCursor.MoveMode.KeepAnchor)
    return cursor.selectedText()


LONGEST_WORD_SHARE = 0.3  # of a table's width: the most one column's longest word is given


def _fit_table_columns(doc: Any, width: float) -> int:
    """Column widths that keep each column's longest word whole where the page allows: Qt
    shares a table's width by its cells' text, and a column of ids beside long sentences came
    out so narrow that "quanto-weights:weights=qint4" broke every few letters (and a header,
    "optimizat|ions"). A table whose text fits on one line per cell is left as it is. Returns
    the tables changed."""
    from PySide6.QtGui import QFontMetricsF, QTextLength

    changed = 0
    for table in _tables(doc):
        n = table.columns()
        if n < 2:
            continue
        fmt = table.format()
        pad = 2 * (fmt.cellPadding() + fmt.border()) + 2
        word = [0.0] * n
        whole = [0.0] * n
        fixed = [False] * n
        for r in range(table.rows()):
            for c in range(n):
                cell = table.cellAt(r, c)
                if cell.columnSpan() > 1:
                    continue
                # (the cell's own font: the per-layer table sets a smaller size per cell)
                # (what the cell sets, the rest from the document's font)
                font = cell.firstCursorPosition().charFormat().font().resolve(doc.defaultFont())
                metrics = QFontMetricsF(font)
                text = _cell_text(cell)
                # (paragraphs and <br> line breaks: each line is measured apart)
                lines = re.split("[\u2028\u2029]", text) if text else [""]
                # (a cell that never wraps, white-space: nowrap, is one word as wide as it is)
                nowrap = cell.firstCursorPosition().block().blockFormat().nonBreakableLines()
                fixed[c] = fixed[c] or nowrap
                # (a tenth more: the PDF's glyphs set a little wider than the screen metrics)
                word[c] = max([word[c]] + [1.1 * metrics.horizontalAdvance(w) + pad
                                            for line in lines
                                            for w in ([line] if nowrap else line.split())])
                whole[c] = max([whole[c]] + [metrics.horizontalAdvance(line) + pad
                                             for line in lines])
        room = width - fmt.leftMargin() - fmt.rightMargin() - (n + 1) * fmt.cellSpacing()
        if sum(whole) <= room or room <= 0:
            continue
        # (a very long word, "prune-unstructured:amount=0.5,permanent=false", breaks rather
        # than take the page from every other column's words)
        word = [w if f else min(w, LONGEST_WORD_SHARE * room) for w, f in zip(word, fixed)]
        if sum(word) >= room:  # not every word fits whole: shrink them alike
            widths = [w * room / sum(word) for w in word]
        else:  # each word whole, the rest shared by how much more each column would take
            extra = [max(b - a, 0.0) for a, b in zip(word, whole)]
            spare = room - sum(word)
            widths = [a + (spare * e / sum(extra) if sum(extra) else spare / n)
                      for a, e in zip(word, extra)]
        fmt.setColumnWidthConstraints([
            QTextLength(QTextLength.Type.PercentageLength, 100.0 * w / room) for w in widths])
        table.setFormat(fmt)
        changed += 1
    return changed


KEEP_TABLE_WHOLE = 0.5  # a heading and its table shorter than this share of a page stay together


def _keep_headings_with_next(copy: Any, doc: Any, rounds: int = 64) -> int:
    """Move a heading left alone at the foot of a page ("Limitations" with its list on the
    next page) to the next page, and with it a short table that would split across the page
    break (``KEEP_TABLE_WHOLE``). Qt's rich text has no keep-with-next, so ``copy`` (the same
    document, paginated) is laid out and read back: a heading whose next block starts on a
    later page gets a page break before it, and the layout is read again (each break moves
    what follows). The breaks found are then set in ``doc``. Returns the headings moved."""
    from PySide6.QtGui import QTextBlockFormat, QTextCursor

    height = copy.pageSize().height()
    layout = copy.documentLayout()
    fmt = QTextBlockFormat()
    fmt.setPageBreakPolicy(QTextBlockFormat.PageBreakFlag.PageBreak_AlwaysBefore)
    moved: set[int] = set()
    for _ in range(rounds):
        changed = False
        copy.pageCount()  # lays the whole document out again (an edit relays it out lazily)
        block = copy.begin()
        while block.isValid():
            nxt = block.next()
            if (block.blockFormat().headingLevel() and nxt.isValid()
                    and block.position() not in moved):
                here = layout.blockBoundingRect(block).top()
                # (the next block's first line: pagination moves lines down within a block)
                there = layout.blockBoundingRect(nxt).top() + (
                    nxt.layout().lineAt(0).y() if nxt.layout().lineCount() else 0.0)
                # (a short table after it is kept whole with it: a row of wrapped notes split
                # across two pages, half of each cell on each)
                table = QTextCursor(nxt).currentTable()
                if table is not None:
                    box = layout.frameBoundingRect(table)
                    if box.bottom() - here < KEEP_TABLE_WHOLE * height:
                        there = box.bottom() - 1.0
                if int(there // height) > int(here // height):
                    QTextCursor(block).mergeBlockFormat(fmt)
                    moved.add(block.position())
                    changed = True
                    break  # the layout below changed: read it again
            block = nxt
        if not changed:
            break
    for position in moved:  # the same breaks in the document itself, not yet laid out
        QTextCursor(doc.findBlock(position)).mergeBlockFormat(fmt)
    return len(moved)


def write_report(results: Sequence[RunResult], out_dir: Path | str, pdf: bool = False,
                 attention: Mapping[str, Any] | None = None) -> ReportFiles:
    """Render the panels, write ``report.html`` (pictures embedded) and, with ``pdf``,
    ``report.pdf`` into ``out_dir`` (created); the PNGs stay beside them."""
    results = list(results)
    if not results:
        raise ValueError("write_report needs at least one run")
    folder = _writable(out_dir)
    attention = attention or {}
    shots: dict[str, list[Shot]] = {}
    from . import theme

    with _staging(folder) as stage:
        with theme.drawing_with("light"):  # paper is light, whatever the window's theme
            for i, r in enumerate(results):
                prefix = f"run{i}" if len(results) > 1 else "run"
                shots[r.run_id] = render_run_panels(r, stage, prefix, attention.get(r.run_id))
            if len(results) > 1:
                shots["compare"] = [render_compare_panel(results, stage)]
        every = [s for items in shots.values() for s in items]
        files = ReportFiles(folder=stage, html=stage / "report.html",
                            images=[s.path for s in every])
        _write_html(files.html, build_html(results, shots, _data_uri), folder)
        if pdf:
            _check_interrupt()
            pdf_html = build_html(results, shots, lambda s: s.path.name,
                                  image_width=PDF_IMAGE_WIDTH, omit=PDF_OMITS)
            files.pdf = write_pdf(pdf_html, [s for s in every if s.key not in PDF_OMITS],
                                  stage / "report.pdf")
        files = _publish(files, folder)
    files.removed = _tidy(files)
    return files


# -- the measured guide -------------------------------------------------------------------------
def write_guide_report(guide: Any, out_dir: Path | str, store: Any, pdf: bool = False
                       ) -> ReportFiles:
    """The measured guide (``engine.guide.Guide``) as ``guide.html`` (pictures embedded) and,
    with ``pdf``, ``guide.pdf``: the guide's own Markdown (ranked tables, notes with their
    numbers, what could not run) with, per workload, the window's compare view of that
    workload's runs (per-layer bars and the memory-vs-quality scatter), loaded from ``store``.
    A run missing from the store is named under its workload's picture; nothing is computed
    here."""
    from PySide6.QtGui import QTextDocument

    from engine.guide import markdown

    from . import theme

    folder = _writable(out_dir)
    with _staging(folder) as stage:
        shots: list[Shot] = []
        charts: dict[str, str] = {}
        missing: dict[str, list[str]] = {}
        with theme.drawing_with("light"):
            for workload in guide.workloads():
                results, ranks = [], []
                for rank, entry in enumerate(guide.ranked(workload), 1):
                    try:
                        results.append(store.load(entry.run_id))
                        ranks.append(rank)  # (the table's number, whatever is missing first)
                    except (MemLensError, OSError, ValueError, KeyError):
                        missing.setdefault(workload, []).append(entry.run_id or entry.label)
                if not results:
                    continue
                shot = render_compare_panel(results, stage, f"guide-{workload}.png",
                                            against_own=True, table=False, ranks=ranks)
                shot.title = f"{workload}: the runs side by side"
                shots.append(shot)
                charts[workload] = shot.path.name
        text = markdown(guide, charts)
        where = getattr(store, "root", None)
        for workload, ids in missing.items():
            text = text.replace(f"## {workload}\n", f"## {workload}\n\nNot in the run store"
                                + (f" {where}" if where is not None else "")
                                + f", so not in the picture: {', '.join(ids)} (the guide saved "
                                "its runs in the store it ran with).\n", 1)
        doc = QTextDocument()
        doc.setMarkdown(text)
        body = doc.toHtml()
        files = ReportFiles(folder=stage, html=stage / "guide.html",
                            images=[s.path for s in shots],
                            missing=[i for ids in missing.values() for i in ids])
        page = body
        for shot in shots:
            page = page.replace(f'src="{shot.path.name}"', f'src="{_data_uri(shot)}" '
                                "style='max-width:100%'")
        _write_html(files.html, page, folder)
        if pdf:
            _check_interrupt()
            sized = body
            for shot in shots:
                sized = sized.replace(f'src="{shot.path.name}"',
                                      f'src="{shot.path.name}" width="{PDF_IMAGE_WIDTH}"')
            files.pdf = write_pdf(sized, shots, stage / "guide.pdf", title="MemLens guide")
        files = _publish(files, folder)
    files.removed = _tidy(files)
    return files


def _write_html(path: Path, text: str, folder: Path) -> None:
    """Write a report's HTML into its staging folder; an error names where it was going."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise MemLensError(ErrorKind.STORE, f"Cannot write {folder / path.name}: "
                           f"{exc.strerror or exc}.",
                           "Choose a writable folder with free space.") from exc


# Per kind of report, the files it last wrote into the folder (JSON, but not named .json: a run
# store lists every .json file as a run)
MANIFEST = ".memlens-report"


def _tidy(files: ReportFiles) -> list[str]:
    """Remove what the previous report of the same kind (``report.html`` or ``guide.html``) in
    ``files.folder`` wrote and this one did not (a three-run report's ``run2-*.png`` beside a
    new one-run report, a ``report.pdf`` left from an export with PDF), then record this
    report's files. Only names the manifest lists are touched, and only plain files directly
    in the folder: a user's own files, and the other kind of report, stay. Returns the names
    removed."""
    folder = files.folder
    kind = files.html.name
    written = {p.name for p in (files.html, files.pdf, *files.images) if p is not None}
    manifest = folder / MANIFEST
    try:
        kinds = json.loads(manifest.read_text(encoding="utf-8"))
        kinds = kinds if isinstance(kinds, dict) else {}
    except (OSError, ValueError):
        kinds = {}
    before = kinds.get(kind)
    others = {n for k, names in kinds.items() if k != kind and isinstance(names, list)
              for n in names if isinstance(n, str)}
    removed: list[str] = []
    for name in before if isinstance(before, list) else []:
        if (not isinstance(name, str) or name in written or name in others
                or name != Path(name).name or name in (MANIFEST, "", ".", "..")):
            continue
        path = folder / name
        try:
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(name)
        except OSError:
            pass  # a stale picture that stays is no reason to fail the report just written
    kinds[kind] = sorted(written)
    try:
        manifest.write_text(json.dumps(kinds, indent=1), encoding="utf-8")
    except OSError:
        pass
    return removed


def _writable(out_dir: Path | str) -> Path:
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():  # ("File exists", "choose a writable folder")
        raise MemLensError(ErrorKind.STORE, f"{folder} is a file, not a folder.",
                           "Give --out a folder (new or existing) for the report's files.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".memlens-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MemLensError(ErrorKind.STORE, f"Cannot write the report to {folder}: "
                           f"{exc.strerror or exc}.",
                           "Choose a writable folder with free space.") from exc
    return folder


# -- command line -------------------------------------------------------------------------------
_APP: Any = None


def _qt_message(_mode: Any, _context: Any, message: str) -> None:
    """Qt's messages on stderr, less the offscreen platform's "propagateSizeHints" notice."""
    if "propagateSizeHints" not in message:
        sys.stderr.write(message + "\n")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="memlens report",
        description="Write an HTML report (and a PDF with --pdf) of saved runs: configuration, "
                    "environment, totals with the reconciliation, per-layer table, "
                    "optimization effects and quality, warnings, and the app's panels as PNGs. "
                    "Several runs add a comparison (the first is the reference).")
    ap.add_argument("runs", nargs="*", help="RUN_ID from the store or a path to a run JSON")
    from engine.cli import _path_arg, _store_path

    # (the command line's own path checks: an empty --out, an unset shell variable, was the
    # current folder, and the report was written among its files)
    ap.add_argument("--guide", type=_path_arg, default=None, metavar="GUIDE_JSON",
                    help="instead of runs: a measured guide (the guide.json memlens guide "
                         "wrote, or its folder); its runs are read from the store")
    ap.add_argument("--out", type=_path_arg, required=True, help="output folder")
    ap.add_argument("--pdf", action="store_true", help="also write report.pdf")
    ap.add_argument("--store", type=_store_path, default=None,
                    help="run store folder (default: $MEMLENS_HOME/runs or the user data dir)")
    return ap


def _load(spec: str, store: Any) -> tuple[RunResult, Any]:
    """A run and its attention maps (None when there are none beside it)."""
    from engine.store import RunStore

    path = Path(spec)
    result = store.load(spec)
    if path.suffix == ".json":
        source = RunStore(path.parent)
    else:
        source = store
    maps = None
    if (result.attention or {}).get("captured"):
        maps = source.load_attention(result.run_id)
    return result, maps


def _load_guide(path: Path) -> Any:

    from engine.guide import Guide

    if path.is_dir():
        path = path / "guide.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"No guide at {path}.",
                           "Pass the guide.json that memlens guide --out DIR wrote (or DIR).") \
            from exc
    except (OSError, ValueError) as exc:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"Cannot read the guide {path}: {exc}.",
                           "Pass the guide.json that memlens guide wrote; run the guide again "
                           "if the file is damaged.") from exc
    from engine.records import RECORD_KINDS, check_shape, record_kind

    kind = record_kind(data)
    if kind != "guide":
        # ("The file is not a MemLens guide." named neither the file nor what it is)
        what = (RECORD_KINDS[kind] if kind else "a run" if isinstance(data, dict)
                and "totals" in data else None)
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"{path} is {what}, not a guide." if what else
                           f"{path} is not a MemLens guide (nor any MemLens record).",
                           "Pass the guide.json that memlens guide --out DIR wrote (or DIR).")
    try:
        guide = Guide.from_dict(data)
        check_shape(data, Guide)  # (names a field of the wrong type, which building took)
        return guide
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        cause: Exception = exc
        if isinstance(data, dict):
            try:
                check_shape(data, Guide)
            except TypeError as named:
                cause = named
        raise MemLensError(ErrorKind.STORE, f"The guide {path} is damaged ({cause}).",
                           "Run the guide again to write it anew.") from cause


def main(argv: Sequence[str] | None = None) -> int:
    """``memlens report``: exit 0 when written, 1 on an error (named, with the fix), 2 on
    wrong arguments, 130 when cancelled with Ctrl+C (143 by SIGTERM), nothing written."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # (before the report's own handler: loading the runs, Qt)
        from engine.cli import error

        error("The report was cancelled.", "Nothing was written. Run it again when ready.")
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if bool(args.runs) == (args.guide is not None):
        parser.error("give RUN ids or files, or --guide GUIDE_JSON (one of the two)")
    if (sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM")
            and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from engine.cli import error
    from engine.store import RunStore

    store = RunStore(args.store)
    try:
        from engine.cli import refuse_store_folder

        refuse_store_folder(args.out, store, "--out", "the report's files")
        loaded = [_load(spec, store) for spec in args.runs]
        guide = _load_guide(args.guide) if args.guide is not None else None
    except MemLensError as exc:
        error(exc.message, exc.hint)
        return 1
    try:
        from PySide6.QtWidgets import QApplication
    except ImportError as exc:
        from .launcher import INSTALL_HINT

        error(f"memlens report needs the GUI libraries: {exc}.",
              f"{INSTALL_HINT}; `memlens export` needs no Qt.")
        return 1
    global _APP
    from PySide6.QtCore import qInstallMessageHandler

    qInstallMessageHandler(_qt_message)
    if QApplication.instance() is None:
        _APP = QApplication(["memlens-report"])  # held for the life of the process
    from . import theme

    theme.apply("light")
    # Ctrl+C (or a scheduler's SIGTERM) sets a flag the report checks between panels; raised
    # as KeyboardInterrupt inside Qt's painting it crashed the process.
    import signal

    stopped: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        stopped.append(signum)
        _INTERRUPTED.set()
        # A second one ends the process at once (a render that hangs could not be stopped).
        signal.signal(signum, signal.SIG_DFL)
        sys.stderr.write("memlens: stopping the report at the next panel "
                         "(press Ctrl+C again to quit at once)\n")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def cancelled() -> int:
        return 143 if stopped and stopped[0] == signal.SIGTERM else 130

    try:
        if guide is not None:
            files = write_guide_report(guide, args.out, store, pdf=args.pdf)
        else:
            files = write_report([r for r, _ in loaded], args.out, pdf=args.pdf,
                                 attention={r.run_id: m for r, m in loaded if m is not None})
    except MemLensError as exc:
        error(exc.message, exc.hint)
        return cancelled() if exc.kind == ErrorKind.CANCELLED else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _INTERRUPTED.clear()
    if stopped:  # during the last step: the files are whole, and that is said
        error("The report was cancelled as it finished.", f"{files.html} and its pictures are "
              "whole: keep them or delete them.")
        return cancelled()
    buffer = io.StringIO()
    buffer.write(f"written: {files.html}\n")
    if files.pdf is not None:
        buffer.write(f"written: {files.pdf}\n")
    buffer.write(f"pictures: {len(files.images)} PNG(s) in {files.folder}\n")
    sys.stdout.write(buffer.getvalue())
    if files.missing:
        drawn = "none of them" if not files.images else "the rest"
        print(f"memlens: note: {len(files.missing)} of the guide's runs are not in the run store "
              f"{store.root}, so the report draws {drawn}; give the store the guide ran with "
              "(--store DIR, or the same MEMLENS_HOME).", file=sys.stderr)
    return 0
