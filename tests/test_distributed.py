"""Distributed plans (engine/distributed.py) on tiny configs: per-device inference plans placed by
transformers / accelerate, and FSDP2 per-rank training plans checked against PyTorch's own
FSDPMemTracker run on a fake process group."""

from __future__ import annotations

import argparse
import json
import math
import threading
import types

import pytest

from engine import cli
from engine.config import RunConfig
from engine.distributed import (
    DevicePlan,
    PlanFinished,
    ShardPlan,
    add_cli_parser,
    format_plan,
    plan_inference,
    plan_training,
    run_cli,
    shard_rows,
)
from engine.errors import ErrorKind, MemLensError
from engine.estimate import estimate
from engine.events import Progress

from .helpers import Collector

TINY = "preset:tiny-llama"
KiB = 1024


def _gen(**kw) -> RunConfig:
    base = dict(model=TINY, workload="generate", seq=32, new_tokens=4)
    base.update(kw)
    return RunConfig(**base)


def _train(**kw) -> RunConfig:
    base = dict(model=TINY, workload="train", seq=16)
    base.update(kw)
    return RunConfig(**base)


def _inference(config: RunConfig, *args, **kw) -> tuple[DevicePlan, Collector]:
    events = Collector()
    plan = plan_inference(config, *args, listener=events, **kw)
    assert plan is not None, events.failed
    return plan, events


def _training(config: RunConfig, *args, **kw) -> tuple[ShardPlan, Collector]:
    events = Collector()
    plan = plan_training(config, *args, listener=events, **kw)
    assert plan is not None, events.failed
    return plan, events


def _estimate(config: RunConfig):
    events = Collector()
    result = estimate(config, events)
    assert result is not None, events.failed
    return result


@pytest.fixture(scope="module")
def full_generation():
    """The single-device estimate of the whole generation (every new token)."""
    return _estimate(_gen())


def _check_rows_add_up(plan: DevicePlan) -> None:
    for row in plan.rows:
        assert row.total_bytes == sum(row.parts().values()), row
        if row.budget_bytes is not None:
            assert row.fits == (row.total_bytes <= row.budget_bytes) or row.index == "disk"
    assert sum(r.weights_bytes for r in plan.rows) == plan.model_weights_bytes


# -- inference -------------------------------------------------------------------------------------
def test_two_devices_split_the_model_and_the_parts_add_up(full_generation) -> None:
    plan, events = _inference(_gen(), 2, 400 * KiB)
    _check_rows_add_up(plan)
    assert (plan.estimate_seq, plan.estimate_new_tokens) == (32, 4)  # the whole generation
    gpus = [r for r in plan.rows if isinstance(r.index, int)]
    assert [r.device for r in gpus] == ["cuda:0", "cuda:1"]
    assert all(r.weights_bytes > 0 and r.modules for r in gpus), "both devices hold layers"
    # The whole model's weights, from the shapes, are the estimate's weights.
    assert plan.model_weights_bytes == full_generation.totals.model_weights_bytes
    assert sum(r.kv_cache_bytes for r in plan.rows) == full_generation.generation["kv_cache_bytes"]
    assert plan.fits and not plan.does_not_fit
    assert any(isinstance(e, PlanFinished) for e in events.events)
    assert {e.stage for e in events.of(Progress)} == {"plan"}


def test_one_device_plan_is_the_single_device_estimate(full_generation) -> None:
    plan, _ = _inference(_gen(), 1, "1GiB")
    _check_rows_add_up(plan)
    (gpu,) = plan.rows
    assert plan.device_map == {"": 0}
    assert gpu.weights_bytes == full_generation.totals.model_weights_bytes
    assert gpu.kv_cache_bytes == full_generation.generation["kv_cache_bytes"]
    # KV cache at its longest plus activations at prefill bound the whole run's peak from above,
    # and by little: the per-layer composition is close to what the estimate counts at once.
    peak = full_generation.totals.peak_bytes
    assert peak <= gpu.total_bytes <= 1.05 * peak


def test_one_step_gives_the_whole_generations_kv_cache() -> None:
    """One step after a prompt of seq + new - 1 tokens leaves the same cache."""
    short, _ = _inference(_gen(), 2, 400 * KiB, full_generation=False)
    full, _ = _inference(_gen(), 2, 400 * KiB)
    assert (short.estimate_seq, short.estimate_new_tokens) == (32 + 4 - 1, 1)
    assert [r.kv_cache_bytes for r in full.rows] == [r.kv_cache_bytes for r in short.rows]
    assert [r.weights_bytes for r in full.rows] == [r.weights_bytes for r in short.rows]


def test_cpu_offload_is_reported_and_runs_on_the_first_gpu(full_generation) -> None:
    plan, _ = _inference(_gen(), 1, 300_000, "2MiB")
    _check_rows_add_up(plan)
    assert plan.fits, plan.does_not_fit
    cpu = plan.row("cpu")
    assert cpu.modules and cpu.weights_bytes > 0, "something is offloaded"
    assert cpu.kv_cache_bytes == cpu.activation_bytes == 0, "offloaded layers run on a GPU"
    gpu = plan.row("cuda:0")
    assert gpu.runs == cpu.modules
    # Every layer's KV cache is on the GPU that runs it; the weights in transit are one module
    # that holds tensors directly (here the head's Linear), not a whole offloaded entry.
    assert gpu.kv_cache_bytes == full_generation.generation["kv_cache_bytes"]
    head = full_generation.layer("lm_head").weights_bytes
    assert gpu.offload_transit_bytes == head < cpu.weights_bytes
    text = format_plan(plan)
    assert "offloaded: run on cuda:0" in text and "CPU offload" in text
    # Too small to run anything: the whole model would run on the CPU, and the plan says so.
    tiny, _ = _inference(_gen(), 1, 150_000, "2MiB")
    assert not tiny.fits and "no GPU holds a layer" in tiny.does_not_fit[0]
    assert tiny.row("cpu").kv_cache_bytes == full_generation.generation["kv_cache_bytes"]


def test_a_budget_too_small_names_what_does_not_fit() -> None:
    plan, _ = _inference(_gen(), 2, 100 * KiB, reserve="none")
    _check_rows_add_up(plan)
    assert not plan.fits
    disk = plan.row("disk")
    assert not disk.fits and disk.weights_bytes > 0
    assert any("fit in none of the budgets" in m and "model.layers" in m
               for m in plan.does_not_fit)
    assert "DOES NOT FIT" in format_plan(plan)
    # Weights that fit, but the runtime memory does not: the binding part is named.
    big, _ = _inference(_gen(batch=16, seq=128), 1, 500 * KiB, reserve="none")
    (gpu,) = big.rows
    assert not gpu.fits and gpu.over_by_bytes == gpu.total_bytes - 500 * KiB > 0
    assert gpu.binding in ("kv_cache", "activations", "weights")
    assert big.does_not_fit and "binding" in big.does_not_fit[0]


def test_runtime_reserve_leaves_room_that_none_does_not() -> None:
    cfg = _gen(batch=2)
    packed, _ = _inference(cfg, 2, 420 * KiB, "4MiB", strategy="sequential", reserve="none")
    reserved, _ = _inference(cfg, 2, 420 * KiB, "4MiB", strategy="sequential")
    # The whole model's weights fit on the first GPU, its KV cache and activations do not.
    assert packed.row("cuda:0").weights_bytes == packed.model_weights_bytes
    assert not packed.fits and packed.row("cuda:0").over_by_bytes > 0
    # Leaving room for them moves layers to the second GPU, and the plan fits.
    assert reserved.fits, reserved.does_not_fit
    assert reserved.row("cuda:1").weights_bytes > 0
    assert int(reserved.max_memory["0"]) < 420 * KiB
    assert reserved.iterations > 1 and "max_memory=" in format_plan(reserved)


def test_strategies_and_placement_libraries() -> None:
    low0, _ = _inference(_gen(), 3, 400 * KiB, strategy="balanced_low_0")
    bal, _ = _inference(_gen(), 3, 400 * KiB, strategy="balanced")
    assert low0.row("cuda:0").weights_bytes < bal.row("cuda:0").weights_bytes
    auto, _ = _inference(_gen(), 3, 400 * KiB)
    assert auto.device_map == bal.device_map  # transformers: "auto" is "balanced"
    acc, _ = _inference(_gen(), 3, 400 * KiB, placement="accelerate")
    assert acc.device_map == bal.device_map  # no tied weights here: both libraries agree


@pytest.mark.parametrize(("call", "kind", "words"), [
    (lambda: plan_inference(_gen(), 0, "80GiB"), ErrorKind.INVALID_WORKLOAD, "--devices"),
    (lambda: plan_inference(_gen(), "four", "80GiB"), ErrorKind.INVALID_WORKLOAD, "--devices"),
    (lambda: plan_inference(_gen(), 2, "80 gigs"), ErrorKind.INVALID_WORKLOAD, "--per-device"),
    (lambda: plan_inference(_gen(), 2, 0), ErrorKind.INVALID_WORKLOAD, "--per-device"),
    (lambda: plan_inference(_gen(), 2, "80GiB", "lots"), ErrorKind.INVALID_WORKLOAD,
     "--cpu-offload"),
    (lambda: plan_inference(_gen(), 2, "80GiB", strategy="fastest"), ErrorKind.INVALID_WORKLOAD,
     "balanced_low_0"),
    (lambda: plan_inference(_train(), 2, "80GiB"), ErrorKind.INVALID_WORKLOAD, "--ranks"),
    (lambda: plan_inference(_gen(optimizations=[{"id": "cast", "params": {}}]), 2, "80GiB"),
     ErrorKind.NOT_APPLICABLE, "--dtype"),
    (lambda: plan_training(_train(), 0), ErrorKind.INVALID_WORKLOAD, "--ranks"),
    (lambda: plan_training(_train(), 2, method="guess"), ErrorKind.INVALID_WORKLOAD, "tracker"),
    (lambda: plan_training(_gen(), 2), ErrorKind.INVALID_WORKLOAD, "--devices"),
    # counts no plan can take (100,000 devices ran for minutes without an answer)
    (lambda: plan_inference(_gen(), 100_000, "80GiB"), ErrorKind.INVALID_WORKLOAD,
     "1024 devices or fewer (--devices"),
    (lambda: plan_training(_train(), 10**12), ErrorKind.INVALID_WORKLOAD, "--ranks"),
    (lambda: plan_training(_train(), 100_000), ErrorKind.INVALID_WORKLOAD, "--replicas"),
    (lambda: plan_training(_train(), 4, replicas=8), ErrorKind.INVALID_WORKLOAD, "--replicas"),
])
def test_bad_arguments_are_refused_with_the_fix(call, kind, words) -> None:
    with pytest.raises(MemLensError) as info:
        call()
    assert info.value.kind == kind
    assert info.value.hint, "every refusal names the fix"
    assert words in info.value.message + info.value.hint


def test_cancel_and_failures_are_events() -> None:
    cancel = threading.Event()
    cancel.set()
    events = Collector()
    assert plan_inference(_gen(), 2, "1GiB", listener=events, cancel=cancel) is None
    assert events.failed.kind == "cancelled"
    events = Collector()
    assert plan_training(_train(), 2, listener=events, cancel=cancel) is None
    assert events.failed.kind == "cancelled"
    events = Collector()  # a sequence beyond the model's positions fails in the estimate
    assert plan_inference(_gen(seq=400), 2, "1GiB", listener=events) is None
    assert events.failed.kind == "invalid_workload" and events.failed.hint


# -- training (FSDP2) ------------------------------------------------------------------------------
def test_shard_rows_follow_torch_chunk() -> None:
    import torch

    for dim0, ranks in [(5, 4), (64, 3), (256, 2), (1, 4), (128256, 7)]:
        chunk, rows = shard_rows(dim0, ranks)
        chunks = torch.chunk(torch.empty(dim0), ranks)
        assert chunk == chunks[0].numel()
        assert rows == [c.numel() for c in chunks] + [0] * (ranks - len(chunks))
        assert sum(rows) == dim0


@pytest.fixture(scope="module")
def train_estimate():
    return _estimate(_train())


def test_fsdp2_shards_cover_the_model_within_the_padding(train_estimate) -> None:
    three, _ = _training(_train(), 3)
    one, _ = _training(_train(), 1)
    params = three.model_params_bytes
    assert params == train_estimate.totals.model_weights_bytes - three.model_buffers_bytes
    # Every rank stores a full chunk: × ranks covers the model, and exceeds it by less than one
    # row per rank for each parameter.
    import torch

    from engine.distributed import _empty_model

    model = _empty_model(_train(), torch.float32)
    pad_bound = sum((3 - 1) * math.prod(p.shape[1:]) * p.element_size()
                    for p in model.parameters())
    sharded = three.parts["sharded_params"]
    assert params <= sharded * 3 <= params + pad_bound
    assert three.padding_bytes == sharded * 3 - params > 0  # 64 rows / 3 ranks pads
    assert three.parts["sharded_gradients"] == sharded
    assert sum(three.per_rank_optimizer_state) == three.all_ranks["optimizer_state"]
    assert three.per_rank_optimizer_state[0] == max(three.per_rank_optimizer_state)
    # One rank is the single-device run: its shards are the estimate's weights, gradients and
    # optimizer state.
    assert one.parts["sharded_params"] == params and one.padding_bytes == 0
    assert one.parts["sharded_gradients"] == train_estimate.training["gradient_bytes"]
    assert one.parts["optimizer_state"] == train_estimate.training["optimizer_state_bytes"]
    for plan in (three, one):
        assert plan.total_bytes == sum(plan.parts.values())
    # Activations: the same forward as the single-device estimate (its forward phase peak less
    # the weights and optimizer state it holds); in backward the gradients are handed over, so
    # they are not counted as activations, as they are in the estimate's backward phase peak.
    tr, weights = train_estimate.training, train_estimate.totals.model_weights_bytes
    held = weights + tr["optimizer_state_bytes"]
    assert three.activations_forward_bytes == tr["forward_peak_bytes"] - held
    assert three.activations_backward_bytes < tr["backward_peak_bytes"] - held
    assert three.parts["activations"] == max(three.activations_forward_bytes,
                                             three.activations_backward_bytes)
    # Mixed precision: fp32 master shards, bf16 all-gathers.
    mixed, _ = _training(_train(dtype="bfloat16"), 3, master_dtype="float32")
    assert mixed.parts["sharded_params"] == sharded
    # all-gathered in bf16: half the bytes, plus the shards cast to bf16 (the policy's
    # all-gather input) of the group being gathered, beside its flat buffer
    casts = [g.unsharded_bytes // 3 for g in mixed.groups]
    assert (mixed.parts["unsharded_params"] - three.parts["unsharded_params"] // 2) in casts


def test_a_lora_plan_gives_gradients_and_optimizer_state_to_the_adapters_only() -> None:
    """LoRA on one rank is the single-device estimate with LoRA (itself equal to a measured
    run, test_estimate.py): the adapters' gradients and AdamW state, the whole model's shards."""
    lora = [{"id": "lora", "params": {}}]
    one, _ = _training(_train(optimizations=lora), 1)
    est = _estimate(_train(optimizations=lora, warmup=1))
    assert one.parts["sharded_gradients"] == est.training["gradient_bytes"] > 0
    assert one.parts["optimizer_state"] == est.training["optimizer_state_bytes"]
    assert one.parts["sharded_params"] == est.totals.model_weights_bytes - one.model_buffers_bytes
    assert 0 < one.trainable_parameters < one.model_parameters
    full, _ = _training(_train(), 3)
    three, _ = _training(_train(optimizations=lora), 3)
    assert three.parts["sharded_gradients"] * 10 < full.parts["sharded_gradients"]
    assert three.parts["unsharded_params"] >= full.parts["unsharded_params"]  # base + adapters
    assert "Frozen parameters" in " ".join(three.assumptions)
    assert "trainable" in format_plan(three)


def test_hsdp_shards_within_a_group_and_agrees_with_fsdpmemtracker() -> None:
    """HSDP, 2 replicas × 2 shards: each rank holds what plain FSDP2 on 2 ranks gives it (the
    shards of its group); the totals over all ranks count each replica; PyTorch's tracker on a
    fake 4-rank ("replicate", "shard") mesh agrees on the shards and state."""
    hsdp, _ = _training(_train(seq=64), 4, replicas=2, method="tracker")
    two, _ = _training(_train(seq=64), 2)
    for part in ("sharded_params", "sharded_gradients", "optimizer_state", "unsharded_params",
                 "gradient_reduction", "activations"):
        assert hsdp.parts[part] == two.parts[part], part
    assert hsdp.all_ranks["sharded_params"] == 2 * two.all_ranks["sharded_params"]
    assert hsdp.all_ranks["optimizer_state"] == 2 * two.all_ranks["optimizer_state"]
    tracked = hsdp.tracker["parts"]
    for part in ("sharded_params", "buffers", "optimizer_state"):
        assert hsdp.parts[part] == tracked[part], part
    assert hsdp.tracker["peak_bytes"] <= hsdp.total_bytes
    text = format_plan(hsdp)
    assert "4 ranks (HSDP: 2 replicas × 2 shards)" in text and "2-D mesh (HSDP)" in text
    with pytest.raises(MemLensError) as info:
        plan_training(_train(), 4, replicas=3)
    assert "--replicas must divide" in info.value.hint


def test_inference_plans_place_the_pruned_model() -> None:
    """Structural pruning runs on the plan's empty model: fewer blocks, fewer weights placed,
    and the same weights as the estimate of the pruned model."""
    plain, _ = _inference(_gen(), 2, 400 * KiB)
    drop = [{"id": "drop-blocks", "params": {"count": 1}}]
    pruned, _ = _inference(_gen(optimizations=drop), 2, 400 * KiB)
    est = _estimate(_gen(optimizations=drop))
    assert pruned.model_weights_bytes == est.totals.model_weights_bytes
    assert pruned.model_weights_bytes < plain.model_weights_bytes
    assert sum(r.weights_bytes for r in pruned.rows) == pruned.model_weights_bytes


def test_checkpointed_activations_do_not_grow_with_depth(tmp_path) -> None:
    """With activation checkpointing each recomputed block leaves reference cycles; the pass
    collects them, so what the backward adds over the forward is one block's recomputation,
    the same for 2 and 8 blocks (it grew with every block before)."""
    import resources
    from engine.distributed import activation_pass

    values = {k: v for k, v in resources.preset_config("tiny-llama").items()
              if not k.startswith("_")}
    extra = []
    for layers in (2, 8):
        path = tmp_path / f"llama-{layers}.json"
        path.write_text(json.dumps(dict(values, num_hidden_layers=layers)))
        acts = activation_pass(_train(model=str(path), seq=128,
                                      optimizations=[{"id": "checkpointing", "params": {}}]))
        extra.append(acts["backward"] - acts["forward"])
    assert extra[0] == extra[1] > 0


def test_fsdp2_budget_names_the_binding_part() -> None:
    plan, _ = _training(_train(), 2, "512KiB")
    assert plan.fits is False and plan.over_by_bytes == plan.total_bytes - 512 * KiB
    assert plan.binding in plan.parts and plan.does_not_fit
    ok, _ = _training(_train(), 2, "1GiB")
    assert ok.fits is True and not ok.does_not_fit


@pytest.mark.parametrize(("model", "seq", "opts"), [
    (TINY, 256, ()), ("preset:tiny-gpt2", 32, ()),
    # "will it fine-tune with LoRA and checkpointing?": peft's adapters on the plan's model,
    # only they have gradients and optimizer state
    (TINY, 256, ("lora", "checkpointing")),
])
def test_fsdp2_plan_agrees_with_fsdpmemtracker(model: str, seq: int, opts) -> None:
    """PyTorch's FSDPMemTracker runs real FSDP2 code (fully_shard per block and on the root) on
    rank 0 of a fake 3-rank process group under FakeTensorMode. Its state categories must equal
    the shapes' figures (with FSDP2's padding: 64 rows over 3 ranks), and the plan's total, each
    part at its own maximum, must bound the peak it finds.

    Llama at seq 256: the peak is at the start of backward (logits), where the plan's
    activations are exactly what the tracker counts, and every other part is at least the
    tracker's. GPT-2 ties its head to its embedding: FSDP2 keeps that unsharded gradient from
    the start of backward until the root's reduce-scatter at the end, which the tracker counts
    as a temporary at its peak and the plan under gradient reduction: the two together bound
    the tracker's."""
    import torch.distributed as dist

    from engine.optimizations import parse_spec

    config = _train(model=model, seq=seq, optimizations=[parse_spec(o) for o in opts])
    plan, _ = _training(config, 3, method="tracker")
    assert not dist.is_initialized(), "the fake process group is destroyed"
    tracked = plan.tracker["parts"]
    for part in ("sharded_params", "buffers", "optimizer_state"):
        assert plan.parts[part] == tracked[part], part
    for part in ("sharded_params", "sharded_gradients", "unsharded_params"):
        assert plan.parts[part] >= tracked[part], part
    both = ("activations", "gradient_reduction")
    assert sum(plan.parts[p] for p in both) >= sum(tracked[p] for p in both)
    if model == TINY:
        assert plan.parts["activations"] == pytest.approx(tracked["activations"], rel=0.01)
        assert plan.parts["gradient_reduction"] >= tracked["gradient_reduction"]
    assert plan.tracker["peak_bytes"] == sum(plan.tracker["categories"].values())
    assert plan.tracker["peak_bytes"] <= plan.total_bytes
    assert "FSDPMemTracker at its peak" in format_plan(plan)


# -- records and command line ----------------------------------------------------------------------
def test_plans_are_json_and_labelled_estimates(tmp_path) -> None:
    from engine.store import RunStore

    store = RunStore(tmp_path / "runs")
    inf, _ = _inference(_gen(), 2, 400 * KiB)
    tr, _ = _training(_train(), 2, store=store)  # with a store, the estimate is made and saved
    assert {s.run_id for s in store.list()} == {tr.estimate_run_id}
    # Without a store the estimate behind a plan is not saved: no id that cannot be opened.
    assert inf.estimate_run_id is None and "saved as" not in format_plan(inf)
    assert "-estimate-" in tr.estimate_run_id
    for plan in (inf, tr):
        data = json.loads(json.dumps(plan.to_dict()))
        assert data["figures"] == "estimate" and data["schema_version"] == 1
        text = format_plan(plan)
        assert text.startswith("ESTIMATE") and "ESTIMATE:" in text
    assert json.loads(json.dumps(inf.to_dict()))["device_map"] == inf.device_map


def _cli_common():
    """engine.cli's shared sweep/fit options (``common``, nested in ``_add_sweep_parsers``)."""
    for const in cli._add_sweep_parsers.__code__.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == "common":
            if not const.co_freevars:
                return types.FunctionType(const, vars(cli))
    return None


def _parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="memlens")
    ap.add_argument("--store", default=None)
    sub = ap.add_subparsers(dest="command")
    add_cli_parser(sub, _cli_common())
    return ap.parse_args(argv)


def test_cli_plan_prints_tables_json_and_errors(tmp_path, capsys) -> None:
    assert _cli_common() is not None, "engine.cli's common options are found"
    out = tmp_path / "plan.json"
    args = _parse(["plan", "--model", TINY, "--workload", "generate", "--seq", "32",
                   "--new-tokens", "4", "--devices", "2", "--per-device", "400KiB",
                   "--cpu-offload", "1MiB", "--strategy", "sequential", "--out", str(out)])
    assert run_cli(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("ESTIMATE — inference plan") and "cuda:1" in text
    assert json.loads(out.read_text())["kind"] == "inference_plan"
    args = _parse(["plan", "--model", TINY, "--workload", "train", "--seq", "16", "--ranks",
                   "2", "--per-device", "80GiB", "--json"])
    assert run_cli(args) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "training_plan"
    # the short dtype forms, as profile takes them
    assert _parse(["plan", "--master-dtype", "fp32"]).master_dtype == "float32"
    assert _parse(["plan", "--master-dtype", "BF16"]).master_dtype == "bfloat16"
    # an option the other kind of plan reads is refused, not ignored without a word
    for argv, words in [(["--workload", "forward", "--devices", "2", "--per-device", "1GiB",
                          "--replicas", "2", "--master-dtype", "fp32"],
                         "--replicas, --master-dtype apply to training plans"),
                        (["--workload", "train", "--ranks", "2", "--strategy", "balanced"],
                         "--strategy applies to inference plans")]:
        assert run_cli(_parse(["plan", "--model", TINY, *argv])) == 2  # the command line
        err = capsys.readouterr().err
        assert words in err and "hint: Leave" in err, err
    for bad, words in [(["--devices", "0", "--per-device", "80GiB"], "--devices"),
                       (["--devices", "2", "--per-device", "eighty"], "--per-device"),
                       (["--devices", "2", "--per-device", "8GiB", "--strategy", "fast"],
                        "strategy"),
                       (["--devices", "2"], "--per-device")]:
        args = _parse(["plan", "--model", TINY, "--workload", "generate", *bad])
        assert run_cli(args) == 1
        err = capsys.readouterr().err
        assert "memlens: error:" in err and "hint:" in err and words in err, err


def test_cli_plan_default_sequence_fits_the_model(capsys) -> None:
    """Without --seq a plan takes 2048 tokens, or what fits the model's positions if fewer (the
    demo has 512): `memlens plan --devices 2 --per-device 1GiB` refused its own default."""
    from engine.distributed import DEFAULT_SEQ, _default_seq

    assert _default_seq(_parse(["plan", "--model", "demo"])) == 512
    assert "sequence 512 (the model has 512 positions" in capsys.readouterr().err
    args = _parse(["plan", "--model", "demo", "--workload", "generate", "--new-tokens", "12"])
    assert _default_seq(args) == 500
    assert "less 12 new tokens" in capsys.readouterr().err
    assert _default_seq(_parse(["plan", "--model", "preset:llama-3-8b"])) == DEFAULT_SEQ
    assert _default_seq(_parse(["plan", "--model", "/no/such/folder"])) == DEFAULT_SEQ
    assert capsys.readouterr().err == ""  # nothing said when the default stands
    assert _parse(["plan", "--seq", "64"]).seq == 64


def test_tied_embeddings_are_counted_once():
    """The demo's LM head shares the embedding matrix: one tensor, as in the loaded model."""
    from engine.models import load_model

    real = load_model(RunConfig(model="demo")).model
    real_bytes = sum(p.numel() * p.element_size() for p in real.parameters())
    plan = plan_training(RunConfig(model="demo", workload="train", seq=16), 2)
    assert plan is not None and plan.model_params_bytes == real_bytes
    inference = plan_inference(RunConfig(model="demo", workload="forward", seq=16), 2, "1GiB")
    buffers = sum(b.numel() * b.element_size() for b in real.buffers())
    assert inference.model_weights_bytes == real_bytes + buffers


def test_the_max_memory_to_paste_stays_short_and_means_the_same() -> None:
    """1,024 devices wrote a 17,600-character line; the code pasted must give the same dict."""
    from engine.distributed import _max_memory_code

    budgets = {**{str(i): 80 * 2**30 for i in range(1024)}, "cpu": 5 * 2**30}
    code = _max_memory_code(budgets)
    assert len(code) < 80
    assert eval(code) == {**{i: "81920MiB" for i in range(1024)}, "cpu": "5120MiB"}  # noqa: S307
    assert _max_memory_code({"0": 2**31, "1": 2**30}) == "{0: '2048MiB', 1: '1024MiB'}"


def test_a_training_plan_refuses_ranks_and_devices_that_disagree_and_says_why_not_cast(capsys):
    """--ranks 2 --devices 4 planned 2 ranks without a word; --opt cast was refused with the
    reason for quantization (values, packed formats), not a cast's."""
    from engine import cli

    assert cli.main(["plan", "--model", "preset:tiny-llama", "--workload", "train", "--seq",
                     "16", "--ranks", "2", "--devices", "4"]) == cli.EXIT_FAILED
    assert "--ranks 2 and --devices 4 disagree" in capsys.readouterr().err
    assert cli.main(["plan", "--model", "preset:tiny-llama", "--workload", "train", "--seq",
                     "16", "--ranks", "2", "--opt", "cast"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "takes the weights' dtype from --dtype" in err and "packs them" not in err
