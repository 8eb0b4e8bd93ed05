"""Sweeps (measured where they fit, estimated beyond, marked so) and what fits a budget.

Tiny presets keep every estimate and measurement well under a second; the thresholds that force
a point to be estimated, and the budgets of the fit tests, are taken from estimates made here,
so the expected answers are known without hard-coded figures.
"""

from __future__ import annotations

import json
import threading

import pytest

from engine import cli
from engine.format import human_bytes
from engine.errors import MemLensError
from engine.estimate import estimate
from engine.runner import execute
from engine.store import RunStore
from engine.sweep import (
    Budget,
    FitRecord,
    PointDone,
    SweepFinished,
    SweepRecord,
    fit_batch,
    fit_sequence,
    parse_bytes,
    parse_opt_set,
    sweep,
    what_fits,
)

from .helpers import Collector, tiny


def _peak(config) -> int:
    result = estimate(config)
    assert result is not None
    return result.totals.peak_bytes


# -- parsing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [
    ("24GiB", 24 * 2**30), ("80GB", 80 * 10**9), ("1.5 TiB", int(1.5 * 2**40)),
    ("512MiB", 512 * 2**20), ("1000", 1000), ("2kb", 2000),
])
def test_budget_sizes_are_read_in_the_documented_units(text, value) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["24G", "lots", "-3GiB", "GiB", "0"])
def test_an_unreadable_budget_names_the_accepted_forms(text) -> None:
    with pytest.raises(MemLensError) as err:
        parse_bytes(text)
    assert "24GiB" in err.value.hint and "80GB" in err.value.hint


def test_optimization_sets_are_read_as_ids_joined_by_plus() -> None:
    assert parse_opt_set("none") == []
    assert parse_opt_set("checkpointing+freeze-base:train_last_blocks=2") == [
        {"id": "checkpointing", "params": {}},
        {"id": "freeze-base", "params": {"train_last_blocks": "2"}}]


# -- the search ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["affine", "quadratic", "steps"])
def test_search_brackets_the_budget_with_few_tests(shape) -> None:
    def curve(s: int) -> int:
        if shape == "affine":
            return 10_000 + 37 * s
        if shape == "quadratic":
            return 10_000 + 37 * s + s * s // 50
        return 10_000 + 4_000 * (s // 300) + 3 * s  # not smooth: the model is only a proposal

    for budget in (9_000, 10_050, 30_000, 123_456, 400_000, 10**9):
        calls: list[int] = []

        def peak_at(s: int) -> int:
            calls.append(s)
            return curve(s)

        fits, nxt, tested = fit_sequence(peak_at, budget, 8160, 64)
        assert len(calls) == len(set(calls)) == len(tested) <= 15
        if fits is not None:
            assert curve(fits) <= budget
        if nxt is not None:
            assert curve(nxt) > budget
        if fits is not None and nxt is not None:
            assert 0 < nxt - fits <= 64
        if fits is None:
            assert nxt == 1 and curve(1) > budget
        if nxt is None:
            assert fits == 8160
        if shape != "steps" and fits is not None and nxt is not None:
            # curves that grow: nothing between the two tested lengths is skipped
            assert all(curve(s) > budget for s in range(nxt, min(8161, nxt + 64)))


@pytest.mark.parametrize("budget", [50, 1_000, 123_457, 10**7, 10**12])
def test_batch_search_doubles_then_brackets_the_budget(budget) -> None:
    def curve(b: int) -> int:
        return 900 + 1_234 * b + b * b // 7

    calls: list[int] = []

    def peak_at(b: int) -> int:
        calls.append(b)
        return curve(b)

    fits, nxt, tested = fit_batch(peak_at, budget, max_batch=4096)
    assert len(calls) == len(set(calls)) == len(tested) <= 25
    if fits is None:
        assert nxt == 1 and curve(1) > budget
    elif nxt is None:
        assert fits == 4096 and curve(4096) <= budget
    else:
        assert nxt == fits + 1 and curve(fits) <= budget < curve(nxt)


# -- sweep -----------------------------------------------------------------------------------------
def test_sweep_measures_what_fits_the_rule_and_estimates_the_rest(tmp_path) -> None:
    base = tiny(workload="forward")
    # The rule's limit: the estimated peak of the middle point, so the grid splits.
    limit = _peak(tiny(workload="forward", seq=32, batch=1))
    events = Collector()
    store = RunStore(tmp_path / "runs")
    record = sweep(base, [16, 32, 48], [1, 2], listener=events, store=store,
                   measure_limit_bytes=limit)
    assert record is not None, events.failed
    assert len(record.points) == 6 and len(events.of(PointDone)) == 6
    assert isinstance(events.events[-1], SweepFinished)
    kinds = {p.kind for p in record.points}
    assert kinds == {"measured", "estimate"}
    for p in record.points:
        assert p.estimated_peak_bytes is not None
        assert (p.kind == "measured") == (p.estimated_peak_bytes <= limit), p
        assert sum(p.categories.values()) + p.unattributed_bytes == p.peak_bytes
        saved = store.load(p.run_id)
        assert saved.is_estimate == (p.kind == "estimate")
        assert saved.totals.peak_bytes == p.peak_bytes
        if p.kind == "measured":
            assert p.latency_ms is not None and p.latency_ms > 0
            # estimate and measurement of the same point agree (the estimate's contract: 1%)
            assert abs(p.estimated_peak_bytes - p.peak_bytes) <= 0.01 * p.peak_bytes
            assert "measured" in p.reason
        else:
            assert p.latency_ms is None and p.peak_bytes == p.estimated_peak_bytes
            assert "estimate" in p.reason
    # the record round-trips through JSON with every point's kind
    again = SweepRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    assert [p["kind"] for p in record.to_dict()["points"]] == [p.kind for p in record.points]


@pytest.mark.parametrize(("workload", "sets"), [
    ("train", ["freeze-base", "checkpointing"]),
    ("generate", ["kv-cache:policy=static"]),
])
def test_estimates_with_optimizations_agree_with_measured_runs(workload, sets) -> None:
    events = Collector()
    record = sweep(tiny(workload=workload, warmup=1 if workload == "train" else 0),
                   [24], [1], [parse_opt_set(s) for s in sets], listener=events,
                   measure_limit_bytes=2**62)
    assert record is not None, events.failed
    for p in record.points:
        assert p.kind == "measured", p
        assert abs(p.estimated_peak_bytes - p.peak_bytes) <= 0.01 * p.peak_bytes, p
        assert not p.saved and p.run_id is None  # no store: no id that points at nothing
    if workload == "train":
        # freeze-base: no gradients or optimizer state for the frozen base (measured)
        frozen = record.point(24, 1, "freeze-base")
        plain = execute(tiny(workload="train", warmup=1, seq=24))
        assert frozen.categories["optimizer_state"] < plain.totals.optimizer_state_bytes


def test_a_sweep_is_cancelled_between_points() -> None:
    cancel = threading.Event()
    events = Collector()

    def listener(event) -> None:
        events(event)
        if isinstance(event, PointDone):
            cancel.set()

    assert sweep(tiny(), [16, 32, 48], [1], listener=listener, cancel=cancel,
                 measure_limit_bytes=0) is None
    assert events.failed.kind == "cancelled" and len(events.of(PointDone)) == 1


def test_a_sweep_refuses_lengths_beyond_the_models_positions() -> None:
    events = Collector()
    assert sweep(tiny(workload="generate", new_tokens=6), [64, 252], [1], listener=events) is None
    assert events.failed.kind == "invalid_workload"
    assert "256 positions" in events.failed.message and "at or below 250" in events.failed.hint
    assert not events.of(PointDone)


# -- what fits -------------------------------------------------------------------------------------
def test_fit_finds_the_length_whose_estimate_meets_the_budget() -> None:
    budget = _peak(tiny(workload="forward", seq=64)) + 1
    record = what_fits(tiny(workload="forward"), Budget(budget, "given", "test"), [1],
                       granularity=16)
    assert record is not None
    a = record.answer(1)
    # the peak grows with every token, so with a 16-token step the answer is exactly 64
    assert (a.status, a.seq, a.next_seq) == ("fits", 64, 80)
    assert a.peak_bytes == budget - 1 and a.next_peak_bytes > budget
    assert _peak(tiny(workload="forward", seq=80)) == a.next_peak_bytes  # a real estimate
    assert a.estimates <= 15 and all(t["fits"] == (t["peak_bytes"] <= budget) for t in a.tested)
    assert FitRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_fit_names_the_binding_constraint() -> None:
    # Training with AdamW: at two tokens (a causal LM's shortest step) the two moments (2 ×
    # the float32 weights) dominate.
    train = what_fits(tiny(workload="train", warmup=1), Budget(parse_bytes("1MB"), "given", "t"),
                      [1, 4, 8])
    a = train.answer(1)
    assert a.status == "nothing_fits" and a.next_seq == 2 and a.seq is None
    assert train.weights_dtype == "float32"
    # larger batches need more: answered from batch 1's, without another estimate
    for batch in (4, 8):
        b = train.answer(batch)
        assert b.status == "nothing_fits" and b.estimates == 0 and not b.tested
        assert "batch 1 did not fit even at seq 2" in b.message, b.message
    # float32 that missed by less than half: bfloat16 is suggested, and only then
    for share, hint in ((0.6, True), (0.4, False)):
        near = what_fits(tiny(workload="train", warmup=1),
                         Budget(int(a.next_peak_bytes * share), "given", "t")).answer(1)
        assert near.status == "nothing_fits"
        assert ("try --dtype bfloat16" in near.message) == hint, (share, near.message)
    assert a.binding == "optimizer_state"
    # two float32 moments per trainable parameter: nearly twice the weights (buffers are weights
    # without moments)
    assert 1.99 * a.next_categories["weights"] < a.next_categories["optimizer_state"] \
        <= 2 * a.next_categories["weights"]
    # Generation: with the weights fixed, what grows with the prompt is activations or KV cache.
    budget = _peak(tiny(workload="generate", new_tokens=6, seq=100))
    gen = what_fits(tiny(workload="generate", new_tokens=6), Budget(budget, "given", "t"),
                    granularity=8).answer(1)
    assert gen.status == "fits" and gen.seq >= 96 and gen.next_seq <= gen.seq + 8
    assert gen.grows in ("kv_cache", "activations")
    assert gen.seq + 6 <= 256
    # ... and where in the model: the parts that grew, largest first, named in the answer
    assert gen.parts_grow and list(gen.parts_grow.values()) == sorted(
        gen.parts_grow.values(), reverse=True)
    first, grew = next(iter(gen.parts_grow.items()))
    assert f"in {first} +{human_bytes(grew)}" in gen.message, gen.message
    assert sum(gen.parts_grow.values()) >= gen.next_peak_bytes - gen.peak_bytes > 0


def test_fit_says_when_the_weights_alone_exceed_the_budget() -> None:
    a = what_fits(tiny(), Budget(100 * 1024, "given", "t")).answer(1)
    assert a.status == "weights_exceed" and a.binding == "weights" and a.estimates == 1
    assert "weights alone" in a.message and a.model_weights_bytes > 100 * 1024
    # float32 weights: what bfloat16 would take, from the model's own parameter count
    assert "in float32" in a.message and "still more than the budget" in a.message, a.message
    half = a.model_weights_bytes // 2  # the tiny model's weights are float32 parameters only
    b = what_fits(tiny(), Budget(half + 4096, "given", "t")).answer(1)
    assert b.status == "weights_exceed" and "try --dtype bfloat16" in b.message, b.message


def test_fit_reports_the_model_limit_when_everything_fits() -> None:
    a = what_fits(tiny(workload="generate", new_tokens=6),
                  Budget(2**40, "given", "t")).answer(1)
    assert a.status == "limit" and a.seq == 250 and a.next_seq is None and a.estimates == 2


def test_fit_finds_the_largest_batch_at_a_length() -> None:
    budget = _peak(tiny(workload="forward", seq=32, batch=5)) + 1
    record = what_fits(tiny(workload="forward"), Budget(budget, "given", "t"), axis="batch",
                       seqs=[32], max_batch=64)
    assert record is not None and record.axis == "batch" and record.seqs == [32]
    a = record.answer_at(32)
    assert (a.status, a.batch, a.next_batch, a.seq) == ("fits", 5, 6, 32)
    assert a.peak_bytes == budget - 1
    assert _peak(tiny(workload="forward", seq=32, batch=6)) == a.next_peak_bytes > budget
    assert [t["batch"] for t in a.tested][:4] == [1, 2, 4, 8]  # doubling first
    assert all(t["seq"] == 32 for t in a.tested)
    assert FitRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    # the search's upper end fits: said so, not presented as the memory limit
    end = what_fits(tiny(workload="forward"), Budget(2**40, "given", "t"), axis="batch",
                    seqs=[8], max_batch=4).answer_at(8)
    assert (end.status, end.batch, end.next_batch) == ("limit", 4, None)
    assert "--max-batch" in end.message


def test_cli_fit_at_seq_prints_the_largest_batch(capsys) -> None:
    budget = _peak(tiny(workload="forward", seq=16, batch=3)) + 1
    assert cli.main(["fit", "--model", "preset:tiny-llama", "--budget", str(budget),
                     "--at-seq", "16", "--max-batch", "64"]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert text.startswith("ESTIMATE — the largest batch")
    assert "largest tested batch that fits at seq 16: 3" in text
    assert cli.main(["fit", "--model", "preset:tiny-llama", "--budget", "1GiB", "--at-seq",
                     "16", "--batch", "2"]) == cli.EXIT_USAGE
    assert "cannot be combined" in capsys.readouterr().err
    for command in (["sweep", "--seq", "16", "--estimate-only"],
                    ["fit", "--budget", "1GiB"]):  # contradicting options: 2, as README says
        assert cli.main([*command, "--model", "preset:tiny-llama", "--opt", "cast",
                         "--opt-set", "none"]) == cli.EXIT_USAGE, command
        assert "--opt and --opt-set cannot be combined" in capsys.readouterr().err


def test_a_fit_from_a_newer_memlens_is_refused() -> None:
    with pytest.raises(MemLensError, match="newer MemLens"):
        FitRecord.from_dict({"kind": "fit", "schema_version": 99})
    with pytest.raises(MemLensError, match="not a MemLens fit"):
        FitRecord.from_dict({"kind": "sweep"})


# -- command line ----------------------------------------------------------------------------------
def test_cli_sweep_prints_the_kind_of_every_point(capsys, tmp_path) -> None:
    out = tmp_path / "sweep.json"
    assert cli.main(["sweep", "--model", "preset:tiny-llama", "--seq", "16,32", "--batch", "1",
                     "--estimate-only", "--out", str(out)]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert "2 ESTIMATED" in text and "0 measured" in text
    rows = [line for line in text.splitlines() if line.lstrip().startswith(("16 ", "32 "))]
    assert len(rows) == 2 and all(" estimate " in r and "—" in r for r in rows)
    data = json.loads(out.read_text())
    assert data["kind"] == "sweep" and [p["kind"] for p in data["points"]] == ["estimate"] * 2
    assert all(p["latency_ms"] is None for p in data["points"])
    # a training sweep: the parts add up to the peak ("other" holds the temporaries), and each
    # point names the phase of the step its peak is in
    assert cli.main(["sweep", "--model", "preset:tiny-llama", "--workload", "train", "--seq",
                     "16", "--batch", "1", "--estimate-only", "--out", str(out)]) == cli.EXIT_OK
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("seq"))
    assert "other" in header and "peak in" in header
    point = json.loads(out.read_text())["points"][0]
    assert point["peak_phase"] in ("forward", "backward", "optimizer")
    row = next(line for line in text.splitlines() if line.lstrip().startswith("16 "))
    assert point["peak_phase"] in row.split()


def test_cli_fit_json_and_table(capsys) -> None:
    budget = _peak(tiny(workload="forward", seq=128)) + 1
    assert cli.main(["fit", "--model", "preset:tiny-llama", "--budget", str(budget),
                     "--granularity", "32", "--json"]) == cli.EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["figures"] == "estimate" and data["answers"][0]["seq"] == 128
    assert data["answers"][0]["next_seq"] == 160 and data["budget_bytes"] == budget
    assert cli.main(["fit", "--model", "preset:tiny-llama", "--budget", str(budget),
                     "--granularity", "32"]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert text.startswith("ESTIMATE") and "largest tested length that fits: 128" in text


@pytest.mark.parametrize(("argv", "words"), [
    (["fit", "--model", "preset:llama-9", "--budget", "24GiB"], ["Unknown preset 'llama-9'"]),
    (["fit", "--model", "preset:tiny-llama", "--budget", "24 gigs"],
     ["Cannot read the memory size", "24GiB", "80GB"]),
    (["fit", "--model", "preset:tiny-llama", "--budget", "-5GiB"],  # not read as an option
     ["The memory size '-5GiB' is not positive", "24GiB"]),
    (["sweep", "--model", "preset:tiny-llama", "--seq", "128,512"],
     ["supports 256 positions", "at or below 256"]),
    (["sweep", "--model", "preset:tiny-llama", "--seq", "12,x"], ["Cannot read 'x'"]),
    (["sweep", "--model", "preset:tiny-llama", "--batch", "0"],
     ["has 0: every value must be at least 1", "--batch 1,2,4"]),
    (["fit", "--model", "preset:tiny-llama", "--budget", "1GiB", "--opt", "int8-dynamic"],
     ["cannot apply int8 dynamic quantization", "read the weights' values", "memlens profile"]),
    (["fit", "--model", "preset:tiny-llama", "--budget", "1GiB", "--opt", "lora"],
     ["LoRA", "train"]),
])
def test_cli_errors_name_the_problem_and_the_fix(capsys, argv, words) -> None:
    assert cli.main(argv) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err
    assert "estimate at seq" not in err and "point 1/" not in err  # refused before any work


def test_a_measured_sweep_point_takes_its_length_not_the_prompt():
    """A prompt's tokens would replace every point's sequence length (and this model has no
    tokenizer to read one): the sweep measures each point at its own length."""
    from engine.sweep import sweep

    record = sweep(tiny(prompt="not for a sweep"), [16, 32], [1], [[]],
                   measure_limit_bytes=1 << 40)
    assert record is not None
    assert [(p.seq, p.kind, p.error) for p in record.points] == [
        (16, "measured", None), (32, "measured", None)]


def test_size_hints_offer_only_what_each_input_accepts():
    from engine.sweep import parse_bytes, parse_int_list, resolve_budget

    with pytest.raises(MemLensError) as size:
        parse_bytes("gpu")
    assert "24GiB" in size.value.hint and "'gpu'" not in size.value.hint
    with pytest.raises(MemLensError) as budget:
        resolve_budget("lots")
    assert "'gpu'" in budget.value.hint and "'ram'" in budget.value.hint
    with pytest.raises(MemLensError) as cli_list:
        parse_int_list("4,x", "--seq", "--seq")
    assert "e.g. --seq 512,1024,2048" in cli_list.value.hint
    with pytest.raises(MemLensError) as field:
        parse_int_list("", "Batches")
    assert "e.g. 512,1024,2048." in field.value.hint and "--" not in field.value.hint
    # "1,,2" (for 1,12,2) ran two points and exited 0; a trailing comma is harmless
    with pytest.raises(MemLensError) as gap:
        parse_int_list("1,,2", "--batch", "--batch", "1,2,4")
    assert "empty value between commas" in gap.value.message
    assert parse_int_list("512,1024,", "--seq") == [512, 1024]
    with pytest.raises(MemLensError) as negative:  # readable, and too small, as 0 is
        parse_int_list("4,-1", "--batch")
    assert "has -1: every value must be at least 1" in negative.value.message
    from engine.sweep import parse_opt_set

    with pytest.raises(MemLensError) as empty_part:
        parse_opt_set("cast++autocast")
    assert "empty part between '+'" in empty_part.value.message


def test_an_optimization_set_given_twice_is_refused(capsys):
    from engine import cli

    assert cli.main(["sweep", "--model", "demo", "--seq", "8", "--estimate-only",
                     "--opt-set", "none", "--opt-set", "none"]) == cli.EXIT_FAILED
    assert "--opt-set none is given more than once" in capsys.readouterr().err


def test_a_peak_and_its_budget_are_written_with_the_same_digits() -> None:
    """A peak written with more digits to tell it from the budget ("11.41 MiB") beside a
    budget rounded to three ("11.4 MiB") read as false: the budget was 11.44 MiB."""
    from engine.format import budget_against, bytes_against

    budget, peak, over = 12_000_000, int(11.41 * 2**20), int(11.4446 * 2**20)
    assert bytes_against(peak, budget) == "11.41 MiB"
    assert budget_against(budget, peak) == "11.44 MiB"
    assert budget_against(budget, peak, over) == "11.444 MiB"  # the most digits either needs
    assert bytes_against(over, budget) == "11.445 MiB"
    assert budget_against(budget, 5 * 2**20, None) == "11.4 MiB"  # nothing to tell apart
    assert budget_against(None, peak) == "—"


def test_a_training_search_never_tries_a_single_token() -> None:
    """A causal LM's training step needs two tokens (one predicts nothing): the search's lower
    end is 2 there, and a budget nothing fits names seq 2 as the next tested length."""
    from engine.sweep import fit_sequence

    tested: list[int] = []

    def peak_at(seq: int) -> int:
        assert seq >= 2, "a single token was tried"
        tested.append(seq)
        return 1000 + 10 * seq

    assert fit_sequence(peak_at, 500, 256, 8, shortest=2)[:2] == (None, 2)
    fits, nxt, _ = fit_sequence(peak_at, 1035, 256, 8, shortest=2)
    assert (fits, nxt) == (3, 4) and min(tested) == 2


@pytest.mark.parametrize(("argv", "words"), [
    (["fit", "--budget", "1GiB", "--at-seq", "16", "--granularity", "8"],
     ["--granularity is for the sequence-length search", "drop --at-seq"]),
    (["fit", "--budget", "1GiB", "--max-batch", "8"],
     ["--max-batch is for the batch search", "add --at-seq"]),
    (["sweep", "--estimate-only", "--measure-below", "1GiB"],
     ["contradict each other", "--measure-below SIZE"]),
    (["plan", "--one-step", "--devices", "2", "--per-device", "1GiB"],
     ["--one-step is one step of a generation", "--workload generate"]),
])
def test_options_the_command_would_ignore_are_refused(capsys, argv, words) -> None:
    """Each was silently ignored: the answer did not use what the user gave."""
    assert cli.main([argv[0], "--model", "preset:tiny-llama", *argv[1:]]) \
        != cli.EXIT_OK
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err
    assert "estimate at seq" not in err and "point 1/" not in err  # refused before any work


def test_digits_that_are_not_ascii_are_refused_by_name() -> None:
    """'²' is a digit to str.isdigit but not to int(): the window showed a traceback."""
    from engine.config import check_device
    from engine.distributed import parse_count
    from engine.sweep import parse_int_list

    for call in (lambda: parse_int_list("12,²", "batch"), lambda: parse_count("²", "devices"),
                 lambda: check_device("cuda:²")):
        with pytest.raises(MemLensError) as info:
            call()
        assert "²" in info.value.message and info.value.hint


def test_a_point_that_cannot_be_estimated_is_measured_and_says_why_once(tmp_path) -> None:
    """It read "measured (no estimate: not estimated: Estimation cannot apply …)"."""
    record = sweep(tiny(workload="forward"), [16], [1], [[{"id": "int8-dynamic"}]],
                   store=RunStore(tmp_path / "runs"), measure_limit_bytes=1 << 40)
    assert record is not None
    (point,) = record.points
    assert point.kind == "measured" and point.estimated_peak_bytes is None
    assert point.reason.startswith("measured; not estimated: ")
    assert point.reason.lower().count("estimat") == 2, point.reason  # "not estimated", "Estimation"


def test_a_sweep_or_fit_that_answers_nothing_exits_1(tmp_path, capsys):
    """A BERT generate fit printed a row of dashes and exited 0 (estimate and plan refuse the
    same input with 1): a script read it as an answer. The record is still written."""
    from engine import cli

    out = tmp_path / "fit.json"
    assert cli.main(["--store", str(tmp_path / "runs"), "fit", "--model", "preset:tiny-bert",
                     "--workload", "generate", "--budget", "1GiB", "--out", str(out)]) == 1
    assert "the fit answered nothing: every search failed" in capsys.readouterr().err
    assert out.is_file()
    assert cli.main(["--store", str(tmp_path / "runs"), "sweep", "--model", "preset:tiny-bert",
                     "--workload", "generate", "--seq", "16", "--estimate-only"]) == 1
    assert "the sweep answered nothing: every point failed" in capsys.readouterr().err
