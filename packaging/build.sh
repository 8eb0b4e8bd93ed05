#!/usr/bin/env bash
# Build MemLens' packaged app (PyInstaller one-folder) and the Linux archive:
#
#   packaging/build.sh [--self-test] [--venv DIR]
#
# -> dist/memlens-<version>-linux-x86_64.tar.gz, holding memlens-<version>-linux-x86_64/ with
#    memlens (launcher script), app/ (the bundle), memlens.desktop, memlens.png,
#    install-desktop.sh and README.txt.
#
# Python environment, first match: --venv DIR; MEMLENS_BUILD_VENV; the active virtualenv; the
# project's .venv; else build/venv is created with README's install command (CPU torch pinned).
# PyInstaller is installed into it when missing (torch stays pinned).
# --self-test unpacks the archive into build/ and runs `memlens --self-test` from it, then a
# few commands that reach what the self-test does not (optional libraries, architectures).
# Everything intermediate goes to build/ (gitignored); prints the time and sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
T0=$(date +%s)

SELF_TEST=0
VENV=${MEMLENS_BUILD_VENV:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --self-test) SELF_TEST=1 ;;
    --venv) VENV=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

TORCH_PIN="torch==2.13.0"
PYINSTALLER_REQ="pyinstaller>=6.11,<7"

step() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

if [ -z "$VENV" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ]; then VENV=$VIRTUAL_ENV
  elif [ -x .venv/bin/python ]; then VENV=$ROOT/.venv
  else VENV=$ROOT/build/venv
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  step "creating the build environment $VENV (torch pinned: $TORCH_PIN)"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "$TORCH_PIN" ".[optim]"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import PyInstaller" 2>/dev/null; then
  step "installing PyInstaller into $VENV"
  "$PY" -m pip install -q -c <(echo "$TORCH_PIN") "$PYINSTALLER_REQ"
fi

# The version is written once, in engine/__init__.py (pyproject.toml reads it from there).
VERSION=$("$PY" -c "import engine; print(engine.__version__)")
ARCH=$(uname -m)
NAME="memlens-$VERSION-linux-$ARCH"
WORK=$ROOT/build/pyinstaller
STAGE=$ROOT/build/package/$NAME
ARCHIVE=$ROOT/dist/$NAME.tar.gz
step "building $NAME with $("$PY" -m PyInstaller --version 2>/dev/null | tail -1) (python $PY)"

# The icon is committed; draw it only if it is missing.
[ -f resources/icons/memlens.png ] || QT_QPA_PLATFORM=offscreen "$PY" packaging/make_icon.py

T_PYI=$(date +%s)
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$WORK/dist" --workpath "$WORK/work" packaging/memlens.spec
step "PyInstaller done in $(( $(date +%s) - T_PYI )) s"

BUNDLE=$WORK/dist/memlens
# Trim: the symbol tables of torch's two big libraries (~98 MB; the dynamic symbols stay, so
# loading is unaffected). Only these two: stripping the whole bundle breaks numpy's OpenBLAS.
if command -v strip >/dev/null; then
  for lib in "$BUNDLE"/_internal/torch/lib/libtorch_cpu.so "$BUNDLE"/_internal/torch/lib/libtorch_python.so; do
    [ -f "$lib" ] && strip --strip-unneeded "$lib"
  done
else
  echo "build.sh: no strip command (binutils): torch's symbol tables stay (~98 MB more)" >&2
fi
find "$BUNDLE" -name __pycache__ -type d -prune -exec rm -rf {} +
[ -x "$BUNDLE/_internal/torch/bin/torch_shm_manager" ] || {
  echo "build.sh: torch/bin/torch_shm_manager is missing from the bundle (import torch fails)" >&2
  exit 1
}

step "staging $STAGE"
rm -rf "$ROOT/build/package" && mkdir -p "$STAGE"
mv "$BUNDLE" "$STAGE/app"
cp resources/icons/memlens.png "$STAGE/memlens.png"
cat > "$STAGE/memlens" <<'EOF'
#!/bin/sh
# MemLens launcher: runs the bundled app from wherever this folder was unpacked (also through
# a symbolic link, e.g. ~/.local/bin/memlens -> this file). Same options as `memlens`.
here=$(dirname "$(readlink -f "$0")")
exec "$here/app/memlens" "$@"
EOF
chmod +x "$STAGE/memlens"
sed "s|@EXEC@|memlens|" packaging/memlens.desktop > "$STAGE/memlens.desktop"
cat > "$STAGE/install-desktop.sh" <<'EOF'
#!/bin/sh
# Add MemLens to the desktop's application menu (for this user) and `memlens` to ~/.local/bin.
set -e
here=$(dirname "$(readlink -f "$0")")
apps=${XDG_DATA_HOME:-$HOME/.local/share}/applications
icons=${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/256x256/apps
mkdir -p "$apps" "$icons" "$HOME/.local/bin"
cp "$here/memlens.png" "$icons/memlens.png"
sed "s|^Exec=.*|Exec=\"$here/memlens\"|" "$here/memlens.desktop" > "$apps/memlens.desktop"
ln -sf "$here/memlens" "$HOME/.local/bin/memlens"
echo "installed: $apps/memlens.desktop, $icons/memlens.png, ~/.local/bin/memlens"
EOF
chmod +x "$STAGE/install-desktop.sh"
cat > "$STAGE/README.txt" <<EOF
MemLens $VERSION for Linux $ARCH (CPU build of PyTorch).

  ./memlens                  start the window
  ./memlens profile --help   the command line (see the project's README)
  ./memlens --self-test      check this installation (offscreen; exits 0 when it works)
  ./install-desktop.sh       add MemLens to the application menu and ~/.local/bin

Runtime libraries the bundle expects from the system (Debian/Ubuntu package names):
  libgl1 libegl1 fonts-dejavu-core fontconfig-config
(any desktop system has them; the X11 libraries Qt needs beyond libxcb are in the bundle).
Without a display: QT_QPA_PLATFORM=offscreen ./memlens --screenshot out.png, or the
command line (./memlens profile ...), which needs no display.
EOF

step "archiving"
mkdir -p dist
rm -f "$ARCHIVE"
tar -C "$ROOT/build/package" -cf - "$NAME" | gzip -6 > "$ARCHIVE"

UNPACKED=$(du -sb "$STAGE" | cut -f1)
step "done: $ARCHIVE"
echo "  unpacked: $(( UNPACKED / 1000000 )) MB ($UNPACKED bytes, budget 800 MB)"
echo "  archive:  $(( $(stat -c %s "$ARCHIVE") / 1000000 )) MB"
echo "  largest parts (du -sh):"
du -sh "$STAGE"/app/_internal/* "$STAGE"/app/memlens | sort -h | tail -8 | sed 's|'"$STAGE"'/||;s|^|    |'
echo "  build time: $(( $(date +%s) - T0 )) s"

if [ "$SELF_TEST" = 1 ]; then
  step "self-test of the unpacked archive"
  rm -rf "$ROOT/build/selftest" && mkdir -p "$ROOT/build/selftest"
  tar -C "$ROOT/build/selftest" -xzf "$ARCHIVE"
  # A clean environment: no virtualenv, no project on the path, no display.
  frozen() {
    env -i HOME="$ROOT/build/selftest" PATH=/usr/bin:/bin LANG=C.UTF-8 \
      MEMLENS_HOME="$ROOT/build/selftest/home" "$ROOT/build/selftest/$NAME/memlens" "$@"
  }
  frozen --self-test --out "$ROOT/build/selftest/out"
  # The command line on what the self-test does not reach, so that a module the analysis
  # missed shows here: a preset, an architecture that is not compiled in (its sources load
  # from disk), the optional libraries (peft, torchao), attention maps, an estimate, FSDP2 on
  # two processes, a report.
  printf '%s\n' '{"model_type": "phi", "architectures": ["PhiForCausalLM"], "vocab_size": 256,' \
    '"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,' \
    '"num_attention_heads": 4, "max_position_embeddings": 128}' > "$ROOT/build/selftest/phi.json"
  smoke() {
    local log=$ROOT/build/selftest/smoke.log
    if frozen "$@" > "$log" 2>&1; then
      echo "  ok: memlens $*"
    else
      tail -20 "$log" >&2
      echo "build.sh: the frozen app failed: memlens $*" >&2
      exit 1
    fi
  }
  Q=(--seq 16 --repeats 1)
  smoke profile --model preset:tiny-gpt2 --workload generate --new-tokens 4 "${Q[@]}" --no-save
  smoke profile --model "$ROOT/build/selftest/phi.json" --workload forward "${Q[@]}" --no-save
  smoke profile --model demo --workload train --opt lora "${Q[@]}" --no-save
  smoke profile --model demo --workload forward --opt torchao-int8 "${Q[@]}" --no-save
  smoke profile --model demo --workload generate --new-tokens 4 --attention-maps "${Q[@]}"
  smoke estimate --model preset:llama-3-8b --seq 128
  # two ranks: the app's executable runs torchrun and is started again as each rank's worker
  smoke profile --model preset:tiny-llama --workload train --seq 16 --distributed 2
  run_id=$(frozen runs | awk 'NR > 1 && $1 ~ /generate/ {print $1; exit}')
  smoke report "$run_id" --out "$ROOT/build/selftest/report" --pdf
  step "self-test and command-line checks of the frozen app passed"
fi
