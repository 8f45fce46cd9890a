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
from collections.abc import Callable

from training.tracking.trial_record import FLUSH_SECONDS


class WriterError(RuntimeError):
    """The MLflow writer refused a write or ended; its message names which."""


class RunWriter:
    """`tune`'s end of the writer process: `connect` to a store, `open` a trial's run, `epoch`, `close`; `run_id`
    once it is known; `drain` before reading the runs. `shared()` is the process's writer: started once (it takes a
    second or two to import MLflow), used by every `tune` of the process, ended when the process ends."""

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
        self.process = subprocess.Popen(
            [sys.executable, "-m", "training.tracking.run_writer", str(answers_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(answers_fd,),
            start_new_session=True,  # not stopped by the terminal's Ctrl-C, nor by a kill of tune's group
            text=True,
        )
        os.close(answers_fd)
        self._answers = os.fdopen(answers)
        self._lock, self._changed = threading.Lock(), threading.Condition()
        self._next_key = self._syncs = self._synced = 0
        self._run_ids: dict[int, str] = {}
        self._error: str | None = None
        self._ended = False
        self._reader = threading.Thread(target=self._read_answers, name="mlflow-writer-answers", daemon=True)
        self._reader.start()

    def connect(self, tracking_uri: str, flush_seconds: float = FLUSH_SECONDS) -> None:
        """Write to this store from now on (once `tune` configured it: a new SQLite store's tables are made once).
        A refusal of an earlier `tune` is forgotten; a writer that ended raises."""
        with self._changed:
            if not self._ended:
                self._error = None
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

    def run_id(self, key: int, wait: bool) -> str | None:
        """The run's id: None while the writer has not created it, unless `wait`."""
        with self._changed:
            while wait and key not in self._run_ids:
                self._raise_if_failed()
                self._changed.wait(1.0)
            return self._run_ids.pop(key, None) if wait or key in self._run_ids else None

    def drain(self, quiet: bool = False) -> None:
        """Return once everything sent so far is written; raise what MLflow refused, unless `quiet` (`tune` is
        failing already, or says it otherwise)."""
        try:
            with self._lock:
                number = self._syncs = self._syncs + 1
            self._send({"op": "sync", "number": number})
            with self._changed:
                while self._synced < number:
                    self._raise_if_failed()
                    self._changed.wait(1.0)
            self.check()
        except WriterError:
            if not quiet:
                raise

    def stop(self, quiet: bool = False) -> None:
        """End the writer: its input closed, it writes everything sent and exits."""
        if not self._ended:
            self._ended = True
            with self._lock, contextlib.suppress(OSError):
                self.process.stdin.close()
            self.process.wait()
            self._reader.join()
        if not quiet:
            self.check()

    def check(self) -> None:
        with self._changed:
            self._raise_if_failed()

    # the plumbing

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WriterError(self._error)

    def _send(self, message: dict) -> None:
        line = json.dumps(message, allow_nan=False) + "\n"
        with self._lock:
            try:
                self.process.stdin.write(line)
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError):  # the writer ended (its end of the pipe, or ours, closed)
                self.process.wait()
                self._failed(f"the MLflow writer process ended (exit code {self.process.returncode})")
        self.check()

    def _read_answers(self) -> None:
        for line in self._answers:
            answer = json.loads(line)
            with self._changed:
                if "run_id" in answer:
                    self._run_ids[answer["key"]] = answer["run_id"]
                elif "synced" in answer:
                    self._synced = answer["synced"]
                elif "error" in answer and self._error is None:
                    self._error = answer["error"]
                self._changed.notify_all()
        if not self._ended:  # not stopped: it died
            self._ended = True
            self._failed("the MLflow writer process ended (see its message above)")

    def _failed(self, message: str) -> None:
        with self._changed:
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
        """End the run (its id first on the trial, so that the trial's last write carries it)."""
        self.linked(wait=True)
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
    for line in messages:
        message = json.loads(line)
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
                answer({"error": f"the MLflow writer cannot open the tracking store: {error}"})
                continue
            name = records[key].name if key in records else message.get("name", f"run {key}")
            answer({"error": f"MLflow refused {op} of {name}: {type(error).__name__}: {error}"})
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
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    serve(iter(sys.stdin), answer)


if __name__ == "__main__":
    main()
