"""Telemetry: the never-raising NVML wrapper, the background sampler and the environment report.

Runs without a GPU: NVML is either absent (this machine) or a scripted fake ``pynvml`` module.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import types
from types import SimpleNamespace

import pytest

from engine import telemetry
from engine.events import Sample
from engine.telemetry import Nvml, Sampler, cuda_index, environment, nvml_index

GPU_FIELDS = (
    "gpu_used_bytes",
    "gpu_total_bytes",
    "gpu_process_bytes",
    "gpu_util_percent",
    "gpu_power_w",
    "gpu_temp_c",
    "gpu_sm_clock_mhz",
    "torch_allocated_bytes",
    "torch_reserved_bytes",
)


def _fake_pynvml(
    *,
    used_gpu_memory: int | None = None,
    list_our_pid: bool = True,
    init_error: str | None = None,
) -> types.ModuleType:
    """A scripted stand-in for ``pynvml`` with one GPU; utilisation is not supported."""
    m = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's spelling
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
        pass

    class NVMLError_FunctionNotFound(NVMLError):  # noqa: N801
        pass

    m.NVMLError = NVMLError
    m.NVMLError_NotSupported = NVMLError_NotSupported
    m.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    m.NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    m.NVML_TEMPERATURE_GPU = 0
    m.NVML_CLOCK_SM = 1
    m.calls = []

    def nvmlInit() -> None:  # noqa: N802
        m.calls.append("init")
        if init_error is not None:
            raise getattr(m, init_error)()

    def get_handle(index: int) -> object:
        if index != 0:
            raise NVMLError("invalid argument")
        return "handle0"

    def not_supported(*_: object) -> None:
        raise NVMLError_NotSupported()

    def function_not_found(*_: object) -> None:
        raise NVMLError_FunctionNotFound()

    def processes(_h: object) -> list[SimpleNamespace]:
        pid = os.getpid() if list_our_pid else os.getpid() + 100_000
        return [
            SimpleNamespace(pid=1, usedGpuMemory=5 << 20),
            SimpleNamespace(pid=pid, usedGpuMemory=used_gpu_memory),
        ]

    m.nvmlInit = nvmlInit
    m.nvmlShutdown = lambda: None
    m.nvmlSystemGetDriverVersion = lambda: b"550.54.15"
    m.nvmlSystemGetCudaDriverVersion = lambda: 12040
    m.nvmlDeviceGetCount = lambda: 1
    m.nvmlDeviceGetHandleByIndex = get_handle
    m.nvmlDeviceGetName = lambda h: "NVIDIA H200"
    m.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=3 << 30, total=141 << 30)
    # The v3 symbol is missing on this "old driver": the wrapper must fall back to v2.
    m.nvmlDeviceGetComputeRunningProcesses_v3 = function_not_found
    m.nvmlDeviceGetComputeRunningProcesses_v2 = processes
    m.nvmlDeviceGetUtilizationRates = not_supported
    m.nvmlDeviceGetPowerUsage = lambda h: 123_456  # milliwatts
    m.nvmlDeviceGetTemperature = lambda h, sensor: 41
    m.nvmlDeviceGetClockInfo = lambda h, clock: 1980
    return m


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch):
    """Install a fake ``pynvml`` and a fresh shared :class:`Nvml`; yields a factory."""

    def install(**kwargs: object) -> types.ModuleType:
        module = _fake_pynvml(**kwargs)  # type: ignore[arg-type]
        monkeypatch.setitem(sys.modules, "pynvml", module)
        monkeypatch.setattr(telemetry, "_shared", Nvml())
        return module

    return install


# -- Sampler -----------------------------------------------------------------------------------


def test_sampler_cpu_samples_have_increasing_t_rss_and_no_gpu_zeros() -> None:
    s = Sampler(hz=50, device="cpu")
    s.start()
    time.sleep(0.3)
    s.stop()
    assert not s.running
    samples = s.samples()
    assert 8 <= len(samples) <= 25, len(samples)
    ts = [x.t for x in samples]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    assert ts[0] >= 0.0
    assert all(isinstance(x, Sample) for x in samples)
    assert all(x.rss_bytes is not None and x.rss_bytes > 0 for x in samples)
    assert samples[0].cpu_percent is None  # psutil's first reading has no interval
    assert all(x.cpu_percent is not None for x in samples[1:])
    for x in samples:
        for name in GPU_FIELDS:
            assert getattr(x, name) is None, name  # missing is None, never 0
    assert s.error is None
    assert s.count == len(samples) and s.decimated == 0
    assert s.overhead_s > 0.0
    assert s.overhead_per_sample_s is not None and s.overhead_per_sample_s < 0.05


def test_stop_joins_quickly_and_no_thread_leaks() -> None:
    before = threading.active_count()
    s = Sampler(hz=1.0)  # a long period: stop must not wait it out
    s.start()
    time.sleep(0.05)
    t = time.perf_counter()
    s.stop()
    assert time.perf_counter() - t < 1.0
    assert not s.running
    assert threading.active_count() == before
    s.stop()  # idempotent


def test_phase_labels_appear_in_order() -> None:
    s = Sampler(hz=100)
    s.set_phase("load")  # before start: the first sample is labelled too
    with s:
        for phase in ("load", "warmup", "measure"):
            s.set_phase(phase)
            time.sleep(0.06)
    phases = [x.phase for x in s.samples()]
    seen = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert seen == ["load", "warmup", "measure"]
    assert not s.running


def test_columns_are_the_sample_fields() -> None:
    s = Sampler(max_samples=16)
    for _ in range(5):
        s.take()
    cols = s.columns()
    assert list(cols) == [f.name for f in dataclasses.fields(Sample)]
    assert all(len(v) == 5 for v in cols.values())
    assert cols["gpu_used_bytes"] == [None] * 5
    assert cols["t"] == [x.t for x in s.samples()]


@pytest.mark.fault(area='load', case='a long run sampled fast',
                   outcome='the timeline stays bounded (decimated, peaks kept) and still spans the run')
def test_decimation_stays_bounded_and_spans_the_run() -> None:
    s = Sampler(max_samples=50, t0=time.perf_counter())
    taken = [s.take() for _ in range(1000)]
    kept = s.samples()
    assert len(kept) <= 50
    assert s.decimated == 1000 - len(kept)
    assert s.count == 1000
    assert kept[0] is taken[0]  # the start of the run survives every decimation
    assert kept[-1] is taken[-1]  # the newest sample is always there
    ts = [x.t for x in kept]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    # the newest quarter keeps full resolution
    assert kept[-10:] == taken[-10:]


def test_decimation_keeps_memory_peaks() -> None:
    base = [Sample(t=float(i), rss_bytes=100) for i in range(40)]
    base[7] = dataclasses.replace(base[7], rss_bytes=10_000)  # a one-sample spike, odd index
    s = Sampler(max_samples=16)
    for x in base:
        with s._lock:  # feed scripted samples through the same decimation path
            s._buffer.append(x)
            if len(s._buffer) > s.max_samples:
                s._buffer = telemetry._decimate(s._buffer)
    kept = s.samples()
    assert len(kept) <= 16
    assert max(x.rss_bytes for x in kept) == 10_000
    assert kept[0].t == 0.0 and kept[-1].t == 39.0


def test_sampler_thread_with_small_buffer_decimates() -> None:
    with Sampler(hz=400, max_samples=16) as s:
        time.sleep(0.25)
    kept = s.samples()
    assert len(kept) <= 16
    assert s.decimated > 0
    assert kept[0].t < 0.1  # still starts at the beginning of the run


def test_callback_called_and_its_errors_never_raise() -> None:
    got: list[Sample] = []
    with Sampler(hz=100, callback=got.append):
        time.sleep(0.1)
    assert got and all(isinstance(x, Sample) for x in got)

    def boom(_: Sample) -> None:
        raise RuntimeError("widget is gone")

    with Sampler(hz=100, callback=boom) as s:
        time.sleep(0.1)
    assert s.error is not None and "widget is gone" in s.error
    assert len(s.samples()) > 2  # sampling went on


def test_sampler_cuda_device_without_nvml_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(telemetry, "_shared", Nvml())
    s = Sampler(device="cuda:0")
    x = s.take()
    for name in GPU_FIELDS:
        assert getattr(x, name) is None
    assert x.rss_bytes and x.rss_bytes > 0


def test_sampler_cuda_device_with_fake_nvml(fake_nvml, monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_nvml(used_gpu_memory=None)
    with Sampler(hz=100, device="cuda:0") as s:
        time.sleep(0.05)
    x = s.samples()[-1]
    assert x.gpu_used_bytes == 3 << 30 and x.gpu_total_bytes == 141 << 30
    assert x.gpu_process_bytes is None  # driver said N/A
    assert x.gpu_util_percent is None  # NotSupported
    assert x.gpu_power_w == pytest.approx(123.456)
    assert x.gpu_temp_c == 41.0 and x.gpu_sm_clock_mhz == 1980.0
    assert s.error is None


# -- Nvml --------------------------------------------------------------------------------------


@pytest.mark.fault(area='environment', case='nvidia-ml-py not installed',
                   outcome='NVML unavailable with the install hint; GPU values None')
def test_nvml_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    n = Nvml()
    assert n.available is False
    assert "nvidia-ml-py" in n.reason
    assert n.driver_version() is None
    assert n.device_count() is None
    assert n.memory(0) == (None, None)
    assert n.process_memory(0) is None
    assert n.utilization(0) is None
    assert n.power_w(0) is None


def test_nvml_on_this_machine_never_raises() -> None:
    n = Nvml()
    if not n.available:
        assert n.reason  # one actionable sentence
    assert n.utilization(0) is None or n.utilization(0) >= 0.0


@pytest.mark.fault(area='environment', case='the NVML library missing (no driver)',
                   outcome='NVML unavailable with the reason; nothing raises')
def test_nvml_library_missing_reason(fake_nvml) -> None:
    fake_nvml(init_error="NVMLError_LibraryNotFound")
    n = Nvml()
    assert n.available is False
    assert "NVML library not found" in n.reason
    assert n.memory(0) == (None, None)


def test_nvml_init_is_lazy_and_once(fake_nvml) -> None:
    module = fake_nvml()
    n = Nvml()
    assert module.calls == []
    threads = [threading.Thread(target=lambda: n.available) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert module.calls == ["init"]
    assert n.available and n.reason == ""


@pytest.mark.fault(area='environment', case='per-process GPU memory reported as N/A (containers, WSL)',
                   outcome='None (shown as not available), never 0')
def test_nvml_process_memory_none_when_driver_reports_na(fake_nvml) -> None:
    fake_nvml(used_gpu_memory=None)
    assert Nvml().process_memory(0, os.getpid()) is None


def test_nvml_process_memory_none_when_pid_not_listed(fake_nvml) -> None:
    fake_nvml(used_gpu_memory=7 << 20, list_our_pid=False)
    assert Nvml().process_memory(0) is None


def test_nvml_process_memory_value(fake_nvml) -> None:
    fake_nvml(used_gpu_memory=7 << 20)
    n = Nvml()
    assert n.process_memory(0) == 7 << 20
    assert n.process_memory(0, pid=1) == 5 << 20


@pytest.mark.fault(area='environment', case='an NVML query not supported by the device',
                   outcome='that value None; the others still read')
def test_nvml_not_supported_gives_none_and_others_work(fake_nvml) -> None:
    fake_nvml()
    n = Nvml()
    assert n.utilization(0) is None
    assert n.driver_version() == "550.54.15"
    assert n.cuda_driver_version() == "12.4"
    assert n.device_count() == 1
    assert n.device_name(0) == "NVIDIA H200"
    assert n.memory(0) == (3 << 30, 141 << 30)
    assert n.power_w(0) == pytest.approx(123.456)
    assert n.temperature_c(0) == 41.0
    assert n.sm_clock_mhz(0) == 1980.0
    # a bad index is an NVML error too: None, never a raise
    assert n.memory(5) == (None, None)
    assert n.device_name(5) is None


def test_shared_instance() -> None:
    assert telemetry.nvml() is telemetry.nvml()


# -- device mapping ----------------------------------------------------------------------------


def test_cuda_index() -> None:
    assert cuda_index("cpu") is None
    assert cuda_index("mps") is None
    assert cuda_index("cuda:1") == 1
    assert cuda_index("cuda") == 0  # CUDA not initialised here


def test_nvml_index_respects_cuda_visible_devices() -> None:
    assert nvml_index("cpu", visible="") is None
    assert nvml_index("cuda:1", visible="") == 1  # identity
    assert nvml_index("cuda:0", visible="2,3") == 2
    assert nvml_index("cuda:1", visible="2,3") == 3
    assert nvml_index("cuda:2", visible="2,3") is None  # not visible
    assert nvml_index("cuda:1", visible="2,-1,3") is None  # CUDA stops at an invalid entry
    assert nvml_index("cuda:0", visible="MIG-abc") == 0  # unknown form: identity


# -- environment -------------------------------------------------------------------------------


def test_environment_cpu() -> None:
    had_qt = "PySide6" in sys.modules
    env = environment("cpu")
    libs = env["libraries"]
    assert libs["torch"] and libs["transformers"] and libs["numpy"] and libs["psutil"]
    assert libs["nvidia-ml-py"]
    assert env["python"] and env["platform"]
    assert env["cpu"]["logical_cores"] and env["ram_total_bytes"] > 0
    assert env["nvml"]["available"] is False  # no NVIDIA driver on this machine
    assert env["nvml"]["reason"]
    assert "cuda" not in env
    assert ("PySide6" in sys.modules) == had_qt  # never imports Qt
    assert ("PySide6" in libs) == had_qt


def test_environment_cuda_without_gpu() -> None:
    env = environment("cuda:0")
    assert env["cuda"]["available"] is False
    assert env["cuda"]["driver_version"] is None
