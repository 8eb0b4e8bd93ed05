"""The ``memlens`` command: ``profile``, ``estimate``, ``sweep``, ``fit``, ``runs``, ``show``,
``compare``, ``export``; bare ``memlens`` opens the window. ``memlens report`` renders with Qt, so
the ``memlens`` launcher (``gui.launcher``) hands it to ``gui.report``; it is listed here for the
help text only."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from .config import ATTENTION_IMPLS, DTYPE_ALIASES, DTYPES, WORKLOADS, RunConfig
from .errors import ErrorKind, MemLensError
from .events import Event, Failed, Finished, LayerStatsReady, Progress
from .compare import optimizations_text
from .format import (MISSING, against_baseline, bytes_against, human_bytes, kv_cache_text,
                     layer_passes_text, overhead, quality_parts, si_number, tokens_per_s_text)
from .results import RunResult
from .store import write_output

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
EXIT_TERMINATED = 143  # SIGTERM: cancelled as by Ctrl+C (128 + 15, as a shell reports it)


_DTYPE_ALIASES = DTYPE_ALIASES


def _dtype(text: str) -> str:
    """``--dtype``: the names in DTYPES, or the short forms fp32, bf16, fp16."""
    value = _DTYPE_ALIASES.get(text.lower(), text.lower())
    if value not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(DTYPES)}, or "
            f"{', '.join(_DTYPE_ALIASES)})")
    return value


class _VersionAction(argparse.Action):
    """``--version``: the text is made when asked for (it reads package metadata)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None):
        from . import version_text

        print(version_text())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="memlens",
        description="Measure where a transformer model's working memory goes. "
                    "Without a command, opens the desktop app.",
        epilog="Exit status: 0 done; 1 the command failed or refused its input (the message "
               "says why); 2 the command line is wrong; 130 cancelled (Ctrl+C), 143 by SIGTERM. "
               "`memlens --self-test [--out DIR]` checks an installation end to end.")
    ap.add_argument("--store", type=_store_path, default=None,
                    help="run store folder (default: $MEMLENS_HOME/runs or the user data dir)")
    ap.add_argument("--version", action=_VersionAction,
                    help="print MemLens' version and its libraries', then exit")
    sub = ap.add_subparsers(dest="command")

    p = sub.add_parser("profile", help="run a workload and print a per-layer memory table")
    p.add_argument("--model", default="demo",
                   help="demo | demo-encoder | PATH (folder or config.json) | HUB_ID | preset:NAME")
    p.add_argument("--workload", choices=WORKLOADS, default="forward")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128, action=_Given,
                   help="sequence length (for generate: prompt length; with --prompt, the "
                        "prompt's tokens; default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=32, action=_Given,
                   help="generate: tokens after the prompt (default: %(default)s)")
    p.add_argument("--prompt", default=None, help="prompt text (default: sample text or random ids)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", type=_dtype, default="auto",
                   help=f"{' | '.join(DTYPES)} (or fp32, bf16, fp16)")
    p.add_argument("--attention", choices=ATTENTION_IMPLS, default="auto",
                   dest="attention_impl", help="attention implementation")
    p.add_argument("--attention-maps", action="store_true",
                   help="capture attention maps (one extra forward with eager attention)")
    p.add_argument("--detailed", action="store_true",
                   help="CUDA: per-module allocator peaks (slower)")
    p.add_argument("--memory-snapshot", type=_path_arg, default=None, metavar="FILE",
                   help="CUDA: record the allocator's history during the memory pass into this "
                        "pickle (opens in pytorch.org/memory_viz)")
    p.add_argument("--repeats", type=int, default=3, help="timing passes (median)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch's CPU threads for the work (default: torch's, every core); "
                        "--threads 1 steadies timings on a machine busy with other work")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sample-hz", type=float, default=20.0)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a checkpoint's own Python code to run (only for sources you trust)")
    p.add_argument("--opt", action="append", default=[], metavar="ID[:key=value,...]",
                   help="apply an optimization (repeatable); see `memlens optimizations`")
    p.add_argument("--label", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=_path_arg, default=None, help="also write the run JSON here")
    p.add_argument("--no-save", action="store_true", help="do not add the run to the store")
    p.add_argument("--distributed", type=int, default=None, metavar="N",
                   help="train: FSDP2 on N local processes launched with torchrun (gloo on CPU, "
                        "nccl on CUDA); every rank measured, one record of all ranks beside the "
                        "plan's per-rank bound")
    p.add_argument("--master-dtype", type=_dtype, default=None,
                   help="with --distributed: FSDP2 mixed precision, the model loaded (sharded "
                        "parameters, gradients, optimizer state) in this dtype and all-gathered "
                        "in --dtype (as memlens plan --master-dtype)")
    p.add_argument("--replicas", type=int, default=1, metavar="R",
                   help="with --distributed: HSDP, R groups each holding the model sharded "
                        "among N / R processes (as memlens plan --replicas)")
    p.add_argument("--json", action="store_true", help="print the run JSON instead of the table")

    e = sub.add_parser(
        "estimate",
        help="estimate per-layer memory without weights or real memory (fake tensors)",
        description="Build the model from its config on fake tensors (no weights, no memory) and "
                    "run the same instrumented workload as `profile`: per-layer weights, "
                    "activations, KV cache, transient peaks, FLOPs and the peak, labelled as an "
                    "estimate. Latency is not estimated.")
    e.add_argument("--model", default="demo",
                   help="preset:NAME | PATH (config.json or a folder with one) | demo | "
                        "demo-encoder")
    e.add_argument("--workload", choices=WORKLOADS, default="forward")
    e.add_argument("--batch", type=int, default=1)
    e.add_argument("--seq", type=int, default=128,
                   help="sequence length (for generate: prompt length)")
    e.add_argument("--new-tokens", type=int, default=32, action=_Given,
                   help="generate: tokens after the prompt (each decode step is one more pass; "
                        "default: %(default)s)")
    e.add_argument("--dtype", type=_dtype, default="auto",
                   help=f"{' | '.join(DTYPES)} (or fp32, bf16, fp16); auto = what profile "
                        "would use (float32 for presets and configs)")
    e.add_argument("--attention", choices=ATTENTION_IMPLS, default="auto",
                   dest="attention_impl", help="attention implementation")
    e.add_argument("--trust-remote-code", action="store_true",
                   help="allow a config's own Python code to run (only for sources you trust)")
    e.add_argument("--opt", action="append", default=[], metavar="ID[:key=value,...]",
                   help="apply an optimization to the fake model (repeatable); all but "
                        "int8-dynamic, low-bit-optimizer, compile and quanto's 4/2-bit ones")
    e.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                   help="estimate rank 0 of N ranks of tensor parallelism (the architecture's "
                        "own plan in transformers; PyTorch DTensor on a fake process group)")
    e.add_argument("--label", default="")
    e.add_argument("--out", type=_path_arg, default=None, help="also write the estimate JSON here")
    e.add_argument("--save", action="store_true",
                   help="add the estimate to the run store (listed as an estimate by `runs`)")
    e.add_argument("--json", action="store_true", help="print the JSON instead of the table")

    _add_sweep_parsers(sub)

    r = sub.add_parser("runs", help="list saved runs")
    r.add_argument("words", nargs="*", metavar="WORD",
                   help="list only the runs whose row holds every word, any case (id, label, "
                        "model, workload, input, optimizations, device, dtype, date): "
                        "`memlens runs llama int8`")
    r.add_argument("--json", action="store_true",
                   help="print the list as JSON (latency_ms and plain_latency_ms as in a run "
                        "file's totals: with live hooks, and the plain pass the table shows)")
    r.add_argument("--trash", action="store_true",
                   help="list the runs in the store's trash instead (`memlens restore` them)")

    d = sub.add_parser("delete", help="move saved runs to the store's trash (not listed; "
                                      "`memlens restore` brings them back)")
    d.add_argument("runs", nargs="*", metavar="RUN_ID")
    d.add_argument("--empty-trash", action="store_true",
                   help="remove every run in the trash for good, freeing its space (cannot be "
                        "undone; `memlens runs --trash` lists them first)")
    rs = sub.add_parser("restore", help="bring runs back from the store's trash")
    rs.add_argument("runs", nargs="+", metavar="RUN_ID")
    lb = sub.add_parser("label", help="set a saved run's label (shown by `runs` and the app)")
    lb.add_argument("run", metavar="RUN_ID")
    lb.add_argument("text", help="the new label ('' clears it)")

    s = sub.add_parser("show", help="print a saved run's table (RUN_ID or path to a run JSON); "
                                    "also prints a sweep, fit, plan, distributed run or guide file")
    s.add_argument("run")

    o = sub.add_parser("optimizations", help="list the optimizations and what applies here")
    o.add_argument("--workload", choices=WORKLOADS, default=None)
    o.add_argument("--device", default=None)
    o.add_argument("--model", default=None, type=_path_arg,
                   help="also check each technique against this model (built on fake tensors: "
                        "no weights, no memory): demo, preset:ID, a folder or a config.json")
    o.add_argument("--dtype", type=_dtype, default="auto",
                   help="the model's dtype for --model (as profile's)")
    o.add_argument("--json", action="store_true")

    c = sub.add_parser("compare", help="per-layer and total deltas between saved runs")
    c.add_argument("runs", nargs="+", help="RUN_ID or path; the first is the reference")

    x = sub.add_parser(
        "export", help="write a saved run's per-layer and timeline CSVs and/or a trace JSON",
        description="Engine-only exports of a saved run: --csv DIR writes layers.csv (the "
                    "per-layer table, exact bytes, empty cells where nothing was measured) and "
                    "timeline.csv; --trace FILE writes a Chrome/Perfetto trace (phases, "
                    "per-layer median spans, memory counters) that ui.perfetto.dev opens.")
    x.add_argument("run", help="RUN_ID from the store or a path to a run JSON")
    x.add_argument("--csv", type=_path_arg, default=None, metavar="DIR",
                   help="folder for layers.csv and timeline.csv")
    x.add_argument("--trace", type=_path_arg, default=None, metavar="FILE",
                   help="trace JSON file (Trace Event Format)")

    rp = sub.add_parser(
        "report", help="HTML (and PDF) report of saved runs, with the app's panels as pictures "
                       "(needs the GUI libraries; runs headless)")
    rp.add_argument("runs", nargs="+", help="RUN_ID or path; several runs add a comparison")
    rp.add_argument("--out", type=_path_arg, required=True, help="output folder")
    rp.add_argument("--pdf", action="store_true", help="also write report.pdf")

    g = sub.add_parser(
        "guide", help="run every applicable memory technique (and combinations) on one model "
                      "and write a ranked, measured guide")
    g.add_argument("--model", default="demo",
                   help="demo | demo-encoder | PATH (folder or config.json) | HUB_ID | "
                        "preset:NAME (default: %(default)s)")
    g.add_argument("--workload", default="forward,generate,train",
                   help="comma-separated workloads to cover (default: all three)")
    g.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: %(default)s)")
    g.add_argument("--dtype", default="auto", help="the weights' dtype for every run "
                   "(auto: the checkpoint's; float32 for a model built from a config)")
    g.add_argument("--techniques", default=None, metavar="ID,...",
                   help="only the entries made of these registry ids (memlens optimizations "
                        "lists them), e.g. torchao-int4,kv-cache")
    g.add_argument("--batch", type=int, default=1, help="batch size (default: %(default)s)")
    g.add_argument("--seq", type=int, default=128,
                   help="sequence length; for generate, the prompt's (default: %(default)s)")
    g.add_argument("--new-tokens", type=int, default=16, action=_Given,
                   help="tokens each generate run adds (default: %(default)s)")
    g.add_argument("--repeats", type=int, default=3,
                   help="timing passes per run, whose median is the latency (default: "
                        "%(default)s)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch's CPU threads for the work (default: torch's, every core); "
                        "--threads 1 steadies timings on a machine busy with other work")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="let a model whose config has auto_map run its own Python code "
                        "(only for a source you trust)")
    g.add_argument("--out", type=_path_arg, required=True,
                   help="folder for guide.md, guide.json and the charts (runs go to the store)")
    g.add_argument("--readme", type=_path_arg, default=None,
                   help="also put the guide between <!-- guide:start --> and <!-- guide:end --> "
                        "in this Markdown file (chart paths relative to it)")

    # `memlens profile --store DIR` works as well as `memlens --store DIR profile`: SUPPRESS
    # keeps the leading option's value when the command does not repeat it.
    for command in sub.choices.values():
        command.add_argument("--store", type=_store_path, default=argparse.SUPPRESS,
                             help="run store folder (the same as `memlens --store DIR ...`)")
    sub.add_parser("gui", help="open the desktop app (options: --model, --workload, --run, "
                              "--screenshot PATH, --quit-after-ms N; `memlens --self-test` "
                              "checks an installation offscreen)")
    return ap


GUI_OPTIONS = ("--model", "--workload", "--opt", "--run", "--screenshot", "--quit-after-ms")


def wants_window(argv: list[str]) -> bool:
    """True when ``memlens ARGS`` asks for the window (no subcommand, or only window options).

    The ``memlens`` command itself lives in ``gui.launcher`` so that ``engine`` never imports
    Qt or ``gui``; this function lets it route without parsing twice."""
    argv = split_store(argv)[1]
    return not argv or argv[0] == "gui" or argv[0].split("=")[0] in GUI_OPTIONS


def split_store(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv``'s leading global ``--store DIR`` (or ``--store=DIR``) words, and the rest."""
    i = 0
    while i < len(argv) and (argv[i] == "--store" or argv[i].startswith("--store=")):
        i += 2 if argv[i] == "--store" else 1
    return argv[:i], argv[i:]


SIZE_OPTIONS = ("--budget", "--measure-below", "--per-device", "--cpu-offload", "--reserve")


def _join_negative_sizes(argv: list[str]) -> list[str]:
    """``--budget -5GiB`` as ``--budget=-5GiB``: argparse reads a value that starts with '-'
    and is not a plain number as an option and answers "expected one argument"; joined, the
    size's own parser says what is wrong with it (a size is positive)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if (a in SIZE_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-")
                and argv[i + 1][1:2].isdigit()):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _path_arg(text: str) -> Path:
    # ``Path("")`` is ``Path(".")``: an empty --out/--csv/--trace (an unset shell variable)
    # wrote into the current folder instead of being refused.
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give a file or folder path")
    return Path(text)


class _Given(argparse.Action):
    """Stores the value and notes that the option was given (``args.given``): one left at its
    default and one given with the default's value are told apart."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        namespace.__dict__.setdefault("given", set()).add(self.dest)


def _unused_options(args: argparse.Namespace) -> None:
    """Say on stderr when an option was given but has no effect: ``--new-tokens 64`` on a
    forward run, or ``--seq 512`` beside ``--prompt`` (the prompt's tokens set the length),
    were dropped without a word."""
    given = getattr(args, "given", set())
    workloads = [w.strip() for w in str(getattr(args, "workload", "") or "").split(",")]
    if "new_tokens" in given and "generate" not in workloads and args.new_tokens >= 0:
        # (a negative count is refused right after: "ignored" then "cannot be negative")
        print(f"memlens: note: --new-tokens {args.new_tokens} is ignored: only the generate "
              "workload adds tokens.", file=sys.stderr)
    if "seq" in given and getattr(args, "prompt", None):  # (an empty prompt is no prompt)
        print(f"memlens: note: --seq {args.seq} is ignored: the length is the --prompt "
              "text's tokens.", file=sys.stderr)


def _store_path(text: str) -> Path:
    # An empty path was the current folder: runs saved among its files, and any JSON there
    # listed as a run.
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give the run store's folder, or leave --store "
                                         "out for the default store")
    return Path(text)


def main(argv: list[str] | None = None) -> int:
    """The headless commands. ``python -m engine.cli`` with no command prints the help."""
    # SIGTERM (a scheduler's time limit, `kill`) cancels as Ctrl+C does: what finished is kept,
    # and the exit status is 143. It ended the process silently, mid-save included.
    import signal
    import threading

    terminated: list[bool] = []

    def terminate(_signum: int, _frame: Any) -> None:
        terminated.append(True)
        raise KeyboardInterrupt

    previous = None
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        code = _main_guarded(argv)
    except KeyboardInterrupt:
        # Ctrl+C before a command's own handler is in place (while torch imports, in the first
        # seconds): it printed a 30-line traceback from inside `import torch`.
        print("memlens: cancelled.", file=sys.stderr)
        code = EXIT_CANCELLED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_TERMINATED if terminated and code == EXIT_CANCELLED else code


def _main_guarded(argv: list[str] | None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader closed the pipe (`memlens runs | head`): stop quietly, as Unix tools do,
        # rather than print a traceback. stdout goes to /dev/null so that the interpreter's
        # flush at exit does not raise again (the recipe in Python's signal documentation).
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
            pass
        return EXIT_FAILED


def _main(argv: list[str] | None) -> int:
    argv = _join_negative_sizes(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    _unused_options(args)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            _error(f"--threads must be at least 1 (got {threads}).",
                   "Give --threads 1 or more, or leave it out for torch's default.")
            return EXIT_FAILED
        import torch

        torch.set_num_threads(threads)
    if args.command is None or args.command == "gui":
        parser.print_help()
        print("\nThe desktop app starts with the installed `memlens` command (no subcommand).")
        return EXIT_USAGE
    from .store import RunStore

    store = RunStore(args.store)
    saves = (args.command == "guide" or (args.command == "profile" and not args.no_save)
             or (args.command in ("estimate", "sweep", "fit", "plan")
                 and getattr(args, "save", False)))
    try:
        if saves:  # refused before the work (a store that is a file failed only when saving)
            store.check_root()
    except MemLensError as exc:
        _error(exc.message, exc.hint)
        return EXIT_FAILED
    try:
        if args.command in ("profile", "estimate", "sweep", "fit", "plan") and \
                getattr(args, "out", None) is not None:
            args.out = _json_out(args.out)  # refused before the work, not after it
            _refuse_store_path(args.out, store, "--out")
        if args.command == "profile":
            return _profile(args, store)
        if args.command == "estimate":
            return _estimate(args, store)
        if args.command == "sweep":
            return _sweep(args, store)
        if args.command == "fit":
            return _fit(args, store)
        if args.command == "plan":
            from .distributed import run_cli

            return run_cli(args)
        if args.command == "runs":
            return _runs(store, args.json, trash=args.trash, words=args.words)
        if args.command == "delete" and args.empty_trash:
            return _empty_trash(store, args.runs)
        if args.command == "delete" and not args.runs:
            _error("Which runs? `memlens delete` needs one or more run ids.",
                   "List them with `memlens runs`; `memlens delete --empty-trash` empties the "
                   "trash instead.")
            return EXIT_USAGE
        if args.command in ("delete", "restore"):
            return _move_runs(store, args.command, args.runs)
        if args.command == "label":
            store.set_label(args.run, args.text)
            from .config import one_line

            print(f"{args.run}: label {one_line(args.text)!r}")
            return EXIT_OK
        if args.command == "show":
            from .records import print_record, read

            given = Path(args.run)
            # a run, or a sweep, fit, plan, FSDP2 run: any file given by its path ("sweep.JSON",
            # or saved without the extension, was looked up as a run id and refused with a hint
            # to run this same command)
            if given.suffix.lower() == ".json" or (args.run and given.is_file()):
                kind, record = read(args.run)
                if kind is not None:
                    print_record(kind, record, sys.stdout)
                    return EXIT_OK
            else:
                record = store.load(args.run)
            print_report(record, sys.stdout)
            label = f" · label {record.config.label!r}" if record.config.label else ""
            print(f"run {record.run_id} · created {record.created}{label}")
            return EXIT_OK
        if args.command == "optimizations":
            return _optimizations(args)
        if args.command == "compare":
            if len(args.runs) < 2:
                _error("compare needs two or more runs.", "Pass RUN_A RUN_B [...].")
                return EXIT_USAGE
            from .compare import print_comparison

            print_comparison([store.load(r) for r in args.runs], sys.stdout)
            return EXIT_OK
        if args.command == "export":
            return _export(args, store)
        if args.command == "guide":
            return _guide(args, store)
        if args.command == "report":
            _error("memlens report draws the app's panels with Qt, so it runs through the "
                   "`memlens` command (gui.launcher), not `python -m engine.cli`.",
                   "Run `memlens report RUN --out DIR` with the GUI libraries installed.")
            return EXIT_USAGE
    except MemLensError as exc:
        _error(exc.message, exc.hint)
        return EXIT_FAILED
    except BrokenPipeError:
        raise  # (main stops quietly: the reader closed the pipe)
    except OSError as exc:  # a file the command reads or writes: a full disk, a long name, …
        where = f" {exc.filename}" if exc.filename else ""
        _error(f"Could not read or write{where}: {exc.strerror or exc}.",
               "Check the path (its length, that its folder exists), the folder's permissions "
               "and the free space on its disk.")
        return EXIT_FAILED
    return EXIT_USAGE


def _readme_problem(path: Path) -> str:
    """What keeps ``guide --readme`` from writing the guide into ``path`` ("" if nothing)."""
    start, end = "<!-- guide:start -->", "<!-- guide:end -->"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"--readme {path} does not exist."
    except IsADirectoryError:
        return f"--readme {path} is a folder."
    except UnicodeDecodeError:
        return f"--readme {path} is not a text file."
    except OSError as exc:
        return f"Cannot read --readme {path}: {exc.strerror or exc}."
    if start not in text or end not in text:
        return f"{path} has no {start} … {end} block."
    if text.index(end) < text.index(start):
        return f"{path}'s {end} comes before its {start}."
    return ""


def _guide(args: argparse.Namespace, store) -> int:
    from .guide import markdown, run_guide

    workloads = [w.strip() for w in args.workload.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        _error(f"Unknown workload(s) {', '.join(unknown)}.",
               f"Choose from {', '.join(WORKLOADS)}, comma-separated.")
        return EXIT_USAGE
    from .config import DTYPES

    if args.dtype not in DTYPES:
        _error(f"Unknown dtype {args.dtype!r}.", f"Choose one of {', '.join(DTYPES)}.")
        return EXIT_USAGE
    techniques = None
    if args.techniques is not None:
        from .optimizations import REGISTRY

        techniques = [t.strip() for t in args.techniques.split(",") if t.strip()]
        unknown = [t for t in techniques if t not in REGISTRY]
        if unknown or not techniques:
            _error(f"Unknown technique(s) {', '.join(unknown) or '(none given)'}.",
                   f"Choose registry ids, comma-separated: {', '.join(REGISTRY)}.")
            return EXIT_USAGE
    if args.readme is not None and (problem := _readme_problem(args.readme)):
        _error(problem, "Give --readme a Markdown file holding the two markers <!-- guide:start "
               "--> and <!-- guide:end -->, in that order, where the guide should go.")
        return EXIT_USAGE  # said before the guide runs, not after its minutes of work
    refuse_store_folder(args.out, store, "--out", "the guide's files")
    created = not args.out.exists()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        _error(f"{args.out} is a file, not a folder.", "Give --out a folder (new or existing).")
        return EXIT_USAGE
    except OSError as exc:
        _error(f"Cannot create {args.out}: {exc.strerror or exc}.", "Choose a writable folder.")
        return EXIT_FAILED
    from .guide import write_guide
    from .runner import in_thread

    printer = _ProgressPrinter(sys.stderr)
    cancel = threading.Event()
    out: dict[str, Any] = {}

    def keep(guide) -> None:
        """The guide so far, written after each technique: Ctrl+C, a time limit or a crash
        leaves every finished technique in --out (its Markdown says it is partial)."""
        if guide.partial and "write_error" not in out:
            try:
                write_guide(guide, args.out)
                out["kept"] = len(guide.entries)
            except OSError as exc:
                out["write_error"] = exc

    def work() -> None:
        try:
            out["guide"] = run_guide(model=args.model, device=args.device, seq=args.seq,
                                     new_tokens=args.new_tokens, workloads=workloads,
                                     techniques=techniques, dtype=args.dtype,
                                     batch=args.batch,
                                     repeats=args.repeats, listener=printer, cancel=cancel,
                                     store=store, on_entry=keep,
                                     trust_remote_code=args.trust_remote_code)
        except MemLensError as exc:  # also Cancelled
            out["error"] = exc

    done = in_thread(work, "memlens-guide")
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        print("\nmemlens: cancelling after the current run…", file=sys.stderr)
        cancel.set()
        done.wait()
    if "error" in out:
        exc = out["error"]
        _error(exc.message, exc.hint)
        if created and not any(args.out.iterdir()):
            args.out.rmdir()  # (a refused guide left an empty folder behind)
        if out.get("kept"):
            print(f"memlens: the {out['kept']} technique(s) that finished are in "
                  f"{args.out / 'guide.md'} (marked partial).", file=sys.stderr)
        return EXIT_CANCELLED if exc.kind == ErrorKind.CANCELLED else EXIT_FAILED
    guide = out["guide"]
    try:
        _path, charts = write_guide(guide, args.out)
    except OSError as exc:
        _error(f"Cannot write the guide into {args.out}: {exc.strerror or exc}.",
               "Choose a writable folder.")
        return EXIT_FAILED
    text = markdown(guide, charts)
    if args.readme is not None:
        rel = os.path.relpath(args.out.resolve(), args.readme.resolve().parent)
        body = markdown(guide, {w: f"{rel}/{name}" for w, name in charts.items()})
        body = body.replace("# The measured guide", "#### The measured guide", 1)
        body = body.replace("\n## ", "\n##### ")  # keep README's own sections on top
        start, end = "<!-- guide:start -->", "<!-- guide:end -->"
        problem = _readme_problem(args.readme)  # (it may have changed while the guide ran)
        if problem:
            _error(problem, "Add the two markers, in that order, where the guide should go.")
            return EXIT_FAILED
        readme = args.readme.read_text(encoding="utf-8")
        head, rest = readme.split(start, 1)
        write_output(args.readme, f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}",
                     "--readme")
    print(text)
    ran = sum(e.status == "ok" for e in guide.entries)
    print(f"written: {args.out / 'guide.md'}, {args.out / 'guide.json'} ({ran} of "
          f"{len(guide.entries)} techniques measured; runs saved in {store.root}; "
          f"`memlens report RUN... --out DIR` draws them)")
    return EXIT_OK


def _inside_store(path: Path, store) -> bool:
    """Whether ``path`` is a file in the run store's folder or its trash (where every .json
    is a run: writing a record there replaced a saved run, listed but no longer a run)."""
    try:
        folder = path.expanduser().resolve().parent
        return folder in (store.root.resolve(), store.trash_root.resolve())
    except (OSError, RuntimeError):
        return False


def _refuse_store_path(path: Path, store, option: str) -> None:
    if _inside_store(path, store):
        raise MemLensError(ErrorKind.STORE,
                           f"{option} {path} is in the run store's folder, where every file is "
                           "a saved run: writing there would replace or fake one.",
                           f"Give {option} a path outside {store.root} (the store keeps runs "
                           "itself: --save, or every measured run).")


def refuse_store_folder(folder: Path | str, store, option: str, what: str,
                        hint: str | None = None) -> None:
    """Refuse ``folder`` (a report's, a guide's, CSV files') when it is the run store's own
    folder or its trash: the store lists every .json there as a run (a guide.json came up as
    a damaged run, and `memlens delete guide` moved it to the trash)."""
    if _inside_store(Path(folder) / "_", store):
        raise MemLensError(ErrorKind.STORE,
                           f"{option} {folder} is the run store's folder, where every file is "
                           f"taken for a saved run: {what} there would be listed as damaged "
                           "runs.", hint or f"Give {option} another folder than {store.root}.")


def _written(path: Path) -> None:
    """Say where a file was written: on standard error when the file is standard output
    (``--out /dev/stdout``), where the line would land inside the JSON."""
    from .store import same_file_as_stdout

    print(f"written: {path}", file=sys.stderr if same_file_as_stdout(path) else sys.stdout)


def _json_out(path: Path) -> Path:
    """``--out FILE`` for a JSON record: ``~`` expanded (bash leaves ``--out=~/x.json`` as it
    is), and refused before any work when it is a folder or cannot be written (the failure
    came as a traceback after the run, which was saved by then)."""
    path = Path(os.path.expanduser(str(path)))
    hint = "Give --out a file path in a writable folder, e.g. --out results/run.json."
    if path.is_dir():
        raise MemLensError(ErrorKind.STORE, f"--out {path} is a folder.", hint)
    from .store import _in_place

    if _in_place(path):  # a device or pipe (/dev/stdout): written in place, no folder probe
        return path
    from .store import file_in_the_way

    blocker = file_in_the_way(path.parent)
    if blocker is not None:  # ("File exists" named neither the file nor the fix)
        raise MemLensError(ErrorKind.STORE, f"Cannot write --out {path}: {blocker} is a file, "
                           "not a folder.", hint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".memlens-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MemLensError(ErrorKind.STORE, f"Cannot write --out {path}: "
                           f"{exc.strerror or exc}.", hint) from exc
    return path


def _saved_or_said(store, run_id: str, what: str, quiet: bool = False) -> bool:
    """Print where the run was saved (not with ``quiet``: stdout holds JSON), or say on stderr
    that it was not (the runner keeps a failed save as a warning and the run's figures are
    still printed): False when it was not."""
    path = store.path_for(run_id)
    if path.is_file():
        if not quiet:
            print(f"{what}: {path}")
        return True
    _error(f"The {'estimate' if 'estimate' in what else 'run'} was not saved in {store.root} "
           "(the warning above says why).",
           "Fix the store folder (--store DIR or MEMLENS_HOME), or keep the figures with "
           "--out FILE.")
    return False


def _export(args: argparse.Namespace, store) -> int:
    from .export import export_run

    if args.csv is None and args.trace is None:
        _error("export needs somewhere to write.", "Pass --csv DIR and/or --trace FILE.")
        return EXIT_USAGE
    if args.trace is not None:
        _refuse_store_path(Path(args.trace), store, "--trace")
    if args.csv is not None:
        refuse_store_folder(args.csv, store, "--csv", "the CSV files")
    result = store.load(args.run)
    from .store import same_file_as_stdout

    # (with the trace on standard output, the notes go to standard error: `| jq` reads JSON)
    notes = sys.stderr if args.trace is not None and same_file_as_stdout(args.trace) \
        else sys.stdout
    for path in export_run(result, csv_dir=args.csv, trace=args.trace):
        print(f"written: {path}", file=notes)
    if args.csv is not None and not (result.timeline or {}).get("t"):
        from .export import TIMELINE_CSV

        stale = Path(args.csv) / TIMELINE_CSV
        print("no timeline.csv: the run recorded no timeline"
              + (" (an estimate samples nothing)" if result.estimate is not None else "")
              + (f"; the {stale} there is from an earlier export" if stale.exists() else ""),
              file=notes)
    if args.trace is not None and not any(layer.latency_ms is not None
                                          for layer in result.layers):
        # (the trace lays layers out by their timed durations: with none there is no span)
        print("the trace has phases but no per-layer spans: "
              + ("an estimate times nothing" if result.estimate is not None
                 else "the run timed no layer")
              + "; the per-layer figures are in layers.csv (--csv DIR) and `memlens show`",
              file=notes)
    if result.estimate is not None:
        print("these are ESTIMATES (fake tensors: no weights, no real memory)"
              + ("; layers.csv says so in its figures column" if args.csv is not None else
                 "; the trace says so in its process names"), file=notes)
    return EXIT_OK


def error(message: str, hint: str = "") -> None:
    """Print an error and its hint the way every memlens command does."""
    _error(message, hint)


def _error(message: str, hint: str = "") -> None:
    print(f"memlens: error: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)


class _ProgressPrinter:
    """Progress on stderr: one line per stage, rewritten in place on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.stage = ""
        self.step: tuple = ()
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.failed: Failed | None = None
        self.result: RunResult | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            now = time.perf_counter()
            # A terminal rewrites one line; a log (not a terminal) gets a line per stage, and
            # per step where a stage names its steps (the guide's techniques, warm-up passes).
            step = (event.fraction, event.message)
            if (event.stage != self.stage or (self.tty and now - self.last > 0.1)
                    or (not self.tty and event.fraction is not None and step != self.step)):
                self.last = now
                self.step = step
                frac = f" {event.fraction * 100:3.0f}%" if event.fraction is not None else ""
                line = f"[{now - self.t0:6.1f}s] {event.stage:<9}{frac} {event.message}"
                if self.tty:
                    self.stream.write("\r\033[K" + line)
                else:
                    self.stream.write(line + "\n")
                self.stream.flush()
                self.stage = event.stage
        elif isinstance(event, Failed):
            self.failed = event
        elif isinstance(event, Finished):
            self.result = event.result
            if self.tty:
                self.stream.write("\r\033[K")
                self.stream.flush()
        elif isinstance(event, LayerStatsReady):
            pass


def _optimizations(args: argparse.Namespace) -> int:
    from .optimizations import REGISTRY, must_follow

    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    from .config import check_device

    check_device(device)  # ("bogus" was listed, every line saying it needs cpu or cuda)
    workloads = [args.workload] if args.workload else list(WORKLOADS)
    model = None
    if args.model is not None:
        from .estimate import build_shapes_only

        model = build_shapes_only(RunConfig(model=str(args.model), dtype=args.dtype))

    def verdict(opt: Any, workload: str, params: dict | None = None) -> str | None:
        """Why ``opt`` (with ``params``, else its defaults) does not apply: the workload and
        device, then the model."""
        params = opt.defaults() if params is None else params
        reason = opt.check_config(workload, device, params)
        if reason is None and model is not None:
            reason = opt.check_model(model, params)
        return reason

    def other_choices(opt: Any, workload: str) -> tuple[list[str], list[str]]:
        """The values of its choice parameters, other than the default, that apply and that
        are refused ("kv-cache generate: applies" hid that policy=offloaded needs CUDA;
        "attention: no, the model already uses sdpa" hid that impl=eager applies)."""
        good, refused = [], []
        for p in opt.params:
            for value in p.choices or ():
                if value == p.default:
                    continue
                why = verdict(opt, workload, {**opt.defaults(), p.name: value})
                if why:
                    refused.append(f"{p.name}={value}: {why}")
                else:
                    good.append(f"{p.name}={value}")
        return good, refused

    if args.json:
        out = []
        for opt in REGISTRY.values():
            d = opt.describe()
            d["applies"] = {w: verdict(opt, w) or "yes" for w in workloads}
            d["applies_with"] = {w: other_choices(opt, w)[0] for w in workloads}
            d["refused_values"] = {w: other_choices(opt, w)[1] for w in workloads}
            d["after"] = must_follow(opt)
            out.append(d)
        print(json.dumps(out, indent=1))
        return EXIT_OK
    against = f", checked against {args.model} (fake tensors)" if model is not None else (
        "; --model MODEL also checks each against a model")
    print(f"optimizations on {device} (workloads: {', '.join(workloads)}){against}\n")
    for opt in REGISTRY.values():
        print(f"{opt.id}  —  {opt.name} [{opt.category}]")
        print(f"    {opt.summary}")
        for p in opt.params:
            rng = (f" one of {'/'.join(map(str, p.choices))}" if p.choices else
                   f" {p.minimum}..{p.maximum}" if p.minimum is not None else "")
            print(f"    {p.name} ({p.kind}{rng}, default {p.default}){': ' + p.help if p.help else ''}")
        for w in workloads:
            reason = verdict(opt, w)
            good, refused = other_choices(opt, w)
            if reason is None:
                print(f"    {w}: applies")
                for value in refused:
                    print(f"      but not {value}")
            elif good and not reason.startswith("applies to the "):
                print(f"    {w}: applies with {', '.join(good)} (not with the default: "
                      f"{reason})")
            else:
                print(f"    {w}: no — {reason}")
        if opt.conflicts:
            print(f"    conflicts with: {', '.join(opt.conflicts)}")
        if after := must_follow(opt):
            print(f"    order: after {' and '.join(after)} when chosen with them "
                  f"(--opt {after[0]} --opt {opt.id})")
        print()
    print("use: memlens profile --opt ID[:key=value,...] (repeatable)")
    return EXIT_OK


def _profile(args: argparse.Namespace, store) -> int:
    from .optimizations import parse_spec
    from .runner import Runner

    if args.distributed is not None:
        return _profile_distributed(args, store)
    if args.replicas != 1:
        _error("--replicas is HSDP across processes.", "Add --distributed N.")
        return EXIT_USAGE
    if args.master_dtype is not None:
        _error("--master-dtype is FSDP2's mixed precision across processes.",
               "Add --distributed N, or use --opt autocast for mixed precision on one device.")
        return EXIT_USAGE
    config = RunConfig(
        model=args.model, workload=args.workload, batch=args.batch, seq=args.seq,
        new_tokens=args.new_tokens, prompt=args.prompt, device=args.device, dtype=args.dtype,
        attention_impl=args.attention_impl, attention_maps=args.attention_maps,
        trust_remote_code=args.trust_remote_code, detailed=args.detailed, warmup=args.warmup,
        repeats=args.repeats, sample_hz=args.sample_hz, label=args.label, seed=args.seed,
        memory_snapshot=str(args.memory_snapshot) if args.memory_snapshot else "",
        optimizations=[parse_spec(spec) for spec in args.opt])
    printer = _ProgressPrinter(sys.stderr)
    runner = Runner(printer, store=None if args.no_save else store)
    runner.start(config)
    try:
        while not runner.wait(0.2):
            pass
    except KeyboardInterrupt:
        print("\nmemlens: cancelling…", file=sys.stderr)
        runner.cancel()
        runner.wait(10)
    if printer.failed is not None:
        f = printer.failed
        _error(f.message, f.hint)
        return EXIT_CANCELLED if f.kind == "cancelled" else EXIT_FAILED
    result = printer.result
    if result is None:
        _error("The run ended without a result.", "See the messages above.")
        return EXIT_FAILED
    if args.out is not None:
        write_output(args.out, json.dumps(result.to_dict(), indent=1), "--out")
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=1)
        print()
    else:
        print_report(result, sys.stdout)
        if args.out is not None:
            _written(args.out)
    if not args.no_save and not _saved_or_said(store, result.run_id, "saved", args.json):
        return EXIT_FAILED
    return EXIT_OK


def _estimate(args: argparse.Namespace, store) -> int:
    from .estimate import estimate
    from .optimizations import parse_spec

    config = RunConfig(
        model=args.model, workload=args.workload, batch=args.batch, seq=args.seq,
        new_tokens=args.new_tokens, dtype=args.dtype, attention_impl=args.attention_impl,
        trust_remote_code=args.trust_remote_code, label=args.label,
        optimizations=[parse_spec(spec) for spec in args.opt])
    printer = _ProgressPrinter(sys.stderr)
    try:
        result = estimate(config, printer, store=store if args.save else None,
                          tensor_parallel=args.tensor_parallel)
    except KeyboardInterrupt:
        print("\nmemlens: estimate cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    if result is None:
        f = printer.failed
        if f is None:
            _error("The estimate ended without a result.", "See the messages above.")
            return EXIT_FAILED
        _error(f.message, f.hint)
        return EXIT_CANCELLED if f.kind == "cancelled" else EXIT_FAILED
    if args.out is not None:
        write_output(args.out, json.dumps(result.to_dict(), indent=1), "--out")
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=1)
        print()
    else:
        print_report(result, sys.stdout)
        if args.out is not None:
            _written(args.out)
    if args.save and not _saved_or_said(store, result.run_id, "saved (as an estimate)",
                                        args.json):
        return EXIT_FAILED
    return EXIT_OK


# -- sweep and fit (issue 6: sweeps and what fits) -----------------------------------------------
def _profile_distributed(args: argparse.Namespace, store) -> int:
    """``memlens profile --workload train --distributed N``: engine.distributed_run under
    PyTorch's launcher; the record (every rank) is written to --out or the store's folder."""
    from .distributed_run import format_run, launch

    if args.workload != "train":
        _error("--distributed measures FSDP2 training.", "Add --workload train.")
        return EXIT_USAGE
    if args.distributed < 1:
        _error(f"--distributed needs at least 1 process (got {args.distributed}).",
               "Use --distributed 2 (or the number of GPUs).")
        return EXIT_FAILED
    # Each rank runs its own training step with its own settings: these flags of a one-device
    # run had no effect there, and were dropped without a word.
    unsupported = [flag for flag, on in (
        ("--attention-maps", args.attention_maps), ("--memory-snapshot", args.memory_snapshot),
        ("--no-save", args.no_save), ("--detailed", args.detailed),
        ("--prompt", args.prompt is not None), ("--repeats", args.repeats != 3),
        ("--warmup", args.warmup != 1), ("--sample-hz", args.sample_hz != 20.0)) if on]
    if unsupported:
        _error(f"{', '.join(unsupported)} cannot be combined with --distributed yet: each rank "
               "measures one training step of --seq tokens, with no timing passes or "
               "sampler, and the record is always written.",
               "Leave them out, or measure them on one device without --distributed.")
        return EXIT_USAGE
    from .distributed import _check_optimizations
    from .optimizations import parse_spec

    config = RunConfig(model=args.model, workload="train", batch=args.batch, seq=args.seq,
                       device=args.device, dtype=args.dtype, seed=args.seed, label=args.label,
                       attention_impl=args.attention_impl,
                       trust_remote_code=args.trust_remote_code,
                       optimizations=[parse_spec(spec) for spec in args.opt])
    _check_optimizations(config)  # refused here, before any process starts
    from .store import distributed_folder

    out = args.out if args.out is not None else distributed_folder(store.root)
    master = None if args.master_dtype in (None, "auto") else args.master_dtype
    run, path, _ = launch(config, args.distributed, out=out, master_dtype=master,
                          replicas=args.replicas)
    if args.json:
        json.dump(run.to_dict(), sys.stdout, indent=1)
        print()
    else:
        print(format_run(run))
        print(f"saved: {path}")
    return EXIT_OK


def _add_sweep_parsers(sub) -> None:
    """``memlens sweep``, ``memlens fit`` and ``memlens plan`` (``engine.distributed``)."""
    from .sweep import BUDGET_FORMS

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="demo",
                       help="preset:NAME | PATH (config.json or a folder with one) | demo | "
                        "demo-encoder")
        p.add_argument("--workload", choices=WORKLOADS, default="forward")
        p.add_argument("--new-tokens", type=int, default=32, action=_Given,
                       help="generate: tokens after the prompt (each is one more pass; "
                            "default: %(default)s)")
        p.add_argument("--dtype", type=_dtype, default="auto",
                       help=f"{' | '.join(DTYPES)} (or fp32, bf16, fp16)")
        p.add_argument("--attention", choices=ATTENTION_IMPLS, default="auto",
                       dest="attention_impl", help="attention implementation")
        p.add_argument("--opt", action="append", default=[], metavar="ID[:key=value,...]",
                       help="an optimization of the one optimization set (repeatable)")
        p.add_argument("--opt-set", action="append", default=[], metavar="SET",
                       help="an optimization set to compare (repeatable): 'none', or IDs "
                            "joined by '+', e.g. checkpointing+freeze-base:train_last_blocks=2")
        p.add_argument("--trust-remote-code", action="store_true",
                       help="allow a config's own Python code to run (only for sources you trust)")
        p.add_argument("--save", action="store_true",
                       help="add each point's run or estimate to the run store (ids in the JSON)")
        p.add_argument("--out", type=_path_arg, default=None, help="also write the JSON here")
        p.add_argument("--json", action="store_true", help="print the JSON instead of the table")

    sw = sub.add_parser(
        "sweep", help="peak memory (and latency where measured) over sequence length × batch",
        description="Every point is estimated first (fake tensors); it is then measured when its "
                    "estimated peak is at most the fraction of the device's available memory "
                    "that the loader's too-large check allows the weights alone (--measure-below "
                    "sets another limit). Each point is marked measured or estimate; estimated "
                    "points have no latency.")
    common(sw)
    sw.add_argument("--seq", default="128,256,512",
                    help="sequence lengths, comma-separated (for generate: prompt lengths)")
    sw.add_argument("--batch", default="1", help="batch sizes, comma-separated")
    sw.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (measured points)")
    sw.add_argument("--repeats", type=int, default=3, help="timing passes per measured point")
    sw.add_argument("--threads", type=int, default=None, metavar="N",
                    help="torch's CPU threads for the work (default: torch's, every core); "
                         "--threads 1 steadies timings on a machine busy with other work")
    sw.add_argument("--estimate-only", action="store_true", help="estimate every point")
    sw.add_argument("--measure-below", default=None, metavar="SIZE",
                    help="measure points whose estimated peak is at most SIZE (e.g. 2GiB) "
                         "instead of the rule above")

    f = sub.add_parser(
        "fit", help="the longest sequence (or largest batch) that fits a memory budget, and "
                    "what binds it",
        description="Searches over estimates (fake tensors, no weights) for the largest "
                    "sequence length (the prompt, for generate) whose estimated peak is within "
                    "the budget, per batch and optimization set, and names the binding "
                    "category; with --at-seq, for the largest batch at those lengths instead. "
                    "The answer is the largest tested value that fits, with the next tested one "
                    "that does not.")
    common(f)
    f.add_argument("--budget", default=None,
                   help=f"memory budget: {BUDGET_FORMS}; default: the detected GPU's total "
                        "memory, else the available RAM")
    f.add_argument("--batch", default="1", help="batch sizes, comma-separated (one answer each)")
    f.add_argument("--granularity", type=int, default=None,
                   help="search step in tokens (default: a power of two near the limit / 128)")
    f.add_argument("--at-seq", default=None, metavar="SEQS",
                   help="search the largest batch instead, at these sequence lengths "
                        "(comma-separated; for generate: prompt lengths)")
    f.add_argument("--max-batch", type=int, default=None,
                   help="upper end of the batch search (default 65536)")

    from .distributed import add_cli_parser

    add_cli_parser(sub, common)


def _opts_contradict(args: argparse.Namespace) -> bool:
    """--opt beside --opt-set: said so (the caller exits with EXIT_USAGE, as for any options
    that contradict each other)."""
    if args.opt and args.opt_set:
        _error("--opt and --opt-set cannot be combined.",
               "Give one set with --opt ID (repeatable), or several with --opt-set A+B "
               "--opt-set none.")
        return True
    return False


def _opt_sets(args: argparse.Namespace) -> list[list[dict]]:
    from .optimizations import parse_spec
    from .sweep import parse_opt_set

    if args.opt_set:
        from .sweep import opt_set_label

        sets = [parse_opt_set(s) for s in args.opt_set]
        labels = [opt_set_label(s) for s in sets]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:  # (each row twice, measured twice)
            raise MemLensError(ErrorKind.INVALID_WORKLOAD,
                               f"--opt-set {', '.join(twice)} is given more than once.",
                               "Give each optimization set once.")
        return sets
    return [[parse_spec(spec) for spec in args.opt]]


class _PointPrinter(_ProgressPrinter):
    """The progress printer, plus one line per finished sweep point or fit answer."""

    def __call__(self, event: Event) -> None:
        from .sweep import FitDone, PointDone

        if isinstance(event, PointDone):
            p = event.point
            if self.tty:
                self.stream.write("\r\033[K")
            self.stream.write(
                f"[{time.perf_counter() - self.t0:6.1f}s] point {event.index + 1}/{event.total}: "
                f"seq {p.seq}, batch {p.batch}, {p.opt_set}: {p.kind} "
                f"{human_bytes(p.peak_bytes)}{' — ' + p.error if p.error else ''}\n")
            self.stream.flush()
            self.stage = ""
        elif isinstance(event, FitDone):
            a = event.answer
            if self.tty:
                self.stream.write("\r\033[K")
            where = f"seq {a.seq}" if a.axis == "batch" else f"batch {a.batch}"
            self.stream.write(f"[{time.perf_counter() - self.t0:6.1f}s] {a.opt_set}, {where}: "
                              f"{a.estimates} estimates\n")
            self.stream.flush()
            self.stage = ""
        else:
            super().__call__(event)


def _write_json(data: dict, args: argparse.Namespace) -> None:
    if args.out is not None:
        write_output(args.out, json.dumps(data, indent=1), "--out")
    if args.json:
        json.dump(data, sys.stdout, indent=1)
        print()


def _failed_exit(printer: _ProgressPrinter, what: str) -> int:
    f = printer.failed
    if f is None:
        _error(f"The {what} ended without a result.", "See the messages above.")
        return EXIT_FAILED
    _error(f.message, f.hint)
    return EXIT_CANCELLED if f.kind == "cancelled" else EXIT_FAILED


def _finish(args: argparse.Namespace, printer: Any, what: str, show: Any, work: Any) -> int:
    """Run a sweep or a fit (``work``), then write its record (JSON) or print it (``show``)."""
    try:
        record = work()
    except KeyboardInterrupt:
        print(f"\nmemlens: {what} cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    if record is None:
        return _failed_exit(printer, what)
    _write_json(record.to_dict(), args)
    if not args.json:
        show(record, sys.stdout)
        if args.out is not None:
            _written(args.out)
    # Nothing answered (every point failed, every search errored): written and shown, but a
    # script must not read exit 0 as an answer (a BERT generate "fit" printed a row of dashes
    # and exited 0, where estimate and plan refuse the same input with 1).
    points = getattr(record, "points", None)
    answers = getattr(record, "answers", None)
    if (points is not None and points and all(p.kind == "failed" for p in points)) or (
            answers is not None and answers and all(a.status == "failed" for a in answers)):
        print(f"memlens: error: the {what} answered nothing: "
              + ("every point failed" if points else "every search failed")
              + " (the reasons are above).", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _sweep(args: argparse.Namespace, store) -> int:
    from .sweep import SIZE_FORMS, parse_bytes, parse_int_list, sweep

    seqs = parse_int_list(args.seq, "--seq", "--seq")
    batches = parse_int_list(args.batch, "--batch", "--batch", "1,2,4")
    if _opts_contradict(args):
        return EXIT_USAGE
    sets = _opt_sets(args)
    if args.estimate_only and args.measure_below is not None:  # (it was ignored)
        _error("--estimate-only and --measure-below contradict each other.",
               "Give --estimate-only to estimate every point, or --measure-below SIZE to "
               "measure the points below SIZE.")
        return EXIT_USAGE
    limit = 0 if args.estimate_only else (
        parse_bytes(args.measure_below, "a size for --measure-below: " + SIZE_FORMS)
        if args.measure_below is not None else None)
    config = RunConfig(model=args.model, workload=args.workload, new_tokens=args.new_tokens,
                       dtype=args.dtype, attention_impl=args.attention_impl, device=args.device,
                       repeats=args.repeats, trust_remote_code=args.trust_remote_code)
    printer = _PointPrinter(sys.stderr)
    return _finish(args, printer, "sweep", print_sweep, lambda: sweep(
        config, seqs, batches, sets, printer, store=store if args.save else None,
        measure_limit_bytes=limit))


def print_sweep(record, out: TextIO) -> None:
    """The sweep table: one row per point, its kind (measured or estimate) in every row."""
    from .sweep import CATEGORY_LABELS

    w = out.write
    kinds = {p.kind for p in record.points}
    n_est = sum(p.kind == "estimate" for p in record.points)
    w(f"sweep: {record.model} · {record.workload}"
      f"{f' ({record.new_tokens} new tokens)' if record.workload == 'generate' else ''} · "
      f"dtype {record.dtype} · attention {record.attention_impl} · device {record.device}\n")
    w(f"{len(record.points)} point{'s' if len(record.points) != 1 else ''}: {sum(p.kind == 'measured' for p in record.points)} measured, "
      f"{n_est} ESTIMATED (fake tensors: no weights, no real memory, no latency)"
      + (f", {sum(p.kind == 'failed' for p in record.points)} failed" if "failed" in kinds else "")
      + "\n")
    # (with every point estimated there is no limit to give: "limit 0 B of 22.9 GiB")
    w(f"rule: {record.measure_rule}"
      + (f": limit {human_bytes(record.measure_limit_bytes)} of "
         f"{human_bytes(record.available_bytes)} available" if record.measure_limit_bytes
         else "") + "\n\n")
    train = record.workload == "train"
    sets = len(record.opt_sets) > 1 or record.opt_sets[0]["label"] != "none"
    phased = train and any(p.peak_phase for p in record.points)
    cols = (["opt set"] if sets else []) + [
        "seq", "batch", "kind", "peak", "weights", "activations",
        "grads+optim" if train else "KV cache", "other", "largest part"] + (
        ["peak in"] if phased else []) + ["latency ms", "est. peak", "est/meas"]
    rows = []
    for p in record.points:
        c = p.categories
        third = ((c.get("gradients", 0) + c.get("optimizer_state", 0)) if train
                 else c.get("kv_cache"))
        # the rest of the peak (temporaries, the unattributed bytes), so the parts add up
        other = (p.peak_bytes - (c.get("weights") or 0) - (c.get("activations") or 0)
                 - (third or 0)) if c and p.peak_bytes is not None else None
        ratio = (f"{p.estimated_peak_bytes / p.peak_bytes:.4f}"
                 if p.kind == "measured" and p.estimated_peak_bytes and p.peak_bytes else "")
        rows.append(([p.opt_set] if sets else []) + [
            str(p.seq), str(p.batch), p.kind, _cell(p.peak_bytes),
            _cell(c.get("weights")) if c else MISSING,
            _cell(c.get("activations")) if c else MISSING,
            _cell(third) if c else MISSING, _cell(other),
            CATEGORY_LABELS.get(p.binding, p.binding) if p.binding else MISSING] + (
            [p.peak_phase or MISSING] if phased else []) + [
            f"{p.latency_ms:.2f}" if p.latency_ms is not None else MISSING,
            _cell(p.estimated_peak_bytes) if p.kind == "measured" else "", ratio])
    widths = [max(len(r[i]) for r in rows + [cols]) for i in range(len(cols))]
    left = 1 if sets else 0
    def fmt(r: list[str]) -> str:
        return "  ".join(v.ljust(widths[i]) if i < left or cols[i] in ("kind", "largest part")
                         else v.rjust(widths[i]) for i, v in enumerate(r))

    line = fmt(cols)
    w(line.rstrip() + "\n" + "-" * len(line) + "\n")
    for r in rows:
        w(fmt(r).rstrip() + "\n")
    w("\npeak and parts at the peak (other: temporaries"
      + (", KV cache" if train else "") + " and the unattributed rest, so the parts add up to "
      "the peak); largest part: of the peak (what binds a fit is what grows past the budget: "
      "memlens fit); "
      + ("peak in: the training step's phase holding it; " if phased else "")
      + "latency: median plain pass (measured points only); est. peak: the estimate made to "
      "decide, beside a measured point\n")
    if phased and all(p.peak_phase == "optimizer" for p in record.points if p.peak_phase):
        w("every point peaks in the optimizer step, where the optimizer's state is made after "
          "the activations are freed: the length, and techniques that save activations (such "
          "as checkpointing), do not move these peaks; `memlens show RUN` gives each phase's "
          "peak\n")
    for p in record.points:
        if p.error:
            w(f"failed: seq {p.seq}, batch {p.batch}, {p.opt_set}: {p.error}\n")
        elif p.kind == "estimate" and "measurement failed" in p.reason:
            w(f"note: seq {p.seq}, batch {p.batch}, {p.opt_set}: {p.reason}\n")
    if any(p.saved for p in record.points):
        w("saved: " + ", ".join(p.run_id for p in record.points if p.saved and p.run_id) + "\n")
    for warning in record.warnings:
        w(f"warning: {warning}\n")


def _fit(args: argparse.Namespace, store) -> int:
    from .sweep import DEFAULT_MAX_BATCH, parse_int_list, resolve_budget, what_fits

    if args.budget is not None and not args.budget.strip():
        # (an empty --budget fell back to the default budget without a word)
        _error("--budget is empty.", "Give a size (e.g. 24GiB), 'gpu' or 'ram', or leave "
               "--budget out for the detected GPU (else the available RAM).")
        return EXIT_FAILED  # (a refused value, as --budget 0 is)
    budget = resolve_budget(args.budget)
    batches = parse_int_list(args.batch, "--batch", "--batch", "1,2,4")
    if _opts_contradict(args):
        return EXIT_USAGE
    sets = _opt_sets(args)
    if args.granularity is not None and args.granularity < 1:
        _error(f"The granularity must be at least 1 token (got {args.granularity}).",
               "Use --granularity 1 or more, or leave it out.")
        return EXIT_FAILED
    if args.max_batch is not None and args.max_batch < 1:
        _error(f"The largest batch must be at least 1 (got {args.max_batch}).",
               "Use --max-batch 1 or more, or leave it out.")
        return EXIT_FAILED
    if args.at_seq is not None and args.batch != "1":
        _error("--batch and --at-seq cannot be combined: --at-seq searches the batch.",
               "Give --batch to find the longest sequence per batch, or --at-seq to find the "
               "largest batch per sequence length.")
        return EXIT_USAGE
    # options of the other search, silently ignored before
    other = ([("--granularity", args.granularity)] if args.at_seq is not None else
             [("--max-batch", args.max_batch)])
    given = [flag for flag, value in other if value is not None]
    if given:
        _error(f"{given[0]} is for the "
               + ("sequence-length search, and --at-seq searches the batch."
                  if args.at_seq is not None else "batch search (--at-seq)."),
               f"Leave {given[0]} out" + (", or drop --at-seq to search the sequence length."
                                           if args.at_seq is not None else
                                           ", or add --at-seq SEQS to search the batch."))
        return EXIT_USAGE
    axis = "batch" if args.at_seq is not None else "seq"
    seqs = (parse_int_list(args.at_seq, "--at-seq", "--at-seq") if args.at_seq is not None
            else None)
    config = RunConfig(model=args.model, workload=args.workload, new_tokens=args.new_tokens,
                       dtype=args.dtype, attention_impl=args.attention_impl,
                       trust_remote_code=args.trust_remote_code)
    printer = _PointPrinter(sys.stderr)
    return _finish(args, printer, "fit", print_fit, lambda: what_fits(
        config, budget, batches, sets, printer, store=store if args.save else None,
        granularity=args.granularity, axis=axis, seqs=seqs,
        max_batch=args.max_batch or DEFAULT_MAX_BATCH))


def print_fit(record, out: TextIO) -> None:
    """The fit answers: per set, the longest length per batch (or, by batch, the largest batch
    per length), the next tested value that does not fit, and the binding category."""
    from .sweep import CATEGORY_LABELS

    w = out.write
    gen = record.workload == "generate"
    by_batch = record.axis == "batch"
    if by_batch:
        w(f"ESTIMATE — the largest batch that fits in {record.budget_description}\n")
    else:
        w(f"ESTIMATE — what fits in {record.budget_description}\n")
    w(f"{record.model} · {record.workload}"
      f"{f' ({record.new_tokens} new tokens after the prompt)' if gen else ''} · dtype "
      f"{record.dtype}"
      + (f" ({record.weights_dtype})" if record.weights_dtype and record.dtype == "auto" else "")
      + f" · attention {record.attention_impl} · ")
    if by_batch:
        w(f"batch searched up to {record.max_batch}\n\n")
        fixed, found = ("prompt" if gen else "seq"), "largest batch"
    else:
        w(f"max positions {record.max_positions} → {'prompt' if gen else 'sequence'} ≤ "
          f"{record.seq_limit}; search step {record.granularity} "
          f"token{'s' if record.granularity != 1 else ''}\n\n")
        fixed, found = "batch", ("longest prompt" if gen else "longest seq")
    cols = ["opt set", fixed, found, "est. peak", "next tested", "its peak", "binding",
            "largest part", "estimates", "s"]
    rows = []
    for a in record.answers:
        at, best, nxt = ((a.seq, a.batch, a.next_batch) if by_batch
                         else (a.batch, a.seq, a.next_seq))
        end = " (search end)" if by_batch else " (limit)"
        value = MISSING if best is None else f"{best}{end if a.status == 'limit' else ''}"
        rows.append([a.opt_set, str(at), value, bytes_against(a.peak_bytes, record.budget_bytes),
                     str(nxt) if nxt is not None else MISSING,
                     bytes_against(a.next_peak_bytes, record.budget_bytes),
                     CATEGORY_LABELS.get(a.binding, a.binding) if a.binding else MISSING,
                     CATEGORY_LABELS.get(a.largest, a.largest) if a.largest else MISSING,
                     str(a.estimates), f"{a.seconds:.1f}"])
    widths = [max(len(r[i]) for r in rows + [cols]) for i in range(len(cols))]

    def fmt(r: list[str]) -> str:
        return "  ".join(v.ljust(widths[i]) if i in (0, 6, 7) else v.rjust(widths[i])
                         for i, v in enumerate(r))

    line = fmt(cols)
    w(line.rstrip() + "\n" + "-" * len(line) + "\n")
    for r in rows:
        w(fmt(r).rstrip() + "\n")
    w("\n")
    for a in record.answers:
        w(f"{a.opt_set}, {f'seq {a.seq}' if by_batch else f'batch {a.batch}'}: {a.message}\n")
        if a.categories:
            w(f"  at the {'largest fitting batch' if by_batch else 'longest fitting length'}: "
              + " · ".join(f"{CATEGORY_LABELS[c]} {human_bytes(v)}"
                           for c, v in a.categories.items() if v) + "\n")
        if a.run_ids:
            w(f"  saved estimates: {', '.join(a.run_ids.values())}\n")
    w(f"\nsearch: {record.search}.\n")
    for note in record.notes:
        w(f"note: {note}\n")
    w(f"made in {record.duration_s:.1f} s\n")


def _move_runs(store, command: str, run_ids: list[str]) -> int:
    """``delete`` (to the trash) or ``restore`` each run; every id is tried, failures named."""
    failed = moved = 0
    for run_id in dict.fromkeys(run_ids):  # (an id given twice is moved once)
        try:
            path = store.trash(run_id) if command == "delete" else store.restore(run_id)
        except MemLensError as exc:
            _error(exc.message, exc.hint)
            failed += 1
            continue
        moved += 1
        print(f"{run_id}: moved to {path.parent}")
    if command == "delete" and moved:  # (counted moves: "nope nope" moved nothing)
        print("`memlens restore RUN_ID` brings a run back; `memlens runs --trash` lists them.")
    return EXIT_FAILED if failed else EXIT_OK


def _empty_trash(store, run_ids: list[str]) -> int:
    """``delete --empty-trash``: every run in the trash removed for good, failures named."""
    if run_ids:
        _error("--empty-trash takes no run ids: it empties the whole trash.",
               "Run `memlens delete --empty-trash` alone, or `memlens delete RUN_ID ...` to "
               "move runs to the trash.")
        return EXIT_USAGE
    if store.usage(trash=True) == (0, 0):
        print(f"the trash is empty ({store.trash_root})")
        return EXIT_OK
    removed, freed, errors = store.empty_trash()
    for exc in errors:
        _error(exc.message, exc.hint)
    print(f"removed {len(removed)} run(s) from {store.trash_root} for good: "
          f"{human_bytes(freed)} freed")
    return EXIT_FAILED if errors else EXIT_OK


def _usage_line(store, trash: bool) -> str:
    runs, size = store.usage(trash=trash)
    other_runs, other_size = store.usage(trash=not trash)
    here = f"{human_bytes(size)} on disk (runs and attention maps)"
    if trash:
        return (f"{here}; `memlens delete --empty-trash` frees it. Saved runs: {other_runs}, "
                f"{human_bytes(other_size)}.")
    return here + (f"; the trash holds {other_runs} run(s), {human_bytes(other_size)} "
                   "(`memlens runs --trash`)" if other_runs else "") + "."


def _runs(store, as_json: bool, trash: bool = False, words: list[str] | None = None) -> int:
    """The saved runs (or, with ``trash``, the trashed ones: `memlens restore` them); with
    ``words``, only those whose row holds every word (as the window's filter box keeps)."""
    from .store import summary_matches

    every = store.trashed_runs() if trash else store.list()
    runs = [s for s in every if summary_matches(s, words)] if words else every
    folder = store.trash_root if trash else store.root
    kinds = {s.run_id: s.kind for s in runs}
    if as_json:
        # (a figure not recorded is null in JSON, not the table's "—"). Latencies are named as
        # in the run file's totals: latency_ms there is the pass with live hooks, which the
        # table's "latency" (the plain pass) is not; a script reading both got two meanings.
        def entry(s) -> dict:
            out = {k: v for k, v in s.__dict__.items()
                   if k not in ("latency_ms", "plain_latency_ms", "hooked_latency_ms")}
            return {**out, "path": str(s.path),
                    "quality": None if s.quality == MISSING else s.quality,
                    "plain_latency_ms": s.plain_latency_ms, "latency_ms": s.hooked_latency_ms}

        print(json.dumps([entry(s) for s in runs], indent=1))
        return EXIT_OK
    damaged = [] if trash else store.damaged()
    if damaged:
        shown = ", ".join(damaged[:5]) + (f" and {len(damaged) - 5} more" if len(damaged) > 5
                                          else "")
        print(f"memlens: warning: skipped {len(damaged)} file(s) in {store.root} that are not "
              f"readable runs: {shown}.\n  hint: `memlens show FILE` says what is wrong with "
              "one; other runs are unaffected.", file=sys.stderr)
    if not every:
        print(f"no runs in the trash ({folder})" if trash else f"no saved runs in {folder}")
        held, size = store.usage(trash=True)
        if not trash and held:
            print(f"the trash holds {held} run(s), {human_bytes(size)} (`memlens runs --trash`; "
                  "`memlens restore RUN_ID` brings one back)")
        if not trash:
            _distributed_line(store)
        return EXIT_OK
    wanted = " ".join(words or [])
    if not runs:
        print(f"no run of the {len(every)} in {folder} holds every word of {wanted!r} "
              "(any case; id, label, model, workload, input, optimizations, device, dtype, "
              "date); `memlens runs` lists them all")
        return EXIT_OK
    n_est = sum(k == "estimate" for k in kinds.values())
    count = f"{len(runs)} of {len(every)} run(s) match {wanted!r}" if words else \
        f"{len(runs)} run(s)"
    print(f"{count} in {folder}"
          + (" (`memlens restore RUN_ID` brings one back)" if trash else "")
          + (f" ({n_est} estimate(s): no weights, no real memory)" if n_est else ""))
    width = max([52] + [len(s.run_id) for s in runs])
    size = max([5] + [len(s.input) for s in runs])
    opts = max([13] + [len(s.optimizations) for s in runs])
    print(f"{'run id':<{width}} {'kind':<8} {'workload':<9} {'input':<{size}} {'peak':>11} "
          f"{'latency':>10}  {'optimizations':<{opts}}  model")
    for s in runs:
        lat = f"{s.latency_ms:.1f} ms" if s.latency_ms is not None else MISSING
        label = f"  · {s.label}" if s.label else ""
        print(f"{s.run_id:<{width}} {kinds[s.run_id]:<8} {s.workload:<9} "
              f"{s.input or MISSING:<{size}} {human_bytes(s.peak_bytes):>11} {lat:>10}  "
              f"{s.optimizations or 'none':<{opts}}  {s.model}{label}")
    print(_usage_line(store, trash))
    if not trash:
        _distributed_line(store)
    return EXIT_OK


def _distributed_line(store) -> None:
    """Measured distributed runs are written beside the store, not in it (one record holds
    every rank): `memlens runs` said nothing of them, so a run made with `profile
    --distributed` seemed lost."""
    from .store import distributed_folder

    # (and where `torchrun -m engine.distributed_run` wrote them before: inside the store)
    for folder in (distributed_folder(store.root), Path(store.root) / "distributed"):
        try:
            files = sorted((p for p in folder.glob("*.json") if not p.name.startswith(".")),
                           key=lambda p: p.stat().st_mtime)
        except OSError:
            continue
        if files:
            print(f"{len(files)} measured distributed run(s) in {folder}, newest "
                  f"{files[-1].name} (`memlens show FILE` prints one; the app opens it with "
                  "File → Open run file…)")


def _state_dtypes(training: dict) -> str:
    """`` (in bfloat16, as the parameters: pure bfloat16 training)``: which dtype the moments
    are kept in is half the answer to how big they are (mixed precision keeps them in
    float32, twice the size: memlens plan --master-dtype float32 plans that)."""
    dtypes = training.get("optimizer_state_dtypes") or {}
    if not dtypes:
        return ""
    names = sorted(dtypes, key=lambda d: -dtypes[d])
    text = f" (in {', '.join(names)}"
    if names == ["bfloat16"] or names == ["float16"]:
        text += (", as the parameters: pure 16-bit training; mixed precision keeps the "
                 "state in float32, twice this, beside float32 master weights")
    return text + ")"



def _cell(value, fmt=human_bytes) -> str:
    return fmt(value) if value is not None else MISSING


def _dtype_text(info: dict) -> str:
    """The weights' dtype as measured, and as loaded where an optimization changed it."""
    dtype, loaded = info.get("dtype", "?"), info.get("loaded_dtype")
    return f"{dtype} (loaded in {loaded})" if loaded and loaded != dtype else str(dtype)


def print_report(result: RunResult, out: TextIO) -> None:
    """The per-layer table, totals and the reconciliation line."""
    cfg, t, info = result.config, result.totals, result.model_info
    w = out.write
    est = result.estimate
    if est is not None:
        tp = est.get("tensor_parallel") or 1
        w("ESTIMATE — no weights, no real memory: the model ran on fake tensors (shapes only); "
          "figures are what a CPU run would count, latency is not estimated"
          + (f"; rank 0 of {tp} ranks of tensor parallelism (every figure is one rank's)"
             if tp > 1 else "") + "\n")
    w(f"{info.get('name', cfg.model)} · {info.get('architecture', '?')} · "
      f"{si_number(info.get('parameters'))} parameters · {_dtype_text(info)} · "
      f"{info.get('device', cfg.device)} · attention {info.get('attn_implementation', '?')}"
      f"{' · random weights' if info.get('random_weights') else ''}"
      f"{' · estimate' if est is not None else ''}\n")
    shape = result.inputs.get("shape") if result.inputs else None
    w(f"workload {cfg.workload}: batch {cfg.batch}, "
      f"{'prompt' if cfg.workload == 'generate' else 'seq'} "
      f"{shape[1] if shape else cfg.seq} ({result.inputs.get('source', '?')})"
      f"{f', {cfg.new_tokens} new tokens' if cfg.workload == 'generate' else ''}\n\n")
    training = cfg.workload == "train"
    # A training step's gradients and optimizer state get columns (in "at peak" alone, an MLP
    # row's optimizer state could not be told from its weights).
    # A column no layer has a value in is left out, as the window's table hides it: a forward
    # pass has no KV cache (a "—" on every row), an estimate no latency.
    kv = any(layer.kv_cache_bytes is not None for layer in result.layers)
    timed = any(layer.latency_ms is not None for layer in result.layers)
    middle = ["saved bwd", "grads", "optim"] if training else ["KV at end"] if kv else []
    cols = ["layer", "kind", "weights", "output", *middle, "transient", "at peak", "ms", "FLOPs"]
    rows = []
    for layer in result.layers:
        name = ("  " * layer.depth) + (layer.name.rsplit(".", 1)[-1] if layer.depth else layer.name)
        flops = si_number(layer.flops) if layer.flops is not None else MISSING
        if layer.flops_complete is False:
            flops += "*"
        own = ([_cell(layer.saved_for_backward_bytes), _cell(layer.gradient_bytes),
                _cell(layer.optimizer_state_bytes)] if training
               else [_cell(layer.kv_cache_bytes)] if kv else [])
        rows.append([
            name, layer.kind, human_bytes(layer.weights_bytes), _cell(layer.activation_bytes),
            *own, _cell(layer.transient_peak_bytes), human_bytes(layer.at_peak_bytes),
            f"{layer.latency_ms:.3f}" if layer.latency_ms is not None else MISSING, flops])
    blank = [""] * len(middle)
    rows.append(["unattributed", "", "", "", *blank, "", human_bytes(t.unattributed_bytes), "",
                 ""])
    rows.append(["total at peak", "", human_bytes(t.model_weights_bytes), "", *blank, "",
                 human_bytes(t.peak_bytes),
                 f"{t.latency_ms:.3f}" if t.latency_ms is not None else MISSING,
                 (si_number(t.flops) + ("*" if t.flops_uncounted_ops else ""))
                 if t.flops is not None else MISSING])
    if not timed:
        at = cols.index("ms")
        cols.pop(at)
        for r in rows:
            r.pop(at)
    widths = [max(len(str(r[i])) for r in rows + [cols]) for i in range(len(cols))]
    line = "  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(cols))
    w(line + "\n" + "-" * len(line) + "\n")
    for r in rows:
        if r[0] == "unattributed":
            w("-" * len(line) + "\n")
        w("  ".join(str(c).ljust(widths[i]) if i < 2 else str(c).rjust(widths[i])
                    for i, c in enumerate(r)) + "\n")
    timed = "ms and FLOPs" if est is None else "FLOPs"  # (an estimate has no ms column)
    if result.training:
        w(f"({timed}: each layer's forward; the total row's: the whole step, forward + "
          "backward + optimizer)\n")
    if passes := layer_passes_text(result):
        w(f"({timed}: each layer over {passes}; output: its largest call's, the prefill's)\n")
    if t.latency_ms is not None and t.plain_latency_ms is not None:
        w(f"(the total row's ms is the pass timed with the layers' hooks, as each row is; "
          f"without them it took {t.plain_latency_ms:.3f} ms, the latency given below)\n")
    w("\n")
    from .aggregate import PEAK_SOURCES

    src = PEAK_SOURCES.get(t.peak_source, t.peak_source)
    ok = "reconciles" if t.reconciles() else "DOES NOT RECONCILE"
    w(f"{'estimated peak' if est is not None else 'peak'} {human_bytes(t.peak_bytes)} ({src}) "
      f"= attributed {human_bytes(t.attributed_bytes)} "
      f"+ unattributed {human_bytes(t.unattributed_bytes)}  [{ok}: {t.peak_bytes} = "
      f"{t.attributed_bytes} + {t.unattributed_bytes} B]\n")
    parts = [("weights", t.weights_bytes), ("activations", t.activation_bytes),
             ("KV cache", t.kv_cache_bytes), ("gradients", t.gradient_bytes),
             ("optimizer state", t.optimizer_state_bytes), ("temporaries", t.temporary_bytes)]
    w("  at peak: " + " · ".join(f"{n} {human_bytes(v)}" for n, v in parts if v) + "\n")
    if t.unattributed_detail:
        w("  unattributed: " + ", ".join(f"{k} {human_bytes(v)}"
                                         for k, v in t.unattributed_detail.items()) + "\n")
    from .modeltree import tied_notes

    for note in tied_notes(info.get("module_tree"), [x.name for x in result.layers]):
        w(f"  {note}\n")
    if t.latency_ms is not None:
        timing = result.timing or {}
        w(f"latency {t.plain_latency_ms:.2f} ms plain, {t.latency_ms:.2f} ms with live hooks on "
          f"{timing.get('live_modules', '?')} top-level layers (profiler overhead "
          f"{overhead(t.instrumentation_overhead)}, median of {cfg.repeats})")
        if timing.get("detailed_overhead"):
            w(f"; attention/MLP rows from a pass hooking all {timing['detailed_modules']} "
              f"modules ({overhead(timing['detailed_overhead'])})")
        if t.tokens_per_s:
            w(f" · {tokens_per_s_text(t.tokens_per_s, cfg.workload)}")
        w("\n")
        if t.compile_seconds is not None:
            w(f"torch.compile: {t.compile_seconds:.1f} s to compile (first call minus the steady "
              "state), not in the latency above; compiled peak "
              + (human_bytes(t.compiled_peak_bytes) + " (CUDA allocator)"
                 if t.compiled_peak_bytes is not None else "not measured on this device")
              + "\n")
        if timing.get("warmup_ms"):
            w(f"first (warm-up) pass {timing['warmup_ms'][0]:.1f} ms: one-time costs such as "
              "lazy initialisation or compilation\n")
    if est is not None:
        w(f"estimate made in {result.estimate_seconds:.2f} s "
          f"(build {est.get('build_seconds', 0):.2f} s, "
          + (f"warm-up step {est['warmup_seconds']:.2f} s, "
             if (est.get("warmup_seconds") or 0) >= 0.005 else "")  # (no "0.00 s" for none)
          + f"memory pass {est.get('pass_seconds', 0):.2f} s); weights "
          f"{human_bytes(t.steady_bytes)} from the config's shapes; not estimated: latency, "
          "load peak, process RSS\n")
    elif t.load_peak_bytes is not None or t.steady_bytes is not None:
        w(f"load: peak {human_bytes(t.load_peak_bytes)}, steady {human_bytes(t.steady_bytes)} "
          f"({t.load_source})\n")
    if t.process_rss_peak_bytes is not None:
        w(f"process RSS peak during the memory pass: {human_bytes(t.process_rss_peak_bytes)}\n")
    if t.cuda_reserved_peak_bytes is not None:
        w(f"CUDA reserved peak: {human_bytes(t.cuda_reserved_peak_bytes)}\n")
    g = result.generation
    if g:
        steps = g.get("decode_ms_per_step")
        # (timed in the hooked passes: beside the plain latency they need not add up to it)
        timing = (f"prefill {g['prefill_ms']:.2f} ms, decode {sum(steps or [0]):.2f} ms for "
                  f"{len(steps or [])} steps (with live hooks)" if g.get("prefill_ms") is not None
                  else f"{g.get('new_tokens', '?')} new tokens (not timed)")
        w(f"generation: {timing}; {kv_cache_text(g)}; tensor-accounting peak prefill "
          f"{human_bytes(g.get('prefill_peak_bytes'))}, decode "
          f"{human_bytes(g.get('decode_peak_bytes'))}\n")
        if g.get("text"):
            w(f"  generated: {g['text']!r}\n")
    tr = result.training
    if tr:
        loss = f"{tr['loss']:.4f}" if tr.get("loss") is not None else MISSING
        w(f"training step: loss {loss}{' (synthetic)' if tr.get('synthetic_loss') else ''}"
          f"; saved for backward {human_bytes(tr['saved_for_backward_bytes'])}, gradients "
          f"{human_bytes(tr['gradient_bytes'])}, optimizer state "
          f"{human_bytes(tr['optimizer_state_bytes'])}{_state_dtypes(tr)}; "
          "tensor-accounting peaks forward "
          f"{human_bytes(tr.get('forward_peak_bytes'))}, backward "
          f"{human_bytes(tr.get('backward_peak_bytes'))}, optimizer "
          f"{human_bytes(tr.get('optimizer_peak_bytes'))}\n")
    for applied in result.optimizations:
        # (as --opt takes it and `runs` and `compare` list it: lora:rank=8,alpha=16)
        w(f"applied {applied['name']} ({optimizations_text([applied])}"
          f"): {applied['modules_touched']} module(s), weights "
          f"{human_bytes(applied['weights_bytes_before'])} → "
          f"{human_bytes(applied['weights_bytes_after'])} in {applied['seconds'] * 1e3:.0f} ms\n")
        for note in applied.get("notes", []):
            w(f"  {note}\n")
    if result.deltas and result.baseline:
        w(f"vs the unoptimized baseline measured in this run: "
          f"{', '.join(against_baseline(result))}\n")
    q = result.quality
    parts = quality_parts(q)
    if parts:
        w(f"quality on {q.get('text', '?')}"
          + (f" ({q['tokens']} tokens)" if q.get("tokens") else "") + f": {'; '.join(parts)}\n")
        if q.get("through_cache"):
            w(f"  (scored as {q['through_cache']})\n")
    a = result.attention
    if a and a.get("captured"):
        c = a["cost"]
        w(f"attention maps: {a['layers']} layers × {a['heads']} heads, {a['tokens']} tokens"
          f"{' (stored downsampled to ' + str(a['stored_side']) + ')' if a.get('downsampled_from') else ''}"
          f"; {c['note']}: {c['forward_ms']:.1f} ms vs {c['plain_forward_ms']:.1f} ms, peak "
          f"{human_bytes(c['peak_bytes'])} vs {human_bytes(c['plain_peak_bytes'])}\n")
    for warning in result.warnings:
        w(f"warning: {warning}\n")
    if est is not None:
        for limitation in result.limitations:
            w(f"limitation: {limitation}\n")
    if any(layer.flops_complete is False for layer in result.layers) or t.flops_uncounted_ops:
        w("* FLOPs incomplete in this row: an op without a FLOP formula ran in it (see "
          "warning)\n")


if __name__ == "__main__":
    raise SystemExit(main())
