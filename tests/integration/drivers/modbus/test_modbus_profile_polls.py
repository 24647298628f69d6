"""Each shipped profile drives a simulated device built from the same register map, over RTU.

The simulated device is made from the profile file itself (read here with PyYAML, encoded with
the test server's own encoder), so the test checks the driver's reading of the map, not the
map against itself through the driver's code.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.profiles import SHIPPED_DIR
from gateway.driver import DeviceInfo, SharedPool
from tests.support.modbus_server import ModbusTestServer, encode_registers
from tests.support.serial_pty import SerialPty

pytestmark = pytest.mark.integration

PROFILES = sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))
UNIT = 7


def sample(point: dict[str, Any], order: str, i: int) -> tuple[list[int], Any]:
    """Registers a device would send for point ``point`` (the i-th), and the value expected."""
    type_ = point.get("type", "uint16")
    mapping = point.get("value_map")
    if mapping:
        raw = sorted(mapping)[i % len(mapping)]
        return encode_registers(raw, type_, order), mapping[raw]
    raw: float | int
    if type_.startswith("float"):
        raw = 100.25 + i  # exact in float32
    elif type_.startswith("u"):
        raw = 1000 + i
    else:
        raw = -(100 + i)
    scale, offset = point.get("scale", 1), point.get("offset", 0)
    expected = raw * scale + offset if (scale, offset) != (1, 0) else raw
    return encode_registers(raw, type_, point.get("byte_order", order)), pytest.approx(expected)


@pytest.mark.parametrize("name", PROFILES)
async def test_profile_polls_a_device_built_from_its_map(name: str, pty: SerialPty) -> None:
    profile = yaml.safe_load((SHIPPED_DIR / f"{name}.yaml").read_text())
    order = profile.get("byte_order", "ABCD")
    server = ModbusTestServer(units=(UNIT,), transport="rtu", serial_port=str(pty.a),
                              holding=[(0, 1000)], input=[(0, 1000)])
    await server.start()
    driver = None
    try:
        expected = []
        for i, point in enumerate(profile["points"]):
            registers, value = sample(point, order, i)
            await server.set_registers(point["table"], point["address"], registers, unit=UNIT)
            expected.append(value)
        config = ModbusConfig.model_validate({
            "profile": name,
            "connection": {"transport": "rtu", "serial_port": str(pty.b), "unit_id": UNIT, "timeout": 0.5},
        })
        driver = ModbusDriver(config, DeviceInfo(name=name, interval=1.0, shared=SharedPool()))

        result = await driver.poll()

        assert result.errors is None
        assert result.values == expected
        assert driver.points.names == tuple(p["name"] for p in profile["points"])
        assert driver.points.units == tuple(p.get("unit") for p in profile["points"])
        assert len(server.requests) == len(driver.blocks) < len(profile["points"])  # coalesced
    finally:
        if driver is not None:
            await driver.close()
        await server.stop()
