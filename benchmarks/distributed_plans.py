"""How long do distributed plans take for real model shapes (Llama 3 8B and 70B)? One run each.

Times ``engine.distributed.plan_inference`` and ``plan_training`` (method "shapes", and
"tracker": PyTorch's FSDPMemTracker on a fake process group) in this process, after one warm-up
plan on a tiny preset (so imports are not counted), and records each plan's headline figures.
The figures are estimates; only the seconds are measured.

    python benchmarks/distributed_plans.py [--no-tracker] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 2**30

INFERENCE = [
    # model, seq, new tokens, batch, devices, per device, cpu offload
    ("preset:llama-3-8b", 4096, 32, 1, 2, "24GiB", None),
    ("preset:llama-3-70b", 4096, 32, 1, 4, "80GiB", None),
    ("preset:llama-3-70b", 4096, 32, 1, 2, "48GiB", "200GiB"),
]
TRAINING = [
    # model, seq, micro-batch, ranks, per rank, method ("+ckpt": activation checkpointing,
    # "+lora": LoRA adapters, the base frozen)
    ("preset:llama-3-8b", 4096, 1, 8, "80GiB", "shapes"),
    ("preset:llama-3-70b", 4096, 1, 8, "80GiB", "shapes"),
    ("preset:llama-3-70b", 4096, 1, 8, "80GiB", "shapes+ckpt"),
    ("preset:llama-3-70b", 4096, 1, 8, "80GiB", "shapes+ckpt+lora"),
    ("preset:llama-3-8b", 2048, 1, 8, "80GiB", "tracker"),
    ("preset:llama-3-70b", 2048, 1, 8, "80GiB", "tracker"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-tracker", action="store_true", help="skip the FSDPMemTracker plans")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from engine.config import RunConfig
    from engine.distributed import plan_inference, plan_training

    warm = plan_inference(RunConfig(model="preset:tiny-llama", workload="generate", seq=16,
                                    new_tokens=2), 2, "1MiB")
    assert warm is not None, "the warm-up plan failed"
    rows = []
    for model, seq, new, batch, n, per, cpu in INFERENCE:
        cfg = RunConfig(model=model, workload="generate", seq=seq, new_tokens=new, batch=batch,
                        dtype="bfloat16")
        t = time.perf_counter()
        plan = plan_inference(cfg, n, per, cpu)
        s = time.perf_counter() - t
        assert plan is not None, model
        rows.append({"kind": "inference", "model": model, "seq": seq, "new_tokens": new,
                     "batch": batch, "devices": n, "per_device": per, "cpu_offload": cpu,
                     "seconds": round(s, 2), "parts_seconds": plan.seconds,
                     "fits": plan.fits,
                     "per_device_total_gib": {r.device: round(r.total_bytes / GiB, 2)
                                              for r in plan.rows}})
        print(f"{model} generate {seq}+{new} on {n} × {per}"
              + (f" + cpu {cpu}" if cpu else "") + f": {s:.1f} s, fits {plan.fits}, "
              + ", ".join(f"{r.device} {r.total_bytes / GiB:.1f} GiB" for r in plan.rows),
              flush=True)
    for model, seq, batch, n, per, method in TRAINING:
        if method == "tracker" and args.no_tracker:
            continue
        extra = method.split("+")[1:]
        opts = [{"id": {"ckpt": "checkpointing"}.get(x, x), "params": {}} for x in extra]
        cfg = RunConfig(model=model, workload="train", seq=seq, batch=batch, dtype="bfloat16",
                        optimizations=opts)
        t = time.perf_counter()
        plan = plan_training(cfg, n, per, method=method.split("+")[0])
        s = time.perf_counter() - t
        assert plan is not None, model
        row = {"kind": "training", "model": model, "seq": seq, "batch": batch, "ranks": n,
               "per_rank": per, "method": method, "seconds": round(s, 2),
               "parts_seconds": plan.seconds, "fits": plan.fits,
               "total_gib": round(plan.total_bytes / GiB, 2),
               "parts_gib": {k: round(v / GiB, 3) for k, v in plan.parts.items()}}
        if plan.tracker:
            row["tracker_peak_gib"] = round(plan.tracker["peak_bytes"] / GiB, 2)
            row["tracker_parts_gib"] = {k: round(v / GiB, 3)
                                        for k, v in plan.tracker["parts"].items()}
        rows.append(row)
        print(f"{model} train seq {seq} on {n} ranks ({method}): {s:.1f} s, per rank "
              f"{plan.total_bytes / GiB:.1f} GiB (fits {plan.fits}, binding {plan.binding})"
              + (f", tracker peak {plan.tracker['peak_bytes'] / GiB:.1f} GiB"
                 if plan.tracker else ""), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"plans": rows}, indent=1), encoding="utf-8")
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
