"""A study reads well in the MLflow UI and optuna-dashboard, offline, and the terminal tells what is happening."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient

from training.fit.loop import FitResult
from training.infra.processes import free_port
from training.search import progress
from training.tracking import mlflow_store, plots, registry
from training.tracking.run_notes import BEST_TAG, NOTE_TAG, git_provenance

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "training"]


def get_note(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """optuna-dashboard's note on a finished trial, as the dashboard reads it."""
    from optuna_dashboard._note import get_note_from_system_attrs

    return get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), trial._trial_id)["body"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tuned(stores):
    """A small real study run as a user runs it, output piped (not a terminal)."""
    done = cli("tune", "--model", "nw", "--dataset", "sine", "--trials", "8", "--storage", stores["storage"],
               "--tracking-uri", stores["tracking_uri"])  # fmt: skip
    assert done.returncode == 0, done.stderr
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    experiment = client.get_experiment_by_name("nw-sine")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.kind = 'tuning'")
    return {"out": done.stdout + done.stderr, "client": client, "parent": parent, "eid": experiment.experiment_id}


def children(tuned):
    query = f"tags.mlflow.parentRunId = '{tuned['parent'].info.run_id}'"
    return tuned["client"].search_runs([tuned["eid"]], query, max_results=100)


def test_study_page_renders_offline_with_every_plot(stores, tuned):
    local = mlflow.artifacts.download_artifacts(
        run_id=tuned["parent"].info.run_id, artifact_path="optuna/study.html", tracking_uri=stores["tracking_uri"]
    )
    page = Path(local).read_text()
    external = re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", page, re.I)
    assert not external, external
    assert "Plotly.newPlot" in page and len(page) > 3_000_000  # plotly.js itself is inline
    for plot in ["optimization_history", "param_importances", "slice", "contour", "parallel_coordinate"]:
        assert f'id="{plot}"' in page, plot


def test_log_searched_parameters_get_log_axes(stores, tuned):
    from training.tracking.study_plots import draw_all

    study = optuna.load_study(study_name="nw-sine", storage=stores["storage"])
    figures, _ = draw_all(study)
    axes = [v for k, v in figures["slice"].layout.to_plotly_json().items() if k.startswith("xaxis")]
    by_title = {a.get("title", {}).get("text"): a.get("type") for a in axes}
    assert by_title["bandwidth"] == "log" and by_title["parametric"] != "log"


def test_a_plot_the_study_cannot_draw_is_skipped_with_why(tmp_path):
    from training.tracking.study_plots import draw_all

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    figures, skipped = draw_all(study)
    assert "optimization_history" in figures and "contour" not in figures
    assert skipped["contour"] and "pruning" in skipped["intermediate_values"]


def test_study_has_metric_names_and_each_trial_its_mlflow_link(stores, tuned):
    study = optuna.load_study(study_name="nw-sine", storage=stores["storage"])
    assert study.metric_names == ["best_val_mse"]
    for trial in study.trials:
        run_id = trial.user_attrs["mlflow_run_id"]
        route = f"/#/experiments/{tuned['eid']}/runs/{run_id}?workflowType=machine_learning"
        assert trial.user_attrs["mlflow_run_url"] == f"http://127.0.0.1:5000{route}"
        assert tuned["client"].get_run(run_id).data.tags["optuna.trial"] == str(trial.number)
    best = study.best_trial  # optuna-dashboard shows its note as a link to its run
    link = f"[{best.user_attrs['mlflow_run_id']}]({best.user_attrs['mlflow_run_url']})"
    assert get_note(study, best) == f"MLflow run of this trial (the study's best): {link}"


def test_parent_run_has_its_description_and_a_marked_winner(tuned):
    parent, client = tuned["parent"], tuned["client"]
    note = parent.data.tags[NOTE_TAG]
    best_run = parent.data.tags["best_trial_run_id"]
    assert f"(#/experiments/{tuned['eid']}/runs/{best_run}?workflowType=machine_learning)" in note  # a link
    assert parent.data.tags["champion_decision"] in note and "minimize" in note and "make tune MODEL=nw" in note
    assert parent.data.tags["mlflow.source.git.commit"] and parent.data.tags["git.dirty"] in ("true", "false")
    winners = [r for r in children(tuned) if r.data.tags.get(BEST_TAG) == "true"]
    assert [r.info.run_id for r in winners] == [best_run] and winners[0].info.run_name.endswith("(best)")
    tags = client.get_experiment(tuned["eid"]).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.trials"])  # the runs table with columns, best first
    assert f"(#/experiments/{tuned['eid']}/runs?workflowType=machine_learning&viewStateShareKey=trials)" in note
    assert view["orderByKey"] == "metrics.`best_val_mse`" and view["orderByAsc"] is True
    assert {"metrics.`best_val_mse`", "params.`bandwidth`", "tags.`optuna.state`"} <= set(view["selectedColumns"])


def test_pruned_runs_keep_the_objective_metric_and_say_so(tuned):
    pruned = [r for r in children(tuned) if r.data.tags["optuna.state"] == "PRUNED"]
    assert pruned, "the median pruner should stop some trials of an 8-trial study"
    for run in pruned:
        assert run.info.status == "KILLED" and run.info.run_name.endswith("(pruned)")
        assert "best_val_mse" in run.data.metrics


def test_terminal_output_is_plain_named_and_free_of_library_chatter(tuned):
    out = tuned["out"]
    assert "\r" not in out and " INFO " not in out and "Successfully registered" not in out
    assert re.search(r"^trial 0 (complete|pruned) val_mse=", out, re.M)
    for stage in ["refit best trial", "plots", "log the model", "champion decision"]:
        assert re.search(rf"^{stage}.* \.\.\. \d+\.\d s$", out, re.M), stage
    assert re.search(r"best trial +#\d+, best validation mse \d", out)
    assert "python -m training ui --tracking-uri sqlite:///" in out  # the link names the store actually used


def test_git_provenance_is_empty_outside_a_checkout(tmp_path):
    assert git_provenance(tmp_path) == {}


def test_learning_curve_marks_the_restored_epoch_even_at_zero():
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_mse": 0.5 + e} for e in (1, 2, 3)]
    result = FitResult(history=history, best_epoch=0, initial_val_metrics={"mse": 0.4})
    figure = plots.learning_curve(result, "mse")
    left, right = figure.axes
    assert list(right.lines[0].get_xdata()) == [0, 1, 2, 3]  # epoch 0 is on the curve
    marks = [line for ax in (left, right) for line in ax.lines if list(line.get_xdata()) == [0, 0]]
    assert len(marks) == 2 and left.get_ylabel() == "train loss" and right.get_ylabel() == "validation mse"
    plots.plt.close(figure)


def test_mha_heatmaps_show_inputs_pooling_and_every_head():
    from training.data.datasets import load_dataset, prepare_model
    from training.nn import SequenceConfig, build_model

    data = load_dataset("digits", seed=0)
    config = SequenceConfig(in_features=8, out_features=10, task="classification", d_model=16, n_heads=2, n_layers=2)
    model = prepare_model(build_model("mha", config), data)
    pooling = plots.mha_pooling_heatmap(model, data, n_examples=3)
    assert len(pooling.axes) == 6 and all(ax.images for ax in pooling.axes)
    assert len(pooling.axes[0].texts) == 64  # the 8 x 8 input values are written on the map
    assert [t.get_text() for t in pooling.axes[1].get_xticklabels()] == ["pooling"]
    heads = plots.mha_head_maps(model, data, n_examples=2)
    maps = [ax for ax in heads.axes if ax.get_title().startswith("test #")]
    assert len(maps) == 2 * 2 * 2 and all(ax.images for ax in maps)  # examples x layers x heads
    plots.plt.close("all")


@pytest.fixture
def interactive_ctrl_c():
    """Ctrl-C as in a terminal, whatever launched the tests (a background job of a script ignores it)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_during_the_search_waits_for_a_safe_point_and_a_second_one_does_not(interactive_ctrl_c):
    """A first Ctrl-C only asks (a signal landing inside a database write would be turned into another error
    by MLflow and SQLAlchemy, and the study would go on); the search stops at its next check. A second
    Ctrl-C interrupts at once, and outside the search Ctrl-C is the usual KeyboardInterrupt again."""
    with pytest.raises(KeyboardInterrupt):
        with progress.CTRL_C:
            signal.raise_signal(signal.SIGINT)  # no exception here: only asked
            asked = progress.CTRL_C.requested
            progress.CTRL_C.check()
    assert asked
    with pytest.raises(KeyboardInterrupt):
        with progress.CTRL_C:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # raises here
            pytest.fail("a second Ctrl-C did not interrupt")
    with pytest.raises(KeyboardInterrupt):
        with progress.CTRL_C:
            signal.raise_signal(signal.SIGINT)  # during the last trial: the search ends, then it stops
    progress.CTRL_C.check()  # nothing pending after the search
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_a_search_started_with_ctrl_c_ignored_keeps_ignoring_it(interactive_ctrl_c):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup
    with progress.CTRL_C:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        progress.CTRL_C.check()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.e2e  # real `tune` processes, killed or interrupted
def test_ctrl_c_keeps_finished_trials_and_closes_the_runs_as_killed(tmp_path):
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    command = [*CLI, "tune", "--model", "nw", "--dataset", "sine", "--trials", "500", "--no-progress"]
    process = subprocess.Popen(
        [*command, "--storage", storage, "--tracking-uri", uri],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal, however we run
    )
    try:
        lines = []
        while not any(line.startswith("trial 1 ") for line in lines):  # two trials finished
            line = process.stdout.readline()
            assert line, "tune ended before its second trial:\n" + "".join(lines)
            lines.append(line)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    interrupted = [line for line in rest.splitlines() if line.strip()]
    assert len(interrupted) <= 2 and interrupted[-1].startswith("interrupted:"), rest  # a trial line may race it
    study = optuna.load_study(study_name="nw-sine", storage=storage)
    kept = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(kept) >= 2
    client = MlflowClient(uri, uri)
    runs = client.search_runs([client.get_experiment_by_name("nw-sine").experiment_id], max_results=1000)
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "tuning"]
    assert parent.info.status == "KILLED" and "SIGINT" in parent.data.tags["reason"]


def test_unknown_archive_name_lists_the_champions(stores, tuned):
    from training.serving.archive import archive_champions

    with pytest.raises(registry.NoChampionError) as error:
        archive_champions("nw-sinee", tracking_uri=stores["tracking_uri"])
    assert "nw-sinee" in str(error.value) and "champions: nw-sine" in str(error.value)


def test_mark_version_sets_an_alias_and_a_stamp(stores, tuned):
    client = mlflow_store.configure(stores["tracking_uri"])
    registry.mark_version(client, "nw-sine", "1", "archived")
    version = client.get_model_version_by_alias("nw-sine", "archived")
    assert str(version.version) == "1" and version.tags["archived_at"].endswith("Z")


# the review UIs as processes


def descendants(pid: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def serve_then_stop(args: list[str], url: str, while_up: Callable[[], None] = lambda: None) -> bytes:
    """Start a UI command, fetch `url` once it answers, run `while_up`, SIGTERM the wrapper: it and every server
    process end."""
    wrapper = subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    servers: set[int] = set()
    try:
        deadline, body = time.monotonic() + 120, None
        while body is None and time.monotonic() < deadline and wrapper.poll() is None:
            try:
                body = urllib.request.urlopen(url, timeout=2).read()
            except OSError:
                time.sleep(0.5)
        assert body is not None, wrapper.communicate(timeout=30)[0]
        while_up()
        servers = descendants(wrapper.pid)
        assert servers
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while any(alive(p) for p in servers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in servers if alive(p)], "server processes outlived their wrapper"
    finally:
        for pid in {wrapper.pid, *servers, *descendants(wrapper.pid)}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wrapper.wait()
    return body


@pytest.mark.e2e  # starts a real UI server
def test_dashboard_serves_the_studies_on_loopback_and_stops_cleanly(stores, tuned):
    port = free_port()
    studies = f"http://127.0.0.1:{port}/api/studies"

    def refused(method: str, host: str) -> int:
        request = urllib.request.Request(f"{studies}/0", method=method, headers={"Host": host})
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=10)
        return error.value.code

    def guarded() -> None:  # a rebound name gets nothing; read-only, loopback may not delete either
        assert refused("GET", f"rebound.example:{port}") == 403 and refused("DELETE", f"127.0.0.1:{port}") == 405

    args = ["dashboard", "--port", str(port), "--storage", stores["storage"], "--read-only"]
    body = serve_then_stop(args, studies, guarded)
    assert "nw-sine" in [s["study_name"] for s in json.loads(body)["study_summaries"]]


@pytest.mark.e2e  # starts a real UI server
def test_the_ui_serves_the_store_on_loopback_and_ends_with_its_wrapper(stores, tuned):
    port = free_port()
    experiment = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=nw-sine"
    body = serve_then_stop(["ui", "--port", str(port), "--tracking-uri", stores["tracking_uri"]], experiment)
    assert json.loads(body)["experiment"]["experiment_id"] == tuned["eid"]


@pytest.mark.e2e  # starts a real UI server
def test_ui_on_a_busy_port_exits_non_zero_with_the_cause(stores):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = cli("ui", "--port", str(busy.getsockname()[1]), "--tracking-uri", stores["tracking_uri"])
    assert done.returncode != 0 and "busy" in done.stderr and "Traceback" not in done.stderr


def test_a_stop_asked_while_the_ui_is_still_starting_is_a_clean_stop(monkeypatch):
    """SIGTERM before the server answers: the wrapper stops it and returns 0, not 'exited before answering'."""
    from training.operations import ui

    never_answers = [sys.executable, "-c", "import time; time.sleep(60)"]
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert ui.run_foreground(never_answers, free_port(), "/health", "a slow UI") == 0
