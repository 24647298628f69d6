"""The serial drivers against emulated sensors on socat pty pairs, and end to end through the daemon.

The driver opens one end of the pair (``pty.b``), the emulator writes real frames into the other
(``pty.a``). Stopping socat is an unplugged USB adapter: both links vanish; starting it again with
the same links is the adapter coming back.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.pms5003.driver import Pms5003Config, Pms5003Driver
from drivers.sds011.driver import Sds011Config, Sds011Driver
from drivers.serial_line.config import SerialLineConfig
from drivers.serial_line.driver import SerialLineDriver
from drivers.serialio.device import SerialDriver
from gateway.driver import DeviceInfo, DriverError
from tests.support.broker import Received, telemetry
from tests.support.emulators import (
    LineEmulator,
    Pms5003Emulator,
    PtyPeer,
    Sds011Emulator,
    Streamer,
    nmea,
    pms_frame,
    sds_frame,
)
from tests.support.gateway_proc import GatewayProcess, base_config, write_config
from tests.support.serial_pty import SerialPty
from tests.support.wait import wait_until_async

pytestmark = pytest.mark.integration

PMS = [11, 22, 33, 12, 23, 34, 3000, 900, 200, 40, 5, 1]
MakeDriver = Callable[..., Awaitable[Any]]


@pytest.fixture
async def peers() -> AsyncIterator[Callable[[SerialPty], PtyPeer]]:
    made: list[PtyPeer] = []

    def make(pair: SerialPty) -> PtyPeer:
        peer = PtyPeer(pair.a).attach()
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


@pytest.fixture
async def make_driver(pty: SerialPty) -> AsyncIterator[MakeDriver]:
    """``await make_driver(DriverClass, interval=1.0, open_=True, **options)`` on ``pty.b``."""
    made: list[SerialDriver] = []
    config_of = {Pms5003Driver: Pms5003Config, Sds011Driver: Sds011Config, SerialLineDriver: SerialLineConfig}

    async def make(cls: type[SerialDriver], *, interval: float = 1.0, open_: bool = True, **options: Any) -> Any:
        config = config_of[cls](connection={"serial_port": str(pty.b)}, **options)
        driver = cls(config, DeviceInfo(name="dev", interval=interval))
        made.append(driver)
        if open_:
            await driver.open()
        return driver

    before = asyncio.all_tasks()
    yield make
    for driver in made:
        await driver.close()
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
    assert not leaked, f"tasks left running: {leaked}"


async def frames_in(driver: SerialDriver, n: int, counter: str = "frames") -> None:
    await wait_until_async(lambda: driver.counters[counter] >= n, what=f"{n} {counter}")


# -- pms5003 --------------------------------------------------------------------------------------------


async def test_pms5003_clean_frames_last_and_mean(make_driver: MakeDriver, pty: SerialPty, peers: Any) -> None:
    last = await make_driver(Pms5003Driver, points=["pm2_5", "pm10", "particles_0_3"])
    mean = await make_driver(Pms5003Driver, open_=False, aggregate="mean", points=["pm2_5"])
    peer = peers(pty)
    for k in range(3):
        peer.write(pms_frame([v + 10 * k for v in PMS]))
    await frames_in(last, 3)
    result = await last.poll()
    assert result.values == [43, 54, 3020] and result.errors is None
    assert last.counters["frames"] == 3 and last.counters["garbage_bytes"] == 0
    await last.close()
    await mean.open()
    for k in range(3):
        peer.write(pms_frame([v + 10 * k for v in PMS]))
    await frames_in(mean, 3)
    assert (await mean.poll()).values == [33.0]


async def test_pms5003_frames_split_across_writes(make_driver: MakeDriver, pty: SerialPty, peers: Any) -> None:
    driver = await make_driver(Pms5003Driver)
    peer = peers(pty)
    data = pms_frame(PMS) * 2
    sent = 0
    for cut in (1, 2, 5, 17, 31, 33, 40, 64):  # each piece is read alone: the next waits for it to arrive
        peer.write(data[sent:cut])
        sent = cut
        await wait_until_async(lambda n=cut: driver.counters["bytes"] >= n, what="bytes read")
    assert driver.counters["frames"] == 2
    assert (await driver.poll()).values == [12, 23, 34]


async def test_pms5003_garbage_and_bad_checksums(make_driver: MakeDriver, pty: SerialPty, peers: Any) -> None:
    driver = await make_driver(Pms5003Driver)
    peer = peers(pty)
    bad = bytearray(pms_frame([99] * 12))
    bad[-1] ^= 0xFF
    peer.write(b"\x00\x13\x42garbage" + bytes(bad) + pms_frame(PMS) + b"\xff\xfe" + pms_frame(PMS)[:9])
    await frames_in(driver, 1)
    await wait_until_async(lambda: driver.counters["bytes"] >= 10 + 32 + 32 + 2 + 9)
    assert (await driver.poll()).values == [12, 23, 34]
    counters = driver.counters
    assert counters["frames"] == 1 and counters["bad_checksum"] == 1
    assert counters["garbage_bytes"] == 10 + 32 + 2


async def test_pms5003_first_poll_waits_for_the_first_frame(
    make_driver: MakeDriver, pty: SerialPty, peers: Any
) -> None:
    driver = await make_driver(Pms5003Driver)
    peer = peers(pty)
    poll = asyncio.create_task(driver.poll())
    await asyncio.sleep(0)  # let the poll start waiting
    assert not poll.done()
    peer.write(pms_frame(PMS))
    assert (await asyncio.wait_for(poll, 5)).values == [12, 23, 34]


async def test_pms5003_silent_line_and_wrong_baud_rate_are_told_apart(
    make_driver: MakeDriver, pty: SerialPty, peers: Any
) -> None:
    silent = await make_driver(Pms5003Driver, stale_after="300ms")
    with pytest.raises(DriverError, match=r"no valid data on .*ttyB for 0\.[34]s \(nothing received since"):
        await silent.poll()
    await silent.close()
    noisy = await make_driver(Pms5003Driver, stale_after="300ms")
    peers(pty).write(bytes(range(0x50, 0x90)))  # what a wrong baud rate looks like: bytes, no frames
    with pytest.raises(DriverError, match=r"since the port was opened: 64 bytes, 64 garbage bytes"):
        await noisy.poll()


async def test_pms5003_stale_after(make_driver: MakeDriver, pty: SerialPty, peers: Any) -> None:
    driver = await make_driver(Pms5003Driver, stale_after="300ms")
    peers(pty).write(pms_frame(PMS))
    await frames_in(driver, 1)
    got_at = time.monotonic()
    assert (await driver.poll()).values == [12, 23, 34]
    assert (await driver.poll()).values == [12, 23, 34]  # nothing new yet: the last value, still fresh
    await wait_until_async(lambda: time.monotonic() - got_at > 0.3, what="stale_after passed")
    stale = r"no valid data on .*ttyB for 0\.[3-9]s \(since the port was opened: 32 bytes, 1 frames\)"
    with pytest.raises(DriverError, match=stale):
        await driver.poll()


async def test_pms5003_passive_mode(make_driver: MakeDriver, pty: SerialPty, peers: Any) -> None:
    emulator = Pms5003Emulator(peers(pty), PMS)
    driver = await make_driver(Pms5003Driver, mode="passive", timeout="1s")
    await wait_until_async(lambda: emulator.passive, what="passive mode set")
    assert (await driver.poll()).values == [12, 23, 34]
    emulator.values = [v + 1 for v in PMS]
    assert (await driver.poll()).values == [13, 24, 35]
    assert emulator.commands == [bytes.fromhex("424de100000170")] + [bytes.fromhex("424de200000171")] * 2
    assert driver.counters["replies"] == 1  # the mode change acknowledgement


async def test_pms5003_passive_without_answer(make_driver: MakeDriver, pty: SerialPty, peers: Any) -> None:
    peers(pty)  # a peer that never answers
    driver = await make_driver(Pms5003Driver, mode="passive", timeout="200ms")
    with pytest.raises(DriverError, match=r"no valid answer on .*ttyB within 0.2s"):
        await driver.poll()


VANISH_CASES = {
    "pms5003": (Pms5003Driver, {}, lambda k: pms_frame([v * k for v in PMS]), lambda k: [12 * k, 23 * k, 34 * k]),
    "sds011": (Sds011Driver, {}, lambda k: sds_frame(1.5 * k, 2.5 * k), lambda k: [1.5 * k, 2.5 * k]),
    "serial_line": (SerialLineDriver, {"regex": r"^(?P<level>\d+)$", "points": [{"name": "level", "type": "int"}]},
                    lambda k: f"{100 * k}\r\n".encode(), lambda k: [100 * k]),
}


@pytest.mark.parametrize("case", sorted(VANISH_CASES))
async def test_port_vanishes_and_comes_back(case: str, make_driver: MakeDriver, pty: SerialPty, peers: Any) -> None:
    cls, options, send, expected = VANISH_CASES[case]
    driver = await make_driver(cls, **options)
    peers(pty).write(send(1))
    assert (await driver.poll()).values == expected(1)
    pty.stop()  # the USB adapter is pulled
    await wait_until_async(lambda: driver.counters["port_lost"] == 1, what="port loss noticed")
    with pytest.raises(DriverError, match=r"serial port .*ttyB is gone: device disconnected"):
        await driver.poll()
    await driver.close()  # what the scheduler does next, then open() with backoff
    with pytest.raises(DriverError, match=r"cannot open serial port .*ttyB: No such file or directory"):
        await driver.open()
    pty.start()  # plugged back in
    await driver.open()
    peers(pty).write(send(2))
    assert (await driver.poll()).values == expected(2)
    assert driver.counters["opens"] == 2


async def test_a_second_opener_is_refused(make_driver: MakeDriver) -> None:
    await make_driver(Pms5003Driver)
    second = await make_driver(Pms5003Driver, open_=False)
    with pytest.raises(DriverError, match=r"cannot open serial port .*ttyB: in use by another program"):
        await second.open()


# -- sds011 ---------------------------------------------------------------------------------------------


async def test_sds011_active_mode(make_driver: MakeDriver, pty: SerialPty, peers: Any) -> None:
    emulator = Sds011Emulator(peers(pty), 0, 0)
    driver = await make_driver(Sds011Driver, aggregate="max", points=["pm2_5", "pm10", "sensor_id"])
    await wait_until_async(lambda: len(emulator.commands) == 2, what="setup commands")
    assert [c[2:5] for c in emulator.commands] == [b"\x06\x01\x01", b"\x02\x01\x00"]  # work, active mode
    bad = bytearray(sds_frame(500, 500))
    bad[8] ^= 1
    frames = sds_frame(12.3, 45.6) + b"\x00\xaa" + bytes(bad) + sds_frame(7.5, 99.9)
    for k in range(0, len(frames), 7):  # 7-byte pieces: frames split across reads
        emulator.peer.write(frames[k:k + 7])
    await frames_in(driver, 2)
    result = await driver.poll()
    assert result.values == [12.3, 99.9, "A160"]
    assert driver.counters["bad_checksum"] == 1 and driver.counters["replies"] == 2


async def test_sds011_query_mode(make_driver: MakeDriver, pty: SerialPty, peers: Any) -> None:
    emulator = Sds011Emulator(peers(pty), 8.4, 15.2)
    driver = await make_driver(Sds011Driver, mode="query")
    await wait_until_async(lambda: emulator.query_mode, what="query mode set")
    assert (await driver.poll()).values == [8.4, 15.2]
    emulator.pm25 = 9.9
    assert (await driver.poll()).values == [9.9, 15.2]
    assert [c[2] for c in emulator.commands] == [6, 2, 4, 4]
    emulator.answer_queries = False
    driver._timeout = 0.2  # the emulated sensor stops answering; fail fast
    with pytest.raises(DriverError, match="no valid answer"):
        await driver.poll()


# -- serial_line ----------------------------------------------------------------------------------------

WEATHER = {
    "regex": r"^T=(?P<temp>-?\d+(\.\d+)?) H=(?P<hum>\d+) P=(?P<pres>\d+(\.\d+)?)$",
    "points": [{"name": "temp", "unit": "°C"}, {"name": "hum", "type": "int", "unit": "%"},
               {"name": "pres", "unit": "hPa"}],
}


async def test_serial_line_stream(make_driver: MakeDriver, pty: SerialPty, peers: Any) -> None:
    driver = await make_driver(SerialLineDriver, aggregate="max", **WEATHER)
    peer = peers(pty)
    peer.write(b"T=21.5 H=40 P=1013.2\r\nT=2")
    peer.write(b"2.5 H=41 P=1012.9\r\nbooting...\r\n\xff\xff\r\nT=20.0 H=39 P=1013.0\r\n")
    await frames_in(driver, 3, "lines")
    await frames_in(driver, 2, "bad_lines")
    assert (await driver.poll()).values == [22.5, 41, 1013.2]
    assert driver.counters["lines"] == 3 and driver.counters["bad_lines"] == 2


async def test_serial_line_query_with_nmea_checksum(make_driver: MakeDriver, pty: SerialPty, peers: Any) -> None:
    answers = iter([nmea("WX,1,21.5,40"), "$WX,1,99.9,99*00", nmea("WX,1,22.0,41")])
    emulator = LineEmulator(peers(pty), b"R\r\n", lambda: (next(answers) + "\r\n").encode())
    driver = await make_driver(
        SerialLineDriver, mode="query", command="R\\r\\n", timeout="300ms", checksum="nmea", delimiter=",",
        points=[{"name": "temp", "field": 2, "unit": "°C"}, {"name": "hum", "field": 3, "type": "int"}],
    )
    assert (await driver.poll()).values == [21.5, 40]
    with pytest.raises(DriverError, match="no valid answer"):  # the answer fails its checksum
        await driver.poll()
    assert driver.counters["bad_checksum"] == 1
    assert (await driver.poll()).values == [22.0, 41]
    assert emulator.seen == 3


# -- end to end: emulators -> `gateway run` -> broker ---------------------------------------------------

WX_LINE = b"T=21.5 H=40 P=1013.2\r\n"


def _latest(messages: list[Received], device: str) -> dict[str, Any]:
    """The newest value of each point of ``device`` (with its unit) in the telemetry received."""
    out: dict[str, Any] = {}
    for doc in telemetry(messages):
        if doc["device"] == device:
            out.update({r["point"]: (r["value"], r.get("unit")) for r in doc["readings"]})
    return out


def _status_with(messages: list[Received], predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    docs = [m.decoded() for m in messages if m.topic == "city/gw-test/status"]
    return next((d for d in reversed(docs) if "devices" in d and predicate(d["devices"])), None)


def _devices(tmp_path: Path, air: SerialPty, wx: SerialPty, data_dir: Path) -> list[dict[str, Any]]:
    return [
        {"name": "air", "driver": "pms5003", "interval": "500ms", "stale_after": "2s",
         "connection": {"serial_port": str(air.b)}, "points": ["pm1_0", "pm2_5", "pm10", "particles_0_3"]},
        {"name": "weather", "driver": "serial_line", "interval": "500ms", "aggregate": "mean",
         "connection": {"serial_port": str(wx.b), "baudrate": 4800}, **WEATHER},
        {"name": "health", "driver": "system", "interval": "1s", "path": str(data_dir),
         "points": ["load1", "mem_available", "disk_free", "uptime"]},
    ]


async def test_end_to_end_through_the_daemon(tmp_path: Path, mosquitto: Any, subscribe: Any, peers: Any) -> None:
    air, wx = SerialPty(tmp_path / "air").start(), SerialPty(tmp_path / "wx").start()
    data_dir = tmp_path / "data"
    config = base_config(data_dir, mosquitto.port, encoding="json")
    config["devices"] = _devices(tmp_path, air, wx, data_dir)
    gw = GatewayProcess(write_config(tmp_path / "gateway.yaml", config), data_dir)
    streamers = [Streamer(peers(air), lambda: pms_frame(PMS), 0.1).start(),
                 Streamer(peers(wx), lambda: WX_LINE, 0.1).start()]
    sub = subscribe()
    try:
        await asyncio.to_thread(gw.start)
        msgs = await sub.wait_for_async(lambda ms: {"air", "weather", "health"} <= {d["device"] for d in telemetry(ms)},
                                        timeout=20)
        assert _latest(msgs, "air") == {"pm1_0": (12, "µg/m³"), "pm2_5": (23, "µg/m³"), "pm10": (34, "µg/m³"),
                                        "particles_0_3": (3000, "#/0.1L")}
        assert _latest(msgs, "weather") == {"temp": (21.5, "°C"), "hum": (40, "%"), "pres": (1013.2, "hPa")}
        health = _latest(msgs, "health")
        assert health["uptime"][0] > 0 and health["uptime"][1] == "s" and health["mem_available"][0] > 0
        await asyncio.to_thread(gw.wait_status, lambda s: all(d["state"] == "ok" for d in s["devices"].values()))

        # The air sensor's USB adapter is pulled: the device goes to error with the reason, the others go on.
        await streamers[0].stop()
        air.stop()
        msgs = await sub.wait_for_async(
            lambda ms: _status_with(ms, lambda d: d["air"]["state"] == "error"), timeout=20)
        devices = _status_with(msgs, lambda d: d["air"]["state"] == "error")["devices"]
        # The first failure is the open port vanishing; retries then find no port file to open.
        assert re.search(r"serial port .*air/ttyB( is gone|: No such file)", devices["air"]["last_error"])
        assert devices["weather"]["state"] == "ok" and devices["health"]["state"] == "ok"
        assert re.search(r"device air lost: serial port .*air/ttyB is gone", gw.log())

        # Plugged back in: the scheduler's retry opens it again and the new values arrive.
        air.start()
        streamers.append(Streamer(peers(air), lambda: pms_frame([v * 2 for v in PMS]), 0.1).start())
        msgs = await sub.wait_for_async(lambda ms: _latest(ms, "air").get("pm2_5") == (46, "µg/m³"), timeout=30)
        assert await sub.wait_for_async(lambda ms: _status_with(ms, lambda d: d["air"]["state"] == "ok"
                                                                and d["air"]["last_error"] is None), timeout=20)
        assert "device air is back" in gw.log()
        assert await asyncio.to_thread(gw.terminate) == 0
    finally:
        for streamer in streamers:
            await streamer.stop()
        gw.cleanup()
        air.stop()
        wx.stop()
