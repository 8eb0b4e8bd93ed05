"""Render a gpu_check.json as the Markdown tables shown in README.md, or every result of a GPU
session (``benchmarks/gpu_session.sh OUT``): the check, the estimate-vs-measured accuracy table,
the out-of-memory cases and the guides.

    python benchmarks/gpu_table.py benchmarks/results/h200_gpu_check.json
    python benchmarks/gpu_table.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    path = Path((argv or sys.argv[1:])[0])
    if path.is_dir():
        return session(path)
    return check(json.loads(path.read_text()))


def session(folder: Path) -> int:
    """Every file a GPU session brought back, as Markdown."""
    check_file = folder / "gpu_check.json"
    if check_file.is_file():
        report = json.loads(check_file.read_text())
        check(report)
        accuracy(report)
    faults_file = folder / "gpu_faults.json"
    if faults_file.is_file():
        faults(json.loads(faults_file.read_text()))
    for name in ("guide_cuda.json", "guide.json"):
        if (folder / name).is_file():
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from engine.guide import Guide, markdown

            guide = Guide.from_dict(json.loads((folder / name).read_text()))
            text = "\n" + markdown(guide)
            print(text.replace("\n# ", "\n#### ").replace("\n## ", "\n##### "))
    return 0


def accuracy(report: dict) -> None:
    """Estimate (fake tensors, no memory) against the measured peak, run by run."""
    rows = [r for r in report["runs"] if "estimate" in r]
    if not rows:
        return
    print("\n| run | measured peak | estimated peak | error | allocator-only bytes "
          "| error without them | error above weights | estimate took |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        e = r["estimate"]
        if "failed" in e:
            print(f"| {r['label']} | {r.get('peak_MiB', 0):.0f} MiB | failed: {e['failed']} "
                  "| | | | | |")
            continue
        took = sum(v for k, v in e["seconds"].items() if k.endswith("seconds"))
        print(f"| {r['label']} | {r['peak_MiB']:.0f} MiB | {e['peak_MiB']:.0f} MiB "
              f"| {e['peak_vs_measured'] * 100:+.2f}% "
              f"| {e.get('allocator_only_MiB', 0):.1f} MiB "
              f"| {e.get('peak_vs_measured_tensors', e['peak_vs_measured']) * 100:+.2f}% "
              f"| {e['above_weights_vs_measured'] * 100:+.1f}% "
              f"| {took:.1f} s |")
    print("\nAllocator-only bytes: what the CUDA caching allocator held at the peak that no "
          "tensor accounts for (the cuBLAS workspace, made by the first matmul and kept); an "
          "estimate on fake tensors cannot contain them, and a real run needs them.")
    summary = report.get("estimate_summary") or {}
    if summary.get("max_abs_peak_vs_measured") is not None:
        without = summary.get("max_abs_peak_vs_measured_tensors")
        print(f"\nLargest peak error over {summary['runs']} runs: "
              f"{summary['max_abs_peak_vs_measured'] * 100:.2f}%"
              + (f" ({without * 100:.2f}% without the allocator-only bytes)."
                 if without is not None else "."))


def faults(report: dict) -> None:
    """The fault matrix's GPU cases."""
    if report.get("skipped"):
        print(f"\nGPU fault cases skipped: {report['skipped']}.")
        return
    print("\n| case | outcome | memory before → after | next run | pass |")
    print("| --- | --- | ---: | --- | :---: |")
    for c in report["cases"]:
        outcome = c.get("raised") or f"{c['failed_kind']}: {(c['message'] or '')[:90]}"
        cap = (f"cap {c['cap_MiB']:.0f} MiB" if c.get("cap_MiB") is not None
               else "cap at the start of backward"
               + ("" if c.get("reached_backward") else ", NOT REACHED"))
        print(f"| {c['case']} ({cap}) | {outcome} "
              f"| {c['allocated_before_MiB']:.0f} → {c['allocated_after_MiB']:.0f} MiB "
              f"| {'ok' if c['next_run_ok'] else c['next_run_error']} "
              f"| {'yes' if c['pass'] else 'NO'} |")
    nv = report.get("nvml") or {}
    print(f"\nNVML per-process memory: {nv.get('process_used_bytes')!r} (None: not supported "
          "by this driver or container, never shown as 0).")


def check(report: dict) -> int:
    env = report.get("environment", {})
    cuda = env.get("cuda", {})
    libs = env.get("libraries", {})
    print(f"{cuda.get('name', '?')}, driver {cuda.get('driver_version', '?')}, torch "
          f"{libs.get('torch', '?')}, transformers {libs.get('transformers', '?')}; Llama-shaped "
          "1.1B random model in bf16, batch 1.\n")
    print("| run | peak (allocator) | above weights | unattributed | accounting vs allocator "
          "| reconciles | plain ms | live overhead |")
    print("| --- | ---: | ---: | ---: | ---: | :---: | ---: | ---: |")
    for r in report["runs"]:
        if "failed" in r:
            print(f"| {r['label']} | failed: {r['failed']} | | | | | | |")
            continue
        print(f"| {r['label']} | {r['peak_MiB']:.0f} MiB | {r['peak_above_weights_MiB']:.0f} MiB "
              f"| {r['unattributed_MiB']:.1f} MiB | {r['accounting_peak_vs_allocator'] * 100:+.2f}% "
              f"| {'yes' if r['reconciles'] else 'NO'} | {r['plain_ms']:.1f} "
              f"| ×{r['overhead']:.2f} |")
    for r in report["runs"]:
        g = r.get("generation")
        if g:
            print(f"\n{r['label']}: KV cache {g['kv_MiB']:.2f} MiB measured, "
                  f"{g['kv_formula_MiB']:.2f} MiB from 2·layers·kv_heads·head_dim·positions·2 B "
                  f"({'equal' if g['kv_matches_formula'] else 'DIFFERENT'}); prefill "
                  f"{g['prefill_ms']:.1f} ms, decode {g['decode_ms_median']:.1f} ms/token.")
        t = r.get("training")
        if t:
            print(f"\n{r['label']}: saved for backward {t['saved_for_backward_bytes']:.0f} MiB, "
                  f"gradients {t['gradient_bytes']:.0f} MiB, AdamW state "
                  f"{t['optimizer_state_bytes']:.0f} MiB, peak {r['peak_MiB']:.0f} MiB.")
    mt = report.get("memtracker")
    if mt and mt.get("diff") is not None:
        print(f"\nPyTorch MemTracker vs allocator peak (forward SDPA 2048): "
              f"{mt['diff'] * 100:+.2f}%.")
    nv = report.get("nvml", {})
    samples = [r.get("timeline_gpu_process_bytes", {}) for r in report["runs"]]
    got = sum(s.get("n", 0) for s in samples)
    total = sum(s.get("of", 0) for s in samples)
    print(f"\nNVML: available {nv.get('available')}, per-process GPU memory reported in "
          f"{got} of {total} samples.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
