"""`python -m training <command>`: the same commands as the Makefile targets."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from training.arguments import build_parser, given
from training.infra import storage_urls
from training.tracking import mlflow_store

__all__ = ["COMMANDS", "build_parser", "main"]


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

    from training.search.options import TuneOptions
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
        args.name, args.storage, args.tracking_uri, **given(args, "device", "heartbeat", "grace"), data_file=args.data
    )
    print_conclusion(args.name, conclusion, client.tracking_uri, experiment_id, run_id)
    return 0


def run_tracking_server(args) -> int:
    from training.operations import server as tracking_server
    from training.operations import server_state

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
    from training.operations import server as tracking_server

    stopped = tracking_server.stop(args.state_dir or tracking_server.STATE)
    print("tracking server stopped" if stopped else "no tracking server was running")
    return 0


def run_archive(args) -> int:
    from training.serving.archive import Checks, archive_champions
    from training.serving.store import archive_info

    checks = Checks(args.data, args.unverified)
    built = archive_champions(
        args.name, out_dir=args.out, tracking_uri=args.tracking_uri, explain_keys=args.explain_keys, checks=checks
    )
    for path in built:
        info = archive_info(path)
        print(f"built {path} (explanations reveal the training rows' {info['explain_keys']})")
        if not info["retested"]:
            print(
                f"  signed UNVERIFIED: {info['name']} version {info['version']}'s data is not at hand", file=sys.stderr
            )
    return 0


def run_score(args) -> int:
    from training.serving.score import BATCH_ROWS, score_file

    done = score_file(args.name, args.data, args.out, args.tracking_uri, args.batch_rows or BATCH_ROWS)
    rate = f"{done.rows / max(done.seconds, 1e-9):,.0f} rows/s"
    print(f"scored {done.rows:,} rows with {args.name} version {done.version} in {done.seconds:.1f} s ({rate})")
    print(f"wrote {done.out}")
    return 0


def run_serve(args) -> int:
    from training.serving.deploy import mark_serving
    from training.serving.serve import RUN_DIR, start
    from training.serving.store import archive_info, private_store

    names = args.models.split(",") if args.models else None
    if args.replicas is not None and args.replicas > 1:
        return run_fleet(args, names)
    if args.hosts:
        raise ValueError("HOSTS names each replica's address: give REPLICAS=N (N > 1) with it")
    front_door = shutil.which("haproxy") is not None
    start(
        models=names, trust_unsigned=args.trust_unsigned, tracking_uri=args.tracking_uri, allow_older=args.allow_older,
        front_door=front_door,
    )  # fmt: skip
    if not front_door:
        print("  note        no HAProxy (`make haproxy`): /v2/models/<name>, its /ready and /versions/ answer 404")
    for served in sorted(private_store(RUN_DIR).glob("*.mar")):  # the verified copies the server reads
        version = str(archive_info(served)["version"])
        print(f"  registry    {served.stem}: {mark_serving(served.stem, version, args.tracking_uri)}")
    return 0


def run_fleet(args, names: list[str] | None) -> int:
    from training.serving import fleet
    from training.serving.deploy import mark_serving
    from training.serving.store import archive_info, private_store

    started = fleet.start(
        args.replicas, names, trust_unsigned=args.trust_unsigned, tracking_uri=args.tracking_uri,
        allow_older=args.allow_older, hosts=list(args.hosts) if args.hosts else None,
    )  # fmt: skip
    first = Path(started.replicas[0].run_dir)
    served = sorted(private_store(first).glob("*.mar"))
    fleet.print_usage(started, [copy.stem for copy in served])
    for copy in served:
        version = str(archive_info(copy)["version"])
        print(f"  registry    {copy.stem}: {mark_serving(copy.stem, version, args.tracking_uri)}")
    return 0


def run_deploy(args) -> int:
    from training.serving import fleet, fleet_rollout
    from training.serving.deploy import deploy

    rollout = (fleet_rollout.deploy if fleet.read() is not None else deploy)(
        args.name, tracking_uri=args.tracking_uri, trust_unsigned=args.trust_unsigned, allow_older=args.allow_older
    )
    replaced = f" (replaced version {', '.join(rollout.previous)})" if rollout.previous else ""
    print(f"{rollout.name} now serves version {rollout.version}{replaced} in {rollout.seconds:.1f} s")
    print(f"registry: {rollout.registry}")
    for line in rollout.notes:
        print(f"note: {line}")
    return 0


def run_rollback(args) -> int:
    from training.serving import fleet, fleet_rollout
    from training.serving.rollback import rollback

    undo = fleet_rollout.rollback if fleet.read() is not None else rollback
    back = undo(args.name, tracking_uri=args.tracking_uri, trust_unsigned=args.trust_unsigned)
    replaced = ", ".join(back.previous)
    print(
        f"{back.name} serves version {back.version} again (rolled back from version {replaced}) in {back.seconds:.1f} s"
    )
    print(f"registry: {back.registry}")
    return 0


def run_canary(args) -> int:
    from training.serving import canary

    started = canary.start(
        args.name, args.percent, tracking_uri=args.tracking_uri, trust_unsigned=args.trust_unsigned,
        allow_older=args.allow_older,
    )  # fmt: skip
    gate = canary.Gate(**started.gate)
    share = f"version {started.version} takes {started.percent} % of its traffic, beside version {started.serving}"
    print(f"{started.name}: {share}")
    print(f"gate: every {gate.interval_s:g} s over the last {gate.window_s:g} s; it aborts the canary on its own when")
    print(f"it does worse (make status shows it). Finish with `make promote NAME={args.name}` or `make abort ...`")
    return 0


def run_promote(args) -> int:
    from training.serving import canary

    rollout = canary.promote(args.name, tracking_uri=args.tracking_uri, trust_unsigned=args.trust_unsigned)
    print(f"{rollout.name} now serves version {rollout.version} on every replica in {rollout.seconds:.1f} s")
    print(f"registry: {rollout.registry}")
    return 0


def run_abort(args) -> int:
    from training.serving import canary

    ended = canary.abort(args.name)
    print(f"{ended.name}: every request goes to version {ended.serving} again; version {ended.version} unregistered")
    return 0


def run_stop(args) -> int:
    from training.serving import fleet
    from training.serving.serve import stop

    fleet.stop() or stop()
    return 0


def run_status(args) -> int:
    from training.serving import fleet
    from training.serving.serve import RUN_DIR, running_server

    if fleet.read(RUN_DIR) is not None:
        from training.serving import canary

        print("\n".join(fleet.status_lines(RUN_DIR)))
        for state in canary.canaries(RUN_DIR):
            share = f"{state.percent} % on version {state.version} beside {state.serving}"
            print(f"  canary      {state.name}: {share}: {state.status}{f' ({state.reason})' if state.reason else ''}")
        return 0
    server = running_server(RUN_DIR)
    print(f"one TorchServe in {RUN_DIR}: {server.health()} at {server.inference_url}")
    for line in front_lines(server):
        print(line)
    for name in server.models():
        versions = ", ".join(
            f"v{v['modelVersion']}{' (default)' if v.get('isDefault', True) else ''}: "
            f"{sum(w.get('status') == 'READY' for w in v.get('workers', []))} ready workers, "
            f"{v.get('jobQueueStatus', {}).get('pendingRequests', 0)} queued"
            for v in server.versions(name)
        )
        print(f"  {name:<14} {versions}")
    return 0


def front_lines(server) -> list[str]:
    """Whether one server's front door and gRPC service run (`make serve` starts both)."""
    from training.infra.processes import pid_alive
    from training.serving import balancer, oip_grpc, serve

    pid_file = server.run_dir / serve.FRONT_DIR / balancer.PID_FILE
    front = pid_file.exists() and pid_alive(int(pid_file.read_text()))
    lines = [f"  front door  {'HAProxy, running' if front else 'none: TorchServe answers on its own address'}"]
    if server.grpc_address:
        state = "running" if oip_grpc.running(server.run_dir) else "not running"
        lines.append(f"  gRPC        {server.grpc_address} ({state})")
    return lines


def run_keeper(args) -> int:
    from training.serving.keeper import keep
    from training.serving.serve import RUN_DIR

    keep(Path(args.run_dir) if args.run_dir else RUN_DIR)
    return 0


def run_token(args) -> int:
    from training.infra.processes import write_secret
    from training.serving import fleet
    from training.serving.serve import AUTH_HEADER, RUN_DIR, running_server

    run_dir = Path(args.run_dir) if args.run_dir else RUN_DIR
    if fleet.read(run_dir) is not None:  # the fleet's one token, checked at the balancer; it does not expire
        token = fleet.front(run_dir).token()
        print(write_secret(run_dir / AUTH_HEADER, f"Authorization: Bearer {token}\n") if args.header_file else token)
        return 0
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
    from training.operations.ui import mlflow_ui

    uri = args.tracking_uri or mlflow_store.default_tracking_uri()
    if uri.startswith(("http://", "https://")):  # a tracking server already is the UI
        mlflow_store.check_tracking_uri(uri)
        print(f"MLflow UI: {storage_urls.redact(uri)} (the tracking server in use serves it)")
        return 0
    return mlflow_ui(args.port, uri)


def run_dashboard(args) -> int:
    from training.operations.ui import dashboard

    return dashboard(args.port, args.storage, args.allowed_hosts, args.read_only)


def run_monitor(args) -> int:
    from training.infra import places
    from training.serving import monitor

    url = monitor.start(port=args.port, interval=args.interval)
    print(f"Prometheus: {url} (scraping TorchServe every {args.interval}; alert rules: {url}/alerts)")
    password = places.MONITOR_DIR / monitor.PASSWORD_FILE
    print(f"  log in as {monitor.USER!r} with the password in {password} (0600; yours alone)")
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
    "canary": run_canary,
    "promote": run_promote,
    "abort": run_abort,
    "stop": run_stop,
    "status": run_status,
    "keeper": run_keeper,
    "token": run_token,
    "ui": run_ui,
    "dashboard": run_dashboard,
    "monitor": run_monitor,
    "monitor-stop": run_monitor_stop,
    "demo": run_demo,
}
