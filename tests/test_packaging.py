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
        name = requirement.split("==")[0].lower()
        assert "==" in requirement, f"{requirement} is not pinned"
        assert lock.get(name) == requirement, f"{requirement} differs from the lock ({lock.get(name)})"


def test_makefile_targets_are_documented_and_point_at_commands_that_exist():
    from training.cli import COMMANDS

    makefile = (ROOT / "Makefile").read_text()
    for target in [
        "help",
        "install",
        "test",
        "tune",
        "archive",
        "serve",
        "deploy",
        "stop",
        "ui",
        "dashboard",
        "demo",
        "bench",
    ]:
        assert f"\n{target}:" in makefile and f".PHONY: {target}" in makefile, target
    for command in ["tune", "archive", "serve", "deploy", "stop", "ui", "dashboard", "demo"]:
        assert f"-m training {command}" in makefile and command in COMMANDS


def test_scale_out_targets_are_documented_and_point_at_commands_that_exist():
    from training.cli import COMMANDS

    makefile = (ROOT / "Makefile").read_text()
    for target in ["conclude", "tracking-server", "tracking-server-stop"]:
        assert f"\n{target}:" in makefile and f".PHONY: {target}" in makefile, target
        assert f"-m training {target}" in makefile and target in COMMANDS
