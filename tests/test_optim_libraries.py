"""Optimizations backed by optional libraries beyond torchao and peft: optimum-quanto (weights and
KV cache), bitsandbytes' 8-bit AdamW, and torch.compile (compile time apart from the latency)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine import cli
from engine.errors import ErrorKind, MemLensError
from engine.optimizations import REGISTRY, resolve
from engine.results import RunResult
from engine.runner import execute

from .helpers import Collector, tiny

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 64, 128, 2, 4, 2, 16, 256
# Output features of every Linear but the head (q, k, v, o, gate, up, down) in one block.
LINEAR_SHAPES = [(HEADS * HEAD_DIM, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN),
                 (KV_HEADS * HEAD_DIM, HIDDEN), (HIDDEN, HEADS * HEAD_DIM),
                 (INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)]


def run(opts, **kw):
    events = Collector()
    result = execute(tiny(optimizations=opts, **kw), events)
    assert result is not None, events.failed
    return result


def refused(opts, workload="forward", device="cpu") -> MemLensError:
    with pytest.raises(MemLensError) as e:
        resolve(opts, workload, device)
    assert e.value.kind == ErrorKind.NOT_APPLICABLE and e.value.hint
    return e.value


# -- optimum-quanto --------------------------------------------------------------------------------
# 4- and 2-bit data is unpacked by a C++ extension that optimum-quanto compiles on its first use
# after installation (41 s alone, 99 s inside this test file, on a shared 2-core machine; then
# it loads in well under a second): whichever of these tests runs first on a fresh install pays
# it, once.
EXTENSION = pytest.mark.slow


@pytest.mark.parametrize("qtype, bits", [("qint8", 8),
                                         pytest.param("qint4", 4, marks=EXTENSION),
                                         pytest.param("qint2", 2, marks=EXTENSION)])
def test_quanto_weights_are_counted_by_their_integer_data_and_scales(qtype, bits):
    pytest.importorskip("optimum.quanto")
    r = run([{"id": "quanto-weights", "params": {"weights": qtype}}])
    a = r.optimizations[0]
    fp32 = LAYERS * sum(o * i for o, i in LINEAR_SHAPES) * 4
    rows = LAYERS * sum(o for o, _ in LINEAR_SHAPES)
    # Integer data at `bits` per value; a float32 scale per output row (int8), or a float32
    # scale and shift per group (the tiny model's rows are single groups); plus QLinear's two
    # scalar float32 buffers (input and output scale) per module.
    per_row = 4 if bits == 8 else 8
    after_linear = fp32 * bits // 32 + rows * per_row + LAYERS * len(LINEAR_SHAPES) * 2 * 4
    assert a["modules_touched"] == LAYERS * len(LINEAR_SHAPES)
    assert a["weights_bytes_before"] - a["weights_bytes_after"] == fp32 - after_linear
    t = r.totals
    assert t.model_weights_bytes == a["weights_bytes_after"]
    # At the peak, every quantized weight is charged to its layer as weights.
    assert t.weights_bytes == t.model_weights_bytes
    assert t.reconciles() and t.attributed_bytes + t.unattributed_bytes == t.peak_bytes
    assert r.deltas["peak_bytes"] < 0
    assert 0 < r.quality["kl_divergence"] < (0.01 if bits == 8 else 1.0)


def test_quanto_weights_conflict_with_other_quantizers_and_casts():
    pytest.importorskip("optimum.quanto")  # without it, refused for the missing package first
    for other in ("cast", "autocast", "torchao-int8", "int8-dynamic"):
        e = refused([{"id": "quanto-weights"}, {"id": other}])
        assert "conflicts" in e.message and other in e.message
    # slicing a QLinear gave float weights back: structured pruning goes first
    e = refused([{"id": "quanto-weights"}, {"id": "prune-ffn"}])
    assert "put prune-ffn first (prune, then quantize)" in e.message
    assert len(resolve([{"id": "prune-heads"}, {"id": "quanto-weights"}], "forward", "cpu")) == 2
    e = refused([{"id": "quanto-weights"}], workload="train")
    assert "not train" in e.message


def test_quanto_missing_is_unavailable_with_the_install_hint(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("optimum") else real(name, *a))
    for opts, workload in (([{"id": "quanto-weights"}], "forward"),
                           ([{"id": "kv-cache", "params": {"policy": "quanto-int2"}}],
                            "generate")):
        assert "pip install optimum-quanto" in refused(opts, workload).message


def test_quanto_extension_that_cannot_be_built_refuses_with_the_compiler_reason(monkeypatch):
    pytest.importorskip("optimum.quanto")
    from optimum.quanto.library.extensions import get_extension

    ext = get_extension("quanto_cpp")

    def broken(self):
        raise RuntimeError("Error building extension 'quanto_cpp': c++: command not found")

    monkeypatch.setattr(ext, "_lib", None)
    monkeypatch.setattr(type(ext), "lib", property(broken))
    events = Collector()
    assert execute(tiny(optimizations=[{"id": "quanto-weights",
                                        "params": {"weights": "qint4"}}]), events) is None
    assert events.failed.kind == ErrorKind.NOT_APPLICABLE.value
    assert "quanto_cpp" in events.failed.message and "command not found" in events.failed.message


@EXTENSION
@pytest.mark.parametrize("policy", ["quanto-int4", "quanto-int2"])
def test_quanto_kv_cache_is_smaller_than_float32_and_counted(policy):
    pytest.importorskip("optimum.quanto")
    r = run([{"id": "kv-cache", "params": {"policy": policy}}], workload="generate", seq=40,
            new_tokens=6)
    positions = r.generation["cached_positions"]
    fp32 = 2 * KV_HEADS * HEAD_DIM * positions * 4
    attn = [layer for layer in r.layers if layer.kind == "attention"]
    assert len(attn) == LAYERS
    # transformers keeps the newest tokens unquantized (its residual window); the prompt is
    # quantized, so each layer holds less than float32 keys and values would.
    for layer in attn:
        assert 0 < layer.kv_cache_bytes < fp32 * (0.6 if policy.endswith("int4") else 0.5)
    assert sum(layer.kv_cache_bytes for layer in attn) == r.generation["kv_cache_bytes"]
    assert r.deltas["kv_cache_bytes"] < 0 and r.totals.reconciles()
    assert 0.0 <= r.quality["generated_token_agreement"] <= 1.0
    # The quality text is decoded through the quantized cache (a cacheless forward read none
    # of it and always said KL 0, agreement 100%)
    q = r.quality
    assert "through the " + policy + " cache" in q["through_cache"]
    assert q["kl_divergence"] > 0 and "KL and top-1 agreement on the" in q["through_cache"]


def test_a_lossless_cache_policy_leaves_the_quality_as_it_was():
    """A static cache reads back exactly what was stored: through it, the distributions are
    the baseline's (the scoring path itself adds no difference)."""
    r = run([{"id": "kv-cache", "params": {"policy": "static"}}], workload="generate", seq=40,
            new_tokens=4)
    q = r.quality
    assert "through the static cache" in q["through_cache"]
    assert q["kl_divergence"] < 1e-6 and q["top1_agreement"] == 1.0


# -- bitsandbytes ----------------------------------------------------------------------------------
def _bnb_state_bytes(model_params: list[torch.Tensor], min_8bit: int = 4096) -> int:
    total, shared_maps = 0, 2 * 256 * 4  # two 256-entry float32 quantization maps, shared
    for p in model_params:
        n = p.numel()
        if n >= min_8bit:  # two uint8 moments and a float32 absmax per 256-value block each
            total += 2 * n + 2 * math.ceil(n / 256) * 4
        else:  # small parameters keep float32 moments
            total += 2 * n * 4
    return total + shared_maps


def test_bitsandbytes_8bit_adamw_state_is_counted_by_its_real_bytes():
    pytest.importorskip("bitsandbytes")
    from engine.config import RunConfig
    from engine.models import load_model

    r = run([{"id": "low-bit-optimizer", "params": {"backend": "bitsandbytes"}}],
            workload="train")
    assert r.training["optimizer"] == "AdamW8bit"
    assert r.training["optimizer_module"].startswith("bitsandbytes")
    params = list(load_model(RunConfig(model="preset:tiny-llama")).model.parameters())
    assert r.training["optimizer_state_bytes"] == _bnb_state_bytes(params)
    assert r.training["optimizer_state_bytes"] < 0.4 * r.baseline["optimizer_state_bytes"]
    assert r.deltas["optimizer_state_bytes"] < 0 and r.deltas["peak_bytes"] < 0
    assert r.totals.reconciles()
    assert not any("compiled code" in w for w in r.warnings)  # its step runs under accounting


def test_bitsandbytes_refusals_come_from_the_installed_library(monkeypatch):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    e = refused([{"id": "low-bit-optimizer", "params": {"backend": "bitsandbytes", "bits": "4"}}],
                workload="train")
    assert "AdamW4bit" in e.message and bnb.__version__ in e.message
    # A device for which the installed library registers no optimizer kernel is refused, naming
    # the op; the answer is read from torch's dispatcher, as on a real install.
    real = torch._C._dispatch_has_kernel_for_dispatch_key
    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key",
                        lambda op, key: False if op.startswith("bitsandbytes::")
                        else real(op, key))
    e = refused([{"id": "low-bit-optimizer", "params": {"backend": "bitsandbytes"}}],
                workload="train")
    assert "registers no CPU kernel" in e.message and "optimizer_update_8bit" in e.message


# -- torch.compile ---------------------------------------------------------------------------------
def test_compile_refusals():
    assert "CUDA" in refused([{"id": "compile", "params": {"mode": "reduce-overhead"}}]).message
    with pytest.raises(MemLensError):
        resolve([{"id": "compile", "params": {"dynamic": "sometimes"}}], "forward", "cpu")


@pytest.mark.slow
def test_compile_time_is_reported_apart_from_the_steady_state(tmp_path):
    import resources  # the tiny preset's config with one layer: the shortest compile

    config = json.loads(resources.path("presets/tiny-llama.json").read_text())
    config.pop("_memlens", None)
    config["num_hidden_layers"] = 1
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    r = run([{"id": "compile"}], model=str(path), seq=16, warmup=1, repeats=2)
    t, info = r.totals, r.timing["compile"]
    assert t.compile_seconds is not None and t.compile_seconds > 0
    assert info["first_call_ms"] == pytest.approx(t.compile_seconds * 1e3 + t.plain_latency_ms)
    assert t.plain_latency_ms == info["steady_ms"] and len(info["eager_plain_ms"]) == 2
    assert info["graphs_first_call"] >= 1
    assert t.compiled_peak_bytes is None  # CPU: no reliable figure, none invented
    assert any("eager (uncompiled) model" in x for x in r.limitations)
    assert any("No peak of the compiled model" in x for x in r.limitations)
    assert t.reconciles() and r.deltas["peak_bytes"] == 0  # memory: the eager model's
    assert r.quality["kl_divergence"] < 1e-4  # the compiled model's outputs
    back = RunResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.totals.compile_seconds == t.compile_seconds


@pytest.mark.slow
def test_static_shapes_while_generating_hit_the_recompile_limit_and_say_so(tmp_path):
    import resources

    config = json.loads(resources.path("presets/tiny-llama.json").read_text())
    config.pop("_memlens", None)
    config["num_hidden_layers"] = 1
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    r = run([{"id": "compile", "params": {"dynamic": "false"}}], model=str(path),
            workload="generate", seq=8, new_tokens=10)
    info = r.timing["compile"]
    from torch._dynamo import config as dynamo_config

    assert info["graphs_first_call"] == dynamo_config.recompile_limit  # one graph per shape
    assert info["recompile_limit_hits"] >= 1
    assert any("recompile limit" in w and "ran eager" in w for w in r.warnings)


def test_runs_saved_before_compile_read_its_figures_as_unmeasured():
    r = run([])
    d = r.to_dict()
    for key in ("compile_seconds", "compiled_peak_bytes"):
        assert d["totals"][key] is None
        del d["totals"][key]
    back = RunResult.from_dict(d)
    assert back.totals.compile_seconds is None and back.totals.compiled_peak_bytes is None


# -- listing ---------------------------------------------------------------------------------------
def test_memlens_optimizations_lists_the_new_techniques(capsys):
    assert cli.main(["optimizations", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for ident in ("quanto-weights", "compile"):
        assert ident in REGISTRY and f"{ident}  —" in out
    assert "backend (choice one of torchao/bitsandbytes" in out
    assert "weights (choice one of qint8/qint4/qint2" in out
