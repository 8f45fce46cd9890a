"""The command line's parser: every option declared once, with one help text, and each command's options; tune's
defaults stated from `TuneOptions`, which alone holds them. `training/cli.py` runs the commands."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from training.data.datasets import KINDS
from training.infra.places import DASHBOARD_PORT, LOOPBACK, MLFLOW_PORT, POSTGRES_PORT, PROMETHEUS_PORT
from training.nn import FAMILIES
from training.search.options import TuneOptions

TUNED = TuneOptions()  # tune's defaults, declared once in TuneOptions; the parser only states them in --help


@dataclass(frozen=True)
class Option:
    """A command-line option, declared once: its flags and `add_argument` settings, one help text."""

    flags: tuple[str, ...]
    settings: dict[str, Any]


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


# The options more than one command takes. A command may make one required, or give it its own default or
# destination (`add_option`); the flag and its help stay as declared here.
OPTIONS = {
    "name": Option(
        ("--name",),
        {
            "help": "the study and its registered model (one name), e.g. nw-sine; tune --data: default "
            "<model>-<file name>; archive: default every @champion"
        },
    ),
    "tracking_uri": Option(
        ("--tracking-uri",),
        {"help": "MLflow tracking URI: runs and registry (default: $MLFLOW_TRACKING_URI or mlruns/)"},
    ),
    "storage": Option(("--storage",), {"help": "Optuna storage URL (default: sqlite under mlruns/)"}),
    "device": Option(("--device",), {"help": f"auto | cpu | cuda | cuda:N (default {TUNED.device})"}),
    "data": Option(
        ("--data",),
        {
            "help": "a CSV or Parquet file: tune on your own data (not --dataset), or score it; conclude, archive: "
            "the file it was tuned on (read only when its sha256 is the recorded one; default: the recorded file)"
        },
    ),
    "out": Option(
        ("--out",),
        {"help": "archive: the directory for .mar files (default archives/); score: the CSV of predictions to write"},
    ),
    "trust_unsigned": Option(
        ("--trust-unsigned",),
        {
            "action": "store_true",
            "help": "also serve archives built before archives were signed (signed ones are verified all the same)",
        },
    ),
    "allow_older": Option(
        ("--allow-older",),
        {"action": "store_true", "help": "serve an archive older than the version the registry's @serving names"},
    ),
    "port": Option(("--port",), {"type": int, "help": "the port to listen on (default %(default)s)"}),
    "state_dir": Option(("--state-dir",), {"help": "the tracking server's state (default: .tracking/)"}),
    "heartbeat": Option(
        ("--heartbeat",),
        {"type": int, "help": f"seconds between liveness beats ($TUNE_HEARTBEAT, default {TUNED.heartbeat})"},
    ),
    "grace": Option(
        ("--grace",),
        {
            "type": int,
            "help": "seconds without a beat before a trial is failed and retried, a run closed "
            f"($TUNE_GRACE, default {TUNED.grace})",
        },
    ),
}


def add_options(parser: argparse.ArgumentParser, *names: str, **changes: Any) -> None:
    """Add the shared options `names` to `parser`, each with `changes` (required, default, dest) applied."""
    for name in names:
        option = OPTIONS[name]
        parser.add_argument(*option.flags, **{"default": None, **option.settings, **changes})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="the same commands as the Makefile targets")
    commands = parser.add_subparsers(dest="command", required=True)

    tune = commands.add_parser("tune", help="run (or continue) an Optuna study, tracked in MLflow")
    add_tune_arguments(tune)

    conclude = commands.add_parser("conclude", help="refit the study's best trial, register it, pick @champion")
    add_options(conclude, "name", required=True)
    add_options(conclude, "storage", "tracking_uri", "device", "heartbeat", "grace", "data")

    archive = commands.add_parser("archive", help="build archives/<name>.mar from the registry's @champion")
    add_options(archive, "name", "out", "tracking_uri", "data")
    archive.add_argument(
        "--unverified",
        action="store_true",
        help="sign even when the data the champion was tuned on is not at hand to compute its test metric again",
    )
    archive.add_argument(
        "--explain-keys",
        choices=["values", "index", "none"],
        default=None,
        help="what NW explanations reveal of training rows (default: values; index for a model of your own file)",
    )

    score = commands.add_parser("score", help="score a CSV/Parquet file with the registry's @champion, no server")
    add_options(score, "name", "data", "out", required=True)
    add_options(score, "tracking_uri")
    score.add_argument("--batch-rows", type=int, default=None, help="rows read and scored at a time (default 65536)")

    serve = commands.add_parser("serve", help="start TorchServe in the background with every archive")
    serve.add_argument("--models", default=None, help="comma-separated model names (default: every archive)")
    add_options(serve, "tracking_uri", "trust_unsigned", "allow_older")
    serve.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="N > 1: N TorchServe replicas behind HAProxy on the inference address, kept alive (default: one server)",
    )
    serve.add_argument(
        "--hosts",
        type=comma_list,
        default=None,
        help="with --replicas: the address each replica listens on, comma-separated (default loopback); one off "
        "loopback speaks TLS with a certificate of the fleet's CA",
    )
    deploy = commands.add_parser("deploy", help="roll archives/<name>.mar into the running server, no request dropped")
    add_options(deploy, "allow_older")
    rollback = commands.add_parser(
        "rollback", help="return the running server to the version served before the last rollout, no request dropped"
    )
    for rollout in (deploy, rollback):
        add_options(rollout, "name", required=True)
        add_options(rollout, "tracking_uri", "trust_unsigned")
    canary = commands.add_parser("canary", help="a fleet: send PERCENT of a model's traffic to its new archive, gated")
    add_options(canary, "name", required=True)
    canary.add_argument("--percent", type=int, required=True, help="the canary's share of the model's traffic, 1..99")
    add_options(canary, "tracking_uri", "trust_unsigned", "allow_older")
    promote = commands.add_parser("promote", help="a fleet: roll the canary's version into every replica")
    abort = commands.add_parser("abort", help="a fleet: all traffic back to the serving version, canary unregistered")
    for ending in (promote, abort):
        add_options(ending, "name", required=True)
    add_options(promote, "tracking_uri", "trust_unsigned")
    commands.add_parser("stop", help="stop TorchServe, or the whole fleet (keeper, balancer, replicas)")
    commands.add_parser("status", help="the running server's or fleet's health, versions served and load")
    keeper = commands.add_parser("keeper", help="(started by serve --replicas) restart dead replicas, refresh tokens")
    keeper.add_argument("--run-dir", default=None, help="the fleet's directory (default: .serve/)")
    token = commands.add_parser("token", help="print the running server's inference token")
    token.add_argument("--refresh", action="store_true", help="ask TorchServe for a new one first")
    token.add_argument("--run-dir", default=None, help="the server's run directory (default: .serve/)")
    token.add_argument(
        "--header-file",
        action="store_true",
        help="write the header `Authorization: Bearer <token>` to .serve/auth-header (0600) for curl -H @FILE",
    )
    ui = commands.add_parser("ui", help=f"MLflow UI on http://{LOOPBACK}:{MLFLOW_PORT} over mlruns/")
    add_options(ui, "port", default=MLFLOW_PORT)
    add_options(ui, "tracking_uri")
    server = commands.add_parser("tracking-server", help="local PostgreSQL + mlflow server for many tuning workers")
    server.add_argument("--host", default=LOOPBACK, help="address to bind (default loopback)")
    add_options(server, "port", default=MLFLOW_PORT)
    server.add_argument("--pg-port", type=int, default=POSTGRES_PORT, help="PostgreSQL port")
    server.add_argument("--allowed-hosts", default="", help="extra host names workers use, comma-separated")
    server.add_argument(
        "--tls", action=argparse.BooleanOptionalAction, default=None, help="default: on exactly off loopback"
    )
    add_options(server, "state_dir")
    stop_server = commands.add_parser("tracking-server-stop", help="stop the tracking server (its data stays)")
    add_options(stop_server, "state_dir")
    dashboard = commands.add_parser(
        "dashboard", help=f"optuna-dashboard on http://{LOOPBACK}:{DASHBOARD_PORT} over the studies"
    )
    add_options(dashboard, "port", default=DASHBOARD_PORT)
    add_options(dashboard, "storage")
    dashboard.add_argument("--allowed-hosts", default="", help="names to answer besides loopback's, comma-separated")
    dashboard.add_argument("--read-only", action="store_true", help="refuse every change (notes, deletions)")
    monitor = commands.add_parser(
        "monitor", help=f"Prometheus on http://{LOOPBACK}:{PROMETHEUS_PORT} scraping the running TorchServe"
    )
    add_options(monitor, "port", default=PROMETHEUS_PORT)
    monitor.add_argument("--interval", default="15s", help="scrape and rule evaluation interval (Prometheus units)")
    commands.add_parser("monitor-stop", help="stop the Prometheus started by monitor (its series stay in .monitor/)")
    commands.add_parser("demo", help="tune, archive, serve, query and stop: the whole product in one go")
    return parser


def add_tune_arguments(tune: argparse.ArgumentParser) -> None:
    """Tune's arguments, named like `TuneOptions`' fields; each left out keeps TuneOptions' default."""
    tune.add_argument("--model", choices=list(FAMILIES), help=f"the model family (default {TUNED.model})")
    tune.add_argument(
        "--dataset", choices=sorted(KINDS), help=f"a built-in data set (default {TUNED.dataset}, or --data FILE)"
    )
    add_options(tune, "data")
    tune.add_argument("--target", help="with --data: the column to predict")
    tune.add_argument(
        "--features", type=comma_list, help="with --data: comma-separated columns (default: numeric ones)"
    )
    tune.add_argument("--task", choices=["regression", "classification"], help="default: inferred")
    add_options(tune, "name", dest="study_name")
    tune.add_argument("--id", dest="id_column", help="with --data, long-format sequences: the sequence ID column")
    tune.add_argument("--order", dest="order_column", help="with --data, long-format sequences: the step order column")
    tune.add_argument("--trials", type=int, help=f"trials to add to the study (default {TUNED.trials})")
    tune.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    tune.add_argument(
        "--jobs",
        type=int,
        help=f"trials in parallel (threads); 0 = one per GPU on multi-GPU hosts, else 1 (default {TUNED.jobs})",
    )
    add_options(tune, "device", "storage")
    tune.add_argument("--seed", type=int, help=f"default {TUNED.seed}")
    tune.add_argument("--epochs", type=int, help="max epochs per trial (default per data set)")
    add_options(tune, "tracking_uri")
    tune.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar: one plain line per trial",
    )
    tune.add_argument(
        "--no-conclude",
        dest="conclude",
        action="store_false",
        default=None,
        help="only add trials; leave refit/register/promote to `conclude` (many workers, one conclusion)",
    )
    add_options(tune, "heartbeat", "grace")


def given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options among `names` given on the command line; those left out keep the callee's defaults."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}
