"""The serial_line driver: sensors that talk ASCII lines on a serial port (weather stations,
level sensors, GPS receivers, anything with a terminal-style protocol).

``mode: stream`` (the device sends on its own, each poll reports the aggregate since the last
one) or ``mode: query`` (each poll sends ``command`` and waits ``timeout`` for the answer).
Lines are parsed by a regex with named groups or by a delimiter and field positions; a line that
does not parse or fails its checksum is counted and dropped. See README.md.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from drivers.serial_line.config import SerialLineConfig
from drivers.serial_line.parser import LineParser
from drivers.serialio.device import SerialDriver
from gateway.driver import DeviceInfo
from gateway.model import PointSet


class SerialLineDriver(SerialDriver):
    """One ASCII device on its own serial port.

    ``counters``: the line parser's ``lines``, ``bad_lines``, ``bad_checksum``, ``bad_values``,
    ``ignored``, ``garbage_bytes``, plus ``bytes``, ``opens`` and ``port_lost``.
    After close, poll raises DriverError.
    """

    Config: ClassVar[type[BaseModel]] = SerialLineConfig

    def __init__(self, config: SerialLineConfig, device: DeviceInfo) -> None:
        points = config.points
        query = config.command.encode(config.encoding) if config.command is not None else None
        super().__init__(
            device,
            connection=config.connection,
            parser=LineParser(config),
            points=PointSet(names=tuple(p.name for p in points), units=tuple(p.unit for p in points)),
            select=range(len(points)),
            numeric=[p.type in ("float", "int") for p in points],
            aggregate=config.aggregate,
            stale_after=config.stale_after,
            query=query,
            timeout=config.query_timeout,
        )
