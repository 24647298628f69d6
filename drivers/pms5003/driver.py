"""The pms5003 driver: Plantower PMS5003 / PMS7003 particulate sensors on a serial port.

Active mode (the sensor's default) streams a frame every 0.2-2.3 s and each poll reports the
aggregate since the previous one; passive mode asks for one frame per poll. See README.md.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel

from drivers.pms5003.protocol import (
    DEFAULT_POINTS,
    FIELDS,
    READ_PASSIVE,
    SET_ACTIVE,
    SET_PASSIVE,
    UNITS,
    Pms5003Parser,
)
from drivers.serialio.device import SerialDriver
from drivers.serialio.settings import FrameSensorOptions
from gateway.driver import DeviceInfo
from gateway.model import PointSet

PointName = Literal[FIELDS]  # type: ignore[valid-type]

DEFAULT_TIMEOUT = 2.0  # passive mode: seconds to wait for the frame after the read command


class Pms5003Config(FrameSensorOptions):
    """A pms5003 device entry (the keys other than name, driver, interval, enabled)."""

    QUERY_MODE: ClassVar[str] = "passive"
    mode: Literal["active", "passive"] = "active"
    points: tuple[PointName, ...] = DEFAULT_POINTS

class Pms5003Driver(SerialDriver):
    """PM1.0 / PM2.5 / PM10 (µg/m³, atmospheric and CF=1) and particle counts per 0.1 L.

    Opening the port sends the mode command (a sensor keeps a mode set earlier until power
    off, so active mode is asked for too). ``counters``: see ``SerialDriver``.
    After close, poll raises DriverError.
    """

    Config: ClassVar[type[BaseModel]] = Pms5003Config

    def __init__(self, config: Pms5003Config, device: DeviceInfo) -> None:
        passive = config.mode == "passive"
        super().__init__(
            device,
            connection=config.connection,
            parser=Pms5003Parser(),
            points=PointSet(names=tuple(config.points), units=tuple(UNITS[p] for p in config.points)),
            select=[FIELDS.index(p) for p in config.points],
            numeric=[True] * len(config.points),
            aggregate=config.aggregate,
            stale_after=config.stale_after,
            query=READ_PASSIVE if passive else None,
            timeout=config.timeout or DEFAULT_TIMEOUT,
            setup=[SET_PASSIVE if passive else SET_ACTIVE],
        )
