"""Tensor accounting: every storage created while the mode is active is counted until it is freed.

This is MemLens' CPU source of truth for the peak (CUDA uses the caching allocator's own counters)
and, on every device, the source of *attribution*: each storage is tagged with the tracked module
that was running when it was created (its owner) and a category, so the bytes live at the peak can
be split per layer and per category.

Why not PyTorch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``)? It counts storages
the same way but keeps only per-category totals at the global peak and per-module snapshots taken
at each module's own peak; it does not record which module created a storage, so it cannot say
which layer holds the bytes at the global peak. MemLens keeps MemTracker as an independent
cross-check of the peak (see ``engine.memtracker`` and its pinned test).

Known limitations (also shown in each run's ``limitations``):
* memory allocated and freed inside one kernel (workspace, im2col buffers) never becomes a tensor
  and is not seen on the CPU; on CUDA the allocator's peak includes it and the difference is
  reported as unattributed;
* storages resized in place through ``UntypedStorage.resize_`` keep the size they were created with;
* tensors created under ``no_dispatch`` or by C++ extensions outside the dispatcher are invisible.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

_CUDA_BLOCK = 512
_CREATION_OPS = ("zeros_like", "empty_like", "ones_like", "full_like", "zeros", "empty", "full",
                 "scalar_tensor", "lift_fresh", "clone")  # the caching allocator rounds every block up to 512 bytes


def leaves(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors that hold a tensor's data.

    Tensor subclasses that wrap others (torchao's quantized weights, for instance) report a
    storage of the outer dtype and shape that holds nothing; their real bytes are in the inner
    tensors named by ``__tensor_flatten__``.
    """
    if is_traceable_wrapper_subclass(t):
        attrs, _ = t.__tensor_flatten__()
        out: list[torch.Tensor] = []
        for name in attrs:
            inner = getattr(t, name)
            if isinstance(inner, torch.Tensor):
                out.extend(leaves(inner))
        return out
    return [t]


def is_fake(t: torch.Tensor) -> bool:
    """True for a ``FakeTensorMode`` tensor (estimation): shape, dtype and storage size, no data."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def storage_key(t: torch.Tensor) -> int:
    """An id for the storage behind ``t``, equal for views of one storage.

    Real tensors use the data pointer (so two storage objects over the same memory count once);
    fake tensors have no data, and asking for their pointer is deprecated, so they use the
    storage's own identity.
    """
    st = t.untyped_storage()
    if is_fake(t):
        return st._cdata
    return st.data_ptr() or st._cdata


def storage_bytes(storage: torch.UntypedStorage, device_type: str) -> int:
    n = storage.nbytes()
    if device_type == "cuda" and n:
        n = -(-n // _CUDA_BLOCK) * _CUDA_BLOCK
    return n


class _Info:
    __slots__ = ("nbytes", "owner", "category")

    def __init__(self, nbytes: int, owner: str | None, category: str) -> None:
        self.nbytes = nbytes
        self.owner = owner
        self.category = category


def remove_identical(items: list[Any], item: Any) -> bool:
    """Remove ``item`` itself (not an equal one) from ``items``, the latest first; whether it was
    there. Watchers are ``[entry, high]`` lists: a block and the first module it calls start at
    the same total, so ``list.remove``, which compares values, took the block's for the child's
    (BERT's blocks then showed a transient peak of 0 B below children of 32 KiB)."""
    for i in range(len(items) - 1, -1, -1):
        if items[i] is item:
            del items[i]
            return True
    return False


class TensorAccountant(TorchDispatchMode):
    """Counts live tensor storages by (owner, category) and records the breakdown at the peak.

    ``owner_fn()`` returns the fully qualified name of the module to charge a new storage to (or
    ``None`` for unattributed); ``category_fn()`` returns its category. Tensors that existed before
    the mode started (weights, inputs, optimizer state) are added with :meth:`track`.
    """

    def __init__(self, owner_fn: Callable[[], str | None] = lambda: None,
                 category_fn: Callable[[], str] = lambda: "activations",
                 only_device: str | None = None) -> None:
        super().__init__()
        # On a GPU run only that device's storages are the run's memory: what a workload keeps
        # in CPU memory (an offloaded KV cache, pinned staging copies) is not counted with it.
        self.only_device = only_device
        self.owner_fn = owner_fn
        self.category_fn = category_fn
        self.live: dict[tuple[str | None, str], int] = {}
        self.total = 0
        self.peak = 0
        self.peak_breakdown: dict[tuple[str | None, str], int] = {}
        self.phase = ""
        self.phase_peaks: dict[str, int] = {}
        self.ops_seen: dict[Any, set[str | None]] = {}
        # Optimizer phase: new storages are charged to the owner of an input tensor, and those
        # made by creation ops (state initialisation: zeros_like(param)) get this category.
        self.inherit_owner = False
        self.creation_category: str | None = None
        self._info: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._watchers: list[list[int]] = []  # [entry_total, max_total] per active module

    # -- bookkeeping ---------------------------------------------------------------------------
    def _add(self, key: tuple[str | None, str], n: int) -> None:
        self.live[key] = self.live.get(key, 0) + n
        self.total += n
        total = self.total
        if total > self.peak:
            self.peak = total
            self.peak_breakdown = dict(self.live)
        if self.phase and total > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = total
        for w in self._watchers:
            if total > w[1]:
                w[1] = total

    def _freed(self, info: _Info, _ref: Any = None) -> None:
        key = (info.owner, info.category)
        left = self.live.get(key, 0) - info.nbytes
        if left:
            self.live[key] = left
        else:
            self.live.pop(key, None)
        self.total -= info.nbytes

    def _register(self, st: torch.UntypedStorage, device_type: str, owner: str | None,
                  category: str) -> _Info | None:
        if self.only_device is not None and device_type != self.only_device:
            return None
        found = self._info.get(st)
        if found is not None:
            return found[0]
        n = storage_bytes(st, device_type)
        info = _Info(n, owner, category)
        ref = weakref.ref(st, lambda r, info=info: self._freed(info, r))
        self._info[st] = (info, ref)
        if n:
            self._add((owner, category), n)
        return None

    def track(self, tensor: torch.Tensor, owner: str | None, category: str) -> None:
        """Count an existing tensor (once per storage) under ``owner``/``category``."""
        if not isinstance(tensor, torch.Tensor):
            return
        for leaf in leaves(tensor):
            if leaf.is_meta:
                continue
            info = self._register(leaf.untyped_storage(), leaf.device.type, owner, category)
            if info is not None:
                self.reclassify_info(info, owner, category)

    def reclassify(self, tensor: torch.Tensor, owner: str | None, category: str) -> None:
        """Move an already counted tensor's storage to another owner/category (or count it)."""
        self.track(tensor, owner, category)

    def reclassify_info(self, info: _Info, owner: str | None, category: str) -> None:
        if info.owner == owner and info.category == category:
            return
        old = (info.owner, info.category)
        left = self.live.get(old, 0) - info.nbytes
        if left:
            self.live[old] = left
        else:
            self.live.pop(old, None)
        info.owner, info.category = owner, category
        new = (owner, category)
        self.live[new] = self.live.get(new, 0) + info.nbytes

    def owner_of(self, tensor: torch.Tensor) -> tuple[str | None, str] | None:
        for leaf in leaves(tensor):
            found = self._info.get(leaf.untyped_storage())
            if found:
                return found[0].owner, found[0].category
        return None

    def watch(self) -> list[int]:
        """Start watching the high-water mark (for a module's transient peak)."""
        w = [self.total, self.total]
        self._watchers.append(w)
        return w

    def unwatch(self, w: list[int]) -> int:
        """Stop watching; returns the highest live bytes seen minus the live bytes at entry."""
        if not remove_identical(self._watchers, w):
            return 0
        return w[1] - w[0]

    def reset_peak(self) -> None:
        self.peak = self.total
        self.peak_breakdown = dict(self.live)
        self.phase_peaks.clear()

    def note_op(self, packet: Any) -> str | None:
        """Record ``packet`` as run by the current owner, and return that owner (also for an
        operator a stand-in replaced without dispatching it, so the FLOP check sees it)."""
        owner = self.owner_fn()
        seen = self.ops_seen.get(packet)
        if seen is None:
            self.ops_seen[packet] = {owner}
        elif owner not in seen:
            seen.add(owner)
        return owner

    # -- the dispatch hook ------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        out = func(*args, **(kwargs or {}))
        packet = func._overloadpacket
        owner = self.note_op(packet)
        category = None
        flat, _ = tree_flatten(out)
        for t in (leaf for x in flat if isinstance(x, torch.Tensor) for leaf in leaves(x)):
            if t.is_meta:
                continue
            st = t.untyped_storage()
            if st in self._info:
                continue
            if category is None:
                category = self.category_fn()
                if self.inherit_owner:
                    owner = self._input_owner(args, kwargs) or owner
                    if self.creation_category and str(packet).endswith(_CREATION_OPS):
                        category = self.creation_category
            self._register(st, t.device.type, owner, category)
        return out

    def _input_owner(self, args: Any, kwargs: Any) -> str | None:
        flat, _ = tree_flatten((args, kwargs))
        for t in (leaf for x in flat if isinstance(x, torch.Tensor) for leaf in leaves(x)):
            if not t.is_meta:
                found = self._info.get(t.untyped_storage())
                if found is not None and found[0].owner is not None:
                    return found[0].owner
        return None
