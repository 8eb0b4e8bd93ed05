"""The run store: one JSON file per run (plus attention maps beside it), written atomically.

Location: ``$MEMLENS_HOME/runs`` if set, else the user data directory
(``$XDG_DATA_HOME/memlens/runs`` or ``~/.local/share/memlens/runs`` on Linux,
``~/Library/Application Support/memlens/runs`` on macOS, ``%APPDATA%/memlens/runs`` on Windows).
A run is written to a temporary file in the same folder, flushed to disk and renamed over the
final name, so a crash mid-save leaves the previous file intact and never a partial run listed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compare import optimizations_text, quality_text
from .errors import ErrorKind, MemLensError
from .records import not_a_run, record_kind
from .config import one_line
from .results import RunResult, SchemaError, check_run_types, migrate


def default_root() -> Path:
    home = os.environ.get("MEMLENS_HOME")
    if home:
        return Path(home).expanduser() / "runs"
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("APPDATA") or Path.home())
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "memlens" / "runs"


def distributed_folder(store_root: Path | str | None = None) -> Path:
    """Where measured distributed runs are written when no --out is given: ``distributed/``
    beside the run store (they are records of every rank, not runs the store lists)."""
    return Path(store_root if store_root is not None else default_root()).parent / "distributed"


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    created: str
    model: str
    workload: str
    peak_bytes: int | None
    latency_ms: float | None
    label: str
    path: Path
    optimizations: str = "none"  # ``int8-dynamic, lora:rank=8``
    quality: str = "—"  # a short figure, e.g. ``KL 0.012, ppl 31.2``
    device: str = ""
    dtype: str = ""
    status: str = "ok"
    kind: str = "measured"  # or "estimate" (fake tensors: no weights, no real memory)
    # what was measured: "b1 s128", "b1 s60 +32 new", "… · rank 0 of 2" (the compare view's
    # form): a sweep's runs differ by nothing else
    input: str = ""
    # The run file's totals as named there: latency_ms above is the plain pass's (what every
    # table calls "latency"), the hooked figure where the file has no plain one.
    plain_latency_ms: float | None = None
    hooked_latency_ms: float | None = None  # totals.latency_ms: the pass with live hooks


def summary_matches(summary: RunSummary, words: list[str]) -> bool:
    """Whether every word (any case) is in the run's row: its id, label, model, workload,
    input, optimizations, device, dtype, kind, status, date or quality: the fields the window's
    filter box also searches, for `memlens runs WORD...`."""
    text = " ".join(str(v) for v in (
        summary.run_id, summary.label, summary.model, summary.workload, summary.input,
        summary.optimizations, summary.device, summary.dtype, summary.kind, summary.status,
        summary.created, summary.quality)).casefold()
    return all(w.casefold() in text for w in words)


def _default_mode() -> int:
    """The mode ``open()`` gives a new file here (0o666 less the umask), read once at import:
    the umask can only be read by setting it, which is not safe once threads run."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


NEW_FILE_MODE = _default_mode()


def temporary_beside(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` for an atomic write, with the permissions a file
    created by ``open()`` would have (``mkstemp`` makes it 0600, which left exported files and
    runs unreadable to the rest of a team sharing the folder)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, NEW_FILE_MODE)
    except OSError:
        pass  # a file system without modes: keep what mkstemp made
    return fd, tmp


_SYSTEM_FOLDERS = ("/dev/", "/proc/")  # devices and a process's own descriptors


def _in_place(path: Path) -> bool:
    """Whether ``path`` is written in place rather than renamed over: a device, a pipe or a
    socket (after links), or anything named under /dev or /proc. /dev/stdout is a link to the
    process's descriptor 1: redirected to a file it resolves to that regular file, and an atomic
    write (a temporary renamed over it) replaced /dev/stdout itself as root; run as root it also
    replaced /dev/full with a regular file and said "written"."""
    return (str(path).startswith(_SYSTEM_FOLDERS)
            or os.path.realpath(path).startswith(_SYSTEM_FOLDERS) or _special_file(path))


def _special_file(path: Path) -> bool:
    """Whether ``path`` exists (after links) and is a device, a pipe or a socket."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def same_file_as_stdout(path: Path | str) -> bool:
    """Whether ``path`` is where standard output goes (``--trace /dev/stdout``, or the file it
    is redirected to): the command's own notes then go to standard error."""
    try:
        a, b = os.stat(path), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def write_output(path: Path | str, data: str | bytes, what: str = "the file") -> Path:
    """Write a file the user named (``--out``, ``--trace``, a CSV, a README): atomically (a
    temporary file renamed over it: the previous file survives a crash or a full disk), or in
    place where ``path`` is a device or pipe (``--trace /dev/stdout``). A link is followed (the
    file it names is replaced, the link kept) and an existing file keeps its permissions. Any
    file error is a ``MemLensError`` naming the path and the fix; a folder given for a file is
    said so. A closed pipe stays a ``BrokenPipeError`` (the command stops quietly)."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        if path.is_dir():
            raise MemLensError(ErrorKind.STORE, f"{path} is a folder, not a file.",
                               f"Give a file name for {what} (e.g. {path / 'out.json'}).")
        if _in_place(path):
            with open(path, "wb") as f:
                f.write(raw)
        else:
            target = Path(os.path.realpath(path))
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = None
            with contextlib.suppress(OSError):
                mode = os.stat(target).st_mode & 0o7777
            _atomic_write(target, raw, mode)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise MemLensError(ErrorKind.STORE, f"Cannot write {path}: {exc.strerror or exc}.",
                           "Choose a writable folder with free space.") from exc
    return path


def _atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path`` (with
    ``mode``, or what a new file gets). Never over a device or pipe (it would become a regular
    file)."""
    if _special_file(path):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    fd, tmp = temporary_beside(path)
    try:
        if mode is not None:
            with contextlib.suppress(OSError):
                os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


STALE_TEMPORARY_S = 3600.0  # a temporary file this old is left over from a killed save


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files a killed save of ``path`` left behind (never a recent one: another
    MemLens may be writing it right now)."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMPORARY_S:
                tmp.unlink()
        except OSError:
            pass


def file_in_the_way(folder: Path) -> Path | None:
    """The file that ``folder`` or its nearest existing parent is, if it is one (a store folder
    given as a file, or MEMLENS_HOME naming a file); None when the folder can exist (or its
    name cannot be checked: the error comes where it is used)."""
    try:
        here = folder
        while not here.exists() and here.parent != here:
            here = here.parent
        return here if here.exists() and not here.is_dir() else None
    except OSError:  # a name too long, a folder that cannot be searched
        return None


class RunStore:
    """Saved runs in one folder: ``save``, ``list``, ``load``, ``delete``; no model needed."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def _ensure(self) -> None:
        self.check_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MemLensError(ErrorKind.STORE, f"Cannot create the run folder {self.root}: "
                               f"{exc.strerror or exc}.",
                               "Set MEMLENS_HOME to a writable folder.") from exc

    def path_for(self, run_id: str) -> Path:
        return self.root / f"{run_id}.json"

    def attention_path(self, run_id: str) -> Path:
        return self.root / f"{run_id}.attn.safetensors"

    def save(self, result: RunResult, attention: Any = None) -> Path:
        """Write the run (and its attention maps, float16) atomically; returns the JSON path."""
        self._ensure()
        path = self.path_for(result.run_id)
        try:
            if attention is not None and getattr(attention, "maps", None):
                self._save_attention(result, attention)
            data = json.dumps(result.to_dict(), indent=1, allow_nan=False).encode("utf-8")
            _atomic_write(path, data)
            _remove_stale_temporaries(path)
        except OSError as exc:
            raise MemLensError(ErrorKind.STORE, f"Could not save the run to {path}: "
                               f"{exc.strerror or exc}.",
                               "Free disk space or set MEMLENS_HOME to a writable folder; "
                               "earlier runs are untouched.") from exc
        return path

    def _save_attention(self, result: RunResult, attention: Any) -> None:
        import torch
        from safetensors.torch import save

        tensors = {f"layer.{i}": torch.from_numpy(m).to(torch.float16).contiguous()
                   for i, m in attention.maps.items()}
        meta = {"tokens": json.dumps(list(attention.tokens)),
                "downsampled_from": json.dumps(attention.downsampled_from)}
        path = self.attention_path(result.run_id)
        _atomic_write(path, save(tensors, metadata=meta))
        if result.attention is not None:
            result.attention["file"] = path.name

    def load_attention(self, run_id: str) -> Any:
        """The saved attention maps as an ``AttentionMaps`` event, or None when absent."""
        from safetensors import safe_open

        from .events import AttentionMaps

        path = self.attention_path(run_id)
        if not path.is_file():
            # A run file copied or renamed in the store keeps the maps file it was saved with
            # (its record names it): the copy is opened by its file name, the maps by theirs.
            try:
                data = json.loads(self.path_for(run_id).read_text(encoding="utf-8"))
                named = str(((data.get("attention") or {}) if isinstance(data, dict)
                             else {}).get("file") or "")
            except (OSError, ValueError, AttributeError):
                named = ""
            if not named or Path(named).name != named or not (self.root / named).is_file():
                return None
            path = self.root / named
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                maps = {int(k.split(".")[1]): f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise MemLensError(ErrorKind.STORE, f"The attention maps file {path.name} is "
                               f"damaged: {exc}.", "Run again with attention maps to recreate "
                               "it; the run itself is intact.") from exc
        return AttentionMaps(maps=dict(sorted(maps.items())),
                             tokens=tuple(json.loads(meta.get("tokens", "[]"))),
                             downsampled_from=json.loads(meta.get("downsampled_from", "null")))

    def load(self, run_id_or_path: str | Path) -> RunResult:
        path = Path(run_id_or_path)
        # An id names a file in the store; a path (a folder, a file of another name) is read
        # as given, so that the error names it (``show /tmp`` said "No saved run at /tmp.json").
        if not path.suffix == ".json" and _is_plain_id(str(run_id_or_path)) and not (
                path.exists() and not self.path_for(str(run_id_or_path)).exists()):
            run_id = str(run_id_or_path)
            path = self.path_for(run_id)
            if not path.exists() and _is_plain_id(run_id) and (
                    self.trash_root / path.name).is_file():
                raise MemLensError(ErrorKind.NOT_FOUND, f"Run {run_id} is in the trash.",
                                   "Bring it back with Edit → Restore a deleted run… (or "
                                   f"`memlens restore {run_id}`).")
            if not path.exists():
                self.check_root()  # (a store that is a file: said so, not "no run")
        elif path.suffix != ".json" and not path.exists() and Path(f"{path}.json").is_file():
            path = Path(f"{path}.json")  # a run file's path without its .json
        result = load_run_file(path)
        with contextlib.suppress(OSError):
            if result.run_id != path.stem and path.parent.resolve() == self.root.resolve():
                result.run_id = path.stem  # (as the list names it: a copied or renamed file)
        return result

    def check_root(self) -> None:
        """Raise ``MemLensError(store)`` when the store's folder cannot exist because it, or a
        folder above it, is a file (such a store read as empty, and saving failed after the
        work)."""
        blocker = file_in_the_way(self.root)
        if blocker is not None:
            raise MemLensError(
                ErrorKind.STORE, f"The run store {self.root} cannot be a folder: {blocker} is a "
                "file.", "Give a folder for the run store (--store DIR or MEMLENS_HOME)"
                + (f"; a run file opens with `memlens show {blocker}`." if blocker == self.root
                   else "."))

    def list(self) -> list[RunSummary]:
        """Saved runs, newest first; damaged files are skipped (``damaged()`` names them)."""
        self.check_root()
        return _summaries(self.root)

    def damaged(self) -> list[str]:
        """Names of the run files :meth:`list` skipped (not JSON, not a run, a field of the
        wrong type: ``memlens show FILE`` says what is wrong with one)."""
        _summaries(self.root)
        with _SUMMARY_LOCK:
            cached = dict(_SUMMARY_CACHE.get(str(self.root.resolve()), {}))
        return sorted(name for name, (_, summary) in cached.items() if summary is None)

    def trashed_runs(self) -> list[RunSummary]:
        """The runs in the trash, newest first, as :meth:`list` gives the saved ones."""
        self.check_root()
        return _summaries(self.trash_root)

    def delete(self, run_id: str) -> None:
        """Remove a run and its maps for good (the app and CLI use :meth:`trash` instead)."""
        for p in (self.path_for(run_id), self.attention_path(run_id)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    @property
    def trash_root(self) -> Path:
        return self.root / TRASH

    def trash(self, run_id: str) -> Path:
        """Move a run (and its attention maps) into the store's ``trash`` folder, where
        :meth:`restore` finds it; returns the trashed JSON's path. A rename, so a crash leaves
        the run either listed or in the trash, never half of it."""
        return self._move(run_id, self.root, self.trash_root, "saved run",
                          "List the saved runs with `memlens runs`.")

    def restore(self, run_id: str) -> Path:
        """Move a trashed run back (it is listed again); returns its JSON path."""
        if self.path_for(run_id).exists():
            raise MemLensError(ErrorKind.STORE, f"A run {run_id} is already in the store.",
                               "Nothing to restore: the store holds a run with this id.")
        return self._move(run_id, self.trash_root, self.root, "run in the trash",
                          f"Trashed runs are the .json files in {self.trash_root}.")

    def purge(self, run_id: str) -> int:
        """Remove a run in the trash for good (its attention maps first, then its JSON: a crash
        between the two leaves a restorable run, never maps without a run); returns the bytes
        freed. Only trashed runs: a listed run goes to the trash first (:meth:`trash`)."""
        json_path = self.trash_root / f"{run_id}.json"
        if not _is_plain_id(run_id) or not json_path.is_file():
            listed = _is_plain_id(run_id) and self.path_for(run_id).is_file()
            raise MemLensError(
                ErrorKind.NOT_FOUND,
                f"Run {run_id} is not in the trash." if listed
                else f"No run in the trash with id {run_id!r}.",
                "Only deleted runs are removed for good: delete it first (Saved runs → Delete; "
                f"`memlens delete {run_id}`)." if listed
                else "List the trash with `memlens runs --trash`.")
        freed = 0
        for p in (self.trash_root / f"{run_id}.attn.safetensors", json_path):
            try:
                size = p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise MemLensError(ErrorKind.STORE, f"Could not remove {p}: "
                                   f"{exc.strerror or exc}.",
                                   "Check that the trash folder is writable, or remove the "
                                   "file by hand.") from exc
            freed += size
        return freed

    def empty_trash(self) -> tuple[list[str], int, list[MemLensError]]:
        """Remove every run in the trash for good (:meth:`purge` each), and attention maps
        left there without their run; returns the ids removed, the bytes freed (what
        ``usage(trash=True)`` counted) and the failures (each named; the rest is removed)."""
        removed: list[str] = []
        freed = 0
        errors: list[MemLensError] = []
        for run_id in self.trashed():
            try:
                freed += self.purge(run_id)
                removed.append(run_id)
            except MemLensError as exc:
                errors.append(exc)
        suffix = ".attn.safetensors"
        if self.trash_root.is_dir():
            for p in sorted(self.trash_root.glob(f"*{suffix}")):
                if (self.trash_root / f"{p.name[:-len(suffix)]}.json").exists():
                    continue  # (its run could not be removed: named above)
                try:
                    size = p.stat().st_size
                    p.unlink()
                    freed += size
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    errors.append(MemLensError(ErrorKind.STORE, f"Could not remove {p}: "
                                               f"{exc.strerror or exc}.",
                                               "Check that the trash folder is writable, or "
                                               "remove the file by hand."))
        return removed, freed, errors

    def usage(self, trash: bool = False) -> tuple[int, int]:
        """(runs, bytes on disk) of the saved runs, or of the trash: the JSON files and their
        attention maps (maps without a run are counted too: they take the space as well)."""
        folder = self.trash_root if trash else self.root
        runs = size = 0
        if not folder.is_dir():
            return 0, 0
        for p in folder.iterdir():
            if p.name.startswith(".") or not p.is_file():
                continue
            if p.name.endswith(".json"):
                runs += 1
            elif not p.name.endswith(".attn.safetensors"):
                continue
            try:
                size += p.stat().st_size
            except OSError:
                pass  # removed meanwhile
        return runs, size

    def trashed(self) -> list[str]:
        """Ids of the runs in the trash (sorted)."""
        if not self.trash_root.is_dir():
            return []
        return sorted(p.stem for p in self.trash_root.glob("*.json") if not p.name.startswith("."))

    def _move(self, run_id: str, source: Path, target: Path, what: str, hint: str) -> Path:
        json_path = source / f"{run_id}.json"
        if not _is_plain_id(run_id) or not json_path.is_file():
            self.check_root()
            raise MemLensError(ErrorKind.NOT_FOUND, f"No {what} with id {run_id!r}.", hint)
        maps = source / f"{run_id}.attn.safetensors"
        moving = [json_path] + ([maps] if maps.exists() else [])
        taken = [p.name for p in moving if (target / p.name).exists()]
        if (target / f"{run_id}.attn.safetensors").exists() and maps not in moving:
            taken.append(f"{run_id}.attn.safetensors")  # stale maps would join this run
        if taken:
            raise MemLensError(ErrorKind.STORE, f"Cannot move run {run_id}: {target} already "
                               f"holds {', '.join(taken)}.",
                               "Move or delete those files by hand first; nothing was changed.")
        done: list[Path] = []
        try:
            target.mkdir(parents=True, exist_ok=True)
            for p in moving:  # the JSON first: the run stops being listed before its maps go
                os.replace(p, target / p.name)
                done.append(p)
        except OSError as exc:
            for p in reversed(done):  # put back what moved: a run is never split in two
                try:
                    os.replace(target / p.name, p)
                except OSError:
                    pass
            raise MemLensError(ErrorKind.STORE, f"Could not move run {run_id} to {target}: "
                               f"{exc.strerror or exc}.",
                               "Check that the run folder is writable; the run is unchanged."
                               ) from exc
        return target / json_path.name

    def set_label(self, run_id: str, label: str) -> None:
        """Change a saved run's label (its ``config.label``); the rest of the file is kept as it
        is, and the write is atomic. A run from a newer MemLens is refused (it is not rewritten
        by a version that cannot read it)."""
        path = self.path_for(run_id)
        if not _is_plain_id(run_id) or not path.is_file():
            self.check_root()
            in_trash = _is_plain_id(run_id) and (self.trash_root / path.name).is_file()
            raise MemLensError(ErrorKind.NOT_FOUND,
                               f"Run {run_id} is in the trash." if in_trash
                               else f"No saved run with id {run_id!r}.",
                               "Restore it first (Edit → Restore a deleted run…, or `memlens "
                               f"restore {run_id}`)." if in_trash
                               else "List the saved runs (the Saved runs page; `memlens runs`).")
        label = one_line(str(label))  # one line of text: the list shows it in a cell
        from .config import check_label

        check_label(label)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or record_kind(data) is not None:
                raise ValueError("not a run")
            from .results import SCHEMA_VERSION

            version = data.get("schema_version")
            if isinstance(version, int) and version > SCHEMA_VERSION:
                raise MemLensError(ErrorKind.STORE, f"Run {run_id} was written by a newer "
                                   f"MemLens (schema {version}).",
                                   "Label it with that version; this one leaves it unchanged.")
            data.setdefault("config", {})["label"] = label
            encoded = json.dumps(data, indent=1, allow_nan=False).encode("utf-8")
            if not path.is_file():  # trashed by another window meanwhile: do not bring it back
                raise MemLensError(ErrorKind.NOT_FOUND, f"Run {run_id} was just deleted.",
                                   "Restore it first if you meant to label it.")
            _atomic_write(path, encoded)
        except (ValueError, AttributeError, TypeError) as exc:
            raise MemLensError(ErrorKind.STORE, f"The run file {path.name} is damaged ({exc}).",
                               "Its label cannot be changed; other runs are unaffected.") from exc
        except OSError as exc:
            raise MemLensError(ErrorKind.STORE, f"Could not write {path}: "
                               f"{exc.strerror or exc}.",
                               "Check that the run folder is writable; the run is unchanged."
                               ) from exc


# folder -> file name -> (stamp, summary or None for a damaged file): listing a store re-reads
# only the files that changed since the last listing (the window lists after every save and
# whenever the folder changes, and a run file is a few hundred KiB of JSON, so 200 runs took
# 0.2 s of the UI thread each time). The stamp is what a rewrite changes: MemLens writes a new
# file and renames it over the old, which gives a new inode and new times.
_SUMMARY_CACHE: dict[str, dict[str, tuple[tuple[int, ...], RunSummary | None]]] = {}
_SUMMARY_LOCK = threading.Lock()


def clear_summary_cache() -> None:
    """Forget every cached summary (benchmarks time a cold listing with it)."""
    with _SUMMARY_LOCK:
        _SUMMARY_CACHE.clear()


def _summaries(folder: Path) -> list[RunSummary]:
    """The runs in ``folder``, newest first; damaged files are skipped."""
    key = str(folder.resolve())  # (a missing folder resolves too: its entries are dropped)
    if not folder.is_dir():
        with _SUMMARY_LOCK:
            _SUMMARY_CACHE.pop(key, None)
        return []
    with _SUMMARY_LOCK:
        before = dict(_SUMMARY_CACHE.get(key, {}))
    now: dict[str, tuple[tuple[int, ...], RunSummary | None]] = {}
    for path in folder.glob("*.json"):
        try:
            st = path.stat()
        except OSError:
            continue
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        hit = before.get(path.name)
        now[path.name] = hit if hit is not None and hit[0] == stamp else (stamp, _summary(path))
    with _SUMMARY_LOCK:  # replaced wholesale: files gone from the folder are forgotten too
        _SUMMARY_CACHE[key] = now
    out = [summary for _, summary in now.values() if summary is not None]
    out.sort(key=lambda s: s.created, reverse=True)
    return out


def _typed(value: Any, *types: type, optional: bool = True) -> Any:
    """``value`` when it is one of ``types`` (None too when ``optional``; a bool is not a
    number); else TypeError: a hand-edited field of the wrong type makes the file damaged
    rather than breaking the listing of every run (a sort or a format that fails)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        raise TypeError(f"{value!r} is not {'/'.join(t.__name__ for t in types)}")
    return value


def _input_text(data: dict) -> str:
    """The input a run file measured, as engine.compare.input_size writes it, plus the rank
    of a tensor-parallel estimate; "" when the file does not say."""
    cfg = data.get("config") or {}
    shape = (data.get("inputs") or {}).get("shape") or [cfg.get("batch"), cfg.get("seq")]
    if not (isinstance(shape, list) and len(shape) >= 2
            and all(isinstance(x, int) for x in shape[:2])):
        return ""
    text = f"b{shape[0]} s{shape[1]}"
    if cfg.get("workload") == "generate" and isinstance(cfg.get("new_tokens"), int):
        text += f" +{cfg['new_tokens']} new"
    tp = (data.get("estimate") or {}).get("tensor_parallel") or 1
    return text + (f" · rank 0 of {tp}" if isinstance(tp, int) and tp > 1 else "")


def _summary(path: Path) -> RunSummary | None:
    """One run file's summary, or None when it cannot be read as a run."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        migrate(data)  # (a newer schema, or none: not listed as a run that then cannot open)
        cfg = data.get("config") or {}
        totals = data.get("totals") or {}
        info = data.get("model_info") or {}
        _typed(data.get("run_id"), str, optional=False)
        _typed(data.get("totals"), dict, optional=False)  # (what load_run_file requires)
        _typed(data.get("layers"), list, optional=False)
        _typed(cfg.get("model"), str, optional=False)
        _typed(data.get("created", ""), str)
        for value in (cfg.get("model"), cfg.get("workload"), cfg.get("label")):
            _typed(value, str)
        _typed(totals.get("peak_bytes"), int)
        for key in ("plain_latency_ms", "latency_ms"):
            _typed(totals.get(key), int, float)
        return RunSummary(
            # The file's name is the id the store opens it by (`show`, `compare`, the Saved runs
            # page); a copied or renamed run file keeps its old id inside.
            run_id=path.stem, created=data.get("created", ""),
            model=cfg.get("model", "?"), workload=cfg.get("workload", "?"),
            peak_bytes=totals.get("peak_bytes"),
            # The plain (unhooked) pass, as the run's own totals and the compare view
            # show it; runs saved without one keep the hooked figure.
            latency_ms=(totals.get("plain_latency_ms")
                        if totals.get("plain_latency_ms") is not None
                        else totals.get("latency_ms")),
            label=one_line(cfg.get("label") or ""), path=path,  # (a file edited by hand)
            optimizations=optimizations_text(data.get("optimizations") or []),
            quality=quality_text(data.get("quality")),
            device=str(info.get("device") or cfg.get("device") or ""),
            dtype=str(info.get("dtype") or cfg.get("dtype") or ""),
            status=str(data.get("status") or "ok"),
            kind="estimate" if data.get("estimate") is not None else "measured",
            input=_input_text(data),
            plain_latency_ms=totals.get("plain_latency_ms"),
            hooked_latency_ms=totals.get("latency_ms"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


TRASH = "trash"  # the store's subfolder of trashed runs (not listed; `memlens restore`)


def _is_plain_id(run_id: str) -> bool:
    """A run id names a file in the store folder, never a path out of it."""
    return bool(run_id) and Path(run_id).name == run_id and run_id not in (".", "..")


# (the window's File → Open takes files only: the hint names what each place takes)
_RUN_FILE_HINT = ("Open a run's JSON file; the saved runs are on the Saved runs page "
                  "(`memlens runs` lists their ids, which the command line also takes).")


def load_run_file(path: Path | str) -> RunResult:
    """Read a run JSON, with clear errors for missing, damaged or too-new files."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise MemLensError(ErrorKind.NOT_FOUND, f"No saved run at {path}.",
                           "Check the path, or list the saved runs (the Saved runs page; "
                           "`memlens runs`).") from exc
    except IsADirectoryError as exc:
        raise MemLensError(ErrorKind.NOT_FOUND, f"{path} is a folder, not a run file.",
                           _RUN_FILE_HINT) from exc
    except UnicodeDecodeError as exc:  # a picture or other binary file named .json
        raise MemLensError(ErrorKind.STORE, f"{path} is not a MemLens run: it is not text.",
                           _RUN_FILE_HINT) from exc
    except OSError as exc:
        raise MemLensError(ErrorKind.STORE, f"Cannot read {path}: {exc.strerror or exc}.",
                           "Check the file's permissions.") from exc
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        kind = record_kind(data)
        if kind is not None:  # a sweep, fit, plan or distributed run: not a run
            raise not_a_run(path, kind)
        migrate(data)  # (no schema, or a newer one: said so first, with its own hint)
        # (before building: "layers": "oops" failed inside as "'str' object has no attribute
        # 'items'", naming no field)
        for key in ("totals", "layers", "config"):
            if not isinstance(data.get(key), dict if key != "layers" else list):
                raise ValueError(f"no {key}" if key not in data else f"{key} is {data[key]!r}")
        result = RunResult.from_dict(data)  # (a file that is no run at all is said so here)
        if not data["config"].get("model"):  # (the config's default would name another model)
            raise ValueError("no config.model")
        check_run_types(result)
        return result
    except SchemaError as exc:
        raise MemLensError(ErrorKind.STORE, f"{path.name}: {exc}", exc.hint) from exc
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        if path.suffix != ".json" and isinstance(exc, json.JSONDecodeError):
            # (not a damaged run: a file that never was one, e.g. `memlens show /etc/passwd`)
            raise MemLensError(ErrorKind.STORE, f"{path} is not a MemLens run: it is not JSON.",
                               _RUN_FILE_HINT) from exc
        raise MemLensError(ErrorKind.STORE, f"The run file {path.name} is damaged ({exc}).",
                           "It cannot be opened; other runs are unaffected.") from exc


def write_run_file(result: RunResult, path: Path | str) -> Path:
    """Write ``result`` as a run JSON at ``path`` (atomically: an existing file survives a
    failure); it opens with ``memlens show PATH`` or File → Open run file."""
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_suffix(".json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(result.to_dict(), indent=1, allow_nan=False).encode("utf-8")
        _atomic_write(path, data)
    except OSError as exc:
        raise MemLensError(ErrorKind.STORE, f"Could not write {path}: {exc.strerror or exc}.",
                           "Choose a writable folder with free space.") from exc
    return path
