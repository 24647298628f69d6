"""The gateway under test in `gateway bench`: its process, its /proc figures, and the private broker.

The bench runs the real command, ``python -m gateway.cli run -c CONFIG``, as a child process and
measures it only from outside: CPU time and peak RSS from ``/proc/<pid>``, bytes written to disk
from ``/proc/<pid>/io``, and, at exit, all three for the whole run from ``wait4()``'s rusage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.control import SOCKET_NAME, request

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """The bench could not measure (the gateway died, a step timed out); the message says why."""


# -- /proc ------------------------------------------------------------------------------------------


def child_json(argv: list[str], what: str, limit: float) -> dict[str, Any]:
    """Run a measuring child (``argv``) that prints one JSON object; BenchError naming ``what`` if it
    fails or takes longer than ``limit`` seconds. A child measures alone what no gateway shares."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: no result within {limit:g} s") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise BenchError(f"{what}: {why}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def child_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A measuring child's arguments: ``--port`` of the server it measures against, ``--warmup``
    and ``--window`` in seconds; the child adds its own."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--window", type=float, default=5.0)
    return ap


def child_main(measure: Coroutine[Any, Any, dict[str, Any]]) -> int:
    """A measuring child's end: run ``measure``, print its JSON (0), or one line to stderr (1)."""
    try:
        result = asyncio.run(measure)
    except Exception as exc:  # BenchError, OSError, a client library's error: one line, no traceback
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc/<pid>/stat.

    Counted in clock ticks (10 ms); see ``cpu_seconds_fine`` for short windows.
    """
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is field 3
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds_fine(pid: int) -> float:
    """CPU time of ``pid``'s live threads in nanosecond resolution (/proc/<pid>/task/*/schedstat).

    A thread that ended takes its time with it, so this is for differences over a window in which
    the gateway's threads (event loop, buffer writer, executor) live on. Falls back to clock ticks
    when the kernel keeps no schedstat.
    """
    total = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(f"{task.path}/schedstat") as fh:
                total += int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)
    return total / 1e9


def peak_rss(pid: int) -> int:
    """The peak resident set size of ``pid`` in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def write_bytes(pid: int) -> int | None:
    """Bytes ``pid`` caused to be written to storage (/proc/<pid>/io); None if not readable."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass(frozen=True, slots=True)
class ProcSample:
    """A process's counters at one moment."""

    t: float  # time.monotonic()
    cpu_s: float  # cpu_seconds_fine(): compare only with samples of the same process
    peak_rss: int
    write_bytes: int | None


@dataclass(frozen=True, slots=True)
class ExitUsage:
    """A process's totals over its whole life, from wait4() when it was reaped.

    ``peak_rss`` is the process's own VmHWM read just before it was told to stop, when it could be
    read: wait4()'s ru_maxrss of a spawned process starts at the size of the process that spawned it
    (Linux keeps the old image's high-water mark across exec), so a bench grown to 57 MiB reported
    57 MiB for a gateway of 45. ru_maxrss only when the process had gone before the stop.
    """

    exit_code: int
    cpu_s: float
    peak_rss: int
    write_bytes: int


# -- the process ------------------------------------------------------------------------------------


class GatewayProcess:
    """``gateway run -c CONFIG`` as a child process, its log in ``workdir/gateway.log``."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.data_dir = Path(config["gateway"]["data_dir"])
        self.config_path = workdir / "gateway.yaml"
        self.config_path.touch(mode=0o600)  # the gateway warns about a config others can read
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.usage: ExitUsage | None = None
        self._failing_from: int | None = None  # log size when the bench began to make the devices fail

    def start(self) -> GatewayProcess:
        """Spawn the process (returns at once; see ``wait_ready``)."""
        with open(self.log_path, "ab") as log:
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self.spawned_at = time.monotonic()
            # GATEWAY_BENCH_PROFILE=FILE: the gateway runs under cProfile (its main thread), stats to FILE.
            profile = os.environ.get("GATEWAY_BENCH_PROFILE")
            under = ["-m", "cProfile", "-o", profile] if profile else []
            argv = [sys.executable, *under, "-m", "gateway.cli", "run", "-c", str(self.config_path)]
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        return self

    @property
    def pid(self) -> int:
        """The process id (BenchError before ``start()``)."""
        if self.proc is None:
            raise BenchError("the gateway was not started")
        return self.proc.pid

    def check_alive(self) -> None:
        """Raise BenchError (with the end of its log) if the gateway has exited."""
        if self.proc is None or self.usage is not None or self.proc.poll() is not None:
            code = self.usage.exit_code if self.usage else (self.proc.returncode if self.proc else None)
            raise BenchError(f"the gateway exited (status {code}); its log ends:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait until the control socket answers; returns the seconds since spawn."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                self.status()
                return time.monotonic() - self.spawned_at
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise BenchError(f"the gateway did not answer within {timeout:g} s:\n{self.log_tail()}") from None
                time.sleep(0.02)

    def status(self) -> dict[str, Any]:
        """The status document, through the control socket."""
        return request(self.data_dir / SOCKET_NAME, {"cmd": "status"}, timeout=10)["status"]

    def sample(self) -> ProcSample:
        """CPU, peak RSS and bytes written so far."""
        pid = self.pid
        return ProcSample(time.monotonic(), cpu_seconds_fine(pid), peak_rss(pid), write_bytes(pid))

    def stop(self, timeout: float = 20.0) -> ExitUsage:
        """SIGTERM, wait for the exit (SIGKILL after ``timeout``), and return the whole run's usage."""
        if self.usage is not None:
            return self.usage
        if self.proc is None:
            raise BenchError("the gateway was not started")
        hwm = 0
        if self.proc.returncode is None:
            with contextlib.suppress(OSError, ValueError):
                hwm = peak_rss(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while (usage := self._reap()) is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                deadline = float("inf")
            time.sleep(0.01)
        if hwm:
            usage = self.usage = dataclasses.replace(usage, peak_rss=hwm)
        return usage

    def _reap(self) -> ExitUsage | None:
        """wait4() without blocking: the usage once the process has exited, else None."""
        assert self.proc is not None
        if self.proc.returncode is not None:  # reaped elsewhere: no rusage left to read
            self.usage = ExitUsage(self.proc.returncode, 0.0, 0, 0)
            return self.usage
        pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return None
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        # Linux: ru_maxrss in KiB; ru_oublock counts write_bytes in 512-byte units.
        self.usage = ExitUsage(self.proc.returncode, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024,
                               ru.ru_oublock * 512)
        return self.usage

    def close(self) -> None:
        """Kill the process if it still runs (after a failure) and reap it."""
        if self.proc is not None and self.usage is None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def devices_failing(self) -> None:
        """Note that the bench makes the devices fail from now on: their "lost" lines are not warnings."""
        try:
            self._failing_from = self.log_path.stat().st_size
        except OSError:
            self._failing_from = 0

    def warnings(self, limit: int = 5) -> list[str]:
        """The first ``limit`` distinct WARNING/ERROR lines of the gateway's log (without timestamps)."""
        found: dict[str, None] = {}
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return []
        cut = len(data) if self._failing_from is None else self._failing_from
        for part, stopping in ((data[:cut], False), (data[cut:], True)):
            for line in part.decode(errors="replace").splitlines():
                if "lost: simulated failure" in line or (stopping and " lost: " in line):
                    continue  # the bench stopping the devices (the drain's fillers, everything at the end)
                for level in (" WARNING ", " ERROR ", " CRITICAL "):
                    if level in line:
                        found.setdefault(line[line.index(level) + 1:], None)
                        break
                if len(found) >= limit:
                    return list(found)
        return list(found)

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the gateway's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def device_totals(status: dict[str, Any], points: int) -> dict[str, int]:
    """Sums over the devices of a status document: produced (committed seqs), readings read (successful
    polls x ``points``, the points per device), polls, overruns, errors; and from drivers that keep
    ``counters`` (modbus), the requests they sent and their own count of polls (both counted as a poll
    starts, so their ratio is exact even mid-poll)."""
    devices = status.get("devices", {}).values()
    return {
        "requests": sum(int((d.get("counters") or {}).get("requests", 0)) for d in devices),
        "driver_polls": sum(int((d.get("counters") or {}).get("polls", 0)) for d in devices),
        "produced": sum(int(d.get("seq", 0)) for d in devices),
        "readings_read": sum(int(d.get("polls", 0)) for d in devices) * points,
        "polls": sum(int(d.get("polls", 0)) for d in devices),
        "overruns": sum(int(d.get("overruns", 0)) for d in devices),
        "errors": sum(int(d.get("errors", 0)) for d in devices),
    }


# -- the private broker ------------------------------------------------------------------------------


class PortHold:
    """A loopback port kept from other processes until ``release()``: bound but not listening, so a
    connection to it is refused (as if nothing were there), while a Mosquitto can still bind it
    (both sockets have SO_REUSEADDR and only one listens)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))
        self.port = int(self._sock.getsockname()[1])

    def release(self) -> None:
        """Let go of the port (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@contextlib.contextmanager
def private_broker(workdir: Path, port: int, *, wait: bool = True) -> Iterator[subprocess.Popen[bytes]]:
    """A Mosquitto from gateway.bench.broker.start_broker on ``port``, stopped at the end.

    With ``wait`` (the default) it yields once the port accepts connections; without, at once.
    """
    from gateway.bench.broker import start_broker

    workdir.mkdir(parents=True, exist_ok=True)
    try:
        proc = start_broker(workdir, port)
    except RuntimeError as exc:
        raise BenchError(str(exc)) from exc
    try:
        if wait:
            _wait_listening(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BenchError(f"mosquitto exited with status {proc.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"mosquitto does not listen on {LOOPBACK}:{port}") from None
            time.sleep(0.01)
