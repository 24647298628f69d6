"""Field types shared by every config model: durations and safe names."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, StringConstraints

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_FACTOR = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Return seconds for "500ms", "10s", "5m", "1h" or a plain number of seconds.

    Raises ValueError (with the bad value quoted) for anything else, and for values <= 0.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 10s, 5m)")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _FACTOR[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 10s, 5m)")
    if not math.isfinite(seconds) or not seconds > 0:
        raise ValueError(f"{value!r} must be a finite time greater than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, accepted as "500ms", "10s", "5m", "1h" or a number of seconds."""

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""A name safe inside an MQTT topic: letters, digits, '-', '_', '.' (1 to 64 characters)."""
