"""`make arm-check`: the Debian package proven on ARM userlands, under qemu-user emulation.

For each root (bookworm and trixie, arm64 and armhf: clean Debian roots from tests/arm/roots.sh,
cached as tarballs and unpacked fresh for every run) it:

1. installs the package (``apt-get install ./city-gateway_<version>_all.deb`` in the chroot, with
   /proc, /sys and /dev mounted; systemd is installed there but not running);
2. runs ``gateway check`` on the example config the package ships;
3. runs ``gateway run`` (as the user gateway) with simulated devices against a Mosquitto of its own
   on the host's loopback (a chroot shares the host's network) for RUN_SECONDS, and checks by seq
   that every reading arrives; then stops the broker so readings wait in the buffer, and the gateway;
4. upgrades to the same package rebuilt with a higher version, checks that the config, the buffer
   (pending readings, each device's next seq) and seq.json are as they were, and runs the gateway
   again until every reading, the ones buffered across the upgrade and new ones, has arrived by seq.

Prints the time of each step per root and the gateway's CPU time per reading under emulation (a
rough figure: qemu-user on this host, not a Pi). Run as root: tests/arm/arm_check.py --help.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.broker import Mosquitto, Subscriber, seqs_by_device
from tests.support.wait import wait_until

HERE = Path(__file__).resolve().parent
ROOTS_SH = HERE / "roots.sh"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
ROOT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
ROOTS = ("bookworm/arm64", "bookworm/armhf", "trixie/arm64", "trixie/armhf")
RUN_SECONDS = 30.0
DEVICES = 2  # simulated, 5 points each, every 100 ms: 100 readings/s
STARTUP = 240.0  # seconds a gateway may take to start under emulation on a loaded host
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    """One root's outcome: step -> seconds, and the figures of its runs."""

    root: str
    steps: dict[str, float] = field(default_factory=dict)
    readings: int = 0
    cpu_ms_per_reading: float = 0.0
    error: str | None = None

    def timed(self, step: str, start: float) -> None:
        self.steps[step] = time.monotonic() - start


def sh(*args: str | Path, log: Path, check: bool = True, env: dict[str, str] | None = None) -> int:
    """Run a command, its output appended to ``log``; raise (with the log's tail) if it fails.
    ``env``: the whole environment (none of this process's: the host's pip settings stay out of a root)."""
    with log.open("ab") as out:
        out.write(f"$ {' '.join(map(str, args))}\n".encode())
        out.flush()
        rc = subprocess.run([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT, check=False,
                            env=env).returncode
    if check and rc != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if "(Reading database" not in line]
        tail = "\n".join(lines[-12:])
        raise RuntimeError(f"{' '.join(map(str, args[:6]))} failed ({rc}):\n{tail}")
    return rc


def upgrade_package(deb: Path, out_dir: Path) -> tuple[Path, str]:
    """The same package with a higher version (``<version>+rebuild1``): what an upgrade installs."""
    tree = Path(tempfile.mkdtemp(dir=out_dir))
    try:
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
        control = (tree / "DEBIAN" / "control").read_text()
        version = next(line.split(": ", 1)[1] for line in control.splitlines() if line.startswith("Version: "))
        newer = f"{version}+rebuild1"
        (tree / "DEBIAN" / "control").write_text(control.replace(f"Version: {version}\n", f"Version: {newer}\n"))
        target = out_dir / f"city-gateway_{newer}_all.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree), str(target)],
                       check=True, stdout=subprocess.DEVNULL)
        return target, newer
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def config_yaml(gateway_id: str, port: int) -> str:
    devices = "".join(
        f"  - name: sim-{i}\n    driver: simulated\n    interval: 100ms\n    points:\n"
        + "".join(f"      - {{name: p{k}, signal: {('counter', 'sine', 'random')[k % 3]}}}\n" for k in range(5))
        for i in range(DEVICES))
    return (f"gateway: {{id: {gateway_id}, data_dir: /var/lib/gateway}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {port}, encoding: json}}\n"
            f"buffer: {{max_mb: 16, commit_interval: 500ms}}\ndevices:\n{devices}")


class Root:
    """An unpacked root with /proc, /sys, /dev mounted (``with``), and what runs in it."""

    def __init__(self, name: str, tarball: Path, work: Path, log: Path) -> None:
        self.name, self.tarball, self.log = name, tarball, log
        self.path = work / name.replace("/", "-")

    def __enter__(self) -> Root:
        if self.path.exists():
            sh(ROOTS_SH, "umount", self.path, log=self.log)
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        sh("tar", "-C", self.path, "-xzf", self.tarball, log=self.log)
        self.path.chmod(0o755)  # a root's / as on a machine (the tarball's may be mktemp's 0700)
        sh(ROOTS_SH, "mount", self.path, log=self.log)
        return self

    def __exit__(self, *exc: object) -> None:
        sh(ROOTS_SH, "umount", self.path, log=self.log, check=False)
        if exc[0] is None:
            shutil.rmtree(self.path, ignore_errors=True)  # kept after a failure, to look into

    def run(self, *args: str, check: bool = True) -> int:
        return sh(CHROOT, self.path, *args, log=self.log, check=check, env=ROOT_ENV)

    def install(self, deb: Path) -> None:
        shutil.copy(deb, self.path / "tmp" / deb.name)
        self.run("apt-get", "install", "-y", "--no-install-recommends", f"/tmp/{deb.name}")

    def ids(self, user: str) -> tuple[int, int]:
        for line in (self.path / "etc" / "passwd").read_text().splitlines():
            name, _, uid, gid, *_ = line.split(":")
            if name == user:
                return int(uid), int(gid)
        raise RuntimeError(f"{self.name}: no user {user}: the package did not create it")

    def gateway(self) -> subprocess.Popen[bytes]:
        """``gateway run`` as the user gateway, as the unit would (its output in the log)."""
        uid, gid = self.ids("gateway")
        out = self.log.open("ab")
        try:
            return subprocess.Popen([CHROOT, f"--userspec={uid}:{gid}", str(self.path), "/usr/bin/gateway", "run",
                                     "-c", "/etc/gateway/gateway.yaml"], stdout=out, stderr=subprocess.STDOUT,
                                    env=ROOT_ENV)
        finally:
            out.close()

    def buffer_meta(self) -> dict[str, int]:
        conn = sqlite3.connect(self.path / "var/lib/gateway/buffer.db")
        try:
            return dict(conn.execute("SELECT key, value FROM meta"))
        finally:
            conn.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime, all threads


def stop(proc: subprocess.Popen[bytes], what: str) -> None:
    proc.send_signal(signal.SIGTERM)
    if (rc := proc.wait(timeout=120)) != 0:
        raise RuntimeError(f"{what} exited with {rc} after SIGTERM")


def complete(sub: Subscriber, upto: dict[str, int]) -> dict[str, list[int]] | None:
    """Per device the seqs received, once every seq 1..upto[device] has arrived; None before."""
    got = seqs_by_device(sub.messages)
    done = all(set(range(1, n + 1)) <= set(got.get(dev, ())) for dev, n in upto.items())
    return got if done else None


def contiguous(got: dict[str, list[int]]) -> None:
    """No seq missing below the highest one received, per device."""
    for dev, seqs in got.items():
        if missing := sorted(set(range(1, max(seqs) + 1)) - set(seqs)):
            raise RuntimeError(f"{dev}: seqs missing: {missing[:10]} ({len(missing)})")


def check_root(name: str, debs: tuple[Path, Path, str], work: Path, result: Result) -> None:
    """Steps 1-4 of the module docstring in one root; fills ``result``."""
    deb, newer_deb, newer_version = debs
    log = work / f"{name.replace('/', '-')}.log"
    log.write_text("")
    start = time.monotonic()
    suite, arch = name.split("/")
    tarball = Path(subprocess.run([str(ROOTS_SH), "build", suite, arch], check=True, capture_output=True,
                                  text=True).stdout.strip().splitlines()[-1])
    result.timed("root", start)
    broker = Mosquitto(work / f"mosquitto-{suite}-{arch}")
    broker.workdir.mkdir(parents=True, exist_ok=True)
    broker.start()
    sub = Subscriber(broker.host, broker.port, f"city/arm-{suite}-{arch}/+/telemetry").start()
    try:
        with Root(name, tarball, work, log) as root:
            result.timed("unpack", start)
            _first_install(root, deb, result)
            _run(root, broker, sub, result, suite, arch)
            _upgrade(root, newer_deb, newer_version, broker, sub, result)
    finally:
        sub.close()
        broker.stop()


def _first_install(root: Root, deb: Path, result: Result) -> None:
    step = time.monotonic()
    root.install(deb)
    result.timed("install", step)
    step = time.monotonic()
    root.run("gateway", "check", "-c", "/usr/share/city-gateway/example.yaml")
    if (root.path / "etc/gateway/gateway.yaml").read_bytes() != \
            (root.path / "usr/share/city-gateway/example.yaml").read_bytes():
        raise RuntimeError("/etc/gateway/gateway.yaml is not the example after a first install")
    result.timed("check", step)


def _run(root: Root, broker: Mosquitto, sub: Subscriber, result: Result, suite: str, arch: str) -> None:
    """RUN_SECONDS of readings arriving, checked by seq; then readings buffered with the broker away."""
    config = root.path / "etc/gateway/gateway.yaml"
    config.write_text(config_yaml(f"arm-{suite}-{arch}", broker.port))  # keeps the package's owner and mode
    step = time.monotonic()
    proc = root.gateway()
    try:
        wait_until(lambda: proc.poll() is not None or sub.messages, STARTUP, f"{root.name}: a first reading")
        if proc.poll() is not None:
            raise RuntimeError(f"{root.name}: gateway exited with {proc.returncode} (see {root.log})")
        result.steps["start"] = time.monotonic() - step
        cpu0, seen0, t0 = cpu_seconds(proc.pid), _count(sub), time.monotonic()
        wait_until(lambda: time.monotonic() - t0 >= RUN_SECONDS, RUN_SECONDS + 5, "the run", every=1)
        cpu, seen = cpu_seconds(proc.pid) - cpu0, _count(sub) - seen0
        result.readings = seen
        result.cpu_ms_per_reading = 1000 * cpu / max(seen, 1)
        got = seqs_by_device(sub.messages)
        if sorted(got) != [f"sim-{i}" for i in range(DEVICES)] or seen < 10:
            raise RuntimeError(f"{root.name}: readings did not arrive: {len(sub.messages)} messages")
        contiguous(got)
        sent = {dev: max(seqs) for dev, seqs in got.items()}
        broker.stop()  # readings now wait in the buffer
        wait_until(lambda: all(root.buffer_meta().get(f"seq:{d}", 0) > n + 20 for d, n in sent.items()),
                   60, f"{root.name}: readings buffered while the broker is away")
        stop(proc, f"{root.name}: gateway")
        result.timed("run", step)
    finally:
        if proc.poll() is None:
            proc.kill()


def _upgrade(root: Root, newer_deb: Path, newer_version: str, broker: Mosquitto, sub: Subscriber,
             result: Result) -> None:
    """The rebuilt package over the first: config, buffer and marks as they were, every reading sent."""
    config = root.path / "etc/gateway/gateway.yaml"
    before = (hashlib.sha256(config.read_bytes()).hexdigest(), root.buffer_meta(),
              (root.path / "var/lib/gateway/seq.json").read_text())
    if before[1]["pending"] == 0:
        raise RuntimeError(f"{root.name}: nothing waited in the buffer before the upgrade")
    step = time.monotonic()
    root.install(newer_deb)
    result.timed("upgrade", step)
    installed = subprocess.run([CHROOT, str(root.path), "dpkg-query", "-W", "-f=${Version}", "city-gateway"],
                               capture_output=True, text=True, check=True).stdout
    after = (hashlib.sha256(config.read_bytes()).hexdigest(), root.buffer_meta(),
             (root.path / "var/lib/gateway/seq.json").read_text())
    if installed != newer_version or after != before:
        raise RuntimeError(f"{root.name}: the upgrade changed what it must keep: {before} -> {after} ({installed})")
    upto = {key[4:]: value - 1 for key, value in before[1].items() if key.startswith("seq:")}
    step = time.monotonic()
    broker.start()
    proc = root.gateway()
    try:
        wanted = {dev: n + 10 for dev, n in upto.items()}  # all buffered, and new ones after them
        got = wait_until(lambda: proc.poll() is None and complete(sub, wanted), STARTUP,
                         f"{root.name}: every reading, buffered across the upgrade and new")
        contiguous(got)
        stop(proc, f"{root.name}: upgraded gateway")
    finally:
        if proc.poll() is None:
            proc.kill()
    result.timed("after upgrade", step)


def _count(sub: Subscriber) -> int:
    return sum(len(seqs) for seqs in seqs_by_device(sub.messages).values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("deb", type=Path, help="the package: dist/city-gateway_<version>_all.deb")
    parser.add_argument("--roots", default=" ".join(ROOTS), help="SUITE/ARCH ... (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=4, help="roots checked at once")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/city-gateway-arm-check"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("arm-check: needs root (debootstrap, chroot, binfmt_misc, mounts)", file=sys.stderr)
        return 2
    subprocess.run([str(ROOTS_SH), "binfmt"], check=True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    newer_deb, newer_version = upgrade_package(args.deb.resolve(), args.work)
    results = [Result(name) for name in args.roots.split()]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(check_root, r.root, (args.deb.resolve(), newer_deb, newer_version), args.work, r): r
                   for r in results}
        for future in concurrent.futures.as_completed(futures):
            if (exc := future.exception()) is not None:
                futures[future].error = str(exc) or repr(exc)
    report(results, args.deb.name, time.monotonic() - started)
    return 1 if any(r.error for r in results) else 0


def report(results: list[Result], deb: str, total: float) -> None:
    steps = ("root", "unpack", "install", "check", "start", "run", "upgrade", "after upgrade")
    print(f"arm-check: {deb} (upgrade: the same package, version +rebuild1); Debian roots under qemu-user")
    print(f"{'root':<16}" + "".join(f"{s:>14}" for s in steps) + f"{'readings':>10}{'CPU/reading':>13}  result")
    for r in results:
        cells = "".join(f"{r.steps[s]:>13.0f}s" if s in r.steps else f"{'-':>14}" for s in steps)
        cpu = f"{r.cpu_ms_per_reading:>10.2f} ms" if r.readings else f"{'-':>13}"
        print(f"{r.root:<16}{cells}{r.readings:>10}{cpu}  {'FAILED: ' + r.error if r.error else 'ok'}")
    print(f"arm-check: {sum(not r.error for r in results)}/{len(results)} roots ok in {total:.0f} s"
          " (root: the cached tarball, built if missing; the other steps count from the run's start,"
          " unpack included)")
    print(json.dumps({r.root: {"steps": r.steps, "cpu_ms_per_reading": round(r.cpu_ms_per_reading, 2),
                               "error": r.error} for r in results}))


if __name__ == "__main__":
    sys.exit(main())
