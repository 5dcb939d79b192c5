"""The layering of `filter/` and `relay/`, read from the imports themselves.

message < detect < policy < scan | store < ops < doors (milter, relay) < cli. A module may
import its own layer and the layers before it; a door imports only the public seam
(`mailgate.filter`), `store`, `ops` and its own package; no module imports its way back into
itself (imports under `if TYPE_CHECKING:` count for the direction, not for circles: they never
run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RANK = {"message": 0, "detect": 1, "policy": 2, "scan": 3, "store": 3, "ops": 5, "cli": 7}
SEAM_RANK = 4  # mailgate.filter itself: imports scan and store, below ops
DOORS = {"milter", "relay", "console"}
DOOR_RANK = 6
DOOR_MAY_IMPORT = {"seam", "store", "ops"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "mailgate." + ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for top in ("filter", "relay"):
        for path in (ROOT / top).rglob("*.py"):
            found[module_name(path)] = path
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside `if TYPE_CHECKING:` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                for sub in ast.walk(inner):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        lines.add(sub.lineno)
    return lines


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported mailgate module, runs at import or call time) for every import in the file."""
    tree = ast.parse(path.read_text())
    typing_only = _type_checking_only(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("mailgate."):
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.append(
                    (candidate if candidate in known else target, node.lineno not in typing_only)
                )
        elif isinstance(node, ast.Import):
            found += [
                (a.name, node.lineno not in typing_only)
                for a in node.names
                if a.name.startswith("mailgate.")
            ]
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[1] != "filter":
        return parts[1]  # relay, or the rule pack's package
    return parts[2] if len(parts) > 2 else "seam"


def rank_of(layer: str) -> int:
    if layer == "seam":
        return SEAM_RANK
    if layer in DOORS:
        return DOOR_RANK
    return RANK[layer]


def graph() -> dict[str, list[tuple[str, bool]]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layering_violations(edges: dict[str, list[tuple[str, bool]]]) -> list[str]:
    wrong = []
    for source, targets in edges.items():
        source_layer = layer_of(source)
        if source_layer not in RANK and source_layer not in DOORS and source_layer != "seam":
            wrong.append(f"{source}: not in any layer (add it to RANK)")
            continue
        for target, _ in targets:
            target_layer = layer_of(target)
            if target_layer == source_layer or target_layer == "rules":
                continue
            if source_layer in DOORS:
                allowed = target_layer in DOOR_MAY_IMPORT
            else:
                allowed = rank_of(target_layer) < rank_of(source_layer) or (source_layer == "cli")
            if not allowed:
                wrong.append(f"{source} ({source_layer}) imports {target} ({target_layer})")
    return wrong


def circles(edges: dict[str, list[tuple[str, bool]]]) -> list[list[str]]:
    """Every strongly connected group of modules over the imports that run."""
    runtime = {m: sorted({t for t, runs in ts if runs and t in edges}) for m, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in runtime[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(runtime):
        if node not in index:
            visit(node)
    return found


def test_every_import_follows_the_layers() -> None:
    assert layering_violations(graph()) == []


def test_no_import_circles() -> None:
    assert circles(graph()) == []


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("mailgate.filter.message.mime", "mailgate.filter.policy.pack", False),
        ("mailgate.filter.policy.pack", "mailgate.filter.scan.engine", False),
        ("mailgate.filter.store.quarantine", "mailgate.filter.scan.engine", False),
        ("mailgate.relay.server", "mailgate.filter.policy.verdict", False),
        ("mailgate.relay.server", "mailgate.filter.milter.door", False),
        ("mailgate.relay.server", "mailgate.filter", True),
        ("mailgate.filter.ops.report", "mailgate.filter.scan.engine", True),
        ("mailgate.filter.cli.relay", "mailgate.relay.server", True),
    ],
)
def test_the_checker_itself_tells_right_from_wrong(
    source: str, target: str, expected: bool
) -> None:
    assert (layering_violations({source: [(target, True)]}) == []) is expected


def test_the_checker_finds_a_circle() -> None:
    edges = {
        "mailgate.filter.message.model": [("mailgate.filter.message.mime", True)],
        "mailgate.filter.message.mime": [("mailgate.filter.message.model", True)],
        "mailgate.filter.message.html": [("mailgate.filter.message.mime", False)],
    }
    assert circles(edges) == [["mailgate.filter.message.mime", "mailgate.filter.message.model"]]
