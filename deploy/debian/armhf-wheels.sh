#!/bin/bash
# Builds the wheels PyPI lacks for 32-bit ARM (armv7l): cffi, which cryptography needs at run time,
# publishes none. They are compiled in a Debian armhf root under qemu-user-static, against that
# suite's Python (bookworm: 3.11, trixie: 3.13), and tagged linux_armv7l (they link the system's
# libffi8, which every Debian and Raspberry Pi OS has: python3 depends on it).
#
#   deploy/debian/armhf-wheels.sh OUTDIR SUITE... [-- REQUIREMENT...]   (default requirement: cffi)
#
# The build root (debootstrap minbase + gcc, python3-dev, libffi-dev, python3-pip) is cached as a
# tarball in ${DEB_BUILD_CACHE:-~/.cache/city-gateway/deb-build}; the wheels too, by requirement.
# Needs root (debootstrap, chroot), debootstrap, qemu-user-static and binfmt_misc with qemu-arm
# registered (make arm-check registers it), and a package index.
set -euo pipefail

die() { printf 'armhf-wheels: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'armhf-wheels: %s\n' "$*" >&2; }

[ $# -ge 2 ] || die "usage: $0 OUTDIR SUITE... [-- REQUIREMENT...]"
OUT=$1
shift
SUITES=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do SUITES+=("$1"); shift; done
[ $# = 0 ] || shift
REQS=("$@")
[ ${#REQS[@]} -gt 0 ] || REQS=(cffi)
CACHE=${DEB_BUILD_CACHE:-$HOME/.cache/city-gateway/deb-build}
MIRROR=${ARM_MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-arm 2>/dev/null \
    || die "qemu-arm is not registered in /proc/sys/fs/binfmt_misc: apt-get install qemu-user-static binfmt-support (or run make arm-check, which registers it)"
mkdir -p "$CACHE" "$OUT"
OUT=$(cd "$OUT" && pwd)

root_tarball() {  # SUITE -> the cached build root's tarball (made if missing)
    local suite=$1 tarball=$CACHE/$1-armhf-build.tar.gz dir
    if [ ! -f "$tarball" ]; then
        dir=$(mktemp -d "$CACHE/$suite-root.XXXXXX")
        say "$suite/armhf: debootstrap of a build root (once; log $CACHE/$suite-armhf-build.log)"
        debootstrap --arch=armhf --variant=minbase --include=python3-dev,python3-pip,python3-venv,gcc,libffi-dev,libc6-dev,ca-certificates \
            "$suite" "$dir" "$MIRROR" >"$CACHE/$suite-armhf-build.log" 2>&1 \
            || { rm -rf "$dir"; die "$suite/armhf: debootstrap failed (see $CACHE/$suite-armhf-build.log)"; }
        tar -C "$dir" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$dir"
    fi
    echo "$tarball"
}

build_in() {  # SUITE: the wheels of REQS, compiled in that suite's root, into OUT
    local suite=$1 dir tarball
    tarball=$(root_tarball "$suite")
    dir=$(mktemp -d "$CACHE/$suite-run.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
    trap "umount '$dir/proc' 2>/dev/null || true; rm -rf '$dir'" RETURN
    tar -C "$dir" -xzf "$tarball"
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    mount -t proc proc "$dir/proc"
    mkdir -p "$dir/wheels"
    say "$suite/armhf: building ${REQS[*]} (under emulation: minutes)"
    chroot "$dir" /usr/bin/python3 -m venv /build >/dev/null
    chroot "$dir" /build/bin/pip wheel --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        -w /wheels "${REQS[@]}"
    cp "$dir"/wheels/*.whl "$OUT/"
}

for suite in "${SUITES[@]}"; do
    build_in "$suite"
done
ls "$OUT"
