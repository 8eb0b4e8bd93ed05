"""Side-by-side comparison of saved runs: per-layer and total deltas with quality."""

from __future__ import annotations

from typing import TextIO

from .format import MISSING, human_bytes
from .results import RunResult


def _signed(n: int | float | None) -> str:
    if n is None:
        return MISSING
    return ("+" if n > 0 else "−" if n < 0 else "±") + human_bytes(abs(n))


def _describe(r: RunResult) -> str:
    opts = ", ".join(a["id"] + (":" + ",".join(f"{k}={v}" for k, v in a["params"].items())
                                if a["params"] else "") for a in r.optimizations) or "none"
    c = r.config
    return (f"{r.run_id}: {c.model} {c.workload} b{c.batch} s{c.seq} {c.device} "
            f"{r.model_info.get('dtype', c.dtype)}; optimizations: {opts}")


def _quality(r: RunResult) -> str:
    q = r.quality or {}
    if q.get("kl_divergence") is not None:
        return f"KL {q['kl_divergence']:.3g}, ppl {q.get('perplexity') or 0:.2f}"
    if q.get("perplexity") is not None:
        return f"ppl {q['perplexity']:.2f}"
    if q.get("cosine_similarity") is not None:
        return f"cos {q['cosine_similarity']:.4f}"
    return MISSING


def print_comparison(runs: list[RunResult], out: TextIO) -> None:
    """Totals for every run and per-layer at-peak deltas of each run against the first."""
    ref = runs[0]
    w = out.write
    for i, r in enumerate(runs):
        w(f"[{i}] {_describe(r)}\n")
    w("\n")
    head = f"{'':4}{'peak':>11}{'Δ peak':>12}{'weights':>11}{'latency ms':>12}{'× latency':>10}  quality\n"
    w(head)
    for i, r in enumerate(runs):
        t = r.totals
        ratio = (t.plain_latency_ms / ref.totals.plain_latency_ms
                 if t.plain_latency_ms and ref.totals.plain_latency_ms else None)
        w(f"[{i}] {human_bytes(t.peak_bytes):>11}{_signed(t.peak_bytes - ref.totals.peak_bytes):>12}"
          f"{human_bytes(t.model_weights_bytes):>11}"
          f"{(f'{t.plain_latency_ms:.2f}' if t.plain_latency_ms else MISSING):>12}"
          f"{(f'{ratio:.2f}' if ratio else MISSING):>10}  {_quality(r)}\n")
    if any(r.config.model != ref.config.model for r in runs[1:]):
        w("\n(different models: per-layer deltas are shown for layers with the same name)\n")
    names = [layer.name for layer in ref.layers]
    for r in runs[1:]:
        names += [layer.name for layer in r.layers if layer.name not in names]
    w("\nat-peak bytes per layer" + "".join(f"{f'[{i}]':>12}" for i in range(len(runs)))
      + "".join(f"{f'Δ[{i}]':>12}" for i in range(1, len(runs))) + "\n")
    by_run = [{layer.name: layer for layer in r.layers} for r in runs]
    for name in names:
        vals = [m.get(name).at_peak_bytes if m.get(name) else None for m in by_run]
        row = f"{name[-23:]:<23}" + "".join(f"{human_bytes(v) if v is not None else MISSING:>12}"
                                            for v in vals)
        row += "".join(f"{_signed(v - vals[0]) if v is not None and vals[0] is not None else MISSING:>12}"
                       for v in vals[1:])
        w(row + "\n")
    unat = [r.totals.unattributed_bytes for r in runs]
    w(f"{'unattributed':<23}" + "".join(f"{human_bytes(v):>12}" for v in unat)
      + "".join(f"{_signed(v - unat[0]):>12}" for v in unat[1:]) + "\n")
    peaks = [r.totals.peak_bytes for r in runs]
    w(f"{'total (peak)':<23}" + "".join(f"{human_bytes(v):>12}" for v in peaks)
      + "".join(f"{_signed(v - peaks[0]):>12}" for v in peaks[1:]) + "\n")
