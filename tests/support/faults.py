"""Things that go wrong at the roadside, for the fault tests.

* ``MisbehavingModbusServer``: a Modbus TCP server that answers each request the way its ``mode``
  (or a script of modes) says: correctly, never, half a frame and hang up, with the wrong unit id,
  function code or transaction id, a short or lying frame, random bytes, an exception.
* ``MqttBlackhole``: accepts TCP and never sends a CONNACK; ``forward_to`` turns it into a plain
  proxy to a real broker, for connections accepted from then on.
* ``AuthMosquitto``: a Mosquitto with an anonymous listener (for test subscribers) and one that
  wants a user name and password (for the gateway); ``set_users`` changes who may log in.
* A size-limited filesystem (``tmpfs``), ``fill`` to fill it, and ``free_bytes``.
* ``ProcStats``: a process's resident memory, open files and threads, from /proc.
* Checks by ``seq`` of what reached the broker.

The servers run on their own threads, so plain (blocking) tests and asyncio tests both use them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import socket
import struct
import subprocess
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from tests.support.broker import LOOPBACK, Mosquitto, Received, first_arrivals, telemetry
from tests.support.ports import free_port

# -- a Modbus TCP server that misbehaves -----------------------------------------------------------------

MODES = (
    "ok",  # a correct answer
    "silent",  # reads the request, never answers
    "deaf",  # stops reading this connection at all, never answers (keeps it open)
    "close_mid_frame",  # sends half of a correct answer, then closes the connection
    "stall_mid_frame",  # sends half of a correct answer, then nothing (connection stays open)
    "wrong_unit",  # a correct answer from another unit id
    "wrong_tid",  # a correct answer with another transaction id (a late answer to an old request)
    "wrong_function",  # a well-formed answer of the sibling function (3 <-> 4, 1 <-> 2)
    "unknown_function",  # an answer with a function code no client knows
    "bad_protocol",  # MBAP protocol id 1 instead of 0
    "short_pdu",  # a well-formed answer carrying one register (or byte of bits) less than asked
    "lying_byte_count",  # byte count says "all registers", the frame carries fewer
    "huge_length",  # MBAP length 65535, then a few bytes
    "random_bytes",  # 1..300 random bytes
    "exception",  # exception response 4 (device failure)
    "gateway_exception",  # exception response 11 (gateway target failed to respond)
)
BAD_MODES = tuple(m for m in MODES if m != "ok")
_SIBLING = {1: 2, 2: 1, 3: 4, 4: 3}


def register_value(address: int) -> int:
    """What the misbehaving server's (correct) answer holds at register ``address``."""
    return (address * 7 + 1) & 0xFFFF


def bit_value(address: int) -> bool:
    """What the misbehaving server's (correct) answer holds at coil or input ``address``."""
    return address % 3 == 0


class _TcpTestServer:
    """A threaded TCP listener on 127.0.0.1 that tracks its sockets and threads, for fault servers.

    Subclasses handle each accepted connection in ``_accepted`` (on the accept thread) and register
    the sockets they open in ``_socks``, so ``stop()`` can shut every one down.
    """

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        """Listen (on the same port again after a stop) and accept in a thread."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join the threads."""
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=type(self).__name__, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._socks.add(conn)
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError


class MisbehavingModbusServer(_TcpTestServer):
    """A Modbus TCP server on 127.0.0.1 that answers according to ``mode``, or to a script.

    ``play(modes)`` queues one mode per request to come; once the script is used up, ``mode``
    applies. ``served`` counts the requests per mode actually used. Registers hold
    ``register_value(address)``, bits ``bit_value(address)``, for every address.
    """

    def __init__(self, mode: str = "ok", *, seed: int = 0) -> None:
        super().__init__()
        self._check(mode)
        self.mode = mode
        self.served: Counter[str] = Counter()
        self._script: deque[str] = deque()
        self._rng = random.Random(seed)

    @property
    def requests(self) -> int:
        """Requests received so far."""
        with self._lock:
            return sum(self.served.values())

    def play(self, modes: Iterable[str]) -> None:
        """Answer the next requests with ``modes``, one each, in order."""
        modes = list(modes)
        for mode in modes:
            self._check(mode)
        with self._lock:
            self._script.extend(modes)

    def script_left(self) -> int:
        """Modes of the script not used yet."""
        with self._lock:
            return len(self._script)

    def set_mode(self, mode: str) -> None:
        """Answer every request (after the script) with ``mode``."""
        self._check(mode)
        self.mode = mode

    @staticmethod
    def _check(mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")

    def _accepted(self, conn: socket.socket) -> None:
        self._spawn(self._serve, conn)

    def _next_mode(self) -> str:
        with self._lock:
            mode = self._script.popleft() if self._script else self.mode
            self.served[mode] += 1
            return mode

    def _serve(self, conn: socket.socket) -> None:
        try:
            while not self._stopping.is_set():
                header = _recv_exact(conn, 7)
                if header is None:
                    return
                tid, _pid, length, unit = struct.unpack(">HHHB", header)
                pdu = _recv_exact(conn, length - 1) if length > 1 else b""
                if pdu is None:
                    return
                mode = self._next_mode()
                if mode == "deaf":
                    _hold(conn, self._stopping)
                    return
                with self._lock:
                    answer = _answer(mode, tid, unit, pdu, self._rng)
                if answer:
                    conn.sendall(answer)
                if mode == "close_mid_frame":
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._socks.discard(conn)
            conn.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _hold(conn: socket.socket, stopping: threading.Event) -> None:
    """Keep ``conn`` open, reading nothing, until the peer closes it or the server stops."""
    conn.settimeout(0.1)
    while not stopping.is_set():
        try:
            if conn.recv(1, socket.MSG_PEEK) == b"":
                return
        except TimeoutError:
            continue
        except OSError:
            return
        stopping.wait(0.1)  # data waits unread in the socket: this peer is deaf, not dead


def _mbap(tid: int, unit: int, pdu: bytes, *, pid: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">HHHB", tid, pid, len(pdu) + 1 if length is None else length, unit) + pdu


def _correct_pdu(function: int, start: int, count: int, *, missing: int = 0) -> bytes:
    """The PDU of a correct read answer, less ``missing`` registers (or bytes of bits)."""
    if function in (3, 4):
        data = struct.pack(f">{count}H", *(register_value(a) for a in range(start, start + count)))
        data = data[: len(data) - 2 * missing]
    else:
        bits = [bit_value(a) for a in range(start, start + count)]
        data = bytes(sum(1 << i for i, b in enumerate(bits[k : k + 8]) if b) for k in range(0, count, 8))
        data = data[: len(data) - missing]
    return bytes([function, len(data)]) + data


def _answer(mode: str, tid: int, unit: int, pdu: bytes, rng: random.Random) -> bytes:
    """The bytes the server sends for one request in ``mode`` (b"": nothing)."""
    if mode == "silent" or len(pdu) < 5:
        return b""
    function, start, count = pdu[0], *struct.unpack(">HH", pdu[1:5])
    if function not in _SIBLING:
        return _mbap(tid, unit, bytes([function | 0x80, 1]))  # illegal function
    good = _mbap(tid, unit, _correct_pdu(function, start, count))
    if mode in ("ok", "close_mid_frame", "stall_mid_frame"):
        return good if mode == "ok" else good[: len(good) // 2]
    if mode == "wrong_unit":
        return _mbap(tid, (unit + 1) & 0xFF, _correct_pdu(function, start, count))
    if mode == "wrong_tid":
        return _mbap((tid + 1) & 0xFFFF, unit, _correct_pdu(function, start, count))
    if mode == "wrong_function":
        return _mbap(tid, unit, _correct_pdu(_SIBLING[function], start, count))
    if mode == "unknown_function":
        return _mbap(tid, unit, bytes([0x41, 2, 0, 0]))
    if mode == "bad_protocol":
        return _mbap(tid, unit, _correct_pdu(function, start, count), pid=1)
    if mode == "short_pdu":
        return _mbap(tid, unit, _correct_pdu(function, start, count, missing=1))
    if mode == "lying_byte_count":
        full = _correct_pdu(function, start, count)
        return _mbap(tid, unit, full[:2] + full[2 : len(full) - 2])
    if mode == "huge_length":
        return _mbap(tid, unit, bytes([function, 0, 0, 0]), length=0xFFFF)
    if mode == "random_bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    if mode in ("exception", "gateway_exception"):
        return _mbap(tid, unit, bytes([function | 0x80, 4 if mode == "exception" else 11]))
    raise AssertionError(f"mode {mode!r} has no answer")


# -- an MQTT "broker" that never sends a CONNACK ----------------------------------------------------------


class MqttBlackhole(_TcpTestServer):
    """Accepts TCP on 127.0.0.1 and reads what comes, answering nothing (no CONNACK ever).

    After ``forward_to(host, port)``, connections accepted from then on are piped to that broker.
    ``accepted`` counts connections; ``open_now`` and ``max_open`` tell how many of the
    blackholed ones the client left open at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.open_now = 0
        self.max_open = 0
        self._target: tuple[str, int] | None = None

    def forward_to(self, host: str, port: int) -> None:
        """Pipe connections accepted from now on to ``host:port``."""
        self._target = (host, port)

    def _accepted(self, conn: socket.socket) -> None:
        if self._target is None:
            self._spawn(self._swallow, conn)
        else:
            self._spawn(self._forward, conn, self._target)

    def _swallow(self, conn: socket.socket) -> None:
        with self._lock:
            self.open_now += 1
            self.max_open = max(self.max_open, self.open_now)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        finally:
            with self._lock:
                self.open_now -= 1
                self._socks.discard(conn)
            conn.close()

    def _forward(self, conn: socket.socket, target: tuple[str, int]) -> None:
        try:
            upstream = socket.create_connection(target, timeout=5)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._socks.add(upstream)
        done = threading.Event()
        self._spawn(_pipe, upstream, conn, done)
        _pipe(conn, upstream, done)
        done.wait(5)
        with self._lock:
            self._socks.difference_update({conn, upstream})
        conn.close()
        upstream.close()


def _pipe(src: socket.socket, dst: socket.socket, done: threading.Event) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        done.set()


# -- a broker that wants a password ----------------------------------------------------------------------


class AuthMosquitto(Mosquitto):
    """Mosquitto with two listeners: ``port`` anonymous (test subscribers), ``auth_port`` with a
    password file (the gateway). ``set_users`` rewrites the file and makes a running broker reload it."""

    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        super().__init__(workdir)
        self.auth_port = free_port()
        self.password_file = workdir / "passwords"
        self.users = dict(users)

    def config_text(self) -> str:
        base = super().config_text().replace(f"listener {self.port} {LOOPBACK}\nallow_anonymous true\n", "")
        return "\n".join([
            "per_listener_settings true",
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous true",
            f"listener {self.auth_port} {LOOPBACK}",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            base,
        ])

    def start(self, timeout: float = 10.0) -> AuthMosquitto:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_passwords()
        super().start(timeout)
        return self

    def set_users(self, users: dict[str, str]) -> None:
        """Let exactly ``users`` log in from now on (SIGHUP reloads the password file)."""
        self.users = dict(users)
        self._write_passwords()
        if self.running:
            os.kill(self.pid, signal.SIGHUP)

    def _write_passwords(self) -> None:
        self.password_file.write_text("")
        for user, password in self.users.items():
            subprocess.run(["mosquitto_passwd", "-b", str(self.password_file), user, password],
                           check=True, capture_output=True)


# -- a small filesystem ------------------------------------------------------------------------------------


class MountUnavailable(RuntimeError):
    """This machine does not let the test mount a filesystem."""


@contextlib.contextmanager
def tmpfs(where: Path, size_mb: int) -> Iterator[Path]:
    """Mount a ``size_mb`` MB tmpfs on ``where`` (created); always unmounted at the end.

    Raises MountUnavailable when mounting is not permitted (not root, a sandbox without mounts).
    """
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(where)],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MountUnavailable(f"cannot run mount: {exc}") from exc
    if done.returncode != 0:
        raise MountUnavailable(f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        umount = subprocess.run(["umount", str(where)], capture_output=True, text=True, check=False)
        if umount.returncode != 0:  # something still holds a file there: never leave the mount behind
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still allocate on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(filler: Path, *, leave: int = 0) -> int:
    """Append to ``filler`` until its filesystem has at most ``leave`` bytes free; returns bytes written.

    With ``leave=0`` writes until ENOSPC, so the filesystem is completely full.
    """
    written = 0
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while (room := free_bytes(filler.parent) - leave) > 0:
            try:
                written += os.write(fd, b"\0" * min(room, 1 << 20))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if leave or not room:
                    break
                try:  # the last bytes of a block
                    written += os.write(fd, b"\0" * 512)
                except OSError:
                    break
    finally:
        os.close(fd)
    return written


# -- a process seen from /proc -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcStats:
    """What /proc tells of a process at one moment."""

    rss_kb: int
    threads: int
    fds: int

    @classmethod
    def of(cls, pid: int) -> ProcStats:
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.split()
        return cls(int(fields["VmRSS"][0]), int(fields["Threads"][0]), len(os.listdir(f"/proc/{pid}/fd")))


# -- what reached the broker, by seq -----------------------------------------------------------------------


def sim_device(name: str, interval: str, flag: Path, *, points: int = 3) -> dict[str, Any]:
    """A simulated device entry: a counter, a sine, random values; it fails while ``flag`` exists."""
    kinds = ("counter", "sine", "random")
    return {
        "name": name, "driver": "simulated", "interval": interval, "fail_flag": str(flag),
        "points": [{"name": f"p{i}", "signal": kinds[i % 3], "period": "5s", **({"unit": "V"} if i == 2 else {})}
                   for i in range(points)],
    }


def readings_by_key(messages: Iterable[Received]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Every reading that arrived, keyed by (device, seq), each copy kept (duplicates after a failure)."""
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for doc in telemetry(messages):
        for reading in doc["readings"]:
            out.setdefault((doc["device"], reading["seq"]), []).append(reading)
    return out


def assert_accounted(messages: Iterable[Received], last: dict[str, int], evicted: int = 0) -> dict[str, set[int]]:
    """Every seq 1..last[device] arrived, except at most ``evicted`` in all; per device the first
    arrivals come in seq order, and the copies of one seq are identical. Returns the missing seqs."""
    messages = list(messages)
    by_key = readings_by_key(messages)
    for key, copies in by_key.items():
        assert all(c == copies[0] for c in copies), f"{key} was published with different content: {copies}"
    missing: dict[str, set[int]] = {}
    docs = telemetry(messages)
    for device, n in last.items():
        firsts = first_arrivals(r["seq"] for doc in docs if doc["device"] == device for r in doc["readings"])
        assert firsts == sorted(firsts), f"{device}: readings arrived out of seq order"
        assert not [s for s in firsts if s > n], f"{device}: seqs above the last committed one ({n})"
        missing[device] = set(range(1, n + 1)) - set(firsts)
    lost = sum(len(m) for m in missing.values())
    assert lost <= evicted, f"{lost} readings missing but only {evicted} counted as evicted: " + ", ".join(
        f"{d}: {_ranges(m)}" for d, m in missing.items() if m)
    return missing


def _ranges(seqs: set[int]) -> str:
    """``{1, 2, 3, 7}`` -> ``"1-3, 7"``."""
    runs: list[list[int]] = []
    for seq in sorted(seqs):
        if runs and runs[-1][1] == seq - 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


class Arrivals:
    """The distinct seqs per device that reached a subscriber, updated incrementally (a predicate
    for ``Subscriber.wait_for`` that stays cheap over hundreds of thousands of readings)."""

    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = {}
        self._done = 0

    def update(self, messages: list[Received]) -> Arrivals:
        for doc in telemetry(messages[self._done:]):
            self.seen.setdefault(doc["device"], set()).update(r["seq"] for r in doc["readings"])
        self._done = len(messages)
        return self

    def missing(self, last: dict[str, int]) -> int:
        """How many of the seqs 1..last[device] have not arrived yet, in all (``last`` being the
        last seqs committed: none above arrives; ``assert_accounted`` checks that)."""
        return sum(max(0, n - len(self.seen.get(dev, ()))) for dev, n in last.items())

    def complete(self, last: dict[str, int], evicted: int = 0) -> Callable[[list[Received]], bool]:
        """A predicate: all of 1..last[device] arrived, but for at most ``evicted`` readings."""
        return lambda messages: self.update(messages).missing(last) <= evicted
