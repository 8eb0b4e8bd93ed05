"""The optimization registry: each technique applies, changes bytes as it must, or refuses."""

from __future__ import annotations

import io
import json

import pytest
import torch

from engine import cli
from engine.errors import ErrorKind, MemLensError
from engine.optimizations import REGISTRY, parse_spec, resolve
from engine.runner import execute
from engine.store import RunStore

from .helpers import Collector, tiny

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 64, 128, 2, 4, 2, 16, 256


def run(opts, **kw):
    events = Collector()
    result = execute(tiny(optimizations=opts, **kw), events)
    assert result is not None, events.failed
    return result


# Output rows of every Linear but the head (q, k, v, o; gate, up, down): one scale each when
# quantized per row.
LINEAR_OUT_ROWS = LAYERS * (HEADS * HEAD_DIM * 2 + KV_HEADS * HEAD_DIM * 2 + 2 * INTER + HIDDEN)


def linear_weight_bytes(dtype_bytes=4):
    per_block = (HIDDEN * HEADS * HEAD_DIM * 2 + HIDDEN * KV_HEADS * HEAD_DIM * 2
                 + 3 * HIDDEN * INTER)
    return LAYERS * per_block * dtype_bytes


# -- registry and validation ----------------------------------------------------------------------
def test_registry_entries_are_complete():
    assert len(REGISTRY) >= 9
    for ident, opt in REGISTRY.items():
        assert ident == opt.id and opt.name and opt.summary and opt.category
        json.dumps(opt.describe())
        assert opt.parse_params({}) == opt.defaults()


def test_parse_spec():
    assert parse_spec("cast:dtype=float16") == {"id": "cast", "params": {"dtype": "float16"}}
    assert parse_spec("prune-unstructured:amount=0.3, permanent=true") == {
        "id": "prune-unstructured", "params": {"amount": "0.3", "permanent": "true"}}
    with pytest.raises(MemLensError):
        parse_spec("cast:float16")
    with pytest.raises(MemLensError) as info:  # (the last one silently won)
        parse_spec("prune-unstructured:amount=0.1,amount=0.5")
    assert "amount is given twice" in info.value.message


@pytest.mark.parametrize("opts, workload, device, kind, fragment", [
    ([{"id": "turbo"}], "forward", "cpu", ErrorKind.INVALID_WORKLOAD, "Unknown optimization"),
    ([{"id": "cast", "params": {"dtype": "int3"}}], "forward", "cpu",
     ErrorKind.INVALID_WORKLOAD, "dtype must be one of"),
    ([{"id": "prune-unstructured", "params": {"amount": "1.5"}}], "forward", "cpu",
     ErrorKind.INVALID_WORKLOAD, "amount must be"),
    ([{"id": "prune-unstructured", "params": {"amount": "nan"}}], "forward", "cpu",
     ErrorKind.INVALID_WORKLOAD, "amount must be a finite number"),  # (nan passed the range)
    ([{"id": "lora", "params": {"rank": "1.5"}}], "train", "cpu",
     ErrorKind.INVALID_WORKLOAD, "rank must be a whole number"),
    ([{"id": "cast", "params": {"colour": "red"}}], "forward", "cpu",
     ErrorKind.INVALID_WORKLOAD, "no parameter colour"),
    ([{"id": "checkpointing"}], "forward", "cpu", ErrorKind.NOT_APPLICABLE, "train workload"),
    ([{"id": "kv-cache"}], "train", "cpu", ErrorKind.NOT_APPLICABLE, "generate"),
    ([{"id": "int8-dynamic"}], "forward", "cuda", ErrorKind.NOT_APPLICABLE, "needs cpu"),
    ([{"id": "int8-dynamic"}], "train", "cpu", ErrorKind.NOT_APPLICABLE, "not train"),
    ([{"id": "cast"}, {"id": "int8-dynamic"}], "forward", "cpu", ErrorKind.NOT_APPLICABLE,
     "conflicts"),
    ([{"id": "cast"}, {"id": "cast"}], "forward", "cpu", ErrorKind.INVALID_WORKLOAD, "twice"),
    # CUDA-only techniques name the hardware they need and what to use instead
    ([{"id": "torchao-int4"}], "forward", "cpu", ErrorKind.NOT_APPLICABLE,
     "compute capability 8.0 or newer (tinygemm's int4 kernels); this run is on cpu: on a "
     "CPU, quanto-weights:weights=qint4 stores 4-bit weights"),
    ([{"id": "sparsity-24"}], "generate", "cpu", ErrorKind.NOT_APPLICABLE, "sparse tensor cores"),
    ([{"id": "torchao-fp8", "params": {"activations": "dynamic"}}], "forward", "cpu",
     ErrorKind.NOT_APPLICABLE, "8.9 or newer (fp8 matmuls)"),
    ([{"id": "kv-cache", "params": {"policy": "offloaded"}}], "generate", "cpu",
     ErrorKind.NOT_APPLICABLE, "offloaded needs a CUDA device"),
    ([{"id": "torchao-int4"}], "forward", "cuda:0", ErrorKind.NOT_APPLICABLE,
     "needs a CUDA GPU" if not torch.cuda.is_available() else "torchao-int4"),
])
@pytest.mark.fault(area='inputs', case='an unknown, misconfigured, inapplicable or conflicting optimization',
                   outcome='refused before loading, naming the reason')
def test_refusals_name_the_reason(opts, workload, device, kind, fragment):
    with pytest.raises(MemLensError) as e:
        resolve(opts, workload, device)
    assert e.value.kind == kind and fragment in e.value.message and e.value.hint


def test_a_refusal_happens_before_loading():
    events = Collector()
    assert execute(tiny(optimizations=[{"id": "checkpointing"}]), events) is None
    assert events.failed.kind == ErrorKind.NOT_APPLICABLE.value
    assert not any(getattr(e, "stage", "") == "load" for e in events.events)


def test_model_level_refusal_after_loading():
    events = Collector()
    opts = [{"id": "drop-blocks", "params": {"count": LAYERS}}]
    assert execute(tiny(optimizations=opts), events) is None
    assert events.failed.kind == ErrorKind.NOT_APPLICABLE.value
    assert "at least one must stay" in events.failed.message
    # ...and before the unoptimized baseline is measured: a refusal costs no measurement
    # (it cost a whole baseline, minutes for a large model on a lent GPU).
    stages = {getattr(e, "stage", "") for e in events.events}
    assert "baseline" not in stages and "memory" not in stages, stages
    # Keeping every block trainable freezes nothing of the base: refused the same way
    events = Collector()
    opts = [{"id": "freeze-base", "params": {"train_last_blocks": LAYERS}}]
    assert execute(tiny(workload="train", optimizations=opts), events) is None
    assert "which is not freezing the base" in events.failed.message
    assert f"use at most {LAYERS - 1}" in events.failed.message


def test_fp8_dynamic_activations_refuse_weights_other_than_bfloat16():
    """torchao asserts it deep inside quantize_ (an 'internal error' before this check)."""
    from engine.optimizations import REGISTRY as registry

    fp8 = registry["torchao-fp8"]
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    reason = fp8.check_model(model, {"activations": "dynamic"})
    assert reason and "--dtype bfloat16" in reason
    assert fp8.check_model(model, {"activations": "weight-only"}) is None
    assert fp8.check_model(model.to(torch.bfloat16), {"activations": "dynamic"}) is None


# -- techniques ------------------------------------------------------------------------------------
def test_cast_halves_the_weights_and_reports_quality():
    r = run([{"id": "cast", "params": {"dtype": "bfloat16"}}])
    applied = r.optimizations[0]
    assert applied["weights_bytes_after"] * 2 == applied["weights_bytes_before"]
    assert r.totals.model_weights_bytes == applied["weights_bytes_after"]
    assert r.deltas["model_weights_bytes"] == -applied["weights_bytes_after"]
    assert r.baseline["peak_bytes"] > r.totals.peak_bytes
    assert 0 <= r.quality["kl_divergence"] < 0.05 and r.quality["top1_agreement"] > 0.8
    # The dtype shown is the measured model's, and the loaded one beside it.
    assert (r.model_info["dtype"], r.model_info["loaded_dtype"]) == ("bfloat16", "float32")


def test_int8_dynamic_linear_weights_are_a_quarter():
    r = run([{"id": "int8-dynamic"}])
    a = r.optimizations[0]
    linear = linear_weight_bytes()
    assert a["modules_touched"] == LAYERS * 7
    assert a["weights_bytes_before"] - a["weights_bytes_after"] == linear - linear // 4
    assert r.quality["kl_divergence"] >= 0
    assert any("quantized" in op for op in r.totals.flops_uncounted_ops)
    # Quantizing removes no parameter: packed weights count (they read 396 K of 2.53 M).
    from engine.models import load_model

    plain = load_model(tiny()).model
    assert r.model_info["parameters"] == sum(p.numel() for p in plain.parameters())
    # ... in the rows and the module tree too (they summed to the 396 K left as parameters)
    assert sum(x.parameters for x in r.layers) == r.model_info["parameters"]
    root = next(m for m in r.model_info["module_tree"]["modules"] if m["name"] == "")
    assert root["parameters"] == r.model_info["parameters"]
    # The packed int8 weights are opaque to the dispatch mode, yet counted once at the peak by
    # their owners (exclusive rows), so the peak holds every weight byte and still reconciles.
    t = r.totals
    assert t.weights_bytes == t.model_weights_bytes == sum(x.weights_bytes for x in r.layers)
    assert t.reconciles() and t.peak_bytes >= t.model_weights_bytes
    assert {x.kind for x in r.layers} >= {"attention", "mlp"}  # sub-blocks still tracked
    assert any("Packed int8 weights" in note for note in r.limitations)
    # The module tree names the quantized Linears as changed by this optimization.
    tree = r.model_info["module_tree"]
    touched = [m for m in tree["modules"] if "int8-dynamic" in m["touched_by"]]
    assert touched and all(m["name"].startswith("model.layers.") for m in touched)
    assert {m["type"] for m in touched} >= {"Linear"}
    assert any("quantized" in m["class_path"] for m in touched)
    # ... once each: their new _packed_params children are part of that change, so the tree
    # counts as many modules changed as the optimization does
    assert len(touched) == r.optimizations[0]["modules_touched"]
    assert not any(m["name"].endswith("_packed_params") for m in touched)


def test_unstructured_pruning_raises_memory_until_permanent():
    r = run([{"id": "prune-unstructured", "params": {"amount": 0.5}}])
    a = r.optimizations[0]
    linear = linear_weight_bytes()
    # weight_orig + a float weight_mask + the recomputed weight: two extra dense copies
    assert a["weights_bytes_after"] - a["weights_bytes_before"] == 2 * linear
    assert any("raised the model's weight memory" in w for w in r.warnings)
    assert r.deltas["peak_bytes"] > 0
    permanent = run([{"id": "prune-unstructured",
                      "params": {"amount": 0.5, "permanent": True}}])
    p = permanent.optimizations[0]
    assert p["weights_bytes_after"] == p["weights_bytes_before"]
    assert any("saved no memory" in w for w in permanent.warnings)
    assert any("CSR" in note for note in p["notes"])
    assert permanent.quality["kl_divergence"] > 0


def test_drop_blocks_removes_weights_and_keeps_generation_working():
    r = run([{"id": "drop-blocks", "params": {"count": 1}}], workload="generate")
    a = r.optimizations[0]
    block = linear_weight_bytes() // LAYERS + 2 * HIDDEN * 4  # + two RMSNorm weights
    assert a["weights_bytes_before"] - a["weights_bytes_after"] == block
    assert r.model_info["num_layers"] == LAYERS - 1
    assert len(r.generation["kv_bytes_per_layer"]) == LAYERS - 1
    assert sum(1 for layer in r.layers if layer.kind == "block") == LAYERS - 1


def test_attention_switch_is_measured():
    r = run([{"id": "attention", "params": {"impl": "eager"}}], seq=96)
    assert r.model_info["attn_implementation"] == "eager"
    assert r.quality["kl_divergence"] < 1e-4
    attn = next(layer for layer in r.layers if layer.kind == "attention")
    assert attn.transient_peak_bytes >= HEADS * 96 * 96 * 4  # the score matrix is materialised


def test_checkpointing_cuts_saved_activations():
    r = run([{"id": "checkpointing"}], workload="train", seq=64)
    base_saved = r.baseline["layers"]  # per-layer summary exists
    assert base_saved
    saved = sum(layer.saved_for_backward_bytes for layer in r.layers)
    plain = run([], workload="train", seq=64)
    assert saved < 0.5 * plain.training["saved_for_backward_bytes"]
    assert r.quality["kl_divergence"] == 0.0  # same weights, measured before training
    # The baseline's saved-for-backward and phase peaks are kept, so the saving is said where
    # the peak (in the backward or optimizer step) does not move: "saved no memory" was
    # printed beside a saved-for-backward cut to a sixth.
    assert r.baseline["saved_for_backward_bytes"] == plain.training["saved_for_backward_bytes"]
    assert r.deltas["saved_for_backward_bytes"] < 0
    assert r.baseline["phase_peaks"]["forward"] > r.phase_peaks["forward"]
    from engine.format import against_baseline

    assert any(p.startswith("saved for backward ") and "(−" in p for p in against_baseline(r))
    assert not any("saved no memory" in w for w in r.warnings), r.warnings
    if r.deltas["peak_bytes"] == 0:
        assert any("lowered saved for backward" in w and "but not the peak" in w
                   for w in r.warnings), r.warnings


def test_freeze_base_keeps_gradients_for_the_head_only():
    r = run([{"id": "freeze-base"}], workload="train")
    head = VOCAB * HIDDEN * 4
    assert r.training["gradient_bytes"] == head
    assert head * 2 <= r.training["optimizer_state_bytes"] <= head * 2 + 8
    assert r.deltas["optimizer_state_bytes"] < 0


def test_static_kv_cache_preallocates_prompt_plus_new_tokens():
    r = run([{"id": "kv-cache", "params": {"policy": "static"}}], workload="generate", seq=20,
            new_tokens=5)
    expected = 2 * 1 * KV_HEADS * HEAD_DIM * (20 + 5) * 4
    attn = [layer for layer in r.layers if layer.kind == "attention"]
    # keys + values, plus the few bytes of bookkeeping tensors a static layer keeps
    assert all(expected <= layer.kv_cache_bytes <= expected + 64 for layer in attn)
    steps = r.generation["kv_bytes_per_step"]
    assert len(steps) > 1 and len(set(steps)) == 1  # no growth: preallocated
    out = io.StringIO()
    cli.print_report(r, out)
    assert "after every step: allocated up front" in out.getvalue(), out.getvalue()
    assert "grew" not in out.getvalue()


def test_autocast_runs_and_is_compared():
    r = run([{"id": "autocast"}])
    assert r.optimizations[0]["weights_bytes_after"] == r.optimizations[0]["weights_bytes_before"]
    assert r.quality["kl_divergence"] >= 0 and r.deltas["latency_ratio"] > 0


def test_a_plain_run_records_its_own_perplexity():
    r = execute(tiny(model="demo", seq=32))
    assert r.quality["perplexity"] == pytest.approx(r.quality["baseline_perplexity"])
    assert 1 < r.quality["perplexity"] < 200  # a trained model, not a uniform guess (2048)
    assert r.baseline is None and r.deltas is None


def test_cli_optimizations_and_compare(tmp_path, capsys):
    assert cli.main(["optimizations", "--workload", "train", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "checkpointing" in out and "train: applies" in out
    assert "int8-dynamic" in out and "not train" in out
    # the order rules are listed with the techniques they bind (they were said only on refusal)
    assert ("order: after prune-ffn and prune-heads when chosen with them (--opt prune-ffn "
            "--opt lora)") in out
    # --model checks each technique against the model too (built on fake tensors), and a
    # choice refused here is named under a technique that applies with its default
    assert cli.main(["optimizations", "--workload", "generate", "--device", "cpu", "--model",
                     "preset:tiny-llama"]) == 0
    out = capsys.readouterr().out
    assert "checked against preset:tiny-llama" in out
    sections = {block.split("  —  ")[0]: block for block in out.split("\n\n")}
    assert "generate: applies with impl=eager (not with the default: the model already uses " \
        "sdpa)" in sections["attention"]
    assert "no — LlamaForCausalLM has no sliding-window setting" in sections["sliding-window"]
    assert "but not policy=offloaded: offloaded needs a CUDA device" in sections["kv-cache"]
    assert cli.main(["optimizations", "--model", "no/such/place/x"]) == cli.EXIT_FAILED
    assert "No such file or folder" in capsys.readouterr().err
    store = ["--store", str(tmp_path)]
    assert cli.main(store + ["profile", "--model", "demo", "--seq", "32", "--repeats", "1"]) == 0
    assert cli.main(store + ["profile", "--model", "demo", "--seq", "32", "--repeats", "1",
                             "--opt", "cast:dtype=bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "applied Cast weights (cast:dtype=bfloat16)" in out  # as --opt, runs and compare
    assert "KL(baseline ‖ this)" in out
    ids = [s.run_id for s in RunStore(tmp_path).list()]
    assert cli.main(store + ["compare", *reversed(ids)]) == 0
    out = capsys.readouterr().out
    assert "cast:dtype=bfloat16" in out and "Δ[1]" in out and "total (peak)" in out
    # Whole layer names (they were cut to their last 23 characters: 'odel.layers.0.self_attn').
    assert "\nmodel.layers.0.self_attn " in out, out
    assert "bfloat16 (loaded in float32)" not in out  # compare names the measured dtype
    assert "demo forward b1 s32 cpu bfloat16; optimizations: cast" in out, out
    # the cast run's own in-process ratio is given beside the ratio between the saved runs
    cast = RunStore(tmp_path).load(ids[0])
    assert f"[1] ×{cast.deltas['latency_ratio']:.2f}; the ratio above" in out, out
    assert "KL, in nats per token, is against its own unoptimized model" in out
    # An estimate among the compared runs says so on its line (only its run id did).
    assert cli.main(store + ["estimate", "--model", "demo", "--seq", "32", "--save"]) == 0
    estimate_id = next(s.run_id for s in RunStore(tmp_path).list() if s.run_id not in ids)
    capsys.readouterr()
    assert cli.main(store + ["compare", ids[0], estimate_id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "ESTIMATE" in lines[1] and "ESTIMATE" not in lines[0], lines[:2]


def test_torchao_int8_weight_only_counts_inner_int8_data():
    pytest.importorskip("torchao")
    r = run([{"id": "torchao-int8"}])
    a = r.optimizations[0]
    linear = linear_weight_bytes()
    # int8 data (a quarter of fp32) plus a float32 scale and an int8 zero point per output row
    assert a["weights_bytes_before"] - a["weights_bytes_after"] == (
        linear - linear // 4 - LINEAR_OUT_ROWS * (4 + 1))
    assert r.quality["kl_divergence"] < 0.01
    assert r.totals.reconciles()


def test_torchao_fp8_weight_only_stores_one_byte_per_weight():
    """fp8 weights run on a CPU (dequantized per matmul): one byte per Linear weight plus a
    float32 scale per output row, measured; the run says the CPU has no fp8 arithmetic."""
    pytest.importorskip("torchao")
    r = run([{"id": "torchao-fp8"}])
    a = r.optimizations[0]
    linear = linear_weight_bytes()
    assert a["weights_bytes_before"] - a["weights_bytes_after"] == (
        linear - linear // 4 - LINEAR_OUT_ROWS * 4)
    assert any("no fp8 arithmetic" in n for n in a["notes"])
    assert 0 < r.quality["kl_divergence"] < 0.01
    assert r.totals.reconciles()


def test_two_of_four_mask_keeps_the_two_largest_of_every_four():
    from engine.optimizations import _two_of_four

    w = torch.tensor([[0.1, -3.0, 2.0, 0.0, 5.0, 4.0, -6.0, 1.0]])
    mask = _two_of_four(w)
    assert mask.tolist() == [[False, True, True, False, True, False, True, False]]
    big = torch.randn(64, 128)
    m = _two_of_four(big)
    assert (m.reshape(-1, 4).sum(1) == 2).all()  # exactly two of every four kept
    kept = (big.abs() * m).reshape(-1, 4)
    dropped = (big.abs() * ~m).reshape(-1, 4)
    assert (kept.max(1).values >= dropped.max(1).values).all()


def test_a_gpu_run_counts_only_gpu_storages():
    """On a CUDA run what stays in CPU memory (an offloaded KV cache) is not GPU memory: the
    accountant counts the run's device only (fake CUDA tensors need no GPU)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from engine.accounting import TensorAccountant

    with FakeTensorMode():
        gpu_only, every = TensorAccountant(only_device="cuda"), TensorAccountant()
        with gpu_only, every:
            on_gpu = torch.empty(1000, device="cuda")
            in_ram = torch.empty(1000)
        assert gpu_only.peak == 4096  # 4000 B in the CUDA allocator's 512-byte blocks
        assert every.peak == 4096 + 4000
        del on_gpu, in_ram


def test_lora_trains_only_the_adapters():
    pytest.importorskip("peft")
    r = run([{"id": "lora", "params": {"rank": 4, "targets": "attention"}}], workload="train")
    a = r.optimizations[0]
    # rank-4 A (in x 4) and B (4 x out) for q, k, v, o in every block, float32
    per_block = 4 * ((HIDDEN + HEADS * HEAD_DIM) * 2 + (HIDDEN + KV_HEADS * HEAD_DIM) * 2)
    adapters = LAYERS * per_block * 4
    assert a["weights_bytes_after"] - a["weights_bytes_before"] == adapters
    assert r.training["gradient_bytes"] == adapters
    assert 2 * adapters <= r.training["optimizer_state_bytes"] <= 2 * adapters + 8 * 64
    assert r.quality["kl_divergence"] == 0.0  # B starts at zero: the model is unchanged
    assert r.deltas["optimizer_state_bytes"] < 0


@pytest.mark.fault(area='environment', case='an optional library missing (peft, torchao, optimum-quanto)',
                   outcome="the optimization is unavailable, with 'pip install ...'")
def test_missing_optional_library_is_reported_with_the_install_hint(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(MemLensError) as e:
        resolve([{"id": "lora"}], "train", "cpu")
    assert "pip install peft" in e.value.message


def test_prune_ffn_removes_whole_channels():
    r = run([{"id": "prune-ffn", "params": {"amount": 0.25}}])
    a = r.optimizations[0]
    removed = INTER // 4  # channels per MLP
    assert a["weights_bytes_before"] - a["weights_bytes_after"] == LAYERS * 3 * removed * HIDDEN * 4
    assert r.deltas["peak_bytes"] < 0
    assert r.quality["kl_divergence"] > 0


def test_prune_heads_removes_kv_groups_and_shrinks_the_cache():
    r = run([{"id": "prune-heads", "params": {"groups": 1}}], workload="generate", seq=16,
            new_tokens=4)
    a = r.optimizations[0]
    q_per_kv = HEADS // KV_HEADS
    per_layer = (2 * q_per_kv * HEAD_DIM * HIDDEN + 2 * HEAD_DIM * HIDDEN) * 4  # q, o + k, v
    assert a["weights_bytes_before"] - a["weights_bytes_after"] == LAYERS * per_layer
    positions = r.generation["cached_positions"]
    one_group = 2 * (KV_HEADS - 1) * HEAD_DIM * positions * 4
    assert all(layer.kv_cache_bytes == one_group for layer in r.layers if layer.kind == "attention")
    with pytest.raises(MemLensError):
        resolve([{"id": "prune-heads", "params": {"groups": 0}}], "forward", "cpu")


@pytest.mark.parametrize("spec", [{"id": "prune-ffn"}, {"id": "prune-heads"}])
def test_structured_pruning_keeps_the_dtype(spec):
    r = run([spec], dtype="bfloat16")
    a = r.optimizations[0]
    assert a["weights_bytes_after"] < a["weights_bytes_before"]
    assert r.model_info["dtype"] == "bfloat16"


def test_sliding_window_bounds_the_kv_cache():
    r = run([{"id": "sliding-window", "params": {"window": 16}}], model="preset:tiny-mistral",
            workload="generate", seq=40, new_tokens=6)
    base = run([], model="preset:tiny-mistral", workload="generate", seq=40, new_tokens=6)
    per_pos = 2 * KV_HEADS * HEAD_DIM * 4
    attn = [layer for layer in r.layers if layer.kind == "attention"]
    assert all(layer.kv_cache_bytes <= 16 * per_pos + 64 for layer in attn)
    assert all(layer.kv_cache_bytes == 45 * per_pos
               for layer in base.layers if layer.kind == "attention")
    assert r.generation["kv_cache_bytes"] < base.generation["kv_cache_bytes"] / 2
    assert r.quality["kl_divergence"] > 0  # tokens beyond the window are no longer seen


def test_sliding_window_refused_where_attention_is_always_global():
    events = Collector()
    assert execute(tiny(optimizations=[{"id": "sliding-window"}]), events) is None
    assert "no sliding-window setting" in events.failed.message


@pytest.mark.fault(area='inputs', case='flex attention (runs only compiled: tensor accounting cannot see into it)',
                   outcome='refused before any measurement, as --attention and as the attention optimization, naming sdpa and eager')
def test_flex_attention_is_refused_with_the_reason():
    """transformers compiles flex_attention with fullgraph=True, and compiled code cannot run
    under a TorchDispatchMode: it failed as "a MemLens bug" halfway through a run."""
    from engine.config import RunConfig

    with pytest.raises(MemLensError) as info:
        RunConfig(model="demo", attention_impl="flex_attention").validate()
    assert "only as a torch.compile'd kernel" in info.value.message and "sdpa" in info.value.hint
    events = Collector()
    assert execute(tiny(optimizations=[{"id": "attention", "params": {"impl": "flex_attention"}}]),
                   events) is None
    assert events.failed.kind == ErrorKind.NOT_APPLICABLE.value
    assert "cannot be measured" in events.failed.message and "impl=sdpa" in events.failed.message
    stages = {getattr(e, "stage", "") for e in events.events}
    assert "baseline" not in stages and "memory" not in stages, stages


def test_fp8_kv_cache_is_a_quarter_and_its_quality_shows_in_generation():
    import transformers.cache_utils as cache_utils

    if not hasattr(cache_utils, "Fp8QuantizedLayer"):  # transformers 5.17: refused (next test)
        pytest.skip("this transformers has no fp8 quantized cache")
    r = run([{"id": "kv-cache", "params": {"policy": "fp8"}}], workload="generate", seq=40,
            new_tokens=6)
    positions = r.generation["cached_positions"]
    fp32 = 2 * KV_HEADS * HEAD_DIM * positions * 4
    for layer in (la for la in r.layers if la.kind == "attention"):
        assert fp32 // 4 <= layer.kv_cache_bytes <= fp32 // 4 + 64  # 1-byte values + scales
    assert 0.0 <= r.quality["generated_token_agreement"] <= 1.0


def test_fp8_kv_cache_refused_by_a_transformers_without_it(monkeypatch):
    # transformers 5.17 (the H200's) has QuantizedCache but no fp8 backend: refused before the
    # run, naming the version and the fix, not an error from inside generation.
    import transformers.cache_utils as cache_utils

    monkeypatch.delattr(cache_utils, "Fp8QuantizedLayer", raising=False)
    events = Collector()
    config = tiny(optimizations=[{"id": "kv-cache", "params": {"policy": "fp8"}}],
                  workload="generate")
    assert execute(config, events) is None
    assert "fp8 needs a transformers newer than" in events.failed.message
    assert "pip install -U transformers" in events.failed.message


# torchao compiles its optimizer step with inductor, which trips torch's own deprecations
# (torch.jit.script_method) and asks subclasses for a caching hash: torch's business, not ours.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*_stable_hash_for_caching:UserWarning")
def test_low_bit_optimizer_state_is_counted_by_its_real_bytes():
    pytest.importorskip("torchao")
    r = run([{"id": "low-bit-optimizer", "params": {"bits": "8"}}], workload="train", warmup=1)
    fp32_state = r.baseline["optimizer_state_bytes"]
    assert r.training["optimizer"] == "AdamW8bit"
    # two moments in one byte per value (plus blockwise scales) instead of four
    assert r.training["optimizer_state_bytes"] < 0.4 * fp32_state
    assert r.totals.optimizer_state_bytes < 0.4 * fp32_state
    # by the dtypes that hold the bytes (the subclass says float32: "(in float32)" was shown)
    dtypes = r.training["optimizer_state_dtypes"]
    assert dtypes.get("uint8", 0) > 0.5 * sum(dtypes.values()), dtypes
    assert any("compiled code" in w for w in r.warnings)
    assert r.totals.reconciles()


def test_every_conflict_is_listed_on_both_sides():
    """`memlens optimizations` shows each technique's conflicts: a pair refused together is
    listed under both (cast showed only int8-dynamic, while torchao-int8 refused cast)."""
    for opt in REGISTRY.values():
        for other in opt.conflicts:
            assert opt.id in REGISTRY[other].conflicts, (opt.id, other)
    with pytest.raises(MemLensError) as info:
        resolve([{"id": "cast"}, {"id": "torchao-int8"}], "forward", "cpu")
    assert "conflicts with torchao-int8: torchao-int8 sets the weights' formats" in \
        info.value.message
    # every pair says why ("cast conflicts with autocast." did not)
    from engine.optimizations import conflict_reason

    for opt in REGISTRY.values():
        for other in opt.conflicts:
            assert not conflict_reason(opt.id, other).startswith("they change"), (opt.id, other)


def test_the_module_tree_and_the_optimizations_count_the_same_modules():
    """A report said "Attention implementation: 6 modules changed" above a tree that said
    "Changed no module: attention", and cast changed 57 modules in its table but 58 in the
    tree (the rotary embedding's float buffer, cast by model.to, was not counted)."""
    r = run([{"id": "cast", "params": {"dtype": "bfloat16"}},
             {"id": "attention", "params": {"impl": "eager"}}])
    tree = r.model_info["module_tree"]
    counts = {a["id"]: a["modules_touched"] for a in r.optimizations}
    cast = [m for m in tree["modules"] if "cast" in m["touched_by"]]
    assert len(cast) == counts["cast"] > 0
    assert any(m["name"].endswith("rotary_emb") for m in cast)
    # the attention implementation changes how the attention modules run, not the modules
    assert counts["attention"] > 0 and "attention" not in tree["whole_run"]
    assert tree["behaviour_only"] == {"attention": counts["attention"]}


def test_combinations_that_crashed_are_refused_before_anything_loads():
    """Found by running every pair on tiny models: each crashed with an internal error in the
    optimize or quality stage. Now refused by name, with the other choice named."""
    from engine.errors import MemLensError
    from engine.optimizations import resolve

    for selected, workload, words in [
        # quantized::linear_dynamic takes float32 only; autocast gave it bfloat16
        ([{"id": "autocast"}, {"id": "int8-dynamic"}], "forward", "int8-dynamic"),
        # Float8Tensor has no linalg_vector_norm to rank channels or heads by
        ([{"id": "torchao-fp8"}, {"id": "prune-ffn"}], "forward", "put prune-ffn first"),
        ([{"id": "torchao-fp8"}, {"id": "prune-heads"}], "generate", "put prune-heads first"),
        # the model check ran before sliding-window made the layers local
        ([{"id": "sliding-window", "params": {"window": 4}},
          {"id": "kv-cache", "params": {"policy": "fp8"}}], "generate", "sliding-window"),
    ]:
        with pytest.raises(MemLensError) as info:
            resolve(selected, workload, "cpu")
        assert info.value.kind == "not_applicable" and words in info.value.message, selected
    with pytest.raises(MemLensError) as info:  # one level of parentheses, a workload named once
        resolve([{"id": "lora"}], "forward", "cpu")
    assert info.value.message == "LoRA adapters, peft (lora) applies to the train workload, not forward."
    with pytest.raises(MemLensError) as info:  # every problem, not only the first
        resolve([{"id": "lora"}, {"id": "checkpointing"}, {"id": "autocast"},
                 {"id": "int8-dynamic"}], "forward", "cpu")
    message = info.value.message
    assert message.startswith("3 problems: ") and "(lora) applies to the train" in message
    assert "(checkpointing) applies to the train" in message
    assert message.count("conflicts with") == 1, message  # a pair is said once
    assert "Remove it" in info.value.hint and "separately" in info.value.hint
    # pruning first, then quantizing, works (the pruned weights are quantized)
    assert len(resolve([{"id": "prune-ffn"}, {"id": "torchao-fp8"}], "forward", "cpu")) == 2
    # after int8-dynamic, prune-ffn found no nn.Linear and pruned nothing, silently; after
    # torchao-int8 it crashed (no norm for Int8Tensor); after LoRA, prune-heads found no plain
    # projection: each is refused in that order, before anything loads
    # (and after sparsity-24, prune's .float() fails on the semi-structured weights; after
    # freeze-base, prune_linear_layer's new layers came back trainable)
    for first, later, workload in (("int8-dynamic", "prune-ffn", "forward"),
                                   ("torchao-int8", "prune-heads", "generate"),
                                   ("lora", "prune-heads", "train"),
                                   ("sparsity-24", "prune-ffn", "forward"),
                                   ("freeze-base", "prune-ffn", "train")):
        with pytest.raises(MemLensError) as info:
            resolve([{"id": first}, {"id": later}], workload, "cpu")
        assert f"put {later} first" in info.value.message, info.value.message
        if first != "sparsity-24":  # (CUDA only: on this machine refused for the device too)
            assert len(resolve([{"id": later}, {"id": first}], workload, "cpu")) == 2
    # autocast has nothing to lower once the weights are cast, in either order
    for pair in (["cast", "autocast"], ["autocast", "cast"]):
        with pytest.raises(MemLensError, match="conflicts with"):
            resolve([{"id": i} for i in pair], "forward", "cpu")
    # a full-attention cache with sliding-window still goes
    assert len(resolve([{"id": "sliding-window", "params": {"window": 4}},
                        {"id": "kv-cache", "params": {"policy": "static"}}],
                       "generate", "cpu")) == 2


def test_the_registry_order_is_one_every_order_rule_accepts():
    """The app applies what is ticked in registry order, and has no way to reorder: no pair in
    that order may be refused for its order ("put X first")."""
    import itertools

    for a, b in itertools.combinations(REGISTRY, 2):
        for workload in ("forward", "generate", "train"):
            try:
                resolve([{"id": a}, {"id": b}], workload, "cpu")
            except MemLensError as exc:
                assert " first (" not in exc.message, (a, b, exc.message)


def test_pruning_before_int8_dynamic_quantizes_the_pruned_weights():
    pruned = run([{"id": "prune-ffn", "params": {"amount": 0.25}}])
    both = run([{"id": "prune-ffn", "params": {"amount": 0.25}}, {"id": "int8-dynamic"}])
    quantized = both.optimizations[1]
    assert quantized["weights_bytes_before"] == pruned.optimizations[0]["weights_bytes_after"]
    only_int8 = run([{"id": "int8-dynamic"}]).optimizations[0]
    # every Linear is quantized, pruned ones included, and the pruned channels stay gone
    assert quantized["modules_touched"] == only_int8["modules_touched"] > 0
    saved_by_pruning = (pruned.optimizations[0]["weights_bytes_before"]
                        - pruned.optimizations[0]["weights_bytes_after"])
    # int8: the pruned channels' float32 bytes shrink to a quarter too
    assert only_int8["weights_bytes_after"] - quantized["weights_bytes_after"] == saved_by_pruning // 4
    assert both.totals.reconciles()


def test_a_technique_that_no_longer_applies_after_an_earlier_one_is_refused():
    """apply_all checks each technique again on the model the earlier ones changed, so one that
    would find nothing to act on is refused instead of touching nothing and saying nothing (the
    resolve-time rules cover the known pairs; this is the net under them)."""
    import torch

    from engine.config import RunConfig
    from engine.models import load_model
    from engine.optimizations import REGISTRY, apply_all

    model = load_model(RunConfig(model="preset:tiny-llama", seq=8)).model
    chosen = [(REGISTRY["lora"], REGISTRY["lora"].defaults()),
              (REGISTRY["prune-heads"], REGISTRY["prune-heads"].defaults())]
    with pytest.raises(MemLensError) as info:
        apply_all(model, chosen, torch.device("cpu"))
    assert info.value.kind == "not_applicable"
    assert "(prune-heads) does not apply after lora" in info.value.message
    assert "change its settings as the reason says, or remove it" in info.value.hint


def test_choices_that_measure_nothing_are_refused():
    """prune-unstructured with amount 0 zeroed nothing, yet ran as if a technique had been
    measured."""
    from engine.errors import MemLensError
    from engine.optimizations import REGISTRY, parse_spec

    with pytest.raises(MemLensError, match="amount must be ≥ 0.01"):
        REGISTRY["prune-unstructured"].parse_params(parse_spec("prune-unstructured:amount=0")
                                                    ["params"])
    # checkpointing every 1000th block still checkpoints block 0 (transformers takes the
    # blocks whose index is a multiple of every_n): one block, counted as one, not 2 // 1000
    r = run([{"id": "checkpointing", "params": {"every_n": 1000}}], workload="train")
    assert r.optimizations[0]["modules_touched"] == 1


def test_a_quantized_cache_on_a_model_with_a_sliding_window_in_its_config_is_refused(tmp_path):
    """Mistral lists no layer_types, only sliding_window: transformers builds sliding cache
    layers from it, and QuantizedCache raised, shown as an internal error (a MemLens bug)."""
    import resources

    data = dict(resources.preset_config("tiny-mistral"))
    data.pop("_memlens", None)
    data["sliding_window"] = 64
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    events = Collector()
    assert execute(tiny(model=str(path), workload="generate", seq=16, new_tokens=2,
                        optimizations=[{"id": "kv-cache", "params": {"policy": "fp8"}}]),
                   events) is None
    failed = events.failed
    assert failed.kind == "not_applicable", failed
    assert "sliding_attention layers (its config sets sliding_window=64)" in failed.message
    assert "pick policy dynamic or static" in failed.message


def test_the_readme_table_lists_the_registry_in_its_order():
    """README's table is the app's order of application; it lagged behind the registry."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = text[text.index("<!-- registry:start -->"):text.index("<!-- registry:end -->")]
    rows = re.findall(r"^\| `([^`]+)` \| (.*) \|$", table, re.M)
    assert [ident for ident, _ in rows] == list(REGISTRY)
    for ident, summary in rows:
        assert summary == REGISTRY[ident].summary, ident


def test_an_optimizations_dtype_takes_the_short_names_that_dtype_takes():
    """--dtype bf16 was taken but --opt cast:dtype=bf16 refused."""
    from engine.optimizations import parse_spec, resolve

    ((_, params),) = resolve([parse_spec("cast:dtype=bf16")], "forward", "cpu")
    assert params["dtype"] == "bfloat16"
    ((_, params),) = resolve([parse_spec("autocast:dtype=FP16")], "forward", "cpu")
    assert params["dtype"] == "float16"
    with pytest.raises(MemLensError) as info:
        resolve([parse_spec("cast:dtype=fp64")], "forward", "cpu")
    assert "must be one of" in info.value.message


def test_a_perplexity_change_comes_with_its_interval():
    """A pruned model's perplexity below the baseline's on 127 predictions (27.83 vs 28.46)
    read as an improvement: the ratio comes with an approximate 95% interval from the paired
    per-token differences, and is said to be within the text's noise when it spans 1."""
    from engine.format import quality_parts
    from engine.quality import perplexity_ratio_interval

    torch.manual_seed(0)
    ids = torch.randint(0, 10, (1, 41))
    base = torch.log_softmax(torch.randn(40, 10), -1)
    assert perplexity_ratio_interval(base, base, ids) == pytest.approx((1.0, 1.0))
    worse = torch.log_softmax(base - 3.0 * torch.nn.functional.one_hot(ids[0, 1:], 10), -1)
    lo, hi = perplexity_ratio_interval(base, worse, ids)
    assert 1.0 < lo < hi  # every token worse: the interval is above 1
    noisy = torch.log_softmax(base + torch.randn(40, 10) * 0.3, -1)
    lo, hi = perplexity_ratio_interval(base, noisy, ids)
    assert lo < hi
    r = run([{"id": "cast", "params": {"dtype": "bfloat16"}}], model="demo", seq=32)
    q = r.quality
    lo, hi = q["perplexity_ratio_interval"]
    assert lo <= q["perplexity"] / q["baseline_perplexity"] <= hi
    assert q["predictions"] == q["tokens"] - 1
    text = "; ".join(quality_parts(q))
    assert "at 95% over" in text and f"{q['predictions']} predictions" in text
    same = dict(q, perplexity=q["baseline_perplexity"], perplexity_ratio_interval=[1.0, 1.0])
    assert "at 95%" not in "; ".join(quality_parts(same))  # identical: no noise to speak of
