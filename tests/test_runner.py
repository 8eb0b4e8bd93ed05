"""The runner's contract: events, cancel, out-of-memory, bad input, a headless engine."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time

import pytest
import torch

from engine.errors import ErrorKind
from engine.events import Finished, LayerStatsReady, Progress, Sample
from engine.runner import Runner, execute

from .helpers import Collector, tiny


def _live_models(cls_name: str = "LlamaForCausalLM") -> int:
    gc.collect()
    # type() only: isinstance() on some torch.distributed objects warns
    return sum(1 for o in gc.get_objects() if type(o).__name__ == cls_name)


def test_event_order_and_final_result():
    events = Collector()
    result = execute(tiny(workload="forward"), events)
    assert result is not None
    stages = [e.stage for e in events.of(Progress)]
    assert stages[:2] == ["prepare", "load"]
    assert stages.index("memory") < stages.index("timing")
    assert events.of(Sample), "telemetry samples reach the listener"
    ready = events.of(LayerStatsReady)
    assert ready and ready[-1].final and len(ready[-1].layers) == len(result.layers)
    assert isinstance(events.events[-1], Finished)
    assert events.failed is None


@pytest.mark.parametrize("overrides, fragment", [
    (dict(batch=0), "Batch size"),
    (dict(seq=-3), "Sequence length"),
    (dict(workload="generate", new_tokens=-1), "New tokens"),
    (dict(workload="forward", new_tokens=-5), "New tokens cannot be negative"),
    (dict(workload="train", seq=1), "needs at least 2 tokens"),
    (dict(seq=100_000), "positions"),
    (dict(workload="generate", seq=250, new_tokens=20), "positions"),
    (dict(workload="dance"), "Unknown workload"),
    (dict(seed=10 ** 23), "The seed must be"),  # (overflowed torch.manual_seed: "a bug")
    (dict(seed=-1), "The seed must be"),
    (dict(device="tpu"), "Unknown device"),
])
@pytest.mark.fault(area='inputs', case="batch 0, negative tokens, a sequence beyond the model's positions, unknown workload or device",
                   outcome='invalid_workload naming the value and the valid range')
def test_absurd_workloads_are_refused_clearly(overrides, fragment):
    events = Collector()
    assert execute(tiny(**overrides), events) is None
    failed = events.failed
    assert failed is not None and failed.kind == ErrorKind.INVALID_WORKLOAD.value
    assert fragment in failed.message and failed.hint


def test_a_sequence_beyond_the_positions_is_refused_before_the_ids_are_made(monkeypatch):
    """Batch 4096 × seq 1,000,000 made 32.8 GB of ids first and failed as "out of memory
    during load"; the ids are now made only for a length the model supports."""
    from engine import workloads

    def made(*args, **kwargs):
        raise AssertionError("the input ids were made before the positions were checked")

    monkeypatch.setattr(workloads, "make_inputs", made)
    events = Collector()
    assert execute(tiny(batch=4096, seq=1_000_000), events) is None
    assert events.failed.kind == ErrorKind.INVALID_WORKLOAD.value
    assert "1000000 positions" in events.failed.message


@pytest.mark.fault(area='environment', case='--device cuda on a machine without a GPU',
                   outcome='no_device; hint: use cpu')
def test_cuda_without_gpu_is_a_clear_failure():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    events = Collector()
    assert execute(tiny(device="cuda"), events) is None
    assert events.failed.kind == ErrorKind.NO_DEVICE.value
    assert "cpu" in events.failed.hint.lower()


@pytest.mark.fault(area='inputs', case='generation on an encoder',
                   outcome='not_applicable; hint: use forward or train')
def test_generate_refused_for_an_encoder():
    events = Collector()
    assert execute(tiny(model="preset:tiny-bert", workload="generate"), events) is None
    assert events.failed.kind == ErrorKind.NOT_APPLICABLE.value


@pytest.mark.fault(area='interruption', case="cancel during generation's timing passes",
                   outcome='cancelled within a second; no Finished event; the model is freed')
def test_cancel_stops_within_a_second_and_frees_the_model():
    before = _live_models()
    events = Collector()
    started = threading.Event()

    def listener(e):
        events(e)
        if isinstance(e, Progress) and e.stage == "timing":
            started.set()

    runner = Runner(listener)
    runner.start(tiny(workload="generate", seq=64, new_tokens=150, repeats=50))
    assert started.wait(60), "the run never reached its timing passes"
    t0 = time.perf_counter()
    runner.cancel()
    assert runner.wait(5)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"cancel took {elapsed:.2f} s"
    assert events.failed is not None and events.failed.kind == "cancelled"
    assert events.finished is None
    assert _live_models() == before, "the cancelled run's model is still alive"


@pytest.mark.fault(area='resources', case='out of memory in the forward (CUDA and CPU allocator messages, simulated)',
                   outcome='out_of_memory with a hint; the model is freed and the next run works')
def test_out_of_memory_becomes_a_failed_run_and_the_runner_stays_usable(monkeypatch):
    import engine.workloads as wl

    real = wl.forward
    calls = {"n": 0}

    def exploding(*args, **kwargs):
        calls["n"] += 1
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(wl, "forward", exploding)
    before = _live_models()
    events = Collector()
    assert execute(tiny(workload="forward"), events) is None
    assert events.failed.kind == ErrorKind.OUT_OF_MEMORY.value
    assert "batch" in events.failed.hint.lower()
    # the stage as words ("Out of memory during memory:" read as a typo)
    assert events.failed.message.startswith("Out of memory during the "), events.failed.message
    assert _live_models() == before
    monkeypatch.setattr(wl, "forward", real)
    again = Collector()
    assert execute(tiny(workload="forward"), again) is not None

    # A CPU allocator failure reads differently and is recognised too.
    def cpu_oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 1099511627776 bytes.")

    monkeypatch.setattr(wl, "forward", cpu_oom)
    third = Collector()
    assert execute(tiny(workload="forward"), third) is None
    assert third.failed.kind == ErrorKind.OUT_OF_MEMORY.value


@pytest.mark.fault(area='resources', case='a failure in the middle of a training forward',
                   outcome='a failed run; no autograd graph or hook is left behind and the model is freed')
def test_a_failure_inside_the_training_pass_frees_the_model(monkeypatch):
    """A backward graph left by a failed forward must not keep the model alive (C++ cycles)."""
    import engine.instrument as ins

    real = ins.MemoryProbe._post

    def failing(self, module, args, kwargs, output):
        if self.phase == "forward" and self.by_module[id(module)].kind == "mlp":
            raise RuntimeError("simulated failure in the middle of the forward")
        return real(self, module, args, kwargs, output)

    monkeypatch.setattr(ins.MemoryProbe, "_post", failing)
    before = _live_models()
    events = Collector()
    assert execute(tiny(workload="train"), events) is None
    assert events.failed.kind == ErrorKind.INTERNAL.value
    assert _live_models() == before
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


@pytest.mark.fault(area='interruption', case='a second run while one runs (engine)',
                   outcome='refused with a message; the first run goes on')
def test_runner_refuses_a_second_concurrent_run():
    started = threading.Event()
    runner = Runner(lambda e: started.set() if isinstance(e, Progress) else None)
    runner.start(tiny(workload="generate", new_tokens=100, repeats=20))
    try:
        with pytest.raises(RuntimeError, match="already in progress"):
            runner.start(tiny())
    finally:
        runner.cancel()
        assert runner.wait(10)


def test_engine_never_imports_qt():
    code = ("import sys, engine, engine.runner, engine.cli, engine.store, engine.telemetry, "
            "engine.models, engine.attention, engine.memtracker\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('PySide6', 'PyQt5', 'PyQt6', 'pyqtgraph', 'superqt', 'gui', 'shiboken6')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_noisy_timing_passes_are_reported_not_hidden_in_the_median():
    """With few repeats one disturbed pass moves the median (a saved run once had plain passes
    of 152 and 9.6 ms: 'latency 80.8 ms', ×8.5 against the baseline); the run says so."""
    from engine.config import RunConfig
    from engine.results import RunResult
    from engine.runner import _noise_warnings

    def warned(plain, base=None):
        r = RunResult(config=RunConfig(repeats=len(plain)), timing={"plain_ms": plain},
                      baseline={"plain_ms": base} if base is not None else None,
                      deltas={"latency_ratio": 1.0} if base is not None else None)
        _noise_warnings(r)
        return r.warnings

    assert warned([9.5, 9.8, 10.1]) == [] and warned([9.5]) == []
    (w,) = warned([151.9, 9.57])
    assert "9.57 to 151.90 ms (×15.9 apart)" in w and "more timing passes (now 2; Timing passes in the window, --repeats N" in w, w
    assert "latency ratio" not in w  # no baseline in this run
    (w,) = warned([9.5, 9.6, 9.7], base=[389.9, 9.4, 9.6])
    assert "the unoptimized baseline's 3 plain timing passes" in w and "latency ratio" in w, w


def test_slower_is_said_with_its_doubt_when_the_passes_disagree():
    """"ran ×26.49 slower" was stated as a fact beside the warning that its passes were ×40
    apart; with steady passes it stays a plain statement."""
    from engine.config import RunConfig
    from engine.results import RunResult, Totals
    from engine.runner import _trap_warnings

    def slower(plain):
        r = RunResult(config=RunConfig(repeats=len(plain)), timing={"plain_ms": plain},
                      totals=Totals(plain_latency_ms=sorted(plain)[len(plain) // 2]),
                      baseline={"plain_ms": [4.0, 4.1, 4.0], "peak_bytes": 1 << 20},
                      optimizations=[{"name": "pruning", "weights_bytes_before": 10,
                                      "weights_bytes_after": 10, "modules_touched": 0}],
                      deltas={"latency_ratio": 2.0, "peak_bytes": 0})
        _trap_warnings(r)
        return [w for w in r.warnings if "slower" in w]

    (w,) = slower([8.0, 8.1, 8.2])
    assert w.endswith("slower than the unoptimized baseline on this device."), w
    (w,) = slower([8.0, 320.0, 8.2])
    assert "too far apart to trust" in w and "rerun" in w, w


def test_run_list_shows_the_plain_latency_like_the_run_itself(tmp_path):
    """The saved-runs list (window and `memlens runs`) gives the plain pass's latency, as the
    run's totals and the compare view do, not the pass with live hooks."""
    from engine.store import RunStore

    result = execute(tiny(repeats=1))
    assert result is not None
    result.totals.plain_latency_ms, result.totals.latency_ms = 5.0, 7.0
    store = RunStore(tmp_path)
    store.save(result)
    (summary,) = store.list()
    assert summary.latency_ms == 5.0


def test_a_training_technique_is_judged_after_the_same_steps_with_the_same_dropout():
    """Training techniques leave the untrained model as it was; the quality that tells them
    apart is after the steps, against the baseline trained alike. The baseline's steps and the
    optimized model's draw the same dropout masks: checkpointing (exact recomputation) gives
    exactly the baseline's trained model, on a model with dropout (tiny-gpt2)."""
    from engine.runner import execute

    result = execute(tiny(model="preset:tiny-gpt2", workload="train", warmup=1,
                          optimizations=[{"id": "checkpointing", "params": {}}]))
    trained = result.quality["after_training"]
    assert trained["steps"] == result.training["optimizer_steps"] == \
        result.baseline["optimizer_steps"] >= 2
    assert trained["kl_divergence"] == 0.0 and result.quality["kl_divergence"] == 0.0


def test_a_prompt_too_long_is_refused_naming_the_prompt():
    """A prompt sets the length, so the fix names the prompt (and the new tokens that follow
    it), not the sequence setting; without a prompt the fix names the sequence."""
    from engine.config import RunConfig

    events = Collector()
    prompt = "The quick brown fox jumps over the lazy dog. " * 60
    assert execute(RunConfig(model="demo", workload="generate", new_tokens=8, prompt=prompt,
                             repeats=1, warmup=0), events) is None
    failed = events.failed
    assert failed.kind == ErrorKind.INVALID_WORKLOAD.value
    assert "a prompt of" in failed.message and "+ 8 new tokens" in failed.message
    assert "Shorten the prompt to at most 504 tokens (512 positions − 8 new tokens)" in failed.hint
    events = Collector()
    assert execute(tiny(workload="forward", seq=100_000), events) is None
    assert "(100000 input tokens)" in events.failed.message
    assert "Use a sequence of at most" in events.failed.hint and "prompt" not in events.failed.hint


def test_too_many_new_tokens_are_refused_with_a_count_that_fits():
    from engine.config import RunConfig

    events = Collector()
    assert execute(RunConfig(model="demo", workload="generate", seq=100, new_tokens=600,
                             repeats=1, warmup=0), events) is None
    assert "(100 input tokens + 600 new tokens)" in events.failed.message
    assert "Generate at most 412 new tokens after this input" in events.failed.hint


def test_sub_rows_that_add_up_past_their_block_are_called_out():
    """A 1.5 ms block showed a 5.2 ms attention row under it (the rows come from a separate,
    noisy pass) with nothing to explain it."""
    from engine.runner import _sub_row_warning

    events = Collector()
    result = execute(tiny(repeats=1), events)
    assert result is not None, events.failed
    result.warnings.clear()
    blocks = {layer.name: layer for layer in result.layers if layer.kind == "block"}
    _sub_row_warning(result)  # (whatever this run's noise did, the figures are set below)
    result.warnings.clear()
    for layer in result.layers:
        if layer.name in blocks:
            layer.latency_ms = 1.0
        elif layer.parent in blocks:
            layer.latency_ms = 0.3
    result.timing["detailed_overhead"] = result.totals.instrumentation_overhead = 1.0
    _sub_row_warning(result)
    assert result.warnings == []  # rows within their block
    first = next(iter(blocks))
    attention = next(x for x in result.layers if x.parent == first and x.kind == "attention")
    attention.latency_ms = 5.2
    _sub_row_warning(result)
    (warning,) = result.warnings
    assert warning.startswith("In 1 block(s)") and f"worst: {first}, 5.50 ms" in warning
    assert "--repeats" in warning
    # what the detailed pass's own hooks explain is not called out
    result.warnings.clear()
    result.timing["detailed_overhead"] = 6.0
    _sub_row_warning(result)
    assert result.warnings == []


def test_the_training_phases_come_from_one_step_and_add_up_to_it():
    """Phase medians taken one by one came from different steps: 23.7 ms plain beside
    forward 5.2 + backward 7.2 + optimizer 19.4 ms, with nothing saying where they came from."""
    from engine.runner import execute

    from types import SimpleNamespace

    from engine.runner import median_step

    def step(f, b, o):
        return SimpleNamespace(forward_ms=f, backward_ms=b, optimizer_ms=o)

    # phase by phase the medians are 5, 7 and 19 ms (taken from two different steps: 31 ms,
    # a step that never happened); the step of median length (36 of 28, 36, 50 ms) is whole
    steps = [step(5.0, 30.0, 1.0), step(2.0, 7.0, 19.0), step(9.0, 1.0, 40.0)]
    assert median_step(steps) is steps[0]
    assert median_step(steps[:2]) is steps[1]  # (28 < 36 ms: the lower middle of two)

    result = execute(tiny(workload="train", repeats=3))
    tr = result.training
    assert tr["forward_ms"] > 0 and tr["backward_ms"] > 0 and tr["optimizer_ms"] > 0
    assert tr["forward_ms"] + tr["backward_ms"] + tr["optimizer_ms"] == \
        pytest.approx(tr["step_ms"])
    assert tr["phases_from"] == "the hooked step of median length (3 timed)"


@pytest.mark.fault(area='resources', case='a CPU workload whose activations would not fit in the '
                   'memory available (the weights do)',
                   outcome='estimated on fake tensors after the load and refused before the '
                   'memory pass, naming the estimate, the memory available and the fix (the '
                   "kernel's out-of-memory killer ends an overcommitted process without a word)")
def test_a_cpu_workload_too_large_for_memory_is_refused_before_it_runs(monkeypatch):
    from dataclasses import replace

    from engine import models
    from engine.estimate import estimate

    for config in (tiny(workload="forward", batch=64, seq=64),
                   # training: gradients and AdamW state too, and the unoptimized baseline an
                   # optimized run measures first (the estimate of the optimized one alone
                   # let it through)
                   tiny(workload="train", batch=8, seq=64,
                        optimizations=[{"id": "freeze-base"}])):
        base = estimate(replace(config, optimizations=[]))
        room = base.totals.peak_bytes  # the weights fit, the workload does not
        monkeypatch.setattr(models, "_available_bytes", lambda device, room=room: room)
        events = Collector()
        assert execute(config, events) is None
        failed = events.failed
        assert failed.kind == ErrorKind.TOO_LARGE.value, failed
        assert "above the weights" in failed.message and "available" in failed.message
        assert "memlens estimate --model preset:tiny-llama" in failed.hint
        assert f"--workload {config.workload}" in failed.hint
        stages = [e.message for e in events.events if type(e).__name__ == "Progress"]
        assert any("checking that the workload fits" in m for m in stages)
        assert not any(m.startswith("timing pass") for m in stages)
    # with room it runs as before
    monkeypatch.setattr(models, "_available_bytes", lambda device: 40 * room)
    assert execute(tiny(workload="forward", batch=64, seq=64), Collector()) is not None
    # a prompt's tokens are the length, not the Sequence setting it replaces
    prompt = tiny(model="demo", workload="forward", batch=64, seq=512, prompt="a short prompt")
    short = estimate(replace(prompt, prompt=None, seq=8)).totals.peak_bytes
    monkeypatch.setattr(models, "_available_bytes", lambda device: 3 * short)
    events = Collector()
    assert execute(prompt, events) is not None, events.failed  # (512 tokens would not fit)
    assert any("checking that the workload fits" in e.message for e in events.events
               if type(e).__name__ == "Progress")
