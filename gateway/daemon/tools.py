"""The daemon's side of ``gateway read`` / ``gateway write``: control commands ``read`` and ``write``.

While the daemon runs it holds its serial ports (exclusively), so the tools ask it instead of
opening them: the request runs on the daemon's own driver instance and connection, in the turn
of the device's bus (``gateway.driver.SharedPool``), between two scheduled polls of that line, so
no two frames ever overlap on the wire. Requests and answers (one JSON object each, see ``control.py``)::

    {"cmd": "read", "device": "meter-1", "trace": true}
    -> {"ok": true, "report": {"points": [...], "error": null, "trace": [...]}}
    {"cmd": "write", "device": "meter-1", "point": "setpoint", "value": "21.5"}
    -> {"ok": true, "written": "holding 10 <- 00D7 (FC6)", "readback": {...point row...}}
    -> {"ok": false, "refused": true, "error": "point 'x' is not writable ..."}
    -> {"ok": false, "unknown_device": true, "error": "..."}   (the tool then opens the device itself)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from gateway.driver import DriverError, Inspection, PointRow, WriteRefused

log = logging.getLogger(__name__)


async def run_tool_command(tasks: Mapping[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """Answer a ``read`` or ``write`` request against the scheduler's device ``tasks``."""
    name = request.get("device")
    task = tasks.get(name) if isinstance(name, str) else None
    if task is None:
        return {"ok": False, "unknown_device": True, "error": f"device {name!r} is not polled by the running gateway"}
    lock = task.bus_lock if task.bus_lock is not None else contextlib.nullcontext()
    try:
        async with lock:
            if request.get("cmd") == "write":
                return await _write(task, request.get("point"), request.get("value"),
                                    str(request.get("via") or "the control socket"))
            return {"ok": True, "report": await _inspect(task, trace=bool(request.get("trace")))}
    except WriteRefused as exc:
        return {"ok": False, "refused": True, "error": str(exc)}
    except DriverError as exc:
        return {"ok": False, "error": str(exc) or "no response"}
    except Exception as exc:  # a driver's bug must not take the control socket down
        log.exception("device %s: %s request failed", name, request.get("cmd"))
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


async def _inspect(task: Any, *, trace: bool, points: list[str] | None = None) -> Inspection:
    driver = task.driver
    inspect = getattr(driver, "inspect", None)
    if inspect is not None:
        return await inspect(points=points, trace=trace)
    # A driver without inspect: a plain poll, if the scheduler has it open and working.
    if task.health.state != "ok":
        raise DriverError(f"device {task.spec.name!r} is not connected ({task.health.last_error or 'starting'})")
    result = await driver.poll()
    errors = result.errors or {}
    names, units = driver.points.names, driver.points.units
    rows = [
        PointRow(name=names[i], raw=None, value=value, unit=units[i], error=errors.get(i))
        for i, value in enumerate(result.values)
        if points is None or names[i] in points
    ]
    return Inspection(points=rows, error=None, trace=[])


async def _write(task: Any, point: Any, value: Any, via: str) -> dict[str, Any]:
    write = getattr(task.driver, "write", None)
    if write is None:
        raise WriteRefused(f"driver {task.spec.driver!r} of device {task.spec.name!r} cannot write")
    if not isinstance(point, str) or not isinstance(value, str | int | float | bool):
        raise WriteRefused("a write needs a point name and a value")
    written = await write(point, value)
    log.info("device %s: %s written through %s: %s", task.spec.name, point, via, written or value)
    report = await _inspect(task, trace=False, points=[point])
    readback = report["points"][0] if report["points"] else None
    if readback is not None and report["error"] and not readback["error"]:
        readback = {**readback, "error": report["error"]}
    return {"ok": True, "written": written, "readback": readback}
