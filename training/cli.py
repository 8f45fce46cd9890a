"""`python -m training <command>`: the same commands as the Makefile targets."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from .data import KINDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    tune = commands.add_parser("tune", help="run (or continue) an Optuna study, tracked in MLflow")
    tune.add_argument("--model", required=True, choices=["nw", "mha", "s2s"])
    tune.add_argument("--dataset", required=True, choices=sorted(KINDS))
    tune.add_argument("--trials", type=int, default=20, help="trials to add to the study")
    tune.add_argument("--timeout", type=float, default=None, help="stop starting new trials after this many seconds")
    tune.add_argument(
        "--jobs", type=int, default=0, help="trials in parallel (threads); 0 = one per GPU on multi-GPU hosts, else 1"
    )
    tune.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    tune.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite under mlruns/)")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--epochs", type=int, default=None, help="max epochs per trial (default per data set)")
    tune.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/)"
    )
    tune.add_argument("--no-progress", action="store_true", help="no progress bar")

    archive = commands.add_parser("archive", help="build archives/<name>.mar from the registry's @champion")
    archive.add_argument("--name", default=None, help="e.g. nw-sine (default: every registered champion)")
    archive.add_argument("--out", default=None, help="directory for the .mar files (default: archives/)")
    archive.add_argument("--tracking-uri", default=None)

    serve = commands.add_parser("serve", help="start TorchServe in the background with every archive")
    serve.add_argument("--models", default=None, help="comma-separated model names (default: every archive)")
    commands.add_parser("stop", help="stop TorchServe")
    token = commands.add_parser("token", help="print the running server's inference token")
    token.add_argument("--refresh", action="store_true", help="ask TorchServe for a new one first")
    ui = commands.add_parser("ui", help="MLflow UI on http://127.0.0.1:5000 over mlruns/")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or mlruns/")
    commands.add_parser("demo", help="tune, archive, serve, query and stop: the whole product in one go")
    return parser


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


def run_tune(args) -> int:
    import optuna

    from .report import print_tune_summary
    from .tune import TuneOptions, tune

    if not args.no_progress:  # the bar shows progress; per-trial lines are in MLflow
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    options = TuneOptions(
        model=args.model,
        dataset=args.dataset,
        trials=args.trials,
        timeout=args.timeout,
        jobs=args.jobs,
        device=args.device,
        storage=args.storage,
        seed=args.seed,
        epochs=args.epochs,
        tracking_uri=args.tracking_uri,
        progress=not args.no_progress,
    )
    print_tune_summary(tune(options), options)
    return 0


def run_archive(args) -> int:
    from .archive import archive_champions

    for path in archive_champions(args.name, out_dir=args.out, tracking_uri=args.tracking_uri):
        print(f"built {path}")
    return 0


def run_serve(args) -> int:
    from .serve import start

    start(models=args.models.split(",") if args.models else None)
    return 0


def run_stop(args) -> int:
    from .serve import stop

    stop()
    return 0


def run_token(args) -> int:
    from .serve import RUN_DIR, running_pid, server_for

    if not running_pid(RUN_DIR):
        raise RuntimeError("TorchServe is not running: `make serve` first")
    server = server_for(RUN_DIR)
    print(server.refresh_token() if args.refresh else server.token())
    return 0


def run_ui(args) -> int:
    from . import tracking

    uri = args.tracking_uri or tracking.default_tracking_uri()
    tracking.configure(uri)  # creates mlruns/ on a fresh checkout
    print(f"MLflow UI on http://127.0.0.1:{args.port} over {uri} (Ctrl-C to stop)", flush=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        tracking.artifact_root(uri).as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    return subprocess.call(command, env={**os.environ, "MLFLOW_TRACKING_URI": uri})


def run_demo(args) -> int:
    from .demo import demo

    return demo()


COMMANDS = {
    "tune": run_tune,
    "archive": run_archive,
    "serve": run_serve,
    "stop": run_stop,
    "token": run_token,
    "ui": run_ui,
    "demo": run_demo,
}
