"""The JSON records MemLens writes besides runs, told apart by their ``kind``.

A run file (``engine.results.RunResult``) has no ``kind``; every other record names its own:
sweeps and fits (``engine.sweep``), inference and training plans (``engine.distributed``),
measured distributed runs (``engine.distributed_run``) and measured guides (``engine.guide``;
a ``guide.json`` written before guides named their kind is told by its shape). ``memlens
show`` prints any of them; what takes a single run (File → Open run file, ``compare``,
``export``, ``report``) refuses the others with a message naming what the file is
(``engine.store.load_run_file``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from .errors import ErrorKind, MemLensError

# kind -> what it is, in words (for messages)
RECORD_KINDS = {
    "sweep": "a sweep (memlens sweep)",
    "fit": "a what-fits answer (memlens fit)",
    "inference_plan": "an inference plan across devices (memlens plan)",
    "training_plan": "an FSDP2 training plan (memlens plan --workload train)",
    "distributed_run": "a measured distributed run (memlens profile --distributed)",
    "guide": "a measured guide (memlens guide)",
}


def check_record(data: dict[str, Any], kind: str, schema: int) -> None:
    """Refuse a file that is not a ``kind`` record, or one from a newer MemLens."""
    if data.get("kind") != kind:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD, f"The file is not a MemLens {kind}.",
                           f"Pass {RECORD_KINDS.get(kind, 'a ' + kind)} saved with --out"
                           + (" (or the Save JSON… button of its page in the window)."
                              if kind in ("sweep", "fit", "inference_plan", "training_plan")
                              else "."))
    if int(data.get("schema_version", 0)) > schema:
        raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                           f"The {kind} was written by a newer MemLens (schema "
                           f"{data.get('schema_version')}).", "Upgrade MemLens to read it.")


def record_kind(data: Any) -> str | None:
    """The record kind of parsed JSON ``data``, None for a run (or anything else)."""
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if kind is None and "schema_version" not in data and {"model", "entries"} <= set(data):
        kind = "guide"  # guide.json files from before guides named their kind
    return kind if kind in RECORD_KINDS else None


def not_a_run(path: Path, kind: str) -> MemLensError:
    return MemLensError(
        ErrorKind.NOT_APPLICABLE, f"{path.name} is {RECORD_KINDS[kind]}, not a single run.",
        f"Print it with `memlens show {path}`. Opening, comparing, exporting and reporting "
        "take run files (memlens profile or estimate).")


def from_dict(data: dict[str, Any]) -> Any:
    """The record object of a record's JSON (a ``MemLensError`` for a newer schema)."""
    kind = record_kind(data)
    if kind == "sweep":
        from .sweep import SweepRecord

        return SweepRecord.from_dict(data)
    if kind == "fit":
        from .sweep import FitRecord

        return FitRecord.from_dict(data)
    if kind in ("inference_plan", "training_plan"):
        from .distributed import plan_from_dict

        return plan_from_dict(data)
    if kind == "distributed_run":
        from .distributed_run import DistributedRun

        return DistributedRun.from_dict(data)
    if kind == "guide":
        from .guide import Guide

        return Guide.from_dict(data)
    raise MemLensError(ErrorKind.INVALID_WORKLOAD, "The file is not a MemLens record.",
                       "Pass a file written by memlens sweep, fit, plan, guide or profile.")


def read(path: Path | str) -> tuple[str | None, Any]:
    """``(kind, object)`` for any file MemLens writes: a record's kind and object, or
    ``(None, RunResult)`` for a run; clear errors for missing, damaged or newer files."""
    from .store import load_run_file

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, load_run_file(path)  # its messages name each failure
    kind = record_kind(data)
    if kind is None:
        return None, load_run_file(path)
    try:
        return kind, from_dict(data)
    except MemLensError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise MemLensError(ErrorKind.STORE, f"The file {path.name} is damaged ({exc}).",
                           "It cannot be opened; other files are unaffected.") from exc


def print_record(kind: str, record: Any, out: TextIO) -> None:
    """The same text the command that wrote the record printed."""
    if kind == "sweep":
        from .cli import print_sweep

        print_sweep(record, out)
    elif kind == "fit":
        from .cli import print_fit

        print_fit(record, out)
    elif kind in ("inference_plan", "training_plan"):
        from .distributed import format_plan

        out.write(format_plan(record))
    elif kind == "guide":
        from .guide import markdown

        out.write(markdown(record) + "\n")
    else:
        from .distributed_run import format_run

        out.write(format_run(record) + "\n")
