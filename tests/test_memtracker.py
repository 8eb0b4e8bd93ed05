"""Pins the behaviour of PyTorch's private MemTracker, which MemLens uses only as a cross-check
(``engine.memtracker``). If a PyTorch upgrade changes what it reports, this fails loudly instead
of silently shifting the figures MemLens compares against."""

from __future__ import annotations

import pytest
import torch

from engine import memtracker

pytestmark = pytest.mark.skipif(not memtracker.available(), reason="MemTracker not in this torch")


def test_linear_forward_categories_are_pinned():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64)
    peak = memtracker.peak_bytes(lambda: lin(x), lin, x)
    assert peak["Parameter"] == (64 * 32 + 32) * 4  # weight + bias, fp32
    assert peak["Activation"] == 8 * 32 * 4  # the output
    assert peak["Other"] == 8 * 64 * 4  # the input, registered with track_external
    assert peak["Total"] == peak["Parameter"] + peak["Activation"] + peak["Other"]


def test_training_step_counts_gradients_and_optimizer_state():
    lin = torch.nn.Linear(16, 16, bias=False)
    opt = torch.optim.AdamW(lin.parameters())
    x = torch.randn(4, 16)

    def step():
        lin(x).sum().backward()
        opt.step()

    peak = memtracker.peak_bytes(step, lin, opt, x)
    param = 16 * 16 * 4
    assert peak["Parameter"] == param
    assert peak["Gradient"] == param
    assert peak["Optstate"] >= 2 * param  # exp_avg and exp_avg_sq (+ the step scalar)
