"""Text formatting for engine figures. Qt-free, so it is tested without a display.

A value the engine did not measure is ``None`` and is shown as :data:`MISSING` ("—"), never as 0.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_SI_PREFIXES = ("", "K", "M", "G", "T", "P", "E")


def _is_missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _scaled(value: float) -> str:
    """Three significant figures for a value in [1, 1024): 1.23, 12.3, 123."""
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def human_bytes(value: int | float | None) -> str:
    """``1288490`` -> ``'1.23 MiB'``; ``None`` -> ``'—'``. Binary units; a negative keeps its sign."""
    if _is_missing(value):
        return MISSING
    sign = "-" if value < 0 else ""
    size = float(abs(value))
    if size < 1024:
        return f"{sign}{int(size)} B"
    for unit in _BINARY_UNITS[1:]:
        size /= 1024.0
        if size < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{sign}{_scaled(size)} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def _telling_digits(value: int | float | None, budget: int | float | None
                    ) -> tuple[str, int, int] | None:
    """(unit, scale, decimals) that tell ``value`` from ``budget`` when :func:`human_bytes`
    writes both alike; None when it does not (or they are equal, or a unit of whole bytes)."""
    text = human_bytes(value)
    if (_is_missing(value) or _is_missing(budget) or text != human_bytes(budget)
            or value == budget):
        return None
    number, unit = text.rsplit(" ", 1)
    if unit == "B":  # whole bytes are exact already
        return None
    decimals = len(number.split(".")[1]) if "." in number else 0
    scale = 1024 ** _BINARY_UNITS.index(unit)
    for extra in range(1, 7):
        digits = decimals + extra
        if f"{value / scale:.{digits}f}" != f"{budget / scale:.{digits}f}":
            return unit, scale, digits
    return None


def bytes_against(value: int | float | None, budget: int | float | None) -> str:
    """``value`` as :func:`human_bytes` writes it, with more digits when that would read the
    same as ``budget`` (a peak of 24.04 GiB over a 24.0 GiB budget is not "24.0 GiB"), and
    the difference itself when even six more digits do not tell them apart. Write the budget
    beside it with :func:`budget_against`, so both have the same digits."""
    text = human_bytes(value)
    told = _telling_digits(value, budget)
    if told is not None:
        unit, scale, digits = told
        return f"{value / scale:.{digits}f} {unit}"
    if (not _is_missing(value) and not _is_missing(budget) and value != budget
            and text == human_bytes(budget) and not text.endswith(" B")):
        diff = value - budget
        return f"{text} ({'+' if diff > 0 else '-'}{human_bytes(abs(diff))})"
    return text


def budget_against(budget: int | float | None, *values: int | float | None) -> str:
    """``budget`` with as many digits as :func:`bytes_against` gives the ``values`` beside it:
    "11.41 MiB ≤ 11.4 MiB" read as false for a budget of 11.44 MiB."""
    best: tuple[str, int, int] | None = None
    for value in values:
        told = _telling_digits(value, budget)
        if told is not None and (best is None or told[2] > best[2]):
            best = told
    if best is None or _is_missing(budget):
        return human_bytes(budget)
    unit, scale, digits = best
    return f"{budget / scale:.{digits}f} {unit}"


def si_number(value: int | float | None, unit: str = "") -> str:
    """``1.5e9, 'FLOP'`` -> ``'1.50 GFLOP'``; decimal prefixes; ``None`` -> ``'—'``."""
    if _is_missing(value):
        return MISSING
    sign = "-" if value < 0 else ""
    size = float(abs(value))
    index = 0
    while size >= 1000 and index < len(_SI_PREFIXES) - 1:
        size /= 1000.0
        index += 1
    if index == 0 and size == int(size):
        number = f"{size:.0f}"
    elif size < 1:
        number = f"{size:.3g}"
    else:
        number = _scaled(size)
    space = " " if unit or _SI_PREFIXES[index] else ""
    return f"{sign}{number}{space}{_SI_PREFIXES[index]}{unit}"


def human_flops(value: int | float | None) -> str:
    return si_number(value, "FLOP")


def human_count(value: int | float | None) -> str:
    """Parameter counts: ``22_000_000`` -> ``'22.0 M'``."""
    return si_number(value)


def human_ms(value: float | None) -> str:
    """Latency in milliseconds: ``12.345`` -> ``'12.3 ms'``; ``None`` -> ``'—'``."""
    if _is_missing(value):
        return MISSING
    if abs(value) >= 100:
        return f"{value:.0f} ms"
    if abs(value) >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def human_seconds(value: float | None) -> str:
    if _is_missing(value):
        return MISSING
    if value < 1:
        return human_ms(value * 1000.0)
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes} min {seconds:02d} s"


def overhead(ratio: float | None) -> str:
    """A profiler overhead (hooked / plain time): ``×1.06``; below 1 the hooked pass was not
    slower, and that is timing noise, not a speed-up: ``×0.98 (none measurable)``."""
    if _is_missing(ratio):
        return MISSING
    return f"×{ratio:.2f}" + (" (none measurable)" if ratio < 1.0 else "")


def percent(fraction: float | None) -> str:
    if _is_missing(fraction):
        return MISSING
    return f"{fraction * 100:.0f}%"


def to_mib(value: int | float | None) -> float:
    """Bytes to MiB for plotting; a missing value becomes NaN (a gap in the line, not a zero)."""
    if _is_missing(value):
        return math.nan
    return float(value) / (1024.0 * 1024.0)


def kv_cache_text(generation: dict) -> str:
    """"KV cache X after N positions (how it changed over the decode steps)": N is what the
    cache has seen (``get_seq_length``); a sliding window keeps fewer, a static cache has room
    for more, so the text says how the bytes moved rather than bytes per position."""
    per_step = generation.get("kv_bytes_per_step") or []
    if len(per_step) < 2:
        change = ""
    elif per_step[0] < per_step[-1]:
        change = f" (grew {human_bytes(per_step[0])} → {human_bytes(per_step[-1])})"
    elif per_step[0] > per_step[-1]:
        change = (f" (shrank {human_bytes(per_step[0])} → {human_bytes(per_step[-1])}: the "
                  "cache keeps fewer positions than it has seen)")
    else:
        change = f" (the same {human_bytes(per_step[0])} after every step: allocated up front)"
    positions = generation.get("cached_positions")
    return (f"KV cache {human_bytes(generation.get('kv_cache_bytes'))} after "
            f"{MISSING if positions is None else positions} positions{change}")


PROMPT_EXCERPT = 60  # characters of a prompt or generated text quoted in one line


def excerpt(text: str, limit: int = PROMPT_EXCERPT) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(str(text).split("\n"))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def inputs_text(result: Any) -> str:
    """What the run fed the model, as measured: ``generate: batch 1, prompt 60 tokens (the
    prompt '人工智能…'), 8 new tokens`` (the token count is the input's real length, which a
    prompt sets, not the Sequence setting)."""
    cfg = result.config
    inputs = getattr(result, "inputs", None) or {}
    shape = inputs.get("shape") or [cfg.batch, cfg.seq]
    source = inputs.get("source")
    if source == "prompt" and cfg.prompt:
        source = f"the prompt {excerpt(cfg.prompt)!r}"
    text = (f"{cfg.workload}: batch {shape[0]}, "
            f"{'prompt' if cfg.workload == 'generate' else 'sequence'} {shape[1]} tokens"
            + (f" ({source})" if source else ""))
    if cfg.workload == "generate":
        text += f", {cfg.new_tokens} new tokens"
    return text


def short_layer_label(name: str) -> str:
    """A compact axis label for a fully qualified module name.

    ``model.layers.3`` -> ``'3'``; ``model.embed_tokens`` -> ``'embed_tokens'``;
    ``transformer.h.11.attn`` -> ``'11.attn'``.
    """
    if not name:
        return "(root)"
    parts = name.split(".")
    last_digit = max((i for i, part in enumerate(parts) if part.isdigit()), default=None)
    if last_digit is None:
        return parts[-1]
    return ".".join(parts[last_digit:])


def quality_parts(q: dict | None) -> list[str]:
    """A run's quality record in words, one figure per item (the CLI, the totals, reports and
    the guide say it the same way). Empty when nothing was compared."""
    q = q or {}
    parts: list[str] = []
    if q.get("kl_divergence") is not None:
        parts.append(f"KL(baseline ‖ this) {q['kl_divergence']:.3g} nats/token")
    if q.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {q['top1_agreement']:.1%}")
    if q.get("perplexity") is not None:
        interval = q.get("perplexity_ratio_interval")
        spread = ""
        if interval and q.get("baseline_perplexity") and interval[1] - interval[0] > 1e-9:
            # (identical predictions, a zero-width interval: nothing to say about noise)
            lo, hi = interval
            ratio = q["perplexity"] / q["baseline_perplexity"]
            within = ": within the text's noise" if lo <= 1.0 <= hi else ""
            spread = (f"; ×{ratio:.3f}, about ×{lo:.3f}–×{hi:.3f} at 95% over "
                      f"{q.get('predictions', '?')} predictions{within}")
        parts.append(f"perplexity {q['perplexity']:.2f}" + (
            f" (baseline {q['baseline_perplexity']:.2f}{spread})"
            if q.get("baseline_perplexity") is not None and q.get("kl_divergence") is not None
            else ""))
    if q.get("generated_token_agreement") is not None:
        parts.append("generated tokens identical to the baseline's "
                     f"{q['generated_token_agreement']:.1%}")
    if q.get("cosine_similarity") is not None:
        parts.append(f"pooled-embedding cosine similarity {q['cosine_similarity']:.5f}")
    trained = q.get("after_training") or {}
    if trained:
        steps = trained.get("steps")
        inner = quality_parts({k: v for k, v in trained.items() if k != "steps"})
        if inner:
            parts.append(f"after {steps if steps is not None else 'the'} training steps, "
                         "against the baseline trained the same way: " + ", ".join(inner))
    return parts


def tokens_per_s_text(tokens_per_s: float | None, workload: str) -> str:
    """``'70.1 tokens/s'``; for a generation ``'70.1 tokens/s decoding'``: its figure counts the
    decode steps alone (new tokens over their time), not the prompt's prefill, so it is not the
    run's tokens over its whole latency."""
    return f"{si_number(tokens_per_s)} tokens/s" + (" decoding" if workload == "generate" else "")



def layer_passes_text(result: Any) -> str:
    """What a generation's per-layer latency and FLOPs cover: every forward of the call
    (``"the prefill and 5 decode forwards, summed"``), while its output bytes are the
    prefill's; "" for other workloads. (Beside "Decode per step 2.3 ms" a layer's 6 ms read as
    one forward's.)"""
    cfg = getattr(result, "config", None)
    gen = getattr(result, "generation", None) or {}
    if getattr(cfg, "workload", "") != "generate" or getattr(result, "estimate", None) is not None:
        return ""
    steps = gen.get("decode_ms_per_step")
    n = len(steps) if steps else max(int(getattr(cfg, "new_tokens", 1) or 1) - 1, 0)
    return (f"the prefill and {n} decode forward{'s' if n != 1 else ''}, summed" if n
            else "the prefill")


def bytes_change(before: int | float | None, after: int | float | None) -> tuple[str, str, str]:
    """``before``, ``after`` and the signed change, in the larger figure's unit with the same
    two decimals: "10.03 MiB → 5.01 MiB (−5.02 MiB)". Each in its own three figures read
    "10.0 MiB → 5.01 MiB (−5.01 MiB)", which does not add up."""
    if _is_missing(before) or _is_missing(after):
        return human_bytes(before), human_bytes(after), MISSING
    delta = after - before
    sign = "+" if delta > 0 else "−" if delta < 0 else "±"
    big = max(abs(before), abs(after))
    if big < 1024:
        return f"{int(before)} B", f"{int(after)} B", f"{sign}{int(abs(delta))} B"
    scale, unit = 1.0, _BINARY_UNITS[0]
    for unit in _BINARY_UNITS[1:]:
        scale *= 1024.0
        if big / scale < 1024 or unit == _BINARY_UNITS[-1]:
            break
    small = min((abs(v) for v in (before, after) if v), default=0)
    if small and small / scale < 0.01 and unit != _BINARY_UNITS[1]:
        # (one unit down rather than "1.50 GiB → 0.00 GiB" for a 5 MiB result)
        scale /= 1024.0
        unit = _BINARY_UNITS[_BINARY_UNITS.index(unit) - 1]
    return (f"{before / scale:.2f} {unit}", f"{after / scale:.2f} {unit}",
            f"{sign}{abs(delta) / scale:.2f} {unit}")


def baseline_pairs(result: Any) -> list[tuple[str, int, int]]:
    """(part, baseline's bytes, this run's) for what :func:`against_baseline` says: peak,
    weights, saved for backward, the training phase peaks that moved, the KV cache; parts
    either side did not record are left out."""
    base, t = result.baseline or {}, result.totals
    out: list[tuple[str, int, int]] = []

    def pair(label: str, before: Any, after: Any) -> None:
        if not (_is_missing(before) or _is_missing(after)):
            out.append((label, before, after))

    pair("peak", base.get("peak_bytes"), t.peak_bytes)
    pair("weights", base.get("model_weights_bytes"), t.model_weights_bytes)
    training = getattr(result, "training", None) or {}
    pair("saved for backward", base.get("saved_for_backward_bytes"),
         training.get("saved_for_backward_bytes"))
    phases = base.get("phase_peaks") or {}
    now = getattr(result, "phase_peaks", None) or {}
    if training:  # (a forward has one phase: its peak is the peak)
        for phase in ("forward", "backward", "optimizer"):
            if phases.get(phase) != now.get(phase):
                pair(f"{phase} phase peak", phases.get(phase), now.get(phase))
    if base.get("kv_cache_bytes") or t.kv_cache_bytes:
        pair("KV cache", base.get("kv_cache_bytes"), t.kv_cache_bytes)
    return out


def against_baseline(result: Any) -> list[str]:
    """A run against the unoptimized model measured in the same run (``result.baseline``),
    part by part: peak and weights; saved for backward and each training phase's peak (what
    activation checkpointing lowers, below a peak in the optimizer step that it cannot);
    the KV cache of a generation; the latency ratio, with its doubt when either side's timing
    passes disagree. Empty without a baseline. One wording for the CLI, the window and
    reports."""
    from .results import NOISY_TIMING_SPREAD, timing_spread

    base, d = result.baseline or {}, result.deltas or {}
    if not base:
        return []
    out: list[str] = []
    for label, before, after in baseline_pairs(result):
        a, b, change = bytes_change(before, after)
        out.append(f"{label} {a} → {b} ({change})")
    ratio = d.get("latency_ratio")
    if ratio:
        spreads = [s for s in (timing_spread((getattr(result, "timing", None) or {})
                                             .get("plain_ms")),
                               timing_spread(base.get("plain_ms"))) if s]
        noisy = max(spreads, default=0.0) > NOISY_TIMING_SPREAD
        out.append(f"latency ×{ratio:.2f}" + (
            f" (noisy: timing passes up to ×{max(spreads):.1f} apart)" if noisy else ""))
    return out
