"""Every applicable optimization on one model: weights, peak, latency and quality, as a table.

Each row is one MemLens run that measures the unoptimized baseline and the optimized model in
the same process, so the ratios come from one sitting on one machine.

    python benchmarks/optimizations.py                       # demo model, CPU
    python benchmarks/optimizations.py --model PATH/config.json --device cuda --dtype bfloat16
Prints a Markdown table (the one in README.md) and, with --json, writes the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (workload, optimization spec) rows; each is skipped with its reason when it does not apply.
ROWS = [
    ("forward", "cast:dtype=bfloat16"),
    ("forward", "cast:dtype=float16"),
    ("forward", "autocast:dtype=bfloat16"),
    ("forward", "int8-dynamic"),
    ("forward", "torchao-int8:activations=weight-only"),
    ("forward", "torchao-int8:activations=dynamic"),
    ("forward", "torchao-fp8:activations=weight-only"),
    ("forward", "torchao-fp8:activations=dynamic"),
    ("forward", "torchao-int4:group_size=128"),
    ("forward", "quanto-weights:weights=qint8"),
    ("forward", "quanto-weights:weights=qint4"),
    ("forward", "quanto-weights:weights=qint2"),
    ("forward", "prune-unstructured:amount=0.5"),
    ("forward", "prune-unstructured:amount=0.5,permanent=true"),
    ("forward", "sparsity-24"),
    ("forward", "prune-ffn:amount=0.25"),
    ("generate", "prune-heads:groups=1"),
    ("forward", "drop-blocks:count=2"),
    ("forward", "attention:impl=eager"),
    ("forward", "attention:impl=sdpa"),
    ("forward", "compile"),
    ("generate", "kv-cache:policy=static"),
    ("generate", "kv-cache:policy=fp8"),
    ("generate", "kv-cache:policy=quanto-int4"),
    ("generate", "kv-cache:policy=quanto-int2"),
    ("generate", "kv-cache:policy=offloaded"),
    ("generate", "sliding-window:window=64"),
    ("train", "checkpointing"),
    ("train", "freeze-base"),
    ("train", "lora:rank=8,targets=attention"),
    ("train", "low-bit-optimizer:bits=8"),
    ("train", "low-bit-optimizer:bits=8,backend=bitsandbytes"),
    ("train", "cast:dtype=bfloat16"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--readme", type=Path, default=None,
                    help="rewrite the generated blocks of this README (registry and table)")
    args = ap.parse_args(argv)

    from engine.config import RunConfig
    from engine.events import Failed
    from engine.compare import quality_text
    from engine.optimizations import parse_spec
    from engine.runner import execute

    MiB = 2**20
    rows, records = [], []
    load_start = os.getloadavg()[0]
    for workload, spec in ROWS:
        failures: list[Failed] = []
        cfg = RunConfig(model=args.model, device=args.device, dtype=args.dtype, workload=workload,
                        seq=args.seq, new_tokens=args.new_tokens, repeats=args.repeats,
                        optimizations=[parse_spec(spec)])
        r = execute(cfg, lambda e: failures.append(e) if isinstance(e, Failed) else None)
        if r is None:
            reason = failures[-1].message if failures else "no result"
            rows.append(f"| {workload} | `{spec}` | — | — | — | — | not applied: {reason} |")
            records.append({"workload": workload, "spec": spec, "skipped": reason})
            _progress(rows[-1], records, args.json)
            continue
        b, t, d, q = r.baseline, r.totals, r.deltas, r.quality or {}
        # The compare view's short form (training rows add the KL after the steps, against
        # the baseline trained alike), with the baseline's perplexity beside the run's.
        qual = quality_text(q)
        if q.get("perplexity") and q.get("baseline_perplexity"):
            ppl = f"ppl {q['perplexity']:.2f}"
            qual = qual.replace(ppl, f"{ppl} (base {q['baseline_perplexity']:.2f})", 1)
        warned = "; ".join(w for w in r.warnings if "FLOPs" not in w)
        rows.append(
            f"| {workload} | `{spec}` | {b['model_weights_bytes'] / MiB:.2f} → "
            f"{t.model_weights_bytes / MiB:.2f} | {b['peak_bytes'] / MiB:.2f} → "
            f"{t.peak_bytes / MiB:.2f} | ×{d['latency_ratio']:.2f}"
            + (f" (+{t.compile_seconds:.1f} s compile)" if t.compile_seconds is not None else "")
            + f" | {qual} | "
            f"{warned if len(warned) <= 240 else warned[:239] + '…'} |")
        records.append({"workload": workload, "spec": spec, "baseline": b, "deltas": d,
                        "quality": q, "peak_bytes": t.peak_bytes,
                        "compile_seconds": t.compile_seconds,
                        "weights_bytes": t.model_weights_bytes, "warnings": r.warnings})
        _progress(rows[-1], records, args.json)
    cpu = platform.processor() or platform.machine()
    table = "\n".join([
        f"{args.model} on {args.device} ({cpu}, {os.cpu_count()} cores), seq {args.seq}, "
        f"{dt.date.today().isoformat()}; baseline and optimized measured in the same run, "
        f"latency = optimized / baseline (median of {args.repeats}); 1-minute load average "
        f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (other jobs on "
        "the machine make latency ratios noisy; memory and quality figures are not affected).",
        "",
        "| workload | optimization | weights MiB | peak MiB | latency | quality | warnings |",
        "| --- | --- | --- | --- | --- | --- | --- |", *rows])
    print(table)
    if args.readme:
        from engine.optimizations import REGISTRY

        registry = "\n".join(["| id | what it does |", "| --- | --- |"]
                             + [f"| `{o.id}` | {o.summary} |" for o in REGISTRY.values()])
        text = args.readme.read_text(encoding="utf-8")
        text = _replace_block(text, "registry", registry)
        text = _replace_block(text, "optimizations-table", table)
        args.readme.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, default=str))
    return 0


def _progress(row: str, records: list[dict], path: Path | None) -> None:
    """Each row as it is measured: on stderr, and in the JSON file so far (a run cut short by a
    time limit, as on a lent GPU, keeps every row it finished)."""
    print(row, file=sys.stderr, flush=True)
    if path:
        path.write_text(json.dumps(records, indent=1, default=str))


def _replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


if __name__ == "__main__":
    raise SystemExit(main())
