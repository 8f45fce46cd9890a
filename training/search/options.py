"""What one `make tune` asks for: the options, declared once (the CLI builds them from its arguments by name)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields

import optuna

from training.data import families, tables
from training.data.datasets import KINDS
from training.fit.loop import resolve_device
from training.infra import places
from training.search import space

# Heartbeats (retrying trials whose process died) are marked experimental in Optuna; we rely on them.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# A RUNNING trial (or parent run) silent for the grace period is failed (killed) and the trial retried.
HEARTBEAT_SECONDS = int(os.environ.get("TUNE_HEARTBEAT", 30))
GRACE_SECONDS = int(os.environ.get("TUNE_GRACE", 120))
DEFAULT_DATASET = "sine"  # tuned on when neither a data set nor a file is given


class TuneError(RuntimeError):
    """A tuning request that cannot run, or a study with no usable trial."""


@dataclass
class TuneOptions:
    """Every tuning option with its default, in this one place: `make tune` passes only what its user set, the
    CLI only what was given, and its --help states these."""

    model: str = "nw"
    dataset: str = ""  # a built-in data set, or "" with `data` (a user's file); neither given: DEFAULT_DATASET
    trials: int = 20
    timeout: float | None = None
    jobs: int = 0  # trials in parallel; 0 = one per GPU on multi-GPU hosts, else 1
    device: str = "auto"
    storage: str | None = None
    seed: int = 0
    epochs: int | None = None
    tracking_uri: str | None = None
    progress: bool = True
    conclude: bool = True  # False: leave the conclusion to `make conclude` (many workers, one conclusion)
    heartbeat: int = HEARTBEAT_SECONDS
    grace: int = GRACE_SECONDS
    # A user's CSV or Parquet file instead of a built-in data set (training/data/tables.py).
    data: str | None = None
    target: str | None = None
    features: tuple[str, ...] = ()
    task: str | None = None
    study_name: str | None = None  # default: <model>-<file name>
    id_column: str | None = None  # long-format sequences
    order_column: str | None = None

    def __post_init__(self) -> None:
        if not self.dataset and not self.data:
            self.dataset = DEFAULT_DATASET

    @classmethod
    def from_arguments(cls, args) -> TuneOptions:
        """From parsed command-line arguments named like the fields; those not given keep their defaults."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None})

    @property
    def storage_url(self) -> str:
        return self.storage or places.default_optuna_storage()

    @property
    def name(self) -> str:
        if self.data:
            return self.study_name or tables.default_name(self.model, self.data)
        return f"{self.model}-{self.dataset}"

    def table(self) -> tables.TableSpec:
        return tables.TableSpec(
            self.data, self.target, tuple(self.features), self.task, self.id_column, self.order_column
        )

    def validate(self) -> None:
        if self.model not in space.FAMILIES:
            raise TuneError(f"unknown model {self.model!r}; expected one of {sorted(space.FAMILIES)}")
        wanted = families.family(self.model).data
        if self.data:
            tables.check_request(self.model, self.table(), self.name)
        elif self.dataset not in KINDS:
            raise TuneError(f"unknown data set {self.dataset!r}; expected one of {sorted(KINDS)}")
        elif wanted not in KINDS[self.dataset]:
            fits = sorted(d for d, kinds in KINDS.items() if wanted in kinds)
            raise TuneError(f"model {self.model!r} takes {wanted} data ({', '.join(fits)}), not {self.dataset!r}")
        if self.trials < 1 or self.jobs < 0:
            raise TuneError("trials must be at least 1 and jobs at least 0 (0: one per GPU, else 1)")
        if self.heartbeat < 1 or self.grace <= self.heartbeat:
            raise TuneError(f"heartbeat ({self.heartbeat} s) must be at least 1 and below the grace ({self.grace} s)")
        resolve_device(self.device)
