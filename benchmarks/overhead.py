"""How much MemLens' instrumentation slows a forward pass, measured in one process.

Variants, run in alternating rounds (so drift on a noisy machine hits all alike), median of
``--rounds`` (≥7):
  plain         the model's forward, nothing attached
  live          MemLens' timing hooks on every tracked module (what runs during timing passes)
  live (top level)  the same on blocks and top-level layers only (no attention/MLP rows)
  live+sampler  the same with the telemetry sampler running at 20 Hz
  memory pass   MemLens' tensor accounting + output/transient/KV hooks + FLOP counting
  torch.profiler  torch.profiler.profile(profile_memory=True, record_shapes=True)
Prints each median and its ratio to plain. Goal for "live" on CPU: ≤1.10x.

    python benchmarks/overhead.py                      # demo model, CPU, seq 256
    python benchmarks/overhead.py --model PATH/config.json --device cuda --seq 2048 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    import torch

    from engine.config import RunConfig
    from engine.instrument import MemoryProbe, TimingProbe
    from engine.layers import select_layers
    from engine.models import load_model
    from engine.telemetry import Sampler
    from engine.workloads import make_inputs, sync

    cfg = RunConfig(model=args.model, device=args.device, dtype=args.dtype,
                    attention_impl=args.attention)
    loaded = load_model(cfg)
    model, device = loaded.model, torch.device(args.device)
    tracked = select_layers(model)
    inputs = make_inputs(model, loaded.tokenizer, args.batch, args.seq, None, device, 0)
    ids = inputs.input_ids

    def fwd():
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        sync(device)

    # Each variant: (setup, timed part). Setup (e.g. creating CUDA events) is not timed, as in
    # the runner, which builds its probes before the timed pass.
    def plain():
        return fwd

    def live():
        probe = TimingProbe(tracked, device)

        def run():
            with probe:
                fwd()
            probe.totals_ms()
        return run

    blocks = [t for t in tracked if t.depth == 0]

    def live_blocks():
        probe = TimingProbe(blocks, device)

        def run():
            with probe:
                fwd()
            probe.totals_ms()
        return run

    def live_sampler():
        inner = live()

        def run():
            with Sampler(hz=20.0, device=args.device):
                inner()
        return run

    def memory():
        probe = MemoryProbe(model, tracked)

        def run():
            with probe:
                probe.track_input(ids)
                fwd()
        return run

    def profiler():
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)

        def run():
            with torch.profiler.profile(activities=activities, profile_memory=True,
                                        record_shapes=True):
                fwd()
        return run

    variants = {"plain": plain, "live": live, "live (top level)": live_blocks,
                "live+sampler": live_sampler,
                "memory pass": memory, "torch.profiler": profiler}
    for setup in variants.values():  # warm every path once (lazy inits, kernel caches)
        setup()()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, setup in variants.items():
            fn = setup()
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{loaded.name} on {device}, batch {args.batch} x seq {args.seq}, "
          f"{len(tracked)} tracked modules, median of {args.rounds} alternating rounds")
    print(f"{'variant':<16}{'median ms':>12}{'ratio':>9}")
    for name, ms in med.items():
        print(f"{name:<16}{ms:>12.2f}{ms / med['plain']:>8.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"model": loaded.name, "device": str(device),
                                         "seq": args.seq, "batch": args.batch,
                                         "median_ms": med,
                                         "ratio": {k: v / med["plain"] for k, v in med.items()},
                                         "samples_ms": times}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
