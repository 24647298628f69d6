#!/bin/bash
# The clean Debian roots of `make arm-check`, built once and cached as tarballs.
#
#   tests/arm/roots.sh binfmt                 make sure the kernel runs arm64/armhf binaries (qemu-user-static)
#   tests/arm/roots.sh build SUITE ARCH       the cached tarball of a fresh SUITE/ARCH root (built if missing);
#                                             prints its path
#   tests/arm/roots.sh mount DIR | umount DIR /proc, /sys, /dev (and resolv.conf) in an unpacked root, and off
#
# A root is `debootstrap --variant=minbase` plus python3 (a Raspberry Pi OS Lite image ships it) and
# systemd (installed, not running: what a chroot or an image build sees). These are Debian roots, not
# Raspberry Pi OS ones: the Raspberry Pi OS archive is not reachable from here.
#
# Environment: ARM_ROOTS_CACHE (default ~/.cache/city-gateway/arm-roots), ARM_MIRROR (default: the
# mirror this machine's apt uses, else http://deb.debian.org/debian).
set -euo pipefail

CACHE=${ARM_ROOTS_CACHE:-$HOME/.cache/city-gateway/arm-roots}
INCLUDE=python3,systemd,ca-certificates

say() { printf 'arm-check: %s\n' "$*" >&2; }
die() { printf 'arm-check: error: %s\n' "$*" >&2; exit 1; }

mirror() {  # the Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org
    local m=""
    if [ -n "${ARM_MIRROR:-}" ]; then echo "$ARM_MIRROR"; return; fi
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit }')
    [ -n "$m" ] || m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }')
    echo "${m:-http://deb.debian.org/debian}"
}

qemu_name() {  # Debian architecture -> the binfmt entry / qemu name
    case "$1" in
        arm64) echo aarch64 ;;
        armhf) echo arm ;;
        *) die "unknown architecture $1 (arm64 or armhf)" ;;
    esac
}

binfmt() {  # register qemu-aarch64 and qemu-arm with the F flag (the interpreter is opened now, so it works in a chroot)
    local dir=/proc/sys/fs/binfmt_misc name entry
    [ "$(id -u)" = 0 ] || die "arm-check needs root (debootstrap, chroot, binfmt_misc)"
    if [ ! -e "$dir/register" ]; then
        mount -t binfmt_misc binfmt_misc "$dir" 2>/dev/null \
            || die "binfmt_misc is not mounted and cannot be (mount -t binfmt_misc binfmt_misc $dir): a container without that privilege cannot run ARM binaries"
        say "mounted binfmt_misc on $dir"
    fi
    for name in aarch64 arm; do
        entry=$dir/qemu-$name
        command -v "qemu-$name-static" >/dev/null || die "qemu-$name-static missing: apt-get install qemu-user-static"
        if [ ! -e "$entry" ]; then
            if command -v update-binfmts >/dev/null && [ -e "/usr/share/binfmts/qemu-$name" ]; then
                update-binfmts --import "qemu-$name" >/dev/null 2>&1 || true
            fi
        fi
        if [ ! -e "$entry" ]; then
            register_by_hand "$name" || die "could not register qemu-$name in $dir/register (is this a container without CAP_SYS_ADMIN?)"
        fi
        grep -qx enabled "$entry" || die "$entry is registered but disabled (echo 1 > $entry)"
        grep -q '^flags:.*F' "$entry" \
            || die "$entry lacks the F flag, so it cannot run inside a chroot: echo -1 > $entry, then run this again"
        say "binfmt: qemu-$name ready ($(sed -n 's/^interpreter //p' "$entry"))"
    done
}

register_by_hand() {  # the ELF magic and mask of qemu's own qemu-binfmt-conf.sh, for aarch64 or arm
    local magic mask
    case "$1" in
        aarch64) magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
                 mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff' ;;
        arm)     magic='\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00'
                 mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff' ;;
    esac
    printf ':qemu-%s:M::%s:%s:%s:F\n' "$1" "$magic" "$mask" "$(command -v "qemu-$1-static")" \
        >/proc/sys/fs/binfmt_misc/register 2>/dev/null
}

build() {  # build SUITE ARCH -> prints the tarball
    local suite=$1 arch=$2 tarball dir log
    tarball=$CACHE/$suite-$arch.tar.gz
    if [ -s "$tarball" ]; then echo "$tarball"; return; fi
    command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"
    mkdir -p "$CACHE"
    dir=$(mktemp -d "$CACHE/.build-$suite-$arch.XXXXXX")
    chmod 0755 "$dir"  # the root's /: every user must get through it
    log=$CACHE/$suite-$arch.debootstrap.log
    say "$suite/$arch: debootstrap from $(mirror) (log: $log)"
    if ! debootstrap --arch="$arch" --variant=minbase --include="$INCLUDE" \
            "$suite" "$dir" "$(mirror)" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -rf "$dir"
        die "$suite/$arch: debootstrap failed (log: $log)"
    fi
    # apt's package lists, so that `apt install ./x.deb` can resolve a dependency the root lacks
    mount_chroot "$dir"
    chroot "$dir" apt-get update -qq >>"$log" 2>&1 || { umount_chroot "$dir"; rm -rf "$dir"; die "$suite/$arch: apt-get update failed (log: $log)"; }
    chroot "$dir" apt-get clean
    umount_chroot "$dir"
    tar -C "$dir" -czf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$dir"
    say "$suite/$arch: cached $tarball ($(du -h "$tarball" | cut -f1))"
    echo "$tarball"
}

mount_chroot() {  # /proc, /sys, /dev and the host's resolv.conf inside a root
    mount -t proc proc "$1/proc"
    mount -t sysfs sysfs "$1/sys"
    mount --rbind /dev "$1/dev"
    mount --make-rslave "$1/dev"
    cp -L /etc/resolv.conf "$1/etc/resolv.conf" 2>/dev/null || true
}

umount_chroot() {
    local m
    # deepest first: every mount point under the root
    awk -v r="$1/" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
}

case "${1:-}" in
    binfmt) binfmt ;;
    build) [ $# = 3 ] || die "usage: $0 build SUITE ARCH"; binfmt; build "$2" "$3" ;;
    mirror) mirror ;;
    mount) [ $# = 2 ] || die "usage: $0 mount DIR"; mount_chroot "$2" ;;
    umount) [ $# = 2 ] || die "usage: $0 umount DIR"; umount_chroot "$2" ;;
    *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 2 ;;
esac
