"""Estimate mode: fake-tensor builds run through the measured runs' instrumentation.

The accuracy tests run the same config and workload twice, once measured (``execute``, real
weights on the CPU) and once estimated (fake tensors), and compare the peak and every per-layer
figure. The contract is "within 1%"; the figures are in fact identical today, and a difference
shows which layer and field moved.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex

import psutil
import pytest
import torch

import resources
from engine import cli
from engine.config import RunConfig
from engine.errors import ErrorKind, MemLensError
from engine.estimate import LIMITATIONS_ESTIMATE, estimate
from engine.results import SCHEMA_VERSION, RunResult
from engine.runner import execute
from engine.store import RunStore

from .helpers import Collector

DEMO_CONFIG = str(resources.demo_model_path() / "config.json")
LLAMA_3_70B_PARAMETERS = 70_553_706_496  # Meta's published count for Llama 3 70B

LAYER_FIELDS = ("parameters", "weights_bytes", "activation_bytes", "saved_for_backward_bytes",
                "kv_cache_bytes", "gradient_bytes", "optimizer_state_bytes",
                "transient_peak_bytes", "flops", "at_peak_bytes")
TOTAL_FIELDS = ("peak_bytes", "attributed_bytes", "weights_bytes", "activation_bytes",
                "kv_cache_bytes", "gradient_bytes", "optimizer_state_bytes", "temporary_bytes",
                "model_weights_bytes", "flops")


def _config(model: str, workload: str, attention: str = "sdpa", **kw) -> RunConfig:
    # Training warms up as a default run does: the first step leaves the optimizer state the
    # memory pass then sees, which the estimate must reproduce.
    base = dict(model=model, workload=workload, seq=16, new_tokens=3, attention_impl=attention,
                repeats=1, warmup=1 if workload == "train" else 0, sample_hz=10.0)
    base.update(kw)
    return RunConfig(**base)


def _estimate_ok(config: RunConfig) -> RunResult:
    events = Collector()
    result = estimate(config, events)
    assert result is not None, events.failed
    return result


def _off(a, b) -> float:
    """Relative difference of two figures (0 when both are equal, including both None)."""
    if a == b:
        return 0.0
    if a is None or b is None:
        return float("inf")
    return abs(a - b) / max(abs(b), 1)


def _differences(est: RunResult, real: RunResult) -> list[str]:
    out = []
    for f in TOTAL_FIELDS:
        a, b = getattr(est.totals, f), getattr(real.totals, f)
        if _off(a, b) > 0.01:
            out.append(f"totals.{f}: estimate {a} vs measured {b}")
    for phase, b in real.phase_peaks.items():
        if _off(est.phase_peaks.get(phase), b) > 0.01:
            out.append(f"phase peak {phase}: estimate {est.phase_peaks.get(phase)} vs {b}")
    assert [x.name for x in est.layers] == [x.name for x in real.layers]
    for a, b in zip(est.layers, real.layers):
        for f in LAYER_FIELDS:
            if _off(getattr(a, f), getattr(b, f)) > 0.01:
                out.append(f"{a.name}.{f}: estimate {getattr(a, f)} vs measured {getattr(b, f)}")
    return out


CASES = [
    # grouped-query attention (Llama: every workload and kernel), dense attention (GPT-2), an
    # encoder (BERT), a sliding-window config (Mistral), Qwen2 and the demo model's own config.
    *[("preset:tiny-llama", w, a) for w in ("forward", "generate", "train")
      for a in ("sdpa", "eager")],
    ("preset:tiny-gpt2", "forward", "sdpa"),
    ("preset:tiny-gpt2", "generate", "eager"),
    ("preset:tiny-gpt2", "train", "sdpa"),
    ("preset:tiny-bert", "forward", "eager"),
    ("preset:tiny-bert", "train", "sdpa"),
    ("preset:tiny-mistral", "generate", "sdpa"),
    # Qwen2: biased q/k/v projections and tied embeddings
    ("preset:tiny-qwen", "forward", "eager"),
    ("preset:tiny-qwen", "train", "sdpa"),
    (DEMO_CONFIG, "generate", "sdpa"),
    (DEMO_CONFIG, "train", "eager"),
]


@pytest.mark.parametrize(("model", "workload", "attention"), CASES,
                         ids=[f"{m.rsplit('/', 2)[-2] if '/' in m else m}-{w}-{a}"
                              for m, w, a in CASES])
def test_estimate_matches_a_measured_cpu_run(model: str, workload: str, attention: str) -> None:
    config = _config(model, workload, attention)
    events = Collector()
    real = execute(config, events)
    assert real is not None, events.failed
    est = _estimate_ok(_config(model, workload, attention))
    assert est.totals.peak_bytes > est.totals.model_weights_bytes > 0
    assert not _differences(est, real), "\n".join(_differences(est, real))
    assert est.totals.reconciles()
    if workload == "generate":
        assert est.generation["kv_cache_bytes"] == real.generation["kv_cache_bytes"] > 0
        assert est.generation["kv_bytes_per_step"] == real.generation["kv_bytes_per_step"]
    if workload == "train":
        for key in ("saved_for_backward_bytes", "gradient_bytes", "optimizer_state_bytes"):
            assert est.training[key] == real.training[key] > 0


def _opts(*specs: str) -> list[dict]:
    from engine.optimizations import parse_spec

    return [parse_spec(s) for s in specs]


OPTIMIZED = [
    # (workload, optimizations, the library it needs): each one swaps parameters, adds modules
    # or reads weights on the fake model, and must still give the measured run's figures.
    ("forward", ("cast:dtype=bfloat16",), None),
    ("generate", ("cast:dtype=float16", "prune-heads:groups=1"), None),
    ("train", ("lora",), "peft"),
    ("train", ("lora:rank=4,targets=all-linear", "checkpointing"), "peft"),
    ("train", ("cast:dtype=bfloat16", "lora"), "peft"),
    ("forward", ("torchao-int8",), "torchao"),
    ("generate", ("torchao-int8:activations=dynamic",), "torchao"),
    ("forward", ("quanto-weights:weights=qint8",), "optimum.quanto"),
    ("generate", ("torchao-fp8",), "torchao"),
    ("forward", ("prune-unstructured:amount=0.5",), None),
    ("train", ("prune-unstructured:permanent=true",), None),
    ("train", ("prune-ffn", "prune-heads"), None),
]


@pytest.mark.parametrize(("workload", "specs", "library"), OPTIMIZED,
                         ids=[f"{w}-{'+'.join(s)}" for w, s, _ in OPTIMIZED])
def test_optimized_estimate_matches_a_measured_cpu_run(workload, specs, library) -> None:
    """Optimizations applied to the fake model by their own code (casts and peft's adapters
    convert fake parameters, quantizers make fake packed tensors) give the measured figures."""
    if library:
        pytest.importorskip(library)
    config = _config("preset:tiny-llama", workload, optimizations=_opts(*specs))
    events = Collector()
    real = execute(config, events)
    assert real is not None, events.failed
    est = _estimate_ok(_config("preset:tiny-llama", workload, optimizations=_opts(*specs)))
    assert not _differences(est, real), "\n".join(_differences(est, real))
    assert est.totals.reconciles()
    for a, b in zip(est.optimizations, real.optimizations):
        assert a["id"] == b["id"] and a["modules_touched"] == b["modules_touched"]
        assert a["weights_bytes_after"] == b["weights_bytes_after"]
    if workload == "train":
        for key in ("gradient_bytes", "optimizer_state_bytes"):
            assert est.training[key] == real.training[key] > 0


@pytest.mark.parametrize(("model", "attention", "opts", "skipped"), [
    ("preset:tiny-llama", "sdpa", [], 6),
    ("preset:tiny-gpt2", "eager", [], 6),
    # a preallocated cache: every step has the same shapes
    ("preset:tiny-llama", "sdpa", [{"id": "kv-cache", "params": {"policy": "static"}}], 6),
    # fp8 states are appended as they come (the scale is frozen): they grow as a dynamic cache
    ("preset:tiny-llama", "sdpa", [{"id": "kv-cache", "params": {"policy": "fp8"}}], 6),
])
def test_long_generation_estimates_skip_middle_steps_exactly(model, attention, opts,
                                                             skipped) -> None:
    """8 decode steps: the estimate runs the first and the last on a grown cache, and still
    equals the measured run in every figure, FLOPs and per-step KV bytes included."""
    config = _config(model, "generate", attention, new_tokens=9, optimizations=opts)
    real = execute(config, Collector())
    est = _estimate_ok(_config(model, "generate", attention, new_tokens=9, optimizations=opts))
    assert est.generation.get("skipped_decode_steps") == skipped
    assert est.totals.peak_bytes == real.totals.peak_bytes
    assert est.totals.flops == real.totals.flops
    assert [x.flops for x in est.layers] == [x.flops for x in real.layers]
    assert [x.at_peak_bytes for x in est.layers] == [x.at_peak_bytes for x in real.layers]
    assert est.generation["kv_bytes_per_step"] == real.generation["kv_bytes_per_step"]
    assert not _differences(est, real), "\n".join(_differences(est, real))
    assert any("were not run" in x for x in est.limitations) == bool(skipped)


@pytest.mark.parametrize(("window", "skipped"), [(64, 6), (20, 0)])
def test_sliding_window_generation_skips_steps_only_within_the_window(tmp_path, window,
                                                                      skipped) -> None:
    """A sliding-window cache (Mistral's) is a growing one until it holds window - 1
    positions: a generation inside the window skips the middle steps (a 7B Mistral estimate of
    32 new tokens ran every step, 38 s), one that outgrows it runs every step; both equal the
    measured run."""
    import json as _json

    import resources

    data = dict(resources.preset_config("tiny-mistral"))
    data.pop("_memlens", None)
    data["sliding_window"] = window
    path = tmp_path / "config.json"
    path.write_text(_json.dumps(data), encoding="utf-8")
    config = _config(str(path), "generate", "sdpa", new_tokens=9)  # 16 + 8 cached at the end
    real = execute(config, Collector())
    est = _estimate_ok(_config(str(path), "generate", "sdpa", new_tokens=9))
    assert (est.generation.get("skipped_decode_steps") or 0) == skipped
    assert est.totals.peak_bytes == real.totals.peak_bytes
    assert est.totals.flops == real.totals.flops
    assert est.generation["kv_bytes_per_step"] == real.generation["kv_bytes_per_step"]
    assert not _differences(est, real), "\n".join(_differences(est, real))


def test_estimate_of_the_demo_folder_matches_its_measured_run() -> None:
    """The demo loads real trained weights and tokenizes sample text; the estimate reads only
    its config.json and uses fake ids of the same length."""
    real = execute(_config("demo", "forward"))
    est = _estimate_ok(_config("demo", "forward"))
    assert real.inputs["source"] == "sample text"
    assert est.inputs["source"].startswith("fake ids")
    assert not _differences(est, real), "\n".join(_differences(est, real))


def test_estimate_is_labelled_and_latency_is_not_estimated(tmp_path) -> None:
    result = _estimate_ok(_config("preset:tiny-llama", "train", repeats=3))
    assert result.is_estimate and "FakeTensorMode" in result.estimate["method"]
    assert "estimate" in result.run_id
    assert result.totals.peak_source == "fake_tensor_accounting"
    t = result.totals
    assert t.latency_ms is None and t.plain_latency_ms is None and t.tokens_per_s is None
    assert t.instrumentation_overhead is None and t.process_rss_peak_bytes is None
    assert all(layer.latency_ms is None for layer in result.layers)
    assert result.timing is None and result.training["loss"] is None
    assert result.limitations == LIMITATIONS_ESTIMATE
    assert any("Latency is not estimated" in x for x in result.limitations)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["schema_version"] == SCHEMA_VERSION == 2
    assert data["estimate"]["pass_seconds"] > 0 and data["totals"]["latency_ms"] is None
    store = RunStore(tmp_path)
    loaded = store.load(store.save(result))
    assert loaded.is_estimate and loaded.estimate == result.estimate
    assert loaded.totals.peak_bytes == result.totals.peak_bytes


def test_a_schema_1_run_file_reads_as_measured() -> None:
    measured = execute(_config("preset:tiny-llama", "forward", warmup=0))
    old = measured.to_dict()
    del old["estimate"]
    old["schema_version"] = 1
    again = RunResult.from_dict(old)
    assert not again.is_estimate and again.schema_version == 2
    assert again.totals.peak_bytes == measured.totals.peak_bytes


def test_70b_forward_estimate_uses_no_real_memory() -> None:
    rss_before = psutil.Process().memory_info().rss
    result = _estimate_ok(RunConfig(model="preset:llama-3-70b", workload="forward", seq=128,
                                    dtype="bfloat16"))
    assert psutil.Process().memory_info().rss - rss_before < 1024**3  # the weights: 131 GiB
    assert result.model_info["parameters"] == LLAMA_3_70B_PARAMETERS
    # parameters in bfloat16, plus the rotary tables (float32 buffers of a few hundred bytes)
    assert 0 < result.totals.model_weights_bytes - 2 * LLAMA_3_70B_PARAMETERS < 4096
    assert result.totals.weights_bytes == result.totals.model_weights_bytes  # all live at peak
    assert result.totals.peak_bytes > result.totals.model_weights_bytes
    blocks = [x for x in result.layers if x.kind == "block"]
    assert len(blocks) == 80 and len({x.transient_peak_bytes for x in blocks}) == 1
    # a forward FLOP count of 2 * parameters * tokens for the matmuls, plus attention
    assert result.totals.flops >= 2 * 128 * (LLAMA_3_70B_PARAMETERS - 128256 * 8192)


@pytest.mark.fault(area="inputs", case="a model too large for this machine, then its estimate",
                   outcome="the too_large hint names a memlens estimate command, which runs")
def test_too_large_hint_names_an_estimate_command_that_works(tmp_path, capsys) -> None:
    from engine.models import load_model

    with pytest.raises(MemLensError) as info:
        load_model(RunConfig(model="preset:llama-3-70b", dtype="bfloat16", seq=16))
    err = info.value
    assert err.kind is ErrorKind.TOO_LARGE and "planned" not in err.hint
    command = re.search(r"memlens estimate [^()]*?(?=$| \(|\.$)", err.hint).group(0)
    assert "--model preset:llama-3-70b" in command and "--dtype bfloat16" in command
    argv = shlex.split(command)[1:]
    assert cli.main(["--store", str(tmp_path)] + argv) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("ESTIMATE") and "LlamaForCausalLM · 70.6 G parameters" in out


def test_cli_estimate_table_json_save_and_runs(tmp_path, capsys) -> None:
    store = ["--store", str(tmp_path)]
    assert cli.main(store + ["estimate", "--model", "preset:tiny-llama", "--workload",
                             "generate", "--seq", "16", "--new-tokens", "3", "--dtype",
                             "bf16", "--save"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("ESTIMATE — no weights, no real memory")
    assert "bfloat16" in out and "estimated peak" in out and "reconciles" in out
    assert "not estimated: latency" in out and "saved (as an estimate)" in out
    assert "limitation: Latency is not estimated" in out
    header = next(line for line in out.splitlines() if line.startswith("layer "))
    assert "KV at end" in header and " ms " not in header  # no latency column: none measured
    assert cli.main(["--store", str(tmp_path / "other"), "profile", "--model",
                     "preset:tiny-bert", "--seq", "16", "--repeats", "1"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines()
                  if line.startswith("layer "))
    assert "KV" not in header and " ms " in header  # an encoder has no cache: no column
    assert cli.main(store + ["estimate", "--model", "preset:tiny-bert", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["estimate"] is not None and data["totals"]["latency_ms"] is None
    assert cli.main(store + ["profile", "--model", "preset:tiny-llama", "--seq", "16",
                             "--repeats", "1"]) == 0
    capsys.readouterr()
    assert cli.main(store + ["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "1 estimate(s)" in lines[0]
    assert "on disk" in lines[-1]  # the store's size ends the list
    kinds = {line.split()[0]: line.split()[1] for line in lines[2:-1]}
    assert sorted(kinds.values()) == ["estimate", "measured"]
    assert all(("-estimate-" in rid) == (kind == "estimate") for rid, kind in kinds.items())
    assert cli.main(store + ["runs", "--json"]) == 0
    assert sorted(r["kind"] for r in json.loads(capsys.readouterr().out)) == ["estimate",
                                                                              "measured"]
    est_id = next(rid for rid, kind in kinds.items() if kind == "estimate")
    assert cli.main(store + ["show", est_id]) == 0
    assert capsys.readouterr().out.startswith("ESTIMATE")


@pytest.mark.fault(area="inputs", case="estimate of an unknown preset or a Hub id",
                   outcome="not_found listing the presets / not_applicable asking for a local "
                           "config.json; nothing is built")
def test_estimate_refuses_unknown_models_with_the_fix(capsys) -> None:
    assert cli.main(["estimate", "--model", "preset:llama-9"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "Unknown preset 'llama-9'" in err and "llama-3-70b" in err
    assert "importing libraries" not in err  # refused before anything is imported or built
    events = Collector()
    assert estimate(RunConfig(model="meta-llama/Meta-Llama-3-8B"), events) is None
    assert events.failed.kind == "not_applicable" and "config.json" in events.failed.hint
    # A missing path's hint offers what estimation reads (the loader's also offers Hub ids).
    assert cli.main(["estimate", "--model", "./no-such-folder"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "No such file or folder" in err and "Hub id" not in err and "preset:" in err


# Without optimum-quanto its techniques are refused for the missing package first (tested in
# test_optim_libraries); these cases need it installed to reach the estimate's own refusal.
NEEDS_QUANTO = pytest.mark.skipif(importlib.util.find_spec("optimum") is None
                                  or importlib.util.find_spec("optimum.quanto") is None,
                                  reason="optimum-quanto is not installed")


@pytest.mark.parametrize(("change", "kind", "words"), [
    (dict(optimizations=[{"id": "int8-dynamic", "params": {}}]), "not_applicable",
     "read the weights' values"),
    (dict(optimizations=[{"id": "compile", "params": {}}]), "not_applicable", "eager graph"),
    pytest.param(dict(optimizations=[{"id": "quanto-weights", "params": {"weights": "qint4"}}]),
                 "not_applicable", "quanto-weights:weights=qint4", marks=NEEDS_QUANTO),
    pytest.param(dict(workload="generate", optimizations=[{"id": "kv-cache",
                                                           "params": {"policy": "quanto-int2"}}]),
                 "not_applicable", "memlens profile", marks=NEEDS_QUANTO),
    (dict(prompt="hello"), "invalid_workload", "--seq"),
    (dict(attention_maps=True), "not_applicable", "memlens profile"),
    (dict(seq=300), "invalid_workload", "at most 256"),
    (dict(model="preset:tiny-bert", workload="generate"), "not_applicable", "forward or train"),
])
def test_estimate_refuses_what_it_cannot_estimate(change, kind, words) -> None:
    events = Collector()
    config = _config("preset:tiny-llama", "forward")
    for key, value in change.items():
        setattr(config, key, value)
    assert estimate(config, events) is None
    assert events.failed.kind == kind and words in (events.failed.message + events.failed.hint)


@pytest.mark.fault(area="load", case="a model whose code FakeTensorMode cannot run (a value read "
                                     "or a data-dependent shape)",
                   outcome="not_applicable naming the operator and the model code line; "
                           "suggests memlens profile on a smaller config")
@pytest.mark.parametrize("read", ["value", "shape"])
def test_estimate_names_the_operator_fake_tensors_cannot_run(monkeypatch, read) -> None:
    from transformers.models.llama import modeling_llama

    original = modeling_llama.LlamaMLP.forward

    def forward(self, x):
        if read == "value":
            float(x.detach().sum())  # .item(): needs data
        else:
            torch.nonzero(x)  # output shape depends on data
        return original(self, x)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", forward)
    events = Collector()
    assert estimate(_config("preset:tiny-llama", "forward"), events) is None
    failed = events.failed
    op = "aten._local_scalar_dense" if read == "value" else "aten.nonzero"
    assert failed.kind == "not_applicable" and op in failed.message
    assert "test_estimate.py" in failed.message and "memlens profile" in failed.hint


def test_tensor_parallel_estimate_splits_what_the_architecture_declares() -> None:
    """Rank 0 of 2 ranks of tensor parallelism (transformers' base_model_tp_plan through
    PyTorch's parallelize_module on a fake process group): the blocks' projections and the head
    hold half their weights, embeddings and norms all of theirs; the KV cache holds half the
    key/value heads; training keeps gradients and AdamW state of the local shards."""
    import torch.distributed as dist

    one = _estimate_ok(_config("preset:tiny-llama", "generate"))
    events = Collector()
    two = estimate(_config("preset:tiny-llama", "generate"), events, tensor_parallel=2)
    assert two is not None, events.failed
    assert not dist.is_initialized(), "the fake process group is destroyed"
    a, b = ({x.name: x for x in r.layers} for r in (one, two))
    for name in ("model.layers.0.self_attn", "model.layers.1.mlp", "lm_head"):
        assert b[name].weights_bytes * 2 == a[name].weights_bytes, name
    for name in ("model.embed_tokens", "model.norm"):
        assert b[name].weights_bytes == a[name].weights_bytes, name
    assert two.generation["kv_cache_bytes"] * 2 == one.generation["kv_cache_bytes"]
    assert two.totals.reconciles() and two.totals.peak_bytes < one.totals.peak_bytes
    assert two.estimate["tensor_parallel"] == 2 and "-estimate-tp2-" in two.run_id
    # the rank's parameters are its shards' elements, as its bytes are (it counted every
    # shard whole: more parameters than the model has)
    assert two.totals.parameters < one.totals.parameters
    assert two.totals.parameters * 4 == sum(x.weights_bytes for x in two.layers
                                            if x.name != "model.rotary_emb")
    assert all(x.flops is None for x in two.layers)  # not estimated, and said so
    assert any(line.startswith("Tensor parallelism: rank 0 of 2") for line in two.limitations)
    train = estimate(_config("preset:tiny-llama", "train"), Collector(), tensor_parallel=2)
    assert train.training["gradient_bytes"] == train.totals.model_weights_bytes - sum(
        x.weights_bytes for x in train.layers if x.name == "model.rotary_emb")


@pytest.mark.parametrize(("model", "tp", "opts", "words"), [
    ("preset:tiny-gpt2", 2, [], "declares no tensor-parallel plan"),
    ("preset:tiny-llama", 4, [], "num_key_value_heads = 2 does not split over 4 ranks"),
    ("preset:tiny-llama", 2, [{"id": "lora", "params": {}}], "lora replaces or reshapes"),
    ("preset:tiny-llama", 0, [], "1 or more ranks"),
])
def test_tensor_parallel_refusals_name_the_fix(model, tp, opts, words) -> None:
    import torch.distributed as dist

    events = Collector()
    workload = "train" if opts else "forward"
    assert estimate(_config(model, workload, optimizations=opts), events,
                    tensor_parallel=tp) is None
    assert words in events.failed.message and events.failed.hint
    assert not dist.is_initialized()


def test_a_16_bit_config_built_in_float32_says_how_it_ships(tmp_path) -> None:
    """--dtype auto builds a config in float32; when the config says bfloat16 (as the presets
    of real checkpoints do), the estimate and the measured run say so, and how to count it as
    shipped: doubled weights are a trap when sizing a model beyond this machine."""
    from engine.models import _preset_values

    path = tmp_path / "config.json"
    path.write_text(json.dumps({**_preset_values("tiny-llama"), "torch_dtype": "bfloat16"}))
    for run in (estimate, execute):
        auto = run(RunConfig(model=str(path), seq=8, repeats=1))
        assert auto is not None and auto.model_info["dtype"] == "float32"
        assert any("its config says it ships in bfloat16: --dtype bfloat16" in w
                   for w in auto.warnings), auto.warnings
        shipped = run(RunConfig(model=str(path), seq=8, repeats=1, dtype="bfloat16"))
        assert not any("ships in" in w for w in shipped.warnings)
        assert shipped.totals.model_weights_bytes < auto.totals.model_weights_bytes


def test_a_training_step_says_which_dtype_its_optimizer_state_is_in(capsys) -> None:
    """A bfloat16 model's AdamW moments are bfloat16 (pure 16-bit training): half of what
    mixed precision keeps in float32. The 70B train estimate said neither."""
    base = ["estimate", "--model", "preset:tiny-llama", "--workload", "train", "--seq", "8"]
    assert cli.main(base + ["--dtype", "bf16", "--json"]) == cli.EXIT_OK
    training = json.loads(capsys.readouterr().out)["training"]
    dtypes = training["optimizer_state_dtypes"]
    assert list(dtypes) == ["bfloat16"]
    # every moment counted (a step count, one scalar per parameter, is left out)
    assert 0 < training["optimizer_state_bytes"] - dtypes["bfloat16"] < 4096
    assert cli.main(base + ["--dtype", "bf16"]) == cli.EXIT_OK
    assert "(in bfloat16, as the parameters: pure 16-bit training" in capsys.readouterr().out
    assert cli.main(base) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "optimizer state" in out and "(in float32)" in out


@pytest.mark.parametrize(("workload", "opts"), [
    ("forward", []), ("train", []), ("train", [{"id": "lora"}]),
    ("train", [{"id": "freeze-base"}])])
def test_a_mixture_of_experts_estimate_in_float32_matches_its_measured_run(workload, opts,
                                                                          tmp_path):
    """PyTorch's fake grouped_mm takes bfloat16 only, while the CPU kernel a real run uses
    takes float32: Mixtral estimated in float32 failed as a MemLens bug. A stand-in with the
    real operator's allocations (and its gradients' layout) now gives the measured bytes."""
    import json as _json

    path = tmp_path / "config.json"
    path.write_text(_json.dumps({
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 64,
        "intermediate_size": 96, "max_position_embeddings": 256, "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "num_local_experts": 4,
        "num_experts_per_tok": 2, "vocab_size": 200, "tie_word_embeddings": False}),
        encoding="utf-8")
    config = _config(str(path), workload, dtype="float32", seq=12, optimizations=opts)
    real = execute(config, Collector())
    assert real is not None
    est = _estimate_ok(config)
    assert est.totals.peak_bytes == real.totals.peak_bytes
    assert not _differences(est, real), "\n".join(_differences(est, real))
    # the experts' matmuls have no FLOP formula: said in both, not silently missing
    assert any("aten._grouped_mm" in w for w in est.warnings), est.warnings


def test_dynamic_rope_scaling_is_refused_with_a_fix_that_applies(tmp_path):
    """Its refusal told the user to try another attention implementation, which changes
    nothing: the rope scaling reads the positions' values."""
    import json as _json

    import resources

    data = dict(resources.preset_config("tiny-llama"))
    data.pop("_memlens", None)
    data["rope_scaling"] = {"rope_type": "dynamic", "factor": 2.0}
    path = tmp_path / "config.json"
    path.write_text(_json.dumps(data), encoding="utf-8")
    events = Collector()
    assert estimate(_config(str(path), "forward"), events) is None
    failed = events.failed
    assert failed.kind == "not_applicable" and "modeling_rope_utils" in failed.message
    assert "no rope_scaling, or rope_type" in failed.hint and "attention" not in failed.hint


@pytest.mark.parametrize("seq", [12, 24])  # within and past original_max_position_embeddings
def test_a_longrope_estimate_matches_its_measured_run_row_by_row(seq, tmp_path):
    """longrope's first forward keeps a long_inv_freq tensor: the measured run has it from its
    reference pass, the estimate made it in its memory pass and counted it as an activation
    (model.rotary_emb: 64 bytes of weights against 96 measured)."""
    import json as _json

    path = tmp_path / "config.json"
    path.write_text(_json.dumps({
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 64,
        "intermediate_size": 128, "max_position_embeddings": 256,
        "original_max_position_embeddings": 16, "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 256,
        "pad_token_id": 0, "tie_word_embeddings": False,
        "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 8,
                         "long_factor": [2.0] * 8}}), encoding="utf-8")
    config = _config(str(path), "forward", dtype="float32", seq=seq)
    real = execute(config, Collector())
    assert real is not None
    est = _estimate_ok(config)
    rows = {layer.name: layer for layer in real.layers}
    for layer in est.layers:
        assert layer.at_peak == rows[layer.name].at_peak, layer.name
    assert est.totals.peak_bytes == real.totals.peak_bytes
