"""Package data: the built-in demo model, architecture presets and icons.

Everything is reached through ``importlib.resources`` so it works from a wheel, an editable
install or a frozen (PyInstaller) bundle alike.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

DEMO_MODEL = "models/memlens-demo-lm"


def path(relative: str) -> Path:
    """A real filesystem path to a resource (the package is always installed unzipped)."""
    return Path(str(files(__name__).joinpath(relative)))


def demo_model_path() -> Path:
    """The built-in demo causal LM, a Hugging Face folder (config, safetensors, tokenizer)."""
    return path(DEMO_MODEL)


def preset_ids() -> list[str]:
    """Ids of the architecture presets shipped in ``resources/presets``."""
    return sorted(p.stem for p in path("presets").glob("*.json"))


def preset_config(preset_id: str) -> dict:
    """The published config values of one preset (a ``config.json`` dict)."""
    file = path("presets") / f"{preset_id}.json"
    if not file.is_file():
        raise KeyError(preset_id)
    return json.loads(file.read_text(encoding="utf-8"))
