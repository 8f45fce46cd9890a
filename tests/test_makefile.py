"""The Makefile: each target runs a command the CLI takes, each variable given on make's command line reaches it as
exactly one argument whatever it holds, and nothing else (the environment, make's own defaults) changes a target."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from training.cli import COMMANDS, build_parser
from training.search.options import TuneOptions

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ["a b", "x; id", "$(id)", "`id`", "it's", '"q"', "'", "a\\ b", "$$HOME", "#x", "--name"]


def make(*args: str, **environment: str) -> subprocess.CompletedProcess:
    """`make ARGS` in the checkout, with `environment` added to an environment free of any outer make's."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")} | environment
    command = ["make", "--no-print-directory", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def cli_arguments(target: str, *variables: str, **environment: str) -> list[str]:
    """The `python -m training ...` arguments that `make TARGET VARIABLES` runs (make -n prints, runs nothing)."""
    done = make("-n", target, *variables, **environment)
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
        done = make("-n", target)
        assert done.returncode != 0 and "NAME is required" in done.stdout + done.stderr


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(
    "target, variable, flag, others",
    [
        ("deploy", "NAME", "--name", []),
        ("rollback", "NAME", "--name", ["TRUST_UNSIGNED=1"]),
        ("archive", "NAME", "--name", []),
        ("conclude", "STORAGE", "--storage", ["NAME=nw-sine"]),
        ("score", "DATA", "--data", ["NAME=nw-wine", "OUT=o.csv"]),
        ("tune", "DATA", "--data", ["TARGET=y"]),
        ("tune", "FEATURES", "--features", ["DATA=f.csv"]),
        ("tracking-server", "ALLOWED_HOSTS", "--allowed-hosts", ["HOST=0.0.0.0"]),
        ("monitor", "INTERVAL", "--interval", []),
        ("dashboard", "STORAGE", "--storage", ["PORT=8123"]),
    ],
)
def test_a_variable_reaches_the_command_as_exactly_one_argument_whatever_it_holds(
    target, variable, flag, others, value
):
    arguments = cli_arguments(target, *others, f"{variable}={value}")
    assert arguments[arguments.index(flag) + 1] == value
    assert len(arguments) == 1 + 2 * (len(others) + 1) - others.count("TRUST_UNSIGNED=1")  # nothing split off


def test_pytest_arguments_reach_pytest_split_as_typed_and_never_by_a_shell():
    done = make("-n", "test-fast", "PYTEST_ARGS=-k 'a or b' -x; id")
    (line,) = [line for line in done.stdout.splitlines() if " -m pytest" in line]
    (setting, *_) = shlex.split(line)
    assert setting == "PYTEST_ADDOPTS=$PYTEST_ADDOPTS -k 'a or b' -x; id"  # one word, split by pytest alone


def test_the_environment_changes_no_target():
    assert "--name" not in cli_arguments("archive", NAME="x; id")
    assert cli_arguments("serve", TRUST_UNSIGNED="1") == ["serve"]
    assert cli_arguments("tune", MODEL="mha", TRIALS="3", CONCLUDE="0") == ["tune"]
    assert cli_arguments("tracking-server", HOST="0.0.0.0", PORT="80") == ["tracking-server"]
    done = make("-n", "deploy", NAME="x")  # an exported NAME is not the one `make deploy` needs
    assert done.returncode != 0 and "--name" not in done.stdout and "NAME is required" in done.stderr


def test_make_tune_alone_passes_no_defaults_the_cli_owns_them():
    assert cli_arguments("tune") == ["tune"]
    args = build_parser().parse_args(["tune"])
    assert TuneOptions.from_arguments(args) == TuneOptions(model="nw", dataset="sine", trials=20, jobs=0, seed=0)
