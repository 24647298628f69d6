"""The drain scenario of `gateway bench`: a backlog built with the broker away, then drained.

The gateway starts pointed at a free port where nothing listens. "Filler" devices (the load
scenario's --devices x --points every --interval) build a backlog of --drain-readings readings,
then stop (their fail flag); the moderate devices (--devices x --points every second) poll all
along, through the outage and the drain. Then a broker is started on that port and the bench
times how long the subscriber takes to receive every reading of the backlog (each device's seqs
up to its last committed seq when the broker came up).

The subscriber can only subscribe once the broker is up, so the gateway might reach the broker
first and publish before the subscription exists; that run is detected (the gateway's status,
published before any telemetry, arrives as a retained message) and repeated.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway.bench.groups import DeviceGroup
from gateway.bench.run import BenchError, PortHold, private_broker

if TYPE_CHECKING:
    from gateway.bench.main import Bench
    from gateway.bench.metrics import Mark
    from gateway.bench.steps import Run

RECONNECT_WAIT = 90.0  # the publisher backs off up to 60 s (jittered) while the broker is away


def run_drain(bench: Bench) -> dict[str, Any] | None:
    """Run the drain scenario once; None if the gateway beat the subscriber to the broker."""
    from gateway.bench.main import MODERATE_INTERVAL

    opts = bench.opts
    hold = PortHold()  # nothing listens there, and no other process may take it meanwhile
    fill = bench.group("fill", opts.devices, opts.interval, flag="fill.flag")
    steady = bench.group("dev", opts.devices, MODERATE_INTERVAL)
    try:
        with bench.open_run("drain", [fill, steady], opts.encoding, port=hold.port, subscribe=False) as run:
            run.gw.start().wait_ready()
            fill_s = _fill(bench, run, opts.drain_readings)
            backlog = _stop_fillers(bench, run, fill)
            first = bench.mark(run)
            # Not waiting for the port: the subscriber's own connect loop (every 5 ms) is the quickest
            # to get in once it listens, which narrows the window in which the gateway could be first.
            with private_broker(bench.tmp / f"broker-{hold.port}", hold.port, wait=False) as broker:
                up = time.monotonic()
                run.sub.start(timeout=10)
                hold.release()
                if broker.poll() is not None:
                    raise BenchError(f"drain: mosquitto exited at once (status {broker.returncode})")
                bench.wait_first(run, timeout=RECONNECT_WAIT)
                if run.sub.status_was_retained:
                    return None
                drained = _wait_drained(bench, run, backlog)
                last = bench.mark(run)
                _figures(run, backlog, fill_s, up, drained, first, last, steady.rate)
                bench.finish(run)
    finally:
        hold.release()
    return run.result


def _fill(bench: Bench, run: Run, readings: int) -> float:
    """Wait until ``readings`` are pending (the broker is away); returns the seconds it took."""
    start = last_change = time.monotonic()
    last = -1
    while True:
        pending = int(run.gw.status()["buffer"]["pending"])
        if pending >= readings:
            return time.monotonic() - start
        if pending != last:
            last, last_change = pending, time.monotonic()
        elif time.monotonic() - last_change > 30.0:
            raise BenchError(f"drain: the backlog stopped growing at {pending:,} readings")
        bench.tick(run, "filling the backlog (broker away)", f"{pending:,} / {readings:,}")
        time.sleep(0.1)


def _stop_fillers(bench: Bench, run: Run, fill: DeviceGroup) -> dict[str, int]:
    """Stop the filler devices, wait until all they read is committed; every device's last seq."""
    fill.fail()
    names = set(fill.names)
    deadline = time.monotonic() + 30.0 + 5 * bench.opts.commit_interval
    while True:
        devices = run.gw.status()["devices"]
        fillers = [d for name, d in devices.items() if name in names]
        # Committed when a device's last seq covers every successful poll of it.
        if all(d["state"] == "error" and d["seq"] == d["polls"] * fill.points for d in fillers):
            return {name: int(d["seq"]) for name, d in devices.items()}
        if time.monotonic() > deadline:
            raise BenchError("drain: the filler devices' readings were not all committed in time")
        bench.tick(run, "stopping the filler devices")
        time.sleep(0.05)


def _wait_drained(bench: Bench, run: Run, backlog: dict[str, int]) -> float:
    """Wait until the subscriber has every seq of ``backlog``; returns that moment (monotonic)."""
    last, since = -1, time.monotonic()
    total = sum(backlog.values())
    while (missing := run.sub.tally(backlog)["missing"]) > 0:
        now = time.monotonic()
        if missing != last:
            last, since = missing, now
        elif now - since > 30.0:
            raise BenchError(f"drain: delivery stalled with {missing:,} backlog readings not received")
        bench.tick(run, "draining the backlog", f"{total - missing:,} / {total:,}")
        time.sleep(0.01)
    return time.monotonic()


def _figures(run: Run, backlog: dict[str, int], fill_s: float, up: float, drained: float,
             first: Mark, last: Mark, ongoing: float) -> None:
    """Put the drain's figures into ``run.result``."""
    arrived = run.sub.first_arrival or up
    drain_s = max(drained - arrived, 1e-9)
    total = sum(backlog.values())
    delivered = last.sub.distinct  # nothing arrived before the broker came up
    cpu = last.proc.cpu_s - first.proc.cpu_s
    run.result.update(
        backlog_readings=total,
        fill_s=fill_s,
        reconnect_s=arrived - up,
        drain_s=drain_s,
        drain_per_s=total / drain_s,
        delivered_per_s=delivered / max(last.sub.t - arrived, 1e-9),
        ongoing_per_s=ongoing,
        cpu_us_per_reading=cpu / max(delivered, 1) * 1e6,  # from the broker coming up to the drain's end
        overruns=last.totals["overruns"] - first.totals["overruns"],
    )
