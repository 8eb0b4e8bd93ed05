"""Distributed plans: per-device memory of a sharded model, without the devices (issue 6).

**Inference across devices** (:func:`plan_inference`). The model is built without memory
(accelerate's ``init_empty_weights``: parameters on the meta device), and its layers are placed on
N devices of a given size (plus an optional CPU offload budget) by the libraries that place them
for real: transformers' ``from_pretrained(device_map=STRATEGY, max_memory=...)`` path
(``transformers.integrations.accelerate._get_device_map``, which balances with
``get_balanced_memory`` and places with ``infer_auto_device_map``), or accelerate's own
``get_balanced_memory`` + ``infer_auto_device_map``. Per device:

* **weights**: the bytes of the parameters and buffers placed there (real shapes and dtype);
* **KV cache**: the per-layer KV cache of the estimate (``engine.estimate``: the same workload on
  fake tensors, the measured runs' instrumentation) of the attention layers that *run* there
  (for generate, at the end of the generation: its longest);
* **activations**: the largest per-layer peak among the layers that run there (the estimate's
  transient peak of the layer, plus the hidden state it receives and, for blocks, the tables every
  block receives such as the rotary cos/sin);
* **offload in transit**: on the device that runs CPU-offloaded layers (accelerate's main device,
  the first GPU), the largest offloaded module that holds tensors directly (a Linear, a norm):
  accelerate copies each one in for its forward and drops the copy after it.

Offloaded layers' weights are reported on the ``cpu`` row; their KV cache and activations on the
device that runs them. Layers that fit in no budget are what the libraries would offload to disk:
they are named as not fitting. By default the placement leaves room on each device for its KV
cache and activations (``reserve="runtime"``: the weights budget given to the library is the
device's size minus what it ran in the previous placement; of the placements tried, the one
that fits with the most weights on the GPUs is kept); the ``max_memory`` that produced the plan is
reported, ready for ``from_pretrained``.
``reserve="none"`` places the weights in the whole budget, as ``from_pretrained`` with
``max_memory`` equal to the device sizes would, and reports what then overflows.

**Training with FSDP2** (:func:`plan_training`). ``fully_shard`` on every block and on the root,
N ranks. Per rank, from the parameter shapes: sharded parameters and sharded gradients as FSDP2
stores them (each parameter split on dim 0 in chunks of ``ceil(dim0 / N)`` rows, every rank's
storage padded to that chunk), buffers (replicated), optimizer state (``torch.optim.AdamW``, the
optimizer of MemLens' training workload, stepped on fake tensors of the rank's local shard
shapes: nothing assumed about its states), the unsharded parameters FSDP2 all-gathers (the root
group, which FSDP2 does not reshard after forward, plus the block running and ``prefetch`` blocks
gathered ahead, padded, plus the flat all-gather buffer of the group being gathered), the
gradients being reduce-scattered (two groups' worth with the sharded output, beside the root's
unsharded gradients, which wait for the end of the backward), and the activations of the per-rank micro-batch: one training step on fake tensors built as
``engine.estimate`` builds them and counted by the measured runs' tensor accounting, in which
each gradient is handed over as soon as it is accumulated, as FSDP2 does (so activations are
not mixed up with gradients a single device would accumulate). Each part is taken at its own
maximum, so the total bounds the rank's peak from above.
``method="tracker"`` also runs PyTorch's ``FSDPMemTracker`` on rank 0 of a fake process group
under ``FakeTensorMode`` (real FSDP2 code, no memory, no communication) and reports its peak
and parts beside the shapes' figures. It runs the whole step through three dispatch layers:
seconds for small models, about 10 s at 8B and 30 s at 70B (seq 2048) on this project's 2-core
CPU, on top of the plan.

Every figure is an **estimate** (shapes and fake tensors, CPU kernels); plans say so in their
text, JSON (``figures: "estimate"``) and notes. Both planners report progress to a listener
(``Progress`` events, then :class:`PlanFinished` or ``Failed``), honour a ``threading.Event``
cancel, and return ``None`` after a ``Failed`` event, like ``engine.sweep``. Invalid arguments
(no devices, an unreadable size, an unknown strategy) raise ``MemLensError`` before anything runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import gc
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import Cancelled, ErrorKind, MemLensError
from .events import Progress
from .format import MISSING, human_bytes

PLAN_SCHEMA_VERSION = 1

#: Placement strategies, named as ``from_pretrained(device_map=...)`` names them. In transformers
#: "auto" and "balanced" are the same (``get_balanced_memory``); "balanced_low_0" keeps GPU 0 as
#: empty as possible (room for generation); "sequential" fills the devices in order.
STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
#: Which library computes the placement: transformers' from_pretrained path, or accelerate's
#: public functions (they differ on tied weights, e.g. GPT-2's embedding and head).
PLACEMENTS = ("transformers", "accelerate")
#: How much of a device's budget the weights may take: all of it ("none"), or what its KV cache
#: and activations leave ("runtime").
RESERVES = ("runtime", "none")
#: Training plan methods: parameter shapes only, or shapes plus PyTorch's FSDPMemTracker run.
TRAIN_METHODS = ("shapes", "tracker")
#: Optimizations a plan can pass to its estimate: those that leave the parameters unchanged (the
#: placement and the shards are computed from the unchanged model).
PLAN_OPTIMIZATIONS = ("attention", "sliding-window", "kv-cache", "checkpointing", "autocast")
# Optimizations that change the model's parameters (their shapes, number or trainable flags) and
# that run on its empty (meta) build: the plan's model has them applied, by their own code,
# before anything is placed or sharded.
PLAN_MODEL_OPTIMIZATIONS = ("lora", "freeze-base", "prune-ffn", "prune-heads", "drop-blocks")

FIGURES_NOTE = ("ESTIMATE: every figure comes from the model's parameter shapes and from an "
                "estimate on fake tensors (CPU kernels, tensor bytes as a CPU run would count "
                "them); nothing ran on a GPU. Not included: the CUDA context, library "
                "workspaces (cuBLAS, NCCL), allocator caching and fragmentation; leave headroom.")

Listener = Callable[[Any], None]


# -- events ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanFinished:
    """The plan is done (a :class:`DevicePlan` or a :class:`ShardPlan`)."""

    plan: Any


# -- records ---------------------------------------------------------------------------------------
@dataclass
class DeviceRow:
    """One device of an inference plan. ``device`` is ``cuda:N``, ``cpu`` or ``disk``."""

    device: str
    index: int | str  # the device_map value: GPU index, "cpu" or "disk"
    budget_bytes: int | None  # None for disk (no budget: nothing should go there)
    weights_bytes: int = 0  # parameters and buffers stored here
    kv_cache_bytes: int = 0  # KV cache of the attention layers that run here
    activation_bytes: int = 0  # the largest per-layer activation peak of the layers run here
    offload_transit_bytes: int = 0  # the largest offloaded module, copied in while it runs
    total_bytes: int = 0
    fits: bool = True
    over_by_bytes: int = 0
    binding: str | None = None  # the largest part
    modules: list[str] = field(default_factory=list)  # device_map entries stored here
    runs: list[str] = field(default_factory=list)  # offloaded entries this device runs
    summary: str = ""  # the modules, compressed (e.g. "model.layers.0–19, model.embed_tokens")

    def parts(self) -> dict[str, int]:
        return {"weights": self.weights_bytes, "kv_cache": self.kv_cache_bytes,
                "activations": self.activation_bytes,
                "offload_transit": self.offload_transit_bytes}


@dataclass
class DevicePlan:
    """Per-device memory of an inference workload on a model split across devices."""

    model: str
    workload: str
    batch: int
    seq: int
    new_tokens: int
    dtype: str  # resolved weights dtype, e.g. "bfloat16"
    attention_impl: str
    devices: int
    per_device_bytes: int
    cpu_offload_bytes: int
    strategy: str
    placement: str  # the library that placed the layers
    reserve: str
    device_map: dict[str, Any] = field(default_factory=dict)  # module -> GPU index | cpu | disk
    max_memory: dict[str, int] = field(default_factory=dict)  # the budgets given for the weights
    rows: list[DeviceRow] = field(default_factory=list)
    model_weights_bytes: int = 0  # the whole model's weights (shapes)
    estimate_peak_bytes: int | None = None  # the single-device estimate's peak
    estimate_run_id: str | None = None
    estimate_seq: int | None = None  # the prompt length the estimate used
    estimate_new_tokens: int | None = None
    fits: bool = True
    does_not_fit: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    iterations: int = 1  # placements computed (reserve="runtime" iterates)
    seconds: dict[str, float] = field(default_factory=dict)
    created: str = ""
    duration_s: float = 0.0
    kind: str = "inference_plan"
    figures: str = "estimate"
    schema_version: int = PLAN_SCHEMA_VERSION

    def row(self, device: str) -> DeviceRow:
        for r in self.rows:
            if r.device == device:
                return r
        raise KeyError(device)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


# Training parts: (key, label). The order is the table's.
TRAIN_PARTS = (
    ("sharded_params", "sharded parameters (padded)"),
    ("buffers", "buffers (replicated)"),
    ("sharded_gradients", "sharded gradients (padded)"),
    ("optimizer_state", "optimizer state"),
    ("unsharded_params", "unsharded parameters (all-gather)"),
    ("gradient_reduction", "gradient reduction (one group)"),
    ("activations", "activations (micro-batch)"),
)
# FSDPMemTracker's categories (its _FSDPRefType values) -> the part they belong to.
TRACKER_PARTS = {
    "Sharded Param": "sharded_params", "Buffer": "buffers", "Sharded Grad": "sharded_gradients",
    "OptState": "optimizer_state", "Unsharded Param": "unsharded_params",
    "All Gather": "unsharded_params", "Unsharded Grad": "gradient_reduction",
    "Reduce Scatter": "gradient_reduction", "Activation": "activations", "Temp": "activations",
    "Inputs": "activations",
}


@dataclass
class FSDPGroup:
    """One FSDP2 parameter group (a ``fully_shard`` call): a block, or the root's leftovers."""

    name: str
    parameters: int  # elements
    unsharded_bytes: int  # all-gathered, in the compute dtype, with FSDP2's padding
    sharded_bytes: int  # per rank, in the master dtype, padded


@dataclass
class ShardPlan:
    """Per-rank memory of FSDP2 training (``fully_shard`` per block and on the root)."""

    model: str
    ranks: int
    batch: int  # per-rank micro-batch
    seq: int
    dtype: str  # compute dtype (the all-gathered parameters, the activations)
    master_dtype: str  # sharded parameters, gradients and optimizer state
    reduce_dtype: str
    attention_impl: str
    per_rank_budget_bytes: int | None
    prefetch: int
    reshard_after_forward: bool
    method: str
    replicas: int = 1  # HSDP: groups each holding the model sharded over ranks / replicas
    optimizer: str = ""
    parts: dict[str, int] = field(default_factory=dict)  # rank 0 (the largest), bytes
    total_bytes: int = 0  # per rank: the parts' sum (each at its own maximum)
    all_ranks: dict[str, int] = field(default_factory=dict)  # summed over ranks
    per_rank_optimizer_state: list[int] = field(default_factory=list)
    model_parameters: int = 0
    trainable_parameters: int | None = None  # with gradients and optimizer state (None: older)
    model_params_bytes: int = 0  # every parameter, unsharded, in the master dtype
    model_buffers_bytes: int = 0
    padding_bytes: int = 0  # FSDP2's padding over all ranks (sharded parameters × ranks − all)
    groups: list[FSDPGroup] = field(default_factory=list)
    largest_block: str | None = None
    estimate_run_id: str | None = None  # the single-device estimate, when saved (store)
    estimate_peak_bytes: int | None = None
    estimate_activation_bytes: int | None = None  # max(forward, backward) of the pass
    activations_forward_bytes: int | None = None  # forward phase peak - weights - optimizer
    activations_backward_bytes: int | None = None  # backward phase peak - weights - optimizer
    tracker: dict[str, Any] | None = None  # FSDPMemTracker's peak and parts (method "tracker")
    fits: bool | None = None
    over_by_bytes: int = 0
    binding: str | None = None
    does_not_fit: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    created: str = ""
    duration_s: float = 0.0
    kind: str = "training_plan"
    figures: str = "estimate"
    schema_version: int = PLAN_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


def plan_from_dict(data: dict[str, Any]) -> DevicePlan | ShardPlan:
    """A plan read back from its JSON (``to_dict``): an inference or a training plan."""
    from .records import check_record

    kind = data.get("kind")
    cls: type = ShardPlan if kind == "training_plan" else DevicePlan
    check_record(data, str(kind) if kind in ("inference_plan", "training_plan")
                 else "inference_plan", PLAN_SCHEMA_VERSION)
    kwargs = {k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}}
    if cls is DevicePlan:
        names = {f.name for f in dataclasses.fields(DeviceRow)}
        kwargs["rows"] = [DeviceRow(**{k: v for k, v in r.items() if k in names})
                          for r in data.get("rows") or []]
    else:
        kwargs["groups"] = [FSDPGroup(**g) for g in data.get("groups") or []]
    return cls(**kwargs)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# -- argument checks (raise before anything runs) --------------------------------------------------
def check_devices(devices: Any, field: str = "--devices") -> int:
    """The inference plan's device count (``MemLensError`` naming ``field`` when it is not
    1 to MAX_DEVICES)."""
    return parse_count(devices, "devices", MAX_DEVICES,
                       f"Plan {MAX_DEVICES} devices or fewer ({field}): a model's layers spread "
                       "over more devices leave most of them empty.")


def check_ranks(ranks: Any, replicas: Any = 1, fields: tuple[str, str] = ("--ranks", "--replicas")
                ) -> tuple[int, int]:
    """``(ranks, replicas)`` of a training plan, refused by name (``fields``: how the caller
    names the two: options, or the window's fields) when replicas do not divide the ranks or a
    shard group is larger than a plan takes."""
    rf, pf = fields

    def example(ranks: int, replicas: int) -> str:
        return (f"{rf} {ranks} {pf} {replicas}" if rf.startswith("--")
                else f"{ranks} ranks with {replicas} replicas")

    n = parse_count(ranks, "ranks", MAX_RANKS)
    r = parse_count(replicas, "replicas", n, "There is at most one replica per rank: give "
                    f"{pf} no more than {rf}.")
    if n % r:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"{r} replicas do not divide {n} ranks evenly.",
                           f"HSDP splits the ranks into equal groups: {pf} must divide "
                           f"{rf} (e.g. {example(16, 2)} for two groups of 8).")
    if n // r > MAX_SHARD_RANKS:
        # the fewest replicas that divide the ranks into small enough groups
        fewest = next((d for d in range(-(-n // MAX_SHARD_RANKS), min(n, 1 << 16) + 1)
                       if n % d == 0 and n // d <= MAX_SHARD_RANKS), None)
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"{n // r:,} ranks sharing one copy of the model is more than a plan "
                           f"takes (at most {MAX_SHARD_RANKS:,} in a shard group).",
                           f"Split the ranks into HSDP groups of at most {MAX_SHARD_RANKS:,} with "
                           + (f"{pf} (e.g. {example(n, fewest)})"
                              if fewest else f"{pf} dividing {rf}")
                           + ", or plan fewer ranks.")
    return n, r


# The largest counts a plan takes. A plan's work and output grow with them (a row per device; a
# list of every rank's optimizer state): 100,000 devices ran for minutes without an answer. An
# inference device_map spreads a model's layers, so more devices than this leave most empty;
# FSDP2 shard groups past this are made of HSDP replicas in practice (--replicas).
MAX_DEVICES = 1024
MAX_SHARD_RANKS = 16384
MAX_RANKS = 2 ** 20


def parse_count(value: Any, what: str, most: int | None = None, hint: str = "") -> int:
    """``--devices 4`` / ``--ranks 8``: a whole number of at least 1 (and at most ``most``),
    else an error naming it."""
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"The number of {what} must be a whole number of at least 1 "
                           f"(got {value!r}).",
                           f"Give --{what} 1 or more, e.g. --{what} 4.")
    if most is not None and int(text) > most:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"{int(text):,} {what} is more than a plan takes (at most {most:,}).",
                           hint or f"Give --{what} {most} or fewer.")
    return int(text)


def parse_size(value: Any, option: str, allow_zero: bool = False) -> int:
    """A memory size (``80GiB``, ``80GB``, bytes) for ``option``, or an error naming it."""
    from .sweep import SIZE_FORMS, parse_bytes

    if isinstance(value, int) and not isinstance(value, bool):
        if value > 0 or (allow_zero and value == 0):
            return value
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"{option} must be a positive size (got {value}).",
                           f"Write {SIZE_FORMS}.")
    if allow_zero and str(value).strip() in ("0", "none", ""):
        return 0
    try:
        return parse_bytes(str(value))
    except MemLensError as exc:
        raise MemLensError(exc.kind, f"{option}: {exc.message}",
                           f"Write {SIZE_FORMS}.") from None


def _check_choice(value: str, choices: tuple[str, ...], option: str, why: str) -> str:
    if value not in choices:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"Unknown {option} {value!r}.",
                           f"Choose one of {', '.join(choices)} ({why}).")
    return value


def _check_optimizations(config: RunConfig) -> None:
    allowed = PLAN_OPTIMIZATIONS + PLAN_MODEL_OPTIMIZATIONS
    refused = [o.get("id") for o in config.optimizations if o.get("id") not in allowed]
    if refused == ["cast"]:  # (the general reason below, values and packed formats, is not a cast's)
        raise MemLensError(
            ErrorKind.NOT_APPLICABLE,
            "A distributed plan or run takes the weights' dtype from --dtype, not from a cast "
            "applied after loading.",
            "Give the dtype the model is sharded in: --dtype bfloat16 (the window's Dtype).")
    if refused:
        raise MemLensError(
            ErrorKind.NOT_APPLICABLE,
            f"A distributed plan or run cannot apply {', '.join(map(str, refused))}: the "
            "placement and "
            "the shards are computed from parameters built without memory, and it needs their "
            "values (or packs them in formats the placement does not size).",
            f"Plans take {', '.join(allowed)}; for a smaller dtype choose it (Dtype; "
            "--dtype); measure quantization on one device in a real run (memlens profile).")


# -- shared helpers --------------------------------------------------------------------------------
def _emit(listener: Listener, event: Any) -> None:
    try:
        listener(event)
    except Exception:  # noqa: BLE001 - a broken listener must not break the plan
        traceback.print_exc()


def _progress(listener: Listener, fraction: float | None, message: str) -> None:
    _emit(listener, Progress("plan", fraction, message))


def _check_cancel(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise Cancelled()


@contextlib.contextmanager
def _quiet_placement() -> Iterator[None]:
    """accelerate and transformers log "Device N is not available" for every GPU index on a
    machine without them: true, and the point of a plan. Silenced while placing."""
    names = ("accelerate.utils.modeling", "transformers.integrations.accelerate", "accelerate")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _empty_model(config: RunConfig, dtype: Any) -> Any:
    """The model of ``config`` with its parameters on the meta device (no memory): accelerate's
    ``init_empty_weights`` with weight initialisation skipped."""
    from accelerate import init_empty_weights
    from transformers.initialization import no_init_weights

    from .models import _model_class, _quiet_transformers, architecture_config

    arch = architecture_config(config)
    auto_cls, _ = _model_class(arch.hf_config)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.attention_impl != "auto":
        kwargs["attn_implementation"] = config.attention_impl
    if arch.remote:
        kwargs["trust_remote_code"] = True
    try:
        with init_empty_weights(), no_init_weights(), _quiet_transformers():
            model = auto_cls.from_config(arch.hf_config, **kwargs)
        # Tied weights (an LM head sharing the embedding) are one tensor in a real model; left
        # untied they would be counted twice (the demo: 11.7 MB instead of 10.1 MB). Under
        # init_empty_weights the tie does not hold (every parameter assignment makes a new meta
        # parameter), so it is made here, after it.
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        text_config = getattr(model.config, "get_text_config", lambda: model.config)()
        if (getattr(text_config, "tie_word_embeddings", False) and head is not None
                and embed is not None and head.weight is not embed.weight
                and head.weight.shape == embed.weight.shape):
            head.weight = embed.weight
    except Exception as exc:
        from .models import _first_line

        raise MemLensError(ErrorKind.INVALID_MODEL,
                           f"Could not build the architecture of {arch.name}: {_first_line(exc)}",
                           "Check the config values (sizes must divide evenly by the head "
                           "counts).") from exc
    model.eval()
    return model


def _planned_model(config: RunConfig, dtype: Any, cancel: threading.Event) -> Any:
    """``_empty_model`` with the optimizations of ``config`` that change parameters
    (``PLAN_MODEL_OPTIMIZATIONS``) applied to it by their own code: peft's adapters, frozen
    flags, sliced or dropped layers, all on the meta device."""
    model = _empty_model(config, dtype)
    chosen = [(o, p) for o, p in _resolved_optimizations(config)
              if o.id in PLAN_MODEL_OPTIMIZATIONS]
    if chosen:
        import torch

        from .optimizations import apply_all

        apply_all(model, chosen, torch.device("cpu"), cancel, lambda f, m: None)
    return model


def _resolved_dtype(config: RunConfig) -> Any:
    from .models import architecture_config, resolve_dtype

    return resolve_dtype(config.dtype, architecture_config(config).dtype)


def _named_weights(model: Any) -> list[tuple[str, int]]:
    """(name, bytes) of every parameter, buffer and plain tensor attribute, each storage once:
    the tensors ``engine.layers.module_weight_tensors`` counts (so the sum equals an estimate's
    weights), with names to place them by."""
    import torch

    out: list[tuple[str, int]] = []
    seen: set[Any] = set()

    def key(t: torch.Tensor) -> Any:
        return ("id", id(t)) if t.is_meta else ("storage", t.untyped_storage().data_ptr(),
                                                   t.device.type)

    def add(name: str, t: torch.Tensor) -> None:
        k = key(t)
        if k in seen:
            return
        seen.add(k)
        size = (t.numel() * t.element_size() if t.is_meta
                else t.untyped_storage().nbytes())
        out.append((name, int(size)))

    for name, p in model.named_parameters():
        add(name, p)
    for name, b in model.named_buffers():
        add(name, b)
    for mname, mod in model.named_modules():
        for attr, v in vars(mod).items():
            if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter):
                add(f"{mname}.{attr}" if mname else attr, v)
    return out


def _entry_of(name: str, device_map: dict[str, Any]) -> str | None:
    """The device_map entry holding ``name``: the longest key equal to it or a prefix of it
    (a name ending in "." is a module's own tensors)."""
    best = None
    for k in device_map:
        if k == "" or name == k or name.rstrip(".") == k or name.startswith(k + "."):
            if best is None or len(k) > len(best):
                best = k
    return best


def _device_label(value: Any) -> str:
    return f"cuda:{value}" if isinstance(value, int) else str(value)


def _estimate(config: RunConfig, listener: Listener, cancel: threading.Event, store: Any,
              label: str, fraction: float) -> Any:
    from .estimate import estimate
    from .sweep import _Inner

    inner = _Inner(listener, "plan", fraction, label)
    result = estimate(config, inner, cancel, store)
    if cancel.is_set():
        raise Cancelled()
    if result is None:
        f = inner.failed
        raise MemLensError(f.kind if f else ErrorKind.INTERNAL,
                           f.message if f else "The estimate ended without a result.",
                           f.hint if f else "")
    return result


def _run_planner(work: Callable[[], Any], listener: Listener, what: str) -> Any:
    from .sweep import run_reported

    return run_reported(work, listener, what, PlanFinished)


# -- inference -------------------------------------------------------------------------------------
def plan_inference(config: RunConfig, devices: int | str, per_device: int | str,
                   cpu_offload: int | str | None = None, strategy: str = "auto", *,
                   placement: str = "transformers", reserve: str = "runtime",
                   full_generation: bool = True, listener: Listener = lambda e: None,
                   cancel: threading.Event | None = None, store: Any = None,
                   ) -> DevicePlan | None:
    """Per-device memory of ``config``'s forward or generate workload on ``devices`` GPUs of
    ``per_device`` bytes each (``80GiB``, ``80GB`` or a number), with ``cpu_offload`` bytes of
    CPU memory for offloaded layers (None or 0: no offload), placed by ``strategy``.

    ``config.batch`` and ``config.seq`` are the workload's (for generate, ``seq`` is the prompt
    and ``new_tokens`` follow it). For generate the estimate is of the whole generation (the
    estimator runs the first and last decode steps); ``full_generation=False`` estimates one
    step after a prompt of ``seq + new_tokens - 1`` tokens instead: the same KV cache length
    (the cache holds every position) with a slightly longer prefill.

    Raises ``MemLensError`` for invalid arguments; any later failure is a ``Failed`` event and
    the result None. ``store``: the estimate behind the plan is saved there.
    """
    n = check_devices(devices)
    budget = parse_size(per_device, "--per-device")
    cpu = parse_size(cpu_offload, "--cpu-offload", allow_zero=True) if cpu_offload else 0
    _check_choice(strategy, STRATEGIES, "strategy", "how from_pretrained's device_map names them")
    _check_choice(placement, PLACEMENTS, "placement library", "who computes the device map")
    _check_choice(reserve, RESERVES, "reserve", "runtime: leave room for the KV cache and "
                  "activations; none: the weights may fill each device")
    if config.workload not in ("forward", "generate"):
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"An inference plan is for the forward or generate workload (got "
                           f"{config.workload}).",
                           "For training across ranks plan with the train workload (memlens "
                           "plan --workload train --ranks N).")
    _check_optimizations(config)
    cancel = cancel or threading.Event()
    return _run_planner(lambda: _plan_inference(config, n, budget, cpu, strategy, placement,
                                                reserve, full_generation, listener, cancel,
                                                store), listener, "inference plan")


def _place(model: Any, strategy: str, placement: str, max_memory: dict[Any, int]) -> dict:
    """The device map the chosen library computes for ``max_memory`` (weights only)."""
    no_split = model._no_split_modules
    no_split = list(no_split) if no_split else None
    with _quiet_placement():
        if placement == "transformers":
            from transformers.integrations.accelerate import _get_device_map

            name = "balanced" if strategy == "auto" else strategy
            return dict(_get_device_map(model, name, dict(max_memory), None))
        from accelerate import infer_auto_device_map
        from accelerate.utils import get_balanced_memory, get_max_memory

        if strategy == "sequential":
            budgets = get_max_memory(dict(max_memory))
        else:
            budgets = get_balanced_memory(model, max_memory=dict(max_memory),
                                          no_split_module_classes=no_split,
                                          low_zero=strategy == "balanced_low_0")
        return dict(infer_auto_device_map(model, max_memory=budgets,
                                          no_split_module_classes=no_split))


def _main_device(device_map: dict[str, Any]) -> Any:
    """The device that runs offloaded modules (accelerate's ``dispatch_model``): the first GPU
    in the map, or the CPU when no GPU holds anything."""
    for v in device_map.values():
        if v not in ("cpu", "disk"):
            return v
    return "cpu"


class _Runtime:
    """What the estimate says each layer needs while it runs, mapped to devices."""

    def __init__(self, result: Any, names: list[tuple[str, int]], ids_bytes: int) -> None:
        self.result = result
        self.weight_names = names
        top = [layer for layer in result.layers if layer.depth == 0]
        side = sum(layer.activation_bytes or 0 for layer in top if layer.kind == "other")
        self.rows: list[tuple[str, int]] = []  # (name, activation peak while it runs)
        prev = ids_bytes
        for layer in top:
            peak = prev + (layer.transient_peak_bytes or 0)
            if layer.kind == "block":
                peak += side
            self.rows.append((layer.name, peak))
            if layer.kind != "other":
                prev = layer.activation_bytes or 0
        self.kv: list[tuple[str, int]] = [(layer.name, layer.kv_cache_bytes)
                                          for layer in result.layers if layer.kv_cache_bytes]
        # Offloaded weights move to the running device one module at a time: accelerate hooks
        # every module that holds tensors directly (a Linear, a norm) and sends its weights back
        # after its forward. Bytes held directly, per module:
        self.direct: dict[str, int] = {}
        for name, size in names:
            module = name.rpartition(".")[0]
            self.direct[module] = self.direct.get(module, 0) + size

    def stored_on(self, layer: str, device_map: dict[str, Any]) -> Any:
        entry = _entry_of(layer, device_map)
        if entry is not None:
            return device_map[entry]
        for name, _ in self.weight_names:  # the layer spans several entries: its first weight
            if name.startswith(layer + "."):
                e = _entry_of(name, device_map)
                if e is not None:
                    return device_map[e]
        return _main_device(device_map)

    def per_device(self, device_map: dict[str, Any], weights_by_entry: dict[str, int],
                   ) -> dict[Any, dict[str, Any]]:
        main = _main_device(device_map)

        def runs_on(d: Any) -> Any:
            return main if d in ("cpu", "disk") else d

        out: dict[Any, dict[str, Any]] = {}

        def slot(d: Any) -> dict[str, Any]:
            return out.setdefault(d, {"kv": 0, "act": 0, "transit": 0, "runs": []})

        for name, peak in self.rows:
            s = slot(runs_on(self.stored_on(name, device_map)))
            s["act"] = max(s["act"], peak)
        for name, kv in self.kv:
            slot(runs_on(self.stored_on(name, device_map)))["kv"] += kv
        offloaded = [e for e, d in device_map.items() if d in ("cpu", "disk")]
        if offloaded and main != "cpu":
            s = slot(main)
            s["transit"] = max((b for m, b in self.direct.items()
                                if _entry_of(m + ".", device_map) in offloaded), default=0)
            s["runs"] = offloaded
        return out


def _compress(names: list[str]) -> str:
    """``model.layers.0 … model.layers.19`` -> ``model.layers.0–19``."""
    if names == [""]:
        return "(the whole model)"
    out: list[str] = []
    run: tuple[str, int, int] | None = None
    for n in names:
        head, _, tail = n.rpartition(".")
        if tail.isdigit() and run and run[0] == head and int(tail) == run[2] + 1:
            run = (head, run[1], int(tail))
            continue
        if run:
            out.append(f"{run[0]}.{run[1]}" + (f"–{run[2]}" if run[2] != run[1] else ""))
            run = None
        if tail.isdigit():
            run = (head, int(tail), int(tail))
        else:
            out.append(n)
    if run:
        out.append(f"{run[0]}.{run[1]}" + (f"–{run[2]}" if run[2] != run[1] else ""))
    return ", ".join(out)


def _max_memory_code(max_memory: dict[str, int]) -> str:
    """``max_memory`` as Python code to paste into ``from_pretrained``: ``{0: '75000MiB', 1:
    ..., 'cpu': ...}``; GPUs 0..N-1 with one budget as a comprehension (1,024 devices wrote
    a 17,600-character line)."""
    def size(v: int) -> str:
        return f"'{v // 2**20}MiB'" if v >= 2**30 else str(v)

    gpus = [k for k in max_memory if k.isdigit()]
    same = len({max_memory[k] for k in gpus}) == 1
    if len(gpus) > 4 and same and gpus == [str(i) for i in range(len(gpus))]:
        rest = [f"{k!r}: {size(v)}" for k, v in max_memory.items() if not k.isdigit()]
        return ("{" + f"**{{i: {size(max_memory[gpus[0]])} for i in range({len(gpus)})}}"
                + "".join(f", {r}" for r in rest) + "}")
    return "{" + ", ".join(f"{int(k) if k.isdigit() else k!r}: {size(v)}"
                           for k, v in max_memory.items()) + "}"


def _plan_inference(config: RunConfig, n: int, budget: int, cpu: int, strategy: str,
                    placement: str, reserve: str, full_generation: bool, listener: Listener,
                    cancel: threading.Event, store: Any) -> DevicePlan:
    import torch

    t0 = time.perf_counter()
    config = dataclasses.replace(config, device="cpu", prompt=None, attention_maps=False)
    config.validate()
    seconds: dict[str, float] = {}
    est_config = config
    if config.workload == "generate" and not full_generation:
        est_config = dataclasses.replace(config, seq=config.seq + config.new_tokens - 1,
                                         new_tokens=1)
    _progress(listener, 0.0, f"estimating {config.model} · {config.workload} (fake tensors)")
    t = time.perf_counter()
    result = _estimate(est_config, listener, cancel, store, "estimate", 0.0)
    seconds["estimate"] = round(time.perf_counter() - t, 3)
    _check_cancel(cancel)

    _progress(listener, 0.6, "building the model without memory (init_empty_weights)")
    t = time.perf_counter()
    dtype = _resolved_dtype(config)
    model = _planned_model(config, dtype, cancel)
    names = _named_weights(model)
    seconds["build"] = round(time.perf_counter() - t, 3)
    ids_bytes = config.batch * est_config.seq * torch.empty((), dtype=torch.long).element_size()
    runtime = _Runtime(result, names, ids_bytes)

    gpu_budgets: dict[Any, int] = {i: budget for i in range(n)}
    full = dict(gpu_budgets)
    full["cpu"] = cpu
    max_memory = dict(full)
    # reserve "runtime": a placement is good when every GPU holds its weights and runs its KV
    # cache, activations and offloaded weights in transit within its size, and nothing goes
    # to disk. From the whole budgets, each next placement gets as weights budget the device's
    # size minus what it ran in the previous one: as is (which can move layers back and forth)
    # and, in a second sequence, never more than before (the budgets only shrink, so layers
    # spill forward and the search ends). Each sequence stops when its budgets repeat or after
    # 8 placements; of all placements tried, the good one with the most weights on the GPUs is
    # kept (else the last one).
    tried: list[tuple[dict, dict[Any, int], bool, int]] = []
    t = time.perf_counter()
    for shrink in ((False,) if reserve == "none" else (False, True)):
        max_memory = dict(full)
        budgets_seen: list[dict[Any, int]] = []
        while True:
            _check_cancel(cancel)
            _progress(listener, 0.7, f"placing the layers ({placement}, {strategy}), "
                      f"placement {len(tried) + 1}")
            device_map = _place(model, strategy, placement, max_memory)
            budgets_seen.append(dict(max_memory))
            by_entry = _weights_by_entry(names, device_map)
            need = runtime.per_device(device_map, by_entry)
            nxt = dict(full)
            good = "disk" not in device_map.values() and _main_device(device_map) != "cpu"
            on_gpus = 0
            for i in range(n):
                s = need.get(i, {"kv": 0, "act": 0, "transit": 0})
                run = s["kv"] + s["act"] + s["transit"]
                held = sum(b for e, b in by_entry.items() if device_map.get(e) == i)
                on_gpus += held
                good = good and held + run <= budget
                nxt[i] = max(0, budget - run)
                if shrink:
                    nxt[i] = min(nxt[i], max_memory[i])
            tried.append((device_map, dict(max_memory), good, on_gpus))
            if reserve == "none" or nxt in budgets_seen or len(budgets_seen) >= 8:
                break
            max_memory = nxt
    goods = [x for x in tried if x[2]]
    device_map, max_memory = (max(goods, key=lambda x: x[3]) if goods else tried[-1])[:2]
    seen = tried
    seconds["placement"] = round(time.perf_counter() - t, 3)

    plan = DevicePlan(
        model=config.model, workload=config.workload, batch=config.batch, seq=config.seq,
        new_tokens=config.new_tokens if config.workload == "generate" else 0,
        dtype=_dtype_name(dtype), attention_impl=config.attention_impl, devices=n,
        per_device_bytes=budget, cpu_offload_bytes=cpu, strategy=strategy, placement=placement,
        reserve=reserve, device_map=dict(device_map),
        max_memory={str(k): int(v) for k, v in max_memory.items()}, iterations=len(seen),
        model_weights_bytes=sum(b for _, b in names),
        estimate_peak_bytes=result.totals.peak_bytes,
        estimate_run_id=result.run_id if store is not None else None,  # only a saved one
        estimate_seq=est_config.seq,
        estimate_new_tokens=est_config.new_tokens if config.workload == "generate" else None,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    _fill_rows(plan, names, runtime, n, budget, cpu)
    _inference_notes(plan, est_config, full_generation, result)
    plan.seconds = seconds
    plan.duration_s = round(time.perf_counter() - t0, 3)
    _progress(listener, 1.0, "plan done")
    return plan


def _weights_by_entry(names: list[tuple[str, int]], device_map: dict[str, Any]) -> dict[str, int]:
    by_entry: dict[str, int] = {}
    for name, size in names:
        e = _entry_of(name, device_map)
        if e is None:  # not in the map (cannot happen with a library's map): the main device
            e = ""
        by_entry[e] = by_entry.get(e, 0) + size
    return by_entry


def _fill_rows(plan: DevicePlan, names: list[tuple[str, int]], runtime: _Runtime, n: int,
               budget: int, cpu: int) -> None:
    dm = plan.device_map
    by_entry = _weights_by_entry(names, dm)
    need = runtime.per_device(dm, by_entry)
    keys: list[Any] = list(range(n))
    if cpu or any(v == "cpu" for v in dm.values()) or "cpu" in need:
        keys.append("cpu")
    if any(v == "disk" for v in dm.values()):
        keys.append("disk")
    for key in keys:
        budget_k = budget if isinstance(key, int) else (cpu if key == "cpu" else None)
        row = DeviceRow(device=_device_label(key), index=key, budget_bytes=budget_k)
        row.modules = [e for e in dm if dm[e] == key]
        row.weights_bytes = sum(by_entry.get(e, 0) for e in row.modules)
        s = need.get(key)
        if s is not None:
            row.kv_cache_bytes, row.activation_bytes = s["kv"], s["act"]
            row.offload_transit_bytes, row.runs = s["transit"], list(s["runs"])
        row.total_bytes = sum(row.parts().values())
        parts = {k: v for k, v in row.parts().items() if v}
        row.binding = max(parts, key=lambda k: parts[k]) if parts else None
        row.summary = _compress(row.modules) if row.modules else "—"
        if key == "disk":
            row.fits = False
            plan.does_not_fit.append(
                f"{_compress(row.modules)}: {human_bytes(row.weights_bytes)} of weights fit in "
                f"none of the budgets ({plan.devices} × {human_bytes(budget)}"
                + (f" + CPU {human_bytes(cpu)}" if cpu else "")
                + "); the libraries would offload them to disk (very slow). Add devices, a "
                "larger CPU offload (--cpu-offload), or a smaller dtype.")
        elif budget_k is not None and row.total_bytes > budget_k:
            row.fits = False
            row.over_by_bytes = row.total_bytes - budget_k
            label = _PART_LABELS.get(row.binding or "", row.binding)
            plan.does_not_fit.append(
                f"{row.device}: needs {human_bytes(row.total_bytes)} > its "
                f"{human_bytes(budget_k)} (over by {human_bytes(row.over_by_bytes)}); binding: "
                f"{label} {human_bytes(row.parts().get(row.binding or '', 0))}"
                + (" (reserve 'none' placed weights in the whole budget: plan with reserve "
                   "'runtime' to leave room)" if plan.reserve == "none" and key != "cpu" else ""))
        plan.rows.append(row)
    if dm and _main_device(dm) == "cpu":
        plan.does_not_fit.insert(0, (
            f"no GPU holds a layer: with {human_bytes(budget)} a GPU cannot hold even one layer "
            "and what it runs (KV cache, activations, offloaded weights in transit), so the "
            "whole model would run on the CPU. Give the GPUs more memory, or use more of them."))
    plan.fits = not plan.does_not_fit


_PART_LABELS = {"weights": "weights", "kv_cache": "KV cache", "activations": "activations",
                "offload_transit": "offloaded weights in transit",
                "sharded_params": "sharded parameters", "buffers": "buffers",
                "sharded_gradients": "sharded gradients", "optimizer_state": "optimizer state",
                "unsharded_params": "unsharded parameters (all-gather)",
                "gradient_reduction": "gradient reduction"}


def _inference_notes(plan: DevicePlan, est_config: RunConfig, full_generation: bool,
                     result: Any) -> None:
    lib = ("transformers' from_pretrained path (transformers.integrations.accelerate."
           "_get_device_map: get_balanced_memory + infer_auto_device_map)"
           if plan.placement == "transformers" else
           "accelerate (get_balanced_memory + infer_auto_device_map)")
    plan.notes.append(FIGURES_NOTE)
    plan.notes.append(f"Placement by {lib}, device_map={plan.strategy!r}"
                      + (" (the same as 'balanced' in transformers)"
                         if plan.strategy == "auto" else "")
                      + "; weights from the parameter shapes and dtype (meta device, "
                      "init_empty_weights).")
    if plan.reserve == "runtime":
        plan.notes.append(
            f"Reserve 'runtime': each GPU's weights budget is its size minus the KV cache, "
            f"activations and offloaded weights in transit it runs (the best of "
            f"{plan.iterations} placement(s)). To reproduce the placement: from_pretrained(..., "
            f"device_map={plan.strategy!r}, max_memory={_max_memory_code(plan.max_memory)}).")
    else:
        plan.notes.append("Reserve 'none': the weights may fill each device's whole budget (as "
                          "from_pretrained with max_memory equal to the device sizes); the KV "
                          "cache and activations then come on top.")
    if plan.workload == "generate":
        how = ("the whole generation estimated" if full_generation else
               f"estimated as one step after a {est_config.seq}-token prompt (= {plan.seq} + "
               f"{plan.new_tokens} − 1): the same cache length as the whole generation; its "
               "prefill gives the largest activations")
        plan.notes.append(
            f"KV cache per attention layer from the estimate ({how}), on the device that runs "
            "the layer; activations: the largest per-layer peak there (the layer's transient "
            "peak plus the hidden state it receives and, for blocks, the tables every block "
            "receives). KV cache at its longest and activations at prefill are both maxima: "
            "their sum bounds the device's peak from above.")
    else:
        plan.notes.append("Activations: the largest per-layer peak among the layers a device "
                          "runs (the layer's transient peak from the estimate, plus the hidden "
                          "state it receives and, for blocks, the tables every block receives); "
                          "a forward pass keeps no KV cache.")
    if any(r.index == "cpu" and r.modules for r in plan.rows):
        main = _device_label(_main_device(plan.device_map))
        plan.notes.append(
            f"CPU offload: the offloaded modules' weights stay in CPU memory and run on {main} "
            "(accelerate's main device): their KV cache and activations are on it, and their "
            "weights are copied to it one module at a time (accelerate hooks each module that "
            "holds tensors, e.g. a Linear, and frees the copy after its forward): the largest "
            "such module is the offload in transit.")
    # Its id only when it was saved: an unsaved id is one `memlens show` cannot find.
    plan.notes.append(f"Single-device estimate of the workload: peak "
                      f"{human_bytes(result.totals.peak_bytes)}"
                      + (f" (saved as {plan.estimate_run_id})." if plan.estimate_run_id
                         else "."))


# -- training (FSDP2) ------------------------------------------------------------------------------
def shard_rows(dim0: int, ranks: int) -> tuple[int, list[int]]:
    """FSDP2's dim-0 sharding of a parameter with ``dim0`` rows over ``ranks``: the padded chunk
    (``ceil(dim0 / ranks)`` rows, every rank's storage) and each rank's own rows (``torch.chunk``:
    full chunks first, then a partial one, then empty ones)."""
    chunk = -(-dim0 // ranks)
    return chunk, [max(0, min(chunk, dim0 - r * chunk)) for r in range(ranks)]


def plan_training(config: RunConfig, ranks: int | str, per_rank_budget: int | str | None = None,
                  *, master_dtype: str | None = None, prefetch: int = 1,
                  reshard_after_forward: bool = True, method: str = "shapes",
                  replicas: int | str = 1,
                  listener: Listener = lambda e: None, cancel: threading.Event | None = None,
                  store: Any = None) -> ShardPlan | None:
    """Per-rank memory of FSDP2 training of ``config`` (train workload; ``config.batch`` is the
    per-rank micro-batch) on ``ranks`` ranks, checked against ``per_rank_budget`` when given.

    ``master_dtype`` None keeps the sharded parameters, gradients and optimizer state in the
    run's dtype (FSDP2 without a mixed-precision policy); ``"float32"`` models the usual recipe
    of fp32 master weights with ``MixedPrecisionPolicy(param_dtype=<the run's dtype>,
    reduce_dtype=float32)``. ``prefetch``: blocks all-gathered ahead of the one running (FSDP2
    prefetches one by default). ``method="tracker"`` adds PyTorch's FSDPMemTracker run.
    ``replicas`` > 1 is HSDP: a 2-D mesh of ``replicas`` groups of ``ranks / replicas`` ranks,
    each group holding the whole model sharded among its ranks, gradients reduce-scattered in a
    group and all-reduced across groups (``fully_shard`` on a ("replicate", "shard") mesh).

    Raises ``MemLensError`` for invalid arguments; later failures are a ``Failed`` event and the
    result None.
    """
    n, r = check_ranks(ranks, replicas)
    budget = parse_size(per_rank_budget, "--per-device") if per_rank_budget else None
    _check_choice(method, TRAIN_METHODS, "method", "shapes: from the parameter shapes; tracker: "
                  "also PyTorch's FSDPMemTracker on fake tensors")
    if master_dtype not in (None, "float32", "bfloat16", "float16"):
        raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"Unknown master dtype {master_dtype!r}.",
                           "Leave it out (the run's dtype), or use float32 for fp32 master "
                           "weights with mixed precision.")
    if not isinstance(prefetch, int) or prefetch < 0:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"Prefetch must be 0 or more blocks (got {prefetch!r}).",
                           "FSDP2 prefetches 1 block by default: use --prefetch 1.")
    if config.workload != "train":
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"An FSDP2 plan is for the train workload (got {config.workload}).",
                           "For inference across devices plan with the forward or generate "
                           "workload (memlens plan --workload generate --devices N "
                           "--per-device SIZE).")
    _check_optimizations(config)
    cancel = cancel or threading.Event()
    return _run_planner(lambda: _plan_training(config, n, budget, master_dtype, prefetch,
                                               reshard_after_forward, method, listener, cancel,
                                               store, r), listener, "training plan")


def _optimizer_state_bytes(shapes: set[tuple[tuple[int, ...], Any]], lr: float,
                           ) -> tuple[dict[tuple[tuple[int, ...], Any], int], str]:
    """Bytes of optimizer state per (shape, dtype) parameter, from the training workload's own
    optimizer stepped once on a fake parameter of that shape (no memory)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .workloads import make_optimizer

    out: dict[tuple[tuple[int, ...], Any], int] = {}
    name = ""
    with FakeTensorMode():
        for shape, dtype in shapes:
            holder = torch.nn.ParameterList([torch.nn.Parameter(torch.empty(shape, dtype=dtype))])
            p = holder[0]
            p.grad = torch.zeros_like(p)
            opt = make_optimizer(holder, lr)
            opt.step()
            name = type(opt).__name__
            out[(shape, dtype)] = sum(v.numel() * v.element_size()
                                      for v in opt.state[p].values()
                                      if isinstance(v, torch.Tensor))
    return out, name


def _plan_training(config: RunConfig, ranks: int, budget: int | None, master_dtype: str | None,
                   prefetch: int, reshard_after_forward: bool, method: str, listener: Listener,
                   cancel: threading.Event, store: Any, replicas: int = 1) -> ShardPlan:
    import torch

    from .layers import _blocks
    from .models import DTYPES

    t0 = time.perf_counter()
    n = ranks // replicas  # the ranks sharing one copy of the model (all of them, without HSDP)
    config = dataclasses.replace(config, device="cpu", prompt=None, attention_maps=False)
    config.validate()
    seconds: dict[str, float] = {}
    _progress(listener, 0.0, f"estimating the activations of the per-rank micro-batch (batch "
              f"{config.batch}, seq {config.seq}) on fake tensors, gradients handed over as "
              "FSDP2 does")
    t = time.perf_counter()
    acts = activation_pass(config, listener, cancel)
    seconds["activations"] = round(time.perf_counter() - t, 3)
    result = None
    if store is not None:  # the single-device estimate too, saved in the store
        t = time.perf_counter()
        result = _estimate(config, listener, cancel, store, "estimate", 0.4)
        seconds["estimate"] = round(time.perf_counter() - t, 3)
    _check_cancel(cancel)

    compute = _resolved_dtype(config)
    master = DTYPES[master_dtype] if master_dtype else compute
    reduce = master
    _progress(listener, 0.5, "building the model without memory (init_empty_weights)")
    t = time.perf_counter()
    model = _planned_model(config, master, cancel)
    seconds["build"] = round(time.perf_counter() - t, 3)

    found = _blocks(model)
    prefix = found[0] if found else None
    block_names = [f"{prefix}.{name}" for name, _ in found[1].named_children()] if found else []
    c_size = torch.empty((), dtype=compute).element_size()
    r_size = torch.empty((), dtype=reduce).element_size()

    groups: dict[str, dict[str, int]] = {}
    sharded = grads = params_bytes = n_params = n_trainable = 0
    per_rank_shapes: list[list[tuple[tuple[int, ...], Any]]] = [[] for _ in range(n)]
    for name, p in model.named_parameters():
        shape = tuple(p.shape) or (1,)
        rest = math.prod(shape[1:])
        chunk, rows = shard_rows(shape[0], n)
        size = p.element_size()
        padded = chunk * rest * size
        sharded += padded
        params_bytes += p.numel() * size
        n_params += p.numel()
        group = next((b for b in block_names if name.startswith(b + ".")), "(root)")
        g = groups.setdefault(group, {"params": 0, "unsharded": 0, "sharded": 0, "grad": 0})
        g["params"] += p.numel()
        g["unsharded"] += chunk * n * rest * c_size  # frozen ones are all-gathered too
        g["sharded"] += padded
        if p.requires_grad:  # a frozen parameter has no gradient and no optimizer state
            n_trainable += p.numel()
            grads += padded
            g["grad"] += chunk * n * rest * r_size
            for r in range(n):
                per_rank_shapes[r].append(((rows[r], *shape[1:]), p.dtype))
    # Every rank stores a full chunk of every parameter: the padding over all ranks is the
    # storage of all ranks minus the parameters.
    padding = (sharded * n - params_bytes) * replicas
    buffers = sum(b.numel() * b.element_size() for _, b in model.named_buffers())

    _check_cancel(cancel)
    _progress(listener, 0.6, "optimizer state of each rank's shards (fake tensors)")
    t = time.perf_counter()
    distinct = {s for shapes in per_rank_shapes for s in shapes}
    state, opt_name = _optimizer_state_bytes(distinct, config.lr)
    per_rank_opt = [sum(state[s] for s in shapes) for shapes in per_rank_shapes]
    seconds["optimizer_state"] = round(time.perf_counter() - t, 3)

    root = groups.get("(root)", {"unsharded": 0, "grad": 0})
    block_groups = {k: v for k, v in groups.items() if k != "(root)"}
    largest = (max(block_groups, key=lambda k: block_groups[k]["unsharded"])
               if block_groups else None)
    biggest_block = block_groups[largest]["unsharded"] if largest else 0
    in_flight = len(block_groups) if not reshard_after_forward else min(
        len(block_groups), 1 + prefetch)
    # FSDP2 all-gathers a group into one flat buffer and copies it out into the parameters' own
    # storages: until the flat buffer is released both exist (measured on gloo: a prefetched
    # block held twice). With a mixed-precision policy each shard is first cast to the compute
    # dtype: those casts (1/ranks of the group) coexist with the flat buffer while it is filled.
    # The root is gathered first, alone; then the blocks, one more (its flat buffer) than those
    # in use.
    def gathering(group: int) -> int:
        return group + (group // n if compute != master else 0)

    unsharded = max(root["unsharded"] + gathering(root["unsharded"]),
                    root["unsharded"] + in_flight * biggest_block + gathering(biggest_block))
    # Reduce-scatter of a group: two groups' worth (measured on gloo: its unsharded gradients
    # beside the flat input they are copied into; in FSDP2's code the gradients are freed after
    # the copy-in, but the previous group's input is kept until its reduction is waited on) and
    # the sharded output (1/ranks). The root's gradients (the head's and the final norm's
    # backward runs first) stay unsharded until the root's own reduce-scatter at the end of the
    # backward, beside every block's (all of the root's are counted: an upper bound by the
    # embedding's).
    def reducing(grads: int) -> int:
        return 2 * grads + grads // n

    reduction = max(root["grad"] + max((reducing(g["grad"]) for g in block_groups.values()),
                                       default=0), reducing(root["grad"]))

    act_forward, act_backward = acts["forward"], acts["backward"]
    activations = max(act_forward, act_backward)

    plan = ShardPlan(
        model=config.model, ranks=ranks, replicas=replicas, batch=config.batch, seq=config.seq,
        dtype=_dtype_name(compute), master_dtype=_dtype_name(master),
        reduce_dtype=_dtype_name(reduce), attention_impl=config.attention_impl,
        per_rank_budget_bytes=budget, prefetch=prefetch,
        reshard_after_forward=reshard_after_forward, method=method, optimizer=opt_name,
        model_parameters=n_params, trainable_parameters=n_trainable,
        model_params_bytes=params_bytes, model_buffers_bytes=buffers,
        padding_bytes=padding, largest_block=largest,
        estimate_run_id=result.run_id if result else None,
        estimate_peak_bytes=result.totals.peak_bytes if result else None,
        estimate_activation_bytes=activations, activations_forward_bytes=act_forward,
        activations_backward_bytes=act_backward,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    plan.groups = [FSDPGroup(k, v["params"], v["unsharded"], v["sharded"])
                   for k, v in groups.items()]
    plan.parts = {"sharded_params": sharded, "buffers": buffers, "sharded_gradients": grads,
                  "optimizer_state": per_rank_opt[0], "unsharded_params": unsharded,
                  "gradient_reduction": reduction, "activations": activations}
    plan.per_rank_optimizer_state = per_rank_opt
    plan.all_ranks = {"sharded_params": sharded * ranks, "buffers": buffers * ranks,
                      "sharded_gradients": grads * ranks,
                      "optimizer_state": sum(per_rank_opt) * replicas}
    plan.total_bytes = sum(plan.parts.values())
    plan.binding = max(plan.parts, key=lambda k: plan.parts[k])
    plan.assumptions = _training_assumptions(plan, in_flight, len(block_groups))
    if method == "tracker":
        _check_cancel(cancel)
        _progress(listener, 0.7, f"FSDPMemTracker: FSDP2 on rank 0 of a fake {ranks}-rank group, "
                  "fake tensors")
        t = time.perf_counter()
        plan.tracker = track_fsdp2(config, ranks, master_dtype, reshard_after_forward, cancel,
                                   replicas)
        seconds["tracker"] = round(time.perf_counter() - t, 3)
    if budget is not None:
        plan.fits = plan.total_bytes <= budget
        if not plan.fits:
            plan.over_by_bytes = plan.total_bytes - budget
            plan.does_not_fit.append(
                f"each rank needs {human_bytes(plan.total_bytes)} > {human_bytes(budget)} (over "
                f"by {human_bytes(plan.over_by_bytes)}); binding: "
                f"{_PART_LABELS.get(plan.binding, plan.binding)} "
                f"{human_bytes(plan.parts[plan.binding])}"
                + "; more ranks shrink the sharded parts, "
                + ("a smaller micro-batch or sequence the activations"
                   if any(o.get("id") == "checkpointing" for o in config.optimizations) else
                   "activation checkpointing (--opt checkpointing; the Activation "
                   "checkpointing optimization) or a smaller micro-batch the "
                   "activations"))
    plan.notes.append(FIGURES_NOTE)
    plan.notes.append(
        "Activations: one training step of a rank's micro-batch on fake tensors (the estimate's "
        "build, MemLens' tensor accounting and training workload) in which every gradient is "
        "handed over as soon as it is accumulated, as FSDP2 reduce-scatters and frees them: "
        f"the forward and backward phase peaks above the weights, forward "
        f"{human_bytes(act_forward)}, backward {human_bytes(act_backward)} (largest: "
        f"{'backward' if act_backward >= act_forward else 'forward'}); "
        f"{acts['seconds']:.1f} s.")
    if result is not None:
        plan.notes.append(f"Single-device estimate of the micro-batch (saved): peak "
                          f"{human_bytes(result.totals.peak_bytes)} ({result.run_id}).")
    plan.seconds = seconds
    plan.duration_s = round(time.perf_counter() - t0, 3)
    _progress(listener, 1.0, "plan done")
    return plan


def _training_assumptions(plan: ShardPlan, in_flight: int, blocks: int) -> list[str]:
    mp = (f"MixedPrecisionPolicy(param_dtype={plan.dtype}, reduce_dtype={plan.reduce_dtype})"
          if plan.master_dtype != plan.dtype else "no mixed-precision policy")
    frozen = ([f"Frozen parameters ({plan.model_parameters - plan.trainable_parameters:,} of "
               f"{plan.model_parameters:,}) are sharded and all-gathered like the others but "
               "have no gradient, no reduction and no optimizer state."]
              if plan.trainable_parameters not in (None, plan.model_parameters) else [])
    group = plan.ranks // max(1, plan.replicas)
    mesh = (f"a 2-D mesh (HSDP) of {plan.replicas} replica groups × {group} ranks: each group "
            "holds the whole model sharded among its ranks, gradients are reduce-scattered in "
            "the group and then all-reduced across the groups in place"
            if plan.replicas > 1 else f"one mesh of {plan.ranks} rank"
            + ("s" if plan.ranks != 1 else ""))
    return frozen + [
        f"fully_shard on each of the {blocks} blocks, then on the root (its other parameters: "
        f"embeddings, final norm, head); {mesh}; {mp}: sharded parameters, gradients and "
        f"optimizer state in {plan.master_dtype}, all-gathered parameters in {plan.dtype}.",
        f"Sharding: each parameter on dim 0 in chunks of ceil(rows / {group}); every rank stores "
        "a full chunk (FSDP2 pads), so rank 0's figures are the largest; its optimizer state "
        f"covers its own rows ({plan.optimizer}, stepped once on fake tensors of those shapes).",
        "Unsharded parameters: the root group all the time from its forward to the end of "
        "backward (FSDP2 does not reshard the root after forward), plus "
        + (f"{in_flight} block(s) at once: the one running and {plan.prefetch} prefetched"
           if plan.reshard_after_forward else
           f"all {in_flight} blocks (reshard_after_forward=False keeps them after forward)")
        + f" (largest block {plan.largest_block}), plus the flat all-gather buffer of the "
        "group being gathered (it coexists with the parameters copied out of it until it is "
        "released)"
        + (" and the rank's shards of it cast to the compute dtype (the mixed-precision "
           "policy's all-gather input)" if plan.master_dtype != plan.dtype else "")
        + "; the root alone when it is gathered first; padded chunks × ranks.",
        "Gradient reduction: two groups' worth of unsharded gradients and reduce-scatter input "
        "(a block's gradients beside the flat input they are copied into, as measured on gloo; "
        "or, in FSDP2's code, that input beside the previous group's, kept until its reduction "
        "is waited on) and the sharded output, beside the root's unsharded gradients, kept "
        "until the root's reduce-scatter ends the backward (the larger of that and the root's "
        "own reduction).",
        "Each part at its own maximum; they do not all peak at once, so the total bounds the "
        "rank's peak from above (method 'tracker' finds the moment of the peak).",
    ]


def activation_pass(config: RunConfig, listener: Listener = lambda e: None,
                    cancel: threading.Event | None = None) -> dict[str, Any]:
    """Activation bytes of one training step of ``config`` as a rank of FSDP2 holds them.

    The model is built on fake tensors as ``engine.estimate`` builds it, its optimizations are
    applied, and one step of MemLens' training workload runs under the measured runs' tensor
    accounting (``MemoryProbe``), except that every parameter's gradient is dropped as soon as
    it is accumulated: FSDP2 reduce-scatters a group's gradients and frees the unsharded ones
    (the sharded gradients and the group being reduced are counted apart, from the shapes). The
    step has no optimizer state (nothing to step). Returns the forward and backward phase peaks
    above the weights, in bytes (``forward``, ``backward``), the step's saved-for-backward bytes
    and the seconds it took.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from . import workloads as wl
    from .estimate import _as_in_a_real_run, _EstimateRun, _fake_tensor_error, apply_on_fake
    from .instrument import MemoryProbe
    from .layers import select_layers
    from .models import preimport_architecture

    cancel = cancel or threading.Event()
    t0 = time.perf_counter()
    device = torch.device("cpu")
    config = dataclasses.replace(config, workload="train", device="cpu", prompt=None,
                                 attention_maps=False)
    run = _EstimateRun(config, listener, cancel)
    handles: list[Any] = []
    stage = "build"
    try:
        preimport_architecture(config.model)
        run.fake_mode = FakeTensorMode()
        model = run._build(device).model
        chosen = _resolved_optimizations(config)
        if chosen:
            apply_on_fake(model, chosen, run.fake_mode, device, cancel)
        tracked = select_layers(model, loss=True)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise MemLensError(ErrorKind.NOT_APPLICABLE, "The model has no trainable parameters.",
                               "Unfreeze some parameters, or plan an inference workload.")

        # With activation checkpointing, each block recomputed in the backward leaves reference
        # cycles that hold tensors until Python's garbage collector runs, so the live bytes
        # depended on when it ran (at 70B, seq 4096 the backward peak grew by about half a GiB
        # per block). The collector therefore runs after every gradient is handed over: what
        # is counted is what is still reachable. What existed before the step is frozen first
        # (below), so each collection looks at the step's own objects only.
        collect = any(o.get("id") == "checkpointing" for o in config.optimizations)

        def hand_over(p: torch.Tensor) -> None:
            p.grad = None
            if collect:
                gc.collect()

        stage = "memory"
        with run.fake_mode, _as_in_a_real_run():
            wl.check_positions(model, config.seq, "The input")
            ids = torch.zeros((config.batch, config.seq), dtype=torch.long, device=device)
            optimizer = torch.optim.SGD(params, lr=0.0)  # every gradient is handed over
            probe = MemoryProbe(model, tracked, cancel, training=True, count_flops=False)
            with probe:
                base = probe.acc.total  # the weights
                handles = [p.register_post_accumulate_grad_hook(hand_over) for p in params]
                probe.acc.track(ids, None, "activations")
                gc.collect()
                gc.freeze()
                try:
                    wl.train_step(model, wl.Inputs(ids, "fake ids (shape only)"), optimizer,
                                  device, probe)
                finally:
                    gc.unfreeze()
            peaks = dict(probe.acc.phase_peaks)
            saved = sum(probe.saved_bytes.values())
    except BaseException as exc:
        err = _fake_tensor_error(exc, stage, config.model)
        if err is not None:
            raise err from exc
        raise
    finally:
        for h in handles:
            h.remove()
        run.cleanup()
    return {"forward": max(0, peaks.get("forward", base) - base),
            "backward": max(0, peaks.get("backward", base) - base),
            "saved_for_backward": saved, "seconds": round(time.perf_counter() - t0, 3)}


def track_fsdp2(config: RunConfig, ranks: int, master_dtype: str | None = None,
                reshard_after_forward: bool = True,
                cancel: threading.Event | None = None, replicas: int = 1) -> dict[str, Any]:
    """One training step of ``config`` under FSDP2 on rank 0 of a fake ``ranks``-rank process
    group, in ``FakeTensorMode``, tracked by PyTorch's ``FSDPMemTracker``.

    The model is built on fake tensors, ``fully_shard`` is applied to every block and to the
    root, the optimizer's state is created by a first step outside the tracker (the tracked step
    then sees it, as every step after the first does), and one step of MemLens' training
    workload runs inside. Returns the peak and its parts by FSDPMemTracker's categories and by
    this module's parts. Needs no process group of its own: refused when one exists.
    """
    import torch
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode

    from . import workloads as wl
    from .estimate import _as_in_a_real_run
    from .layers import _blocks
    from .memtracker import name_outside_modules_apart
    from .models import DTYPES, _model_class, _quiet_transformers, architecture_config

    cancel = cancel or threading.Event()
    if dist.is_initialized():
        raise MemLensError(ErrorKind.NOT_APPLICABLE,
                           "FSDPMemTracker needs its own fake process group, and this process "
                           "already has one.",
                           "Plan from a process without torch.distributed initialised, or use "
                           "method 'shapes'.")
    try:
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError as exc:  # pragma: no cover - torch >= 2.6 has them
        raise MemLensError(ErrorKind.NOT_APPLICABLE,
                           f"This PyTorch ({torch.__version__}) has no FSDP2 memory tracker: "
                           f"{exc}.", "Use method 'shapes', or upgrade PyTorch.") from exc
    try:
        from torch.testing._internal.distributed.fake_pg import FakeStore

        store: Any = FakeStore()
    except ImportError:  # pragma: no cover - the fake backend is registered by torch itself
        store = dist.HashStore()
    t0 = time.perf_counter()
    compute = _resolved_dtype(config)
    master = DTYPES[master_dtype] if master_dtype else compute
    arch = architecture_config(config)
    auto_cls, _ = _model_class(arch.hf_config)
    kwargs: dict[str, Any] = {"dtype": master}
    if config.attention_impl != "auto":
        kwargs["attn_implementation"] = config.attention_impl
    if arch.remote:
        kwargs["trust_remote_code"] = True
    dist.init_process_group("fake", rank=0, world_size=ranks, store=store)
    try:
        mesh = (init_device_mesh("cpu", (replicas, ranks // replicas),
                                 mesh_dim_names=("replicate", "shard"))
                if replicas > 1 else init_device_mesh("cpu", (ranks,)))
        from transformers.initialization import no_init_weights

        fake = FakeTensorMode()
        with fake, no_init_weights(), _quiet_transformers(), torch.device("cpu"):
            model = auto_cls.from_config(arch.hf_config, **kwargs)
            model.tie_weights()  # as engine.estimate builds it: tied weights are one tensor
        chosen = _resolved_optimizations(config)
        if chosen:
            from .estimate import apply_on_fake

            apply_on_fake(model, chosen, fake, torch.device("cpu"), cancel)
        mp = MixedPrecisionPolicy(param_dtype=compute if master != compute else None,
                                  reduce_dtype=master if master != compute else None)
        found = _blocks(model)
        with fake:
            for block in (found[1] if found else []):
                fully_shard(block, mesh=mesh, mp_policy=mp,
                            reshard_after_forward=reshard_after_forward)
            fully_shard(model, mesh=mesh, mp_policy=mp)

        def check(*_a: Any) -> None:
            if cancel.is_set():
                raise Cancelled()

        handles = [m.register_forward_pre_hook(check) for m in (found[1] if found else [model])]
        ids = None
        with fake, _as_in_a_real_run():
            optimizer = wl.make_optimizer(model, config.lr)
            for p in model.parameters():  # the first step creates the state, untracked
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ids = torch.zeros((config.batch, config.seq), dtype=torch.long)
            tracker = FSDPMemTracker(model, optimizer)
            name_outside_modules_apart(tracker)  # transformers' kernel-function modules
            tracker.track_inputs((ids,))
            check()
            with tracker:
                wl.train_step(model, wl.Inputs(ids, "fake ids (shape only)"), optimizer,
                              torch.device("cpu"))
            snap = tracker.get_tracker_snapshot("peak")
        for h in handles:
            h.remove()
    finally:
        dist.destroy_process_group()
    by_dev = next(iter(snap.values()))
    categories = {getattr(k, "value", str(k)): int(v) for k, v in by_dev.items()
                  if str(k) != "Total"}
    peak = int(by_dev.get("Total", sum(categories.values())))
    parts = {key: 0 for key, _ in TRAIN_PARTS}
    for cat, v in categories.items():
        parts[TRACKER_PARTS.get(cat, "activations")] += v
    return {"method": "torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker on rank 0 of a "
                      f"fake {ranks}-rank process group, FakeTensorMode; one tracked step after "
                      "an untracked one that creates the optimizer state",
            "peak_bytes": peak, "categories": categories, "parts": parts,
            "seconds": round(time.perf_counter() - t0, 3)}


def _resolved_optimizations(config: RunConfig) -> list[Any]:
    if not config.optimizations:
        return []
    from .estimate import estimable_optimizations

    return estimable_optimizations(config)


# -- text ------------------------------------------------------------------------------------------
def format_plan(plan: DevicePlan | ShardPlan) -> str:
    """The plan as a text table with its notes (every figure labelled an estimate)."""
    if isinstance(plan, ShardPlan):
        return _format_training(plan)
    return _format_inference(plan)


def _table(cols: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> list[str]:
    widths = [max(len(r[i]) for r in rows + [cols]) for i in range(len(cols))]

    def fmt(r: list[str]) -> str:
        return "  ".join(v.ljust(widths[i]) if i in left else v.rjust(widths[i])
                         for i, v in enumerate(r)).rstrip()

    head = fmt(cols)
    return [head, "-" * len(head)] + [fmt(r) for r in rows]


def _format_inference(plan: DevicePlan) -> str:
    lines = []
    gen = plan.workload == "generate"
    lines.append(f"ESTIMATE — inference plan: {plan.model} on {plan.devices} × "
                 f"{human_bytes(plan.per_device_bytes)} GPU"
                 + (f" + CPU offload {human_bytes(plan.cpu_offload_bytes)}"
                    if plan.cpu_offload_bytes else "")
                 + f" · device_map={plan.strategy!r} ({plan.placement}) · reserve {plan.reserve}")
    lines.append(f"workload {plan.workload}: batch {plan.batch}, "
                 + (f"prompt {plan.seq} + {plan.new_tokens} new tokens" if gen
                    else f"seq {plan.seq}")
                 + f" · dtype {plan.dtype} · attention {plan.attention_impl} · weights "
                 f"{human_bytes(plan.model_weights_bytes)} in all")
    lines.append("")
    cols = ["device", "budget", "holds", "weights", "KV cache", "activations", "in transit",
            "total", "fits"]
    rows = []
    for r in plan.rows:
        holds = r.summary + (f" (offloaded: run on {_device_label(_main_device(plan.device_map))})"
                             if r.index == "cpu" and r.modules else "")
        rows.append([r.device, human_bytes(r.budget_bytes) if r.budget_bytes is not None
                     else MISSING, holds, human_bytes(r.weights_bytes),
                     human_bytes(r.kv_cache_bytes) if isinstance(r.index, int)
                     or r.kv_cache_bytes else MISSING,
                     human_bytes(r.activation_bytes) if isinstance(r.index, int)
                     or r.activation_bytes else MISSING,
                     human_bytes(r.offload_transit_bytes) if r.offload_transit_bytes else "",
                     human_bytes(r.total_bytes),
                     "yes" if r.fits else f"NO (+{human_bytes(r.over_by_bytes)})"
                     if r.over_by_bytes else "NO"])
    lines += _table(cols, rows, left=(0, 2, 8))
    lines.append("")
    if plan.fits:
        lines.append("fits: every device within its budget (estimate)")
    else:
        lines.append("DOES NOT FIT:")
        lines += [f"  {m}" for m in plan.does_not_fit]
    lines.append("")
    lines += [f"note: {n}" for n in plan.notes]
    lines.append(f"planned in {plan.duration_s:.1f} s ("
                 + ", ".join(f"{k} {v:.2f} s" for k, v in plan.seconds.items()) + ")")
    return "\n".join(lines) + "\n"


def _format_training(plan: ShardPlan) -> str:
    lines = []
    lines.append(f"ESTIMATE — FSDP2 training plan: {plan.model} on {plan.ranks} "
                 f"rank{'s' if plan.ranks != 1 else ''}"
                 + (f" (HSDP: {plan.replicas} replicas × {plan.ranks // plan.replicas} shards)"
                    if plan.replicas > 1 else "")
                 + (f" × {human_bytes(plan.per_rank_budget_bytes)}"
                    if plan.per_rank_budget_bytes else ""))
    lines.append(f"per-rank micro-batch {plan.batch} × seq {plan.seq} (global batch "
                 f"{plan.batch * plan.ranks}) · compute {plan.dtype} · master {plan.master_dtype}"
                 f" · {plan.optimizer} · attention {plan.attention_impl} · "
                 f"{plan.model_parameters:,} parameters "
                 f"({human_bytes(plan.model_params_bytes)} in {plan.master_dtype})"
                 + (f", {plan.trainable_parameters:,} trainable"
                    if plan.trainable_parameters not in (None, plan.model_parameters) else ""))
    lines.append("")
    tracked = plan.tracker is not None
    cols = ["part", "per rank (rank 0)", f"× {plan.ranks} ranks"] + (
        ["FSDPMemTracker at its peak"] if tracked else [])
    rows = []
    for key, label in TRAIN_PARTS:
        all_r = plan.all_ranks.get(key)
        row = [label, human_bytes(plan.parts.get(key, 0)),
               human_bytes(all_r) if all_r is not None else ""]
        if tracked:
            row.append(human_bytes(plan.tracker["parts"].get(key, 0)))
        rows.append(row)
    total = ["total per rank (each part at its maximum)", human_bytes(plan.total_bytes), ""]
    if tracked:
        total.append(f"peak {human_bytes(plan.tracker['peak_bytes'])}")
    rows.append(total)
    lines += _table(cols, rows)
    lines.append("")
    lines.append(f"whole model: parameters {human_bytes(plan.model_params_bytes)}, buffers "
                 f"{human_bytes(plan.model_buffers_bytes)}; FSDP2 padding "
                 f"{human_bytes(plan.padding_bytes)} over all ranks")
    if len(set(plan.per_rank_optimizer_state)) > 1:
        lines.append("optimizer state per rank: " + ", ".join(
            human_bytes(b) for b in plan.per_rank_optimizer_state))
    if plan.fits is True:
        lines.append(f"fits: {human_bytes(plan.total_bytes)} ≤ "
                     f"{human_bytes(plan.per_rank_budget_bytes)} per rank (estimate)")
    elif plan.fits is False:
        lines.append("DOES NOT FIT: " + "; ".join(plan.does_not_fit))
    lines.append("")
    lines += [f"assumption: {a}" for a in plan.assumptions]
    if tracked:
        lines.append(f"tracker: {plan.tracker['method']} ({plan.tracker['seconds']:.1f} s)")
    lines += [f"note: {n}" for n in plan.notes]
    lines.append(f"planned in {plan.duration_s:.1f} s ("
                 + ", ".join(f"{k} {v:.2f} s" for k, v in plan.seconds.items()) + ")")
    return "\n".join(lines) + "\n"


# -- command line ----------------------------------------------------------------------------------
def add_cli_parser(sub: Any, common: Callable[[Any], None] | None = None) -> Any:
    """Add ``memlens plan`` to the ``sub`` subparsers. ``common`` is ``engine.cli``'s function
    adding the sweep/fit options (model, workload, dtype, attention, --opt, --save, --out,
    --json); without it the same options are added here."""
    p = sub.add_parser(
        "plan", help="per-device memory of a model split across GPUs (inference) or sharded "
                     "with FSDP2 (training); estimates",
        description="Inference (--workload forward|generate): the layers are placed on N GPUs "
                    "of --per-device SIZE (and --cpu-offload SIZE) by transformers' / "
                    "accelerate's device_map, and each device gets its weights, KV cache, "
                    "activations and total, from the parameter shapes and an estimate of the "
                    "workload. Training (--workload train): FSDP2 on --ranks N: per-rank "
                    "sharded parameters, gradients, optimizer state, all-gather buffers and "
                    "activations. Every figure is an estimate.")
    if common is not None:
        common(p)
    else:
        _common_options(p)
    p.add_argument("--batch", type=int, default=1,
                   help="batch (training: the per-rank micro-batch)")
    p.add_argument("--seq", type=int, default=None,
                   help=f"sequence length (for generate: prompt length; default {DEFAULT_SEQ}, "
                        "or what fits the model's positions if fewer)")
    p.add_argument("--devices", default=None, metavar="N", help="GPUs (inference)")
    p.add_argument("--per-device", default=None, metavar="SIZE",
                   help="memory of each GPU (or each rank), e.g. 80GiB, 80GB")
    p.add_argument("--cpu-offload", default=None, metavar="SIZE",
                   help="CPU memory for offloaded layers (inference; default: none)")
    p.add_argument("--strategy", default="auto",
                   help=f"inference placement: {' | '.join(STRATEGIES)}")
    p.add_argument("--placement", default="transformers",
                   help="who places the layers: transformers (from_pretrained's path) | "
                        "accelerate")
    p.add_argument("--reserve", default="runtime",
                   help="runtime: leave each GPU room for its KV cache and activations | none")
    p.add_argument("--one-step", action="store_true",
                   help="generate: estimate one step after a prompt of seq + new tokens - 1 "
                        "(the same cache length) instead of the whole generation")
    p.add_argument("--ranks", default=None, metavar="N",
                   help="FSDP2 ranks (training; --devices is taken when --ranks is not given)")
    p.add_argument("--replicas", default=1, metavar="R",
                   help="training: HSDP, R groups of ranks / R ranks, each group holding the "
                        "model sharded among its ranks (default 1: plain FSDP2)")
    from .cli import _DTYPE_ALIASES

    # the short forms too (fp32, bf16, fp16), as profile --master-dtype takes them
    p.add_argument("--master-dtype", default=None,
                   type=lambda text: _DTYPE_ALIASES.get(text.lower(), text),
                   help="training: dtype of the sharded parameters, gradients and optimizer "
                        "state (default: the run's dtype; float32 or fp32: fp32 master weights "
                        "with mixed precision)")
    p.add_argument("--prefetch", type=int, default=1,
                   help="training: blocks FSDP2 all-gathers ahead (default 1)")
    p.add_argument("--no-reshard-after-forward", action="store_true",
                   help="training: keep every block's parameters unsharded after forward")
    p.add_argument("--method", default="shapes",
                   help="training: shapes | tracker (also run PyTorch's FSDPMemTracker on fake "
                        "tensors: ~10 s at 8B, ~30 s at 70B)")
    return p


def _common_options(p: Any) -> None:
    """The options ``engine.cli``'s sweep/fit ``common`` adds (for use without it)."""
    from .cli import _dtype
    from .config import ATTENTION_IMPLS, DTYPES, WORKLOADS

    p.add_argument("--model", default="demo",
                   help="preset:NAME | PATH (config.json or a folder with one) | demo | "
                        "demo-encoder")
    p.add_argument("--workload", choices=WORKLOADS, default="forward")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--dtype", type=_dtype, default="auto", help=" | ".join(DTYPES))
    p.add_argument("--attention", choices=ATTENTION_IMPLS, default="auto", dest="attention_impl")
    p.add_argument("--opt", action="append", default=[], metavar="ID[:key=value,...]")
    p.add_argument("--opt-set", action="append", default=[], metavar="SET")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--save", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--json", action="store_true")


DEFAULT_SEQ = 2048  # plans are for large models: a typical context, not the profile's 128


def _default_seq(args: Any) -> int:
    """``--seq`` when not given: :data:`DEFAULT_SEQ`, or the model's positions (less the new
    tokens of a generation) if fewer, said on stderr, so that ``memlens plan`` with only the
    devices given works on a small model such as the demo instead of refusing its own default."""
    import sys

    from .models import architecture_config
    from .workloads import config_positions

    try:
        probe = RunConfig(model=args.model, workload=args.workload,
                          trust_remote_code=args.trust_remote_code)
        limit = config_positions(architecture_config(probe).hf_config)
    except (MemLensError, ValueError):
        return DEFAULT_SEQ  # the plan itself reports what is wrong with the model
    room = None if limit is None else limit - (
        args.new_tokens if args.workload == "generate" else 0)
    if room is None or room >= DEFAULT_SEQ or room < 1:
        return DEFAULT_SEQ
    print(f"memlens: sequence {room} (the model has {limit} positions"
          + (f", less {args.new_tokens} new tokens" if args.workload == "generate" else "")
          + f"; plans default to {DEFAULT_SEQ}); give --seq to choose", file=sys.stderr)
    return room


# Options that only one kind of plan reads, with their defaults: given to the other kind they
# were ignored without a word.
_TRAINING_ONLY = (("replicas", "--replicas", 1), ("master_dtype", "--master-dtype", None),
                  ("prefetch", "--prefetch", 1),
                  ("no_reshard_after_forward", "--no-reshard-after-forward", False),
                  ("method", "--method", "shapes"), ("ranks", "--ranks", None))
_INFERENCE_ONLY = (("strategy", "--strategy", "auto"), ("cpu_offload", "--cpu-offload", None),
                   ("placement", "--placement", "transformers"),
                   ("reserve", "--reserve", "runtime"), ("one_step", "--one-step", False))


def _refuse_other_workloads_options(args: Any) -> None:
    if getattr(args, "one_step", False) and args.workload == "forward":  # (it was ignored)
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           "--one-step is one step of a generation, and this is a forward plan.",
                           "Leave it out, or plan a generation (--workload generate).")
    training = args.workload == "train"
    others = _INFERENCE_ONLY if training else _TRAINING_ONLY
    given = [flag for attr, flag, default in others
             if getattr(args, attr, default) not in (default, str(default))]
    if given:
        kind = "inference plans (forward, generate)" if training else "training plans"
        raise MemLensError(
            ErrorKind.INVALID_WORKLOAD,
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to {kind}, and this "
            f"is a {args.workload} plan.",
            "Leave " + ("it" if len(given) == 1 else "them") + " out, or choose the workload "
            + ("forward or generate." if training else "train (--workload train)."))


def run_cli(args: Any) -> int:
    """``memlens plan``: run the plan the arguments describe; print it (or its JSON)."""
    import json
    import sys

    from .cli import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, _ProgressPrinter, error
    from .optimizations import parse_spec

    try:  # options that contradict the workload: the command line is wrong (exit 2)
        if getattr(args, "opt_set", None):
            raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                               "A plan takes one optimization set, not --opt-set.",
                               "Give the optimizations with --opt ID (repeatable).")
        _refuse_other_workloads_options(args)
    except MemLensError as exc:
        error(exc.message, exc.hint)
        return EXIT_USAGE
    try:
        seq = args.seq if args.seq is not None else _default_seq(args)
        config = RunConfig(model=args.model, workload=args.workload, batch=args.batch,
                           seq=seq, new_tokens=args.new_tokens, dtype=args.dtype,
                           attention_impl=args.attention_impl,
                           trust_remote_code=args.trust_remote_code,
                           optimizations=[parse_spec(s) for s in (args.opt or [])])
        store = None
        if getattr(args, "save", False):
            from .store import RunStore

            store = RunStore(getattr(args, "store", None))
        printer = _ProgressPrinter(sys.stderr)
        cancel = threading.Event()
        if args.workload == "train":
            if (args.ranks is not None and args.devices is not None
                    and args.ranks != args.devices):  # (--devices was dropped without a word)
                raise MemLensError(
                    ErrorKind.INVALID_WORKLOAD,
                    f"--ranks {args.ranks} and --devices {args.devices} disagree: an FSDP2 "
                    "training plan has one rank per device.",
                    "Give one of them (--ranks N).")
            ranks = args.ranks if args.ranks is not None else args.devices
            if ranks is None:
                raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                                   "An FSDP2 training plan needs the number of ranks.",
                                   "Add --ranks N (e.g. --ranks 8).")
            check_ranks(ranks, args.replicas)  # (before the model's seconds of building)
            work = lambda: plan_training(  # noqa: E731
                config, ranks, args.per_device, master_dtype=args.master_dtype,
                prefetch=args.prefetch, reshard_after_forward=not args.no_reshard_after_forward,
                method=args.method, replicas=args.replicas, listener=printer, cancel=cancel,
                store=store)
        else:
            if args.devices is None or args.per_device is None:
                missing = " and ".join(o for o, v in (("--devices", args.devices),
                                                      ("--per-device", args.per_device))
                                       if v is None)
                raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                                   "An inference plan needs the devices and their memory: "
                                   f"{missing} {'is' if ' and ' not in missing else 'are'} "
                                   "missing.",
                                   "Add --devices N --per-device SIZE (e.g. --devices 4 "
                                   "--per-device 80GiB).")
            check_devices(args.devices)  # (before the model's seconds of building)
            work = lambda: plan_inference(  # noqa: E731
                config, args.devices, args.per_device, args.cpu_offload, args.strategy,
                placement=args.placement, reserve=args.reserve,
                full_generation=not args.one_step, listener=printer, cancel=cancel,
                store=store)
        out: dict[str, Any] = {}

        def target() -> None:
            try:
                out["plan"] = work()
            except MemLensError as exc:
                out["error"] = exc

        from .runner import in_thread

        done = in_thread(target, "memlens-plan")
        try:
            while not done.wait(0.2):
                pass
        except KeyboardInterrupt:
            print("\nmemlens: plan cancelled", file=sys.stderr)
            cancel.set()
            done.wait()
            return EXIT_CANCELLED
        if "error" in out:
            raise out["error"]
    except MemLensError as exc:
        error(exc.message, exc.hint)
        return EXIT_FAILED
    plan = out.get("plan")
    if plan is None:
        f = printer.failed
        error(f.message if f else "The plan ended without a result.",
              f.hint if f else "See the messages above.")
        return EXIT_CANCELLED if f is not None and f.kind == "cancelled" else EXIT_FAILED
    data = plan.to_dict()
    if args.out is not None:
        from .store import write_output

        write_output(args.out, json.dumps(data, indent=1), "--out")
    if args.json:
        json.dump(data, sys.stdout, indent=1)
        print()
    else:
        sys.stdout.write(format_plan(plan))
        if store is not None and plan.estimate_run_id:
            print(f"saved (as an estimate): {store.path_for(plan.estimate_run_id)}")
        if args.out is not None:
            from .cli import _written

            _written(args.out)
    return EXIT_OK


__all__ = [
    "DevicePlan", "DeviceRow", "FSDPGroup", "PLACEMENTS", "PlanFinished", "RESERVES",
    "STRATEGIES", "ShardPlan", "TRAIN_METHODS", "TRAIN_PARTS", "add_cli_parser", "format_plan",
    "parse_count", "parse_size", "plan_inference", "plan_training", "run_cli", "shard_rows",
    "track_fsdp2",
]
