"""Lines of text to records: framing by terminator, NMEA checksum, regex or delimited fields.

``LineParser`` is incremental like the binary frame parsers: ``feed(chunk)`` returns a record
(the point values, in point order) for every complete line that parsed. Its ``counters``:
``lines`` (parsed), ``bad_lines`` (not decodable, or no match / too few fields), ``bad_checksum``,
``bad_values`` (a field that did not convert: that point is None in the record), ``ignored``
(lines not matching ``accept``), ``garbage_bytes`` (bytes of lines longer than ``max_line``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from drivers.serial_line.config import WHITESPACE, LinePoint, SerialLineConfig
from drivers.serialio.framing import Record

_TRUE = frozenset({"1", "true", "on", "yes", "y", "t", "high"})
_FALSE = frozenset({"0", "false", "off", "no", "n", "f", "low"})


def nmea_body(line: str) -> str | None:
    """The text between ``$`` (or ``!``) and ``*hh`` when the XOR checksum ``hh`` is right, else None."""
    star = line.rfind("*")
    if line[:1] not in ("$", "!") or star < 0 or len(line) != star + 3:
        return None
    body = line[1:star]
    try:
        expected = int(line[star + 1:], 16)
    except ValueError:
        return None
    check = 0
    for char in body.encode("latin-1", errors="replace"):
        check ^= char
    return body if check == expected else None


def make_converter(point: LinePoint) -> Callable[[str], Any]:
    """The text-to-value function of a point; it raises ValueError for text that is not a value."""
    scale, offset = point.scale, point.offset
    scaled = scale != 1 or offset != 0
    if point.type == "str":
        return lambda text: text
    if point.type == "bool":
        def to_bool(text: str) -> bool:
            low = text.lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError(text)
        return to_bool
    if point.type == "int":
        return (lambda text: int(text) * scale + offset) if scaled else int

    def to_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return value * scale + offset if scaled else value
    return to_float


class LineFormat:
    """Splits one line's text into the raw text of each point (None: no such field or group)."""

    def __init__(self, config: SerialLineConfig) -> None:
        points = config.points
        if config.regex is not None:
            self._regex: re.Pattern[str] | None = re.compile(config.regex)
            self._groups = [p.group or p.name for p in points]
        else:
            self._regex = None
            self._delimiter = None if config.delimiter == WHITESPACE else config.delimiter
            self._fields = [p.field for p in points]
            self._needed = max(f for f in self._fields if f is not None) + 1

    def split(self, text: str) -> list[str | None] | None:
        """The raw texts, or None when the line does not have the expected shape."""
        if self._regex is not None:
            match = self._regex.search(text)
            if match is None:
                return None
            return [match.group(g) for g in self._groups]
        parts = text.split(self._delimiter)
        if len(parts) < self._needed:
            return None
        return [parts[f].strip() if f is not None else None for f in self._fields]


class LineParser:
    """Bytes to records of ``config.points`` values (see the module docstring)."""

    def __init__(self, config: SerialLineConfig) -> None:
        self.FIELDS: Sequence[str] = tuple(p.name for p in config.points)
        self._terminator = config.terminator.encode(config.encoding)
        self._encoding = config.encoding
        self._max_line = config.max_line
        self._nmea = config.checksum == "nmea"
        self._accept = re.compile(config.accept) if config.accept else None
        self._format = LineFormat(config)
        self._convert = [make_converter(p) for p in config.points]
        self._buf = bytearray()
        self._overlong = False  # dropping the rest of a line that grew past max_line
        self.counters = dict.fromkeys(
            ("lines", "bad_lines", "bad_checksum", "bad_values", "ignored", "garbage_bytes"), 0
        )

    def reset(self) -> None:
        """Forget a partial line (the counters stay)."""
        self._buf.clear()
        self._overlong = False

    def feed(self, data: bytes) -> list[Record]:
        """Add ``data``; return the records of the lines it completed."""
        buf = self._buf
        buf += data
        records: list[Record] = []
        term = self._terminator
        while (end := buf.find(term)) >= 0:
            raw = bytes(buf[:end])
            del buf[: end + len(term)]
            if self._overlong:
                self._overlong = False
                self.counters["garbage_bytes"] += len(raw) + len(term)
                continue
            record = self.parse_line(raw)
            if record is not None:
                records.append(record)
        if len(buf) > self._max_line:
            self.counters["garbage_bytes"] += len(buf)
            buf.clear()
            self._overlong = True
        return records

    def parse_line(self, raw: bytes) -> Record | None:
        """One line without its terminator to a record; None (counted) when it gives no value."""
        try:
            text = raw.decode(self._encoding).strip()
        except UnicodeDecodeError:
            self.counters["bad_lines"] += 1
            return None
        if not text:
            return None
        if self._accept is not None and not self._accept.search(text):
            self.counters["ignored"] += 1
            return None
        if self._nmea:
            body = nmea_body(text)
            if body is None:
                self.counters["bad_checksum"] += 1
                return None
            text = body
        return self._values(text)

    def _values(self, text: str) -> Record | None:
        raw = self._format.split(text)
        if raw is None:
            self.counters["bad_lines"] += 1
            return None
        values: list[Any] = []
        for convert, item in zip(self._convert, raw, strict=True):
            if item is None:
                values.append(None)
                continue
            try:
                values.append(convert(item.strip()))
            except ValueError:
                self.counters["bad_values"] += 1
                values.append(None)
        if all(v is None for v in values):
            self.counters["bad_lines"] += 1
            return None
        self.counters["lines"] += 1
        return tuple(values)
