#!/usr/bin/env bash
# Run the packaged app's self-test on a minimal Debian system (a chroot), to prove which system
# libraries the Linux archive needs:
#
#   packaging/test_minimal_system.sh [ARCHIVE]      (as root; default: the newest dist/*.tar.gz)
#
# 1. `debootstrap --variant=minbase bookworm` (cached in build/minroot-base.tar.gz): Debian's
#    smallest installable system, no X, no GL, no fonts.
# 2. The self-test there must FAIL with a message naming what is missing while the runtime
#    libraries are added one at a time (libGL, libEGL, a font), PASS once the font is there,
#    and PASS without fontconfig's "no configuration" complaint with RUNTIME_LIBS (README's list).
# Needs root (chroot, mount), debootstrap (installed with apt-get when missing) and Debian's
# package mirror. The chroot shares nothing with this machine but the kernel: its own /dev
# nodes, a fresh /proc and a tmpfs /dev/shm (multiprocessing's semaphores live there).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

RUNTIME_LIBS="libgl1 libegl1 fonts-dejavu-core fontconfig-config"
SUITE=${MEMLENS_MINIMAL_SUITE:-bookworm}
MIRROR=${MEMLENS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=$ROOT/build/minroot-base-$SUITE.tar.gz
CHROOT=$ROOT/build/minroot

ARCHIVE=${1:-$(ls -t dist/memlens-*-linux-*.tar.gz 2>/dev/null | head -1)}
[ -n "$ARCHIVE" ] && [ -f "$ARCHIVE" ] || { echo "no archive: run packaging/build.sh first" >&2; exit 2; }
ARCHIVE=$(readlink -f "$ARCHIVE")
NAME=$(basename "$ARCHIVE" .tar.gz)
[ "$(id -u)" = 0 ] || { echo "test_minimal_system.sh needs root (chroot, mount)" >&2; exit 2; }

unmount() {
  for m in "$CHROOT/dev/shm" "$CHROOT/proc"; do
    if grep -q " $m " /proc/mounts 2>/dev/null; then umount "$m" || umount -l "$m"; fi
  done
}
trap unmount EXIT

if [ ! -f "$BASE" ]; then
  command -v debootstrap >/dev/null || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  }
  echo "== debootstrap --variant=minbase $SUITE"
  rm -rf "$CHROOT" && mkdir -p "$ROOT/build"
  debootstrap --variant=minbase "$SUITE" "$CHROOT" "$MIRROR" > "$ROOT/build/debootstrap.log" 2>&1 \
    || { tail -20 "$ROOT/build/debootstrap.log" >&2; exit 1; }
  chroot "$CHROOT" apt-get clean
  tar -C "$CHROOT" -czf "$BASE.tmp" . && mv "$BASE.tmp" "$BASE"
fi

echo "== fresh minimal root from $(basename "$BASE")"
unmount
rm -rf "$CHROOT" && mkdir -p "$CHROOT"
tar -C "$CHROOT" -xzf "$BASE"
mount -t proc proc "$CHROOT/proc"
mkdir -p "$CHROOT/dev/shm" && mount -t tmpfs -o mode=1777 tmpfs "$CHROOT/dev/shm"
cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
mkdir -p "$CHROOT/opt" && tar -C "$CHROOT/opt" -xzf "$ARCHIVE"
echo "   $(chroot "$CHROOT" sh -c '. /etc/os-release; echo "$PRETTY_NAME"'), \
$(chroot "$CHROOT" dpkg-query -f '.\n' -W | wc -l) packages"

self_test() {  # $1: expected "pass" or "fail"; $2: what must appear in the output on a failure
  local log=$ROOT/build/minimal-self-test.log code=0
  chroot "$CHROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    "/opt/$NAME/memlens" --self-test --out /tmp/self-test > "$log" 2>&1 || code=$?
  sed 's/^/   | /' "$log" | grep -v propagateSizeHints
  if [ "$1" = pass ]; then
    [ "$code" = 0 ] || { echo "FAILED: the self-test should pass here (exit $code)" >&2; exit 1; }
  else
    [ "$code" != 0 ] || { echo "FAILED: the self-test should fail here" >&2; exit 1; }
    grep -q "$2" "$log" || { echo "FAILED: no message about '$2'" >&2; exit 1; }
  fi
  echo "   -> exit $code, as expected"
}

install() {
  chroot "$CHROOT" sh -c "apt-get update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $* >/dev/null 2>&1"
}

chroot "$CHROOT" dpkg-query -f '${Package}\n' -W | sort > "$ROOT/build/minimal-before.txt"

echo "== 1. nothing added: must fail, naming the missing library"
self_test fail "libGL.so.1"

echo "== 2. + libgl1: must fail, naming the next missing library"
install libgl1
self_test fail "libEGL.so.1"

echo "== 3. + libegl1, no font: must fail (every label would be boxes)"
install libegl1
self_test fail "no usable font"

echo "== 4. + fonts-dejavu-core: must pass (fontconfig complains it has no configuration)"
install fonts-dejavu-core
self_test pass

echo "== 5. + fontconfig-config = README's list ($RUNTIME_LIBS): must pass, no complaint"
install $RUNTIME_LIBS
self_test pass
if grep -q "Fontconfig error" "$ROOT/build/minimal-self-test.log"; then
  echo "FAILED: fontconfig still has no configuration" >&2; exit 1
fi
chroot "$CHROOT" dpkg-query -f '${Package}\n' -W | sort > "$ROOT/build/minimal-after.txt"
echo "   packages added to minbase: $(comm -13 "$ROOT/build/minimal-before.txt" \
  "$ROOT/build/minimal-after.txt" | tr '\n' ' ')"
echo "minimal system OK: $NAME passes its self-test on Debian $SUITE minbase + $RUNTIME_LIBS"
[ -n "${MEMLENS_KEEP_CHROOT:-}" ] || { unmount; rm -rf "$CHROOT"; }
