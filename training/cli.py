"""`python -m training <command>`: the same commands as the Makefile targets."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from typing import Any

from training.data.datasets import KINDS, MODEL_KINDS
from training.infra import storage_urls
from training.infra.places import DASHBOARD_PORT, LOOPBACK, MLFLOW_PORT, POSTGRES_PORT, PROMETHEUS_PORT
from training.search.options import TuneOptions
from training.tracking import mlflow_store

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
    "data": Option(("--data",), {"help": "a CSV or Parquet file: tune on your own data (not --dataset), or score it"}),
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
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    tune = commands.add_parser("tune", help="run (or continue) an Optuna study, tracked in MLflow")
    add_tune_arguments(tune)

    conclude = commands.add_parser("conclude", help="refit the study's best trial, register it, pick @champion")
    add_options(conclude, "name", required=True)
    add_options(conclude, "storage", "tracking_uri", "device", "heartbeat", "grace")

    archive = commands.add_parser("archive", help="build archives/<name>.mar from the registry's @champion")
    add_options(archive, "name", "out", "tracking_uri")
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
    add_options(serve, "trust_unsigned")
    deploy = commands.add_parser("deploy", help="roll archives/<name>.mar into the running server, no request dropped")
    rollback = commands.add_parser(
        "rollback", help="return the running server to the version served before the last rollout, no request dropped"
    )
    for rollout in (deploy, rollback):
        add_options(rollout, "name", required=True)
        add_options(rollout, "tracking_uri", "trust_unsigned")
    commands.add_parser("stop", help="stop TorchServe")
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
    tune.add_argument("--model", choices=list(MODEL_KINDS), help=f"the model family (default {TUNED.model})")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args) or 0
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line, no traceback
        print(f"\n{interrupt}" if str(interrupt) else "\ninterrupted", file=sys.stderr)
        return 130


def run_tune(args) -> int:
    from training.tracking.run_writer import RunWriter

    RunWriter.shared()  # its process imports MLflow while this one imports the rest and sets up
    import optuna

    from training.search.progress import quiet_libraries
    from training.search.report import print_tune_summary
    from training.search.study import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress: the bar, or our own line per trial
    quiet_libraries()
    if args.dataset and args.data:
        raise ValueError("give either --dataset (built in) or --data FILE --target COLUMN (your own file), not both")
    options = TuneOptions.from_arguments(args)
    print_tune_summary(tune(options), options)
    return 0


def run_conclude(args) -> int:
    from training.search.report import print_conclusion
    from training.search.study import conclude_study

    conclusion, client, experiment_id, run_id = conclude_study(
        args.name, args.storage, args.tracking_uri, **given(args, "device", "heartbeat", "grace")
    )
    print_conclusion(args.name, conclusion, client.tracking_uri, experiment_id, run_id)
    return 0


def run_tracking_server(args) -> int:
    from training.tracking import server as tracking_server
    from training.tracking import server_state

    hosts = [h for h in args.allowed_hosts.split(",") if h]
    where = args.state_dir or tracking_server.STATE
    server = tracking_server.start(where, args.host, args.pg_port, args.port, hosts, tls=args.tls)
    print(f"PostgreSQL on {server.host}:{server.pg_port} and mlflow server on {server.tracking_uri} (state: {where})")
    worker = f"{server.state_dir}/{server_state.MLFLOW_WORKER_PASSWORD_FILE}"
    print(f"Workers log in as {server_state.WORKER_ROLE!r} (no superuser, no MLflow admin). Passwords stay in files")
    print("(0600; copy them to each worker machine), never on a command line. In each worker's shell:")
    for key, value in server.client_environment().items():  # the password file; with TLS, the CA to verify
        print(f"  export {key}={value}")
    print(f"  export MLFLOW_TRACKING_USERNAME={server_state.MLFLOW_WORKER}")
    print(f'  export MLFLOW_TRACKING_PASSWORD="$(cat {worker})"')
    print(f"  export MLFLOW_TRACKING_URI={server.tracking_uri}")
    print(f"  make tune MODEL=nw DATASET=sine STORAGE='{server.storage_url}' CONCLUDE=0")
    print("Stop both with `make tracking-server-stop`.")
    return 0


def run_tracking_server_stop(args) -> int:
    from training.tracking import server as tracking_server

    stopped = tracking_server.stop(args.state_dir or tracking_server.STATE)
    print("tracking server stopped" if stopped else "no tracking server was running")
    return 0


def run_archive(args) -> int:
    from training.serving.archive import archive_champions
    from training.serving.serve import archive_info

    built = archive_champions(
        args.name, out_dir=args.out, tracking_uri=args.tracking_uri, explain_keys=args.explain_keys
    )
    for path in built:
        print(f"built {path} (explanations reveal the training rows' {archive_info(path)['explain_keys']})")
    return 0


def run_score(args) -> int:
    from training.tracking.score import BATCH_ROWS, score_file

    done = score_file(args.name, args.data, args.out, args.tracking_uri, args.batch_rows or BATCH_ROWS)
    rate = f"{done.rows / max(done.seconds, 1e-9):,.0f} rows/s"
    print(f"scored {done.rows:,} rows with {args.name} version {done.version} in {done.seconds:.1f} s ({rate})")
    print(f"wrote {done.out}")
    return 0


def run_serve(args) -> int:
    from training.serving.deploy import mark_serving
    from training.serving.serve import RUN_DIR, archive_info, private_store, start

    names = args.models.split(",") if args.models else None
    start(models=names, trust_unsigned=args.trust_unsigned)
    for served in sorted(private_store(RUN_DIR).glob("*.mar")):  # the verified copies the server reads
        version = str(archive_info(served)["version"])
        print(f"  registry    {served.stem}: {mark_serving(served.stem, version, None)}")
    return 0


def run_deploy(args) -> int:
    from training.serving.deploy import deploy

    rollout = deploy(args.name, tracking_uri=args.tracking_uri, trust_unsigned=args.trust_unsigned)
    replaced = f" (replaced version {', '.join(rollout.previous)})" if rollout.previous else ""
    print(f"{rollout.name} now serves version {rollout.version}{replaced} in {rollout.seconds:.1f} s")
    print(f"registry: {rollout.registry}")
    return 0


def run_rollback(args) -> int:
    from training.serving.rollback import rollback

    back = rollback(args.name, tracking_uri=args.tracking_uri, trust_unsigned=args.trust_unsigned)
    replaced = ", ".join(back.previous)
    print(
        f"{back.name} serves version {back.version} again (rolled back from version {replaced}) in {back.seconds:.1f} s"
    )
    print(f"registry: {back.registry}")
    return 0


def run_stop(args) -> int:
    from training.serving.serve import stop

    stop()
    return 0


def run_token(args) -> int:
    from pathlib import Path

    from training.infra.processes import write_secret
    from training.serving.serve import AUTH_HEADER, RUN_DIR, running_server

    run_dir = Path(args.run_dir) if args.run_dir else RUN_DIR
    server = running_server(run_dir)
    if not args.refresh and server.token_expired():
        expired = server.token_expiry().strftime("%H:%M:%S UTC")
        print(f"the inference token expired at {expired}; issuing a fresh one", file=sys.stderr)
        args.refresh = True
    token = server.refresh_token() if args.refresh else server.token()
    if args.header_file:  # for `curl -H @file`: the token stays out of every command line
        print(write_secret(run_dir / AUTH_HEADER, f"Authorization: Bearer {token}\n"))
    else:
        print(token)
    return 0


def run_ui(args) -> int:
    from training.tracking.ui import mlflow_ui

    uri = args.tracking_uri or mlflow_store.default_tracking_uri()
    if uri.startswith(("http://", "https://")):  # a tracking server already is the UI
        mlflow_store.check_tracking_uri(uri)
        print(f"MLflow UI: {storage_urls.redact(uri)} (the tracking server in use serves it)")
        return 0
    return mlflow_ui(args.port, uri)


def run_dashboard(args) -> int:
    from training.tracking.ui import dashboard

    return dashboard(args.port, args.storage)


def run_monitor(args) -> int:
    from training.serving import monitor

    url = monitor.start(port=args.port, interval=args.interval)
    print(f"Prometheus: {url} (scraping TorchServe every {args.interval}; alert rules: {url}/alerts)")
    print(f"  e.g. {url}/graph?g0.expr=sum%20by%20(outcome)%20(attention_requests_total)")
    print("Stop it with `make monitor-stop`; its series stay in .monitor/.")
    return 0


def run_monitor_stop(args) -> int:
    from training.serving import monitor

    print("Prometheus stopped" if monitor.stop() else "no monitor was running")
    return 0


def run_demo(args) -> int:
    from training.demo import demo
    from training.search.progress import quiet_libraries

    quiet_libraries()

    return demo()


COMMANDS = {
    "tune": run_tune,
    "conclude": run_conclude,
    "tracking-server": run_tracking_server,
    "tracking-server-stop": run_tracking_server_stop,
    "archive": run_archive,
    "score": run_score,
    "serve": run_serve,
    "deploy": run_deploy,
    "rollback": run_rollback,
    "stop": run_stop,
    "token": run_token,
    "ui": run_ui,
    "dashboard": run_dashboard,
    "monitor": run_monitor,
    "monitor-stop": run_monitor_stop,
    "demo": run_demo,
}
