"""Instrumentation must not change what it measures: with activation checkpointing, PyTorch's
``ModuleTracker`` (used for backward attribution and by the FLOP counter) registers gradient hooks
on every block recomputed in the backward that never fire and keep its tensors alive until
Python's garbage collector runs (pytorch/pytorch#139214). MemLens uses ``ModTracker`` instead; a
checkpointed step's figures are then the same whenever the collector runs, and checkpointing
saves memory on the demo model as it should."""

from __future__ import annotations

import gc

import pytest

from engine.config import RunConfig
from engine.estimate import estimate
from engine.runner import execute

from .helpers import Collector


_RESULTS: dict = {}  # (run, threshold) -> result: the default threshold's run serves both tests


def _train(run, threshold):
    key = (run, threshold)
    if key not in _RESULTS:
        _RESULTS[key] = _train_now(run, threshold)
    return _RESULTS[key]


def _train_now(run, threshold):
    config = RunConfig(model="demo", workload="train", seq=256, dtype="bfloat16", repeats=1,
                       warmup=1, optimizations=[{"id": "checkpointing", "params": {}}])
    old, enabled = gc.get_threshold(), gc.isenabled()
    try:
        if threshold is None:
            gc.disable()
        else:
            gc.set_threshold(*threshold)
        result = run(config, Collector())
    finally:
        gc.set_threshold(*old)
        if enabled:
            gc.enable()
    assert result is not None
    return result


@pytest.mark.parametrize("run", [execute, estimate], ids=["measured", "estimate"])
def test_a_checkpointed_step_does_not_depend_on_the_garbage_collector(run):
    peaks = {th: _train(run, th).totals.peak_bytes for th in ((700, 10, 10), None, (10, 1, 1))}
    assert len(set(peaks.values())) == 1, peaks


def test_checkpointing_lowers_the_demo_models_training_peak():
    result = _train(execute, (700, 10, 10))
    assert result.baseline["peak_bytes"] > result.totals.peak_bytes
    assert result.phase_peaks["backward"] < result.baseline["peak_bytes"]
