"""The simulated driver: what a device of it costs in memory, and its random signal per device."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from drivers.simulated.driver import SimulatedConfig, SimulatedDriver
from gateway.driver import DeviceInfo, SharedPool

DEVICES = 200


def _drivers(signal: str, count: int, prefix: str = "dev") -> list[SimulatedDriver]:
    config = SimulatedConfig(points=[{"name": "p000", "signal": signal}])
    shared = SharedPool()
    return [SimulatedDriver(config, DeviceInfo(name=f"{prefix}{i:03d}", interval=1.0, shared=shared))
            for i in range(count)]


def test_a_device_without_random_points_costs_under_a_kilobyte() -> None:
    """A random generator's state is 2.5 KB; 1,000 one-point counters must not carry 1,000 of them."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = _drivers("counter", DEVICES)
        per_device = (tracemalloc.get_traced_memory()[0] - before) / DEVICES
    finally:
        tracemalloc.stop()
    assert len(kept) == DEVICES
    assert per_device < 1024, f"{per_device:.0f} bytes per simulated one-point device"


def test_random_values_follow_the_device_name() -> None:
    """Same name, same sequence (a rerun reproduces it); another name, another sequence."""
    first, again = _drivers("random", 1), _drivers("random", 1)
    other = _drivers("random", 1, prefix="other")

    async def three(driver: SimulatedDriver) -> list[float | None]:
        return [(await driver.poll()).values[0] for _ in range(3)]

    async def main() -> tuple[list[float | None], ...]:
        return tuple([await three(d[0]) for d in (first, again, other)])

    a, b, c = asyncio.run(main())
    assert a == b
    assert a != c
    assert all(v is not None and -0.5 <= v <= 0.5 for v in a)  # offset 0, amplitude 1
