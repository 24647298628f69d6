"""The steps of one measured run of `gateway bench`, shared by every scenario.

A run is one gateway process, its subscriber and the device groups it polls (``Run``).
``RunSteps.open_run`` sets one up; ``steady`` takes it through the usual course: start, first
reading, warm-up, a measured window (``measure``: the subscriber's count, the gateway's CPU, its
status), then ``finish``: make every device fail, let the buffer drain, and check by seq that every
committed reading arrived. The scenarios (gateway.bench.main, gateway.bench.drain) compose these.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.bench.groups import TOPIC_PREFIX, Group, bench_config
from gateway.bench.metrics import Mark, Window, self_cpu, window_figures, wire_figures
from gateway.bench.report import Progress
from gateway.bench.run import LOOPBACK, BenchError, GatewayProcess, cpu_seconds, device_totals
from gateway.bench.subscriber import BenchSubscriber

if TYPE_CHECKING:
    from gateway.bench.main import BenchOptions

STATUS_EVERY = 5.0  # seconds between status requests in a measuring window (each costs the gateway CPU)
STALL = 30.0  # seconds without progress after which a waiting step gives up


@dataclass
class Run:
    """One gateway process with its subscriber and the device groups it polls."""

    name: str
    gw: GatewayProcess
    sub: BenchSubscriber
    groups: list[Group]
    result: dict[str, Any] = field(default_factory=dict)


class RunSteps:
    """Sets up runs against the bench's broker and takes them through their steps, showing progress."""

    def __init__(self, opts: BenchOptions, progress: Progress) -> None:
        self.opts = opts
        self.progress = progress
        self.tmp = Path()  # the bench's temporary directory, once entered
        self.host, self.port = opts.broker or (LOOPBACK, 0)
        self.broker: subprocess.Popen[bytes] | None = None  # the private broker, if the bench started one
        self._shown, self._what = 0.0, ""

    @contextlib.contextmanager
    def open_run(self, name: str, groups: list[Group], encoding: str, *, port: int | None = None,
                 subscribe: bool = True, mqtt: dict[str, Any] | None = None,
                 sub_on: list[tuple[str, int]] | None = None,
                 web: dict[str, Any] | None = None) -> Iterator[Run]:
        """A gateway (not started) for ``groups`` and a subscriber (started unless ``subscribe`` is False)
        on the bench's broker, or on every broker of ``sub_on``; ``web``: the gateway's web section
        (the technician's page)."""
        workdir = self.tmp / f"{name}-{uuid.uuid4().hex[:6]}"
        workdir.mkdir(parents=True)
        for group in groups:
            group.revive()
        gateway_id = f"bench-{name}-{workdir.name[-6:]}"
        port = self.port if port is None else port
        config = bench_config(gateway_id=gateway_id, data_dir=workdir / "data", host=self.host, port=port,
                              encoding=encoding, commit_interval=self.opts.commit_interval, groups=groups,
                              mqtt=mqtt)
        (sub_host, sub_port), *also = sub_on or [(self.host, port)]
        sub = BenchSubscriber(sub_host, sub_port, TOPIC_PREFIX, gateway_id, also=tuple(also))
        if web is not None:
            config["web"] = web
        run = Run(name, GatewayProcess(workdir, config), sub, groups)
        run.result.update(_describe(groups, encoding, self.opts.commit_interval))
        try:
            if subscribe:
                run.sub.start()
            yield run
        finally:
            run.gw.close()
            run.sub.close()

    def steady(self, name: str, groups: list[Group], encoding: str, window: float,
               mqtt: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start, warm up, measure a window of ``window`` seconds, then stop and verify."""
        with self.open_run(name, groups, encoding, mqtt=mqtt) as run:
            ready = run.gw.start().wait_ready()
            self.wait_first(run)
            run.result.update(ready_s=ready, first_reading_s=run.sub.first_arrival - run.gw.spawned_at)
            self.sleep(run, "warming up", self.opts.warmup)
            run.result.update(window_figures(self.measure(run, window), sum(g.rate for g in groups)))
            run.result["latency_ms"] = run.sub.latency_ms()
            self.finish(run)
        return run.result

    def measure(self, run: Run, seconds: float) -> Window:
        """Sample a window of ``seconds``: the subscriber's count every 20 ms, the gateway's CPU every
        100 ms (from /proc: free for the gateway), its status every STATUS_EVERY s (that costs it a
        fraction of a millisecond each). Latencies are counted from the start of the window.
        """
        window = Window(marks=[self.mark(run)])
        run.sub.reset_latency()
        start = window.marks[0].sub.t
        end, next_cpu, next_mark = start + seconds, start, start + STATUS_EVERY
        while (now := time.monotonic()) < end:
            snap = run.sub.snapshot()
            window.arrivals.append((snap.t, snap.distinct))
            if now >= next_cpu:
                sample = run.gw.sample()
                window.cpu.append((sample.t, sample.cpu_s))
                next_cpu += 0.1
            if now >= next_mark:
                window.marks.append(self.mark(run))
                next_mark += STATUS_EVERY
            self.tick(run, "measuring", f"{end - now:.0f} s left")
            time.sleep(0.02)
        last = self.mark(run)
        window.marks.append(last)
        window.arrivals.append((last.sub.t, last.sub.distinct))
        window.cpu.append((last.proc.t, last.proc.cpu_s))
        return window

    def mark(self, run: Run) -> Mark:
        """Count everything now: the status, the process, the subscriber, the broker, this process."""
        status = run.gw.status()
        proc = run.gw.sample()
        snap = run.sub.snapshot()
        buffer = status.get("buffer", {})
        acked = int(status.get("broker", {}).get("readings_sent", 0))
        return Mark(proc, device_totals(status, run.groups[0].points), acked, int(buffer.get("pending", 0)),
                    int(buffer.get("evicted", 0)), snap, self._broker_cpu(), self_cpu())

    def _broker_cpu(self) -> float | None:
        if self.broker is None or self.broker.poll() is not None:
            return None
        return cpu_seconds(self.broker.pid)

    def wait_first(self, run: Run, timeout: float | None = None) -> None:
        """Wait for the first telemetry message at the subscriber."""
        deadline = time.monotonic() + (timeout or 30.0 + 2 * self.opts.commit_interval)
        while run.sub.first_arrival is None:
            if time.monotonic() > deadline:
                raise BenchError(f"{run.name}: no reading reached the subscriber; the gateway log ends:\n"
                                 f"{run.gw.log_tail()}")
            self.tick(run, "waiting for the first reading")
            time.sleep(0.005)

    def sleep(self, run: Run, what: str, seconds: float) -> None:
        """Sleep ``seconds`` showing progress (and failing at once if the gateway dies)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.tick(run, what, f"{left:.0f} s left")
            time.sleep(min(left, 0.05))

    def tick(self, run: Run, what: str, detail: str = "") -> None:
        """Check the gateway is alive and show the progress line (at most 4 times a second)."""
        run.gw.check_alive()
        now = time.monotonic()
        if now - self._shown >= 0.25 or what != self._what:
            self._shown, self._what = now, what
            delivered = f"{run.sub.snapshot().distinct:,} delivered"
            self.progress.step(f"{run.name}: {what}", f"{detail}, {delivered}" if detail else delivered)

    def finish(self, run: Run) -> None:
        """Stop the devices, let the buffer drain, check every seq arrived, stop the gateway."""
        produced, evicted = self._settle(run)
        self._catch_up(run, produced)
        verdict = run.sub.tally(produced)
        run.result.update(wire_figures(run.sub.snapshot()))
        usage = run.gw.stop()
        total = max(verdict["produced"], 1)
        run.result.update(verdict)
        run.result.update(
            evicted=evicted,
            decode_errors=len(run.sub.errors),
            gateway_warnings=run.gw.warnings(),
            gateway_exit=usage.exit_code,
            peak_rss_bytes=usage.peak_rss,
            cpu_s_total=usage.cpu_s,
            cpu_us_per_reading_run=usage.cpu_s / total * 1e6,
            disk_bytes_total=usage.write_bytes,
            disk_bytes_per_reading=usage.write_bytes / total,
        )
        run.result["ok"] = (verdict["missing"] == 0 and verdict["extra"] == 0 and evicted == 0
                            and not run.sub.errors and usage.exit_code == 0
                            and verdict["delivered"] == verdict["produced"])

    def _settle(self, run: Run) -> tuple[dict[str, int], int]:
        """Make every device fail; wait until all are failing and nothing is pending.

        Returns each device's last committed seq, and the buffer's evicted count.
        """
        run.gw.devices_failing()
        for group in run.groups:
            group.fail()
        last, since = -1, time.monotonic()
        while True:
            status = run.gw.status()
            pending = int(status["buffer"]["pending"])
            if pending == 0 and all(d["state"] == "error" for d in status["devices"].values()):
                break
            if pending != last:
                last, since = pending, time.monotonic()
            elif time.monotonic() - since > STALL:
                raise BenchError(f"{run.name}: the buffer stopped draining ({pending:,} readings pending)")
            self.tick(run, "stopping the devices, draining the buffer", f"{pending:,} pending")
            time.sleep(0.1)
        return {name: int(d["seq"]) for name, d in status["devices"].items()}, int(status["buffer"]["evicted"])

    def _catch_up(self, run: Run, produced: dict[str, int]) -> None:
        """Wait until the subscriber has every produced seq, or got nothing new for 10 s."""
        total = sum(produced.values())
        last, since = -1, time.monotonic()
        while (got := run.sub.tally(produced)["delivered"]) < total:
            if got != last:
                last, since = got, time.monotonic()
            elif time.monotonic() - since > 10.0:
                return  # the tally will show what is missing
            self.tick(run, "waiting for the subscriber to catch up", f"{total - got:,} to go")
            time.sleep(0.05)


def _describe(groups: list[Group], encoding: str, commit_interval: float) -> dict[str, Any]:
    return {
        "devices": sum(g.count for g in groups),
        "points_per_device": groups[0].points,
        "groups": [{"devices": g.count, "points": g.points, "interval_s": g.interval, "driver": g.driver}
                   for g in groups],
        "offered_per_s": sum(g.rate for g in groups),
        "encoding": encoding,
        "commit_interval_s": commit_interval,
    }
