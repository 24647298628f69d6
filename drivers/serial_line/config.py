"""Config model of the serial_line driver: how lines are framed, parsed and turned into points."""

from __future__ import annotations

import codecs
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.serialio.settings import Escaped, StreamOptions, check_mode_keys, check_unique
from gateway.fields import Duration, Name

WHITESPACE = "whitespace"  # the delimiter value meaning "runs of spaces and tabs"


class LinePoint(BaseModel):
    """One value taken from each line: a regex ``group`` or a delimited ``field`` (0 = the first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    group: str | None = None
    field: int | None = Field(default=None, ge=0)
    type: Literal["float", "int", "str", "bool"] = "float"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None

    @model_validator(mode="after")
    def _check(self) -> LinePoint:
        if self.group is not None and self.field is not None:
            raise ValueError("give group (with regex) or field (with delimiter), not both")
        if (self.scale != 1 or self.offset != 0) and self.type in ("str", "bool"):
            raise ValueError(f"scale and offset do not apply to {self.type} points")
        return self


class SerialLineConfig(StreamOptions):
    """A serial_line device entry (the keys other than name, driver, interval, enabled)."""

    mode: Literal["stream", "query"] = "stream"
    command: Escaped | None = Field(default=None, min_length=1)  # query mode: sent each poll
    timeout: Duration | None = None  # query mode: wait this long for the answer (default 1s)
    terminator: Escaped = Field(default="\r\n", min_length=1)
    encoding: str = "ascii"
    max_line: int = Field(default=512, ge=16, le=65536)  # bytes; a longer "line" is dropped
    accept: str | None = None  # only lines matching this regex are parsed; others are ignored
    checksum: Literal["nmea"] | None = None
    regex: str | None = None
    delimiter: Escaped | None = Field(default=None, min_length=1)
    points: list[LinePoint] = Field(min_length=1)

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. ascii, latin-1, utf-8)") from None
        return value

    @field_validator("regex", "accept")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check(self) -> SerialLineConfig:
        check_unique([p.name for p in self.points])
        check_mode_keys(self, query=self.mode == "query", query_mode="query")
        if self.mode == "query" and self.command is None:
            raise ValueError("mode query needs command (e.g. \"R\\r\\n\"), sent at each poll")
        if self.mode == "stream" and self.command is not None:
            raise ValueError("command is sent in mode query only; add mode: query")
        for key in ("command", "terminator"):
            text = getattr(self, key)
            try:
                (text or "").encode(self.encoding)
            except UnicodeEncodeError:
                raise ValueError(f"{key} {text!r} cannot be written in encoding {self.encoding}") from None
        if (self.regex is None) == (self.delimiter is None):
            raise ValueError("give regex (with named groups) or delimiter (with field positions)")
        if self.regex is not None:
            _check_groups(self.regex, self.points)
        else:
            _check_fields(self.points)
        return self

    @property
    def query_timeout(self) -> float:
        return self.timeout or 1.0


def _check_groups(regex: str, points: list[LinePoint]) -> None:
    groups = re.compile(regex).groupindex
    if not groups:
        raise ValueError("regex has no named groups; name them like (?P<temp>[-0-9.]+)")
    for p in points:
        if p.field is not None:
            raise ValueError(f"point {p.name!r}: field is for delimiter; with regex use group")
        group = p.group or p.name
        if group not in groups:
            raise ValueError(f"point {p.name!r}: regex has no group {group!r} (it has {', '.join(groups)})")


def _check_fields(points: list[LinePoint]) -> None:
    for p in points:
        if p.group is not None:
            raise ValueError(f"point {p.name!r}: group is for regex; with delimiter use field")
        if p.field is None:
            raise ValueError(f"point {p.name!r}: needs field (its position in the line, 0 = the first)")
