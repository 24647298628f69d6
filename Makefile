# Two commands do all set-up on a fresh Debian/Ubuntu machine:
#   make demo   the gateway against simulated devices and a local broker, readings printed as they arrive
#   make test   the whole test suite (lint, unit, integration)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit integration system-deps clean wheelhouse screenshots deb deb-deps arm-check

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "could not create a virtual environment: sudo apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# The commands the tests and the demo run, as command:Debian-package. mosquitto and socat are real
# parts of the tests and the demo; the others are what tests check with (certificates, the broker's
# password file, the installer, the systemd unit, the Debian package: dpkg-deb, lintian). Where CI is
# set, a test whose command is missing fails instead of skipping (tests/support/needs.py).
SYSTEM_DEPS := mosquitto:mosquitto mosquitto_passwd:mosquitto socat:socat openssl:openssl \
               shellcheck:shellcheck systemd-analyze:systemd nats-server:nats-server \
               chromium:chromium chromedriver:chromium-driver \
               dpkg-deb:dpkg lintian:lintian

system-deps:
	@missing=""; \
	for dep in $(SYSTEM_DEPS); do \
	  cmd=$${dep%%:*}; pkg=$${dep#*:}; \
	  command -v $$cmd >/dev/null 2>&1 || test -x /usr/sbin/$$cmd || case "$$missing " in \
	    *" $$pkg "*) ;; *) missing="$$missing $$pkg" ;; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    systemctl disable --now mosquitto >/dev/null 2>&1 || true; \
	  else \
	    echo "missing:$$missing -- install with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

demo: $(STAMP) system-deps
	$(BIN)/gateway demo

# The technician's page of the demo, photographed in headless chromium at a laptop's and a phone's
# width (docs/screenshots/*.png, shown in the README). Takes about two minutes: the demo first
# collects some history for the charts.
screenshots: $(STAMP) system-deps
	$(BIN)/python -m tests.support.screenshots docs/screenshots

lint: $(STAMP)
	$(BIN)/ruff check gateway drivers tests

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# The tests run in two passes: most of them on TEST_WORKERS pytest-xdist workers at once (they wait on
# sockets and processes far more than on the CPU, so more workers than cores pay), then the ones
# marked serial_only (CPU- or timing-sensitive: the bench) alone. Status 5 (no tests collected or
# all deselected: a wrong path or marker) fails with its reason, never passes as "nothing failed".
TEST_WORKERS ?= 4
PYTEST_PASS = echo '$(BIN)/pytest -q $(1)'; status=0; $(BIN)/pytest -q $(1) || status=$$?; \
	if [ $$status = 5 ]; then echo "pytest $(1): no tests collected (status 5)" >&2; fi; exit $$status

test: $(STAMP) system-deps lint
	@$(call PYTEST_PASS,-n $(TEST_WORKERS) -m "not serial_only")
	@$(call PYTEST_PASS,-p no:xdist -m serial_only)

# An offline installation source for the gateways (`sudo deploy/install.sh` finds it): wheels of
# city-gateway and of every dependency for CPython $(WHEEL_PYTHONS) on 64-bit (aarch64) and 32-bit
# (armv7l) Raspberry Pi OS, and for this machine. Pure-Python wheels are built here; the compiled
# dependencies (pydantic-core, cbor2, PyYAML, cryptography, cffi, aiohttp and its helpers) are
# downloaded as binary wheels for each platform (cffi for armv7l: compiled here, see below).
# PyYAML publishes no armv7l wheel: a pure-Python PyYAML wheel (no libyaml) stands in there; cbor2 6
# (Rust) has none either, so pip takes cbor2 5.9's pure-Python wheel for armv7l (slower encoding).
# Copy the repository with wheelhouse/ (or deploy/, config/ and wheelhouse/) to the gateway.
# Needs a package index once, here; `make wheelhouse WHEEL_ARCHS="aarch64 armv7l x86_64"` adds one,
# WHEEL_PYTHONS="3.11 3.13" a Python (make deb does both).
WHEEL_PYTHON  ?= 3.11
WHEEL_PYTHONS ?= $(WHEEL_PYTHON)
WHEEL_ARCHS   ?= aarch64 armv7l
WHEEL_GLIBC  := manylinux2014 manylinux_2_17 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_36

# PyPI has no armv7l wheel of cffi (cryptography needs it): deploy/debian/armhf-wheels.sh compiles
# it in a Debian armhf root under qemu, bookworm's for CPython 3.11 and trixie's for 3.13 (minutes
# under emulation; kept in .cache/ until `make clean`; needs debootstrap and qemu-user-static).
ARMHF_SUITES := $(if $(filter 3.11,$(WHEEL_PYTHONS)),bookworm) $(if $(filter 3.13,$(WHEEL_PYTHONS)),trixie)
ARMHF_WHEELS := .cache/armhf-wheels/$(subst $() ,-,$(strip $(ARMHF_SUITES)))

$(ARMHF_WHEELS):
	rm -rf $@.tmp
	deploy/debian/armhf-wheels.sh $@.tmp $(ARMHF_SUITES)
	mv $@.tmp $@

wheelhouse: $(STAMP) $(if $(filter armv7l,$(WHEEL_ARCHS)),$(ARMHF_WHEELS))
	rm -rf wheelhouse
	$(BIN)/pip wheel --quiet -w wheelhouse .
	$(if $(filter armv7l,$(WHEEL_ARCHS)),cp $(ARMHF_WHEELS)/*.whl wheelhouse/)
	yaml=$$(ls wheelhouse | sed -n 's/^[Pp]y[Yy][Aa][Mm][Ll]-\([^-]*\)-.*/\1/p' | head -n 1); \
	PYYAML_FORCE_LIBYAML=0 $(BIN)/pip wheel --quiet --no-cache-dir --no-deps --no-binary pyyaml -w wheelhouse "PyYAML==$$yaml"
	for py in $(WHEEL_PYTHONS); do for arch in $(WHEEL_ARCHS); do \
	  echo "wheelhouse: CPython $$py $$arch"; \
	  $(BIN)/pip download --quiet --only-binary=:all: --python-version $$py --implementation cp \
	    --abi cp$$(echo $$py | tr -d .) --abi abi3 --abi none \
	    $(foreach g,$(WHEEL_GLIBC),--platform $(g)_$$arch) --platform linux_$$arch \
	    --find-links wheelhouse -d wheelhouse wheelhouse/city_gateway-*.whl || exit 1; \
	done; done
	@ls wheelhouse

# The Debian package, dist/city-gateway_<version>_all.deb: the wheelhouse above for every Python and
# architecture a Raspberry Pi OS bookworm (3.11) or trixie (3.13) gateway, 64- or 32-bit, or an x86
# box may have, plus a pip wheel (the package builds its venv offline with it). Maintainer scripts,
# unit and lintian overrides: deploy/debian/ (built by deploy/debian/build-deb.sh). Needs a package
# index; `make deb DEB_ARCHS=x86_64 DEB_PYTHONS=3.11` builds a smaller one for trying it out.
DEB_PYTHONS ?= 3.11 3.13
DEB_ARCHS   ?= aarch64 armv7l x86_64
# What only make deb needs (command:Debian-package) beyond SYSTEM_DEPS (where the tests' dpkg-deb and
# lintian are): the armv7l cffi wheels are compiled in an armhf root under qemu.
DEB_DEPS    := dpkg-deb:dpkg lintian:lintian debootstrap:debootstrap qemu-arm-static:qemu-user-static

deb-deps:
	@$(MAKE) --no-print-directory system-deps SYSTEM_DEPS="$(DEB_DEPS)"

deb: $(STAMP) deb-deps
	$(MAKE) wheelhouse WHEEL_PYTHONS="$(DEB_PYTHONS)" WHEEL_ARCHS="$(DEB_ARCHS)"
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: -d wheelhouse pip
	PIP=$(BIN)/pip deploy/debian/build-deb.sh wheelhouse dist "$(DEB_PYTHONS)" "$(DEB_ARCHS)"
	lintian --fail-on error dist/city-gateway_*_all.deb

# The package proven on ARM userlands under qemu-user emulation (tests/arm/arm_check.py says how):
# clean Debian roots (bookworm and trixie, arm64 and armhf; not Raspberry Pi OS, whose archive is not
# reachable from here), each: install, gateway check, 30 s of readings by seq, an upgrade that keeps
# everything. Root only. The roots are built once with debootstrap and cached as tarballs in
# ARM_ROOTS_CACHE; ARM_DEB is the package (built with make deb when dist/ has none).
ARM_ROOTS       ?= bookworm/arm64 bookworm/armhf trixie/arm64 trixie/armhf
ARM_ROOTS_CACHE ?= $(HOME)/.cache/city-gateway/arm-roots
ARM_DEB         ?=
ARM_DEPS        := debootstrap:debootstrap qemu-aarch64-static:qemu-user-static qemu-arm-static:qemu-user-static \
                   update-binfmts:binfmt-support mosquitto:mosquitto dpkg-deb:dpkg

arm-check: $(STAMP)
	@$(MAKE) --no-print-directory system-deps SYSTEM_DEPS="$(ARM_DEPS)"
	@deb="$(ARM_DEB)"; \
	if [ -z "$$deb" ]; then \
	  ls dist/city-gateway_*_all.deb >/dev/null 2>&1 || $(MAKE) --no-print-directory deb || exit 1; \
	  deb=$$(ls dist/city-gateway_*_all.deb | sort -V | tail -n 1); \
	fi; \
	echo "arm-check: $$deb"; \
	ARM_ROOTS_CACHE="$(ARM_ROOTS_CACHE)" $(BIN)/python tests/arm/arm_check.py --roots "$(ARM_ROOTS)" "$$deb"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .cache
