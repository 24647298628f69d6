"""Load gateway.yaml: read it, substitute ``${ENV}``, validate it, and report every problem.

``load_config`` returns a frozen :class:`~gateway.config.settings.Config` or raises
:class:`ConfigFileError`, whose ``str()`` is one line per problem::

    gateway.yaml:14: devices[0].points[2].type: 'floaty' is not one of int16, uint16, int32, ...

Validation runs in passes, collecting every problem before giving up: the top level against
``RootSection``; each device's common keys against ``DeviceSection`` and its other keys against
its driver's ``Config`` model; then the checks no single model can make (duplicate device and
point names, and each driver's own checks across its devices, e.g. overlapping Modbus registers).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gateway.config.explain import explain, suggest
from gateway.config.settings import Config, DeviceSection, DeviceSpec, RootSection
from gateway.config.yamlsource import (
    ConfigFileError,
    Document,
    Loc,
    Problem,
    format_loc,
    read_document,
    substitute_env,
)
from gateway.driver import COMMON_DEVICE_KEYS, ConfigError, DeviceProblem, available_drivers, load_driver
from gateway.fields import NAME_PATTERN

__all__ = ["ConfigFileError", "Problem", "config_hash", "load_config"]


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the config file at ``path``.

    ``${VAR}`` and ``${VAR:-default}`` in string values are taken from ``environ`` (default:
    ``os.environ``). Raises ConfigFileError listing every problem found, each with the file
    (``path`` as given), line, field path and a short reason; nothing else escapes.
    """
    doc = read_document(path)
    _include(doc, Path(path))
    source = _as_written(doc)
    substitute_env(doc, os.environ if environ is None else environ)
    checker = _Checker(doc)
    root = checker.validate(RootSection, doc.data, ())
    entries = doc.data.get("devices")
    entries = entries if isinstance(entries, list) else []
    specs = checker.devices(entries)
    checker.second_pass(entries, specs)
    if doc.problems or root is None:
        raise ConfigFileError(doc.problems)
    devices = tuple(spec for _, spec in specs)
    return Config(
        path=Path(path),
        gateway=root.gateway,
        mqtt=root.mqtt,
        buffer=root.buffer,
        devices=devices,
        hash=config_hash(root, devices),
        source=source,
        commands=root.commands,
        fleet=root.fleet,
        web=root.web,
    )


def _as_written(doc: Document) -> str:
    """The config as written (``${ENV}`` unresolved), for the last-good copy: the file itself, or
    with ``include:`` the merged document as YAML (made now, while it is still unresolved)."""
    if not doc.data.get("include"):
        return doc.text
    merged = {k: v for k, v in doc.data.items() if k != "include"}
    return yaml.dump(merged, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def _include(doc: Document, path: Path) -> None:
    """Merge the ``devices`` of every file named by ``include:`` (globs, relative to ``path``'s folder).

    An included file may hold only ``devices:``. A pattern without wildcards must name an existing
    file; a wildcard pattern may match nothing (an empty conf.d is fine). A file that fails to parse
    becomes a problem of its own, with its own name and line.
    """
    patterns = doc.data.get("include")
    if not patterns:
        return
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        return  # RootSection reports the wrong type
    base = path.parent
    for i, pattern in enumerate(patterns):
        pattern_path = pattern if os.path.isabs(pattern) else str(base / pattern)
        matches = sorted(glob.glob(pattern_path))
        if not matches and not glob.has_magic(pattern):
            doc.problem(("include", i), f"{pattern!r}: no such file")
        for match in matches:
            shown = match if path.is_absolute() or os.path.isabs(pattern) else os.path.relpath(match)
            try:
                other = read_document(shown)
            except ConfigFileError as exc:
                doc.problems.extend(exc.problems)
                continue
            extra = sorted(set(other.data) - {"devices"})
            if extra:
                other_loc: Loc = (extra[0],)
                doc.problems.append(Problem(other.file, other.lines.line(other_loc), extra[0],
                                            "an included file may only hold devices:"))
            doc.merge_devices(other)


def config_hash(root: RootSection, devices: tuple[DeviceSpec, ...]) -> str:
    """12 hex digits of sha256 over the validated content, defaults included.

    Covers every section of ``root`` but ``devices`` (validated entries instead) and ``include``.
    Secret values are masked in the dump and so left out: the hash is published in the status,
    and must not let anyone test guesses of the broker password against it.
    """
    # Every section (fleet, and any added later) counts; the device entries as validated below, and
    # include: not at all (what it merged in counts as devices).
    content = root.model_dump(mode="json", exclude={"devices", "include"})
    content |= {
        "devices": [
            {
                "name": d.name,
                "driver": d.driver,
                "interval": d.interval,
                "enabled": d.enabled,
                "options": d.options.model_dump(mode="json"),
            }
            for d in devices
        ],
    }
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class _Checker:
    """Validates a loaded document, recording every problem in it."""

    def __init__(self, doc: Document) -> None:
        self._doc = doc
        self._drivers: dict[str, type[Any] | str] = {}  # a driver class, or why it failed to load

    def validate(
        self, model: type[BaseModel], data: Any, base: Loc, *, extra_keys: frozenset[str] = frozenset()
    ) -> Any:
        """Validate ``data`` (found at ``base``) against ``model``; None when it has problems."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                found = explain(error, model, data, extra_keys=extra_keys)
                if (*base, *found.path) in self._doc.unresolved:
                    continue  # an unset ${VAR}, reported already; its empty value is no news
                self._doc.problem((*base, *found.path), found.message, line=self._line((*base, *found.at)))
            return None

    def devices(self, entries: list[Any]) -> list[tuple[int, DeviceSpec]]:
        """Validate each device entry that is a mapping; return the valid ones with their index."""
        specs = []
        for i, entry in enumerate(entries):
            if isinstance(entry, dict):
                spec = self._device(("devices", i), entry)
                if spec is not None:
                    specs.append((i, spec))
        return specs

    def second_pass(self, entries: list[Any], specs: list[tuple[int, DeviceSpec]]) -> None:
        """The checks that span entries: duplicate names, and each driver's own (``check_devices``)."""
        self._duplicates([(("devices", i), e) for i, e in enumerate(entries)], "device")
        for i, entry in enumerate(entries):
            points = entry.get("points") if isinstance(entry, dict) else None
            if isinstance(points, list):
                self._duplicate_points(("devices", i), points)
        for i, spec in specs:
            self._deadband_points(("devices", i, "deadband"), spec)
        self._driver_checks(specs)

    def _driver_checks(self, specs: list[tuple[int, DeviceSpec]]) -> None:
        """A driver may check its devices together (one serial port, one setting): ``check_devices``."""
        index = {spec.name: i for i, spec in specs}
        by_driver: dict[str, list[DeviceSpec]] = {}
        for _, spec in specs:
            by_driver.setdefault(spec.driver, []).append(spec)
        for name, group in by_driver.items():
            cls = self._drivers.get(name)
            check = getattr(cls, "check_devices", None)
            if check is None:
                continue
            try:
                found = list(check([(spec.name, spec.options) for spec in group]))
                if not all(isinstance(problem, DeviceProblem) for problem in found):
                    raise TypeError("check_devices must return DeviceProblem records")
            except Exception as exc:  # a third-party driver's bug must not become a traceback
                self._doc.problem(("devices",), f"driver {name!r} failed checking its devices: {exc}")
                continue
            for problem in found:
                self._device_problem(problem, index)
        self._port_claims(specs)

    def _device_problem(self, problem: DeviceProblem, index: dict[str, int]) -> None:
        """Record a driver's problem at its place in the device's entry (the list, for a name it does not know)."""
        if problem.device not in index:
            self._doc.problem(("devices",), problem.message, line=self._line(("devices",)))
            return
        base: Loc = ("devices", index[problem.device])
        message = problem.message
        if problem.see is not None and (line := self._line((*base, *problem.see))) is not None:
            message = f"{message} at line {line}"
        loc = (*base, *problem.at)
        self._doc.problem(loc, message, line=self._line(loc))

    def _port_claims(self, specs: list[tuple[int, DeviceSpec]]) -> None:
        """One serial port belongs to one driver: two protocols on one line garble each other."""
        owner: dict[str, DeviceSpec] = {}
        for i, spec in specs:
            claim = getattr(self._drivers.get(spec.driver), "serial_ports", None)
            if claim is None or not spec.enabled:
                continue
            for port in sorted(claim(spec.options)):
                first = owner.setdefault(port, spec)
                if first.driver != spec.driver:
                    loc = ("devices", i, "connection", "serial_port")
                    self._doc.problem(loc, f"{port} is already used by device {first.name!r} ({first.driver}); "
                                           "one serial port can carry one protocol")

    def _deadband_points(self, loc: Loc, spec: DeviceSpec) -> None:
        """Per-point deadbands must name points of the device (where its model lists them)."""
        points = getattr(spec.options, "points", None)
        if not isinstance(spec.deadband, dict) or not points:
            return
        known = [getattr(p, "name", p) for p in points]
        for name in spec.deadband:
            if name not in known:
                self._doc.problem((*loc, name), f"no point {name!r} in this device{suggest(name, known)}")

    def _line(self, loc: Loc) -> int | None:
        return self._doc.lines.line(loc)

    def _device(self, base: Loc, entry: dict[str, Any]) -> DeviceSpec | None:
        common = {k: v for k, v in entry.items() if k in COMMON_DEVICE_KEYS}
        section = self.validate(DeviceSection, common, base)
        driver = self._driver(entry.get("driver"), base)
        if driver is None:
            return None
        rest = {k: v for k, v in entry.items() if k not in COMMON_DEVICE_KEYS}
        name = entry["driver"]
        try:
            options = self.validate(driver.Config, rest, base, extra_keys=COMMON_DEVICE_KEYS)
        except ConfigError as exc:  # a driver's own check, raised from a validator
            self._doc.problem(base, str(exc))
            return None
        except Exception as exc:  # a third-party driver's bug must not become a traceback
            self._doc.problem(base, f"driver {name!r} failed checking this entry: {type(exc).__name__}: {exc}")
            return None
        if section is None or options is None:
            return None
        return DeviceSpec(
            name=section.name,
            driver=section.driver,
            interval=section.interval,
            enabled=section.enabled,
            options=options,
            deadband=section.deadband,
            heartbeat=section.heartbeat,
        )

    def _driver(self, name: Any, base: Loc) -> type[Any] | None:
        """The driver class named by a device entry; None (with a problem recorded) if unusable."""
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            return None  # DeviceSection has reported it
        if name not in self._drivers:
            self._drivers[name] = self._load_driver(name)
        found = self._drivers[name]
        if isinstance(found, str):
            self._doc.problem((*base, "driver"), found)
            return None
        return found

    @staticmethod
    def _load_driver(name: str) -> type[Any] | str:
        try:
            cls = load_driver(name)
        except KeyError:
            installed = sorted(available_drivers())
            listed = ", ".join(installed) or "none"
            return f"unknown driver {name!r}{suggest(name, installed)}; installed drivers: {listed}"
        except Exception as exc:  # an installed but broken driver package
            return f"driver {name!r} could not be loaded: {type(exc).__name__}: {exc}"
        model = getattr(cls, "Config", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return f"driver {name!r} has no Config model"
        return cls

    def _duplicates(self, items: list[tuple[Loc, Any]], what: str) -> list[str]:
        """Report each repeated ``name`` among mapping ``items``; return the repeated names."""
        first: dict[str, tuple[str, int | None]] = {}
        repeated = []
        for loc, item in items:
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or (*loc, "name") in self._doc.unresolved:
                continue
            if name in first:
                file, line = first[name]
                at = f"line {line}" if file == self._doc.where(loc)[0] else f"{file}:{line}"
                self._doc.problem((*loc, "name"), f"duplicate {what} name {name!r} (first at {at})")
                repeated.append(name)
            else:
                first[name] = (self._doc.where(loc)[0], self._line((*loc, "name")))
        return repeated

    def _duplicate_points(self, base: Loc, points: list[Any]) -> None:
        repeated = self._duplicates([((*base, "points", k), p) for k, p in enumerate(points)], "point")
        # A driver's model may say the same about the whole entry; the line of the point is better.
        superseded = {
            Problem(self._doc.file, self._line(base), format_loc(base), f"duplicate point name {n!r}") for n in repeated
        }
        self._doc.problems = [p for p in self._doc.problems if p not in superseded]
