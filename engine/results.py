"""What a run measured: versioned, JSON-serialisable records that outlive the model.

Field conventions (also in README.md, "Run files"):

* Bytes are integers. A value that was not measured is ``None`` (JSON ``null``), never 0.
* Per-layer ``weights_bytes``, ``saved_for_backward_bytes``, ``gradient_bytes``,
  ``optimizer_state_bytes`` and every ``at_peak`` entry are *exclusive*: a block's row counts
  only what its tracked children (attention, MLP) do not, so rows add up without double counting.
* Per-layer ``activation_bytes`` (bytes of the module's output), ``transient_peak_bytes`` (the
  highest live bytes during the module minus the live bytes at its entry), ``latency_ms`` and
  ``flops`` are *inclusive*: a block's value contains its children's.
* ``totals`` describe the moment of the measured peak: ``attributed_bytes`` is the sum of every
  layer's ``at_peak`` bytes, and ``unattributed_bytes = peak_bytes - attributed_bytes``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .config import RunConfig

# The row of a training step's loss (engine.layers.LossScope); in parentheses like "(root)": a row
# that is not one of the model's modules.
# Timing passes of one model further apart than this (slowest / fastest) make its median
# latency, and any ratio taken from it, unreliable: one pass disturbed by other work on the
# machine, or passes too short to time. (Here, not in the runner: the compare view, the guide
# and reports read it without importing torch.)
NOISY_TIMING_SPREAD = 1.5


def timing_spread(times: Any) -> float | None:
    """Slowest / fastest of the timing passes ``times`` (ms); None with fewer than two."""
    times = [ms for ms in times or [] if ms and ms > 0]
    return max(times) / min(times) if len(times) >= 2 else None


LOSS_ROW = "(loss)"
# What the rows that are not modules of the model hold (the window shows it on their names).
PSEUDO_ROWS = {
    LOSS_ROW: "The training step's loss function, run as a row of its own (it is not a module "
              "of the model): for a language model, the logits upcast to float32, the "
              "log-softmax cross-entropy keeps for the backward, and their gradients.",
    "(root)": "Weights held by the model object itself rather than by one of its modules.",
}
_PARTS = {"block": "the blocks", "attention": "the blocks", "mlp": "the blocks",
          "loss": "the loss", "head": "the head", "embedding": "the embeddings"}


def part_of_model(kind: str) -> str:
    """The part of the model a per-layer row of this kind belongs to (for saying where memory
    grows or was saved): the blocks, the head, the loss, the embeddings, other layers."""
    return _PARTS.get(kind, "other layers")


def bytes_by_part(layers: Any, unattributed: int | None) -> dict[str, int]:
    """Bytes at the peak by part of the model, with the unattributed rest: they add up to the
    peak. ``layers``: LayerStats, or ``(kind, at_peak_bytes)`` pairs."""
    parts: dict[str, int] = {}
    for layer in layers:
        kind, n = (layer.kind, layer.at_peak_bytes) if isinstance(layer, LayerStats) else layer
        part = part_of_model(kind)
        parts[part] = parts.get(part, 0) + int(n or 0)
    parts["unattributed"] = int(unattributed or 0)
    return parts

SCHEMA_VERSION = 2
# Schema history: 1 = the first; 2 adds ``estimate`` (null for measured runs), so that a MemLens
# that predates estimation refuses an estimate instead of showing it as a measurement.
# Optional fields added since with a null default (``totals.compile_seconds``,
# ``totals.compiled_peak_bytes``) keep version 2: older files read them as null (not measured),
# and an older MemLens ignores them without misreading anything else.

# Categories of memory live at the peak (str values are saved in run files).
CATEGORIES = ("weights", "activations", "kv_cache", "gradients", "optimizer_state", "temporaries")


@dataclass
class LayerStats:
    """One tracked module, keyed by its fully qualified name."""

    name: str
    kind: str  # embedding | block | attention | mlp | norm | head | other | loss
    parent: str | None = None
    depth: int = 0
    parameters: int = 0
    weights_bytes: int = 0
    activation_bytes: int | None = None
    saved_for_backward_bytes: int | None = None
    kv_cache_bytes: int | None = None
    gradient_bytes: int | None = None
    optimizer_state_bytes: int | None = None
    transient_peak_bytes: int | None = None
    latency_ms: float | None = None
    flops: int | None = None
    # True: every operator counted; False: one without a FLOP formula ran here; None: not counted
    flops_complete: bool | None = None
    at_peak: dict[str, int] = field(default_factory=dict)

    @property
    def at_peak_bytes(self) -> int:
        return sum(self.at_peak.values())


@dataclass
class Totals:
    """Whole-run figures. Category figures are the bytes live at the measured peak."""

    peak_bytes: int = 0
    peak_source: str = ""  # cuda_allocator | tensor_accounting
    attributed_bytes: int = 0
    unattributed_bytes: int = 0
    weights_bytes: int = 0
    activation_bytes: int = 0
    kv_cache_bytes: int = 0
    gradient_bytes: int = 0
    optimizer_state_bytes: int = 0
    temporary_bytes: int = 0
    parameters: int = 0
    model_weights_bytes: int = 0  # all weights of the model, measured at rest
    unattributed_detail: dict[str, int] = field(default_factory=dict)
    transient_source: str = ""
    flops: int | None = None
    flops_uncounted_ops: list[str] = field(default_factory=list)
    flops_scope: str = ""
    latency_ms: float | None = None
    plain_latency_ms: float | None = None
    instrumentation_overhead: float | None = None  # instrumented / plain pass time
    tokens_per_s: float | None = None
    load_peak_bytes: int | None = None
    steady_bytes: int | None = None
    load_source: str = ""
    process_rss_peak_bytes: int | None = None
    cuda_reserved_peak_bytes: int | None = None
    # torch.compile (None otherwise): the first compiled call minus the steady-state latency,
    # and the compiled model's own allocator peak over one pass (CUDA only; the peak above is
    # the eager model's, measured under tensor accounting).
    compile_seconds: float | None = None
    compiled_peak_bytes: int | None = None

    def reconciles(self) -> bool:
        return self.attributed_bytes + self.unattributed_bytes == self.peak_bytes


@dataclass
class RunResult:
    """A finished run. ``to_dict``/``from_dict`` round-trip through JSON."""

    config: RunConfig
    run_id: str = ""
    created: str = ""
    status: str = "ok"
    environment: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerStats] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    phases: list[dict[str, Any]] = field(default_factory=list)  # {name, start, end, peak_bytes}
    timeline: dict[str, list[Any]] = field(default_factory=dict)  # columnar samples
    generation: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    attention: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    optimizations: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, Any] | None = None  # the unoptimized model measured in the same run
    deltas: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    phase_peaks: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    limitations: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    # Not None: an *estimate* (no weights, no real memory: the model ran on fake tensors), with
    # how it was made ({"method", "build_seconds", "pass_seconds", ...}). None: a measured run.
    estimate: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def is_estimate(self) -> bool:
        return self.estimate is not None

    @property
    def estimate_seconds(self) -> float | None:
        """An estimate's own time: the build, the warm-up step and the memory pass (the run's
        ``duration_s`` also holds importing the libraries and saving)."""
        if self.estimate is None:
            return None
        return sum(float(self.estimate.get(k) or 0)
                   for k in ("build_seconds", "warmup_seconds", "pass_seconds"))

    def layer(self, name: str) -> LayerStats:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return _clean(d)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        data = migrate(dict(data))
        layer_fields = {f.name for f in dataclasses.fields(LayerStats)}
        total_fields = {f.name for f in dataclasses.fields(Totals)}
        own = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in own}
        kwargs["config"] = RunConfig.from_dict(data.get("config") or {})
        kwargs["layers"] = [LayerStats(**{k: v for k, v in layer.items() if k in layer_fields})
                            for layer in data.get("layers") or []]
        kwargs["totals"] = Totals(**{k: v for k, v in (data.get("totals") or {}).items()
                                     if k in total_fields})
        return cls(**kwargs)


class SchemaError(ValueError):
    """A run file this version cannot read; ``hint`` names what to do about it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older run dict to the current schema, or explain why it cannot be read."""
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise SchemaError("The file has no integer 'schema_version': it is not a MemLens run.",
                          "Open a run file MemLens wrote (the Saved runs page and memlens runs list "
                          "them), or a sweep, fit, plan or guide.json.")
    if version > SCHEMA_VERSION:
        raise SchemaError(f"The run was written by a newer MemLens (schema {version}; this "
                          f"version reads up to {SCHEMA_VERSION}).",
                          "Upgrade MemLens to open it.")
    if version < 2:  # 1 -> 2: estimates did not exist, so every older run was measured
        data["estimate"] = None
        data["schema_version"] = 2
    return data


def _clean(obj: Any) -> Any:
    """Make a value strict-JSON: NaN/inf become None (unmeasured), tuples become lists."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


# What a field's annotation allows, for the check of a run read from a file (a hand-edited file
# with a number given as text otherwise failed later, in a sort or a format, far from the cause).
def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_ALLOWED = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": _number,
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "dict[str, int]": lambda v: isinstance(v, dict) and all(_number(x) for x in v.values()),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}


def _check_fields(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        kind = str(f.type)
        optional = kind.endswith(" | None")
        kind = kind.removesuffix(" | None")
        check = _ALLOWED.get(kind)
        value = getattr(obj, f.name)
        if check is None or (value is None and optional):
            continue
        if kind == "int" and _number(value) and float(value).is_integer():
            continue  # (a JSON writer may have written 12.0)
        if not check(value):
            raise TypeError(f"{where}.{f.name} is {value!r}, not {kind}")


def check_run_types(run: RunResult) -> None:
    """TypeError naming the first field of ``run`` (its totals, layers, warnings) whose value
    is not of its type: a run read from a file that someone edited."""
    _check_fields(run.totals, "totals")
    for i, layer in enumerate(run.layers):
        _check_fields(layer, f"layers[{i}]")
    for name in ("warnings", "limitations"):
        value = getattr(run, name)
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise TypeError(f"{name} is {value!r}, not a list of text")
    if not isinstance(run.config.model, str) or not run.config.model:
        raise TypeError(f"config.model is {run.config.model!r}")
