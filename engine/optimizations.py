"""The optimization registry: every technique the user can pick, applied by the engine.

Each :class:`Optimization` has a stable id, a display name, a one-line explanation, a parameter
schema the GUI renders controls from, a check that refuses an inapplicable choice with a reason
before anything runs (:meth:`Optimization.check_config` without a model, :meth:`check_model` once
it is loaded), and :meth:`apply`, which returns what changed (modules touched, weight bytes
before and after, notes). Libraries do the work (``torch.ao.quantization``, ``torch.nn.utils.prune``,
transformers' attention switch, activation checkpointing and caches); nothing here is a kernel.

A run's optimizations are ``RunConfig.optimizations``: a list of ``{"id": ..., "params": {...}}``;
on the command line ``--opt ID[:key=value,...]``.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .accounting import is_fake
from .config import DTYPE_ALIASES
from .errors import Cancelled, ErrorKind, MemLensError
from .layers import module_weight_tensors, storage_nbytes, unique_nbytes
from .quiet import quiet_import


_KIND_WORDS = {"bool": "true or false", "int": "a whole number", "float": "a finite number",
               "str": "text"}


@dataclass(frozen=True)
class Param:
    """One parameter of an optimization: ``kind`` is choice, int, float or bool."""

    name: str
    kind: str
    default: Any
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    help: str = ""

    def parse(self, value: Any) -> Any:
        """Convert and range-check a value (from JSON or a ``key=value`` string)."""
        try:
            if self.kind == "bool":
                if isinstance(value, str):
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError(value)
                    value = value.lower() in ("1", "true", "yes", "on")
                value = bool(value)
            elif self.kind == "int":
                value = int(value)
            elif self.kind == "float":
                value = float(value)
                if not math.isfinite(value):  # (nan passed every range check)
                    raise ValueError(value)
            else:
                value = str(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{self.name} must be {_KIND_WORDS.get(self.kind, self.kind)}, "
                             f"got {value!r}") from exc
        if self.choices and value not in self.choices and isinstance(value, str):
            # (--dtype took bf16 while dtype=bf16 here was refused)
            alias = DTYPE_ALIASES.get(value.lower())
            if alias in self.choices:
                value = alias
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, "
                             f"got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{self.name} must be ≥ {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{self.name} must be ≤ {self.maximum}, got {value}")
        return value


@dataclass
class RunHooks:
    """What optimizations ask of the workload (instead of changing the model)."""

    autocast: torch.dtype | None = None
    cache_factory: Callable[[nn.Module, int, int], Any] | None = None
    optimizer_factory: Callable[[list[nn.Parameter], float], Any] | None = None
    # The optimizer step runs compiled code, which cannot run under a Python dispatch mode:
    # the memory pass steps it outside tensor accounting (and says so).
    optimizer_compiled: bool = False
    cache_policy: str = "dynamic"
    # torch.compile: the compiled model, which the plain (timed) passes call; the memory pass and
    # the hooked passes call the eager model (compiled code cannot run under a dispatch mode).
    compiled: Any = None

    @contextlib.contextmanager
    def context(self, device: torch.device) -> Iterator[None]:
        if self.autocast is None:
            yield
            return
        with torch.autocast(device_type=device.type, dtype=self.autocast):
            yield


@dataclass
class Applied:
    """What one optimization changed."""

    id: str
    name: str
    params: dict[str, Any]
    modules_touched: int = 0
    weights_bytes_before: int = 0
    weights_bytes_after: int = 0
    # The modules whose own weight bytes it changed, and their bytes before and after (shared
    # storages once): a claim such as "int8 is a quarter of float32" holds over these, while
    # the whole model's ratio also holds what it left alone (a tied embedding, norms).
    modules_changed: int = 0
    changed_bytes_before: int = 0
    changed_bytes_after: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _own_storages(model: nn.Module) -> dict[str, dict[Any, int]]:
    """Each module's own weight storages (not its children's) with their bytes. Every tensor is
    held until all are keyed: a packed weight is unpacked into a temporary, and a freed one's
    address, reused by the next, made two modules' weights one storage."""
    held = {name: module_weight_tensors(module) for name, module in model.named_modules()}
    return {name: storage_nbytes(tensors) for name, tensors in held.items()}


def weights_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the model holds as weights (parameters, buffers, packed, masks)."""
    return unique_nbytes(module_weight_tensors(model, recurse=True))


def _dtype(name: str) -> torch.dtype:
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def _linears(model: nn.Module, skip_head: bool = True) -> list[tuple[str, nn.Linear]]:
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            if skip_head and name.rsplit(".", 1)[-1] in ("lm_head", "classifier", "score"):
                continue
            out.append((name, mod))
    return out


class Optimization:
    """Base class: subclasses set the class attributes and implement :meth:`_apply`."""

    id = ""
    name = ""
    summary = ""
    category = ""
    params: tuple[Param, ...] = ()
    workloads: tuple[str, ...] = ("forward", "generate", "train")
    devices: tuple[str, ...] = ("cpu", "cuda")
    conflicts: tuple[str, ...] = ()

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def parse_params(self, given: dict[str, Any]) -> dict[str, Any]:
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                               f"{self.id} has no parameter {', '.join(unknown)}.",
                               f"Parameters of {self.id}: "
                               f"{', '.join(known) or 'none'}.")
        values = self.defaults()
        for key, value in given.items():
            try:
                values[key] = known[key].parse(value)
            except ValueError as exc:
                raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"{self.id}: {exc}.",
                                   "See `memlens optimizations` for the valid values.") from exc
        return values

    def check_config(self, workload: str, device: str, params: dict[str, Any]) -> str | None:
        """Why this cannot apply to ``workload`` on ``device`` (None when it can)."""
        if workload not in self.workloads:
            plural = "s" if len(self.workloads) > 1 else ""
            return (f"applies to the {' and '.join(self.workloads)} workload{plural}, not "
                    f"{workload}")
        kind = "cuda" if device.startswith("cuda") else device
        if kind not in self.devices:
            return f"needs {' or '.join(self.devices)} (this run is on {device})"
        return None

    def check_model(self, model: nn.Module, params: dict[str, Any]) -> str | None:
        """Why this cannot apply to this model (None when it can)."""
        return None

    @property
    def named(self) -> str:
        """The name and id for a message: "Cast weights (cast)"; a name with its own
        parenthesis keeps one level ("LoRA adapters, peft (lora)", not "(peft) (lora)")."""
        name = self.name.replace(" (", ", ").replace(")", "") if "(" in self.name else self.name
        return f"{name} ({self.id})"

    def check_with(self, params: dict[str, Any], ids: list[str]) -> str | None:
        """Why these ``params`` cannot go with the other optimizations chosen (``ids``): a
        conflict that depends on a parameter (None when there is none)."""
        return None

    def apply(self, model: nn.Module, params: dict[str, Any], hooks: RunHooks,
              device: torch.device) -> Applied:
        before = weights_bytes(model)
        own_before = _own_storages(model)
        t0 = time.perf_counter()
        record = Applied(self.id, self.name, dict(params), weights_bytes_before=before)
        self._apply(model, params, hooks, device, record)
        record.seconds = time.perf_counter() - t0
        record.weights_bytes_after = weights_bytes(model)
        own_after = _own_storages(model)
        changed = [name for name in own_before.keys() | own_after.keys()
                   if sum(own_before.get(name, {}).values())
                   != sum(own_after.get(name, {}).values())]
        record.modules_changed = len(changed)
        for own, field_name in ((own_before, "changed_bytes_before"),
                                (own_after, "changed_bytes_after")):
            merged: dict[Any, int] = {}
            for name in changed:
                merged.update(own.get(name, {}))
            setattr(record, field_name, sum(merged.values()))
        return record

    def _apply(self, model: nn.Module, params: dict[str, Any], hooks: RunHooks,
               device: torch.device, record: Applied) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "summary": self.summary,
                "category": self.category, "workloads": list(self.workloads),
                "devices": list(self.devices), "conflicts": list(self.conflicts),
                "params": [vars(p) | {"choices": list(p.choices)} for p in self.params]}


# -- precision ----------------------------------------------------------------------------------------
class Cast(Optimization):
    id = "cast"
    name = "Cast weights"
    summary = "Store every floating-point weight in 16 bits (half the bytes of float32)."
    category = "precision"
    params = (Param("dtype", "choice", "bfloat16", ("bfloat16", "float16"),
                    help="target dtype"),)
    conflicts = ("int8-dynamic",)

    def check_model(self, model, params):
        target = _dtype(params["dtype"])
        if all(p.dtype == target or not p.is_floating_point() for p in model.parameters()):
            return f"the weights are already {params['dtype']}"
        return None

    def _apply(self, model, params, hooks, device, record):
        target = _dtype(params["dtype"])
        # (buffers too: model.to casts them, e.g. the rotary embedding's inv_freq)
        record.modules_touched = sum(
            1 for m in model.modules()
            if any(t.is_floating_point() and t.dtype != target
                   for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]))
        model.to(target)
        if device.type == "cpu" and target == torch.float16:
            record.notes.append("float16 arithmetic is slow on most CPUs; bfloat16 is usually "
                                "faster there (the latency figure shows which)")


class Autocast(Optimization):
    id = "autocast"
    name = "Autocast (mixed precision)"
    summary = ("Run matmuls in 16 bits while the weights stay float32 (torch.autocast): "
               "16-bit activations, but a 16-bit copy of each weight is kept during the "
               "pass, so an inference peak can rise; training keeps float32 master weights.")
    category = "precision"
    params = (Param("dtype", "choice", "bfloat16", ("bfloat16", "float16")),)
    # In either order: after a cast no float32 weight is left for autocast to lower (the
    # check_model below), and a cast after autocast leaves it lowering nothing.
    conflicts = ("cast",)

    def check_model(self, model, params):
        if not any(p.dtype == torch.float32 for p in model.parameters()):
            return "the weights are not float32: autocast has nothing to lower"
        return None

    def _apply(self, model, params, hooks, device, record):
        hooks.autocast = _dtype(params["dtype"])
        record.notes.append(f"forward and training passes run under torch.autocast("
                            f"{device.type}, {params['dtype']})")


# -- quantization -------------------------------------------------------------------------------------
class Int8Dynamic(Optimization):
    # (autocast: quantized::linear_dynamic takes float32 activations only, and autocast hands
    # it bfloat16 or float16 ones: "expected scalar type Float but found BFloat16")
    conflicts = ("cast", "prune-unstructured", "torchao-int8", "autocast")
    id = "int8-dynamic"
    name = "int8 dynamic quantization"
    summary = ("Linear weights stored as int8, activations quantized on the fly "
               "(torch.ao.quantization.quantize_dynamic; CPU, inference).")
    category = "quantization"
    workloads = ("forward", "generate")
    devices = ("cpu",)

    def check_with(self, params, ids):
        return _pruned_after(self.id, ids)

    def check_model(self, model, params):
        if not _linears(model):
            return "the model has no nn.Linear layers to quantize"
        if any(p.dtype != torch.float32 for _, m in _linears(model) for p in m.parameters()):
            return "quantize_dynamic needs float32 Linear weights (apply it without a cast)"
        return None

    def _apply(self, model, params, hooks, device, record):
        from torch.ao.quantization import quantize_dynamic

        targets = {name for name, _ in _linears(model)}
        record.modules_touched = len(targets)
        with warnings.catch_warnings():
            # Deprecated in favour of torchao, yet present and the fastest int8 path on CPU.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            quantize_dynamic(model, targets, dtype=torch.qint8, inplace=True)
        record.notes.append("packed int8 weights live outside parameters(); they are counted by "
                            "their unpacked int8 size plus bias")


def _missing(module: str, package: str) -> str | None:
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        found = False
    return None if found else f"needs the optional package {package}: pip install {package}"


class _TorchaoWeights(Optimization):
    """Linear weights replaced by torchao tensor subclasses (``quantize_``); their bytes are
    those of their inner tensors (``Applied.weights_bytes_after`` counts them)."""

    category = "quantization"
    workloads = ("forward", "generate")
    inner = ""  # what the subclass holds, for the note

    def check_config(self, workload, device, params):
        return _missing("torchao", "torchao") or super().check_config(workload, device, params)

    def check_model(self, model, params):
        return None if _linears(model) else "the model has no nn.Linear layers to quantize"

    def _config(self, params: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _targets(self, model: nn.Module, params: dict[str, Any]) -> list[nn.Linear]:
        return [m for _, m in _linears(model)]

    def _apply(self, model, params, hooks, device, record):
        with quiet_import():
            from torchao.quantization import quantize_

            config = self._config(params)
        targets = {id(m) for m in self._targets(model, params)}
        with quiet_import():
            quantize_(model, config, filter_fn=lambda m, fqn: id(m) in targets)
        record.modules_touched = len(targets)
        record.notes.append(f"the quantized weights are torchao tensor subclasses; their bytes "
                            f"are {self.inner}")


def _pruned_after(opt_id: str, ids: list[str], what: str = "quantized weights",
                  order: str = "prune, then quantize") -> str | None:
    """Structured pruning applied after ``opt_id``'s quantized weights fails or does nothing,
    measured on the demo model: torchao's tensor subclasses have no norm to rank channels or
    heads by (Int8Tensor, Float8Tensor: no linalg_vector_norm); quantize_dynamic's modules are
    no longer nn.Linear, so nothing is found to prune; slicing quanto's QLinear gives float
    weights back. Pruning first works with each of them."""
    later = [i for i in ids[ids.index(opt_id) + 1:] if i in ("prune-ffn", "prune-heads")]
    if later:
        return (f"comes before {', '.join(later)}, which cannot prune {what}: put "
                f"{' and '.join(later)} first ({order})")
    return None


class TorchaoInt8(_TorchaoWeights):
    id = "torchao-int8"
    name = "torchao int8 quantization"
    summary = ("Linear weights as int8 tensor subclasses (torchao quantize_): weight-only, or "
               "with activations quantized dynamically.")
    params = (Param("activations", "choice", "weight-only", ("weight-only", "dynamic"),
                    help="weight-only keeps float activations; dynamic quantizes them too"),)
    conflicts = ("int8-dynamic", "prune-unstructured", "cast")
    inner = "the int8 data and the per-row scales"

    def check_with(self, params, ids):
        return _pruned_after(self.id, ids)

    def _config(self, params):
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
        )

        return (Int8WeightOnlyConfig() if params["activations"] == "weight-only"
                else Int8DynamicActivationInt8WeightConfig())


def _cuda_capability(device: str) -> tuple[int, int] | None:
    """The compute capability of ``device`` when it is a usable CUDA device, else None."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    try:
        return torch.cuda.get_device_capability(torch.device(device))
    except (RuntimeError, AssertionError, ValueError):
        return None


def _needs_capability(device: str, minimum: tuple[int, int], what: str,
                      elsewhere: str = "") -> str | None:
    """Why ``what`` cannot run on ``device`` (None when its compute capability suffices);
    ``elsewhere`` says what to use instead on a device without it."""
    found = _cuda_capability(device)
    if found is None:
        return (f"needs a CUDA GPU of compute capability {minimum[0]}.{minimum[1]} or newer "
                f"({what}); this run is on {device}" + (f": {elsewhere}" if elsewhere else ""))
    if found < minimum:
        return (f"needs compute capability {minimum[0]}.{minimum[1]} or newer ({what}); "
                f"{device} has {found[0]}.{found[1]}")
    return None


class TorchaoInt4(_TorchaoWeights):
    id = "torchao-int4"
    name = "torchao int4 weight-only"
    summary = ("Linear weights as 4-bit integers with a bfloat16 scale and zero point per group "
               "(torchao Int4WeightOnlyConfig, tinygemm's tile-packed layout); CUDA only.")
    params = (Param("group_size", "choice", "128", ("32", "64", "128", "256"),
                    help="input features sharing one scale and zero point"),)
    conflicts = ("int8-dynamic", "torchao-int8", "torchao-fp8", "quanto-weights",
                 "prune-unstructured", "sparsity-24", "cast")
    inner = "the packed 4-bit data and the per-group scales and zero points"

    def check_with(self, params, ids):
        return _pruned_after(self.id, ids)

    def check_config(self, workload, device, params):
        return (super().check_config(workload, device, params)
                or _needs_capability(device, (8, 0), "tinygemm's int4 kernels",
                                     "on a CPU, quanto-weights:weights=qint4 stores 4-bit "
                                     "weights"))

    @staticmethod
    def _fits(layer: nn.Linear, group: int) -> bool:
        # tinygemm's tile packing: 8 output rows and 16 × 8 inputs per tile, whole groups
        return (layer.out_features % 8 == 0 and layer.in_features % 128 == 0
                and layer.in_features % group == 0)

    def check_model(self, model, params):
        layers = _linears(model)
        if not layers:
            return "the model has no nn.Linear layers to quantize"
        if any(m.weight.dtype != torch.bfloat16 for _, m in layers):
            return ("tinygemm's int4 kernels take bfloat16 weights and activations: run with "
                    "Dtype bfloat16 (--dtype bfloat16)")
        if not self._targets(model, params):
            return ("no Linear layer has input features divisible by 128 and by the group size "
                    "and output features divisible by 8")
        return None

    def _config(self, params):
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(group_size=int(params["group_size"]),
                                    int4_packing_format="tile_packed_to_4d")

    def _targets(self, model, params):
        return [m for _, m in _linears(model) if self._fits(m, int(params["group_size"]))]

    def _apply(self, model, params, hooks, device, record):
        kept = len(_linears(model)) - len(self._targets(model, params))
        super()._apply(model, params, hooks, device, record)
        if kept:
            record.notes.append(f"{kept} Linear layer(s) kept in bfloat16: their sizes do not "
                                "tile (inputs % 128, outputs % 8)")


class TorchaoFloat8(_TorchaoWeights):
    id = "torchao-fp8"
    name = "torchao float8 quantization"
    summary = ("Linear weights as float8 (e4m3) with a scale per row (torchao): weight-only runs "
               "anywhere, dequantized for each matmul where the hardware has no fp8 arithmetic; "
               "dynamic also quantizes activations and needs fp8 matmuls (CUDA 8.9+).")
    params = (Param("activations", "choice", "weight-only", ("weight-only", "dynamic"),
                    help="dynamic: fp8 activations and fp8 matmuls (torch._scaled_mm)"),)
    conflicts = ("int8-dynamic", "torchao-int8", "torchao-int4", "quanto-weights",
                 "prune-unstructured", "sparsity-24", "cast")
    inner = "the float8 data and the per-row scales"

    def check_with(self, params, ids):
        return _pruned_after(self.id, ids)

    def check_config(self, workload, device, params):
        reason = super().check_config(workload, device, params)
        if reason is None and params["activations"] == "dynamic":
            reason = _needs_capability(device, (8, 9), "fp8 matmuls",
                                       "activations=weight-only stores fp8 weights on any "
                                       "device, this one included")
        return reason

    def check_model(self, model, params):
        reason = super().check_model(model, params)
        if reason is None and params["activations"] == "dynamic" and any(
                m.weight.dtype != torch.bfloat16 for _, m in _linears(model)):
            # torchao asserts it (PerRow scales are for bfloat16 weights only)
            reason = ("fp8 activations with per-row scales take bfloat16 weights: run with "
                      "Dtype bfloat16 (--dtype bfloat16)")
        return reason

    def _config(self, params):
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Float8WeightOnlyConfig,
            PerRow,
        )

        return (Float8WeightOnlyConfig() if params["activations"] == "weight-only"
                else Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))

    def _apply(self, model, params, hooks, device, record):
        super()._apply(model, params, hooks, device, record)
        if params["activations"] == "weight-only" and _cuda_capability(str(device)) is None:
            record.notes.append("no fp8 arithmetic on this device: each matmul dequantizes the "
                                "weight first (the latency shows the cost)")


def _quanto_extension(device: torch.device, record: Applied) -> None:
    """Build (or load) optimum-quanto's C++ extension for ``device`` now.

    On the CPU, quanto unpacks 4- and 2-bit data with a C++ extension that torch's cpp_extension
    compiles the first time it is needed after installation (then reuses from the package's
    build folder). Doing it while applying the technique keeps that one-time cost out of the
    measured passes (it shows as the technique's apply time); a build that fails refuses the
    technique with the compiler's own reason.
    """
    with quiet_import():
        from optimum.quanto.library.extensions import get_extension, is_extension_available

    name = {"cpu": "quanto_cpp", "cuda": "quanto_cuda"}.get(device.type)
    if name is None or not is_extension_available(name):
        return
    ext = get_extension(name)
    if getattr(ext, "_lib", None) is not None:  # already loaded in this process
        return
    t0 = time.perf_counter()
    try:
        with quiet_import():
            _ = ext.lib
    except Exception as exc:  # noqa: BLE001 - a compiler error, a missing ninja, a bad build
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise MemLensError(ErrorKind.NOT_APPLICABLE,
                           f"optimum-quanto's C++ extension {name} could not be built or loaded "
                           f"here: {first}",
                           "It needs a C++ compiler and ninja on first use; or choose an 8-bit "
                           "type, which needs no extension.") from exc
    record.notes.append(f"optimum-quanto's C++ extension {name} loaded in "
                        f"{time.perf_counter() - t0:.1f} s (compiled on its first use after "
                        f"installing optimum-quanto, then reused from {ext.build_directory})")


class QuantoWeights(Optimization):
    id = "quanto-weights"
    name = "optimum-quanto weight quantization"
    summary = ("Linear weights as int8, int4 or int2 tensors with float scales (optimum-quanto "
               "quantize + freeze), weight-only; runs on the CPU under no_grad (4- and 2-bit "
               "weights refuse inference_mode). 4/2-bit data is unpacked by a C++ extension "
               "compiled on first use.")
    category = "quantization"
    params = (Param("weights", "choice", "qint8", ("qint8", "qint4", "qint2"),
                    help="qint4/qint2 keep a float scale and shift per group of inputs"),)
    workloads = ("forward", "generate")
    # Other quantizers and casts would act on the quantized tensors; unstructured pruning
    # masks weight matrices that are no longer plain tensors (structured pruning works when it
    # comes first: check_with); under autocast quanto's linear fails (optimum-quanto 0.2.7:
    # "expected scalar type BFloat16 but found Float").
    conflicts = ("int8-dynamic", "torchao-int8", "cast", "autocast", "prune-unstructured")

    def check_with(self, params, ids):
        return _pruned_after(self.id, ids)

    def check_config(self, workload, device, params):
        return (_missing("optimum.quanto", "optimum-quanto")
                or super().check_config(workload, device, params))

    def check_model(self, model, params):
        if not _linears(model):
            return "the model has no nn.Linear layers to quantize"
        return None

    def _apply(self, model, params, hooks, device, record):
        with quiet_import():
            import optimum.quanto as quanto

        if params["weights"] != "qint8":
            _quanto_extension(device, record)
        names = [name for name, _ in _linears(model)]
        with quiet_import():
            quanto.quantize(model, weights=getattr(quanto, params["weights"]), include=names)
            quanto.freeze(model)
        record.modules_touched = len(names)
        record.notes.append(f"{params['weights']} weights are tensor subclasses (QLinear); their "
                            "bytes are those of the inner integer data, scales and shifts")


# -- pruning ------------------------------------------------------------------------------------------
class PruneUnstructured(Optimization):
    id = "prune-unstructured"
    name = "Unstructured magnitude pruning"
    summary = ("Zero the smallest-magnitude Linear weights (torch.nn.utils.prune). Dense zeros "
               "save no memory; until made permanent the mask and original weight add memory.")
    category = "pruning"
    params = (
        # (an amount of 0 zeroes nothing: a run that measures no technique at all)
        Param("amount", "float", 0.5, minimum=0.01, maximum=0.99, help="fraction zeroed"),
        Param("permanent", "bool", False,
              help="prune.remove: fold the mask into the weight (dense, same size)"),
    )
    conflicts = ("int8-dynamic",)

    def check_model(self, model, params):
        return None if _linears(model) else "the model has no nn.Linear layers to prune"

    def _apply(self, model, params, hooks, device, record):
        import torch.nn.utils.prune as prune

        layers = _linears(model)
        for _, mod in layers:
            prune.l1_unstructured(mod, "weight", amount=params["amount"])
            if params["permanent"]:
                prune.remove(mod, "weight")
        record.modules_touched = len(layers)
        dense = sum(m.weight.numel() * m.weight.element_size() for _, m in layers)
        if not dense:
            record.notes.append("no weights")
        elif is_fake(layers[0][1].weight):
            record.notes.append(f"pruned Linear weights: {dense} B dense; a sparse format's size "
                                "depends on the values, which an estimate does not have")
        else:
            csr = self._csr_bytes(layers)
            record.notes.append(f"pruned Linear weights: {dense} B dense; as CSR they would "
                                f"take {csr} B ({csr / dense:.2f}× dense)")
        if not params["permanent"]:
            record.notes.append("not permanent: each pruned Linear keeps weight_orig, a float "
                                "weight_mask and a recomputed weight (three dense copies); "
                                "the recomputed weight is made anew in each forward, so at "
                                "the peak it is counted with the activations (the weights "
                                "column, counted between passes, holds all three)")

    @staticmethod
    def _csr_bytes(layers: list[tuple[str, nn.Linear]]) -> int:
        """What a sparse format would really take, measured by converting one copy at a time."""
        csr = 0
        for _, mod in layers:
            w = mod.weight.detach()
            if w.dim() == 2 and w.dtype in (torch.float32, torch.float16, torch.bfloat16):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "sparse CSR is in beta"
                    s = w.to_sparse_csr()
                csr += sum(t.numel() * t.element_size()
                           for t in (s.values(), s.col_indices(), s.crow_indices()))
        return csr


def _two_of_four(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 mask keeping the two largest magnitudes of every four consecutive inputs.

    Written here rather than through torch.ao.pruning's WeightNormSparsifier (which PyTorch's
    semi-structured tutorial uses): that one installs parametrizations per module to compute
    this same mask, then has to squash them again."""
    groups = weight.detach().abs().reshape(-1, 4)
    keep = groups.topk(2, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True)
    return mask.reshape(weight.shape)


class Sparsity24(Optimization):
    id = "sparsity-24"
    name = "2:4 semi-structured sparsity"
    summary = ("Zero the two smallest of every four Linear weights and store them in PyTorch's "
               "semi-structured format (half the values plus metadata; sparse tensor-core "
               "matmuls); CUDA only, fp16 or bf16 weights.")
    category = "pruning"
    workloads = ("forward", "generate")
    conflicts = ("int8-dynamic", "torchao-int8", "torchao-int4", "torchao-fp8",
                 "quanto-weights", "prune-unstructured")

    def check_with(self, params, ids):
        # (structured pruning reads the weights with .float(), which a SparseSemiStructured
        # tensor refuses: torch's semi_sparse_to_copy copies only to the CPU)
        return _pruned_after(self.id, ids, "semi-structured sparse weights",
                             "prune, then sparsify")

    def check_config(self, workload, device, params):
        return (super().check_config(workload, device, params)
                or _needs_capability(device, (8, 0), "sparse tensor cores",
                                     "without them zeros in a dense weight save nothing "
                                     "(prune-unstructured measures that)"))

    @staticmethod
    def _fits(layer: nn.Linear) -> bool:
        # PyTorch's minimum tile for fp16/bf16 semi-structured tensors: 32 rows × 64 columns
        return layer.out_features % 32 == 0 and layer.in_features % 64 == 0

    def check_model(self, model, params):
        layers = _linears(model)
        if not layers:
            return "the model has no nn.Linear layers to sparsify"
        if any(m.weight.dtype not in (torch.float16, torch.bfloat16) for _, m in layers):
            return ("semi-structured sparse weights are fp16 or bf16: run with Dtype bfloat16 "
                    "(--dtype bfloat16)")
        if not any(self._fits(m) for _, m in layers):
            return "no Linear layer has outputs divisible by 32 and inputs by 64"
        return None

    def _apply(self, model, params, hooks, device, record):
        from torch.sparse import to_sparse_semi_structured

        layers = [(n, m) for n, m in _linears(model) if self._fits(m)]
        for _, mod in layers:
            w = mod.weight.detach()
            sparse = to_sparse_semi_structured(w * _two_of_four(w))
            mod.weight = nn.Parameter(sparse, requires_grad=False)
        record.modules_touched = len(layers)
        skipped = len(_linears(model)) - len(layers)
        if skipped:
            record.notes.append(f"{skipped} Linear layer(s) kept dense: their sizes do not tile "
                                "(outputs % 32, inputs % 64)")
        record.notes.append("half of each sparsified weight is zero; the semi-structured tensor "
                            "keeps the other half and its metadata (bytes counted from its "
                            "inner tensors)")


class DropBlocks(Optimization):
    id = "drop-blocks"
    name = "Drop transformer blocks"
    summary = "Structured pruning: remove whole blocks (evenly spaced), keeping the rest."
    category = "pruning"
    params = (Param("count", "int", 1, minimum=1, maximum=1000, help="blocks to remove"),)

    def check_model(self, model, params):
        from .layers import _blocks

        found = _blocks(model)
        if found is None:
            return "no block list found in this model"
        if params["count"] >= len(found[1]):
            return f"the model has {len(found[1])} blocks: at least one must stay"
        return None

    def _apply(self, model, params, hooks, device, record):
        from .layers import _blocks

        name, blocks = _blocks(model)
        n = len(blocks)
        step = n / params["count"]
        drop = sorted({min(n - 1, int(step * (i + 0.5))) for i in range(params["count"])})
        keep = [b for i, b in enumerate(blocks) if i not in drop]
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], nn.ModuleList(keep))
        for new_index, block in enumerate(keep):  # caches are indexed by layer_idx
            for mod in block.modules():
                if hasattr(mod, "layer_idx"):
                    mod.layer_idx = new_index
        cfg = getattr(model, "config", None)
        if cfg is not None:
            for attr in ("num_hidden_layers", "n_layer"):
                if hasattr(cfg, attr):
                    setattr(cfg, attr, len(keep))
            types = getattr(cfg, "layer_types", None)
            if isinstance(types, list) and len(types) == n:
                cfg.layer_types = [t for i, t in enumerate(types) if i not in drop]
        record.modules_touched = len(drop)
        record.notes.append(f"removed blocks {drop} of {n}")


def _slice_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """transformers' prune_linear_layer, keeping the layer's dtype (it builds float32)."""
    from transformers.pytorch_utils import prune_linear_layer

    return prune_linear_layer(layer, index, dim=dim).to(dtype=layer.weight.dtype)


def _mlp_triples(model: nn.Module) -> list[tuple[nn.Module, list[str], str]]:
    """(mlp module, input projections, output projection) for gated (Llama) and plain MLPs."""
    out = []
    for mod in model.modules():
        names = {n for n, c in mod.named_children() if isinstance(c, nn.Linear)}
        if {"gate_proj", "up_proj", "down_proj"} <= names:
            out.append((mod, ["gate_proj", "up_proj"], "down_proj"))
        elif {"fc1", "fc2"} <= names:
            out.append((mod, ["fc1"], "fc2"))
    return out


class PruneFFN(Optimization):
    id = "prune-ffn"
    name = "Prune MLP channels"
    summary = ("Structured pruning: remove the MLP's intermediate channels with the smallest "
               "output-weight norm (transformers' prune_linear_layer): smaller dense weights.")
    category = "pruning"
    params = (Param("amount", "float", 0.25, minimum=0.01, maximum=0.95,
                    help="fraction of intermediate channels removed"),)

    def check_model(self, model, params):
        return None if _mlp_triples(model) else (
            "no gated (gate/up/down) or fc1/fc2 MLP made of nn.Linear layers found")

    def _apply(self, model, params, hooks, device, record):
        removed = 0
        for mlp, ins, out_name in _mlp_triples(model):
            down = getattr(mlp, out_name)
            width = down.weight.shape[1]
            keep_n = max(1, round(width * (1 - params["amount"])))
            score = down.weight.detach().float().norm(dim=0)
            keep = score.topk(keep_n).indices.sort().values.to(down.weight.device)
            for name in ins:
                setattr(mlp, name, _slice_linear(getattr(mlp, name), keep, dim=0))
            setattr(mlp, out_name, _slice_linear(down, keep, dim=1))
            removed += width - keep_n
        record.modules_touched = len(_mlp_triples(model))
        record.notes.append(f"removed {removed} intermediate channels in "
                            f"{record.modules_touched} MLPs")


class PruneHeads(Optimization):
    id = "prune-heads"
    name = "Prune attention heads"
    summary = ("Structured pruning: remove whole key/value head groups (the KV head and its "
               "query heads) with the smallest output-weight norm, per layer; shrinks weights "
               "and the KV cache.")
    category = "pruning"
    params = (Param("groups", "int", 1, minimum=1, maximum=1024,
                    help="KV head groups removed in every attention layer"),)

    @staticmethod
    def _attentions(model: nn.Module) -> list[nn.Module]:
        return [m for m in model.modules()
                if all(isinstance(getattr(m, n, None), nn.Linear)
                       for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
                and isinstance(getattr(m, "head_dim", None), int)]

    def check_model(self, model, params):
        attns = self._attentions(model)
        if not attns:
            return "no attention with q/k/v/o projections and head_dim found"
        kv = attns[0].k_proj.out_features // attns[0].head_dim
        if params["groups"] >= kv:
            return f"the attention has {kv} key/value heads: at least one group must stay"
        return None

    def _apply(self, model, params, hooks, device, record):
        for attn in self._attentions(model):
            d = attn.head_dim
            kv = attn.k_proj.out_features // d
            q_per_kv = attn.q_proj.out_features // d // kv
            o = attn.o_proj.weight.detach().float()
            group_width = q_per_kv * d
            score = torch.stack([o[:, g * group_width:(g + 1) * group_width].norm()
                                 for g in range(kv)])
            if score.is_meta or is_fake(score):
                # An estimate or a plan (no values to rank) keeps the first groups: which
                # groups stay changes no size.
                keep_groups = list(range(kv - params["groups"]))
            else:
                keep_groups = score.topk(kv - params["groups"]).indices.sort().values.tolist()
            dev = attn.q_proj.weight.device
            q_idx = torch.tensor([g * group_width + i for g in keep_groups
                                  for i in range(group_width)], device=dev)
            kv_idx = torch.tensor([g * d + i for g in keep_groups for i in range(d)], device=dev)
            attn.q_proj = _slice_linear(attn.q_proj, q_idx, dim=0)
            attn.k_proj = _slice_linear(attn.k_proj, kv_idx, dim=0)
            attn.v_proj = _slice_linear(attn.v_proj, kv_idx, dim=0)
            attn.o_proj = _slice_linear(attn.o_proj, q_idx, dim=1)
        record.modules_touched = len(self._attentions(model))
        record.notes.append(f"removed {params['groups']} key/value head group(s) per layer "
                            "(the head count follows from the projection sizes)")


# -- attention ----------------------------------------------------------------------------------------
class Attention(Optimization):
    id = "attention"
    name = "Attention implementation"
    summary = ("Switch the attention kernel: eager materialises the score matrix, SDPA does "
               "not. The memory effect is measured, not assumed. flex_attention is refused: it "
               "runs only compiled, and compiled code cannot run under tensor accounting.")
    category = "attention"
    params = (Param("impl", "choice", "sdpa", ("eager", "sdpa", "flex_attention")),)

    def check_config(self, workload, device, params):
        # Refused before anything loads (check_model runs after the load and the reference).
        if params.get("impl") == "flex_attention":
            from .config import FLEX_UNMEASURABLE

            return f"{FLEX_UNMEASURABLE}; measure impl=sdpa (also fused) or impl=eager"
        return super().check_config(workload, device, params)

    def check_model(self, model, params):
        if not hasattr(model, "set_attn_implementation"):
            return "the model cannot switch its attention implementation"
        current = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if current == params["impl"]:
            return f"the model already uses {current}"
        return None

    def _apply(self, model, params, hooks, device, record):
        before = getattr(model.config, "_attn_implementation", None)
        try:
            model.set_attn_implementation(params["impl"])
        except (ValueError, ImportError) as exc:
            raise MemLensError(ErrorKind.NOT_APPLICABLE,
                               f"{params['impl']} attention does not apply: {exc}",
                               "Choose eager or sdpa.") from exc
        record.modules_touched = sum(1 for m in model.modules() if "Attention" in type(m).__name__)
        record.notes.append(f"attention {before} → {params['impl']}")


class SlidingWindow(Optimization):
    id = "sliding-window"
    name = "Sliding-window attention"
    summary = ("Each token attends to the last W positions only (architectures with a window "
               "setting, e.g. Mistral, Qwen2): a local mask, and a KV cache bounded to W.")
    category = "attention"
    params = (Param("window", "int", 64, minimum=1, maximum=1 << 20,
                    help="positions each token attends to"),)

    def check_model(self, model, params):
        cfg = getattr(model, "config", None)
        if cfg is None or "sliding_window" not in type(cfg)().to_dict():
            return (f"{type(model).__name__} has no sliding-window setting (its attention is "
                    "always global)")
        return None

    def _apply(self, model, params, hooks, device, record):
        cfg = model.config
        before = cfg.sliding_window
        cfg.sliding_window = params["window"]
        if hasattr(cfg, "use_sliding_window"):
            cfg.use_sliding_window = True
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, list):
            cfg.layer_types = ["sliding_attention"] * len(types)
        record.modules_touched = sum(1 for m in model.modules() if "Attention" in type(m).__name__)
        record.notes.append(f"sliding window {before} → {params['window']} positions")


# -- training memory ----------------------------------------------------------------------------------
class Checkpointing(Optimization):
    id = "checkpointing"
    name = "Activation checkpointing"
    summary = ("Keep only block inputs in the forward and recompute the rest in the backward "
               "(transformers' activation checkpointing): less saved memory, more compute.")
    category = "training"
    params = (Param("every_n", "int", 1, minimum=1, maximum=1000,
                    help="checkpoint every n-th block"),)
    workloads = ("train",)

    def check_model(self, model, params):
        if not getattr(model, "supports_gradient_checkpointing", False):
            return f"{type(model).__name__} does not support activation checkpointing"
        return None

    def _apply(self, model, params, hooks, device, record):
        kwargs = {"use_reentrant": False}
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs, every_n_layers=params["every_n"])
        else:  # transformers before the rename
            if params["every_n"] != 1:
                raise MemLensError(ErrorKind.NOT_APPLICABLE,
                                   "every_n needs a newer transformers.",
                                   "Use every_n=1 or upgrade transformers.")
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        from .layers import _blocks

        found = _blocks(model)
        # (transformers checkpoints the blocks whose index is a multiple of every_n: block 0
        # always, so a count rounded up)
        record.modules_touched = -(-len(found[1]) // params["every_n"]) if found else 0


def _trainable(model: nn.Module) -> str:
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    return f"trainable parameters: {n_train} of {n_all} ({n_train / n_all:.2%})"


class FreezeBase(Optimization):
    conflicts = ("lora",)
    id = "freeze-base"
    name = "Freeze the base"
    summary = ("Train only the head (or the last blocks): no gradients or optimizer state for "
               "frozen weights.")
    category = "training"
    params = (Param("train_last_blocks", "int", 0, minimum=0, maximum=1000,
                    help="blocks kept trainable besides the head"),)
    workloads = ("train",)

    def check_with(self, params, ids):
        # prune_linear_layer makes new Linears whose weights require gradients: pruned after
        # the freeze, those layers came back trainable, with gradients and optimizer state
        return _pruned_after(self.id, ids, "frozen layers without unfreezing them",
                             "prune, then freeze")

    def _head(self, model: nn.Module) -> list[nn.Parameter]:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        return list(head.parameters()) if head is not None else []

    def check_model(self, model, params):
        from .layers import _blocks

        if not self._head(model) and params["train_last_blocks"] == 0:
            return "the model has no output head to keep trainable: set train_last_blocks"
        keep = params["train_last_blocks"]
        if keep:
            found = _blocks(model)
            if found is None:
                return "no block list found in this model: set train_last_blocks to 0"
            if keep >= len(found[1]):
                kept = {id(p) for p in self._head(model)}
                kept |= {id(p) for block in found[1] for p in block.parameters()}
                frozen = sum(p.numel() for p in model.parameters() if id(p) not in kept)
                total = sum(p.numel() for p in model.parameters())
                return (f"train_last_blocks {keep} keeps every one of the model's "
                        f"{len(found[1])} blocks trainable: only what lies outside the blocks "
                        f"and the head would be frozen ({frozen:,} of {total:,} parameters), "
                        f"which is not freezing the base: use at most {len(found[1]) - 1}")
        return None

    def _apply(self, model, params, hooks, device, record):
        from .layers import _blocks

        for p in model.parameters():
            p.requires_grad_(False)
        trainable = self._head(model)
        found = _blocks(model)
        if found and params["train_last_blocks"]:
            for block in list(found[1])[-params["train_last_blocks"]:]:
                trainable.extend(block.parameters())
        for p in trainable:
            p.requires_grad_(True)
        record.modules_touched = sum(1 for m in model.modules()
                                     if any(p.requires_grad for p in m.parameters(recurse=False)))
        record.notes.append(_trainable(model) + " (a tied head shares the embedding)")


class LoRA(Optimization):
    id = "lora"
    name = "LoRA adapters (peft)"
    summary = ("Freeze the base and train low-rank adapters on the chosen Linear layers "
               "(peft inject_adapter_in_model): gradients and optimizer state only for the "
               "adapters.")
    category = "training"
    params = (
        Param("rank", "int", 8, minimum=1, maximum=4096),
        Param("alpha", "int", 16, minimum=1, maximum=65536),
        Param("targets", "choice", "attention", ("attention", "all-linear"),
              help="attention: q/k/v/o projections; all-linear: every Linear but the head"),
    )
    workloads = ("train",)
    conflicts = ("freeze-base",)

    def check_config(self, workload, device, params):
        return _missing("peft", "peft") or super().check_config(workload, device, params)

    def _targets(self, model: nn.Module, which: str) -> list[str]:
        names = []
        for name, _ in _linears(model):
            leaf = name.rsplit(".", 1)[-1]
            if which == "all-linear" or leaf in ("q_proj", "k_proj", "v_proj", "o_proj",
                                                 "query", "key", "value", "out_proj",
                                                 "qkv_proj"):
                names.append(leaf)
        return sorted(set(names))

    def check_with(self, params, ids):
        # peft wraps each target Linear in a LoRA layer: structured pruning after it finds no
        # plain q/k/v/o (or MLP) Linear to slice.
        return _pruned_after(self.id, ids, "layers wrapped with adapters",
                             "prune, then add adapters")

    def check_model(self, model, params):
        return None if self._targets(model, params["targets"]) else (
            "no Linear layers match the chosen targets")

    def _apply(self, model, params, hooks, device, record):
        with quiet_import():
            from peft import LoraConfig, inject_adapter_in_model

        targets = self._targets(model, params["targets"])
        config = LoraConfig(r=params["rank"], lora_alpha=params["alpha"], lora_dropout=0.0,
                            target_modules=targets, bias="none")
        with quiet_import():
            inject_adapter_in_model(config, model)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
        adapters = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
        record.modules_touched = len(adapters)
        record.notes.append(f"adapters on {', '.join(targets)}; {_trainable(model)}")


def _bnb_refusal(device: str, bits: str) -> str | None:
    """Why bitsandbytes cannot give a ``bits``-bit AdamW on ``device``, read from the installed
    library: whether it has the class, and whether it registers a kernel for this device type
    for the optimizer-update ops the step calls (None when it can)."""
    try:
        with quiet_import():
            import bitsandbytes as bnb
    except Exception as exc:  # noqa: BLE001 - e.g. its native library missing from a bundle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return f"bitsandbytes is installed but cannot be imported here ({first})"

    version = getattr(bnb, "__version__", "?")
    cls = f"AdamW{bits}bit"
    if not hasattr(bnb.optim, cls):
        have = sorted(c for c in dir(bnb.optim)
                      if c.startswith("AdamW") and c.endswith("bit") and c != "AdamW32bit")
        return (f"bitsandbytes {version} has no {cls} (its low-bit AdamW: "
                f"{', '.join(have) or 'none'})")
    key = "CUDA" if device.startswith("cuda") else device.split(":")[0].upper()
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    for op in ("bitsandbytes::optimizer_update_8bit_blockwise",
               "bitsandbytes::optimizer_update_32bit"):
        try:
            found = has(op, key) or has(op, "CompositeExplicitAutograd")
        except RuntimeError:  # the op is not defined in this version
            found = False
        if not found:
            return (f"bitsandbytes {version} registers no {key} kernel for {op} (the "
                    f"{bits}-bit optimizer step) in this installation")
    return None


class LowBitOptimizer(Optimization):
    id = "low-bit-optimizer"
    name = "Low-bit AdamW state"
    summary = ("AdamW with its two moment tensors stored in 8 or 4 bits: torchao.optim (its step "
               "is compiled on first use, which the first-step time shows) or bitsandbytes "
               "(8-bit, blockwise; small parameters keep 32-bit moments).")
    category = "training"
    params = (Param("bits", "choice", "8", ("8", "4")),
              Param("backend", "choice", "torchao", ("torchao", "bitsandbytes"),
                    help="the library whose AdamW keeps the low-bit state"))
    workloads = ("train",)

    def check_config(self, workload, device, params):
        reason = super().check_config(workload, device, params)
        if reason:
            return reason
        if params["backend"] == "bitsandbytes":
            return _missing("bitsandbytes", "bitsandbytes") or _bnb_refusal(device,
                                                                            params["bits"])
        return _missing("torchao", "torchao")

    def _apply(self, model, params, hooks, device, record):
        if params["backend"] == "bitsandbytes":
            self._apply_bnb(params, hooks, device, record)
            return
        with quiet_import():
            from torchao.optim import AdamW4bit, AdamW8bit

        cls = AdamW8bit if params["bits"] == "8" else AdamW4bit
        # torch.compile of its step warns that torchao's state subclass has no stable hash for
        # the AOT autograd cache: a note to torchao's developers, not about this run.
        warnings.filterwarnings("ignore", message=r".*_stable_hash_for_caching", category=UserWarning)

        def factory(parameters: list[nn.Parameter], lr: float) -> Any:
            return cls(parameters, lr=lr)

        hooks.optimizer_factory = factory
        hooks.optimizer_compiled = True
        record.notes.append(f"optimizer: torchao {cls.__name__} (moments in {params['bits']} "
                            "bits, blockwise scales)")

    @staticmethod
    def _apply_bnb(params, hooks, device, record):
        import inspect

        with quiet_import():
            import bitsandbytes as bnb

        cls = getattr(bnb.optim, f"AdamW{params['bits']}bit")
        min_size = inspect.signature(cls).parameters.get("min_8bit_size")

        def factory(parameters: list[nn.Parameter], lr: float) -> Any:
            with quiet_import():
                return cls(parameters, lr=lr)

        hooks.optimizer_factory = factory
        hooks.optimizer_compiled = False  # plain torch ops (CPU) or a custom op: accounted
        small = (f"; parameters under {min_size.default} values keep 32-bit moments"
                 if min_size is not None and isinstance(min_size.default, int) else "")
        record.notes.append(f"optimizer: bitsandbytes {getattr(bnb, '__version__', '?')} "
                            f"{cls.__name__} (moments in {params['bits']} bits, blockwise "
                            f"scales{small})")


# -- KV cache -----------------------------------------------------------------------------------------
def _cache_layer_types(config: Any) -> list[str]:
    """The cache layer types transformers will build for ``config``: its own reading
    (``get_layer_types_and_kwargs``), which infers sliding layers from ``sliding_window`` when
    the config lists no ``layer_types`` (Mistral), as QuantizedCache's check does."""
    text = config.get_text_config(decoder=True)
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        return list(get_layer_types_and_kwargs(text)[0])
    except (ImportError, AttributeError, TypeError):  # an older transformers: the listed types
        return list(getattr(text, "layer_types", None) or [])


class KVCache(Optimization):
    id = "kv-cache"
    name = "KV cache policy"
    summary = ("dynamic grows by concatenation each step; static preallocates prompt + new "
               "tokens once; fp8 stores keys/values in 8-bit floats (transformers' quantized "
               "cache); quanto-int4/int2 quantize them group-wise (optimum-quanto); offloaded "
               "keeps each layer's keys/values in CPU memory between uses (CUDA only).")
    category = "kv_cache"
    params = (Param("policy", "choice", "static",
                    ("dynamic", "static", "fp8", "quanto-int4", "quanto-int2", "offloaded")),)
    workloads = ("generate",)

    def check_config(self, workload, device, params):
        if params["policy"].startswith("quanto"):
            missing = _missing("optimum.quanto", "optimum-quanto")
            if missing:
                return missing
        if params["policy"] == "fp8":
            import transformers.cache_utils as cache_utils

            # The fp8 backend of QuantizedCache came after transformers 5.17 (where
            # QuantizedCache(backend="fp8") raises "Unknown quantization backend").
            if not hasattr(cache_utils, "Fp8QuantizedLayer"):
                import transformers

                return (f"fp8 needs a transformers newer than {transformers.__version__} (its "
                        "QuantizedCache has no fp8 backend): pip install -U transformers, or "
                        "pick quanto-int4")
        if params["policy"] == "offloaded" and not device.startswith("cuda"):
            return ("offloaded needs a CUDA device: transformers moves each layer's cache to "
                    f"the CPU and back on CUDA streams; this run is on {device}, where the cache "
                    "is in CPU memory already")
        return super().check_config(workload, device, params)

    def check_with(self, params, ids):
        # (check_model sees the model before sliding-window makes its layers local)
        if params["policy"] in ("fp8", "quanto-int4", "quanto-int2") and "sliding-window" in ids:
            return (f"with policy {params['policy']} cannot go with sliding-window: quantized "
                    "caches need every layer to use full attention, and sliding-window makes "
                    "them local")
        return None

    def check_model(self, model, params):
        if params["policy"] in ("fp8", "quanto-int4", "quanto-int2"):
            other = sorted({t for t in _cache_layer_types(model.config) if t != "full_attention"})
            if other:
                window = getattr(model.config.get_text_config(decoder=True), "sliding_window",
                                 None)
                return ("quantized caches need every layer to use full attention; this model "
                        f"has {', '.join(other)} layers"
                        + (f" (its config sets sliding_window={window})" if window else "")
                        + ": pick policy dynamic or static")
        return None

    def _apply(self, model, params, hooks, device, record):
        from transformers import DynamicCache, QuantizedCache, StaticCache

        policy = params["policy"]
        hooks.cache_policy = policy
        if policy == "static":
            def factory(m: nn.Module, batch: int, max_len: int) -> Any:
                return StaticCache(config=m.config, max_cache_len=max_len)
        elif policy == "fp8":
            def factory(m: nn.Module, batch: int, max_len: int) -> Any:
                return QuantizedCache(backend="fp8", config=m.config)
        elif policy.startswith("quanto"):
            nbits = 4 if policy.endswith("int4") else 2
            _quanto_extension(device, record)

            def factory(m: nn.Module, batch: int, max_len: int) -> Any:
                return QuantizedCache(backend="quanto", config=m.config, nbits=nbits)
        elif policy == "offloaded":
            def factory(m: nn.Module, batch: int, max_len: int) -> Any:
                return DynamicCache(config=m.config, offloading=True)

            record.notes.append("offloaded layers' keys and values are in CPU memory, outside "
                                "the GPU figures (the process RSS holds them)")
        else:
            def factory(m: nn.Module, batch: int, max_len: int) -> Any:
                return DynamicCache(config=m.config)
        hooks.cache_factory = factory
        record.notes.append(f"generation uses a {policy} cache")


# -- compilation -----------------------------------------------------------------------------------
class CompiledModel:
    """The compiled model as the workloads call it: calls go to ``torch.compile``'s wrapper;
    every attribute (``forward``'s signature, ``config``, ``train()``/``eval()``) is the eager
    model's, which the compiled code runs on (same parameters)."""

    def __init__(self, model: nn.Module, compiled: Callable[..., Any]) -> None:
        self._model = model
        self._compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class Compile(Optimization):
    id = "compile"
    name = "torch.compile"
    summary = ("Compile the model (TorchDynamo + Inductor): a static or dynamic graph. Timed "
               "passes run the compiled model; the compile time (first call minus the steady "
               "state) is reported apart from the latency. Memory figures are the eager "
               "model's: compiled code cannot run under tensor accounting.")
    category = "compilation"
    params = (
        Param("mode", "choice", "default", ("default", "reduce-overhead",
                                             "max-autotune-no-cudagraphs"),
              help="torch.compile mode"),
        Param("dynamic", "choice", "auto", ("auto", "true", "false"),
              help="shapes: auto = static, then dynamic once a shape changes; true = dynamic "
                   "from the start; false = one graph per shape"),
    )

    def check_config(self, workload, device, params):
        reason = super().check_config(workload, device, params)
        if reason:
            return reason
        if params["mode"] == "reduce-overhead" and not device.startswith("cuda"):
            return ("reduce-overhead records CUDA graphs, which need a CUDA device (elsewhere it "
                    "is the default mode)")
        return None

    def _apply(self, model, params, hooks, device, record):
        import torch._dynamo

        with warnings.catch_warnings():
            # Importing Inductor trips torch's own deprecations (torch.jit.script_method).
            warnings.simplefilter("ignore", DeprecationWarning)
            import torch._inductor.compile_fx  # noqa: F401

        # Each run compiles from a clean Dynamo state: graphs compiled for an earlier run's model
        # would count against the recompile limit (then Dynamo silently runs eager).
        torch._dynamo.reset()
        dynamic = {"auto": None, "true": True, "false": False}[params["dynamic"]]
        mode = None if params["mode"] == "default" else params["mode"]
        hooks.compiled = CompiledModel(model, torch.compile(model, mode=mode, dynamic=dynamic))
        record.notes.append("compiled lazily: the first call of the compiled model compiles it; "
                            "that time is reported as compile_seconds, apart from the latency")


# The order is the app's order of application (it applies the ticked ones top to bottom), so it
# is one every order rule accepts: structured pruning before sparsifying, quantizing, adapting
# and freezing (_pruned_after).
REGISTRY: dict[str, Optimization] = {o.id: o for o in (
    Cast(), Autocast(), PruneUnstructured(), PruneFFN(), PruneHeads(), DropBlocks(), Sparsity24(),
    Int8Dynamic(), TorchaoInt8(), TorchaoInt4(), TorchaoFloat8(), QuantoWeights(),
    Attention(), SlidingWindow(), Checkpointing(),
    FreezeBase(), LoRA(), LowBitOptimizer(), KVCache(), Compile(),
)}
# A conflict goes both ways: each technique lists every one it is refused with, including
# those that name it ("cast" listed only int8-dynamic, while torchao-int8 refused cast).
for _opt in REGISTRY.values():
    _opt.conflicts = tuple(dict.fromkeys(
        list(_opt.conflicts)
        + [other.id for other in REGISTRY.values() if _opt.id in other.conflicts]))
del _opt


QUANTIZERS = ("int8-dynamic", "torchao-int8", "torchao-int4", "torchao-fp8", "quanto-weights")


def conflict_reason(a: str, b: str) -> str:
    """Why techniques ``a`` and ``b`` are refused together ("cast conflicts with autocast."
    said nothing of why)."""
    pair = {a, b}
    if pair == {"cast", "autocast"}:
        return ("after a cast no float32 weight is left for autocast to lower, and a cast after "
                "autocast leaves it lowering nothing")
    if pair == {"autocast", "int8-dynamic"}:
        return ("int8-dynamic's quantized linear takes float32 activations only, and autocast "
                "hands it 16-bit ones")
    if pair == {"autocast", "quanto-weights"}:
        return "quanto's quantized linear fails under autocast (a dtype mismatch in its matmul)"
    if pair == {"freeze-base", "lora"}:
        return ("LoRA freezes the base itself and trains its adapters; freeze-base trains the "
                "head instead: two fine-tuning setups, not one")
    if pair <= set(QUANTIZERS):
        return "both replace the Linear weights with a quantized format of their own"
    if "cast" in pair:
        return (f"{(pair - {'cast'}).pop()} sets the weights' formats itself: a cast would act on "
                "its quantized or sparse tensors")
    if "prune-unstructured" in pair:
        return ("unstructured pruning masks plain weight tensors (weight_orig × mask), which "
                f"{(pair - {'prune-unstructured'}).pop()}'s weights no longer are")
    if "sparsity-24" in pair:
        return ("2:4 sparsity stores the weights in PyTorch's semi-structured format, which "
                f"{(pair - {'sparsity-24'}).pop()} does not take (nor it that one's)")
    return "they change the same weights in ways that do not compose"


def must_follow(opt: Optimization) -> list[str]:
    """The techniques that must come before ``opt`` when both are chosen (its order rules,
    read from its own check_with), for the listing."""
    return [other for other in REGISTRY if other != opt.id
            and f"put {other} first" in (opt.check_with(opt.defaults(), [opt.id, other]) or "")]


def parse_spec(spec: str) -> dict[str, Any]:
    """``ID[:key=value,...]`` -> ``{"id": ID, "params": {...}}`` (values stay strings)."""
    ident, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                               f"Cannot read {part!r} in --opt {spec}.",
                               "Write parameters as key=value, e.g. --opt cast:dtype=bfloat16.")
        if key.strip() in params:  # (the last one silently won)
            raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                               f"{key.strip()} is given twice in --opt {spec}.",
                               f"Give each parameter once, e.g. --opt {ident.strip()}:"
                               f"{key.strip()}={value.strip()}.")
        params[key.strip()] = value.strip()
    return {"id": ident.strip(), "params": params}


def format_spec(selected: dict[str, Any]) -> str:
    """``{"id": ID, "params": {...}}`` -> ``ID[:key=value,...]`` (what :func:`parse_spec` reads)."""
    params = selected.get("params") or {}
    return selected["id"] + (":" + ",".join(f"{k}={v}" for k, v in params.items())
                             if params else "")


def resolve(selected: list[dict[str, Any]], workload: str, device: str
            ) -> list[tuple[Optimization, dict[str, Any]]]:
    """Validate a run's optimizations before anything loads: ids, parameters, conflicts and
    what can be decided without the model. Raises ``MemLensError`` naming each problem (every
    one found, not only the first: a choice refused for one reason came back refused for the
    next)."""
    chosen: list[tuple[Optimization, dict[str, Any]]] = []
    problems: list[tuple[str, str]] = []  # (message, hint)
    for entry in selected:
        ident = entry.get("id") if isinstance(entry, dict) else None
        opt = REGISTRY.get(str(ident))
        if opt is None:
            raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"Unknown optimization {ident!r}.",
                               f"Known: {', '.join(REGISTRY)} (`memlens optimizations`).")
        params = opt.parse_params(dict(entry.get("params") or {}))
        reason = opt.check_config(workload, device, params)
        if reason:
            problems.append((f"{opt.named} {reason}.",
                             "Remove it, or change the workload or device."))
        chosen.append((opt, params))
    ids = [o.id for o, _ in chosen]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"{', '.join(dup)} chosen twice.",
                           "Pick each optimization once.")
    told: set[frozenset[str]] = set()
    for opt, _ in chosen:
        clash = [o for o in opt.conflicts if o in ids and frozenset((opt.id, o)) not in told]
        if clash:
            told.update(frozenset((opt.id, o)) for o in clash)
            for other in clash:
                problems.append((f"{opt.id} conflicts with {other}: "
                                 f"{conflict_reason(opt.id, other)}.",
                                 "Run them separately and compare the runs."))
    for opt, params in chosen:
        reason = opt.check_with(params, ids)
        if reason:
            problems.append((f"{opt.named} {reason}.",
                             "Change the order as it says, or run them separately and compare "
                             "the runs."))
    if len(problems) == 1:
        raise MemLensError(ErrorKind.NOT_APPLICABLE, *problems[0])
    if problems:
        hints = list(dict.fromkeys(hint for _, hint in problems))
        raise MemLensError(ErrorKind.NOT_APPLICABLE,
                           f"{len(problems)} problems: "
                           + " ".join(message for message, _ in problems),
                           " ".join(hints))
    return chosen


def check_all(model: nn.Module, chosen: list[tuple[Optimization, dict[str, Any]]]) -> None:
    """Refuse (``NOT_APPLICABLE``) the first optimization that does not apply to the loaded,
    unmodified model; the runner calls it before measuring the baseline, so a refusal costs
    no measurement."""
    for opt, params in chosen:
        reason = opt.check_model(model, params)
        if reason:
            raise MemLensError(ErrorKind.NOT_APPLICABLE, f"{opt.named} does not apply "
                               f"to this model: {reason}.", "Remove it from the run.")


def apply_all(model: nn.Module, chosen: list[tuple[Optimization, dict[str, Any]]],
              device: torch.device, cancel: Any = None,
              progress: Callable[[float, str], None] | None = None,
              on_applied: Callable[[Applied], None] | None = None
              ) -> tuple[list[Applied], RunHooks]:
    """Check each optimization against the loaded model, then apply them in order, checking
    each again on the model the earlier ones changed (``on_applied`` is called after each one,
    e.g. to see which modules it changed)."""
    check_all(model, chosen)
    hooks = RunHooks()
    applied = []
    for i, (opt, params) in enumerate(chosen):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if progress is not None:
            progress(i / len(chosen), f"applying {opt.name}")
        if i:
            # Checked again on the model the earlier ones changed: a technique that no longer
            # finds what it acts on would otherwise apply to nothing and say nothing.
            reason = opt.check_model(model, params)
            if reason:
                before = ", ".join(o.id for o, _ in chosen[:i])
                raise MemLensError(ErrorKind.NOT_APPLICABLE,
                                   f"{opt.named} does not apply after {before}: {reason}.",
                                   "Each technique acts on the model the earlier ones left: "
                                   "change its settings as the reason says, or remove it from "
                                   "the run.")
        applied.append(opt.apply(model, params, hooks, device))
        if on_applied is not None:
            on_applied(applied[-1])
    return applied, hooks
