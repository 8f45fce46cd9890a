"""Stores private to their owner: `archives/`, the local `mlruns/`, `.serve/` hold training rows, runs and tokens.

A store is made 0700 whatever the umask; one found open to other users (made before this, or by hand) is
tightened on first use, everything in it at once, with one line saying so. Inside, each command creates its files
for its owner alone (`python -m training` runs under umask 077; MLflow and TorchServe write files themselves).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from training.infra.places import MLRUNS
from training.infra.processes import private_dir

OTHERS = 0o077  # the group's and the others' permission bits
UMASK = 0o077  # what `python -m training` creates files under


def owner_only(folder: Path) -> Path:
    """`folder` (made if need be) and everything in it readable by its owner alone; a line on stderr when it was
    not, naming what it was."""
    folder = Path(folder)
    if not folder.exists() or not stat.S_IMODE(folder.stat().st_mode) & OTHERS:
        return private_dir(folder)
    was = stat.S_IMODE(folder.stat().st_mode)
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            tighten(Path(parent) / name)
    folder.chmod(0o700)
    print(
        f"{folder} was open to other users ({was:04o}): tightened, with everything in it, to its owner alone",
        file=sys.stderr,
    )
    return folder


def tighten(path: Path) -> None:
    """`path` without its group's and others' permissions (a symbolic link is left as it is: it has none)."""
    mode = path.lstat().st_mode
    if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & OTHERS:
        path.chmod(stat.S_IMODE(mode) & ~OTHERS)


def database(path: Path) -> None:
    """A SQLite database or journal file of a local store, for its owner alone: its whole folder when that is
    `mlruns/` or new; in a folder that was there already (a path the user gave), the file itself (SQLite gives its
    -wal and -shm files the database's mode)."""
    path = Path(path)
    if not path.parent.exists() or path.parent.resolve() == MLRUNS.resolve():
        owner_only(path.parent)
        return
    if path.exists():
        tighten(path)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
