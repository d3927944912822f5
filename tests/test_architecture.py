"""The import graph: no cycle, no import upwards, and docs/architecture.md naming every module."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "robust_losses_jax"

# docs/architecture.md's layers, top to bottom: a module imports only its own layer or lower ones.
LAYERS = (
    ("commands.main", "commands.run", "commands.sweep", "commands.find_errors", "commands.report",
     "commands.evidence", "commands.cli", "commands", "__main__"),
    ("retrain",),
    ("audit", "audit_guards"),
    ("probe",),
    ("experiment",),
    ("protocols", "protocols.in_sample", "protocols.cross_validation", "protocols.aum",
     "protocols.base"),
    ("training.loop",),
    ("training.engines", "training.checkpoints", "training.recorder"),
    ("training.programs",),
    ("training.auto_tau", "training.step", "training.stacking", "training.parallel", "training"),
    ("noisy_data", "input_pipeline", "user_data", "feature_data", "models", "models.resnet",
     "models.small", "models.layers", "config"),
    ("losses", "schedules", "corruption", "detection", "metrics", "records", "split"),
    ("xla_setup", "local_datasets", ""),
)  # fmt: skip
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """The package's modules ``path`` imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("robust_losses_jax."):
                inner = name.removeprefix("robust_losses_jax.")
                if inner in MODULES:
                    found.add(inner)
    return found


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert sorted(set(MODULES) - set(LAYER_OF)) == []
    assert sorted(set(LAYER_OF) - set(MODULES)) == []


def test_no_import_goes_up_a_layer():
    upward = [(a, b) for a, targets in GRAPH.items() for b in targets
              if LAYER_OF[b] < LAYER_OF[a] and not b.startswith(f"{a}.") and a != ""]  # fmt: skip
    assert upward == []


def test_the_import_graph_has_no_cycle():
    # A package importing its own submodules (protocols -> protocols.base) is not a cycle.
    edges = {a: {b for b in targets if not b.startswith(f"{a}.") and a != ""}
             for a, targets in GRAPH.items()}  # fmt: skip
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges[node]):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_config_imports_no_engine_and_the_library_no_experiments():
    assert not {m for m in GRAPH["config"] if m.split(".")[0] in ("training", "protocols")}
    for path in MODULES.values():
        text = path.read_text()
        assert "import experiments" not in text and "from experiments" not in text, path


def test_docs_architecture_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [name for name in MODULES
               if name not in ("", "__main__") and name.split(".")[-1] not in text]  # fmt: skip
    assert missing == []


# The longest a library function may be, in code lines (its docstring, blank lines and comment
# lines left out; a function nested in it counts towards it).
MAX_FUNCTION_LINES = 60


def code_lines(source_lines: list[str], node: ast.FunctionDef) -> int:
    lines = set(range(node.lineno, node.end_lineno + 1))
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):  # The docstring.
        lines -= set(range(first.lineno, first.end_lineno + 1))
    kept = (source_lines[i - 1].strip() for i in lines)
    return sum(1 for line in kept if line and not line.startswith("#"))


def test_no_library_function_is_longer_than_the_limit():
    long = []
    for name, path in MODULES.items():
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = code_lines(source.splitlines(), node)
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines}")
    assert long == []


def test_the_length_rule_counts_code_lines_only():
    source = 'def f():\n    """Doc.\n\n    More."""\n    # why\n\n    x = 1\n    return x\n'
    (node,) = ast.parse(source).body
    assert code_lines(source.splitlines(), node) == 3  # def, x = 1, return.


def test_the_readme_map_names_every_module():
    text = (ROOT / "README.md").read_text()
    block = text.split("## The code")[1].split("```")[1]  # The map's code block.
    words = set(block.replace("/", " ").split())
    # A package's own name stands for its __init__; models/ for its networks.
    named = [name for name in MODULES
             if name.split(".")[-1] in words or name.split(".")[0] == "models"]  # fmt: skip
    assert sorted(set(MODULES) - set(named) - {"", "__main__"}) == []


def test_imports_inside_library_functions_are_optional_heavy_ones_and_say_so():
    """Every import is at module top level, but an optional or heavy dependency (tfds, PIL,
    pandas, ...), which says why on its line or the line above. The commands import the library
    inside their functions on purpose (importing one starts no JAX: tests/test_cli.py)."""
    unexplained = []
    for name, path in MODULES.items():
        if name.startswith("commands"):
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    said = "#" in lines[inner.lineno - 1] or lines[
                        inner.lineno - 2
                    ].strip().startswith("#")
                    if not said:
                        unexplained.append(f"{name}:{inner.lineno}")
    assert unexplained == []
