import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_package_imports_with_torch_alone():
    code = (
        "import sys; import training.nn, training.nn.attention; "
        "heavy = {'mlflow', 'optuna', 'sklearn', 'pandas', 'matplotlib'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_every_direct_dependency_is_pinned_identically_in_the_lock():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = project["dependencies"] + project["optional-dependencies"]["test"]
    lock = {
        line.split("==")[0].lower(): line.strip()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for requirement in direct:
        pinned = re.sub(r"\[.*\]", "", requirement)  # mlflow[auth]==... pins mlflow itself
        name = pinned.split("==")[0].lower()
        assert "==" in requirement, f"{requirement} is not pinned"
        assert lock.get(name) == pinned, f"{requirement} differs from the lock ({lock.get(name)})"


def test_every_package_the_code_imports_is_declared():
    import ast
    import tomllib
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    declared = {re.sub(r"\[.*\]", "", r).split("==")[0].lower() for r in requirements}
    distributions = packages_distributions()
    imported = set()
    for folder in ("training", "handlers", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if "fixtures" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name in distributions and name not in sys.stdlib_module_names}
    missing = {
        name: distributions[name] for name in third_party if not {d.lower() for d in distributions[name]} & declared
    }
    assert missing == {}
