#!/bin/bash
# Builds dist/city-gateway_<version>_all.deb from a wheelhouse (make deb; see the Makefile).
#
#   deploy/debian/build-deb.sh WHEELHOUSE OUTDIR "PYTHONS" "ARCHS"
#
# WHEELHOUSE holds city-gateway's wheel, every dependency's wheels for each Python in PYTHONS
# (e.g. "3.11 3.13") and architecture in ARCHS (e.g. "aarch64 armv7l x86_64"), and a pip wheel.
# Each of those wheel sets is proven complete first (pip resolves city-gateway from WHEELHOUSE alone
# for it), and preinst is told which sets the package carries. Needs dpkg-deb (dpkg) and python3.
# DEB_MAINTAINER overrides the Maintainer field; SOURCE_DATE_EPOCH the dates (reproducible builds);
# DEB_COMPRESSION dpkg-deb's compressor (xz; the tests take gzip, several times faster).
set -euo pipefail
umask 022

die() { printf 'build-deb: error: %s\n' "$*" >&2; exit 1; }

[ $# = 4 ] || die "usage: $0 WHEELHOUSE OUTDIR PYTHONS ARCHS"
WHEELHOUSE=$(cd "$1" && pwd)
OUT=$2
PYTHONS=$3
ARCHS=$4
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEPLOY=$(dirname "$HERE")
TOP=$(dirname "$DEPLOY")
PIP=${PIP:-pip}
MAINTAINER=${DEB_MAINTAINER:-city-gateway maintainers <gateway-maintainers@example.org>}
# The glibc generations of the wheels a Debian 12/13 userland takes (2.36/2.41).
GLIBC="manylinux2014 manylinux_2_17 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_36"

command -v dpkg-deb >/dev/null || die "dpkg-deb is missing: apt-get install dpkg"
wheel=$(find "$WHEELHOUSE" -maxdepth 1 -name 'city_gateway-*.whl' | head -n 1)
[ -n "$wheel" ] || die "no city_gateway wheel in $WHEELHOUSE (make wheelhouse)"
VERSION=$(basename "$wheel" | cut -d- -f2)
compgen -G "$WHEELHOUSE/pip-*.whl" >/dev/null || die "no pip wheel in $WHEELHOUSE"
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$TOP" log -1 --format=%ct 2>/dev/null || date +%s)}

# -- every wheel set complete? -----------------------------------------------------------------------
SETS=""
for py in $PYTHONS; do
    for arch in $ARCHS; do
        platforms=()
        for g in $GLIBC; do platforms+=(--platform "${g}_$arch"); done
        check=$(mktemp -d)
        "$PIP" download --quiet --disable-pip-version-check --no-index --find-links "$WHEELHOUSE" \
            --only-binary=:all: --python-version "$py" --implementation cp --abi "cp${py/./}" --abi abi3 \
            --abi none "${platforms[@]}" --platform "linux_$arch" -d "$check" city-gateway \
            || die "the wheelhouse lacks wheels for Python $py on $arch (see above)"
        rm -rf "$check"
        SETS="$SETS $py-$arch"
    done
done
SETS=${SETS# }

# -- the tree -----------------------------------------------------------------------------------------
PKG=$(mktemp -d)
chmod 0755 "$PKG"
trap 'rm -rf "$PKG"' EXIT
mkdir -p "$PKG/DEBIAN" "$PKG/usr/share/city-gateway/wheels" "$PKG/usr/bin" "$PKG/lib/systemd/system" \
    "$PKG/usr/lib/systemd/journald.conf.d" "$PKG/usr/share/doc/city-gateway" "$PKG/usr/share/lintian/overrides"
cp "$WHEELHOUSE"/*.whl "$PKG/usr/share/city-gateway/wheels/"
install -m 0644 "$TOP/config/example.yaml" "$PKG/usr/share/city-gateway/example.yaml"
ln -s ../lib/city-gateway/venv/bin/gateway "$PKG/usr/bin/gateway"
# The unit of deploy/, pointed at the package's venv and documentation.
sed -e 's#/opt/city-gateway/venv/bin/gateway#/usr/lib/city-gateway/venv/bin/gateway#g' \
    -e 's#file:///opt/city-gateway/README.md#file:///usr/share/doc/city-gateway/README.md.gz#' \
    -e 's#^\# Installed by deploy/install.sh as .*#\# Installed by the city-gateway package (make deb).#' \
    "$DEPLOY/gateway.service" >"$PKG/lib/systemd/system/gateway.service"
sed -e 's#^\# Installed by deploy/install.sh as .*#\# Installed by the city-gateway package (make deb):#' \
    "$DEPLOY/journald.conf" >"$PKG/usr/lib/systemd/journald.conf.d/60-city-gateway.conf"
install -m 0644 "$HERE/lintian-overrides" "$PKG/usr/share/lintian/overrides/city-gateway"
gzip -9n <"$TOP/README.md" >"$PKG/usr/share/doc/city-gateway/README.md.gz"
install -m 0644 "$HERE/copyright" "$PKG/usr/share/doc/city-gateway/copyright"
{
    printf 'city-gateway (%s) unstable; urgency=medium\n\n' "$VERSION"
    printf '  * Release %s, built from commit %s.\n\n' "$VERSION" \
        "$(git -C "$TOP" describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)"
    printf ' -- %s  %s\n' "$MAINTAINER" "$(LC_ALL=C date -u -R -d "@$EPOCH")"
} | gzip -9n >"$PKG/usr/share/doc/city-gateway/changelog.gz"

# The maintainer scripts, each with deploy/lib/setup.sh in place of its #@SETUP_LIB@ line: they run
# when no file of the package is there yet (preinst) or any more (postrm), so they carry it.
for script in preinst postinst prerm postrm; do
    awk -v lib="$DEPLOY/lib/setup.sh" '
        $0 == "#@SETUP_LIB@" { while ((getline line < lib) > 0) if (line !~ /^# shellcheck shell=/) print line; next }
        { print }' "$HERE/$script" | sed "s/@WHEELSETS@/$SETS/" >"$PKG/DEBIAN/$script"
    chmod 0755 "$PKG/DEBIAN/$script"
done
size=$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@MAINTAINER@/$MAINTAINER/" -e "s/@SIZE@/$size/" -e "s/@SETS@/$SETS/" \
    "$HERE/control" >"$PKG/DEBIAN/control"
(cd "$PKG" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum >DEBIAN/md5sums)
find "$PKG" -exec touch -h -d "@$EPOCH" {} +

mkdir -p "$OUT"
deb=$OUT/city-gateway_${VERSION}_all.deb
SOURCE_DATE_EPOCH=$EPOCH dpkg-deb --root-owner-group "-Z${DEB_COMPRESSION:-xz}" --build "$PKG" "$deb" >/dev/null
echo "built $deb ($(du -h "$deb" | cut -f1); wheels for $SETS)"
