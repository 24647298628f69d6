"""What the page's tests against a Modbus device share: a quiet pymodbus and a server on loopback
with a writable setpoint (holding 10 = 200, i.e. 20.0 degC) and a flow (holding 20 = 7)."""

from __future__ import annotations

import logging

import pytest

from tests.support.modbus_server import ModbusTestServer, StartModbus


@pytest.fixture(autouse=True)
def quiet_pymodbus() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@pytest.fixture
async def server(start_modbus: StartModbus) -> ModbusTestServer:
    srv = await start_modbus(holding=[(0, 100)])
    await srv.set_registers("holding", 10, [200])
    await srv.set_registers("holding", 20, [7])
    return srv
