"""The run store (atomic, reloadable without a model) and the CLI."""

from __future__ import annotations

import json
import os
import re

import pytest

from engine import cli
from engine.errors import ErrorKind, MemLensError
from engine.runner import execute
from engine.store import RunStore

from .helpers import Collector, tiny


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("runs"))
    result = execute(tiny(workload="forward", attention_maps=True), Collector(), store=store)
    assert result is not None
    return store, result


def test_save_list_load_without_a_model(saved):
    store, result = saved
    listed = store.list()
    assert [s.run_id for s in listed] == [result.run_id]
    assert listed[0].peak_bytes == result.totals.peak_bytes
    again = store.load(result.run_id)
    assert again.to_dict() == result.to_dict()
    assert again.totals.reconciles()
    maps = store.load_attention(result.run_id)
    assert maps is not None and len(maps.maps) == result.model_info["num_layers"]
    assert str(maps.maps[0].dtype) == "float16"
    assert result.attention["file"] == store.attention_path(result.run_id).name


@pytest.mark.fault(area='data', case='damaged JSON, a run from a newer schema, a missing file',
                   outcome='store / not_found errors that say which and what to do')
def test_damaged_and_future_files_are_explained(saved, tmp_path):
    store, result = saved
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MemLensError) as e:
        store.load(bad)
    assert e.value.kind == ErrorKind.STORE and "damaged" in e.value.message
    future = result.to_dict()
    future["schema_version"] = 999
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(future))
    with pytest.raises(MemLensError) as e:
        store.load(newer)
    assert "newer MemLens" in e.value.message and "Upgrade MemLens" in e.value.hint
    # A JSON file that is no MemLens run: the hint says what to open (it said "open it with
    # the MemLens version that wrote it").
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"a": 1}))
    with pytest.raises(MemLensError) as e:
        store.load(foreign)
    assert "not a MemLens run" in e.value.message and "memlens runs" in e.value.hint
    with pytest.raises(MemLensError) as e:
        store.load(tmp_path / "missing.json")
    assert e.value.kind == ErrorKind.NOT_FOUND


@pytest.mark.fault(area='data', case='a run file edited by hand (wrong types, missing totals, a '
                   'newer or no schema version), or copied under another name',
                   outcome='named damaged with the field at fault, and not listed as a run that '
                   'cannot open; a copy is listed and opened by its file name; the list, runs '
                   'and show keep working for the rest')
def test_a_hand_edited_run_file_is_named_damaged_and_never_breaks_the_list(saved, tmp_path,
                                                                         capsys):
    """A run file edited by hand ("created": 12345, a number given as text) stopped
    `memlens runs` with a traceback for every run, and `show` drew it with 0 B figures."""
    import shutil

    source, result = saved
    store = RunStore(tmp_path / "runs")
    shutil.copytree(source.root, store.root)
    edits = {"created-number": lambda d: d.__setitem__("created", 12345),
             "peak-text": lambda d: d["totals"].__setitem__("peak_bytes", "470592"),
             "no-totals": lambda d: d.pop("totals"),
             "at-peak-null": lambda d: d["layers"][0].__setitem__("at_peak", None),
             "warnings-text": lambda d: d.__setitem__("warnings", "oops"),
             "no-model": lambda d: d["config"].pop("model"),
             # listed before, then refused by show/compare/the window:
             "future": lambda d: d.__setitem__("schema_version", 99),
             "no-schema": lambda d: d.pop("schema_version"),
             "layers-text": lambda d: d.__setitem__("layers", "oops"),
             # listed under the id inside it, which no command then found
             "copied": lambda d: d.__setitem__("run_id", "the-id-it-was-saved-with")}
    for name, edit in edits.items():
        data = result.to_dict()
        data["run_id"] = name
        edit(data)
        (store.root / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    # listed: what opens; the rest is named (a layer's field is checked when the run opens)
    assert sorted(s.run_id for s in store.list()) == sorted(
        [result.run_id, "at-peak-null", "warnings-text", "copied"])
    assert store.damaged() == ["created-number.json", "future.json", "layers-text.json",
                               "no-model.json", "no-schema.json", "no-totals.json",
                               "peak-text.json"]
    assert store.load("copied").run_id == "copied"  # opened by the id the list gives
    assert cli.main(["--store", str(store.root), "runs"]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert result.run_id in out and "warning: skipped 7 file(s)" in err and "and 2 more" in err
    for name, words in [("peak-text", "totals.peak_bytes is '470592'"),
                        ("no-totals", "no totals"), ("at-peak-null", "layers[0].at_peak"),
                        ("warnings-text", "warnings is 'oops'"), ("no-model", "no config.model"),
                        ("layers-text", "layers is 'oops'")]:
        with pytest.raises(MemLensError) as info:
            store.load(name)
        assert "is damaged" in info.value.message and words in info.value.message, name
    assert store.load(result.run_id).to_dict() == result.to_dict()  # the good one still opens


@pytest.mark.fault(area='data', case='a sweep, fit, plan or distributed run record edited by hand '
                   '(a value of the wrong type, a field removed)', outcome='named damaged with the field at fault, e.g. '
                   '"points[1].peak_bytes is \'12 GB\', not a whole number or null"; show exits 1')
def test_a_hand_edited_record_names_the_field_at_fault(tmp_path, capsys):
    """A sweep whose points were not a list said "damaged ('int' object is not iterable)", and a
    peak given as text opened, then broke the table; every record now names the field."""
    from engine import records
    from engine.sweep import FitAnswer, FitRecord, SweepPoint, SweepRecord

    sweep = SweepRecord(model="preset:tiny-llama", workload="forward", seqs=[16, 32], batches=[1],
                        opt_sets=[{"label": "none", "optimizations": []}],
                        points=[SweepPoint(seq=16, batch=1, opt_set="none", kind="estimate",
                                           peak_bytes=1000, categories={"weights": 600}),
                                SweepPoint(seq=32, batch=1, opt_set="none", kind="estimate",
                                           peak_bytes=1500, latency_ms=None)])
    fit = FitRecord(model="preset:tiny-llama", workload="forward", budget_bytes=10**9,
                    budget_source="given", budget_description="1 GB", batches=[1], opt_sets=[],
                    answers=[FitAnswer(opt_set="none", batch=1, status="fits", seq=64,
                                       categories={"weights": 600})])
    cases = [
        (sweep.to_dict(), lambda d: d.__setitem__("points", 5), "points is 5, not a list"),
        (sweep.to_dict(), lambda d: d["points"][1].__setitem__("peak_bytes", "12 GB"),
         "points[1].peak_bytes is '12 GB', not a whole number or null"),
        (sweep.to_dict(), lambda d: d.__setitem__("seqs", "16,32"), "seqs is '16,32', not a list"),
        (fit.to_dict(), lambda d: d["answers"][0]["categories"].__setitem__("weights", "x"),
         "answers[0].categories['weights'] is 'x', not a whole number"),
        (fit.to_dict(), lambda d: d["answers"].__setitem__(0, 7), "answers[0] is 7, not an object"),
    ]
    for i, (data, edit, words) in enumerate(cases):
        assert records.from_dict(json.loads(json.dumps(data))) is not None  # unedited: opens
        edit(data)
        path = tmp_path / f"edited{i}.json"
        path.write_text(json.dumps(data), encoding="utf-8")
        assert cli.main(["show", str(path)]) == cli.EXIT_FAILED, words
        err = capsys.readouterr().err
        assert "is damaged" in err and words in err, (words, err)
    # a training plan and a measured distributed run, as MemLens writes them, open; edited,
    # they are named by the field too, and a field they cannot do without is said missing
    from engine.config import RunConfig
    from engine.distributed import plan_training
    from engine.distributed_run import DistributedRun, RankRow

    plan = plan_training(RunConfig(model="preset:tiny-llama", workload="train", seq=16), 2)
    run = DistributedRun(run_id="d", created="2026-12-07T00:00:00+00:00",
                         config={"model": "preset:tiny-llama"}, world_size=2, backend="gloo",
                         recipe="fully_shard",
                         ranks=[RankRow(rank=0, world_size=2, device="cpu", peak_bytes=10)])
    more = [(plan.to_dict(), lambda d: d["groups"].__setitem__(0, "x"),
             "groups[0] is 'x', not an object"),
            (run.to_dict(), lambda d: d["ranks"][0].__setitem__("peak_bytes", [1]),
             "ranks[0].peak_bytes is [1], not a whole number"),
            (sweep.to_dict(), lambda d: d.pop("seqs"), "seqs is missing")]
    for i, (data, edit, words) in enumerate(more):
        data = json.loads(json.dumps(data))
        assert records.from_dict(data) is not None
        edit(data)
        with pytest.raises(TypeError, match=re.escape(words)):
            records.from_dict(data)
    # a newer schema is said so before any field is judged
    data = dict(sweep.to_dict(), schema_version=99, points=5)
    with pytest.raises(MemLensError, match="newer MemLens"):
        records.from_dict(data)
    for kind in records.RECORD_KINDS:
        assert records.record_class(kind) is not None, kind


def test_runs_lists_optimizations_and_keeps_the_runs_holding_every_word(saved, tmp_path,
                                                                         capsys):
    import shutil

    source, result = saved
    store = RunStore(tmp_path / "runs")
    shutil.copytree(source.root, store.root)
    data = result.to_dict()
    data["run_id"] = "second"
    data["config"]["model"], data["config"]["label"] = "preset:other-model", "Wide trial"
    (store.root / "second.json").write_text(json.dumps(data), encoding="utf-8")
    root = ["--store", str(store.root)]
    assert cli.main(root + ["runs"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "2 run(s) in" in out and "optimizations" in out.splitlines()[1]
    assert cli.main(root + ["runs", "OTHER", "wide"]) == cli.EXIT_OK  # every word, any case
    out = capsys.readouterr().out
    assert "1 of 2 run(s) match 'OTHER wide'" in out and "second" in out
    assert result.run_id not in out
    assert cli.main(root + ["runs", "other", "nothing-like-this"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "no run of the 2" in out and "`memlens runs` lists them all" in out
    assert cli.main(root + ["runs", "--json", result.run_id]) == cli.EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listed] == [result.run_id]
    # latencies named as in the run file's totals (latency_ms: with live hooks)
    assert listed[0]["latency_ms"] == result.totals.latency_ms
    assert listed[0]["plain_latency_ms"] == result.totals.plain_latency_ms
    assert "hooked_latency_ms" not in listed[0]


@pytest.mark.fault(area='resources', case='a full disk while saving (rename fails)',
                   outcome='store error naming the cause; the previous file is intact and no partial run is listed')
def test_a_failed_save_leaves_the_previous_file_intact(saved, monkeypatch):
    store, result = saved
    path = store.path_for(result.run_id)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    result.config.label = "changed"
    with pytest.raises(MemLensError) as e:
        store.save(result)
    assert "No space left" in e.value.message
    monkeypatch.undo()
    result.config.label = ""
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert [s.run_id for s in store.list()] == [result.run_id]


def test_cli_profile_prints_a_reconciled_table(tmp_path, capsys):
    code = cli.main(["--store", str(tmp_path), "profile", "--model", "preset:tiny-llama",
                     "--workload", "generate", "--seq", "16", "--new-tokens", "4",
                     "--repeats", "1", "--out", str(tmp_path / "out" / "run.json")])
    out = capsys.readouterr().out
    assert code == 0, out  # (--out outside the store's folder: one there would fake a run)
    assert "reconciles" in out and "KV cache" in out and "self_attn" in out
    assert "unattributed" in out and "saved:" in out
    # a generation's tokens/s counts the decode steps alone; the KV column is the end's cache
    assert "tokens/s decoding" in out and "KV at end" in out
    assert json.loads((tmp_path / "out" / "run.json").read_text())["totals"]["peak_bytes"] > 0
    assert cli.main(["--store", str(tmp_path), "runs"]) == 0
    assert "preset:tiny-llama" in capsys.readouterr().out
    assert cli.main(["runs", "--store", str(tmp_path)]) == 0  # after the command works too
    assert "preset:tiny-llama" in capsys.readouterr().out
    assert cli.main(["runs", "--store", str(tmp_path / "other")]) == 0
    assert "preset:tiny-llama" not in capsys.readouterr().out
    run_id = json.loads((tmp_path / "out" / "run.json").read_text())["run_id"]
    assert cli.main(["--store", str(tmp_path), "show", run_id]) == 0
    assert "reconciles" in capsys.readouterr().out


def test_cli_errors_name_the_problem_and_the_fix(tmp_path, capsys):
    code = cli.main(["--store", str(tmp_path), "profile", "--model", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 1
    assert "nope" in err and "hint:" in err


def test_an_unwritable_out_is_refused_first_and_a_failed_save_is_not_called_saved(
        tmp_path, capsys, monkeypatch):
    """--out on a folder failed with a traceback after the run (saved by then); a store that
    cannot be written printed "saved: PATH" for a file that does not exist, and exit 0."""
    tiny_run = ["profile", "--model", "preset:tiny-llama", "--seq", "8", "--repeats", "1"]
    store = tmp_path / "runs"
    assert cli.main(["--store", str(store), *tiny_run, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"--out {tmp_path} is a folder" in err and "hint:" in err
    assert not store.exists() or not list(store.glob("*.json"))  # refused before the run
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    # a file where a folder of the path should be: named ("File exists" named neither)
    assert cli.main(["--store", str(store), *tiny_run, "--out",
                     str(blocked / "sub" / "run.json")]) == 1
    assert f"{blocked} is a file, not a folder" in capsys.readouterr().err
    from engine.errors import MemLensError
    from engine.export import export_run
    from engine.config import RunConfig
    from engine.results import RunResult

    with pytest.raises(MemLensError) as info:
        export_run(RunResult(config=RunConfig()), csv_dir=blocked / "csv")
    assert f"{blocked} is a file, not a folder" in info.value.message
    code = cli.main(["--store", str(blocked / "runs"), *tiny_run])
    out, err = capsys.readouterr()
    # a store under a file is refused before the run (it was found only when saving)
    assert code == cli.EXIT_FAILED and "\nsaved:" not in out and "[" not in err, err
    assert f"{blocked} is a file" in err and "--store DIR" in err
    from engine import store as store_module

    def full_disk(path, data):
        raise OSError(28, "No space left on device", str(path))

    with monkeypatch.context() as patch:  # a save that fails is never called saved
        patch.setattr(store_module, "_atomic_write", full_disk)
        code = cli.main(["--store", str(tmp_path / "full"), *tiny_run])
    out, err = capsys.readouterr()
    assert code == 1 and "\nsaved:" not in out
    assert "The run was not saved" in err and "--out FILE" in err
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    assert cli.main(["--store", str(store), *tiny_run, "--json", "--out=~/r.json"]) == 0
    json.loads(capsys.readouterr().out)  # stdout stays JSON: no "saved:" line in it
    assert (home / "r.json").is_file()  # "~" expanded


def test_compare_aligns_bars_and_reconciles_each_run(tmp_path):
    """The compare view's data: bars matched by name, each run's bars + unattributed = its
    peak, deltas against the first run, and the quality metric every run shares."""
    from engine.compare import compare, quality_text
    from engine.runner import execute

    base = execute(tiny(model="demo"))  # the demo has a tokenizer: perplexity is meaningful
    opt = execute(tiny(model="demo",
                       optimizations=[{"id": "prune-ffn", "params": {"amount": 0.5}}]))
    c = compare([base, opt])
    assert c.bars[0].endswith("embed_tokens") and any(".layers.0" in b for b in c.bars)
    for i, run in enumerate((base, opt)):
        assert sum(v or 0 for v in c.at_peak[i]) + c.unattributed[i] == c.peaks[i]
    deltas = c.deltas(1)
    assert deltas[0] == 0  # embeddings untouched
    assert all(d is not None and d < 0 for b, d in zip(c.bars, deltas) if ".layers." in b)
    assert c.metric == "perplexity" and all(q is not None for q in c.quality)
    assert c.not_plotted() == []
    # Without a tokenizer there is no perplexity, and KL exists only for the optimized run:
    # no metric is shared, so none is claimed.
    assert compare([execute(tiny()), execute(tiny(optimizations=[
        {"id": "prune-ffn", "params": {"amount": 0.5}}]))]).metric is None
    # Generation runs with a technique each: the tokens generated the same as the unoptimized
    # model's are what a cache policy changes, so they are the metric (the prompt's perplexity
    # is the same under any cache); a plain run has none, so then perplexity is.
    gen = [execute(tiny(model="demo", workload="generate", new_tokens=4, optimizations=[
        {"id": "kv-cache", "params": {"policy": "static"}}])),
           execute(tiny(model="demo", workload="generate", new_tokens=4, optimizations=[
               {"id": "cast", "params": {"dtype": "bfloat16"}}]))]
    c = compare(gen)
    assert c.metric == "generated_token_agreement" and c.metric_better == "higher"
    assert c.quality[0] == 1.0 and 0.0 <= c.quality[1] <= 1.0
    assert compare([execute(tiny(model="demo", workload="generate", new_tokens=4)),
                    *gen]).metric == "perplexity"
    # A deeper model's extra layers sit after the layer they follow, not after the head
    small, deep = execute(tiny()), base
    n_small = sum(1 for layer in small.layers if layer.kind == "block")
    assert n_small < sum(1 for layer in deep.layers if layer.kind == "block")
    c = compare([small, deep])
    assert c.bars.index(f"model.layers.{n_small}") < c.bars.index("lm_head"), c.bars
    blocks = [b for b in c.bars if b.count(".") == 2 and b.startswith("model.layers.")]
    assert blocks == sorted(blocks, key=lambda b: int(b.rsplit(".", 1)[1])), blocks
    assert "tokens 100.0% same" in quality_text(gen[0].quality)


def test_summaries_carry_optimizations_and_quality(tmp_path):
    from engine.runner import execute
    from engine.store import RunStore

    store = RunStore(tmp_path)
    execute(tiny(optimizations=[{"id": "cast", "params": {"dtype": "bfloat16"}}]), store=store)
    (summary,) = store.list()
    assert summary.optimizations == "cast:dtype=bfloat16"
    assert summary.quality.startswith("KL ")
    assert summary.device == "cpu" and summary.dtype


def test_a_memory_snapshot_needs_cuda():
    from engine.config import RunConfig

    with pytest.raises(MemLensError) as caught:
        RunConfig(model="demo", memory_snapshot="/tmp/x.pickle").validate()
    assert "needs a CUDA device" in caught.value.message and "--device cuda" in caught.value.hint
    events = Collector()
    assert execute(tiny(memory_snapshot="/tmp/x.pickle"), events) is None
    assert events.failed.kind == ErrorKind.INVALID_WORKLOAD.value


def test_per_module_allocator_peaks_need_cuda():
    """--detailed was ignored without a word on the CPU."""
    from engine.config import RunConfig

    with pytest.raises(MemLensError) as caught:
        RunConfig(model="demo", detailed=True).validate()
    assert "--detailed" in caught.value.message and "--device cuda" in caught.value.hint
    RunConfig(model="demo", detailed=True, device="cuda").validate()  # the device decides


@pytest.mark.fault(area="data", case="a sweep, fit, plan or distributed run file given where a run "
                                     "is expected",
                   outcome="refused naming what the file is; `memlens show` prints it instead")
def test_records_are_shown_and_refused_where_a_run_is_expected(tmp_path, capsys):
    from engine.config import RunConfig
    from engine.distributed import plan_training
    from engine.store import load_run_file

    plan = plan_training(RunConfig(model="preset:tiny-llama", workload="train", seq=16), 2)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan.to_dict()), encoding="utf-8")
    assert cli.main(["show", str(path)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("ESTIMATE — FSDP2 training plan: preset:tiny-llama on 2 ranks")
    assert "sharded parameters (padded)" in out
    # by its path whatever its extension (it was looked up as a run id, and refused with a
    # hint to run this same command)
    for name in ("PLAN.JSON", "plan-saved"):
        other = tmp_path / name
        other.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
        assert cli.main(["show", str(other)]) == cli.EXIT_OK
        assert capsys.readouterr().out == out
    with pytest.raises(MemLensError) as info:
        load_run_file(path)
    assert "is an FSDP2 training plan" in info.value.message and "not a single run" in \
        info.value.message and f"memlens show {path}" in info.value.hint
    assert cli.main(["compare", str(path), str(path)]) == cli.EXIT_FAILED
    assert "not a single run" in capsys.readouterr().err
    # a record from a newer MemLens is refused, not misread
    path.write_text(json.dumps(dict(plan.to_dict(), schema_version=99)), encoding="utf-8")
    assert cli.main(["show", str(path)]) == cli.EXIT_FAILED
    assert "newer MemLens" in capsys.readouterr().err


def test_reference_first_prefers_the_chosen_baseline_then_the_unoptimized_run():
    from engine.compare import reference_first
    from engine.config import RunConfig
    from engine.results import RunResult

    def run(run_id, optimized=False, estimate=False, workload="forward"):
        return RunResult(config=RunConfig(workload=workload), run_id=run_id,
                         optimizations=[{"id": "cast"}] if optimized else [],
                         estimate={"method": "fake"} if estimate else None)

    a, est, plain, b = run("a", True), run("est", estimate=True), run("plain"), run("b", True)
    ordered, why = reference_first([a, est, plain, b])
    assert [r.run_id for r in ordered] == ["plain", "a", "est", "b"]
    assert why == "the first unoptimized run"  # an estimate is never the measured reference
    ordered, why = reference_first([a, est, plain, b], preferred="b")
    assert [r.run_id for r in ordered] == ["b", "a", "est", "plain"]
    assert why == "the chosen baseline"
    ordered, why = reference_first([a, b], preferred="missing")
    assert [r.run_id for r in ordered] == ["a", "b"] and why == "the first run"
    # mixed workloads: the unoptimized run of the workload most of them share (a generate
    # run chosen for coming first set both forward runs against another workload)
    gen = run("gen", workload="generate")
    ordered, why = reference_first([gen, a, plain])
    assert [r.run_id for r in ordered] == ["plain", "gen", "a"]
    assert why == "the first unoptimized forward run, the workload most of them share"


def test_comparison_labels_tell_runs_apart_and_name_mixed_workloads():
    from engine.compare import compare
    from engine.config import RunConfig
    from engine.results import RunResult

    def run(run_id, workload, optimized=False):
        return RunResult(config=RunConfig(workload=workload), run_id=run_id,
                         optimizations=[{"id": "cast", "params": {}}] if optimized else [])

    c = compare([run("r-aaaa", "forward"), run("r-bbbb", "generate"),
                 run("r-cccc", "generate"), run("r-dddd", "forward", optimized=True)])
    assert c.labels() == ["unoptimized · forward", "unoptimized · generate · bbbb",
                          "unoptimized · generate · cccc", "cast"]
    assert c.workloads == ["forward", "generate"]
    estimate = run("r-eeee", "forward")
    estimate.estimate = {"method": "fake"}
    assert compare([run("r-ffff", "forward", optimized=True), estimate]).labels() == [
        "cast", "unoptimized (estimate)"]
    # runs of different models are told apart by the model first
    other = run("r-gggg", "forward")
    other.config.model = "preset:tiny-gpt2"
    assert compare([run("r-hhhh", "forward"), other]).labels() == [
        "unoptimized · demo", "unoptimized · preset:tiny-gpt2"]
    # The user's own label names a run (one line); repeated labels are told apart alike
    named = [run("r-1111", "forward"), run("r-2222", "forward", optimized=True),
             run("r-3333", "forward", optimized=True)]
    named[0].config.label, named[1].config.label = "before the fix", "int8\n try"
    named[2].config.label = "int8  try"
    assert compare(named).labels() == ["before the fix", "int8 try · 2222", "int8 try · 3333"]


def test_a_model_named_two_ways_is_one_model(tmp_path):
    """A folder named through a symbolic link, and demo beside its own folder, were compared as
    "different models"."""
    from engine.compare import compare
    from engine.config import RunConfig
    from engine.results import RunResult

    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder)

    def run(model, path):
        return RunResult(config=RunConfig(model=model), run_id=model,
                         model_info={"path": str(path)})

    assert not compare([run(str(folder), folder), run(str(tmp_path / "link"),
                                                      tmp_path / "link")]).different_models
    assert not compare([run("demo", folder), run(str(folder), folder)]).different_models
    other = tmp_path / "other"
    other.mkdir()
    assert compare([run(str(folder), folder), run(str(other), other)]).different_models
    assert compare([run("preset:gpt2", ""), run("preset:bert", "")]).different_models


def test_a_latency_ratio_from_noisy_timing_passes_says_so(capsys):
    """A run's own warning said its timing passes were ×2-36 apart, yet the comparison showed
    its latency ratio as plainly as any other."""
    import io

    from engine.compare import compare, print_comparison
    from engine.config import RunConfig
    from engine.results import RunResult, Totals

    def run(run_id, ms, passes):
        return RunResult(config=RunConfig(), run_id=run_id, timing={"plain_ms": passes},
                         totals=Totals(peak_bytes=100, plain_latency_ms=ms))

    quiet, noisy = run("a", 10.0, [9.8, 10.0, 10.3]), run("b", 8.0, [8.0, 7.9, 30.0])
    c = compare([quiet, noisy, run("c", 5.0, [5.0, 5.1])])
    assert [c.ratio_text(i) for i in range(3)] == ["×1.00", "×0.80 (noisy)", "×0.50"]
    c = compare([noisy, quiet])  # a noisy reference makes every ratio noisy
    assert c.ratio_text(1) == "×1.25 (noisy)" and c.ratio_text(0) == "×1.00"
    out = io.StringIO()
    print_comparison([quiet, noisy], out)
    assert "×0.80 (noisy)" in out.getvalue() and "more than ×1.5 apart" in out.getvalue()
    assert compare([quiet, run("d", None, [])]).ratio_text(1) == "—"


def test_training_runs_are_compared_by_the_quality_after_their_steps():
    """Before its steps a training technique leaves the model as it was (KL 0 for all): the
    compare view plots what the steps made of it, against the baseline trained alike."""
    from engine.compare import compare, quality_text
    from engine.runner import execute

    plain = execute(tiny(model="demo", workload="train", seq=16))
    lora = execute(tiny(model="demo", workload="train", seq=16,
                        optimizations=[{"id": "lora", "params": {"rank": 4}}]))
    c = compare([plain, lora])
    assert c.metric == "after_training.kl_divergence" and c.metric_better == "lower"
    assert c.quality[0] is None and c.quality[1] > 0  # the reference has no baseline of its own
    assert c.not_plotted() == [plain.run_id]
    assert "trained KL" in quality_text(lora.quality)


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`memlens optimizations | head -1`: the reader goes away; no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "--store", str(tmp_path),
                             "optimizations"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before it writes anything
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_the_kv_cache_line_says_how_the_bytes_moved():
    """A sliding window's cache shrinks below what it has seen, a static one stays the same:
    "KV cache 16.0 KiB for 143 positions (grew 64.0 KiB → 16.0 KiB)" contradicted itself."""
    from engine.format import kv_cache_text

    kib = 1024
    window = kv_cache_text({"kv_cache_bytes": 16 * kib, "cached_positions": 143,
                            "kv_bytes_per_step": [64 * kib, 32 * kib, 16 * kib]})
    assert window.startswith("KV cache 16.0 KiB after 143 positions (shrank 64.0 KiB → 16.0 KiB")
    static = kv_cache_text({"kv_cache_bytes": 240 * kib, "cached_positions": 79,
                            "kv_bytes_per_step": [240 * kib] * 3})
    assert "(the same 240 KiB after every step: allocated up front)" in static
    dynamic = kv_cache_text({"kv_cache_bytes": 3 * kib, "cached_positions": 3,
                             "kv_bytes_per_step": [kib, 2 * kib, 3 * kib]})
    assert dynamic == "KV cache 3.00 KiB after 3 positions (grew 1.00 KiB → 3.00 KiB)"


@pytest.mark.fault(area="data", case="deleting saved runs (CLI and window)",
                   outcome="moved with their attention maps to the store's trash, not listed, "
                           "restored by `memlens restore` or Edit → Undo delete; ids that are "
                           "paths are refused")
def test_delete_moves_runs_to_the_trash_and_restore_brings_them_back(saved, tmp_path, capsys):
    import shutil

    source, result = saved
    store = RunStore(tmp_path / "runs")
    shutil.copytree(source.root, store.root)
    run_id = result.run_id
    assert cli.main(["--store", str(store.root), "delete", run_id, "no-such-run"]) \
        == cli.EXIT_FAILED  # the good id is moved; the bad one is named
    out, err = capsys.readouterr()
    assert "No saved run with id 'no-such-run'" in err and "memlens restore" in out
    assert store.list() == [] and store.trashed() == [run_id]
    assert (store.trash_root / f"{run_id}.attn.safetensors").is_file()  # the maps went too
    with pytest.raises(MemLensError) as info:  # `show` says where it went
        store.load(run_id)
    assert "in the trash" in info.value.message and "memlens restore" in info.value.hint
    assert cli.main(["--store", str(store.root), "runs", "--trash"]) == cli.EXIT_OK
    assert run_id in capsys.readouterr().out
    assert cli.main(["--store", str(store.root), "restore", run_id]) == cli.EXIT_OK
    assert [s.run_id for s in store.list()] == [run_id] and store.trashed() == []
    assert store.load(run_id).to_dict() == result.to_dict()  # byte for byte the same run
    assert store.load_attention(run_id) is not None
    for bad in ("../runs", f"../{run_id}", ""):
        with pytest.raises(MemLensError) as info:
            store.trash(bad)
        assert info.value.kind is ErrorKind.NOT_FOUND
    assert store.list() and (store.root.parent / "runs").is_dir()


def test_the_trash_is_emptied_for_good_and_sizes_are_shown(saved, tmp_path, capsys):
    """`memlens delete --empty-trash` frees the trash's space (the delete dialog used to say
    'delete the files there'); `memlens runs` says what the store and its trash take on disk."""
    import shutil

    source, result = saved
    store = RunStore(tmp_path / "runs")
    shutil.copytree(source.root, store.root)
    run_id, root = result.run_id, str(store.root)
    files = [store.path_for(run_id), store.attention_path(run_id)]
    on_disk = sum(p.stat().st_size for p in files)
    assert store.usage() == (1, on_disk) and store.usage(trash=True) == (0, 0)
    assert cli.main(["--store", root, "runs"]) == cli.EXIT_OK
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        f"{cli.human_bytes(on_disk)} on disk")
    with pytest.raises(MemLensError) as info:  # a listed run is trashed first
        store.purge(run_id)
    assert "not in the trash" in info.value.message and "memlens delete" in info.value.hint
    assert cli.main(["--store", root, "delete"]) == cli.EXIT_USAGE  # no ids, no flag
    assert "--empty-trash" in capsys.readouterr().err
    assert cli.main(["--store", root, "delete", run_id]) == cli.EXIT_OK
    assert store.usage(trash=True) == (1, on_disk)
    assert cli.main(["--store", root, "runs"]) == cli.EXIT_OK
    assert "the trash holds 1 run(s)" in capsys.readouterr().out
    assert cli.main(["--store", root, "delete", "--empty-trash", run_id]) == cli.EXIT_USAGE
    assert store.trashed() == [run_id]  # refused: nothing removed
    # maps left in the trash without their run are counted, and removed with the rest
    (store.trash_root / "gone-run.attn.safetensors").write_bytes(b"x" * 1000)
    assert store.usage(trash=True) == (1, on_disk + 1000)
    capsys.readouterr()
    assert cli.main(["--store", root, "delete", "--empty-trash"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert f"removed 1 run(s) from {store.trash_root} for good: " \
           f"{cli.human_bytes(on_disk + 1000)} freed" in out
    assert store.trashed() == [] and not any(p.exists() for p in files)
    assert not list(store.trash_root.iterdir())  # the maps went too
    assert cli.main(["--store", root, "delete", "--empty-trash"]) == cli.EXIT_OK
    assert "the trash is empty" in capsys.readouterr().out
    with pytest.raises(MemLensError) as info:
        store.purge(run_id)
    assert info.value.kind is ErrorKind.NOT_FOUND and "--trash" in info.value.hint


def test_a_label_changes_only_the_label(saved, tmp_path, capsys):
    import shutil

    source, result = saved
    store = RunStore(tmp_path / "runs")
    shutil.copytree(source.root, store.root)
    assert cli.main(["--store", str(store.root), "label", result.run_id,
                     "int8 trial,\n 中文"]) == cli.EXIT_OK
    assert store.list()[0].label == "int8 trial, 中文"  # one line
    again = store.load(result.run_id).to_dict()
    expected = result.to_dict()
    expected["config"]["label"] = "int8 trial, 中文"
    assert again == expected
    capsys.readouterr()
    assert cli.main(["--store", str(store.root), "runs"]) == cli.EXIT_OK
    assert "int8 trial, 中文" in capsys.readouterr().out
    assert cli.main(["--store", str(store.root), "show", result.run_id]) == cli.EXIT_OK
    assert capsys.readouterr().out.rstrip().endswith(
        f"run {result.run_id} · created {result.created} · label 'int8 trial, 中文'")
    assert cli.main(["--store", str(store.root), "label", "nope", "x"]) == cli.EXIT_FAILED
    # A label is one line of text: escapes a terminal would act on (retitle it, recolour it)
    # and bidirectional overrides are dropped, here and in a run saved with --label
    capsys.readouterr()
    assert cli.main(["--store", str(store.root), "label", result.run_id,
                     "a\x1b]0;pwned\x07b\nc\u202e"]) == cli.EXIT_OK
    assert {s.run_id: s.label for s in store.list()}[result.run_id] == "a]0;pwnedb c"
    assert "\x1b" not in capsys.readouterr().out
    from engine.config import RunConfig

    assert RunConfig(label="one\ntwo\x07").label == "one two"


def test_moving_a_run_never_splits_or_overwrites_it(saved, tmp_path, monkeypatch, capsys):
    import shutil

    source, result = saved
    store = RunStore(tmp_path / "runs")
    shutil.copytree(source.root, store.root)
    run_id = result.run_id
    # A move that fails half way puts the moved file back: the run stays whole and listed.
    real_replace, calls = os.replace, []

    def failing_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_second)
    with pytest.raises(MemLensError) as info:
        store.trash(run_id)
    monkeypatch.setattr(os, "replace", real_replace)
    assert info.value.kind is ErrorKind.STORE and "unchanged" in info.value.hint
    assert [s.run_id for s in store.list()] == [run_id] and store.load_attention(run_id)
    # A run already in the trash with the same id is never overwritten.
    store.trash_root.mkdir(exist_ok=True)
    (store.trash_root / f"{run_id}.json").write_text("{}")
    with pytest.raises(MemLensError) as info:
        store.trash(run_id)
    assert "already holds" in info.value.message and store.list()
    (store.trash_root / f"{run_id}.json").unlink()
    store.trash(run_id)
    assert cli.main(["--store", str(store.root), "runs", "--trash", "--json"]) == cli.EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in listed] == [run_id] and listed[0]["peak_bytes"]
    store.restore(run_id)
    # A run written by a newer MemLens keeps its file: this version does not rewrite it.
    path = store.path_for(run_id)
    data = json.loads(path.read_text())
    data["schema_version"] = 999
    path.write_text(json.dumps(data))
    with pytest.raises(MemLensError) as info:
        store.set_label(run_id, "x")
    assert "newer MemLens" in info.value.message
    assert json.loads(path.read_text())["config"]["label"] == data["config"]["label"]


def test_comparing_runs_of_different_inputs_says_so(capsys):
    """A prompt sets a run's real length: the comparison names each run's measured input and
    warns when they differ, so an optimization is not credited with a shorter input."""
    import io

    from engine.compare import compare, print_comparison
    from engine.config import RunConfig
    from engine.results import RunResult

    def run(run_id, seq_measured, optimized=False):
        return RunResult(config=RunConfig(workload="generate", seq=128, new_tokens=8,
                                          prompt="x" if seq_measured != 128 else None),
                         run_id=run_id, inputs={"source": "prompt", "shape": [1, seq_measured]},
                         optimizations=[{"id": "kv-cache", "params": {}}] if optimized else [])

    runs = [run("r-aaaa", 128), run("r-bbbb", 6, optimized=True), run("r-cccc", 60)]
    c = compare(runs)
    assert c.sizes == ["b1 s128 +8 new", "b1 s6 +8 new", "b1 s60 +8 new"]
    assert c.labels() == ["unoptimized · b1 s128 +8 new", "kv-cache",
                          "unoptimized · b1 s60 +8 new"]
    out = io.StringIO()
    print_comparison(runs, out)
    text = out.getvalue()
    assert "r-bbbb: demo generate b1 s6 +8 new" in text
    assert "(different inputs, b1 s128 +8 new, b1 s6 +8 new, b1 s60 +8 new" in text
    same = io.StringIO()
    print_comparison([runs[0], run("r-dddd", 128, optimized=True)], same)
    assert "different inputs" not in same.getvalue()
    forward = RunResult(config=RunConfig(workload="forward", seq=128), run_id="r-eeee",
                        inputs={"source": "sample text", "shape": [1, 128]})
    assert compare([runs[0], forward]).sizes == []  # the workloads already tell them apart


def test_listing_rereads_what_changed_and_forgets_what_went(saved, tmp_path):
    import shutil

    from engine import store as store_module

    source, result = saved
    store = RunStore(tmp_path / "runs")
    shutil.copytree(source.root, store.root)
    assert store.list()[0].label == result.config.label
    RunStore(store.root).set_label(result.run_id, "changed by another writer")
    assert store.list()[0].label == "changed by another writer"  # a rewrite is seen
    key = str(store.root.resolve())
    assert list(store_module._SUMMARY_CACHE[key]) == [f"{result.run_id}.json"]
    shutil.rmtree(store.root)
    assert store.list() == [] and key not in store_module._SUMMARY_CACHE


@pytest.mark.fault(area='data', case='a record or trace written into the run store folder, or a '
                   'binary file given as a run',
                   outcome='refused before the work, naming the store (also a report, guide or '
                           'CSV folder that is the store); the saved runs stay as they were; a '
                           'picture named .json is "not text", no traceback')
def test_the_store_folder_is_never_written_over_and_odd_files_are_named(saved, tmp_path,
                                                                        capsys):
    """`estimate --out STORE/RUN.json` replaced a measured run with an estimate, and `export
    --trace STORE/OTHER.json` a run with a trace, both with exit 0."""
    import shutil

    source, result = saved
    store = RunStore(tmp_path / "runs")
    shutil.copytree(source.root, store.root)
    target = store.path_for(result.run_id)
    before = target.read_bytes()
    root = ["--store", str(store.root)]
    assert cli.main(root + ["estimate", "--model", "demo", "--seq", "8", "--out",
                            str(target)]) == cli.EXIT_FAILED
    assert cli.main(root + ["export", result.run_id, "--trace", str(target)]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("is in the run store's folder") == 2 and target.read_bytes() == before
    # folders of files too: CSVs, a guide's files (the store listed guide.json as a damaged
    # run); the report's in tests/test_report.py
    listed = sorted(p.name for p in store.root.iterdir())
    assert cli.main(root + ["export", result.run_id, "--csv", str(store.root)]) == cli.EXIT_FAILED
    assert cli.main(root + ["guide", "--model", "preset:tiny-llama", "--techniques", "cast",
                            "--out", str(store.root)]) == cli.EXIT_FAILED
    assert cli.main(root + ["export", result.run_id, "--csv", str(store.trash_root)]) \
        == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("is the run store's folder") == 3, err
    assert sorted(p.name for p in store.root.iterdir()) == listed
    # an id given twice is moved once (the second named it missing and exited 1)
    assert cli.main(root + ["delete", result.run_id, result.run_id]) == cli.EXIT_OK
    assert cli.main(root + ["restore", result.run_id, result.run_id]) == cli.EXIT_OK
    capsys.readouterr()
    picture = tmp_path / "shot.json"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    assert cli.main(root + ["show", str(picture)]) == cli.EXIT_FAILED
    assert "is not a MemLens run: it is not text" in capsys.readouterr().err
    # a label given as undecodable bytes (lone surrogates) is kept without them
    assert cli.main(root + ["label", result.run_id, "bad\udcff\udcfe name"]) == cli.EXIT_OK
    assert store.load(result.run_id).config.label == "bad name"
    # a label is one cell of a table: 10,000 characters were kept and printed
    assert cli.main(root + ["label", result.run_id, "x" * 201]) == cli.EXIT_FAILED
    assert "at most 200" in capsys.readouterr().err
    assert store.load(result.run_id).config.label == "bad name"
    # sizes no model takes are refused at once, not built until memory runs out
    for option, value in (("--seq", "1000000000000"), ("--batch", "100000000000000000"),
                          ("--warmup", "1000000000000")):
        assert cli.main(root + ["profile", "--model", "demo", option, value]) != cli.EXIT_OK
        err = capsys.readouterr().err
        assert "beyond" in err or "more than a measurement needs" in err, err


@pytest.mark.fault(area='data', case='an output named as a device, a pipe or a folder; a run '
                   'store given as a file; a file that is no run given to show',
                   outcome='a device or pipe is written in place (never replaced by a file: an '
                           'atomic write as root replaced /dev/full and said "written"); a full '
                           'device is an error; each wrong path is named with the fix')
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_outputs_to_devices_pipes_and_folders_and_stores_that_are_files(saved, tmp_path,
                                                                         capsys, monkeypatch):
    import stat
    import threading

    source, result = saved
    root = ["--store", str(source.root)]
    fifo = tmp_path / "trace.pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert cli.main(root + ["export", result.run_id, "--trace", str(fifo)]) == cli.EXIT_OK
    reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the pipe was replaced by a file"
    assert json.loads(got[0])["traceEvents"]
    full = "/dev/full"
    if os.path.exists(full) and stat.S_ISCHR(os.stat(full).st_mode):
        assert cli.main(root + ["export", result.run_id, "--trace", full]) == cli.EXIT_FAILED
        assert "No space left" in capsys.readouterr().err
        assert stat.S_ISCHR(os.stat(full).st_mode)
    capsys.readouterr()
    assert cli.main(root + ["export", result.run_id, "--trace", str(tmp_path)]) == cli.EXIT_FAILED
    assert "is a folder, not a file" in capsys.readouterr().err
    # show: a folder, a file that is no JSON (they read as "No saved run at /tmp.json")
    assert cli.main(root + ["show", str(tmp_path)]) == cli.EXIT_FAILED
    assert "is a folder, not a run file" in capsys.readouterr().err
    text = tmp_path / "notes.txt"
    text.write_text("not a run\n")
    assert cli.main(root + ["show", str(text)]) == cli.EXIT_FAILED
    assert f"{text} is not a MemLens run: it is not JSON" in capsys.readouterr().err
    # a store that is a file read as an empty store
    assert cli.main(["--store", str(text), "runs"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert f"{text} is a file" in err and f"memlens show {text}" in err
    monkeypatch.setenv("MEMLENS_HOME", str(text))
    assert cli.main(["runs"]) == cli.EXIT_FAILED
    assert "is a file" in capsys.readouterr().err
    assert cli.main(["optimizations"]) == cli.EXIT_OK  # (a command that uses no store)
    monkeypatch.delenv("MEMLENS_HOME")
    capsys.readouterr()
    # a run file's path without its .json opens (as it did)
    assert cli.main(root + ["show", str(source.path_for(result.run_id))[:-5]]) == cli.EXIT_OK
    # a link is followed (the link stays, the file it names is replaced) and the mode kept
    from engine.store import write_output

    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old")
    real.chmod(0o664)
    link.symlink_to(real)
    write_output(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o664
    # a device no run takes
    assert cli.main(["optimizations", "--device", "bogus"]) == cli.EXIT_FAILED
    assert "Unknown device 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "words"), [
    ("1e400GiB", "larger than any memory"), ("1e30GiB", "larger than any memory"),
    ("0.1B", "less than one byte"), ("0GiB", "not positive"), ("-1GiB", "not positive")])
def test_sizes_out_of_range_are_named_for_what_they_are(text, words):
    from engine.sweep import parse_bytes

    with pytest.raises(MemLensError) as info:
        parse_bytes(text)
    assert words in info.value.message and "24GiB" in info.value.hint


def test_a_trace_to_standard_output_redirected_to_a_file(saved, tmp_path):
    """/dev/stdout links to descriptor 1: redirected to a file it resolves to a regular file,
    and the atomic write renamed a temporary over /dev/stdout itself (as root)."""
    import subprocess
    import sys

    source, result = saved
    if not os.path.islink("/dev/stdout"):
        pytest.skip("no /dev/stdout link here")
    target = tmp_path / "trace.json"
    with open(target, "wb") as out:
        proc = subprocess.run([sys.executable, "-m", "engine.cli", "--store", str(source.root),
                               "export", result.run_id, "--trace", "/dev/stdout"],
                              stdout=out, stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert os.path.islink("/dev/stdout"), "/dev/stdout was replaced"
    assert json.loads(target.read_text())["traceEvents"]  # the notes went to stderr
    assert b"written: /dev/stdout" in proc.stderr


def test_a_closed_pipe_stops_the_cli_quietly():
    """`memlens optimizations | head -1` printed "Could not read or write: Broken pipe"."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "optimizations"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away before the listing ends
    with proc.stderr:
        err = proc.stderr.read().decode()
    proc.wait(60)
    assert "Broken pipe" not in err and "Traceback" not in err, err


def test_version_names_memlens_and_its_libraries(capsys):
    from engine import __version__

    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"memlens {__version__} · torch ") and "Python " in out


@pytest.mark.parametrize("command", [["profile"], ["estimate"], ["fit", "--budget", "1GiB"],
                                     ["plan", "--devices", "2", "--per-device", "1GiB"]])
def test_an_empty_model_is_named_as_missing(command, capsys):
    """An empty Model field read as the current folder: "The folder . has no config.json"."""
    assert cli.main([command[0], "--model", " ", *command[1:]]) == cli.EXIT_FAILED
    assert "No model given" in capsys.readouterr().err


def test_version_after_window_options_is_the_version_not_a_window_error(capsys):
    """`memlens --model demo --version` went to the window's parser: "unrecognized arguments"."""
    from engine import __version__
    from gui.launcher import main

    with pytest.raises(SystemExit) as info:
        main(["--model", "demo", "--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith(f"memlens {__version__}")


def test_ctrl_c_before_a_command_is_under_way_ends_quietly(monkeypatch, capsys):
    """Ctrl+C in the first seconds (while torch imports) printed a 30-line traceback."""
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_main", interrupted)
    assert cli.main(["runs"]) == cli.EXIT_CANCELLED
    assert capsys.readouterr().err == "memlens: cancelled.\n"


def test_empty_store_and_budget_are_refused_not_taken_as_defaults(capsys):
    """--store '' was the current folder (runs saved among its files, any JSON listed as a
    run); --budget '' fell back to the default budget without a word."""
    for argv in (["--store", "", "runs"], ["runs", "--store", ""]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == cli.EXIT_USAGE
        assert "--store: empty" in capsys.readouterr().err
    assert cli.main(["fit", "--budget", "  "]) == cli.EXIT_FAILED  # (as --budget 0)
    assert "--budget is empty" in capsys.readouterr().err


def test_deleting_nothing_promises_no_restore(tmp_path, capsys):
    """"delete nope nope" said "`memlens restore RUN_ID` brings a run back" though nothing
    moved (the ids were counted before their duplicates went)."""
    assert cli.main(["--store", str(tmp_path), "delete", "nope", "nope"]) == cli.EXIT_FAILED
    out, err = capsys.readouterr()
    assert "restore" not in out and err.count("No saved run with id 'nope'") == 1


@pytest.mark.parametrize("argv, option", [
    (["export", "RUN", "--csv", ""], "--csv"), (["export", "RUN", "--trace", " "], "--trace"),
    (["report", "RUN", "--out", ""], "--out"), (["profile", "--out", ""], "--out"),
    (["estimate", "--out", ""], "--out"), (["guide", "--out", ""], "--out")])
def test_empty_output_paths_are_refused_not_taken_as_the_current_folder(argv, option, capsys,
                                                                        tmp_path):
    """``Path("")`` is ``Path(".")``: an unset shell variable in ``--csv "$DIR"`` wrote the
    export among the current folder's files."""
    with pytest.raises(SystemExit) as info:
        cli.main(["--store", str(tmp_path)] + argv)
    assert info.value.code == cli.EXIT_USAGE
    assert f"{option}: empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_options_the_workload_does_not_use_are_named_not_dropped(tmp_path, capsys):
    """--new-tokens on a forward run, and --seq beside --prompt, had no effect and said
    nothing; left out (their defaults), nothing is said."""
    parse = cli._parser().parse_args
    args = parse(["estimate", "--new-tokens", "64"])
    cli._unused_options(args)
    assert "--new-tokens 64 is ignored" in capsys.readouterr().err
    for argv in (["estimate"], ["guide", "--out", "x", "--workload", "forward,generate",
                                "--new-tokens", "8"],
                 ["profile", "--workload", "generate", "--new-tokens", "32", "--seq", "128"]):
        cli._unused_options(parse(argv))
        assert capsys.readouterr().err == "", argv
    args = parse(["profile", "--prompt", "hello", "--seq", "128"])  # (given, default's value)
    cli._unused_options(args)
    assert "--seq 128 is ignored" in capsys.readouterr().err
    # an empty prompt is no prompt (the run takes --seq); a guide's list may have spaces
    for argv in (["profile", "--prompt", "", "--seq", "4"],
                 ["guide", "--out", "x", "--workload", "forward, generate", "--new-tokens", "3"]):
        cli._unused_options(parse(argv))
        assert capsys.readouterr().err == "", argv
    assert (parse(["profile"]).seq, parse(["profile"]).new_tokens) == (128, 32)
    assert parse(["guide", "--out", "x"]).new_tokens == 16
    # through the command line: a real run that still works, with the note on stderr
    assert cli.main(["--store", str(tmp_path), "estimate", "--seq", "8",
                     "--new-tokens", "4"]) == cli.EXIT_OK
    assert "--new-tokens 4 is ignored" in capsys.readouterr().err


def test_runs_names_the_distributed_records_beside_the_store(tmp_path, capsys):
    """`profile --distributed` writes its record beside the store (every rank in one file);
    `memlens runs` said nothing of it, so the run seemed lost. The launcher run directly
    (`torchrun -m engine.distributed_run`) wrote inside the store instead: both now agree."""
    from engine.store import default_root, distributed_folder

    root = tmp_path / "runs"
    assert cli.main(["--store", str(root), "runs"]) == cli.EXIT_OK
    assert "distributed" not in capsys.readouterr().out
    folder = distributed_folder(root)
    assert folder == tmp_path / "distributed"
    folder.mkdir()
    (folder / "fsdp2-2x-20261207-000000-1.json").write_text("{}")
    assert cli.main(["--store", str(root), "runs"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert f"1 measured distributed run(s) in {folder}" in out
    assert "fsdp2-2x-20261207-000000-1.json" in out and "memlens show FILE" in out
    assert distributed_folder() == default_root().parent / "distributed"
    # a record the launcher wrote before, inside the store, is named too
    (root / "distributed").mkdir(parents=True)
    (root / "distributed" / "fsdp2-4x-20261201-000000-2.json").write_text("{}")
    assert cli.main(["--store", str(root), "runs"]) == cli.EXIT_OK
    assert f"1 measured distributed run(s) in {root / 'distributed'}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["profile", "--batch", "0"], ["fit", "--granularity", "0"], ["fit", "--max-batch", "0"],
    ["profile", "--workload", "train", "--distributed", "0"]])
def test_a_refused_value_exits_1_as_the_help_says(argv, capsys, tmp_path):
    """The help: 1 when a command refused its input, 2 when the command line is wrong.
    --batch 0 gave 1 but --granularity 0, --max-batch 0 and --distributed 0 gave 2."""
    assert cli.main(["--store", str(tmp_path)] + argv) == cli.EXIT_FAILED
    assert "hint:" in capsys.readouterr().err


def test_a_guide_passed_as_a_run_names_its_own_report_command(tmp_path):
    """`memlens report guide.json` pointed only at `memlens show`; a guide has its report."""
    from engine.records import not_a_run

    exc = not_a_run(tmp_path / "guide.json", "guide")
    assert f"memlens report --guide {tmp_path / 'guide.json'} --out DIR" in exc.hint
    assert "--guide" not in not_a_run(tmp_path / "s.json", "sweep").hint


def test_a_before_and_after_pair_is_written_in_one_unit_that_adds_up():
    """"peak 10.0 MiB → 5.01 MiB (−5.01 MiB)": each figure rounded on its own did not add up."""
    from engine.format import MISSING, bytes_change

    assert bytes_change(10.034 * 2**20, 5.014 * 2**20) == ("10.03 MiB", "5.01 MiB", "−5.02 MiB")
    assert bytes_change(1.5 * 2**30, 700 * 2**20) == ("1.50 GiB", "0.68 GiB", "−0.82 GiB")
    assert bytes_change(100, 150) == ("100 B", "150 B", "+50 B")
    assert bytes_change(2048, 2048) == ("2.00 KiB", "2.00 KiB", "±0.00 KiB")
    # a result a few hundred times smaller: one unit down, not "0.00 GiB"
    assert bytes_change(1.5 * 2**30, 5 * 2**20) == ("1536.00 MiB", "5.00 MiB", "−1531.00 MiB")
    assert bytes_change(None, 5)[2] == MISSING


def test_the_baseline_line_stays_when_there_is_no_latency_ratio():
    """The latency's condition took the whole "vs the unoptimized baseline" line (peak and
    weights too) with it when the run had no latency ratio."""
    import io

    from engine.cli import print_report
    from engine.config import RunConfig
    from engine.results import RunResult, Totals

    run = RunResult(config=RunConfig(), run_id="r",
                    totals=Totals(peak_bytes=90 << 20, model_weights_bytes=16 << 20),
                    baseline={"peak_bytes": 100 << 20, "model_weights_bytes": 20 << 20},
                    deltas={"peak_bytes": -(10 << 20), "model_weights_bytes": -(4 << 20),
                            "latency_ratio": None})
    out = io.StringIO()
    print_report(run, out)
    line = next(x for x in out.getvalue().splitlines() if x.startswith("vs the unoptimized"))
    assert "100.00 MiB → 90.00 MiB (−10.00 MiB), weights 20.00 MiB → 16.00 MiB (−4.00 MiB)" in line
    assert "latency" not in line
    run.deltas["latency_ratio"] = 1.25
    out = io.StringIO()
    print_report(run, out)
    assert "(−4.00 MiB), latency ×1.25\n" in out.getvalue()
    # a ratio from passes far apart says so, a speed-up as much as a slowdown
    run.deltas["latency_ratio"] = 0.4
    run.baseline["plain_ms"] = [30.0, 2400.0, 31.0]
    out = io.StringIO()
    print_report(run, out)
    assert "latency ×0.40 (noisy: timing passes up to ×80.0 apart)" in out.getvalue()


def test_threads_option_and_a_busy_machine_is_named(tmp_path, capsys):
    """On a 2-core machine busy with other work, torch's default threads ran the demo's 17 ms
    forward in 930 ms: --threads N sets them, the run records them with the load average,
    and a noisy-latency warning names a busy machine."""
    import torch

    from engine.config import RunConfig
    from engine.results import RunResult
    from engine.runner import _busy_note

    before = torch.get_num_threads()
    try:
        assert cli.main(["--store", str(tmp_path), "profile", "--model", "preset:tiny-llama",
                         "--seq", "8", "--repeats", "1", "--threads", "1", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["environment"]["cpu"]["torch_threads"] == 1
        assert "load_average_1m" in data["environment"]["cpu"]
        assert cli.main(["profile", "--model", "demo", "--threads", "0"]) == cli.EXIT_FAILED
        assert "--threads must be at least 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    busy = RunResult(config=RunConfig(), environment={"cpu": {
        "load_average_1m": 3.1, "usable_cores": 2, "torch_threads": 2}})
    assert "The machine was busy (load average 3.1 on 2 cores, torch using 2 threads)" in \
        _busy_note(busy)
    busy.environment["cpu"]["load_average_1m"] = 2.2  # this process's own two threads
    assert _busy_note(busy) == ""


def test_a_copied_run_keeps_its_attention_maps(tmp_path):
    """A run file copied under another name in the store is opened by that name; its maps
    file keeps the original's name, which the record gives (the copy showed no maps)."""
    import shutil

    store = RunStore(tmp_path / "runs")
    result = execute(tiny(workload="forward", attention_maps=True), Collector(), store=store)
    assert result is not None and store.load_attention(result.run_id) is not None
    shutil.copy(store.path_for(result.run_id), store.root / "my-copy.json")
    copy = store.load("my-copy")
    assert copy.run_id == "my-copy"
    maps = store.load_attention("my-copy")
    assert maps is not None and maps.maps.keys() == store.load_attention(result.run_id).maps.keys()
    assert store.load_attention("no-such-run") is None


def test_a_part_that_fell_within_noise_is_not_called_lowered():
    """'lowered saved for backward 5.73 MiB → 5.73 MiB (−0.00 MiB)' read as a saving."""
    from engine.config import RunConfig
    from engine.results import RunResult, Totals
    from engine.runner import _parts_that_fell

    run = RunResult(config=RunConfig(workload="train"), totals=Totals(peak_bytes=50 << 20),
                    baseline={"peak_bytes": 50 << 20, "saved_for_backward_bytes": 6_000_000},
                    training={"saved_for_backward_bytes": 5_999_000})
    assert _parts_that_fell(run) == []
    run.training["saved_for_backward_bytes"] = 1_000_000
    assert _parts_that_fell(run) == ["saved for backward 5.72 MiB → 0.95 MiB (−4.77 MiB)"]
