"""The layering written in README ("Architecture"), checked on the source: who may import whom, no cycles."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("drrl_env", "agents", "experiments")
MDP = (
    "drrl_env.env",
    "drrl_env.episode",
    "drrl_env.documents",
    "drrl_env.observation",
    "drrl_env.reward",
    "drrl_env.safety",
    "drrl_env.registration",
    "drrl_env.kv_env",
    "drrl_env.play",
)


def _modules() -> dict[str, Path]:
    return {self_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def _runtime_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Internal modules ``path`` imports at run time (any depth; ``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for n in ast.walk(child)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from package import submodule`` imports the submodule; ``from module import name`` the module
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            ]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found - {self_name(path)}


def self_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


GRAPH = {name: _runtime_imports(path, _modules()) for name, path in _modules().items()}


def test_the_environment_package_imports_no_agent_and_no_experiment():
    offending = {
        m: sorted(i for i in deps if i.split(".")[0] in ("agents", "experiments"))
        for m, deps in GRAPH.items()
        if m.startswith("drrl_env")
    }
    assert not {m: d for m, d in offending.items() if d}


def test_attention_costs_and_the_kv_layer_never_import_the_mdp():
    lower = [m for m in GRAPH if m.startswith(("drrl_env.attention", "drrl_env.costs", "drrl_env.kv."))]
    assert lower and not {m: sorted(GRAPH[m] & set(MDP)) for m in lower if GRAPH[m] & set(MDP)}


def test_the_kv_layer_imports_no_gymnasium():
    for name, path in _modules().items():
        if name.startswith("drrl_env.kv."):
            tree = ast.parse(path.read_text())
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
            assert not any(i.split(".")[0] == "gymnasium" for i in imported), name


def test_there_is_no_import_cycle():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in GRAPH[node]:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_synthetic_environment_never_imports_transformers():
    code = (
        "import sys, gymnasium as gym, drrl_env; env = gym.make('DRRL-v0', source='synthetic'); "
        "env.reset(seed=0); env.step(0); print('transformers' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_the_config_is_plain_data():
    """Configuration depends on no attention method, workload or cost model (README, "Architecture")."""
    lower = ("drrl_env.attention", "drrl_env.costs", "drrl_env.sources")
    assert not [m for m in GRAPH["drrl_env.config"] if m.startswith(lower)]
