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

import dataclasses
import functools
import json
import types
import typing
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
    # (a guide has its own report: the hint named only `show` for it)
    report = (f"; its report: `memlens report --guide {path} --out DIR`" if kind == "guide"
              else "")
    return MemLensError(
        ErrorKind.NOT_APPLICABLE, f"{path.name} is {RECORD_KINDS[kind]}, not a single run.",
        f"Print it with `memlens show {path}`{report}. Opening, comparing, exporting and "
        "reporting take run files (memlens profile or estimate).")


_KIND_WORDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false",
               type(None): "null"}


def _words(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_words(a) for a in typing.get_args(hint))
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "an object"
    return _KIND_WORDS.get(hint, str(hint))


def _fits(value: Any, hint: Any, where: str) -> None:
    """TypeError naming ``where`` when JSON ``value`` is not what ``hint`` allows."""
    if hint is Any:
        return
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(hint):
            try:
                _fits(value, arg, where)
                return
            except TypeError as exc:
                errors.append(exc)
        deeper = [e for e in errors if not str(e).startswith(f"{where} is ")]
        if deeper:  # (an object inside names its own field)
            raise deeper[0]
        raise TypeError(f"{where} is {_shown(value)}, not {_words(hint)}")
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise TypeError(f"{where} is {_shown(value)}, not one of "
                            f"{', '.join(map(repr, typing.get_args(hint)))}")
        return
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise TypeError(f"{where} is {_shown(value)}, not an object")
        hints, required = _fields_of(hint)
        for name, field_hint in hints.items():
            if name in value:
                _fits(value[name], field_hint, f"{where}.{name}" if where else name)
            elif name in required:
                raise TypeError(f"{where + '.' if where else ''}{name} is missing")
        return
    ok = True
    if origin in (list, tuple):  # (JSON has lists only; list[X] and tuple[X, ...] check X)
        ok = isinstance(value, list)
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if ok and len(args) == 1:
            for i, item in enumerate(value):
                _fits(item, args[0], f"{where}[{i}]")
    elif origin is dict:
        ok = isinstance(value, dict)
        args = typing.get_args(hint)
        if ok and len(args) == 2:
            for key, item in value.items():
                _fits(item, args[1], f"{where}[{key!r}]")
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:  # (a JSON writer may have written 12.0)
        ok = (isinstance(value, int) or (isinstance(value, float) and value.is_integer())) \
            and not isinstance(value, bool)
    elif hint in (str, bool, type(None)):
        ok = isinstance(value, hint)
    if not ok:
        raise TypeError(f"{where} is {_shown(value)}, not {_words(hint)}")


@functools.lru_cache(maxsize=None)
def _fields_of(cls: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A record dataclass's field types and the fields it cannot do without (no default);
    cached: a sweep of 20,000 points resolved the hints once per point, 10 s in all."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    # (a class may read some of its fields' absence itself: FILE_OPTIONAL, e.g. an old guide
    # without a device)
    optional = set(getattr(cls, "FILE_OPTIONAL", ()))
    required = frozenset(f.name for f in fields if f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING
                         and f.name not in optional)
    return {f.name: hints[f.name] for f in fields}, required


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_shape(data: dict[str, Any], cls: type) -> None:
    """TypeError naming the first field of record JSON ``data`` whose value is not of the type
    ``cls`` (a record dataclass) declares: a hand-edited or foreign file is called damaged by
    the field at fault (e.g. ``points[3].peak_bytes is "12 GB", not a whole number or null``)
    instead of by whatever broke later in building it."""
    _fits(data, cls, "")


def record_class(kind: str | None) -> type | None:
    if kind == "sweep":
        from .sweep import SweepRecord as cls
    elif kind == "fit":
        from .sweep import FitRecord as cls
    elif kind == "inference_plan":
        from .distributed import DevicePlan as cls
    elif kind == "training_plan":
        from .distributed import ShardPlan as cls
    elif kind == "distributed_run":
        from .distributed_run import DistributedRun as cls
    elif kind == "guide":
        from .guide import Guide as cls
    else:
        return None
    return cls


def from_dict(data: dict[str, Any]) -> Any:
    """The record object of a record's JSON (a ``MemLensError`` for a newer schema, TypeError
    naming the field for a value of the wrong type)."""
    kind = record_kind(data)
    cls = record_class(kind)
    try:
        record = _build(kind, data)
    except (ValueError, TypeError, KeyError, AttributeError):
        if cls is not None:
            check_shape(data, cls)  # (names the field at fault, when a type is)
        raise
    if cls is not None:
        check_shape(data, cls)  # (a value of the wrong type that building took as it was)
    return record


def _build(kind: str | None, data: dict[str, Any]) -> Any:
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
