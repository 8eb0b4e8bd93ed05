"""Measured FSDP2 training across processes (issue 6): one training step per rank, MemLens' own
tensor accounting on every rank, every rank's figures gathered into one record by rank 0.

Launched by PyTorch's own launcher, not a home-made one::

    torchrun --nproc-per-node 2 -m engine.distributed_run --model preset:tiny-llama \\
        --seq 32 --batch 1 --out DIR

Each rank (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from torchrun) joins the default process group
(``gloo`` on CPU, ``nccl`` on CUDA with device ``cuda:LOCAL_RANK``), builds the model as a measured
run does (``engine.models.load_model``, same seed on every rank), applies the run's optimizations
(those a plan takes: LoRA, a frozen base, pruning, checkpointing, autocast...; LoRA's adapters are
then sharded with the rest), applies ``torch.distributed.fsdp.fully_shard`` to every decoder block
and then to the root (the recipe of ``engine.distributed.plan_training``: with ``--master-dtype``
the model is loaded in that dtype and a ``MixedPrecisionPolicy`` all-gathers in the run's dtype
and reduces gradients in the master dtype; FSDP2's defaults otherwise), runs
one unmeasured step (it creates the optimizer state and FSDP2's all-gather buffers, as every step
after the first finds them) and then one step of MemLens' training workload
(``engine.workloads.train_step``) inside ``engine.instrument.MemoryProbe``.

What the accounting sees under FSDP2, and what this module adds to it:

* **sharded parameters** are ``DTensor`` s; ``engine.accounting.leaves`` already counts a wrapper
  subclass by its inner tensors (``DTensor.__tensor_flatten__`` names ``_local_tensor``), so each
  rank counts its local shard, whose storage is FSDP2's padded chunk. Buffers (replicated) are
  moved to their own category, ``buffers``.
* **unsharded parameters**: FSDP2 keeps each parameter's all-gather output storage for the whole
  run and frees / re-allocates it with ``UntypedStorage.resize_``, which ``TorchDispatchMode``
  does not see (``engine.accounting`` names that limitation). During the measured step
  ``UntypedStorage.resize_`` is wrapped, as PyTorch's own ``MemTracker`` does (``_track_resize``),
  and every resize of a storage changes its counted bytes; a storage that grows from nothing is
  counted as ``unsharded_params`` of the module running.
* **FSDP2's own buffers and gradients** (:func:`_fsdp_categories`): like PyTorch's
  ``FSDPMemTracker``, each FSDP module's parameter group (private attributes) has its
  ``unshard`` / ``wait_for_unshard`` / ``post_backward`` wrapped for the measured step: the flat
  all-gather buffers are ``unsharded_params``; at ``post_backward`` the group's unsharded gradients
  and the reduce-scatter buffers are ``gradient_reduction``; after it the sharded gradients it
  assigned (no gradient accumulation hook fires on a sharded parameter) are ``gradients``.
* everything else is the probe's own categories: ``activations`` (forward), ``temporaries``
  (backward and optimizer step: activation gradients, the optimizer's scratch),
  ``optimizer_state``, ``inputs``, ``kv_cache``.

Per rank: the peak of the tensor accounting and its parts at the peak (attributed to modules +
unattributed = peak), on CUDA also ``torch.cuda.max_memory_allocated`` over the step, and the
per-rank total of ``plan_training`` for the same config (an upper bound by construction: each
part at its own maximum). Rank 0 gathers the rows with ``dist.gather_object`` and writes one
:class:`DistributedRun` (JSON) with the run store's atomic writer.

Run-to-run variation: on CPU/gloo the moment of the peak, and so its size, can change from run to
run and from rank to rank. On ``preset:tiny-llama`` (seq 32, batch 1, 2 ranks) the peak was
1,508,892 B on most runs, and 1,574,684 B or 1,656,604 B on some, on either rank: the larger ones
have the prefetched block's flat all-gather buffer still alive beside the per-parameter copies
made from it (and, for the largest, the last block's gradients being reduce-scattered).
Communication buffers are released when the process group's own threads drop them, which this
accounting sees as it happens. All stayed under the plan's bound (2,346,780 B), and each part
measured at the peak under the plan's figure for that part.

CUDA/nccl is written (device ``cuda:LOCAL_RANK``, ``max_memory_allocated``) but was not run on a
GPU when this module was written; CPU/gloo is what the tests run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import gc
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig

DISTRIBUTED_RUN_SCHEMA_VERSION = 1


@dataclass
class RankRow:
    """One rank's measured step."""

    rank: int
    world_size: int
    device: str
    peak_bytes: int  # tensor accounting's peak over the measured step
    parts: dict[str, int] = field(default_factory=dict)  # by category, live at the peak
    by_owner: dict[str, dict[str, int]] = field(default_factory=dict)  # module -> category
    attributed_bytes: int = 0  # charged to a tracked module at the peak
    unattributed_bytes: int = 0  # the rest (attributed + unattributed == peak)
    phase_peaks: dict[str, int] = field(default_factory=dict)
    model_parameters: int = 0  # elements, before sharding (shared parameters once)
    trainable_parameters: int = 0  # elements with requires_grad (after the optimizations)
    model_params_bytes: int = 0  # the model's parameters before sharding (shared ones once)
    sharded_params_bytes: int = 0  # this rank's local shards' storages (padded), params only
    buffers_bytes: int = 0
    optimizer_state_bytes: int = 0  # after the step
    gradients_bytes: int = 0  # after backward (sharded, padded storages)
    cuda_max_allocated_bytes: int | None = None  # CUDA: allocator peak over the step
    as_plan_parts: dict[str, int] = field(default_factory=dict)  # parts under the plan's names
    plan_bound_bytes: int | None = None  # plan_training's per-rank total for this rank
    plan_parts: dict[str, int] = field(default_factory=dict)
    over_plan_parts: dict[str, int] = field(default_factory=dict)  # measured part - plan's, > 0
    loss: float | None = None
    step_ms: float = 0.0
    applied: list[dict[str, Any]] = field(default_factory=list)  # the optimizations' records


@dataclass
class DistributedRun:
    """Every rank's figures of one measured FSDP2 training step, gathered by rank 0."""

    run_id: str
    created: str
    config: dict[str, Any]
    world_size: int
    backend: str
    recipe: str
    master_dtype: str | None = None  # FSDP2 mixed precision: sharded parameters' dtype (None: off)
    replicas: int = 1  # HSDP: groups of world_size / replicas ranks (1: plain FSDP2)
    optimizations: list[dict[str, Any]] = field(default_factory=list)  # as applied on rank 0
    model_parameters: int = 0  # before sharding, shared parameters once (measured model)
    model_params_bytes: int = 0  # every parameter, unsharded (measured model)
    plan_model_params_bytes: int | None = None  # the same as plan_training counted it
    ranks: list[RankRow] = field(default_factory=list)
    plan_total_bytes: int | None = None  # rank 0's (the largest) per-rank plan total
    within_plan: bool | None = None  # every rank's measured peak <= its plan bound
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    kind: str = "distributed_run"
    figures: str = "measured"
    schema_version: int = DISTRIBUTED_RUN_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistributedRun:
        from .records import check_record

        check_record(data, "distributed_run", DISTRIBUTED_RUN_SCHEMA_VERSION)
        data = dict(data)
        row_names = {f.name for f in dataclasses.fields(RankRow)}
        data["ranks"] = [RankRow(**{k: v for k, v in r.items() if k in row_names})
                         for r in data.get("ranks", [])]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# The accounting's categories -> plan_training's parts (engine.distributed.TRAIN_PARTS).
PLAN_PART_OF = {"weights": "sharded_params", "buffers": "buffers",
                "gradients": "sharded_gradients", "optimizer_state": "optimizer_state",
                "unsharded_params": "unsharded_params", "gradient_reduction": "gradient_reduction"}


def as_plan_parts(parts: dict[str, int]) -> dict[str, int]:
    """Measured parts under the plan's part names (activations, temporaries, inputs and KV cache
    are the plan's ``activations``)."""
    out = {k: 0 for k in ("sharded_params", "buffers", "sharded_gradients", "optimizer_state",
                          "unsharded_params", "gradient_reduction", "activations")}
    for cat, n in parts.items():
        key = PLAN_PART_OF.get(cat, "activations")
        out[key] += n
    return out


RECIPE = ("the optimizations applied first (LoRA's adapters are sharded with the rest); "
          "torch.distributed.fsdp.fully_shard on every decoder block, then on the root; one "
          "mesh of all ranks; a mixed-precision policy only with a master dtype (loaded in it, "
          "all-gathered in the run's dtype, gradients reduced in it); FSDP2 defaults (reshard "
          "after forward, one block prefetched); AdamW (MemLens' training workload)")


# -- accounting of storages FSDP2 resizes ----------------------------------------------------------
def _all_gather_owners(groups: list[tuple[str, Any]], probe: Any) -> Any:
    """FSDP2's per-parameter all-gather output storages -> the tracked module owning the
    parameter (private FSDP2 attributes, best effort: empty when they move)."""
    from torch.utils.weak import WeakIdKeyDictionary

    owners: Any = WeakIdKeyDictionary()
    for _, module in groups:
        try:
            group = module._get_fsdp_state()._fsdp_param_group
            for fp in (group.fsdp_params if group is not None else []):
                owner = probe.param_owner.get(id(fp.sharded_param))
                for t in fp.all_gather_outputs:
                    owners[t.untyped_storage()] = owner
        except Exception:  # noqa: BLE001 - attribution only
            continue
    return owners


@contextlib.contextmanager
def _track_resize(probe: Any, owners: Any = None) -> Iterator[None]:
    """Count ``UntypedStorage.resize_`` (not seen by dispatch modes) in ``probe``'s accountant;
    a storage growing from nothing is charged to ``owners[storage]`` if known, else to the module
    running."""
    import torch

    from .accounting import _Info, storage_bytes

    acc = probe.acc
    orig = torch.UntypedStorage.resize_

    def resize_(st: Any, size: int) -> Any:
        out = orig(st, size)
        try:
            dev = st.device.type
            found = acc._info.get(st)
            new = storage_bytes(st, dev)
            if found is None:
                if new:
                    owner = owners.get(st, probe._owner()) if owners is not None else \
                        probe._owner()
                    acc._register(st, dev, owner, "unsharded_params")
                return out
            info: _Info = found[0]
            delta = new - info.nbytes
            if delta:
                info.nbytes = new
                key = (info.owner, info.category)
                if delta > 0:
                    acc._add(key, delta)
                else:
                    left = acc.live.get(key, 0) + delta
                    if left:
                        acc.live[key] = left
                    else:
                        acc.live.pop(key, None)
                    acc.total += delta
        except Exception:  # noqa: BLE001 - accounting must never break the step
            pass
        return out

    torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.UntypedStorage.resize_ = orig  # type: ignore[method-assign]


@contextlib.contextmanager
def _fsdp_categories(probe: Any, groups: list[tuple[str, Any]]) -> Iterator[None]:
    """Name FSDP2's own memory while the step runs, as PyTorch's ``FSDPMemTracker`` does (it
    wraps the same ``FSDPParamGroup`` methods of each module's group, private attributes):

    * storages made inside a group's ``unshard`` / ``wait_for_unshard`` (the flat all-gather
      buffers) are ``unsharded_params`` of the group;
    * at a group's ``post_backward`` its unsharded gradients, and the storages made inside it
      (the reduce-scatter input, kept alive across layers by FSDP2), are
      ``gradient_reduction``; after it, the sharded gradients it assigned are ``gradients``.

    Best effort: if the attributes are not there, the probe's own categories stay
    (``temporaries``, ``activations``)."""
    acc = probe.acc
    current: list[tuple[str | None, str]] = []
    base_owner, base_category = acc.owner_fn, acc.category_fn
    acc.owner_fn = lambda: current[-1][0] if current else base_owner()
    acc.category_fn = lambda: current[-1][1] if current else base_category()
    patched: list[tuple[Any, str]] = []

    def wrap(group: Any, name: str, owner: str | None, category: str,
             before: Any = None, after: Any = None) -> None:
        orig = getattr(group, name)

        def inner(*args: Any, **kwargs: Any) -> Any:
            if before is not None:
                before()
            current.append((owner, category))
            try:
                return orig(*args, **kwargs)
            finally:
                current.pop()
                if after is not None:
                    after()

        setattr(group, name, inner)
        patched.append((group, name))

    def grads(group: Any, which: str, category: str) -> Any:
        def move() -> None:
            for fp in group.fsdp_params:
                if which == "unsharded":
                    p = getattr(fp, "_unsharded_param", None)
                else:
                    p = fp.sharded_param
                g = getattr(p, "grad", None)
                if g is not None:
                    acc.reclassify(g, probe.param_owner.get(id(fp.sharded_param)), category)
        return move

    try:
        for name, module in groups:
            try:
                group = module._get_fsdp_state()._fsdp_param_group
                if group is None or not hasattr(group, "fsdp_params"):
                    continue
                owner = None if name == "(root)" else name
                wrap(group, "unshard", owner, "unsharded_params")
                wrap(group, "wait_for_unshard", owner, "unsharded_params")
                wrap(group, "post_backward", owner, "gradient_reduction",
                     grads(group, "unsharded", "gradient_reduction"),
                     grads(group, "sharded", "gradients"))
            except Exception:  # noqa: BLE001 - naming only
                continue
        yield
    finally:
        for group, name in patched:
            with contextlib.suppress(AttributeError):
                delattr(group, name)
        acc.owner_fn, acc.category_fn = base_owner, base_category


# -- one rank --------------------------------------------------------------------------------------
def _shard(model: Any, mesh: Any, mp_policy: Any = None) -> list[tuple[str, Any]]:
    """fully_shard on every block, then the root; returns (name, FSDP module) pairs."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from .layers import _blocks

    mp_policy = mp_policy or MixedPrecisionPolicy()
    found = _blocks(model)
    groups: list[tuple[str, Any]] = []
    if found:
        prefix, blocks = found
        for name, block in blocks.named_children():
            fully_shard(block, mesh=mesh, mp_policy=mp_policy)
            groups.append((f"{prefix}.{name}", block))
    fully_shard(model, mesh=mesh, mp_policy=mp_policy)
    groups.append(("(root)", model))
    return groups


def _optimize(model: Any, config: RunConfig, device: Any) -> tuple[list[dict[str, Any]], Any]:
    """The optimizations of ``config`` applied before sharding (LoRA's adapters are sharded
    with the rest), by the registry's own code; the ones a plan takes (its comparison must
    hold), others refused with the reason. Returns (what was applied, the run hooks)."""
    import threading

    from .distributed import _check_optimizations
    from .optimizations import RunHooks, apply_all, resolve

    if not config.optimizations:
        return [], RunHooks()
    _check_optimizations(config)
    chosen = resolve(config.optimizations, "train", str(device))
    applied, hooks = apply_all(model, chosen, device, threading.Event(), lambda f, m: None)
    return [a.to_dict() for a in applied], hooks


def run_rank(config: RunConfig, rank: int, world_size: int, device: Any = None,
             master_dtype: str | None = None, replicas: int = 1) -> RankRow:
    """One rank's measured FSDP2 training step; the default process group must exist.

    ``device`` None is ``config.device`` (``cuda`` becomes ``cuda:LOCAL_RANK``). ``master_dtype``
    (as ``plan_training``'s): the model is loaded in it and FSDP2's ``MixedPrecisionPolicy``
    all-gathers in ``config.dtype`` and reduces gradients in it. ``replicas`` > 1: HSDP on a
    ("replicate", "shard") mesh of ``replicas`` × ``world_size / replicas`` ranks."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from . import workloads as wl
    from .instrument import MemoryProbe
    from .layers import select_layers, unique_nbytes
    from .models import DTYPES, load_model

    if not dist.is_initialized():
        raise RuntimeError("run_rank needs torch.distributed's default process group")
    if device is None:
        device = config.device
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    cfg = dataclasses.replace(config, device=str(device), workload="train", prompt=None,
                              attention_maps=False)
    cfg.validate()
    torch.manual_seed(cfg.seed)
    loaded = load_model(dataclasses.replace(cfg, dtype=master_dtype) if master_dtype else cfg)
    model = loaded.model
    applied, hooks = _optimize(model, cfg, device)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    mp = MixedPrecisionPolicy()
    compute = DTYPES.get(cfg.dtype)
    if master_dtype and compute is not None and compute != DTYPES[master_dtype]:
        mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=DTYPES[master_dtype])
    mesh = (init_device_mesh(device.type, (replicas, world_size // replicas),
                             mesh_dim_names=("replicate", "shard"))
            if replicas > 1 else init_device_mesh(device.type, (world_size,)))
    groups = _shard(model, mesh, mp)
    tracked = select_layers(model, loss=True)
    optimizer = wl.make_optimizer(model, cfg.lr)
    inputs = wl.make_inputs(model, loaded.tokenizer, cfg.batch, cfg.seq, None, device, cfg.seed)
    # optimizer state, all-gather buffers
    wl.train_step(model, inputs, optimizer, device, context=hooks.context)

    params = [p for p in model.parameters()]
    buffers = [b for b in model.buffers()]
    probe = MemoryProbe(model, tracked, training=True, count_flops=False, optimizer=optimizer)
    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    with _track_resize(probe, _all_gather_owners(groups, probe)), _fsdp_categories(probe, groups), \
            probe:
        for b in buffers:
            probe.acc.reclassify(b, probe.param_owner.get(id(b)), "buffers")
        probe.track_input(inputs.input_ids)
        probe.acc.reset_peak()
        step = wl.train_step(model, inputs, optimizer, device, probe, context=hooks.context)
    step_ms = (time.perf_counter() - t0) * 1e3
    cuda_peak = None
    if cuda:
        torch.cuda.synchronize(device)
        cuda_peak = int(torch.cuda.max_memory_allocated(device))

    per_owner, unowned = probe.at_peak()
    parts: dict[str, int] = {}
    attributed = 0
    for cats in per_owner.values():
        for cat, n in cats.items():
            parts[cat] = parts.get(cat, 0) + n
            attributed += n
    for cat, n in unowned.items():
        parts[cat] = parts.get(cat, 0) + n
    state = [v for s in optimizer.state.values() for v in s.values()
             if isinstance(v, torch.Tensor)]
    grads = [p.grad for p in params if p.grad is not None]
    return RankRow(
        rank=rank, world_size=world_size, device=str(device), peak_bytes=int(probe.acc.peak),
        parts=dict(sorted(parts.items())), as_plan_parts=as_plan_parts(parts),
        by_owner=per_owner, attributed_bytes=attributed,
        unattributed_bytes=sum(unowned.values()), phase_peaks=dict(probe.acc.phase_peaks),
        model_parameters=n_params, trainable_parameters=n_trainable,
        model_params_bytes=params_bytes, sharded_params_bytes=unique_nbytes(params),
        buffers_bytes=unique_nbytes(buffers), optimizer_state_bytes=unique_nbytes(state),
        gradients_bytes=unique_nbytes(grads), cuda_max_allocated_bytes=cuda_peak, loss=step.loss,
        step_ms=round(step_ms, 3), applied=applied)


def _plan_rows(config: RunConfig, world_size: int, master_dtype: str | None = None,
               replicas: int = 1) -> Any:
    """plan_training for the same config, on CPU (fake tensors); None if it fails."""
    from .distributed import plan_training

    return plan_training(dataclasses.replace(config, device="cpu", workload="train"), world_size,
                         master_dtype=master_dtype, replicas=replicas)


def gather_run(config: RunConfig, row: RankRow, plan: Any = None,
               t_start: float | None = None, run_id: str | None = None,
               master_dtype: str | None = None, replicas: int = 1) -> DistributedRun | None:
    """Gather every rank's row on rank 0 (``dist.gather_object``); rank 0 returns the record."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    rows: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(row, rows, dst=0)
    if rank != 0:
        return None
    assert rows is not None
    created = _dt.datetime.now(_dt.timezone.utc)
    run = DistributedRun(
        run_id=run_id or new_run_id(world, created),
        created=created.isoformat(timespec="seconds"), config=config.to_dict(),
        world_size=world, backend=dist.get_backend(), recipe=RECIPE, master_dtype=master_dtype,
        replicas=replicas, ranks=sorted(rows, key=lambda r: r.rank))
    run.optimizations = run.ranks[0].applied
    run.model_params_bytes = run.ranks[0].model_params_bytes
    run.model_parameters = run.ranks[0].model_parameters
    if plan is not None:
        run.plan_model_params_bytes = plan.model_params_bytes
        if plan.model_params_bytes != run.model_params_bytes:
            run.notes.append(
                f"The plan counts {plan.model_params_bytes} B of parameters, the model built "
                f"here {run.model_params_bytes} B (e.g. tied embeddings: the plan's model, built "
                "without memory, does not tie them, so it counts the shared weight twice).")
        run.plan_total_bytes = plan.total_bytes
        for r in run.ranks:
            # ranks are numbered replica by replica: rank % group is the shard a rank holds
            shards = plan.per_rank_optimizer_state
            opt = shards[r.rank % len(shards)] if shards else plan.parts["optimizer_state"]
            r.plan_parts = dict(plan.parts, optimizer_state=opt)
            r.plan_bound_bytes = sum(r.plan_parts.values())
            r.over_plan_parts = {k: v - r.plan_parts.get(k, 0) for k, v in r.as_plan_parts.items()
                                 if v > r.plan_parts.get(k, 0)}
        over = sorted({k for r in run.ranks for k in r.over_plan_parts})
        if over:
            run.notes.append(
                "At the measured peak these parts exceed the plan's figure for the part: "
                + ", ".join(over) + " (over_plan_parts per rank): the plan does not bound them "
                "on their own here; its total bounds the peak only while its other parts' "
                "margins cover the excess.")
        run.within_plan = all(r.peak_bytes <= (r.plan_bound_bytes or 0) for r in run.ranks)
        run.notes.append("plan_bound_bytes: engine.distributed.plan_training's per-rank total for "
                         "the same config (shapes and fake tensors; each part at its own maximum, "
                         "an upper bound), with this rank's own optimizer state.")
    run.notes.append("peak_bytes: MemLens' tensor accounting over the measured step (the second; "
                     "the first created the optimizer state and FSDP2's all-gather buffers); "
                     "FSDP2's resize_ of all-gather storages counted (see engine.distributed_run).")
    if t_start is not None:
        run.duration_s = round(time.perf_counter() - t_start, 3)
    return run


def new_run_id(world: int, created: _dt.datetime | None = None) -> str:
    created = created or _dt.datetime.now(_dt.timezone.utc)
    return f"fsdp2-{world}x-{created.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def write_run(run: DistributedRun, out: Path | str | None) -> Path:
    """Write the record atomically: ``out`` a ``.json`` file, a folder (``RUN_ID.json`` in it),
    or None (``distributed/`` beside the run store)."""
    from .store import _atomic_write, distributed_folder

    path = Path(out) if out is not None else distributed_folder()
    if path.suffix != ".json":
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"{run.run_id}.json"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(run.to_dict(), indent=1, allow_nan=False).encode("utf-8")
    _atomic_write(path, data)
    return path


def run_distributed(config: RunConfig, out: Path | str | None = None, plan: bool = True,
                    run_id: str | None = None, master_dtype: str | None = None,
                    replicas: int = 1) -> tuple[DistributedRun | None, Path | None]:
    """This process's part of a distributed run (torch.distributed already initialised):
    measure this rank, gather on rank 0, which writes the record; returns (record, path) on rank
    0 and (None, None) elsewhere."""
    import torch.distributed as dist

    t0 = time.perf_counter()
    rank, world = dist.get_rank(), dist.get_world_size()
    row = run_rank(config, rank, world, master_dtype=master_dtype, replicas=replicas)
    shard_plan = _plan_rows(config, world, master_dtype, replicas) if plan and rank == 0 else None
    run = gather_run(config, row, shard_plan, t0, run_id, master_dtype, replicas)
    path = write_run(run, out) if run is not None else None
    return run, path


def format_run(run: DistributedRun) -> str:
    from .format import human_bytes

    hsdp = (f" (HSDP: {run.replicas} replicas × {run.world_size // run.replicas} shards)"
            if run.replicas > 1 else "")
    lines = [f"FSDP2 training, {run.world_size} ranks{hsdp} ({run.backend}), "
             f"{run.config.get('model')}, batch {run.config.get('batch')} per rank, seq "
             f"{run.config.get('seq')} — measured"]
    for r in run.ranks:
        bound = human_bytes(r.plan_bound_bytes) if r.plan_bound_bytes is not None else "-"
        parts = ", ".join(f"{k} {human_bytes(v)}" for k, v in r.parts.items())
        cuda = (f", CUDA max allocated {human_bytes(r.cuda_max_allocated_bytes)}"
                if r.cuda_max_allocated_bytes is not None else "")
        lines.append(f"  rank {r.rank}: peak {human_bytes(r.peak_bytes)} (plan bound {bound})"
                     f"{cuda}; at the peak: {parts}")
    if run.within_plan is not None:
        lines.append("  every rank within its plan bound" if run.within_plan
                     else "  a rank exceeded its plan bound")
    lines += [f"  note: {note}" for note in run.notes]
    return "\n".join(lines)


# The packaged app's executable takes these as its first argument (packaging/memlens_entry.py):
# it has no Python interpreter to run ``-m torch.distributed.run`` or ``-m engine...`` with.
FROZEN_TORCHRUN = "--memlens-torchrun"
FROZEN_WORKER = "--memlens-distributed-worker"


def launcher_command(torchrun_args: list[str], worker_args: list[str]) -> list[str]:
    """The command that runs this module on every rank under PyTorch's launcher (torchrun).

    From Python: ``python -m torch.distributed.run ... -m engine.distributed_run ...``. From the
    packaged app, which has no interpreter to give ``-m``: the app's executable runs torchrun
    (``FROZEN_TORCHRUN``), and torchrun starts the executable itself on every rank
    (``--no-python``) as a worker (``FROZEN_WORKER``)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, FROZEN_TORCHRUN, *torchrun_args, "--no-python", sys.executable,
                FROZEN_WORKER, *worker_args]
    return [sys.executable, "-m", "torch.distributed.run", *torchrun_args,
            "-m", "engine.distributed_run", *worker_args]


def _check_processes(nproc: int, device: str) -> None:
    """Refuse more local processes than the machine can hold: on CUDA each rank needs a GPU of
    its own (NCCL refuses two ranks on one device); on CPU each gloo rank loads the model and
    runs its step on a core, so past twice the cores (or 8) the run only thrashes (1,000
    processes were started without a word)."""
    from .errors import ErrorKind, MemLensError

    if device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if nproc > gpus:
            raise MemLensError(
                ErrorKind.INVALID_WORKLOAD,
                f"{nproc} CUDA processes need {nproc} GPUs; this machine has {gpus}.",
                f"Use --distributed {gpus} or fewer (one process per GPU)" if gpus else
                "Run it on a machine with GPUs, or on the CPU with --device cpu (gloo).")
        return
    most = max(8, 2 * (os.cpu_count() or 1))
    if nproc > most:
        raise MemLensError(
            ErrorKind.INVALID_WORKLOAD,
            f"{nproc} processes on {os.cpu_count()} CPU cores is more than a CPU run takes (at "
            f"most {most}: each process loads the model and runs its own step).",
            f"Use --distributed {most} or fewer, or plan {nproc} ranks without running them: "
            f"memlens plan --workload train --ranks {nproc}.")


def launch(config: RunConfig, nproc: int, out: Path | str | None = None, *,
           plan: bool = True, env: dict[str, str] | None = None, timeout: float | None = None,
           master_port: int | None = None, master_dtype: str | None = None,
           replicas: int = 1) -> tuple[DistributedRun, Path, str]:
    """Run ``config``'s FSDP2 step on ``nproc`` local ranks with PyTorch's launcher (``python -m
    torch.distributed.run``, i.e. torchrun) and read the record back: (record, path, output).

    ``out``: a ``.json`` file or a folder (default: ``distributed/`` in the run store's folder).
    Raises ``MemLensError`` when the launch fails, with the ranks' last output."""
    import socket

    from .errors import ErrorKind, MemLensError
    from .optimizations import format_spec
    from .store import distributed_folder

    if not isinstance(nproc, int) or nproc < 1:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"Ranks must be 1 or more (got {nproc!r}).",
                           "Use --distributed 2 for two processes.")
    if not isinstance(replicas, int) or replicas < 1 or nproc % replicas:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"{replicas!r} replicas do not divide {nproc} processes evenly.",
                           "HSDP splits the processes into equal groups: --replicas must divide "
                           "--distributed.")
    _check_processes(nproc, config.device)
    run_id = new_run_id(nproc)
    target = Path(out) if out is not None else distributed_folder()
    if target.suffix != ".json":
        target = target / f"{run_id}.json"
    if master_port is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            master_port = s.getsockname()[1]
    device = "cuda" if config.device.startswith("cuda") else "cpu"
    cmd = launcher_command(
        ["--nnodes", "1", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
         "--master-port", str(master_port)],
        ["--model", config.model, "--batch", str(config.batch), "--seq", str(config.seq),
         "--dtype", config.dtype, "--device", device, "--lr", repr(config.lr),
         "--seed", str(config.seed), "--out", str(target), "--run-id", run_id])
    for selected in config.optimizations:
        cmd += ["--opt", format_spec(selected)]
    if master_dtype:
        cmd += ["--master-dtype", master_dtype]
    if replicas > 1:
        cmd += ["--replicas", str(replicas)]
    if not plan:
        cmd.append("--no-plan")
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    root = Path(__file__).resolve().parent.parent
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(root), full_env.get("PYTHONPATH", "")) if p)
    proc = _run_torchrun(cmd, full_env, timeout)
    output = proc.stdout + proc.stderr
    run = None
    if target.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            run = DistributedRun.from_dict(json.loads(target.read_text(encoding="utf-8")))
    if run is None or run.run_id != run_id:
        raise MemLensError(ErrorKind.INTERNAL, f"The distributed run failed (torchrun exit "
                           f"{proc.returncode}): {_failure_summary(output)}",
                           "Run the torchrun command by hand to see every rank's output: "
                           + " ".join(cmd))
    if proc.returncode != 0:
        # Rank 0 saves the record only once every rank has measured its step, so the figures
        # stand; what failed came after (seen: a rank aborting in torch's teardown at exit).
        run.notes.append(f"torchrun exited {proc.returncode} after every rank had measured and "
                         f"the record was saved: {_failure_summary(output)}")
        write_run(run, target)
    return run, target, proc.stdout


def _run_torchrun(cmd: list[str], env: dict[str, str], timeout: float | None) -> Any:
    """``subprocess.run`` for torchrun, but a Ctrl+C or SIGTERM here (KeyboardInterrupt) or a
    timeout ends it with SIGTERM, which torchrun passes on to its workers: subprocess.run
    killed it with SIGKILL, and the workers (each in a session of its own) ran on, orphaned."""
    import subprocess

    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except (KeyboardInterrupt, subprocess.TimeoutExpired):
                proc.kill()
                proc.communicate()
            raise
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _failure_summary(output: str) -> str:
    """What went wrong on the ranks, from torchrun's combined output: the last traceback a
    rank printed (its last lines) and torchrun's root cause (which rank, exit code or signal),
    rather than the tail of torchrun's own traceback, which names neither."""
    lines = output.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    rank_error = ""
    for i in reversed(starts):
        block = lines[i:next((j for j in starts if j > i), len(lines))]
        if not any("torch/distributed/run.py" in line for line in block):
            # the frames, then the exception's line (the first not indented)
            end = next((k for k, line in enumerate(block[1:], 1)
                        if line and not line[0].isspace()), len(block) - 1)
            rank_error = " ".join(line.strip() for line in block[max(1, end - 2):end + 1])
            break
    cause = ""
    if "Root Cause" in output:
        section = output.split("Root Cause", 1)[1].split("=====", 1)[0]
        fields = dict(line.strip().split(":", 1) for line in section.splitlines()
                      if ":" in line and line.strip().split(":", 1)[0].strip() in
                      ("rank", "exitcode", "traceback"))
        cause = "; ".join(f"{k.strip()} {v.strip()}" for k, v in fields.items())
    extra = [line.strip() for line in lines if "terminate called" in line]
    parts = [rank_error] if rank_error else []
    parts += [p for p in (cause, *extra[:1]) if p and p not in rank_error]
    return " — ".join(parts) if parts else output.strip()[-600:]


def main(argv: list[str] | None = None) -> int:
    """Entry point under torchrun (``python -m engine.distributed_run``)."""
    import torch
    import torch.distributed as dist

    p = argparse.ArgumentParser(prog="python -m engine.distributed_run",
                                description="One measured FSDP2 training step on every rank "
                                            "(run under torchrun).")
    p.add_argument("--model", default="demo")
    p.add_argument("--batch", type=int, default=1, help="per-rank micro-batch")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="cpu (gloo) or cuda (nccl, device LOCAL_RANK); default: cuda if available")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder or .json file (default: the run store's "
                                                "distributed/ folder)")
    p.add_argument("--opt", action="append", default=[], metavar="ID[:key=value,...]",
                   help="an optimization applied before sharding (repeatable; those a plan "
                        "takes)")
    p.add_argument("--master-dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="FSDP2 mixed precision: load in this dtype, all-gather in --dtype")
    p.add_argument("--replicas", type=int, default=1,
                   help="HSDP: groups of world size / replicas ranks (default 1: FSDP2)")
    p.add_argument("--no-plan", action="store_true", help="skip the plan_training comparison")
    p.add_argument("--run-id", default=None, help="the record's id (default: from the time)")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from .optimizations import parse_spec

    config = RunConfig(model=args.model, workload="train", batch=args.batch, seq=args.seq,
                       dtype=args.dtype, device=device, lr=args.lr, seed=args.seed,
                       optimizations=[parse_spec(s) for s in args.opt])
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    try:
        run, path = run_distributed(config, args.out, plan=not args.no_plan, run_id=args.run_id,
                                    master_dtype=args.master_dtype, replicas=args.replicas)
        if run is not None:
            print(format_run(run))
            print(f"saved {path}")
        # Leave together before the group is torn down (not after a failure: that would wait
        # for a rank that is gone). On torch 2.11 a rank once aborted in teardown after a
        # complete run ("terminate called without an active exception"); launch() keeps such
        # a run's record with a note.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
