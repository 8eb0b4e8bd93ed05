"""Per-module instrumentation: a memory pass (tensor accounting, saved tensors, KV, FLOPs) and a
timing pass (latency only, cheap). Hooks live only inside the context managers and are removed on
exit, also when the pass raises (cancel, out of memory)."""

from __future__ import annotations

import threading
import weakref
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from .accounting import TensorAccountant, leaves, remove_identical, storage_bytes, storage_key
from .errors import Cancelled
from .layers import TrackedModule, module_weight_tensors, owned_submodules, weight_owners
from .memtracker import distinct_outside_names

# Ops that do real arithmetic; when FlopCounterMode has no formula for one we say so.
_HEAVY_OP_WORDS = ("attention", "mm", "matmul", "conv", "linear", "einsum", "baddbmm", "addmm")


def cache_layer_tensors(cache: Any, index: int) -> list[torch.Tensor]:
    """The key/value tensors of layer ``index`` of a transformers 5 cache (``cache.layers[i]``)."""
    layers = getattr(cache, "layers", None)
    if layers is None or index >= len(layers):
        return []
    layer = layers[index]
    out = []
    for attr in ("keys", "values"):
        t = getattr(layer, attr, None)
        if isinstance(t, torch.Tensor):
            out.append(t)
    # Quantized caches keep the bulk in other attributes, some as (data, scale) tuples; count
    # every tensor the layer holds.
    for name, value in vars(layer).items():
        if name in ("keys", "values"):
            continue
        items = value if isinstance(value, (tuple, list)) else (value,)
        out.extend(v for v in items if isinstance(v, torch.Tensor))
    return out


def cache_bytes_per_layer(cache: Any) -> list[int]:
    """Bytes of each cache layer's tensors (distinct storages)."""
    layers = getattr(cache, "layers", None) or []
    result = []
    for i in range(len(layers)):
        seen: set[int] = set()
        total = 0
        # Quantized caches (optimum-quanto) hold wrapper subclasses: count their inner tensors.
        for t in (leaf for x in cache_layer_tensors(cache, i) for leaf in leaves(x)):
            key = storage_key(t)
            if key in seen:
                continue
            seen.add(key)
            total += t.untyped_storage().nbytes()
        result.append(total)
    return result


def _find_cache(kwargs: dict[str, Any]) -> Any:
    for key in ("cache", "past_key_values", "past_key_value", "layer_past"):
        value = kwargs.get(key)
        if value is not None and hasattr(value, "layers"):
            return value
    return None


def _output_bytes(output: Any) -> int:
    flat, _ = tree_flatten(output)
    seen: set[int] = set()
    total = 0
    for t in (leaf for x in flat if isinstance(x, torch.Tensor) for leaf in leaves(x)):
        if not t.is_meta:
            key = storage_key(t)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def _module_tracker() -> Any:
    """Which modules run in the backward, for attributing its allocations.

    ``torch.distributed._tools.mod_tracker.ModTracker``, not ``torch.utils.module_tracker``'s
    ``ModuleTracker``: under activation checkpointing the latter registers gradient hooks on the
    tensors of each block recomputed in the backward, which never fire and keep those tensors
    alive until Python's garbage collector runs (pytorch/pytorch#139214). On the demo model with
    checkpointing that kept up to 9.8 MB of recomputed activations alive that an uninstrumented
    step frees, and made the measured peak depend on when the collector ran.
    ``ModuleTracker`` remains the fallback where torch.distributed is not built. The FLOP
    counter's tracker is replaced the same way."""
    try:
        import torch.distributed._tools.mod_tracker as mod_tracker
    except ImportError:  # pragma: no cover - builds without torch.distributed
        from torch.utils.module_tracker import ModuleTracker

        return ModuleTracker()

    class Tracker(mod_tracker.ModTracker):
        """``ModTracker`` that removes the gradient hooks it registered when it exits. A forward
        that fails before its backward leaves a graph whose hooks (closures over the graph's own
        nodes) form a cycle through C++ that Python's collector cannot break: the graph, its
        saved tensors and, through their saved-tensor hooks, the model stayed alive
        (tests/test_runner.py). The pass has finished its backward by the time it exits.
        Modules outside the model get names of their own (``distinct_outside_names``)."""

        _get_mod_name = distinct_outside_names

        def __enter__(self) -> Any:
            self._grad_hooks: list[Any] = []
            self._register = mod_tracker.register_multi_grad_hook

            def register(*args: Any, **kwargs: Any) -> Any:
                handle = self._register(*args, **kwargs)
                self._grad_hooks.append(handle)
                return handle

            mod_tracker.register_multi_grad_hook = register
            return super().__enter__()

        def keyword_inputs(self, module: nn.Module, args: Any, kwargs: Any) -> None:
            """A module called with its tensors as keywords (transformers 5 calls attention
            as ``self_attn(hidden_states=...)``) gives ModTracker's global hook no input to
            hang the end of its backward on, so ModTracker keeps it among the parents until
            the whole backward ends: every later allocation of the backward (the embedding's
            gradient, the tied head's) was charged to whichever attention layer had the
            longest name. Its backward is ended where its keyword inputs get their gradients,
            as ModTracker does for positional ones. (Called from the module's own forward
            pre-hook, which sees keywords; uses ModTracker's helpers.)"""
            if self.is_bw:  # a checkpointed block recomputed in the backward: nothing to add
                return
            if not (hasattr(self, "_post_bw_callbacks_to_enqueue")
                    and hasattr(self, "_get_pop_fn")):
                return  # a torch whose ModTracker works otherwise: attribution as before
            if any(isinstance(a, torch.Tensor) and a.requires_grad
                   for a in tree_flatten(args)[0]):
                return  # ModTracker hooked these
            tensors = [v for v in tree_flatten(kwargs)[0]
                       if isinstance(v, torch.Tensor) and v.requires_grad]
            if not tensors:
                return
            name = self._get_mod_name(module)
            queued = self._post_bw_callbacks_to_enqueue
            for i in range(len(queued) - 1, -1, -1):  # ModTracker's end-of-backward pop
                cells = dict(zip(queued[i].__code__.co_freevars,
                                 (c.cell_contents for c in queued[i].__closure__ or ())))
                if cells.get("name") == name:
                    del queued[i]
                    break
            mod_tracker.register_multi_grad_hook(
                tensors, self._get_pop_fn(weakref.ref(module), name, True))

        def __exit__(self, *exc: Any) -> None:
            try:
                super().__exit__(*exc)
            finally:
                mod_tracker.register_multi_grad_hook = self._register
                for handle in self._grad_hooks:
                    handle.remove()
                self._grad_hooks = []

    return Tracker()


_NAMED_INPUTS = ("attention_mask", "position_ids", "cache_position")


class MemoryProbe:
    """The memory pass: counts every tensor by owner and category, and what each module keeps.

    Use as a context manager around one workload pass. Set :attr:`phase` to ``forward``,
    ``prefill``, ``decode``, ``backward`` or ``optimizer`` as the workload moves on.
    """

    def __init__(self, model: nn.Module, tracked: list[TrackedModule],
                 cancel: threading.Event | None = None, training: bool = False,
                 count_flops: bool = True, optimizer: torch.optim.Optimizer | None = None,
                 cuda_detailed: torch.device | None = None) -> None:
        self.model = model
        # CUDA "detailed" mode: read and reset the allocator's peak at every module boundary,
        # so each module's transient peak includes what only the allocator sees (workspaces).
        self.cuda_detailed = cuda_detailed
        self.cuda_transient: dict[str, int] = {}
        self.cuda_peak = 0
        self.cuda_reserved_peak = 0
        self._cuda_watches: list[list[int]] = []
        self.tracked = tracked
        self.by_module = {id(t.module): t for t in tracked}
        self.cancel = cancel
        self.training = training
        self.count_flops = count_flops
        self.optimizer = optimizer
        first = next(model.parameters(), None)
        self.acc = TensorAccountant(
            self._owner, self._category,
            only_device="cuda" if first is not None and first.device.type == "cuda" else None)
        self._stack: list[str] = []
        self._handles: list[Any] = []
        self._opaque: list[torch.Tensor] = []  # unpacked copies of packed weights (see __enter__)
        self.opaque_bytes = 0
        self._tracker: Any = None
        self._flops: Any = None
        self._forward_flops: dict[str, dict[Any, int]] | None = None
        self._saved_ctx: Any = None
        self._saved_seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._tracked_names = {t.name for t in tracked}
        # Rows that are not submodules of the model (the loss, layers.LossScope): module trackers
        # name such a module by its class, not by a path under the model's class name.
        inside = {id(m) for m in model.modules()}
        self._outside = {type(t.module).__name__: t.name for t in tracked
                         if id(t.module) not in inside}
        self.output_bytes: dict[str, int] = {}
        self.saved_bytes: dict[str, int] = {}
        self.transient: dict[str, int] = {}
        self.uncounted_flop_ops: dict[str, set[str]] = {}
        self.flops: dict[str, int] = {}
        self.total_flops: int | None = None
        self.param_owner: dict[int, str | None] = {}
        # parameters that got a gradient in the step (a trainable one the loss does not reach,
        # such as BERT's pooler under a synthetic loss, gets none)
        self.grads_seen: set[int] = set()
        owners = weight_owners(model, tracked)
        for pname, p in list(model.named_parameters()) + list(model.named_buffers()):
            self.param_owner[id(p)] = owners.get(pname)

    # -- owner and category of new storages --------------------------------------------------------
    @property
    def phase(self) -> str:
        return self.acc.phase

    @phase.setter
    def phase(self, value: str) -> None:
        if value == "backward" and self._flops is not None and self._forward_flops is None:
            # FlopCounterMode attributes backward FLOPs to modules unreliably (its module
            # tracker keeps parents set across the backward), so per-layer FLOPs are the
            # forward's; the total keeps every phase.
            self._forward_flops = {k: dict(v) for k, v in self._flops.get_flop_counts().items()}
        self.acc.phase = value
        self.acc.inherit_owner = value == "optimizer"
        self.acc.creation_category = "optimizer_state" if value == "optimizer" else None

    def _owner(self) -> str | None:
        if self.acc.phase == "backward" and self._tracker is not None:
            best = None
            for name in self._tracker.parents:
                fqn = name.split(".", 1)[1] if "." in name else self._outside.get(name)
                if fqn in self._tracked_names and (best is None or len(fqn) > len(best)):
                    best = fqn
            return best
        if self.acc.phase == "optimizer":
            return None
        return self._stack[-1] if self._stack else None

    def _category(self) -> str:
        phase = self.acc.phase
        if phase == "backward":
            return "temporaries"
        if phase == "optimizer":
            return "temporaries"
        return "activations"

    # -- hooks --------------------------------------------------------------------------------------
    def _pre(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()
        t = self.by_module[id(module)]
        if t.kind in ("block", "attention") and kwargs:
            # The model builds its attention mask (batch x seq x seq for eager attention: 128 MiB
            # at seq 8192 in bf16) and position ids outside every layer and hands them to each
            # one: named in the unattributed rest instead of being "untracked activations".
            for name in _NAMED_INPUTS:
                value = kwargs.get(name)
                if (isinstance(value, torch.Tensor)
                        and self.acc.owner_of(value) == (None, "activations")):
                    self.acc.reclassify(value, None, name)
        if self._tracker is not None and hasattr(self._tracker, "keyword_inputs"):
            self._tracker.keyword_inputs(module, args, kwargs)
        self._stack.append(t.name)
        module._memlens_watch = self.acc.watch()  # type: ignore[attr-defined]
        if self.cuda_detailed is not None:
            self._cuda_boundary()
            now = torch.cuda.memory_allocated(self.cuda_detailed)
            w = [now, now]
            self._cuda_watches.append(w)
            module._memlens_cuda_watch = w  # type: ignore[attr-defined]

    def _post(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        t = self.by_module[id(module)]
        if self._stack and self._stack[-1] == t.name:
            self._stack.pop()
        watch = getattr(module, "_memlens_watch", None)
        if watch is not None:
            rise = self.acc.unwatch(watch)
            self.transient[t.name] = max(self.transient.get(t.name, 0), rise)
            del module._memlens_watch
        cw = getattr(module, "_memlens_cuda_watch", None)
        if cw is not None:
            self._cuda_boundary()
            remove_identical(self._cuda_watches, cw)
            self.cuda_transient[t.name] = max(self.cuda_transient.get(t.name, 0), cw[1] - cw[0])
            del module._memlens_cuda_watch
        self.output_bytes[t.name] = max(self.output_bytes.get(t.name, 0), _output_bytes(output))
        if t.kind == "attention":
            cache = _find_cache(kwargs)
            if cache is not None:
                idx = getattr(module, "layer_idx", None)
                idx = t.layer_index if idx is None else idx
                for kv in cache_layer_tensors(cache, idx):
                    self.acc.reclassify(kv, t.name, "kv_cache")

    def _cuda_boundary(self) -> None:
        dev = self.cuda_detailed
        peak = torch.cuda.max_memory_allocated(dev)
        self.cuda_peak = max(self.cuda_peak, peak)
        self.cuda_reserved_peak = max(self.cuda_reserved_peak, torch.cuda.max_memory_reserved(dev))
        for w in self._cuda_watches:
            if peak > w[1]:
                w[1] = peak
        torch.cuda.reset_peak_memory_stats(dev)

    def finish_cuda(self) -> tuple[int, int]:
        """Detailed mode: the pass's allocator peak and reserved peak across all resets."""
        self._cuda_boundary()
        return self.cuda_peak, self.cuda_reserved_peak

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        # Only the forward's saves count: checkpointed blocks save again while recomputing in
        # the backward, and those are transient, not what the forward keeps.
        if self.acc.phase != "forward" or not isinstance(tensor, torch.Tensor) or tensor.is_meta:
            return tensor
        owner = self._stack[-1] if self._stack else None
        for leaf in leaves(tensor):
            st = leaf.untyped_storage()
            if st in self._saved_seen:
                continue
            self._saved_seen[st] = True
            known = self.acc.owner_of(leaf)
            if known is None or known[1] != "weights":
                self.saved_bytes[owner] = (self.saved_bytes.get(owner, 0)
                                           + storage_bytes(st, leaf.device.type))
        if is_traceable_wrapper_subclass(tensor):
            return tensor
        # Keep the data, not the autograd history: a saved *output* returned as-is makes a
        # cycle (node -> packed tensor -> node) that lives in C++ where Python's GC cannot see
        # it, so a forward that fails before backward would leak its whole graph.
        return tensor.detach()

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def _grad_hook(self, param: torch.Tensor) -> None:
        if param.grad is not None:
            self.acc.reclassify(param.grad, self.param_owner.get(id(param)), "gradients")
            self.grads_seen.add(id(param))

    # -- context ------------------------------------------------------------------------------------
    def __enter__(self) -> MemoryProbe:
        acc = self.acc
        tracked_names = {t.name for t in self.tracked}
        for t in self.tracked:
            for w in module_weight_tensors(t.module):
                acc.track(w, t.name, "weights")
            # Packed weights of quantized modules (quantize_dynamic's fbgemm params) are not
            # tensors the dispatch mode can see: their unpacked copies are kept alive for the
            # pass so their bytes count as the owner's weights at the peak, not vanish.
            for sub in owned_submodules(t, tracked_names):
                packed = getattr(sub, "_packed_params", None)
                if packed is None or not hasattr(packed, "_weight_bias"):
                    continue
                try:
                    unpacked = [w for w in packed._weight_bias() if isinstance(w, torch.Tensor)]
                except Exception:  # noqa: BLE001 - an unknown packing stays uncounted
                    continue
                for w in unpacked:
                    self._opaque.append(w)
                    self.opaque_bytes += w.numel() * w.element_size()
                    acc.track(w, t.name, "weights")
        for pname, p in list(self.model.named_parameters()) + list(self.model.named_buffers()):
            acc.track(p, self.param_owner.get(id(p)), "weights")
            if self.training and isinstance(p, nn.Parameter) and p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._grad_hook))
        if self.optimizer is not None:
            self.track_optimizer_state()
        for t in self.tracked:
            self._handles.append(t.module.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(t.module.register_forward_hook(
                self._post, with_kwargs=True, always_call=True))
        if self.training:
            self._tracker = _module_tracker().__enter__()
            self._saved_ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            self._saved_ctx.__enter__()
        if self.count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            from .flops import custom_mapping

            self._flops = FlopCounterMode(display=False, depth=None,
                                          custom_mapping=custom_mapping(self._flop_failed))
            # Its own ModuleTracker has the same leak under checkpointing (see _module_tracker).
            self._flops.mod_tracker = _module_tracker()
            self._flops.__enter__()
        acc.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        # Every step runs even if an earlier one raises: a hook left registered (a global
        # saved-tensors hook, a module tracker) would leak the model and skew later runs.
        failed = exc[0] is not None
        steps = [lambda: self.acc.__exit__(*exc)]
        if self._flops is not None:
            steps.append(lambda: self._flops.__exit__(*exc))
            if not failed:
                steps.append(self._collect_flops)
        if self._saved_ctx is not None:
            steps.append(lambda: self._saved_ctx.__exit__(*exc))
        if self._tracker is not None:
            steps.append(lambda: self._tracker.__exit__(*exc))
        steps.append(self._remove_hooks)
        first: BaseException | None = None
        for step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - finish cleaning up, then report the first
                first = first or e
        self._flops = self._saved_ctx = self._tracker = None
        if first is not None and not failed:
            raise first

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._opaque.clear()
        for t in self.tracked:
            for attr in ("_memlens_watch", "_memlens_cuda_watch"):
                if hasattr(t.module, attr):
                    delattr(t.module, attr)

    def track_input(self, tensor: torch.Tensor) -> None:
        self.acc.track(tensor, None, "inputs")

    def track_optimizer_state(self) -> None:
        """Charge optimizer state tensors to the module that owns each parameter."""
        if self.optimizer is None:
            return
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                for value in self.optimizer.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor):
                        self.acc.reclassify(value, self.param_owner.get(id(p)), "optimizer_state")

    def _flop_failed(self, op: str) -> None:
        owner = self._owner() or ""
        self.uncounted_flop_ops.setdefault(owner, set()).add(f"{op} (formula failed)")

    def _collect_flops(self) -> None:
        counts = self._flops.get_flop_counts()
        root = type(self.model).__name__
        for name, per_op in (self._forward_flops or counts).items():
            fqn = (name[len(root) + 1:] if name.startswith(root + ".")
                   else self._outside.get(name))
            if fqn in self._tracked_names:
                self.flops[fqn] = int(sum(per_op.values()))
        if root in counts:
            self.total_flops = int(sum(counts[root].values()))
        elif "Global" in counts:
            self.total_flops = int(sum(counts["Global"].values()))
        else:
            self.total_flops = 0
        from .flops import counted_ops

        counted = counted_ops()
        for packet, owners in self.acc.ops_seen.items():
            name = str(packet)
            if packet in counted:
                continue
            if any(word in name for word in _HEAVY_OP_WORDS):
                for owner in owners:
                    self.uncounted_flop_ops.setdefault(owner or "", set()).add(name)

    # -- results --------------------------------------------------------------------------------------
    def at_peak(self) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        """Bytes live at the peak: per owner and category, and the unowned rest by category."""
        per_owner: dict[str, dict[str, int]] = {}
        unowned: dict[str, int] = {}
        for (owner, category), n in self.acc.peak_breakdown.items():
            if not n:
                continue
            if owner is None:
                unowned[category] = unowned.get(category, 0) + n
            else:
                d = per_owner.setdefault(owner, {})
                d[category] = d.get(category, 0) + n
        return per_owner, unowned


_in_backward = torch._C._current_graph_task_id


class TimingProbe:
    """The timing pass: inclusive wall time per tracked module (CUDA events on GPU, no sync)."""

    def __init__(self, tracked: list[TrackedModule], device: torch.device,
                 cancel: threading.Event | None = None) -> None:
        self.tracked = tracked
        self.names = {id(t.module): t.name for t in tracked}
        self.cancel = cancel
        self.cuda = device.type == "cuda"
        self._handles: list[Any] = []
        self._spans: list[tuple[str, Any, Any]] = []
        self._open = {id(t.module): [] for t in tracked}
        self._cancel_set = cancel.is_set if cancel is not None else (lambda: False)
        self._pool: list[Any] = []
        self._stream: Any = None
        if self.cuda:
            self._pool = [self._new_event() for _ in range(4 * len(tracked))]
            self._stream = torch.cuda.current_stream(device)

    # The hooks sit on the launch path of a forward that is often CPU-bound on a fast GPU, so
    # they do as little as possible: events are created ahead of time (creating one costs more
    # than recording it), the stream is looked up once, and CPU and CUDA get separate hooks.
    def _new_event(self) -> Any:
        return torch.cuda.Event(enable_timing=True)

    # A forward that runs inside the backward is activation checkpointing's recomputation: it
    # is not timed, so that a row is its forward's time in every workload (the recomputed
    # attention and MLP rows of a checkpointed block came to more than the block itself).
    # torch._C._current_graph_task_id() is -1 outside a backward.

    def _pre_cuda(self, module: nn.Module, args: Any) -> None:
        if self._cancel_set():
            raise Cancelled()
        if _in_backward() != -1:
            return
        ev = self._pool.pop() if self._pool else self._new_event()
        ev.record(self._stream)
        self._open[id(module)].append(ev)

    def _post_cuda(self, module: nn.Module, args: Any, output: Any) -> None:
        stack = self._open[id(module)]
        if stack:
            end = self._pool.pop() if self._pool else self._new_event()
            end.record(self._stream)
            self._spans.append((self.names[id(module)], stack.pop(), end))

    def _pre(self, module: nn.Module, args: Any) -> None:
        if self._cancel_set():
            raise Cancelled()
        if _in_backward() != -1:
            return
        self._open[id(module)].append(time.perf_counter_ns())

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        stack = self._open[id(module)]
        if stack:
            self._spans.append((self.names[id(module)], stack.pop(), time.perf_counter_ns()))

    def __enter__(self) -> TimingProbe:
        pre, post = (self._pre_cuda, self._post_cuda) if self.cuda else (self._pre, self._post)
        for t in self.tracked:
            self._handles.append(t.module.register_forward_pre_hook(pre))
            self._handles.append(t.module.register_forward_hook(post, always_call=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def totals_ms(self) -> dict[str, float]:
        """Inclusive milliseconds per module, summed over its calls in this pass."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for name, start, end in self._spans:
            ms = start.elapsed_time(end) if self.cuda else (end - start) / 1e6
            out[name] = out.get(name, 0.0) + ms
        return out

    def spans(self) -> Iterable[tuple[str, float, float]]:
        """(name, start_ms, end_ms) relative to the first span (CPU clock or CUDA events)."""
        if not self._spans:
            return []
        if self.cuda:
            torch.cuda.synchronize()
            first = self._spans[0][1]
            return [(n, first.elapsed_time(s), first.elapsed_time(e)) for n, s, e in self._spans]
        t0 = min(s for _, s, _ in self._spans)
        return [(n, (s - t0) / 1e6, (e - t0) / 1e6) for n, s, e in self._spans]
