"""Side-by-side comparison of saved runs: per-layer and total deltas with quality."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .aggregate import group_layers
from .format import MISSING, human_bytes
from .results import NOISY_TIMING_SPREAD, RunResult, timing_spread

# Quality figures a scatter can use, best first: (key in RunResult.quality, axis label, better).
QUALITY_METRICS = (
    # Only where every run has it (generation with a technique): what a KV-cache policy
    # changes first (its KL is scored through the cache, engine.quality).
    ("generated_token_agreement", "generated tokens the same as the unoptimized model's",
     "higher"),
    # Only where every optimized run has it (training with a technique): what the technique
    # changes is the trained model; before its steps it is the unoptimized one.
    ("after_training.kl_divergence",
     "KL divergence after training from the unoptimized model trained alike", "lower"),
    ("perplexity", "perplexity on resources/quality_text.txt", "lower"),
    ("kl_divergence", "KL divergence from the unoptimized model", "lower"),
    ("cosine_similarity", "cosine similarity to the unoptimized model", "higher"),
)


def _signed(n: int | float | None) -> str:
    if n is None:
        return MISSING
    return ("+" if n > 0 else "−" if n < 0 else "±") + human_bytes(abs(n))


def optimizations_text(optimizations: Sequence[dict[str, Any]]) -> str:
    """``int8-dynamic, lora:rank=8`` (``none`` for a plain run)."""
    return ", ".join(
        str(a.get("id", "?")) + (":" + ",".join(f"{k}={v}" for k, v in a["params"].items())
                                 if a.get("params") else "")
        for a in optimizations or ()) or "none"


def quality_text(quality: dict[str, Any] | None) -> str:
    """A short quality figure: ``KL 0.012, ppl 31.2``, ``ppl 31.0``, ``cos 0.9990``,
    ``tokens 62.5% same, prompt KL 0`` (generation), ``tokens 62.5% same, cache KL 0.026`` (a
    cache policy: the text decoded through its cache), ``…; trained
    KL 0.0089`` (training: after the steps, against the baseline trained alike) or ``—``."""
    q = quality or {}
    parts = []
    tokens = q.get("generated_token_agreement")
    if tokens is not None:
        parts.append(f"tokens {tokens:.1%} same")
    if q.get("kl_divergence") is not None:
        # (through a cache policy's cache: the text decoded through it; else one plain pass)
        parts.append(("cache KL" if q.get("through_cache") else
                      "prompt KL" if tokens is not None else "KL") + f" {q['kl_divergence']:.3g}")
    if q.get("perplexity") is not None:
        parts.append(f"ppl {q['perplexity']:.2f}")
    if q.get("cosine_similarity") is not None:
        parts.append(f"cos {q['cosine_similarity']:.4f}")
    text = ", ".join(parts)
    trained = q.get("after_training") or {}
    if trained.get("kl_divergence") is not None:
        text += ("; " if text else "") + f"trained KL {trained['kl_divergence']:.3g}"
    elif trained.get("cosine_similarity") is not None:
        text += ("; " if text else "") + f"trained cos {trained['cosine_similarity']:.4f}"
    return text or MISSING


def quality_figure(quality: dict[str, Any] | None, key: str) -> Any:
    """``quality[key]``; ``after_training.KEY`` reads the figure after the training steps."""
    q = quality or {}
    if key.startswith("after_training."):
        return (q.get("after_training") or {}).get(key.split(".", 1)[1])
    return q.get(key)


def input_size(r: RunResult) -> str:
    """The input a run measured, from its inputs' real shape (a prompt sets the length, not
    ``seq``): ``b1 s60 +8 new`` for generation, ``b2 s128`` otherwise."""
    shape = (r.inputs or {}).get("shape") or [r.config.batch, r.config.seq]
    return (f"b{shape[0]} s{shape[1]}"
            + (f" +{r.config.new_tokens} new" if r.config.workload == "generate" else ""))


def sizes_of(runs: Sequence[RunResult]) -> list[str]:
    """The input sizes of ``runs`` that differ within one workload, in order of first
    appearance (empty when every workload's runs had the same input: runs of different
    workloads are told apart by their workloads already)."""
    by_workload: dict[str, list[str]] = {}
    for r in runs:
        by_workload.setdefault(r.config.workload, []).append(input_size(r))
    differing = [s for sizes in by_workload.values() if len(set(sizes)) > 1 for s in sizes]
    return list(dict.fromkeys(differing))


def _describe(r: RunResult) -> str:
    opts = optimizations_text(r.optimizations)
    c = r.config
    return (f"{r.run_id}: {c.model} {c.workload} {input_size(r)} {c.device} "
            f"{r.model_info.get('dtype', c.dtype)}; optimizations: {opts}"
            + ("; ESTIMATE (fake tensors, no latency)" if r.is_estimate else ""))


def _quality(r: RunResult) -> str:
    return quality_text(r.quality)


def model_key(run: RunResult) -> str:
    """What identifies a run's model: the folder it was loaded from, with links resolved (a
    folder named through a symbolic link, ``demo`` and its folder are the same model), else the
    model as the run names it (a preset, a Hub id)."""
    path = (run.model_info or {}).get("path")
    if isinstance(path, str) and os.path.isabs(path):  # (a relative one: from where?)
        return os.path.realpath(path)
    return str(run.config.model)


def same_model(a: RunResult, b: RunResult) -> bool:
    """Whether two runs measured the same model (see :func:`model_key`)."""
    return a.config.model == b.config.model or model_key(a) == model_key(b)


@dataclass
class Comparison:
    """Saved runs side by side, for the compare view: the first run is the reference.

    ``bars`` are the chart's bar groups (blocks and top-level layers, as in the memory chart),
    matched by name across runs; ``at_peak[i][j]`` is run ``i``'s bytes in bar ``j`` (``None``
    where the run has no such layer). ``unattributed`` and ``peaks`` complete each run's sum:
    ``sum(at_peak[i]) + unattributed[i] == peaks[i]``. ``metric`` is the quality figure every
    run with a quality record shares (``None`` if none), ``quality[i]`` its value per run.
    """

    runs: list[RunResult]
    bars: list[str] = field(default_factory=list)
    at_peak: list[list[int | None]] = field(default_factory=list)
    unattributed: list[int] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    metric: str | None = None
    metric_label: str = ""
    metric_better: str = ""
    quality: list[float | None] = field(default_factory=list)
    latency_ms: list[float | None] = field(default_factory=list)  # plain (uninstrumented) pass
    latency_ratio: list[float | None] = field(default_factory=list)  # against the first run
    # slowest / fastest of each run's plain timing passes (None: fewer than two passes)
    latency_spread: list[float | None] = field(default_factory=list)
    # Each run against the unoptimized model measured in the same run (the guide's runs, each
    # with its own baseline and none unoptimized), not against the first run: ``peak_delta``
    # and ``latency_ratio`` then say what the run's optimizations did, as the guide's table.
    against_own: bool = False
    peak_delta: list[int | None] = field(default_factory=list)
    # each run's rank in the guide's table (``#rank``), when ``against_own``: a run missing
    # from the store must not renumber the ones after it
    ranks: list[int] = field(default_factory=list)

    def tag(self, i: int) -> str:
        """Run ``i``'s mark in the charts and tables: ``[0]`` (the reference), or the rank
        ``#1`` against their own baselines (a guide's table numbers them from 1)."""
        if not self.against_own:
            return f"[{i}]"
        return f"#{self.ranks[i] if i < len(self.ranks) else i + 1}"

    def ratio_noisy(self, i: int) -> bool:
        """Run ``i``'s latency ratio rests on timing passes (its own or the reference's) that
        disagree too much to trust it (the runs' own warnings say by how much); False where
        the run has no ratio."""
        # (against its own baseline, that baseline's passes count, not run [0]'s)
        spreads = ([self.latency_spread[i],
                    timing_spread((self.runs[i].baseline or {}).get("plain_ms"))]
                   if self.against_own else [self.latency_spread[i], self.latency_spread[0]])
        return self.latency_ratio[i] is not None and any(
            (s or 0) > NOISY_TIMING_SPREAD for s in spreads)

    def ratio_text(self, i: int) -> str:
        """"×0.88", with " (noisy)" when :meth:`ratio_noisy`; "—" without a ratio."""
        ratio = self.latency_ratio[i]
        if ratio is None:
            return MISSING
        return f"×{ratio:.2f}" + (" (noisy)" if (i or self.against_own) and self.ratio_noisy(i)
                                  else "")

    @property
    def different_models(self) -> bool:
        return any(not same_model(r, self.runs[0]) for r in self.runs[1:])

    @property
    def workloads(self) -> list[str]:
        return workloads_of(self.runs)

    @property
    def sizes(self) -> list[str]:
        return sizes_of(self.runs)

    def labels(self) -> list[str]:
        """A short name per run that tells the runs apart: the user's label (the name they
        gave the run), else the optimizations; then the workload where that repeats, then the
        input size, then the run id's end."""
        # ("unoptimized", not the optimizations column's "none": "[1] none (estimate)" read as
        # a run of nothing)
        names = [(" ".join((r.config.label or "").split())
                  or (optimizations_text(r.optimizations) if r.optimizations else "unoptimized"))
                 + (" (estimate)" if r.is_estimate else "") for r in self.runs]
        for extra in (lambda r: r.config.model, lambda r: r.config.workload, input_size,
                      lambda r: r.run_id[-4:]):
            # An extra is added to a repeated name only where it tells that name's runs apart.
            telling = {n for n in names if len({extra(r) for m, r in zip(names, self.runs)
                                                 if m == n}) > 1}
            names = [f"{n} · {extra(r)}" if n in telling else n
                     for n, r in zip(names, self.runs)]
        return names

    def deltas(self, i: int) -> list[int | None]:
        """Run ``i`` minus the first run, per bar (``None`` where either lacks the bar)."""
        ref = self.at_peak[0]
        return [None if a is None or b is None else a - b for a, b in zip(self.at_peak[i], ref)]

    def no_metric_reason(self) -> str:
        """Why no quality figure is shared (``metric`` is None), from what each run holds."""
        estimates = [self.tag(i) for i, r in enumerate(self.runs) if r.is_estimate]
        without = [self.tag(i) for i, r in enumerate(self.runs) if not r.is_estimate
                   and not any(quality_figure(r.quality, key) is not None
                               for key, _, _ in QUALITY_METRICS)]
        held = {self.tag(i): [label for key, label, _ in QUALITY_METRICS
                           if quality_figure(r.quality, key) is not None]
                for i, r in enumerate(self.runs)}
        parts = []
        if estimates:
            verb = "is an estimate" if len(estimates) == 1 else "are estimates"
            parts.append(f"{', '.join(estimates)} {verb} (fake tensors compute no outputs to "
                         "judge)")
        if without:
            parts.append(f"{', '.join(without)} {'has' if len(without) == 1 else 'have'} no "
                         "quality figure (perplexity needs a tokenizer; KL divergence and "
                         "cosine similarity exist only for optimized runs)")
        others = [f"{n} has {' and '.join(h)}" for n, h in held.items() if h]
        if others and (estimates or without):
            parts.append("only " + "; ".join(others))
        elif others:
            parts.append("their figures differ in kind (" + "; ".join(others) + ")")
        return "No quality figure is shared by these runs: " + "; ".join(parts) + "."

    def not_plotted(self) -> list[str]:
        """Run ids the scatter leaves out (no figure for ``metric``)."""
        return [r.run_id for r, q in zip(self.runs, self.quality) if q is None]


def workloads_of(runs: Sequence[RunResult]) -> list[str]:
    """The workloads of ``runs``, in order of first appearance (more than one: their peaks and
    latencies are of different work)."""
    return list(dict.fromkeys(r.config.workload for r in runs))


def reference_first(runs: Sequence[RunResult], preferred: str | None = None
                    ) -> tuple[list[RunResult], str]:
    """``runs`` with the one to compare against moved to the front, and why it was chosen.

    The reference is the run ``preferred`` names (the window's chosen baseline) when it is
    among ``runs``; else the first measured run without optimizations, since "what did each
    optimization change" reads against the unoptimized model; else the first run. The others
    keep their order. The CLI does not call this: there the first run named is the reference."""
    runs = list(runs)
    picks = [(lambda r: r.run_id == preferred, "the chosen baseline")] if preferred else []

    def unoptimized(r: RunResult) -> bool:
        return not r.optimizations and not r.is_estimate

    workloads = [r.config.workload for r in runs]
    if len(set(workloads)) > 1:
        # (a generate run chosen because it came first set every forward run's Δ against
        # another workload: the workload most of the runs share goes first)
        common = max(dict.fromkeys(workloads), key=workloads.count)
        picks.append((lambda r: unoptimized(r) and r.config.workload == common,
                      f"the first unoptimized {common} run, the workload most of them share"))
    picks.append((unoptimized, "the first unoptimized run"))
    for matches, why in picks:
        for i, run in enumerate(runs):
            if matches(run):
                return [run, *runs[:i], *runs[i + 1:]], why
    return runs, "the first run"


def compare(runs: Sequence[RunResult], against_own: bool = False,
            ranks: Sequence[int] | None = None) -> Comparison:
    """Align ``runs`` (two or more; the first is the reference) bar by bar. With
    ``against_own``, each run's peak and latency are set against the unoptimized model
    measured in the same run (``RunResult.baseline``; ``None`` where it has none)."""
    if not runs:
        raise ValueError("compare() needs at least one run")
    comparison = Comparison(runs=list(runs), against_own=against_own,
                            ranks=list(ranks) if ranks is not None else [])
    per_run: list[dict[str, int]] = []
    for r in runs:
        groups = {g.name: g.total_bytes for g in group_layers(r.layers)}
        per_run.append(groups)
        # A name the earlier runs lack goes after the one it follows in its own run: a
        # 16-layer model's layers 6 to 15 beside a 6-layer one's were drawn after its head.
        at = -1
        for name in groups:
            if name in comparison.bars:
                at = comparison.bars.index(name)
            else:
                at += 1
                comparison.bars.insert(at, name)
    comparison.at_peak = [[groups.get(name) for name in comparison.bars] for groups in per_run]
    comparison.unattributed = [r.totals.unattributed_bytes for r in runs]
    comparison.peaks = [r.totals.peak_bytes for r in runs]
    comparison.latency_ms = [r.totals.plain_latency_ms for r in runs]
    if against_own:
        bases = [r.baseline or {} for r in runs]
        comparison.peak_delta = [p - b["peak_bytes"] if isinstance(b.get("peak_bytes"), int)
                                 else None for p, b in zip(comparison.peaks, bases)]
        comparison.latency_ratio = [
            ms / b["plain_latency_ms"] if ms and b.get("plain_latency_ms") else None
            for ms, b in zip(comparison.latency_ms, bases)]
    else:
        ref_ms = comparison.latency_ms[0]
        comparison.peak_delta = [p - comparison.peaks[0] for p in comparison.peaks]
        comparison.latency_ratio = [ms / ref_ms if ms and ref_ms else None
                                    for ms in comparison.latency_ms]
    comparison.latency_spread = [timing_spread((r.timing or {}).get("plain_ms")) for r in runs]
    for key, label, better in QUALITY_METRICS:
        values = [quality_figure(r.quality, key) for r in runs]
        needed = (len(runs) if key == "generated_token_agreement"
                  else max(1, sum(bool(r.optimizations) for r in runs))
                  if key.startswith("after_training.") else min(2, len(runs)))
        if sum(v is not None for v in values) >= needed:
            comparison.metric, comparison.metric_label = key, label
            comparison.metric_better = better
            comparison.quality = [float(v) if v is not None else None for v in values]
            break
    else:
        comparison.quality = [None] * len(runs)
    return comparison


def print_comparison(runs: list[RunResult], out: TextIO) -> None:
    """Totals for every run and per-layer at-peak deltas of each run against the first."""
    ref = runs[0]
    w = out.write
    for i, r in enumerate(runs):
        w(f"[{i}] {_describe(r)}\n")
    w("\n")
    c = compare(runs)
    ratios = [c.ratio_text(i) for i in range(len(runs))]
    width = max(10, *(len(r) + 1 for r in ratios))
    head = (f"{'':4}{'peak':>11}{'Δ peak':>12}{'weights':>11}{'latency ms':>12}"
            f"{'× latency':>{width}}  quality\n")
    w(head)
    for i, r in enumerate(runs):
        t = r.totals
        w(f"[{i}] {human_bytes(t.peak_bytes):>11}{_signed(t.peak_bytes - ref.totals.peak_bytes):>12}"
          f"{human_bytes(t.model_weights_bytes):>11}"
          f"{(f'{t.plain_latency_ms:.2f}' if t.plain_latency_ms else MISSING):>12}"
          f"{ratios[i]:>{width}}  {_quality(r)}\n")
    if any(c.ratio_noisy(i) for i in range(1, len(runs))):
        w(f"\n(noisy: that run's or [0]'s timing passes were more than ×{NOISY_TIMING_SPREAD:g} "
          "apart, so the latency ratio may be off; their warnings say how far)\n")
    if any((r.quality or {}).get("kl_divergence") is not None for r in runs):
        w("\n(quality: a run's KL, in nats per token, is against its own unoptimized model, "
          "measured in the same run, not against [0])\n")
    own = [(i, (r.deltas or {}).get("latency_ratio")) for i, r in enumerate(runs) if i]
    own = [(i, x) for i, x in own if x is not None]
    if own:
        # A run with optimizations also timed its unoptimized model in the same process, the
        # same minutes apart: on a busy machine that ratio and the one above (two runs made
        # apart) can disagree, even in direction.
        w("\n(each optimized run's own ratio, against the unoptimized model timed in the same "
          "run: " + ", ".join(f"[{i}] ×{x:.2f}" for i, x in own) + "; the ratio above sets "
          "runs made apart side by side, so machine load between them is in it too)\n")
    if any(not same_model(r, ref) for r in runs[1:]):
        w("\n(different models: per-layer deltas are shown for layers with the same name)\n")
    workloads = workloads_of(runs)
    if len(workloads) > 1:
        w(f"\n(different workloads, {', '.join(workloads)}: their peaks and latencies measure "
          "different work)\n")
    sizes = sizes_of(runs)
    if len(sizes) > 1:
        w(f"\n(different inputs, {', '.join(sizes)}: their peaks and latencies measure "
          "different amounts of work, not only what the optimizations changed)\n")
    names = [layer.name for layer in ref.layers]
    for r in runs[1:]:
        names += [layer.name for layer in r.layers if layer.name not in names]
    # Wide enough for the longest name (up to a limit); a longer one keeps its end after "…".
    width = min(max([len("at-peak bytes per layer"), *map(len, names)]), 48)

    def label(name: str) -> str:
        return name if len(name) <= width else "…" + name[-(width - 1):]

    w(f"\n{'at-peak bytes per layer':<{width}}"
      + "".join(f"{f'[{i}]':>12}" for i in range(len(runs)))
      + "".join(f"{f'Δ[{i}]':>12}" for i in range(1, len(runs))) + "\n")
    by_run = [{layer.name: layer for layer in r.layers} for r in runs]
    for name in names:
        vals = [m.get(name).at_peak_bytes if m.get(name) else None for m in by_run]
        row = f"{label(name):<{width}}" + "".join(
            f"{human_bytes(v) if v is not None else MISSING:>12}" for v in vals)
        row += "".join(
            f"{_signed(v - vals[0]) if v is not None and vals[0] is not None else MISSING:>12}"
            for v in vals[1:])
        w(row + "\n")
    unat = [r.totals.unattributed_bytes for r in runs]
    w(f"{'unattributed':<{width}}" + "".join(f"{human_bytes(v):>12}" for v in unat)
      + "".join(f"{_signed(v - unat[0]):>12}" for v in unat[1:]) + "\n")
    peaks = [r.totals.peak_bytes for r in runs]
    w(f"{'total (peak)':<{width}}" + "".join(f"{human_bytes(v):>12}" for v in peaks)
      + "".join(f"{_signed(v - peaks[0]):>12}" for v in peaks[1:]) + "\n")
