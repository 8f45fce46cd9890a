import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import COMMANDS, build_parser
from training.search.options import TuneOptions

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


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def cli_arguments(target: str, *variables: str) -> list[str]:
    """The `python -m training ...` arguments that `make TARGET VARIABLES` runs (make -n prints, runs nothing)."""
    done = make("-n", target, *variables)
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if " -m training " in line]
    return shlex.split(line.split(" -m training ", 1)[1])


def test_make_help_lists_every_target_with_its_description():
    done = make("help")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)  # without the colours
    listed = {line.split()[0] for line in plain.splitlines() if line.strip()}
    expected = {"install", "test", "test-fast", "lint", "tune", "conclude", "archive", "score", "serve", "deploy"}
    expected |= {
        "rollback",
        "stop",
        "ui",
        "dashboard",
        "demo",
        "bench",
        "tracking-server",
        "tracking-server-stop",
        "clean",
    }
    assert done.returncode == 0 and expected <= listed, expected - listed


@pytest.mark.parametrize(
    "target, variables, command",
    [
        ("conclude", ["NAME=nw-sine"], "conclude"),
        ("archive", ["NAME=nw-sine"], "archive"),
        ("score", ["NAME=nw-wine", "DATA=my file.csv", "OUT=out.csv", "BATCH_ROWS=100"], "score"),
        ("serve", [], "serve"),
        ("deploy", ["NAME=nw-sine"], "deploy"),
        ("rollback", ["NAME=nw-sine", "TRUST_UNSIGNED=1"], "rollback"),
        ("stop", [], "stop"),
        ("ui", ["PORT=5123"], "ui"),
        ("dashboard", ["PORT=8123", "STORAGE=sqlite:////tmp/x.db"], "dashboard"),
        ("demo", [], "demo"),
        ("tracking-server", ["PORT=5100", "PG_PORT=5434"], "tracking-server"),
        ("tracking-server-stop", [], "tracking-server-stop"),
    ],
)
def test_each_make_target_runs_a_command_the_cli_takes(target, variables, command):
    args = build_parser().parse_args(cli_arguments(target, *variables))
    assert args.command == command and command in COMMANDS


def test_make_score_passes_each_variable_through_to_the_command():
    args = build_parser().parse_args(cli_arguments("score", "NAME=nw-wine", "DATA=my file.csv", "OUT=o.csv"))
    assert (args.name, args.data, args.out, args.batch_rows) == ("nw-wine", "my file.csv", "o.csv", None)
    args = build_parser().parse_args(cli_arguments("score", "NAME=n", "DATA=d.parquet", "OUT=o.csv", "BATCH_ROWS=9"))
    assert args.batch_rows == 9


def test_make_tune_passes_each_variable_through_to_the_tuning_options():
    variables = ["MODEL=mha", "DATASET=adding", "TRIALS=7", "TIMEOUT=30", "JOBS=2", "DEVICE=cpu", "SEED=3", "EPOCHS=4"]
    variables += ["STORAGE=sqlite:////tmp/o.db", "CONCLUDE=0", "PROGRESS=0", "HEARTBEAT=5", "GRACE=20"]
    options = TuneOptions.from_arguments(build_parser().parse_args(cli_arguments("tune", *variables)))
    assert (options.model, options.dataset, options.trials, options.timeout, options.jobs) == (
        "mha",
        "adding",
        7,
        30,
        2,
    )
    assert (options.device, options.seed, options.epochs, options.storage) == ("cpu", 3, 4, "sqlite:////tmp/o.db")
    assert (options.conclude, options.progress, options.heartbeat, options.grace) == (False, False, 5, 20)
    own = ["MODEL=nw", "DATA=my file.csv", "TARGET=y", "FEATURES=a, b", "TASK=regression", "NAME=mine"]
    options = TuneOptions.from_arguments(build_parser().parse_args(cli_arguments("tune", *own, "ID=s", "ORDER=t")))
    assert (options.data, options.target, options.features, options.task) == (
        "my file.csv",
        "y",
        ("a", "b"),
        "regression",
    )
    assert (options.study_name, options.id_column, options.order_column, options.name) == ("mine", "s", "t", "mine")
    assert TuneOptions.from_arguments(build_parser().parse_args(cli_arguments("tune"))) == TuneOptions(
        model="nw", dataset="sine"
    )


def test_make_conclude_deploy_and_rollback_without_a_name_say_what_to_add():
    for target in ("conclude", "deploy", "rollback"):
        done = make(target)
        assert done.returncode != 0 and "NAME is required" in done.stdout + done.stderr
