"""Device profiles: a vendor's register map, written once, used by ``profile: <name>``.

A profile is ``<name>.yaml`` in a profile directory, holding the keys a device entry would
(``points``, ``byte_order``, ``max_gap``, ``max_registers``, ``max_bits``) plus a free-text
``description``; never a connection. Directories are searched in order: those given by the
caller (a validation context's ``profile_dirs``), ``/etc/gateway/profiles`` (site profiles,
which may shadow shipped ones), then ``config/profiles`` next to the package.

Merging (``apply_profile``): the entry's own keys win over the profile's. The entry's points
come first, in their order: one naming a profile point takes that point's keys as defaults and
overrides some of them; the profile's other points follow, in profile order. Keeping the entry's
points at their own positions keeps a validation error's ``points[i]`` pointing at the line the
user wrote.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from drivers.modbus.config import Point, inherit_byte_order
from gateway.fields import NAME_PATTERN

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "config" / "profiles"  # a source checkout
INSTALLED_DIR = Path(sys.prefix) / "share" / "city-gateway" / "profiles"  # a wheel install (data-files)
SYSTEM_DIR = Path("/etc/gateway/profiles")
DEFAULT_DIRS = (SYSTEM_DIR, SHIPPED_DIR, INSTALLED_DIR)
PROFILE_KEYS = frozenset({"description", "byte_order", "max_gap", "max_registers", "max_bits", "points"})


class ProfileError(ValueError):
    """A profile is missing or broken; the message names it and its file."""


def profile_dirs(extra: Iterable[str | Path] | None = None) -> tuple[Path, ...]:
    """The directories searched, in order: ``extra``, then the site and the shipped ones."""
    return (*(Path(d) for d in extra or ()), *DEFAULT_DIRS)


def available_profiles(dirs: Iterable[str | Path] | None = None) -> list[str]:
    """Names of the profiles found in the search path, sorted."""
    found = {p.stem for d in profile_dirs(dirs) if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(found)


def find_profile(name: str, dirs: Iterable[str | Path] | None = None) -> Path:
    """The file of profile ``name``: the first ``<name>.yaml`` in the search path."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ProfileError(f"{name!r} is not a profile name (letters, digits, '-', '_', '.')")
    search = profile_dirs(dirs)
    for directory in search:
        path = directory / f"{name}.yaml"
        if path.is_file():
            return path
    known = ", ".join(available_profiles(dirs)) or "none"
    where = ", ".join(str(d) for d in search)
    raise ProfileError(f"profile {name!r} not found (looked in {where}; known profiles: {known})")


def load_profile(name: str, dirs: Iterable[str | Path] | None = None) -> dict[str, Any]:
    """Read and check profile ``name``; raises ProfileError naming the profile and its file."""
    path = find_profile(name, dirs)
    label = f"profile {name!r} ({path})"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ProfileError(f"{label} cannot be read: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{label} is not a mapping")
    unknown = sorted(str(k) for k in set(data) - PROFILE_KEYS)
    if unknown:
        raise ProfileError(f"{label}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(PROFILE_KEYS))})")
    points = data.get("points")
    if not isinstance(points, list) or not points or not all(isinstance(p, dict) for p in points):
        raise ProfileError(f"{label}: points must be a non-empty list of mappings")
    _check_points(label, inherit_byte_order({"byte_order": data.get("byte_order", "ABCD"), "points": points}))
    return data


def apply_profile(entry: dict[str, Any], dirs: Iterable[str | Path] | None = None) -> dict[str, Any]:
    """``entry`` with the keys and points of the profile it names merged in (see module doc)."""
    name = entry.get("profile")
    if not isinstance(name, str):
        return entry  # the model reports a profile that is not text
    profile = load_profile(name, dirs)
    merged: dict[str, Any] = {k: v for k, v in profile.items() if k not in ("description", "points")}
    merged.update({k: v for k, v in entry.items() if k != "points"})
    merged["points"] = merge_points(profile["points"], entry.get("points", []))
    return merged


def merge_points(base: list[dict[str, Any]], own: Any) -> Any:
    """The entry's points (over the profile point of the same name, if any), then the profile's others."""
    if not isinstance(own, list):
        return own  # let the model report it
    profile = {p.get("name"): p for p in base}
    merged = []
    for point in own:
        name = point.get("name") if isinstance(point, dict) else None
        merged.append({**profile.pop(name), **point} if isinstance(name, str) and name in profile else point)
    return merged + list(profile.values())


def _check_points(label: str, data: dict[str, Any]) -> None:
    for i, point in enumerate(data["points"]):
        try:
            Point.model_validate(point)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = "".join(f".{seg}" if isinstance(seg, str) else f"[{seg}]" for seg in error["loc"])
            ctx = error.get("ctx") or {}
            message = str(ctx["error"]) if "error" in ctx else error["msg"]
            raise ProfileError(f"{label}: points[{i}]{where}: {message}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
