"""The import layers of STYLE.md, checked with ast: tasks <- baselines <- search <- l2o; inside l2o
the rooms optimizers <- meta <- evaluation <- cli over one low `l2o.io`; no import circles."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tasks", "baselines", "search", "l2o")
FORBIDDEN = {
    "tasks": {"baselines", "search", "l2o"},
    "baselines": {"search", "l2o"},
    "search": {"l2o"},
    "l2o": set(),
}
# What each module of l2o may import from l2o (a prefix: the module itself or below it).
ROOMS = {
    "l2o.io": (),
    "l2o.optimizers": ("l2o.io", "l2o.optimizers"),
    "l2o.meta": ("l2o.io", "l2o.optimizers", "l2o.meta"),
    "l2o.evaluation": ("l2o.io", "l2o.optimizers", "l2o.meta", "l2o.evaluation"),
    "l2o.cli": ("l2o",),
    "l2o": ("l2o.optimizers",),  # l2o/__init__.py: `l2o.load_optimizer`
}
# Lower packages a room may import besides l2o: the learned optimizers need no search.
ROOM_FORBIDDEN = {"l2o.optimizers": {"search"}}


def imported_top_level_names(path: Path) -> set[str]:
    """First components of every module imported by a Python file (absolute imports)."""
    return {name.split(".")[0] for name in imported_modules(path)}


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, wherever in the file (`from p import m` gives `p.m` when
    `p/m.py` exists, else `p`: importing a submodule is not importing its package's names);
    relative imports are left out (a test forbids them)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if module_path(sub) is not None else node.module)
    return names


def module_path(name: str) -> Path | None:
    """The project file of module `name`, or None if it is not a project module."""
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(f): f for package in PACKAGES for f in sorted((REPO / package).rglob("*.py"))
    }


def room_of(module: str) -> str:
    """The room of an l2o module: the longest key of ROOMS that is it or a package above it."""
    rooms = [r for r in ROOMS if module == r or module.startswith(r + ".")]
    return max(rooms, key=len)


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_respect_the_layers(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    offenders = {
        str(f.relative_to(REPO)): sorted(imported_top_level_names(f) & FORBIDDEN[package])
        for f in files
    }
    offenders = {f: bad for f, bad in offenders.items() if bad}
    assert not offenders, f"imports against the layers: {offenders}"


def test_l2o_rooms_import_only_rooms_below_them():
    offenders = {}
    for module, path in project_modules().items():
        if not within(module, ("l2o",)):
            continue
        room = room_of(module)
        imported = imported_modules(path)
        bad = sorted(
            m
            for m in imported
            if (within(m, ("l2o",)) and not within(m, ROOMS[room]))
            or m.split(".")[0] in ROOM_FORBIDDEN.get(room, set())
        )
        if bad:
            offenders[module] = bad
    assert not offenders, f"imports against the rooms of l2o: {offenders}"


def test_every_room_is_a_package_with_a_one_line_docstring():
    for room in ("l2o.optimizers", "l2o.meta", "l2o.evaluation", "l2o.cli"):
        path = module_path(room)
        assert path is not None and path.name == "__init__.py", room
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and "\n" not in doc, f"{room}: one-line docstring"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (as a path that starts and ends at the same module), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles_between_modules():
    modules = project_modules()
    graph = {
        name: {m for m in imported_modules(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_the_checkers_see_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import l2o.cli.main\nfrom search.x import y\nfrom . import sibling\n")
    assert imported_top_level_names(bad) == {"l2o", "search"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert room_of("l2o.meta.trainer") == "l2o.meta" and room_of("l2o.io") == "l2o.io"
    assert not within("l2o.cli.train", ROOMS["l2o.evaluation"])


def test_no_relative_imports_hide_the_layering():
    relative = [
        str(f.relative_to(REPO))
        for package in PACKAGES
        for f in (REPO / package).rglob("*.py")
        if any(
            isinstance(n, ast.ImportFrom) and n.level > 0
            for n in ast.walk(ast.parse(f.read_text()))
        )
    ]
    assert not relative, f"use absolute imports: {relative}"
