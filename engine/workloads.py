"""The workloads: forward pass, generation (prefill + decode) and one fine-tuning step.

Each runs in a plain mode (for timing without the profiler), under a :class:`TimingProbe`, or under
a :class:`MemoryProbe`. Generation uses its own greedy loop instead of ``model.generate`` so that
prefill and every decode step can be timed and the cache read between steps; it calls the model
exactly as ``generate`` does (cache object, ``logits_to_keep=1``).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import Cancelled, ErrorKind, MemLensError
from .accounting import is_fake
from .instrument import MemoryProbe, cache_bytes_per_layer
from .layers import is_causal_lm, synthetic_loss


@functools.lru_cache(maxsize=1)
def sample_text() -> str:
    """The Zen of Python, read from the standard library's ``this`` module without importing it
    (importing prints it). Not in the demo model's training corpus (it is not a docstring)."""
    spec = importlib.util.find_spec("this")
    src = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "s":
            import codecs

            return codecs.decode(ast.literal_eval(node.value), "rot13")
    return "Beautiful is better than ugly. Explicit is better than implicit."


@dataclass
class Inputs:
    input_ids: torch.Tensor
    source: str  # prompt | sample text | random ids
    tokens: list[str] = field(default_factory=list)


def max_positions(model: nn.Module) -> int | None:
    return config_positions(getattr(model, "config", None))


def config_positions(cfg: Any) -> int | None:
    """The positions a transformers config declares (None when it declares none)."""
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def make_inputs(model: nn.Module, tokenizer: Any, batch: int, seq: int, prompt: str | None,
                device: torch.device, seed: int) -> Inputs:
    """Token ids: the prompt (tokenized), else the sample text repeated to ``seq`` tokens when a
    tokenizer exists (real text gives meaningful attention maps), else seeded random ids."""
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if prompt and tokenizer is None:
        raise MemLensError(
            ErrorKind.INVALID_WORKLOAD,
            "This model has no tokenizer, so the prompt cannot be turned into tokens.",
            "Leave the prompt empty (random token ids of the sequence length are used), or load "
            "a model folder that has its tokenizer files.")
    if tokenizer is not None and (prompt or vocab):
        text = prompt if prompt else sample_text()
        ids = tokenizer(text, add_special_tokens=bool(prompt) and False)["input_ids"]
        if not ids:
            raise MemLensError(ErrorKind.INVALID_WORKLOAD, "The prompt has no tokens.",
                               "Enter some text, or leave the prompt empty for sample text.")
        if not prompt:
            while len(ids) < seq:
                ids = ids + ids
            ids = ids[:seq]
        row = torch.tensor(ids, dtype=torch.long)
        source = "prompt" if prompt else "sample text"
        tokens = readable_tokens(tokenizer, ids)
    else:
        gen = torch.Generator().manual_seed(seed)
        row = torch.randint(0, max(vocab, 2), (seq,), generator=gen)
        source, tokens = "random ids", []
    return Inputs(row.unsqueeze(0).repeat(batch, 1).to(device), source, list(tokens))


MAX_BYTE_PIECES = 8  # the most tokens one character spans (UTF-8 needs 4; some merges add more)


def readable_tokens(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token as the text it stands for (the attention maps' axis labels). A byte-level
    tokenizer splits a character outside ASCII into byte tokens that decode to nothing on their
    own ('ä¸' pieces, or U+FFFD): those tokens are labelled with the character they make
    together and their part, e.g. '人(1/3)', '人(2/3)', '人(3/3)'."""
    labels: list[str] = []
    i = 0
    while i < len(ids):
        text = tokenizer.decode([ids[i]])
        if "\ufffd" not in text:
            labels.append(text)
            i += 1
            continue
        for j in range(i + 2, min(len(ids), i + MAX_BYTE_PIECES) + 1):
            joined = tokenizer.decode(ids[i:j])
            if "\ufffd" not in joined:
                parts = j - i
                labels += [f"{joined}({k + 1}/{parts})" for k in range(parts)]
                i = j
                break
        else:  # no clean character within reach (a prompt cut mid-character): say so
            labels.append(text)
            i += 1
    return labels


def check_positions(model: nn.Module, length: int, what: str, new_tokens: int = 0,
                    prompt: bool = False) -> None:
    """Refuse an input (plus ``new_tokens`` generated after it) longer than the model's
    positions, with a fix that names what sets the length: the prompt, or the sequence."""
    limit = max_positions(model)
    total = length + new_tokens
    if limit is None or total <= limit:
        return
    room = limit - new_tokens
    source = f"a prompt of {length} tokens" if prompt else f"{length} input tokens"
    parts = source + (f" + {new_tokens} new tokens" if new_tokens else "")
    if room < 1:
        fits = limit - length  # new tokens that fit after this input
        fix = (f"Generate at most {fits} new tokens after this input (New tokens; "
               "--new-tokens)." if fits >= 1
               else f"Shorten the {'prompt' if prompt else 'sequence'} below {limit} tokens and "
                    f"generate fewer than {limit} new tokens.")
    elif prompt:
        fix = (f"Shorten the prompt to at most {room} tokens"
               + (f" ({limit} positions − {new_tokens} new tokens)" if new_tokens else "")
               + ", or clear it to use the sequence length.")
    else:
        fix = (f"Use a sequence of at most {room} tokens (Sequence; --seq)"
               + (f": {new_tokens} new tokens follow it" if new_tokens else "") + ".")
    raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                       f"{what} needs {total} positions ({parts}) but the model supports "
                       f"{limit}.", fix)


def check_train_length(model: nn.Module, length: int, prompt: bool = False) -> None:
    """A causal LM's training step predicts each next token: one token has none, and the loss
    came out NaN without a word."""
    if length < 2 and is_causal_lm(model):
        raise MemLensError(
            ErrorKind.INVALID_WORKLOAD,
            f"A training step of a causal language model needs at least 2 tokens (each one "
            f"predicts the next); the {'prompt' if prompt else 'input'} has {length}.",
            "Use a longer prompt." if prompt else "Use a sequence of 2 or more (Sequence; "
            "--seq).")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


# -- forward -------------------------------------------------------------------------------------------
def forward(model: nn.Module, inputs: Inputs, probe: MemoryProbe | None = None) -> Any:
    kwargs: dict[str, Any] = {"input_ids": inputs.input_ids}
    if _accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    with torch.no_grad():
        if probe is not None:
            probe.phase = "forward"
        return model(**kwargs)


# -- generation ----------------------------------------------------------------------------------------
@dataclass
class GenerationTrace:
    prefill_ms: float = 0.0
    decode_ms: list[float] = field(default_factory=list)
    kv_bytes_per_step: list[int] = field(default_factory=list)  # after prefill, then each step
    kv_bytes_per_layer: list[int] = field(default_factory=list)  # at the end
    cached_positions: int = 0
    new_ids: list[int] = field(default_factory=list)
    # Estimation only: decode steps not run (see :func:`_fast_forward`); their KV bytes in
    # ``kv_bytes_per_step`` and their FLOPs are interpolated, exactly for a growing cache.
    skipped_steps: int = 0


def generate(model: nn.Module, inputs: Inputs, new_tokens: int, device: torch.device,
             cancel: threading.Event | None = None, probe: MemoryProbe | None = None,
             timed: bool = True, cache_factory: Any = None) -> GenerationTrace:
    """Greedy generation: one prefill call, then one call per new token on the cache."""
    trace = GenerationTrace()
    extra: dict[str, Any] = {}
    # transformers 5.2x renamed the cache argument and output to `cache` (the old
    # `past_key_values` warns); 5.1x only knows `past_key_values`.
    cache_arg = "cache" if _accepts(model, "cache") else "past_key_values"
    if _accepts(model, "logits_to_keep"):
        extra["logits_to_keep"] = 1
    with torch.no_grad():
        if probe is not None:
            probe.phase = "prefill"
        t0 = time.perf_counter()
        if cache_factory is not None:  # a cache policy chosen by an optimization
            batch, prompt = inputs.input_ids.shape
            extra[cache_arg] = cache_factory(model, batch, prompt + new_tokens)
        out = model(input_ids=inputs.input_ids, use_cache=True, **extra)
        extra.pop(cache_arg, None)
        next_ids = out.logits[:, -1:].argmax(-1)
        if timed:
            sync(device)
        trace.prefill_ms = (time.perf_counter() - t0) * 1e3
        cache = _returned_cache(out)
        if cache is None:
            raise MemLensError(ErrorKind.NOT_APPLICABLE, "The model returned no KV cache.",
                               "Generation needs a causal LM that supports use_cache.")
        del out
        trace.kv_bytes_per_step.append(sum(cache_bytes_per_layer(cache)))
        _keep_token(trace, next_ids)
        if probe is not None:
            probe.phase = "decode"
        steps = new_tokens - 1
        flops_before: list[dict[str, dict[Any, int]]] = []
        step = 0
        while step < steps:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            skip = step == 1 and _can_fast_forward(probe, cache, next_ids, steps,
                                                   inputs.input_ids.shape[1] + steps)
            if skip:
                first_step_flops = _flop_delta(probe, flops_before[0])
                # The prompt and the first decode step's token are cached; the last step
                # starts from every position but its own.
                _fast_forward(probe, cache, inputs.input_ids.shape[1] + steps - 1)
                before_last = int(sum(cache_bytes_per_layer(cache)))
                trace.skipped_steps = steps - 2
                step = steps - 1
            if step in (0, steps - 1):
                flops_before.append(_flop_counts(probe))
            t0 = time.perf_counter()
            out = model(input_ids=next_ids, use_cache=True, **{cache_arg: cache}, **extra)
            next_ids = out.logits[:, -1:].argmax(-1)
            if timed:
                sync(device)
            trace.decode_ms.append((time.perf_counter() - t0) * 1e3)
            cache = _returned_cache(out)
            del out
            if skip:
                _fill_skipped(trace, before_last, steps)
                _add_skipped_flops(probe, first_step_flops,
                                   _flop_delta(probe, flops_before[-1]), steps - 2)
            trace.kv_bytes_per_step.append(sum(cache_bytes_per_layer(cache)))
            _keep_token(trace, next_ids)
            step += 1
        trace.kv_bytes_per_layer = cache_bytes_per_layer(cache)
        trace.cached_positions = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0
    return trace


# -- estimation: the decode steps between the first and the last are not run ---------------------
# Each decode step of a growing cache is the one before with one more cached position: its
# cache, attention scores and concatenation (or dequantization) transients only grow, so the
# peak of every step is at most the last step's, its KV bytes grow by the same amount per step,
# and its FLOPs are affine in the position. A preallocated (static) cache is the limit case:
# every step has the same shapes. On fake tensors (no values to carry from step to step) an
# estimate therefore runs the first decode step, grows each layer's cache to the length the last
# step starts from, and runs the last step: the same peak, per-layer figures and KV bytes as
# every step, with the skipped steps' KV bytes and FLOPs filled in from the two ends (exact for
# an affine sequence; checked against measured runs in tests/test_estimate.py). Caches that
# re-quantize every so many steps (quanto's residual window) are not affine: every step runs.
# A sliding-window layer (Mistral's, Gemma's local layers) keeps the last window - 1 positions:
# until the generation outgrows that it is a dynamic layer, after it every step has one shape;
# only the first case is fast-forwarded (the steps' KV bytes stop growing where the window
# fills, which the two ends do not tell), so a generation longer than the window runs every step.
def _growable_layers() -> dict[type, tuple[str, ...]]:
    """Cache layer classes whose steps are affine -> the attributes holding their states
    (a tuple ``(tensor, scale)`` for fp8's quantized states; none to grow for a static one)."""
    from transformers import cache_utils

    kinds: dict[type, tuple[str, ...]] = {cache_utils.DynamicLayer: ("keys", "values"),
                                          cache_utils.StaticLayer: ()}
    sliding = getattr(cache_utils, "DynamicSlidingWindowLayer", None)
    if sliding is not None:
        kinds[sliding] = ("keys", "values")
    fp8 = getattr(cache_utils, "Fp8QuantizedLayer", None)  # transformers ≥ 5.x
    if fp8 is not None:
        kinds[fp8] = ("_quantized_keys", "_quantized_values")
    return kinds


def _can_fast_forward(probe: MemoryProbe | None, cache: Any, ids: torch.Tensor,
                      steps: int, final_length: int) -> bool:
    """Whether the decode steps between the first and the last may be skipped: every cache
    layer grows affinely up to ``final_length`` positions (what the last step holds)."""
    if probe is None or steps < 3 or not is_fake(ids):
        return False
    kinds = _growable_layers()
    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(type(layer) in kinds and layer.is_initialized
                                and _within_window(layer, final_length) for layer in layers)


def _within_window(layer: Any, final_length: int) -> bool:
    """A sliding-window layer that never drops a position up to ``final_length`` (it keeps
    ``window - 1``; one recording the past for assisted decoding keeps all: not skipped)."""
    if not getattr(layer, "is_sliding", False) or not hasattr(layer, "sliding_window"):
        return True
    return (not getattr(layer, "record_past", False)
            and isinstance(layer.sliding_window, int)
            and final_length <= layer.sliding_window - 1)


def _fast_forward(probe: MemoryProbe, cache: Any, length: int) -> None:
    """Grow every cache layer to ``length`` positions, one tensor at a time (each old tensor
    is dropped before its longer replacement exists, so the live total never exceeds the
    result's), and give the new tensors to their attention module as KV cache, as a step
    would have. A static layer keeps its preallocated tensors."""
    owners = {}
    for t in probe.tracked:
        if t.kind == "attention":
            idx = getattr(t.module, "layer_idx", None)
            owners[t.layer_index if idx is None else idx] = t.name
    kinds = _growable_layers()
    for i, layer in enumerate(cache.layers):
        for attr in kinds[type(layer)]:
            old = getattr(layer, attr)
            scale = None
            if isinstance(old, tuple):  # fp8: (states, frozen per-tensor scale)
                old, scale = old
            shape, dtype, device = list(old.shape), old.dtype, old.device
            setattr(layer, attr, None)
            del old
            shape[-2] = length
            new = torch.empty(shape, dtype=dtype, device=device)
            setattr(layer, attr, new if scale is None else (new, scale))
            if i in owners:
                probe.acc.reclassify(new, owners[i], "kv_cache")
        cumulative = getattr(layer, "cumulative_length", None)  # what get_seq_length reads
        if isinstance(cumulative, torch.Tensor):  # static: in place (its address is static)
            cumulative.fill_(length)
        elif isinstance(cumulative, int):
            layer.cumulative_length = length


def _fill_skipped(trace: GenerationTrace, before_last: int, steps: int) -> None:
    """KV bytes after each skipped step: from the bytes after the first decode step to the
    bytes the last step started from (measured on the grown cache), in equal steps."""
    first = trace.kv_bytes_per_step[-1]
    gaps = steps - 2
    for j in range(1, gaps):
        trace.kv_bytes_per_step.append(first + (before_last - first) * j // gaps)
    trace.kv_bytes_per_step.append(before_last)


def _flop_counts(probe: MemoryProbe | None) -> dict[str, dict[Any, int]]:
    counter = getattr(probe, "_flops", None)
    if counter is None:
        return {}
    return {mod: dict(ops) for mod, ops in counter.flop_counts.items()}


def _flop_delta(probe: MemoryProbe | None, before: dict[str, dict[Any, int]]
                ) -> dict[str, dict[Any, int]]:
    now = _flop_counts(probe)
    return {mod: {op: n - before.get(mod, {}).get(op, 0) for op, n in ops.items()}
            for mod, ops in now.items()}


def _add_skipped_flops(probe: MemoryProbe | None, first: dict[str, dict[Any, int]],
                       last: dict[str, dict[Any, int]], skipped: int) -> None:
    """The skipped steps' FLOPs: for counts affine in the step, the sum over the steps between
    the first and the last is ``skipped × (first + last) / 2``."""
    counter = getattr(probe, "_flops", None)
    if counter is None:
        return
    for mod in set(first) | set(last):
        for op in set(first.get(mod, {})) | set(last.get(mod, {})):
            total = skipped * (first.get(mod, {}).get(op, 0) + last.get(mod, {}).get(op, 0))
            if total:
                counter.flop_counts[mod][op] += total // 2


def _keep_token(trace: GenerationTrace, next_ids: torch.Tensor) -> None:
    # Fake tensors (estimation) have shapes but no values: there is no token to keep.
    if not is_fake(next_ids):
        trace.new_ids.append(int(next_ids[0, 0]))


def _returned_cache(out: Any) -> Any:
    for name in ("cache", "past_key_values"):
        if name in getattr(out, "__dataclass_fields__", {}) or (hasattr(out, "keys") and name in out.keys()):
            value = out[name] if hasattr(out, "keys") and name in out.keys() else getattr(out, name)
            if value is not None:
                return value
    return None


# -- training step ----------------------------------------------------------------------------------------
@dataclass
class StepTrace:
    loss: float = float("nan")
    forward_ms: float = 0.0
    backward_ms: float = 0.0
    optimizer_ms: float = 0.0
    synthetic_loss: bool = False


def make_optimizer(model: nn.Module, lr: float, factory: Any = None) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise MemLensError(ErrorKind.NOT_APPLICABLE, "The model has no trainable parameters.",
                           "Unfreeze some parameters, or run a forward workload.")
    if factory is not None:
        return factory(params, lr)
    return torch.optim.AdamW(params, lr=lr)


def train_step(model: nn.Module, inputs: Inputs, optimizer: torch.optim.Optimizer,
               device: torch.device, probe: MemoryProbe | None = None,
               context: Any = None, step_outside_probe: bool = False) -> StepTrace:
    """One step: forward with loss, backward, optimizer step (gradients are then freed).

    ``context(device)`` wraps the forward and loss only (autocast's recommended use)."""
    import contextlib

    trace = StepTrace()
    context = context or (lambda device: contextlib.nullcontext())
    model.train()
    try:
        optimizer.zero_grad(set_to_none=True)
        if probe is not None:
            probe.phase = "forward"
        t0 = time.perf_counter()
        with context(device):
            if is_causal_lm(model):
                # No KV cache in training (transformers builds one by default: memory that a
                # training step never reads), as training loops ask for.
                extra = {"use_cache": False} if _accepts(model, "use_cache") else {}
                loss = model(input_ids=inputs.input_ids, labels=inputs.input_ids, **extra).loss
            else:
                # Encoders have no labels here: a synthetic loss (mean square of the last hidden
                # state) exercises the same backward; reported as such. Through the loss's row
                # (layers.loss_row) where the run has one.
                out = model(input_ids=inputs.input_ids)
                hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
                scope = model.__dict__.get("_memlens_loss")
                loss = scope.call(hidden) if scope is not None else synthetic_loss(hidden)
                trace.synthetic_loss = True
        sync(device)
        t1 = time.perf_counter()
        if probe is not None:
            probe.phase = "backward"
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        if probe is not None:
            probe.phase = "optimizer"
        if probe is not None and step_outside_probe:
            from torch.utils._python_dispatch import _disable_current_modes

            with _disable_current_modes():  # compiled steps refuse Python dispatch modes
                optimizer.step()
        else:
            optimizer.step()
        sync(device)
        t3 = time.perf_counter()
        if probe is not None:
            probe.track_optimizer_state()
            probe.phase = "after"
        if not is_fake(loss):  # estimation: a fake loss has no value (stays NaN)
            trace.loss = float(loss.detach())
        trace.forward_ms, trace.backward_ms, trace.optimizer_ms = (
            (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        del loss
    finally:
        model.eval()
    return trace
