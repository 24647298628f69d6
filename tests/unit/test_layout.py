"""The architecture, as the imports say it (README "Design"): data flows one way through packages by stage.

Every import counts, also one inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO

GATEWAY = REPO / "gateway"
STAGES = ("config", "poll", "buffer", "publish", "wire", "daemon", "cli", "bench", "fleet", "web")
SHARED = "shared"  # gateway's own top-level modules: model, driver, fields, timers, atomic, control
LONG_MODULE = 400  # lines; a longer module says in its docstring why it is one module
WHY_ONE_MODULE = "One module:"


def modules(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imports(path: Path, name: str) -> Iterator[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import statement of the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [alias.name for alias in node.names]


def unit(module: str) -> str:
    """The package by stage a gateway module belongs to, or SHARED."""
    if module == "gateway.encoding":  # the wire's decoder under the import path the README gives platforms
        return "wire"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES) else SHARED


def edges() -> list[tuple[str, str, str]]:
    """(importing module, imported module, its unit) for every import of gateway.* by gateway/."""
    out = []
    for name, path in modules(GATEWAY):
        for target, _ in imports(path, name):
            if target == "gateway" or target.startswith("gateway."):
                out.append((name, target, unit(target) if target != "gateway" else SHARED))
            elif target == "drivers" or target.startswith("drivers."):
                out.append((name, target, "drivers"))
    return out


def test_the_stages_are_packages_and_the_rest_is_what_every_stage_shares() -> None:
    for stage in STAGES:
        assert (GATEWAY / stage / "__init__.py").is_file(), stage
    top = sorted(p.stem for p in GATEWAY.glob("*.py") if p.stem != "__init__")
    assert top == ["atomic", "control", "driver", "encoding", "fields", "model", "timers"]


def test_the_core_never_imports_a_driver() -> None:
    assert [(a, b) for a, b, u in edges() if u == "drivers"] == []


@pytest.mark.parametrize(("stage", "forbidden"), [
    ("poll", {"buffer", "publish", "daemon", "cli", "bench", "fleet", "web"}),
    ("buffer", {"poll", "publish", "daemon", "cli", "bench", "fleet", "web"}),
    ("wire", {"poll", "buffer", "publish", "daemon", "cli", "bench", "fleet", "web"}),
    ("config", {"poll", "buffer", "publish", "wire", "daemon", "cli", "bench", "fleet", "web"}),
    ("publish", {"poll", "daemon", "cli", "bench", "fleet", "web"}),
    # the fleet judges requests and keeps its files: it needs the config and the shared modules only
    ("fleet", {"poll", "buffer", "publish", "wire", "daemon", "cli", "bench", "web"}),
    ("web", {"poll", "buffer", "publish", "wire", "daemon", "cli", "bench", "fleet"}),  # the daemon hands it callables
    (SHARED, {*STAGES}),
])
def test_data_flows_one_way(stage: str, forbidden: set[str]) -> None:
    wrong = [(a, b) for a, b, u in edges() if unit(a) == stage and u in forbidden]
    assert wrong == []


def test_only_the_cli_imports_the_daemon_or_the_bench_and_nothing_imports_the_cli() -> None:
    wrong = [(a, b) for a, b, u in edges()
             if (u in ("daemon", "bench") and unit(a) not in (u, "cli")) or (u == "cli" and unit(a) != "cli")]
    assert wrong == []


def test_only_the_daemon_and_the_cli_import_the_fleet() -> None:
    """The fleet (and with it cryptography) is the daemon's, when fleet.enabled, and the CLI's tools."""
    assert [(a, b) for a, b, u in edges() if u == "fleet" and unit(a) not in ("fleet", "daemon", "cli")] == []
def test_only_the_daemon_and_the_cli_import_the_page() -> None:
    """The page (and aiohttp) is loaded only when ``web.enabled``: by the daemon that starts it, or
    by the cli's ``gateway web`` commands."""
    wrong = [(a, b) for a, b, u in edges() if u == "web" and unit(a) not in ("web", "daemon", "cli")]
    assert wrong == []


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for a, _, u in edges():
        if u != "drivers" and unit(a) != u:
            graph.setdefault(unit(a), set()).add(u)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert [pkg for pkg in graph if pkg in reach(pkg)] == []


def test_no_module_takes_another_modules_private_names() -> None:
    wrong = []
    for root in (GATEWAY, REPO / "drivers"):
        for name, path in modules(root):
            for target, names in imports(path, name):
                wrong += [f"{name}: {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert wrong == []


def test_a_long_module_says_why_it_is_one_module() -> None:
    wrong = []
    for root in (GATEWAY, REPO / "drivers"):
        for name, path in modules(root):
            text = path.read_text(encoding="utf-8")
            if text.count("\n") > LONG_MODULE and WHY_ONE_MODULE not in (ast.get_docstring(ast.parse(text)) or ""):
                wrong.append(f"{name} ({text.count(chr(10))} lines)")
    assert wrong == []


def test_the_rules_see_a_violation() -> None:
    """The checks above read real imports: a known edge and a lazy import inside a function are found."""
    found = {(a, b) for a, b, _ in edges()}
    assert ("gateway.daemon.daemon", "gateway.buffer.queue") in found
    assert ("gateway.cli.main", "gateway.daemon.daemon") in found  # imported inside a function
    assert unit("gateway.poll.scheduler") == "poll" and unit("gateway.model") == SHARED
