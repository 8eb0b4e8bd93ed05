"""Telemetry: a Qt-free NVML wrapper, a background sampler and an environment report.

* :class:`Nvml` wraps ``pynvml`` (package ``nvidia-ml-py``) the way nvitop does: it is imported
  and initialised lazily under a lock on first use, every query goes through one function that
  returns a default (``None``) on any NVML error, and "not available" is ``None``, never ``0``.
  When NVML cannot start, :attr:`Nvml.reason` holds one actionable sentence.
* :class:`Sampler` is a daemon thread that samples process and device memory at a fixed rate
  into a bounded buffer of :class:`engine.events.Sample` records ("sample fast, draw slowly":
  consumers read the buffer or receive callbacks and redraw at their own pace).
* :func:`environment` describes the software and hardware a run was measured on.

Nothing here imports Qt, and nothing here initialises CUDA except :func:`environment` for a
``cuda`` device (the run will initialise it anyway).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from .events import Sample

__all__ = [
    "Nvml",
    "Sampler",
    "cuda_index",
    "environment",
    "nvml",
    "nvml_index",
]

_MISSING_PYNVML = "pynvml not installed: pip install nvidia-ml-py"
_NO_LIBRARY = "NVML library not found: no NVIDIA driver on this machine"
_NO_DRIVER = "NVIDIA driver not loaded: NVML cannot reach the GPU (is the kernel module loaded?)"
_NO_PERMISSION = "NVML permission denied: this user may not query the NVIDIA driver"

# Names of the per-process query, newest first: old drivers lack the versioned symbols and old
# pynvml releases lack the versioned wrappers; the first that answers wins.
_NOT_AVAILABLE_ULL = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE as an unsigned long long

_PROCESS_QUERIES = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)


# --------------------------------------------------------------------------------------------
# Device index mapping
# --------------------------------------------------------------------------------------------


def cuda_index(device: str) -> int | None:
    """The CUDA ordinal in a torch device string: ``"cuda:1"`` -> 1, ``"cuda"`` -> current/0.

    Returns ``None`` for non-CUDA devices. A bare ``"cuda"`` means torch's current device when
    CUDA is already initialised (read without initialising it), otherwise 0.
    """
    dev = str(device).strip().lower()
    if not dev.startswith("cuda"):
        return None
    _, _, rest = dev.partition(":")
    if rest:
        try:
            return int(rest)
        except ValueError:
            return None
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            return int(torch.cuda.current_device())
    except Exception:  # noqa: BLE001 - a broken torch build must not break telemetry
        pass
    return 0


def nvml_index(device: str, visible: str | None = None) -> int | None:
    """Map a torch device string (``"cuda:1"``) to an NVML device index, or ``None``.

    ``visible`` defaults to the ``CUDA_VISIBLE_DEVICES`` environment variable. When it lists
    integer indices (``"2,3"``), CUDA ordinal *i* is the *i*-th entry. When it lists UUIDs
    (``"GPU-…"``), the entry is resolved through NVML. Anything else (unset, empty, MIG
    identifiers) falls back to identity: CUDA ordinal *i* is NVML index *i*.

    Known limitation: identity assumes CUDA and NVML enumerate GPUs in the same order. NVML
    uses PCI bus order; CUDA's default order is "fastest first", so on a machine with *different*
    GPU models the two can differ unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is set. On machines
    with one GPU, or identical GPUs, they agree.
    """
    ordinal = cuda_index(device)
    if ordinal is None:
        return None
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return ordinal
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if all(_is_int(e) for e in entries):
        # CUDA stops at the first invalid (negative) entry.
        valid: list[int] = []
        for e in entries:
            if int(e) < 0:
                break
            valid.append(int(e))
        return valid[ordinal] if ordinal < len(valid) else None
    if ordinal < len(entries) and entries[ordinal].upper().startswith("GPU-"):
        index = nvml().index_from_uuid(entries[ordinal])
        if index is not None:
            return index
    return ordinal


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# NVML wrapper
# --------------------------------------------------------------------------------------------


class Nvml:
    """A thread-safe, never-raising view of NVML.

    ``pynvml`` is imported and ``nvmlInit`` called on first use, once, under a lock. If that
    fails, :attr:`available` is False, :attr:`reason` says why in one sentence, and every query
    returns its default. Every query goes through :meth:`_query`, which turns any NVML error
    (``NVMLError_NotSupported``, ``NVMLError_LibraryNotFound``, a missing symbol on an old
    driver…) into the default, so a missing figure is ``None`` and never ``0``.

    Device arguments are NVML indices (see :func:`nvml_index` for the torch mapping).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = False
        self._available = False
        self._reason = ""
        self._pynvml: Any = None
        self._error: type[BaseException] = Exception
        self._handles: dict[int, Any] = {}

    # -- initialisation ---------------------------------------------------------------------

    def _ensure(self) -> bool:
        if self._started:  # fast path, no lock once initialised
            return self._available
        with self._lock:
            if self._started:
                return self._available
            try:
                self._available, self._reason = self._init()
            except Exception as exc:  # noqa: BLE001 - never raise into the caller
                self._available, self._reason = False, f"NVML could not start: {exc}"
            self._started = True
        return self._available

    def _init(self) -> tuple[bool, str]:
        try:
            import pynvml  # noqa: PLC0415 - imported lazily on purpose
        except ImportError:
            return False, _MISSING_PYNVML
        self._pynvml = pynvml
        self._error = getattr(pynvml, "NVMLError", Exception)
        try:
            pynvml.nvmlInit()
        except self._error as exc:
            kinds = {
                "NVMLError_LibraryNotFound": _NO_LIBRARY,
                "NVMLError_DriverNotLoaded": _NO_DRIVER,
                "NVMLError_NoPermission": _NO_PERMISSION,
            }
            for name, message in kinds.items():
                cls = getattr(pynvml, name, None)
                if isinstance(cls, type) and isinstance(exc, cls):
                    return False, message
            return False, f"NVML could not start: {exc}"
        return True, ""

    @property
    def available(self) -> bool:
        """Whether NVML started (initialises it on first access)."""
        return self._ensure()

    @property
    def reason(self) -> str:
        """Why NVML is not available ("" when it is)."""
        self._ensure()
        return self._reason

    def shutdown(self) -> None:
        """Release NVML (mainly for tests); the next query initialises it again."""
        with self._lock:
            if self._available and self._pynvml is not None:
                try:
                    self._pynvml.nvmlShutdown()
                except Exception:  # noqa: BLE001
                    pass
            self._started = False
            self._available = False
            self._reason = ""
            self._handles.clear()

    # -- the one query function -------------------------------------------------------------

    def _query(self, fn: str | Callable[..., Any], *args: Any, default: Any = None) -> Any:
        """Call ``pynvml.<fn>(*args)`` (or ``fn(*args)``); return ``default`` on any NVML error.

        Errors caught: every ``pynvml.NVMLError`` (NotSupported, NoPermission, GpuIsLost,
        FunctionNotFound on old drivers…), a wrapper missing from an old ``pynvml`` release
        (AttributeError), and decoding/ctypes oddities (TypeError, ValueError, OSError).
        """
        if not self._ensure():
            return default
        pynvml = self._pynvml
        try:
            func = getattr(pynvml, fn) if isinstance(fn, str) else fn
            result = func(*args)
        except self._error:
            return default
        except (AttributeError, TypeError, ValueError, OSError, UnicodeDecodeError):
            return default
        return default if result is None else result

    def _handle(self, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            handle = self._query("nvmlDeviceGetHandleByIndex", index)
            if handle is not None:
                self._handles[index] = handle
        return handle

    # -- system -----------------------------------------------------------------------------

    def driver_version(self) -> str | None:
        """The NVIDIA driver version, e.g. ``"550.54.15"``."""
        return _text(self._query("nvmlSystemGetDriverVersion"))

    def cuda_driver_version(self) -> str | None:
        """The highest CUDA version the driver supports, e.g. ``"12.4"``."""
        v = self._query("nvmlSystemGetCudaDriverVersion")
        if not isinstance(v, int):
            return None
        return f"{v // 1000}.{(v % 1000) // 10}"

    def device_count(self) -> int | None:
        """How many GPUs NVML sees (ignores ``CUDA_VISIBLE_DEVICES``)."""
        return self._query("nvmlDeviceGetCount")

    def index_from_uuid(self, uuid: str) -> int | None:
        """The NVML index of the GPU with this UUID (``"GPU-…"``)."""
        handle = self._query("nvmlDeviceGetHandleByUUID", uuid)
        return None if handle is None else self._query("nvmlDeviceGetIndex", handle)

    # -- per device -------------------------------------------------------------------------

    def device_name(self, index: int) -> str | None:
        """The marketing name, e.g. ``"NVIDIA H200"``."""
        h = self._handle(index)
        return None if h is None else _text(self._query("nvmlDeviceGetName", h))

    def memory(self, index: int) -> tuple[int | None, int | None]:
        """``(used, total)`` device memory in bytes, all processes together; ``(None, None)``."""
        h = self._handle(index)
        info = None if h is None else self._query("nvmlDeviceGetMemoryInfo", h)
        if info is None:
            return None, None
        return _int(getattr(info, "used", None)), _int(getattr(info, "total", None))

    def process_memory(self, index: int, pid: int | None = None) -> int | None:
        """GPU memory in bytes that process ``pid`` (default: this one) holds on device ``index``.

        ``None`` when the driver reports "not available" (``usedGpuMemory is None``: Windows
        WDDM, some vGPU/WSL setups) or when the process is not listed: inside a container the
        driver reports host PIDs, so our PID is often absent there. Several entries for one PID
        (MIG) are summed.
        """
        h = self._handle(index)
        if h is None:
            return None
        pid = os.getpid() if pid is None else pid
        procs = None
        for name in _PROCESS_QUERIES:
            procs = self._query(name, h)
            if procs is not None:
                break
        if procs is None:
            return None
        total: int | None = None
        for proc in procs:
            if getattr(proc, "pid", None) != pid:
                continue
            used = _int(getattr(proc, "usedGpuMemory", None))
            if used is None or used >= _NOT_AVAILABLE_ULL:  # old pynvml passes the raw marker
                return None
            total = used if total is None else total + used
        return total

    def utilization(self, index: int) -> float | None:
        """GPU utilisation in percent (share of time a kernel ran over the last sample period)."""
        h = self._handle(index)
        rates = None if h is None else self._query("nvmlDeviceGetUtilizationRates", h)
        return _float(getattr(rates, "gpu", None)) if rates is not None else None

    def power_w(self, index: int) -> float | None:
        """Board power draw in watts."""
        h = self._handle(index)
        mw = None if h is None else self._query("nvmlDeviceGetPowerUsage", h)
        return None if _float(mw) is None else float(mw) / 1000.0

    def temperature_c(self, index: int) -> float | None:
        """GPU core temperature in °C."""
        h = self._handle(index)
        if h is None or self._pynvml is None:
            return None
        sensor = getattr(self._pynvml, "NVML_TEMPERATURE_GPU", 0)
        return _float(self._query("nvmlDeviceGetTemperature", h, sensor))

    def sm_clock_mhz(self, index: int) -> float | None:
        """Current SM clock in MHz."""
        h = self._handle(index)
        if h is None or self._pynvml is None:
            return None
        clock = getattr(self._pynvml, "NVML_CLOCK_SM", 1)
        return _float(self._query("nvmlDeviceGetClockInfo", h, clock))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


_shared: Nvml | None = None
_shared_lock = threading.Lock()


def nvml() -> Nvml:
    """The process-wide :class:`Nvml` instance (created on first call; NVML starts lazily)."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = Nvml()
    return _shared


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------

_MAX_CONSECUTIVE_ERRORS = 50


class Sampler:
    """Samples this process and its GPU at ``hz`` on a daemon thread into a bounded buffer.

    Each :class:`~engine.events.Sample` holds ``t`` (``perf_counter() - t0``), the current phase
    label, this process's RSS and CPU percent (psutil; may exceed 100 on several cores; the very
    first reading is ``None`` because psutil needs an interval), and for a ``cuda`` device with
    NVML: device used/total memory, this process's GPU memory, utilisation, power, temperature
    and SM clock; plus ``torch.cuda.memory_allocated/reserved`` when CUDA is already initialised
    (the sampler never initialises CUDA itself). Unavailable figures are ``None``.

    Bounded buffer / decimation: when the buffer grows past ``max_samples``, the older half is
    halved (one sample of each consecutive pair kept; the very first sample always stays), so
    the buffer always spans the whole run with the newest data at full rate and older data at
    progressively coarser resolution (each decimation halves it again). Of each pair the sample
    with the higher memory reading is kept (``torch_allocated_bytes``, else
    ``gpu_process_bytes``, else ``gpu_used_bytes``, else ``rss_bytes``; the earlier one on a
    tie), so memory peaks survive decimation. :attr:`decimated` counts the samples dropped.
    An hour at 100 Hz (360 000 samples) stays within ``max_samples`` this way.

    Errors never reach the caller: the first is kept in :attr:`error`. A failing ``callback`` is
    not called again; sampling itself stops after 50 consecutive failures.

    Use as a context manager (``with Sampler(device="cuda:0") as s: ...``) or call
    :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        hz: float = 20.0,
        device: str = "cpu",
        callback: Callable[[Sample], None] | None = None,
        max_samples: int = 100_000,
        t0: float | None = None,
    ) -> None:
        if hz <= 0:
            raise ValueError(f"hz must be positive, got {hz}")
        if max_samples < 8:
            raise ValueError(f"max_samples must be at least 8, got {max_samples}")
        self.hz = float(hz)
        self.device = str(device)
        self.callback = callback
        self.max_samples = int(max_samples)
        self.t0 = t0
        self.error: str | None = None
        self.decimated = 0
        self.overhead_s = 0.0
        self._count = 0
        self._phase = ""
        self._buffer: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()
        self._cpu_primed = False
        self._pid = os.getpid()
        self._cuda_index = cuda_index(self.device)
        self._nvml_index: int | None = None
        self._nvml: Nvml | None = None

    # -- control ----------------------------------------------------------------------------

    def start(self) -> Sampler:
        """Start sampling (no-op if already running). Returns ``self``."""
        if self._thread is not None and self._thread.is_alive():
            return self
        if self.t0 is None:
            self.t0 = time.perf_counter()
        if self._cuda_index is not None:
            self._nvml = nvml()
            self._nvml_index = nvml_index(self.device) if self._nvml.available else None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memlens-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop sampling and join the thread (waits at most ``timeout`` seconds)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def set_phase(self, name: str) -> None:
        """Label the following samples with ``name`` (e.g. "load", "warmup", "measure")."""
        self._phase = str(name)

    @property
    def phase(self) -> str:
        """The current phase label."""
        return self._phase

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- results ----------------------------------------------------------------------------

    def samples(self) -> list[Sample]:
        """A snapshot of the buffer, oldest first."""
        with self._lock:
            return list(self._buffer)

    def latest(self) -> Sample | None:
        """The newest sample, or ``None`` before the first."""
        with self._lock:
            return self._buffer[-1] if self._buffer else None

    def columns(self) -> dict[str, list[Any]]:
        """The buffer in columnar form: one list per :class:`Sample` field name."""
        snapshot = self.samples()
        return {
            f.name: [getattr(s, f.name) for s in snapshot] for f in dataclasses.fields(Sample)
        }

    @property
    def count(self) -> int:
        """Samples taken so far, including those later dropped by decimation."""
        return self._count

    @property
    def overhead_per_sample_s(self) -> float | None:
        """Mean seconds spent taking one sample (``None`` before the first)."""
        return self.overhead_s / self._count if self._count else None

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        period = 1.0 / self.hz
        next_t = time.perf_counter()
        failures = 0
        while not self._stop.is_set():
            try:
                sample = self.take()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - never raise out of the thread
                self._record_error(exc)
                failures += 1
                if failures >= _MAX_CONSECUTIVE_ERRORS:
                    return
                sample = None
            if sample is not None and self.callback is not None:
                try:
                    self.callback(sample)
                except Exception as exc:  # noqa: BLE001
                    self._record_error(exc, where="callback")
                    self.callback = None
            next_t += period
            delay = next_t - time.perf_counter()
            if delay < 0:  # fell behind (slow query, GIL held by the workload): do not burst
                next_t = time.perf_counter()
                delay = 0.0
            self._stop.wait(delay)

    def take(self) -> Sample:
        """Take one sample now, append it to the buffer and return it (also used by the thread)."""
        start = time.perf_counter()
        if self.t0 is None:
            self.t0 = start
        sample = self._measure(start - self.t0)
        with self._lock:
            self._buffer.append(sample)
            if len(self._buffer) > self.max_samples:
                before = len(self._buffer)
                self._buffer = _decimate(self._buffer)
                self.decimated += before - len(self._buffer)
            self._count += 1
            self.overhead_s += time.perf_counter() - start
        return sample

    def _measure(self, t: float) -> Sample:
        values: dict[str, Any] = {"t": t, "phase": self._phase}
        try:
            values["rss_bytes"] = int(self._process.memory_info().rss)
        except Exception as exc:  # noqa: BLE001
            self._record_error(exc)
        try:
            cpu = float(self._process.cpu_percent(None))
            # psutil measures since its previous call; the first call has none and reads 0.0.
            values["cpu_percent"] = cpu if self._cpu_primed else None
            self._cpu_primed = True
        except Exception as exc:  # noqa: BLE001
            self._record_error(exc)
        if self._cuda_index is None:
            return Sample(**values)
        index, gpu = self._nvml_index, self._nvml
        if gpu is not None and index is not None:
            used, total = gpu.memory(index)
            values.update(
                gpu_used_bytes=used,
                gpu_total_bytes=total,
                gpu_process_bytes=gpu.process_memory(index, self._pid),
                gpu_util_percent=gpu.utilization(index),
                gpu_power_w=gpu.power_w(index),
                gpu_temp_c=gpu.temperature_c(index),
                gpu_sm_clock_mhz=gpu.sm_clock_mhz(index),
            )
        torch = sys.modules.get("torch")
        if torch is not None:
            try:
                if torch.cuda.is_initialized():
                    values["torch_allocated_bytes"] = int(
                        torch.cuda.memory_allocated(self._cuda_index)
                    )
                    values["torch_reserved_bytes"] = int(
                        torch.cuda.memory_reserved(self._cuda_index)
                    )
            except Exception as exc:  # noqa: BLE001
                self._record_error(exc)
        return Sample(**values)

    def _record_error(self, exc: BaseException, where: str = "sampler") -> None:
        if self.error is None:
            self.error = f"{where}: {type(exc).__name__}: {exc}"


def _peak_key(s: Sample) -> int:
    for v in (s.torch_allocated_bytes, s.gpu_process_bytes, s.gpu_used_bytes, s.rss_bytes):
        if v is not None:
            return v
    return -1


def _decimate(buffer: list[Sample]) -> list[Sample]:
    """Halve the older half of ``buffer``: keep the first sample, then one of each pair (peak)."""
    half = len(buffer) // 2
    older = buffer[1:half]
    kept = [buffer[0]]
    for i in range(0, len(older) - 1, 2):
        a, b = older[i], older[i + 1]
        kept.append(b if _peak_key(b) > _peak_key(a) else a)
    if len(older) % 2:
        kept.append(older[-1])
    return kept + buffer[half:]


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        except Exception:  # noqa: BLE001
            continue
    return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment(device: str) -> dict[str, Any]:
    """Describe the software and hardware for ``device`` (JSON-serialisable; never raises).

    Keys: ``python``, ``platform``, ``libraries`` (name -> version or None when not installed:
    MemLens itself, its dependencies and the optimization libraries; PySide6 only when it is
    already imported, Qt is never imported here), ``cpu`` (model, logical/physical counts,
    cores usable by this process), ``ram_total_bytes``, ``device``, ``nvml``
    (``{"available", "reason"}``) and, for a CUDA device, ``cuda`` (availability, name,
    capability, total memory, CUDA runtime/driver versions, driver version, NVML index).
    Calling this for a ``cuda`` device initialises CUDA through torch.
    """
    libraries: dict[str, str | None] = {
        "torch": None,
        "transformers": _dist_version("transformers"),
        "numpy": _dist_version("numpy"),
        "psutil": getattr(psutil, "__version__", None),
        "nvidia-ml-py": _dist_version("nvidia-ml-py", "pynvml"),
        "safetensors": _dist_version("safetensors"),
        "tokenizers": _dist_version("tokenizers"),
        "memlens": _dist_version("memlens"),
        # the optimization libraries (None: not installed), read from package metadata
        # without importing them
        "accelerate": _dist_version("accelerate"),
        "peft": _dist_version("peft"),
        "torchao": _dist_version("torchao"),
        "optimum-quanto": _dist_version("optimum-quanto"),
        "bitsandbytes": _dist_version("bitsandbytes"),
    }
    torch: Any = None
    try:
        import torch  # noqa: PLC0415

        libraries["torch"] = str(torch.__version__)
    except Exception:  # noqa: BLE001
        libraries["torch"] = _dist_version("torch")
    qt = sys.modules.get("PySide6")
    if qt is not None:
        libraries["PySide6"] = getattr(qt, "__version__", None)

    try:
        affinity: int | None = len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        affinity = None
    try:
        physical = psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001
        physical = None
    try:
        ram: int | None = int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001
        ram = None
    try:  # how busy the machine was: other work on the cores slows and scatters CPU timings
        load: float | None = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None

    gpu = nvml()
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "libraries": libraries,
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "physical_cores": physical,
            "usable_cores": affinity,
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "load_average_1m": load,
        },
        "ram_total_bytes": ram,
        "device": str(device),
        "nvml": {"available": gpu.available, "reason": gpu.reason},
    }
    if cuda_index(device) is not None:
        env["cuda"] = _cuda_environment(device, torch, gpu)
    return env


def _cuda_environment(device: str, torch: Any, gpu: Nvml) -> dict[str, Any]:
    info: dict[str, Any] = {"available": False}
    index = cuda_index(device)
    try:
        info["runtime_version"] = getattr(getattr(torch, "version", None), "cuda", None)
        info["available"] = bool(torch is not None and torch.cuda.is_available())
        if info["available"] and index is not None:
            props = torch.cuda.get_device_properties(index)
            info["name"] = props.name
            info["capability"] = f"{props.major}.{props.minor}"
            info["total_memory_bytes"] = int(props.total_memory)
            info["multiprocessors"] = int(props.multi_processor_count)
            cudnn = getattr(torch.backends, "cudnn", None)
            info["cudnn_version"] = cudnn.version() if cudnn and cudnn.is_available() else None
    except Exception as exc:  # noqa: BLE001
        info["error"] = f"{type(exc).__name__}: {exc}"
    info["driver_version"] = gpu.driver_version()
    info["driver_cuda_version"] = gpu.cuda_driver_version()
    nindex = nvml_index(device) if gpu.available else None
    info["nvml_index"] = nindex
    if nindex is not None:
        info["nvml_name"] = gpu.device_name(nindex)
        info["nvml_total_memory_bytes"] = gpu.memory(nindex)[1]
    return info
