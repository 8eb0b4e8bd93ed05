"""Render a gpu_check.json as the Markdown table shown in README.md.

    python benchmarks/gpu_table.py benchmarks/results/h200_gpu_check.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    path = Path((argv or sys.argv[1:])[0])
    report = json.loads(path.read_text())
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
