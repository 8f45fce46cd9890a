"""What the terminal shows while tuning: a bar (or plain lines when not a terminal), a line per stage after
the search, no library chatter, and Ctrl-C as one line with every finished trial kept and the runs closed."""

from __future__ import annotations

import io
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout

import optuna

INTERRUPTED = "interrupted by the user (SIGINT)"
NOISY_LOGGERS = ("mlflow", "alembic", "optuna", "urllib3", "git")


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during `tune`, after the finished trials were kept and the runs closed; the message says so."""


class CtrlC:
    """Ctrl-C during the search takes effect at the next safe point (an epoch's or a fold's end, a trial's
    end, the search's end), not wherever the signal lands: landing inside a database write, MLflow and
    SQLAlchemy turn the KeyboardInterrupt into "database is locked", which fails one trial and lets the
    study go on. A second Ctrl-C interrupts at once. Outside `with CTRL_C:` (or off the main thread, where
    signals cannot be handled) `check` never raises. A process started with Ctrl-C ignored (`nohup`, a
    background job of a script) keeps ignoring it."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> CtrlC:
        self.requested = False
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def __exit__(self, kind, *_) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if kind is None:
            self.check()  # asked for during the last trial: stop before the conclusion

    def _on_signal(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed since the search began."""
        if self.requested:
            self.requested = False
            raise KeyboardInterrupt


CTRL_C = CtrlC()


def stop_if_asked(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """An Optuna callback: after each trial, the search stops here if Ctrl-C was pressed."""
    CTRL_C.check()


class _NoInterruptTraces(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C with its whole traceback; the user pressed it, so drop that."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def quiet_libraries() -> None:
    """Library INFO lines (MLflow's database setup, alembic, Optuna's per-trial log) stay out of the output.

    Call after MLflow is imported: importing it configures its logger at INFO."""
    import mlflow  # noqa: F401  (so that its logger configuration is done before we change it)

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:
        handler.addFilter(_NoInterruptTraces())


def show_bar(requested: bool) -> bool:
    """A `\\r` progress bar only on a terminal (tqdm draws on stderr); plain lines otherwise."""
    return requested and sys.stderr.isatty()


def trial_line(metric: str):
    """An Optuna callback printing one plain line per finished trial (when there is no bar)."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state = trial.state.name.lower()
        value = f" {metric}={trial.value:.6g}" if trial.value is not None else ""
        reason = trial.user_attrs.get("fail_reason") or ""
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))  # as the sampler read it
        pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
        leader = pick(done, key=lambda t: t.value, default=None)
        best = f"  (best: #{leader.number} {metric}={leader.value:.6g})" if leader else ""
        print(f"trial {trial.number} {state}{value}{best}{'  ' + reason if reason else ''}", flush=True)

    return callback


@contextmanager
def stage(label: str) -> Iterator[None]:
    """`label ... 2.1 s` on one line; what libraries print meanwhile is shown only if the stage fails."""
    print(f"{label} ...", end="", flush=True)
    chatter, start = io.StringIO(), time.perf_counter()
    try:
        with redirect_stdout(chatter), redirect_stderr(chatter):
            yield
    except BaseException:
        print(" stopped", flush=True)
        if chatter.getvalue().strip():
            print(chatter.getvalue(), end="", file=sys.stderr)
        raise
    print(f" {time.perf_counter() - start:.1f} s", flush=True)


def close_interrupted(
    client, experiment_id: str, parent: str, study: optuna.Study, before: int, drain_writer
) -> TuneInterrupted:
    """Let the run writer write what it was sent (`drain_writer`), then close the trial runs still open and the
    parent run as KILLED with the reason; say what was kept."""
    main = threading.current_thread() is threading.main_thread()
    if main:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
    try:
        try:
            drain_writer()
        except Exception as error:  # said, and the runs closed all the same
            print(f"while stopping: {error}", file=sys.stderr)
        running = client.search_runs(
            [experiment_id], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"
        )
        for run in running:
            client.set_tag(run.info.run_id, "optuna.reason", INTERRUPTED)
            client.set_terminated(run.info.run_id, "KILLED")
        client.set_tag(parent, "reason", INTERRUPTED)
        client.set_terminated(parent, "KILLED")
        new = study.trials[before:]
        kept = sum(t.state.is_finished() and t.user_attrs.get("fail_reason") != INTERRUPTED for t in new)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    return TuneInterrupted(
        f"interrupted: {kept} finished trial(s) of this run kept in study {study.study_name!r} "
        f"({len(study.trials)} in all); its MLflow runs closed as KILLED"
    )
