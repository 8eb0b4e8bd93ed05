"""What to run: the model, the workload and how to measure it, as a versioned dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorKind, MemLensError

CONFIG_SCHEMA_VERSION = 1

WORKLOADS = ("forward", "generate", "train")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Short names taken wherever a dtype is (--dtype, an optimization's dtype=...).
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
ATTENTION_IMPLS = ("auto", "eager", "sdpa", "flex_attention")
# Why flex attention is refused (--attention and the attention optimization alike).
FLEX_UNMEASURABLE = (
    "flex_attention runs only as a torch.compile'd kernel (transformers compiles it with "
    "fullgraph=True), and compiled code cannot run under the tensor accounting MemLens measures "
    "with (a TorchDispatchMode), so its memory cannot be measured here")
FLEX_HINT = "Measure sdpa (a fused kernel as well: no score matrix is kept) or eager."


# Characters a terminal acts on rather than shows (escapes, bells) and the bidirectional
# overrides that reorder what follows them: a label printed by `memlens runs` could retitle the
# terminal or disguise itself.
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


MAX_BATCH = 1 << 20  # a batch size no run or estimate goes beyond
MAX_SEQ = 1 << 24  # 16 M tokens: beyond every model's positions
MAX_PASSES = 1000  # warm-up passes or timing repeats


def one_line(text: str) -> str:
    """``text`` as one line of plain text: control characters and bidirectional overrides
    dropped, runs of whitespace (newlines included) made one space."""
    import unicodedata

    # (and surrogates: a label given as undecodable bytes on the command line arrives as lone
    # surrogates, which no file can be written with: its trace and report failed later)
    kept = "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or (unicodedata.category(ch) not in ("Cc", "Cs")
                                       and ch not in _BIDI))
    return " ".join(kept.split())


MAX_LABEL = 200  # characters: a label is one cell of a table (10,000 were kept and printed)


def check_label(label: str) -> None:
    """A label of at most :data:`MAX_LABEL` characters, else an error naming the fix."""
    if len(label) > MAX_LABEL:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"The label has {len(label):,} characters; a label holds at most "
                           f"{MAX_LABEL}.",
                           f"Shorten it to {MAX_LABEL} characters or fewer: it names the run "
                           "in lists and reports.")


def check_device(dev: Any) -> None:
    """A device MemLens runs on (cpu, cuda, cuda:N), else an error naming the fix."""
    if not (isinstance(dev, str) and (dev == "cpu" or dev == "cuda" or (
            dev.startswith("cuda:") and dev[5:].isascii() and dev[5:].isdigit()))):
        raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"Unknown device {dev!r}.",
                           "Use cpu, cuda or cuda:N.")


@dataclass
class RunConfig:
    """A run's full description. JSON-serialisable; saved inside every run file.

    ``model`` is ``demo``, ``demo-encoder``, a local folder, a ``config.json`` path, a Hub id, or
    ``preset:ID``. For ``generate``, ``seq`` is the prompt length in tokens (ignored when ``prompt``
    is given). ``dtype='auto'`` keeps the checkpoint's dtype (float32 for random-init builds).
    """

    model: str = "demo"
    workload: str = "forward"
    batch: int = 1
    seq: int = 128
    new_tokens: int = 32
    prompt: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    attention_impl: str = "auto"
    attention_maps: bool = False
    trust_remote_code: bool = False
    detailed: bool = False  # CUDA: per-module allocator peaks (resets the peak at every boundary)
    # CUDA: record the caching allocator's history during the measured memory pass and write it
    # to this pickle (opens in pytorch.org/memory_viz); "" for none.
    memory_snapshot: str = ""
    warmup: int = 1
    repeats: int = 3
    sample_hz: float = 20.0
    lr: float = 1e-4
    seed: int = 0
    label: str = ""
    optimizations: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = CONFIG_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.label, str):
            self.label = one_line(self.label)

    def validate(self) -> None:
        """Raise ``MemLensError(INVALID_WORKLOAD)`` naming the bad value and the fix."""

        def bad(what: str, hint: str) -> MemLensError:
            return MemLensError(ErrorKind.INVALID_WORKLOAD, what, hint)

        if not isinstance(self.model, str) or not self.model.strip():
            # (an empty model read as the current folder: "The folder . has no config.json")
            raise bad("No model given.", "Choose demo, a preset (preset:NAME), a model folder, "
                      "a config.json or a Hub id (--model).")
        if self.memory_snapshot and not str(self.device).startswith("cuda"):
            raise bad(f"A CUDA memory snapshot needs a CUDA device (the run's device is "
                      f"{self.device}).", "Use --device cuda, or drop --memory-snapshot; on CPU "
                      "the trace export (memlens export RUN --trace FILE) shows the timeline.")
        if self.detailed and not str(self.device).startswith("cuda"):
            raise bad(f"Per-module allocator peaks (--detailed) need a CUDA device (the run's "
                      f"device is {self.device}).",
                      "Use --device cuda, or drop --detailed: on CPU every module's transient "
                      "peak is measured by tensor accounting already (the 'transient' column).")
        if self.workload not in WORKLOADS:
            raise bad(f"Unknown workload {self.workload!r}.", f"Choose one of {', '.join(WORKLOADS)}.")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise bad(f"Batch size must be at least 1 (got {self.batch}).", "Use --batch 1 or more.")
        if self.prompt is None and (not isinstance(self.seq, int) or self.seq < 1):
            raise bad(f"Sequence length must be at least 1 (got {self.seq}).", "Use --seq 1 or more.")
        # Sizes no model takes are refused here: a sequence of 10**12 tokens was built as a
        # prompt until the machine ran out of memory, and a batch of 10**17 overflowed PyTorch.
        if self.batch > MAX_BATCH:
            raise bad(f"Batch size {self.batch} is beyond what MemLens runs or estimates "
                      f"(at most {MAX_BATCH:,}).", f"Use --batch {MAX_BATCH} or less.")
        if self.prompt is None and self.seq > MAX_SEQ:
            raise bad(f"Sequence length {self.seq} is beyond any model's positions (MemLens "
                      f"takes at most {MAX_SEQ:,} tokens).", f"Use --seq {MAX_SEQ} or less.")
        for name, value, option in (("Warm-up passes", self.warmup, "--warmup"),
                                    ("Repeats", self.repeats, "--repeats")):
            if isinstance(value, int) and value > MAX_PASSES:
                raise bad(f"{name} {value} is more than a measurement needs (at most "
                          f"{MAX_PASSES}).", f"Use {option} {MAX_PASSES} or less.")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 63:
            # (torch.manual_seed overflowed past 64 bits: reported as a MemLens bug)
            raise bad(f"The seed must be a whole number from 0 to {2 ** 63 - 1} (got "
                      f"{self.seed}).", "Use --seed 0 or another number in that range.")
        if self.workload == "generate" and (not isinstance(self.new_tokens, int) or self.new_tokens < 1):
            raise bad(f"New tokens must be at least 1 for generation (got {self.new_tokens}).",
                      "Use --new-tokens 1 or more.")
        if not isinstance(self.new_tokens, int) or self.new_tokens < 0:
            # (only generation reads it, but a negative count is a mistake wherever it is given)
            raise bad(f"New tokens cannot be negative (got {self.new_tokens}).",
                      f"Leave --new-tokens out: the {self.workload} workload generates nothing.")
        if self.dtype not in DTYPES:
            raise bad(f"Unknown dtype {self.dtype!r}.", f"Choose one of {', '.join(DTYPES)}.")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise bad(f"Unknown attention implementation {self.attention_impl!r}.",
                      f"Choose one of {', '.join(ATTENTION_IMPLS)}.")
        if self.attention_impl == "flex_attention":
            raise bad(f"--attention flex_attention: {FLEX_UNMEASURABLE}.", FLEX_HINT)
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise bad(f"Repeats must be at least 1 (got {self.repeats}).",
                      "Use --repeats 1 or more.")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise bad(f"Warm-up passes must be 0 or more (got {self.warmup}).",
                      "Use --warmup 0 or more.")
        if not (0.1 <= self.sample_hz <= 1000):  # (1e-300 Hz overflowed the sampler's wait)
            raise bad(f"Sampling rate {self.sample_hz} Hz is out of range.",
                      "Use 0.1–1000 Hz (--sample-hz).")
        check_device(self.device)
        check_label(self.label)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
