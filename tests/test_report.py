"""Reports (gui.report): saved runs of a tiny model rendered through the app's panels to PNGs,
a self-contained HTML file and a Qt-made PDF; `memlens report` headless; Chinese user text."""

from __future__ import annotations

import base64
import copy
import html
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtGui import QFont, QFontDatabase, QFontMetrics, QImage, QRawFont  # noqa: E402

from engine.export import LAYER_COLUMNS  # noqa: E402
from engine.results import RunResult  # noqa: E402
from engine.runner import execute  # noqa: E402
from engine.store import RunStore, write_run_file  # noqa: E402
from gui import launcher  # noqa: E402
from gui.report import ESTIMATE_BANNER, write_report  # noqa: E402

from .helpers import Collector, tiny  # noqa: E402
from .qt_helpers import distinct_colours  # noqa: E402

pytestmark = pytest.mark.gui

ROOT = Path(__file__).parent.parent
CHINESE = "你好，世界：显存分析"
POPPLER = shutil.which("pdftoppm") and shutil.which("pdftotext") and shutil.which("pdffonts")
needs_poppler = pytest.mark.skipif(not POPPLER, reason="poppler-utils (pdftoppm) is not "
                                   "installed: apt-get install poppler-utils (.ci/run does)")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two saved runs: a plain forward with attention maps, and one with an optimization."""
    store = RunStore(tmp_path_factory.mktemp("report-runs"))
    plain = execute(tiny(workload="forward", attention_maps=True), Collector(), store=store)
    optimized = execute(tiny(workload="forward", optimizations=[
        {"id": "cast", "params": {"dtype": "bfloat16"}}]), Collector(), store=store)
    assert plain is not None and optimized is not None
    return store, store.load(plain.run_id), store.load(optimized.run_id)


def _estimate_of(result: RunResult) -> RunResult:
    est = RunResult.from_dict(copy.deepcopy(result.to_dict()))
    est.run_id = result.run_id.replace("-forward-", "-estimate-forward-")
    est.estimate = {"method": "fake tensors", "build_seconds": 0.1, "pass_seconds": 0.2}
    for layer in est.layers:
        layer.latency_ms = None
    est.totals.latency_ms = est.totals.plain_latency_ms = None
    est.timeline = {}
    return est


def _pdf_pages(pdf: Path, out: Path, dpi: int = 40) -> list[QImage]:
    subprocess.run(["pdftoppm", "-r", str(dpi), "-png", str(pdf), str(out / "page")],
                   check=True, capture_output=True)
    return [QImage(str(p)) for p in sorted(out.glob("page-*.png"))]


def _pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], check=True,
                          capture_output=True, text=True).stdout


# -- one run --------------------------------------------------------------------------------
@needs_poppler
def test_report_of_one_run(qapp, saved, tmp_path):
    store, plain, _ = saved
    maps = store.load_attention(plain.run_id)
    files = write_report([plain], tmp_path / "report", pdf=True, attention={plain.run_id: maps})
    names = sorted(p.name for p in files.images)
    assert names == sorted(f"run-{k}.png" for k in ("memory-by-layer", "per-layer-table",
                                                    "totals", "timeline", "latency",
                                                    "attention", "model")), "images"
    for path in files.images:  # real content, not an empty widget
        image = QImage(str(path))
        assert image.width() == 1200 and distinct_colours(image) > 8, path.name
    assert distinct_colours(QImage(str(files.folder / "run-attention.png"))) > 100, "attention"
    text = files.html.read_text(encoding="utf-8")
    # Self-contained: every picture is embedded, nothing is linked.
    for path in files.images:
        assert base64.b64encode(path.read_bytes()).decode("ascii") in text, path.name
    assert text.count("data:image/png;base64,") == len(files.images), "html image count"
    assert not re.search(r"src='(?!data:)", text), "html links a file"
    t = plain.totals
    line = f"{t.peak_bytes:,} = {t.attributed_bytes:,} + {t.unattributed_bytes:,} bytes"
    assert line in text, "html reconciles"
    totals = text.split("<h3>Totals</h3>")[1].split("<h3>")[0]
    assert totals.count("tokens/s") == 1 and totals.count("profiler overhead") == 1, \
        "the latency is said once in the totals"
    for heading in ("Run configuration", "Environment", "Totals", "Per-layer table",
                    "Optimization effects and quality", "Warnings", "Limitations"):
        assert f"<h3>{heading}</h3>" in text, heading
    assert plain.environment["libraries"]["torch"] in text, "html torch version"
    assert plain.limitations[0][:40] in text, "html limitations"
    # A forward run has no KV cache and saves nothing for backward: those columns, empty in
    # every row, are left out and named; a value not measured in one row says "—", never 0.
    head = re.search(r"<thead><tr>(.*?)</tr></thead>", text).group(1)
    assert "KV<br>cache" not in head and "Saved<br>for" not in head, head
    assert "left out: saved for backward (own), gradients (own), optimizer state (own), " \
           "kv cache (at end)." in text
    row = re.search(r"<tr><td[^>]*>model\.embed_tokens</td>(.*?)</tr>", text).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[5] == "—", cells  # the embedding's FLOPs: no matmul, not counted
    assert "ESTIMATE" not in text
    # The PDF: pages that are not blank, with the run's text.
    pages = _pdf_pages(files.pdf, tmp_path)
    assert len(pages) >= 3, "pdf pages"
    colours = [distinct_colours(page) for page in pages]
    assert min(colours) > 4 and max(colours) > 200, f"pdf page colours {colours}"
    pdf_text = _pdf_text(files.pdf)
    # No ligature glyphs: a run id's "ff" (one id in 16 has it) was one glyph, U+FB00, that a
    # reader copying the id got instead of the letters (and this test failed at random).
    assert "fi" in pdf_text and not re.search("[\ufb00-\ufb06]", pdf_text), "pdf ligatures"
    # Short messages first: a failure's one-line summary in CI keeps only the start.
    assert "Run configuration" in pdf_text, "pdf: configuration heading"
    assert plain.run_id in pdf_text, f"pdf: run id {plain.run_id}"
    assert f"{t.peak_bytes:,}" in pdf_text, f"pdf: peak {t.peak_bytes:,}"


def test_csv_columns_are_the_gui_tables(qapp):
    from gui.panels.layer_table import COLUMNS

    assert [title for _, title in LAYER_COLUMNS] == [c.title for c in COLUMNS]


# -- several runs, estimates ----------------------------------------------------------------
def test_report_compares_runs_and_labels_estimates(qapp, saved, tmp_path):
    _, plain, optimized = saved
    est = _estimate_of(plain)
    files = write_report([plain, optimized, est], tmp_path / "cmp")
    names = {p.name for p in files.images}
    assert "compare.png" in names and "run2-memory-by-layer.png" in names
    assert "run2-latency.png" not in names  # an estimate has no latency: no empty chart
    assert distinct_colours(QImage(str(files.folder / "compare.png"))) > 30
    text = files.html.read_text(encoding="utf-8")
    assert "Comparison of 3 runs" in text
    # the run ids are listed under the comparison table, not in it (a whole id squeezed the
    # quality column to a few letters a line, and a model · workload column off the page)
    table = text.split("Comparison of 3 runs")[1].split("</table>")[0]
    assert plain.run_id not in table and "width='22%'" in table
    assert table.count("cast:dtype=bfloat16") == 1, table  # named once, in its column
    ids = text.split("Comparison of 3 runs")[1].split("Run ids:")[1].split("</p>")[0]
    assert all(f"[{i}] {r.run_id}" in ids for i, r in enumerate([plain, optimized, est]))
    assert ESTIMATE_BANNER in text and "— ESTIMATE</h2>" in text
    assert "Memory at peak by layer (estimate)" in text
    assert text.count("ESTIMATE (fake tensors: no weights, no real memory)") == 1  # its totals
    assert "<code>cast:dtype=bfloat16</code>" in text
    assert "Against the unoptimized model measured in the same run" in text
    assert files.pdf is None
    # Runs are named as the compare view names them, not "demo · forward" three times
    from engine.compare import compare

    labels = compare([plain, optimized, est]).labels()
    for i, label in enumerate(labels):
        heading = html.escape(label.replace(" (estimate)", ""))  # the heading says ESTIMATE
        assert f"[{i}] {heading} — " in text, (i, label)
    assert "(estimate) (ESTIMATE)" not in text
    assert f"<h1>MemLens report: {plain.config.model} · forward — 3 runs</h1>" in text
    assert "Every run: " in text and "× latency vs [0]" in text


def test_a_report_written_again_into_its_folder_leaves_no_stale_files(qapp, saved, tmp_path):
    """Exporting a one-run report over a three-run one (with PDF) removes the old report's
    run2-*.png and report.pdf, which would otherwise sit beside it as if they belonged to it;
    a user's own file and a guide's files in the same folder stay."""
    _, plain, optimized = saved
    folder = tmp_path / "out"
    first = write_report([plain, optimized, _estimate_of(plain)], folder)
    (folder / "report.pdf").write_bytes(b"%PDF- an older export")
    from gui import report as report_module

    kinds = __import__("json").loads((folder / report_module.MANIFEST).read_text())
    kinds["report.html"].append("report.pdf")  # (as an export with --pdf would have listed)
    kinds["guide.html"] = ["guide.html", "guide-forward.png"]
    (folder / report_module.MANIFEST).write_text(__import__("json").dumps(kinds))
    for name in ("guide.html", "guide-forward.png", "notes.txt"):
        (folder / name).write_text("kept")
    assert (folder / "run2-memory-by-layer.png").exists()
    second = write_report([plain], folder)
    left = {p.name for p in folder.iterdir()}
    assert not any(n.startswith(("run0-", "run1-", "run2-")) for n in left), left
    assert "compare.png" not in left and "report.pdf" not in left
    assert {"guide.html", "guide-forward.png", "notes.txt", "report.html"} <= left
    assert {p.name for p in second.images} <= left
    assert "run2-memory-by-layer.png" in second.removed and "report.pdf" in second.removed
    assert len(first.images) > len(second.images)


@pytest.mark.fault(area="interruption", case="Ctrl+C (or SIGTERM) while `memlens report` renders",
                   outcome="stops at the next panel, exit 130 (143), nothing written; the "
                   "folder's previous report intact, as after a failed write")
def test_a_cancelled_report_writes_nothing_and_keeps_the_previous_one(qapp, saved, tmp_path,
                                                                     monkeypatch):
    """Ctrl+C in `memlens report` sets a flag the report checks between panels (raised inside
    Qt's painting it crashed the process, or left half a report); everything is written in a
    hidden folder and moved into place at the end, so a cancelled or failed report leaves the
    folder as it was."""
    from engine.errors import ErrorKind, MemLensError
    from gui import report as report_module

    _, plain, optimized = saved
    folder = tmp_path / "out"
    killed = folder / ".memlens-writing-killed"  # a report killed outright an hour ago
    killed.mkdir(parents=True)
    (killed / "run-model.png").write_bytes(b"x")
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    write_report([plain], folder)
    assert not killed.exists()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    grabs = []
    real = report_module._grab

    def grab_then_interrupt(*args, **kwargs):
        grabs.append(args[2])
        if len(grabs) == 2:
            report_module._INTERRUPTED.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(report_module, "_grab", grab_then_interrupt)
    try:
        with pytest.raises(MemLensError) as info:
            write_report([plain, optimized], folder, pdf=True)
    finally:
        report_module._INTERRUPTED.clear()
    assert info.value.kind == ErrorKind.CANCELLED and "Nothing was written" in info.value.hint
    assert len(grabs) == 2  # it stopped at the panel it was on
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no staging folder
    # and a report that fails writing leaves the folder as it was too
    monkeypatch.setattr(report_module, "write_pdf", lambda *a, **k: (_ for _ in ()).throw(
        MemLensError(ErrorKind.STORE, "disk full", "free some space")))
    with pytest.raises(MemLensError):
        write_report([plain, optimized], folder, pdf=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # a file in the way found only when the new files move in (a folder named report.pdf;
    # on Windows a PDF a viewer holds open): the files already replaced are put back
    monkeypatch.undo()
    (folder / "report.pdf").mkdir()
    with pytest.raises(MemLensError) as info:
        write_report([plain, optimized], folder, pdf=True)
    assert "keeps the previous report" in info.value.message
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert {p.name for p in folder.iterdir() if p.is_dir()} == {"report.pdf"}


def _small_pages(html_text: str):
    """``html_text`` in a QTextDocument paginated into small pages (200 units wide, about 14
    lines high), for the pagination tests."""
    from PySide6.QtCore import QSizeF
    from PySide6.QtGui import QTextDocument

    doc = QTextDocument()
    doc.setHtml(html_text)
    doc.setTextWidth(200)
    doc.setPageSize(QSizeF(200, 12 * 17 + 60))
    return doc


def test_headings_stay_with_what_follows_them_in_the_pdf(qapp):
    """A heading at the foot of a page ("Limitations" with its list on the next page) moves
    to the next page; nothing else does."""
    from PySide6.QtGui import QTextDocument

    from gui.report import _keep_headings_with_next

    filler = "".join(f"<p>line {i}</p>" for i in range(12))
    html_text = (f"<h3>First</h3>{filler}<h3>Alone</h3><p>{'word ' * 40}</p>"
                 f"<h3>Kept</h3><p>short</p>")

    def document() -> QTextDocument:
        return _small_pages(html_text)

    def pages(doc: QTextDocument) -> dict[str, tuple[int, int]]:
        """heading -> (its page, the page of its next block's first line)"""
        height, layout, out = doc.pageSize().height(), doc.documentLayout(), {}
        doc.pageCount()
        block = doc.begin()
        while block.isValid():
            if block.blockFormat().headingLevel():
                nxt = block.next()
                there = layout.blockBoundingRect(nxt).top() + nxt.layout().lineAt(0).y()
                out[block.text()] = (int(layout.blockBoundingRect(block).top() // height),
                                     int(there // height))
            block = block.next()
        return out

    before = pages(document())
    stranded = [h for h, (here, there) in before.items() if here < there]
    assert stranded, before  # the case this test is about
    doc = document()
    assert _keep_headings_with_next(document(), doc) >= 1
    after = pages(doc)
    assert all(here == there for here, there in after.values()), after
    assert after["First"] == (0, 0)  # a heading with its text on its page stays
    assert after[stranded[0]][0] == before[stranded[0]][1]  # moved to its text's page


def test_a_short_table_is_not_split_across_pages(qapp):
    """A heading and a short table of wrapped notes that would cross a page break move to the
    next page together (each cell was cut in two, half on each page); a table too long for
    that is left to Qt's pagination."""
    from PySide6.QtGui import QTextCursor, QTextDocument

    from gui.report import _keep_headings_with_next

    filler = "".join(f"<p>line {i}</p>" for i in range(6))
    rows = "".join(f"<tr><td>row {i}</td><td>{'a long note ' * 3}</td></tr>" for i in range(2))
    long_rows = "".join(f"<tr><td>r{i}</td><td>x</td></tr>" for i in range(40))
    html_text = (f"<h3>First</h3>{filler}<h3>Short</h3><table border='1'>{rows}</table>"
                 f"<h3>Long</h3><table border='1'>{long_rows}</table>")

    def document() -> QTextDocument:
        return _small_pages(html_text)

    def spans(doc: QTextDocument) -> list[tuple[int, int]]:
        """each table's (first page, last page)"""
        height, layout = doc.pageSize().height(), doc.documentLayout()
        doc.pageCount()
        out, seen, block = [], set(), doc.begin()
        while block.isValid():
            table = QTextCursor(block).currentTable()
            if table is not None and table.firstPosition() not in seen:
                seen.add(table.firstPosition())
                box = layout.frameBoundingRect(table)
                out.append((int(box.top() // height), int((box.bottom() - 1) // height)))
            block = block.next()
        return out

    before = spans(document())
    assert before[0][0] < before[0][1], before  # the case this test is about: split
    doc = document()
    _keep_headings_with_next(document(), doc)
    after = spans(doc)
    assert after[0][0] == after[0][1] == before[0][1], after
    assert after[1][0] < after[1][1]  # the long table still runs over pages


def test_pdf_tables_repeat_their_header_and_the_table_picture_has_every_column(qapp,
                                                                              tmp_path):
    """A Markdown table (the guide's ranked tables) repeats its header row on every page it
    continues on; a training run's per-layer picture is as wide as its columns (the last one
    was cut off behind a scroll bar)."""
    from PySide6.QtGui import QTextDocument

    from gui.panels.layer_table import LayerTablePanel
    from gui.report import _repeat_table_headers, _table_width, _tables, render_run_panels

    doc = QTextDocument()
    doc.setMarkdown("| a | b |\n|---|---|\n" + "".join(f"| {i} | x |\n" for i in range(5)))
    assert [t.format().headerRowCount() for t in _tables(doc)] == [0]  # as Qt imports it
    assert _repeat_table_headers(doc) == 1
    assert [t.format().headerRowCount() for t in _tables(doc)] == [1]
    doc.setHtml("<table><tr><th>key</th><td>value</td></tr><tr><th>k</th><td>v</td></tr>"
                "<tr><th>k</th><td>v</td></tr></table>")  # a key-value table has no header
    assert _repeat_table_headers(doc) == 0

    run = execute(tiny(workload="train", model="preset:tiny-gpt2"), Collector())
    shot = next(s for s in render_run_panels(run, tmp_path, "run")
                if s.key == "per-layer-table")
    panel = LayerTablePanel()
    panel.resize(1200, 400)
    panel.render(run.layers)
    assert QImage(str(shot.path)).width() >= _table_width(panel) > 0


# -- Chinese ----------------------------------------------------------------------------------
@needs_poppler
def test_chinese_user_text_renders(qapp, saved, tmp_path):
    _, plain, _ = saved
    run = RunResult.from_dict(copy.deepcopy(plain.to_dict()))
    run.config.prompt = CHINESE
    run.config.label = "模型对比"
    files = write_report([run], tmp_path / "zh", pdf=True)
    assert CHINESE in files.html.read_text(encoding="utf-8")
    # A font on this machine has the glyphs (else Qt draws boxes) ...
    families = QFontDatabase.families(QFontDatabase.WritingSystem.SimplifiedChinese)
    assert families, "no Chinese font installed (apt-get install fonts-wqy-microhei)"
    raw = QRawFont.fromFont(QFont(families[0]), QFontDatabase.WritingSystem.SimplifiedChinese)
    assert all(raw.supportsCharacter(ord(ch)) for ch in CHINESE)
    assert QFontMetrics(QFont(families[0])).inFontUcs4(ord("显"))
    # ... the PDF embeds a Chinese font and its text reads back as the prompt ...
    fonts = subprocess.run(["pdffonts", str(files.pdf)], check=True, capture_output=True,
                           text=True).stdout
    assert re.search(r"WenQuanYi|Noto.*CJK|WQY|Hei", fonts, re.IGNORECASE), fonts
    assert CHINESE in _pdf_text(files.pdf).replace("\n", "")
    # ... and the glyphs drawn are not the missing-glyph box: the prompt and a string of
    # unassigned code points render differently.
    def ink(text: str) -> QImage:
        from PySide6.QtGui import QColor, QPainter

        image = QImage(400, 40, QImage.Format.Format_RGB32)
        image.fill(QColor("white"))
        painter = QPainter(image)
        painter.setFont(QFont(families[0], 16))
        painter.drawText(4, 30, text)
        painter.end()
        return image

    assert ink(CHINESE) != ink("\U000e0fff" * len(CHINESE))
    assert distinct_colours(ink(CHINESE)) > 2


# -- command line -----------------------------------------------------------------------------
def test_cli_report_from_the_store_and_from_a_file(qapp, saved, tmp_path, capsys):
    store, plain, optimized = saved
    code = launcher.main(["--store", str(store.root), "report", plain.run_id, optimized.run_id,
                          "--out", str(tmp_path / "a")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "a" / "report.html").is_file()
    assert (tmp_path / "a" / "run0-attention.png").is_file()  # maps read from the store
    assert "written:" in capsys.readouterr().out
    copy_path = write_run_file(plain, tmp_path / "elsewhere" / "run.json")
    code = launcher.main(["report", str(copy_path), "--out", str(tmp_path / "b"),
                          "--store", str(tmp_path / "empty-store")])
    assert code == 0
    assert not (tmp_path / "b" / "run-attention.png").exists()  # no maps beside that file


def test_cli_report_errors(qapp, saved, tmp_path, capsys):
    store, plain, _ = saved
    assert launcher.main(["--store", str(store.root), "report", "no-such-run", "--out",
                          str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "No saved run" in err and "memlens runs" in err
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"schema_version": 2, "config": ', encoding="utf-8")
    assert launcher.main(["report", str(damaged), "--out", str(tmp_path / "y")]) == 1
    assert "damaged" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert launcher.main(["--store", str(store.root), "report", plain.run_id, "--out",
                          str(blocker / "sub")]) == 1
    err = capsys.readouterr().err
    assert "Cannot write the report" in err and "writable folder" in err
    # an empty --out (an unset shell variable) was the current folder: refused
    for argv in (["report", plain.run_id, "--out", ""], ["report", "--guide", "", "--out", "x"],
                 ["report", plain.run_id, "--out", "x", "--store", " "]):
        with pytest.raises(SystemExit) as info:
            launcher.main(argv)
        assert info.value.code == 2 and ": empty" in capsys.readouterr().err
    # --out an existing file: said so ("File exists" with "choose a writable folder" was not)
    assert launcher.main(["--store", str(store.root), "report", plain.run_id, "--out",
                          str(blocker)]) == 1
    err = capsys.readouterr().err
    assert f"{blocker} is a file, not a folder" in err and "Give --out a folder" in err
    # the run store's own folder: its files would be listed as damaged runs
    listed = sorted(p.name for p in store.root.iterdir())
    assert launcher.main(["--store", str(store.root), "report", plain.run_id, "--out",
                          str(store.root)]) == 1
    assert "is the run store's folder" in capsys.readouterr().err
    assert sorted(p.name for p in store.root.iterdir()) == listed
    with pytest.raises(SystemExit) as info:  # --out is required
        launcher.main(["report", plain.run_id])
    assert info.value.code == 2


def test_memlens_report_runs_headless(saved, tmp_path):
    """The installed command, with no display and no QT_QPA_PLATFORM: it goes offscreen."""
    store, plain, _ = saved
    env = {k: v for k, v in os.environ.items()
           if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", "from gui.launcher import main; "
                          "raise SystemExit(main())", "--store", str(store.root), "report",
                          plain.run_id, "--out", str(tmp_path / "h")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "h" / "report.html").is_file()
    assert "propagateSizeHints" not in out.stderr


# -- the measured guide ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_guide(tmp_path_factory):
    """A short guide (three techniques, one not applicable here) on the tiny model, written as
    memlens guide writes it; its runs in a store."""
    from engine.guide import run_guide, write_guide

    root = tmp_path_factory.mktemp("guide")
    store = RunStore(root / "runs")
    plan = (("forward", ("cast:dtype=bfloat16",)), ("forward", ("prune-ffn:amount=0.25",)),
            ("forward", ("sliding-window",)), ("train", ("freeze-base",)))
    guide = run_guide(model="preset:tiny-llama", seq=16, new_tokens=4, repeats=1, plan=plan,
                      store=store)
    write_guide(guide, root / "guide")
    return guide, root / "guide", store


@needs_poppler
def test_guide_report_has_each_workloads_runs_drawn_and_the_guides_text(qapp, short_guide,
                                                                        tmp_path, capsys):
    """guide.html with one compare picture per workload, guide.pdf whose text is the guide's,
    and the same from the command line."""
    import json

    from engine.guide import Guide
    from gui.report import write_guide_report

    guide, folder, store = short_guide
    again = Guide.from_dict(json.loads((folder / "guide.json").read_text()))
    assert again.to_dict() == guide.to_dict()
    files = write_guide_report(again, tmp_path / "report", store, pdf=True)
    assert [p.name for p in files.images] == ["guide-forward.png", "guide-train.png"]
    page = files.html.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2 and "guide-forward.png" not in page
    for image in files.images:
        assert distinct_colours(QImage(str(image))) > 50
    text = _pdf_text(files.pdf)
    assert "The measured guide: preset:tiny-llama" in text
    assert guide.ranked("forward")[0].label.split(":")[0] in text
    assert "Could not run here" in text
    assert any(distinct_colours(p) > 50 for p in _pdf_pages(files.pdf, tmp_path))
    assert launcher.main(["report", "--guide", str(folder), "--store", str(store.root),
                          "--out", str(tmp_path / "cli")]) == 0
    assert "guide.html" in capsys.readouterr().out
    assert launcher.main(["report", "--guide", str(tmp_path / "nowhere"), "--out",
                          str(tmp_path / "x")]) == 1
    assert "No guide at" in capsys.readouterr().err
    # a guide.json edited by hand: named damaged by the field (it raised a traceback at drawing)
    edited = json.loads((folder / "guide.json").read_text())
    edited["entries"][0]["latency_ratio"] = "fast"
    (tmp_path / "edited.json").write_text(json.dumps(edited), encoding="utf-8")
    assert launcher.main(["report", "--guide", str(tmp_path / "edited.json"), "--out",
                          str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert "is damaged (entries[0].latency_ratio is 'fast', not a number or null)" in err, err
    # another record, or any JSON, given as a guide: named, with what it is
    (tmp_path / "sweep.json").write_text(json.dumps({"kind": "sweep", "points": []}),
                                         encoding="utf-8")
    (tmp_path / "other.json").write_text("[1, 2]", encoding="utf-8")
    for name, words in (("sweep.json", "is a sweep"), ("other.json", "is not a MemLens guide")):
        assert launcher.main(["report", "--guide", str(tmp_path / name), "--out",
                              str(tmp_path / "z")]) == 1
        assert f"{tmp_path / name} {words}" in capsys.readouterr().err


@pytest.mark.fault(area="data", case="a guide whose runs were deleted from the run store",
                   outcome="the guide's report is still written, and names the runs it could "
                           "not draw under their workload")
def test_guide_report_names_runs_missing_from_the_store(qapp, short_guide, tmp_path, capsys):
    import shutil as _shutil

    from gui.report import write_guide_report

    guide, _folder, store = short_guide
    copy_root = tmp_path / "runs"
    _shutil.copytree(store.root, copy_root)
    partial_store = RunStore(copy_root)
    gone = guide.ranked("forward")[0].run_id
    partial_store.delete(gone)
    files = write_guide_report(guide, tmp_path / "partial", partial_store)
    assert (f"Not in the run store {copy_root}, so not in the picture: {gone} (the guide saved "
            "its runs in the store it ran with)") in _plain(files.html.read_text(encoding="utf-8"))
    assert [p.name for p in files.images] == ["guide-forward.png", "guide-train.png"]
    assert files.missing == [gone]
    # from the command line with a store that has none of them (README's guide, run elsewhere):
    # written, and a note says why the report has no pictures and what to give
    assert launcher.main(["report", "--guide", str(_folder), "--store", str(tmp_path / "empty"),
                          "--out", str(tmp_path / "none")]) == 0
    captured = capsys.readouterr()
    assert "pictures: 0 PNG(s)" in captured.out
    assert "so the report draws none of them; give the store the guide ran with" in captured.err


def _plain(html_text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html_text))


def test_pdf_tables_keep_each_word_whole(qapp):
    """Qt shared a table's width by its cells' text: a column of technique ids beside long
    claims came out so narrow that "quanto-weights:weights=qint4" broke every few letters,
    and a header read "optimizat|ions". Each column now gets its longest word (up to a
    share of the page) and a nowrap cell its whole text."""
    from PySide6.QtCore import QSizeF
    from PySide6.QtGui import QTextDocument

    from gui.report import _fit_table_columns, _tables

    claim = "int8 weight quantization shrinks the weights about four times " * 2
    rows = "".join(f"<tr><td>{i}</td><td>quanto-weights:weights=qint4</td>"
                   f"<td style='white-space: nowrap'>×12.52 (noisy)</td><td>{claim}</td>"
                   f"<td>partly: ×0.37 of before, the claim says ×0.25</td></tr>"
                   for i in range(3))
    doc = QTextDocument()
    doc.setHtml("<table border='1' cellpadding='3'><tr><th>#</th><th>technique</th>"
                "<th>latency</th><th>claim</th><th>verdict</th></tr>" + rows + "</table>")
    doc.setPageSize(QSizeF(560, 800))
    assert _fit_table_columns(doc, doc.textWidth()) == 1
    doc.pageCount()  # lays it out
    (table,) = _tables(doc)
    broken = []
    for r in range(table.rows()):
        for c in range(table.columns()):
            block = table.cellAt(r, c).firstCursorPosition().block()
            text, layout = block.text(), block.layout()
            for i in range(layout.lineCount() - 1):
                end = layout.lineAt(i).textStart() + layout.lineAt(i).textLength()
                if text[end - 1] not in " -" and text[end:end + 1] not in ("", " "):
                    broken.append((r, c, text[:end]))
    assert broken == []
    # a table that fits line by line is left as Qt lays it out
    small = QTextDocument()
    small.setHtml("<table><tr><td>a</td><td>b</td></tr></table>")
    small.setPageSize(QSizeF(560, 800))
    assert _fit_table_columns(small, small.textWidth()) == 0
