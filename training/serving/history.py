"""What the running server has served: each model's versions in the order they were rolled in, oldest first.

`make serve` starts the list of each model with the version it serves; `make deploy` appends the version it
rolls in; `make rollback` drops the last one and serves the one before it again, so rolling back twice goes
back two rollouts, as far as the list goes. The list lives in the server's run directory (`.serve/history.json`,
0600, replaced whole on each write: a crash leaves the old list or the new one, never half of one) and starts
anew with the server, as its store of verified copies (what a rollback registers again) does.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.infra.processes import write_whole
from training.serving.errors import HistoryError, NothingToRollBackError

HISTORY = "history.json"


def history_path(run_dir: Path) -> Path:
    return Path(run_dir) / HISTORY


def load(run_dir: Path) -> dict[str, list[str]]:
    """Each model's versions served from `run_dir`, oldest first ({} before the first `make serve`)."""
    path = history_path(run_dir)
    if not path.exists():
        return {}
    try:
        return {name: [str(v) for v in versions] for name, versions in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError, TypeError) as error:
        raise HistoryError(
            f"{path} is not a history of served versions ({error}): `make serve` writes a new one"
        ) from None


def save(run_dir: Path, history: dict[str, list[str]]) -> None:
    path = history_path(run_dir)
    write_whole(path, json.dumps(history, indent=1, sort_keys=True).encode())  # readers see the old list or the new


def start_anew(run_dir: Path, served: dict[str, str]) -> None:
    """A fresh server: each model's history is the one version it starts with."""
    save(run_dir, {name: [version] for name, version in served.items()})


def versions(run_dir: Path, name: str) -> list[str]:
    return load(run_dir).get(name, [])


def record(run_dir: Path, name: str, served: list[str]) -> None:
    """`served` is now the history of `name`: the version serving it last."""
    save(run_dir, {**load(run_dir), name: served})


def after_rollout(served: list[str], version: str) -> list[str]:
    """The history once `version` is rolled in (a version deployed again over itself adds nothing)."""
    return served if served[-1:] == [version] else [*served, version]


def before_last_rollout(run_dir: Path, name: str) -> list[str]:
    """The history once the last rollout of `name` is undone: its last version is the one to serve again."""
    served = versions(run_dir, name)
    if not served:
        raise NothingToRollBackError(
            f"no version of {name} is recorded in {history_path(run_dir)}: the server started without it, "
            "so there is nothing to roll back to"
        )
    if len(served) == 1:
        raise NothingToRollBackError(
            f"nothing earlier than {name} version {served[0]} is recorded in {history_path(run_dir)}: it is the "
            "version `make serve` started with, or every rollout since has been rolled back"
        )
    return served[:-1]
