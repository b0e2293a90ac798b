"""The package's shape: dependencies point one way, frameworks stay in their layer, the root is light.

Imports are read from the source (top-level and inside functions; `if TYPE_CHECKING:` blocks
skipped), so a cycle deferred into a function still counts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "anomaly_ae"

# Third-party frameworks and the only places that may import them.
FRAMEWORK_LAYERS = {
    "mlflow": ("registry/",),
    "fastapi": ("service/",),
    "starlette": ("service/",),
    "uvicorn": ("service/",),
    # the service's metrics, and the Prometheus watcher's own /metrics (a separate process)
    "prometheus_client": ("service/", "watch/exposition.py"),
    "pydantic_settings": ("service/",),
    # torch in the modules that compute, load weights or place computation (runtime.py); the
    # benchmark runner limits the threads of whatever detector it times.
    "torch": ("models/", "augment/gan_training.py", "augment/generator.py", "augment/latent.py",
              "augment/persistence.py", "training.py", "scoring.py", "detector.py", "persistence.py",
              "runtime.py", "bench/runner.py"),
    # weights files: saved models, and training checkpoints (training.py)
    "safetensors": ("persistence.py", "augment/persistence.py", "training.py"),
}


# The layers of docs/architecture.md, lowest first: a module imports only from its own layer or below.
# (The one way up, loading a models:/ URI, goes through a name looked up at call time: persistence's
# REMOTE_RESOLVER, which no import statement shows.)
LAYERS = (
    ("foundation", ("version", "exceptions", "runtime", "console", "progress", "estimators")),
    ("data", ("data",)),
    ("models", ("models",)),
    ("computation", ("training", "scoring", "calibration", "evaluation", "inference", "series_stream")),
    ("detectors", ("detector", "series_detector", "persistence", "augment")),
    ("registry", ("registry",)),
    # augment/command.py is the `generate` and `train --augment` commands: an adapter like cli.py
    ("adapters", ("service", "watch", "cli", "spark", "bench", "demo", "augment.command")),
)


def _layer(module: str) -> int | None:
    """Index in LAYERS of the longest prefix naming `module` (the package root: the adapters' layer)."""
    if module == PACKAGE.name:
        return len(LAYERS) - 1
    best: tuple[int, int] | None = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            full = f"{PACKAGE.name}.{prefix}"
            if (module == full or module.startswith(full + ".")) and (best is None or len(full) > best[1]):
                best = (i, len(full))
    return None if best is None else best[0]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute name, line) of every import in the file, TYPE_CHECKING blocks skipped. For
    `from X import y` that is X.y when X.y is a module, else X (y is a name defined in X)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*submodule.split("."))).with_suffix(".py").exists() or \
                    (PACKAGE.parent / Path(*submodule.split(".")) / "__init__.py").exists()
                found.append((submodule if is_module else base, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for imported, _ in _imports(path):
            if imported in modules and imported != name:
                graph[name].add(imported)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_deferred_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_package_has_no_import_cycles():
    graph = _graph()
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the walk really read the package
    assert _cycles(graph) == []


def test_imports_point_down_the_layers():
    graph = _graph()
    unplaced = sorted(m for m in graph if _layer(m) is None)
    assert unplaced == [], "add these modules to LAYERS (and to docs/architecture.md)"
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
              for m, deps in graph.items() for d in deps if _layer(d) > _layer(m)]
    assert upward == []
    assert _layer("anomaly_ae.augment.generator") < _layer("anomaly_ae.registry.store") < _layer("anomaly_ae.cli")
    assert _layer("anomaly_ae.augment.command") == _layer("anomaly_ae.cli")


def test_frameworks_stay_in_their_layer():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        for imported, line in _imports(path):
            top = imported.split(".")[0]
            allowed = FRAMEWORK_LAYERS.get(top)
            if allowed is not None and not rel.startswith(allowed):
                offenders.append(f"{rel}:{line} imports {imported}")
    assert offenders == []


@pytest.mark.parametrize("statement", [
    "import anomaly_ae",
    "import anomaly_ae.exceptions",
    "import anomaly_ae.cli",  # what `anomaly-ae --help` loads
])
def test_light_imports_load_no_heavy_dependency(statement):
    code = (f"{statement}; import sys; "
            "print(','.join(m for m in ('torch', 'sklearn', 'mlflow', 'fastapi', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(("flag", "expected"), [("--help", "train"), ("--version", "anomaly-ae 0.")])
def test_cli_help_and_version_print_without_loading_torch(flag, expected):
    code = ("import sys; from typer.testing import CliRunner; from anomaly_ae.cli import app; "
            f"result = CliRunner().invoke(app, [{flag!r}]); assert result.exit_code == 0, result.output; "
            f"assert {expected!r} in result.output, result.output; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_public_classes_load_on_first_use():
    import anomaly_ae
    from anomaly_ae.detector import Detector

    assert anomaly_ae.Detector is Detector
    with pytest.raises(AttributeError, match="no attribute"):
        anomaly_ae.NoSuchThing  # noqa: B018
