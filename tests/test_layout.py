"""The house rules of the layout, checked on the source tree (README "Layout" section).

- The README's layout table lists exactly the project's folders and packages.
- Imports between the packages form no circle, counting imports under ``TYPE_CHECKING`` and inside
  functions (a circle hidden in a function still ties the modules together).
- No module of the packages is longer than ``MAX_MODULE_LINES``; jobs stay thin entry points.
- Only ``ray_*.py`` files import Ray; exactly one module in ``infra/`` imports MLflow; ``model/`` is pure
  torch/numpy (no Ray, MLflow, storage or project infrastructure).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "model", "infra", "jobs")
MAX_MODULE_LINES = 600
MAX_JOB_LINES = 90


def _modules(roots=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the given top-level packages."""
    out = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module name an import statement anywhere in the file refers to (absolute form)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def _project_imports() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {n for n in _imported_names(path, name) if n in modules and n != name}
    return graph


def test_readme_layout_table_matches_the_folders():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w/]+)/` \|", section, flags=re.M))
    packages = {
        str(p.parent.relative_to(REPO))
        for root in PACKAGES + ("benchmarks",)
        for p in (REPO / root).rglob("__init__.py")
    }
    folders = packages | {"configs", "docs", "docker", "tests"}
    assert listed == folders, (
        f"README layout table lists {sorted(listed - folders)} that do not exist and misses "
        f"{sorted(folders - listed)}"
    )


def test_package_imports_form_no_circle():
    graph = _project_imports()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            raise AssertionError("import circle: " + " -> ".join(cycle))


def test_modules_stay_readable_and_jobs_thin():
    too_long = {
        str(path.relative_to(REPO)): n
        for path in _modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"split these modules along their seams (> {MAX_MODULE_LINES} lines): {too_long}"
    fat_jobs = {
        path.name: n
        for path in (REPO / "jobs").glob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_JOB_LINES
    }
    assert not fat_jobs, f"jobs are thin entry points (<= {MAX_JOB_LINES} lines): {fat_jobs}"


def _imports_of(path: Path, name: str) -> set[str]:
    return {n.split(".")[0] for n in _imported_names(path, name)}


def test_ray_only_in_ray_files_and_mlflow_in_one_infra_module():
    ray_outside, mlflow_users = [], []
    for name, path in _modules().items():
        tops = _imports_of(path, name)
        if "ray" in tops and not path.name.startswith("ray_"):
            ray_outside.append(name)
        if "mlflow" in tops:
            mlflow_users.append(name)
    assert not ray_outside, f"only ray_*.py files import Ray: {ray_outside}"
    assert len(mlflow_users) <= 1 and all(m.startswith("infra.") for m in mlflow_users), mlflow_users


def test_model_is_pure_math():
    forbidden = {"ray", "mlflow", "infra", "fsspec", "s3fs", "boto3", "pipeline", "jobs"}
    offenders = {
        name: sorted(_imports_of(path, name) & forbidden)
        for name, path in _modules(("model",)).items()
        if _imports_of(path, name) & forbidden
    }
    assert not offenders, f"model/ imports no Ray, MLflow, storage or pipeline code: {offenders}"


def test_tests_mirror_the_packages():
    tests = REPO / "tests"
    test_dirs = {p.parent.relative_to(tests) for p in tests.rglob("__init__.py") if p.parent != tests}
    strays = sorted(str(d) for d in test_dirs if not (REPO / d / "__init__.py").is_file())
    assert not strays, f"tests/ mirrors the packages; no package for tests/{strays}"
