"""``memlens --self-test`` from the source tree (the packaged app runs the same code, see
packaging/), its blank-screenshot check, and the packaging files' own consistency."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"


def _run_self_test(*args: str, code: str | None = None, timeout: float = 240
                   ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("QT_QPA_PLATFORM", None)  # the self-test must pick offscreen on its own
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "gui.launcher"]
    return subprocess.run([*command, "--self-test", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.gui
@pytest.mark.slow
def test_self_test_runs_the_demo_through_the_engine_process_and_saves(tmp_path):
    proc = _run_self_test("--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "QT_QPA_PLATFORM=offscreen" in out
    assert "engine process pid" in out and "LlamaForCausalLM" in out
    assert "memlens self-test passed" in out
    runs = list((tmp_path / "runs").glob("*.json"))
    assert len(runs) == 1, runs
    shot = tmp_path / "self-test.png"
    assert shot.is_file() and shot.stat().st_size > 10_000
    # Settings went to the work folder, not the user's.
    assert list((tmp_path / "settings").rglob("*.ini"))


@pytest.mark.gui
@pytest.mark.slow
def test_self_test_fails_with_the_step_and_the_engine_message(tmp_path):
    code = ("import sys, gui.launcher as l; l.SELF_TEST_CONFIG['model'] = 'preset:no-such'; "
            "sys.exit(l.main(sys.argv[1:]))")
    proc = _run_self_test("--out", str(tmp_path), code=code)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "memlens self-test FAILED at step 'run a short profile in the engine process'" \
        in proc.stderr
    assert "no-such" in proc.stderr
    assert "passed" not in proc.stdout


def test_self_test_fails_cleanly_without_a_work_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    from gui.launcher import self_test

    assert self_test(["--self-test", "--out", str(blocker / "sub")]) == 1


@pytest.mark.gui
def test_blank_images_are_recognised(qapp):
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor, QImage, QPainter

    from gui.launcher import image_problem

    image = QImage(400, 300, QImage.Format.Format_RGB32)
    image.fill(QColor("white"))
    assert "distinct colours" in image_problem(image)
    assert "empty" in image_problem(QImage())
    painter = QPainter(image)
    for i in range(12):
        painter.fillRect(20 * i, 10 * i, 60, 40, QColor.fromHsv(30 * i, 200, 200))
    painter.setPen(Qt.GlobalColor.black)
    painter.drawText(20, 280, "MemLens self-test")
    painter.end()
    assert image_problem(image) is None


def test_launcher_calls_freeze_support_before_anything_else():
    """The frozen app's engine process is this executable re-run by multiprocessing (spawn):
    ``freeze_support`` must come first in the entry point and in ``main``."""
    import ast

    tree = ast.parse((PACKAGING / "memlens_entry.py").read_text())
    code = [node for node in tree.body
            if not isinstance(node, (ast.Import, ast.ImportFrom))
            and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    assert ast.unparse(code[0]) == "multiprocessing.freeze_support()"
    import inspect

    from gui import launcher

    body = inspect.getsource(launcher.main)
    assert body.index("multiprocessing.freeze_support()") < body.index("engine.cli")


def test_packaging_files_are_consistent():
    spec = (PACKAGING / "memlens.spec").read_text()
    compile(spec, "memlens.spec", "exec")  # valid Python
    assert "memlens_entry.py" in spec
    # Kept: without torch_shm_manager ``import torch`` fails frozen.
    assert "torch_shm_manager" in spec
    build = PACKAGING / "build.sh"
    assert os.access(build, os.X_OK)
    assert subprocess.run(["bash", "-n", str(build)], capture_output=True).returncode == 0
    desktop = (PACKAGING / "memlens.desktop").read_text()
    for key in ("[Desktop Entry]", "Type=Application", "Name=MemLens", "Exec=", "Icon=memlens"):
        assert key in desktop
    icon = ROOT / "resources" / "icons" / "memlens.png"
    assert icon.is_file() and icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _trim():
    sys.path.insert(0, str(PACKAGING))
    try:
        import trim
    finally:
        sys.path.remove(str(PACKAGING))
    return trim


def test_trim_reads_the_libraries_an_elf_file_needs(tmp_path):
    trim = _trim()
    import torch

    c10 = Path(torch.__file__).parent / "lib" / "libc10.so"
    needed = trim.needed_libraries(str(c10))
    assert needed and any(name.startswith("libc.so") for name in needed), needed
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n" * 20)
    assert trim.needed_libraries(str(script)) is None


def test_trim_drops_only_libraries_no_kept_binary_needs():
    trim = _trim()
    import torch

    lib = Path(torch.__file__).parent / "lib"
    needs = trim.needed_libraries(str(lib / "libtorch_python.so"))
    assert "libc10.so" in needs and "libshm.so" in needs
    binaries = [
        ("torch/_C.so", str(lib / "libtorch_python.so"), "EXTENSION"),  # a root: not a candidate
        ("libc10.so", str(lib / "libc10.so"), "BINARY"),  # needed by the root: kept
        ("libgomp_orphan.so.1", str(lib / "libgomp.so.1"), "BINARY"),  # needed by nothing
        ("libpython3.11.so.1.0", str(lib / "libgomp.so.1"), "BINARY"),  # always kept
    ]
    datas = [("libshm.so", "torch/lib/libshm.so", "SYMLINK"),  # target not in the bundle
             ("libc10-link.so", "libc10.so", "SYMLINK"),
             ("resources/x.json", "/dev/null", "DATA")]
    kept_binaries, kept_datas, dropped = trim.prune_unneeded(binaries, datas)
    assert [b[0] for b in kept_binaries] == ["torch/_C.so", "libc10.so", "libpython3.11.so.1.0"]
    assert sorted(dropped) == ["libgomp_orphan.so.1", "libshm.so"]
    assert [d[0] for d in kept_datas] == ["libc10-link.so", "resources/x.json"]


def test_minimal_system_check_and_ci_agree_with_readme():
    script = PACKAGING / "test_minimal_system.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    libs = "libgl1 libegl1 fonts-dejavu-core fontconfig-config"
    assert f'RUNTIME_LIBS="{libs}"' in script.read_text()
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "## Install the packaged app" in readme and libs in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "packaging/build.sh --self-test" in ci and "packaging/test_minimal_system.sh" in ci
    assert "MEMLENS_PACKAGE" in ci and "MEMLENS_PACKAGE" in readme
