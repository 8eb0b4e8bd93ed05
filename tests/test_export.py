"""Engine exports: per-layer and timeline CSVs (round trip, empty cells for unmeasured values),
the Chrome/Perfetto trace (checked against the Trace Event Format's rules), `memlens export`,
and the CUDA memory snapshot's refusal without CUDA. No Qt."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from engine import cli
from engine.errors import ErrorKind, MemLensError
from engine.export import (
    LAYER_COLUMNS,
    cuda_memory_snapshot,
    export_run,
    layers_csv,
    read_layers_csv,
    read_timeline_csv,
    trace_events,
    write_layers_csv,
    write_timeline_csv,
    write_trace,
)
from engine.results import RunResult
from engine.runner import execute
from engine.store import RunStore

from .helpers import Collector, tiny


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A generate run and a train run on a tiny model, saved and loaded back from a store."""
    store = RunStore(tmp_path_factory.mktemp("export-runs"))
    out = {}
    for workload in ("generate", "train"):
        result = execute(tiny(workload=workload), Collector(), store=store)
        assert result is not None
        out[workload] = store.load(result.run_id)
    return store, out


# -- the Trace Event Format's rules, written from the format's description ------------------
_PHASES = set("BEXiIC" "bne" "sft" "PONDM" "Rcv")
_METADATA = {"process_name", "process_labels", "process_sort_index", "thread_name",
             "thread_sort_index"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_trace(text: str) -> list[str]:
    """Problems with a JSON trace: object form, required fields, units, phase rules, nesting."""
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    data = json.loads(text, parse_constant=no_constants)
    problems = []
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        return ["not the JSON object form: no traceEvents list"]
    if data.get("displayTimeUnit", "ms") not in ("ms", "ns"):
        problems.append("displayTimeUnit must be 'ms' or 'ns'")
    open_b: dict[tuple, list] = defaultdict(list)
    complete: dict[tuple, list] = defaultdict(list)
    named_threads, used_threads = set(), set()
    for i, e in enumerate(data["traceEvents"]):
        where = f"event {i} ({e.get('name')!r}, ph {e.get('ph')!r})"
        if e.get("ph") not in _PHASES:
            problems.append(f"{where}: unknown ph")
            continue
        if not isinstance(e.get("name"), str):
            problems.append(f"{where}: name must be a string")
        for key in ("pid", "tid"):
            if not isinstance(e.get(key), int) or isinstance(e.get(key), bool):
                problems.append(f"{where}: {key} must be an integer")
        if not _number(e.get("ts")) or e["ts"] < 0:
            problems.append(f"{where}: ts must be a finite number of microseconds >= 0")
        if "args" in e and not isinstance(e["args"], dict):
            problems.append(f"{where}: args must be an object")
        thread = (e.get("pid"), e.get("tid"))
        ph = e["ph"]
        if ph == "X":
            if not _number(e.get("dur")) or e["dur"] < 0:
                problems.append(f"{where}: X needs dur >= 0 (microseconds)")
            else:
                complete[thread].append((round(e["ts"] * 1000), round((e["ts"] + e["dur"]) * 1000),
                                         e["name"]))
                used_threads.add(thread)
        elif ph == "B":
            open_b[thread].append(e)
        elif ph == "E":
            if not open_b[thread]:
                problems.append(f"{where}: E without a B on its thread")
            else:
                open_b[thread].pop()
        elif ph == "C":
            args = e.get("args")
            if not isinstance(args, dict) or not args:
                problems.append(f"{where}: C needs args with at least one series")
            elif not all(_number(v) for v in args.values()):
                problems.append(f"{where}: C series values must be finite numbers")
        elif ph == "M":
            if e.get("name") not in _METADATA:
                problems.append(f"{where}: unknown metadata name")
            elif e["name"].endswith("sort_index"):
                if not isinstance((e.get("args") or {}).get("sort_index"), int):
                    problems.append(f"{where}: sort_index must be an integer")
            elif not isinstance((e.get("args") or {}).get("name" if e["name"] != "process_labels"
                                                            else "labels"), str):
                problems.append(f"{where}: metadata needs args.name")
            if e.get("name") == "thread_name":
                named_threads.add(thread)
    for thread, stack in open_b.items():
        if stack:
            problems.append(f"thread {thread}: {len(stack)} B event(s) without E")
    # Complete events on one thread must nest: each starts after the previous ends, or ends
    # inside the one that contains it (viewers drop or mis-draw partial overlaps).
    for thread, spans in complete.items():
        stack: list[tuple] = []
        for start, end, name in sorted(spans, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1][1] <= start:
                stack.pop()
            if stack and end > stack[-1][1]:
                problems.append(f"thread {thread}: {name!r} overlaps {stack[-1][2]!r} "
                                "without nesting")
            stack.append((start, end, name))
    for thread in used_threads - named_threads:
        problems.append(f"thread {thread} has spans but no thread_name metadata")
    return problems


def test_validator_catches_broken_traces():
    good = {"traceEvents": [
        {"name": "thread_name", "ph": "M", "ts": 0, "pid": 1, "tid": 1, "args": {"name": "t"}},
        {"name": "a", "ph": "X", "ts": 0, "dur": 10, "pid": 1, "tid": 1},
        {"name": "b", "ph": "X", "ts": 2, "dur": 3, "pid": 1, "tid": 1},
        {"name": "m", "ph": "C", "ts": 1, "pid": 1, "tid": 0, "args": {"bytes": 5}}]}
    assert validate_trace(json.dumps(good)) == []
    bad = copy.deepcopy(good)
    bad["traceEvents"][2]["dur"] = 30  # b overlaps the end of a
    bad["traceEvents"][3]["args"] = {"bytes": None}
    bad["traceEvents"].append({"name": "x", "ph": "X", "ts": 1, "pid": "1", "tid": 1})
    problems = validate_trace(json.dumps(bad))
    assert any("overlaps" in p for p in problems)
    assert any("finite numbers" in p for p in problems)
    assert any("pid must be an integer" in p for p in problems)
    assert any("needs dur" in p for p in problems)
    with pytest.raises(ValueError, match="NaN"):
        validate_trace('{"traceEvents": [{"name": "n", "ph": "C", "ts": NaN, "pid": 1, '
                       '"tid": 1, "args": {"v": 1}}]}')


# -- CSV ----------------------------------------------------------------------------------------
def test_layers_csv_round_trips_with_empty_cells_for_unmeasured(runs, tmp_path):
    _, by_workload = runs
    for result in by_workload.values():
        path = write_layers_csv(result, tmp_path / f"{result.config.workload}.csv")
        assert read_layers_csv(path) == result.layers
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        header = list(rows[0])
        assert header[:len(LAYER_COLUMNS)] == [c for c, _ in LAYER_COLUMNS]
        for row, layer in zip(rows, result.layers):
            assert row["weights_bytes"] == str(layer.weights_bytes)  # exact integers
            for column in ("activation_bytes", "saved_for_backward_bytes", "kv_cache_bytes",
                           "flops", "latency_ms", "gradient_bytes"):
                value = getattr(layer, column)
                assert (row[column] == "") == (value is None), (column, layer.name)
                assert row[column] != "0" or value == 0
        # The last row is what no layer holds: the at-peak column adds up to the peak exactly
        assert (rows[-1]["name"], rows[-1]["kind"]) == ("(unattributed)", "unattributed")
        assert len(rows) == len(result.layers) + 1
        assert int(rows[-1]["at_peak_bytes"]) == result.totals.unattributed_bytes
        assert sum(int(r["at_peak_bytes"]) for r in rows) == result.totals.peak_bytes
        # at-peak categories are measured for every layer: none held is 0, never blank (a
        # blank read as "not measured"), and each row's categories add up to its at-peak bytes
        for row, layer in zip(rows, result.layers):
            cells = {k: v for k, v in row.items() if k.startswith("at_peak.")}
            assert "" not in cells.values(), (layer.name, cells)
            assert sum(int(v) for v in cells.values()) == int(row["at_peak_bytes"])
    gen = by_workload["generate"]
    assert all(layer.saved_for_backward_bytes is None for layer in gen.layers)
    assert "saved_for_backward_bytes" in layers_csv(gen).splitlines()[0]


def test_timeline_csv_round_trips(runs, tmp_path):
    _, by_workload = runs
    result = by_workload["generate"]
    assert len(result.timeline["t"]) > 3
    path = write_timeline_csv(result, tmp_path / "timeline.csv")
    back = read_timeline_csv(path)
    assert back == result.timeline
    assert list(back)[0] == "t"
    # A CPU run has no GPU readings: empty cells, never zeros.
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["gpu_used_bytes"] for row in rows} == {""}
    # the time column names its unit as the others do (a file read alone: "t" in what?)
    assert list(rows[0])[0] == "t_s" and float(rows[0]["t_s"]) == result.timeline["t"][0]
    older = tmp_path / "older.csv"  # a file written before the rename still reads back
    older.write_text(path.read_text().replace("t_s,", "t,", 1))
    assert read_timeline_csv(older) == result.timeline


# -- trace --------------------------------------------------------------------------------------
def test_trace_validates_and_carries_the_records_figures(runs, tmp_path):
    _, by_workload = runs
    for result in by_workload.values():
        path = write_trace(result, tmp_path / f"{result.config.workload}.trace.json")
        text = path.read_text(encoding="utf-8")
        assert validate_trace(text) == []
        trace = json.loads(text)
        events = trace["traceEvents"]
        assert trace["otherData"]["memlens_run_id"] == result.run_id
        assert trace["otherData"]["kind"] == "measured"
        other = trace["otherData"]
        assert other["input"].startswith(result.config.workload) and other["dtype"]
        assert other["optimizations"] == "none" and "label" in other
        # Phases: one complete event per recorded phase, at its recorded time (µs).
        phases = [e for e in events if e.get("cat") == "phase"]
        assert [e["name"] for e in phases] == [p["name"] for p in result.phases]
        for e, p in zip(phases, result.phases):
            assert e["ts"] == pytest.approx(p["start"] * 1e6, abs=1e-3)
            assert e["dur"] == pytest.approx((p["end"] - p["start"]) * 1e6, abs=2e-3)
        # Memory counters: the timeline's readings, exact bytes; missing readings left out.
        rss = [e for e in events if e["ph"] == "C" and e["name"] == "process RSS"]
        recorded = [(t, v) for t, v in zip(result.timeline["t"], result.timeline["rss_bytes"])
                    if v is not None]
        assert [(e["ts"], e["args"]["bytes"]) for e in rss] == [
            (round(t * 1e6, 3), v) for t, v in recorded]
        assert not [e for e in events if e["ph"] == "C" and e["name"].startswith("GPU used")]
        # Per-layer spans: each measured median, in microseconds.
        layers = {e["name"]: e for e in events if e.get("cat") == "layer"}
        measured = [layer for layer in result.layers if layer.latency_ms is not None]
        assert measured and set(layers) == {layer.name for layer in measured}
        for layer in measured:
            assert layers[layer.name]["dur"] == pytest.approx(layer.latency_ms * 1e3, abs=1e-3)
            args = layers[layer.name]["args"]
            assert args["weights_bytes"] == layer.weights_bytes
            assert args["at_peak_bytes"] == layer.at_peak_bytes
            # every figure the table has for the layer, none written as null
            for field, key in (("saved_for_backward_bytes", "saved_for_backward_bytes"),
                               ("kv_cache_bytes", "kv_cache_bytes (at the end)"),
                               ("gradient_bytes", "gradient_bytes"),
                               ("optimizer_state_bytes", "optimizer_state_bytes")):
                assert args.get(key) == getattr(layer, field), (layer.name, key)
                assert key in args or getattr(layer, field) is None
        names = {e["args"]["name"] for e in events if e["ph"] == "M"
                 and e["name"] == "process_name"}
        assert any("start times are a layout" in n for n in names)
    gen_events = trace_events(by_workload["generate"])["traceEvents"]
    decode = [e for e in gen_events if e.get("cat") == "generation"]
    assert len(decode) == 1 + len(by_workload["generate"].generation["decode_ms_per_step"])
    train_events = trace_events(by_workload["train"])["traceEvents"]
    assert [e["name"] for e in train_events if e.get("cat") == "training"] == [
        "forward", "backward", "optimizer"]


def test_trace_of_an_estimate_is_labelled_and_has_no_timing(runs, tmp_path):
    _, by_workload = runs
    est = RunResult.from_dict(copy.deepcopy(by_workload["generate"].to_dict()))
    est.estimate = {"method": "fake tensors"}
    for layer in est.layers:
        layer.latency_ms = None
    est.generation = None
    est.timeline = {}
    trace = trace_events(est)
    assert trace["otherData"]["kind"] == "estimate"
    assert validate_trace(json.dumps(trace)) == []
    assert not [e for e in trace["traceEvents"] if e.get("cat") == "layer"]
    assert any("ESTIMATE" in e["args"].get("name", "") for e in trace["traceEvents"]
               if e["ph"] == "M")
    # The CSV says so on every row; no empty timeline.csv is written for it
    written = export_run(est, csv_dir=tmp_path / "est")
    assert [p.name for p in written] == ["layers.csv"]
    with open(written[0], encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["figures"] for r in rows} == {"estimate"}
    assert read_layers_csv(written[0]) == est.layers
    measured = write_layers_csv(by_workload["generate"], tmp_path / "measured.csv")
    with open(measured, encoding="utf-8", newline="") as f:
        assert {r["figures"] for r in csv.DictReader(f)} == {"measured"}


# -- CLI ----------------------------------------------------------------------------------------
def test_cli_export_writes_csvs_and_trace(runs, tmp_path, capsys):
    store, by_workload = runs
    result = by_workload["generate"]
    code = cli.main(["--store", str(store.root), "export", result.run_id,
                     "--csv", str(tmp_path / "csv"), "--trace", str(tmp_path / "t.json")])
    assert code == cli.EXIT_OK
    assert (tmp_path / "csv" / "layers.csv").is_file()
    assert (tmp_path / "csv" / "timeline.csv").is_file()
    assert validate_trace((tmp_path / "t.json").read_text(encoding="utf-8")) == []
    assert "written:" in capsys.readouterr().out
    # A run file path works as well as a run id.
    code = cli.main(["export", str(store.path_for(result.run_id)), "--trace",
                     str(tmp_path / "t2.json")])
    assert code == cli.EXIT_OK and (tmp_path / "t2.json").is_file()


def test_cli_export_errors(runs, tmp_path, capsys):
    store, by_workload = runs
    run_id = by_workload["generate"].run_id
    assert cli.main(["--store", str(store.root), "export", "no-such-run", "--csv",
                     str(tmp_path)]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "No saved run" in err and "memlens runs" in err
    assert cli.main(["--store", str(store.root), "export", run_id]) == cli.EXIT_USAGE
    assert "--csv DIR and/or --trace FILE" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert cli.main(["--store", str(store.root), "export", run_id, "--csv",
                     str(blocker / "sub")]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "Cannot write" in err and f"{blocker} is a file, not a folder" in err
    assert "Give --csv a folder" in err


def test_export_never_reads_qt():
    import subprocess
    import sys

    code = ("import sys, engine.export, engine.cli; "
            "print(any(m.startswith(('PySide6', 'pyqtgraph', 'gui')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent, check=True)
    assert out.stdout.strip() == "False"


# -- CUDA memory snapshot -----------------------------------------------------------------------
def test_cuda_memory_snapshot_refuses_without_cuda(tmp_path):
    with pytest.raises(MemLensError) as info:
        with cuda_memory_snapshot(tmp_path / "snap.pickle", "cpu"):
            pass
    assert info.value.kind is ErrorKind.NO_DEVICE and "needs CUDA" in info.value.message
    assert "--trace" in info.value.hint
    if not torch.cuda.is_available():
        with pytest.raises(MemLensError, match="no CUDA device"):
            with cuda_memory_snapshot(tmp_path / "snap.pickle", "cuda"):
                pass
    assert not (tmp_path / "snap.pickle").exists()


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_exports_and_saved_runs_get_the_usual_file_permissions(runs, tmp_path):
    """Atomic writes went through mkstemp, which makes files 0600: exports and runs in a
    folder a team shares were unreadable to the others."""
    import stat

    from engine.store import NEW_FILE_MODE

    _, by_workload = runs
    result = by_workload["generate"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert NEW_FILE_MODE == 0o666 & ~mask
    paths = [write_layers_csv(result, tmp_path / "layers.csv"),
             write_trace(result, tmp_path / "trace.json"),
             RunStore(tmp_path / "runs").save(result)]
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == NEW_FILE_MODE, path


def test_a_generations_layer_figures_say_they_cover_every_forward(runs, capsys):
    """A generation's per-layer latency and FLOPs sum the prefill and every decode forward
    (layer 0 at 6 ms beside "Decode per step 2.3 ms"), while its output bytes are the
    prefill's; the table footnote, the report's note and the trace's thread say so."""
    import io

    from engine.cli import print_report
    from engine.export import trace_events
    from engine.format import layer_passes_text

    store, out = runs
    gen = out["generate"]
    n = len(gen.generation["decode_ms_per_step"])
    assert n == gen.config.new_tokens - 1
    top = [layer for layer in gen.layers if layer.depth == 0 and layer.latency_ms]
    assert sum(layer.latency_ms for layer in top) > gen.generation["prefill_ms"] * 0.9
    text = layer_passes_text(gen)
    assert text == f"the prefill and {n} decode forwards, summed"
    assert layer_passes_text(out["train"]) == ""
    threads = [e["args"]["name"] for e in trace_events(gen)["traceEvents"]
               if e.get("name") == "thread_name"]
    assert any(text in name for name in threads), threads
    printed = io.StringIO()
    print_report(gen, printed)
    assert f"each layer over {text}" in printed.getvalue()
