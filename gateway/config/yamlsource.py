"""Read a YAML config file into plain data, remembering the line of every key and value.

This is the first half of config loading: it knows YAML, files and ``${ENV}`` references, and
nothing about the models. Every failure becomes a :class:`Problem` naming file, line and field
path, so no YAML or OS traceback ever reaches a technician.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Loc = tuple[str | int, ...]
"""A field path as keys and list indexes, e.g. ``("devices", 0, "points", 2, "type")``."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 200_000  # guards against alias bombs ("billion laughs"); real configs are far smaller


def format_loc(loc: Loc) -> str:
    """Render a field path as technicians read it: ``devices[0].points[2].type``."""
    out = ""
    for seg in loc:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else str(seg)
    return out


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file. ``line`` is 1-based, None when no line applies."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigFileError(Exception):
    """A config file that cannot be used; ``problems`` lists every reason, sorted by line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(set(problems), key=lambda p: (p.line or 0, p.path, p.message))
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


@dataclass(slots=True)
class SourceMap:
    """Lines (1-based) of the key and of the value at each field path of a loaded document."""

    key_lines: dict[Loc, int] = field(default_factory=dict)
    value_lines: dict[Loc, int] = field(default_factory=dict)

    def line(self, loc: Loc) -> int | None:
        """Line of ``loc``, or of its nearest ancestor that exists in the file.

        The key's line is preferred: for ``connection:`` followed by an indented block, the
        technician looks for the word ``connection``, not for the first line of the block.
        """
        for end in range(len(loc), -1, -1):
            sub = loc[:end]
            found = self.key_lines.get(sub) or self.value_lines.get(sub)
            if found is not None:
                return found
        return None


@dataclass(slots=True)
class Document:
    """A loaded file: its data (plain dicts, lists and scalars), lines, and problems found."""

    file: str
    data: Any
    lines: SourceMap
    problems: list[Problem] = field(default_factory=list)
    unresolved: set[Loc] = field(default_factory=set)  # values with an unset ${VAR}: already reported
    # Device entries merged from included files: global index -> (that file, its index there).
    origins: dict[int, tuple[str, int]] = field(default_factory=dict)
    text: str = ""  # the file as read

    def problem(self, loc: Loc, message: str, *, line: int | None = None) -> None:
        """Record a problem at ``loc`` (at its line unless ``line`` is given).

        A problem inside a device entry that came from an included file names that file, and the
        entry's index in it, as the technician sees them there.
        """
        file, shown = self.where(loc)
        self.problems.append(Problem(file, line or self.lines.line(loc), format_loc(shown), message))

    def where(self, loc: Loc) -> tuple[str, Loc]:
        """The file ``loc`` was written in, and the path as it reads in that file."""
        if len(loc) >= 2 and loc[0] == "devices" and isinstance(loc[1], int) and loc[1] in self.origins:
            file, index = self.origins[loc[1]]
            return file, ("devices", index, *loc[2:])
        return self.file, loc

    def merge_devices(self, other: Document) -> None:
        """Append the ``devices`` entries of an included document, with their lines and origin."""
        entries = other.data.get("devices") if isinstance(other.data, dict) else None
        if not isinstance(entries, list):
            return
        mine = self.data.setdefault("devices", [])
        if not isinstance(mine, list):
            return
        offset = len(mine)
        mine.extend(entries)
        for index in range(len(entries)):
            self.origins[offset + index] = (other.file, index)
        for source, target in ((other.lines.key_lines, self.lines.key_lines),
                               (other.lines.value_lines, self.lines.value_lines)):
            for loc, line in source.items():
                if len(loc) >= 2 and loc[0] == "devices" and isinstance(loc[1], int):
                    target[("devices", offset + loc[1], *loc[2:])] = line


def read_document(path: str | Path) -> Document:
    """Read and parse ``path``; raise ConfigFileError when it is not a usable YAML mapping."""
    shown = str(path)
    text = _read_text(Path(path), shown)
    loader, node = _compose(text, shown)
    try:
        doc = Document(shown, None, SourceMap(), text=text)
        if node is not None:
            doc.data = _Builder(loader, doc).build(node, ())
    except yaml.MarkedYAMLError as exc:
        raise _fail(shown, *_describe_yaml_error(exc)) from None
    finally:
        loader.dispose()
    if doc.data is None:
        raise _fail(shown, None, "the file is empty")
    if not isinstance(doc.data, dict):
        kind = "a list" if isinstance(doc.data, list) else f"{doc.data!r}"
        message = f"the top level must be a mapping (gateway:, mqtt:, ...), not {kind}"
        raise _fail(shown, doc.lines.line(()), message)
    return doc


def _compose(text: str, shown: str) -> tuple[Any, Node | None]:
    """Parse ``text`` into a node tree; return it with its loader (to construct scalars).

    libyaml parses about ten times faster than the pure-Python parser (seconds for a big config
    on a slow board), but the pure-Python one words errors better (it names the tab, the
    alias), so libyaml parses and, when it fails, the pure-Python parser explains.
    """
    fast = getattr(yaml, "CSafeLoader", None)
    for cls in (fast, yaml.SafeLoader) if fast else (yaml.SafeLoader,):
        loader = cls(text)
        try:
            return loader, loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            loader.dispose()
            if cls is yaml.SafeLoader:
                raise _fail(shown, *_describe_yaml_error(exc)) from None
        except yaml.YAMLError as exc:
            loader.dispose()
            raise _fail(shown, None, f"YAML error: {exc}") from None
    raise AssertionError("unreachable: the pure-Python parser returns or raises")


def _fail(shown: str, line: int | None, message: str) -> ConfigFileError:
    return ConfigFileError([Problem(shown, line, "", message)])


def _read_text(path: Path, shown: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _fail(shown, None, "file not found") from None
    except IsADirectoryError:
        raise _fail(shown, None, "is a directory, not a config file") from None
    except OSError as exc:
        raise _fail(shown, None, f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _fail(shown, line, f"not UTF-8 text (byte 0x{raw[exc.start]:02x})") from None
    bad = re.search(r"[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]", text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise _fail(shown, line, f"YAML syntax error: control character {bad.group()!r} is not allowed")
    return text


def _describe_yaml_error(exc: yaml.MarkedYAMLError) -> tuple[int | None, str]:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    problem = exc.problem or exc.context or "not valid YAML"
    if exc.context == "expected a single document in the stream":
        return line, "YAML syntax error: only one document is allowed (remove the second '---')"
    message = f"YAML syntax error: {problem}"
    if exc.context and exc.problem:
        message += f" ({exc.context}"
        if exc.context_mark and exc.context_mark.line + 1 != line:
            message += f" started at line {exc.context_mark.line + 1}"
        message += ")"
    if "'\\t'" in problem:
        message += "; indent with spaces, not tabs"
    return line, message


class _Builder:
    """Turns the composed node tree into plain data, filling the document's SourceMap."""

    def __init__(self, loader: Any, doc: Document) -> None:  # a SafeLoader or CSafeLoader
        self._loader = loader
        self._doc = doc
        self._active: set[int] = set()
        self._count = 0

    def build(self, node: Node, loc: Loc) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise yaml.MarkedYAMLError(problem="too many values (alias expansion?)", problem_mark=node.start_mark)
        self._doc.lines.value_lines[loc] = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            return self._loader.construct_object(node, deep=True)
        if id(node) in self._active:
            raise yaml.MarkedYAMLError(problem="an alias refers to itself", problem_mark=node.start_mark)
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
            assert isinstance(node, MappingNode)
            return self._mapping(node, loc)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: MappingNode, loc: Loc) -> dict[str, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            key, line = self._loader.construct_object(key_node), key_node.start_mark.line + 1
            if key in first:
                self._doc.problem(loc, f"duplicate key {key!r} (first at line {first[key]})", line=line)
            first.setdefault(key, line)
        self._loader.flatten_mapping(node)  # resolves "<<: *anchor" merge keys
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, loc)
            if key is None:
                continue
            self._doc.lines.key_lines[(*loc, key)] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, (*loc, key))
        return out

    def _key(self, key_node: Node, loc: Loc) -> str | None:
        key = self._loader.construct_object(key_node) if isinstance(key_node, ScalarNode) else None
        if isinstance(key, str):
            return key
        if isinstance(key, int) and not isinstance(key, bool):
            return str(key)  # value_map: {0: closed}; models convert the text back where they want numbers
        if not isinstance(key_node, ScalarNode):
            message = "a list or mapping cannot be a key"
        elif isinstance(key, bool):
            message = f"key {key_node.value!r} is read as {str(key).lower()}, not as text; put it in quotes"
        else:
            message = f"key {key!r} is not text; put it in quotes"
        self._doc.problem(loc, message, line=key_node.start_mark.line + 1)
        return None


_REF = re.compile(r"\$\$(?=\{)|\$\{([^{}]*)\}|\$\{")
_REF_BODY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def substitute_env(doc: Document, environ: Mapping[str, str]) -> None:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value of ``doc``, in place.

    ``$${`` stands for a literal ``${``. An unset variable without a default is a problem naming
    the variable and the field; the values themselves never appear in a message.
    """
    doc.data = _substitute(doc.data, (), doc, environ)


def _substitute(value: Any, loc: Loc, doc: Document, environ: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, (*loc, k), doc, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*loc, i), doc, environ) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def replace(m: re.Match[str]) -> str:
        text = m.group(0)
        if text == "$$":
            return "$"
        if text == "${":
            doc.problem(loc, "'${' without a closing '}' (write '$${' for a literal '${')")
            return text
        body = _REF_BODY.fullmatch(m.group(1))
        if body is None:
            doc.problem(loc, "not a valid ${...} reference: use ${NAME} or ${NAME:-default}")
            return text
        name, default = body.group(1), body.group(2)
        found = environ.get(name)
        if found is None or (found == "" and default is not None):
            if default is None:
                doc.problem(loc, f"environment variable {name!r} is not set")
                doc.unresolved.add(loc)
                return ""
            return default
        return found

    return _REF.sub(replace, value)
