"""Exports of a saved run for other tools: CSV tables and a Chrome/Perfetto trace. Qt-free.

Every figure written here is copied from the run record (``engine.results.RunResult``); nothing
is measured or recomputed. A value the run did not measure (``None``) is an *empty* CSV cell,
never 0.

* :func:`write_layers_csv` — the per-layer table: the GUI table's columns in its order
  (:data:`LAYER_COLUMNS`), bytes as exact integers, then the rest of each ``LayerStats`` record
  (parent, depth, parameters, ``flops_complete``, ``figures``: ``measured`` or ``estimate`` on
  every row, and the at-peak bytes per category: 0 where the layer held none of it at the
  peak, a measured zero, as ``at_peak_bytes``) so that
  :func:`read_layers_csv` gives the records back. A last row, ``(unattributed)`` (kind
  ``unattributed``), holds the bytes live at the peak that no layer holds, so the
  ``at_peak_bytes`` column adds up to the run's peak exactly (as the GUI table's and the
  report's unattributed row). :func:`read_layers_csv` leaves that row out.
* :func:`write_timeline_csv` — the columnar telemetry (``RunResult.timeline``): one row per
  sample, one column per series, in the record's column order; :func:`read_timeline_csv` reads
  it back.
* :func:`trace_events` / :func:`write_trace` — a trace in the Trace Event Format's JSON object
  form (``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``; ``ts`` and
  ``dur`` in microseconds) that Perfetto (ui.perfetto.dev) and chrome://tracing open:

  - process 1, the run on its own clock (seconds since the run started, as the record keeps
    them): the run's phases as complete events (``ph: "X"``) on one thread, and each timeline
    series as a counter (``ph: "C"``; memory in bytes, other series in their own units).
    Samples without a reading are left out: the viewer holds the previous value until the next
    reading, so a gap looks flat rather than zero.
  - process 2, the timing passes' medians: the record keeps each layer's *median duration*
    (``LayerStats.latency_ms``), not when each call started, so these spans are laid end to end
    in module order from the start of the run's ``timing`` phase. Durations are measured; the
    start times are a layout, and the process name says so. Top-level layers (live pass) and
    attention/MLP rows (the pass that hooks every module) are on separate threads, since they
    come from different passes; generation (prefill, decode steps) and training (forward,
    backward, optimizer) medians each have a thread when the run has them.
  - process metadata (``ph: "M"``): process and thread names and sort order.

* :func:`cuda_memory_snapshot` — a context manager that records the CUDA caching allocator's
  history (``torch.cuda.memory._record_memory_history``) and dumps a snapshot pickle that
  pytorch.org/memory_viz opens. It needs CUDA and refuses with ``no_device`` otherwise. It is
  not wired into the runner's measured pass yet (recording every allocation's stack would also
  slow the timing passes, so it must wrap only the memory pass).

Errors (an unwritable folder, a full disk) are ``MemLensError(kind=store)`` naming the path
and the fix.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import ErrorKind, MemLensError
from .format import layer_passes_text
from .results import CATEGORIES, LayerStats, RunResult
from .store import write_output

# The GUI table's columns, in its order: (CSV header, the GUI table's title, value).
LAYER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "Name"),
    ("kind", "Kind"),
    ("weights_bytes", "Weights (own)"),
    ("activation_bytes", "Activations (output)"),
    ("saved_for_backward_bytes", "Saved for backward (own)"),
    ("gradient_bytes", "Gradients (own)"),
    ("optimizer_state_bytes", "Optimizer state (own)"),
    ("kv_cache_bytes", "KV cache (at end)"),
    ("transient_peak_bytes", "Transient peak"),
    ("latency_ms", "Latency"),
    ("flops", "FLOPs"),
    ("at_peak_bytes", "At peak (own)"),
)
# The rest of a LayerStats record, after the GUI's columns.
_EXTRA_COLUMNS = ("parent", "depth", "parameters", "flops_complete")
FIGURES_COLUMN = "figures"  # "measured" or "estimate" on every row: a file read alone says so
TIME_COLUMN = "t_s"  # timeline.csv's time: seconds since the run started
UNATTRIBUTED_ROW = "(unattributed)"  # the last row: what no layer holds at the peak
_AT_PEAK_PREFIX = "at_peak."

LAYERS_CSV = "layers.csv"
TIMELINE_CSV = "timeline.csv"
TRACE_JSON = "trace.json"

# Timeline series -> (counter name, value key). Perfetto names a counter track "name key"
# ("process RSS bytes"); chrome://tracing shows the key as the series. Memory is in bytes.
_SERIES_NAMES = {
    "rss_bytes": ("process RSS", "bytes"),
    "gpu_used_bytes": ("GPU used, device (NVML)", "bytes"),
    "gpu_total_bytes": ("GPU total (NVML)", "bytes"),
    "gpu_process_bytes": ("GPU used by this process (NVML)", "bytes"),
    "torch_allocated_bytes": ("torch allocated", "bytes"),
    "torch_reserved_bytes": ("torch reserved", "bytes"),
    "cpu_percent": ("CPU", "percent"),
    "gpu_util_percent": ("GPU utilization", "percent"),
    "gpu_power_w": ("GPU power", "W"),
    "gpu_temp_c": ("GPU temperature", "°C"),
    "gpu_sm_clock_mhz": ("GPU SM clock", "MHz"),
}


# -- files --------------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically (a temporary file renamed over ``path``), or in place to a
    device or pipe (``--trace /dev/stdout``)."""
    return write_output(path, text, "the export")


def _cell(value: Any) -> str:
    """A CSV cell: ``None`` is empty (never 0); floats keep every digit (``repr``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return str(value)


def _parse(text: str) -> Any:
    """Inverse of :func:`_cell` for numbers and booleans; other text stays a string."""
    if text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


# -- per-layer table ----------------------------------------------------------------------------
def _categories(layers: Sequence[LayerStats]) -> list[str]:
    order = list(CATEGORIES)
    for layer in layers:
        order += [c for c in layer.at_peak if c not in order]
    return order


def layers_csv(result: RunResult) -> str:
    """The per-layer table as CSV text (see the module docstring for the columns)."""
    categories = _categories(result.layers)
    header = [c for c, _ in LAYER_COLUMNS] + list(_EXTRA_COLUMNS) + [FIGURES_COLUMN] + [
        _AT_PEAK_PREFIX + c for c in categories]
    figures = "estimate" if result.estimate is not None else "measured"
    rows = []
    for layer in result.layers:
        row: list[Any] = []
        # (at_peak_bytes: a layer holding nothing at the peak holds 0 B, a measured zero)
        row: list[Any] = [getattr(layer, column) for column, _ in LAYER_COLUMNS]
        row += [getattr(layer, column) for column in _EXTRA_COLUMNS] + [figures]
        # (a category a layer holds nothing of at the peak: 0 B, measured, as at_peak_bytes)
        row += [layer.at_peak.get(c, 0) for c in categories]
        rows.append(row)
    t = result.totals
    if result.layers or t.peak_bytes:
        rest: dict[str, Any] = {"name": UNATTRIBUTED_ROW, "kind": "unattributed",
                                "at_peak_bytes": t.unattributed_bytes}
        rows.append([rest.get(c) for c, _ in LAYER_COLUMNS] + [None] * len(_EXTRA_COLUMNS)
                    + [figures] + [None] * len(categories))
    return _csv_text(header, rows)


def write_layers_csv(result: RunResult, path: Path | str) -> Path:
    return _write_text(Path(path), layers_csv(result))


def read_layers_csv(path: Path | str) -> list[LayerStats]:
    """The ``LayerStats`` records of a CSV written by :func:`write_layers_csv`."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        out = []
        for row in reader:
            if row.get("kind") == "unattributed" and row.get("name") == UNATTRIBUTED_ROW:
                continue  # not a layer: the bytes no layer holds at the peak
            values = {k: _parse(v) for k, v in row.items()}
            at_peak = {k[len(_AT_PEAK_PREFIX):]: int(v) for k, v in values.items()
                       if k.startswith(_AT_PEAK_PREFIX) and v}  # (the record keeps no zeros)
            kwargs = {k: v for k, v in values.items()
                      if not k.startswith(_AT_PEAK_PREFIX)
                      and k not in ("at_peak_bytes", FIGURES_COLUMN)}
            kwargs["name"] = row["name"]  # names and kinds stay text
            kwargs["kind"] = row["kind"]
            kwargs["parent"] = row["parent"] or None
            if kwargs.get("latency_ms") is not None:
                kwargs["latency_ms"] = float(kwargs["latency_ms"])
            out.append(LayerStats(**kwargs, at_peak=at_peak))
        return out


# -- timeline -----------------------------------------------------------------------------------
def timeline_csv(result: RunResult) -> str:
    """The run's timeline as CSV: the record's columns in order, one row per sample."""
    timeline = result.timeline or {}
    columns = list(timeline)
    if "t" in columns:  # time first
        columns.remove("t")
        columns.insert(0, "t")
    n = len(timeline.get("t") or [])
    rows = []
    for i in range(n):
        rows.append([(timeline[c][i] if i < len(timeline[c]) else None) for c in columns])
    # (every other column names its unit: rss_bytes, gpu_power_w; "t" alone did not)
    return _csv_text([TIME_COLUMN if c == "t" else c for c in columns], rows)


def write_timeline_csv(result: RunResult, path: Path | str) -> Path:
    return _write_text(Path(path), timeline_csv(result))


def read_timeline_csv(path: Path | str) -> dict[str, list[Any]]:
    """A columnar timeline (as ``RunResult.timeline``) from :func:`write_timeline_csv`'s CSV."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = ["t" if c == TIME_COLUMN else c for c in next(reader, [])]
        columns: dict[str, list[Any]] = {c: [] for c in header}
        for row in reader:
            for c, text in zip(header, row):
                columns[c].append(text if c == "phase" else _parse(text))
    return columns


# -- trace --------------------------------------------------------------------------------------
_RUN_PID, _LAYOUT_PID = 1, 2


def _us(seconds: float) -> float:
    """Seconds to microseconds, kept to the nanosecond."""
    return round(seconds * 1e6, 3)


def _meta(name: str, pid: int, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": args}


def _spans_end_to_end(items: Sequence[tuple[str, float, dict[str, Any]]], start_ns: int,
                      pid: int, tid: int, cat: str) -> tuple[list[dict[str, Any]], int]:
    """Complete events laid one after another (durations in ms, measured; starts: layout)."""
    events, at_ns = [], start_ns
    for name, ms, args in items:
        dur_ns = max(int(round(ms * 1e6)), 1)
        events.append({"name": name, "cat": cat, "ph": "X", "ts": at_ns / 1000.0,
                       "dur": dur_ns / 1000.0, "pid": pid, "tid": tid, "args": args})
        at_ns += dur_ns
    return events, at_ns


def _layer_args(layer: LayerStats) -> dict[str, Any]:
    """A layer's figures as the per-layer table has them (a figure the run did not measure,
    such as a forward pass's gradients, is left out rather than written as null)."""
    args = {"layer": layer.name, "kind": layer.kind, "latency_ms (median)": layer.latency_ms,
            "weights_bytes": layer.weights_bytes, "activation_bytes": layer.activation_bytes,
            "saved_for_backward_bytes": layer.saved_for_backward_bytes,
            "kv_cache_bytes (at the end)": layer.kv_cache_bytes,
            "gradient_bytes": layer.gradient_bytes,
            "optimizer_state_bytes": layer.optimizer_state_bytes,
            "transient_peak_bytes": layer.transient_peak_bytes,
            "at_peak_bytes": layer.at_peak_bytes,
            "flops": layer.flops}
    if layer.flops is not None and layer.flops_complete is False:
        args["flops_complete"] = False  # some of its operators have no FLOP formula
    return {k: v for k, v in args.items() if v is not None or k == "latency_ms (median)"}


def trace_events(result: RunResult) -> dict[str, Any]:
    """The run as a Trace Event Format JSON object (see the module docstring)."""
    cfg = result.config
    estimate = result.estimate is not None
    label = f"{cfg.model} · {cfg.workload}" + (" · ESTIMATE" if estimate else "")
    events: list[dict[str, Any]] = [
        _meta("process_name", _RUN_PID, 0, {"name": f"MemLens run {result.run_id} ({label})"}),
        _meta("process_sort_index", _RUN_PID, 0, {"sort_index": 1}),
        _meta("thread_name", _RUN_PID, 1, {"name": "phases (run clock)"}),
        _meta("thread_sort_index", _RUN_PID, 1, {"sort_index": 1}),
    ]
    # Phases: measured wall-clock spans, in the record's order.
    for phase in result.phases:
        start, end = phase.get("start"), phase.get("end")
        if start is None or end is None or end < start:
            continue
        start_ns, end_ns = int(round(start * 1e9)), int(round(end * 1e9))
        args = {k: v for k, v in phase.items() if k not in ("name", "start", "end")}
        events.append({"name": str(phase.get("name", "?")), "cat": "phase", "ph": "X",
                       "ts": start_ns / 1000.0, "dur": (end_ns - start_ns) / 1000.0,
                       "pid": _RUN_PID, "tid": 1, "args": args})
    # Counters: every numeric timeline series with at least one reading.
    timeline = result.timeline or {}
    times = timeline.get("t") or []
    for column, values in timeline.items():
        if column in ("t", "phase") or not any(v is not None for v in values):
            continue
        name, key = _SERIES_NAMES.get(column, (column, "value"))
        for t, v in zip(times, values):
            if t is None or v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            events.append({"name": name, "cat": "telemetry", "ph": "C", "ts": _us(t),
                           "pid": _RUN_PID, "tid": 0, "args": {key: v}})
    # Medians of the timing passes, laid end to end from the start of the timing phase.
    timing_phase = next((p for p in result.phases if p.get("name") == "timing"), None)
    start_ns = int(round((timing_phase or {}).get("start", 0.0) * 1e9))
    top = [(layer.name, layer.latency_ms, _layer_args(layer)) for layer in result.layers
           if layer.depth == 0 and layer.latency_ms is not None]
    threads: list[tuple[int, str, list[dict[str, Any]]]] = []
    if top:
        spans, end_ns = _spans_end_to_end(top, start_ns, _LAYOUT_PID, 1, "layer")
        passes = layer_passes_text(result)
        threads.append((1, "top-level layers (live-hooks pass, median ms"
                        + (f"; each over {passes}" if passes else "") + ")", spans))
        # Sub-rows (attention, MLP) start with their parent's span, after the previous sub-row.
        starts = {e["args"]["layer"]: int(round(e["ts"] * 1000)) for e in spans}
        sub_spans, at_ns = [], start_ns
        for layer in result.layers:
            if layer.depth == 0 or layer.latency_ms is None:
                continue
            at_ns = max(at_ns, starts.get(layer.parent or "", at_ns))
            span, at_ns = _spans_end_to_end([(layer.name, layer.latency_ms, _layer_args(layer))],
                                            at_ns, _LAYOUT_PID, 2, "layer")
            sub_spans += span
        if sub_spans:
            threads.append((2, "attention / MLP rows (all-modules pass, median ms)", sub_spans))
    gen = result.generation or {}
    if gen.get("prefill_ms") is not None:
        items = [("prefill", gen["prefill_ms"], {"ms (median)": gen["prefill_ms"]})]
        items += [(f"decode step {i + 1}", ms, {"ms (median)": ms})
                  for i, ms in enumerate(gen.get("decode_ms_per_step") or []) if ms is not None]
        spans, _ = _spans_end_to_end(items, start_ns, _LAYOUT_PID, 3, "generation")
        threads.append((3, "generation (median ms per step)", spans))
    train = result.training or {}
    steps = [(k, train[f"{k}_ms"], {"ms (median)": train[f"{k}_ms"]})
             for k in ("forward", "backward", "optimizer") if train.get(f"{k}_ms") is not None]
    if steps:
        spans, _ = _spans_end_to_end(steps, start_ns, _LAYOUT_PID, 4, "training")
        threads.append((4, "training step (median ms)", spans))
    if threads:
        events += [
            _meta("process_name", _LAYOUT_PID, 0, {
                "name": "Timing medians (durations measured; spans laid end to end, start "
                        "times are a layout)"}),
            _meta("process_sort_index", _LAYOUT_PID, 0, {"sort_index": 2}),
        ]
        for tid, name, spans in threads:
            events += [_meta("thread_name", _LAYOUT_PID, tid, {"name": name}),
                       _meta("thread_sort_index", _LAYOUT_PID, tid, {"sort_index": tid})]
            events += spans
    from .compare import optimizations_text
    from .format import inputs_text

    other = {
        "memlens_run_id": result.run_id, "created": result.created, "model": cfg.model,
        "label": cfg.label or "", "workload": cfg.workload, "input": inputs_text(result),
        "optimizations": optimizations_text(result.optimizations),
        "dtype": str(result.model_info.get("dtype") or cfg.dtype),
        "device": str(result.model_info.get("device") or cfg.device),
        "kind": "estimate" if estimate else "measured",
        "peak_bytes": result.totals.peak_bytes, "peak_source": result.totals.peak_source,
        "clock": "seconds since the run started (the run record's clock)",
    }
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def write_trace(result: RunResult, path: Path | str) -> Path:
    """Write :func:`trace_events` as JSON (strict: no NaN)."""
    return _write_text(Path(path), json.dumps(trace_events(result), ensure_ascii=False,
                                              allow_nan=False))


def export_run(result: RunResult, csv_dir: Path | str | None = None,
               trace: Path | str | None = None) -> list[Path]:
    """Write ``layers.csv`` and ``timeline.csv`` (when the run has a timeline: an estimate has
    none) into ``csv_dir`` and/or the trace to ``trace``; returns the written paths."""
    written = []
    if csv_dir is not None:
        folder = Path(csv_dir)
        from .store import file_in_the_way

        blocker = file_in_the_way(folder)
        if blocker is not None:  # ("Cannot write …: File exists" named neither)
            raise MemLensError(ErrorKind.STORE, f"Cannot write the CSV files into {folder}: "
                               f"{blocker} is a file, not a folder.",
                               "Give --csv a folder (new or existing).")
        written.append(write_layers_csv(result, folder / LAYERS_CSV))
        if (result.timeline or {}).get("t"):  # an estimate samples nothing: no empty file
            written.append(write_timeline_csv(result, folder / TIMELINE_CSV))
    if trace is not None:
        written.append(write_trace(result, trace))
    return written


# -- CUDA memory snapshot -----------------------------------------------------------------------
@contextlib.contextmanager
def cuda_memory_snapshot(path: Path | str, device: Any = "cuda",
                         max_entries: int = 100_000) -> Iterator[Path]:
    """Record the CUDA caching allocator's history inside the ``with`` block and dump a
    snapshot pickle at ``path`` (opens in pytorch.org/memory_viz). Refused with
    ``MemLensError(no_device)`` when ``device`` is not a CUDA device or CUDA is unavailable."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise MemLensError(ErrorKind.NO_DEVICE,
                           "A CUDA memory snapshot needs CUDA: "
                           + ("this machine has no CUDA device." if dev.type == "cuda"
                              else f"the run's device is {dev}."),
                           "Run on an NVIDIA GPU (--device cuda); on CPU use the trace "
                           "(memlens export RUN --trace FILE) and the timeline CSV instead.")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MemLensError(ErrorKind.STORE, f"Cannot create {path.parent}: "
                           f"{exc.strerror or exc}.", "Choose a writable folder.") from exc
    torch.cuda.memory._record_memory_history(max_entries=max_entries)
    try:
        yield path
        torch.cuda.memory._dump_snapshot(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
