"""The runner: load, instrument, run the workload, assemble a :class:`RunResult`.

``execute`` runs in the calling thread (the GUI's QThread worker, the CLI's main thread, a test)
and reports through a plain callback; :class:`Runner` wraps it in a background thread. User errors,
cancellation and out-of-memory end as a ``Failed`` event and a ``None`` return: the process, the
runner and everything saved stay usable.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import logging
import re
import secrets
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from . import procmem
from .config import RunConfig
from .errors import Cancelled, ErrorKind, MemLensError
from .events import AttentionMaps, Event, Failed, Finished, LayerStatsReady, Progress
from .instrument import MemoryProbe, TimingProbe
from .layers import (LOSS_ROW, TrackedModule, module_weight_tensors, owned_submodules,
                     parameter_count, select_layers, unique_nbytes, weights_dtype)
from .modeltree import ChangeTracker, module_tree
from .results import CATEGORIES, NOISY_TIMING_SPREAD, LayerStats, RunResult, timing_spread
from . import quality as quality_mod
from . import workloads as wl

Listener = Callable[[Event], None]

# Optional libraries (torchao, peft) log, on import, kernels they cannot load and torch's pytree
# deprecations; none of it concerns a run, so those loggers only pass errors.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

LIMITATIONS_CPU = [
    "CPU peak = live tensor storages counted by a dispatch mode; memory a kernel allocates and "
    "frees internally (never a tensor) is not seen, nor is the Python heap or allocator caching "
    "(see process RSS for those).",
    "Unattributed = tensors alive at the peak that were created outside every tracked module "
    "(inputs, masks, position ids, the backward's seed gradient) or before the pass.",
]
# Parts of the unattributed rest with a name of their own (instrument.MemoryProbe sets them).
UNOWNED_LABELS = {"inputs": "input ids",
                  "attention_mask": "attention mask (built outside the layers)",
                  "position_ids": "position ids (built outside the layers)",
                  "cache_position": "cache positions (built outside the layers)"}
LIMITATIONS_CUDA = [
    "Peak = the CUDA caching allocator's max_memory_allocated during the measured pass; "
    "attribution comes from tensor accounting at its own peak. The difference (cuBLAS/cuDNN "
    "workspaces, kernel scratch, block rounding) is reported as unattributed.",
    "NVML device memory also includes the CUDA context and the allocator's reserved-but-free "
    "cache, which no layer owns.",
]


def _emit(listener: Listener, event: Event) -> None:
    try:
        listener(event)
    except Exception:  # noqa: BLE001 - a broken listener must not break the run
        traceback.print_exc()


def internal_failure(listener: Listener, exc: BaseException, stage: str) -> None:
    """Report an unexpected exception as a failed run (a MemLens bug) and log its traceback."""
    _emit(listener, Failed(ErrorKind.INTERNAL.value,
                           f"Unexpected error during {stage}: {type(exc).__name__}: {exc}",
                           "This is a MemLens bug; the details are in the log."))
    traceback.print_exc()


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg
                                              or "can't allocate memory" in msg
                                              or "not enough memory" in msg)


def _run_id(config: RunConfig, created: _dt.datetime) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", config.model.rsplit("/", 1)[-1]).strip("-")[:32] or "model"
    return f"{created:%Y%m%d-%H%M%S}-{slug}-{config.workload}-{secrets.token_hex(2)}"


def execute(config: RunConfig, listener: Listener = lambda e: None,
            cancel: threading.Event | None = None, store: Any = None) -> RunResult | None:
    """Run ``config`` in this thread. Returns the result, or None after a ``Failed`` event."""
    cancel = cancel or threading.Event()
    run = _Run(config, listener, cancel)
    try:
        result = run.go()
    except Cancelled as exc:
        run.cleanup()
        _emit(listener, Failed(exc.kind.value, exc.message, exc.hint))
        return None
    except MemLensError as exc:
        run.cleanup()
        _emit(listener, Failed(exc.kind.value, exc.message, exc.hint))
        return None
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an event
        run.cleanup()
        if _is_oom(exc):
            _emit(listener, Failed(
                ErrorKind.OUT_OF_MEMORY.value,
                f"Out of memory during {_stage_words(run.stage)}: "
                f"{str(exc).splitlines()[0][:300]}",
                "Lower the batch size or sequence length, pick a smaller dtype, or use "
                "estimation for models that do not fit."))
            return None
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        internal_failure(listener, exc, _stage_words(run.stage))
        return None
    run.cleanup()
    if store is not None:
        _emit(listener, Progress("save", None, "saving the run"))
        try:
            store.save(result, attention=run.attention_event)
        except MemLensError as exc:
            result.warnings.append(f"The run was not saved: {exc.message} ({exc.hint})")
        except OSError as exc:
            result.warnings.append(f"The run was not saved: {exc}")
    _emit(listener, Finished(result))
    return result


def in_thread(work: Callable[[], None], name: str, daemon: bool = False) -> threading.Event:
    """Start ``work`` on a thread; the Event returned is set once ``work`` has ended.

    Wait on that Event, not on ``Thread.join``: on CPython up to 3.11 a KeyboardInterrupt
    inside ``join()`` marks the thread finished while it still runs (python/cpython#90882), so
    after a Ctrl+C ``join()`` and ``is_alive()`` return at once and the caller would go on as
    if the work had ended. ``Event.wait`` is interrupted cleanly and can be waited on again."""
    done = threading.Event()

    def body() -> None:
        try:
            work()
        finally:
            done.set()

    threading.Thread(target=body, name=name, daemon=daemon).start()
    return done


class Runner:
    """Runs configs one at a time in a background thread; cancel is cooperative (≤1 s)."""

    def __init__(self, listener: Listener, store: Any = None) -> None:
        self.listener = listener
        self.store = store
        self._done: threading.Event | None = None
        self._cancel = threading.Event()
        self.result: RunResult | None = None

    @property
    def running(self) -> bool:
        return self._done is not None and not self._done.is_set()

    def start(self, config: RunConfig) -> None:
        if self.running:
            raise RuntimeError("A run is already in progress; cancel it or wait for it first.")
        self._cancel = threading.Event()
        self.result = None

        def target() -> None:
            self.result = execute(config, self.listener, self._cancel, self.store)

        self._done = in_thread(target, "memlens-runner", daemon=True)

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the run has ended, after waiting at most ``timeout`` seconds for it."""
        return self._done is None or self._done.wait(timeout)


class _Run:
    """One run's state; ``go`` does the work, ``cleanup`` frees the model whatever happened."""

    def __init__(self, config: RunConfig, listener: Listener, cancel: threading.Event) -> None:
        self.config = config
        self.listener = listener
        self.cancel = cancel
        self.stage = ""
        self.loaded: Any = None
        self.optimizer: Any = None
        self.sampler: Any = None
        self.attention_event: AttentionMaps | None = None
        self.hooks: Any = None
        self.count_flops = True  # the memory pass's FLOP counter (an estimate may turn it off)
        self._compile_first: dict[str, Any] | None = None  # the compiled model's first call
        self.t_start = time.perf_counter()
        self.phases: list[dict[str, Any]] = []

    # -- helpers ----------------------------------------------------------------------------------
    def progress(self, stage: str, fraction: float | None = None, message: str = "") -> None:
        if self.cancel.is_set():
            raise Cancelled()
        if stage != self.stage:
            now = time.perf_counter() - self.t_start
            if self.phases and self.phases[-1].get("end") is None:
                self.phases[-1]["end"] = now
            self.phases.append({"name": stage, "start": now, "end": None})
            if self.sampler is not None:
                self.sampler.set_phase(stage)
        self.stage = stage
        _emit(self.listener, Progress(stage, fraction, message))

    def cleanup(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if getattr(self.hooks, "compiled", None) is not None:
            # Dynamo's caches hold the compiled graphs and, through their guards, the model.
            import torch._dynamo as dynamo

            self.hooks.compiled = None
            dynamo.reset()
        self.loaded = None
        self.optimizer = None
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    # -- the run ----------------------------------------------------------------------------------
    def go(self) -> RunResult:
        from .models import load_model, resolve_device
        from .telemetry import Sampler, environment

        from .optimizations import RunHooks, apply_all, check_all, resolve

        cfg = self.config
        cfg.validate()
        # Unknown ids, bad parameters, conflicts and workload/device mismatches are refused
        # before anything loads.
        chosen = resolve(cfg.optimizations, cfg.workload, cfg.device)
        self.hooks = RunHooks()
        device = resolve_device(cfg.device)
        cuda = device.type == "cuda"
        created = _dt.datetime.now(_dt.timezone.utc)
        result = RunResult(config=cfg, run_id=_run_id(cfg, created),
                           created=created.isoformat(timespec="seconds"))
        torch.manual_seed(cfg.seed)
        self.sampler = Sampler(hz=cfg.sample_hz, device=str(device),
                               callback=lambda s: _emit(self.listener, s), t0=self.t_start)
        self.sampler.start()
        # Import the libraries first so their code is not counted as the model's load cost.
        # An import cannot be interrupted: a cancel during "prepare" takes effect right after.
        self.progress("prepare", None, "importing libraries")
        from .models import preimport_architecture
        from .quiet import quiet_import

        with quiet_import():
            import transformers

            _ = (transformers.AutoConfig, transformers.AutoModel,
                 transformers.AutoModelForCausalLM, transformers.AutoTokenizer)
            preimport_architecture(cfg.model)
        self.progress("load", None, f"loading {cfg.model}")

        # -- load, with its peak against the state after loading --------------------------------
        rss_before = procmem.rss_bytes()
        hwm_ok = procmem.reset_rss_peak()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            alloc_before = torch.cuda.memory_allocated(device)
        self.loaded = load_model(cfg, progress=lambda m, f=None: self.progress("load", f, m),
                                 cancel=self.cancel)
        model = self.loaded.model
        totals = result.totals
        if cuda:
            torch.cuda.synchronize(device)
            totals.load_peak_bytes = torch.cuda.max_memory_allocated(device) - alloc_before
            totals.steady_bytes = torch.cuda.memory_allocated(device) - alloc_before
            totals.load_source = "cuda_allocator (above the allocation before loading)"
        else:
            # Steady state: the bytes of the loaded weights (exact). Peak: the RSS high-water
            # mark above RSS before loading, never below the steady state.
            peak = procmem.rss_peak_bytes() if hwm_ok else None
            totals.steady_bytes = unique_nbytes(module_weight_tensors(model, recurse=True))
            if peak is not None:
                totals.load_peak_bytes = max(peak - rss_before, totals.steady_bytes)
                totals.load_source = (
                    "steady: tensor bytes of the loaded weights; peak: process RSS high-water "
                    "mark above RSS before loading (memory-mapped weights count once read, and "
                    "memory freed by earlier runs in this process is reused, hiding part of a "
                    "load)")
            else:
                totals.load_source = "steady: tensor bytes of the loaded weights (no RSS peak here)"
        result.warnings.extend(self.loaded.warnings)

        tracked = select_layers(model, loss=cfg.workload == "train")
        inputs = self._inputs(model, device)
        if not cuda:
            self._check_workload_fits(model, device, int(inputs.input_ids.shape[1]),
                                      totals.steady_bytes or 0)
        result.model_info = self._model_info(model, tracked, device)
        result.model_info["module_tree"] = module_tree(model)
        result.environment = environment(str(device))
        result.limitations = list(LIMITATIONS_CUDA if cuda else LIMITATIONS_CPU)
        if not wl.is_causal_lm(model) and cfg.workload == "generate":
            raise MemLensError(ErrorKind.NOT_APPLICABLE,
                               f"{self.loaded.architecture} is not a causal language model: it "
                               "cannot generate.", "Use the forward or train workload.")
        causal = wl.is_causal_lm(model)
        trained_reference = None
        self.progress("quality", None, "reference outputs for quality")
        reference = quality_mod.reference(model, self.loaded.tokenizer, device, causal)

        if chosen:
            # A technique that does not apply to this model is refused before anything is
            # measured (apply_all checks again: the first one on this unmodified model, each
            # later one on the model the earlier ones changed, which only applying can show).
            check_all(model, chosen)
            # The unoptimized baseline, measured in this run on the same inputs, so the deltas
            # are ratios taken on one machine in one sitting. Training steps change the weights:
            # they are put back (from a CPU copy, which no device allocator sees) afterwards.
            snapshot = None
            if cfg.workload == "train":
                snapshot = {k: v.detach().to("cpu", copy=True)
                            for k, v in model.state_dict().items()}
            scratch = RunResult(config=cfg)
            base_layers = self._measure(model, tracked, inputs, device, scratch, baseline=True)
            result.baseline = _baseline_summary(scratch, base_layers)
            self.optimizer = None
            if snapshot is not None:
                # What the same training steps made of the unoptimized model: the reference for
                # the optimized model once trained (a training-memory technique leaves the
                # untrained model's outputs as they were; what it may change is the training).
                self.progress("quality", None, "reference outputs after the baseline's steps")
                with _eval_mode(model):
                    trained_reference = quality_mod.reference(
                        model, self.loaded.tokenizer, device, causal)
                model.load_state_dict(snapshot)
                del snapshot
            gc.collect()
            self.progress("optimize", 0.0, "applying optimizations")
            changes = ChangeTracker(model)
            applied, self.hooks = apply_all(
                model, chosen, device, self.cancel,
                lambda f, m: self.progress("optimize", f, m),
                on_applied=lambda a: changes.after(a.id, a.modules_touched))
            result.optimizations = [a.to_dict() for a in applied]
            # modules may have been replaced or removed
            tracked = select_layers(model, loss=cfg.workload == "train")
            result.model_info = self._model_info(model, tracked, device)
            result.model_info["module_tree"] = module_tree(model, changes)
            if self.hooks.compiled is not None:
                result.limitations.extend(_compile_limitations(cuda))
            # Quality of the optimized model as applied (before any training step moves it).
            # A compiled model is compared through its compiled outputs; for inference that
            # waits until the timing passes, so that their first call is the model's first.
            quality_later = self.hooks.compiled is not None and cfg.workload != "train"
            if not quality_later:
                self.progress("quality", None, "comparing outputs with the reference")
                # eval mode: the baseline's training steps leave the model in train mode
                # A KV cache policy changes only what reads the cache: the text goes through it.
                through = self.hooks.cache_factory if cfg.workload == "generate" else None
                with self._compile_errors(), _eval_mode(model):
                    result.quality = quality_mod.measure(
                        reference, self.hooks.compiled or model, self.hooks.context(device),
                        cache_factory=through, cache_policy=self.hooks.cache_policy)
        else:
            quality_later = False
            result.quality = quality_mod.measure(reference)

        layers = self._measure(model, tracked, inputs, device, result)
        if trained_reference is not None and result.quality is not None:
            self.progress("quality", None, "comparing the trained model with the baseline's")
            with _eval_mode(model), self._compile_errors():
                trained = quality_mod.measure(trained_reference, model,
                                              self.hooks.context(device))
            steps = (result.training or {}).get("optimizer_steps")
            if steps == (result.baseline or {}).get("optimizer_steps"):
                result.quality["after_training"] = {
                    "steps": steps, **{k: trained.get(k) for k in (
                        "kl_divergence", "top1_agreement", "perplexity", "baseline_perplexity",
                        "cosine_similarity") if trained.get(k) is not None}}
            else:  # e.g. torch.compile's first call is a step of its own
                result.warnings.append(
                    f"Quality after training is not compared: the optimized model took {steps} "
                    f"optimizer steps and the baseline {result.baseline.get('optimizer_steps')}.")
        if quality_later:
            self.progress("quality", None, "comparing the compiled model's outputs with the "
                                           "reference")
            with self._compile_errors():
                result.quality = quality_mod.measure(
                    reference, self.hooks.compiled, self.hooks.context(device),
                    cache_factory=self.hooks.cache_factory if cfg.workload == "generate"
                    else None, cache_policy=self.hooks.cache_policy)
        if chosen and result.generation and result.baseline:
            # Cache policies do not change a plain forward; what they change shows in what is
            # generated, compared token by token with the baseline's greedy output.
            base_ids = result.baseline.get("generated_token_ids") or []
            ids = result.generation.get("token_ids") or []
            n = min(len(base_ids), len(ids))
            if n and result.quality is not None:
                result.quality["generated_token_agreement"] = (
                    sum(a == b for a, b in zip(base_ids, ids)) / n)
        if chosen:
            _deltas(result)
        _trap_warnings(result)

        # -- attention maps -----------------------------------------------------------------------
        if cfg.attention_maps:
            self.progress("attention", None, "capturing attention maps (eager attention)")
            self._attention(model, inputs, device, result)

        end = time.perf_counter() - self.t_start
        if self.phases and self.phases[-1].get("end") is None:
            self.phases[-1]["end"] = end
        self.sampler.stop()
        # One last sample, taken here: the timeline always reaches the end of the run, even
        # where a short run on a loaded machine gave the sampling thread no turn.
        self.sampler.take()
        result.layers = layers
        result.phases = self.phases
        result.timeline = self.sampler.columns()
        if self.sampler.decimated:
            result.warnings.append(f"The timeline was decimated {self.sampler.decimated} times to "
                                   "stay bounded; peaks were kept.")
        result.duration_s = round(end, 3)
        _emit(self.listener, LayerStatsReady(tuple(layers), final=True))
        return result

    # -- pieces -------------------------------------------------------------------------------------
    def _measure(self, model, tracked, inputs, device, result, baseline: bool = False
                 ) -> list[LayerStats]:
        """Warm-up, memory pass and timing passes; fills ``result`` and returns the layers."""
        cfg = self.config
        tag = "baseline " if baseline else ""
        if cfg.workload == "train":
            # The baseline's steps and the optimized model's draw the same dropout masks: what
            # training does to each is then comparable (the quality after training).
            torch.manual_seed(cfg.seed)
            if device.type == "cuda":
                torch.cuda.manual_seed_all(cfg.seed)
            self.optimizer = wl.make_optimizer(model, cfg.lr, self.hooks.optimizer_factory)
            self._steps = 0  # optimizer steps taken on these weights (warm-up, memory, timing)

            def count(*_: Any) -> None:
                self._steps += 1

            self.optimizer.register_step_post_hook(count)
        if self.hooks.compiled is not None and not baseline:
            self._first_compiled_call(model, inputs, device)
        warm: list[float] = []
        for i in range(cfg.warmup):
            self.progress("baseline" if baseline else "warmup", i / max(1, cfg.warmup),
                          f"{tag}warm-up pass")
            wl.sync(device)
            t0 = time.perf_counter()
            self._plain_pass(model, inputs, device)
            wl.sync(device)
            warm.append((time.perf_counter() - t0) * 1e3)
        self.progress("baseline" if baseline else "memory", None,
                      f"{tag}memory pass (tensor accounting)")
        layers, mem_extra = self._memory_pass(model, tracked, inputs, device, result,
                                              snapshot=not baseline)
        if not baseline:
            _emit(self.listener, LayerStatsReady(tuple(layers), final=False))
        self._timing(model, tracked, inputs, device, layers, result, mem_extra,
                     stage="baseline" if baseline else "timing")
        # The first pass carries one-time costs (kernel selection, lazy init, compilation).
        result.timing["warmup_ms"] = warm
        if cfg.workload == "train" and result.training is not None:
            result.training["optimizer_steps"] = self._steps
        return layers

    def _inputs(self, model: torch.nn.Module, device: torch.device) -> wl.Inputs:
        cfg = self.config

        def check(length: int, prompt: bool) -> None:
            wl.check_positions(model, length, "Generation" if cfg.workload == "generate"
                               else "The input",
                               cfg.new_tokens if cfg.workload == "generate" else 0,
                               prompt=prompt)
            if cfg.workload == "train":
                wl.check_train_length(model, length, prompt=prompt)

        if not cfg.prompt:
            # Before the ids are made: batch 4096 × seq 1,000,000 asked for 32.8 GB of ids and
            # failed as "out of memory" when the cause was the model's 512 positions.
            check(cfg.seq, prompt=False)
        inputs = wl.make_inputs(model, self.loaded.tokenizer, cfg.batch, cfg.seq, cfg.prompt,
                                device, cfg.seed)
        if cfg.prompt:
            check(inputs.input_ids.shape[1], prompt=True)
        return inputs

    def _plain_pass(self, model: torch.nn.Module, inputs: wl.Inputs, device: torch.device,
                    eager: bool = False) -> Any:
        """One unhooked pass; with torch.compile applied, through the compiled model unless
        ``eager`` (hooked passes must be eager: hooks cannot see inside a compiled graph)."""
        cfg = self.config
        hooks = self.hooks
        if hooks.compiled is not None and not eager:
            model = hooks.compiled
        if cfg.workload == "forward":
            with hooks.context(device):
                wl.forward(model, inputs)
            wl.sync(device)
            return None
        if cfg.workload == "generate":
            with hooks.context(device):
                return wl.generate(model, inputs, cfg.new_tokens, device, self.cancel,
                                   cache_factory=hooks.cache_factory)
        return wl.train_step(model, inputs, self.optimizer, device, context=hooks.context)

    def _memory_pass(self, model, tracked, inputs, device, result, snapshot: bool = False):
        cfg = self.config
        cuda = device.type == "cuda"
        totals = result.totals
        training = cfg.workload == "train"
        if self.cancel.is_set():  # before the collection: it holds the interpreter ~0.3 s
            raise Cancelled()
        gc.collect()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        hwm_ok = procmem.reset_rss_peak()
        extra: dict[str, Any] = {}
        detailed = device if (cuda and cfg.detailed) else None
        probe = MemoryProbe(model, tracked, self.cancel, training=training,
                            count_flops=self.count_flops, optimizer=self.optimizer,
                            cuda_detailed=detailed)
        recording: Any = contextlib.nullcontext()
        if snapshot and cuda and cfg.memory_snapshot:
            from .export import cuda_memory_snapshot

            recording = cuda_memory_snapshot(cfg.memory_snapshot, device)
            result.limitations.append(
                f"The CUDA allocator's history during the memory pass was written to "
                f"{cfg.memory_snapshot} (opens in pytorch.org/memory_viz); recording it slows "
                "that pass, not the timing passes.")
        with recording, probe:
            probe.track_input(inputs.input_ids)
            probe.acc.reset_peak()
            hooks = self.hooks
            if cfg.workload == "forward":
                with hooks.context(device):
                    out = wl.forward(model, inputs, probe)
                del out
            elif cfg.workload == "generate":
                with hooks.context(device):
                    extra["generation"] = wl.generate(model, inputs, cfg.new_tokens, device,
                                                      self.cancel, probe, timed=False,
                                                      cache_factory=hooks.cache_factory)
            else:
                extra["step"] = wl.train_step(model, inputs, self.optimizer, device, probe,
                                              context=hooks.context,
                                              step_outside_probe=hooks.optimizer_compiled)
                if hooks.optimizer_compiled:
                    result.warnings.append(
                        "The optimizer step runs compiled code, which cannot run under tensor "
                        "accounting: its state is counted, but memory it allocates and frees "
                        "inside the step is not in this run's CPU peak (the CUDA allocator's "
                        "peak includes it).")
        if cuda:
            torch.cuda.synchronize(device)
            if detailed is not None:
                peak, reserved = probe.finish_cuda()
            else:
                peak = torch.cuda.max_memory_allocated(device)
                reserved = torch.cuda.max_memory_reserved(device)
            totals.peak_source = "cuda_allocator"
            totals.cuda_reserved_peak_bytes = reserved
        else:
            peak = probe.acc.peak
            totals.peak_source = "tensor_accounting"
        totals.process_rss_peak_bytes = procmem.rss_peak_bytes() if hwm_ok else None
        per_owner, unowned = probe.at_peak()
        if probe.opaque_bytes:
            note = ("Packed int8 weights (quantize_dynamic) are opaque to the dispatch mode: "
                    f"their unpacked size ({probe.opaque_bytes / 2**20:.2f} MiB) is counted as "
                    "weights at the peak; fbgemm's packed layout is not visible from Python.")
            if note not in result.limitations:
                result.limitations.append(note)
        owners_by_name = {t.name for t in tracked}

        # -- per layer ----------------------------------------------------------------------------
        weights = self._weights_by_owner(model, tracked)
        grads, opt_state, state_dtypes = (self._train_state_by_owner(model, probe) if training
                                          else ({}, {}, {}))
        gen = extra.get("generation")
        layers: list[LayerStats] = []
        loss_row = next((t for t in tracked if t.name == LOSS_ROW), None)
        if loss_row is not None and LOSS_ROW not in probe.output_bytes:
            # A model whose forward computes its loss without transformers' loss_function
            # (e.g. XLNet's own CrossEntropyLoss, remote code): no row, and the timing passes
            # and the counts of tracked modules leave it out too.
            tracked.remove(loss_row)
            if result.model_info:
                result.model_info["tracked_modules"] = len(tracked)
            result.warnings.append(
                "This model computes its training loss without transformers' loss_function, "
                "so the loss has no row of its own: its tensors (such as a log-softmax of the "
                "logits and their gradients) are counted in unattributed.")
        for t in tracked:
            w_bytes, n_params = weights.get(t.name, (0, 0))
            kv = None
            if gen is not None and t.kind == "attention":
                idx = getattr(t.module, "layer_idx", None)
                idx = t.layer_index if idx is None else idx
                if idx is not None and idx < len(gen.kv_bytes_per_layer):
                    kv = gen.kv_bytes_per_layer[idx]
            flops = probe.flops.get(t.name)
            layers.append(LayerStats(
                name=t.name, kind=t.kind, parent=t.parent, depth=t.depth,
                parameters=n_params, weights_bytes=w_bytes,
                activation_bytes=probe.output_bytes.get(t.name),
                saved_for_backward_bytes=probe.saved_bytes.get(t.name, 0) if training else None,
                kv_cache_bytes=kv,
                gradient_bytes=grads.get(t.name, 0) if training else None,
                optimizer_state_bytes=opt_state.get(t.name, 0) if training else None,
                transient_peak_bytes=(probe.cuda_transient.get(t.name) if detailed is not None
                                      else probe.transient.get(t.name)),
                flops=flops,
                at_peak={c: per_owner.get(t.name, {}).get(c, 0) for c in CATEGORIES
                         if per_owner.get(t.name, {}).get(c, 0)},
            ))
        stray = {o for o in per_owner if o not in owners_by_name}
        for o in stray:  # owners that are not rows (should not happen): count as unattributed
            for c, n in per_owner[o].items():
                unowned[c] = unowned.get(c, 0) + n

        # -- totals and the reconciliation ----------------------------------------------------
        cat_sum = {c: sum(layer.at_peak.get(c, 0) for layer in layers) for c in CATEGORIES}
        totals.peak_bytes = int(peak)
        totals.transient_source = ("cuda_allocator (detailed: peak reset at module boundaries)"
                                   if detailed is not None else "tensor_accounting")
        totals.weights_bytes = cat_sum["weights"]
        totals.activation_bytes = cat_sum["activations"]
        totals.kv_cache_bytes = cat_sum["kv_cache"]
        totals.gradient_bytes = cat_sum["gradients"]
        totals.optimizer_state_bytes = cat_sum["optimizer_state"]
        totals.temporary_bytes = cat_sum["temporaries"]
        totals.attributed_bytes = sum(cat_sum.values())
        totals.unattributed_bytes = totals.peak_bytes - totals.attributed_bytes
        detail = {UNOWNED_LABELS.get(c, f"untracked {c}"): n  # largest first
                  for c, n in sorted(unowned.items(), key=lambda cn: (-cn[1], cn[0])) if n}
        if cuda:
            detail["allocator only (not a tensor seen by accounting)"] = peak - probe.acc.peak
        totals.unattributed_detail = detail
        if totals.unattributed_bytes < 0:
            result.warnings.append(
                f"Tensor accounting saw {-totals.unattributed_bytes} B more than the allocator's "
                "peak; attribution is approximate for this run.")
        totals.parameters = parameter_count(model)
        totals.model_weights_bytes = unique_nbytes(module_weight_tensors(model, recurse=True))
        totals.flops = probe.total_flops
        totals.flops_scope = ("forward + backward + optimizer step (per-layer: forward)"
                              if training else "forward")
        result.phase_peaks = dict(probe.acc.phase_peaks)
        uncounted = sorted({op for ops in probe.uncounted_flop_ops.values() for op in ops})
        totals.flops_uncounted_ops = uncounted
        if uncounted:
            where = sorted(k for k in probe.uncounted_flop_ops if k)
            result.warnings.append(
                "FLOPs are under-counted: FlopCounterMode has no formula for "
                f"{', '.join(uncounted)} (used in {len(where)} module(s), e.g. "
                f"{', '.join(where[:2]) or 'outside tracked modules'}).")
            # A module that misses FLOPs makes every row that holds it incomplete too.
            incomplete = set(probe.uncounted_flop_ops)
            parent_of = {layer.name: layer.parent for layer in layers}
            for name in list(incomplete):
                while (name := parent_of.get(name)) is not None:
                    incomplete.add(name)
            for layer in layers:
                if layer.name in incomplete:
                    layer.flops_complete = False
        # Counted with every operator's formula: said, so that an empty cell (layers.csv)
        # means only "not counted", not also "complete".
        for layer in layers:
            if layer.flops is not None and layer.flops_complete is None:
                layer.flops_complete = True
        if gen is not None:
            result.generation = {
                "prompt_tokens": int(inputs.input_ids.shape[1]),
                "new_tokens": cfg.new_tokens,
                "cached_positions": gen.cached_positions,
                "kv_cache_bytes": sum(gen.kv_bytes_per_layer),
                "kv_bytes_per_layer": gen.kv_bytes_per_layer,
                "kv_bytes_per_step": gen.kv_bytes_per_step,
                "prefill_peak_bytes": probe.acc.phase_peaks.get("prefill"),
                "decode_peak_bytes": probe.acc.phase_peaks.get("decode"),
                "text": self._decode(gen.new_ids),
                "token_ids": list(gen.new_ids),
            }
        if training:
            step = extra["step"]
            result.training = {
                "loss": step.loss, "synthetic_loss": step.synthetic_loss,
                "optimizer": type(self.optimizer).__name__,
                "optimizer_module": type(self.optimizer).__module__,
                "lr": cfg.lr,
                "saved_for_backward_bytes": sum(probe.saved_bytes.values()),
                "gradient_bytes": sum(grads.values()),
                "optimizer_state_bytes": sum(opt_state.values()),
                "optimizer_state_dtypes": state_dtypes,
                "forward_peak_bytes": probe.acc.phase_peaks.get("forward"),
                "backward_peak_bytes": probe.acc.phase_peaks.get("backward"),
                "optimizer_peak_bytes": probe.acc.phase_peaks.get("optimizer"),
            }
            if step.synthetic_loss:
                result.warnings.append("This model has no LM head: the training step used a "
                                       "synthetic loss (mean square of the last hidden state).")
        result.inputs = {"source": inputs.source, "shape": list(inputs.input_ids.shape)}
        return layers, extra

    def _timing(self, model, tracked, inputs, device, layers, result, mem_extra,
                stage: str = "timing") -> None:
        """Plain passes and instrumented passes, alternating, so noise hits both alike.

        The *live* passes hook only top-level rows (blocks, embeddings, norm, head): on a fast
        GPU the forward is launch-bound and every hook adds CPU time, so this keeps the measured
        pass close to the plain one. Attention/MLP latencies come from a separate *detailed*
        pass with every tracked module hooked; both overheads are recorded.
        """
        cfg = self.config
        top = [t for t in tracked if t.depth == 0]
        sub = [t for t in tracked if t.depth > 0]
        plain: list[float] = []
        timed: list[float] = []
        detailed: list[float] = []
        per_layer: dict[str, list[float]] = {}
        gens: list[wl.GenerationTrace] = []
        steps: list[wl.StepTrace] = []
        compiled = self.hooks.compiled is not None and stage != "baseline"
        eager_plain: list[float] = []

        def instrumented(modules: list[TrackedModule], times: list[float], keep: set[str]) -> Any:
            probe = TimingProbe(modules, device, self.cancel)
            wl.sync(device)
            t0 = time.perf_counter()
            with probe:
                out = self._plain_pass(model, inputs, device, eager=True)
            wl.sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
            for name, ms in probe.totals_ms().items():
                if name in keep:
                    per_layer.setdefault(name, []).append(ms)
            return out

        for r in range(cfg.repeats):
            # (the stage, "baseline" or "timing", is shown beside the message: "baseline 0% ·
            # baseline timing pass 1/1" said it twice)
            self.progress(stage, r / cfg.repeats, "timing pass "
                          f"{r + 1}/{cfg.repeats}")
            wl.sync(device)
            t0 = time.perf_counter()
            self._plain_pass(model, inputs, device)
            wl.sync(device)
            plain.append((time.perf_counter() - t0) * 1e3)
            if compiled:  # the eager model's plain time, for the hooks' overhead
                t0 = time.perf_counter()
                self._plain_pass(model, inputs, device, eager=True)
                wl.sync(device)
                eager_plain.append((time.perf_counter() - t0) * 1e3)
            out = instrumented(top, timed, {t.name for t in top})
            if sub:
                instrumented(tracked, detailed, {t.name for t in sub})
            if isinstance(out, wl.GenerationTrace):
                gens.append(out)
            elif isinstance(out, wl.StepTrace):
                steps.append(out)
        for layer in layers:
            if layer.name in per_layer:
                layer.latency_ms = statistics.median(per_layer[layer.name])
        totals = result.totals
        totals.plain_latency_ms = statistics.median(plain)
        totals.latency_ms = statistics.median(timed)
        # Hooked passes run the eager model: their overhead is taken against its plain time.
        hooked_base = statistics.median(eager_plain) if compiled else totals.plain_latency_ms
        totals.instrumentation_overhead = totals.latency_ms / hooked_base
        result.timing = {
            "repeats": cfg.repeats, "plain_ms": plain, "instrumented_ms": timed,
            "detailed_ms": detailed,
            "detailed_overhead": (statistics.median(detailed) / hooked_base
                                  if detailed else None),
            "live_modules": len(top), "detailed_modules": len(tracked),
            "method": "CUDA events per module, no per-module sync" if device.type == "cuda"
            else "perf_counter per module",
        }
        if compiled:
            self._compile_figures(model, inputs, device, result, eager_plain)
        n_tokens = cfg.batch * inputs.input_ids.shape[1]
        if cfg.workload == "forward":
            totals.tokens_per_s = n_tokens / (totals.plain_latency_ms / 1e3)
        if gens and result.generation is not None:
            prefill = statistics.median(g.prefill_ms for g in gens)
            decode_steps = [statistics.median(col) for col in zip(*(g.decode_ms for g in gens))]
            decode_total = sum(decode_steps)
            result.generation.update({
                "prefill_ms": prefill,
                "decode_ms_per_step": decode_steps,
                "decode_tokens_per_s": (cfg.batch * len(decode_steps) / (decode_total / 1e3)
                                        if decode_total else None),
            })
            totals.tokens_per_s = result.generation["decode_tokens_per_s"]
        if steps and result.training is not None:
            # The phases of one step, the hooked step of median length: medians taken phase by
            # phase came from different steps and did not add up (23.7 ms plain beside
            # forward 5.2 + backward 7.2 + optimizer 19.4 ms).
            step = median_step(steps)
            result.training.update({
                "forward_ms": step.forward_ms, "backward_ms": step.backward_ms,
                "optimizer_ms": step.optimizer_ms,
                "step_ms": step.forward_ms + step.backward_ms + step.optimizer_ms,
                "phases_from": f"the hooked step of median length ({len(steps)} timed)",
            })
            totals.tokens_per_s = n_tokens / (totals.plain_latency_ms / 1e3)

    # -- torch.compile -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _compile_errors(self) -> Any:
        """A compiled call that fails (an op Dynamo or Inductor cannot handle, no C++ compiler)
        refuses the technique with the compiler's reason instead of reporting a MemLens bug."""
        try:
            yield
        except (Cancelled, MemLensError):
            raise
        except Exception as exc:
            if self.hooks is None or self.hooks.compiled is None or _is_oom(exc):
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise MemLensError(ErrorKind.NOT_APPLICABLE,
                               f"torch.compile could not compile or run this model here: "
                               f"{type(exc).__name__}: {first}",
                               "Run without compile, or with other optimizations.") from exc

    def _first_compiled_call(self, model, inputs, device) -> None:
        """The compiled model's first pass: it traces and compiles (timed, apart)."""
        self.progress("compile", None, "first call of the compiled model (compiles it)")
        before = _dynamo_counts()
        wl.sync(device)
        t0 = time.perf_counter()
        with self._compile_errors():
            self._plain_pass(model, inputs, device)
        wl.sync(device)
        first_ms = (time.perf_counter() - t0) * 1e3
        after = _dynamo_counts()
        self._compile_first = {"first_call_ms": first_ms, "before": before, "after": after}

    def _compile_figures(self, model, inputs, device, result, eager_plain: list[float]) -> None:
        """compile_seconds (first call minus the steady state) and, on CUDA, the compiled
        model's own allocator peak over one pass."""
        first = getattr(self, "_compile_first", None)
        if first is None:
            return
        totals = result.totals
        steady = totals.plain_latency_ms
        now = _dynamo_counts()
        before, after = first["before"], first["after"]
        totals.compile_seconds = max(0.0, (first["first_call_ms"] - steady) / 1e3)
        info: dict[str, Any] = {
            "params": next((a["params"] for a in result.optimizations if a["id"] == "compile"),
                           {}),
            "first_call_ms": first["first_call_ms"], "steady_ms": steady,
            "compile_seconds": totals.compile_seconds,
            "eager_plain_ms": eager_plain,
            "eager_latency_ms": statistics.median(eager_plain) if eager_plain else None,
        }
        if before is not None and after is not None and now is not None:
            info.update({
                "graphs_first_call": after["graphs"] - before["graphs"],
                "graph_breaks_first_call": after["graph_breaks"] - before["graph_breaks"],
                "graphs_after_first_call": now["graphs"] - after["graphs"],
                "inductor_cache_hits": now["cache_hits"] - before["cache_hits"],
                "inductor_cache_misses": now["cache_misses"] - before["cache_misses"],
                "recompile_limit_hits": (now["recompile_limit_hits"]
                                         - before["recompile_limit_hits"]),
            })
            if info["recompile_limit_hits"]:
                from torch._dynamo import config as dynamo_config

                limit = getattr(dynamo_config, "recompile_limit", None)
                result.warnings.append(
                    f"torch.compile hit Dynamo's recompile limit ({limit} graphs per function) "
                    f"{info['recompile_limit_hits']} time(s): every later new shape ran eager "
                    "(uncompiled), so the latency mixes compiled and eager calls and the quality "
                    "comparison may be of eager outputs. Each new shape (with dynamic=false, "
                    "each cache length while generating) needs its own graph.")
            if info["graphs_after_first_call"]:
                result.warnings.append(
                    f"torch.compile compiled {info['graphs_after_first_call']} more graph(s) "
                    "after the first call (new shapes or recompiles): the warm-up and timing "
                    "passes include compilation, so the steady-state latency is too high.")
        if device.type == "cuda":
            gc.collect()
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self._plain_pass(model, inputs, device)
            torch.cuda.synchronize(device)
            totals.compiled_peak_bytes = torch.cuda.max_memory_allocated(device)
            info["compiled_peak_source"] = ("cuda_allocator (max_memory_allocated, one compiled "
                                            "pass)")
        result.timing["compile"] = info

    def _attention(self, model, inputs, device, result) -> None:
        from .attention import capture_attention

        event, info = capture_attention(model, inputs, device, self.cancel)
        self.attention_event = event
        result.attention = info
        if event is not None:
            _emit(self.listener, event)
        elif info.get("reason"):
            result.warnings.append(f"Attention maps were not captured: {info['reason']}")

    def _weights_by_owner(self, model, tracked: list[TrackedModule]) -> dict[str, tuple[int, int]]:
        from .layers import local_numel, packed_elements, weight_owners

        owners = weight_owners(model, tracked)
        params = dict(model.named_parameters())  # once: rebuilding it per name was quadratic
        named = dict(params)
        named.update(dict(model.named_buffers()))
        grouped: dict[str, list[torch.Tensor]] = {}
        counts: dict[str, int] = {}
        for pname, owner in owners.items():
            if owner is None:
                continue
            grouped.setdefault(owner, []).append(named[pname])
            if pname in params:
                counts[owner] = counts.get(owner, 0) + local_numel(named[pname])
        names = {t.name for t in tracked}
        for t in tracked:  # packed (non-parameter) weights of quantized modules
            for m in owned_submodules(t, names):
                packed = [w for w in module_weight_tensors(m) if not isinstance(w, torch.nn.Parameter)
                          and not any(w is b for b in m.buffers(recurse=False))]
                if packed:
                    grouped.setdefault(t.name, []).extend(packed)
                # packed weights count as the layer's parameters, as the model's total counts
                # them (parameter_count): after int8-dynamic the rows summed to 396 K of 2.53 M
                n = packed_elements(m)
                if n:
                    counts[t.name] = counts.get(t.name, 0) + n
        return {o: (unique_nbytes(ts), counts.get(o, 0)) for o, ts in grouped.items()}

    def _train_state_by_owner(self, model, probe: MemoryProbe) -> tuple[dict, dict, dict]:
        """Gradient and optimizer-state bytes by layer, and the optimizer state's bytes by
        dtype."""
        from .accounting import leaves, storage_key

        grads: dict[str, int] = {}
        opt: dict[str, int] = {}
        # bytes of optimizer state by dtype: PyTorch's AdamW keeps its moments in the
        # parameters' dtype, so a bfloat16 model's are bfloat16 (pure bfloat16 training)
        state_dtypes: dict[str, int] = {}
        seen: set[int] = set()  # state shared by parameters (bitsandbytes' quantization maps)
        for p in model.parameters():
            owner = probe.param_owner.get(id(p))
            if owner is None:
                continue
            state = self.optimizer.state.get(p, {}) if self.optimizer is not None else {}
            fresh = []
            for v in state.values():
                if not isinstance(v, torch.Tensor):
                    continue
                keys = {storage_key(leaf) for leaf in leaves(v) if not leaf.is_meta}
                if keys and keys <= seen:
                    continue
                seen |= keys
                fresh.append(v)
                if v.numel() > 1:  # (a step count is a scalar in float32 whatever the rest)
                    # By the dtypes that hold the bytes: torchao's 8-bit state is a float32
                    # tensor subclass whose data are uint8 codes and float32 scales.
                    by_dtype: dict[str, list[torch.Tensor]] = {}
                    for leaf in leaves(v):
                        by_dtype.setdefault(str(leaf.dtype).replace("torch.", ""),
                                            []).append(leaf)
                    for name, group in by_dtype.items():
                        state_dtypes[name] = state_dtypes.get(name, 0) + unique_nbytes(group)
            opt[owner] = opt.get(owner, 0) + unique_nbytes(fresh)
            if p.requires_grad and id(p) in probe.grads_seen:
                # Gradients are freed by the next zero_grad; their size is the parameter's (a
                # DTensor's local shard: its leaves); a parameter the loss did not reach got
                # none.
                grads[owner] = grads.get(owner, 0) + sum(
                    leaf.numel() * leaf.element_size() for leaf in leaves(p))
        return grads, opt, state_dtypes

    def _check_workload_fits(self, model: torch.nn.Module, device: torch.device,
                             length: int, weights: int) -> None:
        """Refuse a CPU run whose workload would not fit in the memory available (the loader
        checks the weights alone): a CUDA allocator raises out of memory cleanly, but the
        kernel's out-of-memory killer ends a CPU process that overcommitted without a word.
        ``length`` is the input's tokens (a prompt's, not the Sequence setting it replaces);
        ``weights`` the loaded weights' bytes (the load's steady state, counted there).
        A rough upper bound (activations, logits, eager attention's scores, a KV cache and,
        for training, gradients, AdamW state and the baseline's copy of the weights) decides
        whether to look closer; only then is the workload estimated on fake tensors (seconds):
        the unoptimized baseline, which an optimized run also measures, and the optimized one,
        the larger deciding."""
        from .models import _available_bytes, _gib, estimate_command

        cfg = self.config
        available = _available_bytes(device)
        hf = getattr(model, "config", None)
        hf = getattr(hf, "get_text_config", lambda: hf)() if hf is not None else None
        hidden = getattr(hf, "hidden_size", None)
        layers = getattr(hf, "num_hidden_layers", None)
        if available is None or not isinstance(hidden, int) or not isinstance(layers, int):
            return
        inter = getattr(hf, "intermediate_size", None) or 4 * hidden
        heads = getattr(hf, "num_attention_heads", None) or 1
        vocab = getattr(hf, "vocab_size", None) or 0
        train = cfg.workload == "train"
        seq = length + (cfg.new_tokens if cfg.workload == "generate" else 0)
        tokens = cfg.batch * seq
        live = layers if train else 2  # (a forward frees each block's activations)
        eager = getattr(hf, "_attn_implementation", None) == "eager"
        rough = 4 * (tokens * ((16 * hidden + 3 * inter) * live + 3 * vocab)
                     + (2 * cfg.batch * heads * seq * seq * live if eager else 0)
                     + (2 * layers * hidden * tokens if cfg.workload == "generate" else 0))
        if train:
            rough += 4 * weights  # gradients, AdamW's two moments, the baseline's copy
        if rough < ACTIVATION_CHECK_SHARE * available:
            return
        from dataclasses import replace

        from .estimate import quiet_estimate

        self.progress("prepare", None, "checking that the workload fits the memory available "
                      "(an estimate on fake tensors)")
        shape = replace(cfg, device="cpu", attention_maps=False, prompt=None, seq=length)
        peaks = []
        for opts in ([[]] + ([cfg.optimizations] if cfg.optimizations else [])):
            est = quiet_estimate(replace(shape, optimizations=opts), self.cancel)
            if self.cancel.is_set():
                raise Cancelled()
            if est is not None:
                peaks.append(est.totals.peak_bytes - (est.totals.model_weights_bytes or 0))
        if not peaks:
            return
        above = max(peaks) + (weights if train and cfg.optimizations else 0)
        available = _available_bytes(device) or available  # (the weights are loaded by now)
        if above > ACTIVATION_LIMIT * available:
            sizes = (f"the batch ({cfg.batch}) or the prompt ({length} tokens)" if cfg.prompt
                     else f"the batch ({cfg.batch}) or the sequence ({cfg.seq})")
            raise MemLensError(
                ErrorKind.TOO_LARGE,
                f"This {cfg.workload} would need about {_gib(above)} above the weights "
                f"(estimated{', the unoptimized baseline included' if cfg.optimizations else ''}"
                f"), and {device} has {_gib(available)} available (the limit is "
                f"{ACTIVATION_LIMIT:.0%} of that): the system could end the process before an "
                "out-of-memory error.",
                f"Lower {sizes}, or see where it goes without running it: "
                f"{estimate_command(shape)}.")

    def _decode(self, ids: list[int]) -> str | None:
        tok = self.loaded.tokenizer if self.loaded else None
        if tok is None:
            return None
        try:
            return tok.decode(ids)
        except Exception:  # noqa: BLE001
            return None

    def _model_info(self, model, tracked, device) -> dict[str, Any]:
        cfg = getattr(model, "config", None)
        get = (lambda *names: next((getattr(cfg, n) for n in names
                                    if isinstance(getattr(cfg, n, None), int)), None))
        n_heads = get("num_attention_heads", "n_head")
        hidden = get("hidden_size", "n_embd")
        head_dim = get("head_dim") or (hidden // n_heads if hidden and n_heads else None)
        loaded = self.loaded
        return {
            "name": loaded.name, "source": loaded.source, "path": loaded.path,
            "architecture": loaded.architecture, "random_weights": loaded.random_weights,
            # The weights' dtype as measured (a cast changes it); loaded_dtype: as loaded.
            "dtype": weights_dtype(model) or loaded.dtype, "loaded_dtype": loaded.dtype,
            "device": str(device), "parameters": parameter_count(model),
            "num_layers": get("num_hidden_layers", "n_layer"),
            "hidden_size": hidden, "num_attention_heads": n_heads,
            "num_key_value_heads": get("num_key_value_heads") or n_heads,
            "head_dim": head_dim, "vocab_size": get("vocab_size"),
            "max_positions": wl.max_positions(model),
            "attn_implementation": getattr(cfg, "_attn_implementation", None),
            "tracked_modules": len(tracked),
            "load_seconds": loaded.load_seconds,
        }


def _compile_limitations(cuda: bool) -> list[str]:
    where = (
        "The compiled model's own peak is measured apart (compiled_peak_bytes: the CUDA "
        "allocator's max_memory_allocated over one compiled pass, after the timing passes)."
        if cuda else
        "No peak of the compiled model itself is given: on the CPU there is no allocator "
        "counter to read, and the process RSS also holds the compiler's own memory.")
    return [
        "torch.compile: the memory pass runs the eager (uncompiled) model, because compiled code "
        "cannot run under the tensor-accounting dispatch mode. The peak, every per-layer memory "
        "figure and the FLOPs describe the eager model; the compiled graph may fuse operations "
        "and free or reuse intermediates differently. " + where,
        "torch.compile: the plain latency is the compiled model's steady state (median of the "
        "timing passes, after its first call and the warm-up); compile_seconds is the first "
        "call minus that. Per-layer latencies come from hooked passes of the eager model "
        "(hooks cannot see inside a compiled graph); the hooks' overhead is taken against the "
        "eager model's plain passes. Quality compares the compiled model's outputs.",
    ]


def _dynamo_counts() -> dict[str, int] | None:
    """Graphs compiled, graph breaks and Inductor cache hits so far (Dynamo's counters)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "recompile_limit_hits": int(sum(
                n for reason, n in counters["unimplemented"].items()
                if str(reason).startswith("Dynamo recompile limit exceeded"))),
            "cache_hits": int(counters["inductor"].get("fxgraph_cache_hit", 0)),
            "cache_misses": int(counters["inductor"].get("fxgraph_cache_miss", 0))}


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """``model`` in eval mode (no dropout) for a quality pass, then back to its mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _baseline_summary(scratch: RunResult, layers: list[LayerStats]) -> dict[str, Any]:
    t = scratch.totals
    return {
        "peak_bytes": t.peak_bytes, "model_weights_bytes": t.model_weights_bytes,
        "weights_bytes": t.weights_bytes, "activation_bytes": t.activation_bytes,
        "kv_cache_bytes": t.kv_cache_bytes, "gradient_bytes": t.gradient_bytes,
        "optimizer_state_bytes": t.optimizer_state_bytes, "temporary_bytes": t.temporary_bytes,
        "unattributed_bytes": t.unattributed_bytes,
        "plain_latency_ms": t.plain_latency_ms, "tokens_per_s": t.tokens_per_s,
        "parameters": t.parameters,
        "optimizer_steps": (scratch.training or {}).get("optimizer_steps"),
        # (what checkpointing lowers below an optimizer-step peak it does not touch)
        "saved_for_backward_bytes": (scratch.training or {}).get("saved_for_backward_bytes"),
        "phase_peaks": dict(scratch.phase_peaks or {}),
        "plain_ms": list((scratch.timing or {}).get("plain_ms") or []),
        "flops": t.flops,
        "generated_token_ids": (scratch.generation or {}).get("token_ids"),
        "layers": {layer.name: {"kind": layer.kind, "at_peak_bytes": layer.at_peak_bytes,
                                "weights_bytes": layer.weights_bytes,
                                "latency_ms": layer.latency_ms} for layer in layers},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# A CPU run whose rough activation bound passes this share of the available memory is
# estimated on fake tensors before it runs (_Run._check_workload_fits).
ACTIVATION_CHECK_SHARE = 0.25
# ... and refused when the estimate's bytes above the weights pass this share of what is then
# available (the estimate counts tensors as the run does; the rest is the allocator's margin).
ACTIVATION_LIMIT = 0.7


def _busy_note(result: RunResult) -> str:
    """" The machine was busy: …" when the load average, less this process's own threads, says
    other work held most of a core (torch's threads spinning on cores another process holds ran
    a 17 ms forward in 930 ms); "" otherwise."""
    cpu = (result.environment or {}).get("cpu") or {}
    load, cores = cpu.get("load_average_1m"), cpu.get("usable_cores") or cpu.get("logical_cores")
    threads = cpu.get("torch_threads")
    # (the load average counts this process too: in a guide or a sweep, its own earlier runs
    # kept about ``threads`` cores busy; what is left is other work)
    if load is None or not cores or not threads or load - threads < 0.75:
        return ""
    return (f" The machine was busy (load average {load:g} on {cores} cores, torch using "
            f"{threads} thread{'s' if threads != 1 else ''}): fewer threads steady the timings "
            "(--threads 1 on the command line).")


def _stage_words(stage: str) -> str:
    """A progress stage as a phrase: "memory" → "the memory pass" ("Out of memory during
    memory" read as a typo)."""
    passes = {"memory": "the memory pass", "timing": "the timing passes",
              "warmup": "the warm-up pass", "baseline": "the unoptimized baseline's passes",
              "load": "loading the model", "prepare": "preparing the inputs",
              "optimize": "applying the optimizations", "quality": "the quality check",
              "compile": "compiling", "attention": "the attention capture"}
    return passes.get(stage, stage or "the run")


def _deltas(result: RunResult) -> None:
    """Optimized minus baseline (bytes) and optimized / baseline (time), measured in one run."""
    base, t = result.baseline or {}, result.totals
    result.deltas = {
        "model_weights_bytes": t.model_weights_bytes - base.get("model_weights_bytes", 0),
        "peak_bytes": t.peak_bytes - base.get("peak_bytes", 0),
        "activation_bytes": t.activation_bytes - base.get("activation_bytes", 0),
        "kv_cache_bytes": t.kv_cache_bytes - base.get("kv_cache_bytes", 0),
        "gradient_bytes": t.gradient_bytes - base.get("gradient_bytes", 0),
        "optimizer_state_bytes": t.optimizer_state_bytes - base.get("optimizer_state_bytes", 0),
        "latency_ratio": _ratio(t.plain_latency_ms, base.get("plain_latency_ms")),
        "tokens_per_s_ratio": _ratio(t.tokens_per_s, base.get("tokens_per_s")),
    }
    saved, before = (result.training or {}).get("saved_for_backward_bytes"), base.get(
        "saved_for_backward_bytes")
    if saved is not None and before is not None:
        result.deltas["saved_for_backward_bytes"] = saved - before


def _peak_rose(result: RunResult) -> bool:
    """The peak rose over the baseline's by more than noise in tensor accounting (64 KiB, or
    1% of the baseline's peak): said in a warning of its own."""
    base_peak = (result.baseline or {}).get("peak_bytes") or 0
    return bool(result.deltas) and result.deltas["peak_bytes"] > max(64 << 10, 0.01 * base_peak)


def _parts_that_fell(result: RunResult) -> list[str]:
    """The parts of the memory that fell against the baseline, "saved for backward 5.73 MiB →
    0.92 MiB (−4.81 MiB)", from :func:`engine.format.against_baseline` (peak, weights and
    latency left out)."""
    from .format import baseline_pairs, bytes_change

    out = []
    for label, before, after in baseline_pairs(result):
        # (a fall within tensor accounting's noise is no saving: 64 KiB, or 1% of the part)
        if label in ("peak", "weights") or before - after <= max(64 << 10, 0.01 * before):
            continue
        a, b, change = bytes_change(before, after)
        out.append(f"{label} {a} → {b} ({change})")
    return out


def _trap_warnings(result: RunResult) -> None:
    """Known traps, detected from this run's measurements (never from a technique's name)."""
    t = result.totals
    # A load peak matters when it is large against the weights and in absolute terms (small
    # models' loads are dominated by tokenizer and Python objects, which say nothing here).
    if (t.load_peak_bytes and t.steady_bytes and t.steady_bytes > 0
            and t.load_peak_bytes > 1.2 * t.steady_bytes
            and t.load_peak_bytes - t.steady_bytes > 64 << 20):
        result.warnings.append(
            f"Loading peaked at {t.load_peak_bytes / 2**20:.1f} MiB, "
            f"{t.load_peak_bytes / t.steady_bytes:.2f}× the {t.steady_bytes / 2**20:.1f} MiB held "
            "after loading: budget for the load peak, not the steady state.")
    for applied in result.optimizations:
        before, after = applied["weights_bytes_before"], applied["weights_bytes_after"]
        if after > before:
            result.warnings.append(
                f"{applied['name']} raised the model's weight memory from {before / 2**20:.2f} "
                f"to {after / 2**20:.2f} MiB (×{after / before:.2f}).")
        elif (after == before and applied["modules_touched"] and result.deltas
              and result.deltas["peak_bytes"] >= 0 and not _peak_rose(result)):
            # (a peak that rose has its own warning below; one that stayed may sit above a
            # part that fell: checkpointing lowers saved-for-backward under a peak in the
            # optimizer step, which it cannot touch)
            fell = _parts_that_fell(result)
            if fell:
                phase = max(result.phase_peaks or {"": 0}, key=lambda k: result.phase_peaks[k]
                            if result.phase_peaks else 0)
                result.warnings.append(
                    f"{applied['name']} lowered {'; '.join(fell)}, but not the peak: it is in "
                    + (f"the {phase} phase, " if phase else "")
                    + "above what it lowered (weights "
                    f"{after / 2**20:.2f} MiB before and after).")
            else:
                result.warnings.append(
                    f"{applied['name']} changed {applied['modules_touched']} module(s) but saved "
                    f"no memory: weights {after / 2**20:.2f} MiB before and after, and the peak "
                    "did not fall.")
    d = result.deltas
    if d:
        names = ", ".join(a["name"] for a in result.optimizations)
        if _peak_rose(result):
            result.warnings.append(f"With {names} the peak rose by {d['peak_bytes'] / 2**20:.2f} "
                                   "MiB over the unoptimized baseline.")
        if d["latency_ratio"] and d["latency_ratio"] > 1.1:
            # Stated as a fact it contradicted the noisy-latency warning beside it (×26 slower
            # from passes ×40 apart): said with its doubt when either side's passes disagree.
            noisy = any((timing_spread(times) or 0) > NOISY_TIMING_SPREAD for times in (
                (result.timing or {}).get("plain_ms"), (result.baseline or {}).get("plain_ms")))
            result.warnings.append(
                f"With {names} the workload ran ×{d['latency_ratio']:.2f} slower than the "
                "unoptimized baseline on this device"
                + (", by timing passes too far apart to trust (the noisy-latency warning says "
                   "how far): rerun before relying on it." if noisy else "."))
    _noise_warnings(result)


def median_step(steps: list[Any]) -> Any:
    """The training step of median length (forward + backward + optimizer; the lower of the
    two middle ones for an even count), whose phases are reported together."""
    ordered = sorted(steps, key=lambda s: s.forward_ms + s.backward_ms + s.optimizer_ms)
    return ordered[(len(ordered) - 1) // 2]


SUB_ROW_EXCESS = 1.25  # the sub-rows' sum over their block's latency that is called out


def _sub_row_warning(result: RunResult) -> None:
    """Say so when a block's attention/MLP rows add up to clearly more than the block: they
    come from the detailed pass, the block from the live one, so on a noisy machine a 1.5 ms
    block showed a 5.2 ms attention row under it, with nothing to explain it."""
    # The detailed pass's extra hooks slow what it times (most on a launch-bound GPU): rows
    # are called out only beyond what that explains.
    detailed = (result.timing or {}).get("detailed_overhead")
    live = result.totals.instrumentation_overhead
    allowed = SUB_ROW_EXCESS * max(1.0, detailed / live if detailed and live else 1.0)
    children: dict[str, float] = {}
    for layer in result.layers:
        if layer.parent is not None and layer.latency_ms is not None:
            children[layer.parent] = children.get(layer.parent, 0.0) + layer.latency_ms
    over = [(layer.name, layer.latency_ms, children[layer.name]) for layer in result.layers
            if layer.latency_ms and layer.name in children
            and children[layer.name] > allowed * layer.latency_ms]
    if not over:
        return
    name, block, parts = max(over, key=lambda o: o[2] / o[1])
    result.warnings.append(
        f"In {len(over)} block(s) the attention/MLP latencies add up to more than the block's "
        f"own (worst: {name}, {parts:.2f} ms of rows under a {block:.2f} ms block). The rows come "
        "from a separate pass that hooks every module, the blocks from the live pass; the two "
        "disagree by more than that pass's own overhead explains only when the timings are "
        "noisy. Rerun with more timing passes "
        f"(now {result.config.repeats}; Timing passes in the window, --repeats N).")


def _noise_warnings(result: RunResult) -> None:
    """Say so when the plain timing passes of this run (or of its baseline) disagree widely:
    with few repeats one disturbed pass moves the median, and the latency ratio with it; and
    when the sub-rows of a block disagree with it (``_sub_row_warning``)."""
    _sub_row_warning(result)
    cfg = result.config
    for who, times in (("", (result.timing or {}).get("plain_ms")),
                       ("the unoptimized baseline's ", (result.baseline or {}).get("plain_ms"))):
        spread = timing_spread(times)
        if spread is None or spread <= NOISY_TIMING_SPREAD:
            continue
        times = [ms for ms in times if ms and ms > 0]
        ratio = " and the latency ratio against the baseline" if result.deltas else ""
        result.warnings.append(
            f"Latency is noisy: {who}{len(times)} plain timing passes took {min(times):.2f} to "
            f"{max(times):.2f} ms (×{spread:.1f} apart), so the median"
            f"{ratio} may be off. Rerun on a quieter machine or with more timing passes (now "
            f"{cfg.repeats}; Timing passes in the window, --repeats N on the command line)."
            + _busy_note(result))
