"""Sweeps (peak memory over sequence length × batch × optimization sets) and what fits a budget.

**Sweep.** Every point of the grid is first *estimated* (``engine.estimate``: fake tensors, no
weights, no memory), then *measured* (``engine.runner.execute``) when it fits this device by a
conservative rule: the estimated peak is at most :func:`measure_fraction` of the memory available
on the device now (the same fraction the loader's too-large check allows the weights alone).
A point keeps the kind of the figures it reports: ``"measured"`` (the measured run's peak and
latency; the estimate made to decide is kept beside it as ``estimated_peak_bytes``),
``"estimate"`` (no latency), or ``"failed"`` (why, in ``error``). A measurement that fails for
lack of memory falls back to the estimate and says so in ``reason``.

**What fits.** For a budget, the largest sequence length (per batch and optimization set) whose
*estimated* peak is within the budget, found by a search over estimates only (see
:func:`fit_sequence`): every reported figure comes from an estimate at that very point, and the
answer is the largest tested length that fits together with the next tested one that does not.

Both run in the caller's thread, report through a listener (``Progress`` events plus
:class:`PointDone` / :class:`FitDone`), honour a ``threading.Event`` cancel, and end with
``SweepFinished`` / ``FitFinished`` or ``Failed`` (returning None), like ``engine.runner.execute``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import RunConfig
from .errors import Cancelled, ErrorKind, MemLensError
from .events import Failed, Progress
from .format import budget_against, bytes_against, human_bytes, human_count
from .records import check_record
from .results import RunResult, bytes_by_part

SWEEP_SCHEMA_VERSION = 1
FIT_SCHEMA_VERSION = 2  # 2: axis "batch" (largest batch at fixed lengths)

# Category -> Totals field (bytes live at the peak), and how it is written in text.
CATEGORY_FIELDS = {
    "weights": "weights_bytes",
    "activations": "activation_bytes",
    "kv_cache": "kv_cache_bytes",
    "gradients": "gradient_bytes",
    "optimizer_state": "optimizer_state_bytes",
    "temporaries": "temporary_bytes",
}
CATEGORY_LABELS = {"weights": "weights", "activations": "activations", "kv_cache": "KV cache",
                   "gradients": "gradients", "optimizer_state": "optimizer state",
                   "temporaries": "temporaries", "unattributed": "unattributed",
                   "max_positions": "maximum positions"}

Listener = Callable[[Any], None]


def measure_fraction() -> float:
    """The fraction of available memory an estimated peak may take to be measured: the loader's
    too-large limit for the weights alone (``engine.models.MAX_MEMORY_FRACTION``)."""
    from .models import MAX_MEMORY_FRACTION

    return MAX_MEMORY_FRACTION


def measure_rule() -> str:
    return (f"measured where the estimated peak is at most {measure_fraction():.0%} of the "
            "memory available on the device (the fraction the loader's too-large check allows "
            "the weights alone), estimated beyond")


# -- events ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PointDone:
    """One sweep point is done (measured, estimated or failed)."""

    point: SweepPoint
    index: int
    total: int


@dataclass(frozen=True)
class SweepFinished:
    record: SweepRecord


@dataclass(frozen=True)
class FitDone:
    """The answer for one (optimization set, batch)."""

    answer: FitAnswer


@dataclass(frozen=True)
class FitFinished:
    record: FitRecord


# -- parsing ---------------------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
SIZE_FORMS = ("a number of bytes (25769803776), or a number with a unit: B, KB, MB, GB, TB "
              "(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 24GiB, 80GB, 1.5TiB")
# A budget (fit's --budget, the window's Budget field) also takes two words; other sizes do not.
BUDGET_FORMS = (SIZE_FORMS + "; or 'gpu' (the detected GPU's total memory) or 'ram' "
                "(available RAM)")


MAX_SIZE = 2 ** 64  # 16 EiB: a 64-bit address space


def parse_bytes(text: str, forms: str = SIZE_FORMS) -> int:
    """``'24GiB'`` -> 25769803776; ``'80GB'`` -> 80000000000; refuses anything else by name,
    with a hint that writes out ``forms`` (what the field or option accepts)."""
    m = re.fullmatch(r"\s*(-?)([0-9]+(?:\.[0-9]*)?(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(3).lower() if m else None
    if m is None or unit not in _UNITS:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"Cannot read the memory size {text!r}.",
                           f"Write {forms}.")
    value = float(m.group(2)) * _UNITS[unit]
    if m.group(1) or float(m.group(2)) == 0:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"The memory size {text!r} is not positive.",
                           f"Write {forms}.")
    if value < 1:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"The memory size {text!r} is less than one byte.", f"Write {forms}.")
    if not math.isfinite(value) or value > MAX_SIZE:  # ('1e400GiB' read as "not positive")
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"The memory size {text!r} is larger than any memory (more than "
                           "16 EiB).", f"Write {forms}.")
    return int(value)


@dataclass
class Budget:
    bytes: int
    source: str  # "given" | "gpu" | "ram"
    description: str  # e.g. "24.0 GiB (given)", "NVIDIA H200: 139 GiB total memory"


def resolve_budget(text: str | None) -> Budget:
    """A budget from ``--budget``: a size, ``gpu``, ``ram``, or None (the GPU when one is
    detected, else the available RAM, said so)."""
    word = (text or "").strip().lower()
    if word in ("gpu", "cuda", ""):
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            return Budget(int(props.total_memory), "gpu",
                          f"{human_bytes(props.total_memory)}: total memory of the detected GPU "
                          f"({props.name}, cuda:{torch.cuda.current_device()})")
        if word:
            raise MemLensError(ErrorKind.NO_DEVICE,
                               "The budget 'gpu' needs a CUDA GPU, and none was detected here.",
                               f"Give the budget as a size instead ({SIZE_FORMS}), or 'ram'.")
    if word in ("ram", ""):
        import psutil

        avail = int(psutil.virtual_memory().available)
        why = "" if word else "no GPU detected and no --budget given, so "
        return Budget(avail, "ram", f"{human_bytes(avail)}: {why}the RAM available on this "
                      "machine now (--budget SIZE, or a size in the window's Budget field, "
                      "chooses another)")
    value = parse_bytes(text or "", BUDGET_FORMS)
    return Budget(value, "given", f"{human_bytes(value)} (given as {text.strip()})")


def parse_int_list(text: str, what: str, option: str | None = None,
                   sample: str = "512,1024,2048") -> list[int]:
    """``'512,1024,2048'`` -> [512, 1024, 2048] (sorted, unique), or an error naming the value;
    ``what`` names the list in the message (a field's label in the window), ``option`` the
    command-line option its examples show (None: the examples are bare values), ``sample``
    the example values (batches: ``1,2,4``)."""
    example = f"{option} " if option else ""
    values = []
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) > 1 and not parts[-1]:
        parts.pop()  # (a trailing comma: "512,1024,")
    for part in parts:
        if not part and len(parts) > 1:  # ("1,,2" for "1,12,2": two points ran, exit 0)
            raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                               f"The {what} list {text!r} has an empty value between commas.",
                               f"Give whole numbers of at least 1, separated by single commas "
                               f"(e.g. {example}{sample}).")
        if not part:
            continue
        # (isdigit alone takes "²", which int() refuses: a traceback from the window)
        digits = part.isascii() and part.isdigit()
        negative = part.startswith("-") and part[1:].isascii() and part[1:].isdigit()
        if not digits or int(part) < 1:
            # ("-1" is read well enough: it is too small, as 0 is)
            said = (f"The {what} list {text!r} has {part}: every value must be at least 1."
                    if digits or negative else
                    f"Cannot read {part!r} in the {what} list {text!r}.")
            raise MemLensError(ErrorKind.INVALID_WORKLOAD, said,
                               f"Give whole numbers of at least 1, separated by commas "
                               f"(e.g. {example}{sample}).")
        values.append(int(part))
    if not values:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"The {what} list {text!r} is empty.",
                           f"Give at least one value, e.g. {example}{sample}.")
    return sorted(set(values))


def parse_opt_set(text: str) -> list[dict[str, Any]]:
    """``'none'`` -> []; ``'checkpointing+freeze-base:train_last_blocks=2'`` -> two specs."""
    from .optimizations import parse_spec

    text = text.strip()
    if text.lower() in ("none", "baseline", ""):
        return []
    parts = text.split("+")
    if any(not part.strip() for part in parts):  # ("cast++autocast": a technique left out?)
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"The optimization set {text!r} has an empty part between '+' signs.",
                           "Join the techniques with single '+' signs, e.g. "
                           "--opt-set checkpointing+freeze-base.")
    return [parse_spec(part) for part in parts]


def opt_set_label(optimizations: list[dict[str, Any]]) -> str:
    """The inverse of :func:`parse_opt_set`: ``'none'`` or ``'a+b:k=v'``."""
    if not optimizations:
        return "none"
    parts = []
    for o in optimizations:
        params = o.get("params") or {}
        parts.append(o["id"] + (":" + ",".join(f"{k}={v}" for k, v in params.items())
                                if params else ""))
    return "+".join(parts)


# -- records ---------------------------------------------------------------------------------------
def _categories(result: RunResult, rest: bool = False) -> dict[str, int]:
    """Bytes at the peak per category; with ``rest``, also the unattributed rest (tensors
    made outside every row, such as the inputs and an optimizer's step counts), so the parts add
    up to the peak (a sweep point keeps the rest in its own field)."""
    t = result.totals
    parts = {cat: int(getattr(t, f) or 0) for cat, f in CATEGORY_FIELDS.items()}
    if rest:
        parts["unattributed"] = int(t.peak_bytes or 0) - sum(parts.values())
    return parts


def dominant_category(categories: dict[str, int]) -> str | None:
    """The category with the most bytes at the peak (None when all are 0)."""
    if not categories or max(categories.values()) <= 0:
        return None
    return max(categories, key=lambda c: categories[c])


@dataclass
class SweepPoint:
    """One grid point. ``kind`` says where its figures come from: measured, estimate or failed."""

    seq: int
    batch: int
    opt_set: str  # label, "none" without optimizations
    kind: str  # "measured" | "estimate" | "failed"
    peak_bytes: int | None = None
    categories: dict[str, int] = field(default_factory=dict)  # bytes at the peak by category
    unattributed_bytes: int | None = None
    model_weights_bytes: int | None = None
    binding: str | None = None  # the category with the most bytes at the peak
    latency_ms: float | None = None  # measured points only (median plain pass)
    tokens_per_s: float | None = None  # measured generation only
    estimated_peak_bytes: int | None = None  # the estimate made to decide (also for measured)
    run_id: str | None = None  # the saved run's id in the store (None when not saved)
    # training: the step's phase holding the peak (forward, backward or optimizer)
    peak_phase: str | None = None
    saved: bool = False
    reason: str = ""  # why it was measured or estimated
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepPoint:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class SweepRecord:
    """A finished sweep: its settings, the decision rule and every point."""

    model: str
    workload: str
    seqs: list[int]
    batches: list[int]
    opt_sets: list[dict[str, Any]]  # [{"label", "optimizations"}]
    device: str = "cpu"
    dtype: str = "auto"
    attention_impl: str = "auto"
    new_tokens: int = 32
    measure_rule: str = ""
    measure_limit_bytes: int | None = None  # estimated peaks up to this were measured
    available_bytes: int | None = None  # memory available on the device when the sweep began
    max_positions: int | None = None
    points: list[SweepPoint] = field(default_factory=list)
    created: str = ""
    duration_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    kind: str = "sweep"
    schema_version: int = SWEEP_SCHEMA_VERSION

    def point(self, seq: int, batch: int, opt_set: str = "none") -> SweepPoint:
        for p in self.points:
            if (p.seq, p.batch, p.opt_set) == (seq, batch, opt_set):
                return p
        raise KeyError((seq, batch, opt_set))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["points"] = [p.to_dict() for p in self.points]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepRecord:
        check_record(data, "sweep", SWEEP_SCHEMA_VERSION)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["points"] = [SweepPoint.from_dict(p) for p in data.get("points") or []]
        return cls(**kwargs)


@dataclass
class FitAnswer:
    """What fits for one optimization set (from estimates). ``axis == "seq"``: the largest
    sequence at a given ``batch``; ``axis == "batch"``: the largest ``batch`` (None when not
    even 1 fits) at a given ``seq``, with ``next_batch`` the next tested that does not."""

    opt_set: str
    batch: int | None
    # fits: seq fits, next_seq does not | limit: the model's maximum positions fit |
    # weights_exceed: the weights alone exceed the budget | nothing_fits: not even seq 1 |
    # failed: the estimate could not be made (error)
    status: str
    seq: int | None = None  # largest tested sequence length that fits
    peak_bytes: int | None = None  # estimated peak at seq
    categories: dict[str, int] = field(default_factory=dict)  # at seq's peak
    # what binds: the category that grew most from the answer to the next tested value (what
    # runs over the budget), or "max_positions" when the model's positions end the search first,
    # or "weights" when they alone exceed the budget; without a next value, the largest part
    binding: str | None = None
    grows: str | None = None  # the category that grew most from seq to next_seq
    next_seq: int | None = None  # the next tested length, which does not fit
    next_peak_bytes: int | None = None
    next_categories: dict[str, int] = field(default_factory=dict)
    model_weights_bytes: int | None = None
    tested: list[dict[str, Any]] = field(default_factory=list)  # {seq, peak_bytes, fits}
    estimates: int = 0
    seconds: float = 0.0
    run_ids: dict[str, str] = field(default_factory=dict)  # seq -> saved estimate id
    message: str = ""
    error: str | None = None
    axis: str = "seq"
    next_batch: int | None = None  # axis "batch": the next tested batch, which does not fit
    budget_bytes: int | None = None  # the budget searched against (the record's, for display)
    # bytes at the peak added from the answer to the next tested value, by part of the model
    # (the blocks, the head, the loss, ...: see results.part_of_model), largest first
    parts_grow: dict[str, int] = field(default_factory=dict)

    @property
    def largest(self) -> str | None:
        """The largest part of the peak at the answer (at the next tested value without one)."""
        return dominant_category(self.categories or self.next_categories)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitAnswer:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class FitRecord:
    model: str
    workload: str
    budget_bytes: int
    budget_source: str
    budget_description: str
    batches: list[int]
    opt_sets: list[dict[str, Any]]
    dtype: str = "auto"
    attention_impl: str = "auto"
    new_tokens: int = 32
    max_positions: int | None = None
    seq_limit: int | None = None  # the longest prompt the positions allow
    granularity: int = 1
    search: str = ""
    answers: list[FitAnswer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created: str = ""
    duration_s: float = 0.0
    kind: str = "fit"
    figures: str = "estimate"  # every figure in a fit comes from an estimate
    axis: str = "seq"  # "seq": longest length per batch; "batch": largest batch per length
    seqs: list[int] = field(default_factory=list)  # axis "batch": the lengths searched at
    max_batch: int | None = None  # axis "batch": the search's upper end
    # the weights' dtype the estimates used (``dtype`` "auto" resolves to it: float32 for
    # presets and configs, the stored dtype for a checkpoint)
    weights_dtype: str | None = None
    schema_version: int = FIT_SCHEMA_VERSION

    def answer(self, batch: int = 1, opt_set: str = "none") -> FitAnswer:
        """Axis "seq": the answer for ``batch``."""
        for a in self.answers:
            if a.axis == "seq" and (a.batch, a.opt_set) == (batch, opt_set):
                return a
        raise KeyError((batch, opt_set))

    def answer_at(self, seq: int, opt_set: str = "none") -> FitAnswer:
        """Axis "batch": the answer at sequence length ``seq``."""
        for a in self.answers:
            if a.axis == "batch" and (a.seq, a.opt_set) == (seq, opt_set):
                return a
        raise KeyError((seq, opt_set))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["answers"] = [a.to_dict() for a in self.answers]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitRecord:
        check_record(data, "fit", FIT_SCHEMA_VERSION)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["answers"] = [FitAnswer.from_dict(a) for a in data.get("answers") or []]
        return cls(**kwargs)


# -- shared helpers --------------------------------------------------------------------------------
def _emit(listener: Listener, event: Any) -> None:
    try:
        listener(event)
    except Exception:  # noqa: BLE001 - a broken listener must not break the sweep
        traceback.print_exc()


def model_max_positions(config: RunConfig) -> int | None:
    """The model's maximum positions from its config (no build). Refuses Hub ids and unknown
    presets or paths with the loader's messages."""
    import types

    from .models import architecture_config
    from .workloads import max_positions

    arch = architecture_config(config)
    return max_positions(types.SimpleNamespace(config=arch.hf_config))


def _check_seqs(config: RunConfig, seqs: list[int], limit: int | None) -> None:
    if limit is None:
        return
    extra = config.new_tokens if config.workload == "generate" else 0
    too_long = [s for s in seqs if s + extra > limit]
    if too_long:
        what = (f"prompt + {extra} new tokens" if extra else "sequence length")
        raise MemLensError(
            ErrorKind.INVALID_WORKLOAD,
            f"{config.model} supports {limit} positions, and the {what} {max(too_long)}"
            f"{' + ' + str(extra) if extra else ''} is beyond it.",
            f"Keep every sequence length at or below {limit - extra}"
            + (" (the prompt plus the new tokens must fit)" if extra else "") + ".")


class _Inner:
    """A listener for one inner estimate or run: forwards its progress as the sweep's, keeps its
    failure, and turns the sweep's cancel into the inner run's."""

    def __init__(self, listener: Listener, stage: str, fraction: float, label: str) -> None:
        self.listener, self.stage, self.fraction, self.label = listener, stage, fraction, label
        self.failed: Failed | None = None

    def __call__(self, event: Any) -> None:
        if isinstance(event, Progress):
            _emit(self.listener, Progress(self.stage, self.fraction,
                                          f"{self.label}: {event.message}"))
        elif isinstance(event, Failed):
            self.failed = event


def _estimate_at(base: RunConfig, seq: int, batch: int, opts: list[dict[str, Any]],
                 listener: _Inner, cancel: threading.Event, store: Any) -> RunResult:
    from .estimate import estimate

    cfg = dataclasses.replace(base, seq=seq, batch=batch, optimizations=list(opts),
                              device="cpu", attention_maps=False, prompt=None)
    result = estimate(cfg, listener, cancel, store)
    if cancel.is_set():
        raise Cancelled()
    if result is None:
        f = listener.failed
        raise MemLensError(f.kind if f else ErrorKind.INTERNAL,
                           f.message if f else "The estimate ended without a result.",
                           f.hint if f else "")
    return result


# -- sweep -----------------------------------------------------------------------------------------
def sweep(config: RunConfig, seqs: list[int], batches: list[int],
          opt_sets: list[list[dict[str, Any]]] | None = None,
          listener: Listener = lambda e: None, cancel: threading.Event | None = None,
          store: Any = None, measure_limit_bytes: int | None = None) -> SweepRecord | None:
    """Peak memory (and latency where measured) over ``seqs`` × ``batches`` × ``opt_sets``.

    ``config`` gives the model, workload, dtype, attention, new tokens and measurement settings;
    its seq, batch and optimizations are replaced per point. ``opt_sets`` defaults to
    ``[config.optimizations]``. ``measure_limit_bytes`` overrides the rule's limit (0: estimate
    every point; a huge value: measure every point the loader accepts). Each point's run is
    saved in ``store`` when one is given. Returns the record, or None after a ``Failed`` event.
    """
    cancel = cancel or threading.Event()
    return run_reported(lambda: _sweep(config, seqs, batches, opt_sets, listener, cancel, store,
                                       measure_limit_bytes), listener, "sweep", SweepFinished)


def run_reported(work: Callable[[], Any], listener: Listener, what: str,
                 finished: Callable[[Any], Any]) -> Any:
    """Run ``work``; its result goes to ``listener`` as ``finished(result)`` and is returned. A
    failure becomes a ``Failed`` event (MemLens' own message, or an internal error with the
    traceback in the log) and None: the contract of sweeps, fits and plans."""
    try:
        result = work()
    except MemLensError as exc:  # also Cancelled
        _emit(listener, Failed(exc.kind.value, exc.message, exc.hint))
        return None
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an event
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        _emit(listener, Failed(ErrorKind.INTERNAL.value,
                               f"Unexpected error during the {what}: {type(exc).__name__}: {exc}",
                               "This is a MemLens bug; the details are in the log."))
        traceback.print_exc()
        return None
    _emit(listener, finished(result))
    return result


def _sweep(config, seqs, batches, opt_sets, listener, cancel, store, measure_limit_bytes):
    from .models import _available_bytes, resolve_device
    from .optimizations import resolve
    from .runner import execute

    t0 = time.perf_counter()
    config.validate()
    seqs, batches = sorted(set(seqs)), sorted(set(batches))
    if not seqs or not batches or min(seqs + batches) < 1:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           "A sweep needs at least one sequence length and one batch size, "
                           "each at least 1.", "E.g. --seq 512,1024 --batch 1,2.")
    sets = [list(s) for s in (opt_sets if opt_sets is not None else [config.optimizations])]
    for s in sets:  # unknown ids, bad parameters, conflicts: refused before anything runs
        resolve(s, config.workload, config.device)
    _emit(listener, Progress("sweep", 0.0, f"reading {config.model}'s config"))
    limit = model_max_positions(config)
    _check_seqs(config, seqs, limit)
    device = resolve_device(config.device)
    available = _available_bytes(device)
    given_limit = measure_limit_bytes
    if measure_limit_bytes is None:
        measure_limit_bytes = int(measure_fraction() * available) if available else 0
    record = SweepRecord(
        model=config.model, workload=config.workload, seqs=seqs, batches=batches,
        opt_sets=[{"label": opt_set_label(s), "optimizations": s} for s in sets],
        device=config.device, dtype=config.dtype, attention_impl=config.attention_impl,
        new_tokens=config.new_tokens, measure_limit_bytes=measure_limit_bytes,
        measure_rule=(measure_rule() if given_limit is None else
                      "every point estimated, as asked" if given_limit == 0 else
                      "measured where the estimated peak is at most the given limit, "
                      "estimated beyond"),
        available_bytes=available, max_positions=limit,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if not available:
        record.warnings.append(f"The memory available on {device} could not be read: every "
                               "point is estimated.")
    grid = [(s, b, opts) for opts in sets for b in batches for s in seqs]
    for i, (seq, batch, opts) in enumerate(grid):
        if cancel.is_set():
            raise Cancelled()
        label = f"point {i + 1}/{len(grid)} (seq {seq}, batch {batch}, {opt_set_label(opts)})"
        frac = i / len(grid)
        t_point = time.perf_counter()
        point = SweepPoint(seq=seq, batch=batch, opt_set=opt_set_label(opts), kind="failed")
        est: RunResult | None = None
        try:
            est = _estimate_at(config, seq, batch, opts,
                               _Inner(listener, "sweep", frac, label + " estimate"), cancel,
                               None)
            point.estimated_peak_bytes = est.totals.peak_bytes
        except Cancelled:
            raise
        except MemLensError as exc:
            point.error = f"not estimated: {exc.message}"
        measure = (point.estimated_peak_bytes is not None
                   and point.estimated_peak_bytes <= measure_limit_bytes)
        # Without an estimate (an optimization fake tensors cannot apply) the point may still
        # be measured when the weights are known to be small: the loader's own check decides.
        if point.estimated_peak_bytes is None and measure_limit_bytes > 0:
            measure = True
        reported: RunResult | None = None
        if measure:
            # prompt=None: a prompt's tokens would replace the point's sequence length.
            cfg = dataclasses.replace(config, seq=seq, batch=batch, optimizations=list(opts),
                                      prompt=None)
            inner = _Inner(listener, "sweep", frac, label + " measure")
            result = execute(cfg, inner, cancel, store)
            if cancel.is_set():
                raise Cancelled()
            if result is not None:
                reported = result
                point.kind = "measured"
                point.reason = (
                    f"measured: estimated peak {human_bytes(point.estimated_peak_bytes)} ≤ "
                    f"{human_bytes(measure_limit_bytes)}" if point.estimated_peak_bytes is not None
                    else "measured; " + (point.error or "not estimated"))
                point.latency_ms = result.totals.plain_latency_ms
                point.tokens_per_s = result.totals.tokens_per_s
                point.error = None
            else:
                f = inner.failed
                why = f"{f.message}" if f else "the run ended without a result"
                if est is None:
                    point.error = f"{point.error}; not measured: {why}"
                else:
                    point.reason = f"estimate: the measurement failed ({why})"
        elif est is not None and given_limit == 0:
            point.reason = "estimate: every point estimated, as asked"
        elif est is not None:
            point.reason = (f"estimate: estimated peak {human_bytes(point.estimated_peak_bytes)}"
                            f" > {human_bytes(measure_limit_bytes)}")
        if reported is None and est is not None:
            reported = est
            point.kind = "estimate"
            if store is not None:
                try:
                    store.save(est)
                except (MemLensError, OSError) as exc:
                    record.warnings.append(f"point seq {seq} batch {batch}: the estimate was "
                                           f"not saved ({exc})")
        if reported is not None:
            t = reported.totals
            point.peak_bytes = t.peak_bytes
            point.categories = _categories(reported)
            point.unattributed_bytes = t.unattributed_bytes
            point.model_weights_bytes = t.model_weights_bytes
            point.binding = dominant_category(point.categories)
            phases = {k: v for k, v in (getattr(reported, "phase_peaks", None) or {}).items()
                      if k in ("forward", "backward", "optimizer") and v}
            if config.workload == "train" and phases:
                point.peak_phase = max(phases, key=phases.get)
            point.saved = store is not None and not any(
                "was not saved" in w for w in reported.warnings)
            # only a saved point names a run: an unsaved one's id pointed at nothing
            point.run_id = reported.run_id if point.saved else None
        point.seconds = round(time.perf_counter() - t_point, 3)
        record.points.append(point)
        _emit(listener, PointDone(point, i, len(grid)))
    record.duration_s = round(time.perf_counter() - t0, 3)
    _emit(listener, Progress("sweep", 1.0,
                             f"{len(grid)} point{'s' if len(grid) != 1 else ''} done"))
    return record


# -- what fits -------------------------------------------------------------------------------------
SEARCH = ("estimates only: first the granularity step (its estimate also gives the weights: "
          "when they alone exceed the budget the search stops), then the longest length the "
          "positions allow (done if it fits); between the largest fitting and the smallest "
          "failing length, "
          "the next length is proposed where a curve through the tested points (a line, or a "
          "parabola once three are known: the peak is close to affine or quadratic in the "
          "sequence length) meets the budget, rounded down to the granularity, and the one just "
          "above it is tried next; every third proposal is a plain bisection so the search "
          "always ends. The answer is the largest tested length that fits, with the next tested "
          "one that does not (at most one granularity step apart; with the default step, finer "
          "steps follow until they are at most 1/16 of the answer apart)")


BATCH_SEARCH = ("estimates only: batch 1 first (its estimate also gives the weights: when they "
                "alone exceed the budget the search stops), then doubling until a batch does "
                "not fit or the upper end is reached; between the largest fitting and the "
                "smallest failing batch the same curve-guided proposals and every-third "
                "bisection as the length search, with a step of 1. The answer is the largest "
                "tested batch that fits, with the next tested one (one more) that does not")
DEFAULT_MAX_BATCH = 65536


def default_granularity(seq_limit: int) -> int:
    """A power of two near ``seq_limit / 128`` (1 for short limits): the search's step."""
    g = 1
    while g * 128 < seq_limit:
        g *= 2
    return g


def _round_down(value: float, g: int) -> int:
    return int(math.floor(value / g)) * g


def _predict(points: list[tuple[int, int]], budget: int) -> float | None:
    """Where a curve through the (seq, peak) points nearest the budget reaches the budget:
    a parabola through three points when it is increasing there, else a line through two."""
    pts = sorted(points)
    if len(pts) < 2:
        return None
    near = sorted(pts, key=lambda p: abs(p[1] - budget))[:3]
    if len(near) == 3:
        (x0, y0), (x1, y1), (x2, y2) = sorted(near)
        try:
            d = (x0 - x1) * (x0 - x2) * (x1 - x2)
            a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / d
            b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / d
            c0 = y0 - a * x0 * x0 - b * x0
        except ZeroDivisionError:
            a = 0.0
        if a > 0:
            disc = b * b - 4 * a * (c0 - budget)
            if disc >= 0:
                root = (-b + math.sqrt(disc)) / (2 * a)
                if root > 0:
                    return root
    (x0, y0), (x1, y1) = sorted(sorted(pts, key=lambda p: abs(p[1] - budget))[:2])
    if y1 == y0:
        return None
    return x0 + (budget - y0) * (x1 - x0) / (y1 - y0)


REFINE_FRACTION = 16  # with the default step, the answer is bracketed to 1/16 of itself


def fit_sequence(peak_at: Callable[[int], int], budget: int, seq_limit: int, granularity: int,
                 refine: bool = False, shortest: int = 1,
                 ) -> tuple[int | None, int | None, list[tuple[int, int]]]:
    """Largest tested seq in [shortest, seq_limit] with ``peak_at(seq) <= budget``
    (``shortest`` 2 for a causal LM's training step: one token predicts nothing).

    Returns ``(fits, next, tested)``: ``fits`` is the largest tested length that fits (None when
    not even 1 fits), ``next`` the smallest tested length above it that does not (None when
    ``fits == seq_limit``), ``tested`` every (seq, peak) in test order. ``peak_at`` is called at
    most once per length. See :data:`SEARCH`. ``refine``: the step was chosen from the model's
    positions, not by the user; once the answer is known, finer steps (a quarter each time)
    narrow the bracket to at most ``answer / REFINE_FRACTION`` (a step from 131072 positions is
    1024 tokens, ±50% of an answer of 2048).
    """
    g = max(1, granularity)
    probe = _Probe(peak_at)
    peak = probe.peak
    first = min(max(g, shortest), seq_limit)
    if peak(first) > budget:
        if first == shortest or peak(shortest) > budget:
            return None, shortest, probe.order
        lo, hi, g = shortest, first, 1  # below the first step: single tokens
    elif first == seq_limit or peak(seq_limit) <= budget:
        return seq_limit, None, probe.order
    else:
        lo, hi = first, seq_limit
    lo, hi = _narrow(probe, budget, lo, hi, g)
    while refine and g > 1 and hi - lo > max(1, lo // REFINE_FRACTION):
        g = max(1, g // 4)
        lo, hi = _narrow(probe, budget, lo, hi, g)
    return lo, hi, probe.order


def fit_batch(peak_at: Callable[[int], int], budget: int, max_batch: int = 65536,
              ) -> tuple[int | None, int | None, list[tuple[int, int]]]:
    """Largest tested batch in [1, max_batch] with ``peak_at(batch) <= budget``: doubling from 1
    until a batch does not fit (or ``max_batch`` does), then the same narrowing as
    :func:`fit_sequence` with a step of 1. Same return contract. See :data:`BATCH_SEARCH`."""
    probe = _Probe(peak_at)
    peak = probe.peak
    if peak(1) > budget:
        return None, 1, probe.order
    lo = 1
    while True:
        nxt = min(lo * 2, max_batch)
        if nxt == lo:
            return lo, None, probe.order
        if peak(nxt) > budget:
            break
        lo = nxt
    lo, hi = _narrow(probe, budget, lo, nxt, 1)
    return lo, hi, probe.order


class _Probe:
    """Calls ``peak_at`` at most once per value and keeps the test order."""

    def __init__(self, peak_at: Callable[[int], int]) -> None:
        self.peak_at = peak_at
        self.peaks: dict[int, int] = {}
        self.order: list[tuple[int, int]] = []

    def peak(self, x: int) -> int:
        if x not in self.peaks:
            self.peaks[x] = self.peak_at(x)
            self.order.append((x, self.peaks[x]))
        return self.peaks[x]


def _narrow(probe: _Probe, budget: int, lo: int, hi: int, g: int) -> tuple[int, int]:
    """Between ``lo`` (fits, tested) and ``hi`` (does not, tested), ``lo`` a multiple of ``g``
    (or 1 with ``g == 1``): predict where the curve meets the budget, test there and just above;
    every third proposal bisects, so it ends with ``hi - lo <= g``."""
    proposals = 0
    while hi - lo > g:
        proposals += 1
        guess = _predict(list(probe.peaks.items()), budget) if proposals % 3 else None
        if guess is None or not lo < guess < hi:
            guess = (lo + hi) / 2
        s = min(max(_round_down(guess, g), lo + g), _round_down(hi - 1, g))
        if probe.peak(s) > budget:
            hi = s
            continue
        lo = s
        if s + g < hi:  # the one just above: after a close proposal this ends the search
            if probe.peak(s + g) <= budget:
                lo = s + g
            else:
                hi = s + g
    return lo, hi


def what_fits(config: RunConfig, budget: Budget, batches: list[int] | None = None,
              opt_sets: list[list[dict[str, Any]]] | None = None,
              listener: Listener = lambda e: None, cancel: threading.Event | None = None,
              store: Any = None, granularity: int | None = None, axis: str = "seq",
              seqs: list[int] | None = None,
              max_batch: int = DEFAULT_MAX_BATCH) -> FitRecord | None:
    """What fits ``budget`` per optimization set, with the binding constraint, from estimates.

    ``axis="seq"``: the largest sequence length (prompt length for generation) per batch in
    ``batches``. ``axis="batch"``: the largest batch (up to ``max_batch``) per sequence length in
    ``seqs``. Returns the record, or None after a ``Failed`` event."""
    cancel = cancel or threading.Event()
    def work() -> FitRecord:
        if axis not in ("seq", "batch"):
            raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"Unknown fit axis {axis!r}.",
                               "Use 'seq' (longest sequence per batch) or 'batch' (largest "
                               "batch per sequence length).")
        return _what_fits(config, budget, batches or [config.batch], opt_sets, listener,
                          cancel, store, granularity, axis, seqs or [config.seq], max_batch)

    return run_reported(work, listener, "fit", FitFinished)


class _WeightsExceed(Exception):
    """The weights alone exceed the budget: no length can fit, the search stops."""


def _growth(a: dict[str, int], b: dict[str, int]) -> str | None:
    if not a or not b:
        return None
    diff = {c: b.get(c, 0) - a.get(c, 0) for c in b}
    best = max(diff, key=lambda c: diff[c])
    return best if diff[best] > 0 else None


def _what_fits(config, budget, batches, opt_sets, listener, cancel, store, granularity,
               axis="seq", seqs=(1,), max_batch=DEFAULT_MAX_BATCH):
    from .estimate import estimable_optimizations

    t0 = time.perf_counter()
    config = dataclasses.replace(config, device="cpu", prompt=None, attention_maps=False)
    config.validate()
    batches = sorted(set(batches))
    if min(batches) < 1:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD, "Batch sizes must be at least 1.",
                           "Use --batch 1 or more.")
    seqs = sorted(set(seqs))
    if axis == "batch" and (min(seqs) < 1 or max_batch < 1):
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           "Sequence lengths and the largest batch must be at least 1.",
                           "Use --at-seq 1 or more and --max-batch 1 or more.")
    sets = [list(s) for s in (opt_sets if opt_sets is not None else [config.optimizations])]
    for s in sets:  # refused before any estimate runs
        estimable_optimizations(dataclasses.replace(config, optimizations=s))
    _emit(listener, Progress("fit", 0.0, f"reading {config.model}'s config"))
    limit = model_max_positions(config)
    extra = config.new_tokens if config.workload == "generate" else 0
    if limit is None:
        raise MemLensError(ErrorKind.INVALID_MODEL,
                           f"{config.model}'s config gives no maximum positions, so the search "
                           "has no upper end.",
                           "Add max_position_embeddings to the config.json.")
    seq_limit = limit - extra
    if seq_limit < 1:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"{config.model} supports {limit} positions, fewer than "
                           f"{extra} new tokens plus a 1-token prompt.",
                           f"Use {limit - 1} new tokens or fewer (New tokens; --new-tokens).")
    if axis == "batch":
        _check_seqs(config, seqs, limit)
    g = granularity or default_granularity(seq_limit)
    shortest = 1
    if config.workload == "train":
        from .models import _model_class, architecture_config

        # (a causal LM's step predicts each next token: one token has none to predict)
        shortest = 2 if _model_class(architecture_config(config).hf_config)[1] else 1
    record = FitRecord(
        model=config.model, workload=config.workload, budget_bytes=budget.bytes,
        budget_source=budget.source, budget_description=budget.description, batches=batches,
        opt_sets=[{"label": opt_set_label(s), "optimizations": s} for s in sets],
        dtype=config.dtype, attention_impl=config.attention_impl, new_tokens=config.new_tokens,
        max_positions=limit, seq_limit=seq_limit, granularity=g, search=SEARCH,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), axis=axis)
    if axis == "batch":
        record.batches, record.seqs, record.max_batch = [], seqs, max_batch
        record.granularity, record.search = 1, BATCH_SEARCH
    record.notes.append(
        "Every figure is an ESTIMATE (fake tensors, CPU kernels): tensor bytes as a CPU run "
        "would count them. Not included: the CUDA context, library workspaces (cuBLAS), "
        "allocator caching and fragmentation; leave headroom for them on a GPU.")
    if config.workload == "generate":
        record.notes.append(f"Generation: the length {'searched' if axis == 'seq' else 'given'} "
                            f"is the prompt; {extra} new tokens follow it, and prompt + new "
                            f"tokens ≤ {limit} positions.")
    by_batch = axis == "batch"
    jobs = ([(opts, s) for opts in sets for s in seqs] if by_batch
            else [(opts, b) for opts in sets for b in batches])
    for j, (opts, fixed) in enumerate(jobs):
        label = opt_set_label(opts)
        answer = (FitAnswer(opt_set=label, batch=None, seq=fixed, status="failed", axis="batch")
                  if by_batch else FitAnswer(opt_set=label, batch=fixed, status="failed"))
        answer.budget_bytes = budget.bytes
        t_job = time.perf_counter()
        # Memory grows with the batch and the length: once nothing fits at a smaller batch
        # (or, by batch, a shorter length), a larger one is answered without estimating it
        # (a 70B float32 model searched batches 8 and 32 for a minute after batch 1 failed).
        before = next((a for a in record.answers if a.opt_set == label and a.estimates
                       and a.status in ("nothing_fits", "weights_exceed")), None)
        if before is not None:
            answer.status, answer.binding = before.status, before.binding
            answer.model_weights_bytes = before.model_weights_bytes
            answer.message = (
                f"nothing fits at seq {fixed}: not even batch 1 fit at the shorter seq "
                f"{before.seq}, and a longer one needs more (not estimated)" if by_batch else
                f"nothing fits: batch {before.batch} did not fit even at seq "
                f"{before.next_seq}, and batch {fixed} needs more (not estimated)")
            answer.seconds = round(time.perf_counter() - t_job, 3)
            record.answers.append(answer)
            _emit(listener, FitDone(answer))
            continue
        results: dict[int, RunResult] = {}

        def peak_at(x: int, _opts=opts, _fixed=fixed, _j=j, _label=label) -> int:
            if cancel.is_set():
                raise Cancelled()
            seq, batch = (_fixed, x) if by_batch else (x, _fixed)
            what = (f"seq {seq}: estimate at batch {batch}" if by_batch
                    else f"batch {batch}: estimate at seq {seq}")
            inner = _Inner(listener, "fit", _j / len(jobs), f"{_label}, {what}")
            result = _estimate_at(config, seq, batch, _opts, inner, cancel, store)
            results[x] = result
            if store is not None:
                answer.run_ids[str(x)] = result.run_id
            tested.append((seq, batch, result.totals.peak_bytes))
            if (result.totals.model_weights_bytes or 0) > budget.bytes:
                raise _WeightsExceed()
            return result.totals.peak_bytes

        tested: list[tuple[int, int, int]] = []
        try:
            if by_batch:
                fits, nxt, _ = fit_batch(peak_at, budget.bytes, max_batch)
            else:
                fits, nxt, _ = fit_sequence(peak_at, budget.bytes, seq_limit, g,
                                            refine=granularity is None, shortest=shortest)
        except _WeightsExceed:
            fits, nxt = None, tested[0][1 if by_batch else 0]
        except Cancelled:
            raise
        except MemLensError as exc:
            answer.error = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
            answer.message = f"no answer: {answer.error}"
            fits = nxt = None
        answer.tested = [{"seq": s, "batch": b, "peak_bytes": p, "fits": p <= budget.bytes}
                         for s, b, p in tested]
        answer.estimates = len(tested)
        if results:
            any_result = next(iter(results.values()))
            answer.model_weights_bytes = any_result.totals.model_weights_bytes
            record.weights_dtype = record.weights_dtype or any_result.model_info.get("dtype")
        if answer.error is None and by_batch:
            _fill_batch_answer(answer, fits, nxt, results, budget, max_batch)
        elif answer.error is None:
            _fill_answer(answer, fits, nxt, results, budget, seq_limit, limit, extra)
        answer.seconds = round(time.perf_counter() - t_job, 3)
        record.answers.append(answer)
        _emit(listener, FitDone(answer))
    record.duration_s = round(time.perf_counter() - t0, 3)
    return record


def _fill_figures(answer: FitAnswer, fits: int | None, nxt: int | None,
                  results: dict[int, RunResult], value: str, next_value: str) -> None:
    """The estimates at the answer (``value``: the field it goes in) and at the next tested
    value (``next_value``), and the categories that bind and grow."""
    if fits is not None:
        r = results[fits]
        setattr(answer, value, fits)
        answer.peak_bytes = r.totals.peak_bytes
        answer.categories = _categories(r, rest=True)
        answer.binding = dominant_category(answer.categories)
    if nxt is not None:
        r = results[nxt]
        setattr(answer, next_value, nxt)
        answer.next_peak_bytes = r.totals.peak_bytes
        answer.next_categories = _categories(r, rest=True)
        if fits is None:
            answer.binding = dominant_category(answer.next_categories)
    answer.grows = _growth(answer.categories, answer.next_categories)
    if fits is not None and nxt is not None:
        a, b = (bytes_by_part(results[x].layers, results[x].totals.unattributed_bytes)
                for x in (fits, nxt))
        grew = {p: b.get(p, 0) - a.get(p, 0) for p in b}
        answer.parts_grow = dict(sorted(((p, n) for p, n in grew.items() if n > 0),
                                        key=lambda pn: -pn[1]))
    # What binds is what the next step adds most of (it is what runs over the budget), not the
    # largest part: fixed weights are often the largest part but do not limit the length.
    if answer.grows:
        answer.binding = answer.grows


def _growth_text(answer: FitAnswer, step: str) -> str:
    """What grows from the answer to the next tested value, most first (the two largest), and
    the largest part of the peak: "KV cache +4.62 GiB, activations +4.21 GiB from 2048 to 3072
    tokens; largest part of the peak: weights 15.0 GiB"."""
    a, b = answer.categories, answer.next_categories
    grew = sorted(((c, b.get(c, 0) - a.get(c, 0)) for c in b), key=lambda kv: -kv[1])
    grew = [(c, v) for c, v in grew if v > 0][:2]
    text = ", ".join(f"{CATEGORY_LABELS.get(c, c)} +{human_bytes(v)}" for c, v in grew)
    largest = dominant_category(a)
    if text:
        text += f" {step}"
        parts = list(answer.parts_grow.items())[:2]
        if parts:  # where in the model it grows: the blocks' activations, the loss's logits
            text += ", in " + " and ".join(f"{p} +{human_bytes(n)}" for p, n in parts)
    if largest:
        text += ("; " if text else "") + (f"largest part of the peak: "
                                          f"{CATEGORY_LABELS.get(largest, largest)} "
                                          f"{human_bytes(a[largest])}")
    return text


def _weights_exceed_message(weights: int, results: dict[int, RunResult], budget: Budget) -> str:
    """Nothing fits because of the weights: say so, with what a 16-bit dtype would need
    (parameter count × 2 bytes, from the estimate's own model) when the weights are float32."""
    b = human_bytes(budget.bytes)
    info = next((r.model_info for r in results.values()), {})
    params = info.get("parameters")
    fix = "quantize the weights (--opt), pick a smaller model, or shard it with memlens plan"
    if info.get("dtype") == "float32" and params:
        half = 2 * int(params)
        fix = (f"in bfloat16 its {human_count(params)} parameters take {human_bytes(half)}"
               + (": try --dtype bfloat16" if half < budget.bytes else
                  ", still more than the budget: quantize the weights (--opt) or shard them "
                  "with memlens plan"))
    return (f"the weights alone need {human_bytes(weights)} in {info.get('dtype', '?')}, more "
            f"than the budget {b}: nothing fits; {fix}")


def _halving_hint(answer: FitAnswer, results: dict[int, RunResult], budget: Budget) -> str:
    """For a float32 run that missed by less than half: a 16-bit dtype halves weights,
    activations, gradients and optimizer state alike, so it would likely fit."""
    info = next((r.model_info for r in results.values()), {})
    peak = answer.next_peak_bytes
    if info.get("dtype") != "float32" or not peak or peak / 2 > budget.bytes:
        return ""
    return "; in bfloat16 every part halves, about " + human_bytes(peak // 2) + \
        ": try --dtype bfloat16"


def _fill_answer(answer: FitAnswer, fits: int | None, nxt: int | None,
                 results: dict[int, RunResult], budget: Budget, seq_limit: int, limit: int,
                 extra: int) -> None:
    _fill_figures(answer, fits, nxt, results, "seq", "next_seq")
    b = budget_against(budget.bytes, answer.peak_bytes, answer.next_peak_bytes)
    weights = answer.model_weights_bytes or 0
    if fits == seq_limit:
        answer.status = "limit"
        largest = answer.binding
        answer.binding = "max_positions"
        answer.message = (
            f"the longest {'prompt' if extra else 'sequence'} the model allows fits: {fits} "
            "tokens"
            + (f" + {extra} new" if extra else "")
            + f" = {limit} positions, estimated peak {bytes_against(answer.peak_bytes, budget.bytes)} ≤ {b}; "
            f"the context is bound by the model's maximum positions, not memory (largest part "
            f"of the peak: {CATEGORY_LABELS.get(largest or '', largest)})")
    elif fits is not None:
        answer.status = "fits"
        answer.message = (
            f"largest tested length that fits: {fits} (estimated peak "
            f"{bytes_against(answer.peak_bytes, budget.bytes)} ≤ {b}); next tested {nxt} does not "
            f"({bytes_against(answer.next_peak_bytes, budget.bytes)}); binding: "
            f"{CATEGORY_LABELS.get(answer.binding or '', answer.binding)}, what the longer "
            f"length adds most of ({_growth_text(answer, f'from {fits} to {nxt} tokens')})")
    elif weights > budget.bytes:
        answer.status = "weights_exceed"
        answer.binding = "weights"
        answer.message = _weights_exceed_message(weights, results, budget)
    else:
        answer.status = "nothing_fits"
        parts = ", ".join(f"{CATEGORY_LABELS[c]} {human_bytes(v)}"
                          for c, v in sorted(answer.next_categories.items(),
                                             key=lambda kv: -kv[1]) if v)
        answer.message = (f"nothing fits: even at seq {nxt} the estimated peak is "
                          f"{bytes_against(answer.next_peak_bytes, budget.bytes)} > {b} ({parts}); binding: "
                          f"{CATEGORY_LABELS.get(answer.binding or '', answer.binding)}"
                          + _halving_hint(answer, results, budget))


def _fill_batch_answer(answer: FitAnswer, fits: int | None, nxt: int | None,
                      results: dict[int, RunResult], budget: Budget, max_batch: int) -> None:
    _fill_figures(answer, fits, nxt, results, "batch", "next_batch")
    b = budget_against(budget.bytes, answer.peak_bytes, answer.next_peak_bytes)
    weights = answer.model_weights_bytes or 0
    label = lambda c: CATEGORY_LABELS.get(c or "", c)  # noqa: E731
    if fits is not None and nxt is None:
        answer.status = "limit"
        answer.message = (f"the search's upper end fits: batch {fits} at seq {answer.seq} "
                          f"(estimated peak {bytes_against(answer.peak_bytes, budget.bytes)} ≤ {b}); raise "
                          f"the search's limit (now batch {max_batch}; memlens fit "
                          "--max-batch N) to search further")
    elif fits is not None:
        answer.status = "fits"
        answer.message = (
            f"largest tested batch that fits at seq {answer.seq}: {fits} (estimated peak "
            f"{bytes_against(answer.peak_bytes, budget.bytes)} ≤ {b}); next tested {nxt} does not "
            f"({bytes_against(answer.next_peak_bytes, budget.bytes)}); binding: {label(answer.binding)}, "
            f"what the larger batch adds most of "
            f"({_growth_text(answer, f'from batch {fits} to {nxt}')})")
    elif weights > budget.bytes:
        answer.status = "weights_exceed"
        answer.binding = "weights"
        answer.message = _weights_exceed_message(weights, results, budget)
    else:
        answer.status = "nothing_fits"
        parts = ", ".join(f"{CATEGORY_LABELS[c]} {human_bytes(v)}"
                          for c, v in sorted(answer.next_categories.items(),
                                             key=lambda kv: -kv[1]) if v)
        answer.message = (f"nothing fits at seq {answer.seq}: even batch 1 has an estimated "
                          f"peak of {bytes_against(answer.next_peak_bytes, budget.bytes)} > {b} ({parts}); "
                          f"binding: {label(answer.binding)}" + _halving_hint(answer, results, budget))


__all__ = [
    "Budget", "FitAnswer", "FitDone", "FitFinished", "FitRecord", "measure_fraction",
    "measure_rule", "PointDone", "SweepFinished", "SweepPoint", "SweepRecord",
    "default_granularity", "dominant_category", "fit_batch", "fit_sequence", "model_max_positions",
    "opt_set_label", "parse_bytes", "parse_int_list", "parse_opt_set", "resolve_budget",
    "run_reported", "sweep", "what_fits",
]
