"""The bench's whole-run peak RSS is the gateway's own, not the size of the process that spawned it."""

from __future__ import annotations

from pathlib import Path

from gateway.bench.groups import DeviceGroup, bench_config
from gateway.bench.run import GatewayProcess
from tests.support.broker import Mosquitto

MiB = 2**20
BALLAST = 300 * MiB  # the spawning process, grown far past any gateway of one device


def test_the_peak_rss_is_the_gateways_own_not_the_benchs(tmp_path: Path, mosquitto: Mosquitto) -> None:
    ballast = bytearray(BALLAST)
    ballast[::4096] = b"\x01" * (BALLAST // 4096)  # every page touched: resident in this process
    group = DeviceGroup("dev", 1, 1, 1.0, ("counter",), tmp_path / "stop.flag")
    config = bench_config(gateway_id="bench-rss", data_dir=tmp_path / "data", host=mosquitto.host,
                          port=mosquitto.port, encoding="cbor", commit_interval=1.0, groups=[group])
    gw = GatewayProcess(tmp_path, config)
    try:
        gw.start().wait_ready()
        sampled = gw.sample().peak_rss  # VmHWM: the gateway's own mm, started afresh at exec
        usage = gw.stop()
    finally:
        gw.close()
    assert usage.exit_code == 0
    assert 10 * MiB < sampled <= usage.peak_rss < BALLAST // 2, (sampled, usage.peak_rss)
    assert len(ballast) == BALLAST  # kept alive (and resident) until the gateway was spawned and stopped
