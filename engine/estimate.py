"""Estimate mode: a model's memory per layer without its weights and without real memory.

The model is built from its config under PyTorch's ``FakeTensorMode`` (every tensor has a shape,
a dtype and a storage size, but no data), then the *same* workload code and the *same* memory
pass as a measured run run on it: ``MemoryProbe`` (the tensor-accounting dispatch mode, stacked
on top of the fake mode the way PyTorch's own ``MemTracker`` does it), ``select_layers``, the
forward / generate / train workloads, and the runner's per-layer assembly. So an estimate is what
a CPU run of that config would measure, computed from shapes: per-layer weights, outputs,
saved-for-backward tensors, KV cache, transient peaks, FLOPs and the peak.

Not estimated: latency (there is no arithmetic to time; it stays ``None``), the process RSS, load
peaks, quality. Every estimate says so in ``limitations`` and carries ``estimate`` in its JSON.
The ``meta`` device is avoided on purpose: transformers' mask code reads tensor values on it
(``.item()``) and fails, while fake tensors keep small constants and report data-dependent reads
as errors naming the operator.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import gc
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import patch

import torch

from . import workloads as wl
from .accounting import is_fake
from .config import RunConfig
from .errors import Cancelled, ErrorKind, MemLensError
from .events import Failed, Finished, LayerStatsReady, Progress
from .layers import module_weight_tensors, select_layers, unique_nbytes
from .results import RunResult
from .runner import Listener, _emit, _Run, _run_id, internal_failure

METHOD = ("FakeTensorMode build (no weights, no memory) + MemLens tensor accounting "
          "(the measured runs' memory pass)")
PEAK_SOURCE = "fake_tensor_accounting"
ESTIMATE_SOURCES = ("Estimation reads a config.json, a local folder with "
                    "config.json, a preset (preset:ID, e.g. preset:llama-3-8b) or a built-in demo "
                    "(demo, demo-encoder).")

LIMITATIONS_ESTIMATE = [
    "ESTIMATE: the model ran on fake tensors (shapes, dtypes and storage sizes only, no data, no "
    "memory); the figures are what tensor accounting would count in a CPU run of this config "
    "and workload, not a measurement.",
    "Latency is not estimated (shown as —): fake tensors do no arithmetic to time.",
    "Not seen, as in a CPU run: memory a kernel allocates and frees internally without making a "
    "tensor, allocator caching and block rounding, the CUDA context and library workspaces "
    "(cuBLAS), the Python heap; the load-time peak and process RSS are not estimated.",
    "Kernel choices are the CPU's (e.g. CPU SDPA keeps a logsumexp beside its output); a GPU "
    "may pick other kernels with other temporaries.",
]


# -- optimizations on fake tensors ---------------------------------------------------------------
# Every optimization is applied to the fake model by its own code, as in a measured run, except
# the ones below: each was tried on fake tensors and either cannot run there or would give other
# bytes than a measured CPU run. The rest give the measured run's figures exactly (compared on
# the demo and tiny models in tests/test_estimate.py).
NOT_ESTIMABLE = {
    "int8-dynamic": "quantize_dynamic's observers read the weights' values to choose the scales",
    "low-bit-optimizer": "the 8- and 4-bit optimizers read the values of each block to scale it",
    "compile": "fake tensors run the eager graph: the compiled kernels, whose memory is what a "
               "compile changes, never run",
}
# Per parameter value: quanto packs 4- and 2-bit data in a layout chosen from the real tensor,
# which fake tensors do not reproduce (the demo's qint4 weights: 3.92 MB estimated, 2.85 MB
# measured; its int4 KV cache 4 KiB per layer more).
NOT_ESTIMABLE_VALUES = {
    ("quanto-weights", "weights", "qint4"): "quanto packs 4-bit weights in a layout fake "
                                            "tensors do not reproduce",
    ("quanto-weights", "weights", "qint2"): "quanto packs 2-bit weights in a layout fake "
                                            "tensors do not reproduce",
    ("kv-cache", "policy", "quanto-int4"): "quanto packs the 4-bit cache in a layout fake "
                                           "tensors do not reproduce",
    ("kv-cache", "policy", "quanto-int2"): "quanto packs the 2-bit cache in a layout fake "
                                           "tensors do not reproduce",
}


# With tensor parallelism, the optimizations that leave the blocks' nn.Linear layers in place.
TENSOR_PARALLEL_OPTIMIZATIONS = ("cast", "autocast", "checkpointing", "freeze-base",
                                 "attention", "sliding-window", "kv-cache", "drop-blocks")


def not_estimable(opt_id: str, params: dict[str, Any]) -> tuple[str, str] | None:
    """``(what, why)`` when the optimization ``opt_id`` with ``params`` cannot be estimated
    (``what`` names it as ``--opt`` does), None when it can."""
    if opt_id in NOT_ESTIMABLE:
        return opt_id, NOT_ESTIMABLE[opt_id]
    for (oid, key, value), why in NOT_ESTIMABLE_VALUES.items():
        if oid == opt_id and params.get(key) == value:
            return f"{opt_id}:{key}={value}", why
    return None


def estimable_optimizations(config: RunConfig) -> list[Any]:
    """``config.optimizations`` resolved (as the runner does), or a ``MemLensError`` naming the
    one that estimation cannot apply, why, and what to do instead."""
    from .optimizations import resolve

    chosen = resolve(config.optimizations, config.workload, "cpu")
    for opt, params in chosen:
        refused = not_estimable(opt.id, params)
        if refused is not None:
            raise MemLensError(
                ErrorKind.NOT_APPLICABLE,
                f"Estimation cannot apply {opt.name} ({refused[0]}): {refused[1]}.",
                "Measure it in a real run (Run; memlens profile) on a model, or a smaller "
                "config of the same architecture, that fits; the other optimizations can be "
                "estimated.")
    return chosen


@contextlib.contextmanager
def fake_conversions(fake_mode: Any) -> Iterator[None]:
    """Let ``Module.to()`` / ``to_empty()`` convert the parameters of a model on fake tensors.

    PyTorch converts a fake parameter by swapping it with its converted copy in place
    (``torch.utils.swap_tensors``), which refuses a tensor that has a weak reference, and
    ``fake_mode``'s converter memo holds one on every parameter made under the mode: so a cast,
    or peft moving new LoRA adapters to the base layer's dtype, failed with "Couldn't swap".
    Before each swap the two tensors' memo entries are dropped. The memo lets a *real* tensor
    converted twice get the same fake tensor; an estimate converts no real tensor, and the
    parameters swapped are replaced anyway. Everything else of the swap is PyTorch's own.
    """
    original = torch.utils.swap_tensors
    memo = fake_mode.fake_tensor_converter.tensor_memo

    @functools.wraps(original)
    def swap_tensors(t1: Any, t2: Any) -> Any:
        for key in [k for k, v in memo.items() if v is t1 or v is t2]:
            del memo[key]
        return original(t1, t2)

    torch.utils.swap_tensors = swap_tensors
    try:
        yield
    finally:
        torch.utils.swap_tensors = original


def apply_on_fake(model: Any, chosen: list[Any], fake_mode: Any, device: torch.device,
                  cancel: threading.Event, progress: Any = lambda f, m: None) -> tuple[Any, Any]:
    """``optimizations.apply_all`` on a model built under ``fake_mode``: under the mode, with
    the branches a real run takes and with fake parameters convertible (``fake_conversions``)."""
    from .optimizations import apply_all

    with fake_mode, _as_in_a_real_run(), fake_conversions(fake_mode):
        return apply_all(model, chosen, device, cancel, progress)


def estimate(config: RunConfig, listener: Listener = lambda e: None,
             cancel: threading.Event | None = None, store: Any = None,
             tensor_parallel: int = 1) -> RunResult | None:
    """Estimate ``config`` in this thread; returns the result, or None after a ``Failed`` event.

    ``tensor_parallel`` > 1 estimates rank 0 of that many ranks of tensor parallelism (the
    architecture's own plan, :meth:`_EstimateRun._parallelize`).

    Events and error handling are those of :func:`engine.runner.execute`.
    """
    cancel = cancel or threading.Event()
    run = _EstimateRun(config, listener, cancel, tensor_parallel)
    try:
        result = run.go()
    except MemLensError as exc:  # also Cancelled
        run.cleanup()
        _emit(listener, Failed(exc.kind.value, exc.message, exc.hint))
        return None
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an event
        run.cleanup()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        err = _fake_tensor_error(exc, run.stage, config.model)
        if err is not None:
            _emit(listener, Failed(err.kind.value, err.message, err.hint))
            return None
        internal_failure(listener, exc, run.stage or "the estimate")
        return None
    run.cleanup()
    if store is not None:
        _emit(listener, Progress("save", None, "saving the estimate"))
        try:
            store.save(result)
        except MemLensError as exc:
            result.warnings.append(f"The estimate was not saved: {exc.message} ({exc.hint})")
        except OSError as exc:
            result.warnings.append(f"The estimate was not saved: {exc}")
    _emit(listener, Finished(result))
    return result


def quiet_estimate(config: RunConfig, cancel: threading.Event | None = None
                   ) -> RunResult | None:
    """An estimate for the runner's own use (does the workload fit?): no events, nothing
    logged; None when it cannot be made (a technique it cannot apply, an architecture fake
    tensors do not run), and the caller goes on without it."""
    run = _EstimateRun(config, lambda event: None, cancel or threading.Event())
    try:
        return run.go()
    except Exception:  # noqa: BLE001 - no estimate: the run is not refused for it
        return None
    finally:
        run.cleanup()


def build_shapes_only(config: RunConfig) -> Any:
    """``config``'s model built on fake tensors (its shapes and dtypes, no weights, no memory):
    what ``memlens optimizations --model`` checks each technique against. Hub ids are refused
    as estimation refuses them (a local config is read)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .models import describe_source, preimport_architecture
    from .quiet import quiet_import

    if describe_source(config.model) == "hub":
        raise MemLensError(ErrorKind.NOT_APPLICABLE,
                           f"Checking against a model reads a local config, and {config.model!r} "
                           "is a Hub id.", ESTIMATE_SOURCES)
    with quiet_import():
        preimport_architecture(config.model)
    run = _EstimateRun(config, lambda event: None, threading.Event())
    run.fake_mode = FakeTensorMode()
    return run._build(torch.device("cpu")).model


def _fake_tensor_error(exc: BaseException, stage: str, model: str) -> MemLensError | None:
    """A clear error for what FakeTensorMode cannot run, naming the operator and the code line."""
    from torch._subclasses import fake_tensor as ft

    kinds = tuple(getattr(ft, n) for n in ("UnsupportedOperatorException",
                                           "DataDependentOutputException",
                                           "DynamicOutputShapeException",
                                           "UnsupportedFakeTensorException")
                  if hasattr(ft, n))
    if not isinstance(exc, kinds):
        return None
    func = getattr(exc, "func", None)
    op = str(func) if func is not None else type(exc).__name__
    why = {
        "UnsupportedOperatorException": "has no fake-tensor (meta) implementation",
        "DataDependentOutputException": "needs tensor values, which fake tensors do not have",
        "DynamicOutputShapeException": "returns a shape that depends on tensor values",
    }.get(type(exc).__name__, "cannot run on fake tensors")
    if "_local_scalar_dense" in op:
        why = ("reads a tensor's value (.item(), float(), bool() or an `if` on a tensor), which "
               "fake tensors do not have")
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if "/torch/" not in frame.filename and "/engine/" not in frame.filename:
            where = f" (at {frame.filename.rsplit('site-packages/', 1)[-1]}:{frame.lineno})"
            break
    step = {"build": "building it", "warmup": "its warm-up step",
            "memory": "its memory pass"}.get(stage, stage or "the workload")
    if "modeling_rope_utils" in where:
        # (dynamic rope scaling compares the largest position with the cached length: a value)
        hint = ("This model's rope scaling reads the positions' values as it runs. Measure it "
                "in a real run (memlens profile), or estimate a copy of its config.json without "
                "the scaling: no rope_scaling, or rope_type \"default\" in rope_parameters (the "
                "scaling changes only the rotary frequencies, a buffer of head_dim / 2 "
                "numbers).")
    else:
        hint = ("Measure a smaller config of the same architecture in a real run (memlens "
                "profile), or try another attention implementation, eager or sdpa (the "
                "Attention implementation optimization; --attention); operators without a "
                "fake-tensor implementation are listed in PyTorch's issue tracker.")
    return MemLensError(
        ErrorKind.NOT_APPLICABLE,
        f"Estimation cannot run {model} on fake tensors ({step}): the operator {op} {why}"
        f"{where}.", hint)


@contextlib.contextmanager
def _as_in_a_real_run() -> Iterator[None]:
    """Make transformers take the branches a real run of MemLens' inputs takes.

    transformers treats fake tensors as tracing (``is_tracing``) and then skips checks that read
    tensor values. One of them changes memory: ``find_packed_sequence_indices`` (causal masks
    without an attention mask or cache, i.e. the forward and training workloads) cannot tell
    that the positions are one sequence per row, so it returns a "packed" index tensor, and SDPA
    then gets a materialised mask instead of ``is_causal`` (and repeats K/V heads for it).
    MemLens' inputs are always one unpadded sequence per row, for which the real check returns
    None: under fake tensors that answer is given here, after the same tensors were computed.

    Mixture-of-experts layers go through :func:`_grouped_mm_in_any_dtype` (see there).
    """
    with _grouped_mm_in_any_dtype():
        try:
            from transformers import masking_utils
        except ImportError:  # pragma: no cover - transformers 5 always has it
            yield
            return
        original = getattr(masking_utils, "find_packed_sequence_indices", None)
        if original is None:
            yield
            return
        with patch.object(masking_utils, "find_packed_sequence_indices",
                          _not_packed_when_fake(original)):
            yield


def _not_packed_when_fake(original: Callable[..., Any]) -> Callable[..., Any]:
    """``find_packed_sequence_indices`` answering None for fake positions (see above)."""

    @functools.wraps(original)
    def find_packed_sequence_indices(position_ids: Any, *args: Any, **kwargs: Any) -> Any:
        found = original(position_ids, *args, **kwargs)
        if found is not None and is_fake(position_ids):
            return None
        return found

    return find_packed_sequence_indices


def _prime_lazy_rope(model: torch.nn.Module, input_ids: torch.Tensor) -> None:
    """Call each longrope rotary embedding once before the memory pass. Its first forward
    keeps a ``long_inv_freq`` tensor for good; a measured run's memory pass comes after the
    quality reference pass, so it holds that tensor already (as the module's), while the
    estimate, which skips that pass (the price of a whole forward), made it during the pass
    and counted it as an activation (Phi-3 with longrope, found by an audit)."""
    for module in model.modules():
        kind = getattr(module, "rope_type", None)
        kinds = kind.values() if isinstance(kind, dict) else [kind]
        if "longrope" not in kinds or not callable(getattr(module, "forward", None)):
            continue
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        probe = torch.empty((1, 1, 1), dtype=torch.get_default_dtype(),
                            device=input_ids.device)
        try:
            if isinstance(kind, dict):
                for layer_type in kind:
                    module(probe, positions, layer_type=layer_type)
            else:
                module(probe, positions)
        except TypeError:  # another signature: left to the memory pass, as before
            continue


class _FakeGroupedMM(torch.autograd.Function):
    """``torch._grouped_mm(a (S, K), b (E, K, N), offs) -> (S, N)`` on fake tensors of any
    float dtype, with what the real operator's autograd does on the CPU (logged op by op): it
    keeps ``a`` only when ``b`` needs a gradient, ``b`` only when ``a`` does, and ``offs``
    when either does; backward makes b's gradient as a contiguous (E, N, K) grouped mm,
    transposed, then a's (S, K)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a if b.requires_grad else None, b if a.requires_grad else None,
                              offs if a.requires_grad or b.requires_grad else None)
        ctx.shapes = (a.shape, b.shape)
        return a.new_empty((a.shape[0], b.shape[-1]))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (a_shape, (e, k, n)) = ctx.shapes
        grad_b = (grad.new_empty((e, n, k)).transpose(-2, -1) if ctx.needs_input_grad[1]
                  else None)
        grad_a = grad.new_empty(a_shape) if ctx.needs_input_grad[0] else None
        return grad_a, grad_b, None


@contextlib.contextmanager
def _grouped_mm_in_any_dtype() -> Iterator[None]:
    """PyTorch's fake (meta) kernel of ``_grouped_mm`` accepts bfloat16 only, while its CPU
    kernel, which a real run uses, takes float32 and float16 too: a mixture-of-experts model
    (Mixtral, Qwen3-MoE) estimated in float32 failed inside transformers' experts layer. For
    fake tensors in another dtype, transformers' dispatcher gets :class:`_FakeGroupedMM`, which
    allocates what the real operator does (checked against real CPU runs in the tests); real
    tensors and bfloat16 take the original path. Hand-written because no library offers the
    operator's fake kernel for these dtypes."""
    try:
        from transformers.integrations import moe
    except ImportError:  # an older transformers: no grouped experts
        yield
        return
    original = getattr(moe, "_grouped_mm", None)
    can_use = getattr(moe, "_can_use_grouped_mm", None)
    if original is None or can_use is None:
        yield
        return

    @functools.wraps(original)
    def _grouped_mm(input: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor) -> Any:
        # (CPU only: the fake kernel mirrors CUDA's checks, in aten/native/cuda/Blas.cpp, so
        # for a modelled CUDA device it keeps the say, rather than the stand-in guessing)
        if (is_fake(weight) and weight.device.type == "cpu" and weight.dtype != torch.bfloat16
                and weight.dim() == 3 and input.dim() == 2 and can_use(input, weight, offs)):
            from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

            from .accounting import TensorAccountant

            for mode in _get_current_dispatch_mode_stack():  # (FLOPs: see note_op)
                if isinstance(mode, TensorAccountant):
                    mode.note_op(torch.ops.aten._grouped_mm)
            return _FakeGroupedMM.apply(input.to(weight.dtype), weight, offs)
        return original(input, weight, offs)

    with patch.object(moe, "_grouped_mm", _grouped_mm):
        yield


class _EstimateRun(_Run):
    """One estimate: the runner's run with the model built on fake tensors and no timing."""

    def __init__(self, config: RunConfig, listener: Listener, cancel: threading.Event,
                 tensor_parallel: int = 1) -> None:
        super().__init__(config, listener, cancel)
        self.fake_mode: Any = None
        self.tensor_parallel = tensor_parallel
        self._process_group = False  # a fake one made for tensor parallelism, destroyed at the end

    def cleanup(self) -> None:
        self.loaded = None
        self.optimizer = None
        self.fake_mode = None
        if self._process_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._process_group = False
        gc.collect()

    def _parallelize(self, model: Any) -> str:
        """Rank 0 of ``self.tensor_parallel`` ranks of tensor parallelism on a fake process group:
        PyTorch's ``parallelize_module`` with the plan the architecture declares in transformers
        (``config.base_model_tp_plan``: colwise / rowwise Linear layers of the blocks, the model
        class's ``_tp_plan`` for the head, its logits gathered). Returns the limitation line."""
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Replicate
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            RowwiseParallel,
            parallelize_module,
        )

        tp = self.tensor_parallel
        config = getattr(model.config, "get_text_config", lambda: model.config)()
        declared = dict(getattr(config, "base_model_tp_plan", None) or {})
        name = type(model).__name__
        if not declared:
            raise MemLensError(ErrorKind.NOT_APPLICABLE,
                               f"{name} declares no tensor-parallel plan in transformers "
                               "(base_model_tp_plan), so its layers' split is not known.",
                               "Estimate it on one device, or plan FSDP2 training (the "
                               "Multi-GPU plan page with the train workload; memlens plan "
                               "--workload train --ranks N).")
        styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
        unknown = sorted({v for v in declared.values() if v not in styles})
        if unknown:
            raise MemLensError(ErrorKind.NOT_APPLICABLE,
                               f"{name}'s tensor-parallel plan uses {', '.join(unknown)}, which "
                               "MemLens does not model (only colwise and rowwise layers).",
                               "Estimate it on one device.")
        for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value % tp:
                raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                                   f"{key} = {value} does not split over {tp} ranks.",
                                   "Tensor parallelism splits heads and channels evenly: choose "
                                   f"a rank count that divides {key}.")
        changed = [o.get("id") for o in self.config.optimizations
                   if o.get("id") not in TENSOR_PARALLEL_OPTIMIZATIONS]
        if changed:
            raise MemLensError(ErrorKind.NOT_APPLICABLE,
                               f"{', '.join(map(str, changed))} replaces or reshapes the Linear "
                               "layers tensor parallelism splits.",
                               "A tensor-parallel estimate takes "
                               f"{', '.join(TENSOR_PARALLEL_OPTIMIZATIONS)}.")
        if dist.is_initialized():
            raise MemLensError(ErrorKind.NOT_APPLICABLE,
                               "A tensor-parallel estimate needs a fake process group of its "
                               "own, and this process already has one.",
                               "Estimate from a process without torch.distributed initialised.")
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", rank=0, world_size=tp, store=FakeStore())
        self._process_group = True
        # PyTorch's FLOP counter sees a split layer's matmul at the DTensor level, with the
        # global shapes, and the attention at the local ones: its sum would be neither.
        self.count_flops = False
        mesh = init_device_mesh("cpu", (tp,))
        head = getattr(type(model), "_tp_plan", None) or {}
        with self.fake_mode:
            parallelize_module(model.base_model, mesh,
                               {k: styles[v]() for k, v in declared.items()})
            if head.get("lm_head") == "colwise_gather_output" and hasattr(model, "lm_head"):
                parallelize_module(model, mesh,
                                   {"lm_head": ColwiseParallel(output_layouts=Replicate())})
        return (f"Tensor parallelism: rank 0 of {tp}. The blocks' Linear layers are split as "
                f"{name} declares in transformers (base_model_tp_plan: "
                + ", ".join(f"{k.replace('layers.*.', '')} {v}" for k, v in declared.items())
                + ")" + (", the head column-wise with its logits gathered" if head else "")
                + "; embeddings and norms are replicated. PyTorch's DTensor layers ran on a "
                "fake process group: each rank's shards and activations are counted, the "
                "collectives' communication buffers are not. FLOPs are not estimated (PyTorch's "
                "counter sees split layers with their global shapes).")

    def go(self) -> RunResult:
        from torch._subclasses.fake_tensor import FakeTensorMode

        from .models import resolve_device
        from .optimizations import RunHooks
        from .telemetry import environment

        from .models import describe_source

        cfg = self.config
        cfg.validate()
        tp = self.tensor_parallel
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                               f"Tensor parallelism needs 1 or more ranks (got {tp!r}).",
                               "Use --tensor-parallel 2 (or the number of GPUs).")
        try:
            source = describe_source(cfg.model)  # also refuses unknown presets and paths
        except MemLensError as exc:
            if exc.kind is ErrorKind.NOT_FOUND and "Hub id" in exc.hint:  # refused here
                raise MemLensError(ErrorKind.NOT_FOUND, exc.message,
                                   "Check the path. " + ESTIMATE_SOURCES) from None
            raise
        if source == "hub":
            raise MemLensError(
                ErrorKind.NOT_APPLICABLE,
                f"Estimation reads a local config, and {cfg.model!r} is a Hub id.",
                ESTIMATE_SOURCES + " Download only the model's config.json if its weights are "
                "large.")
        chosen = estimable_optimizations(cfg)
        if cfg.prompt:
            raise MemLensError(
                ErrorKind.INVALID_WORKLOAD,
                "Estimation takes a sequence length, not a prompt: fake tensors have no text.",
                "Use --seq N (the prompt length in tokens).")
        if cfg.attention_maps:
            raise MemLensError(
                ErrorKind.NOT_APPLICABLE,
                "Attention maps need real values; an estimate has none.",
                "Estimate without attention maps (untick 'Attention maps' in the window), or "
                "capture them in a measured run (Run; memlens profile --attention-maps).")
        device = resolve_device(cfg.device)
        if device.type != "cpu":
            raise MemLensError(
                ErrorKind.NOT_APPLICABLE,
                f"Estimation models the CPU's kernels only (got --device {cfg.device}).",
                "Estimate on the cpu device (--device cpu); a CUDA estimate (GPU kernel "
                "choices) is not available yet.")
        self.hooks = RunHooks()
        created = _dt.datetime.now(_dt.timezone.utc)
        run_id = _run_id(cfg, created)
        head, _, tail = run_id.rpartition(f"-{cfg.workload}-")
        kind = "estimate" if tp == 1 else f"estimate-tp{tp}"
        result = RunResult(config=cfg, run_id=f"{head}-{kind}-{cfg.workload}-{tail}",
                           created=created.isoformat(timespec="seconds"))
        self.progress("prepare", None, "importing libraries")
        from .models import preimport_architecture
        from .quiet import quiet_import

        with quiet_import():
            import transformers

            _ = transformers.AutoModelForCausalLM
            preimport_architecture(cfg.model)

        self.progress("build", None, f"building {cfg.model} on fake tensors (no weights)")
        t0 = time.perf_counter()
        self.fake_mode = FakeTensorMode()
        self.loaded = self._build(device)
        result.warnings.extend(self.loaded.warnings)
        model = self.loaded.model
        build_s = time.perf_counter() - t0

        if chosen:
            self.progress("optimize", 0.0, "applying optimizations (fake tensors)")
            applied, self.hooks = apply_on_fake(model, chosen, self.fake_mode, device,
                                                self.cancel,
                                                lambda f, m: self.progress("optimize", f, m))
            result.optimizations = [a.to_dict() for a in applied]

        tp_note = self._parallelize(model) if self.tensor_parallel > 1 else None
        tracked = select_layers(model, loss=cfg.workload == "train")
        with self.fake_mode:
            ids = torch.zeros((cfg.batch, cfg.seq), dtype=torch.long, device=device)
        inputs = wl.Inputs(ids, "fake ids (shape only)")
        if cfg.workload == "generate":
            wl.check_positions(model, cfg.seq, "Generation", cfg.new_tokens)
        else:
            wl.check_positions(model, cfg.seq, "The input")
        if cfg.workload == "train":
            wl.check_train_length(model, cfg.seq)
        result.model_info = self._model_info(model, tracked, device)
        result.model_info["weights"] = "none (fake tensors: shapes only)"
        result.environment = environment(str(device))
        result.limitations = list(LIMITATIONS_ESTIMATE) + ([tp_note] if tp_note else [])
        if not wl.is_causal_lm(model) and cfg.workload == "generate":
            raise MemLensError(ErrorKind.NOT_APPLICABLE,
                               f"{self.loaded.architecture} is not a causal language model: it "
                               "cannot generate.", "Use the forward or train workload.")

        t1 = time.perf_counter()
        with self.fake_mode, _as_in_a_real_run():
            if cfg.workload == "train":
                self.optimizer = wl.make_optimizer(model, cfg.lr, self.hooks.optimizer_factory)
            # A measured run's warm-up leaves state behind only in training (the optimizer's
            # moments, created by the first step): the same warm-up runs here so the memory pass
            # starts from the same state. Forward and generation leave nothing (the accuracy
            # tests compare with measured runs that did warm up), so they skip it.
            for i in range(cfg.warmup if cfg.workload == "train" else 0):
                self.progress("warmup", i / max(1, cfg.warmup), "warm-up pass (fake tensors)")
                self._plain_pass(model, inputs, device)
            if cfg.workload != "train" or not cfg.warmup:
                _prime_lazy_rope(model, inputs.input_ids)
            warm_s = time.perf_counter() - t1
            self.progress("memory", None, "memory pass (tensor accounting on fake tensors)")
            t2 = time.perf_counter()
            layers, extra = self._memory_pass(model, tracked, inputs, device, result)
            pass_s = time.perf_counter() - t2
        skipped = getattr(extra.get("generation"), "skipped_steps", 0) if extra else 0
        if skipped and result.generation is not None:
            result.generation["skipped_decode_steps"] = skipped
            result.limitations.append(
                f"Generation: decode steps 2 to {skipped + 1} of {skipped + 2} were not run. "
                "With a growing cache each step is the previous one with one more position "
                "(a preallocated, static one has the same shapes at every step), so its peak is "
                "at most the last step's: the first and the last step ran, the cache was grown "
                "to the last step's length in between, and the skipped steps' KV bytes and "
                "FLOPs were filled in linearly from the two ends.")

        totals = result.totals
        totals.peak_source = PEAK_SOURCE
        totals.transient_source = "tensor_accounting (fake tensors)"
        totals.process_rss_peak_bytes = None  # this process's RSS says nothing about the model
        totals.steady_bytes = unique_nbytes(module_weight_tensors(model, recurse=True))
        totals.load_source = "estimate: weight bytes from the config's shapes; no load peak"
        result.inputs = {"source": inputs.source, "shape": list(inputs.input_ids.shape)}
        if result.training is not None:
            result.training["loss"] = None  # a fake loss has no value
        result.estimate = {
            "method": METHOD,
            "device_modelled": str(device),
            "tensor_parallel": self.tensor_parallel,
            "build_seconds": round(build_s, 3),
            "warmup_seconds": round(warm_s, 3),
            "pass_seconds": round(pass_s, 3),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        end = time.perf_counter() - self.t_start
        if self.phases and self.phases[-1].get("end") is None:
            self.phases[-1]["end"] = end
        result.layers = layers
        result.phases = self.phases
        result.duration_s = round(end, 3)
        _emit(self.listener, LayerStatsReady(tuple(layers), final=True))
        return result

    def _weights_by_owner(self, model, tracked):  # noqa: ANN001, ANN202 - the runner's signature
        # The runner's version calls model.named_parameters() once per parameter (quadratic:
        # 1.5 s of a 70B estimate's 3 s). Same code, with that list computed once.
        params = list(model.named_parameters())

        def named_parameters(*args: Any, **kwargs: Any) -> Any:
            if args or kwargs:
                return type(model).named_parameters(model, *args, **kwargs)
            return iter(params)

        model.__dict__["named_parameters"] = named_parameters
        try:
            return super()._weights_by_owner(model, tracked)
        finally:
            del model.__dict__["named_parameters"]

    def _build(self, device: torch.device) -> Any:
        """The model on fake tensors: config only, weight initialisation skipped (it would only
        fill values that fake tensors do not have), tied weights tied as in a real build."""
        from transformers.initialization import no_init_weights

        from .models import (
            LoadedModel,
            _first_line,
            _model_class,
            _quiet_transformers,
            _weights_dtype,
            architecture_config,
            auto_float32_note,
            resolve_dtype,
        )

        cfg = self.config
        arch = architecture_config(cfg)
        dtype = resolve_dtype(cfg.dtype, arch.dtype)
        note = auto_float32_note(cfg.dtype, arch.hf_config, dtype)  # before the build sets it
        auto_cls, is_causal = _model_class(arch.hf_config)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if cfg.attention_impl != "auto":
            kwargs["attn_implementation"] = cfg.attention_impl
        if arch.remote:
            kwargs["trust_remote_code"] = True
        t0 = time.perf_counter()
        try:
            with self.fake_mode, no_init_weights(), _quiet_transformers(), torch.device(device):
                model = auto_cls.from_config(arch.hf_config, **kwargs)
                model.tie_weights()
        except Cancelled:
            raise
        except Exception as exc:
            if _fake_tensor_error(exc, "build", cfg.model) is not None:
                raise
            text = _first_line(exc)
            if "attn_implementation" in str(exc) or "attention implementation" in str(exc).lower():
                raise MemLensError(
                    ErrorKind.NOT_APPLICABLE,
                    f"Attention implementation {cfg.attention_impl!r} does not work for "
                    f"{arch.name}: {text}",
                    "Choose --attention auto (or eager, which every model supports).") from exc
            raise MemLensError(
                ErrorKind.INVALID_MODEL,
                f"Could not build the architecture of {arch.name}: {text}",
                "Check the config values (sizes must divide evenly by the head counts).") from exc
        model.eval()
        return LoadedModel(
            model=model, tokenizer=None, name=arch.name, source=arch.source, path=arch.path,
            architecture=type(model).__name__,
            is_causal_lm=is_causal and bool(getattr(model, "can_generate", lambda: False)()),
            random_weights=False, dtype=_weights_dtype(model), device=str(device),
            load_seconds=time.perf_counter() - t0, warnings=[note] if note else [])
