"""The measured guide: every technique of "reducing working memory" run on the user's own model.

Guides to reducing the memory of large language models list techniques and say what each does,
without numbers. :func:`run_guide` runs each applicable technique from the registry (and a few
combinations) as one MemLens run, which measures the unoptimized model and the optimized one in
the same process, so every delta is a ratio from one sitting on one machine. Each entry keeps the
claim a guide makes (``Claim``: which quantity it says goes down) and the measured numbers; the
verdict ("as claimed", "contrary to the claim", "no change") is computed from the numbers, and
no sentence about an effect is fixed text. Techniques that cannot run here are listed with the
engine's reason.

Nothing here imports Qt. ``memlens guide`` (``engine.cli``) writes ``guide.json`` and a Markdown
report; the window and ``memlens report`` render the saved runs as usual.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import RunConfig
from .errors import Cancelled, ErrorKind, MemLensError
from .events import Event, Failed, Progress
from .format import human_bytes, quality_parts
from .results import LOSS_ROW, bytes_by_part, timing_spread

# What guides claim, as (quantity that goes down). Quantities: "peak" (bytes at the measured
# peak), "weights" (model weight bytes), "latency" (plain pass time), "optimizer_state",
# "kv_cache". The wording of a note is built from the measured numbers; only the claim is fixed.
CLAIMS = {
    "cast": ("weights", "lower precision halves the weights"),
    "autocast": ("peak", "mixed precision reduces activation memory"),
    "int8-dynamic": ("weights", "int8 quantization shrinks the weights about four times"),
    "torchao-int8": ("weights", "int8 weight quantization shrinks the weights"),
    "torchao-int4": ("weights", "int4 weight quantization shrinks the weights about four "
                                "times (from bf16)"),
    "torchao-fp8": ("weights", "fp8 weights take a byte each: half of bf16, a quarter of fp32"),
    "quanto-weights": ("weights", "int8/int4 weight quantization shrinks the weights two to "
                                  "eight times"),
    "sparsity-24": ("weights", "2:4 sparsity stores half of the weights"),
    "prune-unstructured": ("weights", "pruning removes weights"),
    "prune-ffn": ("weights", "structured pruning removes weights"),
    "prune-heads": ("weights", "pruning attention heads removes weights"),
    "drop-blocks": ("weights", "dropping layers removes weights"),
    "attention": ("peak", "efficient attention reduces activation memory"),
    "sliding-window": ("kv_cache", "local attention bounds the KV cache"),
    "kv-cache": ("kv_cache", "a different KV-cache policy reduces cache memory"),
    "checkpointing": ("peak", "activation checkpointing trades compute for activation memory"),
    "freeze-base": ("optimizer_state", "freezing the base removes its gradients and optimizer "
                                        "state"),
    "lora": ("optimizer_state", "LoRA trains few parameters: small gradients and optimizer "
                                "state"),
    "low-bit-optimizer": ("optimizer_state", "8-bit optimizer states are a quarter of fp32"),
    "compile": ("latency", "a compiled graph runs faster than eager execution"),
}

# How much a claim says the quantity changes, as (lowest, highest) ratio after / before, where it
# names an amount ("halves", "a quarter of fp32"). A measured ratio outside the range (with
# MAGNITUDE_TOLERANCE either side) goes the claimed way only "partly". "fp8-weights" stands for
# one byte per parameter, whatever the baseline's dtype (a quarter of fp32, half of bf16).
MAGNITUDES: dict[str, tuple[float, float] | str] = {
    "cast": (0.5, 0.5),
    "int8-dynamic": (0.25, 0.25),
    "torchao-int4": (0.25, 0.25),
    "torchao-fp8": "fp8-weights",
    "quanto-weights": (0.125, 0.5),
    "sparsity-24": (0.5, 0.5),
    "low-bit-optimizer": (0.25, 0.25),
}
MAGNITUDE_TOLERANCE = 0.15

# Run failures that are about the model, the sizes or the device, not about one technique: every
# other technique would fail the same way, so the guide stops with the message instead.
WHOLE_GUIDE_FAILURES = ("not_found", "invalid_model", "environment", "corrupt_checkpoint", "unsafe_checkpoint",
                        "remote_code", "offline", "too_large", "no_device")

# The KV-cache policies claim different things: a static cache is for compiled decoding and
# preallocates, so its claim is that it holds at least the dynamic cache's bytes.
KV_CLAIMS = {
    "static": ("kv_cache", "up", "a static cache preallocates every position up front (for "
                                 "compiled decoding): at least the dynamic cache's bytes"),
    "fp8": ("kv_cache", "down", "an fp8 cache stores a byte per key and value element"),
    "quanto-int4": ("kv_cache", "down", "a 4-bit quantized cache shrinks keys and values"),
    "quanto-int2": ("kv_cache", "down", "a 2-bit quantized cache shrinks keys and values"),
    "offloaded": ("peak", "down", "offloading keeps the KV cache in CPU memory, lowering the GPU "
                                  "peak"),
}

# (workload, optimization specs): one technique each, then the combinations the issue names.
PLAN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("forward", ("cast:dtype=bfloat16",)),
    ("forward", ("autocast:dtype=bfloat16",)),
    ("forward", ("int8-dynamic",)),
    ("forward", ("torchao-int8:activations=weight-only",)),
    ("forward", ("torchao-fp8:activations=weight-only",)),
    ("forward", ("torchao-fp8:activations=dynamic",)),  # fp8 matmuls: CUDA 8.9+
    ("forward", ("torchao-int4:group_size=128",)),
    ("forward", ("quanto-weights:weights=qint8",)),
    ("forward", ("quanto-weights:weights=qint4",)),
    ("forward", ("prune-unstructured:amount=0.5",)),
    ("forward", ("prune-unstructured:amount=0.5,permanent=true",)),
    ("forward", ("sparsity-24",)),
    ("forward", ("prune-ffn:amount=0.25",)),
    ("forward", ("prune-heads:groups=1",)),
    ("forward", ("drop-blocks:count=2",)),
    ("forward", ("attention:impl=eager",)),
    ("forward", ("attention:impl=sdpa",)),
    ("forward", ("compile",)),
    ("generate", ("cast:dtype=bfloat16",)),  # alone, to split the combination below
    ("generate", ("kv-cache:policy=static",)),
    ("generate", ("kv-cache:policy=fp8",)),
    ("generate", ("kv-cache:policy=quanto-int4",)),
    ("generate", ("kv-cache:policy=offloaded",)),
    ("generate", ("sliding-window:window=64",)),
    ("train", ("checkpointing",)),
    ("train", ("freeze-base",)),
    ("train", ("lora:rank=8,targets=attention",)),
    ("train", ("low-bit-optimizer:bits=8",)),
    ("train", ("low-bit-optimizer:bits=8,backend=bitsandbytes",)),
    # Sensible combinations: inference, then fine-tuning.
    ("generate", ("cast:dtype=bfloat16", "kv-cache:policy=fp8")),
    ("train", ("lora:rank=8,targets=attention", "checkpointing", "low-bit-optimizer:bits=8")),
)


@dataclass
class Entry:
    """One technique (or combination) on one workload: measured, or why it could not run."""

    workload: str
    specs: list[str]
    status: str = "ok"  # ok | not applicable | failed | cancelled
    reason: str = ""
    run_id: str = ""
    claim: str = ""
    claimed_quantity: str = ""
    claimed_direction: str = "down"  # the quantity the claim says goes down (or up)
    baseline: dict[str, Any] = field(default_factory=dict)  # bytes / ms before
    measured: dict[str, Any] = field(default_factory=dict)  # bytes / ms after
    latency_ratio: float | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""
    note: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return " + ".join(self.specs)

    @property
    def latency_noisy(self) -> bool:
        """The timing passes of this run or of its baseline spread too far apart to trust the
        latency ratio (the run's own warning says by how much)."""
        from .results import NOISY_TIMING_SPREAD

        return ((self.measured.get("latency_spread") or 0) > NOISY_TIMING_SPREAD
                or (self.measured.get("baseline_drift") or 0) > NOISY_TIMING_SPREAD)

    @property
    def peak_saved_bytes(self) -> int | None:
        if "peak_bytes" not in self.baseline or "peak_bytes" not in self.measured:
            return None
        return self.baseline["peak_bytes"] - self.measured["peak_bytes"]


@dataclass
class Guide:
    model: str
    device: str
    FILE_OPTIONAL = ("device",)  # (from_dict reads a guide.json without one: engine.records)
    entries: list[Entry] = field(default_factory=list)
    seq: int = 0
    new_tokens: int = 0
    planned: int = 0  # techniques the guide set out to run; more than entries: cut short
    dtype: str = "auto"
    batch: int = 1
    repeats: int = 0  # timing passes per run (0: not recorded)
    weights_dtype: str = ""  # what "auto" resolved to, from the first run
    quality_text: str = ""  # the text quality is measured on

    @property
    def partial(self) -> bool:
        return len(self.entries) < self.planned

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "guide", "model": self.model, "device": self.device, "seq": self.seq,
                "new_tokens": self.new_tokens, "planned": self.planned, "dtype": self.dtype,
                "batch": self.batch, "repeats": self.repeats,
                "weights_dtype": self.weights_dtype, "quality_text": self.quality_text,
                "entries": [asdict(e) for e in self.entries]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Guide:
        """A guide read back from ``guide.json`` (unknown keys are ignored)."""
        if not isinstance(data, dict) or "entries" not in data or "model" not in data:
            raise MemLensError(ErrorKind.INVALID_WORKLOAD, "The file is not a MemLens guide.",
                               "Pass the guide.json that memlens guide wrote.")
        names = set(Entry.__dataclass_fields__)
        entries = [Entry(**{k: v for k, v in e.items() if k in names})
                   for e in data.get("entries") or []]
        return cls(model=str(data["model"]), device=str(data.get("device", "")),
                   entries=entries, seq=int(data.get("seq") or 0),
                   new_tokens=int(data.get("new_tokens") or 0),
                   planned=int(data.get("planned") or 0),
                   dtype=str(data.get("dtype") or "auto"), batch=int(data.get("batch") or 1),
                   repeats=int(data.get("repeats") or 0),
                   weights_dtype=str(data.get("weights_dtype") or ""),
                   quality_text=str(data.get("quality_text") or ""))

    def ranked(self, workload: str) -> list[Entry]:
        """Measured entries of ``workload``, most peak memory saved first."""
        done = [e for e in self.entries if e.workload == workload and e.status == "ok"]
        return sorted(done, key=lambda e: -(e.peak_saved_bytes or 0))

    def workloads(self) -> list[str]:
        return list(dict.fromkeys(e.workload for e in self.entries))


@dataclass(frozen=True)
class GuideFinished:
    """The event a guide ends with (the engine process sends it to the window)."""

    guide: Guide


@dataclass(frozen=True)
class GuideEntryDone:
    """The guide so far, after each technique (a copy: the guide itself goes on growing); the
    window shows it as it grows, and keeps it if the guide is cancelled."""

    guide: Guide


_QUANTITY_KEYS = {"peak": "peak_bytes", "weights": "model_weights_bytes",
                  "optimizer_state": "optimizer_state_bytes", "kv_cache": "kv_cache_bytes",
                  "latency": "plain_latency_ms"}


def _claim(specs: Sequence[str]) -> tuple[str, str, str]:
    """(quantity, direction "down" or "up", the claim in words) for a technique or a mix."""
    if len(specs) > 1:
        return "peak", "down", "combined, the techniques reduce the peak"
    spec = specs[0]
    ident = spec.split(":", 1)[0]
    if ident == "attention" and "impl=eager" in spec:
        # Going back to eager is the experiment that shows what the efficient kernel saves.
        return "peak", "up", "eager attention materialises the attention maps, raising the peak"
    if ident == "kv-cache":
        policy = spec.split("policy=", 1)[1].split(",", 1)[0] if "policy=" in spec else "static"
        if policy in KV_CLAIMS:
            return KV_CLAIMS[policy]
    quantity, text = CLAIMS.get(ident, ("peak", "it reduces memory"))
    return quantity, "down", text


_PEAK_PARTS = (("weights", "weights_bytes"), ("activations", "activation_bytes"),
               ("KV cache", "kv_cache_bytes"), ("gradients", "gradient_bytes"),
               ("optimizer state", "optimizer_state_bytes"), ("temporaries", "temporary_bytes"),
               ("unattributed", "unattributed_bytes"))


def _fill(entry: Entry, result: Any) -> None:
    base, t = result.baseline or {}, result.totals
    entry.run_id = result.run_id
    entry.baseline = {k: base.get(k) for k in ("peak_bytes", "model_weights_bytes",
                                                "activation_bytes", "kv_cache_bytes",
                                                "gradient_bytes", "optimizer_state_bytes",
                                                "plain_latency_ms")}
    entry.measured = {"peak_bytes": t.peak_bytes, "model_weights_bytes": t.model_weights_bytes,
                      "activation_bytes": t.activation_bytes, "kv_cache_bytes": t.kv_cache_bytes,
                      "gradient_bytes": t.gradient_bytes,
                      "optimizer_state_bytes": t.optimizer_state_bytes,
                      "plain_latency_ms": t.plain_latency_ms}
    if getattr(t, "compile_seconds", None) is not None:
        entry.measured["compile_seconds"] = t.compile_seconds
    applied = list(result.optimizations or [])
    if len(applied) == 1 and applied[0].get("changed_bytes_before"):
        # (the claim's ratio is over what the technique changed: int8 Linear weights a quarter
        # of float32, beside a tied embedding it leaves as it was)
        entry.measured["changed_weights"] = {
            "modules": applied[0].get("modules_changed"),
            "before": applied[0]["changed_bytes_before"],
            "after": applied[0].get("changed_bytes_after")}
    entry.baseline["parameters"] = base.get("parameters")
    # Where the unoptimized peak goes (the guide's line above each workload's table).
    entry.baseline["at_peak"] = {part: base.get(key) for part, key in _PEAK_PARTS
                                 if base.get(key)}
    loss = ((base.get("layers") or {}).get(LOSS_ROW) or {}).get("at_peak_bytes")
    if loss:
        entry.baseline["loss_at_peak_bytes"] = loss
    # Where at the peak the technique saved or added: bytes by part of the model, before/after.
    rows = (base.get("layers") or {}).values()
    if rows and all("kind" in r for r in rows):
        entry.baseline["parts"] = bytes_by_part(
            [(r["kind"], r.get("at_peak_bytes")) for r in rows], base.get("unattributed_bytes"))
        entry.measured["parts"] = bytes_by_part(result.layers, t.unattributed_bytes)
    spreads = [s for s in (timing_spread((result.timing or {}).get("plain_ms")),
                           timing_spread(base.get("plain_ms"))) if s is not None]
    entry.measured["latency_spread"] = max(spreads) if spreads else None
    entry.latency_ratio = (result.deltas or {}).get("latency_ratio")
    entry.quality = dict(result.quality or {})
    entry.warnings = [w for w in result.warnings if "FLOPs" not in w]
    entry.verdict = verdict(entry)
    entry.note = note(entry)


def expected_ratio(entry: Entry) -> tuple[float, float] | None:
    """The (lowest, highest) after / before ratio the claim names, or None if it names none."""
    if len(entry.specs) != 1:
        return None
    expected = MAGNITUDES.get(entry.specs[0].split(":", 1)[0])
    if expected == "fp8-weights":
        weights, params = entry.baseline.get("model_weights_bytes"), entry.baseline.get(
            "parameters")
        if not weights or not params:
            return None
        return (params / weights,) * 2  # one byte per parameter over the baseline's bytes
    return expected if isinstance(expected, tuple) else None


def verdict(entry: Entry) -> str:
    """The claim against the numbers: its direction, then the amount where it names one."""
    key = _QUANTITY_KEYS[entry.claimed_quantity]
    before, after = entry.baseline.get(key), entry.measured.get(key)
    if before is None or after is None:
        return "not measurable here"
    if after == before:
        return "no change"
    if (after < before) != (entry.claimed_direction == "down"):
        return "contrary to the claim"
    expected = expected_ratio(entry)
    if expected is None or not before:
        return "as claimed"
    changed = entry.measured.get("changed_weights") if key == "model_weights_bytes" else None
    if changed and changed.get("after") is not None:
        # (fp8's one byte per parameter over the baseline's bytes per parameter holds for the
        # modules it changed as for the whole model, whose weights share one dtype)
        before, after = changed["before"], changed["after"]
    ratio, (low, high) = after / before, expected
    if low * (1 - MAGNITUDE_TOLERANCE) <= ratio <= high * (1 + MAGNITUDE_TOLERANCE):
        return "as claimed"
    claimed = f"×{low:.2f}" if low == high else f"×{low:.2f}–{high:.2f}"
    if (ratio < low) == (entry.claimed_direction == "down"):  # further than the claim went
        return f"more than claimed: ×{ratio:.2f} of before, the claim says {claimed}"
    return f"partly: ×{ratio:.2f} of before, the claim says {claimed}"


def _pct(after: float, before: float) -> str:
    """The change in percent, signed with a real minus sign (as the table's changes are)."""
    return f"{(after - before) / before * 100:+.1f}%".replace("-", "−") if before else "—"


def _where(before: dict[str, int] | None, after: dict[str, int] | None,
           peak: int | None) -> str:
    """The parts of the model whose bytes at the peak changed most (at most three, each by 1%
    of the unoptimized peak or more): "the blocks −3.9 MiB, the loss +1.0 MiB"."""
    if not before or not after or not peak:
        return ""
    change = {p: after.get(p, 0) - before.get(p, 0) for p in {*before, *after}}
    big = sorted((p for p, d in change.items() if abs(d) >= 0.01 * peak),
                 key=lambda p: -abs(change[p]))[:3]
    return ", ".join(f"{p} {'+' if change[p] > 0 else '−'}{human_bytes(abs(change[p]))}"
                     for p in big)


def note(entry: Entry) -> str:
    """One paragraph: the claim, then what was measured, every effect stated with its number."""
    b, m = entry.baseline, entry.measured
    parts = [f"Claim: {entry.claim}."]
    key = _QUANTITY_KEYS[entry.claimed_quantity]
    if b.get(key) is not None and m.get(key) is not None:
        if key == "plain_latency_ms":
            parts.append(f"Measured {entry.claimed_quantity}: {b[key]:.2f} → {m[key]:.2f} ms "
                         f"({_pct(m[key], b[key])}): {entry.verdict}.")
        else:
            changed = m.get("changed_weights") if key == "model_weights_bytes" else None
            over = ""
            if (changed and changed.get("after") is not None and len(entry.specs) == 1
                    and expected_ratio(entry)):
                rest = b[key] - changed["before"]
                over = (f"; over the {changed['modules']} module(s) it changed "
                        f"{human_bytes(changed['before'])} → {human_bytes(changed['after'])} "
                        f"(×{changed['after'] / changed['before']:.2f})"
                        + (f", beside {human_bytes(rest)} it left as it was" if rest > 0
                           else ""))
            parts.append(f"Measured {entry.claimed_quantity.replace('_', ' ')}: "
                         f"{human_bytes(b[key])} → {human_bytes(m[key])} "
                         f"({_pct(m[key], b[key])}){over}: {entry.verdict}.")
    if key != "peak_bytes" and b.get("peak_bytes") is not None:
        parts.append(f"Peak {human_bytes(b['peak_bytes'])} → {human_bytes(m['peak_bytes'])} "
                     f"({_pct(m['peak_bytes'], b['peak_bytes'])}).")
    where = _where(b.get("parts"), m.get("parts"), b.get("peak_bytes"))
    if where:
        parts.append(f"At the peak: {where}.")
    if entry.latency_ratio is not None:
        from .results import NOISY_TIMING_SPREAD

        spread = m.get("latency_spread") or 0
        why = (f"timing passes ×{spread:.1f} apart" if spread > NOISY_TIMING_SPREAD else
               f"its unoptimized model took ×{m.get('baseline_drift') or 0:.1f} the typical "
               "time of this workload's other baselines: the machine was busier or quieter then")
        parts.append(f"Latency ×{entry.latency_ratio:.2f} of the unoptimized model's"
                     + (f" (noisy: {why}, so this ratio may be off)." if entry.latency_noisy
                        else "."))
    if m.get("compile_seconds") is not None:
        parts.append(f"Compiling took {m['compile_seconds']:.1f} s (first call minus the steady "
                     "state), not counted in the latency.")
    quality = quality_parts(entry.quality)
    if quality:
        parts.append("Quality: " + "; ".join(quality) + ".")
    return " ".join(parts)


def run_guide(model: str = "demo", device: str = "cpu", seq: int = 128, new_tokens: int = 16,
              workloads: Sequence[str] = ("forward", "generate", "train"),
              techniques: Sequence[str] | None = None, dtype: str = "auto", batch: int = 1,
              plan: Sequence[tuple[str, Sequence[str]]] = PLAN, repeats: int = 3,
              listener: Callable[[Event], None] = lambda e: None,
              cancel: threading.Event | None = None, store: Any = None,
              execute: Callable[..., Any] | None = None,
              on_entry: Callable[[Guide], None] | None = None,
              trust_remote_code: bool = False) -> Guide:
    """Run ``plan`` (only its ``workloads``); progress as ``Progress("guide", i/n, label)``
    events to ``listener``; a cancel stops after the current run (``Cancelled``).
    ``techniques`` (registry ids) keeps the entries made only of those, in the plan's order;
    ``dtype`` is every run's (the baseline's) weight dtype, ``batch`` its batch size.
    ``on_entry(guide)`` after each technique, with the guide so far (``guide.partial`` until the
    last): ``memlens guide`` writes its files there, so a cancelled or killed guide keeps every
    technique that finished. ``trust_remote_code`` lets a model whose config has ``auto_map``
    run its own code in every run (the user's opt-in)."""
    from .optimizations import parse_spec

    if execute is None:
        from .runner import execute
    cancel = cancel or threading.Event()
    todo = [(w, list(specs)) for w, specs in plan if w in workloads]
    if techniques is not None:
        wanted = set(techniques)
        todo = [(w, specs) for w, specs in todo
                if {s.split(":", 1)[0] for s in specs} <= wanted]
    if not todo:
        only = f" among {', '.join(techniques)}" if techniques is not None else ""
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"No technique of the guide{only} runs the workload(s) "
                           f"{', '.join(workloads)}.",
                           "Choose other workloads (forward, generate, train) or techniques "
                           "(memlens optimizations lists them).")
    # Sizes, device and model are checked once, before anything runs: a bad one would fail
    # every technique the same way.
    for workload in dict.fromkeys(w for w, _ in todo):
        RunConfig(model=model, device=device, dtype=dtype, workload=workload, seq=seq,
                  batch=batch, new_tokens=new_tokens, repeats=repeats,
                  trust_remote_code=trust_remote_code).validate()
    from .models import _model_class, architecture_config, describe_source

    cannot_generate = ""
    if describe_source(model) != "hub":  # a Hub id is checked by its first load
        arch = architecture_config(RunConfig(model=model, dtype=dtype,
                                             trust_remote_code=trust_remote_code))
        # An encoder cannot generate: every generate technique failed alike, and the guide
        # came out empty with exit 0 (a run says it; the guide says it once, first).
        if not _model_class(arch.hf_config)[1] and any(w == "generate" for w, _ in todo):
            if all(w == "generate" for w, _ in todo):
                raise MemLensError(ErrorKind.NOT_APPLICABLE,
                                   f"{arch.name} is not a causal language model: it cannot "
                                   "generate, and the guide asked only for generate.",
                                   "Choose the forward or train workload (--workload "
                                   "forward,train).")
            cannot_generate = (f"{arch.name} is not a causal language model: it cannot "
                               "generate")
    guide = Guide(model=model, device=device, seq=seq, new_tokens=new_tokens,
                  planned=len(todo), dtype=dtype, batch=batch, repeats=repeats)
    for i, (workload, specs) in enumerate(todo):
        if cancel.is_set():
            raise Cancelled()
        entry = Entry(workload=workload, specs=specs)
        entry.claimed_quantity, entry.claimed_direction, entry.claim = _claim(specs)
        listener(Progress("guide", i / len(todo), f"{workload}: {entry.label}"))
        failures: list[Failed] = []

        def forward_events(event: Event) -> None:
            if isinstance(event, Failed):
                failures.append(event)

        if workload == "generate" and cannot_generate:  # said once per entry, never run
            entry.status, entry.reason = "not applicable", cannot_generate
            guide.entries.append(entry)
            if on_entry is not None:
                on_entry(guide)
            continue
        try:
            config = RunConfig(model=model, device=device, dtype=dtype, workload=workload, seq=seq,
                               batch=batch, new_tokens=new_tokens, repeats=repeats,
                               trust_remote_code=trust_remote_code,
                               label=f"guide: {entry.label}",
                               optimizations=[parse_spec(s) for s in specs])
        except MemLensError as exc:
            entry.status, entry.reason = "not applicable", exc.message
            guide.entries.append(entry)
            if on_entry is not None:
                on_entry(guide)
            continue
        result = execute(config, forward_events, cancel, store=store)
        if result is None:
            failed = failures[-1] if failures else None
            if failed is not None and failed.kind == "cancelled":
                raise Cancelled()
            if failed is not None and failed.kind in WHOLE_GUIDE_FAILURES:
                raise MemLensError(failed.kind, failed.message, failed.hint)
            entry.status = ("not applicable" if failed is not None
                            and failed.kind == "not_applicable" else "failed")
            # A refusal's message says why; its hint ("remove it from the run") is for a run
            # the user put together, not for the guide's own list. A failure keeps its fix.
            entry.reason = ((failed.message if entry.status == "not applicable"
                             or not failed.hint else f"{failed.message} — {failed.hint}")
                            if failed else "no result")
        else:
            _fill(entry, result)
            if not guide.weights_dtype:
                info = result.model_info or {}
                guide.weights_dtype = str(info.get("loaded_dtype") or info.get("dtype") or "")
                guide.quality_text = str((result.quality or {}).get("text") or "")
        guide.entries.append(entry)
        mark_baseline_drift(guide.entries, workload)
        if on_entry is not None:
            on_entry(guide)
    listener(Progress("guide", 1.0, "done"))
    return guide


def mark_baseline_drift(entries: Sequence[Entry], workload: str) -> None:
    """Each run times its own unoptimized model; a baseline far from the others of the same
    workload (over NOISY_TIMING_SPREAD times their median or under its inverse) was timed on a
    busier or quieter machine, and its ratio is marked noisy even when its passes agreed (a
    guide wrote cast ×0.07, bfloat16 "14 times faster" on a CPU, from a baseline timed at
    1.5 s where the others took 70 ms). Needs three baselines to have a median to trust."""
    same = [e for e in entries if e.workload == workload and e.status == "ok"
            and (e.baseline.get("plain_latency_ms") or 0) > 0]
    if len(same) < 3:
        return
    median = float(statistics.median(e.baseline["plain_latency_ms"] for e in same))
    for e in same:
        value = e.baseline["plain_latency_ms"]
        drift = max(value / median, median / value)
        if e.measured.get("baseline_drift") != drift:
            e.measured["baseline_drift"] = drift
            e.note = note(e)


def _change(entry: Entry) -> str:
    """The peak's change, signed (− less memory, + more) with its percentage."""
    before, after = entry.baseline.get("peak_bytes"), entry.measured.get("peak_bytes")
    if before is None or after is None:
        return "—"
    diff = after - before
    sign = "−" if diff < 0 else "+" if diff > 0 else "±"
    return f"{sign}{human_bytes(abs(diff))} ({_pct(after, before)})" if diff else "±0 B"


def _baseline_line(entries: Sequence[Entry]) -> str | None:
    """Where the unoptimized model's peak goes, from the first run of a workload that measured
    it (every run measures the same baseline; a guide saved before this was recorded has none)."""
    for e in entries:
        b = e.baseline
        parts = b.get("at_peak")
        if e.status != "ok" or not parts or not b.get("peak_bytes"):
            continue
        peak = b["peak_bytes"]

        def share(n: int) -> str:
            return f"{n / peak:.0%}" if n >= 0.005 * peak else "<1%"

        text = (f"Unoptimized peak {human_bytes(peak)}: "
                + ", ".join(f"{name} {human_bytes(n)} ({share(n)})"
                            for name, n in sorted(parts.items(), key=lambda kv: -kv[1])))
        loss = b.get("loss_at_peak_bytes")
        if loss and loss >= 0.01 * peak:
            text += f"; the loss's row holds {human_bytes(loss)} ({share(loss)}) of it"
        return text + f" (the baseline measured in the `{e.label}` run)."
    return None


def _runs_line(guide: Guide) -> str:
    """What every run of the guide shared: sizes, weights dtype, timing passes, quality text."""
    dtype = guide.weights_dtype.replace("torch.", "") or guide.dtype
    if guide.dtype == "auto" and dtype != "auto":
        dtype += " (auto)"
    parts = ([f"batch {guide.batch}"] if guide.batch != 1 else []) + [f"sequence {guide.seq}"]
    if guide.new_tokens and "generate" in guide.workloads():
        parts.append(f"{guide.new_tokens} new tokens")
    parts.append(f"weights {dtype}")
    if guide.repeats:
        parts.append(f"latency the median of {guide.repeats} timing pass"
                     + ("es" if guide.repeats > 1 else ""))
    if guide.quality_text:
        parts.append(f"quality on {guide.quality_text}")
    return ", ".join(parts)


def markdown(guide: Guide, charts: dict[str, str] | None = None) -> str:
    """The guide as Markdown: per workload a ranked table and the notes; then what could not run."""
    lines = [f"# The measured guide: {guide.model} on {guide.device}", "",
             "Each row is one MemLens run that measured the unoptimized model and the optimized "
             f"one in the same process ({_runs_line(guide)}). Ranked by peak memory saved; a "
             "change is − for less memory, + for more. Verdicts compare the claim with the "
             "measured numbers: its direction, and its amount where it names one (within "
             f"{MAGNITUDE_TOLERANCE:.0%}). A latency marked *noisy* came from timing passes that "
             "disagreed widely, or from a baseline timed far from this workload's others (the "
             "machine busier or quieter then).", ""]
    if guide.partial:
        lines += [f"**Partial guide: {len(guide.entries)} of the {guide.planned} techniques "
                  "planned ran** (the rest had not run when this was written: the guide was "
                  "still running, or it was cancelled or stopped).", ""]
    from .compare import quality_text

    for workload in guide.workloads():
        ranked = guide.ranked(workload)
        if not ranked:
            continue
        lines += [f"## {workload}", ""]
        where = _baseline_line(ranked)
        if where:
            lines += [where, ""]
        if charts and workload in charts:
            lines += [f"![{workload}: memory vs quality]({charts[workload]})", ""]
        lines += ["| # | technique | peak before → after | change | weights after | latency | "
                  "quality | claim | verdict |",
                  "| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- |"]
        for n, e in enumerate(ranked, 1):
            b, m = e.baseline, e.measured
            latency = "—" if e.latency_ratio is None else (
                f"×{e.latency_ratio:.2f}" + (" *noisy*" if e.latency_noisy else ""))
            lines.append(
                f"| {n} | `{e.label}` | {human_bytes(b.get('peak_bytes'))} → "
                f"{human_bytes(m.get('peak_bytes'))} | {_change(e)} | "
                f"{human_bytes(m.get('model_weights_bytes'))} | {latency} | "
                f"{quality_text(e.quality)} | {e.claim} | {e.verdict} |")
        lines.append("")
        for e in ranked:
            lines.append(f"- **{e.label}**: {e.note}")
            # The latency's own noise warning is in the note (with the spread).
            lines += [f"  - warning: {w}" for w in e.warnings
                      if not (e.latency_noisy and w.startswith("Latency is noisy"))]
        lines.append("")
    skipped = [e for e in guide.entries if e.status != "ok"]
    if skipped:
        lines += ["## Could not run here", ""]
        lines += [f"- `{e.label}` ({e.workload}): {e.reason}" for e in skipped]
        lines.append("")
    return "\n".join(lines)


def _figure(quality: dict[str, Any], key: str) -> Any:
    from .compare import quality_figure

    return quality_figure(quality, key)


def _quality_axis(entries: Sequence[Entry]) -> tuple[str, str] | None:
    """(quality key after, key before) every measured entry has, best first; None if none."""
    # Generated-token agreement first: where every entry has it (generation), it is what a
    # cache policy changes first (its KL is scored through the cache). After training,
    # the trained model against the baseline trained alike: what a training technique changes
    # (before its steps the model is the unoptimized one).
    for after, before in (("generated_token_agreement", ""),
                          ("after_training.kl_divergence", ""),
                          ("perplexity", "baseline_perplexity"), ("kl_divergence", ""),
                          ("cosine_similarity", "")):
        if entries and all(_figure(e.quality, after) is not None for e in entries):
            return after, before
    return None


_QUALITY_LABELS = {"perplexity": "perplexity (lower is better)",
                   "kl_divergence": "KL divergence, nats/token (0: unchanged)",
                   "after_training.kl_divergence": "KL after training, nats/token (0: unchanged)",
                   "cosine_similarity": "cosine similarity (1: unchanged)",
                   "generated_token_agreement": "generated tokens the same (1: all)"}


def _ticks(low: float, high: float, most: int = 8) -> list[float]:
    """Round tick values (1, 2 or 5 × a power of ten apart) inside [low, high]."""
    import math

    span = high - low
    if span <= 0:
        return [low]
    step = 10 ** math.floor(math.log10(span / most))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= most:
            step *= factor
            break
    first = math.ceil(low / step - 1e-9)
    values = [round(k * step, 12) for k in range(first, int(math.floor(high / step + 1e-9)) + 1)]
    return values or [low]


def scatter_svg(guide: Guide, workload: str, width: int = 640, height: int = 400) -> str | None:
    """Memory vs quality for one workload as a small SVG (peak after on x, the quality figure
    every entry shares on y; the unoptimized model as a hollow point when its figure was
    measured). Hand-written rather than plotted: the engine never imports Qt, and this keeps
    ``memlens guide`` headless on a GPU box; the window and ``memlens report`` draw the runs
    with the app's own charts."""
    import html as _html

    entries = guide.ranked(workload)
    axis = _quality_axis(entries)
    if axis is None:
        return None
    after_key, before_key = axis
    points = [(e.measured["peak_bytes"] / 2**20, float(_figure(e.quality, after_key)), str(i + 1))
              for i, e in enumerate(entries)]
    base = None
    if before_key and entries and entries[0].quality.get(before_key) is not None:
        base = (entries[0].baseline["peak_bytes"] / 2**20, float(entries[0].quality[before_key]))
    elif after_key in ("generated_token_agreement", "after_training.kl_divergence") and entries:
        # By definition: the unoptimized model generates its own tokens (all of them), and
        # differs from itself trained alike by nothing; labelled so on the chart.
        same = 1.0 if after_key == "generated_token_agreement" else 0.0
        base = (entries[0].baseline["peak_bytes"] / 2**20, same)
    xs = [p[0] for p in points] + ([base[0]] if base else [])
    ys = [p[1] for p in points] + ([base[1]] if base else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x0, x1 = (x0 - 1, x1 + 1) if x0 == x1 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    low = y0
    y0, y1 = (y0 - 1, y1 + 1) if y0 == y1 else (y0 - 0.08 * (y1 - y0), y1 + 0.08 * (y1 - y0))
    if low >= 0:  # every quality figure here is non-negative: no axis below zero
        y0 = max(0.0, y0)
    if after_key in ("generated_token_agreement", "cosine_similarity"):
        y1 = min(y1, 1.0)  # a share (or a cosine) never passes 1
    left, right, top, bottom = 84, 20, 30, 50

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">'
           f'{_html.escape(workload)}: memory vs quality</text>',
           f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" '
           f'y2="{height - bottom}" stroke="#606060"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#606060"/>']
    for xv in _ticks(x0, x1):
        out.append(f'<text x="{px(xv):.1f}" y="{height - bottom + 16}" text-anchor="middle">'
                   f'{xv:g}</text>')
    for yv in _ticks(y0, y1):
        out.append(f'<text x="{left - 6}" y="{py(yv) + 4:.1f}" text-anchor="end">{yv:g}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" '
               f'text-anchor="middle">peak MiB (measured)</text>')
    out.append(f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(top + height - bottom) / 2})">'
               f'{_QUALITY_LABELS.get(after_key, after_key)}</text>')

    def label_at(x: float, y: float, text: str, dy: float) -> str:
        """A label right of its point, or left of it near the right edge (never clipped)."""
        if x + 7 + 7 * len(text) > width - 4:
            return f'<text x="{x - 8:.1f}" y="{y + dy:.1f}" text-anchor="end">{text}</text>'
        return f'<text x="{x + 7:.1f}" y="{y + dy:.1f}">{text}</text>'

    if base:
        out.append(f'<circle cx="{px(base[0]):.1f}" cy="{py(base[1]):.1f}" r="6" fill="none" '
                   f'stroke="#202020" stroke-width="1.5"/>')
        out.append(label_at(px(base[0]), py(base[1]), "unoptimized", -8))
    # Points closer than a label's height share one label ("[4, 5]"), so none is drawn over.
    groups: list[list[Any]] = []  # [leftmost x, rightmost x, y, labels]
    for x, y, label in points:
        cx, cy = px(x), py(y)
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="#4e79a7"/>')
        near = next((g for g in groups if g[0] - 24 < cx < g[1] + 24 and abs(g[2] - cy) < 12),
                    None)
        if near is None:
            groups.append([cx, cx, cy, [label]])
        else:
            near[0], near[1] = min(near[0], cx), max(near[1], cx)
            near[3].append(label)
    for left_x, right_x, cy, labels in groups:
        text = f"[{', '.join(labels)}]"
        ring_right = base is not None and 0 < px(base[0]) - right_x < 30 and abs(
            py(base[1]) - cy) < 12
        if ring_right:  # the unoptimized ring sits just right of the group: label on the left
            out.append(f'<text x="{left_x - 8:.1f}" y="{cy + 4:.1f}" text-anchor="end">'
                       f'{text}</text>')
        else:
            out.append(label_at(right_x, cy, text, 4))
    out.append("</svg>")
    return "\n".join(out)


def write_guide(guide: Guide, folder: Any) -> tuple[Any, dict[str, str]]:
    """Write ``guide.md``, ``guide.json`` and one ``guide-WORKLOAD.svg`` chart per workload into
    ``folder`` (created); returns the Markdown path and the charts' file names by workload."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    charts: dict[str, str] = {}
    for workload in guide.workloads():
        svg = scatter_svg(guide, workload)
        if svg is not None:
            charts[workload] = f"guide-{workload}.svg"
            (folder / charts[workload]).write_text(svg, encoding="utf-8")
    path = folder / "guide.md"
    path.write_text(markdown(guide, charts), encoding="utf-8")
    (folder / "guide.json").write_text(json.dumps(guide.to_dict(), indent=1), encoding="utf-8")
    return path, charts
