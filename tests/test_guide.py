"""The measured guide: techniques run against the same-run baseline, verdicts from numbers."""

from __future__ import annotations

import json
import re
import threading

import pytest

from engine import cli
from engine.errors import Cancelled
from engine.events import Progress
from engine.guide import PLAN, markdown, run_guide, scatter_svg
from engine.store import RunStore

PLAN_SMALL = (
    ("forward", ("cast:dtype=bfloat16",)),
    ("forward", ("prune-unstructured:amount=0.5",)),
    ("forward", ("kv-cache:policy=static",)),  # a generate-only technique: refused, with why
    ("train", ("freeze-base",)),
)


def test_guide_measures_each_technique_and_judges_the_claim_by_its_numbers(tmp_path):
    events = []
    store = RunStore(tmp_path / "runs")
    guide = run_guide(model="demo", seq=32, repeats=1, plan=PLAN_SMALL, listener=events.append,
                      store=store)
    by_label = {e.label: e for e in guide.entries}
    cast = by_label["cast:dtype=bfloat16"]
    assert cast.status == "ok" and cast.verdict == "as claimed"
    assert cast.measured["model_weights_bytes"] * 2 == cast.baseline["model_weights_bytes"]
    # Unstructured pruning keeps dense tensors plus masks: the guide says the claim failed,
    # with the measured numbers in the note.
    prune = by_label["prune-unstructured:amount=0.5"]
    assert prune.verdict == "contrary to the claim"
    assert prune.measured["model_weights_bytes"] > prune.baseline["model_weights_bytes"]
    assert "contrary to the claim" in prune.note and "MiB" in prune.note
    freeze = by_label["freeze-base"]
    assert freeze.claimed_quantity == "optimizer_state" and freeze.verdict == "as claimed"
    refused = by_label["kv-cache:policy=static"]
    assert refused.status == "not applicable" and "generate" in refused.reason
    # Every measured entry is a saved run with the guide's label.
    saved = {s.run_id: s for s in store.list()}
    assert {e.run_id for e in guide.entries if e.status == "ok"} <= set(saved)
    assert all(saved[e.run_id].label.startswith("guide: ") for e in guide.ranked("forward"))
    # Ranked by peak saved, and the report says what could not run.
    ranked = guide.ranked("forward")
    assert [e.label for e in ranked][0] == "cast:dtype=bfloat16"
    text = markdown(guide, {"forward": "guide-forward.svg"})
    assert "![forward: memory vs quality](guide-forward.svg)" in text
    assert "## Could not run here" in text and "kv-cache:policy=static" in text
    svg = scatter_svg(guide, "forward")
    assert svg is not None and svg.startswith("<svg") and "unoptimized" in svg
    assert svg.count("<circle") == len(ranked) + 1
    assert [e for e in events if isinstance(e, Progress)][-1].fraction == 1.0
    assert json.loads(json.dumps(guide.to_dict()))["entries"][0]["specs"]


def test_guide_cancel_stops_between_runs():
    cancel = threading.Event()
    seen = []

    def listener(event):
        seen.append(event)
        if isinstance(event, Progress) and event.stage == "guide" and len(seen) > 1:
            cancel.set()

    kept = []
    with pytest.raises(Cancelled):
        run_guide(model="preset:tiny-llama", seq=16, repeats=1, plan=PLAN_SMALL,
                  listener=listener, cancel=cancel,
                  on_entry=lambda g: kept.append((len(g.entries), g.planned, g.partial)))
    # What finished before the cancel was handed out as it finished, marked partial.
    assert kept and kept[0] == (1, len(PLAN_SMALL), True)
    assert len(kept) < len(PLAN_SMALL)


def test_memlens_guide_keeps_what_finished_when_cancelled(tmp_path, monkeypatch, capsys):
    from engine import guide as guide_module
    from engine.guide import Entry, Guide

    def cut_short(**kw):  # one technique measured, then the user's Ctrl+C
        g = Guide(model=kw["model"], device=kw["device"], seq=kw["seq"], planned=3)
        g.entries.append(Entry(workload="train", specs=["freeze-base"], status="not applicable",
                               reason="refused for the test"))
        kw["on_entry"](g)
        raise Cancelled()

    monkeypatch.setattr(guide_module, "run_guide", cut_short)
    out = tmp_path / "guide"
    code = cli.main(["--store", str(tmp_path / "runs"), "guide", "--model", "preset:tiny-llama",
                     "--out", str(out)])
    assert code == cli.EXIT_CANCELLED
    text = (out / "guide.md").read_text()
    assert "Partial guide: 1 of the 3 techniques planned ran" in text
    assert "refused for the test" in text
    assert json.loads((out / "guide.json").read_text())["planned"] == 3
    assert "1 technique(s) that finished" in capsys.readouterr().err


def test_guide_plan_covers_every_registry_technique():
    from engine.optimizations import REGISTRY

    planned = {spec.split(":", 1)[0] for _, specs in PLAN for spec in specs}
    assert planned == set(REGISTRY)  # a new technique must join the guide
    workloads = {w for w, _ in PLAN}
    assert workloads == {"forward", "generate", "train"}


def test_memlens_guide_writes_the_report(tmp_path, capsys):
    out = tmp_path / "guide"
    code = cli.main(["--store", str(tmp_path / "runs"), "guide", "--model", "preset:tiny-llama",
                     "--workload", "train", "--seq", "16", "--repeats", "1", "--out", str(out)])
    assert code == cli.EXIT_OK
    text = (out / "guide.md").read_text()
    assert "## train" in text and "freeze-base" in text
    # where the unoptimized peak goes, above the table (no generation: no new tokens)
    where = next(line for line in text.splitlines() if line.startswith("Unoptimized peak"))
    assert "optimizer state" in where and "unattributed" in where
    assert "new tokens" not in text.splitlines()[2]
    assert "At the peak: the blocks −" in text  # freeze-base: no gradients or moments there
    assert json.loads((out / "guide.json").read_text())["model"] == "preset:tiny-llama"
    assert "written:" in capsys.readouterr().out
    # guide.json is a record of its own: memlens show prints it; what takes a run refuses it.
    assert json.loads((out / "guide.json").read_text())["kind"] == "guide"
    assert cli.main(["show", str(out / "guide.json")]) == cli.EXIT_OK
    assert "# The measured guide: preset:tiny-llama" in capsys.readouterr().out
    assert cli.main(["export", str(out / "guide.json"), "--csv", str(tmp_path / "x")]) != 0
    assert "a measured guide (memlens guide), not a single run" in capsys.readouterr().err
    assert cli.main(["guide", "--workload", "fly", "--out", str(out)]) == cli.EXIT_USAGE
    assert "Unknown workload" in capsys.readouterr().err


def test_memlens_guide_takes_some_techniques_at_a_dtype(tmp_path, capsys):
    out = tmp_path / "guide"
    code = cli.main(["--store", str(tmp_path / "runs"), "guide", "--model", "preset:tiny-llama",
                     "--techniques", "freeze-base,cast", "--dtype", "bfloat16", "--batch", "2",
                     "--seq", "16",
                     "--repeats", "1", "--out", str(out)])
    assert code == cli.EXIT_OK
    data = json.loads((out / "guide.json").read_text())
    # Only entries made of the named techniques (no combination with LoRA), in the plan's
    # order; every run at the dtype asked for, so a cast to bfloat16 is refused with why.
    labels = [(e["workload"], e["specs"]) for e in data["entries"]]
    assert labels == [("forward", ["cast:dtype=bfloat16"]), ("generate", ["cast:dtype=bfloat16"]),
                      ("train", ["freeze-base"])]
    assert data["dtype"] == "bfloat16" and data["planned"] == 3
    *casts, freeze = data["entries"]
    for cast in casts:
        assert cast["status"] == "not applicable" and "already bfloat16" in cast["reason"]
    assert freeze["status"] == "ok"
    assert freeze["baseline"]["model_weights_bytes"] == freeze["measured"]["model_weights_bytes"]
    run = RunStore(tmp_path / "runs").load(freeze["run_id"])
    assert run.config.dtype == "bfloat16" and run.model_info["dtype"] == "bfloat16"
    assert run.config.batch == 2 and data["batch"] == 2 and run.inputs["shape"][0] == 2
    text = (out / "guide.md").read_text()
    assert "batch 2, sequence 16, 16 new tokens, weights bfloat16" in text
    assert "the median of 1 timing pass," in text
    assert "1 of 3 techniques measured" in capsys.readouterr().out
    # Training techniques leave the untrained model as it was: quality is also measured after
    # the steps, against the unoptimized model trained the same way.
    trained = freeze["quality"]["after_training"]
    assert trained["steps"] >= 2 and trained["kl_divergence"] >= 0
    assert "trained KL" in text and f"after {trained['steps']} training steps" in text
    capsys.readouterr()
    for bad, words in ((["--techniques", "teleport"], "Unknown technique(s) teleport"),
                       (["--dtype", "int3"], "Unknown dtype")):
        assert cli.main(["guide", *bad, "--out", str(out)]) == cli.EXIT_USAGE
        assert words in capsys.readouterr().err


def test_the_chart_never_draws_labels_over_each_other():
    from engine.guide import Entry, Guide

    def entry(peak, kl):
        return Entry(workload="forward", specs=[f"cast:p={peak}"], baseline={"peak_bytes": 8 << 20},
                     measured={"peak_bytes": peak << 20}, quality={"kl_divergence": kl})

    guide = Guide(model="m", device="cpu", entries=[entry(2, 0.0), entry(2, 0.0), entry(6, 0.5)])
    svg = scatter_svg(guide, "forward")
    assert svg.count("<circle") == 3  # every point drawn; the two that coincide share a label
    assert ">[1, 2]</text>" in svg and ">[3]</text>" in svg and ">[1]</text>" not in svg
    assert "KL divergence, nats/token (0: unchanged)" in svg
    ticks = [float(t) for t in re.findall(r'text-anchor="end">([-0-9.e+]+)</text>', svg)]
    assert min(ticks) == 0.0  # a KL divergence axis does not go below zero


def test_kv_cache_policies_are_judged_by_their_own_claims():
    from engine.guide import _claim

    assert _claim(["kv-cache:policy=static"])[:2] == ("kv_cache", "up")  # preallocates
    assert _claim(["kv-cache:policy=fp8"])[:2] == ("kv_cache", "down")
    assert _claim(["kv-cache:policy=offloaded"])[:2] == ("peak", "down")
    import transformers.cache_utils as cache_utils

    if not hasattr(cache_utils, "Fp8QuantizedLayer"):
        pytest.skip("this transformers has no fp8 quantized cache")
    # In a real run: a quantized cache shrinks the cache, and the guide reports the generated
    # tokens' agreement (the prompt's forward, hence the KL, is the same with any cache).
    guide = run_guide(model="preset:tiny-llama", seq=24, new_tokens=8, repeats=1, plan=(
        ("generate", ("kv-cache:policy=static",)), ("generate", ("kv-cache:policy=fp8",))))
    static, fp8 = guide.entries
    assert static.verdict in ("as claimed", "no change")
    assert fp8.verdict == "as claimed"
    assert fp8.measured["kv_cache_bytes"] < fp8.baseline["kv_cache_bytes"]
    assert "generated tokens identical to the baseline's" in fp8.note
    # the quality text is decoded through each policy's cache, and the table says so
    assert "tokens " in markdown(guide) and "% same, cache KL" in markdown(guide)


def test_a_guide_json_from_before_guides_named_their_kind_is_still_a_guide():
    from engine.records import record_kind

    assert record_kind({"model": "demo", "device": "cpu", "entries": []}) == "guide"
    assert record_kind({"model": "demo", "entries": [], "schema_version": 3}) is None  # a run
    assert record_kind({"kind": "guide", "model": "demo", "entries": []}) == "guide"


def test_verdicts_weigh_the_amount_a_claim_names():
    from engine.guide import Entry, verdict

    def entry(spec, before, after, params=None):
        e = Entry(workload="forward", specs=[spec], claimed_quantity="weights",
                  baseline={"model_weights_bytes": before, "parameters": params},
                  measured={"model_weights_bytes": after})
        return e

    assert verdict(entry("cast:dtype=bfloat16", 1000, 500)) == "as claimed"
    # "about four times" measured as 2.7 times (embeddings are not quantized): only partly.
    assert verdict(entry("int8-dynamic", 1000, 367)) == (
        "partly: ×0.37 of before, the claim says ×0.25")
    assert verdict(entry("int8-dynamic", 1000, 260)) == "as claimed"  # within 15%
    assert verdict(entry("quanto-weights", 1000, 371)) == "as claimed"  # two to eight times
    # fp8: one byte per parameter, so the claimed ratio follows the baseline's dtype.
    assert verdict(entry("torchao-fp8", 4000, 1000, params=1000)) == "as claimed"
    assert verdict(entry("torchao-fp8", 2000, 1000, params=1000)) == "as claimed"
    assert verdict(entry("torchao-fp8", 4000, 1600, params=1000)).startswith("partly")
    assert verdict(entry("prune-ffn", 1000, 900)) == "as claimed"  # no amount named
    assert verdict(entry("int8-dynamic", 1000, 100)) == (  # further than the claim went
        "more than claimed: ×0.10 of before, the claim says ×0.25")
    assert verdict(entry("cast:dtype=bfloat16", 1000, 1000)) == "no change"
    assert verdict(entry("cast:dtype=bfloat16", 1000, 1200)) == "contrary to the claim"


def test_a_quantization_claim_is_judged_over_the_modules_it_changed():
    """int8 Linear weights went exactly ×0.25 (8.16 → 2.04 MiB) but the guide said "partly:
    ×0.37", the whole model's ratio, which holds a tied embedding no technique touches. The
    run now records the bytes of the modules each technique changed; the note gives both."""
    import torch

    from engine.config import RunConfig
    from engine.guide import Entry, note, verdict
    from engine.models import load_model
    from engine.optimizations import RunHooks, parse_spec, resolve

    model = load_model(RunConfig(model="preset:tiny-llama")).model
    ((opt, params),) = resolve([parse_spec("int8-dynamic")], "forward", "cpu")
    applied = opt.apply(model, params, RunHooks(), torch.device("cpu"))
    assert applied.modules_changed == applied.modules_touched > 0
    assert applied.changed_bytes_after / applied.changed_bytes_before == pytest.approx(0.25,
                                                                                        abs=0.01)
    assert applied.weights_bytes_after / applied.weights_bytes_before > 0.3  # embeddings stay
    e = Entry(workload="forward", specs=["int8-dynamic"], claimed_quantity="weights",
              claim="int8 weights are a quarter of float32",
              baseline={"model_weights_bytes": applied.weights_bytes_before},
              measured={"model_weights_bytes": applied.weights_bytes_after,
                        "changed_weights": {"modules": applied.modules_changed,
                                            "before": applied.changed_bytes_before,
                                            "after": applied.changed_bytes_after}})
    e.verdict = verdict(e)
    assert e.verdict == "as claimed"
    text = note(e)
    assert f"over the {applied.modules_changed} module(s) it changed" in text and "(×0.25)" in text
    assert "it left as it was" in text
    # fp8's claim, a byte per parameter, holds over the modules it changed as well
    e.specs = ["torchao-fp8"]
    e.baseline["parameters"] = applied.weights_bytes_before // 4
    assert verdict(e) == "as claimed" and "over the" in note(e)
    # a run saved before the changed modules were recorded: the whole model's ratio
    del e.measured["changed_weights"]
    e.specs = ["int8-dynamic"]
    assert verdict(e).startswith("partly: ×0.")


@pytest.mark.fault(area="inputs", case="memlens guide on a missing model or with batch 0",
                   outcome="refused once, before any run, with the cause and the fix; exit 1 or 2 "
                           "and no guide written")
def test_a_guide_that_cannot_run_at_all_says_so_once(tmp_path, capsys):
    out = tmp_path / "guide"
    code = cli.main(["--store", str(tmp_path / "runs"), "guide", "--model",
                     str(tmp_path / "no-such-model"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code != cli.EXIT_OK
    assert err.count("no-such-model") == 1, err
    assert not (out / "guide.md").exists()
    for bad, words in ((["--batch", "0"], "Batch size must be at least 1"),
                       (["--seq", "0"], "Sequence length must be at least 1"),
                       (["--repeats", "0"], "Repeats must be")):
        assert cli.main(["--store", str(tmp_path / "runs"), "guide", *bad,
                         "--out", str(out)]) != cli.EXIT_OK
        assert words in capsys.readouterr().err
    assert not (out / "guide.md").exists()
    # An encoder asked only to generate: said once, before any run (it wrote an empty guide
    # and exited 0); asked for more, its generate entries are not applicable, never run
    assert cli.main(["--store", str(tmp_path / "runs"), "guide", "--model", "preset:tiny-bert",
                     "--workload", "generate", "--out", str(out)]) != cli.EXIT_OK
    assert "is not a causal language model" in capsys.readouterr().err
    assert not (out / "guide.md").exists()
    from engine.guide import run_guide

    guide = run_guide(model="preset:tiny-bert", seq=8, repeats=1,
                      plan=(("generate", ("kv-cache:policy=static",)),
                            ("forward", ("cast:dtype=bfloat16",))))
    gen, fwd = guide.entries
    assert gen.status == "not applicable" and "cannot generate" in gen.reason
    assert fwd.status != "not applicable"


def test_a_noisy_latency_is_marked_in_the_table_and_the_note():
    from engine.guide import Entry, Guide, markdown, note

    e = Entry(workload="forward", specs=["cast:dtype=bfloat16"], claimed_quantity="weights",
              claim="lower precision halves the weights", verdict="as claimed",
              baseline={"peak_bytes": 10 << 20, "model_weights_bytes": 8 << 20},
              measured={"peak_bytes": 5 << 20, "model_weights_bytes": 4 << 20,
                        "latency_spread": 24.7},
              latency_ratio=0.04,
              warnings=["Latency is noisy: 3 plain timing passes took 12.37 to 306.08 ms.",
                        "Something else."])
    e.note = note(e)
    assert e.latency_noisy
    assert "noisy: timing passes ×24.7 apart" in e.note
    text = markdown(Guide(model="m", device="cpu", entries=[e], seq=8))
    assert "×0.04 *noisy*" in text and "−5.00 MiB (−50.0%)" in text
    assert "  - warning: Something else." in text
    assert "warning: Latency is noisy" not in text  # said once, in the note


def test_each_workload_says_where_the_unoptimized_peak_goes():
    from engine.guide import Entry, Guide

    mib = 2**20
    before = {"peak_bytes": 100 * mib, "at_peak": {"weights": 10 * mib, "activations": 60 * mib,
                                                   "optimizer state": 30 * mib},
              "loss_at_peak_bytes": 25 * mib}
    entry = Entry("train", ["checkpointing"], baseline=before,
                  measured={"peak_bytes": 50 * mib})
    old = Entry("forward", ["cast"], baseline={"peak_bytes": 9 * mib},  # a guide saved before
                measured={"peak_bytes": 5 * mib})
    text = markdown(Guide(model="m", device="cpu", entries=[entry, old]))
    assert ("Unoptimized peak 100 MiB: activations 60.0 MiB (60%), optimizer state 30.0 MiB "
            "(30%), weights 10.0 MiB (10%); the loss's row holds 25.0 MiB (25%) of it (the "
            "baseline measured in the `checkpointing` run).") in text
    assert text.count("Unoptimized peak") == 1


def test_a_note_says_where_at_the_peak_the_technique_saved_or_added():
    from engine.guide import _where

    mib = 2**20
    before = {"the blocks": 30 * mib, "the loss": 3 * mib, "the head": 2 * mib,
              "unattributed": 1024}
    after = {"the blocks": 6 * mib, "the loss": 4 * mib, "the head": 2 * mib + 10,
             "unattributed": 1024}
    # the head's 10 bytes are under 1% of the 40 MiB peak: left out
    assert _where(before, after, 40 * mib) == "the blocks −24.0 MiB, the loss +1.00 MiB"
    assert _where(before, before, 40 * mib) == "" and _where({}, after, 40 * mib) == ""


def test_the_guide_passes_the_remote_code_opt_in_to_every_run(tmp_path):
    """A model whose config has auto_map is refused before anything runs, unless the user
    opted in; the opt-in then reaches each technique's run (the CLI's --trust-remote-code)."""
    import resources
    from engine.errors import ErrorKind, MemLensError

    values = json.loads(resources.path("presets/tiny-llama.json").read_text())
    values.pop("_memlens", None)
    values["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (tmp_path / "config.json").write_text(json.dumps(values))
    model = str(tmp_path / "config.json")
    ran = []
    with pytest.raises(MemLensError) as refused:
        run_guide(model=model, seq=16, repeats=1, plan=PLAN_SMALL[:1],
                  execute=lambda cfg, *a, **k: ran.append(cfg))
    assert refused.value.kind is ErrorKind.REMOTE_CODE and not ran
    run_guide(model=model, seq=16, repeats=1, plan=PLAN_SMALL[:1], trust_remote_code=True,
              execute=lambda cfg, *a, **k: ran.append(cfg))
    assert ran and all(cfg.trust_remote_code for cfg in ran)
    args = cli._parser().parse_args(["guide", "--out", str(tmp_path), "--trust-remote-code"])
    assert args.trust_remote_code is True


def test_a_baseline_timed_on_a_busier_machine_marks_its_ratio_noisy():
    """Each run times its own unoptimized model. One timed at 1.5 s while the others took
    70 ms made bfloat16 look 14 times faster on a CPU, with no mark: its passes agreed."""
    from engine.guide import Entry, mark_baseline_drift, note

    def entry(spec: str, base_ms: float, ratio: float) -> Entry:
        e = Entry(workload="generate", specs=[spec], claimed_quantity="peak",
                  baseline={"peak_bytes": 10 << 20, "plain_latency_ms": base_ms},
                  measured={"peak_bytes": 9 << 20, "latency_spread": 1.05},
                  latency_ratio=ratio)
        e.note = note(e)
        return e

    entries = [entry("cast:dtype=bfloat16", 1520.0, 0.07), entry("drop-blocks:n=2", 71.0, 0.7),
               entry("kv-cache:policy=static", 80.0, 1.1)]
    mark_baseline_drift(entries[:2], "generate")  # two baselines: no median to trust yet
    assert not any(e.latency_noisy for e in entries)
    mark_baseline_drift(entries, "generate")
    assert [e.latency_noisy for e in entries] == [True, False, False]
    assert "noisy: its unoptimized model took ×19.0 the typical time" in entries[0].note
    other = entry("cast:dtype=bfloat16", 75.0, 1.4)
    other.workload = "forward"  # another workload's baselines are not compared with these
    mark_baseline_drift(entries + [other], "forward")
    assert not other.latency_noisy


def test_a_bad_readme_target_is_refused_before_the_guide_runs(tmp_path, capsys, monkeypatch):
    """--readme was read only after every technique had run: a missing file, a folder, a
    picture or markers in the wrong order failed with a traceback after minutes of work."""
    import engine.guide as guide_module

    monkeypatch.setattr(guide_module, "run_guide", lambda *a, **k: pytest.fail("it ran"))
    picture = tmp_path / "shot.md"
    picture.write_bytes(b"\x89PNG\xff\xfe")
    swapped = tmp_path / "swapped.md"
    swapped.write_text("<!-- guide:end -->\n<!-- guide:start -->\n", encoding="utf-8")
    for target, words in ((tmp_path / "missing.md", "does not exist"), (tmp_path, "is a folder"),
                          (picture, "is not a text file"), (swapped, "comes before")):
        code = cli.main(["--store", str(tmp_path / "runs"), "guide", "--model", "demo",
                         "--out", str(tmp_path / "g"), "--readme", str(target)])
        assert code == cli.EXIT_USAGE
        assert words in capsys.readouterr().err, target


def test_a_refused_guide_leaves_no_empty_folder_and_a_file_is_not_a_folder(tmp_path, capsys):

    out = tmp_path / "guide-out"
    assert cli.main(["--store", str(tmp_path / "runs"), "guide", "--model",
                     str(tmp_path / "no-such-model"), "--out", str(out)]) == cli.EXIT_FAILED
    assert "No such file or folder" in capsys.readouterr().err
    assert not out.exists()  # (it was left behind, empty)
    afile = tmp_path / "notes.txt"
    afile.write_text("x", encoding="utf-8")
    assert cli.main(["--store", str(tmp_path / "runs"), "guide", "--out",
                     str(afile)]) == cli.EXIT_USAGE
    assert "is a file, not a folder" in capsys.readouterr().err  # (it said "File exists")
