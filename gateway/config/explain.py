"""Turn pydantic validation errors into one-line messages a field technician can act on.

``explain`` takes one error of ``ValidationError.errors()`` together with the model and the data
that were validated, and returns where to point (a field path) and what to say. It looks into the
model for what the error alone does not carry: the other bound of a range, the keys a mapping
knows (for "did you mean"), the choices of a Literal. Secrets are never rendered.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from gateway.config.settings import TopicPrefix
from gateway.config.yamlsource import Loc
from gateway.fields import NAME_PATTERN

SECRET_NAMES = re.compile(r"(password|passwd|secret|token|passphrase|api_key|private_key|key_file)$", re.I)

_PATTERNS = {
    NAME_PATTERN: "is not a valid name: use letters, digits, '-', '_', '.' (1 to 64 characters)",
    TopicPrefix.__metadata__[0].pattern: (
        "is not a valid topic prefix: use letters, digits, '-', '_', '.', with single '/' between levels"
    ),
}

_EXPECTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "path_type": "a file path",
    "finite_number": "a finite number",
    "none_required": "empty",
}


@dataclass(frozen=True, slots=True)
class Explained:
    """Where an error points and what it says. ``at`` locates the line, ``path`` is shown."""

    at: Loc
    path: Loc
    message: str


def is_secret(loc: Loc) -> bool:
    """True when any key on ``loc`` names a secret (password, token, key_file, ...)."""
    return any(isinstance(seg, str) and SECRET_NAMES.search(seg) for seg in loc)


def describe(value: Any, *, secret: bool = False) -> str:
    """Render a bad value for a message: strings quoted, containers named, secrets masked."""
    if secret or isinstance(value, SecretStr):
        return "'***'"
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return repr(value)
    return repr(str(value))


def suggest(word: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when some of ``known`` are close to ``word``, else ``""``.

    Equally close candidates are all offered: 'floaty' is as near to float32 as to float64.
    """
    scored = []
    for candidate in known:
        matcher = difflib.SequenceMatcher(None, word, candidate)
        if matcher.real_quick_ratio() >= 0.6 and matcher.quick_ratio() >= 0.6 and matcher.ratio() >= 0.6:
            scored.append((matcher.ratio(), candidate))
    if not scored:
        return ""
    best = max(score for score, _ in scored)
    close = sorted(c for score, c in scored if score == best)[:3]
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"


def explain(error: ErrorDetails, model: type[BaseModel], data: Any, *, extra_keys: Iterable[str] = ()) -> Explained:
    """Explain one pydantic ``error`` raised validating ``data`` against ``model``.

    ``extra_keys`` are further keys accepted at the top level (a device entry's common keys,
    validated by another model), offered in "did you mean" suggestions.
    """
    kind, ctx = error["type"], error.get("ctx") or {}
    loc = _clean_loc(tuple(error["loc"]), data, keep_last=kind == "missing")
    if kind in ("missing", "union_tag_not_found"):
        parent, key = (loc[:-1], loc[-1]) if kind == "missing" else (loc, _unquote(ctx["discriminator"]))
        return Explained(parent, parent, f"required key {key!r} is missing")
    if kind == "extra_forbidden":
        known = set(_keys_at(model, loc[:-1])) | (set(extra_keys) if len(loc) == 1 else set())
        return Explained(loc, loc[:-1], _unknown_key(str(loc[-1]), known))
    value = error.get("input")
    secret = is_secret(loc)
    shown = describe(value, secret=secret)
    if kind == "union_tag_invalid":
        choices = re.findall(r"'([^']*)'", ctx.get("expected_tags", ""))
        loc = (*loc, _unquote(ctx["discriminator"]))
        return Explained(loc, loc, f"{describe(ctx.get('tag'))} is not one of {', '.join(choices)}")
    return Explained(loc, loc, _message(kind, error, ctx, shown, value, secret, _walk(model, loc)))


def _message(
    kind: str,
    error: ErrorDetails,
    ctx: dict[str, Any],
    shown: str,
    value: Any,
    secret: bool,
    found: tuple[Any, FieldInfo | None] | None,
) -> str:
    if kind in _EXPECTED:
        return _type_message(kind, shown, value)
    if kind == "literal_error":
        choices = _literal_choices(found[0] if found else None) or re.findall(r"'([^']*)'", ctx["expected"])
        hint = suggest(value, choices) if isinstance(value, str) and not secret else ""
        return f"{shown} is not one of {', '.join(choices)}{hint}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return _range_message(shown, found[1] if found else None, ctx)
    if kind == "string_pattern_mismatch":
        return f"{shown} {_PATTERNS.get(ctx['pattern'], 'does not have the expected form')}"
    if kind in ("too_short", "string_too_short", "too_long", "string_too_long"):
        return _length_message(kind, shown, ctx)
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return f"{shown} is not valid" if secret else str(ctx["error"])
    text = error["msg"]
    return f"{text[:1].lower()}{text[1:]} (got {shown})"


def _type_message(kind: str, shown: str, value: Any) -> str:
    expected = _EXPECTED[kind]
    if value is None:
        return f"no value given (expected {expected})"
    if kind == "int_from_float":
        return f"{shown} is not a whole number"
    hint = "; put it in quotes" if kind == "string_type" and isinstance(value, int | float) else ""
    return f"{shown} is not {expected}{hint}"


def _range_message(shown: str, info: FieldInfo | None, ctx: dict[str, Any]) -> str:
    bounds: dict[str, Any] = {}
    for meta in info.metadata if info else ():
        for name in ("gt", "ge", "lt", "le"):
            if getattr(meta, name, None) is not None:
                bounds[name] = getattr(meta, name)
    bounds = bounds or dict(ctx)
    num = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in bounds.items()}
    if "ge" in num and "le" in num:
        return f"{shown} is out of range ({num['ge']} to {num['le']})"
    words = {"gt": "greater than", "ge": "at least", "lt": "less than", "le": "at most"}
    parts = [f"{words[k]} {num[k]}" for k in ("gt", "ge", "lt", "le") if k in num]
    return f"{shown} must be {' and '.join(parts)}"


def _length_message(kind: str, shown: str, ctx: dict[str, Any]) -> str:
    if kind == "string_too_short":
        n = ctx["min_length"]
        return "must not be empty" if n == 1 else f"{shown} is shorter than {n} characters"
    if kind == "string_too_long":
        return f"{shown} is longer than {ctx['max_length']} characters"
    if kind == "too_short":
        n = ctx["min_length"]
        return f"needs at least {n} {'entry' if n == 1 else 'entries'}"
    return f"has more than {ctx['max_length']} entries"


def _unknown_key(key: str, known: set[str]) -> str:
    hint = suggest(key, known)
    if hint or not known:
        return f"unknown key {key!r}{hint}"
    return f"unknown key {key!r} (known keys: {', '.join(sorted(known))})"


def _unquote(text: str) -> str:
    return text.strip("'\"")


def _clean_loc(loc: Loc, data: Any, *, keep_last: bool) -> Loc:
    """Drop the segments pydantic adds that are no key of the data (union member names)."""
    out: list[str | int] = []
    for i, seg in enumerate(loc):
        present = (isinstance(data, dict) and seg in data) or (
            isinstance(data, list) and isinstance(seg, int) and 0 <= seg < len(data)
        )
        if present:
            data = data[seg]
        elif not (keep_last and i == len(loc) - 1):
            continue
        out.append(seg)
    return tuple(out)


def _members(tp: Any) -> list[Any]:
    """The alternatives of a type: ``A | B`` and ``Optional[A]`` unpacked, Annotated stripped."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [m for arg in get_args(tp) for m in _members(arg)]
    return [tp]


def _walk(model: type[BaseModel], loc: Loc) -> tuple[Any, FieldInfo | None] | None:
    """The annotation and FieldInfo of the field at ``loc`` in ``model``, or None if unknown."""
    tp: Any = model
    info: FieldInfo | None = None
    for seg in loc:
        if isinstance(seg, int):
            items = [get_args(m)[0] for m in _members(tp) if get_origin(m) in (list, tuple, set) and get_args(m)]
            if not items:
                return None
            tp, info = items[0], None
            continue
        models = [m for m in _members(tp) if isinstance(m, type) and issubclass(m, BaseModel)]
        owner = next((m for m in models if seg in m.model_fields), None)
        if owner is None:
            return None
        info = owner.model_fields[seg]
        tp = info.annotation
    return tp, info


def _keys_at(model: type[BaseModel], loc: Loc) -> list[str]:
    found = _walk(model, loc)
    if found is None:
        return []
    models = [m for m in _members(found[0]) if isinstance(m, type) and issubclass(m, BaseModel)]
    return [name for m in models for name in m.model_fields]


def _literal_choices(tp: Any) -> list[str]:
    return [str(arg) for m in _members(tp) if get_origin(m) is Literal for arg in get_args(m)]
