#!/bin/bash
# Install city-gateway as a systemd service on Raspberry Pi OS / Debian 12. Idempotent: run it
# again to upgrade; the config in /etc/gateway and the buffer in /var/lib/gateway are kept.
#
#   sudo deploy/install.sh                    install (from a wheelhouse if one is found, see below)
#   sudo deploy/install.sh --wheelhouse DIR   install offline from the wheels in DIR (make wheelhouse)
#   sudo deploy/install.sh --now              ... and start (or restart) the service
#   sudo deploy/install.sh --uninstall        remove program and unit; keep config, data and user
#   sudo deploy/install.sh --uninstall --purge   remove those too
#   deploy/install.sh --root DIR              install into DIR as if it were / (tests, staging)
#
# What it installs:
#   /opt/city-gateway/venv          the program (a Python virtual environment)
#   /usr/local/bin/gateway          a link to it
#   /etc/gateway/gateway.yaml       the config (from config/example.yaml; never overwritten), 0640 root:gateway
#   /etc/gateway/gateway.env        secrets for ${VAR} in the config (never overwritten), 0600 root:root
#   /var/lib/gateway                the buffer, 0750 gateway:gateway
#   /etc/systemd/system/gateway.service                      the unit (enabled)
#   /etc/systemd/journald.conf.d/60-city-gateway.conf        caps the journal's disk use
#   user and group "gateway" (system), member of "dialout"
#
# Where the program comes from, first found: --wheelhouse DIR; a wheelhouse/ next to this script
# or next to its directory (pip install --no-index: no network needed); the source tree this
# script is part of; the package index (PyPI).
set -euo pipefail
umask 022  # the program must be readable by the gateway user whatever root's umask is

NAME=city-gateway
PREFIX=/opt/city-gateway
SERVICE=gateway.service

ROOT=""
WHEELHOUSE=""
PYTHON=${PYTHON:-python3}
ACTION=install
PURGE=0
START=0

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; WHEELHOUSE=$2; shift 2 ;;
        --wheelhouse=*) WHEELHOUSE=${1#--wheelhouse=}; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs a program"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#--python=}; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        --now) START=1; shift ;;
        -h|--help) usage 0 ;;
        *) printf 'install: unknown option %s\n\n' "$1" >&2; usage 2 ;;
    esac
done
[ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || die "--purge goes with --uninstall"

if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
fi
R=$ROOT  # every path below is "$R/..." so that --root DIR works
APP=$R$PREFIX
VENV=$APP/venv
ETC=$R/etc/gateway
DATA=$R/var/lib/gateway
UNIT=$R/etc/systemd/system/$SERVICE
JOURNALD=$R/etc/systemd/journald.conf.d/60-city-gateway.conf
LINK=$R/usr/local/bin/gateway

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
[ "$IS_ROOT" = 1 ] || [ -n "$ROOT" ] || die "run as root (with sudo)"
# systemctl talks to a running systemd only on the real system; in a chroot, an image being
# built or with --root it edits the files (enable/disable) and starts nothing.
LIVE=0
[ -z "$ROOT" ] && [ -d /run/systemd/system ] && LIVE=1

# The steps the Debian package shares (users, ownership, config and data directories, config check).
# shellcheck source=SCRIPTDIR/lib/setup.sh
. "$SCRIPT_DIR/lib/setup.sh"

# -- the program -------------------------------------------------------------------------------------

find_wheelhouse() {
    local dir
    [ -z "$WHEELHOUSE" ] || { [ -d "$WHEELHOUSE" ] || die "no wheelhouse at $WHEELHOUSE"; return 0; }
    for dir in "$SCRIPT_DIR/wheelhouse" "$SCRIPT_DIR/../wheelhouse"; do
        if compgen -G "$dir/city_gateway-*.whl" >/dev/null; then
            WHEELHOUSE=$(cd "$dir" && pwd)
            return 0
        fi
    done
}

source_tree() {  # the source tree this script belongs to, if it is one
    local top
    top=$(cd "$SCRIPT_DIR/.." && pwd)
    if [ -f "$top/pyproject.toml" ] && grep -q "^name = \"$NAME\"" "$top/pyproject.toml"; then
        echo "$top"
    fi
}

ensure_venv() {
    local want have=""
    want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
        || die "$PYTHON not found: apt-get install python3"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11 or newer needed, $PYTHON is $want"
    if [ -x "$VENV/bin/python" ]; then
        have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
    fi
    if [ "$have" != "$want" ]; then
        [ -z "$have" ] || say "Python changed ($have -> $want): making the environment anew"
        rm -rf "$VENV"
        mkdir -p "$APP"
        "$PYTHON" -m venv "$VENV" || die "could not create $VENV: apt-get install python3-venv"
        say "created $VENV (Python $want)"
    fi
}

install_program() {
    local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    local src target
    find_wheelhouse
    src=$(source_tree)
    if [ -n "$WHEELHOUSE" ]; then
        say "installing from the wheelhouse $WHEELHOUSE (offline)"
        pip+=(--no-index --find-links "$WHEELHOUSE")
        target=$NAME
    elif [ -n "$src" ]; then
        say "installing from the source tree $src"
        target=$src
    else
        say "installing $NAME from the package index"
        target=$NAME
    fi
    # First what it needs, then the program itself again: a rebuilt wheel of the same version
    # replaces the installed one, so the result is the same however often this runs.
    "${pip[@]}" --upgrade --upgrade-strategy only-if-needed "$target"
    "${pip[@]}" --force-reinstall --no-deps "$target"
    "$VENV/bin/gateway" version >/dev/null || die "the installed gateway does not run"
    say "installed $("$VENV/bin/gateway" version) in $VENV"
    mkdir -p "$(dirname "$LINK")"
    ln -sfn "$PREFIX/venv/bin/gateway" "$LINK"
    mkdir -p "$APP/deploy"
    install -m 0644 "$SCRIPT_DIR/gateway.service" "$SCRIPT_DIR/journald.conf" "$APP/deploy/"
    install -m 0755 "$SCRIPT_DIR/install.sh" "$APP/deploy/"
    install -D -m 0644 "$SCRIPT_DIR/lib/setup.sh" "$APP/deploy/lib/setup.sh"
    if [ -f "$SCRIPT_DIR/../README.md" ]; then
        install -m 0644 "$SCRIPT_DIR/../README.md" "$APP/README.md"
    fi
}

# -- config, data, service -------------------------------------------------------------------------

example_config() {
    local f
    for f in "$SCRIPT_DIR/example.yaml" "$SCRIPT_DIR/../config/example.yaml"; do
        if [ -f "$f" ]; then
            cat "$f"
            return
        fi
    done
    cat <<'EOF'
# city-gateway config: see /opt/city-gateway/README.md. Check it with: gateway check
gateway:
  id: change-me
  data_dir: /var/lib/gateway
mqtt:
  host: broker.example.org
devices: []
EOF
}

install_units() {
    local journald_changed=0
    mkdir -p "$(dirname "$UNIT")" "$(dirname "$JOURNALD")"
    install -m 0644 "$SCRIPT_DIR/gateway.service" "$UNIT"
    if ! cmp -s "$SCRIPT_DIR/journald.conf" "$JOURNALD"; then
        install -m 0644 "$SCRIPT_DIR/journald.conf" "$JOURNALD"
        journald_changed=1
    fi
    say "installed $UNIT and $JOURNALD"
    if [ "$LIVE" = 1 ]; then
        [ "$journald_changed" = 0 ] || systemctl restart systemd-journald.service
        systemctl daemon-reload
        systemctl enable --quiet "$SERVICE"
        if systemctl is-active --quiet "$SERVICE"; then
            systemctl restart "$SERVICE"
            say "restarted $SERVICE"
        elif [ "$START" = 1 ]; then
            systemctl start "$SERVICE"
            say "started $SERVICE"
        fi
    elif command -v systemctl >/dev/null 2>&1; then
        systemctl --root="${ROOT:-/}" enable --quiet "$SERVICE"
        say "enabled $SERVICE (systemd is not running here: nothing started)"
    else
        say "no systemctl: $SERVICE not enabled"
    fi
}

check_config() {
    if config_check "$VENV/bin/gateway"; then
        say "config $ETC/gateway.yaml: OK"
    else
        say "config $ETC/gateway.yaml has problems: see  gateway check -c /etc/gateway/gateway.yaml"
    fi
}

do_install() {
    ensure_user
    ensure_venv
    install_program
    install_config
    install_units
    check_config
    if [ "$LIVE" = 1 ] && [ "$START" = 0 ] && ! systemctl is-active --quiet "$SERVICE"; then
        say "next: edit /etc/gateway/gateway.yaml, then  systemctl start gateway"
    fi
}

# -- uninstall ---------------------------------------------------------------------------------------

do_uninstall() {
    if [ "$LIVE" = 1 ]; then
        systemctl disable --now --quiet "$SERVICE" 2>/dev/null || true
    elif command -v systemctl >/dev/null 2>&1 && [ -e "$UNIT" ]; then
        systemctl --root="${ROOT:-/}" disable --quiet "$SERVICE" 2>/dev/null || true
    fi
    rm -f "$R/etc/systemd/system/multi-user.target.wants/$SERVICE" "$UNIT"
    if [ -e "$JOURNALD" ]; then
        rm -f "$JOURNALD"
        [ "$LIVE" = 0 ] || systemctl restart systemd-journald.service
    fi
    [ "$LIVE" = 0 ] || systemctl daemon-reload
    if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$PREFIX/venv/bin/gateway" ]; then
        rm -f "$LINK"
    fi
    rm -rf "$APP"
    say "removed the program and the unit"
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ETC" "$DATA"
        if [ "$IS_ROOT" = 1 ] && { [ -z "$ROOT" ] || [ -f "$R/etc/passwd" ]; }; then
            local prefix=()
            [ -z "$ROOT" ] || prefix=(--prefix "$ROOT")
            [ -z "$(lookup passwd gateway)" ] || userdel "${prefix[@]}" gateway
            [ -z "$(lookup group gateway)" ] || groupdel "${prefix[@]}" gateway
        fi
        say "purged $ETC, $DATA and the user gateway"
    else
        say "kept $ETC (config) and $DATA (buffered readings); --uninstall --purge removes them"
    fi
}

if [ "$ACTION" = install ]; then
    do_install
else
    do_uninstall
fi
