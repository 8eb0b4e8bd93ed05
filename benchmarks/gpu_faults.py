"""The fault matrix's GPU cases, for a machine with an NVIDIA GPU: real CUDA out-of-memory errors
during load, forward, generate and backward, each expected to end as a failed run with the
out-of-memory hint, the memory given back, and the next run working.

A real OOM on a 141 GiB H200 without waiting for huge allocations: the caching allocator is
capped with ``torch.cuda.set_per_process_memory_fraction`` (the loader's "too large" check reads
the device's free memory, so it lets the load start; the allocator then refuses). Each case
records the failure kind and message, ``torch.cuda.memory_allocated`` before and after (must
come back within 1 MiB), and whether a small run right after succeeds. Also records what NVML
says about this process's memory (a number, or "not supported" as None, never 0).

    python3 benchmarks/gpu_faults.py --out DIR            # on the GPU machine
    python3 benchmarks/gpu_faults.py --out DIR --device cpu   # dry run: says CUDA is needed

Writes ``gpu_faults.json`` and ``gpu_faults.txt`` to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 1024 * 1024
# The 1.1B Llama shape of gpu_check.py: 2.2 GB of bf16 weights.
LLAMA_1B = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000, hidden_size=2048,
    intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
    max_position_embeddings=16384, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_theta=10000.0, dtype="bfloat16",
)
SMALL = dict(LLAMA_1B, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    import torch

    report: dict = {"device": args.device, "cases": []}
    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        log("skipped: these cases need a CUDA device (run on the GPU machine)")
        report["skipped"] = "needs CUDA"
        _write(args.out, report, lines)
        return 0

    from engine.config import RunConfig
    from engine.events import Failed
    from engine.runner import execute
    from engine.models import resolve_device
    from engine.telemetry import nvml, nvml_index

    # With its index: set_per_process_memory_fraction refuses a bare torch.device("cuda").
    device = resolve_device(args.device)
    folders = {}
    for name, values in (("llama-1b", LLAMA_1B), ("small", SMALL)):
        folder = args.out / name
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(values))
        folders[name] = str(folder / "config.json")
    total = torch.cuda.get_device_properties(device).total_memory

    def run(cfg: RunConfig) -> tuple[object, Failed | None]:
        failures: list[Failed] = []
        result = execute(cfg, lambda e: failures.append(e) if isinstance(e, Failed) else None)
        return result, (failures[-1] if failures else None)

    # The backward case caps the allocator when the backward pass starts (at what is reserved
    # then, after emptying the cache, plus 64 MiB): the gradients cannot be allocated, so the
    # out-of-memory error is raised in backward, whatever the forward needed. A fixed cap
    # chosen between the forward and backward peaks would depend on estimates of both.
    backward = {"armed": False, "reached": False}
    plain_backward = torch.Tensor.backward

    def backward_with_cap(self, *a, **k):  # noqa: ANN001, ANN202 - a patch
        if backward["armed"] and not backward["reached"]:
            backward["reached"] = True
            torch.cuda.empty_cache()
            limit = torch.cuda.memory_reserved(device) + 64 * MiB
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
        return plain_backward(self, *a, **k)

    torch.Tensor.backward = backward_with_cap

    def clear_workspaces() -> None:
        # cuBLAS keeps a workspace per handle (one per thread: autograd's device thread has
        # its own) that empty_cache does not free; torch's own leak checks clear it the same way.
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear is not None:
            clear()
        gc.collect()
        torch.cuda.empty_cache()

    # (case, cap in bytes or None for the cap set when backward starts, config): each is
    # expected to fail with out_of_memory.
    cases = [
        ("load", 1 << 30, RunConfig(model=folders["llama-1b"], device=args.device,
                                    dtype="bfloat16", repeats=1, warmup=0)),
        ("forward", 3 << 30, RunConfig(model=folders["llama-1b"], device=args.device,
                                       dtype="bfloat16", workload="forward", batch=64,
                                       seq=8192, attention_impl="eager", repeats=1, warmup=0)),
        ("generate", 3 << 30, RunConfig(model=folders["llama-1b"], device=args.device,
                                        dtype="bfloat16", workload="generate", batch=256,
                                        seq=4096, new_tokens=64, repeats=1, warmup=0)),
        ("backward", None, RunConfig(model=folders["llama-1b"], device=args.device,
                                     dtype="bfloat16", workload="train", batch=1, seq=2048,
                                     attention_impl="sdpa", repeats=1, warmup=0)),
    ]
    for name, cap, cfg in cases:
        clear_workspaces()
        if cap is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
        backward.update(armed=cap is None, reached=False)
        before = torch.cuda.memory_allocated(device)
        entry: dict = {"case": name, "cap_MiB": cap / MiB if cap is not None else None,
                       "config": cfg.to_dict()}
        try:
            result, failed = run(cfg)
        except Exception as exc:  # the runner promises not to raise: record it if it does
            result, failed = None, None
            entry["raised"] = f"{type(exc).__name__}: {exc}"
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        backward["armed"] = False
        clear_workspaces()
        after = torch.cuda.memory_allocated(device)
        if cap is None:
            entry["cap_note"] = "set when backward started: reserved then + 64 MiB"
            entry["reached_backward"] = backward["reached"]
        entry.update({
            "failed_kind": failed.kind if failed else None,
            "message": failed.message if failed else None,
            "hint": failed.hint if failed else None,
            "finished_instead": result is not None,
            "allocated_before_MiB": before / MiB, "allocated_after_MiB": after / MiB,
            "memory_back": abs(after - before) <= MiB,
        })
        small, small_failed = run(RunConfig(model=folders["small"], device=args.device,
                                            dtype="bfloat16", seq=128, repeats=1, warmup=0))
        entry["next_run_ok"] = small is not None
        entry["next_run_error"] = f"{small_failed.kind}: {small_failed.message}" \
            if small_failed else None
        entry["pass"] = (entry["failed_kind"] == "out_of_memory" and entry["memory_back"]
                         and entry["next_run_ok"] and entry.get("reached_backward", True))
        report["cases"].append(entry)
        log(f"{name}: {'PASS' if entry['pass'] else 'FAIL'} — {entry['failed_kind']}: "
            f"{(entry['message'] or '')[:110]} | allocated {before / MiB:.0f} → "
            f"{after / MiB:.0f} MiB | next run {'ok' if entry['next_run_ok'] else 'FAILED'}")
        _write(args.out, report, lines)  # each case as it ends: a time limit keeps them
    torch.Tensor.backward = plain_backward

    gpu = nvml()
    per_process = None
    try:
        index = nvml_index(args.device)
        per_process = (gpu.process_memory(index) if gpu.available and index is not None
                       else None)
    except Exception as exc:  # record what the driver says, never a made-up 0
        per_process = f"error: {exc}"
    report["nvml"] = {"available": gpu.available, "reason": gpu.reason,
                      "process_used_bytes": per_process}
    log(f"NVML per-process memory: {per_process!r} (None = not supported here, never 0)")
    _write(args.out, report, lines)
    return 0 if all(c["pass"] for c in report["cases"]) else 1


def _write(out: Path, report: dict, lines: list[str]) -> None:
    (out / "gpu_faults.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_faults.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
