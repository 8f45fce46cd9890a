"""A search's trial runs written to MLflow by a child process, off the trials' path.

An MLflow write costs tens of milliseconds of Python (the store's ORM), about what a small model takes to train a
whole trial; in a thread it would hold the same interpreter lock as the training. So `tune` starts one writer
process (`python -m training.tracking.run_writer`) and sends it each trial's run as it happens: opened, every
epoch's metrics, closed. The writer keeps a `TrialRecord` per run (metrics written in batches, every
`FLUSH_SECONDS` and at the close) and answers with each new run's id, which the trial then carries.

- Messages are JSON lines: the tracking URI goes over the pipe (never on a command line); credentials come with
  the environment, as for `tune` itself. The answers use a pipe of their own: a library printing to the writer's
  standard output cannot garble them.
- The writer runs in a session of its own: Ctrl-C in the terminal, or a kill of `tune`'s process group, leaves it
  to write what it was sent. When `tune` ends, however it ends, the writer reads the end of its input, writes what
  it holds (the epochs of a run still open; `tune`'s next invocation closes that run) and exits. So a `kill -9`
  loses at most the epoch that was training, and every write is a whole MLflow call.
- `drain` waits until everything sent so far is written: `tune` drains before the conclusion reads the runs,
  before it closes runs itself (Ctrl-C), and before it closes its parent run. A write MLflow refused is raised
  in `tune` as a `WriterError` at the next trial or at the drain; a writer that died is one too.
- One writer serves a process (`RunWriter.shared()`): `make tune` starts it before its own imports, and a
  program that tunes several times reuses it. It ends with the process.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from training.tracking.trial_record import FLUSH_SECONDS

# How long `tune` waits for the writer before it says so and stops (an MLflow server retrying a request waits
# minutes itself).
WAIT_SECONDS = 600.0


class WriterError(RuntimeError):
    """The MLflow writer refused a write or ended; its message names which."""


class RunWriter:
    """`tune`'s end of the writer process: `connect` to a store, `open` a trial's run, `epoch`, `close`; `run_id`
    once it is known; `drain` before reading the runs. `shared()` is the process's writer: started once (it takes a
    second or two to import MLflow), used by every `tune` of the process, ended when the process ends.

    A write MLflow refused is kept and raised by the next `open` (the search stops before its next trial) or by
    `drain`, never in another trial's epoch. A writer that died is raised by any call."""

    _shared: RunWriter | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> RunWriter:
        with cls._shared_lock:
            if cls._shared is None or cls._shared._ended:
                cls._shared = cls()
                atexit.register(cls._shared.stop, quiet=True)
            return cls._shared

    def __init__(self):
        """Start the process; it imports MLflow meanwhile and waits for `connect`."""
        answers, answers_fd = os.pipe()
        here = str(Path(__file__).resolve().parents[2])  # where `training` is, wherever tune was started from
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "training.tracking.run_writer", str(answers_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(answers_fd,),
            env={**os.environ, "PYTHONPATH": path},
            start_new_session=True,  # not stopped by the terminal's Ctrl-C, nor by a kill of tune's group
            text=True,
        )
        os.close(answers_fd)
        self._answers = os.fdopen(answers)
        self._lock, self._changed = threading.Lock(), threading.Condition()
        self._next_key = self._syncs = self._synced = 0
        self._run_ids: dict[int, str] = {}
        self._refused: dict[int, str] = {}  # key -> why its run could not be created
        self._error: str | None = None  # the first refusal since `connect`, or the writer's end
        self._ended = self._died = self._connected = False
        self._reader = threading.Thread(target=self._read_answers, name="mlflow-writer-answers", daemon=True)
        self._reader.start()

    def connect(self, tracking_uri: str, flush_seconds: float = FLUSH_SECONDS) -> None:
        """Write to this store from now on (once `tune` configured it: a new SQLite store's tables are made once).
        What an earlier search had refused was raised by its drain; a writer that ended raises."""
        with self._changed:
            if not self._died:
                self._error = None
        self._connected = True
        self._send({"op": "connect", "tracking_uri": tracking_uri, "flush_seconds": flush_seconds})

    # what `tune` sends

    def open(self, experiment_id: str, name: str, tags: dict[str, str], params: dict) -> int:
        """Start a run; returns the key that names it in later calls (its id comes back later: `run_id`)."""
        self.check()
        with self._lock:
            key = self._next_key = self._next_key + 1
        self._send({"op": "open", "key": key, "experiment": experiment_id, "name": name, "tags": tags,
                    "params": {k: str(v) for k, v in params.items()}})  # fmt: skip
        return key

    def epoch(self, key: int, values: dict[str, float], step: int) -> None:
        self._send({"op": "epoch", "key": key, "values": values, "step": step})

    def close(self, key: int, state: str, status: str, reason: str | None, metrics: dict, suffix: str) -> None:
        self._send({"op": "close", "key": key, "state": state, "status": status, "reason": reason,
                    "metrics": metrics, "suffix": suffix})  # fmt: skip

    def run_id(self, key: int, wait: bool, timeout: float = WAIT_SECONDS) -> str | None:
        """The run's id: None while the writer has not created it, unless `wait` (then the refusal of this run,
        the writer's end, or no answer within `timeout` raise)."""
        with self._changed:
            if wait:
                self._wait_for(lambda: key in self._run_ids or key in self._refused, timeout, "a run's creation")
                if key in self._refused:
                    raise WriterError(self._refused.pop(key))
            return self._run_ids.pop(key, None)

    def drain(self, quiet: bool = False, timeout: float = WAIT_SECONDS) -> None:
        """Return once everything sent so far is written (or the writer ended, or `timeout` passed); then raise
        what MLflow refused, unless `quiet` (`tune` is failing already and says why itself)."""
        try:
            with self._lock:
                number = self._syncs = self._syncs + 1
            self._send({"op": "sync", "number": number})
            with self._changed:
                self._wait_for(lambda: self._synced >= number, timeout, "the runs written")
            self.check()
        except WriterError:
            if not quiet:
                raise

    def stop(self, quiet: bool = False) -> None:
        """End the writer: its input closed, it writes everything sent and exits (waited for a minute at most:
        a writer still busy then finishes alone)."""
        if not self._ended:
            self._ended = True
            if not self._connected:  # it never had anything to write (tune refused its options): no need to wait
                self.process.kill()
            with self._lock, contextlib.suppress(OSError):
                self.process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        if not quiet:
            self.check()

    def check(self) -> None:
        with self._changed:
            if self._error is not None:
                raise WriterError(self._error)

    # the plumbing

    def _wait_for(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Under `_changed`: until `done()`, the writer's death (raised) or `timeout` (raised)."""
        deadline = time.monotonic() + timeout
        while not done():
            if self._died:
                raise WriterError(self._error or "the MLflow writer process ended")
            left = deadline - time.monotonic()
            if left <= 0:
                raise WriterError(f"the MLflow writer has not answered in {timeout:.0f} s (waiting for {what})")
            self._changed.wait(min(left, 1.0))

    def _send(self, message: dict) -> None:
        line = json.dumps(message, allow_nan=False) + "\n"
        with self._lock:
            try:
                self.process.stdin.write(line)
                self.process.stdin.flush()
                return
            except (BrokenPipeError, ValueError):  # the writer ended (its end of the pipe, or ours, closed)
                pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self._dead(f"the MLflow writer process ended (exit code {self.process.returncode})")
        self.check()

    def _read_answers(self) -> None:
        for line in self._answers:
            answer = json.loads(line)
            with self._changed:
                if "run_id" in answer:
                    self._run_ids[answer["key"]] = answer["run_id"]
                elif "synced" in answer:
                    self._synced = answer["synced"]
                elif "error" in answer:
                    if answer.get("key") is not None and answer.get("op") == "open":
                        self._refused[answer["key"]] = answer["error"]
                    self._error = self._error or answer["error"]
                self._changed.notify_all()
        if not self._ended:  # not stopped: it died
            self._dead("the MLflow writer process ended (see its message above)")

    def _dead(self, message: str) -> None:
        with self._changed:
            self._ended = self._died = True
            self._error = self._error or message
            self._changed.notify_all()


class WrittenRecord:
    """One trial's run, written by the writer: the `TrialRecord` calls, and the run's links set on the trial (with
    `link`) as soon as its id is known. `links_of` makes them from the run id."""

    def __init__(self, writer: RunWriter, key: int, link: Callable[[dict[str, str]], None], links_of):
        self.writer, self.key, self._link, self._links_of = writer, key, link, links_of
        self.links: dict[str, str] = {}

    def epoch(self, values: dict[str, float], step: int) -> None:
        self.writer.epoch(self.key, finite(values), step)
        self.linked(wait=False)

    def close(self, state: str, status: str, reason: str | None = None, metrics=None, suffix: str = "") -> None:
        """End the run (its id first on the trial, so that the trial's last write carries it; a run the writer
        could not create is closed all the same, for nothing, and its refusal raised)."""
        try:
            self.linked(wait=True)
        finally:
            self.writer.close(self.key, state, status, reason, finite(metrics or {}), suffix)

    def linked(self, wait: bool) -> bool:
        if not self.links:
            run_id = self.writer.run_id(self.key, wait)
            if run_id is not None:
                self.links = self._links_of(run_id)
                self._link(self.links)
        return bool(self.links)


def finite(values: dict) -> dict[str, float]:
    """Metrics as JSON can carry them: floats, the non-finite left out (MLflow's record leaves them out too)."""
    return {k: float(v) for k, v in values.items() if math.isfinite(v)}


# the writer process


def serve(messages, answer: Callable[[dict], None]) -> None:
    """Write what `messages` (JSON lines) ask, answering through `answer`, until they end; then write what open
    runs hold."""
    from training.tracking import mlflow_store
    from training.tracking.trial_record import TrialRecord

    client, flush_seconds = None, FLUSH_SECONDS
    records: dict[int, TrialRecord] = {}
    try:
        for line in messages:
            try:
                message = json.loads(line)
            except ValueError:  # a line cut short: tune was killed while sending it
                continue
            op, key = message["op"], message.get("key")
            try:
                if op == "sync":
                    answer({"synced": message["number"]})
                elif op == "connect":
                    client, flush_seconds = None, message["flush_seconds"]
                    client = mlflow_store.configure(message["tracking_uri"])
                elif client is None:  # (its store could not be opened: answered already)
                    continue
                elif op == "open":
                    run = client.create_run(message["experiment"], run_name=message["name"], tags=message["tags"])
                    run_id = run.info.run_id
                    records[key] = TrialRecord(client, run_id, message["name"], flush_seconds, message["params"])
                    answer({"key": key, "run_id": run_id})
                elif key in records:  # (a run whose opening failed: its error was answered already)
                    if op == "epoch":
                        records[key].epoch(message["values"], message["step"])
                    elif op == "close":
                        fields = ("state", "status", "reason", "metrics", "suffix")
                        records.pop(key).close(*(message[f] for f in fields))
            except Exception as error:  # answered; tune raises it
                if op == "connect":
                    why = f"the MLflow writer cannot open the tracking store: {error}"
                else:
                    name = records[key].name if key in records else message.get("name", f"run {key}")
                    why = f"MLflow refused {op} of {name}: {type(error).__name__}: {error}"
                answer({"error": why, "op": op, "key": key})
    finally:
        for record in records.values():  # tune ended with these open (killed): what they hold, written
            try:
                record.flush()
            except Exception as error:
                print(f"MLflow writer: {record.name}'s last epochs not written: {error}", file=sys.stderr)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ends when tune's end of the pipe closes, never half-way
    os.nice(10)  # training first: torch's threads stall when a core they use is taken
    answers = os.fdopen(int(sys.argv[1]), "w")
    os.dup2(2, 1)  # whatever prints goes to the terminal's error stream, never into the answers

    def answer(message: dict) -> None:
        try:
            answers.write(json.dumps(message) + "\n")
            answers.flush()
        except OSError:  # tune is gone (killed): nobody to answer, and everything sent is still written
            pass

    try:
        serve(iter(sys.stdin), answer)
    finally:
        with contextlib.suppress(OSError):
            answers.close()


if __name__ == "__main__":
    main()
