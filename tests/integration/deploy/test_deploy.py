"""Deployment: the systemd unit (verified, sandboxed), the journald drop-in, the installer run into a
throwaway root, and the daemon's sd_notify conversation (READY, WATCHDOG, STOPPING) seen from a
real notification socket.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config.load import load_config
from gateway.daemon.daemon import Daemon
from tests.support import REPO
from tests.support.broker import Mosquitto, free_port
from tests.support.fakeroot import fresh_root
from tests.support.gateway_proc import base_config, write_config
from tests.support.needs import have_tool, require_tool, unavailable
from tests.support.wait import wait_until, wait_until_async

pytestmark = pytest.mark.integration

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "gateway.service"
INSTALLED_GATEWAY = "/opt/city-gateway/venv/bin/gateway"

# -- the unit file -----------------------------------------------------------------------------------


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment of a unit file, in order (keys may repeat)."""
    entries, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def values(entries: list[tuple[str, str, str]], section: str, key: str) -> list[str]:
    return [v for s, k, v in entries if s == section and k == key]


def analyzable_copy(unit_text: str, tmp_path: Path, gateway: str | None = None) -> Path:
    """The unit with ExecStart's program replaced by one that exists here (``gateway`` or a stub):
    systemd-analyze verify checks that the programs a unit runs exist."""
    if gateway is None:
        stub = tmp_path / "gateway-stub"
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        gateway = str(stub)
    unit = tmp_path / "gateway.service"
    unit.write_text(unit_text.replace(INSTALLED_GATEWAY, gateway))
    return unit


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = require_tool("systemd-analyze", "systemd")
    return subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    done = verify(analyzable_copy(UNIT.read_text(), tmp_path))
    # Warnings (an unknown key, a bad value) leave the exit status 0: any line about our unit fails.
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "gateway" in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


def test_verify_catches_a_mistake(tmp_path: Path) -> None:
    bad = UNIT.read_text().replace("Type=notify", "Type=notify\nWatchdogSecs=30s")
    done = verify(analyzable_copy(bad, tmp_path))
    assert "WatchdogSecs" in done.stdout + done.stderr


def test_unit_sandbox_exposure_is_low(tmp_path: Path) -> None:
    analyze, unit = require_tool("systemd-analyze", "systemd"), analyzable_copy(UNIT.read_text(), tmp_path)
    done = subprocess.run([analyze, "security", "--offline=yes", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    found = re.search(r"Overall exposure level for gateway\.service: (\d+\.\d+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    assert float(found[1]) <= 2.0, done.stdout  # "OK"; a plain service scores 9.6 ("UNSAFE")


def test_unit_file_says_what_the_service_needs() -> None:
    entries = unit_entries(UNIT.read_text())

    def one(section: str, key: str) -> str:
        found = values(entries, section, key)
        assert len(found) == 1, f"[{section}] {key}: {found}"
        return found[0]

    assert one("Unit", "StartLimitIntervalSec") == "0"  # never gives up restarting
    assert not any("network-online" in v for v in values(entries, "Unit", "After") + values(entries, "Unit", "Wants"))
    service = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30s", "Restart": "always",
        "ExecReload": "/bin/kill -HUP $MAINPID", "User": "gateway", "Group": "gateway",
        "SupplementaryGroups": "dialout", "StateDirectory": "gateway", "ConfigurationDirectory": "gateway",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "DevicePolicy": "closed",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes", "RestrictRealtime": "yes", "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes", "CapabilityBoundingSet": "", "ProtectClock": "yes",
    }
    for key, expected in service.items():
        assert one("Service", key) == expected, key
    # Checked before each start, without blocking it: `run` falls back to the last good config.
    assert one("Service", "ExecStartPre").startswith(f"-{INSTALLED_GATEWAY} check ")
    assert one("Service", "ExecStart").startswith(f"{INSTALLED_GATEWAY} run ")
    assert "@system-service" in values(entries, "Service", "SystemCallFilter")
    allowed = set(values(entries, "Service", "DeviceAllow"))
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyAMA rw", "char-ttyS rw"} <= allowed
    assert all(re.fullmatch(r"char-tty\w+ rw", a) for a in allowed), allowed  # serial ports only
    assert not values(entries, "Service", "PrivateDevices")  # it would hide the serial ports
    assert not values(entries, "Service", "ReadWritePaths")  # StateDirectory is the one writable place
    assert one("Install", "WantedBy") == "multi-user.target"


def test_journald_dropin_caps_disk_use() -> None:
    entries = unit_entries((DEPLOY / "journald.conf").read_text())
    assert {s for s, _, _ in entries} == {"Journal"}
    keys = {k: v for _, k, v in entries}
    known = {"SystemMaxUse", "SystemMaxFileSize", "SystemKeepFree", "RuntimeMaxUse", "MaxRetentionSec",
             "RateLimitIntervalSec", "RateLimitBurst", "Storage", "SyncIntervalSec", "Compress"}
    assert set(keys) <= known
    size = re.fullmatch(r"(\d+)M", keys["SystemMaxUse"])
    assert size and int(size[1]) <= 100
    assert "#Storage=volatile" in (DEPLOY / "journald.conf").read_text()  # documented, off by default


def test_installer_is_shellcheck_clean() -> None:
    shellcheck = require_tool("shellcheck", "shellcheck")
    done = subprocess.run([shellcheck, "-x", str(DEPLOY / "install.sh")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


# -- the installer, into a throwaway root ------------------------------------------------------------


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of this tree and its dependencies for this machine (what `make wheelhouse` adds to)."""
    house = tmp_path_factory.mktemp("wheelhouse")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                           "-w", str(house), str(REPO)], capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0 or not list(house.glob("city_gateway-*.whl")):
        unavailable(f"the wheels cannot be built here (no package index?): {done.stderr[-500:]}")
    return house


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--root", str(root),
                           "--python", sys._base_executable, *args],  # type: ignore[attr-defined]
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"install.sh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def layout(root: Path) -> set[str]:
    """Every path under ``root`` outside the virtual environment and the user database backups."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if "/venv/" not in str(p) and not p.name.endswith("-")}


def ids(root: Path, db: str, name: str) -> list[str]:
    for line in (root / "etc" / db).read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    return []


# pip runs three times here (the wheels, the install, the upgrade): some 30 s of CPU on an idle
# machine, several times that on a loaded one. The suite's 120 s limit is a guard against a hang,
# too short for that work; each pip already has 600 s (install()).
@pytest.mark.timeout(600)
def test_install_upgrade_and_uninstall_in_a_throwaway_root(wheelhouse: Path, tmp_path: Path) -> None:
    root = fresh_root(tmp_path / "root")
    am_root = os.geteuid() == 0
    first = install(root, "--wheelhouse", str(wheelhouse))
    assert "offline" in first.stdout

    # The program, runnable, with a link for technicians.
    venv_gateway = root / "opt/city-gateway/venv/bin/gateway"
    version = subprocess.run([str(venv_gateway), "version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("city-gateway ")
    assert os.readlink(root / "usr/local/bin/gateway") == INSTALLED_GATEWAY
    # The config: the example, private to root and the gateway group; a valid one.
    config = root / "etc/gateway/gateway.yaml"
    assert config.read_text() == (REPO / "config/example.yaml").read_text()
    assert subprocess.run([str(venv_gateway), "check", "-c", str(config)], capture_output=True,
                          check=False).returncode == 0
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert oct((root / "etc/gateway").stat().st_mode & 0o777) == "0o750"
    assert oct((root / "etc/gateway/gateway.env").stat().st_mode & 0o777) == "0o600"
    assert oct((root / "var/lib/gateway").stat().st_mode & 0o777) == "0o750"
    if am_root:  # the user, its groups, and who owns what
        user = ids(root, "passwd", "gateway")
        assert user and user[6] == "/usr/sbin/nologin"
        assert "gateway" in ids(root, "group", "dialout")[3].split(",")
        uid, gid = int(user[2]), int(ids(root, "group", "gateway")[2])
        assert (config.stat().st_uid, config.stat().st_gid) == (0, gid)
        assert ((root / "var/lib/gateway").stat().st_uid, (root / "var/lib/gateway").stat().st_gid) == (uid, gid)
    # The unit and the journal cap, enabled for boot.
    unit = root / "etc/systemd/system/gateway.service"
    assert unit.read_text() == UNIT.read_text()
    assert (root / "etc/systemd/journald.conf.d/60-city-gateway.conf").read_text() == \
        (DEPLOY / "journald.conf").read_text()
    if have_tool("systemctl", "systemd"):  # install.sh enables the unit where systemctl is
        wants = root / "etc/systemd/system/multi-user.target.wants/gateway.service"
        assert os.readlink(wants) == "/etc/systemd/system/gateway.service"
    if have_tool("systemd-analyze", "systemd"):  # the installed unit, pointed into this root, verifies
        (tmp_path / "check").mkdir()
        done = verify(analyzable_copy(unit.read_text(), tmp_path / "check", gateway=str(venv_gateway)))
        assert done.returncode == 0 and "gateway" not in done.stdout + done.stderr, done.stderr

    # Again (an upgrade): same layout, the technician's config and the buffered data untouched.
    config.write_text(config.read_text() + "# edited by the technician\n")
    (root / "var/lib/gateway/buffer.db").write_bytes(b"readings")
    before = layout(root)
    again = install(root, "--wheelhouse", str(wheelhouse))
    assert "kept the existing" in again.stdout
    assert config.read_text().endswith("# edited by the technician\n")
    assert layout(root) == before
    assert (root / "var/lib/gateway/buffer.db").read_bytes() == b"readings"

    # Uninstall: program and unit gone; config, data and user kept.
    install(root, "--uninstall")
    for gone in ("opt/city-gateway", "usr/local/bin/gateway", "etc/systemd/system/gateway.service",
                 "etc/systemd/system/multi-user.target.wants/gateway.service",
                 "etc/systemd/journald.conf.d/60-city-gateway.conf"):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert config.read_text().endswith("# edited by the technician\n")
    assert (root / "var/lib/gateway/buffer.db").exists()
    assert ids(root, "passwd", "gateway") or not am_root

    # Purge: nothing of ours is left.
    install(root, "--uninstall", "--purge")
    assert not (root / "etc/gateway").exists() and not (root / "var/lib/gateway").exists()
    assert not ids(root, "passwd", "gateway") and not ids(root, "group", "gateway")
    assert ids(root, "group", "dialout") == ["dialout", "x", "20", ""]


def test_installer_refuses_unknown_options(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--root", str(tmp_path), "--frobnicate"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "unknown option --frobnicate" in done.stderr
    assert not any(tmp_path.iterdir())


# -- sd_notify: the daemon and a real notification socket --------------------------------------------


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's; ``address`` as NOTIFY_SOCKET spells it."""

    def __init__(self, abstract: bool, directory: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"city-gateway-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(directory / "notify.sock")
            self.sock.bind(self.address)
        self.sock.settimeout(0.0)
        self.messages: list[tuple[float, str]] = []  # (monotonic time, datagram)

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except BlockingIOError:
                return [m for _, m in self.messages]

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float, alive: Callable[[], bool],
                 what: str) -> list[str]:
        def arrived() -> bool:
            assert alive(), f"the process died waiting for {what}"
            return predicate(self.drain())

        wait_until(arrived, timeout, lambda: f"{what}; got {self.drain()}", every=0.01)
        return self.drain()

    async def wait_for_async(self, predicate: Callable[[list[str]], bool], timeout: float, what: str) -> list[str]:
        await wait_until_async(lambda: predicate(self.drain()), timeout, lambda: f"{what}; got {self.drain()}")
        return self.drain()


@pytest.fixture(params=["abstract", "path"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(request.param == "abstract", tmp_path)
    yield sock
    sock.sock.close()


def idle_config(tmp_path: Path) -> Path:
    """A simulated device and a broker that is not there: an idle but healthy gateway."""
    config = base_config(tmp_path / "data", free_port())
    config["devices"] = [
        {"name": "sim-1", "driver": "simulated", "interval": "100ms", "points": [{"name": "p"}]},
        {"name": "sim-2", "driver": "simulated", "interval": "1s", "points": [{"name": "q"}]},
    ]
    path = write_config(tmp_path / "gateway.yaml", config)
    path.chmod(0o640)
    return path


def test_gateway_run_tells_systemd_ready_watchdog_and_stopping(notify_socket: NotifySocket, tmp_path: Path) -> None:
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="1000000")  # a beat per 0.5 s
    log_path = tmp_path / "gw.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(idle_config(tmp_path))],
                                stdout=log, stderr=log, env=env)
    alive = lambda: proc.poll() is None  # noqa: E731
    try:
        notify_socket.wait_for(lambda got: "READY=1" in got, 20, alive, "READY=1")
        ready_at = notify_socket.messages[0][0]
        # READY came once the buffer was open and polling had started: the first reading is buffered at once.
        from gateway.control import SOCKET_NAME, request

        def polled() -> bool:
            status = request(tmp_path / "data" / SOCKET_NAME, {"cmd": "status"})["status"]
            return status["devices"]["sim-1"]["polls"] >= 1

        wait_until(polled, 10, "a reading within 10 s of the start", every=0.02)
        assert time.monotonic() - started < 10
        # With no broker at all the gateway is idle but healthy: the heartbeat goes on.
        got = notify_socket.wait_for(lambda got: got.count("WATCHDOG=1") >= 5, 10, alive, "five heartbeats")
        beats = [t for t, m in notify_socket.messages if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert all(0.3 < gap < 0.9 for gap in gaps), f"heartbeat gaps {gaps} (expected ~0.5 s)"
        assert got[0] == "READY=1" and beats[0] >= ready_at
        proc.send_signal(signal.SIGTERM)
        got = notify_socket.wait_for(lambda got: "STOPPING=1" in got, 10, lambda: True, "STOPPING=1")
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    got = notify_socket.drain()
    assert got.count("READY=1") == 1 and got.count("STOPPING=1") == 1
    assert "WATCHDOG=1" not in got[got.index("STOPPING=1"):], "heartbeat after STOPPING=1"
    assert "broker" in log_path.read_text()  # it did try the (absent) broker meanwhile


async def test_a_dead_device_task_stops_the_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.daemon.watchdog")
    sock = NotifySocket(abstract=True, directory=tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a beat per 0.2 s
    daemon = Daemon(load_config(idle_config(tmp_path)))
    run = asyncio.create_task(daemon.run())
    try:
        await sock.wait_for_async(lambda got: got.count("WATCHDOG=1") >= 3, 20, "heartbeats")
        task = daemon.scheduler.tasks["sim-2"]._task
        assert task is not None
        task.cancel()  # the poll loop of sim-2 is gone: what a bug escaping it looks like from outside

        def since_unhealthy(got: list[str]) -> list[str]:
            start = next((i for i, m in enumerate(got) if m.startswith("STATUS=unhealthy")), len(got))
            return got[start:]

        # The scheduler restarts the loop after its backoff (sim-2's interval, 1 s); until then no heartbeat.
        got = await sock.wait_for_async(lambda got: "WATCHDOG=1" in since_unhealthy(got), 10, "heartbeat back")
        assert since_unhealthy(got)[1:3] == ["STATUS=running", "WATCHDOG=1"], "the heartbeat went on with a dead task"
        assert daemon.scheduler.tasks["sim-2"].alive
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors == ["device sim-2: poll loop ended: cancelled; restarting it in 1 s",
                          "watchdog: the poll task of device sim-2 has died (cancelled); heartbeat stopped, "
                          "systemd will restart the gateway"]
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(run, 15) == 0
    assert sock.drain()[-1] == "STOPPING=1"
    sock.sock.close()


# -- memory: MemoryDenyWriteExecute= does not break the daemon ----------------------------------------

_MDWE_LAUNCHER = """
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)  # the kernel (< 6.3) cannot refuse W+X memory
import mmap
from tests.support import REPO
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit(78)  # not refused: the test would prove nothing
except OSError:
    pass
os.execv(sys.executable, [sys.executable, "-m", "gateway.cli", *sys.argv[1:]])
"""


def test_daemon_runs_with_writable_executable_memory_refused(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """What MemoryDenyWriteExecute=yes enforces (the kernel's PR_SET_MDWE, inherited across exec):
    the daemon with its compiled modules (pydantic-core, cbor2, PyYAML, ssl, sqlite3) still runs."""
    config = base_config(tmp_path / "data", mosquitto.port)
    config["devices"] = [{"name": "sim-1", "driver": "simulated", "interval": "100ms", "points": [{"name": "p"}]}]
    path = write_config(tmp_path / "gateway.yaml", config)
    path.chmod(0o640)
    log_path = tmp_path / "gw.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", _MDWE_LAUNCHER, "run", "-c", str(path)], stdout=log, stderr=log)
    try:
        from gateway.control import SOCKET_NAME, request

        def sent() -> bool:
            if proc.poll() == 77:
                pytest.skip(f"this kernel ({os.uname().release}) has no PR_SET_MDWE (Linux 6.3+): "
                            "it cannot refuse writable executable memory")
            assert proc.poll() != 78, "PR_SET_MDWE did not refuse a writable executable mapping"
            assert proc.poll() is None, log_path.read_text()
            try:
                status = request(tmp_path / "data" / SOCKET_NAME, {"cmd": "status"})["status"]
            except (ConnectionError, OSError):
                return False
            return bool(status["broker"]["readings_sent"] > 0)

        wait_until(sent, 20, lambda: f"a reading sent:\n{log_path.read_text()}")
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
