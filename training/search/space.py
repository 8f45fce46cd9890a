"""Optuna search spaces, apart from model code: suggest(trial) -> (model config, fit config).

The same functions rebuild the best trial exactly: `suggest(optuna.trial.FixedTrial(best_params), ...)`.
Each model kind's search (its space, and what a study of it starts with) is its `SearchFamily`, in `FAMILIES` by
the name of its `Family` (`training/nn/families.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import optuna

from training.data.datasets import Dataset, as_images
from training.data.tables import model_fields
from training.fit.loop import FitConfig
from training.nn import (
    NWConfig,
    PixelConfig,
    Seq2SeqConfig,
    SequenceConfig,
    nadaraya_watson,
    pixel,
    seq2seq,
    sequence_model,
)
from training.nn.family import Family

# Epochs per trial unless the user sets --epochs; keeps `make tune` on the CPU short.
DEFAULT_EPOCHS = {"sine": 30, "diabetes": 60, "adding": 8, "digits": 20, "dates": 5}
FILE_EPOCHS = 30  # a user's file (training/data/tables.py)


def default_epochs(model: str, dataset: str) -> int:
    """Epochs per trial of `<model>-<dataset>` unless the user sets --epochs."""
    own = FAMILIES[model].epochs if model in FAMILIES else {}
    return own.get(dataset, DEFAULT_EPOCHS.get(dataset, FILE_EPOCHS))


@dataclass
class TrialSetup:
    model_kind: str
    model_config: NWConfig | SequenceConfig | Seq2SeqConfig | PixelConfig
    fit_config: FitConfig


# NW's memory: every training row up to ALL_ROWS_ALONE_UP_TO rows (the reference experiment and small files keep
# the exact model); beyond, M prototypes of them (training/nn/prototypes.py), and every row too up to ALL_ROWS_UP_TO.
ALL_ROWS_ALONE_UP_TO, ALL_ROWS_UP_TO = 4_096, 20_000
PROTOTYPE_CHOICES = (256, 1024, 4096)
EPOCH_ROWS = 600_000  # rows a prototype trial trains on in all, at most (epochs x training rows; 3 epochs at least)
SECONDS_PER_ROW_PROTOTYPE = 3e-8  # a learned trial's training time per row, prototype and epoch (2 CPU cores; row 9)
# A new study of NW on a large file starts with this trial (then the sampler's): M 1,024 prototypes, learned
# per-feature bandwidths and a linear trend, which benchmark row 9 measured accurate at every size, with a time
# that stays in minutes at a million rows.
FIRST_PROTOTYPE_TRIAL = {
    "memory": 1024,
    "parametric": True,
    "bandwidth": 1.0,
    "trend": True,
    "metric": "per_feature",
    "optimizer": "adamw",
    "lr": 0.03,
    "weight_decay": 1e-4,
    "prototype_batch_size": 2048,
}
NW_METRICS = ("bandwidth", "per_feature", "low_rank")  # one bandwidth, one per feature, a learned map L (r, D)
# Choices added to a search space after studies were tuned, with what a trial tuned before them had:
# a stored trial is rebuilt with these (`make conclude` of an old study). Weight decay was 0 before it
# was a choice; 0 lies outside its (log) range, so the rebuild passes the range's floor and then sets 0.
ADDED_CHOICES = {"trend": False, "memory": "all"}
NO_WEIGHT_DECAY_FLOOR = 1e-6


def adamw_fit(trial: optuna.Trial, epochs: int, seed: int, device: str, *, lr: tuple, weight_decay: tuple) -> FitConfig:
    """AdamW's learning rate and weight decay (log ranges) and the batch size, with early stopping."""
    return FitConfig(
        epochs=epochs,
        lr=trial.suggest_float("lr", *lr, log=True),
        weight_decay=trial.suggest_float("weight_decay", *weight_decay, log=True),
        batch_size=trial.suggest_categorical("batch_size", [32, 64, 128]),
        patience=max(3, epochs // 3),
        seed=seed,
        device=device,
    )


def nw_memory_choices(rows: int) -> list[int | str]:
    """What NW's memory may be for `rows` training rows: every row ("all") while they fit comfortably, and M
    prototypes (fewer than the rows) once there are more than `ALL_ROWS_ALONE_UP_TO`."""
    choices: list[int | str] = [m for m in PROTOTYPE_CHOICES if m < rows] if rows > ALL_ROWS_ALONE_UP_TO else []
    return choices + (["all"] if rows <= ALL_ROWS_UP_TO else [])


def nw_first_trial(rows: int, in_features: int, regression: bool) -> dict | None:
    """The trial a new NW study on `rows` training rows starts with: `FIRST_PROTOTYPE_TRIAL` where prototypes are
    searched (tabular regression: trend and metric apply), none otherwise."""
    if rows <= ALL_ROWS_ALONE_UP_TO:
        return None
    first = dict(FIRST_PROTOTYPE_TRIAL)
    if not (regression and in_features > 1):
        first.pop("trend")
    if in_features == 1:
        first.pop("metric")
    return first


def nw_memory_note(rows: int, epochs: int) -> str | None:
    """What a user tuning NW on a large file should know before the first trial: which rows become prototypes and
    how long a trial takes (the cost model of benchmarks/results.md, row 9: about `SECONDS_PER_ROW_PROTOTYPE`
    per training row, prototype and epoch on 2 CPU cores)."""
    choices = [m for m in nw_memory_choices(rows) if m != "all"]
    if not choices:
        return None
    epochs = nw_epochs(epochs, rows)
    low, high = (SECONDS_PER_ROW_PROTOTYPE * rows * m * epochs for m in (choices[0], choices[-1]))
    every = " or every row" if "all" in nw_memory_choices(rows) else ""
    return (
        f"NW on {rows:,} training rows: the search tries a memory of {', '.join(f'{m:,}' for m in choices)} "
        f"prototypes{every} (k-means centres of the training rows, each weighing as many rows as it stands for), "
        f"{epochs} epochs a learned trial; expect about {low:.0f}-{high:.0f} s of training a trial on 2 CPU cores."
    )


def nw_epochs(epochs: int, rows: int) -> int:
    """Fewer epochs on large data: each sees many rows (at most `EPOCH_ROWS` rows in all, at least 3 epochs)."""
    return max(3, min(epochs, -(-EPOCH_ROWS // rows)))


def suggest_nw(trial: optuna.Trial, data: Dataset, epochs: int, seed: int, device: str) -> TrialSetup:
    """Memory (every training row, or M prototypes on large data), bandwidth (fixed or learned; shared, per
    feature, or a learned linear map of rank r), a linear trend (tabular regression), optimizer and learning rate."""
    rows = len(data.train)
    choices = nw_memory_choices(rows)
    # A stored or given trial (FixedTrial: `make conclude`, benchmarks) keeps the memory it names.
    given = getattr(trial, "_params", {}).get("memory") if isinstance(trial, optuna.trial.FixedTrial) else None
    if given is not None and given not in choices:
        choices = [*choices, given]
    memory = trial.suggest_categorical("memory", choices) if len(choices) > 1 else choices[0]
    parametric = trial.suggest_categorical("parametric", [True, False])
    bandwidth = trial.suggest_float("bandwidth", 0.05, 20.0, log=True)
    fields = model_fields(data, keys=True)
    if memory != "all":
        fields["key_rows"] = None  # the prototypes name their nearest rows instead
    config = NWConfig(
        in_features=data.in_features,
        n_keys=rows if memory == "all" else int(memory),
        learn_bandwidth=parametric,
        bandwidth=bandwidth,
        prototypes=memory != "all",
        seed=seed,
        **fields,
    )
    if data.in_features > 1 and not data.n_classes:  # tabular regression: carry values along a linear trend
        config.trend = trial.suggest_categorical("trend", [False, True])
    fit = FitConfig(epochs=0, seed=seed, device=device)
    if parametric:
        if data.in_features > 1:
            metric = trial.suggest_categorical("metric", list(NW_METRICS))
            config.per_feature = metric == "per_feature"
            config.rank = trial.suggest_int("rank", 1, data.in_features) if metric == "low_rank" else 0
        fit.optimizer = trial.suggest_categorical("optimizer", ["sgd", "adamw"])
        fit.lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        fit.weight_decay = trial.suggest_float("weight_decay", NO_WEIGHT_DECAY_FLOOR, 0.1, log=True)
        if config.prototypes:  # large data: batches big enough that an epoch is not a Python loop of steps
            fit.batch_size = trial.suggest_categorical("prototype_batch_size", [512, 2048, 8192])
            epochs = nw_epochs(epochs, rows)
        else:
            fit.batch_size = trial.suggest_categorical("batch_size", [16, 64, 256])
        fit.epochs, fit.patience = epochs, max(3, epochs // 4)
    return TrialSetup(nadaraya_watson.FAMILY.name, config, fit)


def suggest_mha(trial: optuna.Trial, data: Dataset, epochs: int, seed: int, device: str) -> TrialSetup:
    """Width, heads, depth, feed-forward size, dropout and AdamW settings."""
    config = SequenceConfig(
        in_features=data.in_features,
        out_features=data.n_classes or 1,
        task=data.task,
        d_model=trial.suggest_categorical("d_model", [16, 32, 64]),
        n_heads=trial.suggest_categorical("n_heads", [1, 2, 4]),
        n_layers=trial.suggest_int("n_layers", 1, 3),
        ff_mult=trial.suggest_categorical("ff_mult", [2, 4]),
        dropout=trial.suggest_float("dropout", 0.0, 0.3),
        **model_fields(data),
    )
    fit = adamw_fit(trial, epochs, seed, device, lr=(3e-4, 1e-2), weight_decay=(1e-6, 1e-1))
    return TrialSetup(sequence_model.FAMILY.name, config, fit)


def suggest_s2s(trial: optuna.Trial, data: Dataset, epochs: int, seed: int, device: str) -> TrialSetup:
    """Embedding, hidden and attention sizes, depth, dropout, teacher forcing, learning rate and batch size."""
    n_layers = trial.suggest_int("n_layers", 1, 2)
    config = Seq2SeqConfig(
        source_vocab=list(data.source_vocab),
        target_vocab=list(data.target_vocab),
        embed_size=trial.suggest_categorical("embed_size", [16, 32, 64]),
        hidden_size=trial.suggest_categorical("hidden_size", [32, 64, 128]),
        attention_size=trial.suggest_categorical("attention_size", [32, 64, 128]),
        n_layers=n_layers,
        dropout=trial.suggest_float("dropout", 0.0, 0.3),
        teacher_forcing=trial.suggest_float("teacher_forcing", 0.5, 1.0),
        max_source_len=data.train.x.shape[1],
        max_target_len=data.train.y.shape[1],
    )
    fit = FitConfig(
        epochs=epochs,
        lr=trial.suggest_float("lr", 2e-3, 2e-2, log=True),
        # Large batches: a recurrent step costs the CPU about the same at 32 or 256 rows, so epochs are cheap.
        batch_size=trial.suggest_categorical("batch_size", [128, 256]),
        patience=max(2, epochs // 3),
        seed=seed,
        device=device,
    )
    return TrialSetup(seq2seq.FAMILY.name, config, fit)


def suggest_pixel(trial: optuna.Trial, data: Dataset, epochs: int, seed: int, device: str) -> TrialSetup:
    """Width, depth, where the attention block sits, its query/key reduction, dropout, random shifts in
    training, and AdamW settings."""
    images = as_images(data.train)  # (N, C, H, W)
    depth = trial.suggest_int("depth", 1, 3)
    config = PixelConfig(
        in_channels=images.shape[1],
        height=images.shape[2],
        width=images.shape[3],
        n_classes=data.n_classes,
        channels=trial.suggest_categorical("channels", [16, 32]),
        depth=depth,
        # after the first or the last convolution (a fixed choice set, so every trial samples the same space)
        attention_at=1 if trial.suggest_categorical("attention_at", ["first", "last"]) == "first" else depth,
        reduction=trial.suggest_categorical("reduction", [2, 4, 8]),
        dropout=trial.suggest_float("dropout", 0.0, 0.4),
        shift=trial.suggest_categorical("shift", [0, 1]),
        value_range=[float(images.min()), float(images.max())],
    )
    fit = adamw_fit(trial, epochs, seed, device, lr=(1e-3, 1e-2), weight_decay=(1e-5, 1e-1))
    return TrialSetup(pixel.FAMILY.name, config, fit)


# the families' searches


class Suggest(Protocol):
    def __call__(self, trial: optuna.Trial, data: Dataset, epochs: int, seed: int, device: str) -> TrialSetup: ...


@dataclass(frozen=True)
class SearchFamily:
    family: Family
    suggest: Suggest  # the search space
    # Epochs per trial on a data set where the kind needs other than the data set's default.
    epochs: Mapping[str, int] = field(default_factory=dict)
    # A new study's first trial on `data` (None: the sampler's), and what to tell the user before it (None: nothing).
    first_trial: Callable[[Dataset], dict | None] = lambda data: None
    note: Callable[[Dataset, int], str | None] = lambda data, epochs: None
    one_thread_rows: int = 0  # trials on fewer training rows take one intra-op thread (see `objective.py`)

    @property
    def name(self) -> str:
        return self.family.name


FAMILIES: dict[str, SearchFamily] = {
    family.name: family
    for family in (
        SearchFamily(
            nadaraya_watson.FAMILY,
            suggest_nw,
            first_trial=lambda data: nw_first_trial(len(data.train), data.in_features, not data.n_classes),
            note=lambda data, epochs: nw_memory_note(len(data.train), epochs),
            # NW on a small training set (sine: 50 rows, diabetes: 265) trains no faster on several intra-op
            # threads, and much slower when anything else wants a core (the MLflow writer, another trial): torch's
            # threads wait for each other. From a few thousand rows on, more threads pay (2 cores: 1.6x at 6,000).
            one_thread_rows=1_000,
        ),
        SearchFamily(sequence_model.FAMILY, suggest_mha),
        SearchFamily(seq2seq.FAMILY, suggest_s2s),
        SearchFamily(pixel.FAMILY, suggest_pixel, epochs={"digits": 40}),  # random shifts learn slower
    )
}


def family(model: str) -> SearchFamily:
    """The search of the kind called `model`."""
    if model not in FAMILIES:
        raise ValueError(f"unknown model {model!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[model]


def suggest(model: str, trial: optuna.Trial, data: Dataset, *, epochs: int, seed: int, device: str) -> TrialSetup:
    return family(model).suggest(trial, data, epochs, seed, device)


def rebuild(model: str, params: dict, data: Dataset, *, epochs: int, seed: int, device: str) -> TrialSetup:
    """A stored trial's setup in today's search space, as it was tuned: completed with the choices it
    predates, and NW's former `per_feature` (True/False) read as the `metric` it was."""
    filled = ADDED_CHOICES | {"weight_decay": NO_WEIGHT_DECAY_FLOOR} | params
    if "per_feature" in filled:
        filled["metric"] = "per_feature" if filled.pop("per_feature") else "bandwidth"
    setup = suggest(model, optuna.trial.FixedTrial(filled), data, epochs=epochs, seed=seed, device=device)
    if "weight_decay" not in params:
        setup.fit_config.weight_decay = 0.0
    return setup
