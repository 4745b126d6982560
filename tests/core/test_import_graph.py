"""No import cycles inside lorakit, lazy imports (inside functions) included."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"core": "lorakit", "plugins": "lorakit.plugins", "domains": "lorakit.domains",
            "benchmarks": "lorakit.benchmarks"}


def module_names() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            # `lorakit` itself is the package __init__, which re-exports the core: importing
            # it from inside the core is what a cycle looks like, so it counts
            if c in known and c != name:
                found.add(c)
    return found


def test_lorakit_has_no_import_cycles():
    modules = module_names()
    graph = {n: imports_of(n, p, set(modules)) for n, p in modules.items()}
    # the package __init__ files only re-export; a submodule importing its own package's
    # __init__ (e.g. `from lorakit import attach` in a plugin) is not a cycle unless the
    # __init__ imports it back
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2
    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
