"""Headless engine check for a machine with an NVIDIA GPU (made for one H200).

Builds a Llama-shaped ~1.1B random model in bf16 (22 layers, hidden 2048, intermediate 5632,
32 heads, 4 KV heads) from a config.json, and runs MemLens' real runner on it:
forward at seq 512/2048/8192 with eager and SDPA attention, a generation and a training step.
For each run it checks the reconciliation against ``torch.cuda.max_memory_allocated``, compares
MemLens' tensor accounting and PyTorch's MemTracker with the allocator, reads NVML through the
sampler, and measures the live-instrumentation overhead. Writes ``gpu_check.json`` and
``gpu_check.txt`` to ``--out``.

Needs only torch, transformers, psutil, nvidia-ml-py (no Qt, no network):
    python3 benchmarks/gpu_check.py --out DIR
A dry run of the same script on the CPU with a tiny config: ``--device cpu --tiny``.

On a lent GPU, ``sh benchmarks/gpu_session.sh OUT`` runs this with the other GPU steps in one
command sized for its limits (it was dry-run with the device's torch 2.11 and transformers 5.17).

The device has no torchao (its rows: int8, fp8, int4) and has transformers 5.17 (no fp8 KV
cache): ``sh benchmarks/fetch_gpu_wheels.sh`` here, once, writes torchao and CI's transformers
and peft as wheels into the ignored ``.whl/``; gpu_session.sh installs them there (name ``.whl``
in carry). Run alone, start the command with ``python3 -m pip install -q --no-index --no-deps
--no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export
PYTHONPATH=/tmp/site;``.

``--estimate`` also estimates every run with ``memlens estimate`` (fake tensors, the CPU's
kernels, no memory) and records the estimated peak against the measured one (the allocator's on
CUDA), plus an 8B-shaped forward at seq 4096: the accuracy table issue 6 asks for.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_1B = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000, hidden_size=2048,
    intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
    max_position_embeddings=16384, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_theta=10000.0, dtype="bfloat16",
)
TINY = dict(LLAMA_1B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)

MiB = 1024 * 1024


def log(out: list[str], text: str) -> None:
    print(text, flush=True)
    out.append(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config (dry run)")
    ap.add_argument("--seqs", default="512,2048,8192")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--optimizations", action="store_true",
                    help="also run benchmarks/optimizations.py on the same model (its table "
                         "goes to optimizations.md and optimizations.json in --out)")
    ap.add_argument("--estimate", action="store_true",
                    help="also estimate each run on fake tensors and compare the peaks")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from engine.config import RunConfig
    from engine.events import Failed
    from engine.runner import execute
    from engine.telemetry import environment, nvml

    lines: list[str] = []
    report: dict = {"environment": environment(args.device), "runs": [], "errors": []}
    gpu = nvml()
    log(lines, f"torch {torch.__version__}; NVML available: {gpu.available} ({gpu.reason or 'ok'})")
    cfg_dir = args.out / "model"
    cfg_dir.mkdir(exist_ok=True)
    (cfg_dir / "config.json").write_text(json.dumps(TINY if args.tiny else LLAMA_1B))
    model_arg = str(cfg_dir / "config.json")
    seqs = [int(s) for s in args.seqs.split(",")] if not args.tiny else [64, 128]
    dtype = "bfloat16"

    def compare_estimate(entry: dict, cfg: RunConfig, peak: int, weights: int,
                         allocator_only: int) -> None:
        """The same config estimated on fake tensors, against the measured peak."""
        from engine.estimate import estimate

        est_cfg = RunConfig(**{**cfg.to_dict(), "device": "cpu", "detailed": False})
        failures: list[Failed] = []
        est = estimate(est_cfg, lambda e: failures.append(e) if isinstance(e, Failed) else None)
        if est is None:
            entry["estimate"] = {"failed": f"{failures[-1].kind}: {failures[-1].message}"
                                 if failures else "no result"}
            log(lines, f"  estimate: FAILED {entry['estimate']['failed']}")
            return
        e = est.totals
        entry["estimate"] = {
            "peak_MiB": e.peak_bytes / MiB,
            "peak_above_weights_MiB": (e.peak_bytes - e.model_weights_bytes) / MiB,
            "weights_MiB": e.model_weights_bytes / MiB,
            "peak_vs_measured": (e.peak_bytes - peak) / peak,
            # The allocator's bytes no tensor accounts for (the cuBLAS workspace above all, made
            # by the first matmul and kept): the estimate cannot contain them, so its error is
            # also given against the measured peak without them.
            "allocator_only_MiB": allocator_only / MiB,
            "peak_vs_measured_tensors": ((e.peak_bytes - (peak - allocator_only))
                                         / max(peak - allocator_only, 1)),
            "above_weights_vs_measured": ((e.peak_bytes - e.model_weights_bytes)
                                          - (peak - weights)) / max(peak - weights, 1),
            "seconds": est.estimate,
            "phase_peaks_MiB": {k: v / MiB for k, v in est.phase_peaks.items()},
        }
        log(lines, f"  estimate: peak {e.peak_bytes / MiB:.0f} MiB vs measured "
                   f"{peak / MiB:.0f} MiB ({entry['estimate']['peak_vs_measured'] * 100:+.2f}%; "
                   f"{entry['estimate']['peak_vs_measured_tensors'] * 100:+.2f}% without "
                   f"{allocator_only / MiB:.1f} MiB allocator-only), "
                   f"above weights {entry['estimate']['above_weights_vs_measured'] * 100:+.1f}%, "
                   f"in {sum(v for k, v in est.estimate.items() if k.endswith('seconds')):.1f} s")

    def run(label: str, model: str | None = None, **kw) -> dict:
        failures: list[Failed] = []
        t0 = time.perf_counter()
        cfg = RunConfig(model=model or model_arg, device=args.device, dtype=dtype, repeats=5,
                        warmup=1, sample_hz=50.0, **kw)
        result = execute(cfg, lambda e: failures.append(e) if isinstance(e, Failed) else None)
        wall = time.perf_counter() - t0
        entry: dict = {"label": label, "config": cfg.to_dict(), "wall_s": round(wall, 1)}
        if result is None:
            f = failures[-1] if failures else None
            entry["failed"] = f"{f.kind}: {f.message}" if f else "no result"
            log(lines, f"{label}: FAILED {entry['failed']}")
            return entry
        t = result.totals
        weights = t.model_weights_bytes
        acc_peak = t.peak_bytes - t.unattributed_detail.get(
            "allocator only (not a tensor seen by accounting)", 0)
        entry.update({
            "peak_MiB": t.peak_bytes / MiB,
            "peak_above_weights_MiB": (t.peak_bytes - weights) / MiB,
            "weights_MiB": weights / MiB,
            "attributed_MiB": t.attributed_bytes / MiB,
            "unattributed_MiB": t.unattributed_bytes / MiB,
            "unattributed_detail_MiB": {k: v / MiB for k, v in t.unattributed_detail.items()},
            "reconciles": t.reconciles(),
            "accounting_peak_vs_allocator": (acc_peak - t.peak_bytes) / t.peak_bytes,
            "reserved_peak_MiB": (t.cuda_reserved_peak_bytes or 0) / MiB,
            "plain_ms": t.plain_latency_ms, "instrumented_ms": t.latency_ms,
            "overhead": t.instrumentation_overhead,
            "tokens_per_s": t.tokens_per_s,
            "load_peak_MiB": (t.load_peak_bytes or 0) / MiB,
            "flops": t.flops, "flops_uncounted_ops": t.flops_uncounted_ops,
            "warnings": result.warnings,
            "phase_peaks_MiB": {k: v / MiB for k, v in result.phase_peaks.items()},
            # these, and the generation and training phase peaks below, are tensor accounting,
            # not the allocator's peaks (peak_MiB is the allocator's)
            "phase_peaks_source": "tensor accounting",
            "transient_source": t.transient_source,
        })
        attn = [la for la in result.layers if la.kind == "attention"]
        if attn:
            info = result.model_info
            seq_len = result.inputs["shape"][1]
            probs = kw.get("batch", 1) * info["num_attention_heads"] * seq_len * seq_len * 2
            entry["attention_layer0"] = {
                "transient_MiB": (attn[0].transient_peak_bytes or 0) / MiB,
                "probs_matrix_MiB": probs / MiB, "latency_ms": attn[0].latency_ms}
        tl = result.timeline
        for key in ("gpu_used_bytes", "gpu_process_bytes", "gpu_util_percent", "gpu_power_w",
                    "torch_allocated_bytes"):
            vals = [v for v in tl.get(key, []) if v is not None]
            entry[f"timeline_{key}"] = {"n": len(vals), "max": max(vals) if vals else None,
                                        "of": len(tl.get(key, []))}
        if result.generation:
            g = result.generation
            info = result.model_info
            formula = (2 * info["num_layers"] * kw.get("batch", 1) * info["num_key_value_heads"]
                       * info["head_dim"] * g["cached_positions"] * 2)
            entry["generation"] = {
                "kv_MiB": g["kv_cache_bytes"] / MiB, "kv_formula_MiB": formula / MiB,
                "kv_matches_formula": g["kv_cache_bytes"] == formula,
                "prefill_ms": g.get("prefill_ms"),
                "decode_ms_median": sorted(g.get("decode_ms_per_step") or [0])[
                    len(g.get("decode_ms_per_step") or [0]) // 2],
                "decode_tokens_per_s": g.get("decode_tokens_per_s"),
                "prefill_peak_MiB": (g.get("prefill_peak_bytes") or 0) / MiB,
                "decode_peak_MiB": (g.get("decode_peak_bytes") or 0) / MiB,
            }
        if result.training:
            tr = result.training
            entry["training"] = {k: (v / MiB if k.endswith("bytes") and v else v)
                                 for k, v in tr.items()}
        log(lines, f"{label}: peak {entry['peak_MiB']:.0f} MiB (above weights "
                   f"{entry['peak_above_weights_MiB']:.0f}), unattributed "
                   f"{entry['unattributed_MiB']:.1f} MiB, accounting vs allocator "
                   f"{entry['accounting_peak_vs_allocator'] * 100:+.2f}%, reconciles "
                   f"{entry['reconciles']}, plain {t.plain_latency_ms:.1f} ms, overhead "
                   f"x{t.instrumentation_overhead:.3f}, wall {wall:.0f}s")
        if args.estimate and not kw.get("detailed"):
            compare_estimate(entry, cfg, t.peak_bytes, weights, t.peak_bytes - acc_peak)
        return entry

    # The two checks that have never run anywhere but a GPU go first, so that a time limit
    # reached during the longer runs below cannot cut them.
    # MemTracker (PyTorch's own) against the allocator, forward seq 2048 SDPA.
    try:
        from engine import memtracker
        from engine.config import RunConfig as _RC
        from engine.models import load_model

        loaded = load_model(_RC(model=model_arg, device=args.device, dtype=dtype,
                                attention_impl="sdpa"))
        model = loaded.model
        seq = 2048 if not args.tiny else 64
        ids = torch.randint(0, 512, (1, seq), device=args.device)
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        dev = torch.device(args.device)
        cuda = dev.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

        def fwd():
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)

        mt = memtracker.peak_bytes(fwd, model, ids)
        alloc = torch.cuda.max_memory_allocated() if cuda else None
        report["memtracker"] = {"memtracker_peak_MiB": mt["Total"] / MiB,
                                "allocator_peak_MiB": alloc / MiB if alloc else None,
                                "diff": (mt["Total"] - alloc) / alloc if alloc else None}
        log(lines, f"MemTracker vs allocator (forward sdpa {seq}): {report['memtracker']}")
        del model, loaded
    except Exception as exc:  # noqa: BLE001
        report["errors"].append(f"memtracker: {exc!r}")
        log(lines, f"memtracker: ERROR {exc!r}")
    # A CUDA memory snapshot of one measured forward (memlens profile --memory-snapshot): the
    # pickle pytorch.org/memory_viz opens. Checked here by loading it back.
    if args.device.startswith("cuda") and torch.cuda.is_available():
        import pickle

        snap_path = args.out / "memory_snapshot.pickle"
        try:
            failures: list[Failed] = []
            res = execute(RunConfig(model=model_arg, device=args.device, dtype=dtype,
                                    seq=512 if not args.tiny else 64, attention_impl="sdpa",
                                    repeats=1, warmup=1, memory_snapshot=str(snap_path)),
                          lambda e: failures.append(e) if isinstance(e, Failed) else None)
            with open(snap_path, "rb") as f:
                snap = pickle.load(f)  # our own file, written just now by torch
            report["memory_snapshot"] = {
                "ok": res is not None and {"segments", "device_traces"} <= set(snap),
                "bytes": snap_path.stat().st_size, "segments": len(snap.get("segments", [])),
                "trace_entries": sum(len(t) for t in snap.get("device_traces", [])),
                "failed": f"{failures[-1].kind}: {failures[-1].message}" if failures else None}
        except Exception as exc:  # noqa: BLE001
            report["memory_snapshot"] = {"ok": False, "error": repr(exc)}
        log(lines, f"CUDA memory snapshot: {report['memory_snapshot']}")
    checks = []
    for impl in ("sdpa", "eager"):
        for seq in seqs:
            checks.append((f"forward {impl} seq {seq}", dict(workload="forward", seq=seq,
                                                             attention_impl=impl)))
    checks.append(("forward eager seq 2048 detailed", dict(
        workload="forward", seq=2048 if not args.tiny else 128, attention_impl="eager",
        detailed=args.device.startswith("cuda"))))  # per-module allocator peaks: CUDA only
    checks.append(("generate sdpa 512+32", dict(workload="generate", seq=512 if not args.tiny
                                                 else 64, new_tokens=32 if not args.tiny else 8,
                                                 attention_impl="sdpa")))
    if not args.skip_train:
        checks.append(("train sdpa seq 2048", dict(workload="train", seq=2048 if not args.tiny
                                                    else 64, attention_impl="sdpa")))
    if args.estimate:
        checks.append(("forward sdpa seq 4096, 8B-shaped",
                       dict(model="preset:tiny-llama" if args.tiny else "preset:llama-3-8b",
                            workload="forward", seq=4096 if not args.tiny else 128,
                            attention_impl="sdpa")))
    for label, kw in checks:
        try:
            report["runs"].append(run(label, **kw))
        except Exception as exc:  # noqa: BLE001 - keep going: device time is scarce
            report["errors"].append(f"{label}: {exc!r}")
            log(lines, f"{label}: ERROR {exc!r}\n{traceback.format_exc()}")
        gc.collect()
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))

    if args.optimizations:
        import contextlib
        import io

        sys.path.insert(0, str(ROOT / "benchmarks"))
        import optimizations as opt_bench

        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                opt_bench.main(["--model", model_arg, "--device", args.device, "--dtype", dtype,
                                "--seq", "2048" if not args.tiny else "64", "--new-tokens",
                                "64" if not args.tiny else "8", "--repeats", "3",
                                "--json", str(args.out / "optimizations.json")])
        except Exception as exc:  # noqa: BLE001
            report["errors"].append(f"optimizations: {exc!r}")
        (args.out / "optimizations.md").write_text(buffer.getvalue())
        log(lines, buffer.getvalue())
    report["nvml"] = {"available": gpu.available, "reason": gpu.reason,
                      "driver": gpu.driver_version()}
    if args.estimate:
        rows = [(r["label"], r["estimate"]) for r in report["runs"] if "peak_vs_measured" in
                r.get("estimate", {})]
        report["estimate_summary"] = {
            "runs": len(rows),
            "max_abs_peak_vs_measured": max((abs(e["peak_vs_measured"]) for _, e in rows),
                                            default=None),
            "max_abs_peak_vs_measured_tensors": max(
                (abs(e["peak_vs_measured_tensors"]) for _, e in rows), default=None)}
        log(lines, f"estimates: {report['estimate_summary']}")
    ok = all(r.get("reconciles") for r in report["runs"]) and not report["errors"]
    if args.estimate:
        ok = ok and all("failed" not in r.get("estimate", {}) for r in report["runs"])
    log(lines, "ALL RECONCILED" if ok else "SOME CHECKS FAILED")
    report["ok"] = ok
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "gpu_check.txt").write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
