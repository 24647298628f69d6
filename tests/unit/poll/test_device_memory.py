"""What a polled device costs in memory: 1,000 one-point devices must fit a small gateway's RAM.

Counted with tracemalloc from the device's config to its poll loop waiting for the next poll (the
config models, the driver, the task, its guard and its health), so a per-device cache or object added
later shows here before it shows in ``gateway bench --scenario many``'s peak RSS.
"""

from __future__ import annotations

import gc
import tracemalloc

from drivers.simulated.driver import SimulatedConfig, SimulatedDriver
from gateway.config.settings import DeviceSpec
from gateway.model import Batch
from gateway.poll.scheduler import Scheduler
from tests.support.wait import wait_until_async

DEVICES = 200
# Measured here: 7.9 KB per device before the simulated driver's and the guard's trims, 4.8 KB after.
BUDGET = 6144


def _spec(name: str) -> DeviceSpec:
    options = SimulatedConfig.model_validate({"points": [{"name": "p000", "signal": "counter"}]})
    return DeviceSpec(name=name, driver="simulated", interval=60.0, enabled=True, options=options)


async def test_a_one_point_device_with_its_poll_loop_costs_under_six_kilobytes() -> None:
    polled: set[str] = set()

    def sink(batch: Batch) -> None:
        polled.add(batch.device)

    sched = Scheduler(sink=sink, on_change=lambda: None)
    sched.add(_spec("warm"), SimulatedDriver)  # the first device's one-off costs (caches, code) are not a device's
    await wait_until_async(lambda: "warm" in polled)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(DEVICES):
            sched.add(_spec(f"dev{i:03d}"), SimulatedDriver)
        await wait_until_async(lambda: len(polled) == DEVICES + 1)  # each polled once, now waiting a minute
        gc.collect()
        per_device = (tracemalloc.get_traced_memory()[0] - before) / DEVICES
    finally:
        tracemalloc.stop()
        await sched.stop_all()
    assert per_device < BUDGET, f"{per_device:.0f} bytes per one-point device and its poll loop"
