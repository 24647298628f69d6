"""The sds011 driver: Nova Fitness SDS011 particulate sensors on a serial port.

Active mode (the factory default) streams one frame a second and each poll reports the
aggregate since the previous one; query mode asks for one frame per poll. See README.md.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel

from drivers.sds011.protocol import DEFAULT_POINTS, FIELDS, QUERY, SET_ACTIVE, SET_QUERY, UNITS, WORK, Sds011Parser
from drivers.serialio.device import SerialDriver
from drivers.serialio.settings import FrameSensorOptions
from gateway.driver import DeviceInfo
from gateway.model import PointSet

PointName = Literal[FIELDS]  # type: ignore[valid-type]

DEFAULT_TIMEOUT = 2.0  # query mode: seconds to wait for the data frame after the query command


class Sds011Config(FrameSensorOptions):
    """An sds011 device entry (the keys other than name, driver, interval, enabled)."""

    QUERY_MODE: ClassVar[str] = "query"
    mode: Literal["active", "query"] = "active"
    points: tuple[PointName, ...] = DEFAULT_POINTS

class Sds011Driver(SerialDriver):
    """PM2.5 and PM10 in µg/m³ (resolution 0.1), and the sensor's id if asked for.

    Opening the port wakes the sensor and sets its reporting mode (the sensor keeps a mode
    across power cycles, so active mode is set too). ``counters``: see ``SerialDriver``.
    After close, poll raises DriverError.
    """

    Config: ClassVar[type[BaseModel]] = Sds011Config

    def __init__(self, config: Sds011Config, device: DeviceInfo) -> None:
        query = config.mode == "query"
        super().__init__(
            device,
            connection=config.connection,
            parser=Sds011Parser(),
            points=PointSet(names=tuple(config.points), units=tuple(UNITS[p] for p in config.points)),
            select=[FIELDS.index(p) for p in config.points],
            numeric=[p != "sensor_id" for p in config.points],
            aggregate=config.aggregate,
            stale_after=config.stale_after,
            query=QUERY if query else None,
            timeout=config.timeout or DEFAULT_TIMEOUT,
            setup=[WORK, SET_QUERY if query else SET_ACTIVE],
        )
