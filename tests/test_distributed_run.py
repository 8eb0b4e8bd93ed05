"""Measured FSDP2 training across processes (engine/distributed_run.py): two gloo ranks on the CPU
launched by torchrun, each measuring its own step with MemLens' tensor accounting, rank 0 writing
one record of both, checked against the FSDP2 plan of the same config."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import types
from pathlib import Path

import pytest
import torch

from engine.accounting import TensorAccountant
from engine.config import RunConfig
from engine.distributed_run import _track_resize, launch
from engine.errors import ErrorKind, MemLensError

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resize_is_counted() -> None:
    """FSDP2 frees and re-allocates its all-gather storages with UntypedStorage.resize_, which no
    dispatch mode sees: the wrapper counts it, and charges a storage that grows from nothing."""
    acc = TensorAccountant()
    probe = types.SimpleNamespace(acc=acc, _owner=lambda: "layer")
    outside = torch.empty(256, dtype=torch.uint8)  # made before accounting, like FSDP2's buffers
    outside.untyped_storage().resize_(0)
    with _track_resize(probe), acc:
        t = torch.empty(1000, dtype=torch.uint8)
        assert acc.total == 1000
        t.untyped_storage().resize_(0)
        assert acc.total == 0
        t.untyped_storage().resize_(1000)
        outside.untyped_storage().resize_(256)
        assert acc.total == 1256 and acc.peak == 1256
        assert acc.live[("layer", "unsharded_params")] == 256
    assert torch.UntypedStorage.resize_.__name__ == "resize_"  # restored
    del t
    assert acc.total == 256


@pytest.mark.slow
def test_two_gloo_ranks_measured_and_within_the_plan(tmp_path: Path) -> None:
    """torchrun launches two gloo ranks on the CPU; each measures its FSDP2 step; rank 0 writes one
    record of both, beside plan_training's per-rank bound for the same config."""
    out = tmp_path / "run.json"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MEMLENS_HOME=str(tmp_path / "home"),
               PYTHONWARNINGS="ignore")
    config = RunConfig(model="preset:tiny-llama", workload="train", batch=1, seq=32)
    run, path, stdout = launch(config, 2, out, env=env, timeout=180, master_port=_free_port())
    assert path == out and json.loads(out.read_text())["kind"] == "distributed_run"
    assert run.figures == "measured"
    assert run.backend == "gloo" and run.world_size == 2
    assert [r.rank for r in run.ranks] == [0, 1]  # both ranks reported, in one record
    assert run.model_params_bytes > 0 and run.plan_total_bytes
    assert run.plan_model_params_bytes == run.model_params_bytes  # tiny-llama ties nothing
    half = run.model_params_bytes / 2
    for r in run.ranks:
        # Each rank holds its shard: half the parameters, up to FSDP2's padding (the plan's
        # padded chunk is what every rank stores).
        assert half <= r.sharded_params_bytes <= r.plan_parts["sharded_params"]
        assert r.sharded_params_bytes == pytest.approx(half, rel=0.05)
        assert r.parts["weights"] == r.sharded_params_bytes  # the local shards, live throughout
        # AdamW state (exp_avg, exp_avg_sq of the shard, plus step counters) exists and is live
        # at the peak.
        assert r.optimizer_state_bytes >= 2 * r.sharded_params_bytes
        assert r.parts["optimizer_state"] == r.optimizer_state_bytes
        assert r.gradients_bytes == r.sharded_params_bytes  # sharded gradients after backward
        assert r.parts.get("unsharded_params", 0) > 0  # all-gathered parameters seen (resize_)
        # (Which of FSDP2's buffers are live at the peak varies from run to run on gloo: the
        # moment of the peak depends on when the process group's threads release them.)
        # The parts reconcile with the peak.
        assert r.attributed_bytes + r.unattributed_bytes == r.peak_bytes
        assert sum(r.parts.values()) == r.peak_bytes
        assert sum(r.as_plan_parts.values()) == r.peak_bytes
        assert set(r.as_plan_parts) == set(r.plan_parts)
        assert r.peak_bytes == max(r.phase_peaks.values())
        assert r.cuda_max_allocated_bytes is None
        assert math.isfinite(r.loss)
        # The plan is an upper bound of every rank's measured peak, and each of its parts of
        # the part measured at the peak.
        assert not r.over_plan_parts, (r.rank, r.over_plan_parts)
        assert r.plan_bound_bytes is not None and r.peak_bytes <= r.plan_bound_bytes, (
            r.rank, r.peak_bytes, r.plan_bound_bytes, r.parts, r.plan_parts)
    assert run.within_plan is True
    assert run.ranks[0].loss == pytest.approx(run.ranks[1].loss)  # same data, same model
    assert "rank 1: peak" in stdout and str(out) in stdout


@pytest.mark.slow
def test_lora_checkpointing_and_mixed_precision_across_ranks(tmp_path: Path) -> None:
    """LoRA's adapters injected before sharding, checkpointed blocks and FSDP2 mixed precision
    (fp32 shards, bf16 all-gathers): each rank's shards, gradients and optimizer state are the
    plan's for the same config, byte for byte, and its peak is within the plan's bound."""
    out = tmp_path / "run.json"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MEMLENS_HOME=str(tmp_path / "home"),
               PYTHONWARNINGS="ignore")
    config = RunConfig(model="preset:tiny-llama", workload="train", batch=1, seq=32,
                       dtype="bfloat16", optimizations=[{"id": "lora", "params": {}},
                                                        {"id": "checkpointing", "params": {}}])
    run, _, _ = launch(config, 2, out, env=env, timeout=180, master_port=_free_port(),
                       master_dtype="float32")
    assert run.master_dtype == "float32" and "mixed-precision" in run.recipe
    assert [o["id"] for o in run.optimizations] == ["lora", "checkpointing"]
    for r in run.ranks:
        assert 0 < r.trainable_parameters < r.model_parameters / 10  # the adapters only
        assert r.sharded_params_bytes == r.plan_parts["sharded_params"]
        assert r.optimizer_state_bytes == r.plan_parts["optimizer_state"]
        assert r.gradients_bytes == r.plan_parts["sharded_gradients"]
        # fp32 master shards: 4 bytes per parameter of the rank's half
        assert r.sharded_params_bytes == pytest.approx(r.model_parameters * 4 / 2, rel=0.05)
        assert sum(r.as_plan_parts.values()) == r.peak_bytes <= r.plan_bound_bytes
        assert not r.over_plan_parts, (r.rank, r.over_plan_parts)
        assert math.isfinite(r.loss)
    assert run.within_plan is True


@pytest.mark.slow
def test_hsdp_across_four_ranks_matches_the_plan(tmp_path: Path) -> None:
    """HSDP on 4 gloo processes, 2 replicas × 2 shards: every rank holds its group's shard, as
    the plan says byte for byte, within the plan's bound part by part."""
    out = tmp_path / "run.json"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MEMLENS_HOME=str(tmp_path / "home"),
               PYTHONWARNINGS="ignore")
    config = RunConfig(model="preset:tiny-llama", workload="train", batch=1, seq=32)
    run, _, stdout = launch(config, 4, out, env=env, timeout=240, master_port=_free_port(),
                            replicas=2)
    assert run.replicas == 2 and [r.rank for r in run.ranks] == [0, 1, 2, 3]
    for r in run.ranks:
        assert r.sharded_params_bytes == r.plan_parts["sharded_params"]
        assert r.sharded_params_bytes == pytest.approx(r.model_params_bytes / 2, rel=0.05)
        assert r.optimizer_state_bytes == r.plan_parts["optimizer_state"]
        assert r.gradients_bytes == r.plan_parts["sharded_gradients"]
        assert not r.over_plan_parts, (r.rank, r.over_plan_parts)
        assert r.peak_bytes <= r.plan_bound_bytes
    assert run.within_plan is True
    assert "HSDP: 2 replicas × 2 shards" in stdout
    with pytest.raises(MemLensError) as info:
        launch(config, 4, out, replicas=3)
    assert "--replicas must divide" in info.value.hint


def test_launch_refuses_no_ranks() -> None:
    with pytest.raises(MemLensError) as info:
        launch(RunConfig(model="preset:tiny-llama", workload="train"), 0)
    assert info.value.kind == ErrorKind.INVALID_WORKLOAD


def test_launch_refuses_more_processes_than_the_machine_holds(monkeypatch) -> None:
    """1,000 CPU processes were started without a word; CUDA ranks need a GPU each."""
    import torch

    config = RunConfig(model="preset:tiny-llama", workload="train")
    with pytest.raises(MemLensError) as info:
        launch(config, 1000)
    assert "--distributed" in info.value.hint and "memlens plan" in info.value.hint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(MemLensError) as info:
        launch(dataclasses.replace(config, device="cuda"), 4)
    assert "this machine has 2" in info.value.message and "--distributed 2" in info.value.hint


def test_profile_distributed_refuses_what_it_cannot_measure(capsys):
    from engine import cli

    assert cli.main(["profile", "--workload", "forward", "--distributed", "2"]) == cli.EXIT_USAGE
    assert "--workload train" in capsys.readouterr().err
    # refused before any process starts, naming the fix
    assert cli.main(["profile", "--workload", "train", "--distributed", "2", "--opt",
                     "cast"]) == cli.EXIT_FAILED
    assert "takes the weights' dtype from --dtype" in capsys.readouterr().err
    assert cli.main(["profile", "--workload", "train", "--master-dtype", "fp32"]) == cli.EXIT_USAGE
    assert "--distributed N" in capsys.readouterr().err
    # one-device settings it would drop without a word are refused by name
    assert cli.main(["profile", "--workload", "train", "--distributed", "2", "--no-save",
                     "--repeats", "5", "--prompt", "hi"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--no-save, --prompt, --repeats cannot be combined with --distributed" in err


@pytest.mark.slow
def test_the_packaged_app_launches_ranks_with_its_own_executable(tmp_path, monkeypatch):
    """A frozen app has no interpreter for ``python -m torch.distributed.run``: its executable
    runs torchrun and is started again on every rank. The packaged app's entry point stands in
    for the executable here (PyInstaller itself is exercised by packaging/build.sh)."""
    import sys

    from engine.distributed_run import FROZEN_TORCHRUN, FROZEN_WORKER, launcher_command

    app = tmp_path / "memlens"
    app.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                   f"runpy.run_path({str(ROOT / 'packaging' / 'memlens_entry.py')!r}, "
                   "run_name='__main__')\n", encoding="utf-8")
    app.chmod(0o755)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(app))
    cmd = launcher_command(["--nproc-per-node", "2"], ["--seq", "16"])
    assert cmd == [str(app), FROZEN_TORCHRUN, "--nproc-per-node", "2", "--no-python", str(app),
                   FROZEN_WORKER, "--seq", "16"]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MEMLENS_HOME=str(tmp_path / "home"),
               PYTHONWARNINGS="ignore")
    out = tmp_path / "run.json"
    config = RunConfig(model="preset:tiny-llama", workload="train", batch=1, seq=16)
    run, _, _ = launch(config, 2, out, env=env, timeout=180, master_port=_free_port(),
                       plan=False)
    assert [r.rank for r in run.ranks] == [0, 1] and run.backend == "gloo"
    assert all(r.peak_bytes > 0 for r in run.ranks)


# What torchrun printed when a rank aborted in torch 2.11's teardown after a complete run
# (shortened), and a rank that raised: the message names the rank's error, not torchrun's.
TEARDOWN_ABORT = """saved /x/run.json
terminate called without an active exception
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 994, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_07:44:19
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -6 (pid: 14988)
  error_file: <N/A>
  traceback : Signal 6 (SIGABRT) received by PID 14988
=======================================================
"""
RANK_RAISED = """Traceback (most recent call last):
  File "/repo/engine/distributed_run.py", line 700, in main
    run, path = run_distributed(config)
ValueError: the shards do not fit
""" + TEARDOWN_ABORT.split("saved /x/run.json\n", 1)[1]


def _fake_torchrun(monkeypatch, code: int, output: str, write: bool) -> None:
    import subprocess

    from engine.distributed_run import DistributedRun, write_run

    def fake(cmd, env=None, timeout=None):
        if write:
            args = dict(zip(cmd[:-1], cmd[1:]))
            write_run(DistributedRun(run_id=args["--run-id"], created="now", config={},
                                     world_size=2, backend="gloo", recipe="FSDP2"),
                      args["--out"])
        return subprocess.CompletedProcess(cmd, code, "", output)

    import engine.distributed_run as distributed_run

    monkeypatch.setattr(distributed_run, "_run_torchrun", fake)


@pytest.mark.fault(area='resources', case='a rank of a distributed run fails, or aborts at exit '
                   'after the run was saved', outcome="the rank's own error and torchrun's root "
                   "cause are named; a complete record is kept with a note")
def test_a_failed_rank_is_named_and_a_saved_run_is_kept(tmp_path, monkeypatch) -> None:
    config = RunConfig(model="preset:tiny-llama", workload="train", seq=16)
    _fake_torchrun(monkeypatch, 1, TEARDOWN_ABORT, write=True)
    run, path, _ = launch(config, 2, tmp_path / "kept.json")
    assert "torchrun exited 1 after every rank had measured" in run.notes[-1]
    assert "rank 1 (local_rank: 1)" in run.notes[-1] and "Signal 6" in run.notes[-1]
    assert json.loads(path.read_text())["notes"] == run.notes  # the note is in the file too

    _fake_torchrun(monkeypatch, 1, RANK_RAISED, write=False)
    with pytest.raises(MemLensError) as err:
        launch(config, 2, tmp_path / "failed.json")
    message = err.value.message
    assert "ValueError: the shards do not fit" in message and "exitcode -6" in message
    assert "ChildFailedError" not in message
    assert not (tmp_path / "failed.json").exists()


def test_torchrun_is_ended_with_sigterm_which_it_passes_to_its_workers(tmp_path) -> None:
    """subprocess.run killed torchrun with SIGKILL on Ctrl+C, SIGTERM or a timeout, and its
    workers (each in a session of its own) ran on; it is sent SIGTERM, which torchrun
    forwards to them, and waited for."""
    import subprocess
    import sys
    import time

    from engine.distributed_run import _run_torchrun

    marker = tmp_path / "terminated"
    script = ("import pathlib, signal, sys, time\n"
              f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r})"
              ".write_text('SIGTERM'), sys.exit(3)))\n"
              "time.sleep(60)\n")
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        _run_torchrun([sys.executable, "-c", script], dict(os.environ), timeout=2)
    assert time.monotonic() - t0 < 20
    assert marker.read_text() == "SIGTERM"  # (not SIGKILL: torchrun would forward it)
    done = _run_torchrun([sys.executable, "-c", "print('ok')"], dict(os.environ), timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "ok"
