"""The devices of a `gateway bench` run and the gateway.yaml that polls them.

A run polls one or more groups of devices (``Group``): simulated ones here (``DeviceGroup``), a
Modbus TCP device served by the bench in gateway.bench.modbus. Every group can be made to fail at
the end of a run, so the buffer drains and what arrived can be checked by seq.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

TOPIC_PREFIX = "bench"
SIGNALS = ("counter", "sine", "random")


class Group(Protocol):
    """What the bench needs of a group of devices: their gateway.yaml entries, and a way to make
    every one of them fail (``fail``) or answer again (``revive``), so the buffer can be drained
    and checked at the end of a run."""

    driver: ClassVar[str]

    @property
    def count(self) -> int: ...

    @property
    def points(self) -> int: ...

    @property
    def interval(self) -> float: ...

    @property
    def names(self) -> list[str]: ...

    @property
    def rate(self) -> float: ...

    def entries(self) -> list[dict[str, Any]]: ...

    def fail(self) -> None: ...

    def revive(self) -> None: ...


class GroupShape:
    """What every device group has: ``count`` devices named ``prefix`` + 3 digits, ``points`` points
    each, polled every ``interval`` seconds."""

    __slots__ = ()
    prefix: str
    count: int
    points: int
    interval: float

    @property
    def names(self) -> list[str]:
        """The device names: ``prefix`` and a 3-digit number."""
        return [f"{self.prefix}{i:03d}" for i in range(self.count)]

    @property
    def rate(self) -> float:
        """Readings offered per second."""
        return self.count * self.points / self.interval


@dataclass(frozen=True, slots=True)
class DeviceGroup(GroupShape):
    """``count`` simulated devices of ``points`` points each, polled every ``interval`` seconds.

    Every device of the group stops answering while ``fail_flag`` exists.
    """

    driver: ClassVar[str] = "simulated"
    prefix: str
    count: int
    points: int
    interval: float
    signals: tuple[str, ...]
    fail_flag: Path
    decimals: int = 6  # resolution of the sine and random values

    def entries(self) -> list[dict[str, Any]]:
        """The group's device entries for gateway.yaml."""
        points = [_point(i, self.signals[i % len(self.signals)], self.decimals) for i in range(self.points)]
        return [{"name": name, "driver": self.driver, "interval": self.interval, "fail_flag": str(self.fail_flag),
                 "points": points} for name in self.names]

    def fail(self) -> None:
        """Make every device of the group stop answering (create the fail flag)."""
        self.fail_flag.touch()

    def revive(self) -> None:
        """Make the devices answer again (remove the fail flag)."""
        self.fail_flag.unlink(missing_ok=True)


def _point(i: int, signal: str, decimals: int = 6) -> dict[str, Any]:
    point: dict[str, Any] = {"name": f"p{i:03d}", "signal": signal}
    if signal == "sine":
        point.update(period=30.0 + i % 17, amplitude=10.0, offset=20.0, decimals=decimals)
    elif signal == "random":
        point.update(amplitude=10.0, offset=20.0, decimals=decimals)
    return point


def bench_config(*, gateway_id: str, data_dir: Path, host: str, port: int, encoding: str,
                 commit_interval: float, groups: list[Group], mqtt: dict[str, Any] | None = None) -> dict[str, Any]:
    """A gateway.yaml (as a dict) for ``groups`` against ``host:port``, data in ``data_dir``;
    ``mqtt`` adds to its mqtt section (with ``servers`` in it, ``host`` and ``port`` are left out)."""
    where = {} if mqtt and "servers" in mqtt else {"host": host, "port": port}
    return {
        "gateway": {"id": gateway_id, "data_dir": str(data_dir)},
        "mqtt": {**where, "topic_prefix": TOPIC_PREFIX, "encoding": encoding, **(mqtt or {})},
        "buffer": {"max_mb": 1024, "commit_interval": commit_interval},
        "devices": [entry for group in groups for entry in group.entries()],
    }
