"""Secrets never leave the gateway: the running config as YAML with literal secrets as ``"***"``,
and a pushed ``"***"`` read as "keep the value running now".

A secret is any field whose validated value is a ``SecretStr`` (``mqtt.password``, and any other
section's or driver's secret). ``${ENV}`` references and ``password_file`` stay as written: they
name where a secret is, not the secret. So a config fetched with ``get``, edited and pushed back
keeps its password.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

from gateway.config.settings import Config
from gateway.config.yamlsource import Loc, format_loc

MASK = "***"


def secret_paths(config: Config) -> list[Loc]:
    """Where ``config`` holds secret values, as paths into the file as written."""
    return [loc for loc, _ in _secrets(config)]


def secret_values(config: Config) -> list[str]:
    """The secret values ``config`` holds (to mask them wherever they might show)."""
    return [secret.get_secret_value() for _, secret in _secrets(config)]


def _secrets(config: Config) -> Iterator[tuple[Loc, SecretStr]]:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, BaseModel):
            yield from _walk(value, (f.name,))
    for i, spec in enumerate(config.devices):
        if isinstance(spec.options, BaseModel):
            yield from _walk(spec.options, ("devices", i))


def _walk(value: Any, at: Loc) -> Iterator[tuple[Loc, SecretStr]]:
    if isinstance(value, SecretStr):
        yield at, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name), (*at, name))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, (*at, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, (*at, str(key)))


def redacted_data(config: Config) -> dict[str, Any]:
    """The config as written (included devices merged in), literal secrets replaced by ``"***"``."""
    data = yaml.safe_load(config.source) or {}
    data.pop("include", None)  # what it merged in is part of the source already
    for loc in secret_paths(config):
        parent, key = _parent(data, loc)
        if parent is None:
            continue
        value = parent[key]
        literal = "${" not in value if isinstance(value, str) else value is not None
        if literal:  # an ${ENV} reference names no secret: it stays as written
            parent[key] = MASK
    return data


def redacted_yaml(config: Config) -> str:
    """``redacted_data`` as YAML text: what ``get`` answers."""
    return yaml.safe_dump(redacted_data(config), sort_keys=False)


def _parent(data: Any, loc: Loc) -> tuple[Any, Any]:
    """The container holding ``loc`` and its key in it; (None, None) when the file does not have it."""
    node = data
    for key in loc[:-1]:
        node = _child(node, key)
        if node is None:
            return None, None
    last = loc[-1]
    if isinstance(node, dict) and last in node:
        return node, last
    if isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
        return node, last
    return None, None


def _child(node: Any, key: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    return None


def keep_current(pushed: Any, current: Any, at: Loc = ()) -> list[str]:
    """Replace each ``"***"`` in ``pushed`` (in place) by the value at the same place in ``current``
    (both as written; devices matched by name, not position). Returns the places it could not fill."""
    missing: list[str] = []
    if isinstance(pushed, dict):
        for key, value in pushed.items():
            other = current.get(key) if isinstance(current, dict) else None
            if value == MASK:
                if other is None or other == MASK:
                    missing.append(format_loc((*at, key)))
                else:
                    pushed[key] = other
            else:
                missing += keep_current(value, other, (*at, key))
    elif isinstance(pushed, list):
        for i, value in enumerate(pushed):
            missing += keep_current(value, _match(value, i, current), (*at, i))
    return missing


def _match(item: Any, index: int, current: Any) -> Any:
    """The entry of ``current`` that ``item`` stands for: the one of the same name, else the same index."""
    if not isinstance(current, list):
        return None
    name = item.get("name") if isinstance(item, dict) else None
    if name is not None:
        return next((c for c in current if isinstance(c, dict) and c.get("name") == name), None)
    return current[index] if index < len(current) else None


def has_mask(data: Any) -> bool:
    """True when ``"***"`` appears anywhere in ``data``."""
    if isinstance(data, dict):
        return any(has_mask(v) for v in data.values())
    if isinstance(data, list):
        return any(has_mask(v) for v in data)
    return data == MASK
