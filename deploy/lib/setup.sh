# shellcheck shell=bash
# The installation steps deploy/install.sh and the Debian package (its maintainer scripts, which
# carry a copy of this file made by deploy/debian/build-deb.sh) share: the user, the config and
# data directories, the virtual environment from bundled wheels, the config check, and what the
# package takes over from an install.sh installation.
#
# The caller defines say() and die() and sets
#   R        the root every path is under ("" for the running system; a directory for tests)
#   IS_ROOT  1 when running as root (owners are set and the user is created only then)
# and, for install_config, a function example_config that prints the example config.

GATEWAY_USER=gateway
ETC_DIR=/etc/gateway
DATA_DIR=/var/lib/gateway
CONFIG=$ETC_DIR/gateway.yaml

# -- users and ownership ---------------------------------------------------------------------------

lookup() {  # lookup passwd|group NAME -> the numeric id, empty if none
    if [ -z "$R" ]; then
        getent "$1" "$2" | cut -d: -f3
    elif [ -f "$R/etc/$1" ]; then
        awk -F: -v n="$2" '$1 == n { print $3; exit }' "$R/etc/$1"
    fi
}

ensure_user() {
    if [ "$IS_ROOT" = 0 ]; then
        say "not root: the user $GATEWAY_USER is not created"
        return
    fi
    if [ -n "$R" ] && [ ! -f "$R/etc/passwd" ]; then
        say "no $R/etc/passwd: the user $GATEWAY_USER is not created"
        return
    fi
    local prefix=()
    [ -z "$R" ] || prefix=(--prefix "$R")
    if [ -z "$(lookup passwd "$GATEWAY_USER")" ]; then
        useradd "${prefix[@]}" --system --user-group --home-dir "$DATA_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "city-gateway daemon" "$GATEWAY_USER"
        say "created the system user $GATEWAY_USER"
    fi
    if [ -n "$(lookup group dialout)" ]; then
        usermod "${prefix[@]}" --append --groups dialout "$GATEWAY_USER"
    fi
}

own() {  # own USER GROUP MODE PATH: set owner (when we can) and mode
    local uid gid
    chmod "$3" "$4"
    [ "$IS_ROOT" = 1 ] || return 0
    uid=$(lookup passwd "$1")
    gid=$(lookup group "$2")
    [ -n "$uid" ] && [ -n "$gid" ] && chown "$uid:$gid" "$4"
    return 0
}

# -- config and data ---------------------------------------------------------------------------------

# /etc/gateway/gateway.yaml is written from the example only when absent: an upgrade never touches
# a technician's config (and it is no conffile: dpkg's conffile prompt needs a terminal).
install_config() {
    local etc=$R$ETC_DIR data=$R$DATA_DIR
    mkdir -p "$etc"
    own root "$GATEWAY_USER" 0750 "$etc"
    if [ -e "$R$CONFIG" ]; then
        say "kept the existing $R$CONFIG"
    else
        (umask 077 && example_config >"$R$CONFIG.new") && mv "$R$CONFIG.new" "$R$CONFIG"
        own root "$GATEWAY_USER" 0640 "$R$CONFIG"
        say "wrote $R$CONFIG from the example: edit it"
    fi
    if [ ! -e "$etc/gateway.env" ]; then
        (umask 077 && cat >"$etc/gateway.env") <<'ENV'
# Environment for gateway.service, read by systemd (keep this file 0600 root:root).
# Values for ${VAR} references in gateway.yaml, e.g. with  password: ${MQTT_PASSWORD}
#MQTT_PASSWORD=
ENV
        own root root 0600 "$etc/gateway.env"
    fi
    mkdir -p "$data"
    own "$GATEWAY_USER" "$GATEWAY_USER" 0750 "$data"
}

# config_check GATEWAY: `gateway check` on the config, with the service's environment file (secrets
# for ${VAR}). Quiet; its status is the answer.
config_check() {
    (
        set -a
        # shellcheck disable=SC1090,SC1091  # the technician's file, if any
        [ ! -r "$R$ETC_DIR/gateway.env" ] || . "$R$ETC_DIR/gateway.env"
        exec "$1" check -c "$R$CONFIG"
    ) >/dev/null 2>&1
}

# -- the program from bundled wheels -------------------------------------------------------------------

# wheel_platform PYTHON DPKG_ARCH: "PY ARCH" (e.g. "3.11 aarch64") for the wheels this machine needs.
# DPKG_ARCH is the userland's (dpkg --print-architecture): a 32-bit Raspberry Pi OS on a 64-bit
# kernel says armhf while uname says aarch64. armhf on an ARMv6 CPU (Pi 1, Zero) has no wheels.
wheel_platform() {
    local py arch cpu
    py=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || {
        echo "no Python: $1 does not run"; return 1; }
    cpu=$(uname -m)
    case "$2" in
        amd64) arch=x86_64 ;;
        arm64) arch=aarch64 ;;
        armhf) case "$cpu" in
                   armv7l|armv8l|aarch64) arch=armv7l ;;
                   *) echo "architecture armhf on a $cpu CPU"; return 1 ;;
               esac ;;
        *) echo "architecture $2 ($cpu)"; return 1 ;;
    esac
    echo "$py $arch"
}

# build_venv PYTHON WHEELS PIP_WHEEL VENV: a new virtual environment at VENV with city-gateway
# installed from the wheels in WHEELS only (no index, no network). The venv has no pip of its own
# (--without-pip: no ensurepip, so no python3-venv package needed); the bundled pip wheel runs the
# installation from outside it. VENV must not exist yet.
build_venv() {
    local python=$1 wheels=$2 pip_wheel=$3 venv=$4
    "$python" -m venv --without-pip "$venv" || die "could not create a virtual environment in $venv"
    "$venv/bin/python" "$pip_wheel/pip" install --quiet --disable-pip-version-check --no-cache-dir \
        --no-index --find-links "$wheels" city-gateway \
        || die "could not install city-gateway from the wheels in $wheels into $venv"
    "$venv/bin/gateway" version >/dev/null || die "the gateway installed in $venv does not run"
}

# -- taking over an install.sh installation ------------------------------------------------------------

INSTALL_SH_PREFIX=/opt/city-gateway

# True when deploy/install.sh installed the gateway here (its unit in /etc/systemd/system).
installed_by_install_sh() {
    [ -f "$R/etc/systemd/system/gateway.service" ] \
        && grep -q "$INSTALL_SH_PREFIX/venv/bin/gateway" "$R/etc/systemd/system/gateway.service"
}

# Removes what install.sh installed apart from the config, the data and the user: its program in
# /opt, its link in /usr/local/bin, its unit (which would hide the package's) and its journald
# drop-in when unchanged (an edited one stays: it overrides the package's). The service must be
# stopped first.
remove_install_sh_files() {
    local journald=$R/etc/systemd/journald.conf.d/60-city-gateway.conf
    rm -f "$R/etc/systemd/system/multi-user.target.wants/gateway.service" "$R/etc/systemd/system/gateway.service"
    if [ -L "$R/usr/local/bin/gateway" ] \
        && [ "$(readlink "$R/usr/local/bin/gateway")" = "$INSTALL_SH_PREFIX/venv/bin/gateway" ]; then
        rm -f "$R/usr/local/bin/gateway"
    fi
    rm -rf "$R$INSTALL_SH_PREFIX"
    if [ -f "$journald" ] && [ -n "${1:-}" ] && [ -f "$1" ] \
        && [ "$(grep -v '^#' "$journald")" = "$(grep -v '^#' "$1")" ]; then
        rm -f "$journald"
    fi
}
