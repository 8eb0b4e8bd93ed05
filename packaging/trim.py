"""Drop shared libraries no kept binary needs (used by packaging/memlens.spec).

PyInstaller collects a library for every binary it analyses, before the spec trims plugins and
modules; a library that only a dropped part needed (GTK's for the dropped GTK theme plugin,
QtNetwork for the dropped TLS plugins) would stay. :func:`prune_unneeded` keeps a top-level or
Qt library only when a kept binary needs it, directly or through another kept library
(``DT_NEEDED`` entries read from the ELF files), and drops symbolic links left pointing at
nothing. Linux (ELF) only; elsewhere nothing is dropped.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5

# Libraries the bootloader or Python code loads by name (dlopen, ctypes): never dropped.
ALWAYS_KEEP = ("libpython",)


def needed_libraries(path: str) -> list[str] | None:
    """The ``DT_NEEDED`` names of a 64-bit little-endian ELF file, or ``None`` when ``path`` is
    not one (a script, a data file, another format)."""
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size < 64:
                return None
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _needed(data)
    except (OSError, ValueError, struct.error):
        return None


def _needed(data: mmap.mmap) -> list[str] | None:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []
    needed_offsets: list[int] = []
    strtab = None
    offset, size = dynamic
    for pos in range(offset, offset + size, 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed_offsets.append(value)
        elif tag == DT_STRTAB:
            strtab = value
    if strtab is None:
        return []
    base = next((strtab - vaddr + off for vaddr, off, filesz in loads
                 if vaddr <= strtab < vaddr + filesz), None)
    if base is None:
        return []
    names = []
    for rel in needed_offsets:
        end = data.find(b"\0", base + rel)
        names.append(data[base + rel:end].decode("utf-8", "replace"))
    return names


def is_candidate(dest: str) -> bool:
    """A library that is in the bundle only because something needs it: one at the bundle's
    top level or among Qt's libraries (not a Python extension, plugin or torch library)."""
    dest = dest.replace(os.sep, "/")
    name = dest.rsplit("/", 1)[-1]
    if name.startswith(ALWAYS_KEEP) or ".so" not in name:
        return False
    return "/" not in dest or dest.startswith("PySide6/Qt/lib/")


def prune_unneeded(binaries: list[tuple], datas: list[tuple]
                   ) -> tuple[list[tuple], list[tuple], list[str]]:
    """``(binaries, datas, dropped)``: the TOCs without the candidate libraries (see
    :func:`is_candidate`) that no kept binary needs, and without symbolic links to them."""
    def base(dest: str) -> str:
        return dest.replace(os.sep, "/").rsplit("/", 1)[-1]

    by_name: dict[str, list[tuple]] = {}
    for entry in binaries:
        if is_candidate(entry[0]):
            by_name.setdefault(base(entry[0]), []).append(entry)
    links = {base(dest): base(target) for dest, target, kind in datas if kind == "SYMLINK"}

    kept: set[str] = set()
    queue: list[str] = [src for dest, src, _ in binaries if not is_candidate(dest)]
    seen_files: set[str] = set()
    while queue:
        src = queue.pop()
        if src in seen_files:
            continue
        seen_files.add(src)
        for name in needed_libraries(src) or ():
            name = links.get(name, name)
            for entry in by_name.get(name, ()):
                if entry[0] not in kept:
                    kept.add(entry[0])
                    queue.append(entry[1])
    dropped = [dest for dest, _src, _kind in binaries if is_candidate(dest) and dest not in kept]
    binaries = [entry for entry in binaries if not is_candidate(entry[0]) or entry[0] in kept]
    present = {entry[0].replace(os.sep, "/") for entry in binaries}
    present |= {entry[0].replace(os.sep, "/") for entry in datas if entry[2] != "SYMLINK"}
    kept_datas = []
    for entry in datas:
        if entry[2] == "SYMLINK":
            folder = os.path.dirname(entry[0])
            target = os.path.normpath(os.path.join(folder, entry[1])).replace(os.sep, "/")
            if target not in present:
                dropped.append(entry[0])
                continue
        kept_datas.append(entry)
    return binaries, kept_datas, dropped


def sizes(paths: Iterable[str]) -> int:
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
