"""The left control panel: what to run (model, workload, sizes, device, dtype) and Run/Cancel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.config import DTYPES, WORKLOADS, RunConfig

# RunConfig fields the controls set; a saved run's other fields are named when its settings are
# used (the window runs with their defaults, so a difference must not pass silently).
CONTROLLED = ("model", "workload", "batch", "seq", "new_tokens", "prompt", "device", "dtype",
              "attention_maps", "sample_hz", "repeats", "optimizations", "trust_remote_code")
# Fields that describe a run's bookkeeping rather than what it measures.
NOT_SETTINGS = ("label", "schema_version")

BUILTIN_MODELS = ("demo", "demo-encoder")
SEQ_TIP = "Sequence length; for generation, the prompt length in tokens"
SEQ_WITH_PROMPT_TIP = ("Run uses the prompt's tokens instead; Estimate, plans and the guide use "
                       "this length (fake tensors have no text)")


def model_choices() -> list[str]:
    """The built-in demos, then every architecture preset as ``preset:ID``."""
    choices = list(BUILTIN_MODELS)
    try:
        import resources

        choices += [f"preset:{preset}" for preset in resources.preset_ids()]
    except Exception:  # a broken resources folder must not keep the window from opening
        pass
    return choices


def detect_devices() -> list[str]:
    """``cpu``, plus ``cuda:N`` for every visible CUDA device (torch imported lazily)."""
    devices = ["cpu"]
    try:
        import torch

        if torch.cuda.is_available():
            devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except Exception:  # no torch, or a broken CUDA install: CPU only
        pass
    return devices


class ControlPanel(QWidget):
    """Emits ``run_requested(config_dict)`` and ``cancel_requested()``; holds no run state."""

    run_requested = Signal(object)
    cancel_requested = Signal()
    note = Signal(str)  # a line for the log: an optimization unticked or ticked again
    # Whether Run and Estimate can start: nothing running and nothing the engine would refuse
    # in the ticked optimizations (Run stayed enabled beside the red conflict, and clicking it
    # only turned the window's status into the same refusal).
    runnable_changed = Signal(bool)
    edited = Signal()  # a setting changed by the user (a stale error in the status can go)

    def __init__(self, model: str = "demo", devices: Sequence[str] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        box = QGroupBox("Run")
        # The form keeps its height: the optimizations list below scrolls instead (a conflict's
        # two lines above that list squeezed the spin boxes flat in a 700-pixel window).
        box.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        form = QFormLayout(box)

        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.addItems(model_choices())
        self.model_combo.setToolTip("demo, demo-encoder, preset:ID, a local folder, a "
                                    "config.json path or a Hub id")
        self.set_model(model)
        form.addRow("Model", self.model_combo)

        self.open_folder_button = QPushButton("Open folder…")
        self.open_config_button = QPushButton("Open config.json…")
        self.open_folder_button.clicked.connect(self._open_folder)
        self.open_config_button.clicked.connect(self._open_config)
        open_row = QHBoxLayout()
        open_row.addWidget(self.open_folder_button)
        open_row.addWidget(self.open_config_button)
        form.addRow("", open_row)

        self.workload_combo = QComboBox()
        self.workload_combo.addItems(list(WORKLOADS))
        self.workload_combo.currentTextChanged.connect(self._workload_changed)
        form.addRow("Workload", self.workload_combo)

        self.batch_spin = _spin(1, 4096, 1)
        form.addRow("Batch", self.batch_spin)
        self.seq_spin = _spin(1, 1 << 20, 128)
        self.seq_spin.setToolTip(SEQ_TIP)
        form.addRow("Sequence", self.seq_spin)
        self.prompt_edit = QLineEdit()
        self.prompt_edit.setPlaceholderText("sample text, repeated to Sequence tokens")
        self.prompt_edit.setClearButtonEnabled(True)
        self.prompt_edit.setToolTip("Text to tokenize as the input of Run (any script); its "
                                    "tokens set the sequence length. Empty: the shipped sample "
                                    "text, repeated to Sequence tokens.")
        self.prompt_edit.textChanged.connect(self._prompt_changed)
        form.addRow("Prompt", self.prompt_edit)
        self.new_tokens_spin = _spin(1, 1 << 16, 32)
        form.addRow("New tokens", self.new_tokens_spin)

        self.device_combo = QComboBox()
        self.device_combo.addItems(list(devices) if devices is not None else detect_devices())
        form.addRow("Device", self.device_combo)

        self.dtype_combo = QComboBox()
        self.dtype_combo.addItems(list(DTYPES))
        form.addRow("Dtype", self.dtype_combo)

        self.sample_spin = _spin(1, 200, 20)
        self.sample_spin.setSuffix(" Hz")
        self.sample_spin.setToolTip("How often the timeline samples process and GPU memory")
        form.addRow("Sampling", self.sample_spin)
        # (the noisy-latency warning asks for more timing passes: the window must offer them)
        self.repeats_spin = _spin(1, 100, RunConfig().repeats)
        self.repeats_spin.setToolTip("Timing passes whose median is the latency; more passes "
                                     "steady a noisy machine's figure (memlens profile "
                                     "--repeats)")
        form.addRow("Timing passes", self.repeats_spin)

        self.attention_check = QCheckBox("Attention maps")
        form.addRow("", self.attention_check)
        # Never saved with the settings: every session opts in again.
        self.trust_check = QCheckBox("Trust remote code")
        self.trust_check.setToolTip(
            "Let a model whose config.json has auto_map run the Python code that ships with it. "
            "Tick only for a source you trust; it is off again when the app restarts.")
        form.addRow("", self.trust_check)

        self.run_button = QPushButton("Run")
        self.run_button.setDefault(True)
        self.estimate_button = QPushButton("Estimate")
        self.estimate_button.setToolTip(
            "The same workload on fake tensors: per-layer memory with no weights and no real "
            "memory, for models too large to load here (CPU kernels; latency is not estimated)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self._run_clicked)
        self.estimate_button.clicked.connect(self._estimate_clicked)
        self.cancel_button.clicked.connect(self.cancel_requested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.estimate_button)
        buttons.addWidget(self.cancel_button)
        form.addRow(buttons)

        from .optimizations import OptimizationsPanel

        self.optimizations = OptimizationsPanel()
        self.device_combo.currentTextChanged.connect(self._update_optimizations)
        self._running = False
        self._last_runnable = True
        self._run_tip = self.run_button.toolTip()
        self._estimate_tip = self.estimate_button.toolTip()
        self.optimizations.problem_changed.connect(lambda _text: self._update_buttons())
        for signal in (self.model_combo.currentTextChanged, self.workload_combo.currentTextChanged,
                       self.batch_spin.valueChanged, self.seq_spin.valueChanged,
                       self.prompt_edit.textChanged, self.new_tokens_spin.valueChanged,
                       self.device_combo.currentTextChanged, self.dtype_combo.currentTextChanged,
                       self.optimizations.problem_changed):
            signal.connect(lambda *_: self.edited.emit())

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(box)
        layout.addWidget(self.optimizations, 1)
        self._workload_changed(self.workload_combo.currentText())

    # -- public ---------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The ``RunConfig`` fields these controls set (the engine validates them)."""
        return {
            "model": self.model_combo.currentText().strip(),
            "workload": self.workload_combo.currentText(),
            "batch": self.batch_spin.value(),
            "seq": self.seq_spin.value(),
            "new_tokens": self.new_tokens_spin.value(),
            "device": self.device_combo.currentText(),
            "dtype": self.dtype_combo.currentText(),
            # Whitespace alone is no prompt: the sample text, not a 1-token input.
            "prompt": self.prompt_edit.text() if self.prompt_edit.text().strip() else None,
            "attention_maps": self.attention_check.isChecked(),
            "sample_hz": float(self.sample_spin.value()),
            "repeats": self.repeats_spin.value(),
            "optimizations": self.optimizations.selected(),
            "trust_remote_code": self.trust_check.isChecked(),
        }

    def restore(self, values: dict[str, Any]) -> None:
        """Set the controls from saved settings (unknown or bad values are ignored)."""
        if values.get("model"):
            self.set_model(str(values["model"]))
        if values.get("workload"):
            self.set_workload(str(values["workload"]))
        for key, spin in (("batch", self.batch_spin), ("seq", self.seq_spin),
                          ("new_tokens", self.new_tokens_spin), ("sample_hz", self.sample_spin),
                          ("repeats", self.repeats_spin)):
            try:
                if values.get(key) is not None:
                    spin.setValue(int(float(values[key])))
            except (TypeError, ValueError):
                pass
        for key, combo in (("device", self.device_combo), ("dtype", self.dtype_combo)):
            index = combo.findText(str(values.get(key, "")))
            if index >= 0:
                combo.setCurrentIndex(index)
        if values.get("attention_maps") is not None:
            self.attention_check.setChecked(str(values["attention_maps"]).lower()
                                            in ("1", "true"))
        if values.get("prompt") is not None:
            self.prompt_edit.setText(str(values["prompt"]))

    def apply_run_config(self, config: dict[str, Any]) -> list[str]:
        """Set every control from a saved run's ``RunConfig`` dict (a run to repeat or vary);
        returns one line for each setting that could not be set here as the run had it."""
        notes = []
        self.trust_check.setChecked(False)  # an opt-in is never carried over from another run
        device = str(config.get("device") or "")
        if device == "cuda":  # the command line's bare 'cuda' is the first GPU
            device = next((self.device_combo.itemText(i) for i in range(self.device_combo.count())
                           if self.device_combo.itemText(i).startswith("cuda")), device)
        # (no untick/re-tick lines while a run's settings come in: set_selected below replaces
        # the whole selection, so "ticked again when it applies" would not be true)
        self._quiet = True
        try:
            self.restore({**{key: config.get(key) for key in CONTROLLED
                             if key != "optimizations"},
                          "prompt": config.get("prompt") or "", "device": device})
        finally:
            self._quiet = False
        # What the controls hold now, against what the run had: a value a spin box clamps or a
        # choice this machine lacks is named, never changed silently.
        shown = self.config()
        for key in ("workload", "device", "dtype", "batch", "seq", "new_tokens", "sample_hz",
                    "repeats"):
            wanted = device if key == "device" else config.get(key)
            if wanted is None or wanted == "" or _same(shown[key], wanted):
                continue
            why = ("is not available here" if key in ("workload", "device", "dtype")
                   else "is outside the window's range")
            notes.append(f"{key} {wanted} {why} (set to {shown[key]})")
        notes += self.optimizations.set_selected(list(config.get("optimizations") or []))
        ran = [str(o.get("id")) for o in config.get("optimizations") or []]
        ticked = [o["id"] for o in self.optimizations.selected()]
        if [i for i in ran if i in ticked] != ticked:
            notes.append(f"the window applies its optimizations in its own order "
                         f"({', '.join(ticked)}), not the run's ({', '.join(ran)}); the command "
                         "line keeps the order of its --opt options")
        if config.get("trust_remote_code"):
            notes.append("the run trusted the model's remote code; tick 'Trust remote code' "
                         "again if you still trust its source")
        defaults = RunConfig()
        other = [f"{key}={config[key]!r}" for key in RunConfig.__dataclass_fields__
                 if key not in CONTROLLED + NOT_SETTINGS and key in config
                 and config[key] != getattr(defaults, key)]
        if other:
            notes.append(f"the window has no control for {', '.join(other)}; runs from here use "
                         "the defaults (the command line sets them)")
        return [note.rstrip(".") for note in notes]

    def add_recent_model(self, model: str) -> None:
        """Put a local folder or config path the user opened in the model list."""
        if model and self.model_combo.findText(model) < 0:
            self.model_combo.addItem(model)

    def set_model(self, model: str) -> None:
        index = self.model_combo.findText(model)
        if index >= 0:
            self.model_combo.setCurrentIndex(index)
        else:
            self.model_combo.setEditText(model)

    def set_workload(self, workload: str) -> None:
        index = self.workload_combo.findText(workload)
        if index >= 0:
            self.workload_combo.setCurrentIndex(index)

    def set_running(self, running: bool) -> None:
        self._running = running
        self.cancel_button.setEnabled(running)
        self._update_buttons()

    @property
    def runnable(self) -> bool:
        return not self._running and not self.optimizations.problem_text()

    def _update_buttons(self) -> None:
        problem = self.optimizations.problem_text()
        for button, tip in ((self.run_button, self._run_tip),
                            (self.estimate_button, self._estimate_tip)):
            button.setEnabled(self.runnable)
            button.setToolTip(f"Not yet: {problem}" if problem and not self._running else tip)
        # (a flag, not the button's state: a disabled parent makes every button read disabled)
        if self._last_runnable != self.runnable:
            self._last_runnable = self.runnable
            self.runnable_changed.emit(self.runnable)

    # -- slots ----------------------------------------------------------------------------------
    @Slot()
    def _run_clicked(self) -> None:
        self.run_requested.emit(self.config())

    @Slot()
    def _estimate_clicked(self) -> None:
        self.run_requested.emit({**self.config(), "mode": "estimate"})

    @Slot(str)
    def _prompt_changed(self, text: str) -> None:
        # Still enabled with a prompt: estimates, sweeps, plans and the guide take a length.
        self.seq_spin.setToolTip(SEQ_WITH_PROMPT_TIP if text else SEQ_TIP)

    @Slot(str)
    def _workload_changed(self, workload: str) -> None:
        self.new_tokens_spin.setEnabled(workload == "generate")
        self._update_optimizations()

    def _update_optimizations(self, *_: Any) -> None:
        if hasattr(self, "optimizations"):
            lines = self.optimizations.update_applicability(
                self.workload_combo.currentText(), self.device_combo.currentText())
            for line in [] if getattr(self, "_quiet", False) else lines:
                self.note.emit(line)

    @Slot()
    def _open_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a Hugging Face model folder")
        if folder:
            self.set_model(folder)

    @Slot()
    def _open_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a model config.json", "",
                                              "Model config (*.json);;All files (*)")
        if path:
            self.set_model(path)


def _same(shown: Any, wanted: Any) -> bool:
    try:
        return float(shown) == float(wanted)
    except (TypeError, ValueError):
        return str(shown) == str(wanted)


def _spin(low: int, high: int, value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setGroupSeparatorShown(True)
    return spin
